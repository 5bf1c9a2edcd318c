"""The load generator against a real server: our server and a "peer" in one run, WER, plot, corpus."""

from __future__ import annotations

import argparse
import asyncio
import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import RunningServer
from tests.datasets import DATA, clips
from whisper_endpoint.audio.decode import AudioSource, load_audio
from whisper_endpoint.bench import Load, Result, add_arguments, run_load
from whisper_endpoint.bench.corpus import durations_s, make_corpus


def test_made_corpus_is_unique_flac_of_the_asked_length(tmp_path: Path) -> None:
    sources = [c.path for c in clips("B_librispeech/test-clean")[:6]]
    files = make_corpus(sources, tmp_path, count=4, seconds=10.0)
    assert [f.suffix for f in files] == [".flac"] * 4
    audio = [load_audio(AudioSource(f)) for f in files]
    assert all(len(a) == 160_000 for a in audio)
    assert len({f.read_bytes() for f in files}) == 4  # no two uploads are the same bytes
    assert all(abs(d - 10.0) < 0.01 for d in durations_s(files).values())
    # Real speech, barely changed by the dither: the same as the sources laid end to end.
    speech = np.concatenate([load_audio(AudioSource(s)) for s in sources])[:160_000]
    assert np.abs(audio[0] - speech).max() < 0.01


def test_the_steady_rate_leaves_out_the_first_and_last_fifth_of_the_run() -> None:
    run = Result("url", 4, audio_s=150.0, wall_s=10.0)
    run.completions = [(1.0, 30.0), (3.0, 30.0), (5.0, 30.0), (7.9, 30.0), (9.0, 30.0)]
    summary = run.summary()
    assert summary["rtfx"] == 15.0  # 150 s of audio in 10 s
    assert summary["steady_rtfx"] == 15.0  # 90 s completed between 2 s and 8 s
    run.completions = [(1.0, 30.0), (3.0, 60.0), (8.5, 60.0)]
    assert run.steady_rtfx() == 10.0  # only the one at 3 s counts: 60 s of audio in 6 s
    assert Result("url", 1, wall_s=10.0).steady_rtfx() is None


@pytest.mark.slow
def test_a_ramp_starts_the_clients_one_after_another() -> None:
    arrivals: list[float] = []

    class SlowServer(BaseHTTPRequestHandler):  # answers every upload after 2 s: no engine needed to time arrivals
        def do_POST(self) -> None:
            arrivals.append(time.monotonic())
            self.rfile.read(int(self.headers["Content-Length"]))
            time.sleep(2.0)
            body = json.dumps({"text": "ok"}).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), SlowServer)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        load = Load([clips("B_librispeech/test-clean")[0].path], concurrency=4, requests=4, ramp_s=2.0)
        started = time.monotonic()
        result = asyncio.run(run_load(f"http://127.0.0.1:{server.server_port}/v1/audio/transcriptions", load))
    finally:
        server.shutdown()
    assert result.requests == 4 and not result.errors
    # client k waits k * 0.5 s; no client sends twice before 2 s, when its first answer comes
    offsets = sorted(t - started for t in arrivals)
    assert all(offset >= 0.5 * k for k, offset in enumerate(offsets)), offsets


@pytest.mark.slow
def test_bench_runs_the_same_load_against_a_peer_and_scores_it(server: RunningServer, tmp_path: Path) -> None:
    corpus = clips("B_librispeech/test-clean")[:3]
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    out, png = tmp_path / "bench.json", tmp_path / "bench.png"
    args = parser.parse_args(
        [
            "--url", f"{server.v1}/audio/transcriptions",
            "--peer", f"same-server-again={server.url}/api/v1/audio/transcriptions",
            "--corpus", *[str(c.path) for c in corpus],
            "--references", str(DATA / "MANIFEST.tsv"),
            "--concurrency", "1", "3",
            "--language", "en",
            "--stream",
            "--output", str(out),
            "--plot", str(png),
        ]
    )  # fmt: skip
    assert args.func(args) == 0
    rows = json.loads(out.read_text())
    assert [(r["system"], r["concurrency"]) for r in rows] == [
        ("whisper-endpoint", 1),
        ("same-server-again", 1),
        ("whisper-endpoint", 3),
        ("same-server-again", 3),
    ]
    expected_audio = sum(c.duration_s for c in corpus)
    for r in rows:
        assert r["errors"] == {}
        assert r["requests"] == 3
        assert abs(r["audio_s"] - expected_audio) < 0.5
        assert r["wer_pct"] is not None and r["wer_pct"] < 10
        assert 0 < r["first_event_p50_s"] <= r["p50_s"]  # streamed: the first event comes before the end
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
