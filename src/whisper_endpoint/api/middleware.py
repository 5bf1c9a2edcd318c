"""The ASGI middleware around every route: the error envelope's response, the upload size and read-time
limits, and the gatekeeper (request ids, API key, readiness, security headers, HEAD, metrics, the access log).

Both are plain ASGI. Starlette's `BaseHTTPMiddleware` (`@app.middleware("http")`) passed every chunk of
an upload's body through a task group of its own; under load that was a tenth of the server process's
interpreter time (py-spy), and that one interpreter lock carries every upload (docs/history/benchmarks-2026-11.md).
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import math
import re
import time
import uuid

from fastapi.responses import JSONResponse
from starlette.datastructures import Headers, MutableHeaders, State
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from whisper_endpoint.config import Settings
from whisper_endpoint.errors import (
    AuthenticationError,
    NotReadyError,
    ShuttingDownError,
    SlowClientError,
    UploadTooLargeError,
    WhisperEndpointError,
)
from whisper_endpoint.serving.metrics import Metrics

log = logging.getLogger("whisper_endpoint.access")
API_PREFIXES = ("/v1", "/api/v1")
# A client's x-request-id is echoed and logged, so it may hold no spaces or control characters (which
# could forge fields or lines in the log); any other is replaced by one of ours.
REQUEST_ID = re.compile(r"[A-Za-z0-9._:@/+=-]{1,128}")
SECURITY_HEADERS = [(b"x-content-type-options", b"nosniff")]


def printable(text: str) -> str:
    """`text` for a log line: control characters (a decoded %0A in a path) escaped, not obeyed."""
    return text if text.isprintable() else text.encode("unicode_escape").decode("ascii")


def error_response(exc: WhisperEndpointError) -> JSONResponse:
    body = {"error": exc.body()}
    headers = {}
    retry_after = getattr(exc, "retry_after_s", None)
    if retry_after is not None:
        headers["Retry-After"] = str(max(1, math.ceil(retry_after)))
    if isinstance(exc, AuthenticationError):
        headers["WWW-Authenticate"] = "Bearer"
    return JSONResponse(body, status_code=exc.status, headers=headers)


class BodyLimitMiddleware:
    """413 as soon as an upload passes the limit, while it streams in: nothing larger is buffered. 408 when
    the client sends no part of the body for `idle_s` (a half-sent request would hold its connection and
    its memory for good)."""

    def __init__(self, app: ASGIApp, max_bytes: int, idle_s: float) -> None:
        self.app = app
        self.max_bytes = max_bytes
        self.idle_s = idle_s

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] != "POST":
            await self.app(scope, receive, send)
            return
        too_large = UploadTooLargeError(f"the upload is larger than the {self.max_bytes} byte limit", param="file")
        for name, value in scope["headers"]:
            if name == b"content-length" and value.isdigit() and int(value) > self.max_bytes:
                await error_response(too_large)(scope, receive, send)
                return
        received = 0
        body_done = False
        refusal: WhisperEndpointError | None = None

        async def limited_receive() -> Message:
            # Past a limit the app sees a disconnect and stops reading; we answer ourselves.
            nonlocal received, body_done, refusal
            if refusal is not None:
                return {"type": "http.disconnect"}
            if body_done:  # only the client going away is left to hear: no deadline on that
                return await receive()
            try:
                async with asyncio.timeout(self.idle_s):
                    message = await receive()
            except TimeoutError:
                refusal = SlowClientError(f"no part of the request body came for {self.idle_s:.0f} s")
                return {"type": "http.disconnect"}
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                body_done = not message.get("more_body", False)
                if received > self.max_bytes:
                    refusal = too_large
                    return {"type": "http.disconnect"}
            return message

        async def guarded_send(message: Message) -> None:
            if refusal is None:
                await send(message)

        try:
            await self.app(scope, limited_receive, guarded_send)
        except Exception:
            if refusal is None:
                raise
        if refusal is not None:
            response = error_response(refusal)
            response.headers["connection"] = "close"  # the rest of the body is not read
            await response(scope, receive, send)


class Gatekeeper:
    """Gives each request an id (the client's `x-request-id` if it is plain, or a new one) that routes read
    as `request.state.request_id` and every response carries back; answers API requests that lack the key,
    or come while the server starts or drains, itself; answers HEAD as GET without the body; adds security
    headers; counts every response and logs each API request."""

    def __init__(self, app: ASGIApp, settings: Settings, metrics: Metrics, app_state: State) -> None:
        self.app = app
        self.api_key = settings.api_key
        self.metrics_need_key = settings.metrics_require_key
        self.metrics = metrics
        self.app_state = app_state  # FastAPI's app.state: `ready` and `draining` change while serving

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = Headers(scope=scope)
        client_id = headers.get("x-request-id", "")
        request_id = client_id if REQUEST_ID.fullmatch(client_id) else uuid.uuid4().hex
        state = scope.setdefault("state", {})
        state["request_id"] = request_id
        started = time.monotonic()
        path: str = scope["path"]
        protected = path.startswith(API_PREFIXES) or (path == "/metrics" and self.metrics_need_key)
        status = 0
        head = scope["method"] == "HEAD"
        if head:
            scope = {**scope, "method": "GET"}

        async def send_with_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                response_headers = MutableHeaders(scope=message)
                response_headers.append("x-request-id", request_id)
                for name, value in SECURITY_HEADERS:
                    response_headers.append(name.decode(), value.decode())
            elif head and message["type"] == "http.response.body":
                message = {**message, "body": b""}
            await send(message)

        refusal = self._refusal(scope["method"], headers) if protected else None
        if refusal is not None:
            await error_response(refusal)(scope, receive, send_with_id)
        else:
            await self.app(scope, receive, send_with_id)
        self.metrics.requests.labels(_route_label(scope), str(status)).inc()
        if protected:
            job = state.get("job")
            log.info(
                "request_id=%s method=%s path=%s status=%d audio_s=%.2f elapsed_s=%.3f",
                request_id,
                scope["method"],
                printable(path),
                status,
                job.info.duration_ms / 1000 if job else 0.0,
                time.monotonic() - started,
            )

    def _refusal(self, method: str, headers: Headers) -> WhisperEndpointError | None:
        if self.api_key and not authorized(headers, self.api_key):
            return AuthenticationError("missing or invalid API key; send 'Authorization: Bearer KEY'")
        if method == "POST" and self.app_state.draining:
            return ShuttingDownError("the server is shutting down")
        if method == "POST" and not self.app_state.ready:
            return NotReadyError("the model is still loading")
        return None


def _route_label(scope: Scope) -> str:
    """The matched route's path ("/audio/transcriptions" under either API prefix), or "unmatched": a label
    per path asked for would let any client grow the metrics without bound."""
    path: str = getattr(scope.get("route"), "path", "") or "unmatched"
    return path.split("/v1", 1)[-1] if path.startswith(API_PREFIXES) else path


def authorized(headers: Headers, api_key: str) -> bool:
    header = headers.get("authorization", "")
    scheme, _, token = header.partition(" ")
    return scheme.lower() == "bearer" and hmac.compare_digest(token.strip().encode(), api_key.encode())
