"""Engines behind one small interface, imported lazily so missing optional packages only matter when used."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from whisper_endpoint.errors import EngineUnavailableError, InvalidSettingsError

if TYPE_CHECKING:
    from whisper_endpoint.config import Settings
    from whisper_endpoint.engines.base import Engine

log = logging.getLogger(__name__)


def cuda_available() -> bool:
    """An NVIDIA GPU is visible: through vLLM's platform layer (NVML) where vLLM is installed, else CTranslate2."""
    if vllm_installed():
        from whisper_endpoint.engines.vllm import cuda_capability

        if cuda_capability() is not None:
            return True
    try:
        import ctranslate2

        return int(ctranslate2.get_cuda_device_count()) > 0
    except Exception:
        return False


def vllm_installed() -> bool:
    import importlib.util

    return importlib.util.find_spec("vllm") is not None


def choose_engine(settings: Settings) -> str:
    if settings.engine != "auto":
        return settings.engine
    return "vllm" if vllm_installed() and cuda_available() else "ctranslate2"


def check_engine(settings: Settings) -> None:
    """Fail in one line, before anything loads, when the chosen engine cannot run here or a setting would do
    nothing with it."""
    from whisper_endpoint.config import settings_unused_by

    kind = choose_engine(settings)
    unused = settings_unused_by(settings, kind)
    if unused:
        verb = "does" if len(unused) == 1 else "do"
        raise InvalidSettingsError(f"{' and '.join(unused)} {verb} nothing with the {kind} engine; unset it")
    if kind != "vllm":
        return
    if not vllm_installed():
        raise EngineUnavailableError(
            "--engine vllm needs vLLM: pip install 'whisper-endpoint[gpu]' on a machine with an NVIDIA GPU"
        )
    if not cuda_available():
        raise EngineUnavailableError("--engine vllm needs an NVIDIA GPU, and none is visible here")


def load_engine(settings: Settings) -> Engine:
    check_engine(settings)
    kind = choose_engine(settings)
    log.info("loading engine %s with model %s", kind, settings.model)
    if kind == "ctranslate2":
        from whisper_endpoint.engines.ctranslate2 import CTranslate2Engine

        return CTranslate2Engine.from_settings(settings)
    if kind == "vllm":  # check_engine has seen that vLLM and a GPU are here
        from whisper_endpoint.engines.pool import vllm_pool

        return vllm_pool(settings)
    raise EngineUnavailableError(f"unknown engine {kind!r}")
