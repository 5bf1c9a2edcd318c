"""Whisper's decoding rules as vLLM runs them: our logits processor, fed through vLLM's own batch updates,
against the plain statement of the rules (tests/decoding/test_rules.py), on the GPU."""

from __future__ import annotations

import numpy as np
import pytest

from tests.decoding.test_rules import TOKENS, VOCAB, random_history, reference_banned
from whisper_endpoint.decoding.rules import ARGS_KEY, WindowRules, rules_args

pytestmark = pytest.mark.gpu


def reference(logits: np.ndarray, sampled: list[int], rules: WindowRules) -> np.ndarray:
    """The rules on one row of logits, the probability rule last."""
    out = np.where(reference_banned(sampled, rules), -np.inf, logits)
    if rules.timestamps:
        finite = out[np.isfinite(out)]
        logprobs = out - (finite.max() + np.log(np.exp(finite - finite.max()).sum()))
        begin = TOKENS.timestamp_begin
        stamps = logprobs[begin:][np.isfinite(logprobs[begin:])]
        text = logprobs[:begin]
        if stamps.size and np.log(np.exp(stamps).sum()) > text.max():
            out[:begin] = -np.inf
    return out


@pytest.mark.parametrize("every_row", [True, False])
def test_the_processor_applies_whispers_rules_to_each_window_of_a_batch(every_row: bool) -> None:
    import torch
    from vllm import SamplingParams
    from vllm.v1.sample.logits_processor import BatchUpdate

    from whisper_endpoint.engines.vllm_rules import WhisperRules

    rng = np.random.default_rng(1)
    processor = WhisperRules(None, torch.device("cuda"), is_pin_memory=True)
    choices = [WindowRules(True), WindowRules(True, max_initial_timestamp_index=2), WindowRules(False)]
    rows = 64
    windows = {}
    added = []
    for row in range(rows):
        if not every_row and row % 3 == 0:  # a request without rules (language detection, another client)
            added.append((row, SamplingParams(), None, []))
            continue
        rules = choices[row % len(choices)]
        sampled = random_history(rng)
        windows[row] = (rules, sampled)
        added.append((row, SamplingParams(extra_args={ARGS_KEY: rules_args(TOKENS, rules)}), None, sampled))
    processor.update_state(BatchUpdate(batch_size=rows, removed=[], added=added, moved=[]))
    for _step in range(3):
        logits = rng.normal(0, 3, (rows, VOCAB)).astype(np.float32)
        logits[:, TOKENS.timestamp_begin :] += rng.normal(0, 3, (rows, 1)).astype(np.float32)  # timestamps' turn
        result = processor.apply(torch.from_numpy(logits.copy()).cuda()).cpu().numpy()
        for row in range(rows):
            if row not in windows:
                assert (result[row] == logits[row]).all()
                continue
            rules, sampled = windows[row]
            assert (result[row] == reference(logits[row], sampled, rules)).all(), (row, sampled, rules)
            sampled.append(int(np.argmax(result[row])))  # vLLM appends to the same list
