"""Whisper's suppressed tokens for a whole vLLM batch at once (experimental, off by default).

vLLM's `logit_bias` keeps each request's biases in a dict and, whenever the batch changes, rebuilds in Python a
list of every entry of every request and copies it to the GPU. A real Whisper checkpoint suppresses about 90
tokens (its `suppress_tokens`), so 512 windows make about 45,000 entries: that rebuild took about 6 ms of a CPU core
when timed alone (torch on a 2-core x86 machine), and under load it runs on nearly every step of vLLM's
single-threaded engine core, where windows start and finish all the time. Requests here share a handful of
suppress lists (usually one), so `SuppressRows` groups the batch's rows by list and the processor
(`vllm_suppress_processor`) keeps one token-id tensor per list. The benchmarks' large-v3-shaped checkpoint
lists no tokens to suppress unless made with `--real-suppress`, so their figures so far never paid this cost."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

SUPPRESS_ARG = "whisper_suppress"  # the SamplingParams.extra_args key holding a window's suppressed tokens
PROCESSOR = "whisper_endpoint.engines.vllm_suppress_processor:SuppressTokens"  # as vLLM loads it
SUPPRESS_BIAS = -100.0  # added to a suppressed token's logit


def suppressed_tokens(params: Any) -> tuple[int, ...]:
    """A request's suppressed tokens, from its SamplingParams."""
    extra = getattr(params, "extra_args", None) or {}
    return tuple(extra.get(SUPPRESS_ARG, ()))


class SuppressRows:
    """Which rows of vLLM's persistent batch suppress which tokens, kept from vLLM's batch updates, applied
    in vLLM's order: removed rows, then added ones (which may take a row's place), then moves and swaps."""

    def __init__(self) -> None:
        self.tokens_by_row: dict[int, tuple[int, ...]] = {}
        self.batch_size = 0

    def update(
        self,
        batch_size: int,
        removed: Iterable[int],
        added: Iterable[tuple[int, tuple[int, ...]]],
        moved: Iterable[tuple[int, int, bool]],
    ) -> bool:
        """Apply one batch update (moved: from, to, and whether it is a swap); True where rows changed."""
        rows = self.tokens_by_row
        before = dict(rows)
        for index in removed:
            rows.pop(index, None)
        for index, tokens in added:
            if tokens:
                rows[index] = tokens
            else:
                rows.pop(index, None)
        for a, b, swap in moved:
            tokens_a, tokens_b = rows.pop(a, None), rows.pop(b, None)
            if tokens_a is not None:
                rows[b] = tokens_a
            if swap and tokens_b is not None:
                rows[a] = tokens_b
        changed = rows != before or batch_size != self.batch_size
        self.batch_size = batch_size
        return changed

    def groups(self) -> list[tuple[tuple[int, ...], list[int] | None]]:
        """Each distinct token list with the rows that use it; None where every row of the batch does."""
        by_tokens: dict[tuple[int, ...], list[int]] = {}
        for row in sorted(self.tokens_by_row):
            by_tokens.setdefault(self.tokens_by_row[row], []).append(row)
        return [(tokens, None if len(rows) == self.batch_size else rows) for tokens, rows in by_tokens.items()]
