"""Scheduler behaviour with a fake engine (fairness, batching, cancellation); real engine under load."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor

import httpx
import numpy as np
import pytest

from tests.conftest import JFK, RunningServer, metric_value, start_server
from tests.datasets import DATA, english_normalizer
from whisper_endpoint.config import Settings
from whisper_endpoint.engines.base import (
    Cancellation,
    Capabilities,
    Generation,
    HandedOverWindows,
    SamplingOptions,
    WindowInput,
)
from whisper_endpoint.engines.ctranslate2 import CTranslate2Engine
from whisper_endpoint.errors import CancelledRequestError
from whisper_endpoint.serving.metrics import Metrics
from whisper_endpoint.serving.scheduler import Scheduler


class SlowFakeEngine:
    """Records which request each batch served; each call takes a fixed time."""

    name = "fake"
    model_name = "fake"
    n_mels = 80
    multilingual = False
    capabilities = Capabilities()
    max_batch_size = 4

    def __init__(self) -> None:
        self.batches: list[list[float]] = []
        self.tokenizer = None

    def generate(
        self, windows: Sequence[WindowInput], options: SamplingOptions, cancellation: Cancellation | None = None
    ) -> list[Generation]:
        time.sleep(0.02)
        self.batches.append([float(w.features[0, 0]) for w in windows if w.features is not None])
        return [Generation((), 0.0, 0.0) for _ in windows]


def _window(tag: float) -> WindowInput:
    return WindowInput(np.full((80, 3000), tag, np.float32), ())


def test_short_request_is_not_stuck_behind_a_long_one() -> None:
    engine = SlowFakeEngine()
    scheduler = Scheduler(engine, Metrics(), max_batch_size=4, batch_wait_s=0)  # type: ignore[arg-type]
    long_jobs = [scheduler.submit("long", "generate", [_window(1.0)] * 4, SamplingOptions()) for _ in range(20)]
    time.sleep(0.05)
    short = scheduler.submit("short", "generate", [_window(2.0)], SamplingOptions())
    short.result(timeout=5)
    done_long = sum(f.done() for f in long_jobs)
    assert done_long < 8  # the short one went ahead of most of the long request's windows
    for f in long_jobs:
        f.result(timeout=10)
    scheduler.stop()


def test_windows_of_different_requests_share_a_batch() -> None:
    engine = SlowFakeEngine()
    scheduler = Scheduler(engine, Metrics(), max_batch_size=4, batch_wait_s=0.2)  # type: ignore[arg-type]
    futures = [scheduler.submit(f"r{i}", "generate", [_window(float(i))], SamplingOptions()) for i in range(4)]
    for f in futures:
        f.result(timeout=5)
    assert sorted(engine.batches[0]) == [0.0, 1.0, 2.0, 3.0]
    scheduler.stop()


class ContinuousFakeEngine(SlowFakeEngine):
    """An engine that batches concurrent calls itself: counts how many callers are inside at once."""

    capabilities = Capabilities(continuous_batching=True)

    def __init__(self) -> None:
        super().__init__()
        self.inside = 0
        self.most_inside = 0
        self.threads: set[str] = set()
        self.lock = threading.Lock()

    def generate(
        self, windows: Sequence[WindowInput], options: SamplingOptions, cancellation: Cancellation | None = None
    ) -> list[Generation]:
        with self.lock:
            self.inside += 1
            self.most_inside = max(self.most_inside, self.inside)
            self.threads.add(threading.current_thread().name)
        time.sleep(0.05)
        with self.lock:
            self.inside -= 1
        return [Generation((len(windows),), 0.0, 0.0) for _ in windows]


def test_continuous_batching_engine_is_called_from_every_request_thread_at_once() -> None:
    from whisper_endpoint.serving.scheduler import ScheduledEngine

    engine = ContinuousFakeEngine()
    scheduler = Scheduler(engine, Metrics(), 4, 0.005)  # type: ignore[arg-type]
    slots = threading.BoundedSemaphore(2)

    def request(n: int) -> int:
        with slots:  # as a request thread holds its front-end slot
            windows = [_window(0.0)] * n
            return len(ScheduledEngine(scheduler, f"r{n}", Cancellation(), slots).generate(windows, SamplingOptions()))

    with ThreadPoolExecutor(8) as pool:
        sizes = list(pool.map(request, range(1, 9)))
    scheduler.stop()
    assert sizes == list(range(1, 9))
    assert engine.most_inside >= 4  # more callers than front-end slots were inside the engine together
    assert not any(name == "engine" for name in engine.threads)  # never through the scheduler's thread
    assert engine.batches == []


def test_a_request_cancelled_during_its_call_reaches_an_engine_that_batches_on_its_own() -> None:
    """The request's own Cancellation goes with its calls (vLLM in the server's process aborts them)."""
    from whisper_endpoint.errors import CancelledRequestError
    from whisper_endpoint.serving.scheduler import ScheduledEngine

    class Dropping(ContinuousFakeEngine):
        def generate(
            self, windows: Sequence[WindowInput], options: SamplingOptions, cancellation: Cancellation | None = None
        ) -> list[Generation]:
            assert cancellation is not None
            dropped = threading.Event()
            cancellation.on_set(dropped.set)
            if dropped.wait(10):
                raise CancelledRequestError("request cancelled")
            return super().generate(windows, options)

    scheduler = Scheduler(Dropping(), Metrics(), 4, 0.005)  # type: ignore[arg-type]
    cancellation = Cancellation()
    threading.Timer(0.2, cancellation.set).start()
    with pytest.raises(CancelledRequestError):
        ScheduledEngine(scheduler, "r", cancellation).generate([_window(0.0)], SamplingOptions())
    scheduler.stop()


def test_cancel_drops_pending_windows() -> None:
    engine = SlowFakeEngine()
    metrics = Metrics()
    scheduler = Scheduler(engine, metrics, max_batch_size=1, batch_wait_s=0)  # type: ignore[arg-type]
    futures = [scheduler.submit("gone", "generate", [_window(1.0)], SamplingOptions()) for _ in range(50)]
    time.sleep(0.05)
    dropped = scheduler.cancel("gone")
    assert dropped > 30
    assert scheduler.pending_windows == 0
    with pytest.raises(CancelledRequestError):
        futures[-1].result(timeout=5)
    assert metrics.cancelled_windows._value.get() == dropped
    scheduler.stop()


def _transcribe(url: str, path: str) -> str:
    with open(path, "rb") as f:
        response = httpx.post(url + "/v1/audio/transcriptions", files={"file": f}, data={"language": "en"}, timeout=300)
    response.raise_for_status()
    return str(response.json()["text"])


@pytest.mark.slow
def test_sixteen_concurrent_clients_get_the_same_text(engine: CTranslate2Engine) -> None:
    # Without packing, batching across requests changes nothing in any transcript.
    running, thread = start_server(Settings(model="base", pack_windows=False), engine)
    try:
        clips = sorted((DATA / "B_librispeech" / "test-clean").rglob("*.flac"))[:8]
        alone = {str(c): _transcribe(running.url, str(c)) for c in clips}
        with ThreadPoolExecutor(16) as pool:
            together = list(pool.map(lambda c: (c, _transcribe(running.url, c)), [str(c) for c in clips] * 2))
    finally:
        running.server.should_exit = True
        thread.join(timeout=30)
    for clip, text in together:
        assert english_normalizer()(text) == english_normalizer()(alone[clip])


@pytest.mark.slow
def test_short_clip_finishes_before_long_file(server: RunningServer) -> None:
    long_file = DATA / "C_longform" / "ljspeech_LJ001-0001_to_0032_concat.flac"
    finished: dict[str, float] = {}

    def run(name: str, path: str) -> None:
        _transcribe(server.url, path)
        finished[name] = time.monotonic()

    long_thread = threading.Thread(target=run, args=("long", str(long_file)))
    long_thread.start()
    time.sleep(2.0)
    run("short", str(JFK))
    long_thread.join()
    assert finished["short"] < finished["long"]


@pytest.mark.slow
def test_flood_gets_429_with_retry_after_never_5xx(engine: CTranslate2Engine) -> None:
    running, thread = start_server(Settings(max_inflight_requests=2, max_queued_audio_s=30), engine)
    try:

        async def flood() -> list[httpx.Response]:
            data = JFK.read_bytes()
            async with httpx.AsyncClient(timeout=300) as client:
                return await asyncio.gather(
                    *(
                        client.post(running.url + "/v1/audio/transcriptions", files={"file": ("j.flac", data)})
                        for _ in range(12)
                    )
                )

        responses = asyncio.run(flood())
        statuses = [r.status_code for r in responses]
        assert set(statuses) <= {200, 429} and 429 in statuses and 200 in statuses
        for r in responses:
            if r.status_code == 429:
                assert int(r.headers["Retry-After"]) >= 1
                assert r.json()["error"]["type"] == "rate_limit_error"
            else:
                assert "ask not what your country" in r.json()["text"]
    finally:
        running.server.should_exit = True
        thread.join(timeout=60)


CANCELLED = "whisper_cancelled_requests_total"


@pytest.mark.slow
def test_disconnect_cancels_the_work(server: RunningServer) -> None:
    long_file = DATA / "C_longform" / "ljspeech_LJ001-0001_to_0032_concat.flac"
    before = httpx.get(server.url + "/metrics").text
    with pytest.raises(httpx.ReadTimeout), long_file.open("rb") as f:
        httpx.post(server.url + "/v1/audio/transcriptions", files={"file": f}, timeout=httpx.Timeout(60, read=3))
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        metrics = httpx.get(server.url + "/metrics").text
        if (
            metric_value(metrics, CANCELLED) > metric_value(before, CANCELLED)
            and metric_value(metrics, "whisper_requests_inflight") == 0
        ):
            break
        time.sleep(0.5)
    assert metric_value(metrics, CANCELLED) > metric_value(before, CANCELLED)
    assert metric_value(metrics, "whisper_requests_inflight") == 0
    assert metric_value(metrics, "whisper_queue_windows") == 0


def test_a_call_straight_to_a_self_batching_engine_hands_over_its_windows() -> None:
    """Handed-over windows reach the engine as the same list, so it may let each go as it takes it (vLLM in the
    server's own process); the scheduler keeps no copy."""
    received: list[Sequence[WindowInput]] = []

    class Taking(SlowFakeEngine):
        capabilities = Capabilities(continuous_batching=True)

        def generate(
            self, windows: Sequence[WindowInput], options: SamplingOptions, cancellation: Cancellation | None = None
        ) -> list[Generation]:
            received.append(windows)
            count = len(windows)
            if isinstance(windows, HandedOverWindows):
                windows.clear()
            return [Generation((), 0.0, 0.0) for _ in range(count)]

    scheduler = Scheduler(Taking(), Metrics(), 4, 0.005)  # type: ignore[arg-type]
    handed = HandedOverWindows([_window(1.0), _window(2.0)])
    assert len(scheduler.run_now("generate", handed, SamplingOptions(), None)) == 2
    assert received[0] is handed and handed == []
