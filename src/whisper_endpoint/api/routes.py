"""The audio and model routes, mounted under /v1 and /api/v1."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import os
import re
import shutil
import tempfile
from pathlib import Path
from typing import Annotated, Any

from fastapi import APIRouter, File, Form, Request, UploadFile
from fastapi.responses import Response

from whisper_endpoint.api.forms import FIELD_BYTES, MAX_FIELDS, BoundedFormRoute
from whisper_endpoint.api.known_speakers import parse_known_speakers
from whisper_endpoint.api.protocol import parse_audio_request
from whisper_endpoint.api.responses import JobStreamingResponse, render_response, stream_events
from whisper_endpoint.audio.decode import AudioSource
from whisper_endpoint.decoding.options import Task
from whisper_endpoint.diarization.pipeline import KnownSpeaker
from whisper_endpoint.errors import (
    CancelledRequestError,
    InvalidRequestError,
    ModelNotFoundError,
)
from whisper_endpoint.formats import render
from whisper_endpoint.formats.transcript import Segment, Transcript
from whisper_endpoint.serving.service import Job, TranscriptionService

log = logging.getLogger("whisper_endpoint.access")

RAW_PCM_TYPES = {"audio/l16", "audio/pcm", "audio/x-raw", "audio/s16le"}
# Text fields are bounded in number here and in size by BoundedFormRoute (api/forms.py).
FORM_LIMITS = {"max_files": 1, "max_fields": MAX_FIELDS, "max_part_size": FIELD_BYTES}
TRANSLATION_FIELDS = frozenset({"file", "model", "prompt", "response_format", "temperature"})
TRANSCRIPTION_FIELDS = TRANSLATION_FIELDS | {
    "language",
    "languages[]",
    "keywords[]",
    "timestamp_granularities[]",
    "include[]",
    "stream",
    "chunking_strategy",
    "known_speaker_names[]",
    "known_speaker_references[]",
    "diarize",
}

TRANSCRIPTION_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {
        "description": "The transcript, in the requested `response_format`.",
        "content": {
            "application/json": {
                "schema": {
                    "oneOf": [
                        {"$ref": "#/components/schemas/TranscriptionJson"},
                        {"$ref": "#/components/schemas/TranscriptionVerbose"},
                    ]
                }
            },
            "text/plain": {"schema": {"type": "string"}, "example": "1\n00:00:00,000 --> 00:00:11,000\nAnd so..."},
            "text/event-stream": {"schema": {"type": "string"}, "description": "When `stream=true`."},
        },
    },
    400: {"model": None, "description": "Invalid parameter or undecodable audio."},
    401: {"description": "Missing or wrong API key."},
    404: {"description": "Unknown model."},
    413: {"description": "Upload larger than the limit."},
    429: {"description": "Server overloaded: retry after `Retry-After` seconds."},
}


def _service(request: Request) -> TranscriptionService:
    service: TranscriptionService = request.app.state.service
    return service


def _check_model(request: Request, model: str | None) -> None:
    if model is None:
        return
    served: str = request.app.state.model_id
    aliases: set[str] = request.app.state.model_aliases
    if model not in aliases:
        raise ModelNotFoundError(f"the model {model!r} does not exist; this server serves {served!r}", param="model")


async def _spool(upload: UploadFile, spool_dir: Path) -> Path:
    """Copy the upload to our own temp file, deleted when the job is released, and let the parser's copy go.

    The form parser keeps an upload of up to 1 MB in memory until the response is sent: 0.5 MB for every
    30 s FLAC in flight, held the whole time the request waits for the engine, had it not been closed here."""
    if upload.filename and not upload.filename.isprintable():
        raise InvalidRequestError("the file name contains control characters", param="file")
    # The client's extension only helps FFmpeg guess the container: letters and digits, nothing else.
    extension = re.sub(r"[^A-Za-z0-9]", "", Path(upload.filename or "").suffix)[:15]
    fd, name = tempfile.mkstemp(prefix="upload-", suffix=f".{extension}" if extension else "", dir=spool_dir)
    try:
        with os.fdopen(fd, "wb") as out:
            await asyncio.to_thread(shutil.copyfileobj, upload.file, out, 1024 * 1024)
    except BaseException:
        os.unlink(name)
        raise
    finally:
        await upload.close()
    if os.path.getsize(name) == 0:
        os.unlink(name)
        raise InvalidRequestError("the uploaded file is empty", param="file", code="invalid_audio")
    return Path(name)


async def _collect(request: Request, service: TranscriptionService, job: Job) -> list[Segment]:
    """All segments; stops (and cancels the job) if the client disconnects first."""
    segments: list[Segment] = []

    async def gather() -> None:
        async for segment in service.segments(job):
            segments.append(segment)

    async def disconnected() -> None:
        # The body is already read, so the next message can only be the client going away.
        while (await request.receive())["type"] != "http.disconnect":
            pass

    task = asyncio.create_task(gather())
    watcher = asyncio.create_task(disconnected())
    try:
        await asyncio.wait({task, watcher}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        watcher.cancel()
        if not task.done():
            task.cancel()
    if not task.done():
        with contextlib.suppress(asyncio.CancelledError):
            await task
        log.info("request_id=%s client disconnected, work cancelled", job.request_id)
        raise CancelledRequestError("the client disconnected")
    task.result()
    return segments


def _check_fields(names: set[str], task: Task) -> None:
    """A field this endpoint does not take is a 400 naming it, never silently dropped."""
    known = TRANSCRIPTION_FIELDS if task == "transcribe" else TRANSLATION_FIELDS
    for name in sorted(names):
        if name not in known and not (task == "transcribe" and name.startswith("chunking_strategy[")):
            where = "translations" if task == "translate" else "transcriptions"
            raise InvalidRequestError(f"unknown parameter {name[:64]!r} for /audio/{where}", param=name[:64])


async def _handle(request: Request, task: Task, file: UploadFile, model: str | None, **fields: Any) -> Response:
    form = await request.form()  # already parsed (within FORM_LIMITS) for the route's parameters
    _check_fields(set(form.keys()), task)
    _check_model(request, model)
    service = _service(request)
    names = fields.pop("known_speaker_names", None) or []
    references = fields.pop("known_speaker_references", None) or []
    req = parse_audio_request(
        form, task=task, default_strategy=service.settings.strategy, known_speakers=bool(names or references), **fields
    )
    options = req.options
    known: tuple[KnownSpeaker, ...] | None = None
    if req.diarize:
        await asyncio.to_thread(service.diarizer)  # refuses the request now when the weights are missing
        known = await asyncio.to_thread(parse_known_speakers, names, references, request.app.state.spool_dir)
        if not service.engine.capabilities.word_timestamps and "word" not in req.granularities:
            options = dataclasses.replace(options, word_timestamps=False)  # speakers by segment, not by word
    path = await _spool(file, request.app.state.spool_dir)
    raw = (file.content_type or "").split(";")[0].strip().lower() in RAW_PCM_TYPES or path.suffix == ".raw"
    job = Job(
        AudioSource(path, raw_pcm=raw), options, request_id=request.state.request_id, spool=path, known_speakers=known
    )
    try:
        await asyncio.to_thread(service.admit, job)  # probing the container is file I/O
    except BaseException:
        path.unlink(missing_ok=True)
        raise
    request.state.job = job
    if req.stream:
        return JobStreamingResponse(stream_events(service, job, req), service, job)
    try:
        segments = await _collect(request, service, job)
    finally:
        service.end(job)
    transcript = Transcript(task, job.info.language or "en", job.info.duration_ms, tuple(segments))
    return render_response(transcript, req, job)


FileField = Annotated[
    UploadFile,
    File(
        description="Audio or video in any common container (flac, mp3, mp4, "
        "mpeg, mpga, m4a, ogg, opus, wav, webm, ...)."
    ),
]
ModelField = Annotated[str | None, Form(description="Model id; the served model or one of its aliases.")]
PromptField = Annotated[str | None, Form(description="Text to guide the style or continue a previous segment.")]
FormatField = Annotated[
    str | None,
    Form(
        description="Output format; `diarized_json` (transcriptions): segments with speaker labels.",
        json_schema_extra={"enum": list(render.RESPONSE_FORMATS)},
    ),
]
TemperatureField = Annotated[
    float | None, Form(ge=0, le=1, description="0 (default): raise the temperature by Whisper's fallback thresholds.")
]
StreamField = Annotated[bool | None, Form(description="Stream Server-Sent Events as the transcript is produced.")]


def build_router() -> APIRouter:
    router = APIRouter(form_limits=FORM_LIMITS, route_class=BoundedFormRoute)  # type: ignore[arg-type]

    @router.post(
        "/audio/transcriptions", responses=TRANSCRIPTION_RESPONSES, summary="Transcribe audio", response_model=None
    )
    async def create_transcription(
        request: Request,
        file: FileField,
        model: ModelField = None,
        language: Annotated[str | None, Form(description="ISO-639-1 code, e.g. `en`; detected when empty.")] = None,
        prompt: PromptField = None,
        response_format: FormatField = None,
        temperature: TemperatureField = None,
        timestamp_granularities: Annotated[
            list[str] | None,
            Form(
                alias="timestamp_granularities[]",
                description="`segment` and/or `word`; needs verbose_json.",
                json_schema_extra={"items": {"type": "string", "enum": ["segment", "word"]}},
            ),
        ] = None,
        include: Annotated[
            list[str] | None,
            Form(
                alias="include[]",
                description="`logprobs`: per-token log-probabilities in `json`.",
                json_schema_extra={"items": {"type": "string", "enum": ["logprobs"]}},
            ),
        ] = None,
        stream: StreamField = None,
        chunking_strategy: Annotated[str | None, Form(description="`auto`, or a JSON `server_vad` object.")] = None,
        languages: Annotated[
            list[str] | None,
            Form(alias="languages[]", description="Candidate languages (ISO-639-1): detection chooses among them."),
        ] = None,
        keywords: Annotated[
            list[str] | None,
            Form(
                alias="keywords[]",
                description="Words or phrases to favour: given to Whisper after the prompt, as a comma-separated list.",
            ),
        ] = None,
        known_speaker_names: Annotated[
            list[str] | None,
            Form(
                alias="known_speaker_names[]",
                description="Up to 4 speaker names, each with a reference in `known_speaker_references[]`.",
            ),
        ] = None,
        known_speaker_references: Annotated[
            list[str] | None,
            Form(
                alias="known_speaker_references[]",
                description="2-10 s of each named speaker, as data URLs (`data:audio/wav;base64,...`).",
            ),
        ] = None,
        diarize: Annotated[
            bool | None,
            Form(
                description="Speaker labels in `verbose_json` segments, srt/vtt cues and streamed segment events "
                "(implied by `diarized_json` and known speakers)."
            ),
        ] = None,
    ) -> Response:
        return await _handle(
            request,
            "transcribe",
            file,
            model,
            language=language,
            prompt=prompt,
            response_format=response_format,
            temperature=temperature,
            granularities=timestamp_granularities,
            include=include,
            stream=stream,
            chunking_strategy=chunking_strategy,
            languages=languages,
            keywords=keywords,
            known_speaker_names=known_speaker_names,
            known_speaker_references=known_speaker_references,
            diarize=diarize,
        )

    @router.post(
        "/audio/translations",
        responses=TRANSCRIPTION_RESPONSES,
        summary="Translate audio to English",
        response_model=None,
    )
    async def create_translation(
        request: Request,
        file: FileField,
        model: ModelField = None,
        prompt: PromptField = None,
        response_format: FormatField = None,
        temperature: TemperatureField = None,
    ) -> Response:
        return await _handle(
            request, "translate", file, model, prompt=prompt, response_format=response_format, temperature=temperature
        )

    @router.get("/models", summary="List models")
    async def list_models(request: Request) -> dict[str, Any]:
        served: str = request.app.state.model_id
        return {"object": "list", "data": [_model_card(request, "whisper-1"), _model_card(request, served)]}

    @router.get("/models/{model_id:path}", summary="Retrieve a model")
    async def get_model(request: Request, model_id: str) -> dict[str, Any]:
        _check_model(request, model_id)
        return _model_card(request, model_id)

    return router


def _model_card(request: Request, model_id: str) -> dict[str, Any]:
    """OpenAI's model object under the id asked for; `root` names the served model behind an alias."""
    return {
        "id": model_id,
        "object": "model",
        "created": int(request.app.state.started_at),
        "owned_by": "whisper-endpoint",
        "root": request.app.state.model_id,
    }
