"""One engine thread fed with windows from every request in flight.

Requests submit jobs; the engine thread forms batches of up to `max_batch_size` windows that share
sampling options, taking one job per request in turn (round-robin), so a 5 s clip is not stuck
behind the windows of a 1-hour upload. Results go back through futures.

An engine that batches concurrent calls itself (vLLM: continuous batching) is called straight from
the request threads instead: a batch formed here would only wait for its slowest window, and each
thread prepares its own windows' inputs in parallel.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import OrderedDict, deque
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any

from whisper_endpoint.engines.base import (
    AlignInput,
    Alignment,
    Cancellation,
    DescribedEngine,
    Engine,
    EngineDescription,
    Generation,
    SamplingOptions,
    WindowInput,
)
from whisper_endpoint.errors import CancelledRequestError
from whisper_endpoint.serving.metrics import Metrics
from whisper_endpoint.serving.packing import generate_packed

log = logging.getLogger(__name__)


@dataclass
class _Job:
    request_key: str  # the server's id of the request (never the client's)
    kind: str  # "generate", "detect" or "align"
    items: Sequence[Any]
    options: SamplingOptions | None
    future: Future[list[Any]] = field(default_factory=Future)
    queued_at: float = field(default_factory=time.monotonic)


class Scheduler:
    def __init__(
        self, engine: Engine, metrics: Metrics, max_batch_size: int, batch_wait_s: float, pack: bool = False
    ) -> None:
        self.engine = engine
        self._call = run_on(engine)  # unpacked calls: the engine's own methods
        self.pack = pack
        self.metrics = metrics
        self.max_batch_size = max_batch_size
        self.batch_wait_s = batch_wait_s
        self._queues: OrderedDict[str, deque[_Job]] = OrderedDict()  # request key -> its jobs, in turn order
        self._cond = threading.Condition()
        self._stopping = False
        self._thread = threading.Thread(target=self._loop, name="engine", daemon=True)
        self._thread.start()

    def submit(
        self, request_key: str, kind: str, items: Sequence[Any], options: SamplingOptions | None = None
    ) -> Future[list[Any]]:
        job = _Job(request_key, kind, items, options)
        with self._cond:
            self._queues.setdefault(request_key, deque()).append(job)
            self.metrics.queued_windows.inc(len(items))
            self._cond.notify()
        return job.future

    def cancel(self, request_key: str) -> int:
        """Drop a request's pending jobs; returns how many windows were dropped."""
        with self._cond:
            jobs = self._queues.pop(request_key, deque())
        dropped = 0
        for job in jobs:
            dropped += len(job.items)
            job.future.set_exception(CancelledRequestError("request cancelled"))
        if dropped:
            self.metrics.queued_windows.dec(dropped)
            self.metrics.cancelled_windows.inc(dropped)
        return dropped

    @property
    def pending_windows(self) -> int:
        with self._cond:
            return sum(len(j.items) for q in self._queues.values() for j in q)

    def stop(self) -> None:
        with self._cond:
            self._stopping = True
            self._cond.notify()
        self._thread.join(timeout=10)

    def _take_batch(self) -> list[_Job]:
        """Round-robin over requests: the first waiting job decides the kind and options."""
        with self._cond:
            while not self._queues and not self._stopping:
                self._cond.wait()
            if self._stopping:
                return []
            first_request = next(iter(self._queues))
            head = self._queues[first_request][0]
            if head.kind == "generate" and self.batch_wait_s > 0:
                # A short, bounded wait lets other requests' windows join a small batch.
                deadline = time.monotonic() + self.batch_wait_s
                while self._count(head) < self.max_batch_size and (left := deadline - time.monotonic()) > 0:
                    self._cond.wait(left)
                    if first_request not in self._queues:
                        return []
            batch: list[_Job] = []
            size = 0
            progressed = True
            while progressed and size < self.max_batch_size:
                progressed = False
                for request_key in list(self._queues):
                    queue = self._queues[request_key]
                    job = queue[0]
                    if job.kind != head.kind or job.options != head.options or (head.kind != "generate" and batch):
                        continue
                    if batch and size + len(job.items) > self.max_batch_size:
                        continue
                    batch.append(queue.popleft())
                    size += len(job.items)
                    progressed = True
                    # This request goes to the back of the turn order.
                    del self._queues[request_key]
                    if queue:
                        self._queues[request_key] = queue
                    if size >= self.max_batch_size or head.kind != "generate":
                        break
            self.metrics.queued_windows.dec(size)
            return batch

    def _count(self, head: _Job) -> int:
        return sum(
            len(q[0].items) for q in self._queues.values() if q[0].kind == head.kind and q[0].options == head.options
        )

    def _loop(self) -> None:
        while not self._stopping:
            batch = self._take_batch()
            if not batch:
                continue
            head = batch[0]
            items = [item for job in batch for item in job.items]
            now = time.monotonic()
            for job in batch:
                self.metrics.queue_wait.observe(now - job.queued_at)
            groups = [job.request_key for job in batch for _ in job.items]
            try:
                results = self._run(head.kind, items, head.options, groups if self.pack else None)
            except Exception as exc:  # the engine failed: every request in the batch learns why
                log.exception("engine call failed")
                for job in batch:
                    job.future.set_exception(exc)
                continue
            self.metrics.batch_size.observe(len(items))
            offset = 0
            for job in batch:
                job.future.set_result(results[offset : offset + len(job.items)])
                offset += len(job.items)

    def run_now(
        self, kind: str, items: Sequence[Any], options: SamplingOptions | None, cancellation: Cancellation | None
    ) -> list[Any]:
        """One call straight to an engine that batches concurrent calls itself (no packing: that needs
        a batch formed here); the engine may drop its windows once `cancellation` is set. The list goes as it
        came: handed-over windows stay handed over (HandedOverWindows)."""
        self.metrics.batch_size.observe(len(items))
        return self._call(kind, items, options, cancellation)

    def _run(
        self, kind: str, items: list[Any], options: SamplingOptions | None, groups: Sequence[str] | None
    ) -> list[Any]:
        """`groups`: each item's request, when short windows of one request may be packed together."""
        if kind == "generate" and groups is not None:
            assert options is not None
            results, packed, again = generate_packed(self.engine, items, options, groups)
            self.metrics.packed_windows.inc(packed)
            self.metrics.pack_redecoded_windows.inc(again)
            return results
        return self._call(kind, items, options, None)


# (kind, items, options, cancellation) -> results
Run = Callable[[str, Sequence[Any], SamplingOptions | None, Cancellation | None], list[Any]]


class RequestEngine(DescribedEngine):
    """The Engine interface for one request, over `run(kind, items, options, cancellation)`: nothing more is
    run once the request's `cancellation` is set (an engine that can also drops the windows it is decoding),
    and a thread that waits here gives its front-end slot (decode, VAD, log-mel) to another meanwhile."""

    def __init__(
        self,
        description: EngineDescription,
        run: Run,
        cancellation: Cancellation,
        front_end_slot: threading.Semaphore | None = None,
    ) -> None:
        super().__init__(description)
        self._run = run
        self._cancellation = cancellation
        self._slot = front_end_slot

    def _call(self, kind: str, items: Sequence[Any], options: SamplingOptions | None = None) -> list[Any]:
        if self._cancellation.is_set():
            raise CancelledRequestError("request cancelled")
        if self._slot is None:
            return self._run(kind, items, options, self._cancellation)
        self._slot.release()
        try:
            return self._run(kind, items, options, self._cancellation)
        finally:
            self._slot.acquire()

    def generate(
        self, windows: Sequence[WindowInput], options: SamplingOptions, cancellation: Cancellation | None = None
    ) -> list[Generation]:
        # the request's own cancellation, given at construction, is the one that counts here
        return self._call("generate", windows, options)

    def detect_language(self, windows: Sequence[WindowInput]) -> list[dict[str, float]]:
        return self._call("detect", windows)

    def align(self, items: Sequence[AlignInput]) -> list[Alignment]:
        return self._call("align", items) if items else []

    def close(self) -> None:
        pass


def run_on(engine: Engine) -> Run:
    """Calls of an engine's own methods."""

    def run(
        kind: str, items: Sequence[Any], options: SamplingOptions | None, cancellation: Cancellation | None
    ) -> list[Any]:
        if kind == "generate":
            assert options is not None
            return list(engine.generate(items, options, cancellation))
        return list(engine.detect_language(items) if kind == "detect" else engine.align(items))

    return run


class ScheduledEngine(RequestEngine):
    """One request's view of the shared scheduler (its key names its queue), or of the engine straight
    from this thread when the engine batches concurrent calls itself."""

    def __init__(
        self,
        scheduler: Scheduler,
        request_key: str,
        cancellation: Cancellation,
        front_end_slot: threading.Semaphore | None = None,
    ) -> None:
        description = EngineDescription.of(scheduler.engine)
        super().__init__(description, self._scheduled, cancellation, front_end_slot)
        self._scheduler = scheduler
        self._request_key = request_key

    def _scheduled(
        self, kind: str, items: Sequence[Any], options: SamplingOptions | None, cancellation: Cancellation | None
    ) -> list[Any]:
        if self.capabilities.continuous_batching:
            return self._scheduler.run_now(kind, items, options, cancellation)
        return self._scheduler.submit(self._request_key, kind, items, options).result()

    def close(self) -> None:
        self._scheduler.cancel(self._request_key)
