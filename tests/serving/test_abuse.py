"""Defects found by attacking a real `whisper-endpoint serve` process, one test each (docs/reliability.md)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest

from tests.conftest import JFK
from tests.serving.abuse import (
    LONG_SPEECH,
    multipart,
    raw_connection,
    read_all,
    silent_webm_without_duration,
    wait_for,
    wav_with_zero_bits_per_sample,
)
from tests.serving.process import ServerProcess, leftovers, server_process

MAX_INFLIGHT = 4
MAX_AUDIO_S = 600
HEAD_TIMEOUT_S = 2
MAX_CONNECTIONS = 16


@pytest.fixture(scope="module", params=["0", "2"], ids=["in-thread", "front-end-processes"])
def server(tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest) -> Iterator[ServerProcess]:
    """Requests run in the server's threads (CTranslate2's default), or in front-end processes that own them
    (vLLM's default, here with the CTranslate2 engine in the server process)."""
    spool = tmp_path_factory.mktemp("spool")
    with server_process(
        spool,
        front_end_processes=request.param,
        max_inflight_requests=str(MAX_INFLIGHT),
        max_audio_duration_s=str(MAX_AUDIO_S),
        header_timeout_s=str(HEAD_TIMEOUT_S),
        body_timeout_s=str(HEAD_TIMEOUT_S),
        max_connections=str(MAX_CONNECTIONS),
    ) as running:
        yield running


def _transcribe(server: ServerProcess, path: Path = JFK, **kwargs: object) -> httpx.Response:
    kwargs.setdefault("timeout", 120)
    with path.open("rb") as f:
        return httpx.post(f"{server.url}/v1/audio/transcriptions", files={"file": (path.name, f)}, **kwargs)  # type: ignore[arg-type]


@contextmanager
def _streamed(server: ServerProcess, path: Path) -> Iterator[httpx.Response]:
    """A `stream=true` transcription, open while the block runs."""
    with (
        path.open("rb") as f,
        httpx.stream(
            "POST",
            f"{server.url}/v1/audio/transcriptions",
            files={"file": (path.name, f)},
            data={"stream": "true"},
            timeout=120,
        ) as response,
    ):
        yield response


@pytest.mark.slow
def test_dropped_streams_release_their_admission(server: ServerProcess) -> None:
    for _ in range(MAX_INFLIGHT + 2):  # more drops than slots: a leak would refuse everything after
        with _streamed(server, LONG_SPEECH) as response:
            assert response.status_code == 200
            assert wait_for(lambda: server.metric("whisper_requests_inflight") >= 1, 10)
            time.sleep(0.3)  # the stream waits for its first segment: the client leaves then
        assert wait_for(lambda: server.idle(), 60), "a dropped stream kept its admission"
    ok = _transcribe(server)
    assert ok.status_code == 200 and "ask not what your country" in ok.json()["text"]
    assert httpx.get(f"{server.url}/ready").status_code == 200


@pytest.mark.slow
def test_a_request_with_the_same_id_cannot_cancel_another(server: ServerProcess) -> None:
    same = {"x-request-id": "shared-id"}

    def attacker() -> None:  # sends the victim's id, then leaves while its work is queued beside the victim's
        with pytest.raises(httpx.ReadTimeout):
            _transcribe(server, LONG_SPEECH, headers=same, timeout=httpx.Timeout(30, read=2.5))

    attackers = [threading.Thread(target=attacker) for _ in range(2)]
    for t in attackers:
        t.start()
    assert wait_for(lambda: server.metric("whisper_requests_inflight") == 2, 10)
    victim = _transcribe(server, LONG_SPEECH, headers=same)  # queued behind the attackers' windows
    for t in attackers:
        t.join()
    assert victim.status_code == 200, victim.text
    assert victim.headers["x-request-id"] == "shared-id"  # still echoed
    assert len(victim.json()["text"]) > 500


@pytest.mark.slow
def test_audio_without_a_duration_is_charged_as_it_decodes(server: ServerProcess, tmp_path: Path) -> None:
    """A WebM recording states no duration: it is counted as it decodes, stopped at the duration limit
    with a 400, and its decoding stops when the client leaves."""
    silent = silent_webm_without_duration(tmp_path / "recording.webm", MAX_AUDIO_S + 300)
    charged: list[float] = []
    done = threading.Event()

    def watch() -> None:
        while not done.is_set():
            charged.append(server.metric("whisper_queued_audio_seconds"))
            time.sleep(0.05)

    watcher = threading.Thread(target=watch)
    watcher.start()
    try:
        too_long = _transcribe(server, silent)
    finally:
        done.set()
        watcher.join()
    assert too_long.status_code == 400
    assert too_long.json()["error"]["code"] == "audio_too_long"
    assert max(charged) >= 60, "audio with no stated duration was admitted as 0 s and never charged"
    assert wait_for(lambda: server.idle(), 10)

    # The client leaves at once: the server stops decoding (it would take seconds to reach the limit).
    started = time.monotonic()
    with pytest.raises(httpx.ReadTimeout):
        _transcribe(server, silent, timeout=httpx.Timeout(30, read=0.3))
    assert wait_for(lambda: server.idle(), 10)
    stopped_after_s = time.monotonic() - started
    took_s = too_long.elapsed.total_seconds()
    assert stopped_after_s < took_s, (stopped_after_s, took_s)


@pytest.mark.slow
def test_half_sent_requests_time_out_and_connections_are_capped(server: ServerProcess) -> None:
    # A head that never ends: 408 in the envelope after the head deadline, then the connection closes.
    with raw_connection(server.url) as sock:
        sock.sendall(b"POST /v1/audio/transcriptions HTTP/1.1\r\nHost: x\r\nContent-Type: multipart/form")
        started = time.monotonic()
        answer = read_all(sock)
    assert answer.startswith(b"HTTP/1.1 408 ")
    assert json.loads(answer.split(b"\r\n\r\n", 1)[1])["error"]["code"] == "request_timeout"
    assert HEAD_TIMEOUT_S - 0.5 < time.monotonic() - started < HEAD_TIMEOUT_S + 5

    # A body that stalls part-way.
    body, content_type = multipart([("model", b"whisper-1")], ("a.flac", JFK.read_bytes()))
    with raw_connection(server.url) as sock:
        head = (
            f"POST /v1/audio/transcriptions HTTP/1.1\r\nHost: x\r\nContent-Type: {content_type}\r\n"
            f"Content-Length: {len(body)}\r\n\r\n"
        )
        sock.sendall(head.encode() + body[: len(body) // 2])
        answer = read_all(sock)
    assert answer.startswith(b"HTTP/1.1 408 ")
    assert json.loads(answer.split(b"\r\n\r\n", 1)[1])["error"]["code"] == "request_timeout"

    # Past the connection cap, new connections are refused at once; the server serves again afterwards.
    idle = [raw_connection(server.url) for _ in range(MAX_CONNECTIONS)]
    try:
        with raw_connection(server.url) as extra:
            refused = read_all(extra)
        assert refused.startswith(b"HTTP/1.1 503 ")
    finally:
        for sock in idle:
            sock.close()
    assert wait_for(lambda: httpx.get(f"{server.url}/health", timeout=5).status_code == 200, 10)


def test_form_fields_are_bounded_and_unknown_ones_refused(server: ServerProcess) -> None:
    jfk = JFK.read_bytes()

    def post(fields: list[tuple[str, bytes]], path: str = "/v1/audio/transcriptions") -> httpx.Response:
        body, content_type = multipart(fields, ("jfk.flac", jfk))
        return httpx.post(f"{server.url}{path}", content=body, headers={"content-type": content_type}, timeout=60)

    many = post([("junk", b"x")] * 100)
    assert many.status_code == 400 and "fields" in many.json()["error"]["message"]
    large = post([("prompt", b"x" * (1024 * 1024))])
    assert large.status_code == 400 and "maximum size of 64KB" in large.json()["error"]["message"]
    # Known speakers' references may be large (data URLs of up to 10 s of audio), each and in all bounded.
    reference = b"data:audio/wav;base64," + b"A" * (3 * 1024 * 1024)
    too_big = post([("known_speaker_references[]", reference)])
    assert too_big.status_code == 400 and "maximum size of 3072KB" in too_big.json()["error"]["message"]
    too_many = post([("known_speaker_references[]", reference[: 3 * 1024 * 1024 - 100])] * 5)
    assert too_many.status_code == 400 and "in all" in too_many.json()["error"]["message"]
    unknown = post([("bogus_field", b"1")])
    assert unknown.status_code == 400 and unknown.json()["error"]["param"] == "bogus_field"
    streamed = post([("stream", b"true")], "/v1/audio/translations")
    assert streamed.status_code == 400 and streamed.json()["error"]["param"] == "stream"


def test_malformed_uploads_are_400(server: ServerProcess) -> None:
    zero_bits = httpx.post(
        f"{server.url}/v1/audio/transcriptions", files={"file": ("z.wav", wav_with_zero_bits_per_sample())}
    )
    assert zero_bits.status_code == 400 and zero_bits.json()["error"]["code"] == "invalid_audio"
    body, content_type = multipart([], ("jfk.fl\x00ac", JFK.read_bytes()))
    nul = httpx.post(
        f"{server.url}/v1/audio/transcriptions", content=body, headers={"content-type": content_type}, timeout=60
    )
    assert nul.status_code == 400 and nul.json()["error"]["param"] == "file"
    assert wait_for(lambda: server.idle(), 10)


def test_prompt_special_tokens_are_plain_text(server: ServerProcess) -> None:
    prompt = "<|startoftranscript|><|en|><|transcribe|><|notimestamps|> <|endoftext|>"
    r = _transcribe(server, data={"prompt": prompt, "response_format": "verbose_json"})
    assert r.status_code == 200
    assert "<|" not in r.json()["text"] and "ask not what your country" in r.json()["text"]


def test_security_headers_head_and_no_host_redirect(server: ServerProcess) -> None:
    for path in ("/health", "/v1/models", "/nowhere"):
        assert httpx.get(server.url + path).headers["x-content-type-options"] == "nosniff"
    page = httpx.get(server.url + "/")
    assert page.headers["x-frame-options"] == "DENY"
    assert "frame-ancestors 'none'" in page.headers["content-security-policy"]
    docs = httpx.get(server.url + "/docs")
    assert "script-src 'self' 'sha256-" in docs.headers["content-security-policy"]
    assert docs.headers["x-frame-options"] == "DENY"
    slash = httpx.get(server.url + "/v1/models/", headers={"host": "evil.example"})
    assert "location" not in slash.headers and not 300 <= slash.status_code < 400
    for path in ("/health", "/ready", "/v1/models", "/metrics"):
        head = httpx.head(server.url + path)
        assert head.status_code == 200 and head.content == b"", path
    get = httpx.get(server.url + "/v1/models")
    assert httpx.head(server.url + "/v1/models").headers["content-length"] == get.headers["content-length"]


def test_log_lines_cannot_be_forged_and_nothing_is_left_behind(tmp_path: Path) -> None:
    spool = tmp_path / "tmp"
    spool.mkdir()
    # A spool named with a live PID (as when a container restarts its server as PID 1), its lock not held.
    stale = Path(tempfile.mkdtemp(prefix=f"whisper-endpoint-{os.getpid()}-", dir=spool))
    (stale / ".lock").touch()
    (stale / "upload-old.flac").write_bytes(b"left behind by a killed server")
    with server_process(spool, api_key="k3y", metrics_require_key="true") as server:
        auth = {"Authorization": "Bearer k3y"}
        assert not stale.exists(), "a killed server's uploads were kept because its PID is alive"
        # Bodies of junk text fields just under the old 1 MB part limit no longer sit in memory.
        before_kib = server.status_kib("VmHWM")
        jfk = JFK.read_bytes()
        junk = [(f"f{i}", b"j" * (1024 * 1024 - 1024)) for i in range(48)]
        body, content_type = multipart(junk, ("jfk.flac", jfk))
        statuses: list[int] = []

        def send_junk() -> None:
            headers = {"content-type": content_type, **auth}
            url = f"{server.url}/v1/audio/transcriptions"
            statuses.append(httpx.post(url, content=body, headers=headers, timeout=60).status_code)

        threads = [threading.Thread(target=send_junk) for _ in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert statuses == [400] * 4
        growth_mib = (server.status_kib("VmHWM") - before_kib) / 1024
        assert growth_mib < 64, f"{growth_mib:.0f} MiB more after four 48 MB bodies of text fields"
        forged = httpx.get(f"{server.url}/v1/models%0Aforged%20request_id=x%20status=200", headers=auth)
        assert forged.status_code == 404
        spaced = httpx.get(f"{server.url}/v1/models", headers={**auth, "x-request-id": "a status=500 b"})
        assert spaced.status_code == 200 and len(spaced.headers["x-request-id"]) == 32  # replaced by ours
        assert httpx.get(f"{server.url}/metrics").status_code == 401
        assert httpx.get(f"{server.url}/metrics", headers=auth).status_code == 200
        server.proc.send_signal(signal.SIGTERM)
        assert server.proc.wait(timeout=60) == 0
        log = server.log()
    lines = log.splitlines()
    assert any("path=/v1/models\\nforged" in line for line in lines), log[-2000:]
    assert not any(line.startswith("forged") for line in lines)
    assert not any("status=500" in line for line in lines)
    assert sorted(p.name for p in spool.iterdir()) == [], "files left in the temp dir (spools, onnxruntime's .ses)"
    shutil.rmtree(spool, ignore_errors=True)


@pytest.mark.slow
def test_sigterm_past_the_grace_period_answers_503_in_the_envelope(tmp_path: Path) -> None:
    answers: dict[str, httpx.Response] = {}
    events: list[dict[str, object]] = []
    with server_process(tmp_path, shutdown_grace_s="1") as server:

        def plain() -> None:
            answers["plain"] = _transcribe(server, LONG_SPEECH)

        def streamed() -> None:
            with _streamed(server, LONG_SPEECH) as response:
                events.extend(json.loads(line[5:]) for line in response.iter_lines() if line.startswith("data:"))

        threads = [threading.Thread(target=plain), threading.Thread(target=streamed)]
        for t in threads:
            t.start()
        assert wait_for(lambda: server.metric("whisper_requests_inflight") == 2, 20)
        # An upload whose body is still arriving when the drain starts: refused, not admitted then killed.
        body, content_type = multipart([], ("jfk.flac", JFK.read_bytes()))
        late = raw_connection(server.url)
        late.sendall(
            f"POST /v1/audio/transcriptions HTTP/1.1\r\nHost: x\r\nContent-Type: {content_type}\r\n"
            f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n".encode()
            + body[:1000]
        )
        time.sleep(0.2)
        server.proc.send_signal(signal.SIGTERM)
        time.sleep(0.3)
        late.sendall(body[1000:])
        late_answer = read_all(late)
        late.close()
        for t in threads:
            t.join(timeout=60)
        assert server.proc.wait(timeout=60) == 0
        log = server.log()

    assert late_answer.startswith(b"HTTP/1.1 503 ")
    assert json.loads(late_answer.split(b"\r\n\r\n", 1)[1])["error"]["code"] == "shutting_down"
    assert answers["plain"].status_code == 503
    assert answers["plain"].json()["error"]["code"] == "shutting_down"
    assert events and events[-1]["type"] == "error"
    assert events[-1]["error"]["code"] == "shutting_down"  # type: ignore[index]
    assert "answering 2 request(s) 503 shutting_down" in log
    assert leftovers(tmp_path) == []
