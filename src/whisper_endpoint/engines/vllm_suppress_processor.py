"""The vLLM logits processor of `vllm_suppress`: imported by vLLM's engine core, so it needs vLLM."""

from __future__ import annotations

from typing import Any

import torch
from vllm.v1.sample.logits_processor import BatchUpdate, LogitsProcessor, MoveDirectionality

from whisper_endpoint.engines.vllm_suppress import SUPPRESS_BIAS, SuppressRows, suppressed_tokens


class SuppressTokens(LogitsProcessor):  # type: ignore[misc]  # vLLM is untyped here
    def __init__(self, vllm_config: Any, device: Any, is_pin_memory: bool) -> None:
        self.device = device
        self.rows = SuppressRows()
        self.token_ids: dict[tuple[int, ...], Any] = {}  # one device tensor per distinct list, kept
        self.plan: list[tuple[Any, Any]] = []  # (token ids, rows or None for every row)

    def is_argmax_invariant(self) -> bool:
        return False  # suppressing can change the greedy choice

    def update_state(self, batch_update: BatchUpdate | None) -> None:
        if batch_update is None:
            return
        added = [(index, suppressed_tokens(params)) for index, params, _, _ in batch_update.added]
        moved = [(a, b, way == MoveDirectionality.SWAP) for a, b, way in batch_update.moved]
        if not self.rows.update(batch_update.batch_size, batch_update.removed, added, moved):
            return
        plan = []
        for tokens, rows in self.rows.groups():
            if tokens not in self.token_ids:
                self.token_ids[tokens] = torch.tensor(tokens, dtype=torch.long, device=self.device)
            where = None if rows is None else torch.tensor(rows, dtype=torch.long, device=self.device)[:, None]
            plan.append((self.token_ids[tokens], where))
        self.plan = plan

    def apply(self, logits: Any) -> Any:
        for token_ids, rows in self.plan:
            if rows is None:
                logits[:, token_ids] += SUPPRESS_BIAS
            else:
                logits[rows, token_ids] += SUPPRESS_BIAS
        return logits
