"""Decode any container/codec PyAV understands into 16 kHz mono float32 blocks, streaming."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import av
import numpy as np

from whisper_endpoint.audio import SAMPLE_RATE
from whisper_endpoint.errors import AudioDecodeError, AudioTooLongError

log = logging.getLogger(__name__)

BLOCK_SAMPLES = 30 * SAMPLE_RATE  # what one yielded block holds at most
MAX_BAD_PACKETS = 16  # more corrupt packets than this and we refuse the file
PYAV_MAJOR = int(av.__version__.split(".")[0])
# PyAV 19 resamples through a filter graph with a thread per core by default, and a finished decode's graph
# lives on until Python's cycle collector runs: on 16 cores each front-end process carried 323-383 threads.
RESAMPLER_OPTIONS: dict[str, Any] = {"threads": 1} if PYAV_MAJOR >= 19 else {}


@dataclass(frozen=True)
class AudioSource:
    """A file to decode. `raw_pcm` marks headerless s16le/16 kHz/mono input, which has no header to probe."""

    path: Path
    raw_pcm: bool = False
    max_duration_s: float | None = None


def probe_duration_s(source: AudioSource) -> float | None:
    """The container's idea of the duration (for progress bars); None when it does not say."""
    if source.raw_pcm:
        return source.path.stat().st_size / 2 / SAMPLE_RATE
    try:
        with _open(source) as container:
            if container.duration:
                return float(container.duration) / av.time_base
            stream = container.streams.audio[0]
            if stream.duration and stream.time_base:
                return float(stream.duration * stream.time_base)
    except (AudioDecodeError, IndexError):
        return None
    return None


def iter_audio(source: AudioSource, block_samples: int = BLOCK_SAMPLES) -> Iterator[np.ndarray]:
    """Yield float32 mono 16 kHz blocks of at most `block_samples`; memory stays at one block."""
    pending: list[np.ndarray] = []
    pending_len = 0
    total = 0
    limit = None if source.max_duration_s is None else int(source.max_duration_s * SAMPLE_RATE)
    for piece in _decoded_pieces(source):
        pending.append(piece)
        pending_len += len(piece)
        total += len(piece)
        if limit is not None and total > limit:
            raise AudioTooLongError(f"audio is longer than the {source.max_duration_s:.0f} s limit", param="file")
        while pending_len >= block_samples:
            joined = np.concatenate(pending)
            yield joined[:block_samples]
            rest = joined[block_samples:]
            pending, pending_len = ([rest] if len(rest) else []), len(rest)
    if pending_len:
        yield np.concatenate(pending)
    if total == 0:
        raise AudioDecodeError("the file contains no audio samples", param="file")


def load_audio(source: AudioSource) -> np.ndarray:
    """The whole file as one array (for short clips and tests)."""
    blocks = list(iter_audio(source))
    return np.concatenate(blocks) if blocks else np.zeros(0, np.float32)


def _open(source: AudioSource) -> Any:
    try:
        if source.raw_pcm:
            return av.open(
                str(source.path), format="s16le", options={"sample_rate": str(SAMPLE_RATE), "ch_layout": "mono"}
            )
        if PYAV_MAJOR >= 19:  # PyAV 19 dropped the option and no longer fails on bad tags
            return av.open(str(source.path))
        return av.open(str(source.path), metadata_errors="ignore")
    except (av.FFmpegError, UnicodeDecodeError, ValueError) as exc:
        raise AudioDecodeError(
            "the file could not be decoded as audio: unsupported or corrupt container "
            f"({_reason(exc)}); headerless PCM must be declared as s16le, 16 kHz, mono",
            param="file",
        ) from exc


def _decoded_pieces(source: AudioSource) -> Iterator[np.ndarray]:
    with _open(source) as container:
        if not container.streams.audio:
            raise AudioDecodeError(
                "the file has no audio stream (headerless PCM must be declared as s16le, 16 kHz, mono)", param="file"
            )
        stream = container.streams.audio[0]
        if stream.codec_context is None:  # e.g. a WAV header with 0 bits per sample
            raise AudioDecodeError("the audio stream's codec parameters are invalid or unsupported", param="file")
        # One decoder thread per file: requests decode in parallel already, and a server's worth of
        # frame-threaded decoders, each with a thread per core, measured slower than none.
        stream.codec_context.thread_count = 1
        resampler = av.AudioResampler(format="flt", layout="mono", rate=SAMPLE_RATE, **RESAMPLER_OPTIONS)
        bad_packets = 0
        try:
            for packet in container.demux(stream):
                try:
                    frames = packet.decode()
                except av.FFmpegError as exc:
                    # A damaged packet (e.g. a truncated last frame) loses its own few ms, not the file.
                    bad_packets += 1
                    log.warning("skipping undecodable audio packet in %s: %s", source.path.name, _reason(exc))
                    if bad_packets > MAX_BAD_PACKETS:
                        raise AudioDecodeError(
                            f"the audio stream is corrupt ({bad_packets} undecodable packets)", param="file"
                        ) from exc
                    continue
                for frame in frames:
                    frame.pts = None  # the resampler must not try to fill gaps in broken timestamps
                    for out in resampler.resample(frame):
                        yield out.to_ndarray().reshape(-1).astype(np.float32, copy=False)
        except av.FFmpegError as exc:
            raise AudioDecodeError(f"the audio could not be decoded ({_reason(exc)})", param="file") from exc
        for out in resampler.resample(None):
            yield out.to_ndarray().reshape(-1).astype(np.float32, copy=False)


def _reason(exc: BaseException) -> str:
    """FFmpeg's own words, without the file name (which is a server-side temp path)."""
    reason = getattr(exc, "strerror", None) or str(exc).split(":", 1)[0]
    return str(reason).split("] ", 1)[-1].strip() or type(exc).__name__
