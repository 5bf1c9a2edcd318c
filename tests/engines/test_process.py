"""Engines in processes of their own: the real CTranslate2 engine with tiny.en behind a pipe, and a slow
fake engine for what happens when that process dies."""

from __future__ import annotations

import os
import signal
import threading
import time
import weakref
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from tests.conftest import JFK, JFK_TEXT, start_server
from tests.datasets import english_normalizer
from whisper_endpoint.audio.decode import AudioSource
from whisper_endpoint.config import Settings
from whisper_endpoint.decoding.options import DecodeOptions
from whisper_endpoint.decoding.transcribe import transcribe
from whisper_endpoint.engines import load_engine
from whisper_endpoint.engines.base import (
    Cancellation,
    Capabilities,
    Engine,
    Generation,
    HandedOverWindows,
    SamplingOptions,
    WindowInput,
)
from whisper_endpoint.engines.ctranslate2 import CTranslate2Engine
from whisper_endpoint.engines.pool import EnginePool
from whisper_endpoint.engines.process import ProcessEngine
from whisper_endpoint.errors import EngineFailedError, EngineUnavailableError, ModelResolutionError

TINY = Settings(model="tiny.en", engine="ctranslate2")


@pytest.fixture(scope="module")
def tiny_process() -> Iterator[ProcessEngine]:
    engine = ProcessEngine(load_engine, TINY)
    yield engine
    engine.close()


def test_transcripts_through_the_pipe_equal_those_in_process(
    tiny_process: ProcessEngine, tiny_engine: CTranslate2Engine
) -> None:
    assert tiny_process.pid != os.getpid()
    assert (tiny_process.name, tiny_process.model_name) == (tiny_engine.name, tiny_engine.model_name)
    assert tiny_process.tokenizer.eot == tiny_engine.tokenizer.eot
    normalizer = english_normalizer()
    options = DecodeOptions(language="en", word_timestamps=True)  # generate and align both cross the pipe
    there = transcribe(AudioSource(JFK), tiny_process, options)
    here = transcribe(AudioSource(JFK), tiny_engine, options)
    assert normalizer(there.text) == normalizer(JFK_TEXT)
    assert [(s.start_ms, s.end_ms, s.text) for s in there.segments] == [
        (s.start_ms, s.end_ms, s.text) for s in here.segments
    ]
    assert [w.start_ms for s in there.segments for w in s.words] == [w.start_ms for s in here.segments for w in s.words]


@pytest.mark.slow
def test_concurrent_calls_and_large_calls_keep_their_order(tiny_process: ProcessEngine) -> None:
    rng = np.random.default_rng(1)
    prompt = tuple(tiny_process.tokenizer.sot_sequence(None, "transcribe", True))
    windows = [
        WindowInput(rng.normal(0, 1, (80, 3000)).astype(np.float32), prompt, 30_000) for _ in range(3)
    ]  # different noise, different tokens
    options = SamplingOptions(max_new_tokens=8)
    alone = [tiny_process.generate([w], options)[0] for w in windows]
    big = tiny_process.generate(windows * 12, options)  # 36 windows: sent in parts of 16
    assert big == alone * 12
    with ThreadPoolExecutor(6) as pool:
        results = list(pool.map(lambda i: tiny_process.generate([windows[i % 3]], options)[0], range(18)))
    assert results == [alone[i % 3] for i in range(18)]


def test_errors_cross_with_their_type(tiny_process: ProcessEngine) -> None:
    prompt = tuple(tiny_process.tokenizer.sot_sequence(None, "transcribe", True))
    with pytest.raises(ValueError, match="log-mel features"):
        tiny_process.generate([WindowInput(None, prompt, 1000, np.zeros(16_000, np.float32))], SamplingOptions())
    # the engine process is still serving
    assert tiny_process.generate([WindowInput(np.zeros((80, 3000), np.float32), prompt)], SamplingOptions())


def test_a_failed_start_raises_the_engines_error() -> None:
    with pytest.raises(ModelResolutionError, match="no-such-model"):
        ProcessEngine(load_engine, Settings(model="/no-such-model", engine="ctranslate2"))


class SlowEngine:
    """Answers after `seconds` (from a setting otherwise unused here) with its process id as the token."""

    name = "slow"
    model_name = "slow"
    n_mels = 80
    multilingual = False
    capabilities = Capabilities(continuous_batching=True)
    max_batch_size = 4

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self.tokenizer = CTranslate2Engine.from_settings(TINY).tokenizer

    def generate(
        self, windows: Sequence[WindowInput], options: SamplingOptions, cancellation: Cancellation | None = None
    ) -> list[Generation]:
        time.sleep(self.seconds)
        return [Generation((os.getpid(),), 0.0, 0.0) for _ in windows]  # which process served it

    def close(self) -> None:
        pass


class UnpicklableResultEngine(SlowEngine):
    def generate(
        self, windows: Sequence[WindowInput], options: SamplingOptions, cancellation: Cancellation | None = None
    ) -> list[Generation]:
        return [threading.Lock()]  # type: ignore[list-item]  # a result that cannot cross to the server


def unpicklable_result_engine(settings: Settings) -> Engine:
    return UnpicklableResultEngine(0.0)  # type: ignore[return-value]


def slow_engine(settings: Settings) -> Engine:
    return SlowEngine(settings.request_timeout_s)  # type: ignore[return-value]


def wait_until_ended(engine: ProcessEngine) -> None:
    """The pipe's end reaches the engine's reply thread a moment after the process dies."""
    deadline = time.monotonic() + 10
    while engine.alive and time.monotonic() < deadline:
        time.sleep(0.01)
    assert not engine.alive


def test_ctrl_c_leaves_the_engine_process_to_the_server() -> None:
    engine = ProcessEngine(slow_engine, Settings(request_timeout_s=0.01))
    try:
        window = WindowInput(None, (1,), 1000, np.zeros(16, np.float32))
        os.kill(engine.pid, signal.SIGINT)  # what a terminal's Ctrl-C sends every process of the group
        assert [g.tokens[0] for g in engine.generate([window], SamplingOptions())] == [engine.pid]
        assert engine.alive
    finally:
        engine.close()
    assert not engine.alive


def test_an_engine_process_runs_on_the_cpus_it_was_given() -> None:
    ours = os.sched_getaffinity(0)
    first = min(ours)
    engine = ProcessEngine(slow_engine, Settings(request_timeout_s=0.01), cpus=frozenset({first}))
    try:
        assert os.sched_getaffinity(engine.pid) == {first}
        assert os.sched_getaffinity(0) == ours  # the server process keeps every core
    finally:
        engine.close()


def test_a_killed_engine_process_fails_calls_in_flight_and_later_ones() -> None:
    engine = ProcessEngine(slow_engine, Settings(request_timeout_s=30))
    window = WindowInput(None, (1,), 1000, np.zeros(16, np.float32))
    errors: list[BaseException] = []

    def call() -> None:
        try:
            engine.generate([window], SamplingOptions())
        except BaseException as exc:
            errors.append(exc)

    callers = [threading.Thread(target=call) for _ in range(3)]
    for t in callers:
        t.start()
    time.sleep(1.0)
    os.kill(engine.pid, signal.SIGKILL)
    for t in callers:
        t.join(timeout=10)
    assert not any(t.is_alive() for t in callers), "a call hung after its engine process died"
    assert len(errors) == 3 and all(isinstance(e, EngineFailedError) for e in errors)
    assert "retried" in str(errors[0]) and not engine.alive
    with pytest.raises(EngineFailedError):
        engine.generate([window], SamplingOptions())
    engine.close()


def test_a_pool_of_engine_processes_spreads_one_call_over_both_and_outlives_one() -> None:
    engines = [ProcessEngine(slow_engine, Settings(request_timeout_s=0.1)) for _ in range(2)]
    pool = EnginePool(engines)  # type: ignore[list-item]
    window = WindowInput(None, (1,), 1000, np.zeros(16, np.float32))
    try:
        served_by = [g.tokens[0] for g in pool.generate([window] * 6, SamplingOptions())]
        assert sorted(served_by) == sorted([engines[0].pid] * 3 + [engines[1].pid] * 3)
        os.kill(engines[0].pid, signal.SIGKILL)
        wait_until_ended(engines[0])
        served_by = [g.tokens[0] for g in pool.generate([window] * 4, SamplingOptions())]
        assert served_by == [engines[1].pid] * 4 and pool.alive
        os.kill(engines[1].pid, signal.SIGKILL)
        wait_until_ended(engines[1])
        assert not pool.alive
        with pytest.raises(EngineFailedError):
            pool.generate([window], SamplingOptions())
    finally:
        pool.close()


def test_the_server_serves_an_engine_in_its_own_process(tiny_process: ProcessEngine) -> None:
    from openai import OpenAI

    running, thread = start_server(Settings(model="tiny.en"), tiny_process)  # type: ignore[arg-type]
    try:
        client = OpenAI(base_url=running.v1, api_key="unused")
        with JFK.open("rb") as f:
            result = client.audio.transcriptions.create(model="whisper-1", file=f, response_format="verbose_json")
        assert english_normalizer()(result.text) == english_normalizer()(JFK_TEXT)
        assert result.segments and result.segments[-1].end == pytest.approx(11.0, abs=1.0)
    finally:
        running.server.should_exit = True
        thread.join(timeout=30)


def test_a_dead_engine_process_makes_the_server_answer_503_and_not_ready() -> None:
    import httpx

    engine = ProcessEngine(slow_engine, Settings(request_timeout_s=0.01))
    running, thread = start_server(Settings(model="tiny.en"), engine)  # type: ignore[arg-type]
    try:
        assert httpx.get(f"{running.url}/ready").status_code == 200
        os.kill(engine.pid, signal.SIGKILL)
        wait_until_ended(engine)
        ready = httpx.get(f"{running.url}/ready")
        assert ready.status_code == 503 and ready.json()["error"]["code"] == "engine_failed"
        with JFK.open("rb") as f:
            response = httpx.post(
                f"{running.v1}/audio/transcriptions", files={"file": f}, data={"model": "whisper-1"}, timeout=60
            )
        assert response.status_code == 503, response.text
        assert response.json()["error"]["code"] == "engine_failed" and response.headers["retry-after"] == "5"
    finally:
        running.server.should_exit = True
        thread.join(timeout=30)
        engine.close()


def test_a_result_that_cannot_cross_fails_its_call_instead_of_hanging_it() -> None:
    engine = ProcessEngine(unpicklable_result_engine, Settings())
    try:
        window = WindowInput(None, (1,), 1000, np.zeros(16, np.float32))
        with ThreadPoolExecutor(1) as pool:
            call = pool.submit(engine.generate, [window], SamplingOptions())
            with pytest.raises(Exception, match="pickle"):
                call.result(timeout=30)
        assert engine.alive  # the engine process and its reply thread carry on
        with pytest.raises(Exception, match="pickle"):
            engine.generate([window], SamplingOptions())
    finally:
        engine.close()


def test_a_temp_dir_too_long_for_a_socket_is_a_clear_error(tmp_path, monkeypatch: pytest.MonkeyPatch) -> None:  # type: ignore[no-untyped-def]
    from concurrent.futures import ThreadPoolExecutor

    from whisper_endpoint.engines.process import EngineListener

    deep = tmp_path / ("d" * 120)
    deep.mkdir()
    monkeypatch.setenv("TMPDIR", str(deep))
    monkeypatch.setattr("tempfile.tempdir", None)  # read TMPDIR again
    with ThreadPoolExecutor(1) as calls, pytest.raises(EngineUnavailableError, match="set TMPDIR to a shorter path"):
        EngineListener(lambda method, args, cancellation: None, calls)
    assert list(deep.iterdir()) == []  # its folder is gone with it


@pytest.mark.parametrize("handed_over", [True, False], ids=["handed over", "a caller's own list"])
def test_windows_handed_to_an_engine_process_are_not_held_here_while_it_decodes(handed_over: bool) -> None:
    """Once sent, a handed-over window's log-mel is held by nothing in the calling process (a front-end process
    has about 64 windows waiting in vLLM under load); a caller's own list is left as it was."""
    engine = ProcessEngine(slow_engine, Settings(request_timeout_s=1.5))
    try:
        made = [WindowInput(np.full((80, 3000), i, np.float32), (1,), 30_000) for i in range(20)]  # two messages
        refs = [weakref.ref(w.features) for w in made if w.features is not None]
        windows: list[WindowInput] = HandedOverWindows(made) if handed_over else list(made)
        del made
        caller = threading.Thread(target=lambda: engine.generate(windows, SamplingOptions()))
        caller.start()
        time.sleep(1.0)  # sent, and the engine still decoding
        held = [r() is not None for r in refs]
        caller.join(timeout=10)
        assert held == [not handed_over] * 20
        assert len(windows) == (0 if handed_over else 20)
    finally:
        engine.close()
