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
        # One front-end worker process per replica: what the GPU deployment runs by default, spawned in an actor.
        args = {"model": "tiny.en", "replicas": str(REPLICAS), "cpu_threads": "1", "cpus_per_replica": "1"}
        app = build_app({**args, "front_end_processes": "1"})
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


@pytest.mark.slow
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
    # Each replica's metrics carry its name, the one its responses carry.
    scrape = httpx.get(f"{serve_url}/metrics", timeout=30)
    assert f'whisper_requests_total{{replica="{scrape.headers["x-serve-replica"]}"' in scrape.text


@pytest.mark.slow
def test_every_replica_full_gives_429_with_retry_after(serve_url: str) -> None:
    """Replicas that admit one request each: of eight at once, the overflow gets 429, never a 5xx."""
    from whisper_endpoint.deploy.ray import build_app

    args = {"name": "small", "model": "tiny.en", "replicas": "2", "cpu_threads": "1", "cpus_per_replica": "0.5"}
    serve.run(build_app({**args, "max_inflight_requests": "1"}), name="small", route_prefix="/small")
    audio = JFK.read_bytes()

    def post(_: int) -> httpx.Response:
        files = {"file": ("jfk.flac", audio)}
        return httpx.post(f"{serve_url}/small/v1/audio/transcriptions", files=files, timeout=120)

    try:
        with ThreadPoolExecutor(8) as pool:
            responses = list(pool.map(post, range(8)))
    finally:
        serve.delete("small")
    codes = Counter(r.status_code for r in responses)
    assert set(codes) <= {200, 429}, codes
    assert codes[200] >= 2 and codes[429] >= 1, codes
    for r in responses:
        if r.status_code == 429:
            assert int(r.headers["Retry-After"]) >= 1
            assert r.json()["error"]["code"] == "server_overloaded"


@pytest.mark.slow
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
    spools = [d for d in Path(tempfile.gettempdir()).glob("whisper-endpoint-*-*") if d.name.split("-")[2].isdigit()]
    assert not [d for d in spools if not _alive(d)]
    replicas = {_transcribe(serve_url)[0] for _ in range(12)}
    assert len(replicas) == REPLICAS
