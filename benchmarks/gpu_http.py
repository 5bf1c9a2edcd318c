"""whisper-endpoint against vLLM's own server, through HTTP, on one GPU, in the same run.

    python -m benchmarks.gpu_http --data DIR --tokenizer-src DIR --checkpoint-script FILE \\
        --system vllm-serve --system whisper-endpoint [--system whisper-endpoint@SRC] --out DIR

whisper-large-v3's shape with dummy weights (vLLM's load_format=dummy), bf16, fp8 KV cache, 512
sequences, on both servers. Uploads are FLAC files of real speech (LibriSpeech test-clean), each one
unique (dithered), in two corpora: 30 s windows, and the clips themselves (5-15 s). Every 30 s of audio
decodes 100 tokens: vLLM's server is sent max_completion_tokens in proportion to each file's length,
ours runs with WHISPER_FORCED_TOKENS_PER_30S=100 (each VAD chunk decodes in proportion to its length).
Each server starts, takes every load, and stops before the next one starts.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

from benchmarks.gpu_check import PORT, add_checkpoint_arguments, large_v3_shape
from benchmarks.gpu_probe import py_spy_dumps
from whisper_endpoint.bench import stop_server, wait_ready

TOKENS_PER_30S = 100
PY_SPY_AFTER_S = 20.0  # into a load, once the engine is full


def _log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


def _descendants(pid: int) -> list[int]:
    children = [
        int(c) for c in subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True).stdout.split()
    ]
    return [pid] + [d for c in children for d in _descendants(c)]


def tree_peak_rss_mib(pid: int) -> tuple[float, dict[str, float]]:
    """Peak RSS of a process and all its descendants (vLLM's engine core is a child of our engine process, a
    grandchild of the server), summed, and by process name (processes of one name added up)."""
    from whisper_endpoint.bench import peak_rss_mib

    by_name: dict[str, float] = {}
    for p in _descendants(pid):
        try:
            name = Path(f"/proc/{p}/comm").read_text().strip()
        except OSError:
            continue
        by_name[name] = round(by_name.get(name, 0.0) + (peak_rss_mib(p) or 0.0), 1)
    return round(sum(by_name.values()), 1), by_name


DRIVER_REPORT = "vLLM engine: "  # the engine driver's 10 s reports in our server's log
START_STEP_REPORT = "a step starting windows ran "  # engines/vllm_decoder.py


def _after(marker: str, log_text: str, having: str) -> list[str]:
    """What follows `marker` on each line of a log that holds `having`."""
    return [line.split(marker, 1)[1].strip() for line in log_text.splitlines() if having in line]


def driver_reports(log_text: str) -> list[str]:
    """The engine driver's reports (windows per step, windows added and finished, steps a second) in a log."""
    return _after(DRIVER_REPORT, log_text, having="windows per step")


def start_step_paths(log_text: str) -> list[str]:
    """How steps that start windows ran (engines/vllm_decoder.py logs it once per way, in vLLM's
    engine core): "compiled", or eagerly with the reason."""
    return _after(START_STEP_REPORT, log_text, having=START_STEP_REPORT)


def windows_decoded(url: str) -> float | None:
    """Windows our server has transcribed so far (its whisper_windows counter)."""
    import httpx

    try:
        text = httpx.get(f"{url}/metrics", timeout=10).text
    except httpx.HTTPError:
        return None
    return sum(float(line.split()[-1]) for line in text.splitlines() if line.startswith("whisper_windows_total"))


MAX_NAME_CHARS = 200  # the results file's name, under file systems' 255


def file_label(system: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]", "-", system)


def is_vllm_serve(system: str) -> bool:
    return system.partition(":")[0] == "vllm-serve"


def start(system: str, checkpoint: Path, log: Path, profile: bool = False) -> subprocess.Popen[bytes]:
    if is_vllm_serve(system):  # "vllm-serve" or "vllm-serve:--flag value ..." with extra arguments
        cmd = [sys.executable, "-m", "vllm.entrypoints.cli.main", "serve", str(checkpoint), "--load-format", "dummy"]
        cmd += ["--dtype", "bfloat16", "--max-model-len", "448", "--kv-cache-dtype", "fp8", "--max-num-seqs", "512"]
        cmd += ["--gpu-memory-utilization", "0.9", "--port", str(PORT), "--served-model-name", "whisper-1"]
        cmd += system.partition(":")[2].split()
        env = dict(os.environ)
    else:  # "whisper-endpoint[@SRC][:NAME=VALUE,...]": another source tree (an earlier commit's src/), settings
        cmd = [sys.executable, "-m", "whisper_endpoint", "serve", "--engine", "vllm", "--model", str(checkpoint)]
        if profile:  # sampled stacks of every thread, written at exit
            cmd[1:1] = ["-m", "benchmarks.stack_sampler", str(log.with_suffix(".stacks.txt"))]
        cmd += ["--port", str(PORT)]
        env = {
            **os.environ,
            "WHISPER_LOAD_FORMAT": "dummy",
            "WHISPER_FORCED_TOKENS_PER_30S": str(TOKENS_PER_30S),
            "WHISPER_MAX_NUM_SEQS": "512",
            "WHISPER_GPU_MEMORY_UTILIZATION": "0.9",
            "WHISPER_MAX_INFLIGHT_REQUESTS": "4096",
            "WHISPER_MAX_QUEUED_AUDIO_S": "10000000",
            "WHISPER_LOG_LEVEL": "warning",
            **dict(pair.split("=", 1) for pair in system.partition(":")[2].split(",") if pair),
        }
        if source := system.partition(":")[0].partition("@")[2]:  # that tree first on the path
            env["PYTHONPATH"] = os.pathsep.join([str(Path(source).resolve()), env.get("PYTHONPATH", "")])
    return subprocess.Popen(cmd, stdout=log.open("wb"), stderr=subprocess.STDOUT, env=env)


def corpora(data: Path, work: Path, long_count: int, short_count: int) -> dict[str, list[Path]]:
    from whisper_endpoint.bench.corpus import durations_s, make_corpus

    clips = sorted((data / "B_librispeech" / "test-clean").glob("*.flac"))
    short_sources = [c for c, seconds in durations_s(clips).items() if 5 <= seconds <= 15]
    out = {}
    for name, sources, count, seconds in (
        ("30s", clips, long_count, 30.0),
        ("5-15s", short_sources, short_count, None),
    ):
        folder = work / f"corpus-{name}-{count}"
        files = sorted(folder.glob("*.flac"))
        if len(files) != count:
            files = make_corpus(sources, folder, count, seconds)
        out[name] = files
        _log(f"corpus {name}: {len(files)} FLAC files from {len(sources)} clips")
    return out


def run_system(system: str, checkpoint: Path, loads: dict[str, list[Path]], args: argparse.Namespace) -> list[Any]:
    from benchmarks.proc_stats import GpuBusy, busiest_processes, process_cpu_s
    from whisper_endpoint.bench import Load, gpu_memory_used_mib, run_load

    url = f"http://127.0.0.1:{PORT}"
    log = Path(args.out) / f"{file_label(system)}.log"
    proc = start(system, checkpoint, log, args.profile)
    rows = []
    try:
        ready_s = wait_ready(url, proc, 900, "/health" if is_vllm_serve(system) else "/ready")
        _log(f"{system} ready in {ready_s:.0f} s")
        for name, files in loads.items():
            for level in args.concurrency:
                requests = min(len(files), args.requests_per_level or len(files))
                windows_before = windows_decoded(url) if not is_vllm_serve(system) else None
                load = Load(
                    files,
                    level,
                    requests,
                    language="en",
                    response_format="json",
                    tokens_per_30s=TOKENS_PER_30S if is_vllm_serve(system) else None,
                    ramp_s=args.ramp_s,
                )
                log_before = log.stat().st_size
                cpu_before, started = process_cpu_s(proc.pid), time.monotonic()
                dumps = Path(args.out) / f"py-spy-{file_label(system)}-{name}-{level}.txt"  # one per system
                spy = threading.Timer(PY_SPY_AFTER_S, py_spy_dumps, (dumps,))
                if args.profile or args.py_spy:
                    spy.start()
                with GpuBusy() as gpu:
                    result = asyncio.run(run_load(f"{url}/v1/audio/transcriptions", load))
                spy.cancel()
                if spy.is_alive():
                    spy.join()
                cpu = busiest_processes(cpu_before, process_cpu_s(proc.pid), time.monotonic() - started)
                result.system = system
                result.gpu_memory_mib = gpu_memory_used_mib()
                result.server_peak_rss_mib, rss_by_process = tree_peak_rss_mib(proc.pid)
                row = {**result.summary(), "corpus": name, "server_start_s": round(ready_s, 1)}
                row["peak_rss_mib_by_process"] = rss_by_process
                row.update(gpu_busy_pct=gpu.mean_pct, cores_by_process=cpu)
                logged = log.read_bytes()
                row["driver_reports"] = driver_reports(logged[log_before:].decode(errors="replace"))  # this load's
                if paths := start_step_paths(logged.decode(errors="replace")):  # from the start, warm-up included
                    row["start_steps_ran"] = paths
                if windows_before is not None and (windows_after := windows_decoded(url)) is not None:
                    row["windows_per_request"] = round((windows_after - windows_before) / requests, 3)
                rows.append(row)
                _log(json.dumps(row))
                (Path(args.out) / "partial.json").write_text(json.dumps(rows, indent=2))
    finally:
        stop_server(proc, 60)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", required=True)
    add_checkpoint_arguments(parser)
    parser.add_argument(
        "--system",
        action="append",
        required=True,
        help="vllm-serve[:EXTRA ARGS], whisper-endpoint, or whisper-endpoint:WHISPER_X=1,WHISPER_Y=2 (a variant)",
    )
    parser.add_argument("--corpus", action="append", choices=["30s", "5-15s"], help="default: both")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[256])
    parser.add_argument("--long-count", type=int, default=1024)
    parser.add_argument("--short-count", type=int, default=2048)
    parser.add_argument("--requests-per-level", type=int)
    parser.add_argument("--ramp-s", type=float, default=0.0, help="start the clients evenly over this many seconds")
    parser.add_argument("--profile", action="store_true", help="server thread stacks; py-spy of engines")
    parser.add_argument("--py-spy", action="store_true", help="py-spy of engines only (no sampler in the server)")
    parser.add_argument("--work", default="/tmp/whisper-endpoint-gpu")
    parser.add_argument("--out", default=".")
    args = parser.parse_args()
    work, out = Path(args.work), Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    checkpoint = large_v3_shape(args.work, args.checkpoint_script, args.tokenizer_src, args.real_suppress)
    loads = corpora(Path(args.data), work, args.long_count, args.short_count)
    loads = {k: v for k, v in loads.items() if not args.corpus or k in args.corpus}
    rows = []
    if bad := [s for s in args.system if not is_vllm_serve(s) and not s.startswith("whisper-endpoint")]:
        parser.error(f"unknown system {bad[0]!r}")
    name = "gpu-http-" + "-".join(file_label(s) for s in args.system)
    if len(name) > MAX_NAME_CHARS:  # the rows name each system in full
        name = "gpu-http-" + "-".join(f"{i + 1}-{s.partition(':')[0]}" for i, s in enumerate(args.system))
    for system in args.system:
        rows += run_system(system, checkpoint, loads, args)
        (out / f"{name}.json").write_text(json.dumps(rows, indent=2))  # kept if a later system fails
    header = ("corpus", "conc", "reqs", "err", "RTFx", "steady", "p50 s", "p95 s", "win/req", "GPU %", "RSS GiB")
    print("{:<7} {:>5} {:>5} {:>4} {:>7} {:>7} {:>6} {:>6} {:>7} {:>5} {:>7} system".format(*header))
    for r in rows:
        print(
            f"{r['corpus']:<7} {r['concurrency']:>5} {r['requests']:>5} {sum(r['errors'].values()):>4} "
            f"{r['rtfx'] or 0:>7.1f} {r.get('steady_rtfx') or 0:>7.1f} {r['p50_s'] or 0:>6.2f} {r['p95_s'] or 0:>6.2f} "
            f"{r.get('windows_per_request') or 0:>7.2f} {r.get('gpu_busy_pct') or 0:>5.0f} "
            f"{(r.get('server_peak_rss_mib') or 0) / 1024:>7.1f} {r['system']}"
        )


if __name__ == "__main__":
    main()
