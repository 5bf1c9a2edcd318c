"""The shared speech corpus (outside the repo) and scoring helpers, used by tests and benchmarks."""

from __future__ import annotations

import csv
import os
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

# The corpus beside the repository; WHISPER_TEST_DATA points elsewhere (a copy of some of it on a GPU machine).
DATA = Path(os.environ.get("WHISPER_TEST_DATA") or Path(__file__).resolve().parents[1].parent / "shared" / "data")


@dataclass(frozen=True)
class Clip:
    path: Path
    duration_s: float
    language: str
    reference: str


@lru_cache(maxsize=1)
def manifest() -> tuple[Clip, ...]:
    with (DATA / "MANIFEST.tsv").open(newline="", encoding="utf-8") as f:
        rows = csv.DictReader(f, delimiter="\t", quoting=csv.QUOTE_NONE)
        return tuple(Clip(DATA / r["path"], float(r["duration_s"]), r["language"], r["reference"] or "") for r in rows)


def clips(prefix: str) -> list[Clip]:
    return [c for c in manifest() if str(c.path.relative_to(DATA)).startswith(prefix)]


def english_normalizer():  # type: ignore[no-untyped-def]
    from whisper_normalizer.english import EnglishTextNormalizer

    return EnglishTextNormalizer()


def wer(references: list[str], hypotheses: list[str]) -> float:
    """Corpus WER after Whisper's English normaliser, as a fraction."""
    import jiwer

    norm = english_normalizer()
    pairs = [(norm(r), norm(h)) for r, h in zip(references, hypotheses, strict=True)]
    pairs = [(r, h) for r, h in pairs if r.strip()]
    return float(jiwer.wer([r for r, _ in pairs], [h for _, h in pairs]))
