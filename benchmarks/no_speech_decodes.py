"""How often the silence rule needs a window's no-speech probability when it is not computed up front.

    python -m benchmarks.no_speech_decodes --data DIR [--model base] [--out FILE]

Transcribes each folder twice with the CTranslate2 engine: with the no-speech probability computed for every
window (as for `verbose_json`) and only where the silence rule reads it (every other format: a one-token decode
of a window whose decode is unsure). Counts the windows decoded and the one-token decodes, and how many files
get the same text both ways (a window that falls back to sampling at a higher temperature may differ between
any two runs).
"""

from __future__ import annotations

import argparse
import json
import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

FOLDERS = ("B_librispeech/test-clean", "C_longform", "D_multilingual", "E_nonspeech")


class CountingEngine:
    """The engine as it is, with the windows of each kind of call counted."""

    def __init__(self, engine: Any) -> None:
        self._engine = engine
        self.windows = 0
        self.one_token = 0

    def __getattr__(self, name: str) -> Any:
        return getattr(self._engine, name)

    def generate(self, windows: Sequence[Any], options: Any, cancellation: Any = None) -> Any:
        if options.max_new_tokens == 1:
            self.one_token += len(windows)
        else:
            self.windows += len(windows)
        return self._engine.generate(windows, options)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", required=True)
    parser.add_argument("--model", default="base")
    parser.add_argument("--out")
    args = parser.parse_args()
    from benchmarks import command_line
    from whisper_endpoint.audio.decode import AudioSource
    from whisper_endpoint.bench.corpus import corpus
    from whisper_endpoint.config import Settings
    from whisper_endpoint.decoding.options import DecodeOptions
    from whisper_endpoint.decoding.transcribe import transcribe
    from whisper_endpoint.engines.ctranslate2 import CTranslate2Engine

    engine = CTranslate2Engine.from_settings(Settings(model=args.model))
    rows = []
    for folder in FOLDERS:
        files = corpus([str(Path(args.data) / folder)])
        row: dict[str, Any] = {"folder": folder, "files": len(files)}
        texts = {}
        for report in (True, False):
            counting = CountingEngine(engine)
            started = time.monotonic()
            options = DecodeOptions(report_no_speech_prob=report)
            texts[report] = [transcribe(AudioSource(p), counting, options).text for p in files]  # type: ignore[arg-type]
            mode = "up_front" if report else "where_read"
            row[f"{mode}_windows"], row[f"{mode}_one_token"] = counting.windows, counting.one_token
            row[f"{mode}_wall_s"] = round(time.monotonic() - started, 1)
        row["same_text"] = sum(a == b for a, b in zip(texts[True], texts[False], strict=True))
        rows.append(row)
        print(json.dumps(row), flush=True)
    if args.out:
        doc = {
            "date": time.strftime("%Y-%m-%d"),
            "cores": os.cpu_count(),
            "command": command_line("benchmarks.no_speech_decodes", args.data),
            "rows": rows,
        }
        Path(args.out).write_text(json.dumps(doc, indent=2) + "\n")


if __name__ == "__main__":
    main()
