"""Windows as vLLM's processed inputs with our log-mel (engines/vllm_inputs.py).

vLLM and torch are not installed here: vLLM's input preprocessor is stood in for by one that computes its
features with faster-whisper's extractor (Hugging Face's algorithm, written independently of ours), and the
few vLLM and torch names the inputs are built from by plain containers. On a GPU the same check runs against
vLLM's own extractor when the engine starts.
"""

from __future__ import annotations

from dataclasses import dataclass
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
from faster_whisper.feature_extractor import FeatureExtractor

from tests.conftest import JFK
from tests.engines.stand_ins import install_modules
from whisper_endpoint.audio.decode import AudioSource, load_audio
from whisper_endpoint.audio.features import WINDOW_FRAMES, WINDOW_SAMPLES, bf16_bits, log_mel_window
from whisper_endpoint.engines.ctranslate2 import CTranslate2Engine
from whisper_endpoint.engines.vllm_inputs import FeatureInputs, check_window


class Tensor:
    """The part of a torch tensor the inputs use: its values and dtype."""

    def __init__(self, values: np.ndarray, dtype: str = "float32") -> None:
        self.values, self.dtype = np.array(values), dtype  # a copy, as torch.tensor makes

    def float(self) -> Tensor:
        return Tensor(self.values.astype(np.float32))

    def numpy(self) -> np.ndarray:
        return self.values

    def view(self, dtype: str) -> Tensor:
        """int16 bits seen as bfloat16: their float32 values (bf16 is float32's upper half)."""
        assert dtype == "bfloat16" and self.values.dtype == np.int16
        return Tensor((self.values.view(np.uint16).astype(np.uint32) << 16).view(np.float32), dtype)

    def to(self, dtype: str) -> Tensor:
        return Tensor(self.values, dtype)


@dataclass
class FieldElem:
    data: Tensor
    field: str


class KwargsItem(dict[str, Any]):
    pass


class KwargsItems(dict[str, Any]):
    pass


EPS = {"float32": 2.0**-23, "bfloat16": 2.0**-7}  # torch.finfo(dtype).eps


@pytest.fixture
def fake_vllm(monkeypatch: pytest.MonkeyPatch) -> None:
    install_modules(
        monkeypatch,
        {
            "torch": {
                "tensor": Tensor,
                "from_numpy": Tensor,
                "bfloat16": "bfloat16",
                "finfo": lambda dtype: SimpleNamespace(eps=EPS[dtype]),
            },
            "vllm.multimodal.inputs": {
                "MultiModalFieldElem": FieldElem,
                "MultiModalKwargsItem": KwargsItem,
                "MultiModalKwargsItems": KwargsItems,
            },
        },
    )


def bf16_rounded(values: np.ndarray) -> np.ndarray:
    """float32 values rounded to bf16's 8 bits of precision (to nearest, ties to even), as float32."""
    bits = values.astype(np.float32).view(np.uint32)
    rounded = (bits + 0x7FFF + ((bits >> 16) & 1)) & 0xFFFF0000
    return rounded.astype(np.uint32).view(np.float32)


class Preprocessor:
    """vLLM's processing of an explicit encoder/decoder prompt, in the shape vLLM 0.26 returns it."""

    def __init__(self, n_mels: int = 128, offset: float = 0.0, shape: str = "vllm-0.26", bf16: bool = False) -> None:
        self.extractor = FeatureExtractor(feature_size=n_mels)
        self.offset, self.shape, self.bf16 = offset, shape, bf16

    def preprocess(self, prompt: dict[str, Any]) -> dict[str, Any]:
        samples, _ = prompt["encoder_prompt"]["multi_modal_data"]["audio"]
        padded = np.concatenate([samples, np.zeros(WINDOW_SAMPLES - len(samples), np.float32)])
        features = self.extractor(padded, padding=0)[:, :WINDOW_FRAMES] + self.offset
        tensor = Tensor(bf16_rounded(features), "bfloat16") if self.bf16 else Tensor(features)
        item = KwargsItem(input_features=FieldElem(tensor, "batched over windows"))
        decoder = {
            "type": "multimodal",
            "prompt_token_ids": prompt["decoder_prompt"]["prompt_token_ids"],
            "mm_kwargs": KwargsItems(audio=[item]),
            "mm_hashes": {"audio": ["a hash of the samples"]},
            "mm_placeholders": {"audio": ["positions 0 to 1500"]},
        }
        if self.shape != "vllm-0.26":
            decoder.pop("mm_kwargs")
        encoder = {"type": "token", "prompt_token_ids": [0] * 1500}
        return {"type": "enc_dec", "encoder_prompt": encoder, "decoder_prompt": decoder, "arrival_time": 12.5}


def features(built: dict[str, Any]) -> Tensor:
    data: Tensor = built["decoder_prompt"]["mm_kwargs"]["audio"][0]["input_features"].data
    return data


def test_windows_carry_our_log_mel_and_our_prompt_exactly(engine: CTranslate2Engine, fake_vllm: None) -> None:
    tokenizer = engine.tokenizer
    # vLLM 0.26 hands over its features rounded to bf16 already: our float32 features match them
    inputs = FeatureInputs.from_vllm(Preprocessor(bf16=True), tokenizer.sot, 128)
    assert inputs is not None
    unrounded = FeatureInputs.from_vllm(Preprocessor(), tokenizer.sot, 128)
    assert unrounded is not None  # and the other extractor's float32 features
    audio = load_audio(AudioSource(JFK))
    previous = tokenizer.encode(" And so, my fellow Americans")
    prompt = (tokenizer.sot_prev, *previous, *tokenizer.sot_sequence("en", "transcribe", True))
    log_mel = log_mel_window(audio, 128)
    built = inputs.build(log_mel, prompt)
    decoder = built["decoder_prompt"]
    assert decoder["prompt_token_ids"] == list(prompt)  # no <|startoftranscript|> put before <|startofprev|>
    assert np.array_equal(features(built).values, log_mel)
    assert features(built).dtype == "bfloat16"  # in the dtype vLLM's own come in
    assert features(unrounded.build(log_mel, prompt)).dtype == "float32"
    # bfloat16's bits as a front-end process sends them: the same values vLLM's bf16 features would hold
    as_bits = features(inputs.build(bf16_bits(log_mel), prompt))
    assert as_bits.dtype == "bfloat16" and np.array_equal(as_bits.values, bf16_rounded(log_mel))
    assert (
        decoder["mm_kwargs"]["audio"][0]["input_features"].field == "batched over windows"
    )  # batched as vLLM batches its own
    assert built["encoder_prompt"] == {"type": "token", "prompt_token_ids": [0] * 1500}
    assert decoder["mm_placeholders"] == {"audio": ["positions 0 to 1500"]}
    assert "arrival_time" not in built  # vLLM stamps each window when it takes it
    again = inputs.build(log_mel, prompt)["decoder_prompt"]["mm_hashes"]["audio"]
    assert again != decoder["mm_hashes"]["audio"]  # vLLM keeps encoder outputs by it: one per window
    check = inputs.build(log_mel_window(check_window(), 128), (tokenizer.sot,))
    assert check["decoder_prompt"]["prompt_token_ids"] == [tokenizer.sot]


@pytest.mark.parametrize(
    "preprocessor",
    [Preprocessor(n_mels=80), Preprocessor(offset=0.02, bf16=True), Preprocessor(shape="another vLLM")],
    ids=["other mel bins", "other values", "other shape"],
)
def test_features_unlike_vllms_keep_its_own_processing(
    engine: CTranslate2Engine, preprocessor: Preprocessor, caplog: pytest.LogCaptureFixture, fake_vllm: None
) -> None:
    tokenizer = engine.tokenizer
    with caplog.at_level("WARNING", logger="whisper_endpoint.engines.vllm_inputs"):
        assert FeatureInputs.from_vllm(preprocessor, tokenizer.sot, 128) is None
    assert "vLLM computes the log-mel" in caplog.text
