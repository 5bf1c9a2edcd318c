"""A speaker encoder in numpy: Resemblyzer's GE2E voice encoder (3 LSTM layers of 256 over 40 mel bands).

Its weights ship in the `Resemblyzer` package (Apache-2.0) on the package index, which also pulls in torch and
librosa; we read the weights without either (`pip install --no-deps resemblyzer`). One embedding describes a
1.6 s slice of speech: 256 non-negative numbers of unit length, so a dot product is a cosine similarity.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from whisper_endpoint.audio.features import HOP_LENGTH, N_FFT, mel_filters, power_spectrum
from whisper_endpoint.diarization.checkpoint import load_legacy_checkpoint
from whisper_endpoint.errors import DiarizationUnavailableError

N_MELS = 40
EMBEDDING_SIZE = 256
SLICE_FRAMES = 160  # mel frames (10 ms each) in one embedded slice: 1.6 s, as the encoder was trained
SLICE_SAMPLES = SLICE_FRAMES * HOP_LENGTH
TARGET_DBFS = -30.0  # the training audio's loudness; quieter input is raised to it
WEIGHTS_PACKAGE = "resemblyzer"
INSTALL_HINT = "pip install --no-deps resemblyzer==0.1.4  (its weights are read without torch or librosa)"


@dataclass(frozen=True)
class EncoderWeights:
    """One (input, recurrent, bias) triple per LSTM layer, gates in torch's order (input, forget, cell, output)."""

    layers: tuple[tuple[np.ndarray, np.ndarray, np.ndarray], ...]
    linear_weight: np.ndarray
    linear_bias: np.ndarray


def weights_path() -> Path:
    spec = importlib.util.find_spec(WEIGHTS_PACKAGE)  # finds the package without importing it (and torch)
    if spec is None or spec.origin is None:
        raise DiarizationUnavailableError(f"speaker diarization needs the voice encoder's weights: {INSTALL_HINT}")
    path = Path(spec.origin).parent / "pretrained.pt"
    if not path.is_file():
        raise DiarizationUnavailableError(f"{path} is missing; reinstall: {INSTALL_HINT}")
    return path


def load_weights(path: Path) -> EncoderWeights:
    state = load_legacy_checkpoint(path)["model_state"]
    layers = []
    for index in range(3):
        bias = state[f"lstm.bias_ih_l{index}"] + state[f"lstm.bias_hh_l{index}"]
        layers.append((state[f"lstm.weight_ih_l{index}"].T.copy(), state[f"lstm.weight_hh_l{index}"].T.copy(), bias))
    return EncoderWeights(tuple(layers), state["linear.weight"].T.copy(), state["linear.bias"])


def mel_power(samples: np.ndarray, centered: bool = True) -> np.ndarray:
    """Mel power spectrogram as the encoder was trained on (no log), a frame every 10 ms: [frames, 40].
    `centered`: frame i is centred on sample 160 i (zeros beyond the ends); else it starts there."""
    power = power_spectrum(np.pad(samples.astype(np.float32), N_FFT // 2 if centered else 0))
    result: np.ndarray = power @ mel_filters(N_MELS).T
    return result


def frame_power(samples: np.ndarray) -> np.ndarray:
    """Mean square of each uncentred 25 ms frame, every 10 ms (the frames of `mel_power(..., centered=False)`)."""
    n_frames = 1 + (len(samples) - N_FFT) // HOP_LENGTH
    squares = np.concatenate([[0.0], np.cumsum(np.square(samples, dtype=np.float64))])
    starts = np.arange(n_frames) * HOP_LENGTH
    result: np.ndarray = (squares[starts + N_FFT] - squares[starts]) / N_FFT
    return result


def loudness_gain(mean_square: float) -> np.float32:
    """The factor on mel power that brings speech of this mean square to the training loudness (-30 dBFS)."""
    if mean_square <= 0:
        return np.float32(1.0)
    return np.float32(10 ** (TARGET_DBFS / 10) / mean_square)


def _sigmoid(x: np.ndarray) -> np.ndarray:
    result: np.ndarray = 0.5 * (1.0 + np.tanh(0.5 * x))  # no overflow for large |x|
    return result


class VoiceEncoder:
    def __init__(self, weights: EncoderWeights) -> None:
        self.weights = weights

    @classmethod
    def load(cls) -> VoiceEncoder:
        return cls(load_weights(weights_path()))

    def embed_mels(self, mels: np.ndarray) -> np.ndarray:
        """Embeddings of a batch of mel slices [batch, frames, 40] -> [batch, 256], each of unit length."""
        batch, n_frames, _ = mels.shape
        inputs = mels.astype(np.float32)
        hidden = np.zeros((batch, 0), np.float32)
        for w_input, w_recurrent, bias in self.weights.layers:
            size = w_recurrent.shape[0]
            projected = (inputs.reshape(batch * n_frames, -1) @ w_input + bias).reshape(batch, n_frames, 4 * size)
            hidden = np.zeros((batch, size), np.float32)
            cell = np.zeros((batch, size), np.float32)
            outputs = np.empty((batch, n_frames, size), np.float32)
            for t in range(n_frames):
                gates = projected[:, t] + hidden @ w_recurrent
                input_gate = _sigmoid(gates[:, :size])
                forget_gate = _sigmoid(gates[:, size : 2 * size])
                candidate = np.tanh(gates[:, 2 * size : 3 * size])
                output_gate = _sigmoid(gates[:, 3 * size :])
                cell = forget_gate * cell + input_gate * candidate
                hidden = output_gate * np.tanh(cell)
                outputs[:, t] = hidden
            inputs = outputs
        raw = np.maximum(hidden @ self.weights.linear_weight + self.weights.linear_bias, 0)
        norms = np.linalg.norm(raw, axis=1, keepdims=True)
        result: np.ndarray = raw / np.maximum(norms, 1e-12)
        return result.astype(np.float32)
