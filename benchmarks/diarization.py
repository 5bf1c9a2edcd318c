"""Diarization on conversations of LibriSpeech readers (tests/conversations.py): DER, words given to the right
speaker, and its cost beside transcription's on the same audio, on this machine's cores.

    python -m benchmarks.diarization --data DIR [--seeds 7 11 23 41 59] [--model base] [--out FILE]

Seed 7 is the one the clustering threshold was chosen on; the others were not used to choose anything.
Word attribution: each transcribed word whose middle falls in exactly one reader's turn is right when its label
is that reader's (names: with known speakers; letters: after mapping each label to the reader it overlaps most).
Peak memory: the most the Python allocator held during diarization (tracemalloc, numpy's arrays included) of a
recording made of every conversation of a seed, played 3 times over (10 to 12 minutes).
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
import tracemalloc
from pathlib import Path
from typing import Any


def _word_accuracy(conversation: Any, words: list[Any], turns: list[Any], mapping: dict[str, str] | None) -> list[int]:
    from whisper_endpoint.diarization.attribution import speaker_at

    right = total = 0
    for word in words:
        middle = (word.start_ms + word.end_ms) / 2000
        owners = {t.speaker for t in conversation.turns if t.start_s <= middle <= t.end_s}
        if len(owners) != 1:
            continue
        label = speaker_at(turns, word.start_ms, word.end_ms)
        total += 1
        right += (mapping.get(label, label) if mapping and label else label) == owners.pop()
    return [right, total]


def _segments_named_right(conversation: Any, transcript: Any, turns: list[Any]) -> list[int]:
    """diarized_json's segments (cut where the speaker changes) whose middle lies in exactly one reader's turn:
    right when named after that reader."""
    from whisper_endpoint.diarization.attribution import attribute

    right = total = 0
    for segment in attribute(transcript, turns).stretches:
        middle = (segment.start_ms + segment.end_ms) / 2000
        owners = {t.speaker for t in conversation.turns if t.start_s <= middle <= t.end_s}
        if len(owners) == 1:
            total += 1
            right += segment.speaker == owners.pop()
    return [right, total]


def _majority_mapping(conversation: Any, turns: list[Any]) -> dict[str, str]:
    shared: dict[tuple[str, str], float] = {}
    for turn in turns:
        for ref in conversation.turns:
            overlap = min(turn.end_ms / 1000, ref.end_s) - max(turn.start_ms / 1000, ref.start_s)
            if overlap > 0:
                shared[(turn.speaker, ref.speaker)] = shared.get((turn.speaker, ref.speaker), 0) + overlap
    mapping: dict[str, str] = {}
    for (label, reader), _seconds in sorted(shared.items(), key=lambda item: -item[1]):
        mapping.setdefault(label, reader)
    return mapping


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", required=True)
    parser.add_argument("--seeds", nargs="+", type=int, default=[7, 11, 23, 41, 59])
    parser.add_argument("--model", default="base")
    parser.add_argument("--out")
    args = parser.parse_args()
    os.environ["WHISPER_TEST_DATA"] = str(Path(args.data).resolve())  # before tests.datasets is imported
    import numpy as np
    from tests.conversations import NO_SCORE, _write, build_conversations, score

    from benchmarks import command_line
    from whisper_endpoint.audio.decode import AudioSource, iter_audio, load_audio
    from whisper_endpoint.config import Settings
    from whisper_endpoint.decoding.options import DecodeOptions
    from whisper_endpoint.decoding.transcribe import transcribe
    from whisper_endpoint.diarization.encoder import VoiceEncoder
    from whisper_endpoint.diarization.pipeline import Diarizer, KnownSpeaker
    from whisper_endpoint.engines.ctranslate2 import CTranslate2Engine

    engine = CTranslate2Engine.from_settings(Settings(model=args.model))
    diarizer = Diarizer(VoiceEncoder.load())
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for seed in args.seeds:
            folder = Path(tmp) / str(seed)
            folder.mkdir()
            total = NO_SCORE
            words_letters = np.zeros(2, int)
            words_named = np.zeros(2, int)
            segments_named = np.zeros(2, int)
            audio_s = transcribe_s = diarize_s = 0.0
            for conversation in build_conversations(folder, seed):
                source = AudioSource(conversation.path)
                started = time.monotonic()
                transcript = transcribe(source, engine, DecodeOptions(language="en", word_timestamps=True))
                transcribe_s += time.monotonic() - started
                started = time.monotonic()
                result = diarizer.diarize(iter_audio(source))
                diarize_s += time.monotonic() - started
                audio_s += transcript.duration_ms / 1000
                hypothesis = [(t.start_ms / 1000, t.end_ms / 1000, t.speaker) for t in result.turns]
                total += score(conversation.turns, hypothesis)
                turns = list(result.turns)
                mapping = _majority_mapping(conversation, turns)
                words_letters += _word_accuracy(conversation, list(transcript.words), turns, mapping)
                known = tuple(KnownSpeaker(n, load_audio(AudioSource(p))) for n, p in conversation.references.items())
                named = list(diarizer.diarize(iter_audio(source), known).turns)
                words_named += _word_accuracy(conversation, list(transcript.words), named, None)
                segments_named += _segments_named_right(conversation, transcript, named)
            row = {
                "seed": seed,
                "scored_speech_s": round(total.speech_s, 1),
                **total.percentages(),
                "words_right_pct": round(100 * words_letters[0] / words_letters[1], 2),
                "words_right_known_speakers_pct": round(100 * words_named[0] / words_named[1], 2),
                "words_scored": int(words_letters[1]),
                "segments_named_right": f"{segments_named[0]}/{segments_named[1]}",
                "audio_s": round(audio_s, 1),
                "transcription_rtfx": round(audio_s / transcribe_s, 1),
                "diarization_rtfx": round(audio_s / diarize_s, 1),
            }
            rows.append(row)
            print(json.dumps(row), flush=True)
        # Memory: one long recording, every conversation of the last seed three times over.
        long_path = Path(tmp) / "long.wav"
        pieces = [load_audio(AudioSource(p)) for p in sorted((Path(tmp) / str(args.seeds[-1])).glob("conv?-*k.wav"))]
        pieces += [load_audio(AudioSource(p)) for p in sorted((Path(tmp) / str(args.seeds[-1])).glob("conv?-*p.wav"))]
        _write(long_path, np.concatenate(pieces * 3))
        long_s = sum(len(p) for p in pieces) * 3 / 16_000
        del pieces
        tracemalloc.start()
        started = time.monotonic()
        long_result = diarizer.diarize(iter_audio(AudioSource(long_path)))
        long_wall = time.monotonic() - started
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
        memory = {
            "audio_s": round(long_s, 1),
            "diarization_rtfx": round(long_s / long_wall, 1),
            "peak_mib": round(peak / 2**20, 1),
            "speakers_found": len(long_result.speakers),
        }
        print(json.dumps(memory), flush=True)
    summary = {
        "der_pct_held_out_seeds": round(
            100
            * sum(r["der_pct"] / 100 * r["scored_speech_s"] for r in rows if r["seed"] != 7)
            / max(1e-9, sum(r["scored_speech_s"] for r in rows if r["seed"] != 7)),
            2,
        ),
    }
    print(
        f"{'seed':>5} {'DER %':>6} {'miss':>5} {'FA':>5} {'conf':>5} {'words %':>8} {'named %':>8} {'diar x':>7} segs"
    )
    for r in rows:
        print(
            f"{r['seed']:>5} {r['der_pct']:>6} {r['missed_pct']:>5} {r['false_alarm_pct']:>5} {r['confusion_pct']:>5}"
            f" {r['words_right_pct']:>8} {r['words_right_known_speakers_pct']:>8} {r['diarization_rtfx']:>7}"
            f" {r['segments_named_right']}"
        )
    print(f"held-out DER {summary['der_pct_held_out_seeds']} %; long recording: {memory}")
    if args.out:
        command = command_line("benchmarks.diarization", args.data)
        result = {"command": command, "cpu_count": os.cpu_count(), "seeds": rows, "long": memory, **summary}
        Path(args.out).write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
