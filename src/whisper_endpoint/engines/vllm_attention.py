"""Whisper's decoder attention as a Triton kernel inside vLLM, on by default with an fp8 e4m3 KV cache.

A profile of the engine (docs/history/benchmarks-2026-11.md) put half of all GPU time in the decoder's attention: each
decoded token of each window reads its 1,500 cross-attention positions in all 32 layers (123 MB of fp8 keys
and values for large-v3). FlashAttention 3 needs the query in the cache's fp8 type, a rounding that costs WER:
with this kernel, which takes the query in bf16, the fp8 cache costs whisper-base 0.17 points against bf16
instead of 0.35. The kernel is a plain memory-bound loop: one program per query token and head (and, when
split, per part of the positions) walks that head's pages of the cache, scores and sums on CUDA cores with an
online softmax. It serves the decoder's self-attention (causal) and cross-attention (all 1,500 positions) on
every step, so vLLM is told not to quantise queries. By default each of an iteration's 128 position slots
keeps its own softmax until the loop ends (`LaunchConfig.lanes`): the loop then makes no reduction across the
program's warps, and one layer's cross-attention for 512 windows reads 2.5 TB/s on an H100 (789 µs), against
1.9 TB/s for the first launch, which reduced over all warps every iteration, and for FlashAttention 3 as
`benchmarks.attention_check` calls it (docs/history/benchmarks-2026-11.md).

vLLM's cache for one layer is [blocks, heads, block_size, 2 * head_size] (a position's key and value side by
side; memory in NHD or HND order), filled by vLLM before attention runs; `seq_lens` counts each sequence's
cached positions, its new tokens included.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, fields
from functools import cache
from typing import Any

log = logging.getLogger(__name__)
SEARCH_STEPS = 16  # binary-search steps from a query token to its sequence: up to 65,536 sequences


@dataclass(frozen=True)
class LaunchConfig:
    """How the kernel runs: positions scored per loop iteration, warps per program, loop stages in flight,
    programs per query token and head (each over a part of the positions, then combined), whether each
    iteration asks for the next positions' keys and values before working on its own, whether the
    programs of one token's heads are launched next to each other (else those of one head's tokens), and
    whether each of an iteration's position slots keeps its own softmax until the loop ends (lanes), which
    spares every iteration three reductions across the program's warps."""

    tokens: int = (
        128  # the fastest of 12 launches for large-v3's cross-attention on an H100 (docs/history/benchmarks-2026-11.md)
    )
    num_warps: int = 4
    num_stages: int = 3
    splits: int = 1
    prefetch: bool = False
    heads_first: bool = False
    lanes: bool = True

    def __post_init__(self) -> None:
        for name in ("tokens", "num_warps", "splits"):  # Triton's ranges and warp counts are powers of 2
            value = getattr(self, name)
            if value < 1 or value & (value - 1):
                raise ValueError(f"a launch's {name} must be a power of 2, not {value}: {self}")
        if self.num_stages < 1:
            raise ValueError(f"a launch needs at least one loop stage: {self}")
        if self.lanes and self.prefetch:
            raise ValueError(f"lanes do not prefetch (a seventh field, 0, gives the plain loop): {self}")

    @classmethod
    def parse(cls, spec: str) -> LaunchConfig:
        """From its fields as comma-separated integers in order ("64,4,1,1,1,0"); missing ones keep defaults."""
        values = [int(part) for part in spec.split(",") if part.strip()]
        if len(values) > len(fields(cls)):
            raise ValueError(f"a launch has at most {len(fields(cls))} fields: {spec!r}")
        given: dict[str, Any] = {f.name: v for f, v in zip(fields(cls), values, strict=False)}
        return cls(**{name: bool(v) if name in BOOLEAN_FIELDS else v for name, v in given.items()})

    def spec(self) -> str:
        return ",".join(str(int(getattr(self, f.name))) for f in fields(self))


DEFAULT_LAUNCH = LaunchConfig()
BOOLEAN_FIELDS = ("prefetch", "heads_first", "lanes")


@cache
def _kernels() -> tuple[Any, Any]:
    from whisper_endpoint.engines import vllm_attention_kernels as kernels

    return kernels.attention_kernel, kernels.combine_kernel


def paged_attention(
    query: Any,
    kv_cache: Any,
    block_table: Any,
    seq_lens: Any,
    query_start: Any,
    output: Any,
    scales: tuple[Any, Any, Any],
    softmax_scale: float,
    causal: bool,
    num_query_tokens: int | None = None,
    launch: LaunchConfig = DEFAULT_LAUNCH,
) -> Any:
    """Attention of every query token over its sequence's cached positions (causal: only up to itself), into
    `output`; returns the attention kernel as Triton compiled it (its registers and assembly).

    query, output: [tokens, heads, head_size]; kv_cache: [blocks, heads, block_size, 2 * head_size];
    scales: float32 tensors dequantising query, keys and values (1.0 where not quantised);
    num_query_tokens: the real tokens (default all), the rest pad a CUDA graph's batch."""
    import torch

    tokens, heads, head_size = query.shape
    real = tokens if num_query_tokens is None else num_query_tokens
    attend, combine = _kernels()
    tensors = (query, kv_cache, block_table, seq_lens, query_start, output)
    counts = (softmax_scale, real, query_start.shape[0] - 1)
    strides = (
        *query.stride()[:2],
        *kv_cache.stride()[:3],
        block_table.stride(0),
        *output.stride()[:2],
    )
    shape = {
        "HEAD_SIZE": head_size,
        "BLOCK_SIZE": kv_cache.shape[2],
        "TOKENS": launch.tokens,
        "STAGES": launch.num_stages,
        "CAUSAL": causal,
        "SEARCH": SEARCH_STEPS,
        "num_warps": launch.num_warps,
    }
    splits = launch.splits
    partial = output  # not read with one program per token and head
    if splits > 1:
        partial = torch.empty((tokens, heads, splits, head_size + 2), dtype=torch.float32, device=query.device)
    grid = (heads, tokens, splits) if launch.heads_first else (tokens, heads, splits)
    compiled = attend[grid](
        *tensors,
        partial,
        *scales,
        *counts,
        *strides,
        SPLITS=splits,
        PREFETCH=launch.prefetch,
        HEADS_FIRST=launch.heads_first,
        LANES=launch.lanes,
        **shape,
    )
    if splits > 1:
        combine[(tokens, heads)](
            partial,
            output,
            scales[2],
            real,
            output.stride(0),
            output.stride(1),
            HEAD_SIZE=head_size,
            SPLITS=splits,
        )
    return compiled


def takes_this_path(impl: Any, attn_metadata: Any, output_scale: Any, decoder_types: tuple[Any, ...]) -> bool:
    """The decoder's self- and cross-attention with metadata (vLLM's memory-profiling run has none), in the
    plain configuration."""
    return (
        impl.attn_type in decoder_types
        and attn_metadata is not None
        and output_scale is None
        and getattr(impl, "dcp_world_size", 1) == 1
    )
