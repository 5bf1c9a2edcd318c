"""The upload's way into the server: copied to the spool, and the form parser's copy let go at once."""

from __future__ import annotations

import asyncio
from pathlib import Path
from tempfile import SpooledTemporaryFile

import pytest
from starlette.datastructures import UploadFile

from tests.conftest import JFK
from whisper_endpoint.api.routes import _spool
from whisper_endpoint.errors import InvalidRequestError


def _upload(data: bytes, filename: str) -> UploadFile:
    buffer = SpooledTemporaryFile(max_size=1024 * 1024)  # noqa: SIM115  (as the form parser holds a file part; closed by the code under test)
    buffer.write(data)
    buffer.seek(0)
    return UploadFile(buffer, filename=filename)


def test_spooling_copies_the_upload_and_closes_the_parsers_copy(tmp_path: Path) -> None:
    data = JFK.read_bytes()
    upload = _upload(data, "jfk.flac")
    path = asyncio.run(_spool(upload, tmp_path))
    assert path.parent == tmp_path and path.suffix == ".flac"
    assert path.read_bytes() == data
    assert upload.file.closed  # its in-memory bytes are not held while the request waits for the engine


def test_an_empty_upload_is_refused_and_leaves_nothing(tmp_path: Path) -> None:
    upload = _upload(b"", "empty.wav")
    with pytest.raises(InvalidRequestError, match="empty"):
        asyncio.run(_spool(upload, tmp_path))
    assert upload.file.closed
    assert list(tmp_path.iterdir()) == []
