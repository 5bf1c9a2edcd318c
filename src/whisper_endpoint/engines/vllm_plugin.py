"""Where this server plugs into vLLM, through vLLM's own extension points only.

- a model architecture (`ModelRegistry`), chosen per engine with `hf_overrides`;
- an attention backend in vLLM's CUSTOM slot, chosen with `attention_config`;
- a logits processor for Whisper's decoding rules (`logits_processors`, by name);
- a scheduler class (`scheduler_cls`, by name).

`register` is also vLLM's general plugin (`vllm.general_plugins` in pyproject.toml), which vLLM runs in
every process it starts; the engine calls it itself too, so an install without entry points (a source tree
on the path) works where vLLM forks its engine core. Registering does nothing until an engine asks.
"""

from __future__ import annotations

from typing import Any

ARCHITECTURE = "WhisperEndpointForConditionalGeneration"
MODEL = "whisper_endpoint.engines.vllm_model:EndpointWhisper"
ATTENTION_BACKEND = "whisper_endpoint.engines.vllm_model.WhisperAttentionBackend"
RULES = "whisper_endpoint.engines.vllm_rules:WhisperRules"
SCHEDULER = "whisper_endpoint.engines.vllm_scheduler.BurstScheduler"


def register() -> None:
    """Name our model and attention backend to vLLM (lazily: nothing of them is imported here)."""
    from vllm import ModelRegistry
    from vllm.v1.attention.backends.registry import AttentionBackendEnum, register_backend

    ModelRegistry.register_model(ARCHITECTURE, MODEL)
    register_backend(AttentionBackendEnum.CUSTOM, ATTENTION_BACKEND)


def plugin_args(triton_attention: bool, admit_every_steps: int) -> dict[str, Any]:
    """The engine arguments that select what `register` named, and our rules and scheduler."""
    args: dict[str, Any] = {
        "hf_overrides": {"architectures": [ARCHITECTURE]},
        "logits_processors": [RULES],
    }
    if triton_attention:
        args["attention_config"] = {"backend": "CUSTOM"}
    if admit_every_steps > 1:
        args["scheduler_cls"] = SCHEDULER
    return args
