"""whisper-endpoint as a Ray Serve application: each replica holds one engine, and the same FastAPI app
(routes, errors, streaming, admission control) is its ingress, so the HTTP contract is the
single-process server's.

    serve run whisper_endpoint.deploy.ray:build_app model=tiny.en replicas=2
    serve run whisper_endpoint.deploy.ray:build_app engine=vllm model=/models/large-v3 \\
        min_replicas=1 max_replicas=8 gpus_per_replica=1

Arguments name either a deployment option below or a server setting (config.Settings, the same
names as the WHISPER_* variables without the prefix). Autoscaling follows the requests in flight per
replica (Ray's ongoing requests). A replica admits up to `max_inflight_requests` and answers 429 with
Retry-After beyond; Ray routes each request to the less busy of two replicas, so 429s come back when
every replica is full.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Awaitable, Callable
from typing import Any

from fastapi import FastAPI, Request, Response
from pydantic import BaseModel, Field

from whisper_endpoint.api.app import create_app
from whisper_endpoint.config import Settings
from whisper_endpoint.errors import EngineUnavailableError


class RayDeployment(BaseModel):
    """How many replicas, and what each one holds."""

    name: str = "whisper-endpoint"
    replicas: int | None = Field(None, ge=1, description="A fixed number of replicas (no autoscaling).")
    min_replicas: int = Field(1, ge=0)
    max_replicas: int = Field(4, ge=1)
    target_ongoing_requests: float = Field(16, gt=0, description="Requests in flight per replica to scale at.")
    cpus_per_replica: float = Field(1, ge=0)
    gpus_per_replica: float = Field(0, ge=0, description="1 for the vLLM engine: one GPU per replica.")
    route_prefix: str = "/"


def _replica_id() -> str:
    from ray import serve

    try:
        return str(serve.get_replica_context().replica_id.unique_id)
    except Exception:  # outside a replica (tests of the app itself)
        return f"{socket.gethostname()}-{os.getpid()}"


def asgi_app(settings: Settings) -> FastAPI:
    """The server's app, built in the replica, with a header naming the replica that answered and the
    replica's name as a label on its metrics."""
    replica = _replica_id()
    app = create_app(settings.model_copy(update={"metrics_replica": replica}))

    @app.middleware("http")
    async def name_the_replica(request: Request, call_next: Callable[[Request], Awaitable[Response]]) -> Response:
        response = await call_next(request)
        response.headers["x-serve-replica"] = replica
        return response

    return app


def build_app(args: dict[str, Any]) -> Any:
    """Ray Serve application builder (`serve run whisper_endpoint.deploy.ray:build_app key=value ...`)."""
    try:
        from ray import serve
    except ImportError as exc:
        raise EngineUnavailableError("Ray Serve is not installed: pip install 'whisper-endpoint[ray]'") from exc
    fields = set(RayDeployment.model_fields)
    deployment = RayDeployment(**{k: v for k, v in args.items() if k in fields})
    settings = Settings(**{k: v for k, v in args.items() if k not in fields})
    scaling: dict[str, Any] = (
        {"num_replicas": deployment.replicas}
        if deployment.replicas
        else {
            "autoscaling_config": {
                "min_replicas": deployment.min_replicas,
                "max_replicas": deployment.max_replicas,
                "target_ongoing_requests": deployment.target_ongoing_requests,
            }
        }
    )
    ingress: Any = serve.deployment(
        serve.ingress(lambda: asgi_app(settings))(),
        name=deployment.name,
        # Ray may hand a replica a few more than it admits, so the replica's own 429 is what clients see.
        max_ongoing_requests=settings.max_inflight_requests + 8,
        ray_actor_options={"num_cpus": deployment.cpus_per_replica, "num_gpus": deployment.gpus_per_replica},
        health_check_period_s=5,
        **scaling,
    )
    return ingress.bind()
