"""Response shapes, for the OpenAPI document (renderers build the bodies; these describe them)."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel


class Usage(BaseModel):
    type: Literal["duration"]
    seconds: int


class Logprob(BaseModel):
    token: str
    logprob: float
    bytes: list[int]


class TranscriptionJson(BaseModel):
    text: str
    logprobs: list[Logprob] | None = None
    usage: Usage


class SegmentSchema(BaseModel):
    id: int
    seek: int
    start: float
    end: float
    text: str
    tokens: list[int]
    temperature: float
    avg_logprob: float
    compression_ratio: float
    no_speech_prob: float


class WordSchema(BaseModel):
    word: str
    start: float
    end: float


class TranscriptionVerbose(BaseModel):
    task: Literal["transcribe", "translate"]
    language: str
    duration: float
    text: str
    words: list[WordSchema] | None = None
    segments: list[SegmentSchema] | None = None
    usage: Usage


class ErrorBody(BaseModel):
    message: str
    type: str
    param: str | None
    code: str | None


class ErrorResponse(BaseModel):
    error: ErrorBody


def add_schemas(openapi: dict[str, Any]) -> None:
    components = openapi.setdefault("components", {}).setdefault("schemas", {})
    for model in (TranscriptionJson, TranscriptionVerbose, ErrorResponse):
        schema = model.model_json_schema(ref_template="#/components/schemas/{model}")
        components.update(schema.pop("$defs", {}))
        components[model.__name__] = schema
    error_content = {"application/json": {"schema": {"$ref": "#/components/schemas/ErrorResponse"}}}
    for path in openapi.get("paths", {}).values():
        for operation in path.values():
            for status, response in operation.get("responses", {}).items():
                if status.startswith(("4", "5")):
                    response["content"] = error_content
