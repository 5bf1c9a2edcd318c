"""`whisper-endpoint bench`: a bounded HTTP load generator against any OpenAI-compatible server."""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

AUDIO_SUFFIXES = {".flac", ".mp3", ".wav", ".m4a", ".ogg", ".opus", ".webm", ".mp4"}


@dataclass
class Result:
    url: str
    concurrency: int
    requests: int = 0
    errors: dict[str, int] = field(default_factory=dict)
    audio_s: float = 0.0
    wall_s: float = 0.0
    latencies_s: list[float] = field(default_factory=list)
    server_peak_rss_mib: float | None = None
    texts: dict[str, str] = field(default_factory=dict)

    def summary(self) -> dict[str, Any]:
        lat = sorted(self.latencies_s)

        def pct(p: float) -> float | None:
            return round(lat[min(len(lat) - 1, int(p * len(lat)))], 3) if lat else None

        return {
            "url": self.url,
            "concurrency": self.concurrency,
            "requests": self.requests,
            "errors": self.errors,
            "audio_s": round(self.audio_s, 1),
            "wall_s": round(self.wall_s, 2),
            "rtfx": round(self.audio_s / self.wall_s, 2) if self.wall_s else None,
            "requests_per_s": round(len(lat) / self.wall_s, 2) if self.wall_s else None,
            "p50_s": pct(0.5),
            "p95_s": pct(0.95),
            "p99_s": pct(0.99),
            "mean_s": round(statistics.fmean(lat), 3) if lat else None,
            "server_peak_rss_mib": self.server_peak_rss_mib,
        }


def corpus(paths: list[str]) -> list[Path]:
    files: list[Path] = []
    for p in map(Path, paths):
        files += sorted(f for f in p.rglob("*") if f.suffix.lower() in AUDIO_SUFFIXES) if p.is_dir() else [p]
    if not files:
        raise SystemExit("bench: no audio files in the corpus")
    return files


def peak_rss_mib(pid: int) -> float | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


async def run_load(
    url: str,
    files: list[Path],
    concurrency: int,
    requests: int | None,
    duration_s: float | None,
    model: str = "whisper-1",
    language: str | None = None,
    api_key: str | None = None,
    timeout_s: float = 600,
) -> Result:
    import httpx

    result = Result(url, concurrency)
    payloads = [(f.name, f.read_bytes()) for f in files]
    total = requests if requests is not None else (None if duration_s else len(files))
    counter = iter(range(sys.maxsize))
    started = time.monotonic()
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}

    async def client_loop(client: httpx.AsyncClient) -> None:
        while True:
            i = next(counter)
            if total is not None and i >= total:
                return
            if duration_s is not None and time.monotonic() - started > duration_s:
                return
            name, data = payloads[i % len(payloads)]
            form = {"model": model, "response_format": "verbose_json"}
            if language:
                form["language"] = language
            t0 = time.monotonic()
            try:
                response = await client.post(url, files={"file": (name, data)}, data=form, headers=headers)
            except httpx.HTTPError as exc:
                result.errors[type(exc).__name__] = result.errors.get(type(exc).__name__, 0) + 1
                continue
            result.requests += 1
            if response.status_code != 200:
                key = str(response.status_code)
                result.errors[key] = result.errors.get(key, 0) + 1
                continue
            result.latencies_s.append(time.monotonic() - t0)
            body = response.json()
            result.audio_s += float(body.get("duration", 0))
            result.texts[name] = body.get("text", "")

    limits = httpx.Limits(max_connections=concurrency)
    async with httpx.AsyncClient(timeout=timeout_s, limits=limits) as client:
        await asyncio.gather(*(client_loop(client) for _ in range(concurrency)))
    result.wall_s = time.monotonic() - started
    return result


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--url", default="http://127.0.0.1:8000/v1/audio/transcriptions")
    parser.add_argument("--corpus", nargs="+", required=True, help="audio files or folders")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1])
    parser.add_argument("--requests", type=int, help="requests per concurrency level (default: the corpus once)")
    parser.add_argument("--duration", type=float, help="seconds per concurrency level instead of a count")
    parser.add_argument("--language")
    parser.add_argument("--model", default="whisper-1")
    parser.add_argument("--api-key")
    parser.add_argument("--server-pid", type=int, help="report this process's peak RSS")
    parser.add_argument("--output", help="write the JSON results here")
    parser.set_defaults(func=main)


def main(args: argparse.Namespace) -> int:
    files = corpus(args.corpus)
    results = []
    for level in args.concurrency:
        result = asyncio.run(
            run_load(args.url, files, level, args.requests, args.duration, args.model, args.language, args.api_key)
        )
        if args.server_pid:
            result.server_peak_rss_mib = peak_rss_mib(args.server_pid)
        summary = result.summary()
        results.append({**summary, "texts": result.texts})
        print(json.dumps(summary), flush=True)
    if args.output:
        Path(args.output).write_text(json.dumps(results, indent=2, ensure_ascii=False))
    print(f"{'conc':>5} {'reqs':>5} {'errors':>7} {'RTFx':>8} {'p50 s':>7} {'p95 s':>7} {'p99 s':>7}")
    for r in results:
        print(
            f"{r['concurrency']:>5} {r['requests']:>5} {sum(r['errors'].values()):>7} {r['rtfx'] or 0:>8.2f} "
            f"{r['p50_s'] or 0:>7.2f} {r['p95_s'] or 0:>7.2f} {r['p99_s'] or 0:>7.2f}"
        )
    return 0
