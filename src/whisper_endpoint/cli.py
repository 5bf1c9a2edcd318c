"""Command line: `whisper-endpoint transcribe|serve|bench`."""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import json
import logging
import os
import sys
from pathlib import Path
from typing import Any

from whisper_endpoint.decoding.languages import normalize_language
from whisper_endpoint.errors import WhisperEndpointError

FORMAT_SUFFIX = {"txt": "txt", "text": "txt", "json": "json", "verbose_json": "json", "srt": "srt", "vtt": "vtt"}


def _transcribe(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from whisper_endpoint.audio.decode import AudioSource, probe_duration_s
    from whisper_endpoint.config import Settings
    from whisper_endpoint.decoding.options import DecodeOptions
    from whisper_endpoint.decoding.transcribe import transcribe
    from whisper_endpoint.engines import load_engine
    from whisper_endpoint.formats import render

    language = None
    if args.language:
        language = normalize_language(args.language)
        if language is None:
            print(f"error: unknown language {args.language!r}", file=sys.stderr)
            return 2
    settings = Settings(model=args.model, engine=args.engine)
    engine = load_engine(settings)
    options = DecodeOptions(
        task=args.task,
        language=language,
        prompt=args.prompt,
        word_timestamps=args.word_timestamps,
        strategy=args.strategy,
        beam_size=args.beam_size,
        report_no_speech_prob=args.format == "verbose_json",
    )
    failures = 0
    for path in args.files:
        source = AudioSource(Path(path), raw_pcm=args.raw_pcm)
        try:
            total = probe_duration_s(source)
            with tqdm(
                total=round(total or 0, 1),
                unit="s",
                desc=Path(path).name,
                disable=args.quiet,
                bar_format="{l_bar}{bar}| {n:.1f}/{total:.1f} audio s [{elapsed}<{remaining}]",
            ) as bar:

                def progress(done_ms: int, bar: Any = bar) -> None:
                    done = done_ms / 1000
                    if bar.total < done:
                        bar.total = round(done, 1)
                    bar.update(round(done - bar.n, 1))

                transcript = transcribe(source, engine, options, progress)
        except WhisperEndpointError as exc:
            print(f"error: {path}: {exc.message}", file=sys.stderr)
            failures += 1
            continue
        if args.format in ("txt", "text"):
            output = render.render_text(transcript)
        elif args.format == "json":
            output = json.dumps(render.render_json(transcript), ensure_ascii=False) + "\n"
        elif args.format == "verbose_json":
            body = render.render_verbose_json(transcript, words=args.word_timestamps)
            output = json.dumps(body, ensure_ascii=False, indent=2) + "\n"
        elif args.format == "srt":
            output = render.render_srt(transcript)
        else:
            output = render.render_vtt(transcript)
        if args.output_dir:
            out_dir = Path(args.output_dir)
            out_dir.mkdir(parents=True, exist_ok=True)
            (out_dir / f"{Path(path).stem}.{FORMAT_SUFFIX[args.format]}").write_text(output, encoding="utf-8")
        else:
            sys.stdout.write(output)
    return 1 if failures else 0


M_ARENA_MAX = -8  # glibc's mallopt parameter
MALLOC_ARENAS = 2


def _limit_malloc_arenas() -> None:
    """glibc gives each thread that allocates under contention an arena of its own and rarely returns their
    freed pages: with a thread per request, the server's RSS kept what its busiest moment had touched."""
    if os.environ.get("MALLOC_ARENA_MAX"):
        return  # the operator chose
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6").mallopt(M_ARENA_MAX, MALLOC_ARENAS)


def _serve(args: argparse.Namespace) -> int:
    from whisper_endpoint.api.app import create_app
    from whisper_endpoint.config import Settings
    from whisper_endpoint.serving.shutdown import serve

    overrides = {
        k: v
        for k, v in {
            "host": args.host,
            "port": args.port,
            "model": args.model,
            "engine": args.engine,
            "gpus": args.gpus,
        }.items()
        if v is not None
    }
    settings = Settings(**overrides)
    _limit_malloc_arenas()
    app = create_app(settings)
    serve(app, settings)
    return 0


def _convert(args: argparse.Namespace) -> int:
    from whisper_endpoint.config import Settings
    from whisper_endpoint.convert import convert
    from whisper_endpoint.models import resolve_model

    files = resolve_model(args.model, Settings().cache_dir)
    out = convert(files.path, Path(args.output))
    print(f"wrote the Hugging Face checkpoint of {files.name} to {out}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="whisper-endpoint", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    t = sub.add_parser("transcribe", help="transcribe audio files")
    t.add_argument("files", nargs="+", metavar="FILE")
    t.add_argument("--model", default="base", help="base (default), tiny.en, a folder or a hub id")
    t.add_argument("--engine", default="auto", choices=["auto", "ctranslate2", "vllm"])
    t.add_argument("--language", help="code or name; detected when left out")
    t.add_argument("--task", default="transcribe", choices=["transcribe", "translate"])
    t.add_argument("--prompt", help="text to condition the first window on")
    t.add_argument("--format", default="txt", choices=sorted(FORMAT_SUFFIX))
    t.add_argument("--output-dir", help="write FILE.<ext> there instead of printing")
    t.add_argument("--word-timestamps", action="store_true")
    t.add_argument("--strategy", default="batched", choices=["batched", "sequential"])
    t.add_argument("--beam-size", type=int, default=1)
    t.add_argument("--raw-pcm", action="store_true", help="inputs are headerless s16le, 16 kHz, mono")
    t.add_argument("--quiet", action="store_true", help="no progress bar")
    t.set_defaults(func=_transcribe)

    s = sub.add_parser("serve", help="serve the OpenAI-compatible HTTP API")
    s.add_argument("--host")
    s.add_argument("--port", type=int)
    s.add_argument("--model")
    s.add_argument("--engine", choices=["auto", "ctranslate2", "vllm"])
    s.add_argument("--gpus", type=int, help="vLLM: one engine per GPU on this many GPUs (0: all visible)")
    s.set_defaults(func=_serve)

    c = sub.add_parser("convert", help="write a CTranslate2 model in the Hugging Face layout (for --engine vllm)")
    c.add_argument("output", help="folder to write")
    c.add_argument("--model", default="base", help="base (default), tiny.en or a CTranslate2 folder")
    c.set_defaults(func=_convert)

    b = sub.add_parser("bench", help="load-test a running server (see benchmarks/)")
    from whisper_endpoint.bench import add_arguments

    add_arguments(b)
    return parser


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args))
    except WhisperEndpointError as exc:
        print(f"error: {exc.message}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
