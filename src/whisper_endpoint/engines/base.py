"""The engine interface: what the decoding layer needs from a Whisper implementation.

Everything works on batches of <= 30 s windows: their 16 kHz samples and, for engines that want
them (`Capabilities.log_mel_input`), our log-mel features [n_mels, 3000].
"""

from __future__ import annotations

import threading
import zlib
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, fields
from typing import Any, Protocol

import numpy as np

from whisper_endpoint.decoding.tokenizer import Tokenizer


@dataclass(frozen=True)
class Capabilities:
    """What an engine can do; the API answers a clear 400 for anything switched off here."""

    word_timestamps: bool = True
    token_logprobs: bool = True
    language_detection: bool = True
    beam_search: bool = True
    log_mel_input: bool = True  # False: the engine computes its own features from the samples
    log_mel_bf16: bool = False  # True: the log-mel travels rounded to bfloat16, as its bits (audio/features.bf16_bits)
    continuous_batching: bool = False  # True: concurrent calls join one running batch inside the engine


@dataclass(frozen=True)
class SamplingOptions:
    """Options shared by every window of one engine call (windows are grouped by these)."""

    temperature: float = 0.0
    beam_size: int = 1
    max_new_tokens: int = 224
    suppress_blank: bool = True
    suppress_tokens: tuple[int, ...] = (-1,)
    token_logprobs: bool = False
    max_initial_timestamp_index: int = 50
    no_speech_prob: bool = True  # False: the engine may skip computing it and report None


def sampling_seed(window: WindowInput, temperature: float) -> int:
    """The random seed for sampling one window at a temperature above 0 (Whisper's fallback): made from the
    window's own audio and prompt, so its text never depends on which other windows, of this request or
    another, were sampled beside it or before it."""
    content = window.samples if window.samples is not None else window.features
    seed = zlib.crc32(np.ascontiguousarray(content).tobytes()) if content is not None else 0
    seed = zlib.crc32(np.asarray(window.prompt, np.int64).tobytes(), seed)
    return zlib.crc32(f"{temperature:.3f}".encode(), seed)


@dataclass(frozen=True)
class WindowInput:
    """One window: its features (None for engines that compute their own) and the full decoder prompt
    (previous text + SOT sequence)."""

    features: np.ndarray | None
    prompt: tuple[int, ...]
    duration_ms: int = 30_000  # real audio in the window; the rest of the 30 s is padding
    samples: np.ndarray | None = None  # the window's 16 kHz audio, for engines and packing that need it


class HandedOverWindows(list[WindowInput]):
    """A call's windows in a list its caller does not read again (made for this one call, or received from
    another process): an engine may take each window out once it has a copy of its own, and where nothing else
    holds that window, its features go then. Under load about a thousand windows wait for vLLM at once, each
    with 0.77 MB of log-mel, which vLLM holds itself from when the window is added."""


def let_go(items: Sequence[Any]) -> None:
    """Empty `items` where they were handed over (HandedOverWindows), once they have been passed on: from then
    on nothing of the caller's holds them."""
    if isinstance(items, HandedOverWindows):
        items.clear()


@dataclass(frozen=True)
class Generation:
    """Generated tokens (prompt excluded, EOT excluded) and their scores."""

    tokens: tuple[int, ...]
    sum_logprob: float
    no_speech_prob: float | None  # None: not computed, the call did not ask for it
    token_logprobs: tuple[float, ...] | None = None


@dataclass(frozen=True)
class AlignInput:
    """Text tokens of one window to align against its audio; `num_frames` counts mel frames of real audio."""

    features: np.ndarray | None
    sot_sequence: tuple[int, ...]
    text_tokens: tuple[int, ...]
    num_frames: int


@dataclass(frozen=True)
class Alignment:
    """For each text token (and EOT), the time in ms, relative to the window, where it starts."""

    token_start_ms: tuple[int, ...]
    token_probs: tuple[float, ...]


class Cancellation:
    """Set once the request behind an engine call no longer wants its result (its client left, the server
    stopped it). An engine that can drop windows it is already decoding (vLLM) registers that with `on_set`;
    the others finish the call, and the request makes no further one."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._set = False
        self._callbacks: list[Callable[[], None]] = []

    def is_set(self) -> bool:
        return self._set

    def set(self) -> None:
        with self._lock:
            if self._set:
                return
            self._set = True
            callbacks, self._callbacks = self._callbacks, []
        for callback in callbacks:
            callback()

    def on_set(self, callback: Callable[[], None]) -> Callable[[], None]:
        """Run `callback` when this is set (now, if it is already); returns what unregisters it."""
        with self._lock:
            if not self._set:
                self._callbacks.append(callback)
                return lambda: self._forget(callback)
        callback()
        return lambda: None

    def _forget(self, callback: Callable[[], None]) -> None:
        with self._lock:
            if callback in self._callbacks:
                self._callbacks.remove(callback)


@contextmanager
def on_cancel(cancellation: Cancellation | None, callback: Callable[[], None]) -> Iterator[None]:
    """`callback` runs if `cancellation` (where given) is set while the block runs, or was set before."""
    forget = cancellation.on_set(callback) if cancellation else None
    try:
        yield
    finally:
        if forget:
            forget()


class Engine(Protocol):
    name: str
    model_name: str
    tokenizer: Tokenizer
    n_mels: int
    multilingual: bool
    capabilities: Capabilities
    max_batch_size: int

    def generate(
        self, windows: Sequence[WindowInput], options: SamplingOptions, cancellation: Cancellation | None = None
    ) -> list[Generation]:
        """Each window's decode; windows still decoding when `cancellation` is set may end the call with
        CancelledRequestError instead."""
        ...

    def detect_language(self, windows: Sequence[WindowInput]) -> list[dict[str, float]]:
        """Per window, probability of each language code (the windows' prompts are not used)."""
        ...

    def align(self, items: Sequence[AlignInput]) -> list[Alignment]: ...

    def close(self) -> None: ...


@dataclass(frozen=True)
class EngineDescription:
    """An engine's descriptive attributes, as the engines that wrap others (scheduler, pool, engine
    process) pass them on."""

    name: str
    model_name: str
    tokenizer: Tokenizer
    n_mels: int
    multilingual: bool
    capabilities: Capabilities
    max_batch_size: int

    @classmethod
    def of(cls, engine: Engine) -> EngineDescription:
        return cls(**{f.name: getattr(engine, f.name) for f in fields(cls)})


class DescribedEngine:
    """Base of the wrapping engines: the Engine interface's attributes, set from one description."""

    def __init__(self, description: EngineDescription) -> None:
        self.name = description.name
        self.model_name = description.model_name
        self.tokenizer = description.tokenizer
        self.n_mels = description.n_mels
        self.multilingual = description.multilingual
        self.capabilities = description.capabilities
        self.max_batch_size = description.max_batch_size


def engine_alive(engine: Engine) -> bool:
    """False once an engine in another process has ended (`alive`); engines in this process live as long
    as it does."""
    return bool(getattr(engine, "alive", True))
