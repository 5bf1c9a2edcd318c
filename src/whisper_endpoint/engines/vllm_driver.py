"""The one thread that owns vLLM's engine: it adds the windows callers prepared and steps the engine.

Windows submitted by any caller join the running batch (continuous batching across requests). Driving
vLLM's `LLMEngine` from one thread measured 3x faster than `AsyncLLM`'s asyncio front-end on 30 s windows
(docs/history/benchmarks-2026-11.md). Callers prepare their windows' inputs (the log-mel) in their own threads, so the
driver only adds and steps. A caller whose request is cancelled has its windows aborted in vLLM by this
thread too, between steps. Every STATS_INTERVAL_S while busy it logs how full vLLM's batch was: with too
few windows in flight the GPU idles, whatever the engine's own speed.
"""

from __future__ import annotations

import logging
import os
import queue
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Any

from whisper_endpoint.engines.base import Cancellation, on_cancel
from whisper_endpoint.errors import CancelledRequestError, EngineUnavailableError

log = logging.getLogger(__name__)
_STOP: Any = ("stop",)
_ABORT = "abort"  # an inbox item (_ABORT, ids): drop these windows, their caller no longer wants them
STATS_INTERVAL_S = 10.0


@dataclass
class DriverStats:
    """Counts since the last report; `running_sum / steps` is the mean number of windows per step, counting
    every window handed to vLLM and not yet finished (vLLM may hold some back while its batch is full)."""

    added: int = 0
    finished: int = 0
    aborted: int = 0  # windows whose caller went away while vLLM decoded them
    steps: int = 0
    running_sum: int = 0
    step_s: float = 0.0
    add_s: float = 0.0  # handing windows to vLLM: with step_s, where the driver's second went

    def line(self, seconds: float) -> str:
        per_step = self.running_sum / self.steps if self.steps else 0.0
        step_ms = 1000 * self.step_s / self.steps if self.steps else 0.0
        return (
            f"vLLM engine: {per_step:.0f} windows per step on average, {self.added / seconds:.1f} added, "
            f"{self.finished / seconds:.1f} finished and {self.aborted / seconds:.1f} aborted per second, "
            f"{self.steps / seconds:.0f} steps per second "
            f"({step_ms:.1f} ms in each), {1000 * self.add_s / seconds:.0f} ms a second adding windows"
        )


class EngineDriver:
    def __init__(self, engine: Any, stats_interval_s: float = STATS_INTERVAL_S) -> None:
        self._engine = engine
        # Input preparation runs in the callers' threads, at most one per core at once (the cores this
        # process may use: an engine process of --gpus N has its own share).
        self._preparing = threading.BoundedSemaphore(len(os.sched_getaffinity(0)) or 1)
        self._tasks = engine.get_supported_tasks()
        self._inbox: queue.SimpleQueue[Any] = queue.SimpleQueue()  # (request, future) or _STOP
        self._stats_interval_s = stats_interval_s
        self.stats = DriverStats()
        self.thread = threading.Thread(target=self._drive, name="vllm-engine", daemon=True)
        self.thread.start()

    def submit(
        self,
        windows: list[Any],
        params: Sequence[Any],
        prepare: Callable[[Any], Any],
        cancellation: Cancellation | None = None,
    ) -> list[Any]:
        """vLLM's final output for each window, whose prompt (or processed input) `prepare(window)` makes in
        this thread; a bad input fails its own window only. Takes the windows: each entry of `windows` is set to
        None once its request is made, so a window's inputs live on in that request only, which vLLM lets go
        once it has sent it to its engine core. Once `cancellation` is set, the windows still in vLLM are
        aborted there and the call raises CancelledRequestError."""
        futures: list[Future[Any]] = []
        ids: list[str] = []
        for i, p in zip(range(len(windows)), params, strict=True):
            ids.append(uuid.uuid4().hex)
            futures.append(self._queue(ids[-1], windows[i], p, prepare))
            windows[i] = None
        # After the windows: the inbox is read in order, so an abort never overtakes what it aborts.
        with on_cancel(cancellation, lambda: self._inbox.put((_ABORT, ids))):
            return [f.result() for f in futures]

    def _queue(self, request_id: str, window: Any, params: Any, prepare: Callable[[Any], Any]) -> Future[Any]:
        """The future of one window's output, its request queued for the driver thread (or the future failed)."""
        future: Future[Any] = Future()
        try:
            with self._preparing:
                request = self._engine.input_processor.process_inputs(request_id, prepare(window), params, self._tasks)
        except Exception as exc:
            future.set_exception(exc)
        else:
            self._inbox.put((request, future))
        return future

    def close(self) -> None:
        self._inbox.put(_STOP)
        self.thread.join(timeout=30)

    def _drive(self) -> None:
        running: dict[str, Future[Any]] = {}
        reported = time.monotonic()
        while True:
            item = self._inbox.get() if not running else self._next_nowait()
            adding = time.monotonic()
            while item is not None:
                if item is _STOP:
                    for future in running.values():
                        future.set_exception(EngineUnavailableError("the vLLM engine was closed"))
                    return
                if item[0] is _ABORT:
                    self._abort(item[1], running)
                    item = self._next_nowait()
                    continue
                request, future = item
                try:
                    self._engine.add_request(request.request_id, request, request.params)
                    running[request.external_req_id] = future  # outputs carry the id we chose
                    self.stats.added += 1
                except Exception as exc:  # a bad input fails its own request only
                    future.set_exception(exc)
                item = self._next_nowait()
            started = time.monotonic()
            self.stats.add_s += started - adding
            if not running:
                continue
            try:
                outputs = self._engine.step()
            except Exception as exc:
                for future in running.values():
                    future.set_exception(exc)
                running.clear()
                continue
            self.stats.steps += 1
            self.stats.running_sum += len(running)
            self.stats.step_s += time.monotonic() - started
            for output in outputs:
                if output.finished and output.request_id in running:
                    running.pop(output.request_id).set_result(output)
                    self.stats.finished += 1
            if (elapsed := time.monotonic() - reported) >= self._stats_interval_s:
                log.info(self.stats.line(elapsed))
                self.stats, reported = DriverStats(), time.monotonic()

    def _abort(self, ids: Sequence[str], running: dict[str, Future[Any]]) -> None:
        ids = [i for i in ids if i in running]  # those finished meanwhile have their result already
        if not ids:
            return
        self._engine.abort_request(ids)
        for request_id in ids:
            running.pop(request_id).set_exception(CancelledRequestError("request cancelled"))
        self.stats.aborted += len(ids)

    def _next_nowait(self) -> Any:
        try:
            return self._inbox.get_nowait()
        except queue.Empty:
            return None
