"""The CTranslate2 engine's WER on English clips (LibriSpeech test-clean; --set for others), with each clip's text.

    python -m benchmarks.cpu_wer --data DIR [--set FOLDER ...] [--model base] [--compute-type int8 ...] [--out FILE]

The reference the GPU engine is held to (issue: within 0.5 points of CTranslate2): `gpu_check accuracy`
keeps each clip's text too, so the two can be compared clip by clip. Several compute types show how far
numerics alone move the WER on these 74 clips.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", required=True)
    parser.add_argument("--set", nargs="+", default=["B_librispeech/test-clean"], help="folders of the corpus")
    parser.add_argument("--model", default="base")
    parser.add_argument("--compute-type", nargs="+", default=["int8", "float32"])
    parser.add_argument("--out")
    args = parser.parse_args()
    os.environ["WHISPER_TEST_DATA"] = str(Path(args.data).resolve())  # before tests.datasets is imported
    from tests.datasets import clips

    from benchmarks import command_line
    from benchmarks.cpu_load import score
    from whisper_endpoint.audio.decode import AudioSource
    from whisper_endpoint.config import Settings
    from whisper_endpoint.decoding.options import DecodeOptions
    from whisper_endpoint.decoding.transcribe import transcribe
    from whisper_endpoint.engines.ctranslate2 import CTranslate2Engine

    rows = []
    for compute_type, folder in ((c, f) for c in args.compute_type for f in args.set):
        corpus = clips(folder)
        engine = CTranslate2Engine.from_settings(Settings(model=args.model, compute_type=compute_type))
        started = time.monotonic()
        options = DecodeOptions(language="en")
        texts = {c.path.name: transcribe(AudioSource(c.path), engine, options).text for c in corpus}
        wall_s = time.monotonic() - started
        wer_pct = score(corpus, texts)
        rows.append(
            {
                "set": folder,
                "compute_type": compute_type,
                "wer_pct": wer_pct,
                "wall_s": round(wall_s, 1),
                "texts": texts,
            }
        )
        print(
            f"{args.model} {compute_type} {folder}: WER {wer_pct} % ({len(corpus)} clips, {wall_s:.0f} s)", flush=True
        )
    if args.out:
        command = command_line("benchmarks.cpu_wer", args.data)
        doc = {"date": time.strftime("%Y-%m-%d"), "cores": os.cpu_count(), "command": command, "rows": rows}
        Path(args.out).write_text(json.dumps(doc, indent=2))


if __name__ == "__main__":
    main()
