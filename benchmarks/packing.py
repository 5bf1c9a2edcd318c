"""Packing short windows, measured through the engine alone: RTFx and WER with and without it.

    python -m benchmarks.packing [--gap-s 2]

The 74 LibriSpeech test-clean clips, one window each, in batches of 8 (as the server's scheduler forms them),
decoded greedily by the bundled whisper-base on CPU: once one clip per window, once packed.
"""

from __future__ import annotations

import argparse
import time

from tests.datasets import clips, wer

from whisper_endpoint.audio import SAMPLE_RATE
from whisper_endpoint.audio.decode import AudioSource, load_audio
from whisper_endpoint.audio.features import log_mel_window
from whisper_endpoint.config import Settings
from whisper_endpoint.engines.base import Generation, SamplingOptions, WindowInput
from whisper_endpoint.engines.ctranslate2 import CTranslate2Engine
from whisper_endpoint.serving import packing

BATCH = 8


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--gap-s", type=float, default=packing.GAP_SAMPLES / SAMPLE_RATE)
    args = parser.parse_args()
    packing.GAP_SAMPLES = int(args.gap_s * SAMPLE_RATE)

    engine = CTranslate2Engine.from_settings(Settings(model="base"))
    corpus = clips("B_librispeech/test-clean")
    sot = tuple(engine.tokenizer.sot_sequence("en", "transcribe", True))
    windows = []
    for clip in corpus:
        audio = load_audio(AudioSource(clip.path))[: 30 * SAMPLE_RATE]
        windows.append(WindowInput(log_mel_window(audio, engine.n_mels), sot, len(audio) * 1000 // SAMPLE_RATE, audio))
    options = SamplingOptions(suppress_tokens=tuple(engine.tokenizer.non_speech_tokens))
    audio_s = sum(c.duration_s for c in corpus)
    for mode in ("plain", "packed"):
        started = time.monotonic()
        out: list[Generation] = []
        packed = again = 0
        for i in range(0, len(windows), BATCH):
            batch = windows[i : i + BATCH]
            if mode == "plain":
                out += engine.generate(batch, options)
            else:
                # One group: the mechanics of packing, as for the short chunks of one long request.
                results, p, a = packing.generate_packed(engine, batch, options, ["one"] * len(batch))
                out += results
                packed, again = packed + p, again + a
        wall = time.monotonic() - started
        texts = [engine.tokenizer.decode([t for t in g.tokens if t < engine.tokenizer.eot]) for g in out]
        score = 100 * wer([c.reference for c in corpus], texts)
        print(f"{mode:>6}: RTFx {audio_s / wall:.2f}  WER {score:.2f} %  packed {packed}  decoded again {again}")


if __name__ == "__main__":
    main()
