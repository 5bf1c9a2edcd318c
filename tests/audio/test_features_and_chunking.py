from __future__ import annotations

import numpy as np
from faster_whisper.feature_extractor import FeatureExtractor

from tests.conftest import JFK
from tests.datasets import DATA
from whisper_endpoint.audio import SAMPLE_RATE
from whisper_endpoint.audio.chunking import as_float32, compact_samples, iter_speech_chunks
from whisper_endpoint.audio.decode import AudioSource, iter_audio, load_audio
from whisper_endpoint.audio.features import WINDOW_SAMPLES, bf16_bits, log_mel_window
from whisper_endpoint.audio.vad import FRAME_SAMPLES, VadStream


def test_log_mel_matches_faster_whisper() -> None:
    audio = load_audio(AudioSource(JFK))
    padded = np.concatenate([audio, np.zeros(WINDOW_SAMPLES - len(audio), np.float32)])
    reference = FeatureExtractor(feature_size=80)(padded, padding=0)[:, :3000]
    ours = log_mel_window(audio, 80)
    assert ours.shape == (80, 3000)
    assert np.abs(ours - reference).max() < 1e-4


def test_bf16_bits_are_the_nearest_bfloat16_ties_to_even() -> None:
    log_mel = log_mel_window(load_audio(AudioSource(JFK))[: 10 * SAMPLE_RATE], 128)
    values = np.concatenate([log_mel.ravel(), np.float32([1.0, -2.5, 0.0, 1 + 2**-8, 1 + 3 * 2**-8])])
    bits = bf16_bits(values)
    assert bits.dtype == np.uint16 and bits.shape == values.shape
    rounded = (bits.astype(np.uint32) << 16).view(np.float32)
    # bf16 keeps 8 significant bits: the nearest such value is within half a step (2**-8 of the exponent's power)
    step = 2.0 ** (np.floor(np.log2(np.maximum(np.abs(values), 2**-126))) - 7)
    assert np.all(np.abs(rounded - values) <= step / 2)
    assert list(rounded[-5:]) == [1.0, -2.5, 0.0, 1.0, 1 + 2**-6]  # ties to the even neighbour, both ways
    assert np.abs(rounded - values).max() > 0  # it does round


def test_chunks_are_short_ordered_and_absolute() -> None:
    path = DATA / "C_longform" / "ljspeech_LJ001-0001_to_0032_concat.flac"
    audio = load_audio(AudioSource(path))
    chunks = list(iter_speech_chunks(iter_audio(AudioSource(path), block_samples=7 * SAMPLE_RATE)))
    assert len(chunks) >= 8
    for previous, chunk in zip(chunks, chunks[1:], strict=False):
        assert previous.end <= chunk.start
    for chunk in chunks:
        assert len(chunk.samples) <= WINDOW_SAMPLES
        assert np.array_equal(chunk.samples, audio[chunk.start : chunk.end])  # the offset is exact


def test_chunks_carry_the_vad_probabilities_of_their_own_frames() -> None:
    path = DATA / "C_longform" / "ljspeech_LJ001-0001_to_0032_concat.flac"
    chunks = list(iter_speech_chunks(iter_audio(AudioSource(path), block_samples=7 * SAMPLE_RATE)))
    for chunk in chunks:
        assert chunk.speech_probs is not None
        assert len(chunk.speech_probs) == -(-len(chunk.samples) // FRAME_SAMPLES)
        # The chunk's own frames, not another stretch of the stream: as VAD on the chunk alone says.
        alone = VadStream().feed(chunk.samples, final=True) >= 0.5
        assert np.mean((chunk.speech_probs >= 0.5) == alone) > 0.9
        assert (chunk.speech_probs >= 0.5).mean() > 0.5


def test_speech_after_thirty_seconds_of_silence_keeps_its_offset() -> None:
    path = DATA / "E_containers" / "variants" / "jfk_after_30s_silence.wav"
    chunks = list(iter_speech_chunks(iter_audio(AudioSource(path))))
    assert len(chunks) == 1
    assert 29.5 * SAMPLE_RATE < chunks[0].start < 30.5 * SAMPLE_RATE


def test_silence_and_noise_give_no_chunks() -> None:
    for name in ("silence_digital_60s_16k.flac", "pink_noise_15s.wav", "mains_hum_50hz_10s.wav"):
        assert list(iter_speech_chunks(iter_audio(AudioSource(DATA / "E_nonspeech" / name)))) == []


def test_compact_samples_keep_16_bit_audio_exactly_and_round_the_rest() -> None:
    sixteen_bit = load_audio(AudioSource(DATA / "E_containers" / "variants" / "jfk_speed1.5x.wav"))  # 16 kHz, s16
    pcm = compact_samples(sixteen_bit)
    assert pcm.dtype == np.int16 and pcm.nbytes * 2 == sixteen_bit.nbytes
    assert np.array_equal(as_float32(pcm), sixteen_bit)
    resampled = load_audio(AudioSource(JFK))  # resampled to 16 kHz: not on the 16-bit grid, and over full scale
    assert compact_samples(resampled) is resampled
    resampled = resampled / (2 * np.abs(resampled).max())
    error = np.abs(as_float32(compact_samples(resampled)) - resampled)
    assert 0 < error.max() <= 0.5 / 32768
    assert as_float32(resampled) is resampled
