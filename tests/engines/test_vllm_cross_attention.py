"""Which attention calls the Triton cross-attention takes (the kernel itself needs torch and Triton:
`benchmarks/cross_attention_check.py` checks it against a reference, on a CPU with TRITON_INTERPRET=1)."""

from __future__ import annotations

import sys
from types import SimpleNamespace

import pytest

from whisper_endpoint.engines.vllm_cross_attention import patch_flash_attention, takes_this_path

CROSS, SELF = "encoder_decoder", "decoder"


def _metadata(max_query_len: int = 1, use_cascade: bool = False) -> SimpleNamespace:
    return SimpleNamespace(max_query_len=max_query_len, use_cascade=use_cascade)


def test_only_cross_attention_of_decode_only_steps_takes_the_kernel() -> None:
    cross = SimpleNamespace(attn_type=CROSS, dcp_world_size=1)
    assert takes_this_path(cross, _metadata(), None, CROSS)
    assert not takes_this_path(SimpleNamespace(attn_type=SELF), _metadata(), None, CROSS)  # self-attention
    assert not takes_this_path(cross, _metadata(max_query_len=4), None, CROSS)  # a step with prompts
    assert not takes_this_path(cross, None, None, CROSS)  # vLLM's memory-profiling run
    assert not takes_this_path(cross, _metadata(use_cascade=True), None, CROSS)
    assert not takes_this_path(cross, _metadata(), object(), CROSS)  # fused output quantisation
    assert not takes_this_path(SimpleNamespace(attn_type=CROSS, dcp_world_size=2), _metadata(), None, CROSS)


def test_without_vllm_nothing_is_patched(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "vllm", None)
    assert patch_flash_attention() is False
