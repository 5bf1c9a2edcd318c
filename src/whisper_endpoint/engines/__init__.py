"""Engines behind one small interface, imported lazily so missing optional packages only matter when used."""

from __future__ import annotations

import logging
import os
from typing import TYPE_CHECKING

from whisper_endpoint.errors import EngineUnavailableError, InvalidSettingsError

if TYPE_CHECKING:
    from whisper_endpoint.config import Settings
    from whisper_endpoint.engines.base import Engine

log = logging.getLogger(__name__)


def visible_gpus() -> list[str]:
    """The NVIDIA GPUs this process may use, as CUDA_VISIBLE_DEVICES names them (or their indices), found through
    NVML (nvidia-ml-py, which vLLM installs), never through vLLM: importing any of vLLM loads torch, which only
    the engine process needs (the server process carried it for this check alone)."""
    try:
        import pynvml

        pynvml.nvmlInit()
        try:
            count = int(pynvml.nvmlDeviceGetCount())
        finally:
            pynvml.nvmlShutdown()
    except Exception:
        return []
    listed = os.environ.get("CUDA_VISIBLE_DEVICES")
    if count and listed is not None:
        return [d for d in listed.split(",") if d.strip()]
    return [str(i) for i in range(count)]


def cuda_available() -> bool:
    """An NVIDIA GPU is visible: through NVML where it is installed (with vLLM), else through CTranslate2."""
    if visible_gpus():
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
