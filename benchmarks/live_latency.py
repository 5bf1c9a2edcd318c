"""Live transcription latency: from the end of a turn's speech to its completed transcript, N sessions at once.

    python -m benchmarks.live_latency [--models tiny.en base] [--sessions 1 8 32] [--clips 2] [--out FILE]

Starts `whisper-endpoint serve` per model on a loopback port. Each session streams LibriSpeech test-clean clips
(each followed by 1.5 s of silence) as 24 kHz pcm16 in 100 ms appends at real time, with server VAD at OpenAI's
defaults (threshold 0.5, 300 ms padding, 500 ms silence). A turn's latency runs from the moment the client sent
the audio at the turn's `audio_end_ms` to its `completed` event: the 500 ms of silence the VAD waits for, then
the decode, queued behind every other session's. Prints p50/p95 per model and session count; writes JSON.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks import command_line

CHUNK_MS = 100
RATE = 24_000
GAP_S = 1.5


def session_audio(clip_paths: list[Path]) -> bytes:
    from tests.api.test_realtime import pcm16

    from whisper_endpoint.audio.decode import AudioSource, load_audio

    parts = []
    for path in clip_paths:
        parts += [load_audio(AudioSource(path)), np.zeros(int(GAP_S * 16_000), np.float32)]
    return pcm16(np.concatenate(parts), RATE)


def one_session(url: str, audio: bytes, latencies: list[float], errors: list[str]) -> None:
    from websockets.sync.client import connect

    step = RATE * 2 * CHUNK_MS // 1000
    sent_at: list[float] = []  # wall time each chunk was sent, by chunk index
    try:
        with connect(url, max_size=None) as ws:
            ws.recv(timeout=30)  # session.created
            ws.send(json.dumps({"type": "session.update", "session": {"audio": {"input": {
                "transcription": {"language": "en"}}}}}))  # fmt: skip
            stopped: dict[str, int] = {}
            done: set[str] = set()
            cleared = threading.Event()

            def read() -> None:
                try:
                    receive_all()
                except Exception as exc:
                    errors.append(repr(exc))

            def receive_all() -> None:
                # Until the server has read every append (its answer to the final clear comes after them all)
                # and every turn it stopped has its completed event.
                while not cleared.is_set() or len(done) < len(stopped):
                    event = json.loads(ws.recv(timeout=120))
                    if event["type"] == "input_audio_buffer.speech_stopped":
                        stopped[event["item_id"]] = event["audio_end_ms"]
                    elif event["type"] == "conversation.item.input_audio_transcription.completed":
                        end_chunk = min(len(sent_at) - 1, stopped[event["item_id"]] // CHUNK_MS)
                        latencies.append(time.monotonic() - sent_at[end_chunk])
                        done.add(event["item_id"])
                    elif event["type"] == "input_audio_buffer.cleared":
                        cleared.set()
                    elif event["type"] == "error":
                        errors.append(event["error"]["message"])

            reader = threading.Thread(target=read)
            reader.start()
            start = time.monotonic()
            for i in range(0, len(audio), step):
                time.sleep(max(0.0, start + len(sent_at) * CHUNK_MS / 1000 - time.monotonic()))
                sent_at.append(time.monotonic())
                chunk = base64.b64encode(audio[i : i + step]).decode()
                ws.send(json.dumps({"type": "input_audio_buffer.append", "audio": chunk}))
            ws.send(json.dumps({"type": "input_audio_buffer.clear"}))
            reader.join(timeout=300)
    except Exception as exc:  # one session failing is a result, not the benchmark's end
        errors.append(repr(exc))


def run(model: str, sessions: list[int], clips_per_session: int, port: int, log: Path) -> list[dict[str, Any]]:
    from tests.datasets import clips

    from whisper_endpoint.bench import peak_rss_mib, wait_ready

    corpus = [c.path for c in clips("B_librispeech/test-clean") if 4 <= c.duration_s <= 12]
    proc = subprocess.Popen(
        [sys.executable, "-m", "whisper_endpoint", "serve", "--model", model, "--port", str(port)],
        stdout=log.open("wb"),
        stderr=subprocess.STDOUT,
        env={**os.environ, "WHISPER_MAX_INFLIGHT_REQUESTS": "256"},
    )
    rows = []
    try:
        wait_ready(f"http://127.0.0.1:{port}", proc, 300)
        url = f"ws://127.0.0.1:{port}/v1/realtime?intent=transcription"
        for n in sessions:
            latencies: list[float] = []
            errors: list[str] = []
            threads = []
            for s in range(n):
                chosen = [corpus[(s * clips_per_session + k) % len(corpus)] for k in range(clips_per_session)]
                threads.append(
                    threading.Thread(target=one_session, args=(url, session_audio(chosen), latencies, errors))
                )
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            values = np.array(latencies) if latencies else np.array([np.nan])
            row = {
                "model": model,
                "sessions": n,
                "turns": len(latencies),
                "p50_s": round(float(np.percentile(values, 50)), 2),
                "p95_s": round(float(np.percentile(values, 95)), 2),
                "errors": errors[:5],
                "server_peak_rss_mib": peak_rss_mib(proc.pid),
            }
            rows.append(row)
            print(json.dumps(row), flush=True)
    finally:
        proc.terminate()
        proc.wait(timeout=60)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=["tiny.en", "base"])
    parser.add_argument("--sessions", type=int, nargs="+", default=[1, 8, 32])
    parser.add_argument("--clips", type=int, default=2, help="clips per session")
    parser.add_argument("--port", type=int, default=0, help="default: a free one")
    parser.add_argument("--out")
    args = parser.parse_args()
    logs = Path(tempfile.gettempdir()) / "live-latency"  # each server's log, for a run that went wrong
    if not args.port:
        from tests.conftest import free_port

        args.port = free_port()
    rows = [
        row
        for model in args.models
        for row in run(model, args.sessions, args.clips, args.port, Path(f"{logs}-{model}-server.log"))
    ]
    print(f"{'model':<8} {'sessions':>8} {'turns':>6} {'p50 s':>6} {'p95 s':>6} {'RSS MiB':>8} errors")
    for r in rows:
        print(
            f"{r['model']:<8} {r['sessions']:>8} {r['turns']:>6} {r['p50_s']:>6} {r['p95_s']:>6} "
            f"{r['server_peak_rss_mib'] or 0:>8.0f} {len(r['errors'])}"
        )
    if args.out:
        doc = {
            "date": time.strftime("%Y-%m-%d"),
            "cores": os.cpu_count(),
            "command": command_line("benchmarks.live_latency"),
            "rows": rows,
        }
        Path(args.out).write_text(json.dumps(doc, indent=2))


if __name__ == "__main__":
    main()
