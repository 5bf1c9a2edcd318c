"""Which attention calls the Triton decoder-attention kernel takes (the kernel itself needs torch and Triton:
`benchmarks/attention_check.py` checks it against a reference, on a CPU with TRITON_INTERPRET=1)."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from whisper_endpoint.engines.vllm_attention import DEFAULT_LAUNCH, LaunchConfig, takes_this_path

DECODER_TYPES = ("decoder", "encoder_decoder")


def _impl(attn_type: str, dcp_world_size: int = 1) -> SimpleNamespace:
    return SimpleNamespace(attn_type=attn_type, dcp_world_size=dcp_world_size)


def test_the_decoders_attention_takes_the_kernel_on_every_step() -> None:
    metadata = SimpleNamespace(max_query_len=4)  # a step that starts windows as well as one that only decodes
    assert takes_this_path(_impl("decoder"), metadata, None, DECODER_TYPES)
    assert takes_this_path(_impl("encoder_decoder"), metadata, None, DECODER_TYPES)
    assert not takes_this_path(_impl("encoder"), metadata, None, DECODER_TYPES)  # vLLM's own path
    assert not takes_this_path(_impl("decoder"), None, None, DECODER_TYPES)  # vLLM's memory-profiling run
    assert not takes_this_path(_impl("decoder"), metadata, object(), DECODER_TYPES)  # fused output quantisation
    assert not takes_this_path(_impl("decoder", dcp_world_size=2), metadata, None, DECODER_TYPES)


def test_a_launch_is_written_as_integers_in_field_order() -> None:
    launch = LaunchConfig.parse("128,8,2,4,1,1,0")
    assert launch == LaunchConfig(
        tokens=128, num_warps=8, num_stages=2, splits=4, prefetch=True, heads_first=True, lanes=False
    )
    assert LaunchConfig.parse(launch.spec()) == launch
    assert LaunchConfig.parse("") == DEFAULT_LAUNCH
    assert LaunchConfig.parse("32") == LaunchConfig(tokens=32)
    assert DEFAULT_LAUNCH.spec() == "128,4,3,1,0,0,1"
    assert LaunchConfig.parse("64,4,2,1,0,0,1") == LaunchConfig(tokens=64, num_warps=4, num_stages=2, lanes=True)
    with pytest.raises(ValueError, match="lanes do not prefetch"):  # a launch of six fields keeps the default lanes
        LaunchConfig.parse("128,8,2,4,1,1")
    with pytest.raises(ValueError, match="at most 7 fields"):
        LaunchConfig.parse("1,2,3,4,5,6,7,8")
    with pytest.raises(ValueError, match="lanes do not prefetch"):
        LaunchConfig.parse("64,4,1,1,1,0,1")
    with pytest.raises(ValueError, match="splits must be a power of 2, not 3"):
        LaunchConfig.parse("32,8,1,3")
    with pytest.raises(ValueError, match="tokens must be a power of 2, not 48"):
        LaunchConfig.parse("48")
    with pytest.raises(ValueError, match="at least one loop stage"):
        LaunchConfig.parse("32,8,0")


def test_the_kernel_check_times_the_default_launch_and_only_valid_ones() -> None:
    from benchmarks.attention_check import LAUNCHES  # torch and Triton only when it runs

    launches = [LaunchConfig.parse(spec) for spec in LAUNCHES]  # a six-field launch with prefetch is refused
    assert DEFAULT_LAUNCH in launches
    assert all(len(spec.split(",")) == 7 for spec in LAUNCHES)  # six fields would take the default's lanes
