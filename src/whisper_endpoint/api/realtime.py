"""Live transcription over WebSocket, in the shapes of OpenAI's Realtime API for transcription sessions.

`GET /v1/realtime?intent=transcription` upgraded to a WebSocket. The client configures the session
(`session.update` with `session.type = "transcription"`, or the older `transcription_session.update`), appends
base64 pcm16 audio and, without server VAD, commits it; the server answers with OpenAI's events: speech started
and stopped, committed, transcription deltas while a turn is open, completed at its end, and `error` events for
bad input (the connection stays open). A session counts as one request in flight against admission control and
decodes through the same scheduler as file requests, batched with them.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hmac
import json
import logging
import time
from typing import Any

import numpy as np
from fastapi import WebSocket, WebSocketDisconnect

from whisper_endpoint.api.middleware import authorized, error_response
from whisper_endpoint.api.realtime_protocol import (
    PREVIOUS_TEXT_CHARS,
    SessionConfig,
    error_event,
    new_id,
    session_object,
    updated_config,
)
from whisper_endpoint.audio import SAMPLE_RATE
from whisper_endpoint.errors import (
    AuthenticationError,
    InvalidRequestError,
    ShuttingDownError,
    WhisperEndpointError,
)
from whisper_endpoint.serving.live import LocalAgreement, PcmInput, TurnDetection, TurnDetector
from whisper_endpoint.serving.service import Job, TranscriptionService

log = logging.getLogger(__name__)

MAX_APPEND_BYTES = 15 * 1024 * 1024  # one append's base64 audio, as OpenAI limits it
MIN_COMMIT_MS = 100  # OpenAI refuses to commit less
MAX_TURN_MS = 120_000  # a turn that long is committed as it stands: memory stays bounded
DRAIN_POLL_S = 0.1
GOING_AWAY = 1001  # WebSocket close code: the server is going down
PARTIAL_EVERY_MS = 1_000  # an open turn is decoded again after this much new audio
TAIL_MS = 300  # silence kept after a turn's last speech, as a file's chunks keep it
IDLE_KEEP_MS = 5_000  # audio kept between turns: more than any prefix padding (OpenAI's allows up to 5 s)
CLIENT_EVENTS = (
    "session.update",
    "transcription_session.update",
    "input_audio_buffer.append",
    "input_audio_buffer.commit",
    "input_audio_buffer.clear",
)


class LiveSession:
    """One WebSocket's session: audio in, turns cut, decodes queued one after the other, events out."""

    def __init__(self, websocket: WebSocket, service: TranscriptionService, job: Job) -> None:
        self.ws, self.service, self.job = websocket, service, job
        self.metrics = service.metrics
        self.config = SessionConfig()
        self.session_id = new_id("sess")
        self.pcm = PcmInput(self.config.rate)
        self.detector: TurnDetector | None = TurnDetector(TurnDetection())
        self.buffer = np.zeros(0, np.float32)  # audio since `buffer_start` (16 kHz samples)
        self.buffer_start = 0  # session sample where the buffer starts
        self.received = 0  # session samples received
        self.turn_start: int | None = None  # session sample where the open turn starts
        self.item_id = new_id("item")
        self.previous_item: str | None = None
        self.agreement = LocalAgreement()
        self.last_partial = 0
        self.work: asyncio.Queue[tuple[str, str, np.ndarray, LocalAgreement, float]] = asyncio.Queue()
        self.partial_queued = False
        self.previous_text = ""  # the last completed turn's text
        self.send_lock = asyncio.Lock()

    async def send(self, event: dict[str, Any]) -> None:
        event.setdefault("event_id", new_id("event"))
        async with self.send_lock:
            await self.ws.send_text(json.dumps(event))

    async def run(self) -> None:
        await self.send({"type": "session.created", "session": session_object(self.config, self.session_id)})
        decoder = asyncio.create_task(self._decode_loop())
        drain = asyncio.create_task(self._draining())
        receive: asyncio.Task[Any] | None = None
        try:
            while True:
                receive = receive or asyncio.create_task(self.ws.receive())
                done, _ = await asyncio.wait({receive, drain, decoder}, return_when=asyncio.FIRST_COMPLETED)
                if decoder in done:  # it only ends by failing: the session's decodes were stopped
                    decoder.result()
                if drain in done:
                    await self._finish(decoder)
                    return
                message, receive = receive.result(), None
                if message["type"] == "websocket.disconnect":
                    return
                await self._handle(message.get("text"))  # binary messages: not an event, an error event
        finally:
            for task in (receive, drain, decoder):
                if task is not None:
                    task.cancel()

    async def _draining(self) -> None:
        while not self.service.draining:
            await asyncio.sleep(DRAIN_POLL_S)

    async def _finish(self, decoder: asyncio.Task[None]) -> None:
        """The server is draining: the open turn is committed, every committed turn transcribed, then the
        session ends (an error event says why, and the socket closes as "going away")."""
        if self.turn_start is not None and (self.received - self.turn_start) * 1000 >= MIN_COMMIT_MS * SAMPLE_RATE:
            await self._commit(self.turn_start, self.received)
        transcribed = asyncio.create_task(self.work.join())
        await asyncio.wait({transcribed, decoder}, return_when=asyncio.FIRST_COMPLETED)  # or the decodes stopped
        transcribed.cancel()
        await self.send(error_event(ShuttingDownError("the server is shutting down; this session has ended")))
        await self.ws.close(GOING_AWAY)

    async def _handle(self, text: str | None) -> None:
        client_event_id = None
        try:
            if text is None:
                raise InvalidRequestError("send events as JSON text messages", code="invalid_event")
            if len(text) > MAX_APPEND_BYTES + 1024:
                raise InvalidRequestError("event too large: at most 15 MiB of audio per append", code="invalid_event")
            try:
                event = json.loads(text)
            except json.JSONDecodeError as exc:
                raise InvalidRequestError(f"not JSON: {exc.msg}", code="invalid_json") from exc
            if isinstance(event, dict) and isinstance(event.get("event_id"), str):
                client_event_id = event["event_id"]
            if not isinstance(event, dict) or event.get("type") not in CLIENT_EVENTS:
                kind = event.get("type") if isinstance(event, dict) else None
                raise InvalidRequestError(f"unknown event type {kind!r}", param="type", code="invalid_event")
            await self._dispatch(event)
        except WhisperEndpointError as exc:
            self.metrics.errors.labels(exc.code or exc.error_type).inc()
            await self.send(error_event(exc, client_event_id))

    async def _dispatch(self, event: dict[str, Any]) -> None:
        kind = event["type"]
        if kind in ("session.update", "transcription_session.update"):
            self.config = updated_config(self.config, event)
            if self.config.rate != self.pcm.rate:
                self.pcm = PcmInput(self.config.rate)
            detection = self.config.turn_detection
            self.detector = None if detection is None else TurnDetector(detection)
            reply = "session.updated" if kind == "session.update" else "transcription_session.updated"
            await self.send({"type": reply, "session": session_object(self.config, self.session_id)})
        elif kind == "input_audio_buffer.append":
            await self._append(event.get("audio"))
        elif kind == "input_audio_buffer.commit":
            start = self.turn_start if self.turn_start is not None else self.buffer_start
            if (self.received - start) * 1000 < MIN_COMMIT_MS * SAMPLE_RATE:
                raise InvalidRequestError(
                    f"buffer too small: at least {MIN_COMMIT_MS} ms of audio to commit",
                    code="input_audio_buffer_commit_empty",
                )
            await self._commit(start, self.received)
        else:  # input_audio_buffer.clear
            self.buffer, self.buffer_start, self.turn_start = np.zeros(0, np.float32), self.received, None
            self.agreement = LocalAgreement()
            await self.send({"type": "input_audio_buffer.cleared"})

    async def _append(self, audio: Any) -> None:
        if not isinstance(audio, str) or not audio:
            raise InvalidRequestError("audio must be base64 pcm16", param="audio", code="invalid_audio")
        if len(audio) > MAX_APPEND_BYTES:
            raise InvalidRequestError("at most 15 MiB of audio per append", param="audio", code="invalid_audio")
        try:
            data = base64.b64decode(audio, validate=True)
        except (binascii.Error, ValueError) as exc:
            raise InvalidRequestError("audio is not valid base64", param="audio", code="invalid_audio") from exc
        samples = self.pcm.feed(data)
        self.metrics.live_audio_seconds.inc(len(data) / 2 / self.pcm.rate)
        self.buffer = np.concatenate([self.buffer, samples])
        self.received += len(samples)
        if self.detector is None:  # the client commits: at most MAX_TURN_MS held, then committed as it stands
            if self.received - self.buffer_start >= MAX_TURN_MS * SAMPLE_RATE // 1000:
                await self._commit(self.buffer_start, self.received)
            return
        for turn in self.detector.feed(samples):
            at = turn.at_ms * SAMPLE_RATE // 1000
            if turn.kind == "started":
                self.turn_start = max(at, self.buffer_start)
                self.agreement, self.last_partial = LocalAgreement(), self.received
                await self.send(
                    {"type": "input_audio_buffer.speech_started", "audio_start_ms": turn.at_ms, "item_id": self.item_id}
                )
            elif self.turn_start is not None:
                await self.send(
                    {"type": "input_audio_buffer.speech_stopped", "audio_end_ms": turn.at_ms, "item_id": self.item_id}
                )
                await self._commit(self.turn_start, min(self.received, at + TAIL_MS * SAMPLE_RATE // 1000))
        if self.turn_start is None:  # between turns only the padding a next turn may start with is kept
            drop = len(self.buffer) - IDLE_KEEP_MS * SAMPLE_RATE // 1000
            if drop > 0:
                self.buffer, self.buffer_start = self.buffer[drop:], self.buffer_start + drop
        else:
            if self.received - self.turn_start >= MAX_TURN_MS * SAMPLE_RATE // 1000:
                await self._commit(self.turn_start, self.received)
            elif self._partial_due():
                self.last_partial, self.partial_queued = self.received, True
                so_far = self.buffer[self.turn_start - self.buffer_start :].copy()
                self.work.put_nowait(("partial", self.item_id, so_far, self.agreement, 0.0))

    def _partial_due(self) -> bool:
        """Another partial decode of the open turn: after PARTIAL_EVERY_MS of new audio, one at a time."""
        return not self.partial_queued and self.received - self.last_partial >= PARTIAL_EVERY_MS * SAMPLE_RATE // 1000

    async def _commit(self, start: int, end: int) -> None:
        """The audio from `start` to `end` (session samples) becomes the current item, queued for its decode."""
        turn = self.buffer[max(0, start - self.buffer_start) : end - self.buffer_start].copy()
        self.buffer, self.buffer_start = self.buffer[end - self.buffer_start :], end
        item, agreement = self.item_id, self.agreement
        await self.send(
            {"type": "input_audio_buffer.committed", "item_id": item, "previous_item_id": self.previous_item}
        )
        self.work.put_nowait(("final", item, turn, agreement, time.monotonic()))
        self.previous_item, self.item_id, self.turn_start = item, new_id("item"), None
        self.agreement = LocalAgreement()

    async def _decode_loop(self) -> None:
        while True:
            kind, item, samples, agreement, committed_at = await self.work.get()
            try:
                await self._decode(kind, item, samples, agreement, committed_at)
            finally:
                self.work.task_done()

    async def _decode(
        self, kind: str, item: str, samples: np.ndarray, agreement: LocalAgreement, committed_at: float
    ) -> None:
        if kind == "partial":
            self.partial_queued = False
            if item != self.item_id or not self.work.empty():  # the turn ended meanwhile: its final follows
                return
        options = self.config.options(self.previous_text)
        try:
            segments = await asyncio.to_thread(self.service.decode_samples, self.job, samples, options)
        except WhisperEndpointError as exc:
            if self.job.cancelled.is_set():  # the session is over (closed, or the server stops)
                raise
            if kind == "final":
                failed = {"type": "conversation.item.input_audio_transcription.failed", "item_id": item}
                await self.send({**failed, "content_index": 0, "error": exc.body()})
            return
        text = "".join(s.text.rstrip() for s in segments).strip()
        delta = agreement.hypothesis(text) if kind == "partial" else agreement.final(text)
        transcription = "conversation.item.input_audio_transcription"
        if delta:
            await self.send({"type": f"{transcription}.delta", "item_id": item, "content_index": 0, "delta": delta})
        if kind == "final":
            self.previous_text = text[-PREVIOUS_TEXT_CHARS:]
            usage = {"type": "duration", "seconds": round(len(samples) / SAMPLE_RATE, 3)}
            completed = {"type": f"{transcription}.completed", "item_id": item, "content_index": 0}
            await self.send({**completed, "transcript": text, "usage": usage})
            self.metrics.live_latency.observe(time.monotonic() - committed_at)


BROWSER_SUBPROTOCOL = "realtime"  # what OpenAI's browser clients offer, with the key as a second subprotocol
KEY_SUBPROTOCOL = "openai-insecure-api-key."  # a browser cannot set an Authorization header on a WebSocket


def _key_in_subprotocols(offered: list[str], api_key: str) -> bool:
    keys = [p[len(KEY_SUBPROTOCOL) :] for p in offered if p.startswith(KEY_SUBPROTOCOL)]
    return any(hmac.compare_digest(key.encode(), api_key.encode()) for key in keys)


def _admit(websocket: WebSocket, offered: list[str]) -> tuple[TranscriptionService, Job]:
    """The session's admission, or the error that refuses it: the API key (a header, or a browser's
    subprotocol), a server ready and not draining, room among the requests in flight."""
    state = websocket.app.state
    api_key = state.settings.api_key
    if api_key and not (authorized(websocket.headers, api_key) or _key_in_subprotocols(offered, api_key)):
        raise AuthenticationError("missing or invalid API key; send 'Authorization: Bearer KEY'")
    service: TranscriptionService | None = getattr(state, "service", None)
    if service is None or not state.ready or state.draining:
        raise ShuttingDownError("the server is not ready or is shutting down")
    return service, service.admit_live()


async def realtime_endpoint(websocket: WebSocket) -> None:
    """The WebSocket route: key and admission checked before the upgrade (refused with an HTTP error in
    OpenAI's envelope), then one `LiveSession` until either side closes."""
    offered = [p.strip() for p in websocket.headers.get("sec-websocket-protocol", "").split(",") if p.strip()]
    try:
        service, job = _admit(websocket, offered)
    except WhisperEndpointError as refusal:
        await websocket.send_denial_response(error_response(refusal))
        return
    await websocket.accept(subprotocol=BROWSER_SUBPROTOCOL if BROWSER_SUBPROTOCOL in offered else None)
    service.metrics.live_sessions.inc()
    loop = asyncio.get_running_loop()

    def close_for_shutdown(_error: object) -> None:  # abort_all, from any thread: the server stops
        loop.call_soon_threadsafe(lambda: asyncio.ensure_future(websocket.close(1012)))

    job.wake = close_for_shutdown
    try:
        await LiveSession(websocket, service, job).run()
    except WebSocketDisconnect:
        pass
    except WhisperEndpointError as exc:  # the session's decodes were stopped (shutdown)
        log.info("live session ended: %s", exc)
    finally:
        service.metrics.live_sessions.dec()
        service.end(job)
