"""CTranslate2 Whisper folder -> Hugging Face layout (safetensors, config, tokenizer, preprocessor).

The GPU engine (vLLM) loads Hugging Face checkpoints; the bundled weights are CTranslate2 conversions.
CTranslate2's model.bin is a flat list of named tensors, so the way back is mechanical: split the fused
attention projections, rename, and give the tokenizer the 1,501 timestamp tokens a Hugging Face Whisper
tokenizer carries.
"""

from __future__ import annotations

import json
import logging
import re
import shutil
import struct
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np

from whisper_endpoint.decoding.languages import LANGUAGES
from whisper_endpoint.errors import EngineUnavailableError, WhisperEndpointError
from whisper_endpoint.models import BUNDLED_ALIASES, download_model, is_hub_id, resolve_model

log = logging.getLogger(__name__)

SUPPORTED_BINARY_VERSION = 6
CT2_DTYPES = {0: np.float32, 1: np.int8, 2: np.int16, 3: np.int32, 4: np.float16}
TIMESTAMP_TOKENS = 1501  # <|0.00|> ... <|30.00|>, one per 20 ms


def _string(f: BinaryIO) -> str:
    (length,) = struct.unpack("<H", f.read(2))
    return f.read(length).decode().rstrip("\0")


def read_ct2(path: Path) -> dict[str, np.ndarray]:
    """Every variable of a CTranslate2 model.bin (format version 6), aliases resolved."""
    with path.open("rb") as f:
        (version,) = struct.unpack("<I", f.read(4))
        if version != SUPPORTED_BINARY_VERSION:
            raise WhisperEndpointError(f"{path}: CTranslate2 format version {version} is not supported (only 6)")
        spec = _string(f)
        if spec != "WhisperSpec":
            raise WhisperEndpointError(f"{path}: a {spec}, not a Whisper model")
        f.read(4)  # spec revision
        (count,) = struct.unpack("<I", f.read(4))
        tensors: dict[str, np.ndarray] = {}
        for _ in range(count):
            name = _string(f)
            (rank,) = struct.unpack("<B", f.read(1))
            shape = struct.unpack(f"<{rank}I", f.read(4 * rank))
            (dtype_id,) = struct.unpack("<B", f.read(1))
            (nbytes,) = struct.unpack("<I", f.read(4))
            if dtype_id not in CT2_DTYPES:
                raise WhisperEndpointError(f"{path}: {name} has a quantised type ({dtype_id}); convert a float model")
            tensors[name] = np.frombuffer(f.read(nbytes), CT2_DTYPES[dtype_id]).reshape(shape)
        trailer = f.read(4)
        aliases = struct.unpack("<I", trailer)[0] if len(trailer) == 4 else 0
        for _ in range(aliases):
            alias, target = _string(f), _string(f)
            tensors[alias] = tensors[target]
    return tensors


def _split(t: np.ndarray, parts: int) -> list[np.ndarray]:
    return list(np.split(t, parts, axis=0))


def _attention(src: str, dst: str, t: dict[str, np.ndarray], fused_qkv: bool) -> Iterator[tuple[str, np.ndarray]]:
    if fused_qkv:
        q, k, v = _split(t[f"{src}/linear_0/weight"], 3)
        qb, _, vb = _split(t[f"{src}/linear_0/bias"], 3)  # Whisper's key projection has no bias
        out = "linear_1"
    else:  # cross-attention: query alone, key and value fused
        q, qb = t[f"{src}/linear_0/weight"], t[f"{src}/linear_0/bias"]
        k, v = _split(t[f"{src}/linear_1/weight"], 2)
        _, vb = _split(t[f"{src}/linear_1/bias"], 2)
        out = "linear_2"
    yield from [
        (f"{dst}.q_proj.weight", q),
        (f"{dst}.q_proj.bias", qb),
        (f"{dst}.k_proj.weight", k),
        (f"{dst}.v_proj.weight", v),
        (f"{dst}.v_proj.bias", vb),
        (f"{dst}.out_proj.weight", t[f"{src}/{out}/weight"]),
        (f"{dst}.out_proj.bias", t[f"{src}/{out}/bias"]),
    ]


def _norm(src: str, dst: str, t: dict[str, np.ndarray]) -> Iterator[tuple[str, np.ndarray]]:
    yield f"{dst}.weight", t[f"{src}/gamma"]
    yield f"{dst}.bias", t[f"{src}/beta"]


def _layers(t: dict[str, np.ndarray], side: str) -> int:
    return len({name.split("/")[1] for name in t if re.match(rf"{side}/layer_\d+/", name)})


def hf_tensors(t: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    out: dict[str, np.ndarray] = {}
    put = out.update
    for i in ("1", "2"):
        put({f"model.encoder.conv{i}.weight": t[f"encoder/conv{i}/weight"]})
        put({f"model.encoder.conv{i}.bias": t[f"encoder/conv{i}/bias"]})
    put({"model.encoder.embed_positions.weight": t["encoder/position_encodings/encodings"]})
    for n in range(_layers(t, "encoder")):
        src, dst = f"encoder/layer_{n}", f"model.encoder.layers.{n}"
        put(_attention(f"{src}/self_attention", f"{dst}.self_attn", t, fused_qkv=True))
        put(_norm(f"{src}/self_attention/layer_norm", f"{dst}.self_attn_layer_norm", t))
        put(_ffn(src, dst, t))
    put(_norm("encoder/layer_norm", "model.encoder.layer_norm", t))
    put({"model.decoder.embed_tokens.weight": t["decoder/embeddings/weight"]})
    put({"model.decoder.embed_positions.weight": t["decoder/position_encodings/encodings"]})
    for n in range(_layers(t, "decoder")):
        src, dst = f"decoder/layer_{n}", f"model.decoder.layers.{n}"
        put(_attention(f"{src}/self_attention", f"{dst}.self_attn", t, fused_qkv=True))
        put(_norm(f"{src}/self_attention/layer_norm", f"{dst}.self_attn_layer_norm", t))
        put(_attention(f"{src}/attention", f"{dst}.encoder_attn", t, fused_qkv=False))
        put(_norm(f"{src}/attention/layer_norm", f"{dst}.encoder_attn_layer_norm", t))
        put(_ffn(src, dst, t))
    put(_norm("decoder/layer_norm", "model.decoder.layer_norm", t))
    return {name: np.ascontiguousarray(value) for name, value in out.items()}


def _ffn(src: str, dst: str, t: dict[str, np.ndarray]) -> Iterator[tuple[str, np.ndarray]]:
    yield f"{dst}.fc1.weight", t[f"{src}/ffn/linear_0/weight"]
    yield f"{dst}.fc1.bias", t[f"{src}/ffn/linear_0/bias"]
    yield f"{dst}.fc2.weight", t[f"{src}/ffn/linear_1/weight"]
    yield f"{dst}.fc2.bias", t[f"{src}/ffn/linear_1/bias"]
    yield from _norm(f"{src}/ffn/layer_norm", f"{dst}.final_layer_norm", t)


def write_safetensors(path: Path, tensors: dict[str, np.ndarray]) -> None:
    """The safetensors layout: little-endian u64 header size, JSON header, then the raw tensors."""
    names = {np.dtype(np.float16): "F16", np.dtype(np.float32): "F32"}
    header: dict[str, Any] = {"__metadata__": {"format": "pt"}}
    offset = 0
    for name, value in tensors.items():
        header[name] = {
            "dtype": names[value.dtype],
            "shape": list(value.shape),
            "data_offsets": [offset, offset + value.nbytes],
        }
        offset += value.nbytes
    encoded = json.dumps(header, separators=(",", ":")).encode()
    encoded += b" " * (-len(encoded) % 8)
    with path.open("wb") as f:
        f.write(struct.pack("<Q", len(encoded)))
        f.write(encoded)
        for value in tensors.values():
            f.write(value.tobytes())


def _tokenizer_with_timestamps(src: Path) -> tuple[dict[str, Any], dict[str, int]]:
    tokenizer = json.loads(src.read_text(encoding="utf-8"))
    added = tokenizer["added_tokens"]
    ids = {a["content"]: int(a["id"]) for a in added}
    no_timestamps = ids["<|notimestamps|>"]
    if not any(a["content"] == "<|0.00|>" for a in added):
        added += [
            {
                "id": no_timestamps + 1 + i,
                "content": f"<|{i * 0.02:.2f}|>",
                "single_word": False,
                "lstrip": False,
                "rstrip": False,
                "normalized": False,
                "special": True,
            }
            for i in range(TIMESTAMP_TOKENS)
        ]
    return tokenizer, ids


def _is_language_token(token: str) -> bool:
    return token.startswith("<|") and token.endswith("|>") and token[2:-2] in LANGUAGES


def convert(src: Path, out: Path) -> Path:
    """Write the Hugging Face checkpoint of the CTranslate2 model in `src` to `out`; returns `out`."""
    tensors = read_ct2(src / "model.bin")
    ct2_config = json.loads((src / "config.json").read_text())
    weights = hf_tensors({k: v.astype(np.float16) if v.dtype == np.float32 else v for k, v in tensors.items()})
    tokenizer, special = _tokenizer_with_timestamps(src / "tokenizer.json")
    eot, sot = special["<|endoftext|>"], special["<|startoftranscript|>"]
    d_model = int(weights["model.encoder.conv1.weight"].shape[0])
    vocab = int(weights["model.decoder.embed_tokens.weight"].shape[0])
    heads = int(tensors["encoder/num_heads"]) if "encoder/num_heads" in tensors else d_model // 64
    config = {
        "architectures": ["WhisperForConditionalGeneration"],
        "model_type": "whisper",
        "d_model": d_model,
        "encoder_layers": _layers(tensors, "encoder"),
        "decoder_layers": _layers(tensors, "decoder"),
        "num_hidden_layers": _layers(tensors, "encoder"),
        "encoder_attention_heads": heads,
        "decoder_attention_heads": heads,
        "encoder_ffn_dim": int(weights["model.encoder.layers.0.fc1.weight"].shape[0]),
        "decoder_ffn_dim": int(weights["model.decoder.layers.0.fc1.weight"].shape[0]),
        "num_mel_bins": int(weights["model.encoder.conv1.weight"].shape[1]),
        "vocab_size": vocab,
        "max_source_positions": int(weights["model.encoder.embed_positions.weight"].shape[0]),
        "max_target_positions": int(weights["model.decoder.embed_positions.weight"].shape[0]),
        "activation_function": "gelu",
        "scale_embedding": False,
        "tie_word_embeddings": True,
        "bos_token_id": eot,
        "eos_token_id": eot,
        "pad_token_id": eot,
        "decoder_start_token_id": sot,
        "begin_suppress_tokens": ct2_config.get("suppress_ids_begin", [220, eot]),
        "suppress_tokens": ct2_config.get("suppress_ids", []),
        "torch_dtype": "float16",
        "use_cache": True,
        "is_encoder_decoder": True,
    }
    out.mkdir(parents=True, exist_ok=True)
    write_safetensors(out / "model.safetensors", weights)
    (out / "config.json").write_text(json.dumps(config, indent=1))
    (out / "tokenizer.json").write_text(json.dumps(tokenizer, ensure_ascii=False))
    (out / "tokenizer_config.json").write_text(
        json.dumps(
            {
                "tokenizer_class": "WhisperTokenizer",
                "model_max_length": 1024,
                "bos_token": "<|endoftext|>",
                "eos_token": "<|endoftext|>",
                "unk_token": "<|endoftext|>",
                "pad_token": "<|endoftext|>",
                "processor_class": "WhisperProcessor",
            },
            indent=1,
        )
    )
    (out / "preprocessor_config.json").write_text(
        json.dumps(
            {
                "feature_extractor_type": "WhisperFeatureExtractor",
                "feature_size": config["num_mel_bins"],
                "sampling_rate": 16000,
                "hop_length": 160,
                "chunk_length": 30,
                "n_fft": 400,
                "n_samples": 480000,
                "nb_max_frames": 3000,
                "padding_side": "right",
                "padding_value": 0.0,
                "return_attention_mask": False,
                "processor_class": "WhisperProcessor",
            },
            indent=1,
        )
    )
    (out / "generation_config.json").write_text(
        json.dumps(
            {
                "decoder_start_token_id": sot,
                "eos_token_id": eot,
                "pad_token_id": eot,
                "bos_token_id": eot,
                "max_length": config["max_target_positions"],
                "no_timestamps_token_id": special["<|notimestamps|>"],
                "lang_to_id": {t: i for t, i in special.items() if _is_language_token(t)},
                "task_to_id": {"transcribe": special["<|transcribe|>"], "translate": special["<|translate|>"]},
                "is_multilingual": vocab >= 51865,
                "alignment_heads": ct2_config.get("alignment_heads", []),
                "begin_suppress_tokens": config["begin_suppress_tokens"],
                "suppress_tokens": config["suppress_tokens"],
            },
            indent=1,
        )
    )
    return out


def model_folder(model: str, cache_dir: Path) -> Path:
    """A Hugging Face Whisper folder for vLLM: the folder given or fetched from the hub, or the conversion
    of a bundled alias or a CTranslate2 folder, made once into the cache."""
    path = Path(model).expanduser()
    if is_hub_id(model):
        path = download_model(model, cache_dir)  # a clear error offline
        if not (path / "config.json").is_file() and (path / "model.bin").is_file():
            model = str(path)  # a CTranslate2 repo: converted below
    if (path / "config.json").is_file() and not (path / "model.bin").is_file():  # model.bin: CTranslate2's
        return path  # weights in any layout vLLM reads, or none (load_format=dummy)
    if model not in BUNDLED_ALIASES and not (path / "model.bin").is_file():
        raise EngineUnavailableError(
            f"--engine vllm needs a Hugging Face Whisper folder (config.json, safetensors, tokenizer.json), a "
            f"bundled alias, a hub repo id or a CTranslate2 folder; {model!r} is none of them"
        )
    files = resolve_model(model, cache_dir)
    out = cache_dir / "hf" / files.name
    if not (out / "model.safetensors").is_file():
        log.info("converting %s to the Hugging Face layout in %s", files.path, out)
        out.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=out.parent) as tmp:  # atomic: a half-written folder never counts
            shutil.rmtree(out, ignore_errors=True)
            convert(files.path, Path(tmp) / "model").rename(out)
    return out
