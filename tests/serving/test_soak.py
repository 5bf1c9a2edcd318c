"""A bounded soak: a real server under a mix of normal requests and abuse, then back to a clean idle state."""

from __future__ import annotations

import json
import os
import random
import threading
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest

from tests.conftest import JFK
from tests.datasets import DATA
from tests.serving.abuse import raw_connection, read_all, silent_webm_without_duration, wait_for
from tests.serving.process import server_process

SOAK_S = float(os.environ.get("WHISPER_SOAK_S", "30"))
CLIENTS = 6
MAX_UPLOAD_BYTES = 3 * 1024 * 1024
MAX_AUDIO_S = 300
RSS_BOUND_MIB = 300  # growth allowed over the server's size after one round of every kind of request (measured: 185)
MINUTE_SPEECH = DATA / "C_longform" / "earnings22_1_4482311_3_62.flac"


@pytest.mark.slow
def test_soak_ends_idle_clean_and_correct(tmp_path: Path) -> None:
    spool = tmp_path / "tmp"
    spool.mkdir()
    too_long = silent_webm_without_duration(tmp_path / "too-long.webm", MAX_AUDIO_S + 100)
    outcomes: Counter[str] = Counter()
    wrong: list[str] = []
    lock = threading.Lock()

    with server_process(
        spool,
        max_upload_bytes=str(MAX_UPLOAD_BYTES),
        max_audio_duration_s=str(MAX_AUDIO_S),
        header_timeout_s="1",
        body_timeout_s="1",
        max_inflight_requests="8",
    ) as server:
        url = f"{server.url}/v1/audio/transcriptions"

        def post(path: Path, **kwargs: object) -> httpx.Response:
            kwargs.setdefault("timeout", 120)
            with path.open("rb") as f:
                return httpx.post(url, files={"file": (path.name, f)}, **kwargs)  # type: ignore[arg-type]

        def normal() -> str:
            r = post(JFK)
            if r.status_code == 429:
                return "normal: 429"
            if r.status_code != 200 or "ask not what your country can do for you" not in r.json()["text"]:
                wrong.append(f"{r.status_code} {r.text[:200]}")
            return f"normal: {r.status_code}"

        def dropped_stream() -> str:
            with (
                MINUTE_SPEECH.open("rb") as f,
                httpx.stream(
                    "POST", url, files={"file": (MINUTE_SPEECH.name, f)}, data={"stream": "true"}, timeout=60
                ) as r,
            ):
                status = r.status_code
                time.sleep(random.uniform(0, 1.5))
            return f"dropped stream: {status}"

        def dropped_upload() -> str:
            try:
                post(MINUTE_SPEECH, timeout=httpx.Timeout(30, read=random.uniform(0.2, 2)))
            except httpx.ReadTimeout:
                return "dropped upload"
            return "dropped upload: finished first"

        def garbage() -> str:
            r = httpx.post(url, files={"file": ("x.mp3", random.randbytes(20_000))}, timeout=60)
            return f"garbage: {r.status_code}"

        def slow_client() -> str:
            with raw_connection(server.url) as sock:
                sock.sendall(b"POST /v1/audio/transcriptions HTTP/1.1\r\nHost: x\r\n")
                return f"slow client: {read_all(sock)[:12].decode(errors='replace')}"

        def over_size() -> str:
            r = httpx.post(url, files={"file": ("big.wav", b"\0" * (MAX_UPLOAD_BYTES + 1))}, timeout=60)
            return f"over size: {r.status_code}"

        def over_duration() -> str:
            r = post(too_long)
            return f"over duration: {r.status_code} {r.json()['error']['code'] if r.status_code != 200 else ''}"

        actions: list[Callable[[], str]] = [
            normal,
            normal,
            normal,
            dropped_stream,
            dropped_upload,
            garbage,
            slow_client,
            over_size,
            over_duration,
        ]
        for action in actions:  # one round of each first: the baseline is a server that has seen them all
            action()
        assert wait_for(lambda: server.idle(), 30)
        baseline_kib = server.status_kib("VmRSS")
        wrong.clear()

        def client(seed: int) -> None:
            random.seed(seed)
            deadline = time.monotonic() + SOAK_S
            while time.monotonic() < deadline:
                outcome = random.choice(actions)()
                with lock:
                    outcomes[outcome] += 1

        threads = [threading.Thread(target=client, args=(seed,)) for seed in range(CLIENTS)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        settled = wait_for(lambda: server.idle(), 60)
        left = {name: server.metric(name) for name in ("whisper_requests_inflight", "whisper_queued_audio_seconds")}
        end_kib = server.status_kib("VmRSS")
        uploads_left = [p.name for p in spool.rglob("upload-*")]
        ready = httpx.get(f"{server.url}/ready").status_code
        print(json.dumps(dict(sorted(outcomes.items())), indent=1))
        print(f"RSS: {baseline_kib / 1024:.0f} MiB after one round, {end_kib / 1024:.0f} MiB after the soak")

    assert settled, f"still counted after the soak: {left}"
    assert wrong == []
    assert uploads_left == []
    assert ready == 200
    assert (end_kib - baseline_kib) / 1024 < RSS_BOUND_MIB
    assert outcomes["normal: 200"] >= 10
    assert outcomes["garbage: 400"] >= 1 and outcomes["over size: 413"] >= 1
    assert outcomes["over duration: 400 audio_too_long"] >= 1
    assert outcomes["slow client: HTTP/1.1 408"] >= 1
    unexpected = [k for k in outcomes if k.split(":")[0] in ("garbage", "over size") and k.split()[-1][0] == "5"]
    assert unexpected == []
