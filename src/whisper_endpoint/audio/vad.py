"""Silero VAD (the ONNX export that faster-whisper ships) run through onnxruntime, streaming."""

from __future__ import annotations

import importlib.util
import os
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np

from whisper_endpoint.errors import EngineUnavailableError

FRAME_SAMPLES = 512  # 32 ms at 16 kHz: the model scores one frame at a time
CONTEXT_SAMPLES = 64  # the model sees the tail of the previous frame too
STATE_SHAPE = (1, 1, 128)
MAX_FRAMES_PER_RUN = 10_000


def _model_path() -> Path:
    # Found without importing faster-whisper, which would import CTranslate2 and PyAV for nothing.
    spec = importlib.util.find_spec("faster_whisper")
    if spec is None or not spec.submodule_search_locations:
        raise EngineUnavailableError("the VAD model comes with faster-whisper: pip install faster-whisper")
    assets = Path(next(iter(spec.submodule_search_locations))) / "assets"
    candidates = sorted(assets.glob("silero_vad*.onnx"))
    if not candidates:
        raise EngineUnavailableError("no Silero VAD ONNX model found in faster-whisper's assets")
    return candidates[-1]


@lru_cache(maxsize=1)
def _session() -> Any:
    # Its telemetry writes a session file (.ses) into the temp dir, which a server must not leave behind.
    os.environ.setdefault("ORT_DISABLE_TELEMETRY", "1")
    import onnxruntime

    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    options.log_severity_level = 4
    return onnxruntime.InferenceSession(str(_model_path()), providers=["CPUExecutionProvider"], sess_options=options)


@dataclass
class VadStream:
    """Speech probabilities for consecutive blocks of one audio stream (the LSTM state carries over)."""

    h: np.ndarray = field(default_factory=lambda: np.zeros(STATE_SHAPE, np.float32))
    c: np.ndarray = field(default_factory=lambda: np.zeros(STATE_SHAPE, np.float32))
    context: np.ndarray = field(default_factory=lambda: np.zeros(CONTEXT_SAMPLES, np.float32))
    leftover: np.ndarray = field(default_factory=lambda: np.zeros(0, np.float32))

    def feed(self, block: np.ndarray, final: bool = False) -> np.ndarray:
        """Probabilities of every whole frame now available; at `final`, the last partial frame is padded."""
        audio = np.concatenate([self.leftover, block.astype(np.float32, copy=False)])
        n_frames = len(audio) // FRAME_SAMPLES
        if final and len(audio) % FRAME_SAMPLES:
            audio = np.pad(audio, (0, FRAME_SAMPLES - len(audio) % FRAME_SAMPLES))
            n_frames += 1
        self.leftover = audio[n_frames * FRAME_SAMPLES :]
        if n_frames == 0:
            return np.zeros(0, np.float32)
        frames = audio[: n_frames * FRAME_SAMPLES].reshape(n_frames, FRAME_SAMPLES)
        contexts = np.concatenate([self.context[None, :], frames[:-1, -CONTEXT_SAMPLES:]])
        self.context = frames[-1, -CONTEXT_SAMPLES:].copy()
        inputs = np.concatenate([contexts, frames], axis=1)
        probs = []
        for i in range(0, n_frames, MAX_FRAMES_PER_RUN):
            out, self.h, self.c = _session().run(
                None, {"input": inputs[i : i + MAX_FRAMES_PER_RUN], "h": self.h, "c": self.c}
            )
            probs.append(np.asarray(out, np.float32).reshape(-1))
        return np.concatenate(probs)
