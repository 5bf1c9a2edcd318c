"""The profile summary's arithmetic, on a trace small enough to check by hand (the real traces are 6 MB)."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

from benchmarks.gpu_trace import family, summarize

FA3_FP8 = "void cutlass::device_kernel<flash::FlashAttnFwdSm90<cutlass::float_e4m3_t, 64>>"
FA3_BF16 = "void cutlass::device_kernel<flash::FlashAttnFwdSm90<cutlass::bfloat16_t, 64>>"


def _x(cat: str, name: str, ts: float, dur: float) -> dict[str, object]:
    return {"ph": "X", "cat": cat, "name": name, "ts": ts, "dur": dur}


def test_families_by_kernel_name() -> None:
    assert family(FA3_FP8) == "attention, fp8 KV (decoder)"
    assert family(FA3_BF16) == "attention, other"
    assert family("void vllm::reshape_and_cache_flash_kernel<__nv_bfloat16, unsigned char>") == "KV cache writes"
    assert family("nvjet_sm90_tst_256x152_64x4_1x2_h_bz_coopA_bias_TNT") == "gemm"
    assert family("triton_red_fused_add_native_layer_norm_0") == "inductor (fused)"
    assert family("something new") == "other"


def test_summary_of_two_steps(tmp_path: Path) -> None:
    events = [
        # a step starting 2 windows while 3 decode, then a decode-only step of 5; times in microseconds
        _x("user_annotation", "execute_context_2(6)_generation_3(3)", 0, 900),
        _x("user_annotation", "execute_context_0(0)_generation_5(5)", 1000, 200),
        _x("user_annotation", "execute_context_0(0)_generation_5(5)", 1500, 200),
        _x("kernel", FA3_BF16, 100, 300),
        _x("kernel", "nvjet_sm90_gemm", 300, 400),  # overlaps the one before: busy counts the union
        _x("kernel", FA3_FP8, 1100, 200),
        _x("kernel", "nvjet_sm90_gemm", 1600, 100),
    ]
    trace = tmp_path / "t.json.gz"
    with gzip.open(trace, "wt") as f:
        json.dump({"traceEvents": events}, f)
    s = summarize(trace)
    assert s["span_ms"] == 1.6  # first kernel start to last kernel end
    assert s["gpu_busy_ms"] == 0.9  # 100-700, 1100-1300, 1600-1700
    assert s["kernel_ms"] == 1.0
    assert s["by_family_ms_pct"][0] == ["gemm", 0.5, 50.0]
    starting, decoding = s["steps_by_kind"]["starting new windows"], s["steps_by_kind"]["decode only"]
    assert starting == {"steps": 1, "mean_new_windows": 2, "mean_decoding": 3, "mean_step_ms": 1.0, "mean_gpu_ms": 0.6}
    # the last step has no next step to end it, so only the first decode-only step is counted
    assert decoding["steps"] == 1 and decoding["mean_gpu_ms"] == 0.2
