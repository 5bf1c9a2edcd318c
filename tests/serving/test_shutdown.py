"""SIGTERM on a real `whisper-endpoint serve` process under load."""

from __future__ import annotations

import signal
import threading
import time
from pathlib import Path

import httpx
import pytest

from tests.conftest import JFK
from tests.datasets import clips, wer
from tests.serving.process import leftovers, server_process

LONG = [c for c in clips("C_longform") if c.path.name.startswith("earnings22")]


@pytest.mark.slow
def test_sigterm_drains_in_flight_requests_and_exits_0(tmp_path: Path) -> None:
    uploads = [JFK, *(c.path for c in LONG)]
    answers: dict[str, httpx.Response] = {}
    with server_process(tmp_path, shutdown_grace_s="120") as server:

        def send(path: Path) -> None:
            with path.open("rb") as f:
                answers[path.name] = httpx.post(
                    f"{server.url}/v1/audio/transcriptions",
                    files={"file": (path.name, f)},
                    data={"model": "whisper-1"},
                    timeout=300,
                )

        threads = [threading.Thread(target=send, args=(p,)) for p in uploads]
        for t in threads:
            t.start()
        deadline = time.monotonic() + 30
        while server.metric("whisper_requests_inflight") < len(uploads) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert server.metric("whisper_requests_inflight") == len(uploads), "requests not in flight at SIGTERM"
        server.proc.send_signal(signal.SIGTERM)

        # Draining: still listening, but not ready and not admitting.
        time.sleep(0.3)
        assert httpx.get(f"{server.url}/ready", timeout=5).status_code == 503
        with JFK.open("rb") as f:
            late = httpx.post(f"{server.url}/v1/audio/transcriptions", files={"file": ("jfk.flac", f)}, timeout=30)
        assert late.status_code == 503
        assert "shutting down" in late.json()["error"]["message"]

        for t in threads:
            t.join(timeout=300)
        assert server.proc.wait(timeout=60) == 0
        log = server.log()

    assert {name: r.status_code for name, r in answers.items()} == {p.name: 200 for p in uploads}
    assert "ask not what your country can do for you" in answers[JFK.name].json()["text"]
    for clip in LONG:
        assert wer([clip.reference], [answers[clip.path.name].json()["text"]]) < 0.35
    assert leftovers(tmp_path) == [], "temporary files were left behind"
    assert f"draining {len(uploads)} in-flight request(s)" in log
