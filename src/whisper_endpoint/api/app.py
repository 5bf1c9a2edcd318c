"""create_app(settings): the FastAPI application, its middleware and error mapping."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import importlib.resources
import logging
import re
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import numpy as np
from fastapi import FastAPI, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.openapi.utils import get_openapi
from fastapi.responses import HTMLResponse, JSONResponse, PlainTextResponse
from fastapi.staticfiles import StaticFiles
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.exceptions import HTTPException as StarletteHTTPException

from whisper_endpoint import __version__
from whisper_endpoint.api.middleware import API_PREFIXES, BodyLimitMiddleware, Gatekeeper, error_response
from whisper_endpoint.api.realtime import realtime_endpoint
from whisper_endpoint.api.routes import build_router
from whisper_endpoint.api.schemas import add_schemas
from whisper_endpoint.audio.features import log_mel_window
from whisper_endpoint.config import Settings
from whisper_endpoint.engines import load_engine
from whisper_endpoint.engines.base import Engine, SamplingOptions, WindowInput, engine_alive
from whisper_endpoint.errors import (
    EngineFailedError,
    NotReadyError,
    ShuttingDownError,
    WhisperEndpointError,
)
from whisper_endpoint.serving.metrics import Metrics
from whisper_endpoint.serving.service import TranscriptionService
from whisper_endpoint.serving.spool import create_spool, remove_stale_spools

log = logging.getLogger("whisper_endpoint.access")
# Pages may talk to this server only, and no other site may frame them (clickjacking): the browser enforces both.
PLAYGROUND_CSP = (
    "default-src 'self'; media-src 'self' blob:; img-src 'self' data: blob:; object-src 'none'; frame-ancestors 'none'"
)
DOCS_CSP = (
    "default-src 'self'; script-src 'self' {inline}; style-src 'self' 'unsafe-inline'; img-src 'self' data:; "
    "object-src 'none'; frame-ancestors 'none'"
)
PAGE_HEADERS = {"X-Frame-Options": "DENY"}


def _inline_script_hashes(html: str) -> str:
    """CSP sources allowing exactly the page's own inline scripts (Swagger UI's start-up call)."""
    scripts = re.findall(r"<script>(.*?)</script>", html, flags=re.DOTALL)
    return " ".join(f"'sha256-{base64.b64encode(hashlib.sha256(s.encode()).digest()).decode()}'" for s in scripts)


def _param_from_loc(loc: tuple[Any, ...]) -> str | None:
    names = [str(part) for part in loc if part not in ("body", "query", "path", "header")]
    return names[0] if names else None


async def _warm_up(engine: Engine) -> None:
    """One decode before /ready turns 200, so the first user does not pay for lazy initialisation."""
    samples = np.zeros(16_000, np.float32)
    prompt = tuple(engine.tokenizer.sot_sequence("en", "transcribe", True))
    window = WindowInput(log_mel_window(samples, engine.n_mels), prompt, 1000, samples)
    await asyncio.to_thread(engine.generate, [window], SamplingOptions(max_new_tokens=4))


def create_app(settings: Settings, engine: Engine | None = None) -> FastAPI:
    """The app; the engine is loaded (or the given one used) at start-up, then warmed up."""
    metrics = Metrics(settings.metrics_replica)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        remove_stale_spools()
        spool = create_spool()
        app.state.spool_dir = spool.path
        loaded: Engine = engine if engine is not None else await asyncio.to_thread(load_engine, settings)
        await _warm_up(loaded)
        app.state.service = TranscriptionService(settings, loaded, metrics)
        if app.state.service.front_end:
            await asyncio.to_thread(app.state.service.front_end.start)
        app.state.model_id = loaded.model_name
        app.state.model_aliases = {
            loaded.model_name,
            settings.model,
            "whisper-1",
            f"whisper-{loaded.model_name}",
            f"openai/whisper-{loaded.model_name}",
        }
        app.state.ready = True
        log.info("ready: model %s on engine %s", loaded.model_name, loaded.name)
        try:
            yield
        finally:
            app.state.ready = False
            app.state.service.close()
            if engine is None:
                loaded.close()
            spool.close()

    app = FastAPI(
        title="whisper-endpoint",
        version=__version__,
        lifespan=lifespan,
        docs_url=None,
        redoc_url=None,
        # A redirect to the slash-less path would be built from the client's Host header.
        redirect_slashes=False,
        description="OpenAI-compatible speech-to-text for Whisper models.",
    )
    app.state.ready = False
    app.state.draining = False
    app.state.started_at = time.time()
    app.state.metrics = metrics
    app.state.settings = settings
    for prefix in API_PREFIXES:
        app.include_router(build_router(), prefix=prefix, tags=["audio"])
        app.add_api_websocket_route(f"{prefix}/realtime", realtime_endpoint)

    @app.exception_handler(WhisperEndpointError)
    async def handle_error(request: Request, exc: WhisperEndpointError) -> JSONResponse:
        metrics.errors.labels(exc.code or exc.error_type).inc()
        return error_response(exc)

    @app.exception_handler(RequestValidationError)
    async def handle_validation(request: Request, exc: RequestValidationError) -> JSONResponse:
        first = exc.errors()[0] if exc.errors() else {}
        param = _param_from_loc(tuple(first.get("loc", ())))
        message = f"{param}: {first.get('msg', 'invalid value')}" if param else str(first.get("msg", "invalid request"))
        if first.get("type") == "missing" and param:
            message = f"missing required parameter: {param}"
        return await handle_error(request, _invalid(message, param))

    @app.exception_handler(StarletteHTTPException)
    async def handle_http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        err = WhisperEndpointError(str(exc.detail))
        err.status, err.error_type = exc.status_code, "invalid_request_error"
        err.code = "not_found" if exc.status_code == 404 else "method_not_allowed" if exc.status_code == 405 else None
        if exc.status_code == 404:
            err.message = f"unknown route {request.method} {request.url.path}"
        return error_response(err)

    @app.exception_handler(Exception)
    async def handle_unexpected(request: Request, exc: Exception) -> JSONResponse:
        log.exception("request_id=%s unexpected error", getattr(request.state, "request_id", "-"))
        metrics.errors.labels("internal_error").inc()
        return error_response(WhisperEndpointError("internal error; the server's log has the details"))

    app.add_middleware(Gatekeeper, settings=settings, metrics=metrics, app_state=app.state)
    # Added last, so outermost: an upload over the limit is refused before anything else reads it.
    app.add_middleware(BodyLimitMiddleware, max_bytes=settings.max_upload_bytes, idle_s=settings.body_timeout_s)

    @app.get("/health", tags=["operations"])
    async def health() -> dict[str, str]:
        return {"status": "ok"}

    not_ready: dict[int | str, dict[str, Any]] = {
        503: {"description": "Loading, shutting down, or the engine has ended."}
    }

    @app.get("/ready", tags=["operations"], responses=not_ready)
    async def ready() -> JSONResponse:
        service = getattr(app.state, "service", None)
        if service is not None and not engine_alive(service.engine):
            return error_response(EngineFailedError("the engine's process has ended; restart this instance"))
        if app.state.ready and not app.state.draining:
            return JSONResponse({"status": "ready", "model": app.state.model_id})
        return error_response(
            ShuttingDownError("shutting down") if app.state.draining else NotReadyError("the model is still loading")
        )

    @app.get("/metrics", tags=["operations"], response_class=PlainTextResponse)
    async def prometheus() -> Response:
        service = getattr(app.state, "service", None)
        if service is not None:
            metrics.queued_windows.set(service.scheduler.pending_windows)
        return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    static = Path(str(importlib.resources.files("fastapi_offline") / "static"))
    app.mount("/static/swagger", StaticFiles(directory=static), name="swagger")
    playground = Path(str(importlib.resources.files("whisper_endpoint") / "static" / "playground"))
    app.mount("/static/playground", StaticFiles(directory=playground), name="playground")

    @app.get("/", include_in_schema=False)
    async def playground_page() -> HTMLResponse:
        return HTMLResponse(
            (playground / "index.html").read_text(encoding="utf-8"),
            headers={"Content-Security-Policy": PLAYGROUND_CSP, **PAGE_HEADERS},
        )

    @app.get("/docs", include_in_schema=False)
    async def docs() -> HTMLResponse:
        page = get_swagger_ui_html(
            openapi_url="/openapi.json",
            title="whisper-endpoint API",
            swagger_js_url="/static/swagger/swagger-ui-bundle.js",
            swagger_css_url="/static/swagger/swagger-ui.css",
            swagger_favicon_url="/static/swagger/favicon.png",
        )
        html = bytes(page.body).decode()
        csp = DOCS_CSP.format(inline=_inline_script_hashes(html))
        return HTMLResponse(html, headers={"Content-Security-Policy": csp, **PAGE_HEADERS})

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = get_openapi(title=app.title, version=app.version, description=app.description, routes=app.routes)
            add_schemas(schema)
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
    return app


def _invalid(message: str, param: str | None) -> WhisperEndpointError:
    from whisper_endpoint.errors import InvalidRequestError

    return InvalidRequestError(message, param=param)
