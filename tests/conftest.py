from __future__ import annotations

import importlib.util
import os
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
import uvicorn

from tests.datasets import DATA
from whisper_endpoint.api.app import create_app
from whisper_endpoint.config import Settings
from whisper_endpoint.engines.ctranslate2 import CTranslate2Engine

JFK = DATA / "A_short_en" / "jfk_openai-whisper.flac"
JFK_TEXT = "And so my fellow Americans, ask not what your country can do for you, ask what you can do for your country."


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if not DATA.is_dir():
        skip = pytest.mark.skip(reason="the shared speech corpus is not next to the repository")
        for item in items:
            item.add_marker(skip)
    if not gpu_present():
        no_gpu = pytest.mark.skip(reason="needs vLLM and an NVIDIA GPU")
        for item in items:
            if "gpu" in item.keywords:
                item.add_marker(no_gpu)


def gpu_present() -> bool:
    """vLLM installed and a CUDA device visible (NVML, as vLLM reads it: CUDA stays uninitialised here)."""
    if importlib.util.find_spec("vllm") is None:
        return False
    from whisper_endpoint.engines.vllm import cuda_capability

    return cuda_capability() is not None


@pytest.fixture(scope="session")
def engine() -> CTranslate2Engine:
    return CTranslate2Engine.from_settings(Settings(model="base"))


@pytest.fixture(scope="session")
def tiny_engine() -> CTranslate2Engine:
    return CTranslate2Engine.from_settings(Settings(model="tiny.en"))


def metric_value(metrics: str, series: str) -> float:
    """A sample's value in Prometheus' text format (`series`: the name with its labels, as printed); 0 if absent."""
    for line in metrics.splitlines():
        if line.startswith(series + " "):
            return float(line.split()[1])
    return 0.0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class RunningServer:
    url: str
    server: uvicorn.Server
    settings: Settings

    @property
    def v1(self) -> str:
        return f"{self.url}/v1"


def start_server(settings: Settings, engine: CTranslate2Engine) -> tuple[RunningServer, threading.Thread]:
    port = free_port()
    settings = settings.model_copy(update={"port": port})
    app = create_app(settings, engine=engine)
    config = uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning")
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{url}/ready", timeout=1).status_code == 200:
                return RunningServer(url, server, settings), thread
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    raise RuntimeError("server did not become ready")


# A server started elsewhere (the GPU engine on a GPU machine) instead of the in-process CTranslate2 one.
EXTERNAL_URL = os.environ.get("WHISPER_TEST_SERVER_URL")
EXTERNAL_ENGINE = os.environ.get("WHISPER_TEST_ENGINE", "ctranslate2")


@pytest.fixture(scope="session")
def server(request: pytest.FixtureRequest) -> Iterator[RunningServer]:
    if EXTERNAL_URL:
        yield RunningServer(EXTERNAL_URL, uvicorn.Server(uvicorn.Config(None)), Settings())
        return
    engine = request.getfixturevalue("engine")
    running, thread = start_server(Settings(model="base", max_upload_bytes=12 * 1024 * 1024), engine)
    yield running
    running.server.should_exit = True
    thread.join(timeout=30)


@pytest.fixture
def jfk() -> Path:
    return JFK
