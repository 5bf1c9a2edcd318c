"""The engine pool behind --gpus N, with fake engines of different speeds (no GPU here)."""

from __future__ import annotations

import sys
import threading
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from types import SimpleNamespace

import numpy as np
import pytest

from whisper_endpoint.config import Settings
from whisper_endpoint.engines.base import (
    Cancellation,
    Capabilities,
    Generation,
    HandedOverWindows,
    SamplingOptions,
    WindowInput,
)
from whisper_endpoint.engines.pool import EnginePool, split_cpus, vllm_pool
from whisper_endpoint.errors import EngineUnavailableError


class TimedFakeEngine:
    """Answers each window with its tag after `seconds_per_window`; counts what it served."""

    name = "fake"
    model_name = "fake"
    n_mels = 80
    multilingual = True
    capabilities = Capabilities(continuous_batching=True)
    max_batch_size = 16
    tokenizer = None

    def __init__(self, seconds_per_window: float) -> None:
        self.delay = seconds_per_window
        self.served = 0
        self.lock = threading.Lock()

    def generate(
        self, windows: Sequence[WindowInput], options: SamplingOptions, cancellation: Cancellation | None = None
    ) -> list[Generation]:
        time.sleep(self.delay * len(windows))
        with self.lock:
            self.served += len(windows)
        return [Generation((int(w.prompt[0]),), 0.0, 0.0) for w in windows]

    def close(self) -> None:
        pass


def _windows(first: int, n: int) -> list[WindowInput]:
    return [WindowInput(None, (first + i,), 1000, np.zeros(16, np.float32)) for i in range(n)]


def test_pool_keeps_order_and_gives_the_faster_engine_more_windows() -> None:
    fast, slow = TimedFakeEngine(0.002), TimedFakeEngine(0.02)
    pool = EnginePool([fast, slow])  # type: ignore[list-item]
    assert pool.max_batch_size == 32 and pool.capabilities.continuous_batching

    def caller(k: int) -> list[int]:
        out = []
        for round_ in range(5):
            first = 1000 * k + 100 * round_
            out += [g.tokens[0] for g in pool.generate(_windows(first, 4), SamplingOptions())]
        return out

    with ThreadPoolExecutor(8) as threads:
        results = list(threads.map(caller, range(8)))
    for k, tokens in enumerate(results):  # every window's answer came back in its place
        assert tokens == [1000 * k + 100 * r + i for r in range(5) for i in range(4)]
    assert fast.served + slow.served == 8 * 5 * 4
    assert slow.served > 0  # both GPUs worked
    assert fast.served > 2 * slow.served  # windows went where the work drains faster
    assert pool.outstanding == [0, 0]
    pool.close()


def test_more_gpus_than_visible_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    nvml = SimpleNamespace(nvmlInit=lambda: None, nvmlShutdown=lambda: None, nvmlDeviceGetCount=lambda: 2)
    monkeypatch.setitem(sys.modules, "pynvml", nvml)  # two GPUs on the host, one of them visible to us
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0")
    with pytest.raises(EngineUnavailableError, match="--gpus 2 asked for, but 1 GPU"):
        vllm_pool(Settings(engine="vllm", gpus=2))


def test_cpus_split_into_equal_contiguous_shares() -> None:
    assert split_cpus(set(range(32)), 2) == [frozenset(range(16)), frozenset(range(16, 32))]
    assert split_cpus({0, 1, 2, 5, 6}, 2) == [frozenset({0, 1}), frozenset({2, 5, 6})]
    assert split_cpus({3}, 2) == [None, None]  # too few to split: every engine may use all


def test_handed_over_windows_reach_each_engine_handed_over() -> None:
    """Each engine may let its share of the windows go as it takes them (its share is a list of its own); the
    caller's list is emptied, and the answers come back in order."""
    received: list[Sequence[WindowInput]] = []

    class Taking(TimedFakeEngine):
        def generate(
            self, windows: Sequence[WindowInput], options: SamplingOptions, cancellation: Cancellation | None = None
        ) -> list[Generation]:
            received.append(windows)
            answers = super().generate(windows, options, cancellation)
            if isinstance(windows, HandedOverWindows):
                windows.clear()
            return answers

    pool = EnginePool([Taking(0.0), Taking(0.0)])  # type: ignore[list-item]
    handed = HandedOverWindows(_windows(0, 6))
    assert [g.tokens[0] for g in pool.generate(handed, SamplingOptions())] == list(range(6))
    assert handed == [] and len(received) == 2
    assert all(isinstance(share, HandedOverWindows) and share == [] for share in received)
    plain = _windows(10, 4)
    assert [g.tokens[0] for g in pool.generate(plain, SamplingOptions())] == list(range(10, 14))
    assert len(plain) == 4 and not any(isinstance(share, HandedOverWindows) for share in received[2:])
