"""Whisper's decoding rules inside vLLM: a logits processor, given to vLLM by name (`logits_processors`).

vLLM samples Whisper's tokens with none of the rules openai/whisper and CTranslate2 apply (suppress_blank,
timestamp pairs, timestamps that never go back, the first timestamp within 1 s, a timestamp when they are
likelier than any text). Windows that carry their rules in `SamplingParams.extra_args` (`decoding.rules`)
get them here; others (language detection, vLLM's own requests) pass untouched.

Per step the rules reduce to a few numbers per window (`decoding.rules.StepLimits`), read from each window's
sampled tokens on the CPU, copied to the GPU in one transfer and turned into a mask over the vocabulary; the
probability rule runs on the masked logits, as in openai/whisper. vLLM keeps the sampled tokens current for
custom processors, also under async scheduling (it waits for the previous step's tokens).
"""

from __future__ import annotations

from typing import Any

import torch
from vllm.v1.sample.logits_processor import BatchUpdate, LogitsProcessor
from vllm.v1.sample.logits_processor.builtin import process_dict_updates

from whisper_endpoint.decoding.rules import ARGS_KEY, RuleTokens, WindowState, rules_from_args

NAME = f"{__name__}:WhisperRules"
_FIELDS = 7  # row, first and last timestamp, lowest, eot, blank, timestamps


class WhisperRules(LogitsProcessor):  # type: ignore[misc]  # vLLM is untyped here
    def __init__(self, vllm_config: Any, device: torch.device, is_pin_memory: bool) -> None:
        self.device = device
        self.pin_memory = is_pin_memory
        self.windows: dict[int, tuple[WindowState, list[int]]] = {}  # batch row -> rules, live sampled tokens
        self._vocab: dict[RuleTokens, tuple[torch.Tensor, torch.Tensor]] = {}  # ids, blank mask, per model

    def is_argmax_invariant(self) -> bool:
        return False  # it changes which token greedy decoding picks

    @staticmethod
    def _window(params: Any, _prompt: Any, sampled: list[int]) -> tuple[WindowState, list[int]] | None:
        args = (params.extra_args or {}).get(ARGS_KEY)
        if args is None:
            return None
        tokens, rules = rules_from_args(args)
        return WindowState(rules, tokens), sampled

    def update_state(self, batch_update: BatchUpdate | None) -> None:
        process_dict_updates(self.windows, batch_update, self._window)

    def _vocabulary(self, tokens: RuleTokens, size: int) -> tuple[torch.Tensor, torch.Tensor]:
        if tokens not in self._vocab:
            ids = torch.arange(size, device=self.device)[None]
            blank = torch.zeros(size, dtype=torch.bool, device=self.device)
            blank[list(tokens.blank)] = True
            self._vocab[tokens] = ids, blank[None]
        return self._vocab[tokens]

    def apply(self, logits: torch.Tensor) -> torch.Tensor:
        if not self.windows:
            return logits
        rows = sorted(self.windows)
        table = []
        for row in rows:
            state, sampled = self.windows[row]
            limits = state.limits(sampled)
            table.append(
                (
                    row,
                    limits.first_timestamp,
                    limits.last_timestamp,
                    limits.lowest,
                    limits.eot,
                    limits.blank,
                    state.rules.timestamps,
                )
            )
        values = torch.tensor(table, dtype=torch.int64, pin_memory=self.pin_memory).to(self.device, non_blocking=True)
        tokens = self.windows[rows[0]][0].tokens  # one model: every window names the same tokens
        whole = len(rows) == logits.shape[0]  # the usual case under load: every row, in order
        view = logits if whole else logits[values[:, 0]]
        view = mask(view, values[:, 1:], tokens, *self._vocabulary(tokens, logits.shape[1]))
        if not whole:
            logits[values[:, 0]] = view
        return logits


def mask(
    logits: torch.Tensor, limits: torch.Tensor, tokens: RuleTokens, ids: torch.Tensor, blank: torch.Tensor
) -> torch.Tensor:
    """`logits` [windows, vocabulary] with each window's limits applied (`limits` [windows, 6]: first and last
    timestamp, lowest, eot, blank, timestamps), then openai/whisper's probability rule, in place."""
    first, last, lowest, eot, blank_ok, timestamps = (limits[:, i : i + 1] for i in range(_FIELDS - 1))
    begin = tokens.timestamp_begin
    is_timestamp = ids >= begin
    banned = is_timestamp & ((ids < first) | (ids > last))
    banned |= ids < lowest
    banned |= (ids == tokens.eot) & (eot == 0)
    banned |= blank & (blank_ok == 0)
    banned |= (ids == tokens.no_timestamps) & (timestamps != 0)
    logits.masked_fill_(banned, float("-inf"))
    logprobs = logits.log_softmax(dim=-1)
    timestamp_mass = logprobs[:, begin:].logsumexp(dim=-1, keepdim=True)
    best_text = logprobs[:, :begin].amax(dim=-1, keepdim=True)
    force = (timestamp_mass > best_text) & (timestamps != 0)
    logits[:, :begin].masked_fill_(force, float("-inf"))
    return logits
