"""`whisper-endpoint bench`: a bounded HTTP load generator against any OpenAI-compatible server, and
the same load against peer servers in the same run (`--peer name=url`), so comparisons are ratios
measured on one machine at one time."""

from __future__ import annotations

import argparse
import asyncio
import json
import ssl
import statistics
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from whisper_endpoint.bench.corpus import corpus, durations_s, references

# The part of a run whose completions give the steady-state rate: a fixed number of requests from a
# fixed number of clients starts with the server filling its batch and ends with it draining.
STEADY_FROM, STEADY_TO = 0.2, 0.8


@dataclass
class Result:
    url: str
    concurrency: int
    requests: int = 0
    errors: dict[str, int] = field(default_factory=dict)
    audio_s: float = 0.0
    wall_s: float = 0.0
    latencies_s: list[float] = field(default_factory=list)
    completions: list[tuple[float, float]] = field(default_factory=list)  # (s since the start, audio s)
    first_event_s: list[float] = field(default_factory=list)  # streaming: time to the first event
    server_peak_rss_mib: float | None = None
    gpu_memory_mib: float | None = None
    wer_pct: float | None = None
    system: str = "whisper-endpoint"
    texts: dict[str, str] = field(default_factory=dict)

    def summary(self) -> dict[str, Any]:
        lat = sorted(self.latencies_s)
        first = sorted(self.first_event_s)

        def pct(p: float, values: list[float] = lat) -> float | None:
            return round(values[min(len(values) - 1, int(p * len(values)))], 3) if values else None

        return {
            "system": self.system,
            "url": self.url,
            "concurrency": self.concurrency,
            "requests": self.requests,
            "errors": self.errors,
            "audio_s": round(self.audio_s, 1),
            "wall_s": round(self.wall_s, 2),
            "rtfx": round(self.audio_s / self.wall_s, 2) if self.wall_s else None,
            "steady_rtfx": self.steady_rtfx(),
            "requests_per_s": round(len(lat) / self.wall_s, 2) if self.wall_s else None,
            "p50_s": pct(0.5),
            "p95_s": pct(0.95),
            "p99_s": pct(0.99),
            "mean_s": round(statistics.fmean(lat), 3) if lat else None,
            "first_event_p50_s": pct(0.5, first),
            "first_event_p95_s": pct(0.95, first),
            "server_peak_rss_mib": self.server_peak_rss_mib,
            "gpu_memory_mib": self.gpu_memory_mib,
            "wer_pct": self.wer_pct,
        }

    def steady_rtfx(self) -> float | None:
        """Audio of the requests completed between STEADY_FROM and STEADY_TO of the wall time, per second
        of that span: the rate without the batch's filling and draining (None for too short a run)."""
        start, end = STEADY_FROM * self.wall_s, STEADY_TO * self.wall_s
        audio = sum(seconds for at, seconds in self.completions if start <= at < end)
        return round(audio / (end - start), 2) if audio and end > start else None


def wait_ready(url: str, proc: subprocess.Popen[bytes], timeout_s: float, path: str = "/ready") -> float:
    """Seconds until the server started as `proc` answers 200 on `path`; it is killed if it never does."""
    import httpx

    started = time.monotonic()
    while time.monotonic() - started < timeout_s:
        if proc.poll() is not None:
            raise RuntimeError(f"the server exited with {proc.returncode} during start-up")
        try:
            if httpx.get(f"{url}{path}", timeout=2).status_code == 200:
                return time.monotonic() - started
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    proc.kill()
    raise RuntimeError(f"the server was not ready after {timeout_s:.0f} s")


def stop_server(proc: subprocess.Popen[bytes], timeout_s: float) -> None:
    """SIGTERM (the server drains), then SIGKILL if it has not exited within `timeout_s`."""
    proc.terminate()
    try:
        proc.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        proc.kill()


def status_mib(pid: int, field: str) -> float | None:
    """A memory figure of /proc/PID/status (VmRSS, VmHWM, RssAnon, ...) in MiB; None once the process is gone."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


def peak_rss_mib(pid: int) -> float | None:
    return status_mib(pid, "VmHWM")


@dataclass(frozen=True)
class Load:
    """What the load generator sends: `concurrency` clients posting `files` in turn, `requests` in all
    (default: the files once) or for `duration_s`. `tokens_per_30s` sends max_completion_tokens in
    proportion to each file's length (for servers decoding dummy weights to a fixed length). `ramp_s`
    spreads the clients' first requests evenly over that many seconds: clients that start together, sending
    files of one length, come back together and keep a batching server's batch filling and draining in waves."""

    files: Sequence[Path]
    concurrency: int
    requests: int | None = None
    duration_s: float | None = None
    model: str = "whisper-1"
    language: str | None = None
    api_key: str | None = None
    timeout_s: float = 600
    response_format: str = "verbose_json"
    stream: bool = False
    tokens_per_30s: int | None = None
    ramp_s: float = 0.0


async def run_load(url: str, load: Load) -> Result:
    """Run `load` against `url`. Audio seconds come from the files themselves, so any response format
    (and any server) can be timed."""
    import httpx

    result = Result(url, load.concurrency)
    lengths = durations_s(load.files)
    payloads = [(f.name, f.read_bytes(), lengths[f]) for f in load.files]
    total = load.requests if load.requests is not None else (None if load.duration_s else len(load.files))
    counter = iter(range(sys.maxsize))
    started = time.monotonic()
    headers = {"Authorization": f"Bearer {load.api_key}"} if load.api_key else {}

    def count_error(key: str) -> bool:
        result.errors[key] = result.errors.get(key, 0) + 1
        return False

    async def post(client: httpx.AsyncClient, name: str, data: bytes, form: dict[str, str]) -> bool:
        t0 = time.monotonic()
        upload = {"file": (name, data)}
        if not load.stream:
            response = await client.post(url, files=upload, data=form, headers=headers)
            if response.status_code != 200:
                return count_error(str(response.status_code))
            result.latencies_s.append(time.monotonic() - t0)
            result.texts[name] = response.json().get("text", "") if "json" in load.response_format else response.text
            return True
        parts: list[str] = []
        request = client.build_request("POST", url, files=upload, data=form, headers=headers)
        response = await client.send(request, stream=True)
        try:
            if response.status_code != 200:
                return count_error(str(response.status_code))
            async for line in response.aiter_lines():
                if not line.startswith("data:") or line.strip() == "data: [DONE]":
                    continue
                if not parts:
                    result.first_event_s.append(time.monotonic() - t0)
                event = json.loads(line[5:])
                if event.get("type") == "transcript.text.done":
                    parts = [event.get("text", "")]
                    break
                parts.append(event.get("delta", ""))
        finally:
            await response.aclose()
        result.latencies_s.append(time.monotonic() - t0)
        result.texts[name] = "".join(parts)
        return True

    async def client_loop(client: httpx.AsyncClient) -> None:
        while True:
            i = next(counter)
            if total is not None and i >= total:
                return
            if load.duration_s is not None and time.monotonic() - started > load.duration_s:
                return
            name, data, seconds = payloads[i % len(payloads)]
            form = {"model": load.model, "response_format": load.response_format}
            if load.language:
                form["language"] = load.language
            if load.stream:
                form["stream"] = "true"
            if load.tokens_per_30s:
                form["max_completion_tokens"] = str(max(1, round(load.tokens_per_30s * seconds / 30)))
            result.requests += 1
            try:
                if await post(client, name, data, form):
                    result.audio_s += seconds
                    result.completions.append((time.monotonic() - started, seconds))
            except httpx.HTTPError as exc:
                count_error(type(exc).__name__)

    tls = ssl.create_default_context()  # once: each client would load the CA certificates again

    async def one_client(index: int) -> None:
        await asyncio.sleep(load.ramp_s * index / load.concurrency)
        # A client of its own per connection: httpx's pool costs time in proportion to its connections
        # on every request, which capped one shared pool of 512 at about 80 uploads a second.
        limits = httpx.Limits(max_connections=1)
        async with httpx.AsyncClient(timeout=load.timeout_s, limits=limits, verify=tls) as client:
            await client_loop(client)

    await asyncio.gather(*(one_client(i) for i in range(load.concurrency)))
    result.wall_s = time.monotonic() - started
    return result


def gpu_memory_used_mib() -> float | None:
    """Memory in use on every visible GPU together, from nvidia-smi; None without one."""
    import subprocess

    try:
        out = subprocess.run(
            ["nvidia-smi", "--query-gpu=memory.used", "--format=csv,noheader,nounits"],
            capture_output=True,
            text=True,
            timeout=10,
        ).stdout
        return float(sum(float(v) for v in out.split()))
    except (OSError, ValueError, subprocess.SubprocessError):
        return None


def score(result: Result, refs: dict[str, str]) -> float | None:
    """Corpus WER in % of the transcripts against references, after Whisper's English normaliser."""
    pairs = [(refs[name], text) for name, text in result.texts.items() if refs.get(name)]
    if not pairs:
        return None
    import jiwer
    from whisper_normalizer.english import EnglishTextNormalizer

    norm = EnglishTextNormalizer()
    truth, said = zip(*((norm(r), norm(h)) for r, h in pairs), strict=True)
    return round(100 * float(jiwer.wer(list(truth), list(said))), 2)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--url", default="http://127.0.0.1:8000/v1/audio/transcriptions")
    parser.add_argument(
        "--peer",
        action="append",
        default=[],
        metavar="NAME=URL",
        help="another OpenAI-compatible server to put under the same load, in the same run (repeatable)",
    )
    parser.add_argument("--corpus", nargs="+", required=True, help="audio files or folders")
    parser.add_argument("--references", help="a TSV with `path` and `reference` columns: report WER")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1])
    parser.add_argument("--requests", type=int, help="requests per concurrency level (default: the corpus once)")
    parser.add_argument("--duration", type=float, help="seconds per concurrency level instead of a count")
    parser.add_argument("--language")
    parser.add_argument("--model", default="whisper-1")
    parser.add_argument("--response-format", default="json")
    parser.add_argument("--stream", action="store_true", help="stream=true: also time the first event")
    parser.add_argument("--tokens-per-30s", type=int, help="send max_completion_tokens in proportion to length")
    parser.add_argument("--ramp-s", type=float, default=0.0, help="start the clients evenly over this many seconds")
    parser.add_argument("--api-key")
    parser.add_argument("--server-pid", type=int, help="report this process's peak RSS")
    parser.add_argument("--output", help="write the JSON results here")
    parser.add_argument("--plot", help="write a PNG of RTFx and p95 latency against concurrency here")
    parser.set_defaults(func=main)


def main(args: argparse.Namespace) -> int:
    files = corpus(args.corpus)
    refs = references(Path(args.references)) if args.references else {}
    systems = [("whisper-endpoint", args.url)] + [tuple(p.split("=", 1)) for p in args.peer]
    results = []
    for level in args.concurrency:
        for system, url in systems:  # each level against every system back to back: same machine, same time
            load = Load(
                files,
                level,
                args.requests,
                args.duration,
                args.model,
                args.language,
                args.api_key,
                response_format=args.response_format,
                stream=args.stream,
                tokens_per_30s=args.tokens_per_30s,
                ramp_s=args.ramp_s,
            )
            result = asyncio.run(run_load(url, load))
            result.system = system
            result.gpu_memory_mib = gpu_memory_used_mib()
            result.wer_pct = score(result, refs)
            if args.server_pid and system == "whisper-endpoint":
                result.server_peak_rss_mib = peak_rss_mib(args.server_pid)
            summary = result.summary()
            results.append({**summary, "texts": result.texts})
            print(json.dumps(summary), flush=True)
    if args.output:
        Path(args.output).write_text(json.dumps(results, indent=2, ensure_ascii=False))
    if args.plot:
        from whisper_endpoint.bench.plot import plot

        plot(results, Path(args.plot))
    print(table(results))
    return 0


def table(results: list[dict[str, Any]]) -> str:
    lines = [f"{'system':<18} {'conc':>5} {'reqs':>5} {'errors':>6} {'RTFx':>8} {'p50 s':>7} {'p95 s':>7} {'WER %':>6}"]
    for r in results:
        wer = f"{r['wer_pct']:.2f}" if r.get("wer_pct") is not None else "-"
        lines.append(
            f"{r['system']:<18} {r['concurrency']:>5} {r['requests']:>5} {sum(r['errors'].values()):>6} "
            f"{r['rtfx'] or 0:>8.1f} {r['p50_s'] or 0:>7.2f} {r['p95_s'] or 0:>7.2f} {wer:>6}"
        )
    return "\n".join(lines)
