"""The CTranslate2 engine: int8 on CPU by default, float16 on CUDA, batched."""

from __future__ import annotations

import os
import threading
from collections.abc import Sequence
from typing import Any

import numpy as np

from whisper_endpoint.audio import SAMPLE_RATE
from whisper_endpoint.audio.features import HOP_LENGTH
from whisper_endpoint.config import Settings
from whisper_endpoint.decoding.tokenizer import Tokenizer
from whisper_endpoint.engines.base import (
    AlignInput,
    Alignment,
    Cancellation,
    Capabilities,
    Generation,
    SamplingOptions,
    WindowInput,
    sampling_seed,
)
from whisper_endpoint.errors import EngineUnavailableError
from whisper_endpoint.models import ModelFiles, resolve_model

MAX_DECODER_POSITIONS = 448  # Whisper's text context: prompt and output together
MS_PER_ENCODER_FRAME = 1000 * HOP_LENGTH * 2 // SAMPLE_RATE  # 20 ms: the encoder halves the mel frame rate


def _import_ctranslate2() -> Any:
    try:
        import ctranslate2
    except ImportError as exc:
        raise EngineUnavailableError("the CPU engine needs CTranslate2: pip install ctranslate2") from exc
    return ctranslate2


class CTranslate2Engine:
    name = "ctranslate2"
    capabilities = Capabilities()

    def __init__(
        self,
        files: ModelFiles,
        device: str = "cpu",
        compute_type: str = "default",
        threads: int = 0,
        max_batch_size: int = 8,
    ) -> None:
        ct2 = _import_ctranslate2()
        self._ct2 = ct2
        if compute_type == "default":
            compute_type = "float16" if device == "cuda" else "int8"
        self._load_args = {
            "model_path": str(files.path),
            "device": device,
            "compute_type": compute_type,
            "intra_threads": threads or (os.cpu_count() or 1),
            "inter_threads": 1,
        }
        self.model = ct2.models.Whisper(**self._load_args)
        self.model_name = files.name
        self.multilingual = bool(self.model.is_multilingual)
        self.n_mels = int(self.model.n_mels)
        self.tokenizer = Tokenizer.from_file(files.tokenizer_path, self.multilingual)
        self.max_batch_size = max_batch_size
        self.device = device
        self._seed_lock = threading.Lock()  # the seed is process-wide: set it and start a sampler as one step

    @classmethod
    def from_settings(cls, settings: Settings) -> CTranslate2Engine:
        from whisper_endpoint.engines import cuda_available

        device = settings.device
        if device == "auto":
            device = "cuda" if cuda_available() else "cpu"
        files = resolve_model(settings.model, settings.cache_dir)
        return cls(files, device, settings.compute_type, settings.cpu_threads, settings.max_batch_size)

    def _features(self, features: Sequence[np.ndarray | None]) -> Any:
        present = [f for f in features if f is not None]
        if len(present) != len(features):
            raise ValueError("the CTranslate2 engine needs each window's log-mel features")
        return self._ct2.StorageView.from_array(np.ascontiguousarray(np.stack(present), dtype=np.float32))

    def generate(
        self, windows: Sequence[WindowInput], options: SamplingOptions, cancellation: Cancellation | None = None
    ) -> list[Generation]:
        # `cancellation` is not watched: a call holds at most max_batch_size windows and runs to its end.
        if options.temperature == 0:
            return self._generate(self.model, windows, options)
        return [self._sample(window, options) for window in windows]

    def _sample(self, window: WindowInput, options: SamplingOptions) -> Generation:
        """One window sampled at a temperature above 0 (Whisper's fallback), from a seed of its own.

        CTranslate2 draws from a generator per worker thread, seeded once from the process-wide seed when
        the thread first samples: a later `set_random_seed` changes nothing for it, and every window
        sampled on it shifts the draws of the next, another request's included. A model replica made
        for the window has a fresh worker thread, seeded with the window's own seed (0.15 s for tiny.en,
        0.26 s for base on 2 cores; only windows that failed greedy decoding pay it)."""
        with self._seed_lock:
            self._ct2.set_random_seed(sampling_seed(window, options.temperature))
            sampler = self._ct2.models.Whisper(**self._load_args)
            return self._generate(sampler, [window], options)[0]

    def _generate(self, model: Any, windows: Sequence[WindowInput], options: SamplingOptions) -> list[Generation]:
        """CTranslate2 decodes a batch only where <|startoftranscript|> sits at the same position in every prompt:
        windows with previous text of other lengths (other requests' prompts, a live session's last turn) go
        in a call of their own."""
        sot = self.tokenizer.sot
        groups: dict[int, list[int]] = {}
        for i, window in enumerate(windows):
            groups.setdefault(window.prompt.index(sot) if sot in window.prompt else 0, []).append(i)
        out: list[Generation | None] = [None] * len(windows)
        for indices in groups.values():
            generations = self._generate_aligned(model, [windows[i] for i in indices], options)
            for i, generation in zip(indices, generations, strict=True):
                out[i] = generation
        return [g for g in out if g is not None]

    def _generate_aligned(
        self, model: Any, windows: Sequence[WindowInput], options: SamplingOptions
    ) -> list[Generation]:
        sampling = options.temperature > 0
        results = model.generate(
            self._features([w.features for w in windows]),
            [list(w.prompt) for w in windows],
            beam_size=1 if sampling else options.beam_size,
            max_length=min(MAX_DECODER_POSITIONS, options.max_new_tokens + max(len(w.prompt) for w in windows)),
            return_scores=True,
            return_no_speech_prob=options.no_speech_prob,
            return_logits_vocab=options.token_logprobs,
            suppress_blank=options.suppress_blank,
            suppress_tokens=list(options.suppress_tokens),
            max_initial_timestamp_index=options.max_initial_timestamp_index,
            sampling_topk=0 if sampling else 1,
            sampling_temperature=options.temperature if sampling else 1.0,
        )
        generations = []
        eot = self.tokenizer.eot
        for result in results:
            tokens = [t for t in result.sequences_ids[0] if t != eot]
            # CTranslate2 scores are sum(logprob) / length**length_penalty, with length_penalty 1.
            sum_logprob = float(result.scores[0]) * max(1, len(tokens))
            token_logprobs = None
            if options.token_logprobs:
                token_logprobs = self._token_logprobs(result.logits[0], tokens)
            no_speech = float(result.no_speech_prob) if options.no_speech_prob else None
            generations.append(Generation(tuple(tokens), sum_logprob, no_speech, token_logprobs))
        return generations

    @staticmethod
    def _token_logprobs(step_logits: Sequence[Any], tokens: list[int]) -> tuple[float, ...]:
        out = []
        for logits, token in zip(step_logits, tokens, strict=False):
            row = np.asarray(logits, dtype=np.float32).reshape(-1)
            top = row.max()
            out.append(float(row[token] - top - np.log(np.exp(row - top).sum())))
        return tuple(out)

    def detect_language(self, windows: Sequence[WindowInput]) -> list[dict[str, float]]:
        results = self.model.detect_language(self._features([w.features for w in windows]))
        return [{token.strip("<|>"): float(prob) for token, prob in result} for result in results]

    def align(self, items: Sequence[AlignInput]) -> list[Alignment]:
        if not items:
            return []
        out: list[Alignment] = []
        # align() takes one start sequence per call: group windows that share it.
        groups: dict[tuple[int, ...], list[int]] = {}
        for i, item in enumerate(items):
            groups.setdefault(item.sot_sequence, []).append(i)
        by_index: dict[int, Alignment] = {}
        for sot, indices in groups.items():
            results = self.model.align(
                self._features([items[i].features for i in indices]),
                list(sot),
                [list(items[i].text_tokens) + [self.tokenizer.eot] for i in indices],
                [items[i].num_frames for i in indices],
            )
            for i, result in zip(indices, results, strict=True):
                by_index[i] = self._alignment(result, len(items[i].text_tokens) + 1)
        out = [by_index[i] for i in range(len(items))]
        return out

    @staticmethod
    def _alignment(result: Any, n_tokens: int) -> Alignment:
        path = np.array(result.alignments, dtype=np.int64).reshape(-1, 2)
        starts = [0] * n_tokens
        if len(path):
            text_idx, time_idx = path[:, 0], path[:, 1]
            jumps = np.pad(np.diff(text_idx), (1, 0), constant_values=1).astype(bool)
            for token_index, frame in zip(text_idx[jumps], time_idx[jumps], strict=True):
                if 0 <= token_index < n_tokens:
                    starts[int(token_index)] = int(frame) * MS_PER_ENCODER_FRAME
        return Alignment(tuple(starts), tuple(float(p) for p in result.text_token_probs))

    def close(self) -> None:
        del self.model
