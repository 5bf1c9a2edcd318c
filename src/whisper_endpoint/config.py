"""Server and pipeline settings: command-line flags and WHISPER_* environment variables."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Literal

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

MiB = 1024 * 1024


def default_cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "whisper-endpoint"


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="WHISPER_", extra="ignore")

    model: str = Field("base", description="Bundled alias (base, tiny.en), a local folder or a hub repo id.")
    engine: Literal["auto", "ctranslate2", "vllm"] = "auto"
    device: Literal["auto", "cpu", "cuda"] = "auto"
    compute_type: str = Field("default", description="CTranslate2 compute type; default: int8 on CPU.")
    cpu_threads: int = Field(0, ge=0, description="Threads per engine call; 0 uses every core.")
    cache_dir: Path = Field(default_factory=default_cache_dir)

    host: str = "127.0.0.1"
    port: int = Field(8000, ge=0, le=65535)
    api_key: str | None = None
    metrics_require_key: bool = Field(False, description="/metrics needs the API key too.")
    log_level: str = "info"
    header_timeout_s: float = Field(
        10.0, gt=0, description="A connection that has not sent a whole request head by then gets 408."
    )
    body_timeout_s: float = Field(30.0, gt=0, description="A request body that stalls this long gets 408.")
    max_connections: int = Field(2048, ge=1, description="Open connections at once; more are answered 503 and closed.")

    strategy: Literal["batched", "sequential"] = "batched"
    max_upload_bytes: int = Field(200 * MiB, gt=0)
    max_audio_duration_s: float = Field(4 * 3600.0, gt=0)

    max_batch_size: int = Field(8, ge=1, description="Windows per engine call.")
    batch_wait_ms: float = Field(5.0, ge=0, description="How long a batch waits for more windows.")
    pack_windows: bool = Field(
        True,
        description="Decode short windows of one request (a long file's short speech chunks) as one 30 s "
        "window (CTranslate2: engines the server batches itself). Never across requests.",
    )
    max_queued_audio_s: float = Field(4 * 3600.0, gt=0, description="Admitted audio not yet transcribed.")
    max_inflight_requests: int = Field(64, ge=1)
    request_timeout_s: float = Field(3600.0, gt=0)
    shutdown_grace_s: float = Field(30.0, ge=0)
    metrics_replica: str | None = Field(
        None, description="A replica label on every metric (set per replica by the Ray Serve deployment)."
    )
    worker_threads: int = Field(
        0,
        ge=0,
        description="Requests decoding audio at once in the server's threads (no front-end processes, live "
        "turns); 0 = cores.",
    )
    front_end_processes: int = Field(
        -1,
        ge=-1,
        description="Front-end processes, each of which runs the requests it is given (decode, VAD, log-mel, "
        "the long-form algorithm) and calls the engine itself: -1 = one per core with an engine that batches on "
        "its own (vLLM), none otherwise (requests then run in the server's threads).",
    )

    # vLLM engine (GPU)
    gpus: int = Field(1, ge=0, description="vLLM engines, one per GPU (data parallel); 0: every visible GPU.")
    engine_process: bool = Field(
        True,
        description="The vLLM engine in a process of its own: its input and output processing get their own "
        "interpreter instead of sharing the server's (with --gpus N > 1 engines always run in processes).",
    )
    engine_cpu_split: bool = Field(
        True,
        description="With --gpus N and engine processes: each engine process (and vLLM's engine core under it) "
        "gets its own equal share of this host's cores, so engines do not compete for them.",
    )
    gpu_memory_utilization: float = Field(0.9, gt=0, le=1)
    max_num_seqs: int = Field(256, ge=1)
    kv_cache_dtype: str = Field(
        "auto",
        description="auto: fp8 e4m3 on compute capability >= 8.9. fp8_per_token_head: nearer bf16's WER, slower.",
    )
    enforce_eager: bool = False
    vllm_scores: bool = Field(
        True, description="Per-token log-probabilities and the no-speech probability (the fallback needs them)."
    )
    load_format: str = Field("auto", description="vLLM load format; 'dummy' for speed runs without weights.")
    vllm_admit_every_steps: int = Field(
        4,
        ge=1,
        description="vLLM admits new windows on every Nth step only while others decode, so the steps between "
        "run as CUDA graphs (vLLM runs steps that encode new audio eagerly); 1: on every step. 4 with compiled "
        "start steps (always on) won through HTTP (2,143x against 1,906x in one command on one H100).",
    )
    vllm_triton_attention: bool = Field(
        True,
        description="With an fp8 e4m3 KV cache, the decoder's attention runs on a Triton kernel of ours that keeps "
        "queries in bf16 instead of FlashAttention 3, which rounds them to fp8: nearer bf16's WER, and faster in "
        "the engine on an H100 (docs/history/benchmarks-2026-11.md). false: vLLM's FlashAttention.",
    )
    vllm_engine_args: dict[str, Any] = Field(
        default_factory=dict,
        description='More vLLM engine arguments, as JSON (e.g. {"max_num_batched_tokens": 49152}); they win over '
        "the ones the engine chooses.",
    )
    forced_tokens_per_30s: int | None = Field(
        None,
        ge=1,
        description="Speed runs with dummy weights only: each window decodes exactly this many tokens per 30 s "
        "of its audio, and no window falls back (random weights fail every check).",
    )


# Settings read by one engine only: set for the other, they would do nothing, so start-up refuses them.
VLLM_ONLY = frozenset(
    {
        "gpus",
        "engine_process",
        "engine_cpu_split",
        "gpu_memory_utilization",
        "max_num_seqs",
        "kv_cache_dtype",
        "enforce_eager",
        "vllm_scores",
        "load_format",
        "vllm_admit_every_steps",
        "vllm_triton_attention",
        "vllm_engine_args",
        "forced_tokens_per_30s",
    }
)
CTRANSLATE2_ONLY = frozenset({"cpu_threads", "compute_type", "batch_wait_ms", "pack_windows"})


def settings_unused_by(settings: Settings, engine: str) -> list[str]:
    """The WHISPER_* variables (or arguments) set explicitly that `engine` would ignore."""
    ignored = CTRANSLATE2_ONLY if engine == "vllm" else VLLM_ONLY
    return sorted(f"WHISPER_{name.upper()}" for name in settings.model_fields_set & ignored)
