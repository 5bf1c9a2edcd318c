"""Bounded form parsing for the audio routes: text fields are held in memory while the form is parsed, so their
size is bounded field by field and in total (a body of junk fields under 1 MB each was otherwise held whole).

A known speaker's reference is a data URL of up to 10 s of audio (10 s of 44.1 kHz stereo WAV is 2.4 MB as
base64): those fields may be large, every other text field stays small. Plugged in through FastAPI's custom
route class, so the routes' parameters and /docs stay as they are.
"""

from __future__ import annotations

from collections.abc import Callable, Coroutine
from contextlib import aclosing
from typing import Any

from fastapi import HTTPException
from fastapi.routing import APIRoute
from starlette.datastructures import FormData
from starlette.formparsers import MultiPartException, MultiPartParser
from starlette.requests import Request
from starlette.responses import Response

FIELD_BYTES = 64 * 1024
REFERENCE_BYTES = 3 * 1024 * 1024
TEXT_BYTES = 4 * REFERENCE_BYTES + 1024 * 1024  # four references and every other field
LARGE_FIELDS = frozenset({"known_speaker_references[]"})
MAX_FIELDS = 64


class _BoundedParser(MultiPartParser):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._text_bytes = 0

    def on_part_data(self, data: bytes, start: int, end: int) -> None:
        part = self._current_part
        if part.file is None:
            limit = REFERENCE_BYTES if part.field_name in LARGE_FIELDS else FIELD_BYTES
            if len(part.data) + end - start > limit:
                raise MultiPartException(f"Part exceeded maximum size of {limit // 1024}KB.")
            self._text_bytes += end - start
            if self._text_bytes > TEXT_BYTES:
                raise MultiPartException(f"Text fields exceeded {TEXT_BYTES // 2**20} MiB in all.")
        super().on_part_data(data, start, end)


class BoundedFormRequest(Request):
    async def _get_form(
        self, *, max_files: int | float = 1, max_fields: int | float = MAX_FIELDS, max_part_size: int = FIELD_BYTES
    ) -> FormData:
        content_type = self.headers.get("content-type", "")
        if self._form is None and content_type.startswith("multipart/form-data"):
            try:
                async with aclosing(self.stream()) as stream:
                    parser = _BoundedParser(
                        self.headers, stream, max_files=max_files, max_fields=max_fields, max_part_size=REFERENCE_BYTES
                    )
                    self._form = await parser.parse()
            except MultiPartException as exc:
                raise HTTPException(status_code=400, detail=exc.message) from exc
        return await super()._get_form(max_files=max_files, max_fields=max_fields, max_part_size=max_part_size)


class BoundedFormRoute(APIRoute):
    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def bounded(request: Request) -> Response:
            return await handler(BoundedFormRequest(request.scope, request.receive))

        return bounded
