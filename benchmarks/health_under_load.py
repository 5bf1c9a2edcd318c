"""How fast /health answers while 16 clients keep the server saturated.

python -m benchmarks.health_under_load
"""

from __future__ import annotations

import asyncio
import time

import httpx
from tests.datasets import clips

from benchmarks.cpu_load import start_server
from whisper_endpoint.bench import Load, run_load

PORT = 8799
CLIENTS = 16


async def measure(url: str) -> None:
    files = [c.path for c in clips("B_librispeech/test-clean")]
    load = asyncio.create_task(
        run_load(f"{url}/v1/audio/transcriptions", Load(files, CLIENTS, len(files), language="en"))
    )
    latencies_ms: list[float] = []
    async with httpx.AsyncClient() as client:
        await asyncio.sleep(3)  # let the queue fill
        while not load.done():
            started = time.monotonic()
            response = await client.get(f"{url}/health")
            latencies_ms.append((time.monotonic() - started) * 1000)
            assert response.status_code == 200
            await asyncio.sleep(0.05)
    result = await load
    lat = sorted(latencies_ms)
    print(
        f"/health while {CLIENTS} clients transcribe ({result.summary()['rtfx']}x): {len(lat)} probes, "
        f"p50 {lat[len(lat) // 2]:.1f} ms, p99 {lat[int(0.99 * len(lat))]:.1f} ms, max {lat[-1]:.1f} ms"
    )


def main() -> None:
    proc = start_server(PORT, {})
    try:
        asyncio.run(measure(f"http://127.0.0.1:{PORT}"))
    finally:
        proc.terminate()
        proc.wait(timeout=60)


if __name__ == "__main__":
    main()
