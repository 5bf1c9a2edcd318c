"""What the audio routes answer: a transcript rendered in its response format, or OpenAI's stream of events."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

from fastapi.responses import JSONResponse, PlainTextResponse, Response, StreamingResponse
from starlette.types import Receive, Scope, Send

from whisper_endpoint.api.protocol import AudioRequest
from whisper_endpoint.diarization.attribution import attribute
from whisper_endpoint.errors import WhisperEndpointError
from whisper_endpoint.formats import render
from whisper_endpoint.formats.transcript import Segment, Transcript
from whisper_endpoint.serving.service import Job, TranscriptionService


def render_response(transcript: Transcript, req: AudioRequest, job: Job) -> Response:
    speakers = None if job.diarization is None else attribute(transcript, list(job.diarization.turns))
    body = render.render_format(
        transcript,
        req.response_format,
        segments="segment" in req.granularities,
        words="word" in req.granularities,
        include_logprobs=req.include_logprobs,
        stretches=speakers.stretches if speakers else None,
        segment_speakers=speakers.segment_speakers if speakers else None,
    )
    return JSONResponse(body) if isinstance(body, dict) else PlainTextResponse(body)


class JobStreamingResponse(StreamingResponse):
    """A stream that ends its job however the stream ends, even if it never started (the client left
    before the first byte): the release is plain code in a `finally`, never an await."""

    def __init__(self, content: AsyncIterator[bytes], service: TranscriptionService, job: Job) -> None:
        super().__init__(content, media_type="text/event-stream", headers={"Cache-Control": "no-cache"})
        self._service = service
        self._job = job

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            self._service.end(self._job)


def _sse(event: dict[str, Any]) -> bytes:
    return f"data: {json.dumps(event, ensure_ascii=False)}\n\n".encode()


async def stream_events(service: TranscriptionService, job: Job, req: AudioRequest) -> AsyncIterator[bytes]:
    """OpenAI's events: a delta and a segment per segment, then done. The deltas joined are exactly the
    done event's text (the first loses its leading space, none keeps trailing ones)."""
    segments: list[Segment] = []
    text = ""
    try:
        async for segment in service.segments(job):
            segments.append(segment)
            piece = segment.text.rstrip()
            piece = piece if text else piece.lstrip()
            text += piece
            delta: dict[str, Any] = {"type": "transcript.text.delta", "delta": piece}
            if req.include_logprobs:
                delta["logprobs"] = [
                    {"token": t.token, "logprob": t.logprob, "bytes": list(t.bytes)} for t in segment.logprobs
                ]
            yield _sse(delta)
            if not req.diarize:  # with speakers, the segment events come once the speakers are known
                yield _sse(
                    {
                        "type": "transcript.text.segment",
                        "id": str(segment.id),
                        "start": segment.start_ms / 1000,
                        "end": segment.end_ms / 1000,
                        "text": segment.text.strip(),
                        "speaker": render.STREAM_SPEAKER,
                    }
                )
        transcript = Transcript(job.options.task, job.info.language or "en", job.info.duration_ms, tuple(segments))
        if job.diarization is not None:
            stretches = attribute(transcript, list(job.diarization.turns)).stretches
            for index, stretch in enumerate(stretches):
                yield _sse(render.speaker_segment_json(index, stretch))
        done: dict[str, Any] = {"type": "transcript.text.done", "text": text}
        if job.options.task == "transcribe":
            done["languages"] = render.languages(transcript)
        if req.include_logprobs:
            done["logprobs"] = render.render_json(transcript, include_logprobs=True)["logprobs"]
        done["usage"] = render.usage_tokens(transcript, job.info.prompt_tokens)
        yield _sse(done)
    except WhisperEndpointError as exc:
        yield _sse({"type": "error", "error": exc.body()})
