"""known_speaker_names[] and known_speaker_references[]: names, and 2-10 s of each speaker as data URLs."""

from __future__ import annotations

import base64
import binascii
import os
import tempfile
from pathlib import Path

import numpy as np

from whisper_endpoint.audio import SAMPLE_RATE
from whisper_endpoint.audio.decode import AudioSource, load_audio
from whisper_endpoint.diarization.pipeline import MAX_KNOWN_SPEAKERS, KnownSpeaker
from whisper_endpoint.errors import AudioTooLongError, InvalidRequestError, WhisperEndpointError

MIN_REFERENCE_S = 2.0
MAX_REFERENCE_S = 10.0
TOLERANCE_S = 0.05  # encoders pad the last frame
MAX_NAME_CHARS = 64
NAMES = "known_speaker_names[]"
REFERENCES = "known_speaker_references[]"


def _data_url_bytes(url: str, index: int) -> bytes:
    header, comma, payload = url.partition(",")
    if not comma or not header.startswith("data:") or not header.endswith(";base64"):
        raise InvalidRequestError(
            f"known_speaker_references[{index}] must be a base64 data URL (data:audio/...;base64,...)", param=REFERENCES
        )
    try:
        return base64.b64decode(payload, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise InvalidRequestError(f"known_speaker_references[{index}] is not valid base64", param=REFERENCES) from exc


def _samples(data: bytes, index: int, spool_dir: Path) -> np.ndarray:
    fd, name = tempfile.mkstemp(prefix="speaker-", dir=spool_dir)
    try:
        with os.fdopen(fd, "wb") as out:
            out.write(data)
        try:
            samples = load_audio(AudioSource(Path(name), max_duration_s=MAX_REFERENCE_S + TOLERANCE_S))
        except AudioTooLongError as exc:
            raise InvalidRequestError(
                f"known_speaker_references[{index}] is longer than {MAX_REFERENCE_S:.0f} s", param=REFERENCES
            ) from exc
        except WhisperEndpointError as exc:
            raise InvalidRequestError(
                f"known_speaker_references[{index}] is not audio we can decode: {exc.message}", param=REFERENCES
            ) from exc
    finally:
        os.unlink(name)
    if len(samples) < (MIN_REFERENCE_S - TOLERANCE_S) * SAMPLE_RATE:
        raise InvalidRequestError(
            f"known_speaker_references[{index}] is {len(samples) / SAMPLE_RATE:.1f} s long; "
            f"references must be {MIN_REFERENCE_S:.0f} to {MAX_REFERENCE_S:.0f} s",
            param=REFERENCES,
        )
    return samples


def parse_known_speakers(names: list[str], references: list[str], spool_dir: Path) -> tuple[KnownSpeaker, ...]:
    """The known speakers, each reference decoded to 16 kHz samples (file I/O: call it off the event loop)."""
    if len(names) != len(references):
        raise InvalidRequestError(
            f"{NAMES} has {len(names)} entries and {REFERENCES} {len(references)}: give one reference per name",
            param=NAMES,
        )
    if len(names) > MAX_KNOWN_SPEAKERS:
        raise InvalidRequestError(f"at most {MAX_KNOWN_SPEAKERS} known speakers", param=NAMES)
    cleaned = [name.strip() for name in names]
    if any(not name or len(name) > MAX_NAME_CHARS or not name.isprintable() for name in cleaned):
        raise InvalidRequestError(f"each known speaker name is 1 to {MAX_NAME_CHARS} printable characters", param=NAMES)
    if len(set(cleaned)) != len(cleaned):
        raise InvalidRequestError("known speaker names must differ", param=NAMES)
    speakers = []
    for index, (name, url) in enumerate(zip(cleaned, references, strict=True)):
        speakers.append(KnownSpeaker(name, _samples(_data_url_bytes(url, index), index, spool_dir)))
    return tuple(speakers)
