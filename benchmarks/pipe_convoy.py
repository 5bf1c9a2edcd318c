"""How fast one 30 s window of samples crosses a pipe into a process whose other threads hold the GIL.

    python -m benchmarks.pipe_convoy --out DIR

Each 30 s upload's samples (480,000 float32, 1.9 MB) cross pipes twice on the GPU path: from a front-end
worker to the server process, and from there to the engine process. `multiprocessing` reads a message in
a Python loop, one `read` per pipe buffer (64 KB on Linux), and gives up the GIL for each; with other
threads busy in Python, every read waits for the GIL again (up to the 5 ms switch interval). This times
messages from a child process into this one with 0, 1 or 4 threads spinning in Python here, with the
default pipe buffer, with a 1 MB one (Linux's F_SETPIPE_SZ, up to /proc/sys/fs/pipe-max-size), and
through the server's own transport (whisper_endpoint.ipc: a Unix socket read in one call per message).
`--switch-intervals-ms 5 1 0.5` adds socket rows with Python's thread switch interval set to each.
"""

from __future__ import annotations

import argparse
import fcntl
import json
import multiprocessing
import os
import sys
import threading
import time
from datetime import date
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import numpy as np

from whisper_endpoint.ipc import MessageSocket

WINDOW_SAMPLES = 480_000  # 30 s at 16 kHz
F_SETPIPE_SZ = 1031  # fcntl.h; Python's fcntl names it from 3.10 on some builds only


def send_windows(conn: Connection | MessageSocket, count: int) -> None:
    window = np.zeros(WINDOW_SAMPLES, dtype=np.float32)
    for _ in range(count):
        conn.send(window)
    conn.close()


def spin(stop: threading.Event) -> None:
    total = 0
    while not stop.is_set():
        for i in range(1000):  # pure Python: holds the GIL like a request thread building a response
            total += i


def messages_per_s(busy_threads: int, transport: str, count: int) -> float:
    context = multiprocessing.get_context("spawn")
    reader: Connection | MessageSocket
    writer: Connection | MessageSocket
    if transport == "socket":
        reader, writer = MessageSocket.pair()
    else:
        reader, writer = context.Pipe(duplex=False)
        if transport == "pipe 1 MB":
            fcntl.fcntl(reader.fileno(), F_SETPIPE_SZ, 1 << 20)
    stop = threading.Event()
    spinners = [threading.Thread(target=spin, args=(stop,)) for _ in range(busy_threads)]
    for thread in spinners:
        thread.start()
    child = context.Process(target=send_windows, args=(writer, count + 1))
    child.start()
    writer.close()
    try:
        reader.recv()  # the child has started
        started = time.monotonic()
        for _ in range(count):
            reader.recv()
        return count / (time.monotonic() - started)
    finally:
        stop.set()
        for thread in spinners:
            thread.join()
        child.join()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--count", type=int, default=100, help="windows per row")
    parser.add_argument("--out", default=".")
    parser.add_argument("--switch-intervals-ms", type=float, nargs="*", default=[], help="socket rows at each")
    args = parser.parse_args()
    rows: list[dict[str, Any]] = []
    for transport in ("pipe 64 KB", "pipe 1 MB", "socket"):
        for busy in (0, 1, 4):
            rate = messages_per_s(busy, transport, args.count)
            rows.append({"transport": transport, "busy_threads": busy, "windows_per_s": round(rate, 1)})
            print(json.dumps(rows[-1]), flush=True)
    default_interval = sys.getswitchinterval()
    for interval_ms in args.switch_intervals_ms:
        sys.setswitchinterval(interval_ms / 1000)
        for busy in (1, 4):
            rate = messages_per_s(busy, "socket", args.count)
            row = {"transport": "socket", "busy_threads": busy, "switch_interval_ms": interval_ms}
            rows.append({**row, "windows_per_s": round(rate, 1)})
            print(json.dumps(rows[-1]), flush=True)
    sys.setswitchinterval(default_interval)
    command = f"python -m benchmarks.pipe_convoy --out <dir> --count {args.count}"
    if args.switch_intervals_ms:
        command += " --switch-intervals-ms " + " ".join(map(str, args.switch_intervals_ms))
    result = {
        "date": date.today().isoformat(),
        "cores": os.cpu_count(),
        "command": command,
        "rows": rows,
    }
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "pipe-convoy.json").write_text(json.dumps(result, indent=2) + "\n")
    print("transport | busy threads | switch interval ms | 30 s windows/s")
    for row in rows:
        interval = row.get("switch_interval_ms", default_interval * 1000)
        print(row["transport"], row["busy_threads"], interval, row["windows_per_s"], sep=" | ")


if __name__ == "__main__":
    main()
