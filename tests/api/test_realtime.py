"""Live transcription over WebSocket (`/v1/realtime?intent=transcription`): the official SDK's realtime client
and a raw WebSocket client against a real server on loopback, real speech, the real CTranslate2 engine."""

from __future__ import annotations

import base64
import json
import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import av
import jiwer
import numpy as np
import pytest
from openai import OpenAI
from websockets.exceptions import ConnectionClosed, InvalidStatus
from websockets.sync.client import ClientConnection, connect

from tests.conftest import JFK, RunningServer, metric_value, start_server
from tests.datasets import DATA, english_normalizer
from tests.serving.process import server_process
from whisper_endpoint.audio.decode import AudioSource, load_audio
from whisper_endpoint.config import Settings
from whisper_endpoint.engines.ctranslate2 import CTranslate2Engine

CHUNK_MS = 100
JFK_LOOP = DATA / "E_containers" / "variants" / "jfk_x10_110s.wav"


def pcm16(samples: np.ndarray, rate: int) -> bytes:
    """16 kHz float samples as little-endian pcm16 at `rate` (24 kHz through FFmpeg's resampler, as a client would)."""
    if rate != 16_000:
        resampler = av.AudioResampler(format="flt", layout="mono", rate=rate)
        frame = av.AudioFrame.from_ndarray(samples[None, :].astype(np.float32), format="flt", layout="mono")
        frame.sample_rate = 16_000
        frames = [*resampler.resample(frame), *resampler.resample(None)]
        samples = np.concatenate([f.to_ndarray().reshape(-1) for f in frames])
    return (np.clip(samples, -1, 1) * 32767).astype("<i2").tobytes()


def chunks(audio: bytes, rate: int) -> Iterator[str]:
    step = rate * 2 * CHUNK_MS // 1000
    for i in range(0, len(audio), step):
        yield base64.b64encode(audio[i : i + step]).decode()


def ws_url(server_url: str, path: str = "/v1/realtime?intent=transcription") -> str:
    return server_url.replace("http://", "ws://") + path


def stream(ws: ClientConnection, audio: bytes, rate: int, speed: float) -> None:
    for chunk in chunks(audio, rate):
        ws.send(json.dumps({"type": "input_audio_buffer.append", "audio": chunk}))
        time.sleep(CHUNK_MS / 1000 / speed)


def events_until(ws: ClientConnection, kind: str, count: int = 1, timeout_s: float = 120) -> list[dict[str, Any]]:
    seen: list[dict[str, Any]] = []
    deadline = time.monotonic() + timeout_s
    while sum(e["type"] == kind for e in seen) < count:
        seen.append(json.loads(ws.recv(timeout=max(0.1, deadline - time.monotonic()))))
    return seen


def silence(seconds: float) -> np.ndarray:
    return np.zeros(int(seconds * 16_000), np.float32)


def test_the_sdks_realtime_client_gets_the_file_endpoints_text_at_ten_times_real_time(server: RunningServer) -> None:
    client = OpenAI(base_url=server.v1, api_key="unused", max_retries=0)
    file_text = client.audio.transcriptions.create(model="whisper-1", file=JFK.open("rb"), language="en").text
    audio = pcm16(np.concatenate([load_audio(AudioSource(JFK)), silence(2.5)]), 24_000)
    with client.realtime.connect(model="whisper-1", extra_query={"intent": "transcription"}) as connection:
        created = connection.recv()
        assert created.type == "session.created" and created.session.type == "transcription"
        connection.session.update(
            session={
                "type": "transcription",
                "audio": {
                    "input": {
                        "format": {"type": "audio/pcm", "rate": 24000},
                        "transcription": {"model": "whisper-1", "language": "en"},
                        # JFK pauses for up to 1.2 s inside the sentence: one turn needs a longer silence
                        "turn_detection": {"type": "server_vad", "silence_duration_ms": 1500},
                    }
                },
            }
        )
        for chunk in chunks(audio, 24_000):
            connection.input_audio_buffer.append(audio=chunk)
            time.sleep(CHUNK_MS / 1000 / 10)
        events = []
        while not events or events[-1].type != "conversation.item.input_audio_transcription.completed":
            events.append(connection.recv())  # parsed by the SDK's own event classes
    kinds = [e.type for e in events]
    assert kinds[0] == "session.updated" and events[0].session.audio.input.format.rate == 24000
    assert kinds.index("input_audio_buffer.speech_started") < kinds.index("input_audio_buffer.speech_stopped")
    assert kinds.index("input_audio_buffer.speech_stopped") < kinds.index("input_audio_buffer.committed")
    completed = events[-1]
    normalize = english_normalizer()
    assert normalize(completed.transcript) == normalize(file_text)
    assert completed.usage.type == "duration" and 10 < completed.usage.seconds < 12  # speech, then 0.3 s
    deltas = [e.delta for e in events if e.type == "conversation.item.input_audio_transcription.delta"]
    assert deltas and " ".join("".join(deltas).split()) == " ".join(completed.transcript.split())
    started = next(e for e in events if e.type == "input_audio_buffer.speech_started")
    assert 0 <= started.audio_start_ms <= 500 and started.item_id == completed.item_id


@pytest.mark.slow
def test_server_vad_cuts_the_jfk_loop_into_the_same_turns_every_loop(server: RunningServer) -> None:
    """JFK's own pauses (up to 1.18 s) are longer than the pause where the loop joins (about 0.9 s), so no
    silence duration makes exactly one turn per loop; at 500 ms each loop gives four turns, whose texts joined
    are the sentence ten times."""
    samples = load_audio(AudioSource(JFK_LOOP))
    normalize = english_normalizer()
    with connect(ws_url(server.url)) as ws:
        ws.send(json.dumps({"type": "transcription_session.update", "session": {
            "input_audio_format": {"type": "audio/pcm", "rate": 16000},
            "input_audio_transcription": {"model": "whisper-1", "language": "en"},
            "turn_detection": {"type": "server_vad", "silence_duration_ms": 500},
        }}))  # fmt: skip
        stream(ws, pcm16(np.concatenate([samples, silence(1.5)]), 16_000), 16_000, speed=10)
        ws.send(json.dumps({"type": "input_audio_buffer.clear"}))  # read after every append: all turns committed
        events = events_until(ws, "input_audio_buffer.cleared")
        while sum(e["type"] == "input_audio_buffer.committed" for e in events) > sum(
            e["type"] == "conversation.item.input_audio_transcription.completed" for e in events
        ):
            events.append(json.loads(ws.recv(timeout=60)))
    assert events[1]["type"] == "transcription_session.updated"
    completed = [e for e in events if e["type"] == "conversation.item.input_audio_transcription.completed"]
    assert len(completed) % 10 == 0  # every loop cut into the same turns
    heard = " ".join(normalize(e["transcript"]) for e in completed)
    # Alone, the 0.5 s turn "ask not" is sometimes heard as "as not": a few words of 220.
    assert jiwer.wer(" ".join([normalize(JFK_LOOP_SENTENCE)] * 10), heard) <= 0.05
    committed = [e for e in events if e["type"] == "input_audio_buffer.committed"]
    assert [c["item_id"] for c in committed] == [c["item_id"] for c in completed]  # in order, one per turn
    assert [c["previous_item_id"] for c in committed[1:]] == [c["item_id"] for c in committed[:-1]]


JFK_LOOP_SENTENCE = (
    "And so my fellow Americans, ask not what your country can do for you, ask what you can do for your country."
)


def test_a_client_that_commits_itself_gets_its_buffer_transcribed(server: RunningServer) -> None:
    audio = pcm16(load_audio(AudioSource(JFK)), 16_000)
    with connect(ws_url(server.url, "/api/v1/realtime?intent=transcription")) as ws:
        ws.send(json.dumps({"type": "session.update", "session": {"type": "transcription", "audio": {"input": {
            "format": {"type": "audio/pcm", "rate": 16000}, "turn_detection": None}}}}))  # fmt: skip
        stream(ws, audio, 16_000, speed=1000)
        ws.send(json.dumps({"type": "input_audio_buffer.commit"}))
        events = events_until(ws, "conversation.item.input_audio_transcription.completed")
    kinds = [e["type"] for e in events]
    assert "input_audio_buffer.speech_started" not in kinds  # no server VAD: the client's commit is the turn
    assert "ask not what your country can do for you" in events[-1]["transcript"]
    metrics = httpx_get(server.url + "/metrics")
    assert metric_value(metrics, "whisper_live_audio_seconds_total") >= 11
    assert metric_value(metrics, "whisper_live_turn_latency_seconds_count") >= 1


@pytest.mark.parametrize(
    ("event", "code"),
    [
        ({"type": "response.create"}, "invalid_event"),
        ({"type": "input_audio_buffer.append", "audio": "not base64!"}, "invalid_audio"),
        ({"type": "input_audio_buffer.append", "audio": "A" * (15 * 1024 * 1024 + 4)}, "invalid_audio"),
        ({"type": "input_audio_buffer.commit"}, "input_audio_buffer_commit_empty"),
        ({"type": "session.update", "session": {"type": "realtime"}}, None),
        ({"type": "transcription_session.update", "session": {"input_audio_format": "g711_ulaw"}}, None),
        ({"type": "transcription_session.update", "session": {"turn_detection": {"type": "semantic_vad"}}}, None),
        ({"type": "session.update", "session": {"audio": {"input": {"transcription": {"language": "xx"}}}}}, None),
    ],
)
def test_bad_events_get_an_error_event_and_the_session_goes_on(
    server: RunningServer, event: dict[str, Any], code: str | None
) -> None:
    with connect(ws_url(server.url), max_size=None) as ws:
        assert json.loads(ws.recv(timeout=10))["type"] == "session.created"
        ws.send(json.dumps({**event, "event_id": "client-1"}))
        error = json.loads(ws.recv(timeout=10))
        assert error["type"] == "error" and error["error"]["type"] == "invalid_request_error"
        assert error["error"]["event_id"] == "client-1" and error["error"]["message"]
        if code:
            assert error["error"]["code"] == code
        ws.send("{not json")
        assert json.loads(ws.recv(timeout=10))["error"]["code"] == "invalid_json"
        ws.send(b"\x00\x01 raw audio bytes, not an event")
        assert json.loads(ws.recv(timeout=10))["error"]["code"] == "invalid_event"
        ws.send(json.dumps({"type": "input_audio_buffer.clear"}))  # still serving
        assert json.loads(ws.recv(timeout=10))["type"] == "input_audio_buffer.cleared"


def test_a_live_session_counts_against_admission_and_its_slot_comes_back(
    engine: CTranslate2Engine,
) -> None:
    running, thread = start_server(Settings(model="base", max_inflight_requests=1), engine)
    try:
        with connect(ws_url(running.url)) as first:
            assert json.loads(first.recv(timeout=10))["type"] == "session.created"
            with pytest.raises(InvalidStatus) as refused:
                connect(ws_url(running.url))
            assert refused.value.response.status_code == 429
            refusal = json.loads(refused.value.response.body)["error"]  # OpenAI's envelope, as for HTTP's 429
            assert refusal["type"] and "retry later" in refusal["message"]
            assert metric_value(httpx_get(running.url + "/metrics"), "whisper_live_sessions") == 1
        deadline = time.monotonic() + 10
        while (
            metric_value(httpx_get(running.url + "/metrics"), "whisper_requests_inflight")
            and time.monotonic() < deadline
        ):
            time.sleep(0.05)
        with connect(ws_url(running.url)) as again:  # the closed session's slot is free again
            assert json.loads(again.recv(timeout=10))["type"] == "session.created"
    finally:
        running.server.should_exit = True
        thread.join(timeout=30)


def httpx_get(url: str) -> str:
    import httpx

    return httpx.get(url, timeout=10).text


def test_the_api_key_is_asked_for_before_the_upgrade(engine: CTranslate2Engine) -> None:
    running, thread = start_server(Settings(model="base", api_key="sekrit"), engine)
    try:
        with pytest.raises(InvalidStatus) as refused:
            connect(ws_url(running.url))
        assert refused.value.response.status_code == 401
        with connect(ws_url(running.url), additional_headers={"Authorization": "Bearer sekrit"}) as ws:
            assert json.loads(ws.recv(timeout=10))["type"] == "session.created"
    finally:
        running.server.should_exit = True
        thread.join(timeout=30)


@pytest.mark.slow
def test_a_session_outlives_the_request_head_deadline_of_the_real_server(tmp_path: Path) -> None:
    """`serve` guards request heads with a deadline; an upgraded connection has no more heads to wait for."""
    with server_process(tmp_path, header_timeout_s="1") as proc, connect(ws_url(proc.url)) as ws:
        assert json.loads(ws.recv(timeout=10))["type"] == "session.created"
        time.sleep(2.5)
        ws.send(json.dumps({"type": "input_audio_buffer.clear"}))
        assert json.loads(ws.recv(timeout=10))["type"] == "input_audio_buffer.cleared"


@pytest.mark.slow
def test_on_sigterm_a_session_gets_its_open_turn_transcribed_then_ends(tmp_path: Path) -> None:
    """Draining: the turn still open is committed and transcribed, an error event says the session ended,
    the socket closes as "going away", and the server exits 0 without waiting for the grace period."""
    samples = load_audio(AudioSource(JFK))[: 16_000 * 2]  # "And so my fellow Americans", cut before its end
    with server_process(tmp_path, shutdown_grace_s="60") as proc:
        with connect(ws_url(proc.url)) as ws:
            ws.send(json.dumps({"type": "session.update", "session": {"audio": {"input": {
                "format": {"type": "audio/pcm", "rate": 16000}, "transcription": {"language": "en"}}}}}))  # fmt: skip
            stream(ws, pcm16(samples, 16_000), 16_000, speed=1000)
            events = events_until(ws, "input_audio_buffer.speech_started")
            proc.proc.send_signal(signal.SIGTERM)
            events += events_until(ws, "error")
            with pytest.raises(ConnectionClosed) as closed:
                ws.recv(timeout=10)
        assert closed.value.rcvd is not None and closed.value.rcvd.code == 1001
        assert proc.proc.wait(timeout=30) == 0
    kinds = [e["type"] for e in events]
    completed = [e for e in events if e["type"] == "conversation.item.input_audio_transcription.completed"]
    assert kinds.index("input_audio_buffer.committed") < kinds.index("error") and len(completed) == 1
    assert "fellow" in completed[0]["transcript"].lower()
    assert events[-1]["error"]["code"] == "shutting_down"


@pytest.mark.slow
def test_audio_sent_at_real_time_gets_the_same_text(server: RunningServer) -> None:
    client = OpenAI(base_url=server.v1, api_key="unused", max_retries=0)
    file_text = client.audio.transcriptions.create(model="whisper-1", file=JFK.open("rb"), language="en").text
    with connect(ws_url(server.url)) as ws:
        ws.send(json.dumps({"type": "session.update", "session": {"audio": {"input": {
            "transcription": {"language": "en"},
            "turn_detection": {"type": "server_vad", "silence_duration_ms": 1500}}}}}))  # fmt: skip
        audio = pcm16(np.concatenate([load_audio(AudioSource(JFK)), silence(2.5)]), 24_000)
        stream(ws, audio, 24_000, speed=1)
        events = events_until(ws, "conversation.item.input_audio_transcription.completed")
    normalize = english_normalizer()
    assert normalize(events[-1]["transcript"]) == normalize(file_text)
    deltas = [e["delta"] for e in events if e["type"].endswith(".delta")]
    assert len(deltas) >= 3  # partial text while the turn was open, not only at its end


def test_a_buffer_never_committed_is_committed_at_two_minutes(server: RunningServer) -> None:
    """Without server VAD a client that never commits would have the server hold its audio for good."""
    second = base64.b64encode(pcm16(silence(1.0), 16_000)).decode()
    with connect(ws_url(server.url)) as ws:
        ws.send(json.dumps({"type": "session.update", "session": {"audio": {"input": {
            "format": {"type": "audio/pcm", "rate": 16000}, "turn_detection": None}}}}))  # fmt: skip
        for _ in range(125):
            ws.send(json.dumps({"type": "input_audio_buffer.append", "audio": second}))
        ws.send(json.dumps({"type": "input_audio_buffer.clear"}))
        events = events_until(ws, "input_audio_buffer.cleared")
        events += events_until(ws, "conversation.item.input_audio_transcription.completed")
    committed = [e for e in events if e["type"] == "input_audio_buffer.committed"]
    assert len(committed) == 1  # at 120 s; the last 5 s were cleared
    assert events[-1]["usage"]["seconds"] == 120.0 and events[-1]["transcript"] == ""
