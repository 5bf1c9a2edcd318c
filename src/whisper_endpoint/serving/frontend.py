"""Decoding and VAD of uploads in worker processes.

With a GPU engine the server process must keep the engine fed; audio decoding there releases and
retakes the GIL for every packet, so under load every request thread queues behind every other
(measured: the engine sat idle 41 % of the time). Worker processes cut whole uploads into speech
chunks and send them back; only uploads up to MAX_POOLED_AUDIO_S go there, since their chunks are
held in memory at once (longer ones stream in the request's thread).

Each request thread takes a worker and reads its reply itself, over a socket that hands the chunks
over in one call (whisper_endpoint.ipc): a process pool's single result thread read every upload's
samples one pipe buffer at a time, and was busy 55 % of the time at 50 uploads a second.
"""

from __future__ import annotations

import contextlib
import logging
import signal
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

from whisper_endpoint.audio.chunking import AudioChunk
from whisper_endpoint.audio.decode import AudioSource
from whisper_endpoint.decoding.transcribe import RunInfo, local_speech_chunks
from whisper_endpoint.errors import AudioDecodeError, EngineFailedError, ShuttingDownError
from whisper_endpoint.ipc import MessageSocket, picklable, spawn_child

log = logging.getLogger(__name__)

MAX_POOLED_AUDIO_S = 1800.0  # up to 115 MB of float32 chunks per request in flight
STOP_TIMEOUT_S = 5.0


def decode_and_chunk(source: AudioSource) -> tuple[list[AudioChunk], int]:
    """The upload's speech chunks and its length in samples (runs in a worker process)."""
    info = RunInfo()
    chunks = list(local_speech_chunks(source, info))
    return chunks, info.samples


def _work(conn: MessageSocket) -> None:
    """A worker process: answer each source with ("ok", (chunks, samples)) or ("error", exception)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the server drains on Ctrl-C, then stops its workers
    from whisper_endpoint.audio.vad import _session

    _session()  # load the VAD model before the first upload arrives
    conn.send(("ready", None))
    while True:
        try:
            source = conn.recv()
        except (EOFError, OSError):  # the server is gone
            return
        if source is None:
            return
        try:
            reply: tuple[str, object] = ("ok", decode_and_chunk(source))
        except BaseException as exc:
            reply = ("error", picklable(exc))
        conn.send(reply)


class _Worker:
    def __init__(self) -> None:
        """A started worker, once it has loaded what it needs; EOFError or OSError if it died meanwhile."""
        self.conn, self.process = spawn_child(_work, (), "whisper-front-end", daemon=True)
        try:
            self.conn.recv()  # ("ready", None)
        except BaseException:
            self.stop()
            raise

    def run(self, source: AudioSource) -> tuple[list[AudioChunk], int]:
        """The worker's answer; EOFError or OSError when the process died on the way."""
        self.conn.send(source)
        status, payload = self.conn.recv()
        if status == "error":
            raise payload
        return payload  # type: ignore[no-any-return]

    def stop(self) -> None:
        with contextlib.suppress(OSError):  # already gone
            self.conn.send(None)
        self.process.join(timeout=STOP_TIMEOUT_S)
        if self.process.is_alive():
            self.process.kill()
            self.process.join(timeout=STOP_TIMEOUT_S)
        self.conn.close()


def _new_worker() -> _Worker:
    try:
        return _Worker()
    except (EOFError, OSError) as exc:  # not an upload's fault: none reached the worker
        raise EngineFailedError("a front-end process could not start; the request can be retried") from exc


class FrontEndProcesses:
    """Up to `workers` processes, started together by `start` (else each when first needed); a worker that dies
    is replaced."""

    def __init__(self, workers: int) -> None:
        self.workers = workers
        self._free = threading.Semaphore(workers)
        self._lock = threading.Lock()
        self._idle: list[_Worker] = []
        self._closed = False

    def start(self) -> None:
        """Start every worker now, side by side, rather than when uploads first arrive: a burst of uploads
        right after start-up would otherwise wait for processes to spawn and load the VAD model, one per
        upload, while the engine waits for windows."""
        with ThreadPoolExecutor(self.workers, thread_name_prefix="front-end-start") as starting:
            futures = [starting.submit(_new_worker) for _ in range(self.workers)]
        failures = [error for future in futures if (error := future.exception()) is not None]
        started = [future.result() for future in futures if future.exception() is None]
        if failures:  # the server will not start: stop the workers that did rather than leave them to exit
            for worker in started:
                worker.stop()
            raise failures[0]
        for worker in started:
            self._give_back(worker)

    def _take(self) -> _Worker:
        with self._lock:
            if self._closed:
                raise ShuttingDownError("the server is shutting down")
            if self._idle:
                return self._idle.pop()
        return _new_worker()

    def _give_back(self, worker: _Worker) -> None:
        with self._lock:
            if not self._closed:
                self._idle.append(worker)
                return
        worker.stop()

    def chunk(self, source: AudioSource) -> tuple[list[AudioChunk], int]:
        """The upload's speech chunks and length in samples, cut in a worker. A worker that dies on the
        upload is replaced and the upload tried once more; dying twice, it is called undecodable."""
        with self._free:
            for _ in range(2):
                worker = self._take()
                try:
                    result = worker.run(source)
                except (EOFError, OSError):
                    log.warning("a front-end process died decoding an upload (exit code %s)", worker.process.exitcode)
                    worker.stop()
                    continue
                except BaseException:
                    self._give_back(worker)
                    raise
                self._give_back(worker)
                return result
        raise AudioDecodeError("the audio could not be decoded: the decoder crashed on it", param="file")

    def speech_chunks(self, source: AudioSource, info: RunInfo) -> Iterator[AudioChunk]:
        """A ChunkSource for iter_segments: the whole upload is cut in a worker, then handed over."""
        chunks, samples = self.chunk(source)
        info.samples += samples
        yield from chunks

    def close(self) -> None:
        with self._lock:
            self._closed = True
            idle, self._idle = self._idle, []
        for worker in idle:  # a busy worker is stopped when its upload is done (_give_back)
            worker.stop()
