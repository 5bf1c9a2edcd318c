"""vLLM's Whisper with this server's two changes, registered with vLLM as a model and an attention backend
of their own (`vllm_plugin`): no method of vLLM's classes is replaced.

- `EndpointWhisper`: steps that start new windows run the compiled decoder (`vllm_decoder`).
- `WhisperAttentionBackend`: vLLM's FlashAttention backend, whose decoder attention (self and cross) runs on
  our Triton kernel with bf16 queries when the KV cache is fp8 e4m3 (`vllm_attention`).

vLLM imports this module by name, in its engine core, when the engine's arguments ask for either.
"""

from __future__ import annotations

from typing import Any

import torch
from vllm.forward_context import get_forward_context
from vllm.model_executor.models.whisper import (
    WhisperDummyInputsBuilder,
    WhisperForConditionalGeneration,
    WhisperModel,
    WhisperMultiModalProcessor,
    WhisperProcessingInfo,
)
from vllm.multimodal import MULTIMODAL_REGISTRY
from vllm.v1.attention.backend import AttentionType
from vllm.v1.attention.backends.flash_attn import FlashAttentionBackend, FlashAttentionImpl

from whisper_endpoint.engines.vllm_attention import DEFAULT_LAUNCH, paged_attention, takes_this_path
from whisper_endpoint.engines.vllm_decoder import compiled_start_steps_forward

DECODER_TYPES = (AttentionType.DECODER, AttentionType.ENCODER_DECODER)
_start_step_forward = compiled_start_steps_forward(WhisperModel.forward, get_forward_context, torch.cat)


# vLLM finds a model's input processing by its class: the subclass names Whisper's own.
@MULTIMODAL_REGISTRY.register_processor(
    WhisperMultiModalProcessor, info=WhisperProcessingInfo, dummy_inputs=WhisperDummyInputsBuilder
)
class EndpointWhisper(WhisperForConditionalGeneration):  # type: ignore[misc]  # vLLM is untyped here
    def forward(self, input_ids: Any, positions: Any, encoder_outputs: list[Any] | None = None, **kwargs: Any) -> Any:
        return _start_step_forward(self.model, input_ids, positions, encoder_outputs or [])


class WhisperAttentionImpl(FlashAttentionImpl):  # type: ignore[misc]
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if self.attn_type in DECODER_TYPES:
            self.supports_quant_query_input = False  # read when vLLM builds the attention layer: bf16 queries
        self._scale_one: torch.Tensor | None = None

    def forward(
        self,
        layer: Any,
        query: Any,
        key: Any,
        value: Any,
        kv_cache: Any,
        attn_metadata: Any,
        output: Any,
        output_scale: Any = None,
        output_block_scale: Any = None,
    ) -> Any:
        if not takes_this_path(self, attn_metadata, output_scale, DECODER_TYPES):
            return super().forward(
                layer, query, key, value, kv_cache, attn_metadata, output, output_scale, output_block_scale
            )
        if kv_cache.dtype == torch.uint8:  # vLLM keeps an fp8 cache as bytes
            kv_cache = kv_cache.view(torch.float8_e4m3fn)
        if query.dtype == torch.float8_e4m3fn:  # quantised by vLLM's attention layer after all, with this scale
            q_scale = layer._q_scale
        else:
            if self._scale_one is None:
                self._scale_one = torch.ones(1, dtype=torch.float32, device=query.device)
            q_scale = self._scale_one
        heads, head_size = self.num_heads, self.head_size
        paged_attention(
            query.view(-1, heads, head_size),
            kv_cache,
            attn_metadata.block_table,
            attn_metadata.seq_lens,
            attn_metadata.query_start_loc,
            output.view(-1, heads, head_size),
            (q_scale, layer._k_scale, layer._v_scale),
            self.scale,
            causal=self.attn_type == AttentionType.DECODER,
            num_query_tokens=attn_metadata.num_actual_tokens,
            launch=DEFAULT_LAUNCH,
        )
        return output


class WhisperAttentionBackend(FlashAttentionBackend):  # type: ignore[misc]
    """vLLM's FlashAttention backend in every way (name, metadata, cache layout) but the decoder's attention."""

    @staticmethod
    def get_impl_cls() -> type[WhisperAttentionImpl]:
        return WhisperAttentionImpl
