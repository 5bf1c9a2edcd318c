"""A transcript depends on its own audio only: clips sent together, most of them babble or reversed speech
crafted to bleed into neighbours, each come back exactly as when sent alone (default settings)."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np
import pytest

from tests.conftest import metric_value, start_server
from tests.datasets import clips
from whisper_endpoint.audio.decode import AudioSource, load_audio
from whisper_endpoint.bench.corpus import write_flac
from whisper_endpoint.config import Settings
from whisper_endpoint.engines.ctranslate2 import CTranslate2Engine


def _flac(path: Path, samples: np.ndarray) -> Path:
    write_flac(path, samples)
    return path


def adversarial_clips(folder: Path) -> list[Path]:
    """Short real speech, the same reversed, and babble (three speakers at once), all under 15 s: the
    windows that cross-request packing used to lay side by side in one 30 s window."""
    speech = [c for c in clips("B_librispeech/test-clean") if c.duration_s < 12][:8]
    audio = [load_audio(AudioSource(c.path)) for c in speech]
    paths = [c.path for c in speech[:4]]
    paths += [_flac(folder / f"reversed-{i}.flac", a[::-1].copy()) for i, a in enumerate(audio[4:8])]
    for i in range(4):
        parts = audio[i : i + 3]
        n = min(len(p) for p in parts)
        paths.append(_flac(folder / f"babble-{i}.flac", sum(p[:n] for p in parts) / 2))
    return paths


@pytest.mark.parametrize("model", ["tiny.en", "base"])
@pytest.mark.slow
def test_concurrent_clips_match_their_solo_transcripts(
    model: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    engine: CTranslate2Engine = request.getfixturevalue("tiny_engine" if model == "tiny.en" else "engine")
    paths = adversarial_clips(tmp_path)
    running, thread = start_server(Settings(model=model), engine)

    def send(path: Path) -> str:
        with path.open("rb") as f:
            r = httpx.post(f"{running.v1}/audio/transcriptions", files={"file": (path.name, f)}, timeout=300)
        r.raise_for_status()
        return str(r.json()["text"])

    try:
        solo = [send(p) for p in paths]
        packed_before = metric_value(httpx.get(f"{running.url}/metrics").text, "whisper_packed_windows_total")
        with ThreadPoolExecutor(len(paths)) as pool:
            together = list(pool.map(send, paths))
        packed_after = metric_value(httpx.get(f"{running.url}/metrics").text, "whisper_packed_windows_total")
    finally:
        running.server.should_exit = True
        thread.join(timeout=30)
    assert sum(bool(t.strip()) for t in solo) >= 4  # real transcripts, not all empty
    differing = [(p.name, a, b) for p, a, b in zip(paths, solo, together, strict=True) if a != b]
    assert differing == [], differing
    assert packed_after == packed_before  # no window shared with another request
