"""Inputs an attacker would send, shared by the abuse and soak tests."""

from __future__ import annotations

import io
import socket
import struct
import time
from pathlib import Path

import av
import numpy as np

from tests.datasets import DATA

LONG_SPEECH = DATA / "C_longform" / "librivox_shakespeare_sonnets_1-3_concat.flac"  # 2.7 min


class _Unseekable(io.RawIOBase):
    """A pipe-like sink: the muxer cannot go back to write the duration, as in a browser's recording."""

    def __init__(self, raw: io.BufferedWriter) -> None:
        self.raw = raw

    def writable(self) -> bool:
        return True

    def write(self, data: bytes) -> int:  # type: ignore[override]
        return self.raw.write(data)


def silent_webm_without_duration(path: Path, seconds: int) -> Path:
    """Opus silence in WebM with no duration in its header (about 0.6 KB a second)."""
    rate = 48_000
    with path.open("wb") as raw, av.open(_Unseekable(raw), "w", format="webm") as out:
        stream = out.add_stream("libopus", rate=rate)
        stream.bit_rate = 6000
        stream.layout = "mono"
        pcm = np.zeros((1, rate), np.int16)
        for second in range(seconds):
            frame = av.AudioFrame.from_ndarray(pcm, format="s16", layout="mono")
            frame.sample_rate, frame.pts = rate, second * rate
            for packet in stream.encode(frame):
                out.mux(packet)
        for packet in stream.encode(None):
            out.mux(packet)
    return path


def wav_with_zero_bits_per_sample() -> bytes:
    data = np.zeros(16_000, "<i2").tobytes()
    fmt = struct.pack("<HHIIHH", 1, 1, 16_000, 32_000, 2, 0)
    return (
        b"RIFF"
        + struct.pack("<I", 36 + len(data))
        + b"WAVEfmt "
        + struct.pack("<I", 16)
        + fmt
        + b"data"
        + (struct.pack("<I", len(data)) + data)
    )


def multipart(fields: list[tuple[str, bytes]], file: tuple[str, bytes] | None) -> tuple[bytes, str]:
    """A multipart/form-data body and its content type, built by hand (clients refuse some of these)."""
    boundary = "----abuse-boundary-7d1c"
    parts = [
        f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n'.encode() + value + b"\r\n"
        for name, value in fields
    ]
    if file is not None:
        name, content = file
        parts.append(
            f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="{name}"\r\n'
            "Content-Type: application/octet-stream\r\n\r\n".encode()
            + content
            + b"\r\n"
        )
    return b"".join(parts) + f"--{boundary}--\r\n".encode(), f"multipart/form-data; boundary={boundary}"


def raw_connection(url: str) -> socket.socket:
    host, port = url.removeprefix("http://").split(":")
    return socket.create_connection((host, int(port)), timeout=30)


def read_all(sock: socket.socket) -> bytes:
    """Everything the server sends until it closes the connection."""
    chunks = []
    while chunk := sock.recv(65536):
        chunks.append(chunk)
    return b"".join(chunks)


def wait_for(condition: object, timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if condition():  # type: ignore[operator]
            return True
        time.sleep(0.1)
    return False
