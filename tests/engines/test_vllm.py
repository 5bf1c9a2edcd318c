"""The vLLM engine's CPU-side logic: configuration per GPU, prompts, sampling, output parsing, errors.

The engine itself needs an NVIDIA GPU; its end-to-end check is benchmarks/gpu_check.py.
"""

from __future__ import annotations

import enum
import importlib.util
import math
import os
import re
import sys
import time
import weakref
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest

from tests.engines.stand_ins import install_modules
from whisper_endpoint.config import Settings
from whisper_endpoint.convert import model_folder
from whisper_endpoint.engines import load_engine, vllm_installed
from whisper_endpoint.engines.base import SamplingOptions, WindowInput
from whisper_endpoint.engines.ctranslate2 import CTranslate2Engine
from whisper_endpoint.engines.vllm import (
    _one_cpu_thread_for_torch,
    choose_settings,
    engine_args,
    engine_prompt,
    holds_new_windows,
    language_probabilities,
    no_speech_probability,
    sampling_kwargs,
    to_generation,
)
from whisper_endpoint.errors import EngineUnavailableError, WhisperEndpointError


def test_configuration_follows_the_compute_capability() -> None:
    hopper = choose_settings(Settings(), (9, 0))
    assert (hopper.dtype, hopper.kv_cache_dtype, hopper.enforce_eager) == ("bfloat16", "fp8_e4m3", False)
    ada = choose_settings(Settings(), (8, 9))
    assert ada.kv_cache_dtype == "fp8_e4m3"
    ampere = choose_settings(Settings(), (8, 0))
    assert ampere.kv_cache_dtype == "auto" and "needs compute capability 8.9" in ampere.note
    with pytest.raises(EngineUnavailableError, match=r"kv_cache_dtype=fp8 needs compute capability 8\.9"):
        choose_settings(Settings(kv_cache_dtype="fp8"), (8, 6))
    with pytest.raises(EngineUnavailableError, match=r"compute capability 7\.5"):
        choose_settings(Settings(), (7, 5))
    with pytest.raises(EngineUnavailableError, match=r"none is visible"):
        choose_settings(Settings(), None)
    assert hopper.triton_attention and ada.triton_attention  # the e4m3 cache's queries stay bf16 on our kernel
    assert not ampere.triton_attention  # bf16 cache: vLLM's FlashAttention
    assert not choose_settings(Settings(kv_cache_dtype="bfloat16"), (9, 0)).triton_attention
    assert not choose_settings(Settings(kv_cache_dtype="fp8_e5m2"), (9, 0)).triton_attention  # read as e4m3
    assert not choose_settings(Settings(vllm_triton_attention=False), (9, 0)).triton_attention
    tuned = choose_settings(Settings(max_num_seqs=512, gpu_memory_utilization=0.5, enforce_eager=True), (9, 0))
    assert (tuned.max_num_seqs, tuned.gpu_memory_utilization, tuned.enforce_eager) == (512, 0.5, True)


def test_engine_arguments_take_the_chosen_configuration_then_the_users_own(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("WHISPER_VLLM_ENGINE_ARGS", '{"max_num_batched_tokens": 16384, "max_num_seqs": 384}')
    settings = Settings()
    assert settings.vllm_engine_args == {"max_num_batched_tokens": 16384, "max_num_seqs": 384}
    args = engine_args(tmp_path, choose_settings(settings, (9, 0), "dummy"), settings)
    assert (args["model"], args["kv_cache_dtype"], args["load_format"]) == (str(tmp_path), "fp8_e4m3", "dummy")
    assert (args["max_num_batched_tokens"], args["max_num_seqs"]) == (16384, 384)  # the user's win
    assert args["shutdown_timeout"] == 30  # vLLM's engine core drains for the server's grace period
    graced = Settings(shutdown_grace_s=2.5)
    assert engine_args(tmp_path, choose_settings(graced, (9, 0)), graced)["shutdown_timeout"] == 3
    monkeypatch.delenv("WHISPER_VLLM_ENGINE_ARGS")
    every_step = Settings(vllm_admit_every_steps=1)
    plain = engine_args(tmp_path, choose_settings(every_step, (9, 0)), every_step)
    assert plain["max_num_batched_tokens"] == 32768 and plain["max_num_seqs"] == 256


def test_windows_are_admitted_in_bursts_only_while_others_decode(tmp_path: Path) -> None:
    bursts = Settings(vllm_admit_every_steps=8)
    args = engine_args(tmp_path, choose_settings(bursts, (9, 0)), bursts)
    assert args["scheduler_cls"] == "whisper_endpoint.engines.vllm_scheduler.BurstScheduler"
    assert args["max_num_batched_tokens"] == 65536  # room for the windows that finished while held
    every_step = Settings(vllm_admit_every_steps=1)
    assert "scheduler_cls" not in engine_args(tmp_path, choose_settings(every_step, (9, 0)), every_step)
    default = engine_args(tmp_path, choose_settings(Settings(), (9, 0)), Settings())
    assert default["scheduler_cls"] == args["scheduler_cls"]  # every 4th step by default: it won through HTTP
    assert [holds_new_windows(step, 4, running=300) for step in range(8)] == [False, True, True, True] * 2
    assert not any(holds_new_windows(step, 4, running=0) for step in range(8))  # an idle engine admits at once
    assert not any(holds_new_windows(step, 1, running=300) for step in range(8))


def test_burst_scheduler_pauses_new_windows_for_the_held_steps_only(monkeypatch: pytest.MonkeyPatch) -> None:
    """The vLLM scheduler subclass, on stand-ins for the two vLLM classes it touches (vLLM needs a GPU)."""

    class PauseState(enum.IntEnum):
        UNPAUSED = 0
        PAUSED_NEW = 1
        PAUSED_ALL = 2

    class AsyncScheduler:  # what BurstScheduler relies on: the pause state, the step count, running windows
        def __init__(self) -> None:
            self._pause_state = PauseState.UNPAUSED
            self.current_step = 0
            self.running = ["a window"]
            self.seen: list[PauseState] = []

        def schedule(self, throttle_prefills: bool = False) -> int:
            self.current_step += 1
            self.seen.append(self._pause_state)
            if self.current_step == 3:
                raise RuntimeError("a failing step")
            return self.current_step

    install_modules(
        monkeypatch,
        {
            "vllm.v1.core.sched.async_scheduler": {"AsyncScheduler": AsyncScheduler},
            "vllm.v1.core.sched.interface": {"PauseState": PauseState},
        },
    )
    monkeypatch.setenv("WHISPER_VLLM_ADMIT_EVERY_STEPS", "4")
    path = Path(__file__).parents[2] / "src" / "whisper_endpoint" / "engines" / "vllm_scheduler.py"
    spec = importlib.util.spec_from_file_location("burst_scheduler_under_test", path)
    assert spec is not None and spec.loader is not None
    loaded = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(loaded)

    scheduler: Any = loaded.BurstScheduler()
    for step in range(1, 9):
        if step == 3:
            with pytest.raises(RuntimeError, match="a failing step"):
                scheduler.schedule()
        else:
            assert scheduler.schedule() == step
        assert scheduler._pause_state == PauseState.UNPAUSED  # restored after every step, failing ones too
    new, open_ = PauseState.PAUSED_NEW, PauseState.UNPAUSED
    assert scheduler.seen == [new, new, new, open_] * 2
    scheduler.running = []  # idle: the next step admits whatever waits
    scheduler.schedule()
    assert scheduler.seen[-1] == open_
    scheduler.running, scheduler._pause_state = ["a window"], PauseState.PAUSED_ALL  # vLLM's own pause stays
    scheduler.schedule()
    assert scheduler.seen[-1] == PauseState.PAUSED_ALL and scheduler._pause_state == PauseState.PAUSED_ALL


def test_torch_cpu_threads_for_vllm_are_one_unless_the_user_chose(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OMP_NUM_THREADS", "")  # so that the test's own value is undone afterwards
    monkeypatch.delenv("OMP_NUM_THREADS")
    _one_cpu_thread_for_torch()
    assert os.environ["OMP_NUM_THREADS"] == "1"  # inherited by the engine core vLLM starts next
    monkeypatch.setenv("OMP_NUM_THREADS", "6")
    _one_cpu_thread_for_torch()
    assert os.environ["OMP_NUM_THREADS"] == "6"


def test_prompt_keeps_our_tokens_and_passes_the_audio(engine: CTranslate2Engine) -> None:
    tok = engine.tokenizer
    previous = tok.encode(" the previous window's text")
    prompt = (tok.sot_prev, *previous, *tok.sot_sequence("en", "transcribe", True))
    samples = np.zeros(16_000, np.float32)
    built = engine_prompt(WindowInput(np.zeros((80, 3000), np.float32), prompt, 1000, samples))
    assert built["decoder_prompt"]["prompt_token_ids"][0] == tok.sot_prev  # <|startofprev|>, not <|prev|>
    assert built["decoder_prompt"]["prompt_token_ids"] == list(prompt)
    audio, rate = built["encoder_prompt"]["multi_modal_data"]["audio"]
    assert audio is samples and rate == 16_000
    with pytest.raises(ValueError, match="samples"):
        engine_prompt(WindowInput(np.zeros((80, 3000), np.float32), prompt))


def test_sampling_arguments() -> None:
    greedy = sampling_kwargs(SamplingOptions(suppress_tokens=(-1, 50, 7)), prompt_len=40)
    assert greedy["temperature"] == 0.0 and greedy["max_tokens"] == 224
    assert greedy["skip_special_tokens"] is False and greedy["logprobs"] == 0 and greedy["prompt_logprobs"] == 1
    assert greedy["logit_bias"] == {7: -100.0, 50: -100.0}
    model_list = sampling_kwargs(SamplingOptions(suppress_tokens=(-1, 50)), prompt_len=4, model_suppress=(1, 2, 50))
    assert model_list["logit_bias"] == {1: -100.0, 2: -100.0, 50: -100.0}  # -1: the model's own list
    assert "logit_bias" not in sampling_kwargs(SamplingOptions(suppress_tokens=()), prompt_len=4, model_suppress=(1,))
    long_prompt = sampling_kwargs(SamplingOptions(temperature=0.4), prompt_len=300)
    assert long_prompt["max_tokens"] == 448 - 300 and long_prompt["temperature"] == 0.4
    forced = sampling_kwargs(SamplingOptions(max_new_tokens=224), prompt_len=4, forced_tokens=100)
    assert forced["min_tokens"] == forced["max_tokens"] == 100 and forced["ignore_eos"] is True
    fast = sampling_kwargs(SamplingOptions(), prompt_len=4, scores=False)
    assert fast["logprobs"] is None and fast["prompt_logprobs"] is None
    unasked = sampling_kwargs(SamplingOptions(no_speech_prob=False), prompt_len=4)
    assert unasked["logprobs"] == 0 and unasked["prompt_logprobs"] is None  # the silence rule asks again if needed


def test_outputs_become_generations_with_timestamps_and_scores(engine: CTranslate2Engine) -> None:
    tok = engine.tokenizer
    tb, eot = tok.timestamp_begin, tok.eot
    hello = tok.encode(" Hello")
    generated = [tb, *hello, tb + 50, eot]
    logprobs = [{t: SimpleNamespace(logprob=-0.5)} for t in generated]
    generation = to_generation(generated, logprobs, 0.02, eot, per_token=True)
    assert generation.tokens == (tb, *hello, tb + 50)  # timestamps kept, EOT dropped
    assert generation.sum_logprob == pytest.approx(-0.5 * len(generated))
    assert generation.token_logprobs == tuple([-0.5] * (len(generated) - 1))
    assert to_generation(generated, None, 0.0, eot, per_token=False).sum_logprob == 0.0

    prompt = tok.sot_sequence("en", "transcribe", True)
    after_sot = {tok.language_tokens["en"]: SimpleNamespace(logprob=math.log(0.3)), tok.no_speech: math.log(0.7)}
    prompt_logprobs = [None, after_sot, {}, {}]
    assert no_speech_probability(prompt, prompt_logprobs, tok) == pytest.approx(0.7)
    quiet = [None, {tok.language_tokens["en"]: SimpleNamespace(logprob=-0.01)}, {}, {}]
    assert no_speech_probability(prompt, quiet, tok) == 0.0
    assert no_speech_probability(prompt, None, tok) == 0.0


def test_language_probabilities_renormalise_over_languages(engine: CTranslate2Engine) -> None:
    tok = engine.tokenizer
    top = {
        tok.language_tokens["de"]: SimpleNamespace(logprob=math.log(0.6)),
        tok.language_tokens["en"]: SimpleNamespace(logprob=math.log(0.2)),
        tok.no_speech: SimpleNamespace(logprob=math.log(0.1)),
    }
    probs = language_probabilities([top], tok)
    assert set(probs) == {"de", "en"}
    assert probs["de"] == pytest.approx(0.75) and probs["en"] == pytest.approx(0.25)


def test_clear_errors_without_vllm_or_a_hugging_face_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(EngineUnavailableError, match="none of them"):
        model_folder(str(tmp_path), tmp_path)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # as on a machine without network
    with pytest.raises(WhisperEndpointError, match=r"could not fetch 'openai/whisper-large-v3'.*offline"):
        model_folder("openai/whisper-large-v3", tmp_path)
    if not vllm_installed():
        with pytest.raises(EngineUnavailableError, match=r"needs vLLM: pip install 'whisper-endpoint\[gpu\]'"):
            load_engine(Settings(engine="vllm", model=str(tmp_path)))


class FakeInputProcessor:
    def process_inputs(self, request_id: str, prompt: dict[str, object], params: object, tasks: object) -> object:
        if prompt.get("bad"):
            raise ValueError("bad input")
        return SimpleNamespace(request_id=request_id, external_req_id=None, params=params)


class FakeLLMEngine:
    """vLLM's LLMEngine surface the driver uses: add_request renames a request to an internal id, as
    vLLM does, while outputs carry the id the caller chose."""

    def __init__(self, steps_per_request: int, hold_first_step_until: int = 0) -> None:
        self.input_processor = FakeInputProcessor()
        self.steps = steps_per_request
        self.left: dict[str, int] = {}
        self.max_running = 0
        self.hold = hold_first_step_until  # no request finishes before this many arrived (or 5 s)
        self.deadline = time.monotonic() + 5
        self.aborted: list[str] = []

    def get_supported_tasks(self) -> tuple[str, ...]:
        return ("generate",)

    def add_request(self, request_id: str, request: SimpleNamespace, params: object) -> str:
        request.external_req_id, request.request_id = request_id, f"{request_id}-internal"
        self.left[request.external_req_id] = self.steps
        self.max_running = max(self.max_running, len(self.left))
        return str(request.request_id)

    def abort_request(self, request_ids: list[str], internal: bool = False) -> None:
        assert not internal  # the ids the caller chose
        self.aborted.extend(request_ids)
        for request_id in request_ids:
            del self.left[request_id]

    def step(self) -> list[SimpleNamespace]:
        if self.max_running < self.hold and time.monotonic() < self.deadline:
            time.sleep(0.001)
            return []
        finished = []
        for request_id in list(self.left):
            self.left[request_id] -= 1
            if not self.left[request_id]:
                del self.left[request_id]
                finished.append(SimpleNamespace(request_id=request_id, finished=True, params=None))
        return finished


def test_driver_thread_batches_concurrent_callers_and_isolates_bad_inputs() -> None:
    import threading

    from whisper_endpoint.engines.vllm_driver import EngineDriver

    fake = FakeLLMEngine(steps_per_request=3, hold_first_step_until=40)
    driver = EngineDriver(fake, stats_interval_s=3600)
    results: list[int] = []

    def caller() -> None:
        results.append(len(driver.submit([{}] * 10, [None] * 10, dict)))

    threads = [threading.Thread(target=caller) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=10)
    assert results == [10, 10, 10, 10]
    assert fake.max_running == 40  # windows of all four callers joined the running batch
    assert (driver.stats.added, driver.stats.finished) == (40, 40)
    with pytest.raises(ValueError, match="bad input"):
        driver.submit([{"bad": True}], [None], dict)
    assert len(driver.submit([{}], [None], dict)) == 1  # the driver survived the bad request
    driver.close()
    assert not driver.thread.is_alive()


def test_driver_aborts_the_windows_of_a_cancelled_call_only() -> None:
    import threading

    from whisper_endpoint.engines.base import Cancellation
    from whisper_endpoint.engines.vllm_driver import EngineDriver
    from whisper_endpoint.errors import CancelledRequestError

    fake = FakeLLMEngine(steps_per_request=10**9)  # nothing finishes on its own
    driver = EngineDriver(fake, stats_interval_s=3600)
    cancellations = [Cancellation(), Cancellation()]
    failures: list[BaseException] = []

    def caller(cancellation: Cancellation) -> None:
        try:
            driver.submit([{}] * 3, [None] * 3, dict, cancellation)
        except BaseException as exc:
            failures.append(exc)

    threads = [threading.Thread(target=caller, args=(c,)) for c in cancellations]
    for t in threads:
        t.start()
    deadline = time.monotonic() + 10
    while len(fake.left) < 6 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert len(fake.left) == 6
    cancellations[0].set()
    threads[0].join(timeout=10)
    assert not threads[0].is_alive() and isinstance(failures[0], CancelledRequestError)
    assert len(fake.aborted) == 3 and len(fake.left) == 3  # the other caller's windows still run
    assert threads[1].is_alive() and driver.stats.aborted == 3
    cancellations[1].set()
    threads[1].join(timeout=10)
    assert not fake.left and len(failures) == 2
    driver.close()


def test_driver_reports_how_full_the_batch_was(caplog: pytest.LogCaptureFixture) -> None:
    from whisper_endpoint.engines.vllm_driver import EngineDriver

    fake = FakeLLMEngine(steps_per_request=4, hold_first_step_until=8)
    driver = EngineDriver(fake, stats_interval_s=0)  # a report after every step
    with caplog.at_level("INFO", logger="whisper_endpoint.engines.vllm_driver"):
        assert len(driver.submit([{}] * 8, [None] * 8, dict)) == 8
    driver.close()
    reports = [r.getMessage() for r in caplog.records if "windows per step" in r.getMessage()]
    assert reports and reports[-1].startswith("vLLM engine: 8 windows per step")  # all 8 ran in each step
    assert re.search(r", \d+ ms a second adding windows$", reports[-1])


def _nvml(monkeypatch: pytest.MonkeyPatch, devices: int) -> None:
    nvml = SimpleNamespace(nvmlInit=lambda: None, nvmlShutdown=lambda: None, nvmlDeviceGetCount=lambda: devices)
    monkeypatch.setitem(sys.modules, "pynvml", nvml)
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)


def test_a_gpu_is_seen_through_nvml_where_ctranslate2_has_no_cuda(monkeypatch: pytest.MonkeyPatch) -> None:
    """On a GPU host with vLLM, CTranslate2's CPU-only build (or none) must not hide the GPU from `--engine vllm`."""
    import whisper_endpoint.engines as engines

    monkeypatch.setitem(sys.modules, "ctranslate2", None)  # `import ctranslate2` fails
    _nvml(monkeypatch, 2)
    assert engines.cuda_available() and engines.visible_gpus() == ["0", "1"]
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "1")
    assert engines.visible_gpus() == ["1"]
    _nvml(monkeypatch, 0)
    assert not engines.cuda_available()


def test_the_server_checks_for_the_gpu_without_loading_vllm(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """vLLM, and torch under it, load in the engine process only: the server process once found the GPU through
    vLLM's platform layer and carried torch from then on."""
    import whisper_endpoint.engines as engines

    (tmp_path / "vllm").mkdir()
    (tmp_path / "vllm" / "__init__.py").write_text("raise RuntimeError('vLLM imported')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "vllm", raising=False)
    monkeypatch.setitem(sys.modules, "ctranslate2", None)
    _nvml(monkeypatch, 1)
    engines.check_engine(Settings(engine="vllm"))  # raises where it finds no GPU
    assert engines.choose_engine(Settings()) == "vllm"
    assert "vllm" not in sys.modules


class _Inputs:
    """FeatureInputs as its check at start left it: features in bf16 or float32 (`bf16`); records the windows it
    builds."""

    def __init__(self, bf16: bool) -> None:
        self.bf16 = bf16
        self.built: list[np.ndarray] = []

    def build(self, features: np.ndarray, prompt: tuple[int, ...]) -> dict[str, Any]:
        self.built.append(features)
        return {"prompt": list(prompt)}


@pytest.mark.parametrize(
    ("found", "decodes", "log_mel_input", "bf16"),
    [
        ("bf16", True, True, True),
        ("float32", True, True, False),
        (None, True, False, False),
        ("bf16", False, False, False),
    ],
    ids=["bf16 features", "float32 features", "features unlike vllm's", "a check window that fails"],
)
def test_what_callers_send_follows_the_log_mel_check_at_start(
    monkeypatch: pytest.MonkeyPatch,
    engine: CTranslate2Engine,
    found: str | None,
    decodes: bool,
    log_mel_input: bool,
    bf16: bool,
) -> None:
    from whisper_endpoint.engines import vllm

    inputs = _Inputs(found == "bf16") if found else None
    monkeypatch.setattr(vllm.FeatureInputs, "from_vllm", lambda preprocessor, sot, n_mels: inputs)
    checked: list[WindowInput] = []

    def detect_language(self: Any, windows: list[WindowInput]) -> list[dict[str, float]]:
        checked.extend(windows)
        if not decodes:
            raise RuntimeError("vLLM refused the window")
        return [{"en": 1.0}]

    monkeypatch.setattr(vllm.VllmEngine, "detect_language", detect_language)
    vllm_engine = object.__new__(vllm.VllmEngine)  # the parts the check reads; no GPU, no vLLM
    vllm_engine.tokenizer, vllm_engine.n_mels = engine.tokenizer, 128
    vllm_engine._use_feature_inputs(preprocessor=None)
    assert (vllm_engine.capabilities.log_mel_input, vllm_engine.capabilities.log_mel_bf16) == (log_mel_input, bf16)
    assert vllm.VllmEngine.capabilities.log_mel_input and not vllm.VllmEngine.capabilities.log_mel_bf16  # class's
    if inputs is not None:  # the check window went as our float32 log-mel
        assert checked[0].features is not None and checked[0].features.shape == (128, 3000)
    window = WindowInput(np.zeros((128, 3000), np.float32), (1, 2), 30_000, np.zeros(16_000, np.float32))
    built = vllm_engine._engine_input(window)
    if log_mel_input:
        assert built == {"prompt": [1, 2]}  # our features, as the processed input
    else:
        assert "encoder_prompt" in built  # the samples, for vLLM's own processing


class _RecordingFeatures:
    """FeatureInputs that keeps nothing of a window's features in the request it builds (as vLLM's request
    holds them until sent, and no longer)."""

    bf16 = True

    def build(self, features: np.ndarray, prompt: tuple[int, ...]) -> dict[str, Any]:
        return {"prompt": list(prompt), "first": int(features.flat[0])}


class _RememberingEngine(FakeLLMEngine):
    """Once `count` windows are in vLLM, notes which of the windows' features anything else still holds (waiting
    up to 0.5 s for the caller to let them go); each output is a timestamp pair."""

    def __init__(self, refs: list[weakref.ref[np.ndarray]], timestamp: int) -> None:
        super().__init__(steps_per_request=2, hold_first_step_until=len(refs))
        self.refs, self.timestamp = refs, timestamp
        self.alive_while_decoding: list[bool] | None = None

    def step(self) -> list[SimpleNamespace]:
        if self.alive_while_decoding is None and len(self.left) == len(self.refs):
            deadline = time.monotonic() + 0.5
            while any(r() is not None for r in self.refs) and time.monotonic() < deadline:
                time.sleep(0.01)
            self.alive_while_decoding = [r() is not None for r in self.refs]
        done = super().step()
        completion = SimpleNamespace(token_ids=[self.timestamp, self.timestamp + 50], logprobs=None)
        return [SimpleNamespace(**vars(o), outputs=[completion], prompt_logprobs=None) for o in done]


def _vllm_engine_on(fake: FakeLLMEngine, tokenizer: Any, monkeypatch: pytest.MonkeyPatch) -> Any:
    """A VllmEngine whose vLLM is `fake` (no GPU, no vLLM installed)."""
    from whisper_endpoint.decoding.rules import RuleTokens
    from whisper_endpoint.engines import vllm
    from whisper_endpoint.engines.vllm_driver import EngineDriver

    install_modules(
        monkeypatch,
        {
            "vllm": {"SamplingParams": lambda **kwargs: SimpleNamespace(**kwargs)},
            "vllm.sampling_params": {"RequestOutputKind": SimpleNamespace(FINAL_ONLY="final")},
        },
    )
    engine = object.__new__(vllm.VllmEngine)
    engine.tokenizer, engine.rule_tokens = tokenizer, RuleTokens.of(tokenizer)
    engine.scores, engine.model_suppress, engine.forced_tokens_per_30s = True, (), None
    engine._inputs = _RecordingFeatures()
    engine._driver = EngineDriver(fake, stats_interval_s=3600)
    return engine


@pytest.mark.parametrize("handed_over", [True, False], ids=["from another process", "a caller's own list"])
def test_each_windows_log_mel_goes_once_vllm_has_it_where_nothing_else_holds_it(
    monkeypatch: pytest.MonkeyPatch, engine: CTranslate2Engine, handed_over: bool
) -> None:
    """The engine process's windows (about a thousand under load, 0.77 MB of log-mel each) are let go as vLLM
    takes them, not when their call returns; a caller in the same process keeps its own windows whole."""
    from whisper_endpoint.engines.base import Cancellation
    from whisper_endpoint.engines.process import engine_handler

    received = [WindowInput(np.full((128, 3000), i, np.uint16), (engine.tokenizer.sot,), 30_000) for i in range(3)]
    refs = [weakref.ref(w.features) for w in received if w.features is not None]
    fake = _RememberingEngine(refs, engine.tokenizer.timestamp_begin)
    vllm_engine = _vllm_engine_on(fake, engine.tokenizer, monkeypatch)
    options = SamplingOptions(no_speech_prob=False)
    if handed_over:
        generations = engine_handler(vllm_engine)("generate", (received, options), Cancellation())
    else:
        generations = vllm_engine.generate(received, options)
    vllm_engine._driver.close()
    tb = engine.tokenizer.timestamp_begin
    assert [g.tokens for g in generations] == [(tb, tb + 50)] * 3
    assert fake.alive_while_decoding == [not handed_over] * 3
    assert len(received) == (0 if handed_over else 3)  # the message's list is emptied; a caller's own is not
