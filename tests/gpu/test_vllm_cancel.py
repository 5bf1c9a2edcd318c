"""A cancelled call's windows leave vLLM's batch at once (the driver aborts them there), and the engine goes
on serving. Real weights: WHISPER_TEST_GPU_MODEL, else the bundled base."""

from __future__ import annotations

import os
import threading
import time

import numpy as np
import pytest

from tests.conftest import DATA
from whisper_endpoint.audio.decode import AudioSource, load_audio
from whisper_endpoint.audio.features import WINDOW_SAMPLES
from whisper_endpoint.config import Settings
from whisper_endpoint.decoding.transcribe import _features
from whisper_endpoint.engines.base import Cancellation, SamplingOptions, WindowInput
from whisper_endpoint.errors import CancelledRequestError

pytestmark = [pytest.mark.gpu, pytest.mark.slow]
WINDOWS = 64


def test_a_cancelled_call_is_aborted_inside_vllm_and_the_engine_serves_on() -> None:
    from whisper_endpoint.engines.vllm import VllmEngine

    model = os.environ.get("WHISPER_TEST_GPU_MODEL", "base")
    engine = VllmEngine(Settings(engine="vllm", model=model, gpu_memory_utilization=0.4))
    try:
        clips = sorted((DATA / "B_librispeech" / "test-clean").glob("*.flac"))[:12]
        speech = np.concatenate([load_audio(AudioSource(clip)) for clip in clips])
        prompt = tuple(engine.tokenizer.sot_sequence("en", "transcribe", timestamps=True))
        starts = [i * WINDOW_SAMPLES // 4 % (len(speech) - WINDOW_SAMPLES) for i in range(WINDOWS)]
        windows = [WindowInput(_features(engine, speech[s : s + WINDOW_SAMPLES]), prompt) for s in starts]
        cancellation, failure = Cancellation(), []

        def call() -> None:
            try:
                engine.generate(windows, SamplingOptions(), cancellation)
            except BaseException as exc:
                failure.append(exc)

        stats = engine._driver.stats
        added, finished = stats.added, stats.finished  # the start-up check's window
        caller = threading.Thread(target=call)
        caller.start()
        deadline = time.monotonic() + 60
        while stats.added < added + WINDOWS and time.monotonic() < deadline:
            time.sleep(0.005)
        cancellation.set()
        caller.join(timeout=60)
        assert not caller.is_alive() and isinstance(failure[0], CancelledRequestError)
        assert stats.aborted > 0 and stats.aborted + stats.finished - finished == WINDOWS
        assert engine._llm.llm_engine.get_num_unfinished_requests() == 0
        generation = engine.generate(windows[:1], SamplingOptions())[0]
        assert len(generation.tokens) > 5  # the engine goes on decoding
    finally:
        engine.close()
