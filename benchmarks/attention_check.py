"""The Triton decoder-attention kernel against a plain reference, and on a GPU against FlashAttention 3.

    TRITON_INTERPRET=1 python -m benchmarks.attention_check      # correctness on a CPU (small shapes)
    python -m benchmarks.attention_check --time                  # on a GPU: large-v3's cross-attention, timed

Cases: a paged cache with shuffled pages in vLLM's layouts (NHD, its default, and HND, which VLLM_KV_CACHE_LAYOUT
selects), bf16 and fp8 caches with dequantisation scales; cross-attention (one query token per sequence, every
position visible, one sequence empty) and causal self-attention (several new tokens in some sequences, as on a
step that starts windows), with padded tokens and sequences as a CUDA graph's batch has them. On a GPU, `--time`
times one layer's cross-attention for `--sequences` decoding windows, in each layout, with each launch
configuration and with vLLM's `flash_attn_varlen_func` (FlashAttention 3 as vLLM calls it), and prints the
bandwidth each reaches.
"""

from __future__ import annotations

import argparse
import json
import math
import re
import sys
from collections import Counter
from typing import Any

from whisper_endpoint.engines.vllm_attention import DEFAULT_LAUNCH, LaunchConfig, paged_attention

PADDED_TOKENS = 3  # past the real ones, as in a CUDA graph's batch
LAUNCHES = [  # checked and timed by default: positions, warps, stages, splits, prefetch, heads first, lanes
    "64,4,1,1,0,0,0",
    "64,4,1,1,1,0,0",
    "64,4,1,1,0,1,0",
    "64,4,1,1,1,1,0",
    "128,4,1,1,1,1,0",
    "128,8,2,1,0,1,0",
    "256,8,2,1,0,0,0",
    "32,2,1,1,1,1,0",
    "32,4,1,1,1,1,0",
    "16,2,1,1,1,1,0",
    "64,4,1,4,1,1,0",
    "64,4,2,4,0,1,0",
    "128,4,1,4,1,0,0",
    "64,4,1,8,1,0,0",
    "64,4,1,1,0,0,1",
    "64,4,2,1,0,0,1",
    "128,4,2,1,0,0,1",
    "128,8,2,1,0,0,1",
    "32,2,2,1,0,0,1",
    "256,8,2,1,0,0,1",
    "128,4,3,1,0,0,1",
]


def make_case(
    torch: Any,
    new_tokens: list[int],
    seq_lens: list[int],
    heads: int,
    head_size: int,
    block_size: int,
    fp8: bool,
    device: str,
    layout: str = "NHD",
) -> dict[str, Any]:
    """A cache of shape [blocks, heads, block_size, 2 * head_size] whose memory is in vLLM's NHD order (a
    page's positions outermost) or HND (each head's page contiguous), and `new_tokens[i]` query tokens for
    sequence i, which has `seq_lens[i]` cached positions."""
    generator = torch.Generator().manual_seed(len(seq_lens) * 1000 + max(seq_lens))
    sequences = len(seq_lens)
    pages = max(1, math.ceil(max(seq_lens) / block_size))
    blocks = sequences * pages + 5
    dtype = torch.float8_e4m3fn if fp8 else torch.bfloat16
    if layout == "NHD":
        values = torch.randn(blocks, block_size, heads, 2 * head_size, generator=generator)
        cache = values.to(dtype).to(device).permute(0, 2, 1, 3)
    else:
        cache = torch.randn(blocks, heads, block_size, 2 * head_size, generator=generator).to(dtype).to(device)
    table = torch.randperm(blocks, generator=generator)[: sequences * pages].view(sequences, pages)
    starts = [0]
    for n in new_tokens:
        starts.append(starts[-1] + n)
    tokens = starts[-1]
    scales = (0.5, 0.8, 1.25) if fp8 else (1.0, 1.0, 1.0)
    query = torch.randn(tokens + PADDED_TOKENS, heads, head_size, generator=generator) / scales[0]
    return {
        "query": query.to(torch.bfloat16).to(device),  # queries stay bf16 with this kernel
        "cache": cache,
        "block_table": table.to(torch.int32).to(device),
        "seq_lens": torch.tensor(seq_lens, dtype=torch.int32, device=device),
        "query_start": torch.tensor(starts, dtype=torch.int32, device=device),
        "tokens": tokens,
        "scales": tuple(torch.tensor([s], dtype=torch.float32, device=device) for s in scales),
        "softmax_scale": head_size**-0.5,
    }


def reference(torch: Any, case: dict[str, Any], causal: bool) -> Any:
    query, cache = case["query"].float().cpu(), case["cache"].float().cpu()
    q_scale, k_scale, v_scale = (s.item() for s in case["scales"])
    head_size = query.shape[2]
    starts = case["query_start"].tolist()
    out = torch.zeros(query.shape)
    for seq, (first, end) in enumerate(zip(starts, starts[1:], strict=False)):
        length = int(case["seq_lens"][seq])
        pages = case["block_table"][seq].cpu().long()
        rows = cache[pages].permute(1, 0, 2, 3).reshape(query.shape[1], -1, 2 * head_size)
        for token in range(first, end):
            visible = length - (end - first) + (token - first) + 1 if causal else length
            if visible <= 0:
                continue
            keys = rows[:, :visible, :head_size] * k_scale
            values = rows[:, :visible, head_size:] * v_scale
            scores = (keys @ (query[token] * q_scale)[:, :, None]).squeeze(-1) * case["softmax_scale"]
            out[token] = (torch.softmax(scores, dim=-1)[:, None, :] @ values).squeeze(1)
    return out[: case["tokens"]]


def ours(torch: Any, case: dict[str, Any], causal: bool, launch: LaunchConfig = DEFAULT_LAUNCH) -> Any:
    return ours_compiled(torch, case, causal, launch)[0]


def ours_compiled(torch: Any, case: dict[str, Any], causal: bool, launch: LaunchConfig) -> tuple[Any, Any]:
    """The kernel's output for the real tokens, and the kernel as compiled."""
    out = torch.full(case["query"].shape, float("nan"), dtype=torch.bfloat16, device=case["query"].device)
    compiled = paged_attention(
        case["query"],
        case["cache"],
        case["block_table"],
        case["seq_lens"],
        case["query_start"],
        out,
        case["scales"],
        case["softmax_scale"],
        causal=causal,
        num_query_tokens=case["tokens"],
        launch=launch,
    )
    assert torch.isnan(out[case["tokens"] :].float()).all(), "padded tokens must be left alone"
    return out[: case["tokens"]], compiled


def kernel_info(compiled: Any) -> dict[str, Any]:
    """Registers and spills per thread, and how many loads from global memory of each kind the PTX holds: into
    registers (a `ld.global.v4.b32` moves 16 bytes, four times a `.b32` one), or, where Triton pipelines the
    loop, copied ahead into shared memory (`cp.async`)."""
    loads = Counter(re.findall(r"ld\.global(?:\.[a-z0-9]+)*|cp\.async\.c[ag](?:\.[a-z0-9]+)*", compiled.asm["ptx"]))
    return {
        "registers": getattr(compiled, "n_regs", None),
        "spills": getattr(compiled, "n_spills", None),
        "loads": dict(sorted(loads.items())),
    }


def check(torch: Any, device: str, large: bool, launches: list[LaunchConfig]) -> list[dict[str, Any]]:
    heads, positions = (20, 1500) if large else (2, 150)
    sequences = 37 if large else 5
    cross_lens = [positions - (i * 37) % (positions // 2) for i in range(sequences)]
    cross_lens[2] = 0  # a sequence with nothing to attend to
    self_new = [1, 4, 1, 3, 1] * (sequences // 5) + [1] * (sequences % 5)
    self_lens = [n + (i * 13) % 90 for i, n in enumerate(self_new)]
    rows = []
    for name, new, lens, causal in (
        ("cross", [1] * sequences, cross_lens, False),
        ("self", self_new, self_lens, True),
    ):
        for fp8, layout in ((False, "NHD"), (True, "NHD"), (True, "HND")):
            case = make_case(torch, new, lens, heads, 64, 16, fp8, device, layout)
            expected = reference(torch, case, causal)
            for launch in launches:
                error = (ours(torch, case, causal, launch).float().cpu() - expected).abs().max().item()
                relative = error / expected.abs().max().item()
                rows.append({"case": name, "fp8": fp8, "layout": layout, "launch": launch.spec(), "error": relative})
                assert relative < 0.01, rows[-1]  # largest error against the largest value: bf16 output rounding
    return rows


def time_both(
    torch: Any, sequences: int, block_size: int, launches: list[LaunchConfig], layout: str, repeats: int = 50
) -> list[dict[str, Any]]:
    try:
        from vllm.vllm_flash_attn import flash_attn_varlen_func
    except ImportError:  # ours alone
        flash_attn_varlen_func = None
    heads, head_size, positions = 20, 64, 1500  # whisper-large-v3's cross-attention
    lens = [positions] * sequences
    case = make_case(torch, [1] * sequences, lens, heads, head_size, block_size, True, "cuda", layout)
    key_cache, value_cache = case["cache"].transpose(1, 2).split(head_size, dim=-1)
    out = torch.empty(sequences, heads, head_size, dtype=torch.bfloat16, device="cuda")
    descale = tuple(s.expand(sequences, heads) for s in case["scales"])
    fp8_query = case["query"][:sequences].to(torch.float8_e4m3fn)  # FlashAttention 3 wants it in the cache's type

    def flash() -> None:
        flash_attn_varlen_func(
            q=fp8_query,
            k=key_cache,
            v=value_cache,
            out=out,
            cu_seqlens_q=case["query_start"],
            max_seqlen_q=1,
            seqused_k=case["seq_lens"],
            max_seqlen_k=positions,
            softmax_scale=case["softmax_scale"],
            causal=False,
            block_table=case["block_table"],
            fa_version=3,
            q_descale=descale[0],
            k_descale=descale[1],
            v_descale=descale[2],
        )

    def timed(fn: Any) -> float:
        fn()
        torch.cuda.synchronize()
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        for _ in range(repeats):
            fn()
        end.record()
        torch.cuda.synchronize()
        return float(start.elapsed_time(end)) * 1000 / repeats  # µs per call

    bytes_read = sequences * heads * positions * 2 * head_size  # fp8 keys and values
    rows: list[dict[str, Any]] = []
    if flash_attn_varlen_func is not None:
        rows.append({"kernel": "FlashAttention 3 (fp8 query)", "us": round(timed(flash), 1)})
    for launch in launches:
        us = timed(lambda launch=launch: ours(torch, case, False, launch))
        rows.append({"kernel": f"ours {launch.spec()}", "launch": launch.spec(), "us": round(us, 1)})
        result, compiled = ours_compiled(torch, case, False, launch)
        rows[-1].update(kernel_info(compiled))
        if flash_attn_varlen_func is not None:  # differs by the query's fp8 rounding in FlashAttention 3
            rows[-1]["max_abs_difference"] = (result.float() - out.float()).abs().max().item()
    for row in rows:
        row.update(sequences=sequences, layout=layout, block_size=block_size)
        row["tb_s"] = round(bytes_read / row["us"] / 1e6, 2)
    return rows


def main() -> None:
    import torch

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--time", action="store_true", help="on a GPU: time against FlashAttention 3")
    parser.add_argument("--sequences", type=int, nargs="+", default=[64, 256, 512])
    parser.add_argument("--block-size", type=int, default=16)
    parser.add_argument("--layouts", nargs="+", choices=["NHD", "HND"], default=["NHD", "HND"])
    parser.add_argument(
        "--launch",
        nargs="+",
        default=LAUNCHES,
        help="launch configurations to check and time: positions per iteration, warps, stages, splits, prefetch, "
        "heads first, lanes",
    )
    parser.add_argument("--repeats", type=int, default=50, help="timed calls per kernel and size")
    parser.add_argument(
        "--no-check", action="store_true", help="time only (under a profiler, which should see the timed calls)"
    )
    args = parser.parse_args()
    launches = [LaunchConfig.parse(spec) for spec in args.launch]
    device = "cuda" if torch.cuda.is_available() else "cpu"
    results: dict[str, Any] = {"device": device}
    if not args.no_check:
        results["correctness"] = check(torch, device, device == "cuda", launches)
    if args.time:
        results["timing"] = [
            row
            for layout in args.layouts
            for n in args.sequences
            for row in time_both(torch, n, args.block_size, launches, layout, args.repeats)
        ]
        print("layout | sequences | kernel | µs | TB/s | registers | spills | loads", file=sys.stderr)
        for row in results["timing"]:
            kernel = (row.get(key, "") for key in ("registers", "spills", "loads"))
            print(
                row["layout"],
                row["sequences"],
                row["kernel"],
                row["us"],
                row["tb_s"],
                *kernel,
                sep=" | ",
                file=sys.stderr,
            )
    print(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
