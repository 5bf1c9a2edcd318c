"""The voice encoder: its weights read without torch, and embeddings that tell real speakers apart."""

from __future__ import annotations

import os
import pickle
import struct
from pathlib import Path

import numpy as np
import pytest

from tests.datasets import clips
from whisper_endpoint.audio.decode import AudioSource, iter_audio, load_audio
from whisper_endpoint.diarization import encoder as encoder_module
from whisper_endpoint.diarization.checkpoint import LEGACY_MAGIC, CheckpointError, load_legacy_checkpoint
from whisper_endpoint.diarization.encoder import EMBEDDING_SIZE, VoiceEncoder, load_weights, mel_power, weights_path
from whisper_endpoint.diarization.speakers import embed_speech
from whisper_endpoint.errors import DiarizationUnavailableError


@pytest.fixture(scope="module")
def voice_encoder() -> VoiceEncoder:
    return VoiceEncoder.load()


def test_weights_are_read_without_torch() -> None:
    weights = load_weights(weights_path())
    assert [w.shape for w in weights.layers[0]] == [(40, 1024), (256, 1024), (1024,)]
    assert [w.shape for w in weights.layers[2]] == [(256, 1024), (256, 1024), (1024,)]
    assert weights.linear_weight.shape == (256, 256)
    assert np.isfinite(weights.linear_weight).all() and np.abs(weights.linear_weight).max() > 0


def test_checkpoint_reader_refuses_anything_but_tensors(tmp_path: Path) -> None:
    """A checkpoint is a pickle: one naming any other callable is refused, never run."""

    class Evil:
        def __reduce__(self) -> tuple[object, ...]:
            return (os.system, ("echo pwned",))

    path = tmp_path / "evil.pt"
    with path.open("wb") as out:
        for header in (LEGACY_MAGIC, 1001, {}):
            pickle.dump(header, out)
        pickle.dump({"model_state": Evil()}, out)
    with pytest.raises(CheckpointError, match=r"refusing to load (posix|os)\.system"):
        load_legacy_checkpoint(path)
    path.write_bytes(pickle.dumps(12345) + struct.pack("<q", 0))
    with pytest.raises(CheckpointError, match="not a legacy"):
        load_legacy_checkpoint(path)


def test_missing_weights_say_how_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(encoder_module, "WEIGHTS_PACKAGE", "no_such_package_here")
    with pytest.raises(DiarizationUnavailableError, match="pip install --no-deps resemblyzer"):
        weights_path()


def _voiceprint(encoder: VoiceEncoder, path: Path) -> np.ndarray:
    embedded = embed_speech(iter_audio(AudioSource(path)), encoder)
    mean = embedded.embeddings.mean(axis=0)
    result: np.ndarray = mean / np.linalg.norm(mean)
    return result


def test_same_speaker_is_nearer_than_others(voice_encoder: VoiceEncoder) -> None:
    """Two utterances (3-10 s) of each of 6 LibriSpeech readers: a reader's two are clearly more alike than two
    readers' are, and most utterances' nearest other is their reader's (short ones of some readers are not:
    3.6 s and 3.8 s of two of them measured 0.68 and 0.60 alike)."""
    by_speaker: dict[str, list[Path]] = {}
    for clip in clips("B_librispeech/test-clean/"):
        by_speaker.setdefault(clip.path.name.split("-")[0], []).append(clip.path)
    speakers = sorted(s for s in by_speaker if len(by_speaker[s]) >= 5)[:6]
    paths = [p for s in speakers for p in sorted(by_speaker[s])[:2]]
    prints = np.stack([_voiceprint(voice_encoder, p) for p in paths])
    assert prints.shape == (12, EMBEDDING_SIZE)
    similarity = prints @ prints.T
    same = [similarity[i, i ^ 1] for i in range(12)]
    different = [similarity[i, j] for i in range(12) for j in range(12) if i // 2 != j // 2]
    assert np.mean(same) - np.mean(different) >= 0.15
    np.fill_diagonal(similarity, -1)
    assert sum(int(n) // 2 == i // 2 for i, n in enumerate(similarity.argmax(axis=1))) >= 9


def test_streaming_does_not_depend_on_block_size(voice_encoder: VoiceEncoder) -> None:
    path = clips("B_librispeech/test-clean/")[0].path
    whole = embed_speech(iter_audio(AudioSource(path)), voice_encoder)
    pieces = embed_speech(iter_audio(AudioSource(path), block_samples=7_777), voice_encoder)
    assert len(whole.embeddings) >= 5
    np.testing.assert_array_equal(whole.centers, pieces.centers)
    np.testing.assert_array_equal(whole.speech, pieces.speech)
    np.testing.assert_allclose(whole.embeddings, pieces.embeddings, atol=1e-4)


def test_mel_front_end_is_the_encoders(voice_encoder: VoiceEncoder) -> None:
    """Frames centred every 10 ms, zeros beyond the ends: a 1 s tone gives 101 frames, its power in one band."""
    t = np.arange(16_000) / 16_000
    mel = mel_power(np.sin(2 * np.pi * 1000 * t).astype(np.float32))
    assert mel.shape == (101, 40)
    middle = mel[50]
    assert middle.argmax() == np.argmax(mel[20]) and middle.max() > 50 * np.median(middle)
    samples = load_audio(AudioSource(clips("B_librispeech/test-clean/")[0].path))
    assert voice_encoder.embed_mels(mel_power(samples)[None, :160]).shape == (1, EMBEDDING_SIZE)
