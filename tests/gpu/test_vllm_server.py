"""The API and SDK tests against a real `whisper-endpoint serve --engine vllm` (real weights: a Hugging Face
Whisper folder or a CTranslate2 one, converted at start; WHISPER_TEST_GPU_MODEL, else the bundled base)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import free_port
from whisper_endpoint.bench import wait_ready

pytestmark = [pytest.mark.gpu, pytest.mark.slow]
API_TESTS = ["tests/api/test_openai_sdk.py"]  # the conformance tests ask for word timestamps, which vLLM lacks


def test_the_api_and_sdk_tests_pass_against_the_vllm_engine(tmp_path: Path) -> None:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    model = os.environ.get("WHISPER_TEST_GPU_MODEL", "base")
    env = {**os.environ, "WHISPER_GPU_MEMORY_UTILIZATION": os.environ.get("WHISPER_GPU_MEMORY_UTILIZATION", "0.5")}
    command = [sys.executable, "-m", "whisper_endpoint", "serve", "--engine", "vllm", "--model", model]
    log = (tmp_path / "server.log").open("wb")
    server = subprocess.Popen([*command, "--port", str(port)], stdout=log, stderr=subprocess.STDOUT, env=env)
    try:
        wait_ready(url, server, 900)
        tests = subprocess.run(
            [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *API_TESTS],
            env={**env, "WHISPER_TEST_SERVER_URL": url, "WHISPER_TEST_ENGINE": "vllm"},
            capture_output=True,
            text=True,
        )
    finally:
        server.terminate()
        server.wait(timeout=120)
    summary = tests.stdout.strip().splitlines()[-1] if tests.stdout.strip() else tests.stderr[-2000:]
    assert tests.returncode == 0, tests.stdout[-6000:]
    assert " passed" in summary and "failed" not in summary, summary
