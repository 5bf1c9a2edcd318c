"""Uvicorn's HTTP/1.1 protocol with two guards it lacks: a deadline for the request head and a cap on
open connections.

Uvicorn times out idle keep-alive connections but not a request whose head never finishes: idle
half-sent requests held their file descriptors for good (about 20,000 of them stopped `/health`). The
body has its own deadline in the ASGI middleware (`BodyLimitMiddleware`), where the app can answer.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

from whisper_endpoint.config import Settings
from whisper_endpoint.errors import ShuttingDownError, SlowClientError, WhisperEndpointError


def raw_error(exc: WhisperEndpointError, reason: str) -> bytes:
    """A whole HTTP/1.1 error response in OpenAI's envelope, for a connection the app never saw."""
    body = json.dumps({"error": exc.body()}).encode()
    head = (
        f"HTTP/1.1 {exc.status} {reason}\r\ncontent-type: application/json\r\ncontent-length: {len(body)}\r\n"
        "connection: close\r\nx-content-type-options: nosniff\r\n\r\n"
    )
    return head.encode() + body


def _base_protocol() -> type[Any]:
    try:  # uvicorn's own choice ("auto"): httptools where it is installed
        from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

        return HttpToolsProtocol
    except ImportError:
        from uvicorn.protocols.http.h11_impl import H11Protocol

        return H11Protocol


def guarded_protocol(settings: Settings) -> type[asyncio.Protocol]:
    """The protocol class for `uvicorn.Config(http=...)`, with the settings' head deadline and connection cap."""
    base = _base_protocol()
    head_timeout_s = settings.header_timeout_s
    max_connections = settings.max_connections
    too_slow = raw_error(
        SlowClientError(f"the request head did not arrive within {head_timeout_s:.0f} s"), "Request Timeout"
    )
    too_many = raw_error(ShuttingDownError("too many open connections; retry later"), "Service Unavailable")

    class GuardedProtocol(base):  # type: ignore[misc, valid-type]
        _head_timer: asyncio.TimerHandle | None = None

        def connection_made(self, transport: asyncio.Transport) -> None:
            super().connection_made(transport)
            if len(self.connections) > max_connections:
                transport.write(too_many)
                transport.close()
                return
            self._arm()

        def data_received(self, data: bytes) -> None:
            # The first bytes of a new request (after a response on a kept-alive connection) start the clock.
            if self._head_timer is None and not self._in_request():
                self._arm()
            super().data_received(data)

        def handle_websocket_upgrade(self, *args: Any) -> None:
            self._disarm()  # the connection is a WebSocket now: no request head comes any more
            super().handle_websocket_upgrade(*args)

        def on_response_complete(self) -> None:
            super().on_response_complete()
            self._disarm()

        def connection_lost(self, exc: Exception | None) -> None:
            self._disarm()
            super().connection_lost(exc)

        def _in_request(self) -> bool:
            return self.cycle is not None and not self.cycle.response_complete

        def _arm(self) -> None:
            self._head_timer = self.loop.call_later(head_timeout_s, self._head_timed_out)

        def _disarm(self) -> None:
            if self._head_timer is not None:
                self._head_timer.cancel()
                self._head_timer = None

        def _head_timed_out(self) -> None:
            self._head_timer = None
            if self._in_request() or self.transport.is_closing():
                return  # the head arrived: the body's deadline is the middleware's
            self.transport.write(too_slow)
            self.transport.close()

    return GuardedProtocol
