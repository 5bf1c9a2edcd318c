"""CTranslate2 -> Hugging Face conversion, checked tensor by tensor against the CTranslate2 original."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import numpy as np
from tokenizers import Tokenizer

from whisper_endpoint.config import Settings
from whisper_endpoint.convert import convert, model_folder, read_ct2
from whisper_endpoint.models import resolve_model


def _read_safetensors(path: Path) -> dict[str, np.ndarray]:
    data = path.read_bytes()
    (size,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8 : 8 + size])
    header.pop("__metadata__")
    body = memoryview(data)[8 + size :]
    dtypes = {"F16": np.float16, "F32": np.float32}
    return {
        name: np.frombuffer(body[s:e], dtypes[info["dtype"]]).reshape(info["shape"])
        for name, info in header.items()
        for s, e in [info["data_offsets"]]
    }


def test_tiny_en_converts_to_the_hugging_face_layout(tmp_path: Path) -> None:
    src = resolve_model("tiny.en", Settings().cache_dir).path
    out = convert(src, tmp_path / "tiny.en")
    ct2 = read_ct2(src / "model.bin")
    hf = _read_safetensors(out / "model.safetensors")
    config = json.loads((out / "config.json").read_text())
    assert (config["encoder_layers"], config["decoder_layers"], config["d_model"]) == (4, 4, 384)
    assert config["vocab_size"] == 51864 and config["num_mel_bins"] == 80
    # convs and positions, 15 per encoder layer, final norm; embeddings, 24 per decoder layer, final norm
    # (proj_out is tied to the embeddings): the 245 of whisper-base, scaled to 4 layers
    assert len(hf) == 5 + 15 * 4 + 2 + 2 + 24 * 4 + 2
    # The fused projections split back exactly.
    qkv = ct2["encoder/layer_2/self_attention/linear_0/weight"]
    parts = [hf[f"model.encoder.layers.2.self_attn.{p}_proj.weight"] for p in "qkv"]
    assert np.array_equal(np.concatenate(parts), qkv.astype(np.float16))
    kv = ct2["decoder/layer_3/attention/linear_1/weight"]
    cross = [hf[f"model.decoder.layers.3.encoder_attn.{p}_proj.weight"] for p in "kv"]
    assert np.array_equal(np.concatenate(cross), kv.astype(np.float16))
    assert "model.encoder.layers.0.self_attn.k_proj.bias" not in hf  # Whisper's key projection has none
    assert np.array_equal(hf["model.decoder.embed_tokens.weight"], ct2["decoder/embeddings/weight"].astype(np.float16))

    tokenizer = Tokenizer.from_file(str(out / "tokenizer.json"))
    no_timestamps = tokenizer.token_to_id("<|notimestamps|>")
    assert tokenizer.token_to_id("<|0.00|>") == no_timestamps + 1
    assert tokenizer.token_to_id("<|30.00|>") == no_timestamps + 1501
    generation = json.loads((out / "generation_config.json").read_text())
    assert generation["decoder_start_token_id"] == tokenizer.token_to_id("<|startoftranscript|>")
    assert generation["eos_token_id"] == tokenizer.token_to_id("<|endoftext|>")
    assert generation["task_to_id"]["transcribe"] == tokenizer.token_to_id("<|transcribe|>")
    assert json.loads((out / "preprocessor_config.json").read_text())["feature_size"] == 80
    # The vLLM engine suppresses the same non-speech symbols as CTranslate2 (suppress_tokens=-1).
    from whisper_endpoint.engines.vllm import model_suppress_tokens

    ct2_suppress = json.loads((src / "config.json").read_text())["suppress_ids"]
    assert len(ct2_suppress) > 50 and model_suppress_tokens(out) == tuple(ct2_suppress)


def test_bundled_weights_are_converted_once_for_vllm(tmp_path: Path) -> None:
    folder = model_folder("tiny.en", tmp_path)
    assert folder == tmp_path / "hf" / "tiny.en"
    assert (folder / "model.safetensors").is_file() and (folder / "tokenizer.json").is_file()
    written = (folder / "model.safetensors").stat().st_mtime_ns
    assert model_folder("tiny.en", tmp_path) == folder
    assert (folder / "model.safetensors").stat().st_mtime_ns == written  # reused, not converted again
    assert model_folder(str(folder), tmp_path) == folder  # a Hugging Face folder is used as it is
    assert [p.name for p in (tmp_path / "hf").iterdir()] == ["tiny.en"]  # no temporary folder left
    ct2 = resolve_model("tiny.en", tmp_path).path  # a CTranslate2 folder has a config.json too: converted
    converted = model_folder(str(ct2), tmp_path)
    assert converted != ct2 and (converted / "model.safetensors").is_file()
