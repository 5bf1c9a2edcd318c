"""OpenAI's Realtime transcription protocol: a session's settings from the client's update events (the GA
`session.update` and the beta `transcription_session.update` shapes), and the session and error objects the
server sends back."""

from __future__ import annotations

import uuid
from dataclasses import dataclass, replace
from typing import Any

from whisper_endpoint.decoding.languages import LANGUAGES
from whisper_endpoint.decoding.options import DecodeOptions
from whisper_endpoint.errors import InvalidRequestError, WhisperEndpointError
from whisper_endpoint.serving.live import TurnDetection

PREVIOUS_TEXT_CHARS = 500  # of the last turn, in the next turn's prompt (Whisper keeps 223 tokens at most)
DEFAULT_TURN_DETECTION = TurnDetection()


def new_id(prefix: str) -> str:
    return f"{prefix}_{uuid.uuid4().hex[:20]}"


@dataclass(frozen=True)
class SessionConfig:
    model: str = "whisper-1"
    language: str | None = None
    prompt: str | None = None
    rate: int = 24_000
    turn_detection: TurnDetection | None = DEFAULT_TURN_DETECTION

    def options(self, previous_text: str) -> DecodeOptions:
        """A turn decodes after the session's prompt and the previous turn's text, as Whisper conditions each
        window on the text before it: alone, a short turn ("ask not") is often misheard."""
        prompt = " ".join(p for p in (self.prompt, previous_text) if p) or None
        return DecodeOptions(language=self.language, prompt=prompt, condition_on_previous_text=False)


def _number(value: Any, name: str, low: float, high: float) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not low <= value <= high:
        raise InvalidRequestError(f"{name} must be a number from {low:g} to {high:g}", param=name)
    return float(value)


def _turn_detection(value: Any) -> TurnDetection | None:
    if value is None:
        return None
    if not isinstance(value, dict) or value.get("type", "server_vad") != "server_vad":
        raise InvalidRequestError("turn_detection: only server_vad or null", param="turn_detection")
    base = TurnDetection()
    return TurnDetection(
        threshold=_number(value.get("threshold", base.threshold), "turn_detection.threshold", 0, 1),
        prefix_padding_ms=int(
            _number(value.get("prefix_padding_ms", 300), "turn_detection.prefix_padding_ms", 0, 5000)
        ),
        silence_duration_ms=int(
            _number(value.get("silence_duration_ms", 500), "turn_detection.silence_duration_ms", 100, 10_000)
        ),
    )


def _rate(audio_format: Any) -> int:
    """pcm16 (OpenAI's 24 kHz), or {"type": "audio/pcm", "rate": 24000 or 16000}."""
    if audio_format == "pcm16":
        return 24_000
    if isinstance(audio_format, dict) and audio_format.get("type") == "audio/pcm":
        rate = audio_format.get("rate", 24_000)
        if rate in (16_000, 24_000):
            return int(rate)
    raise InvalidRequestError("input audio format: pcm16 at 24000 or 16000 Hz only", param="input_audio_format")


def updated_config(config: SessionConfig, event: dict[str, Any]) -> SessionConfig:
    """The session after a `session.update` (GA shape) or `transcription_session.update` (beta shape)."""
    session = event.get("session")
    if not isinstance(session, dict):
        raise InvalidRequestError("session must be an object", param="session")
    if event["type"] == "session.update":
        if session.get("type", "transcription") != "transcription":
            raise InvalidRequestError("this server has transcription sessions only", param="session.type")
        settings = (session.get("audio") or {}).get("input") or {}
        audio_format, transcription = settings.get("format"), settings.get("transcription")
    else:
        settings = session
        audio_format, transcription = session.get("input_audio_format"), session.get("input_audio_transcription")
    if audio_format is not None:
        config = replace(config, rate=_rate(audio_format))
    if "turn_detection" in settings:
        config = replace(config, turn_detection=_turn_detection(settings["turn_detection"]))
    if transcription is not None:
        if not isinstance(transcription, dict):
            raise InvalidRequestError("transcription must be an object", param="transcription")
        language = transcription.get("language") or None
        if language is not None and language not in LANGUAGES:
            raise InvalidRequestError(f"unknown language {language!r}", param="transcription.language")
        prompt = transcription.get("prompt")
        config = replace(
            config, model=str(transcription.get("model") or config.model), language=language, prompt=prompt or None
        )
    return config


def session_object(config: SessionConfig, session_id: str) -> dict[str, Any]:
    """The session as OpenAI describes a transcription session (GA shape)."""
    turn = None
    if config.turn_detection is not None:
        turn = {"type": "server_vad", **config.turn_detection.__dict__}
    return {
        "type": "transcription",
        "id": session_id,
        "object": "realtime.transcription_session",
        "audio": {
            "input": {
                "format": {"type": "audio/pcm", "rate": config.rate},
                "transcription": {"model": config.model, "language": config.language, "prompt": config.prompt or ""},
                "turn_detection": turn,
                "noise_reduction": None,
            }
        },
    }


def error_event(exc: WhisperEndpointError, client_event_id: str | None = None) -> dict[str, Any]:
    return {"type": "error", "event_id": new_id("event"), "error": {**exc.body(), "event_id": client_event_id}}
