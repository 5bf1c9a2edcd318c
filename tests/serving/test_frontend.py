"""Front-end worker processes: the same chunks and the same transcripts as in-thread decoding, errors
that cross the process boundary intact, workers that die replaced, and the started ones stopped when one
cannot start."""

from __future__ import annotations

import os
import pickle
import signal

import numpy as np
import pytest
from openai import BadRequestError, OpenAI

from tests.conftest import JFK, start_server
from tests.datasets import DATA, clips, wer
from whisper_endpoint.audio.chunking import iter_speech_chunks
from whisper_endpoint.audio.decode import AudioSource, iter_audio, load_audio
from whisper_endpoint.config import Settings
from whisper_endpoint.engines.ctranslate2 import CTranslate2Engine
from whisper_endpoint.errors import AudioDecodeError, EngineFailedError, ShuttingDownError
from whisper_endpoint.serving import frontend
from whisper_endpoint.serving.frontend import FrontEndProcesses, decode_and_chunk

LONG = DATA / "C_longform" / "earnings22_1_4482311_3_62.flac"


def test_worker_chunks_equal_streamed_chunks() -> None:
    chunks, samples = decode_and_chunk(AudioSource(LONG))
    streamed = list(iter_speech_chunks(iter_audio(AudioSource(LONG))))
    assert samples == sum(len(b) for b in iter_audio(AudioSource(LONG)))
    assert [c.start for c in chunks] == [c.start for c in streamed] and len(chunks) >= 2
    for ours, theirs in zip(chunks, streamed, strict=True):
        assert np.array_equal(ours.samples, theirs.samples)
        assert ours.speech_probs is not None and np.array_equal(ours.speech_probs, theirs.speech_probs)


def test_errors_keep_their_param_and_code_across_processes() -> None:
    error = pickle.loads(pickle.dumps(AudioDecodeError("not audio", param="file", code="custom")))
    assert type(error) is AudioDecodeError and error.param == "file" and error.code == "custom"
    assert error.message == "not audio" and error.status == 400


@pytest.mark.slow
def test_server_with_front_end_processes_gives_the_same_text(engine: CTranslate2Engine, tmp_path) -> None:  # type: ignore[no-untyped-def]
    files = [JFK, LONG, clips("B_librispeech/test-clean")[0].path]
    texts = {}
    for processes in (0, 2):
        running, thread = start_server(Settings(model="base", front_end_processes=processes), engine)
        try:
            client = OpenAI(base_url=running.v1, api_key="unused", max_retries=0)
            service = running.server.config.app.state.service  # type: ignore[attr-defined]
            assert (service.front_end is not None) == (processes > 0)
            if service.front_end:  # started with the server, loaded and waiting before the first upload
                assert len(service.front_end._idle) == processes
                assert all(w.process.is_alive() for w in service.front_end._idle)
            for path in files:
                with path.open("rb") as f:
                    result = client.audio.transcriptions.create(
                        model="whisper-1", file=f, language="en", response_format="verbose_json"
                    )
                texts[(processes, path.name)] = (result.text, result.duration)
            # A FLAC header that says 11 s, then noise: the probe passes, the decode (in a worker) fails.
            bad = tmp_path / "bad.flac"
            noise = np.random.default_rng(0).integers(0, 256, 300_000, dtype=np.uint8).tobytes()
            bad.write_bytes(JFK.read_bytes()[:8000] + noise)
            with pytest.raises(BadRequestError) as caught, bad.open("rb") as f:
                client.audio.transcriptions.create(model="whisper-1", file=f)
            assert caught.value.body["code"] == "invalid_audio"  # type: ignore[index]
        finally:
            running.server.should_exit = True
            thread.join(timeout=30)
    for path in files:
        (text, duration), (text_in_workers, duration_in_workers) = texts[(0, path.name)], texts[(2, path.name)]
        assert duration_in_workers == duration, path.name
        # Not to the letter: a window that falls back to a temperature above 0 is sampled at random (the long
        # clip's last window does, seen giving "And" once and "and uh..." once)
        assert wer([text], [text_in_workers]) <= 0.05, (path.name, text, text_in_workers)


def test_a_worker_that_cannot_start_is_a_503_not_a_bad_upload(monkeypatch: pytest.MonkeyPatch) -> None:
    def dies_while_starting() -> None:
        raise EOFError("the other end closed the connection")

    monkeypatch.setattr(frontend, "_Worker", dies_while_starting)
    pool = FrontEndProcesses(1)
    with pytest.raises(EngineFailedError, match="could not start") as caught:
        pool.chunk(AudioSource(JFK))
    assert caught.value.status == 503
    with pytest.raises(EngineFailedError):
        pool.start()


def test_when_one_worker_cannot_start_the_others_are_stopped(monkeypatch: pytest.MonkeyPatch) -> None:
    started: list[frontend._Worker] = []
    calls = iter(range(3))
    real_worker = frontend._Worker

    def second_dies_while_starting() -> frontend._Worker:
        if next(calls) == 1:
            raise EOFError("the other end closed the connection")
        started.append(real_worker())
        return started[-1]

    monkeypatch.setattr(frontend, "_Worker", second_dies_while_starting)
    pool = FrontEndProcesses(3)
    with pytest.raises(EngineFailedError, match="could not start"):
        pool.start()
    assert len(started) == 2
    assert not any(worker.process.is_alive() for worker in started)
    assert not pool._idle


class _ExitsOnArrival:
    """Unpickling it ends the process that receives it: a stand-in for an upload that crashes the decoder."""

    def __reduce__(self) -> tuple[object, tuple[int]]:
        return os._exit, (3,)


def test_a_dead_worker_is_replaced_and_an_upload_that_kills_twice_is_a_400() -> None:
    pool = FrontEndProcesses(1)
    try:
        chunks, samples = pool.chunk(AudioSource(JFK))
        assert samples == len(load_audio(AudioSource(JFK))) and chunks
        (first,) = pool._idle
        os.kill(first.process.pid or 0, signal.SIGKILL)
        first.process.join(timeout=10)
        again, _ = pool.chunk(AudioSource(JFK))  # the dead worker is found, replaced, the upload retried
        assert [c.start for c in again] == [c.start for c in chunks]
        (second,) = pool._idle
        assert second is not first and second.process.is_alive()
        with pytest.raises(AudioDecodeError, match="crashed"):
            pool.chunk(_ExitsOnArrival())  # type: ignore[arg-type]
        assert pool.chunk(AudioSource(JFK))[1] == samples  # and the pool still works
    finally:
        pool.close()
    assert not pool._idle and not second.process.is_alive()
    with pytest.raises(ShuttingDownError):
        pool.chunk(AudioSource(JFK))
