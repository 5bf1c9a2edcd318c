"""The one thread that owns vLLM's engine: it adds the windows callers prepared and steps the engine.

Windows submitted by any caller join the running batch (continuous batching across requests). Driving
vLLM's `LLMEngine` from one thread measured 3x faster than `AsyncLLM`'s asyncio front-end on 30 s windows
(docs/benchmarks.md). Callers prepare their windows' inputs (the log-mel) in their own threads, so the
driver only adds and steps. Every STATS_INTERVAL_S while busy it logs how full vLLM's batch was: with too
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

from whisper_endpoint.errors import EngineUnavailableError

log = logging.getLogger(__name__)
_STOP: Any = ("stop",)
STATS_INTERVAL_S = 10.0


@dataclass
class DriverStats:
    """Counts since the last report; `running_sum / steps` is the mean number of windows per step, counting
    every window handed to vLLM and not yet finished (vLLM may hold some back while its batch is full)."""

    added: int = 0
    finished: int = 0
    steps: int = 0
    running_sum: int = 0
    step_s: float = 0.0
    add_s: float = 0.0  # handing windows to vLLM: with step_s, where the driver's second went

    def line(self, seconds: float) -> str:
        per_step = self.running_sum / self.steps if self.steps else 0.0
        step_ms = 1000 * self.step_s / self.steps if self.steps else 0.0
        return (
            f"vLLM engine: {per_step:.0f} windows per step on average, {self.added / seconds:.1f} added and "
            f"{self.finished / seconds:.1f} finished per second, {self.steps / seconds:.0f} steps per second "
            f"({step_ms:.1f} ms in each), {1000 * self.add_s / seconds:.0f} ms a second adding windows"
        )


class EncodedAdds:
    """Windows added to vLLM already serialised, each by the thread that prepared it, so the driver only sends.

    vLLM's `LLMEngine.add_request` serialises the request in the driver thread, and each torch call on the
    features there lets go of the interpreter lock, which the driver must then win back from the threads
    preparing windows. Without a GPU (benchmarks/vllm_add.py, 2 cores) that took the adding thread 1.1 ms a
    window with 8 preparing threads and 5.0 ms with 16, against 0.40 and 3.3 ms serialised beforehand. This is
    what `add_request` and vLLM 0.26's `SyncMPClient._send_input` do for one sequence; `of` declines an
    engine whose client is of another shape."""

    CLIENT_ATTRIBUTES = (
        "encoder",
        "input_socket",
        "core_engine",
        "ensure_alive",
        "free_pending_messages",
        "add_pending_message",
    )

    def __init__(self, engine: Any) -> None:
        from vllm.v1.engine import EngineCoreRequestType

        self._engine = engine
        self._core = engine.engine_core
        self._add = EngineCoreRequestType.ADD.value
        self._local = threading.local()  # an encoder per thread: each keeps state while it encodes

    @classmethod
    def of(cls, engine: Any) -> EncodedAdds | None:
        core: Any = getattr(engine, "engine_core", None)
        if (
            not hasattr(engine, "output_processor")
            or any(not hasattr(core, name) for name in cls.CLIENT_ATTRIBUTES)
            or getattr(core, "is_dp", True)
            or getattr(core.encoder, "oob_tensor_consumer", None) is not None  # tensors through shared memory
        ):
            log.warning("vLLM's engine client is not the one we know; the driver serialises each window itself")
            return None
        return cls(engine)

    def encode(self, request: Any) -> Sequence[Any]:
        """In the preparing thread: vLLM's internal id for the request, then its frames."""
        from vllm.v1.serial_utils import MsgpackEncoder

        self._engine.input_processor.assign_request_id(request)
        if (encoder := getattr(self._local, "encoder", None)) is None:
            encoder = self._local.encoder = MsgpackEncoder()
        frames: Sequence[Any] = encoder.encode(request)
        return frames

    def add(self, request: Any, frames: Sequence[Any]) -> None:
        """In the driver thread: the request's state for its outputs, then its frames to the engine core."""
        self._engine.output_processor.add_request(request, None, None, 0)
        core = self._core
        core.ensure_alive()
        core.free_pending_messages()
        message = (core.core_engine, self._add, *frames)
        if len(message) <= 3:  # no tensor buffers to keep alive until sent
            core.input_socket.send_multipart(message, copy=False)
        else:
            core.add_pending_message(core.input_socket.send_multipart(message, copy=False, track=True), request)


class EngineDriver:
    def __init__(self, engine: Any, stats_interval_s: float = STATS_INTERVAL_S, encode_in_callers: bool = False):
        self._engine = engine
        self._encoded = EncodedAdds.of(engine) if encode_in_callers else None
        # Input preparation runs in the callers' threads, at most one per core at once (the cores this
        # process may use: an engine process of --gpus N has its own share).
        self._preparing = threading.BoundedSemaphore(len(os.sched_getaffinity(0)) or 1)
        self._tasks = engine.get_supported_tasks()
        self._inbox: queue.SimpleQueue[Any] = queue.SimpleQueue()  # (request, frames or None, future) or _STOP
        self._stats_interval_s = stats_interval_s
        self.stats = DriverStats()
        self.thread = threading.Thread(target=self._drive, name="vllm-engine", daemon=True)
        self.thread.start()

    def submit(self, windows: Sequence[Any], params: Sequence[Any], prepare: Callable[[Any], Any]) -> list[Any]:
        """vLLM's final output for each window, whose prompt (or processed input) `prepare(window)` makes in
        this thread; a bad input fails its own window only."""
        futures: list[Future[Any]] = []
        for window, p in zip(windows, params, strict=True):
            future: Future[Any] = Future()
            try:
                with self._preparing:
                    prompt = prepare(window)
                    request = self._engine.input_processor.process_inputs(uuid.uuid4().hex, prompt, p, self._tasks)
                    frames = self._encoded.encode(request) if self._encoded and request.params.n == 1 else None
            except Exception as exc:
                future.set_exception(exc)
            else:
                self._inbox.put((request, frames, future))
            futures.append(future)
        return [f.result() for f in futures]

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
                request, frames, future = item
                try:
                    if self._encoded and frames is not None:
                        self._encoded.add(request, frames)
                    else:
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

    def _next_nowait(self) -> Any:
        try:
            return self._inbox.get_nowait()
        except queue.Empty:
            return None
