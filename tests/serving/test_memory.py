"""Memory stays proportional to the window, not the file: 4 clients upload a 4-hour file each."""

from __future__ import annotations

import signal
import threading
import time
from pathlib import Path

import av
import httpx
import numpy as np
import pytest

from tests.datasets import DATA
from tests.serving.process import leftovers, server_process
from whisper_endpoint.audio import SAMPLE_RATE
from whisper_endpoint.audio.decode import AudioSource, load_audio

HOURS = 4
CLIENTS = 4
MiB = 1024


def make_long_opus(path: Path, seconds: int) -> None:
    """`seconds` of real speech (one clip, repeated) as 12 kbit/s Opus: 4 h is about 20 MB."""
    clip = load_audio(AudioSource(DATA / "C_longform" / "earnings22_1_4482311_3_62.flac"))
    pcm = (np.clip(clip, -1, 1) * 32767).astype(np.int16)
    with av.open(str(path), "w") as out:
        stream = out.add_stream("libopus", rate=SAMPLE_RATE)
        stream.bit_rate = 12_000
        stream.layout = "mono"
        stream.options = {"compression_level": "0", "application": "voip"}  # fast encoding, same decoding
        written, total = 0, seconds * SAMPLE_RATE
        while written < total:
            n = min(len(pcm), total - written)
            frame = av.AudioFrame.from_ndarray(pcm[None, :n], format="s16", layout="mono")
            frame.sample_rate, frame.pts = SAMPLE_RATE, written
            for packet in stream.encode(frame):
                out.mux(packet)
            written += n
        for packet in stream.encode(None):
            out.mux(packet)


@pytest.mark.slow
def test_four_4_hour_uploads_keep_memory_bounded(tmp_path: Path) -> None:
    long_file = tmp_path / "four-hours.ogg"
    make_long_opus(long_file, HOURS * 3600)
    spool = tmp_path / "tmp"
    spool.mkdir()
    queue_limit = str(CLIENTS * HOURS * 3600 + 60)
    with server_process(spool, max_queued_audio_s=queue_limit, max_audio_duration_s=queue_limit) as server:
        # A first request fills a batch of 8 windows: the engine's own working set (CTranslate2's encoder
        # attention over 1500 frames, about 70 MiB a window) is then part of the baseline.
        warm_up = DATA / "C_longform" / "ljspeech_LJ001-0001_to_0032_concat.flac"
        with warm_up.open("rb") as f:
            r = httpx.post(f"{server.url}/v1/audio/transcriptions", files={"file": (warm_up.name, f)}, timeout=300)
        assert r.status_code == 200 and len(r.json()["text"]) > 1000
        baseline_kib = server.status_kib("VmHWM")
        statuses: list[str] = []

        def upload() -> None:
            # The read timeout is how this client gives up: the server must notice and drop its work.
            timeout = httpx.Timeout(connect=10, write=120, read=25, pool=10)
            try:
                with long_file.open("rb") as f:
                    r = httpx.post(
                        f"{server.url}/v1/audio/transcriptions", files={"file": ("long.ogg", f)}, timeout=timeout
                    )
                statuses.append(str(r.status_code))
            except httpx.ReadTimeout:
                statuses.append("gave up")

        threads = [threading.Thread(target=upload) for _ in range(CLIENTS)]
        for t in threads:
            t.start()
        deadline = time.monotonic() + 120
        while server.metric("whisper_requests_inflight") < CLIENTS and time.monotonic() < deadline:
            time.sleep(0.2)
        assert server.metric("whisper_requests_inflight") == CLIENTS
        assert server.metric("whisper_queued_audio_seconds") >= CLIENTS * HOURS * 3600 - 60
        for t in threads:
            t.join(timeout=300)
        peak_kib = server.status_kib("VmHWM")
        deadline = time.monotonic() + 60
        while server.metric("whisper_requests_inflight") and time.monotonic() < deadline:
            time.sleep(0.2)
        assert server.metric("whisper_requests_inflight") == 0
        assert server.metric("whisper_cancelled_requests_total") == CLIENTS
        assert server.metric("whisper_queue_windows") == 0
        assert [p for p in leftovers(spool) if p.name.startswith("upload-")] == []
        server.proc.send_signal(signal.SIGTERM)
        assert server.proc.wait(timeout=60) == 0
    assert leftovers(spool) == []

    assert statuses == ["gave up"] * CLIENTS
    growth_mib = (peak_kib - baseline_kib) / MiB
    print(f"server peak RSS: {baseline_kib / MiB:.0f} MiB after one 4-min request, {peak_kib / MiB:.0f} MiB under load")
    # A request holds one group of 8 windows (samples, log-mel, decoder state): tens of MiB. One 4-hour
    # file decoded whole would be 880 MiB of float32 samples; four would be 3.5 GiB.
    assert growth_mib < 150 * CLIENTS
