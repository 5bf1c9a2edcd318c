"""WER of whisper-endpoint on vLLM beside `vllm serve`, same converted weights, clips, KV cache dtype, one command.

    python -m benchmarks.gpu_accuracy --ct2-model DIR --data DIR --out DIR \\
        --system whisper-endpoint --system vllm-serve [--system whisper-endpoint@SRC] [--concurrency 1 32]

The CTranslate2 whisper-base in DIR is converted to the Hugging Face layout once (`whisper-endpoint convert`);
each system serves it in turn with an fp8 e4m3 KV cache and half the GPU's memory, and gets two English sets
through its HTTP API (`language=en`, `response_format=json`, greedy): LibriSpeech test-clean (74 clips) and
Hi-Fi TTS (116 LibriVox clips). `whisper-endpoint@SRC` runs another source tree of this server (an earlier
commit's `src/`) in the same command. Each clip's text is kept, to compare systems clip by clip.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from whisper_endpoint.bench import stop_server, wait_ready

PORT = 8100
SETS = ("B_librispeech/test-clean", "B2_hifitts_en")


def _log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


def command(system: str, model: Path) -> tuple[list[str], dict[str, str], str]:
    """How to start `system` on PORT, its environment, and the path that says it is ready."""
    env = dict(os.environ)
    if system == "vllm-serve":
        cmd = [sys.executable, "-m", "vllm.entrypoints.cli.main", "serve", str(model), "--dtype", "bfloat16"]
        cmd += ["--max-model-len", "448", "--kv-cache-dtype", "fp8", "--gpu-memory-utilization", "0.5"]
        return [*cmd, "--port", str(PORT), "--served-model-name", "whisper-1"], env, "/health"
    name, _, source = system.partition("@")
    if name != "whisper-endpoint":
        raise ValueError(f"unknown system {system!r}")
    if source:  # another tree of this server first on the path
        env["PYTHONPATH"] = os.pathsep.join([str(Path(source).resolve()), env.get("PYTHONPATH", "")])
    env.update(WHISPER_GPU_MEMORY_UTILIZATION="0.5", WHISPER_KV_CACHE_DTYPE="fp8_e4m3", WHISPER_LOG_LEVEL="warning")
    cmd = [sys.executable, "-m", "whisper_endpoint", "serve", "--engine", "vllm", "--model", str(model)]
    return [*cmd, "--port", str(PORT)], env, "/ready"


def measure(system: str, model: Path, levels: list[int], out: Path) -> list[dict[str, Any]]:
    from tests.datasets import clips

    from benchmarks.cpu_load import score
    from whisper_endpoint.bench import Load, run_load

    cmd, env, ready_path = command(system, model)
    log = out / f"{system.replace('/', '_').replace('@', '-at-')}.log"
    proc = subprocess.Popen(cmd, stdout=log.open("wb"), stderr=subprocess.STDOUT, env=env)
    rows = []
    try:
        url = f"http://127.0.0.1:{PORT}"
        ready_s = wait_ready(url, proc, 900, ready_path)
        _log(f"{system} ready in {ready_s:.0f} s")
        for folder in SETS:
            corpus = clips(folder)
            for level in levels:
                load = Load([c.path for c in corpus], level, language="en", response_format="json")
                result = asyncio.run(run_load(f"{url}/v1/audio/transcriptions", load))
                texts = {c.path.name: result.texts.get(c.path.name, "") for c in corpus}
                row = {"system": system, "set": folder, "concurrency": level, "wer_pct": score(corpus, texts)}
                row.update(errors=result.summary()["errors"], rtfx=result.summary()["rtfx"], texts=texts)
                rows.append(row)
                _log(f"{system} {folder} c{level}: WER {row['wer_pct']} %, errors {row['errors']}")
    finally:
        stop_server(proc, 120)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ct2-model", required=True)
    parser.add_argument("--data", required=True)
    parser.add_argument("--system", action="append", required=True)
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 32])
    parser.add_argument("--work", default="/tmp/whisper-endpoint-gpu")
    parser.add_argument("--out", default=".")
    args = parser.parse_args()
    os.environ["WHISPER_TEST_DATA"] = str(Path(args.data).resolve())  # before tests.datasets is imported
    from whisper_endpoint.convert import convert

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    model = convert(Path(args.ct2_model), Path(args.work) / "base")
    _log(f"converted to {model}")
    rows: list[dict[str, Any]] = []
    for system in args.system:
        try:
            rows += measure(system, model, args.concurrency, out)
        except Exception as exc:  # the next system still runs
            _log(f"{system} failed: {exc!r}")
            rows.append({"system": system, "failed": repr(exc)})
        (out / "gpu-accuracy.json").write_text(json.dumps({"date": time.strftime("%Y-%m-%d"), "rows": rows}, indent=2))
    print(f"{'system':<40} {'set':<26} {'conc':>4} {'WER %':>6} {'RTFx':>6} errors")
    for r in rows:
        if "failed" in r:
            print(f"{r['system']:<40} failed: {r['failed'][:80]}")
            continue
        print(
            f"{r['system']:<40} {r['set']:<26} {r['concurrency']:>4} {r['wer_pct']:>6.2f} {r['rtfx'] or 0:>6.1f} "
            f"{sum(r['errors'].values())}"
        )


if __name__ == "__main__":
    main()
