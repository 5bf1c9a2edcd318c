"""How many uploads a second the load generator itself can send: its own ceiling, to check benchmarks against.

    python -m benchmarks.client_ceiling --data DIR [--concurrency 64 512] [--requests 1024] [--out FILE]

The load generator (`whisper_endpoint.bench.run_load`) posts the GPU benchmark's 30 s FLAC uploads to a
server that only reads each body and answers a fixed JSON (uvicorn, pure-Python HTTP parser as on a machine
without httptools), so every second counted is the client's or the loopback's. A benchmark whose requests
per second come near this ceiling measures the client, not the server.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

PORT = 8197


async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    """Reads the whole body, answers {"text": "ok"}."""
    if scope["type"] != "http":
        return
    while (await receive()).get("more_body"):
        pass
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"application/json")]})
    await send({"type": "http.response.body", "body": b'{"text": "ok"}'})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", required=True)
    parser.add_argument("--work", default="/tmp/whisper-endpoint-overhead")
    parser.add_argument("--requests", type=int, default=1024)
    parser.add_argument("--concurrency", type=int, nargs="+", default=[64, 512])
    parser.add_argument("--out", help="JSON file for the rows")
    args = parser.parse_args()
    from benchmarks import command_line
    from benchmarks.gpu_http import corpora
    from whisper_endpoint.bench import Load, run_load, wait_ready

    files = corpora(Path(args.data), Path(args.work), args.requests, 0)["30s"]
    server = subprocess.Popen(
        [sys.executable, "-m", "uvicorn", "benchmarks.client_ceiling:app", "--port", str(PORT)]
        + ["--http", "h11", "--loop", "asyncio", "--log-level", "warning"]
    )
    rows = []
    try:
        wait_ready(f"http://127.0.0.1:{PORT}", server, 30, "/")  # the app answers any path
        for level in args.concurrency:
            load = Load(files, level, args.requests, response_format="json")
            result = asyncio.run(run_load(f"http://127.0.0.1:{PORT}/v1/audio/transcriptions", load))
            rows.append({**result.summary(), "uploads_per_s": round(result.requests / result.wall_s, 1)})
            print(json.dumps(rows[-1]), flush=True)
    finally:
        server.terminate()
        server.wait(timeout=30)
    if args.out:
        command = command_line("benchmarks.client_ceiling", args.data)
        doc = {"date": time.strftime("%Y-%m-%d"), "command": command, "rows": rows}
        Path(args.out).write_text(json.dumps(doc, indent=2))
    print("concurrency | uploads/s | RTFx (30 s uploads)")
    for r in rows:
        print(r["concurrency"], r["uploads_per_s"], r["rtfx"], sep=" | ")


if __name__ == "__main__":
    main()
