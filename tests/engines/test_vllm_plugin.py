"""How this server plugs into vLLM: only through vLLM's registries and engine arguments (vLLM needs a GPU, so
its registries are stand-ins here; tests/gpu runs the real ones)."""

from __future__ import annotations

import ast
import importlib.metadata
import tomllib
from pathlib import Path
from typing import Any

import pytest

from tests.engines.stand_ins import install_modules
from whisper_endpoint.config import Settings
from whisper_endpoint.decoding.rules import ARGS_KEY, RuleTokens, WindowRules, rules_args
from whisper_endpoint.engines import vllm_plugin
from whisper_endpoint.engines.base import SamplingOptions
from whisper_endpoint.engines.vllm import choose_settings, engine_args, sampling_kwargs

ROOT = Path(__file__).parents[2]


def defined_in(dotted: str) -> bool:
    """Whether `module:Class` or `module.Class` names a class defined in our source (without importing it)."""
    module, _, name = dotted.replace(":", ".").rpartition(".")
    path = ROOT / "src" / Path(*module.split(".")).with_suffix(".py")
    tree = ast.parse(path.read_text())
    return any(isinstance(node, ast.ClassDef) and node.name == name for node in tree.body)


def test_register_names_our_model_and_attention_backend_to_vllms_registries(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[tuple[str, Any, Any]] = []

    class Registry:
        @staticmethod
        def register_model(arch: str, cls: str) -> None:
            calls.append(("model", arch, cls))

    class Backends:
        CUSTOM = "custom slot"

    install_modules(
        monkeypatch,
        {
            "vllm": {"ModelRegistry": Registry},
            "vllm.v1.attention.backends.registry": {
                "AttentionBackendEnum": Backends,
                "register_backend": lambda slot, path: calls.append(("backend", slot, path)),
            },
        },
    )
    vllm_plugin.register()
    assert calls == [
        ("model", "WhisperEndpointForConditionalGeneration", vllm_plugin.MODEL),
        ("backend", "custom slot", vllm_plugin.ATTENTION_BACKEND),
    ]
    for name in (vllm_plugin.MODEL, vllm_plugin.ATTENTION_BACKEND, vllm_plugin.RULES, vllm_plugin.SCHEDULER):
        assert defined_in(name), name


def test_the_plugin_is_declared_where_vllm_looks_for_it() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    plugins = project["entry-points"]["vllm.general_plugins"]
    assert plugins == {"whisper_endpoint": "whisper_endpoint.engines.vllm_plugin:register"}
    installed = importlib.metadata.entry_points(group="vllm.general_plugins")
    assert [e.value for e in installed if e.name == "whisper_endpoint"] == [plugins["whisper_endpoint"]]


def test_the_engine_selects_what_was_registered(tmp_path: Path) -> None:
    default = Settings()
    args = engine_args(tmp_path, choose_settings(default, (9, 0)), default)
    assert args["hf_overrides"] == {"architectures": [vllm_plugin.ARCHITECTURE]}
    assert args["logits_processors"] == [vllm_plugin.RULES]
    assert args["attention_config"] == {"backend": "CUSTOM"}  # fp8 e4m3 cache: our decoder attention
    assert args["scheduler_cls"] == vllm_plugin.SCHEDULER
    bf16 = Settings(kv_cache_dtype="bfloat16", vllm_admit_every_steps=1)
    plain = engine_args(tmp_path, choose_settings(bf16, (9, 0)), bf16)
    assert "attention_config" not in plain and "scheduler_cls" not in plain  # vLLM's own FlashAttention, scheduler
    assert plain["logits_processors"] == [vllm_plugin.RULES]  # Whisper's rules whatever the cache


def test_each_decoded_window_carries_its_rules_and_language_detection_none() -> None:
    tokens = RuleTokens(eot=50257, no_timestamps=50363, timestamp_begin=50364, blank=(220,))
    rules = rules_args(tokens, WindowRules(timestamps=True))
    kwargs = sampling_kwargs(SamplingOptions(), prompt_len=4, rules=rules)
    assert kwargs["extra_args"] == {ARGS_KEY: rules}
    assert "extra_args" not in sampling_kwargs(SamplingOptions(), prompt_len=4)
