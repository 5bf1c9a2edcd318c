"""Data parallelism on one host: one engine per GPU behind the Engine interface.

Each call's windows go one by one to the engine with the least work outstanding (windows handed to
it and not yet returned), so a GPU that finishes early takes more; the parts run at the same time.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from typing import Any, TypeVar

from whisper_endpoint.config import Settings
from whisper_endpoint.engines import visible_gpus
from whisper_endpoint.engines.base import (
    AlignInput,
    Alignment,
    Cancellation,
    DescribedEngine,
    Engine,
    EngineDescription,
    Generation,
    HandedOverWindows,
    SamplingOptions,
    WindowInput,
    engine_alive,
    let_go,
)
from whisper_endpoint.errors import EngineFailedError, EngineUnavailableError

log = logging.getLogger(__name__)
T = TypeVar("T")


class EnginePool(DescribedEngine):
    def __init__(self, engines: Sequence[Engine]) -> None:
        if not engines:
            raise ValueError("an engine pool needs at least one engine")
        first = EngineDescription.of(engines[0])
        total = sum(e.max_batch_size for e in engines)
        super().__init__(replace(first, name=f"{first.name} x{len(engines)}", max_batch_size=total))
        self.engines = list(engines)
        self.outstanding = [0] * len(engines)  # windows handed to each engine and not yet returned
        self._lock = threading.Lock()
        # A thread per share waiting on another engine; created as needed, one per request in flight at most.
        self._calls = ThreadPoolExecutor(max_workers=1024, thread_name_prefix="engine-pool")

    @property
    def alive(self) -> bool:
        return any(engine_alive(e) for e in self.engines)

    def _spread(self, items: Sequence[Any], call: Callable[[Engine, list[Any]], list[T]]) -> list[T]:
        shares: list[list[int]] = [[] for _ in self.engines]
        # An engine whose process died answers at once, so it would always look least busy: leave it out.
        candidates = [e for e, engine in enumerate(self.engines) if engine_alive(engine)]
        if not candidates:
            raise EngineFailedError("every engine of the pool has ended")
        with self._lock:
            for i in range(len(items)):
                least = min(candidates, key=self.outstanding.__getitem__)
                shares[least].append(i)
                self.outstanding[least] += 1

        parts: list[list[Any]] = [[items[i] for i in share] for share in shares]
        if isinstance(items, HandedOverWindows):  # they stay handed over, in a list per engine
            parts = [HandedOverWindows(part) for part in parts]
        let_go(items)

        def run(e: int) -> list[T]:
            try:
                return call(self.engines[e], parts[e])
            finally:
                with self._lock:
                    self.outstanding[e] -= len(shares[e])

        used = [e for e in range(len(self.engines)) if shares[e]]
        # The last share runs in the calling thread: a call served by one engine costs no hand-over.
        futures = {e: self._calls.submit(run, e) for e in used[:-1]}
        results = {used[-1]: run(used[-1])} if used else {}
        results.update({e: f.result() for e, f in futures.items()})
        out: list[Any] = [None] * sum(len(share) for share in shares)  # `items` may be emptied by now
        for e in used:
            for i, result in zip(shares[e], results[e], strict=True):
                out[i] = result
        return out

    def generate(
        self, windows: Sequence[WindowInput], options: SamplingOptions, cancellation: Cancellation | None = None
    ) -> list[Generation]:
        return self._spread(windows, lambda engine, part: engine.generate(part, options, cancellation))

    def detect_language(self, windows: Sequence[WindowInput]) -> list[dict[str, float]]:
        return self._spread(windows, lambda engine, part: engine.detect_language(part))

    def align(self, items: Sequence[AlignInput]) -> list[Alignment]:
        return self._spread(items, lambda engine, part: engine.align(part))

    def close(self) -> None:
        for engine in self.engines:
            engine.close()
        self._calls.shutdown(wait=False)


def split_cpus(cpus: set[int], parts: int) -> list[frozenset[int] | None]:
    """`cpus` in `parts` contiguous shares of (nearly) equal size; None for all when there are too few."""
    ordered = sorted(cpus)
    if len(ordered) < parts:
        return [None] * parts
    bounds = [len(ordered) * i // parts for i in range(parts + 1)]
    return [frozenset(ordered[bounds[i] : bounds[i + 1]]) for i in range(parts)]


def vllm_pool(settings: Settings) -> Engine:
    """One vLLM engine per GPU, each in a process of its own that sees only its GPU (and, with
    `engine_cpu_split`, only its share of the cores). One GPU's engine may run in this process instead
    (`engine_process` off); several always run in processes, since only a process of its own can be given
    its share of the cores (two GPUs: 1.86x one GPU with the split, 1.67x without; docs/history)."""
    from whisper_endpoint.engines.process import ProcessEngine
    from whisper_endpoint.engines.vllm import vllm_engine

    if settings.gpus == 1:
        return ProcessEngine(vllm_engine, settings) if settings.engine_process else vllm_engine(settings)
    gpus = visible_gpus()
    wanted = settings.gpus or len(gpus)
    if not 1 <= wanted <= len(gpus):
        raise EngineUnavailableError(f"--gpus {settings.gpus} asked for, but {len(gpus)} GPU(s) are visible")
    engines: list[Engine] = []
    shares = split_cpus(os.sched_getaffinity(0), wanted) if settings.engine_cpu_split else [None] * wanted
    try:
        # One after the other: the first compiles, the rest start from its compilation cache.
        for gpu, cpus in zip(gpus[:wanted], shares, strict=True):
            log.info("starting vLLM engine %d of %d on GPU %s (CPUs: %s)", len(engines) + 1, wanted, gpu, cpus or "all")
            engines.append(ProcessEngine(vllm_engine, settings, {"CUDA_VISIBLE_DEVICES": gpu}, cpus))
    except BaseException:
        for engine in engines:
            engine.close()
        raise
    return EnginePool(engines)
