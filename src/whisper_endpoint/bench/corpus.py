"""What the load generator sends: audio files found on disk, their lengths and reference texts, and
corpora of compressed uploads made from real speech (every file unique, so no cache can help)."""

from __future__ import annotations

import csv
import multiprocessing
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from itertools import repeat
from pathlib import Path

import numpy as np

from whisper_endpoint.audio import SAMPLE_RATE
from whisper_endpoint.audio.decode import AudioSource, load_audio, probe_duration_s

AUDIO_SUFFIXES = {  # containers the server decodes (tests/audio checks them on one clip in each)
    *(".flac", ".mp3", ".wav", ".m4a", ".ogg", ".opus", ".webm", ".mp4"),
    *(".aiff", ".aif", ".aac", ".mka", ".wma"),
}
DITHER = 3e-4  # about -70 dBFS of noise: inaudible, but no two uploads are the same bytes


def corpus(paths: Sequence[str]) -> list[Path]:
    files: list[Path] = []
    for p in map(Path, paths):
        files += sorted(f for f in p.rglob("*") if f.suffix.lower() in AUDIO_SUFFIXES) if p.is_dir() else [p]
    if not files:
        raise SystemExit("bench: no audio files in the corpus")
    return files


def durations_s(files: Sequence[Path]) -> dict[Path, float]:
    """Each file's length from its container, or from decoding it when the container does not say."""
    out = {}
    for f in files:
        probed = probe_duration_s(AudioSource(f))
        out[f] = probed if probed else len(load_audio(AudioSource(f))) / SAMPLE_RATE
    return out


def references(manifest: Path) -> dict[str, str]:
    """File name -> reference text, from a TSV with `path` and `reference` columns."""
    with manifest.open(newline="", encoding="utf-8") as f:
        rows = csv.DictReader(f, delimiter="\t", quoting=csv.QUOTE_NONE)
        return {Path(r["path"]).name: r["reference"] for r in rows if r.get("reference")}


def write_flac(path: Path, samples: np.ndarray) -> None:
    import av

    pcm = (np.clip(samples, -1, 1) * 32767).astype(np.int16)
    with av.open(str(path), "w", format="flac") as container:
        stream = container.add_stream("flac", rate=SAMPLE_RATE, layout="mono")
        frame = av.AudioFrame.from_ndarray(pcm[None, :], format="s16", layout="mono")
        frame.sample_rate = SAMPLE_RATE
        for packet in stream.encode(frame):
            container.mux(packet)
        for packet in stream.encode(None):
            container.mux(packet)


def _write_copy(path: Path, clip: np.ndarray, seed: int, index: int) -> Path:
    """One upload: the clip with a dither of its own (seeded by its index, so the corpus does not depend on
    which process wrote which file)."""
    rng = np.random.default_rng([seed, index])
    write_flac(path, clip + rng.normal(0, DITHER, len(clip)).astype(np.float32))
    return path


def make_corpus(
    sources: Sequence[Path], out: Path, count: int, seconds: float | None, seed: int = 0, workers: int | None = None
) -> list[Path]:
    """`count` unique FLAC files of real speech: windows of `seconds` cut from the sources laid end to
    end, or (seconds=None) the source clips themselves, in turn; each copy with its own dither. Written by
    `workers` processes (default: one per core): one process took 6 minutes for 8,192 files of 30 s."""
    clips = [load_audio(AudioSource(s)) for s in sources]
    if seconds is not None:
        speech = np.concatenate(clips)
        size = int(seconds * SAMPLE_RATE)
        if len(speech) < size:
            raise SystemExit(f"bench: the sources hold less than {seconds} s of audio")
        clips = [speech[i : i + size] for i in range(0, len(speech) - size + 1, size)]
    out.mkdir(parents=True, exist_ok=True)
    paths = [out / f"{i:05d}.flac" for i in range(count)]
    spawn = multiprocessing.get_context("spawn")  # the caller may hold threads
    with ProcessPoolExecutor(max_workers=workers, mp_context=spawn) as pool:
        copies = (clips[i % len(clips)] for i in range(count))
        return list(pool.map(_write_copy, paths, copies, repeat(seed), range(count), chunksize=8))
