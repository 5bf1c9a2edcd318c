"""Graceful shutdown: on SIGTERM (or Ctrl-C) stop admitting, let in-flight requests finish, exit 0.

Requests still running when the grace period ends are stopped by the service and answered 503
`shutting_down` in OpenAI's envelope (an error event for a stream) before the server stops, rather
than being cut off by the server's own shutdown (a bare 500, or a dropped connection).
"""

from __future__ import annotations

import logging
import threading
import time
from types import FrameType

import uvicorn
from fastapi import FastAPI

from whisper_endpoint.config import Settings
from whisper_endpoint.errors import ShuttingDownError
from whisper_endpoint.serving.http import guarded_protocol

log = logging.getLogger(__name__)

POLL_S = 0.1
CLOSE_CONNECTIONS_S = 5  # after the drain: time for idle keep-alive connections to close
ANSWER_ABORTED_S = 10  # after the grace period: time for stopped requests to send their 503


def begin_drain(app: FastAPI) -> None:
    """From now on /ready and new transcription requests answer 503 (the app's gatekeeper reads the flag;
    the service refuses uploads whose body was still arriving)."""
    app.state.draining = True
    service = getattr(app.state, "service", None)
    if service is not None:
        service.draining = True


def inflight_requests(app: FastAPI) -> int:
    service = getattr(app.state, "service", None)
    return int(service.inflight) if service is not None else 0


class DrainingServer(uvicorn.Server):
    """A uvicorn server whose first exit signal drains instead of stopping.

    The listening socket stays open while draining, so a load balancer still polling gets 503s (and
    takes the instance out) rather than refused connections. The second signal stops at once. The
    signal is not re-raised after shutdown as uvicorn would, so a drained server exits with status 0.
    """

    def __init__(self, config: uvicorn.Config, app: FastAPI, grace_s: float) -> None:
        super().__init__(config)
        self.app = app
        self.grace_s = grace_s
        self._draining = False

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        if self._draining:
            log.warning("second exit signal: stopping without waiting for in-flight requests")
            self.force_exit = True
            self.should_exit = True
            return
        self._draining = True
        begin_drain(self.app)
        log.info(
            "exit signal: draining %d in-flight request(s), grace %.0f s", inflight_requests(self.app), self.grace_s
        )
        threading.Thread(target=self._wait_then_exit, name="drain", daemon=True).start()

    def _wait_then_exit(self) -> None:
        self._wait_for_inflight(self.grace_s)
        service = getattr(self.app.state, "service", None)
        if inflight_requests(self.app) and service is not None:
            stopped = service.abort_all(ShuttingDownError("the server shut down before this request finished"))
            log.warning("grace period over: answering %d request(s) 503 shutting_down", stopped)
            self._wait_for_inflight(ANSWER_ABORTED_S)
        self.should_exit = True

    def _wait_for_inflight(self, seconds: float) -> None:
        deadline = time.monotonic() + seconds
        while inflight_requests(self.app) and time.monotonic() < deadline:
            time.sleep(POLL_S)


KEEP_ALIVE_S = 75  # longer than typical client pool idle timeouts


def serve(app: FastAPI, settings: Settings) -> None:
    config = uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port,
        log_level=settings.log_level,
        http=guarded_protocol(settings),
        timeout_graceful_shutdown=CLOSE_CONNECTIONS_S,
        # Clients pool connections (the OpenAI SDK does); closing an idle one after uvicorn's 5 s races
        # with the client's next request on it, which then fails (seen under load as read errors).
        timeout_keep_alive=KEEP_ALIVE_S,
    )
    DrainingServer(config, app, settings.shutdown_grace_s).run()
