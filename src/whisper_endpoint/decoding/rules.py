"""Whisper's decoding rules, for engines that sample without them (vLLM).

openai/whisper (`decoding.py`: SuppressBlank, ApplyTimestampRules) and CTranslate2 apply these to the logits
at every step; a decoder that samples timestamp tokens freely can close a segment without opening one, go
back in time, or stop on a lone timestamp, and the long-form algorithm then seeks to the wrong place. Here
each window's rules reduce to a few numbers per step (which timestamps, whether text, end of text and the
blank may follow), so an engine applies them to a whole batch with a handful of tensor operations.
The last rule, "a timestamp when their summed probability beats every text token", needs the logits
themselves and is left to the engine (`force_timestamp` in its docstring below).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from whisper_endpoint.decoding.tokenizer import Tokenizer

NO_LIMIT = 1 << 30  # above any token id


@dataclass(frozen=True)
class RuleTokens:
    """The token ids the rules name, the same for every window of a model."""

    eot: int
    no_timestamps: int
    timestamp_begin: int
    blank: tuple[int, ...]  # what the tokenizer makes of " ": never the first token of a window

    @classmethod
    def of(cls, tokenizer: Tokenizer) -> RuleTokens:
        return cls(tokenizer.eot, tokenizer.no_timestamps, tokenizer.timestamp_begin, tuple(tokenizer.encode(" ")))


@dataclass(frozen=True)
class WindowRules:
    """Which rules one window decodes under."""

    timestamps: bool  # the prompt asked for timestamps (no <|notimestamps|>)
    suppress_blank: bool = True
    max_initial_timestamp_index: int | None = 50  # 1.0 s: the first timestamp is at most this many steps in


@dataclass(frozen=True)
class StepLimits:
    """What the next token of one window may be: no id below `lowest` (0: any; end-of-text: no text; the first
    timestamp: only timestamps), timestamps in [first_timestamp, last_timestamp] only, end-of-text only if
    `eot`, the blank only if `blank`. When the window asks for timestamps, an engine also forces a timestamp
    where the timestamps' summed probability beats every text token's (openai/whisper's last rule), and never
    lets <|notimestamps|> through."""

    first_timestamp: int
    last_timestamp: int
    lowest: int = 0
    eot: bool = True
    blank: bool = True


@dataclass
class WindowState:
    """The rules' memory of one window's sampled tokens, read as they grow: how many were read and the last
    timestamp among them."""

    rules: WindowRules
    tokens: RuleTokens
    seen: int = 0
    last_timestamp: int | None = None

    def limits(self, sampled: Sequence[int]) -> StepLimits:
        """The limits for the token after `sampled` (the window's sampled tokens so far, prompt excluded; a
        negative id is a token the engine has not filled in yet, and is left for the next call)."""
        if sampled and sampled[-1] < 0:
            sampled = sampled[: next(i for i, t in enumerate(sampled) if t < 0)]
        begin = self.tokens.timestamp_begin
        for token in sampled[self.seen :]:
            if token >= begin:
                self.last_timestamp = token
        self.seen = len(sampled)
        return step_limits(sampled, self.last_timestamp, self.rules, self.tokens)


ARGS_KEY = "whisper_rules"  # where a window's rules travel in an engine's per-request extra arguments


def rules_args(tokens: RuleTokens, rules: WindowRules) -> dict[str, object]:
    """A window's rules as plain values, for an engine that takes per-request arguments as JSON-like data."""
    return {
        "eot": tokens.eot,
        "no_timestamps": tokens.no_timestamps,
        "timestamp_begin": tokens.timestamp_begin,
        "blank": list(tokens.blank),
        "timestamps": rules.timestamps,
        "suppress_blank": rules.suppress_blank,
        "max_initial_timestamp_index": rules.max_initial_timestamp_index,
    }


def rules_from_args(args: dict[str, Any]) -> tuple[RuleTokens, WindowRules]:
    """The inverse of `rules_args`."""
    initial = args["max_initial_timestamp_index"]
    tokens = RuleTokens(
        int(args["eot"]), int(args["no_timestamps"]), int(args["timestamp_begin"]), tuple(args["blank"])
    )
    return tokens, WindowRules(
        bool(args["timestamps"]), bool(args["suppress_blank"]), None if initial is None else int(initial)
    )


def step_limits(
    sampled: Sequence[int], last_timestamp: int | None, rules: WindowRules, tokens: RuleTokens
) -> StepLimits:
    """openai/whisper's SuppressBlank and ApplyTimestampRules (all but the probability rule) as limits."""
    first = not sampled
    blank = not (rules.suppress_blank and first)
    eot = blank
    begin = tokens.timestamp_begin
    if not rules.timestamps:
        return StepLimits(begin, NO_LIMIT, blank=blank, eot=eot)
    if first:  # a window opens with a timestamp, at most max_initial_timestamp_index steps in
        last = NO_LIMIT if rules.max_initial_timestamp_index is None else begin + rules.max_initial_timestamp_index
        return StepLimits(begin, last, lowest=begin, eot=False, blank=False)
    last_was_timestamp = sampled[-1] >= begin
    penultimate_was_timestamp = len(sampled) < 2 or sampled[-2] >= begin
    low, high, lowest = begin, NO_LIMIT, 0
    if last_was_timestamp:
        if penultimate_was_timestamp:  # a pair closed: text or the end next, no third timestamp
            low = NO_LIMIT
        else:  # a segment's end stands alone: its pair (another timestamp) or the end next
            lowest = tokens.eot
    if last_timestamp is not None:  # never back in time; a segment never has zero length
        closing = last_was_timestamp and not penultimate_was_timestamp
        low = max(low, last_timestamp if closing else last_timestamp + 1)
    return StepLimits(low, high, lowest=lowest, eot=eot, blank=blank)
