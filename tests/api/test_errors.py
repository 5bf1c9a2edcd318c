"""Every error of the contract, provoked, with its envelope, status and param."""

from __future__ import annotations

import fcntl
import os
import shutil
import tempfile
import time
from pathlib import Path

import httpx
import pytest

from tests.conftest import JFK, RunningServer, metric_value, start_server
from whisper_endpoint.config import Settings
from whisper_endpoint.engines.ctranslate2 import CTranslate2Engine


def _post(
    server: RunningServer,
    data: dict[str, str] | None = None,
    file: tuple[str, bytes] | None = None,
    path: str = "/v1/audio/transcriptions",
    **kwargs: object,
) -> httpx.Response:
    files = {"file": file or ("jfk.flac", JFK.read_bytes())}
    return httpx.post(server.url + path, data=data or {}, files=files, timeout=120, **kwargs)  # type: ignore[arg-type]


def _error(response: httpx.Response, status: int, param: str | None = None) -> dict[str, object]:
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body["error"]) == {"message", "type", "param", "code"}
    assert body["error"]["param"] == param
    return dict(body["error"])


@pytest.mark.parametrize(
    ("field", "value", "param"),
    [
        ("response_format", "xml", "response_format"),
        ("temperature", "7", "temperature"),
        ("language", "klingon", "language"),
        ("timestamp_granularities[]", "word", "timestamp_granularities[]"),  # needs verbose_json
        ("timestamp_granularities[]", "phoneme", "timestamp_granularities[]"),
        ("include[]", "logprobs", "include[]"),
        ("chunking_strategy", "bogus", "chunking_strategy"),
    ],
)
def test_invalid_parameters_name_the_param(server: RunningServer, field: str, value: str, param: str) -> None:
    data = {field: value}
    if field == "include[]":
        data["response_format"] = "text"
    _error(_post(server, data), 400, param)


def test_missing_file_and_bad_audio(server: RunningServer) -> None:
    response = httpx.post(server.url + "/v1/audio/transcriptions", data={"model": "whisper-1"}, timeout=30)
    assert "file" in str(_error(response, 400, "file")["message"])
    error = _error(_post(server, file=("notes.txt", b"hello " * 1000)), 400, "file")
    assert error["code"] == "invalid_audio"
    _error(_post(server, file=("empty.wav", b"")), 400, "file")


def test_unknown_model_and_route(server: RunningServer) -> None:
    assert _error(_post(server, {"model": "gpt-9"}), 404, "model")["code"] == "model_not_found"
    assert _post(server, {"model": "whisper-1"}).status_code == 200
    _error(httpx.get(server.url + "/v1/nothing-here"), 404)
    _error(httpx.get(server.url + "/v1/models/gpt-9"), 404, "model")


def test_upload_over_the_limit_is_413_without_buffering(server: RunningServer) -> None:
    big = os.urandom(13 * 1024 * 1024)  # the test server's limit is 12 MiB

    def body() -> object:
        yield b"x" * 0  # a chunked upload: no Content-Length to reject it early
        for i in range(0, len(big), 65536):
            yield big[i : i + 65536]

    _error(_post(server, file=("big.wav", big)), 413, "file")
    boundary = "b0undary"
    head = (f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="a.wav"\r\n\r\n').encode()

    def chunked() -> object:
        yield head
        yield from body()  # type: ignore[misc]
        yield f"\r\n--{boundary}--\r\n".encode()

    response = httpx.post(
        server.url + "/v1/audio/transcriptions",
        content=chunked(),  # type: ignore[arg-type]
        headers={"content-type": f"multipart/form-data; boundary={boundary}"},
        timeout=60,
    )
    _error(response, 413, "file")


def test_audio_over_the_duration_limit(engine: CTranslate2Engine) -> None:
    running, thread = start_server(Settings(max_audio_duration_s=5), engine)
    try:
        _error(_post(running), 400, "file")
    finally:
        running.server.should_exit = True
        thread.join(timeout=30)


def test_api_key(engine: CTranslate2Engine) -> None:
    running, thread = start_server(Settings(api_key="s3cret"), engine)
    try:
        _error(_post(running), 401)
        _error(_post(running, headers={"Authorization": "Bearer wrong"}), 401)
        assert _post(running, headers={"Authorization": "Bearer s3cret"}).status_code == 200
        assert httpx.get(running.url + "/health").status_code == 200
        assert httpx.get(running.url + "/ready").status_code == 200
    finally:
        running.server.should_exit = True
        thread.join(timeout=30)


def _requests_counted(server: RunningServer, route: str, status: int) -> float:
    metrics = httpx.get(server.url + "/metrics").text
    return metric_value(metrics, f'whisper_requests_total{{route="{route}",status="{status}"}}')


def test_request_id_echoed_and_temp_files_removed(server: RunningServer, caplog: pytest.LogCaptureFixture) -> None:
    app = server.server.config.app
    spool_dirs = (
        [app.state.spool_dir]
        if app is not None
        else [p for p in Path(tempfile.gettempdir()).glob("whisper-endpoint-*") if p.is_dir()]
    )
    ok_before = _requests_counted(server, "/audio/transcriptions", 200)
    bad_before = _requests_counted(server, "/audio/transcriptions", 400)
    with caplog.at_level("INFO", logger="whisper_endpoint.access"):
        response = _post(server, headers={"x-request-id": "abc-123"})
        assert response.headers["x-request-id"] == "abc-123"
        bad = _post(server, file=("bad.mp3", b"\x00" * 5000), headers={"x-request-id": "bad-1"})
    assert bad.status_code == 400 and bad.headers["x-request-id"] == "bad-1"  # errors carry it too
    assert len(httpx.get(server.url + "/nowhere").headers["x-request-id"]) == 32  # made up when not sent
    assert all([p.name for p in d.iterdir()] == [".lock"] for d in spool_dirs)  # only the spool's own lock
    assert _requests_counted(server, "/audio/transcriptions", 200) == ok_before + 1
    assert _requests_counted(server, "/audio/transcriptions", 400) == bad_before + 1
    assert _requests_counted(server, "unmatched", 404) >= 1
    for n in range(3):  # unknown paths share one series, or any client could grow the metrics without bound
        assert httpx.get(f"{server.url}/v1/nowhere-{n}").status_code == 404
    assert "nowhere" not in httpx.get(server.url + "/metrics").text
    access = [r.getMessage() for r in caplog.records if r.name == "whisper_endpoint.access"]
    assert any("request_id=abc-123 " in m and "status=200 audio_s=11.00" in m for m in access), access
    assert any("request_id=bad-1 " in m and "status=400" in m for m in access), access


def test_uploads_of_a_killed_server_are_removed_at_the_next_start(engine: CTranslate2Engine) -> None:
    """A spool is live while its lock is held, whatever its PID: a server restarted as PID 1 in a container
    has its SIGKILLed predecessor's PID, and that predecessor's uploads must still go."""

    def spool(locked: bool, age_s: float = 0) -> tuple[Path, int]:
        folder = Path(tempfile.mkdtemp(prefix=f"whisper-endpoint-{os.getpid()}-"))  # a live PID: ours
        (folder / "upload-x.flac").write_bytes(b"left behind")
        fd = -1
        if age_s == 0:
            fd = os.open(folder / ".lock", os.O_CREAT | os.O_RDWR)
            if locked:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        os.utime(folder, (time.time() - age_s, time.time() - age_s))
        return folder, fd

    killed, killed_fd = spool(locked=False)  # the kernel dropped its lock when the process died
    older_version, _ = spool(locked=False, age_s=3600)  # no lock file at all, long ago
    being_made, _ = spool(locked=False, age_s=1)  # no lock file yet: a server may be starting
    live, live_fd = spool(locked=True)  # another server that is running
    running, thread = start_server(Settings(), engine)
    try:
        assert not killed.exists() and not older_version.exists()
        assert being_made.exists() and (live / "upload-x.flac").exists()
        assert running.server.config.app.state.spool_dir.name.startswith(f"whisper-endpoint-{os.getpid()}-")
    finally:
        running.server.should_exit = True
        thread.join(timeout=30)
        for fd in (killed_fd, live_fd):
            os.close(fd)
        shutil.rmtree(live, ignore_errors=True)
        shutil.rmtree(being_made, ignore_errors=True)


def test_draining_server_answers_503(engine: CTranslate2Engine) -> None:
    running, thread = start_server(Settings(), engine)
    try:
        running.server.config.app.state.draining = True  # what SIGTERM handling sets
        response = _post(running)
        _error(response, 503)
        assert int(response.headers["Retry-After"]) >= 1
        assert httpx.get(running.url + "/ready").status_code == 503
        assert httpx.get(running.url + "/health").status_code == 200
    finally:
        running.server.should_exit = True
        thread.join(timeout=30)
