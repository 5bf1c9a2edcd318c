"""How many uploads the HTTP server itself can carry, with an engine that costs nothing.

    python -m benchmarks.server_overhead --data DIR [--requests 300] [--concurrency 64] [--profile]
        [--tokenizer-src FOLDER] [--tree SRC ...]

The server runs as it does with vLLM (the engine in a process of its own, uploads decoded and cut at
silences in front-end worker processes, request threads calling the engine directly), but its engine
answers each window at once with a finished decode of 100 tokens per 30 s. So the RTFx measured is the
server's own ceiling on this machine's cores: decoding FLAC, VAD, chunking, moving windows to the engine
process and back, building segments and responses, HTTP. Uploads are the GPU benchmark's 30 s FLAC files of
LibriSpeech (every file unique). `--tokenizer-src` names a folder with Whisper's multilingual
`tokenizer.json`, for hosts without the bundled model (the GPU hosts). `--profile` samples the server
process's thread stacks (`benchmarks/stack_sampler.py`). `--tree` runs each source tree given (`.` for this
one, or an earlier commit's `src/`) in turn in the same command. Windows that come without their log-mel have
it computed by the engine process, as vLLM's engine does, so a design that computes it elsewhere is charged
the same work. Not a benchmark of transcription: the engine does no other work.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

from benchmarks import command_line
from whisper_endpoint.audio.features import log_mel_window
from whisper_endpoint.config import Settings
from whisper_endpoint.decoding.tokenizer import MS_PER_TIMESTAMP, Tokenizer
from whisper_endpoint.engines.base import AlignInput, Alignment, Cancellation, Generation, SamplingOptions, WindowInput
from whisper_endpoint.engines.vllm import VllmEngine  # its capabilities only: vLLM is imported when one starts

PORT = 8191
TOKENIZER_ENV = "SERVER_OVERHEAD_TOKENIZER"  # read by the server process's engine process
TOKENS_PER_30S = 100


class InstantEngine:
    """vLLM's capabilities, no work: every window decodes at once to text and a closing timestamp."""

    name = "instant"
    # as vLLM 0.26's engine ends up once its log-mel check passes (bf16 features); earlier trees lack the field
    bf16 = {"log_mel_bf16": True} if hasattr(VllmEngine.capabilities, "log_mel_bf16") else {}
    capabilities = replace(VllmEngine.capabilities, token_logprobs=False, **bf16)

    def __init__(self, settings: Settings) -> None:
        from whisper_endpoint.models import resolve_model

        given = os.environ.get(TOKENIZER_ENV)
        folder = Path(given) if given else resolve_model("base", settings.cache_dir).path
        self.model_name = "instant"
        self.tokenizer = Tokenizer.from_file(folder / "tokenizer.json", True)
        self.n_mels = 128  # large-v3's
        self.multilingual = True
        self.max_batch_size = 512
        self._words = self.tokenizer.encode(" and so my fellow americans ask not what your country can do for you")

    def generate(
        self, windows: Sequence[WindowInput], options: SamplingOptions, cancellation: Cancellation | None = None
    ) -> list[Generation]:
        out = []
        for w in windows:
            if w.features is None and w.samples is not None:  # the caller left the log-mel to the engine
                log_mel_window(w.samples, self.n_mels)
            count = max(1, round(TOKENS_PER_30S * min(w.duration_ms, 30_000) / 30_000))
            text = (self._words * (count // len(self._words) + 1))[:count]
            end = self.tokenizer.timestamp_begin + min(w.duration_ms, 30_000) // MS_PER_TIMESTAMP
            out.append(Generation((self.tokenizer.timestamp_begin, *text, end), -0.1 * count, 0.0, None))
        return out

    def detect_language(self, windows: Sequence[WindowInput]) -> list[dict[str, float]]:
        return [{"en": 1.0} for _ in windows]

    def align(self, items: Sequence[AlignInput]) -> list[Alignment]:
        raise NotImplementedError

    def close(self) -> None:
        pass


def instant_engine(settings: Settings) -> InstantEngine:
    return InstantEngine(settings)


def serve(port: int) -> None:
    from whisper_endpoint.api.app import create_app
    from whisper_endpoint.engines.process import ProcessEngine
    from whisper_endpoint.serving.shutdown import serve as run

    settings = Settings(port=port, log_level="warning", max_inflight_requests=4096, max_queued_audio_s=10_000_000)
    engine = ProcessEngine(instant_engine, settings)
    try:
        run(create_app(settings, engine), settings)
    finally:
        engine.close()  # an engine handed to create_app stays the caller's to close


def cores_busy(
    before: dict[int, tuple[str, float]], after: dict[int, tuple[str, float]], server: int, wall_s: float
) -> dict[str, float]:
    """Cores' worth of CPU over the run: the server process, the engine process (the busier of its first
    two children: the other is multiprocessing's resource tracker) and the front-end workers together."""
    from benchmarks.proc_stats import cpu_used_s

    used = cpu_used_s(before, after)
    children = sorted(p for p in used if p != server)
    engine = max(children[:2], key=lambda p: used[p]) if children else None
    workers = sum(t for p, t in used.items() if p not in (server, engine))
    return {
        "server_process": round(used.get(server, 0.0) / wall_s, 2),
        "engine_process": round(used[engine] / wall_s, 2) if engine else 0.0,
        "front_end_workers": round(workers / wall_s, 2),
    }


def run_tree(tree: str, files: list[Path], args: argparse.Namespace) -> list[dict[str, object]]:
    """Every concurrency level against a server of source tree `tree` ("." for this one)."""
    from benchmarks.gpu_http import tree_peak_rss_mib
    from benchmarks.proc_stats import process_cpu_s
    from whisper_endpoint.bench import Load, run_load, wait_ready

    cmd = [sys.executable, "-m", "benchmarks.server_overhead", "--serve", str(PORT)]
    stacks = Path(args.work) / "server.stacks.txt"
    if args.profile:
        cmd[1:1] = ["-m", "benchmarks.stack_sampler", str(stacks)]
    url = f"http://127.0.0.1:{PORT}"
    # as `serve` sets them for the processes it starts
    env = {**os.environ, "MALLOC_ARENA_MAX": "2", "OPENBLAS_NUM_THREADS": "1"}
    if args.tokenizer_src:
        env[TOKENIZER_ENV] = str(Path(args.tokenizer_src).resolve())
    if tree != ".":
        env["PYTHONPATH"] = os.pathsep.join([str(Path(tree).resolve()), os.getcwd(), env.get("PYTHONPATH", "")])
    proc = subprocess.Popen(cmd, env=env)
    rows = []
    try:
        wait_ready(url, proc, 120)
        for level in args.concurrency:
            cpu0, t0 = process_cpu_s(proc.pid), time.monotonic()
            result = asyncio.run(run_load(f"{url}/v1/audio/transcriptions", Load(files, level, response_format="json")))
            busy = cores_busy(cpu0, process_cpu_s(proc.pid), proc.pid, time.monotonic() - t0)
            total_mib, by_process = tree_peak_rss_mib(proc.pid)
            row = {**result.summary(), "tree": tree, "cores_busy": busy, "peak_rss_mib": total_mib}
            row["peak_rss_mib_by_process"] = by_process
            rows.append(row)
            print(json.dumps(row), flush=True)
    finally:
        proc.terminate()
        proc.wait(timeout=60)
    if args.profile:
        print(f"stacks: {stacks}")
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data")
    parser.add_argument("--work", default="/tmp/whisper-endpoint-overhead")
    parser.add_argument("--out", default="benchmarks/results")
    parser.add_argument("--requests", type=int, default=300)
    parser.add_argument("--concurrency", type=int, nargs="+", default=[16, 64])
    parser.add_argument("--profile", action="store_true", help="sample the server's thread stacks")
    parser.add_argument("--tokenizer-src", help="folder with tokenizer.json (default: the bundled base model)")
    parser.add_argument("--tree", nargs="+", default=["."], help="source trees to run: . or an earlier src/")
    parser.add_argument("--serve", type=int, metavar="PORT", help="(internal) run the server on PORT")
    args = parser.parse_args()
    if args.serve:
        serve(args.serve)
        return
    from benchmarks.gpu_http import corpora

    files = corpora(Path(args.data), Path(args.work), args.requests, 0)["30s"]
    rows = []
    for tree in args.tree:
        rows += run_tree(tree, files, args)
    doc = {
        "what": "HTTP server with an engine that does no work (InstantEngine): the server's own ceiling",
        "cores": os.cpu_count(),
        "date": time.strftime("%Y-%m-%d"),
        "command": command_line("benchmarks.server_overhead", args.data),
        "rows": rows,
    }
    out = Path(args.out) / f"server-overhead-{doc['date']}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(doc, indent=2))
    print(
        "tree | concurrency | RTFx | requests/s | p50 s | p99 s | peak RSS MiB | cores busy: server, engine, front-end"
    )
    for r in rows:
        keys = ("tree", "concurrency", "rtfx", "requests_per_s", "p50_s", "p99_s", "peak_rss_mib")
        print(*(r[k] for k in keys), ", ".join(map(str, r["cores_busy"].values())), sep=" | ")  # type: ignore[attr-defined]


if __name__ == "__main__":
    main()
