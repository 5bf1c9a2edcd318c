"""CPU load benchmark: our server at several concurrencies beside faster-whisper, same weights, same run.

    python -m benchmarks.cpu_load [--concurrency 1 4 16] [--passes 2]

Starts `whisper-endpoint serve` (bundled `base`, CTranslate2 int8) on a loopback port, sends the LibriSpeech
test-clean clips with `whisper-endpoint bench`'s load generator, then transcribes the same clips in this
process with faster-whisper's `WhisperModel.transcribe` (greedy, one file at a time) and its
`BatchedInferencePipeline`, on the same model folder and cores. Prints a table; writes JSON.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import subprocess
import sys
import time
from datetime import date
from pathlib import Path
from typing import Any

from tests.datasets import Clip, clips, wer

from whisper_endpoint.bench import Load, peak_rss_mib, run_load, wait_ready
from whisper_endpoint.config import Settings
from whisper_endpoint.models import resolve_model


def start_server(port: int, env: dict[str, str]) -> subprocess.Popen[bytes]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "whisper_endpoint", "serve", "--model", "base", "--port", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env={**os.environ, **env},
    )
    wait_ready(f"http://127.0.0.1:{port}", proc, 300)
    return proc


def score(corpus: list[Clip], texts: dict[str, str]) -> float:
    return round(100 * wer([c.reference for c in corpus], [texts.get(c.path.name, "") for c in corpus]), 2)


def ours(corpus: list[Clip], levels: list[int], passes: int, port: int, pack: bool = True) -> list[dict[str, Any]]:
    proc = start_server(port, {"WHISPER_PACK_WINDOWS": str(pack).lower()})
    name = "whisper-endpoint" + ("" if pack else " (packing off)")
    url = f"http://127.0.0.1:{port}/v1/audio/transcriptions"
    rows = []
    try:
        for level in levels:
            result = asyncio.run(
                run_load(url, Load([c.path for c in corpus], level, passes * len(corpus), language="en"))
            )
            result.server_peak_rss_mib = peak_rss_mib(proc.pid)
            rows.append({"system": name, **result.summary(), "wer_pct": score(corpus, result.texts)})
            print(json.dumps(rows[-1]), flush=True)
    finally:
        proc.terminate()
        proc.wait(timeout=60)
    return rows


def faster_whisper(corpus: list[Clip], batched: bool) -> dict[str, Any]:
    from faster_whisper import BatchedInferencePipeline, WhisperModel

    folder = resolve_model("base", Settings().cache_dir).path
    model = WhisperModel(str(folder), device="cpu", compute_type="int8", cpu_threads=os.cpu_count() or 1)
    pipeline = BatchedInferencePipeline(model) if batched else None
    texts, latencies = {}, []
    started = time.monotonic()
    for clip in corpus:
        t0 = time.monotonic()
        if pipeline is not None:
            segments, _ = pipeline.transcribe(str(clip.path), language="en", beam_size=1, batch_size=8)
        else:
            segments, _ = model.transcribe(str(clip.path), language="en", beam_size=1)
        texts[clip.path.name] = "".join(s.text for s in segments).strip()
        latencies.append(time.monotonic() - t0)
    wall = time.monotonic() - started
    audio = sum(c.duration_s for c in corpus)
    latencies.sort()
    return {
        "system": "faster-whisper "
        + ("BatchedInferencePipeline(batch_size=8)" if batched else "WhisperModel.transcribe"),
        "concurrency": 1,
        "requests": len(corpus),
        "audio_s": round(audio, 1),
        "wall_s": round(wall, 2),
        "rtfx": round(audio / wall, 2),
        "p50_s": round(latencies[len(latencies) // 2], 3),
        "p99_s": round(latencies[min(len(latencies) - 1, int(0.99 * len(latencies)))], 3),
        "wer_pct": score(corpus, texts),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 4, 16])
    parser.add_argument("--passes", type=int, default=2, help="times each concurrency level sends the corpus")
    parser.add_argument("--port", type=int, default=8765)
    parser.add_argument("--output", default=f"benchmarks/results/cpu-load-{date.today()}.json")
    args = parser.parse_args()

    corpus = clips("B_librispeech/test-clean")
    rows = [faster_whisper(corpus, batched=False)]
    print(json.dumps(rows[-1]), flush=True)
    rows += ours(corpus, args.concurrency, args.passes, args.port)
    rows += ours(corpus, [max(args.concurrency)], args.passes, args.port, pack=False)
    rows.append(faster_whisper(corpus, batched=True))
    print(json.dumps(rows[-1]), flush=True)

    machine = {"cpus": os.cpu_count(), "python": platform.python_version(), "date": str(date.today())}
    Path(args.output).parent.mkdir(parents=True, exist_ok=True)
    Path(args.output).write_text(
        json.dumps({"machine": machine, "corpus": "LibriSpeech test-clean, 74 clips", "results": rows}, indent=2) + "\n"
    )
    print(f"\n{'system':<52} {'conc':>4} {'RTFx':>6} {'p50 s':>6} {'p99 s':>6} {'WER %':>6} {'RSS MiB':>8}")
    for r in rows:
        print(
            f"{r['system']:<52} {r['concurrency']:>4} {r['rtfx']:>6.2f} {r['p50_s']:>6.2f} {r['p99_s']:>6.2f} "
            f"{r['wer_pct']:>6.2f} {r.get('server_peak_rss_mib') or 0:>8.0f}"
        )


if __name__ == "__main__":
    main()
