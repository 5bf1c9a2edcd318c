"""The vLLM engine end to end on a GPU machine (vLLM installed, no network).

    python -m benchmarks.gpu_check accuracy --ct2-model DIR --data DIR --out DIR
    python -m benchmarks.gpu_check speed --tokenizer-src DIR --checkpoint-script FILE --out DIR
    python -m benchmarks.gpu_check dp --gpus 2 --tokenizer-src DIR --checkpoint-script FILE --out DIR

accuracy: converts the CTranslate2 whisper-base in DIR to the Hugging Face layout (`whisper-endpoint
convert`), checks the conversion with transformers on the JFK clip, serves it with `whisper-endpoint serve
--engine vllm`, sends JFK and the LibriSpeech test-clean clips through the HTTP API (WER), and runs the
OpenAI SDK tests against that server. speed: builds whisper-large-v3-shaped checkpoints with no weights and
times 30 s windows with 100 forced tokens each through the engine interface, per KV-cache setting. dp: the
same windows through one engine and through one engine per GPU (data parallelism, `--gpus N`).
Each engine runs in its own process so that GPU memory is free for the next.
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
from typing import IO, Any

from whisper_endpoint.bench import wait_ready
from whisper_endpoint.decoding.tokenizer import Tokenizer
from whisper_endpoint.engines.base import SamplingOptions, WindowInput

PORT = 8100
LARGE_V3_SHIFTED_FROM = 50358  # large-v3 added <|yue|> here: ids from <|translate|> up are one higher than base's


def _log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


def transformers_check(model: Path, audio: Path) -> dict[str, Any]:
    import torch
    from transformers import WhisperForConditionalGeneration

    from whisper_endpoint.audio.decode import AudioSource, load_audio
    from whisper_endpoint.audio.features import log_mel_window

    net = WhisperForConditionalGeneration.from_pretrained(str(model), torch_dtype=torch.float16).cuda().eval()
    features = torch.from_numpy(log_mel_window(load_audio(AudioSource(audio)), net.config.num_mel_bins))
    with torch.no_grad():
        ids = net.generate(features[None].half().cuda(), language="en", task="transcribe", max_new_tokens=100)
    from tokenizers import Tokenizer as HfTokenizer

    text = HfTokenizer.from_file(str(model / "tokenizer.json")).decode(ids[0].tolist(), skip_special_tokens=True)
    return {"transformers_jfk_text": text.strip()}


def accuracy(args: argparse.Namespace) -> dict[str, Any]:
    os.environ["WHISPER_TEST_DATA"] = str(Path(args.data).resolve())  # before tests.datasets is imported
    from whisper_endpoint.bench import Load, run_load
    from whisper_endpoint.convert import convert

    out: dict[str, Any] = {}
    model = convert(Path(args.ct2_model), Path(args.work) / "base")
    _log(f"converted to {model}")
    jfk = Path(args.data) / "A_short_en" / "jfk_openai-whisper.flac"
    if not args.no_transformers:  # the conversion's check: transformers reads the same JFK text from it
        check = subprocess.run(
            [sys.executable, "-m", "benchmarks.gpu_check", "transformers", "--model", str(model), "--audio", str(jfk)],
            capture_output=True,
            text=True,
        )
        out.update(
            json.loads(check.stdout.strip().splitlines()[-1])
            if check.returncode == 0
            else {"transformers": check.stderr[-2000:]}
        )
        _log(f"transformers: {out}")

    url = f"http://127.0.0.1:{PORT}"
    extra = {"vllm_engine_args": args.engine_args} if args.engine_args else {}
    proc = serve_vllm(model, (Path(args.out) / "server.log").open("wb"), kv_cache_dtype=args.kv, **extra)
    try:
        out["server_start_s"] = round(wait_ready(url, proc, 600), 1)
        _log(f"server ready in {out['server_start_s']} s")
        out["kv_cache_dtype"] = args.kv
        out["vllm_engine_args"] = args.engine_args
        for level in (1,) if args.quick else (1, 32):
            out[f"librispeech_c{level}"] = librispeech_load(url, level, passes=1)
            _log(f"LibriSpeech at concurrency {level}: WER {out[f'librispeech_c{level}']['wer_pct']} %")
        if args.quick:
            return out
        jfk_result = asyncio.run(run_load(f"{url}/v1/audio/transcriptions", Load([jfk], 1)))
        out["jfk_text"] = jfk_result.texts.get(jfk.name)
        env = {
            **os.environ,
            "WHISPER_TEST_SERVER_URL": url,
            "WHISPER_TEST_ENGINE": "vllm",
            "WHISPER_TEST_DATA": str(Path(args.data).resolve()),
        }
        sdk = subprocess.run(
            [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests/api/test_openai_sdk.py"],
            capture_output=True,
            text=True,
            env=env,
        )
        out["openai_sdk_tests"] = sdk.stdout.strip().splitlines()[-1] if sdk.stdout.strip() else sdk.stderr[-500:]
        (Path(args.out) / "sdk-tests.log").write_text(sdk.stdout + sdk.stderr)
        _log(f"OpenAI SDK tests: {out['openai_sdk_tests']}")
    finally:
        proc.terminate()
        out["server_exit"] = proc.wait(timeout=120)
    return out


def serve_vllm(model: Path, log: IO[bytes] | int, **settings: str) -> subprocess.Popen[bytes]:
    """`whisper-endpoint serve --engine vllm` on PORT, with WHISPER_* settings on top of half the GPU memory."""
    cmd = [sys.executable, "-m", "whisper_endpoint", "serve", "--engine", "vllm", "--model", str(model)]
    env = {**os.environ, "WHISPER_GPU_MEMORY_UTILIZATION": "0.5"}
    env.update({f"WHISPER_{name.upper()}": value for name, value in settings.items()})
    return subprocess.Popen([*cmd, "--port", str(PORT)], stdout=log, stderr=subprocess.STDOUT, env=env)


def librispeech_load(url: str, concurrency: int, passes: int) -> dict[str, Any]:
    """The test-clean clips `passes` times through the HTTP API: the load summary and the WER."""
    from tests.datasets import clips

    from benchmarks.cpu_load import score
    from whisper_endpoint.bench import Load, run_load

    corpus = clips("B_librispeech/test-clean")
    files = [c.path for c in corpus]
    endpoint = f"{url}/v1/audio/transcriptions"
    result = asyncio.run(run_load(endpoint, Load(files, concurrency, passes * len(files), language="en")))
    texts = {c.path.name: result.texts.get(c.path.name, "") for c in corpus}
    return {**result.summary(), "wer_pct": score(corpus, texts), "texts": texts}  # texts: to compare clip by clip


def http_load(args: argparse.Namespace) -> dict[str, Any]:
    """LibriSpeech (three passes) through the HTTP API of one `serve --engine vllm`, per concurrency."""
    os.environ["WHISPER_TEST_DATA"] = str(Path(args.data).resolve())
    from whisper_endpoint.convert import convert

    model = convert(Path(args.ct2_model), Path(args.work) / "base")
    url = f"http://127.0.0.1:{PORT}"
    proc = serve_vllm(model, subprocess.DEVNULL)
    rows = []
    try:
        wait_ready(url, proc, 300)
        for level in args.concurrency:
            rows.append(librispeech_load(url, level, passes=3))
            _log(json.dumps({k: v for k, v in rows[-1].items() if k != "texts"}))
    finally:
        proc.terminate()
        proc.wait(timeout=120)
    return {"http_librispeech": rows}


def noise_window(tokenizer: Tokenizer) -> WindowInput:
    """The speed runs' window: 30 s of noise (vLLM computes its log-mel from the samples), English SOT."""
    import numpy as np

    samples = np.random.default_rng(0).normal(0, 0.1, 30 * 16_000).astype(np.float32)
    return WindowInput(None, tuple(tokenizer.sot_sequence("en", "transcribe", True)), 30_000, samples)


def speed_one(args: argparse.Namespace) -> dict[str, Any]:
    from whisper_endpoint.config import Settings
    from whisper_endpoint.engines.pool import vllm_pool

    settings = Settings(
        gpus=args.gpus,
        engine_cpu_split=args.cpu_split,
        load_format="dummy",
        model=args.model,
        kv_cache_dtype=args.kv,
        max_num_seqs=args.max_num_seqs,
        gpu_memory_utilization=0.9,
        vllm_scores=not args.no_scores,
        forced_tokens_per_30s=args.tokens,
    )
    started = time.monotonic()
    engine = vllm_pool(settings)
    start_s = time.monotonic() - started
    window = noise_window(engine.tokenizer)
    options = SamplingOptions(max_new_tokens=args.tokens, suppress_tokens=())
    engine.generate([window] * 64 * args.gpus, options)  # warm-up
    started = time.monotonic()
    generations = engine.generate([window] * args.windows, options)
    wall = time.monotonic() - started
    engine.close()
    assert all(len(g.tokens) >= args.tokens - 1 for g in generations), "forced lengths were not honoured"
    return {
        "gpus": args.gpus,
        "cpu_split": args.cpu_split,
        "kv_cache_dtype": args.kv,
        "max_num_seqs": args.max_num_seqs,
        "scores": not args.no_scores,
        "windows": args.windows,
        "tokens_per_window": args.tokens,
        "engine_start_s": round(start_s, 1),
        "wall_s": round(wall, 2),
        "rtfx": round(args.windows * 30 / wall, 1),
    }


def speed_offline(args: argparse.Namespace) -> dict[str, Any]:
    """The same windows and sampling through vLLM's offline LLM.generate: where our wrapper's cost shows."""
    from vllm import LLM, SamplingParams

    from whisper_endpoint.engines.vllm import MAX_MODEL_LEN, engine_prompt, sampling_kwargs

    kv = "fp8_e4m3" if args.kv == "auto" else args.kv
    llm = LLM(
        model=args.model,
        dtype="bfloat16",
        kv_cache_dtype=kv,
        max_num_seqs=args.max_num_seqs,
        max_model_len=MAX_MODEL_LEN,
        load_format="dummy",
        limit_mm_per_prompt={"audio": 1},
        gpu_memory_utilization=0.9,
    )
    tokenizer = Tokenizer.from_file(Path(args.model) / "tokenizer.json", True)
    window = noise_window(tokenizer)
    params = SamplingParams(
        **sampling_kwargs(SamplingOptions(max_new_tokens=100), len(window.prompt), 100, not args.no_scores)
    )
    llm.generate([engine_prompt(window)] * 64, params, use_tqdm=False)
    started = time.monotonic()
    llm.generate([engine_prompt(window)] * args.windows, params, use_tqdm=False)
    wall = time.monotonic() - started
    return {
        "path": "LLM.generate",
        "kv_cache_dtype": kv,
        "max_num_seqs": args.max_num_seqs,
        "scores": not args.no_scores,
        "windows": args.windows,
        "wall_s": round(wall, 2),
        "rtfx": round(args.windows * 30 / wall, 1),
    }


def large_v3_shape(work: str, checkpoint_script: str, tokenizer_src: str, suppress: bool = False) -> Path:
    """The large-v3-shaped checkpoint with no weights (config and tokenizer), made once under `work`. With
    `suppress`, its config lists the tokens a real large-v3 suppresses (the checkpoint script's config has
    none, so by default no window pays for suppressing them): whisper-base's list from `tokenizer_src`, the
    special tokens moved up one as large-v3's vocabulary has them."""
    checkpoint = Path(work) / ("large-v3-shape-suppress" if suppress else "large-v3-shape")
    if not (checkpoint / "config.json").is_file():
        checkpoint.mkdir(parents=True, exist_ok=True)
        subprocess.run([sys.executable, checkpoint_script, tokenizer_src, str(checkpoint)], check=True)
        if suppress:
            base = json.loads((Path(tokenizer_src) / "config.json").read_text())["suppress_ids"]
            config = json.loads((checkpoint / "config.json").read_text())
            config["suppress_tokens"] = [t + 1 if t >= LARGE_V3_SHIFTED_FROM else t for t in base]
            (checkpoint / "config.json").write_text(json.dumps(config, indent=1))
    return checkpoint


def add_checkpoint_arguments(parser: argparse.ArgumentParser, required: bool = True) -> None:
    """Where `large_v3_shape` makes the checkpoint from, and whether it lists large-v3's suppressed tokens."""
    parser.add_argument("--tokenizer-src", required=required)
    parser.add_argument("--checkpoint-script", required=required)
    parser.add_argument(
        "--real-suppress",
        action="store_true",
        help="the checkpoint lists the tokens a real large-v3 suppresses (about 90), as real checkpoints do",
    )


def _speed_one_run(checkpoint: Path, windows: int, options: list[str], labels: dict[str, Any]) -> dict[str, Any]:
    """One `speed-one` run in a process of its own (GPU memory is free again after it); its JSON row, or
    `labels` with the error's last lines."""
    cmd = [sys.executable, "-m", "benchmarks.gpu_check", "speed-one", "--model", str(checkpoint)]
    cmd += [*options, "--windows", str(windows), "--tokens", "100"]
    _log(f"speed run: {' '.join(cmd[3:])}")
    done = subprocess.run(cmd, capture_output=True, text=True)
    row = (
        json.loads(done.stdout.strip().splitlines()[-1])
        if done.returncode == 0
        else {**labels, "error": done.stderr[-3000:]}
    )
    _log(json.dumps(row))
    return row


def speed(args: argparse.Namespace) -> dict[str, Any]:
    checkpoint = large_v3_shape(args.work, args.checkpoint_script, args.tokenizer_src)
    runs = [
        _speed_one_run(checkpoint, args.windows, ["--kv", kv, "--max-num-seqs", str(seqs)], {"kv": kv})
        for kv, seqs in (("auto", 512), ("auto", 256), ("bfloat16", 256))
    ]
    return {"large_v3_shape": runs}


def data_parallel(args: argparse.Namespace) -> dict[str, Any]:
    """The same windows through one engine, then one engine per GPU (`--gpus N`), then that again with the
    host's cores split between the engines; each run in a process of its own."""
    checkpoint = large_v3_shape(args.work, args.checkpoint_script, args.tokenizer_src)
    runs = [
        _speed_one_run(
            checkpoint,
            args.windows,
            ["--gpus", str(gpus), *(["--cpu-split"] if split else [])],
            {"gpus": gpus, "cpu_split": split},
        )
        for gpus, split in ((1, False), (args.gpus, False), (args.gpus, True))
        if not (split and args.no_split_row)
    ]
    for run in runs[1:]:
        if "rtfx" in run and "rtfx" in runs[0]:
            _log(f"{args.gpus} engines (cpu split {run['cpu_split']}) / 1: {run['rtfx'] / runs[0]['rtfx']:.2f}x")
    return {"data_parallel": runs}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="step", required=True)
    a = sub.add_parser("accuracy")
    a.add_argument("--ct2-model", required=True)
    a.add_argument("--data", required=True)
    a.add_argument("--kv", default="auto", help="KV cache dtype (auto: fp8 where the GPU has it)")
    a.add_argument("--quick", action="store_true", help="LibriSpeech at concurrency 1 only")
    a.add_argument("--engine-args", help='more vLLM engine arguments as JSON, e.g. {"quantization": "fp8"}')
    a.add_argument("--no-transformers", action="store_true", help="skip the conversion's check (about 20 s)")
    s = sub.add_parser("speed")
    s.add_argument("--tokenizer-src", required=True)
    s.add_argument("--checkpoint-script", required=True)
    s.add_argument("--windows", type=int, default=1024)
    d = sub.add_parser("dp")
    d.add_argument("--tokenizer-src", required=True)
    d.add_argument("--checkpoint-script", required=True)
    d.add_argument("--gpus", type=int, default=2)
    d.add_argument("--windows", type=int, default=2048)
    d.add_argument("--no-split-row", action="store_true", help="leave out the run with the cores split")
    for p in (a, s, d):
        p.add_argument("--work", default="/tmp/whisper-endpoint-gpu")
        p.add_argument("--out", default=".")
    h = sub.add_parser("http")
    h.add_argument("--ct2-model", required=True)
    h.add_argument("--data", required=True)
    h.add_argument("--concurrency", type=int, nargs="+", default=[1, 64])
    h.add_argument("--work", default="/tmp/whisper-endpoint-gpu")
    h.add_argument("--out", default=".")
    t = sub.add_parser("transformers")
    t.add_argument("--model", required=True)
    t.add_argument("--audio", required=True)
    o = sub.add_parser("speed-one")
    o.add_argument("--model", required=True)
    o.add_argument("--kv", default="auto")
    o.add_argument("--max-num-seqs", type=int, default=512)
    o.add_argument("--windows", type=int, default=1024)
    o.add_argument("--tokens", type=int, default=100)
    o.add_argument("--no-scores", action="store_true", help="no logprobs or no-speech probability")
    o.add_argument("--offline", action="store_true", help="vLLM's LLM.generate instead of our engine")
    o.add_argument("--gpus", type=int, default=1, help="engines, one per GPU (our engine only)")
    o.add_argument("--cpu-split", action="store_true", help="each engine process on its own share of the cores")
    args = parser.parse_args()
    if args.step == "transformers":
        print(json.dumps(transformers_check(Path(args.model), Path(args.audio))))
        return
    if args.step == "speed-one":
        print(json.dumps(speed_offline(args) if args.offline else speed_one(args)))
        return
    Path(args.out).mkdir(parents=True, exist_ok=True)
    steps = {"accuracy": accuracy, "speed": speed, "dp": data_parallel, "http": http_load}
    result = steps[args.step](args)
    name = f"gpu-{args.step}" + (f"-{args.kv}" if args.step == "accuracy" and args.kv != "auto" else "")
    (Path(args.out) / f"{name}.json").write_text(json.dumps(result, indent=2))
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
