"""Windows as vLLM's processed inputs, carrying the log-mel we compute.

vLLM turns each prompt's audio into its model's input with its Hugging Face processor: the feature extractor,
a tokenizer call on the empty encoder text, a hash of the window's samples, the prompt edited for the
encoder's placeholder positions. Much of that is Python, holding the engine process's interpreter lock for
milliseconds a window, and that lock is shared with the one thread that steps vLLM (py-spy put 42 % of that
process's samples there, docs/history). Here vLLM's processor runs once at start, on a check window;
every window then reuses its encoder placeholders and carries our log-mel (audio/features.py, computed by the
front-end process that owns the request), in the dtype vLLM's own features come in. Through HTTP on one H100,
with the log-mel then computed in the engine process: 1,996x against 1,770x with vLLM's processing, in one
command; WER unchanged (docs/history/benchmarks-2026-11.md).

Our features are checked against vLLM's own for that window; a difference beyond rounding, or a vLLM whose
processed inputs have another shape, keeps vLLM's own processing (with a warning). Decoder prompts go as our
tokens exactly; vLLM's own path puts <|startoftranscript|> before a prompt that starts with <|startofprev|>.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from whisper_endpoint.audio import SAMPLE_RATE
from whisper_endpoint.audio.features import WINDOW_SAMPLES, log_mel_window

log = logging.getLogger(__name__)

MODALITY = "audio"
FEATURE_KEY = "input_features"  # the keyword vLLM's Whisper model takes its log-mel by
# Two float32 extractors of the same log-mel differ by rounding (about 1e-6); vLLM's features may come rounded
# to the encoder's dtype already, a difference of up to half its resolution (bf16: 2**-8 for values from 1 to 2).
# A different extractor differs by far more.
MAX_FEATURE_DIFFERENCE = 1e-3
CHECK_SEED = 0
CHECK_AMPLITUDE = 0.3


def audio_prompt(samples: np.ndarray, prompt: Sequence[int]) -> dict[str, Any]:
    """vLLM's explicit encoder/decoder prompt: the window's audio, and our decoder tokens as they are."""
    return {
        "encoder_prompt": {"prompt": "", "multi_modal_data": {"audio": (samples, SAMPLE_RATE)}},
        "decoder_prompt": {"prompt_token_ids": list(prompt)},
    }


def check_window() -> np.ndarray:
    """30 s of noise: every mel bin well above the floor, so the comparison covers all of them."""
    rng = np.random.default_rng(CHECK_SEED)
    return (rng.uniform(-CHECK_AMPLITUDE, CHECK_AMPLITUDE, WINDOW_SAMPLES)).astype(np.float32)


def features_of(processed: dict[str, Any]) -> Any:
    """The feature element of vLLM's processed input for one window (its data and how vLLM batches it)."""
    return processed["decoder_prompt"]["mm_kwargs"][MODALITY][0][FEATURE_KEY]


@dataclass(frozen=True)
class FeatureInputs:
    """Processed inputs for windows with the log-mel `extract` computes, made from vLLM's processing of a window."""

    template: dict[str, Any]  # vLLM's processed input (its EncoderDecoderInput) of the check window
    field: Any  # how vLLM batches the features of several windows
    dtype: Any  # the torch dtype vLLM's own processing hands features over in (0.26: bf16, the encoder's)

    @property
    def bf16(self) -> bool:
        import torch

        return bool(self.dtype == torch.bfloat16)

    @classmethod
    def from_vllm(cls, preprocessor: Any, sot: int, n_mels: int) -> FeatureInputs | None:
        """Ours, if our log-mel of the check window is vLLM's (`preprocessor`: its input preprocessor)."""
        import torch

        samples = check_window()
        try:
            template = dict(preprocessor.preprocess(audio_prompt(samples, (sot,))))
            element = features_of(template)
            theirs = element.data.float().numpy()
            dtype, field = element.data.dtype, element.field
            resolution = torch.finfo(dtype).eps
        except (KeyError, IndexError, TypeError, AttributeError) as exc:
            log.warning("vLLM's processed inputs have a shape we do not know (%r); vLLM computes the log-mel", exc)
            return None
        ours = log_mel_window(samples, n_mels)
        difference = float(np.abs(theirs - ours).max()) if theirs.shape == ours.shape else float("inf")
        if difference > MAX_FEATURE_DIFFERENCE + resolution * float(np.abs(theirs).max()) / 2:
            log.warning(
                "our log-mel differs from vLLM's (shape %s, %s; largest difference %.2g): vLLM computes the log-mel",
                ours.shape,
                theirs.shape,
                difference,
            )
            return None
        log.info("log-mel computed by the caller: largest difference from vLLM's own %.1e", difference)
        template.pop("arrival_time", None)  # each window's own, set when vLLM takes it
        return cls(template, field, dtype)

    def build(self, features: np.ndarray, prompt: Sequence[int]) -> dict[str, Any]:
        """vLLM's processed input for one window: its log-mel (ours, [n_mels, 3000], float32 or bfloat16's bits),
        our decoder tokens."""
        import torch
        from vllm.multimodal.inputs import MultiModalFieldElem, MultiModalKwargsItem, MultiModalKwargsItems

        if features.dtype == np.uint16:  # bfloat16's bits (audio/features.bf16_bits): no copy, no rounding here
            data = torch.from_numpy(features.view(np.int16)).view(torch.bfloat16).to(self.dtype)
        else:
            data = torch.tensor(features, dtype=self.dtype)
        item = MultiModalKwargsItem({FEATURE_KEY: MultiModalFieldElem(data=data, field=self.field)})
        key = uuid.uuid4().hex  # vLLM keeps encoder outputs by it: every window its own
        decoder = {
            **self.template["decoder_prompt"],
            "prompt_token_ids": list(prompt),
            "mm_kwargs": MultiModalKwargsItems({MODALITY: [item]}),
            "mm_hashes": {MODALITY: [key]},
        }
        return {**self.template, "decoder_prompt": decoder}
