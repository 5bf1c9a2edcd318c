"""Front-end processes own their requests: the same transcripts as in the server's threads with no audio
decoded in the server, several requests at once in one worker, errors that cross the process boundary intact,
cancellation that stops a worker's engine calls, and workers that die replaced."""

from __future__ import annotations

import os
import pickle
import signal
import threading
import time
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import replace
from typing import Any

import httpx
import numpy as np
import pytest
from openai import BadRequestError, OpenAI

from tests.conftest import JFK, JFK_TEXT, metric_value, start_server
from tests.datasets import DATA, clips, english_normalizer, wer
from tests.serving.abuse import wait_for
from whisper_endpoint.audio.decode import AudioSource, load_audio
from whisper_endpoint.config import Settings
from whisper_endpoint.decoding.options import DecodeOptions
from whisper_endpoint.decoding.transcribe import RunInfo, transcribe
from whisper_endpoint.engines.base import Cancellation, DescribedEngine, Engine, EngineDescription
from whisper_endpoint.engines.ctranslate2 import CTranslate2Engine
from whisper_endpoint.engines.process import EngineListener, engine_handler
from whisper_endpoint.errors import AudioDecodeError, CancelledRequestError, EngineFailedError, ShuttingDownError
from whisper_endpoint.formats.transcript import Segment
from whisper_endpoint.serving import frontend, service
from whisper_endpoint.serving.frontend import FrontEndProcesses

LONG = DATA / "C_longform" / "earnings22_1_4482311_3_62.flac"
ENGLISH = DecodeOptions(language="en")


class _Served:
    """An engine answering front-end processes from this process, as the server's in-process engine does."""

    def __init__(self, engine: Engine, call: Any = None) -> None:
        self.calls = ThreadPoolExecutor(64)
        self.listener = EngineListener(call or engine_handler(engine), self.calls)

    def pool(self, workers: int, engine: Engine) -> FrontEndProcesses:
        return FrontEndProcesses(workers, [self.listener.address], engine)

    def close(self) -> None:
        self.listener.close()
        self.calls.shutdown(wait=False, cancel_futures=True)


@pytest.fixture
def served(tiny_engine: CTranslate2Engine) -> Iterator[_Served]:
    endpoint = _Served(tiny_engine)
    yield endpoint
    endpoint.close()


@contextmanager
def _one_worker(call: Any, engine: Engine, described: Engine | None = None) -> Iterator[FrontEndProcesses]:
    """One worker whose engine calls `call` answers in this process (as `described`, where given)."""
    endpoint = _Served(engine, call)
    pool = FrontEndProcesses(1, [endpoint.listener.address], described or engine)
    try:
        yield pool
    finally:
        pool.close()
        endpoint.close()


def _run(pool: FrontEndProcesses, source: AudioSource, key: str = "k", info: RunInfo | None = None) -> list[Segment]:
    return list(pool.transcribe(key, source, ENGLISH, info or RunInfo()))


def _start_long(pool: FrontEndProcesses) -> tuple[threading.Thread, list[BaseException]]:
    """The long clip (several windows: more than one engine call) as request "long", in a thread; what it
    raised lands in the list."""
    failure: list[BaseException] = []

    def run() -> None:
        try:
            _run(pool, AudioSource(LONG), "long")
        except BaseException as exc:
            failure.append(exc)

    request = threading.Thread(target=run)
    request.start()
    return request, failure


def test_a_worker_transcribes_as_this_process_does(served: _Served, tiny_engine: CTranslate2Engine) -> None:
    pool = served.pool(1, tiny_engine)
    try:
        info = RunInfo()
        there = _run(pool, AudioSource(JFK), info=info)
        here = transcribe(AudioSource(JFK), tiny_engine, ENGLISH)
        assert [(s.start_ms, s.end_ms, s.text) for s in there] == [
            (s.start_ms, s.end_ms, s.text) for s in here.segments
        ]
        assert info.samples == len(load_audio(AudioSource(JFK))) and info.language == "en" and info.windows >= 1
        assert english_normalizer()(" ".join(s.text for s in there)) == english_normalizer()(JFK_TEXT)
    finally:
        pool.close()


@pytest.mark.slow
def test_one_worker_runs_several_requests_at_once(served: _Served, tiny_engine: CTranslate2Engine) -> None:
    pool = served.pool(1, tiny_engine)
    files = [JFK, LONG, clips("B_librispeech/test-clean")[0].path]
    try:
        alone = {path: [s.text for s in _run(pool, AudioSource(path))] for path in files}
        (worker,) = pool._running
        seen_together = threading.Event()

        def run(i: int) -> list[str]:
            segments = []
            for segment in pool.transcribe(f"r{i}", AudioSource(files[i % 3]), ENGLISH, RunInfo()):
                if worker.load > 1:
                    seen_together.set()
                segments.append(segment.text)
            return segments

        with ThreadPoolExecutor(6) as requests:
            together = list(requests.map(run, range(6)))
        assert seen_together.is_set()
        assert pool._running == [worker]  # all six in the one worker
        for i, texts in enumerate(together):
            assert wer([" ".join(alone[files[i % 3]])], [" ".join(texts)]) <= 0.05
    finally:
        pool.close()


@pytest.mark.slow
def test_server_with_front_end_processes_gives_the_same_text(
    engine: CTranslate2Engine, tmp_path, monkeypatch: pytest.MonkeyPatch
) -> None:  # type: ignore[no-untyped-def]
    files = [JFK, LONG, clips("B_librispeech/test-clean")[0].path]
    texts, windows = {}, {}
    for processes in (0, 2):
        running, thread = start_server(Settings(model="base", front_end_processes=processes), engine)
        try:
            client = OpenAI(base_url=running.v1, api_key="unused", max_retries=0)
            svc = running.server.config.app.state.service  # type: ignore[attr-defined]
            assert (svc.front_end is not None) == (processes > 0)
            if svc.front_end:  # started with the server, loaded and waiting before the first upload
                assert len(svc.front_end._running) == processes
                assert all(w.process.is_alive() for w in svc.front_end._running)

                def not_here(*args: object, **kwargs: object) -> None:
                    raise AssertionError("the server process decoded an upload")

                monkeypatch.setattr(service, "iter_segments", not_here)
            for path in files:
                with path.open("rb") as f:
                    result = client.audio.transcriptions.create(
                        model="whisper-1", file=f, language="en", response_format="verbose_json"
                    )
                texts[(processes, path.name)] = (result.text, result.duration)
            windows[processes] = metric_value(httpx.get(f"{running.url}/metrics").text, "whisper_windows_total")
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
            monkeypatch.undo()
    for path in files:
        (text, duration), (text_in_workers, duration_in_workers) = texts[(0, path.name)], texts[(2, path.name)]
        assert duration_in_workers == duration, path.name
        # Not to the letter: a window that falls back to a temperature above 0 is sampled at random (the long
        # clip's last window does, seen giving "And" once and "and uh..." once)
        assert wer([text], [text_in_workers]) <= 0.05, (path.name, text, text_in_workers)
    assert windows[0] >= len(files) and windows[2] == windows[0]  # counted wherever the windows are decoded


def test_an_engine_that_batches_on_its_own_gets_the_log_mel_in_bf16_and_no_samples(
    tiny_engine: CTranslate2Engine,
) -> None:
    arrived: list[tuple[object, bool]] = []

    def call(method: str, args: tuple[Any, ...], cancellation: Cancellation) -> Any:
        arrived.extend((w.features.dtype, w.samples is None) for w in args[0])
        as_float32 = [replace(w, features=(w.features.astype(np.uint32) << 16).view(np.float32)) for w in args[0]]
        return getattr(tiny_engine, method)(as_float32, *args[1:])

    capabilities = replace(tiny_engine.capabilities, continuous_batching=True, log_mel_bf16=True)
    batching = replace(EngineDescription.of(tiny_engine), capabilities=capabilities)
    with _one_worker(call, tiny_engine, DescribedEngine(batching)) as pool:  # type: ignore[arg-type]
        text = " ".join(s.text for s in _run(pool, AudioSource(JFK)))
    assert arrived and all(dtype == np.uint16 and no_samples for dtype, no_samples in arrived)
    assert english_normalizer()(text) == english_normalizer()(JFK_TEXT)


def test_errors_keep_their_param_and_code_across_processes() -> None:
    error = pickle.loads(pickle.dumps(AudioDecodeError("not audio", param="file", code="custom")))
    assert type(error) is AudioDecodeError and error.param == "file" and error.code == "custom"
    assert error.message == "not audio" and error.status == 400


@pytest.mark.slow
def test_a_cancelled_request_ends_after_its_engine_call_and_makes_no_more(tiny_engine: CTranslate2Engine) -> None:
    arrived, go_on = threading.Semaphore(0), threading.Event()
    calls: list[str] = []

    def call(method: str, args: tuple[Any, ...], cancellation: Cancellation) -> Any:
        calls.append(method)
        arrived.release()
        go_on.wait(30)
        return getattr(tiny_engine, method)(*args)

    with _one_worker(call, tiny_engine) as pool:
        try:
            request, failure = _start_long(pool)
            assert arrived.acquire(timeout=30)
            pool.cancel("long")
            request.join(timeout=1.0)
            assert request.is_alive()  # still admitted: the engine is still working for it
            made = len(calls)
            go_on.set()
            request.join(timeout=30)
            assert not request.is_alive() and isinstance(failure[0], CancelledRequestError)
            time.sleep(1.0)
            assert len(calls) == made  # the worker made no call after the one in flight
            assert _run(pool, AudioSource(JFK))  # and serves the next request
        finally:
            go_on.set()


@pytest.mark.slow
def test_an_engine_that_drops_a_cancelled_call_ends_the_request_at_once(tiny_engine: CTranslate2Engine) -> None:
    """As vLLM does: the cancel reaches the engine's call in flight, which ends without its result."""
    arrived, dropped = threading.Event(), threading.Event()

    def call(method: str, args: tuple[Any, ...], cancellation: Cancellation) -> Any:
        if not dropped.is_set():  # the first call: held until it is cancelled
            arrived.set()
            cancelled = threading.Event()
            cancellation.on_set(cancelled.set)
            if cancelled.wait(30):
                dropped.set()
                raise CancelledRequestError("request cancelled")
        return getattr(tiny_engine, method)(*args)

    with _one_worker(call, tiny_engine) as pool:
        request, failure = _start_long(pool)
        assert arrived.wait(timeout=30)
        assert not dropped.is_set()
        pool.cancel("long")
        request.join(timeout=10)  # the engine never finished that call
        assert dropped.is_set() and not request.is_alive()
        assert isinstance(failure[0], CancelledRequestError)
        assert _run(pool, AudioSource(JFK))  # the worker serves the next request


def test_a_worker_that_cannot_start_is_a_503_not_a_bad_upload(
    monkeypatch: pytest.MonkeyPatch, served: _Served, tiny_engine: CTranslate2Engine
) -> None:
    def dies_while_starting(addresses: Sequence[str], description: object) -> None:
        raise EOFError("the other end closed the connection")

    monkeypatch.setattr(frontend, "_Worker", dies_while_starting)
    pool = served.pool(1, tiny_engine)
    with pytest.raises(EngineFailedError, match="could not start") as caught:
        _run(pool, AudioSource(JFK))
    assert caught.value.status == 503
    with pytest.raises(EngineFailedError):
        pool.start()


def test_when_one_worker_cannot_start_the_others_are_stopped(
    monkeypatch: pytest.MonkeyPatch, served: _Served, tiny_engine: CTranslate2Engine
) -> None:
    started: list[frontend._Worker] = []
    calls = iter(range(3))
    real_worker = frontend._Worker

    def second_dies_while_starting(addresses: Sequence[str], description: object) -> frontend._Worker:
        if next(calls) == 1:
            raise EOFError("the other end closed the connection")
        started.append(real_worker(addresses, description))  # type: ignore[arg-type]
        return started[-1]

    monkeypatch.setattr(frontend, "_Worker", second_dies_while_starting)
    pool = served.pool(3, tiny_engine)
    with pytest.raises(EngineFailedError, match="could not start"):
        pool.start()
    assert len(started) == 2
    assert not any(worker.process.is_alive() for worker in started)
    assert not pool._running


class _ExitsOnArrival:
    """Unpickling it ends the process that receives it: a stand-in for an upload that crashes the decoder."""

    def __reduce__(self) -> tuple[object, tuple[int]]:
        return os._exit, (3,)


@pytest.mark.slow
def test_a_dead_worker_is_replaced_and_an_upload_that_kills_twice_is_a_400(
    served: _Served, tiny_engine: CTranslate2Engine
) -> None:
    pool = served.pool(1, tiny_engine)
    try:
        segments = _run(pool, AudioSource(JFK))
        (first,) = pool._running
        os.kill(first.process.pid or 0, signal.SIGKILL)
        first.process.join(timeout=10)
        # its connection's end reaches the pool's reader thread a moment later: a request sent before that
        # goes to the dead worker and is run again alone, which is the other test's case
        assert wait_for(lambda: not first.alive, 10)
        again = _run(pool, AudioSource(JFK))  # the dead worker is found and replaced
        assert [s.text for s in again] == [s.text for s in segments]
        (second,) = pool._running
        assert second is not first and second.process.is_alive()
        with pytest.raises(AudioDecodeError, match="crashed"):
            _run(pool, _ExitsOnArrival())  # type: ignore[arg-type]
        assert [s.text for s in _run(pool, AudioSource(JFK))] == [s.text for s in segments]  # and the pool works
    finally:
        pool.close()
    assert not pool._running and not second.process.is_alive()
    with pytest.raises(ShuttingDownError):
        _run(pool, AudioSource(JFK))


def test_requests_beside_one_that_kills_the_worker_start_again_elsewhere(
    tiny_engine: CTranslate2Engine,
) -> None:
    arrived = threading.Event()
    generated: list[int] = []

    def call(method: str, args: tuple[Any, ...], cancellation: Cancellation) -> Any:
        generated.append(len(args[0]))
        if not arrived.is_set():  # the first call waits until its worker is dead
            arrived.set()
            time.sleep(1.0)
        return getattr(tiny_engine, method)(*args)

    with _one_worker(call, tiny_engine) as pool:
        with ThreadPoolExecutor(1) as requests:
            innocent = requests.submit(_run, pool, AudioSource(JFK), "innocent")
            assert arrived.wait(timeout=30)  # it waits for the engine in the worker
            with pytest.raises(AudioDecodeError, match="crashed"):
                _run(pool, _ExitsOnArrival(), "crasher")  # type: ignore[arg-type]
            texts = [s.text for s in innocent.result(timeout=60)]
        assert english_normalizer()(" ".join(texts)) == english_normalizer()(JFK_TEXT)
        assert generated == [1, 1]  # JFK's one window: in the worker that died, then again alone


@pytest.mark.slow
def test_with_an_engine_per_gpu_a_worker_spreads_windows_over_every_engine(tiny_engine: CTranslate2Engine) -> None:
    """`--gpus N`: a front-end process connects to each engine's socket and spreads a request's windows."""
    counts = [0, 0]

    def counting(index: int) -> Any:
        def call(method: str, args: tuple[Any, ...], cancellation: Cancellation) -> Any:
            counts[index] += len(args[0])
            return getattr(tiny_engine, method)(*args)

        return call

    endpoints = [_Served(tiny_engine, counting(i)) for i in range(2)]
    pool = FrontEndProcesses(1, [e.listener.address for e in endpoints], tiny_engine)
    try:
        spread = [s.text for s in _run(pool, AudioSource(LONG))]
    finally:
        pool.close()
        for endpoint in endpoints:
            endpoint.close()
    assert all(counts), counts  # both engines decoded windows of the one request
    alone = [s.text for s in transcribe(AudioSource(LONG), tiny_engine, ENGLISH).segments]
    assert wer([" ".join(alone)], [" ".join(spread)]) <= 0.05
