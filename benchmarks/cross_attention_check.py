"""The Triton cross-attention decode kernel against a plain reference, and on a GPU against FlashAttention 3.

    TRITON_INTERPRET=1 python -m benchmarks.cross_attention_check      # correctness on a CPU (small shapes)
    python -m benchmarks.cross_attention_check --time                  # on a GPU: large-v3's shape, both timed

Cases: a paged cache with shuffled pages in vLLM's layouts (NHD, its default, and HND, which
VLLM_KV_CACHE_LAYOUT selects), sequences of different lengths (one empty), padded sequences as a CUDA graph's
batch has them, bf16 and fp8 caches with dequantisation scales. On a GPU, `--time` times one layer's
cross-attention for `--sequences` decoding windows, in each layout, with this kernel's launch configurations and
with vLLM's `flash_attn_varlen_func` (FlashAttention 3, as vLLM calls it), and prints the bandwidth each reaches.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from typing import Any

from whisper_endpoint.engines.vllm_cross_attention import DEFAULT_LAUNCH, LaunchConfig, cross_attention_decode


def make_case(
    torch: Any,
    sequences: int,
    heads: int,
    head_size: int,
    positions: int,
    block_size: int,
    fp8: bool,
    device: str,
    layout: str = "NHD",
) -> dict[str, Any]:
    """A cache of shape [blocks, heads, block_size, 2 * head_size] whose memory is in vLLM's NHD order (a
    page's positions outermost: its heads side by side) or HND (each head's page contiguous)."""
    generator = torch.Generator().manual_seed(sequences * 1000 + positions)
    pages = math.ceil(positions / block_size)
    blocks = sequences * pages + 5
    dtype = torch.float8_e4m3fn if fp8 else torch.bfloat16
    if layout == "NHD":
        values = torch.randn(blocks, block_size, heads, 2 * head_size, generator=generator)
        cache = values.to(dtype).to(device).permute(0, 2, 1, 3)
    else:
        cache = torch.randn(blocks, heads, block_size, 2 * head_size, generator=generator).to(dtype).to(device)
    table = torch.randperm(blocks, generator=generator)[: sequences * pages].view(sequences, pages)
    lengths = [positions - (i * 37) % (positions // 2) for i in range(sequences)]
    lengths[min(2, sequences - 1)] = 0  # a sequence with nothing to attend to
    padded = 3  # a CUDA graph's batch: sequences past the real ones point past the last query token
    query_start = list(range(sequences + 1)) + [sequences] * padded
    query = torch.randn(sequences, heads, head_size, generator=generator)
    scales = (0.5, 0.8, 1.25) if fp8 else (1.0, 1.0, 1.0)
    return {
        "query": (query / scales[0]).to(torch.float8_e4m3fn if fp8 else torch.bfloat16).to(device),
        "cache": cache,
        "block_table": torch.cat([table, table[:padded]]).to(torch.int32).to(device),
        "seq_lens": torch.tensor(lengths + [positions] * padded, dtype=torch.int32, device=device),
        "query_start": torch.tensor(query_start, dtype=torch.int32, device=device),
        "scales": tuple(torch.tensor([s], dtype=torch.float32, device=device) for s in scales),
        "softmax_scale": head_size**-0.5,
    }


def reference(torch: Any, case: dict[str, Any]) -> Any:
    query, cache = case["query"].float().cpu(), case["cache"].float().cpu()
    q_scale, k_scale, v_scale = (s.item() for s in case["scales"])
    head_size = query.shape[2]
    out = torch.zeros(query.shape)
    for seq in range(query.shape[0]):
        length = int(case["seq_lens"][seq])
        if length == 0:
            continue
        pages = case["block_table"][seq].cpu().long()
        rows = cache[pages].permute(1, 0, 2, 3).reshape(query.shape[1], -1, 2 * head_size)[:, :length]
        keys, values = rows[..., :head_size] * k_scale, rows[..., head_size:] * v_scale
        scores = (keys @ (query[seq] * q_scale)[:, :, None]).squeeze(-1) * case["softmax_scale"]
        out[seq] = (torch.softmax(scores, dim=-1)[:, None, :] @ values).squeeze(1)
    return out


def ours(torch: Any, case: dict[str, Any], launch: LaunchConfig = DEFAULT_LAUNCH) -> Any:
    out = torch.full(case["query"].shape, float("nan"), dtype=torch.bfloat16, device=case["query"].device)
    cross_attention_decode(
        case["query"],
        case["cache"],
        case["block_table"],
        case["seq_lens"],
        case["query_start"],
        out,
        case["scales"],
        case["softmax_scale"],
        launch,
    )
    return out


def check(
    torch: Any, device: str, sizes: tuple[int, int, int, int], launches: list[LaunchConfig]
) -> list[dict[str, Any]]:
    sequences, heads, positions, block_size = sizes
    rows = []
    for fp8, layout in ((False, "NHD"), (True, "NHD"), (True, "HND")):
        case = make_case(torch, sequences, heads, 64, positions, block_size, fp8, device, layout)
        expected = reference(torch, case)
        for launch in launches:
            error = (ours(torch, case, launch).float().cpu() - expected).abs().max().item()
            rows.append({"fp8": fp8, "layout": layout, "launch": str(launch), "max_abs_error": error})
            assert error < 0.02, rows[-1]  # bf16 output rounding of values near 1
    return rows


def time_both(
    torch: Any, sequences: int, block_size: int, launches: list[LaunchConfig], layout: str, repeats: int = 50
) -> list[dict[str, Any]]:
    try:
        from vllm.vllm_flash_attn import flash_attn_varlen_func
    except ImportError:  # ours alone
        flash_attn_varlen_func = None
    heads, head_size, positions = 20, 64, 1500  # whisper-large-v3
    case = make_case(torch, sequences, heads, head_size, positions, block_size, True, "cuda", layout)
    real = slice(0, sequences)
    case["seq_lens"][real] = positions
    cache = case["cache"]
    key_cache, value_cache = cache.transpose(1, 2).split(head_size, dim=-1)
    out = torch.empty(sequences, heads, head_size, dtype=torch.bfloat16, device="cuda")
    descale = tuple(s.expand(sequences, heads) for s in case["scales"])

    def flash() -> None:
        flash_attn_varlen_func(
            q=case["query"],
            k=key_cache,
            v=value_cache,
            out=out,
            cu_seqlens_q=case["query_start"][: sequences + 1],
            max_seqlen_q=1,
            seqused_k=case["seq_lens"][real],
            max_seqlen_k=positions,
            softmax_scale=case["softmax_scale"],
            causal=False,
            block_table=case["block_table"][real],
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
        flash_us = timed(flash)
        rows.append({"kernel": "FlashAttention 3", "us": round(flash_us, 1)})
    for launch in launches:
        us = timed(lambda launch=launch: ours(torch, case, launch))
        rows.append({"kernel": f"ours {launch}", "us": round(us, 1)})
        if flash_attn_varlen_func is not None:
            rows[-1]["max_abs_difference"] = (ours(torch, case, launch)[real].float() - out.float()).abs().max().item()
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
        default=["64,4,1,1", "128,4,2,1", "128,8,2,1", "256,8,2,1", "64,2,3,1", "64,4,2,4", "128,4,2,4", "64,4,2,8"],
        help="kernel launches to check and time: positions per iteration, warps, stages, splits",
    )
    args = parser.parse_args()
    launches = [LaunchConfig(*(int(x) for x in spec.split(","))) for spec in args.launch]
    device = "cuda" if torch.cuda.is_available() else "cpu"
    small = (5, 2, 150, 16) if device == "cpu" else (37, 20, 1500, args.block_size)
    results: dict[str, Any] = {"device": device, "correctness": check(torch, device, small, launches)}
    if args.time:
        results["timing"] = [
            row
            for layout in args.layouts
            for n in args.sequences
            for row in time_both(torch, n, args.block_size, launches, layout)
        ]
        print("layout | sequences | kernel | µs | TB/s", file=sys.stderr)
        for row in results["timing"]:
            print(row["layout"], row["sequences"], row["kernel"], row["us"], row["tb_s"], sep=" | ", file=sys.stderr)
    print(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
