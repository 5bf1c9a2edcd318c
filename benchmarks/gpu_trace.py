"""Where a torch profiler trace's GPU time went: busy share, kernel families, and steps by kind.

    python -m benchmarks.gpu_trace TRACE.json.gz [--top 25]

Reads the Chrome trace that vLLM's torch profiler writes (`profiler_config`, see `gpu_probe --profile-steps`).
Kernels go in a family by name; flash attention on an fp8 KV cache is the decoder's (self and cross
attention read the cache); the other attention kernels are the encoder's (bf16) and split-KV combines.
vLLM names each step's range after its batch (`execute_context_N(tokens)_generation_M(tokens)`: N sequences
with tokens to prefill, M decoding one), so steps that start new windows (N > 0: the encoder runs, the
decoder runs eagerly) are reported apart from decode-only steps. Printed as JSON.
"""

from __future__ import annotations

import argparse
import bisect
import gzip
import json
import re
import statistics
from collections import Counter
from pathlib import Path
from typing import Any

FAMILIES = (  # first match wins; names as CUDA libraries and inductor give them
    ("KV cache writes", ("reshape_and_cache",)),
    ("attention, fp8 KV (decoder)", ("e4m3",)),
    ("attention, other", ("flash", "fmha", "attention", "attn")),
    ("gemm", ("gemm", "nvjet", "cutlass", "xmma", "sm90_", "sm80_", "cublas")),
    ("inductor (fused)", ("triton_",)),
    ("layer norm", ("layer_norm", "layernorm", "LayerNorm")),
    ("copy", ("copy", "Memcpy", "memcpy", "cat", "Memset")),
    ("elementwise", ("elementwise", "vectorized", "unrolled", "gelu", "clamp", "add")),
    ("reduce", ("reduce", "softmax", "argmax", "topk", "sort", "scan")),
    ("conv", ("conv", "implicit", "winograd")),
)
STEP = re.compile(r"execute_context_(\d+)\((\d+)\)_generation_(\d+)\((\d+)\)")


def family(name: str) -> str:
    for label, marks in FAMILIES:
        if any(mark in name for mark in marks):
            return label
    return "other"


def _merged(intervals: list[tuple[float, float]]) -> list[tuple[float, float]]:
    """Overlapping intervals (kernels on several streams) merged: their union, in order."""
    merged: list[tuple[float, float]] = []
    for start, stop in sorted(intervals):
        if merged and start <= merged[-1][1]:
            merged[-1] = (merged[-1][0], max(merged[-1][1], stop))
        else:
            merged.append((start, stop))
    return merged


def _steps(events: list[dict[str, Any]], busy: list[tuple[float, float]]) -> dict[str, Any]:
    """Per kind of step: how many, sequences in them, and wall (from one step's start to the next's) against
    the GPU's busy time (`busy`, merged intervals) in it. CPU times under the profiler are inflated; GPU
    times are not."""
    marks = sorted(
        (e["ts"], m) for e in events if e.get("cat") == "user_annotation" and (m := STEP.fullmatch(e.get("name", "")))
    )
    starts = [b[0] for b in busy]
    rows: dict[str, list[tuple[int, int, float, float]]] = {"starting new windows": [], "decode only": []}
    for (ts, m), (next_ts, _) in zip(marks, marks[1:], strict=False):
        gpu = 0.0
        for start, stop in busy[max(0, bisect.bisect_left(starts, ts) - 1) : bisect.bisect_right(starts, next_ts)]:
            gpu += max(0.0, min(stop, next_ts) - max(start, ts))
        kind = "starting new windows" if int(m.group(1)) else "decode only"
        rows[kind].append((int(m.group(1)), int(m.group(3)), (next_ts - ts) / 1000, gpu / 1000))
    return {
        kind: {
            "steps": len(rs),
            "mean_new_windows": round(statistics.mean(r[0] for r in rs), 1),
            "mean_decoding": round(statistics.mean(r[1] for r in rs), 1),
            "mean_step_ms": round(statistics.mean(r[2] for r in rs), 1),
            "mean_gpu_ms": round(statistics.mean(r[3] for r in rs), 1),
        }
        for kind, rs in rows.items()
        if rs
    }


def summarize(path: Path, top: int = 25) -> dict[str, Any]:
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt") as f:
        events = json.load(f)["traceEvents"]
    kernels = [e for e in events if e.get("cat") in ("kernel", "gpu_memcpy", "gpu_memset") and "dur" in e]
    if not kernels:
        return {"trace": path.name, "error": "no GPU kernels in the trace"}
    busy = _merged([(k["ts"], k["ts"] + k["dur"]) for k in kernels])
    span_ms = (busy[-1][1] - busy[0][0]) / 1000
    busy_ms = sum(stop - start for start, stop in busy) / 1000
    by_family: Counter[str] = Counter()
    by_name: Counter[str] = Counter()
    calls: Counter[str] = Counter()
    for k in kernels:
        by_family[family(k["name"])] += k["dur"] / 1000
        by_name[k["name"][:120]] += k["dur"] / 1000
        calls[k["name"][:120]] += 1
    kernel_ms = sum(by_family.values())

    def table(counter: Counter[str], n: int | None = None) -> list[list[Any]]:
        return [[key, round(ms, 1), round(100 * ms / kernel_ms, 1)] for key, ms in counter.most_common(n)]

    return {
        "trace": path.name,
        "span_ms": round(span_ms, 1),
        "gpu_busy_ms": round(busy_ms, 1),
        "busy_pct": round(100 * busy_ms / span_ms, 1),
        "kernel_ms": round(kernel_ms, 1),
        "steps_by_kind": _steps(events, busy),
        "by_family_ms_pct": table(by_family),
        "top_kernels_ms_pct_calls": [[*row, calls[row[0]]] for row in table(by_name, top)],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("trace", type=Path)
    parser.add_argument("--top", type=int, default=25)
    args = parser.parse_args()
    print(json.dumps(summarize(args.trace, args.top), indent=1))


if __name__ == "__main__":
    main()
