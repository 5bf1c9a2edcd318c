"""Live transcription's audio side on real speech: resampling, turn detection, partial text that only grows."""

from __future__ import annotations

import numpy as np
import pytest

from tests.conftest import JFK
from whisper_endpoint.audio.decode import AudioSource, load_audio
from whisper_endpoint.serving.live import LocalAgreement, PcmInput, TurnDetection, TurnDetector, words_of


def test_pcm_at_24_khz_comes_out_at_16_khz_in_pieces_of_any_size() -> None:
    rng = np.random.default_rng(0)
    tone = (0.5 * np.sin(2 * np.pi * 440 * np.arange(24_000) / 24_000) * 32767).astype("<i2").tobytes()
    pcm = PcmInput(24_000)
    pieces, at = [], 0
    while at < len(tone):  # odd byte counts split a sample across appends
        size = int(rng.integers(1, 4_801))
        pieces.append(pcm.feed(tone[at : at + size]))
        at += size
    out = np.concatenate(pieces)
    assert abs(len(out) - 16_000) <= 64  # the resampler holds back a few samples of its filter
    spectrum = np.abs(np.fft.rfft(out[2_000:14_000]))
    assert abs(np.argmax(spectrum) * 16_000 / 12_000 - 440) < 3  # the same tone at the new rate
    assert np.array_equal(PcmInput(16_000).feed(b"\x00\x40\xff"), np.array([0.5], np.float32))
    with pytest.raises(ValueError, match="48000 Hz"):
        PcmInput(48_000)


def test_turns_start_before_the_speech_by_the_padding_and_stop_after_the_silence() -> None:
    samples = np.concatenate([np.zeros(16_000, np.float32), load_audio(AudioSource(JFK)), np.zeros(32_000, np.float32)])
    detector = TurnDetector(TurnDetection(silence_duration_ms=1_500))  # longer than JFK's own pauses
    events = []
    for at in range(0, len(samples), 1_600):  # 100 ms appends
        events += detector.feed(samples[at : at + 1_600])
    assert [e.kind for e in events] == ["started", "stopped"]
    assert 900 <= events[0].at_ms <= 1_100  # speech at about 1.3 s, reported 300 ms earlier
    assert 11_000 <= events[1].at_ms <= 11_600  # the end of "... for your country"
    short = TurnDetector(TurnDetection(silence_duration_ms=500))
    assert [e.kind for e in short.feed(samples)].count("started") == 4  # JFK's pauses of 0.6 to 1.2 s split it


def test_partial_text_sends_only_words_two_hypotheses_agree_on_and_never_takes_one_back() -> None:
    agreement = LocalAgreement()
    assert agreement.hypothesis("And so my") == ""  # nothing to agree with yet
    assert agreement.hypothesis("And so, my fellow") == "And so, my"  # punctuation aside, the same words
    assert agreement.hypothesis("And so my fellow Americans") == " fellow"
    assert agreement.hypothesis("Ends of my fellow Americans") == ""  # disagrees with what was sent: wait
    assert agreement.final("And so my fellow Americans, ask not.") == " Americans, ask not."
    assert agreement.sent == words_of("And so, my fellow Americans, ask not.")
    changed = LocalAgreement()
    changed.hypothesis("I scream")
    assert changed.hypothesis("I scream for") == "I scream"
    assert changed.final("Ice cream for all") == ""  # the completed event carries the changed text
