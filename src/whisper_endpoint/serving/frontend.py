"""Decoding and VAD of uploads in worker processes.

With a GPU engine the server process must keep the engine fed; audio decoding there releases and
retakes the GIL for every packet, so under load every request thread queues behind every other
(measured: the engine sat idle 41 % of the time). Worker processes cut whole uploads into speech
chunks and send them back; only uploads up to MAX_POOLED_AUDIO_S go there, since their chunks are
held in memory at once (longer ones stream in the request's thread).
"""

from __future__ import annotations

import multiprocessing
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor

from whisper_endpoint.audio.chunking import AudioChunk
from whisper_endpoint.audio.decode import AudioSource
from whisper_endpoint.decoding.transcribe import RunInfo, local_speech_chunks

MAX_POOLED_AUDIO_S = 1800.0  # up to 115 MB of float32 chunks per request in flight


def decode_and_chunk(source: AudioSource) -> tuple[list[AudioChunk], int]:
    """The upload's speech chunks and its length in samples (runs in a worker process)."""
    info = RunInfo()
    chunks = list(local_speech_chunks(source, info))
    return chunks, info.samples


def _warm_up() -> None:
    from whisper_endpoint.audio.vad import _session

    _session()


class FrontEndProcesses:
    def __init__(self, workers: int) -> None:
        # spawn, not fork: the server process holds threads (and, with vLLM, CUDA state).
        context = multiprocessing.get_context("spawn")
        self._pool = ProcessPoolExecutor(max_workers=workers, mp_context=context, initializer=_warm_up)
        self.workers = workers

    def speech_chunks(self, source: AudioSource, info: RunInfo) -> Iterator[AudioChunk]:
        """A ChunkSource for iter_segments: the whole upload is cut in a worker, then handed over."""
        chunks, samples = self._pool.submit(decode_and_chunk, source).result()
        info.samples += samples
        yield from chunks

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)
