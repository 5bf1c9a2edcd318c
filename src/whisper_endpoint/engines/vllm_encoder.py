"""Whisper's encoder layers compiled with torch.compile inside vLLM (an option, off by default).

vLLM 0.26 compiles Whisper's decoder but runs the encoder eagerly: a dozen kernels per layer, each launched
from Python. Compiling one encoder layer's forward fuses its layer norms, adds, GELU and clamp into a few
inductor kernels; all 32 layers share the one compiled graph (their parameters are its inputs), and the batch
dimension is dynamic, so steps that start any number of windows reuse it. Measured on one H100: the fused
kernels take as much GPU time as the eager ones, the launches saved make the encoder-bound 1-token decode 15 %
faster and full windows 2 to 3 % (docs/history/benchmarks-2026-11.md); it costs about 35 s of compilation at start.

The patch is made on vLLM's class in this process before vLLM starts its engine core, which inherits it
(vLLM forks its engine core unless CUDA is initialised here, and the engine never initialises it).
"""

from __future__ import annotations

import logging
from typing import Any

log = logging.getLogger(__name__)
PATCHED_MARK = "_whisper_endpoint_compiled"


def compile_encoder_layers() -> bool:
    """Route vLLM's WhisperEncoderLayer.forward through torch.compile, once; False where vLLM (or its
    Whisper encoder layer) is not there."""
    try:
        import torch
        from vllm.model_executor.models import whisper
    except ImportError:
        return False
    layer = getattr(whisper, "WhisperEncoderLayer", None)
    if layer is None:
        return False
    if getattr(layer.forward, PATCHED_MARK, False):
        return True
    compiled = torch.compile(layer.forward, dynamic=True)

    def forward(self: Any, hidden_states: Any) -> Any:
        return compiled(self, hidden_states)

    setattr(forward, PATCHED_MARK, True)
    layer.forward = forward
    log.info("vLLM engine: Whisper's encoder layers run compiled (torch.compile, dynamic batch)")
    return True
