"""Front-end processes: each owns the requests it is given, from upload to segments.

The server hands a worker an upload's path and options; the worker decodes and cuts it, builds each window
and calls the engine itself (the engine process's socket, or the server's in-process engine), and sends
segments back as they finish. A request's audio never enters the server process. With a GPU engine the
server must keep answering clients while the engine is fed: decoding in its threads released and retook the
interpreter lock for every packet, so under load every request thread queued behind every other (measured:
the engine sat idle 41 % of the time), and each window's samples crossed into the server and out again.

A worker runs each request in a thread of its own; one of them at a time does front-end work (decode, VAD,
cutting, segment building), the others wait for the engine. A worker that dies (an upload that crashes the
decoder) takes its requests with it: those that had sent no segment yet run again, one at a time, each in a
worker of its own, so an upload that kills that one too is the cause (a 400) and the others are answered.
"""

from __future__ import annotations

import logging
import queue
import signal
import threading
from collections.abc import Generator, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import fields, replace
from typing import Any

from whisper_endpoint.audio.decode import AudioSource
from whisper_endpoint.decoding.options import DecodeOptions
from whisper_endpoint.decoding.transcribe import RunInfo, iter_segments
from whisper_endpoint.engines.base import Cancellation, Engine, EngineDescription
from whisper_endpoint.errors import AudioDecodeError, CancelledRequestError, EngineFailedError, ShuttingDownError
from whisper_endpoint.formats.transcript import Segment
from whisper_endpoint.ipc import BatchingSender, MessageSocket, picklable, spawn_child
from whisper_endpoint.serving.scheduler import RequestEngine, run_on

log = logging.getLogger(__name__)

STOP_TIMEOUT_S = 5.0
MAX_REQUESTS_PER_WORKER = 1024  # threads, each mostly waiting for the engine
MAX_ITEMS_PER_MESSAGE = 256  # requests, cancellations, segments and progress are small


def _connect(addresses: Sequence[str], description: EngineDescription) -> Engine:
    """The engine as a worker calls it: one engine's socket, or one per GPU with windows spread over them."""
    from whisper_endpoint.engines.pool import EnginePool
    from whisper_endpoint.engines.process import RemoteEngine

    engines = [RemoteEngine.connect(address, description) for address in addresses]
    return engines[0] if len(engines) == 1 else EnginePool(engines)


def _work(conn: MessageSocket, addresses: Sequence[str], description: EngineDescription) -> None:
    """A worker process. Receives lists of ("start", key, source, options) and ("cancel", key), or None: stop.
    Sends lists of (key, kind, payload): ("segment", Segment), ("decoded", samples so far), ("done", RunInfo),
    ("error", exception)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the server drains on Ctrl-C, then stops its workers
    from whisper_endpoint.audio.vad import _session

    try:
        _session()  # load the VAD model before the first upload arrives
        engine = _connect(addresses, description)
    except BaseException as exc:
        conn.send(("failed", picklable(exc)))
        return
    conn.send(("ready", None))
    sender = BatchingSender(conn, "front-end-replies", MAX_ITEMS_PER_MESSAGE)
    calls = run_on(engine)
    cancelled: dict[str, Cancellation] = {}
    front_end = threading.BoundedSemaphore(1)  # one interpreter: one request's front-end work at a time

    def run(key: str, source: AudioSource, options: DecodeOptions) -> None:
        stop = cancelled[key]
        info = RunInfo()

        def decoded() -> None:
            if stop.is_set():
                raise CancelledRequestError("request cancelled")
            sender.put((key, "decoded", info.samples))

        info.on_decoded = decoded
        try:
            with front_end:
                request_engine = RequestEngine(description, calls, stop, front_end)
                for segment in iter_segments(source, request_engine, options, info):
                    sender.put((key, "segment", segment))
            sender.put((key, "done", replace(info, on_decoded=None)))
        except BaseException as exc:
            sender.put((key, "error", picklable(exc)))
        finally:
            del cancelled[key]

    with ThreadPoolExecutor(MAX_REQUESTS_PER_WORKER, thread_name_prefix="request") as requests:
        while True:
            try:
                message = conn.recv()
            except (EOFError, OSError):  # the server is gone
                break
            if message is None:
                break
            for kind, key, *rest in message:
                if kind == "start":
                    cancelled[key] = Cancellation()
                    requests.submit(run, key, *rest)
                elif (stop := cancelled.get(key)) is not None:
                    stop.set()
        for stop in list(cancelled.values()):
            stop.set()
        engine.close()  # calls still waiting for the engine fail now, so their threads end
    sender.close()


_DIED = "died"
_ENDS = ("done", "error", _DIED)  # a worker's last reply for a request


class _Worker:
    """A started worker process, and the requests it runs (their reply queues, by key)."""

    def __init__(self, addresses: Sequence[str], description: EngineDescription) -> None:
        """Returns once the worker has loaded what it needs; EOFError or OSError if it died meanwhile."""
        self.conn, self.process = spawn_child(_work, (addresses, description), "whisper-front-end", daemon=True)
        self.jobs: dict[str, queue.SimpleQueue[tuple[str, Any]]] = {}
        self.lock = threading.Lock()  # guards jobs and alive
        self.alive = True
        try:
            status, payload = self.conn.recv()
            if status == "failed":
                raise EngineFailedError(f"a front-end process could not reach the engine: {payload}")
        except BaseException:
            self.end_process()
            raise
        self.sender = BatchingSender(self.conn, "front-end-requests", MAX_ITEMS_PER_MESSAGE)
        threading.Thread(target=self._receive, name="front-end-replies", daemon=True).start()

    def _receive(self) -> None:
        while True:
            try:
                replies = self.conn.recv()
            except (EOFError, OSError):
                break
            with self.lock:
                for key, kind, payload in replies:
                    if (replies_queue := self.jobs.get(key)) is not None:
                        replies_queue.put((kind, payload))
        with self.lock:
            self.alive = False
            for replies_queue in self.jobs.values():
                replies_queue.put((_DIED, None))

    def begin(self, key: str, source: AudioSource, options: DecodeOptions) -> queue.SimpleQueue[tuple[str, Any]]:
        replies: queue.SimpleQueue[tuple[str, Any]] = queue.SimpleQueue()
        with self.lock:
            if not self.alive:
                replies.put((_DIED, None))
                return replies
            self.jobs[key] = replies
        self.sender.put(("start", key, source, options))
        return replies

    def cancel(self, key: str) -> None:
        """Stop the request before its next engine call; its thread here ends with the worker's answer, so the
        request stays admitted while its engine call in flight runs (a client that leaves frees no room the
        engine has not freed)."""
        with self.lock:
            running = key in self.jobs
        if running:
            self.sender.put(("cancel", key))

    def stop_request(self, key: str, replies: queue.SimpleQueue[tuple[str, Any]]) -> None:
        """Stop an unfinished request and wait until its thread in the worker has ended (after the engine call
        in flight, if any): until then the engine still works for it, so it stays admitted."""
        self.sender.put(("cancel", key))
        while replies.get()[0] not in _ENDS:
            pass

    def end(self, key: str) -> None:
        with self.lock:
            self.jobs.pop(key, None)

    @property
    def load(self) -> int:
        return len(self.jobs)

    def stop(self) -> None:
        self.ask_to_stop()
        self.end_process()

    def ask_to_stop(self) -> None:
        self.sender.close(None)  # what is queued, then the stop

    def end_process(self) -> None:
        self.process.join(timeout=STOP_TIMEOUT_S)
        if self.process.is_alive():
            self.process.kill()
            self.process.join(timeout=STOP_TIMEOUT_S)
        self.conn.shutdown()
        self.conn.close()


class FrontEndProcesses:
    """`workers` processes that run requests against the engine listening at `addresses`, started together
    by `start` (else as requests need them); a worker that dies is replaced by the next request."""

    def __init__(self, workers: int, addresses: Sequence[str], engine: Engine) -> None:
        self.workers = workers
        self._addresses = list(addresses)
        self._description = EngineDescription.of(engine)
        self._lock = threading.Lock()
        self._changed = threading.Condition(self._lock)  # a worker started, or failed to
        self._running: list[_Worker] = []
        self._starting = 0
        self._by_key: dict[str, _Worker] = {}
        self._isolated = threading.Lock()  # requests whose worker died run again one at a time, alone
        self._closed = False

    def _new_worker(self) -> _Worker:
        try:
            return _Worker(self._addresses, self._description)
        except (EOFError, OSError) as exc:  # not an upload's fault: none reached the worker
            raise EngineFailedError("a front-end process could not start; the request can be retried") from exc

    def start(self) -> None:
        """Start every worker now, side by side, rather than when uploads first arrive: a burst of uploads
        right after start-up would otherwise wait for processes to spawn and load the VAD model."""
        with ThreadPoolExecutor(self.workers, thread_name_prefix="front-end-start") as starting:
            futures = [starting.submit(self._new_worker) for _ in range(self.workers)]
        failures = [error for future in futures if (error := future.exception()) is not None]
        started = [future.result() for future in futures if future.exception() is None]
        if failures:  # the server will not start: stop the workers that did rather than leave them to exit
            for worker in started:
                worker.stop()
            raise failures[0]
        with self._lock:
            self._running.extend(started)

    def _take(self) -> _Worker:
        """The least busy live worker, after starting one in place of each that died (or waiting for one
        another request is starting, when none is left)."""
        with self._changed:
            while True:
                if self._closed:
                    raise ShuttingDownError("the server is shutting down")
                self._running = [w for w in self._running if w.alive]
                if len(self._running) + self._starting < self.workers:
                    self._starting += 1
                    break
                if self._running:
                    return min(self._running, key=lambda w: w.load)
                self._changed.wait()
        try:
            worker = self._new_worker()
        finally:
            with self._changed:
                self._starting -= 1
                self._changed.notify_all()
        with self._changed:
            self._running.append(worker)
            self._changed.notify_all()
            return min(self._running, key=lambda w: w.load)

    def transcribe(self, key: str, source: AudioSource, options: DecodeOptions, info: RunInfo) -> Iterator[Segment]:
        """The request's segments as its worker sends them; `info` is kept up to date (its `on_decoded` is
        called as audio decodes, and may stop the request by raising). `key` is the server's id for it."""
        if not (yield from self._run_on(self._take(), key, source, options, info)):
            return
        # Its worker died before any segment: this upload may have killed it, or another request's did. Run
        # alone in a worker of its own, an upload that kills it again is the cause; the others go on.
        with self._isolated:
            worker = self._new_worker()
            try:
                died = yield from self._run_on(worker, key, source, options, info)
            finally:
                worker.stop()
        if died:
            raise AudioDecodeError("the audio could not be decoded: the decoder crashed on it", param="file")

    def _run_on(
        self, worker: _Worker, key: str, source: AudioSource, options: DecodeOptions, info: RunInfo
    ) -> Generator[Segment, None, bool]:
        """The request's segments from `worker`; True when the worker died before sending any."""
        with self._lock:
            self._by_key[key] = worker
        replies = worker.begin(key, source, options)
        sent_segments, finished = False, False
        try:
            while True:
                kind, payload = replies.get()
                if kind == "segment":
                    sent_segments = True
                    yield payload
                elif kind == "decoded":
                    info.samples = payload
                    if info.on_decoded is not None:
                        info.on_decoded()
                elif kind == "done":
                    finished = True
                    _copy_results(payload, info)
                    return False
                elif kind == "error":
                    finished = True
                    raise payload
                else:  # _DIED
                    finished = True
                    break
        finally:
            if not finished:  # cancelled, closed early, or stopped by the server's charge for its audio
                worker.stop_request(key, replies)
            with self._lock:
                self._by_key.pop(key, None)
            worker.end(key)
        log.warning("a front-end process ended while running a request (exit code %s)", worker.process.exitcode)
        if sent_segments:
            raise EngineFailedError("a front-end process ended during this request; it can be retried")
        return True

    def cancel(self, key: str) -> None:
        with self._lock:
            worker = self._by_key.get(key)
        if worker is not None:
            worker.cancel(key)

    def close(self) -> None:
        with self._changed:
            self._closed = True
            running, self._running = self._running, []
            self._changed.notify_all()
        for worker in running:  # all at once: each may take a moment to end its requests' threads
            worker.ask_to_stop()
        for worker in running:
            worker.end_process()


def _copy_results(done: RunInfo, info: RunInfo) -> None:
    """What the worker's run found, into the server's RunInfo (its callback stays the server's)."""
    for result in fields(RunInfo):
        if result.name != "on_decoded":
            setattr(info, result.name, getattr(done, result.name))
