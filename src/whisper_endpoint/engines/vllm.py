"""The GPU engine: Whisper on vLLM (bf16 compute, fp8 KV cache, torch.compile, CUDA graphs).

Each window's log-mel is computed by the caller (the front-end process that owns the request) and handed to vLLM
as its processed input (`vllm_inputs`); decoder prompts are built by our tokenizer (`<|startofprev|>`, the SOT sequence,
timestamps on), and generated timestamp tokens come back raw, sampled under Whisper's decoding rules (a logits
processor, `vllm_rules`). Windows go to vLLM through one driver thread (`vllm_driver`): continuous batching across
requests. What vLLM loads of ours (model class, attention backend, rules, scheduler) is named in `vllm_plugin`.
"""

from __future__ import annotations

import json
import logging
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from whisper_endpoint.audio.features import log_mel_window
from whisper_endpoint.config import Settings
from whisper_endpoint.convert import model_folder
from whisper_endpoint.decoding.rules import ARGS_KEY, RuleTokens, WindowRules, rules_args
from whisper_endpoint.decoding.tokenizer import MS_PER_TIMESTAMP, Tokenizer
from whisper_endpoint.engines.base import (
    AlignInput,
    Alignment,
    Cancellation,
    Capabilities,
    Generation,
    HandedOverWindows,
    SamplingOptions,
    WindowInput,
    let_go,
    sampling_seed,
)
from whisper_endpoint.engines.vllm_driver import EngineDriver
from whisper_endpoint.engines.vllm_inputs import FeatureInputs, audio_prompt, check_window
from whisper_endpoint.engines.vllm_plugin import plugin_args, register
from whisper_endpoint.errors import EngineUnavailableError, UnsupportedFeatureError

log = logging.getLogger(__name__)

MAX_MODEL_LEN = 448  # Whisper's decoder context
MIN_CAPABILITY = (8, 0)  # bfloat16
FP8_KV_MIN_CAPABILITY = (8, 9)  # float8 e4m3 KV cache (Ada, Hopper and newer)
LANGUAGE_TOP_K = 20
SUPPRESS_BIAS = -100.0  # added to a suppressed token's logit: never sampled, still finite
ADMIT_EVERY_ENV = "WHISPER_VLLM_ADMIT_EVERY_STEPS"  # read by vllm_scheduler in vLLM's engine core
BATCHED_TOKENS_PER_ADMITTING_STEP = 8192  # encoder positions: about 5 windows of 1,500 per step held back
# Tokens per step, encoder positions included: room for about 20 windows' encoders a step (vLLM's default,
# 16,384, gives 10). Engine alone, 100 tokens a window: 1,642x against 1,351x on one H100, 1,662 and 1,745x
# against 1,224x on another (docs/history/benchmarks-2026-11.md).
BATCHED_TOKENS = 32768
E4M3_KV_CACHE_DTYPES = ("fp8", "fp8_e4m3")  # vLLM's names for the cache our attention kernel reads


@dataclass(frozen=True)
class VllmSettings:
    """What the engine is started with, chosen per GPU."""

    dtype: str
    kv_cache_dtype: str
    enforce_eager: bool
    max_num_seqs: int
    gpu_memory_utilization: float
    load_format: str
    note: str  # why the KV cache dtype is what it is, for the start-up log
    triton_attention: bool = False  # the decoder's attention on our kernel (engines/vllm_attention.py)


def choose_settings(settings: Settings, capability: tuple[int, int] | None, load_format: str = "auto") -> VllmSettings:
    """The original design's configuration where the GPU can run it; a clear error where it cannot."""
    if capability is None:
        raise EngineUnavailableError("--engine vllm needs an NVIDIA GPU with CUDA; none is visible")
    cc = f"{capability[0]}.{capability[1]}"
    if capability < MIN_CAPABILITY:
        raise EngineUnavailableError(f"the GPU has compute capability {cc}; the vLLM engine needs 8.0 or newer (bf16)")
    kv = settings.kv_cache_dtype
    if kv == "auto":
        if capability >= FP8_KV_MIN_CAPABILITY:
            kv, note = "fp8_e4m3", f"KV cache float8 e4m3 (compute capability {cc})"
        else:
            note = f"KV cache in the model's dtype: float8 needs compute capability 8.9, this GPU has {cc}"
    elif kv.startswith("fp8") and capability < FP8_KV_MIN_CAPABILITY:
        raise EngineUnavailableError(f"kv_cache_dtype={kv} needs compute capability 8.9; this GPU has {cc}")
    else:
        note = f"KV cache {kv} (as configured)"
    return VllmSettings(
        dtype="bfloat16",
        kv_cache_dtype=kv,
        enforce_eager=settings.enforce_eager,
        max_num_seqs=settings.max_num_seqs,
        gpu_memory_utilization=settings.gpu_memory_utilization,
        load_format=load_format,
        note=note,
        # measured on the e4m3 cache only; bf16 caches keep vLLM's FlashAttention, whose queries are bf16 already
        triton_attention=settings.vllm_triton_attention and kv in E4M3_KV_CACHE_DTYPES,
    )


def engine_prompt(window: WindowInput) -> dict[str, Any]:
    """vLLM's explicit encoder/decoder prompt (for its own input processing): the window's audio, and our
    decoder tokens."""
    if window.samples is None:
        raise ValueError("the vLLM engine needs each window's samples")
    return audio_prompt(window.samples, window.prompt)


def sampling_kwargs(
    options: SamplingOptions,
    prompt_len: int,
    forced_tokens: int | None = None,
    scores: bool = True,
    model_suppress: Sequence[int] = (),
    rules: dict[str, object] | None = None,
) -> dict[str, Any]:
    """SamplingParams arguments for one window: logprobs of the sampled tokens, and of the token after
    <|startoftranscript|> (prompt_logprobs) for the no-speech probability when asked for (vLLM computes
    prompt logprobs request by request: 11 to 19 % of the throughput when every window asks, measured in
    docs/history/benchmarks-2026-11.md; sampled tokens' logprobs cost nothing measurable). A -1 among the tokens to
    suppress stands for the model's own list (`model_suppress`), as in openai/whisper."""
    max_tokens = max(1, min(options.max_new_tokens, MAX_MODEL_LEN - prompt_len))
    kwargs: dict[str, Any] = {
        "temperature": options.temperature,
        "max_tokens": max_tokens,
        "logprobs": 0 if scores or options.token_logprobs else None,
        "prompt_logprobs": 1 if scores and options.no_speech_prob else None,
        "skip_special_tokens": False,
        "detokenize": False,
    }
    suppress = sorted({t for t in options.suppress_tokens if t >= 0})
    if -1 in options.suppress_tokens:
        suppress = sorted({*suppress, *model_suppress})
    if suppress:
        kwargs["logit_bias"] = {t: SUPPRESS_BIAS for t in suppress}
    if rules is not None:
        kwargs["extra_args"] = {ARGS_KEY: rules}
    if forced_tokens is not None:  # speed runs with dummy weights: the window decodes exactly this many
        n = max(1, min(forced_tokens, max_tokens))
        kwargs.update(min_tokens=n, max_tokens=n, ignore_eos=True)
    return kwargs


def _logprob(entry: Any) -> float:
    return float(getattr(entry, "logprob", entry))


def no_speech_probability(prompt: Sequence[int], prompt_logprobs: Sequence[Any] | None, tokenizer: Tokenizer) -> float:
    """P(<|nospeech|>) right after <|startoftranscript|>, when vLLM reported it among the top tokens there.

    Only the top token is asked for: a no-speech probability above any threshold worth using (0.6) is
    always the top token, and one not reported is below the language token's."""
    if not prompt_logprobs or tokenizer.sot not in prompt:
        return 0.0
    position = list(prompt).index(tokenizer.sot) + 1
    if position >= len(prompt_logprobs) or not prompt_logprobs[position]:
        return 0.0
    entry = prompt_logprobs[position].get(tokenizer.no_speech)
    return math.exp(_logprob(entry)) if entry is not None else 0.0


def to_generation(
    token_ids: Sequence[int], logprobs: Sequence[Any] | None, no_speech_prob: float | None, eot: int, per_token: bool
) -> Generation:
    """vLLM's output as a Generation: EOT dropped, log-probabilities summed over every sampled token."""
    steps = [_logprob(step[token]) for token, step in zip(token_ids, logprobs or [], strict=False) if token in step]
    tokens = tuple(t for t in token_ids if t != eot)
    token_logprobs = tuple(steps[: len(tokens)]) if per_token else None
    return Generation(tokens, float(sum(steps)), no_speech_prob, token_logprobs)


def language_probabilities(logprobs: Sequence[Any] | None, tokenizer: Tokenizer) -> dict[str, float]:
    """The language tokens among the reported top tokens, renormalised."""
    codes = {token: code for code, token in tokenizer.language_tokens.items()}
    first = logprobs[0] if logprobs else {}
    probs = {codes[t]: math.exp(_logprob(e)) for t, e in first.items() if t in codes}
    total = sum(probs.values()) or 1.0
    return {code: p / total for code, p in probs.items()}


def cuda_capability() -> tuple[int, int] | None:
    """Read through NVML (vLLM's platform layer), so CUDA is not initialised before vLLM forks its workers."""
    try:
        from vllm.platforms import current_platform

        capability = current_platform.get_device_capability()
    except Exception:
        return None
    return None if capability is None else (int(capability.major), int(capability.minor))


def model_suppress_tokens(folder: Path) -> tuple[int, ...]:
    """The checkpoint's `suppress_tokens` (non-speech symbols), from its generation or model config."""
    for name in ("generation_config.json", "config.json"):
        path = folder / name
        if path.is_file() and (tokens := json.loads(path.read_text()).get("suppress_tokens")):
            return tuple(int(t) for t in tokens)
    return ()


def _one_cpu_thread_for_torch() -> None:
    """torch's CPU kernels on one thread, in this process and in vLLM's engine core (which inherits the
    variable, or the setting when forked), unless OMP_NUM_THREADS is set already. In the engine core,
    stacking each step's log-mel windows into one batch with a thread per core took a third of its time
    (py-spy); one thread made the engine 16 to 31 % faster (docs/history/benchmarks-2026-11.md)."""
    if "OMP_NUM_THREADS" in os.environ:
        return
    os.environ["OMP_NUM_THREADS"] = "1"  # read when torch is first imported, and by processes vLLM spawns
    try:
        import torch

        torch.set_num_threads(1)  # where torch was imported before
    except ImportError:
        pass


def holds_new_windows(step: int, every: int, running: int) -> bool:
    """Whether vLLM's step number `step` leaves waiting windows waiting (`vllm_scheduler`): only while
    others run, and not on every Nth step. An idle engine admits at once, so a lone request waits for nothing."""
    return every > 1 and running > 0 and step % every != 0


def engine_args(folder: Path, chosen: VllmSettings, settings: Settings) -> dict[str, Any]:
    """vLLM's engine arguments: the chosen configuration, then the user's own on top."""
    args: dict[str, Any] = {
        "model": str(folder),
        "dtype": chosen.dtype,
        "kv_cache_dtype": chosen.kv_cache_dtype,
        "enforce_eager": chosen.enforce_eager,
        "max_num_seqs": chosen.max_num_seqs,
        "gpu_memory_utilization": chosen.gpu_memory_utilization,
        "max_model_len": MAX_MODEL_LEN,
        "load_format": chosen.load_format,
        "limit_mm_per_prompt": {"audio": 1},
        # Inputs are prepared in the callers' threads (see vllm_driver); vLLM's processor cache is not meant
        # for that, and audio windows never repeat anyway.
        "mm_processor_cache_gb": 0,
        "disable_log_stats": True,
        "max_num_batched_tokens": BATCHED_TOKENS,
        # Ctrl-C signals the terminal's whole process group, vLLM's engine core included: it then finishes the
        # windows in flight (vLLM's default aborts them) while the server drains its requests.
        "shutdown_timeout": math.ceil(settings.shutdown_grace_s),
    }
    every = settings.vllm_admit_every_steps
    if every > 1:  # room on an admitting step for the windows that finished on the steps held back
        args["max_num_batched_tokens"] = max(BATCHED_TOKENS, every * BATCHED_TOKENS_PER_ADMITTING_STEP)
    args.update(plugin_args(chosen.triton_attention, every))
    return {**args, **settings.vllm_engine_args}


def vllm_engine(settings: Settings) -> VllmEngine:
    """The engine factory for this process or an engine process of its own."""
    return VllmEngine(settings, load_format=settings.load_format)


class VllmEngine:
    name = "vllm"
    capabilities = Capabilities(
        word_timestamps=False,
        token_logprobs=True,
        language_detection=True,
        beam_search=False,
        log_mel_input=True,  # False where our log-mel fails its check against vLLM's at start
        continuous_batching=True,
    )

    def __init__(self, settings: Settings, load_format: str = "auto") -> None:
        _one_cpu_thread_for_torch()  # before torch is imported, and before vLLM starts its engine core
        try:
            from vllm import LLM
        except ImportError as exc:
            raise EngineUnavailableError(
                "--engine vllm needs vLLM: pip install 'whisper-endpoint[gpu]' on a machine with an NVIDIA GPU"
            ) from exc
        folder = model_folder(settings.model, settings.cache_dir)
        chosen = choose_settings(settings, cuda_capability(), load_format)
        log.info("vLLM engine: %s, bf16, enforce_eager=%s; %s", folder, chosen.enforce_eager, chosen.note)
        config = json.loads((folder / "config.json").read_text())
        self.model_name = folder.name
        self.n_mels = int(config.get("num_mel_bins", 80))
        self.multilingual = int(config.get("vocab_size", 51865)) >= 51865
        self.tokenizer = Tokenizer.from_file(folder / "tokenizer.json", self.multilingual)
        self.settings = chosen
        self.forced_tokens_per_30s = settings.forced_tokens_per_30s
        self.model_suppress = model_suppress_tokens(folder)
        self.scores = settings.vllm_scores
        args = engine_args(folder, chosen, settings)
        os.environ[ADMIT_EVERY_ENV] = str(settings.vllm_admit_every_steps)  # for vLLM's engine core
        register()  # also vLLM's general plugin; here for a source tree on the path, before vLLM forks
        self.rule_tokens = RuleTokens.of(self.tokenizer)
        self.max_batch_size = int(args["max_num_seqs"])
        llm = LLM(**args)
        self._llm = llm
        self._driver = EngineDriver(llm.llm_engine)
        self._inputs: FeatureInputs | None = None  # vLLM's own input processing, until ours passes its check
        self._use_feature_inputs(llm.llm_engine.input_processor.input_preprocessor)

    def _use_feature_inputs(self, preprocessor: Any) -> None:
        """Windows with our log-mel from now on (callers compute it), where it matches vLLM's and a window so
        made decodes; else callers send samples and vLLM computes its own."""
        self._inputs = FeatureInputs.from_vllm(preprocessor, self.tokenizer.sot, self.n_mels)
        if self._inputs is not None:
            samples = check_window()
            try:
                self.detect_language([WindowInput(log_mel_window(samples, self.n_mels), (), 30_000)])
            except Exception:
                log.warning("a window with our log-mel failed in vLLM; vLLM computes the log-mel", exc_info=True)
                self._inputs = None
        if self._inputs is None:
            self.capabilities = replace(self.capabilities, log_mel_input=False)
        elif self._inputs.bf16:  # the features vLLM would have made: callers send them in half the bytes
            self.capabilities = replace(self.capabilities, log_mel_bf16=True)

    def _engine_input(self, window: WindowInput) -> dict[str, Any]:
        if self._inputs is not None and window.features is not None:
            return self._inputs.build(window.features, window.prompt)
        return engine_prompt(window)

    def _submit(
        self, windows: Sequence[WindowInput], kwargs: Sequence[dict[str, Any]], cancellation: Cancellation | None = None
    ) -> list[Any]:
        from vllm import SamplingParams
        from vllm.sampling_params import RequestOutputKind

        params = [SamplingParams(**kw, output_kind=RequestOutputKind.FINAL_ONLY) for kw in kwargs]
        # The driver empties the list it is given as vLLM takes each window: handed-over windows go as they are,
        # a caller's own as a copy of the list.
        taken = windows if isinstance(windows, HandedOverWindows) else list(windows)
        return self._driver.submit(taken, params, self._engine_input, cancellation)

    def generate(
        self, windows: Sequence[WindowInput], options: SamplingOptions, cancellation: Cancellation | None = None
    ) -> list[Generation]:
        if options.beam_size > 1:
            raise UnsupportedFeatureError("the vllm engine has no beam search", param="beam_size")
        kwargs = [self._sampling_kwargs(w, options) for w in windows]
        read_after = [(w.prompt, w.duration_ms) for w in windows]  # the windows themselves may be gone by then
        outputs = self._submit(windows, kwargs, cancellation)
        generations = []
        for (prompt, duration_ms), output in zip(read_after, outputs, strict=True):
            completion = output.outputs[0]
            no_speech = None
            if options.no_speech_prob:
                no_speech = no_speech_probability(prompt, output.prompt_logprobs, self.tokenizer)
            generation = to_generation(
                completion.token_ids, completion.logprobs, no_speech, self.tokenizer.eot, options.token_logprobs
            )
            if self.forced_tokens_per_30s is not None:
                generation = self._as_complete(generation, duration_ms)
            generations.append(generation)
        return generations

    def _sampling_kwargs(self, window: WindowInput, options: SamplingOptions) -> dict[str, Any]:
        rules = self._rules(window, options)
        kwargs = sampling_kwargs(
            options, len(window.prompt), self._forced(window), self.scores, self.model_suppress, rules
        )
        if options.temperature > 0:  # Whisper's fallback: each window's draws are its own
            kwargs["seed"] = sampling_seed(window, options.temperature)
        return kwargs

    def _rules(self, window: WindowInput, options: SamplingOptions) -> dict[str, object]:
        timestamps = self.tokenizer.no_timestamps not in window.prompt
        rules = WindowRules(timestamps, options.suppress_blank, options.max_initial_timestamp_index)
        return rules_args(self.rule_tokens, rules)

    def _as_complete(self, generation: Generation, duration_ms: int) -> Generation:
        """Random weights' output as a finished decode: scores that never ask for a fallback and a last
        timestamp at the window's end, so no tail is decoded again; the work stays what vLLM did."""
        end = self.tokenizer.timestamp_begin + min(duration_ms, 30_000) // MS_PER_TIMESTAMP
        return replace(generation, tokens=(*generation.tokens, end), sum_logprob=0.0, no_speech_prob=0.0)

    def _forced(self, window: WindowInput) -> int | None:
        if self.forced_tokens_per_30s is None:
            return None
        return round(self.forced_tokens_per_30s * window.duration_ms / 30_000)

    def detect_language(self, windows: Sequence[WindowInput]) -> list[dict[str, float]]:
        allowed = list(self.tokenizer.language_tokens.values())
        kwargs = {"temperature": 0.0, "max_tokens": 1, "logprobs": LANGUAGE_TOP_K, "allowed_token_ids": allowed}
        prompts = HandedOverWindows(replace(w, prompt=(self.tokenizer.sot,)) for w in windows)
        let_go(windows)  # their features live on in `prompts` only
        outputs = self._submit(prompts, [kwargs] * len(prompts))
        return [language_probabilities(o.outputs[0].logprobs, self.tokenizer) for o in outputs]

    def align(self, items: Sequence[AlignInput]) -> list[Alignment]:
        raise UnsupportedFeatureError(
            "the vllm engine cannot compute word timestamps", param="timestamp_granularities[]"
        )

    def close(self) -> None:
        self._driver.close()
        del self._llm
