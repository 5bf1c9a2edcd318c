"""Runs transcriptions for the HTTP layer: admission in audio-seconds, a worker thread per request,
segments streamed back to the event loop, cancellation and deadlines.

A job's admission is released exactly once, by plain (never awaited) code: when its worker thread ends,
or at once if its work never started. Cleanup that awaits can be cancelled again by a client that goes
away, and a slot released there leaked for good.
"""

from __future__ import annotations

import asyncio
import logging
import os
import threading
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from whisper_endpoint.audio import SAMPLE_RATE
from whisper_endpoint.audio.decode import AudioSource, iter_audio, probe_duration_s
from whisper_endpoint.config import Settings
from whisper_endpoint.decoding.options import DecodeOptions
from whisper_endpoint.decoding.transcribe import RunInfo, iter_segments, samples_chunks
from whisper_endpoint.diarization.encoder import VoiceEncoder
from whisper_endpoint.diarization.pipeline import Diarization, Diarizer, KnownSpeaker
from whisper_endpoint.engines.base import Cancellation, Engine
from whisper_endpoint.engines.pool import EnginePool
from whisper_endpoint.engines.process import MAX_CONCURRENT_CALLS, EngineListener
from whisper_endpoint.errors import (
    AudioTooLongError,
    CancelledRequestError,
    OverloadedError,
    RequestTimeoutError,
    ShuttingDownError,
    WhisperEndpointError,
)
from whisper_endpoint.formats.transcript import Segment
from whisper_endpoint.serving.frontend import FrontEndProcesses
from whisper_endpoint.serving.metrics import Metrics
from whisper_endpoint.serving.scheduler import ScheduledEngine, Scheduler

log = logging.getLogger(__name__)

_DONE = object()
MIN_RETRY_AFTER_S = 1
MAX_RETRY_AFTER_S = 600


@dataclass(eq=False)
class Job:
    source: AudioSource
    options: DecodeOptions
    request_id: str = field(default_factory=lambda: uuid.uuid4().hex)  # the client's, for logs only
    spool: Path | None = None  # the upload's temp file, deleted when the job is released
    # The server's own id: it keys the scheduler's queues, so no client can name (and cancel) another's work.
    key: str = field(default_factory=lambda: uuid.uuid4().hex)
    info: RunInfo = field(default_factory=RunInfo)
    # Charged against the queue limit: the header's duration, or what has been decoded. Integer milliseconds:
    # float seconds added and taken back in another order left the queue at 1e-14 s, never 0.
    audio_ms: int = 0
    cancelled: Cancellation = field(default_factory=Cancellation)
    started: float = field(default_factory=time.monotonic)
    abort: WhisperEndpointError | None = None  # why the server stopped it, when it did (shutdown)
    worker: Future[None] | None = None
    released: bool = False
    wake: Callable[[object], None] | None = None  # puts an item in front of the request's segment queue
    # Speakers asked for: the known ones (maybe none); the result is set before the last segment is handed on.
    known_speakers: tuple[KnownSpeaker, ...] | None = None
    diarization: Diarization | None = None


class TranscriptionService:
    def __init__(self, settings: Settings, engine: Engine, metrics: Metrics) -> None:
        self.settings = settings
        self.engine = engine
        self.metrics = metrics
        self.scheduler = Scheduler(
            engine, metrics, engine.max_batch_size, settings.batch_wait_ms / 1000, settings.pack_windows
        )
        # One thread per admitted request, but only `worker_threads` (default: the cores) of them may do
        # front-end work (decode, VAD, log-mel) at once; the others wait for a slot or for the engine.
        self.pool = ThreadPoolExecutor(max_workers=settings.max_inflight_requests, thread_name_prefix="request")
        self.front_end_slots = threading.BoundedSemaphore(settings.worker_threads or os.cpu_count() or 1)
        processes = settings.front_end_processes
        if processes < 0:
            processes = (os.cpu_count() or 1) if engine.capabilities.continuous_batching else 0
        self._listener: EngineListener | None = None
        self._listener_calls: ThreadPoolExecutor | None = None
        self.front_end = FrontEndProcesses(processes, self._engine_addresses(), engine) if processes else None
        self._lock = threading.Lock()
        self._jobs: set[Job] = set()  # admitted and not yet released
        self.draining = False  # set on SIGTERM: admit nothing more
        self.inflight = 0
        self.queued_audio_ms = 0
        self._queue_limit_ms = round(settings.max_queued_audio_s * 1000)
        self.throughput = 0.0  # audio seconds per wall second, moving average
        self._diarizer: Diarizer | None = None
        self._diarizer_lock = threading.Lock()

    def _engine_addresses(self) -> list[str]:
        """Where front-end processes reach the engine: each engine process's socket, or else a socket of this
        process that answers through the scheduler (an engine in this process), each call a request of its own."""
        engines = self.engine.engines if isinstance(self.engine, EnginePool) else [self.engine]
        addresses = [getattr(engine, "address", None) for engine in engines]
        if all(addresses):
            return [str(address) for address in addresses]

        def call(method: str, args: tuple[Any, ...], cancellation: Cancellation) -> Any:
            engine = ScheduledEngine(self.scheduler, uuid.uuid4().hex, cancellation)
            return getattr(engine, method)(*args)

        self._listener_calls = ThreadPoolExecutor(MAX_CONCURRENT_CALLS, thread_name_prefix="engine-call")
        self._listener = EngineListener(call, self._listener_calls)
        return [self._listener.address]

    def close(self) -> None:
        self.abort_all(ShuttingDownError("the server is shutting down"))
        if self.front_end:
            self.front_end.close()
        if self._listener and self._listener_calls:
            self._listener.close()
            self._listener_calls.shutdown(wait=False, cancel_futures=True)
        self.scheduler.stop()
        self.pool.shutdown(wait=False, cancel_futures=True)

    def retry_after_s(self) -> int:
        rate = self.throughput or 1.0
        return int(min(MAX_RETRY_AFTER_S, max(MIN_RETRY_AFTER_S, self.queued_audio_ms / 1000 / rate)))

    def admit(self, job: Job) -> None:
        """Refuse (429) when the queue of audio or of requests is full; otherwise count the job in. Audio
        whose header states no duration is charged as it decodes (`_charge`)."""
        if self.draining:
            raise ShuttingDownError("the server is shutting down")
        duration = probe_duration_s(job.source)
        if duration is not None and duration > self.settings.max_audio_duration_s:
            raise AudioTooLongError(
                f"audio is {duration:.0f} s long; the limit is {self.settings.max_audio_duration_s:.0f} s",
                param="file",
            )
        job.audio_ms = round((duration or 0.0) * 1000)
        with self._lock:
            self._refuse_when_full()
            if self.inflight and self.queued_audio_ms + job.audio_ms > self._queue_limit_ms:
                raise self._audio_queue_full()
            self.inflight += 1
            self.queued_audio_ms += job.audio_ms
            self._jobs.add(job)
        job.info.on_decoded = lambda: self._charge(job)
        self._publish()

    def admit_live(self) -> Job:
        """Count a live session in as one request in flight (429 when full); `end` releases it."""
        job = Job(AudioSource(Path("live")), DecodeOptions())
        with self._lock:
            if self.draining:
                raise ShuttingDownError("the server is shutting down")
            self._refuse_when_full()
            self.inflight += 1
            self._jobs.add(job)
        self._publish()
        return job

    def decode_samples(self, job: Job, samples: np.ndarray, options: DecodeOptions) -> list[Segment]:
        """A live session's audio (16 kHz samples) through the shared scheduler, batched with every other
        request's windows; blocking, so run in a thread. Stops when the session ends."""
        engine = ScheduledEngine(self.scheduler, job.key, job.cancelled, self.front_end_slots)
        with self.front_end_slots:  # VAD and log-mel are front-end work; the engine wait lets the slot go
            return list(iter_segments(job.source, engine, options, RunInfo(), None, samples_chunks(samples)))

    def _refuse_when_full(self) -> None:
        """429 when `max_inflight_requests` are admitted already (the caller holds the lock)."""
        if self.inflight >= self.settings.max_inflight_requests:
            self.metrics.rejected.labels("requests").inc()
            raise OverloadedError("too many requests in flight; retry later", retry_after_s=self.retry_after_s())

    def _charge(self, job: Job) -> None:
        """Called by the worker as audio decodes: stop a request whose client left or that the server
        aborted, and charge audio beyond what its header announced against the queue limit."""
        if job.cancelled.is_set():
            raise job.abort or CancelledRequestError("request cancelled")
        decoded_ms = job.info.samples * 1000 // SAMPLE_RATE
        if decoded_ms <= job.audio_ms:
            return
        with self._lock:
            over = self.queued_audio_ms + decoded_ms - job.audio_ms > self._queue_limit_ms
            if over and self.inflight > 1:
                raise self._audio_queue_full()
            self.queued_audio_ms += decoded_ms - job.audio_ms
            job.audio_ms = decoded_ms
        self._publish()

    def _audio_queue_full(self) -> OverloadedError:
        self.metrics.rejected.labels("audio").inc()
        return OverloadedError(
            f"{self.queued_audio_ms / 1000:.0f} s of audio are queued; retry later", retry_after_s=self.retry_after_s()
        )

    async def segments(self, job: Job) -> AsyncIterator[Segment]:
        """Segments in audio order as they finish. Closing the iterator early cancels the work."""
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[object] = asyncio.Queue()
        slots = self.front_end_slots
        source = AudioSource(job.source.path, job.source.raw_pcm, self.settings.max_audio_duration_s)

        def put(item: object) -> None:
            loop.call_soon_threadsafe(queue.put_nowait, item)

        def work() -> None:
            try:
                for segment in self._transcribe(job, source):
                    put(segment)
                    if job.cancelled.is_set():
                        break
                if job.known_speakers is not None and not job.cancelled.is_set():
                    with slots:
                        job.diarization = self._diarize(source, job)
                put(_DONE)
            except BaseException as exc:
                put(exc)

        job.wake = put
        if job.cancelled.is_set() or job.released:
            raise job.abort or CancelledRequestError("request cancelled")
        job.worker = self.pool.submit(work)
        finished = False
        try:
            async with asyncio.timeout(self.settings.request_timeout_s):
                while True:
                    item = await queue.get()
                    if item is _DONE:
                        finished = True
                        break
                    if isinstance(item, BaseException):
                        finished = True
                        raise job.abort or item
                    assert isinstance(item, Segment)
                    yield item
        except TimeoutError as exc:
            raise RequestTimeoutError(
                f"transcription took longer than {self.settings.request_timeout_s:.0f} s", code="timeout"
            ) from exc
        finally:
            # Nothing awaited here: a client that goes away cancels this generator again at every await.
            if not finished:
                self.metrics.cancelled_requests.inc()
            self._stop(job, completed=finished)

    def end(self, job: Job) -> None:
        """The HTTP side is done with the job (answered, failed, or the client left): stop its work, and
        release it now if it never started (otherwise its worker releases it as it ends). Idempotent."""
        self._stop(job, completed=False)

    def _stop(self, job: Job, completed: bool) -> None:
        if not completed:
            self._cancel(job)
        if job.worker is None:
            self._release(job, completed)
        else:
            job.worker.add_done_callback(lambda _: self._release(job, completed))

    def abort_all(self, error: WhisperEndpointError) -> int:
        """Stop every admitted job with `error` (the grace period after SIGTERM is over); how many."""
        with self._lock:
            jobs = list(self._jobs)
        for job in jobs:
            job.abort = error
            self._cancel(job)
            if job.wake is not None:
                job.wake(error)
        return len(jobs)

    def _cancel(self, job: Job) -> None:
        job.cancelled.set()
        self.scheduler.cancel(job.key)
        if self.front_end:
            self.front_end.cancel(job.key)

    def _release(self, job: Job, completed: bool) -> None:
        with self._lock:
            if job.released:
                return
            job.released = True
            self._jobs.discard(job)
            self.inflight -= 1
            self.queued_audio_ms -= job.audio_ms
            elapsed = time.monotonic() - job.started
            audio_s = job.info.duration_ms / 1000
            if completed and elapsed > 0 and audio_s > 0:
                rate = audio_s / elapsed * max(1, self.inflight + 1)
                self.throughput = rate if not self.throughput else 0.8 * self.throughput + 0.2 * rate
        if job.spool is not None:
            job.spool.unlink(missing_ok=True)
        self._publish()
        if completed:
            self.metrics.audio_seconds.inc(audio_s)
            self.metrics.processing.observe(elapsed)
            self.metrics.realtime_factor.set(self.throughput)
            self.metrics.windows.inc(job.info.windows)
            self.metrics.fallbacks.inc(job.info.fallbacks)

    def _publish(self) -> None:
        self.metrics.inflight.set(self.inflight)
        self.metrics.queued_audio.set(self.queued_audio_ms / 1000)

    def diarizer(self) -> Diarizer:
        """The voice encoder, loaded on first use; DiarizationUnavailableError when its weights are missing."""
        with self._diarizer_lock:  # not the admission lock: the first load reads 17 MB
            if self._diarizer is None:
                self._diarizer = Diarizer(VoiceEncoder.load())
            return self._diarizer

    def _diarize(self, source: AudioSource, job: Job) -> Diarization:
        def blocks() -> Iterator[np.ndarray]:
            for block in iter_audio(source):
                if job.cancelled.is_set():
                    raise job.abort or CancelledRequestError("request cancelled")
                yield block

        started = time.monotonic()
        result = self.diarizer().diarize(blocks(), job.known_speakers or ())
        self.metrics.diarization_seconds.observe(time.monotonic() - started)
        return result

    def _transcribe(self, job: Job, source: AudioSource) -> Iterator[Segment]:
        """The job's segments: from a front-end process, or decoded in this thread."""
        if self.front_end:
            yield from self.front_end.transcribe(job.key, source, job.options, job.info)
            return
        engine = ScheduledEngine(self.scheduler, job.key, job.cancelled, self.front_end_slots)
        with self.front_end_slots:
            yield from iter_segments(source, engine, job.options, job.info)
