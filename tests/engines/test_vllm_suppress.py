"""The batch-wide suppress processor: its bookkeeping of vLLM's batch updates, and the processor itself on
stand-ins for vLLM and torch (numpy arrays as logits), since neither is installed here."""

from __future__ import annotations

import enum
import importlib
import sys
from pathlib import Path
from types import ModuleType, SimpleNamespace

import numpy as np
import pytest

from whisper_endpoint.config import Settings
from whisper_endpoint.engines.base import SamplingOptions
from whisper_endpoint.engines.vllm import choose_settings, engine_args, sampling_kwargs
from whisper_endpoint.engines.vllm_suppress import PROCESSOR, SUPPRESS_ARG, SuppressRows

A, B = (5, 7), (9,)


def test_rows_follow_removals_additions_moves_and_swaps() -> None:
    rows = SuppressRows()
    assert rows.update(3, [], [(0, A), (1, A), (2, A)], [])
    assert rows.groups() == [(A, None)]  # every row the same: one group for the whole batch
    assert not rows.update(3, [], [], [])  # nothing changed
    assert rows.update(3, [1], [(1, B)], [])  # a finished window's row taken by a new one
    assert rows.groups() == [(A, [0, 2]), (B, [1])]
    assert rows.update(3, [], [], [(0, 1, True)])  # swap
    assert rows.tokens_by_row == {0: B, 1: A, 2: A}
    assert rows.update(2, [0], [], [(2, 0, False)])  # removed, then the last row moved into its place
    assert rows.tokens_by_row == {0: A, 1: A} and rows.groups() == [(A, None)]
    assert rows.update(3, [], [(2, ())], [])  # a window that suppresses nothing
    assert rows.groups() == [(A, [0, 1])]


def test_the_engine_sends_the_list_to_the_processor_only_when_asked() -> None:
    options = SamplingOptions(suppress_tokens=(-1, 50))
    plain = sampling_kwargs(options, prompt_len=4, model_suppress=(1, 2))
    assert plain["logit_bias"] == {1: -100.0, 2: -100.0, 50: -100.0} and "extra_args" not in plain
    batch = sampling_kwargs(options, prompt_len=4, model_suppress=(1, 2), batch_suppress=True)
    assert batch["extra_args"] == {SUPPRESS_ARG: [1, 2, 50]} and "logit_bias" not in batch
    assert "extra_args" not in sampling_kwargs(SamplingOptions(suppress_tokens=()), prompt_len=4, batch_suppress=True)


def test_the_processor_is_added_to_the_users_own(tmp_path: Path) -> None:
    assert "logits_processors" not in engine_args(tmp_path, choose_settings(Settings(), (9, 0)), Settings())
    settings = Settings(vllm_batch_suppress=True, vllm_engine_args={"logits_processors": ["mine:Processor"]})
    args = engine_args(tmp_path, choose_settings(settings, (9, 0)), settings)
    assert args["logits_processors"] == ["mine:Processor", PROCESSOR]


class _Move(enum.Enum):
    UNIDIRECTIONAL = 1
    SWAP = 2


@pytest.fixture
def processor_class(monkeypatch: pytest.MonkeyPatch) -> type:
    interface = ModuleType("vllm.v1.sample.logits_processor")
    interface.LogitsProcessor = object  # type: ignore[attr-defined]
    interface.BatchUpdate = object  # type: ignore[attr-defined]
    interface.MoveDirectionality = _Move  # type: ignore[attr-defined]
    torch = SimpleNamespace(long=np.int64, tensor=lambda data, dtype, device: np.array(data, dtype=dtype))
    monkeypatch.setitem(sys.modules, "vllm.v1.sample.logits_processor", interface)
    monkeypatch.setitem(sys.modules, "torch", torch)
    monkeypatch.delitem(sys.modules, "whisper_endpoint.engines.vllm_suppress_processor", raising=False)
    module = importlib.import_module("whisper_endpoint.engines.vllm_suppress_processor")
    return module.SuppressTokens  # type: ignore[no-any-return]


def _update(batch_size: int, added: list[tuple[int, tuple[int, ...]]], moved: tuple = ()) -> SimpleNamespace:
    params = [(i, SimpleNamespace(extra_args={SUPPRESS_ARG: list(t)} if t else None), [], []) for i, t in added]
    return SimpleNamespace(batch_size=batch_size, removed=[], added=params, moved=list(moved))


def test_the_processor_lowers_exactly_the_suppressed_logits(processor_class: type) -> None:
    processor = processor_class(None, "cpu", False)
    assert processor.is_argmax_invariant() is False
    processor.update_state(_update(3, [(0, A), (1, A), (2, B)]))
    logits = processor.apply(np.zeros((3, 12)))
    expected = np.zeros((3, 12))
    expected[0:2, [5, 7]] = expected[2, 9] = -100.0
    assert (logits == expected).all()
    processor.update_state(None)  # no change: the same plan
    processor.update_state(_update(3, [(2, A)]))  # now every row suppresses A: the whole-batch path
    assert (processor.apply(np.zeros((3, 12))) == np.where(np.isin(np.arange(12), A), -100.0, 0.0)).all()
    processor.update_state(_update(3, [], [(0, 2, _Move.SWAP)]))  # a swap among equal rows changes nothing
    assert len(processor.token_ids) == 2  # one tensor per distinct list, made once
