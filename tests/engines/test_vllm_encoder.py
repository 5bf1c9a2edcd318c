"""The encoder-compiling patch, with stand-ins for torch and vLLM's Whisper module (neither is installed
here; on a GPU the option is measured by benchmarks/gpu_probe.py)."""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import Any

import pytest

from tests.engines.stand_ins import install_modules
from whisper_endpoint.engines.vllm_encoder import compile_encoder_layers


def test_without_vllm_nothing_is_patched(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "vllm", None)  # makes `import vllm...` raise ImportError
    assert compile_encoder_layers() is False


def test_encoder_layers_run_through_one_compiled_forward(monkeypatch: pytest.MonkeyPatch) -> None:
    compiled_calls: list[Any] = []
    compile_requests: list[dict[str, Any]] = []

    def fake_compile(fn: Callable[..., Any], **options: Any) -> Callable[..., Any]:
        compile_requests.append(options)

        def run(*args: Any) -> Any:
            compiled_calls.append(args[1])
            return fn(*args)

        return run

    class WhisperEncoderLayer:
        def __init__(self, scale: int) -> None:
            self.scale = scale

        def forward(self, hidden_states: int) -> int:
            return hidden_states * self.scale

    install_modules(
        monkeypatch,
        {
            "torch": {"compile": fake_compile},
            "vllm.model_executor.models.whisper": {"WhisperEncoderLayer": WhisperEncoderLayer},
        },
    )
    assert compile_encoder_layers() is True
    assert compile_encoder_layers() is True  # a second engine in the process: patched once
    assert compile_requests == [{"dynamic": True}]  # any number of windows per step, one graph
    layers = [WhisperEncoderLayer(2), WhisperEncoderLayer(3)]
    assert [layer.forward(5) for layer in layers] == [10, 15]  # each layer's own parameters
    assert compiled_calls == [5, 5]
