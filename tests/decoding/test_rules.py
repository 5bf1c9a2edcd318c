"""Whisper's decoding rules as per-step limits, against a plain reading of the rules applied token by token.

The reference below states each rule on a full row of logits, the way openai/whisper's decoding describes
them; the limits must ban exactly the same tokens for any history. A greedy decoder driven by logits that
want to break every rule then shows what the rules buy on a real tokenizer's ids.
"""

from __future__ import annotations

import numpy as np
import pytest

from whisper_endpoint.config import Settings
from whisper_endpoint.decoding.rules import (
    NO_LIMIT,
    RuleTokens,
    StepLimits,
    WindowRules,
    WindowState,
    rules_args,
    rules_from_args,
)
from whisper_endpoint.decoding.tokenizer import Tokenizer
from whisper_endpoint.models import resolve_model

TOKENS = RuleTokens(eot=10, no_timestamps=14, timestamp_begin=15, blank=(3,))
VOCAB = 40  # 10 text ids, end of text, 3 other specials, <|notimestamps|>, 25 timestamps


def reference_banned(sampled: list[int], rules: WindowRules, tokens: RuleTokens = TOKENS) -> np.ndarray:
    """Which tokens Whisper's rules forbid after `sampled`, before the probability rule."""
    banned = np.zeros(VOCAB, bool)
    begin = tokens.timestamp_begin
    if rules.suppress_blank and not sampled:
        banned[list(tokens.blank)] = True
        banned[tokens.eot] = True
    if not rules.timestamps:
        return banned
    banned[tokens.no_timestamps] = True
    last_was_timestamp = len(sampled) >= 1 and sampled[-1] >= begin
    penultimate_was_timestamp = len(sampled) < 2 or sampled[-2] >= begin
    if last_was_timestamp:
        if penultimate_was_timestamp:
            banned[begin:] = True
        else:
            banned[: tokens.eot] = True
    timestamps = [t for t in sampled if t >= begin]
    if timestamps:
        end = timestamps[-1] if last_was_timestamp and not penultimate_was_timestamp else timestamps[-1] + 1
        banned[begin:end] = True
    if not sampled:
        banned[:begin] = True
        if rules.max_initial_timestamp_index is not None:
            banned[begin + rules.max_initial_timestamp_index + 1 :] = True
    return banned


def banned_by(limits: StepLimits, rules: WindowRules, tokens: RuleTokens = TOKENS) -> np.ndarray:
    """What an engine bans for `limits` (as engines/vllm_rules.py does on the GPU, here with numpy)."""
    ids = np.arange(VOCAB)
    banned = (ids >= tokens.timestamp_begin) & ((ids < limits.first_timestamp) | (ids > limits.last_timestamp))
    banned |= ids < limits.lowest
    banned |= (ids == tokens.eot) & (not limits.eot)
    banned |= np.isin(ids, tokens.blank) & (not limits.blank)
    banned |= (ids == tokens.no_timestamps) & rules.timestamps
    return banned


def random_history(rng: np.random.Generator) -> list[int]:
    length = int(rng.integers(0, 8))
    return [int(t) for t in rng.choice([*range(10), *range(15, VOCAB)], size=length)]


@pytest.mark.parametrize(
    "rules",
    [
        WindowRules(timestamps=True),
        WindowRules(timestamps=True, max_initial_timestamp_index=None),
        WindowRules(timestamps=True, suppress_blank=False, max_initial_timestamp_index=3),
        WindowRules(timestamps=False),
        WindowRules(timestamps=False, suppress_blank=False),
    ],
)
def test_the_limits_ban_what_whispers_rules_ban_for_any_history(rules: WindowRules) -> None:
    rng = np.random.default_rng(0)
    for _ in range(2000):
        sampled = random_history(rng)
        limits = WindowState(rules, TOKENS).limits(sampled)
        assert (banned_by(limits, rules) == reference_banned(sampled, rules)).all(), (sampled, limits)


def test_the_state_reads_a_growing_history_once_and_waits_for_unfilled_tokens() -> None:
    rules = WindowRules(timestamps=True)
    state = WindowState(rules, TOKENS)
    sampled: list[int] = []
    for token in [15, 4, 5, 20, 20, 6, -1]:
        sampled.append(token)
        incremental = state.limits(sampled)
        known = [t for t in sampled if t >= 0]
        assert incremental == WindowState(rules, TOKENS).limits(known)
    assert state.seen == 6 and state.last_timestamp == 20  # the -1 is read when it is filled in
    sampled[-1] = 25
    after_lone_timestamp = state.limits(sampled)  # a segment's end: its pair (>= it) or the end, no text
    assert (after_lone_timestamp.first_timestamp, after_lone_timestamp.lowest) == (25, TOKENS.eot)


def greedy(logits_for_step: np.ndarray, rules: WindowRules, tokens: RuleTokens, steps: int) -> list[int]:
    """Greedy decoding of a model that always prefers the same logits, with the rules and the probability rule."""
    state, sampled = WindowState(rules, tokens), []
    begin = tokens.timestamp_begin
    for _ in range(steps):
        limits = state.limits(sampled)
        logits = np.where(banned_by(limits, rules, tokens), -np.inf, logits_for_step)
        logprobs = logits - np.logaddexp.reduce(logits)
        if rules.timestamps and np.logaddexp.reduce(logprobs[begin:]) > logprobs[:begin].max():
            logits[:begin] = -np.inf
        token = int(np.argmax(logits))
        if token == tokens.eot:
            break
        sampled.append(token)
    return sampled


def test_a_model_that_wants_to_break_every_rule_decodes_well_formed_segments() -> None:
    logits = np.full(VOCAB, -5.0)
    logits[VOCAB - 1] = 3.0  # the last timestamp, always: no initial timestamp within the limit, no pairs
    logits[7] = 2.5  # one text token, next best
    logits[TOKENS.no_timestamps] = 4.0  # never allowed with timestamps
    rules = WindowRules(timestamps=True, max_initial_timestamp_index=2)
    sampled = greedy(logits, rules, TOKENS, steps=12)
    begin = TOKENS.timestamp_begin
    assert TOKENS.no_timestamps not in sampled
    assert begin <= sampled[0] <= begin + 2  # opens within the initial limit
    stamps = [t for t in sampled if t >= begin]
    assert stamps == sorted(stamps)  # never back in time
    runs = "".join("t" if t >= begin else "x" for t in sampled)
    assert "ttt" not in runs  # at most a closing timestamp and the next opening one together
    assert runs.startswith("t") and "tx" in runs


def test_rules_travel_as_plain_values_on_a_real_tokenizer() -> None:
    files = resolve_model("base", Settings().cache_dir)
    tokenizer = Tokenizer.from_file(files.tokenizer_path, multilingual=True)
    tokens = RuleTokens.of(tokenizer)
    assert tokens.timestamp_begin == tokenizer.no_timestamps + 1 and tokens.eot == tokenizer.eot
    assert tokens.blank == tuple(tokenizer.encode(" ")) and len(tokens.blank) == 1
    rules = WindowRules(timestamps=True, suppress_blank=False, max_initial_timestamp_index=None)
    assert rules_from_args(rules_args(tokens, rules)) == (tokens, rules)
    first = WindowState(rules, tokens).limits([])
    assert (first.first_timestamp, first.last_timestamp, first.lowest) == (
        tokens.timestamp_begin,
        NO_LIMIT,
        tokens.timestamp_begin,
    )
