"""A real `whisper-endpoint serve` process on a loopback port, for shutdown and memory tests."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx

from tests.conftest import free_port, metric_value
from whisper_endpoint.bench import wait_ready


class ServerProcess:
    def __init__(self, proc: subprocess.Popen[bytes], url: str) -> None:
        self.proc = proc
        self.url = url
        # Read the server's output as it comes: a full pipe would block the server on its next log line.
        self._output: list[bytes] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self._output.append(line)

    def metric(self, name: str) -> float:
        return metric_value(httpx.get(f"{self.url}/metrics", timeout=10).text, name)

    def idle(self) -> bool:
        """No request in flight and no audio queued, by the server's own metrics."""
        return self.metric("whisper_requests_inflight") == 0 and self.metric("whisper_queued_audio_seconds") == 0

    def status_kib(self, field: str) -> int:
        """A /proc/PID/status memory figure (VmRSS, VmHWM) in KiB."""
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith(f"{field}:"):
                return int(line.split()[1])
        raise KeyError(field)

    def log(self) -> str:
        """Everything the server printed; complete once it has exited."""
        if self.proc.poll() is not None:
            self._reader.join(timeout=10)
        return b"".join(self._output).decode(errors="replace")


@contextmanager
def server_process(tmp_dir: Path, model: str = "tiny.en", **env: str) -> Iterator[ServerProcess]:
    """Starts the server with TMPDIR=tmp_dir and WHISPER_* settings from `env`; kills it if still running."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    environ = {**os.environ, "TMPDIR": str(tmp_dir), **{f"WHISPER_{k.upper()}": v for k, v in env.items()}}
    proc = subprocess.Popen(
        [sys.executable, "-m", "whisper_endpoint", "serve", "--model", model, "--port", str(port)],
        env=environ,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    server = ServerProcess(proc, url)
    try:
        wait_ready(url, proc, 120)
        yield server
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def leftovers(tmp_dir: Path) -> list[Path]:
    """Spool folders and uploads of ours still on disk."""
    return [p for p in tmp_dir.rglob("*") if p.name.startswith(("whisper-endpoint-", "upload-"))]
