"""Whisper's log-mel spectrogram in numpy: 25 ms Hann windows every 10 ms, 80 or 128 mel bins."""

from __future__ import annotations

from functools import lru_cache

import numpy as np

from whisper_endpoint.audio import SAMPLE_RATE

N_FFT = 400  # samples, 25 ms
HOP_LENGTH = 160  # samples, 10 ms
WINDOW_SECONDS = 30
WINDOW_SAMPLES = WINDOW_SECONDS * SAMPLE_RATE
WINDOW_FRAMES = WINDOW_SAMPLES // HOP_LENGTH  # 3000 mel frames per window
FRAMES_PER_SECOND = SAMPLE_RATE // HOP_LENGTH  # 100
POWER_FLOOR = 1e-10  # mel power below it counts as it, before the log
LOG_RANGE = 8.0  # log10 units kept below the window's loudest bin (80 dB)
LOG_SHIFT = 4.0  # log10 power x becomes (x + LOG_SHIFT) / LOG_SHIFT, about -1 to 1 for speech


@lru_cache(maxsize=4)
def mel_filters(n_mels: int) -> np.ndarray:
    """Slaney-style mel filterbank (as librosa.filters.mel with norm='slaney'), shape [n_mels, 201]."""
    fft_freqs = np.linspace(0, SAMPLE_RATE / 2, N_FFT // 2 + 1)
    f_sp = 200.0 / 3  # Hz per mel below 1 kHz
    min_log_hz = 1000.0
    min_log_mel = min_log_hz / f_sp
    logstep = np.log(6.4) / 27.0

    def hz_to_mel(hz: np.ndarray) -> np.ndarray:
        mel = hz / f_sp
        log_part = min_log_mel + np.log(np.maximum(hz, min_log_hz) / min_log_hz) / logstep
        return np.where(hz >= min_log_hz, log_part, mel)

    def mel_to_hz(mel: np.ndarray) -> np.ndarray:
        hz = f_sp * mel
        log_part = min_log_hz * np.exp(logstep * (mel - min_log_mel))
        return np.where(mel >= min_log_mel, log_part, hz)

    mel_edges = np.linspace(hz_to_mel(np.array(0.0)), hz_to_mel(np.array(SAMPLE_RATE / 2)), n_mels + 2)
    hz_edges = mel_to_hz(mel_edges)
    widths = np.diff(hz_edges)
    ramps = hz_edges[:, None] - fft_freqs[None, :]
    lower = -ramps[:-2] / widths[:-1, None]
    upper = ramps[2:] / widths[1:, None]
    weights = np.maximum(0, np.minimum(lower, upper))
    weights *= (2.0 / (hz_edges[2:] - hz_edges[:-2]))[:, None]
    return weights.astype(np.float32)


@lru_cache(maxsize=1)
def _hann() -> np.ndarray:
    return (0.5 - 0.5 * np.cos(2 * np.pi * np.arange(N_FFT) / N_FFT)).astype(np.float32)  # periodic


def power_spectrum(padded: np.ndarray) -> np.ndarray:
    """Power of each 25 ms Hann-windowed frame of float32 `padded`, a frame starting every 10 ms: [frames, 201]."""
    n_frames = 1 + (len(padded) - N_FFT) // HOP_LENGTH
    frames = np.lib.stride_tricks.as_strided(
        padded, shape=(n_frames, N_FFT), strides=(padded.strides[0] * HOP_LENGTH, padded.strides[0])
    )
    spectrum = np.fft.rfft(frames * _hann(), axis=-1)
    result: np.ndarray = (spectrum.real**2 + spectrum.imag**2).astype(np.float32)
    return result


def log_mel_window(samples: np.ndarray, n_mels: int = 80) -> np.ndarray:
    """Features of one window: `samples` (<= 30 s) zero-padded to 30 s, shape [n_mels, 3000]."""
    if len(samples) > WINDOW_SAMPLES:
        raise ValueError(f"a window holds at most {WINDOW_SAMPLES} samples, got {len(samples)}")
    audio = np.zeros(WINDOW_SAMPLES, dtype=np.float32)
    audio[: len(samples)] = samples
    power = power_spectrum(np.pad(audio, N_FFT // 2, mode="reflect"))[:-1]  # drop the last frame, as Whisper
    mel = mel_filters(n_mels) @ power.T
    log_spec = np.log10(np.maximum(mel, POWER_FLOOR))
    log_spec = np.maximum(log_spec, log_spec.max() - LOG_RANGE)
    result: np.ndarray = ((log_spec + LOG_SHIFT) / LOG_SHIFT).astype(np.float32)
    return result


def bf16_bits(values: np.ndarray) -> np.ndarray:
    """float32 `values` rounded to bfloat16 (to nearest, ties to even, as torch converts), kept as their 16 bits
    (numpy has no bfloat16): what an engine computing in bf16 takes, in half the bytes of float32."""
    bits = np.ascontiguousarray(values, np.float32).view(np.uint32)
    rounded = (bits + np.uint32(0x7FFF) + ((bits >> np.uint32(16)) & np.uint32(1))) >> np.uint32(16)
    return rounded.astype(np.uint16)
