"""Where the vLLM engine's time goes: engine variants on the same windows, with CPU and GPU samples.

    python -m benchmarks.gpu_probe --tokenizer-src DIR --checkpoint-script FILE --out DIR \
        --variant default '{}' --variant batched32k '{"vllm_engine_args": {"max_num_batched_tokens": 32768}}'

Each variant (WHISPER_* settings as JSON) starts the engine in a process of its own, with the large-v3-shaped
checkpoint, and times the same 30 s windows four ways: 100 forced tokens with scores (as in serving),
100 with the sampled tokens' scores but no no-speech probability (vLLM's prompt logprobs), 100 without
scores, and 1 token (encoder and prompt alone). During the first it samples the GPU's busy share
(`nvidia-smi`), the CPU each thread of the engine's process tree burns (from /proc), and a `py-spy dump`
of the processes when py-spy is installed. `--timings` picks some of the four ways. `--profile-steps N`
adds one more untimed run of the second way with vLLM's torch profiler over N engine steps once the batch is
full, and writes the trace and its summary (`benchmarks.gpu_trace`). Windows go in from `--in-flight / --part-size`
threads, each waiting for its part before the next (default 256 in flight, in parts of 16). The engine runs in
the probe's process unless a variant sets `"engine_process": true`, which runs it as the server does, in a
process of its own that windows reach over a socket (then only t100 and t100_no_nospeech are timed, unprofiled).
A table of the variants is printed last.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path
from typing import Any, TextIO

from benchmarks import gpu_trace
from benchmarks.gpu_check import add_checkpoint_arguments, large_v3_shape, noise_window
from benchmarks.proc_stats import GpuBusy, cpu_by_thread, descendants, process_name
from whisper_endpoint.engines.process import MAX_WINDOWS_PER_MESSAGE

TIMINGS = ("t100", "t100_no_nospeech", "t100_noscores", "t1")


def _log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


def find_py_spy() -> str | None:
    """py-spy on PATH, or in the bin folder of a `pip install --target` folder on sys.path."""
    candidates = [Path(entry) / "bin" / "py-spy" for entry in sys.path]
    return shutil.which("py-spy") or next((str(c) for c in candidates if c.is_file()), None)


def run_noting_timeout(cmd: list[str], timeout_s: float, notes: TextIO) -> subprocess.CompletedProcess[str] | None:
    """`cmd`'s result, or None with a line in `notes` where it ran past `timeout_s` (a py-spy record of a
    process with hundreds of threads can), so one slow record does not end the others."""
    try:
        return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout_s)
    except subprocess.TimeoutExpired:
        notes.write(f"### timed out after {timeout_s:.0f} s: {' '.join(cmd)}\n")
        return None


RECORDED_PROCESSES = ("whisper-engine", "VLLM::EngineCor")  # our engine process and vLLM's engine core


def py_spy_dumps(out: Path, recorded: tuple[str, ...] = RECORDED_PROCESSES) -> None:
    """5 s of sampled stacks of each process under this one named in `recorded`, then 5 s of the thread
    holding the GIL alone, all at once; then one `py-spy dump` of every process under this one. Records
    first: a dump of a process with thousands of threads can take as long as a whole load."""
    spy = find_py_spy()
    if spy is None:
        return
    pids = descendants(os.getpid())[1:]
    with out.open("w") as f:

        def record(pid: int) -> None:
            command = [spy, "record", "--pid", str(pid), "-d", "5", "-r", "200", "-f", "raw", "--nonblocking"]
            run_noting_timeout([*command, "-o", str(out.with_suffix(f".{pid}.collapsed.txt"))], 60, f)
            # then only the thread holding the interpreter lock: its share of samples is the lock's load
            run_noting_timeout([*command, "--gil", "-o", str(out.with_suffix(f".{pid}.gil.txt"))], 60, f)

        with ThreadPoolExecutor() as pool:
            list(pool.map(record, [pid for pid in pids if process_name(pid) in recorded]))
        for pid in pids:
            # --nonblocking: a dump that pauses a process with a thread per window in flight stalls the load
            done = run_noting_timeout([spy, "dump", "--nonblocking", "--pid", str(pid)], 30, f)
            if done is not None:
                f.write(f"### pid {pid} ({process_name(pid)})\n{done.stdout}{done.stderr}\n")


def one(args: argparse.Namespace) -> dict[str, Any]:
    from whisper_endpoint.config import Settings
    from whisper_endpoint.engines.base import SamplingOptions
    from whisper_endpoint.engines.pool import vllm_pool
    from whisper_endpoint.engines.vllm import VllmEngine

    # the engine driver's 10 s reports (windows per step, steps per second), as in the server's log
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    variant = json.loads(args.settings)
    trace_dir = Path(args.work) / f"trace-{args.name}"
    if args.profile_steps:
        shutil.rmtree(trace_dir, ignore_errors=True)
        profiler = {
            "profiler": "torch",
            "torch_profiler_dir": str(trace_dir),
            "torch_profiler_with_stack": False,
            "delay_iterations": args.profile_delay,
            "max_iterations": args.profile_steps,
        }
        variant = {**variant, "vllm_engine_args": {**variant.get("vllm_engine_args", {}), "profiler_config": profiler}}
    defaults = {
        "model": args.model,
        "load_format": "dummy",
        "max_num_seqs": 512,
        "forced_tokens_per_30s": 100,
        "engine_process": False,  # the engine in this process; {"engine_process": true}: as the server runs it
    }
    settings = Settings(**{**defaults, **variant})
    started = time.monotonic()
    engine: Any = vllm_pool(settings)  # with engine_process, windows cross to the engine over a socket
    in_process = isinstance(engine, VllmEngine)  # the timings below that change the engine's attributes
    row: dict[str, Any] = {"variant": args.name, "settings": variant, "start_s": round(time.monotonic() - started, 1)}
    window = noise_window(engine.tokenizer)
    options = SamplingOptions(max_new_tokens=100, suppress_tokens=(-1,))  # the model's list, as the server asks
    engine.generate([window] * 64, options)  # warm-up
    size = args.part_size
    parts = [min(size, args.windows - i) for i in range(0, args.windows, size)]

    def timed(label: str, sample: bool = False, options: SamplingOptions = options) -> None:
        result: dict[str, Any] = {}
        if sample:  # in the middle of the run, once the batch is full

            def probe() -> None:
                time.sleep(4)
                result["cpu"] = cpu_by_thread(4)
                py_spy_dumps(Path(args.out) / f"py-spy-{args.name}.txt")

            sampler = threading.Thread(target=probe)
            sampler.start()
        with GpuBusy() as gpu:
            t0 = time.monotonic()
            # In parts from many threads, as an engine process receives a large call: each caller thread
            # prepares its own windows' inputs (vLLM's log-mel), so one thread does not bound the rate. A
            # thread waits for its part before taking the next, so at most `in_flight` windows are in vLLM.
            # Parts of 16 start and finish together (cohorts, most steps decode only); parts of 1 keep a
            # steady stream of windows starting, as a server under load sees.
            with ThreadPoolExecutor(max(1, args.in_flight // size)) as pool:
                list(pool.map(lambda part: engine.generate([window] * part, options), parts))
            wall = time.monotonic() - t0
        if sample:
            sampler.join()
            row["cpu_by_thread"] = result.get("cpu")
        row[f"{label}_rtfx"] = round(args.windows * 30 / wall, 1)
        row[f"{label}_gpu_busy_pct"] = gpu.mean_pct
        _log(f"{args.name} {label}: {row[f'{label}_rtfx']}x, GPU busy {gpu.mean_pct} %")

    wanted = set(args.timings)
    no_nospeech = replace(options, no_speech_prob=False)
    if "t100" in wanted:
        timed("t100", sample=True)
    if "t100_no_nospeech" in wanted:
        timed("t100_no_nospeech", options=no_nospeech, sample="t100" not in wanted)
    if args.profile_steps and in_process:
        engine._llm.start_profile()  # the driver is idle between runs, so the engine's client is free
        timed("profiled", options=no_nospeech)
        engine._llm.stop_profile()
        row["profile"] = []
        for trace in sorted(trace_dir.glob("*.json*")):
            row["profile"].append(gpu_trace.summarize(trace))
            shutil.copy(trace, Path(args.out) / f"trace-{args.name}{''.join(trace.suffixes[-2:])}")
    if "t100_noscores" in wanted and in_process:
        engine.scores = False
        timed("t100_noscores")
        engine.scores = True
    if "t1" in wanted and in_process:
        engine.forced_tokens_per_30s = 1
        timed("t1")
    engine.close()
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_checkpoint_arguments(parser, required=False)  # a variant's own run (--one) needs none
    parser.add_argument("--work", default="/tmp/whisper-endpoint-gpu")
    parser.add_argument("--out", default=".")
    parser.add_argument("--windows", type=int, default=1024)
    parser.add_argument("--variant", nargs=2, action="append", metavar=("NAME", "JSON"), default=[])
    parser.add_argument("--in-flight", type=int, default=256, help="windows submitted and not finished, at most")
    parser.add_argument("--part-size", type=int, default=MAX_WINDOWS_PER_MESSAGE, help="windows per engine call")
    parser.add_argument("--timings", nargs="+", choices=TIMINGS, default=list(TIMINGS))
    parser.add_argument("--profile-steps", type=int, default=0, help="profile this many engine steps (0: none)")
    parser.add_argument("--profile-delay", type=int, default=150, help="engine steps before the profile starts")
    parser.add_argument("--one", action="store_true", help="(internal) one variant in this process")
    parser.add_argument("--model")
    parser.add_argument("--name")
    parser.add_argument("--settings")
    args = parser.parse_args()
    if args.one:
        print(json.dumps(one(args)))
        return
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    checkpoint = large_v3_shape(args.work, args.checkpoint_script, args.tokenizer_src, args.real_suppress)
    rows = []
    for name, settings in args.variant or [("default", "{}")]:
        cmd = [sys.executable, "-m", "benchmarks.gpu_probe", "--one", "--model", str(checkpoint), "--name", name]
        cmd += ["--settings", settings, "--windows", str(args.windows), "--out", str(out), "--work", args.work]
        cmd += ["--timings", *args.timings, "--profile-steps", str(args.profile_steps)]
        cmd += ["--profile-delay", str(args.profile_delay), "--in-flight", str(args.in_flight)]
        cmd += ["--part-size", str(args.part_size)]
        with (out / f"probe-{name}.log").open("w") as log:
            done = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=log, text=True)
        lines = done.stdout.strip().splitlines()
        rows.append(json.loads(lines[-1]) if done.returncode == 0 and lines else {"variant": name, "error": True})
        _log(json.dumps(rows[-1]))
    (out / "gpu-probe.json").write_text(json.dumps(rows, indent=2))
    keys = ("start_s", *(f"{t}_rtfx" for t in args.timings), "t100_gpu_busy_pct")
    print("variant", *keys, sep=" | ")
    for r in rows:
        print(r["variant"], *(r.get(k) for k in keys), sep=" | ")
        for summary in r.get("profile", []):
            print("  profile:", summary.get("busy_pct"), "% busy;", summary.get("by_family_ms_pct"))


if __name__ == "__main__":
    main()
