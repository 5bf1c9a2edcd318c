"""Steps that start new windows through vLLM's compiled decoder (always on: with admitting new windows every 4th
step it won through HTTP, 2,143x against 1,906x on one H100, docs/history/benchmarks-2026-11.md).

vLLM 0.26 runs Whisper's whole decoder eagerly, layer by layer from Python, on any step that encodes new audio
(`skip_compiled`): on such a step the decoder's cross-attention projects the new windows' encoder output to keys
and values, which the decode steps' compiled graph never does. Under a steady stream of requests a few windows
start on nearly every step, so hundreds of decoding windows ran eagerly with them (through HTTP, 62 % of the
engine core's samples were the model's eager Python, this decoder and the encoder).

Here such a step first projects the new windows' cross-attention keys and values and writes them to the KV
cache, layer by layer (a GEMM and a cache write each), with the slots vLLM computed for that step; then the
decoder runs compiled with no encoder states, its cross-attention reading every window's keys and values from
the cache as on decode steps. The same arithmetic in another order; the step still runs without CUDA graphs
(vLLM captures decode-only steps), but through the compiled code instead of the modules' Python.

`vllm_model.EndpointWhisper`, the model class this server registers with vLLM, runs its steps through here.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import Any

log = logging.getLogger(__name__)


def write_cross_attention_cache(layers: Sequence[Any], encoder_states: Any, metadata: dict[str, Any]) -> None:
    """Each decoder layer's cross-attention keys and values of `encoder_states` (the step's new windows, in the
    order vLLM concatenates them) into its KV cache, at the slots vLLM's cross-attention metadata gives."""
    for layer in layers:
        cross = layer.encoder_attn
        attn = cross.attn
        kv, _ = cross.kv_proj(encoder_states)
        key, value = kv.split([cross.kv_size, cross.kv_size], dim=-1)
        attn.impl.do_kv_cache_update(
            attn,
            key.view(-1, attn.num_kv_heads, attn.head_size),
            value.view(-1, attn.num_kv_heads, attn.head_size_v),
            attn.kv_cache,
            metadata[attn.layer_name].slot_mapping,
        )


def can_write_first(layers: Sequence[Any], metadata: Any) -> bool:
    """Whether this step's cross-attention metadata gives every layer's slots (vLLM's memory-profiling run has
    none, and a layer that shares another's cache writes nothing)."""
    if not isinstance(metadata, dict):
        return False
    for layer in layers:
        attn = layer.encoder_attn.attn
        if attn.kv_sharing_target_layer_name is not None:
            return False
        if getattr(metadata.get(attn.layer_name), "slot_mapping", None) is None:
            return False
    return True


def compiled_start_steps_forward(
    eager_forward: Callable[..., Any], get_forward_context: Callable[[], Any], cat: Callable[..., Any]
) -> Callable[..., Any]:
    """A forward for vLLM's WhisperModel that writes new windows' cross-attention cache first and runs the
    compiled decoder; vLLM's own `eager_forward` where it cannot."""

    logged: set[bool] = set()  # which way a step starting windows went, logged once each (in vLLM's engine core)

    def forward(self: Any, input_ids: Any, positions: Any, encoder_outputs: Sequence[Any]) -> Any:
        if not encoder_outputs:
            return eager_forward(self, input_ids, positions, encoder_outputs)
        context = get_forward_context()
        layers = self.decoder.layers
        compiled = can_write_first(layers, context.attn_metadata)
        if compiled not in logged:
            logged.add(compiled)
            log.info("a step starting windows ran %s", "compiled" if compiled else "eagerly (no cross-attention slots)")
        if not compiled:
            return eager_forward(self, input_ids, positions, encoder_outputs)
        write_cross_attention_cache(layers, cat(list(encoder_outputs), dim=0), context.attn_metadata)
        context.skip_compiled = False  # the decoder's graph now matches a decode step's: no encoder states
        return self.decoder(input_ids=input_ids, positions=positions, encoder_hidden_states=None)

    return forward
