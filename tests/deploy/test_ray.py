"""Ray Serve: two replicas of the CTranslate2 engine with tiny.en behind Serve's HTTP proxy, driven by
the official OpenAI SDK; one replica is killed mid-load."""

from __future__ import annotations

import os
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest

from tests.conftest import JFK, JFK_TEXT, free_port
from tests.datasets import english_normalizer

ray = pytest.importorskip("ray")
serve = pytest.importorskip("ray.serve")

REPLICAS = 2


@pytest.fixture(scope="module")
def serve_url() -> Iterator[str]:
    from whisper_endpoint.deploy.ray import build_app

    port = free_port()
    ray.init(num_cpus=4, include_dashboard=False, log_to_driver=False)
    try:
        serve.start(http_options={"host": "127.0.0.1", "port": port})
        app = build_app({"model": "tiny.en", "replicas": str(REPLICAS), "cpu_threads": "1", "cpus_per_replica": "1"})
        serve.run(app, name="whisper", route_prefix="/")
        yield f"http://127.0.0.1:{port}"
    finally:
        serve.shutdown()
        ray.shutdown()


def _transcribe(url: str) -> tuple[str, str]:
    from openai import OpenAI

    # The SDK retries connection errors and 5xx twice: what a replica's death may cost a client.
    client = OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=3, timeout=120)
    with JFK.open("rb") as f:
        raw = client.audio.transcriptions.with_raw_response.create(model="whisper-1", file=f)
    return raw.headers.get("x-serve-replica", ""), raw.parse().text


def _alive(spool: Path) -> bool:
    try:
        os.kill(int(spool.name.split("-")[2]), 0)
    except ProcessLookupError:
        return False
    return True


def _running_replicas() -> int:
    status = serve.status().applications["whisper"].deployments["whisper-endpoint"]
    return int(status.replica_states.get("RUNNING", 0))


def test_both_replicas_serve_correct_transcripts(serve_url: str) -> None:
    assert httpx.get(f"{serve_url}/ready", timeout=10).status_code == 200
    normalize = english_normalizer()
    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(lambda _: _transcribe(serve_url), range(16)))
    served = Counter(replica for replica, _ in results)
    assert len(served) == REPLICAS, served  # both replicas took requests
    for _, text in results:
        assert normalize(text) == normalize(JFK_TEXT)
    # The same error envelope as the single-process server.
    bad = httpx.post(f"{serve_url}/v1/audio/transcriptions", files={"file": ("x.wav", b"nope")}, timeout=30)
    assert bad.status_code == 400 and bad.json()["error"]["code"] == "invalid_audio"


def test_killed_replica_is_replaced_and_no_client_hangs(serve_url: str) -> None:
    normalize = english_normalizer()
    outcomes: list[str] = []

    def client() -> None:
        for _ in range(4):
            try:
                _, text = _transcribe(serve_url)
                outcomes.append("ok" if normalize(text) == normalize(JFK_TEXT) else f"wrong: {text}")
            except Exception as exc:  # the SDK gave up after its retries: a retryable error, not a hang
                outcomes.append(f"error: {type(exc).__name__}")

    threads = [threading.Thread(target=client) for _ in range(6)]
    for t in threads:
        t.start()
    time.sleep(1.0)  # requests in flight on both replicas
    victim = next(a for a in ray.util.list_named_actors(all_namespaces=True) if "SERVE_REPLICA" in a["name"])
    ray.kill(ray.get_actor(victim["name"], namespace=victim["namespace"]), no_restart=True)
    for t in threads:
        t.join(timeout=300)
    assert not any(t.is_alive() for t in threads), "a client hung"
    assert len(outcomes) == 24
    assert not [o for o in outcomes if o.startswith("wrong")]  # never a wrong transcript
    assert outcomes.count("ok") >= 20, outcomes  # at most the killed replica's few in-flight requests fail
    deadline = time.monotonic() + 120
    while _running_replicas() < REPLICAS and time.monotonic() < deadline:
        time.sleep(1)
    assert _running_replicas() == REPLICAS  # Serve replaced the dead replica
    # The killed replica could not delete its uploads; its replacement did at start-up.
    assert not [d for d in Path(tempfile.gettempdir()).glob("whisper-endpoint-*-*") if not _alive(d)]
    replicas = {_transcribe(serve_url)[0] for _ in range(12)}
    assert len(replicas) == REPLICAS
