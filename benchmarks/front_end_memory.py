"""What a front-end process holds for each request waiting on the engine, on a CPU.

    python -m benchmarks.front_end_memory --data DIR [--requests 64] [--label NAME] [--out FILE]

One front-end process, started as `serve` starts them (run this with MALLOC_ARENA_MAX=2, as `serve` sets it
for its processes), is given `--requests` uploads of 30 s LibriSpeech FLAC at once. Its engine is tiny.en's
description presented as vLLM's (bf16 log-mel in, batching on its own), answering no call until every request
has sent one: then each request's window waits in the engine, as about 64 do in each of 16 front-end processes
under 1,024 clients on a GPU host. Reported: the process's RSS then less its RSS before the requests, per
request, and its peak; then the time and page faults of one 30 s log-mel (128 bins) in this process. Run it
with another tree first on PYTHONPATH (an earlier commit's `src/`) or with glibc's MALLOC_* variables set to
compare; `--label` names the run in the results file (appended to).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import threading
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path
from typing import Any

from benchmarks import command_line
from whisper_endpoint.audio import SAMPLE_RATE
from whisper_endpoint.audio.decode import AudioSource, load_audio
from whisper_endpoint.audio.features import bf16_bits, log_mel_window
from whisper_endpoint.bench import status_mib
from whisper_endpoint.bench.corpus import make_corpus
from whisper_endpoint.config import Settings
from whisper_endpoint.decoding.options import DecodeOptions
from whisper_endpoint.decoding.transcribe import RunInfo
from whisper_endpoint.engines.base import DescribedEngine, EngineDescription, Generation, SamplingOptions
from whisper_endpoint.engines.ctranslate2 import CTranslate2Engine
from whisper_endpoint.engines.process import EngineListener, engine_handler
from whisper_endpoint.serving.frontend import FrontEndProcesses

SECONDS = 30.0
WAIT_S = 300.0


class HoldingEngine(DescribedEngine):
    """Answers no call until `expected` calls have arrived, then each with a finished decode of its window."""

    def __init__(self, description: EngineDescription, expected: int) -> None:
        super().__init__(description)
        self.expected = expected
        self.arrived = 0
        self._lock = threading.Lock()
        self.release = threading.Event()

    def generate(self, windows: Sequence[Any], options: SamplingOptions, cancellation: Any = None) -> list[Generation]:
        count = len(windows)
        with self._lock:
            self.arrived += 1
        self.release.wait(WAIT_S)
        tb = self.tokenizer.timestamp_begin
        text = self.tokenizer.encode(" hello there")
        return [Generation((tb, *text, tb + 1500), -1.0, 0.01) for _ in range(count)]

    def detect_language(self, windows: Sequence[Any]) -> list[dict[str, float]]:
        return [{"en": 1.0} for _ in windows]

    def align(self, items: Sequence[Any]) -> list[Any]:
        raise NotImplementedError

    def close(self) -> None:
        pass


def _mib(pid: int, field: str) -> float:
    value = status_mib(pid, field)
    if value is None:
        raise RuntimeError(f"the front-end process {pid} has ended")
    return value


def measure(files: list[Path], requests: int) -> dict[str, float]:
    tiny = CTranslate2Engine.from_settings(Settings(model="tiny.en"))
    description = EngineDescription.of(tiny)
    as_vllm = replace(description.capabilities, log_mel_bf16=True, continuous_batching=True)
    engine = HoldingEngine(replace(description, capabilities=as_vllm), requests)
    calls = ThreadPoolExecutor(requests + 8)
    listener = EngineListener(engine_handler(engine), calls)
    pool = FrontEndProcesses(1, [listener.address], engine)
    pool.start()
    pid = pool._running[0].process.pid
    idle = _mib(pid, "VmRSS")
    options = DecodeOptions(language="en")

    def one(i: int) -> int:
        return len(list(pool.transcribe(f"r{i}", AudioSource(files[i % len(files)]), options, RunInfo())))

    try:
        with ThreadPoolExecutor(requests) as clients:
            futures = [clients.submit(one, i) for i in range(requests)]
            deadline = time.monotonic() + WAIT_S
            while engine.arrived < requests and time.monotonic() < deadline:
                time.sleep(0.2)
            time.sleep(1.0)  # the last windows' messages settle
            held, peak = _mib(pid, "VmRSS"), _mib(pid, "VmHWM")
            engine.release.set()
            segments = sum(f.result() for f in futures)
    finally:
        pool.close()
        listener.close()
        calls.shutdown(wait=False)
    return {
        "requests": requests,
        "windows_waiting": engine.arrived,
        "idle_rss_mib": round(idle, 1),
        "held_rss_mib": round(held, 1),
        "peak_rss_mib": round(peak, 1),
        "per_request_mib": round((held - idle) / requests, 2),
        "segments": segments,
    }


def log_mel_cost(files: list[Path], count: int = 40) -> dict[str, float]:
    """A 30 s window's log-mel in this process (glibc's settings apply here too): mean ms and page faults."""
    samples = load_audio(AudioSource(files[0]))[: int(SECONDS * SAMPLE_RATE)]
    for _ in range(3):
        bf16_bits(log_mel_window(samples, 128))
    faults, started = resource.getrusage(resource.RUSAGE_SELF).ru_minflt, time.perf_counter()
    for _ in range(count):
        bf16_bits(log_mel_window(samples, 128))
    elapsed = time.perf_counter() - started
    faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - faults
    return {"log_mel_ms": round(1000 * elapsed / count, 1), "log_mel_page_faults": round(faults / count)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, required=True)
    parser.add_argument("--requests", type=int, default=64)
    parser.add_argument("--work", type=Path, default=Path("/tmp/whisper-endpoint-front-end-memory"))
    parser.add_argument("--label", default="this tree")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    corpus = args.work / "30s"
    files = sorted(corpus.glob("*.flac"))
    if len(files) < args.requests:
        sources = sorted((args.data / "B_librispeech" / "test-clean").glob("*.flac"))
        files = make_corpus(sources, corpus, args.requests, SECONDS)
    malloc = {k: v for k, v in sorted(os.environ.items()) if k.startswith("MALLOC_")}
    row = {"label": args.label, "malloc": malloc, **measure(files, args.requests), **log_mel_cost(files)}
    print(json.dumps(row))
    if args.out:
        doc = json.loads(args.out.read_text()) if args.out.exists() else {"runs": []}
        doc["runs"].append({"command": command_line("benchmarks.front_end_memory", str(args.data)), **row})
        args.out.write_text(json.dumps(doc, indent=1) + "\n")


if __name__ == "__main__":
    main()
