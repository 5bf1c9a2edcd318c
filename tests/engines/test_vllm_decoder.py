"""Steps that start windows through the compiled decoder, with stand-ins for torch's tensors and vLLM's Whisper
model (neither is installed here; on a GPU the option is measured by benchmarks/gpu_probe.py and its text by
benchmarks/gpu_check.py accuracy)."""

from __future__ import annotations

from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any

import pytest

from whisper_endpoint.engines.vllm_decoder import compiled_start_steps_forward


@dataclass
class Rows:
    """A tensor stand-in: rows of numbers; `split` cuts columns, `view` records the shape asked for."""

    rows: list[list[int]]
    shape: tuple[int, ...] = ()

    def split(self, sizes: list[int], dim: int) -> tuple[Rows, Rows]:
        assert dim == -1 and len(sizes) == 2
        return Rows([r[: sizes[0]] for r in self.rows]), Rows([r[sizes[0] :] for r in self.rows])

    def view(self, *shape: int) -> Rows:
        return Rows(self.rows, shape)


def cat(parts: list[Rows], dim: int) -> Rows:
    assert dim == 0
    return Rows([row for part in parts for row in part.rows])


@dataclass
class Impl:
    writes: list[tuple[str, Rows, Rows, Any, Any]] = field(default_factory=list)

    def do_kv_cache_update(self, layer: Any, key: Rows, value: Rows, kv_cache: Any, slots: Any) -> None:
        self.writes.append((layer.layer_name, key, value, kv_cache, slots))


def decoder_layer(index: int, impl: Impl) -> SimpleNamespace:
    attn = SimpleNamespace(
        layer_name=f"decoder.layers.{index}.encoder_attn.attn",
        impl=impl,
        num_kv_heads=1,
        head_size=2,
        head_size_v=2,
        kv_cache=f"cache{index}",
        kv_sharing_target_layer_name=None,
    )

    def kv_proj(states: Rows) -> tuple[Rows, None]:  # keys then values: each row times (layer + 1), twice
        return Rows([[x * (index + 1) for x in row] * 2 for row in states.rows]), None

    return SimpleNamespace(encoder_attn=SimpleNamespace(attn=attn, kv_size=2, kv_proj=kv_proj))


def patched(context: SimpleNamespace) -> tuple[Any, list[Any]]:
    eager_calls: list[Any] = []

    def eager_forward(self: Any, input_ids: Any, positions: Any, encoder_outputs: Any) -> str:
        eager_calls.append(encoder_outputs)
        return "eager"

    return compiled_start_steps_forward(eager_forward, lambda: context, cat), eager_calls


def model_with_decoder(impl: Impl) -> tuple[SimpleNamespace, list[dict[str, Any]]]:
    calls: list[dict[str, Any]] = []

    def decoder(**kwargs: Any) -> str:
        calls.append(kwargs)
        return "compiled"

    layers = [decoder_layer(i, impl) for i in range(2)]
    callable_decoder = type("Decoder", (), {"__call__": lambda self, **kw: decoder(**kw), "layers": layers})()
    return SimpleNamespace(decoder=callable_decoder), calls


def metadata_for(slots: dict[int, Any]) -> dict[str, Any]:
    return {f"decoder.layers.{i}.encoder_attn.attn": SimpleNamespace(slot_mapping=s) for i, s in slots.items()}


def test_a_step_starting_windows_writes_their_cache_then_runs_the_compiled_decoder(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level("INFO", logger="whisper_endpoint.engines.vllm_decoder")
    impl = Impl()
    model, decoder_calls = model_with_decoder(impl)
    context = SimpleNamespace(attn_metadata=metadata_for({0: "slots0", 1: "slots1"}), skip_compiled=True)
    forward, eager_calls = patched(context)
    two_windows = [Rows([[1, 2]]), Rows([[3, 4], [5, 6]])]  # encoder outputs of two new windows

    assert forward(model, "ids", "positions", two_windows) == "compiled"

    assert eager_calls == []
    assert context.skip_compiled is False  # vLLM's decorator now calls the compiled graph
    assert decoder_calls == [{"input_ids": "ids", "positions": "positions", "encoder_hidden_states": None}]
    assert [(name, cache, slots) for name, _, _, cache, slots in impl.writes] == [
        ("decoder.layers.0.encoder_attn.attn", "cache0", "slots0"),
        ("decoder.layers.1.encoder_attn.attn", "cache1", "slots1"),
    ]
    _, key, value, _, _ = impl.writes[1]  # layer 1 projects by 2: keys and values of all three encoder rows
    assert key.rows == value.rows == [[2, 4], [6, 8], [10, 12]]
    assert key.shape == value.shape == (-1, 1, 2)  # [positions, heads, head size], as vLLM's cache update reads
    forward(model, "ids", "positions", two_windows)
    assert [r.getMessage() for r in caplog.records] == ["a step starting windows ran compiled"]  # once, not per step


def test_decode_steps_and_steps_without_slots_keep_vllms_forward() -> None:
    impl = Impl()
    model, decoder_calls = model_with_decoder(impl)
    profiling = SimpleNamespace(attn_metadata=None, skip_compiled=True)  # vLLM's memory-profiling run
    forward, eager_calls = patched(profiling)
    assert forward(model, "ids", "positions", [Rows([[1, 2]])]) == "eager"
    assert forward(model, "ids", "positions", []) == "eager"  # a decode step: vLLM's forward compiles it itself
    assert eager_calls == [[Rows([[1, 2]])], []]
    one_layer_only = SimpleNamespace(attn_metadata=metadata_for({0: "slots0"}), skip_compiled=True)
    forward, _ = patched(one_layer_only)
    assert forward(model, "ids", "positions", [Rows([[1, 2]])]) == "eager"
    assert profiling.skip_compiled and one_layer_only.skip_compiled
    assert impl.writes == [] and decoder_calls == []


def test_a_layer_sharing_another_layers_cache_keeps_vllms_forward() -> None:
    impl = Impl()
    model, decoder_calls = model_with_decoder(impl)
    model.decoder.layers[1].encoder_attn.attn.kv_sharing_target_layer_name = "decoder.layers.0.encoder_attn.attn"
    context = SimpleNamespace(attn_metadata=metadata_for({0: "slots0", 1: "slots1"}), skip_compiled=True)
    forward, _ = patched(context)
    assert forward(model, "ids", "positions", [Rows([[1, 2]])]) == "eager"
    assert impl.writes == [] and decoder_calls == []
