"""How many replies a second leave a process whose threads each send their own reply under one lock, against
handing them to one sender thread that sends whatever is queued as one message (whisper_endpoint.ipc's
BatchingSender), with other threads of that process busy in Python.

    python -m benchmarks.reply_convoy --out DIR

This is the engine process's reply path: vLLM finishes windows in groups (every window of a step that decodes
its last token), so a group of calling threads wakes at once and each sends its reply. With one lock around
the socket, each waiting thread must be woken, retake the interpreter lock, send, and wake the next; with other
threads busy in Python each of those handoffs can wait up to the thread switch interval (5 ms). Here a driver
thread releases GROUP threads every STEP_MS (more than either way can send), and a child process counts what
arrives.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import queue
import threading
import time
from datetime import date
from pathlib import Path
from typing import Any

from benchmarks.pipe_convoy import spin
from whisper_endpoint.ipc import BatchingSender, MessageSocket

SENDERS = 256  # calling threads in the engine process, each waiting for its window
GROUP = 32  # windows that finish in one step
STEP_MS = 10.0  # a decode step: 3,200 replies a second offered
REPLY = (7, "ok", [(tuple(range(100)), [0.5] * 100)])  # one window's tokens and scores, about 2 KB pickled


def count_replies(conn: MessageSocket, count: int, report: MessageSocket) -> None:
    """In the child: receive until `count` replies have come, then report the seconds since the first."""
    received, first = 0, 0.0
    while received < count:
        message = conn.recv()
        if not received:
            first = time.monotonic()
        received += len(message) if isinstance(message, list) else 1
    report.send(time.monotonic() - first)


def replies_per_s(batched: bool, busy_threads: int, count: int) -> float:
    context = multiprocessing.get_context("spawn")
    reader, writer = MessageSocket.pair()
    report_here, report_there = MessageSocket.pair()
    child = context.Process(target=count_replies, args=(reader, count, report_there))
    child.start()
    reader.close()
    stop = threading.Event()
    finished: queue.SimpleQueue[Any] = queue.SimpleQueue()
    lock = threading.Lock()
    sender = BatchingSender(writer, "replies", max_items=256) if batched else None

    def calling_thread() -> None:
        while finished.get() is not None:
            if sender is not None:
                sender.put(REPLY)
            else:
                with lock:
                    writer.send(REPLY)

    def driver() -> None:
        while not stop.is_set():
            for _ in range(GROUP):
                finished.put(1)
            time.sleep(STEP_MS / 1000)

    threads = [threading.Thread(target=calling_thread, daemon=True) for _ in range(SENDERS)]
    threads += [threading.Thread(target=spin, args=(stop,), daemon=True) for _ in range(busy_threads)]
    threads.append(threading.Thread(target=driver, daemon=True))
    for thread in threads:
        thread.start()
    try:
        seconds: float = report_here.recv()
        return (count - 1) / seconds
    finally:
        stop.set()
        for _ in range(SENDERS):
            finished.put(None)
        child.join(timeout=30)
        if sender is not None:
            sender.close(timeout_s=5)
        writer.close()
        report_here.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--count", type=int, default=3000, help="replies per row")
    parser.add_argument("--out", default=".")
    args = parser.parse_args()
    rows: list[dict[str, Any]] = []
    for busy in (0, 1, 4):
        for batched in (False, True):
            rate = replies_per_s(batched, busy, args.count)
            way = "one sender thread, batched" if batched else "each thread, under one lock"
            rows.append({"sent_by": way, "busy_threads": busy, "replies_per_s": round(rate)})
            print(json.dumps(rows[-1]), flush=True)
    result = {
        "date": date.today().isoformat(),
        "cores": os.cpu_count(),
        "command": f"python -m benchmarks.reply_convoy --out <dir> --count {args.count}",
        "offered_replies_per_s": round(GROUP * 1000 / STEP_MS),
        "rows": rows,
    }
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "reply-convoy.json").write_text(json.dumps(result, indent=2) + "\n")
    print("sent by | busy threads | replies/s")
    for row in rows:
        print(row["sent_by"], row["busy_threads"], row["replies_per_s"], sep=" | ")


if __name__ == "__main__":
    main()
