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

from whisper_endpoint import __version__
from whisper_endpoint.decoding.languages import normalize_language
from whisper_endpoint.errors import EngineUnavailableError, WhisperEndpointError

FORMAT_SUFFIX = {
    "txt": "txt",
    "text": "txt",
    "json": "json",
    "verbose_json": "json",
    "diarized_json": "json",
    "srt": "srt",
    "vtt": "vtt",
}


def _known_speakers(values: list[str]) -> tuple[Any, ...]:
    """--known-speaker NAME=FILE, each FILE 2-10 s of that speaker."""
    from whisper_endpoint.audio.decode import AudioSource, load_audio
    from whisper_endpoint.diarization.pipeline import KnownSpeaker

    speakers = []
    for value in values:
        name, _, path = value.partition("=")
        if not name or not path:
            raise WhisperEndpointError(f"--known-speaker takes NAME=FILE, got {value!r}")
        speakers.append(KnownSpeaker(name, load_audio(AudioSource(Path(path)))))
    return tuple(speakers)


def _render(args: argparse.Namespace, transcript: Any, diarization: Any) -> dict[str, Any] | str:
    """The output for one file: a JSON document (json formats) or text."""
    from whisper_endpoint.diarization.attribution import attribute
    from whisper_endpoint.formats import render

    speakers = attribute(transcript, list(diarization.turns)) if diarization else None
    return render.render_format(
        transcript,
        "text" if args.format == "txt" else args.format,
        words=args.word_timestamps,
        stretches=speakers.stretches if speakers else None,
        segment_speakers=speakers.segment_speakers if speakers else None,
    )


def _transcribe(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from whisper_endpoint.audio.decode import AudioSource, iter_audio, probe_duration_s
    from whisper_endpoint.config import Settings
    from whisper_endpoint.decoding.options import DecodeOptions, with_keywords
    from whisper_endpoint.decoding.transcribe import transcribe
    from whisper_endpoint.engines import load_engine

    missing = [path for path in args.files if not Path(path).is_file()]
    if missing:  # before the model loads: a typo should not cost a model load
        print(f"error: no such file: {', '.join(missing)}", file=sys.stderr)
        return 2
    language = None
    if args.language:
        language = normalize_language(args.language)
        if language is None:
            print(f"error: unknown language {args.language!r}", file=sys.stderr)
            return 2
    candidates = tuple(normalize_language(code) or code for code in args.languages or ())
    diarize = args.diarize or args.format == "diarized_json" or bool(args.known_speaker)
    diarizer = None
    if diarize:
        from whisper_endpoint.diarization.encoder import VoiceEncoder
        from whisper_endpoint.diarization.pipeline import Diarizer

        try:
            diarizer = Diarizer(VoiceEncoder.load())
            known = _known_speakers(args.known_speaker or [])
        except WhisperEndpointError as exc:
            print(f"error: {exc.message}", file=sys.stderr)
            return 2
    settings = Settings(model=args.model, engine=args.engine)
    engine = load_engine(settings)
    options = DecodeOptions(
        task=args.task,
        language=language,
        languages=candidates,
        prompt=with_keywords(args.prompt, args.keywords),
        word_timestamps=args.word_timestamps or (diarize and engine.capabilities.word_timestamps),
        strategy=args.strategy,
        beam_size=args.beam_size,
        report_no_speech_prob=args.format == "verbose_json",
    )
    failures = 0
    documents: dict[str, Any] = {}  # json formats with several files to stdout: one document, by file
    labelled = len(args.files) > 1 and not args.output_dir
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
            if diarizer is not None:
                if not args.quiet:
                    print(f"{Path(path).name}: finding speakers", file=sys.stderr)
                diarization = diarizer.diarize(iter_audio(source), known)
        except WhisperEndpointError as exc:
            print(f"error: {path}: {exc.message}", file=sys.stderr)
            failures += 1
            continue
        body = _render(args, transcript, diarization if diarizer is not None else None)
        if isinstance(body, dict):
            if labelled:
                documents[path] = body
                continue
            output = json.dumps(body, ensure_ascii=False, indent=None if args.format == "json" else 2) + "\n"
        else:
            output = body
        if args.output_dir:
            out_dir = Path(args.output_dir)
            out_dir.mkdir(parents=True, exist_ok=True)
            written = out_dir / f"{Path(path).stem}.{FORMAT_SUFFIX[args.format]}"
            written.write_text(output, encoding="utf-8")
            print(written)
        else:
            sys.stdout.write(f"==> {path} <==\n{output}\n" if labelled else output)
            sys.stdout.flush()
    if documents:
        sys.stdout.write(json.dumps(documents, ensure_ascii=False, indent=2) + "\n")
    return 1 if failures else 0


M_ARENA_MAX = -8  # glibc's mallopt parameter
MALLOC_ARENAS = 2


def _limit_malloc_arenas() -> None:
    """glibc gives each thread that allocates under contention an arena of its own and rarely returns their
    freed pages: with a thread per request, the server's RSS kept what its busiest moment had touched. The
    variable carries the limit to the processes the server starts: the vLLM engine process runs a thread per
    call, and its peak RSS fell from 10.6-11.3 GiB to 6.8-8.5 GiB with it, at the same throughput
    (docs/benchmarks.md)."""
    if os.environ.get("MALLOC_ARENA_MAX"):
        return  # the operator chose (and the processes we start inherit it)
    os.environ["MALLOC_ARENA_MAX"] = str(MALLOC_ARENAS)  # read by glibc as each child process starts
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6").mallopt(M_ARENA_MAX, MALLOC_ARENAS)  # this process started before we set it


def _one_blas_thread_in_children() -> None:
    """numpy's BLAS on one thread in the processes the server starts, unless the operator chose: each
    front-end process computes its requests' log-mels (a matrix product each), one process per core, and a
    BLAS thread per core from each would oversubscribe the cores many times over."""
    os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")  # read as each child's numpy loads


def _check_port(host: str, port: int) -> None:
    """A busy port fails here, in one line, before the model loads and "ready" is logged."""
    import socket

    try:
        with socket.create_server((host, port), reuse_port=False):
            pass
    except OSError as exc:
        raise EngineUnavailableError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from exc


def _serve(args: argparse.Namespace) -> int:
    from whisper_endpoint.api.app import create_app
    from whisper_endpoint.config import Settings
    from whisper_endpoint.engines import check_engine
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
    check_engine(settings)
    _check_port(settings.host, settings.port)
    _limit_malloc_arenas()
    _one_blas_thread_in_children()
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


def _setting_help(name: str, what: str) -> str:
    from whisper_endpoint.config import Settings

    default = Settings.model_fields[name].default
    return f"{what} (default: {default}; env: WHISPER_{name.upper()})"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="whisper-endpoint", description=__doc__)
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    t = sub.add_parser("transcribe", help="transcribe audio files")
    t.add_argument("files", nargs="+", metavar="FILE")
    t.add_argument("--model", default="base", help="base (default), tiny.en, a folder or a hub id")
    t.add_argument("--engine", default="auto", choices=["auto", "ctranslate2", "vllm"])
    t.add_argument("--language", help="code or name; detected when left out")
    t.add_argument("--task", default="transcribe", choices=["transcribe", "translate"])
    t.add_argument("--prompt", help="text to condition the first window on")
    t.add_argument("--languages", nargs="+", metavar="CODE", help="detect the language among these only")
    t.add_argument("--keywords", nargs="+", metavar="WORD", help="words to favour (given to Whisper after the prompt)")
    t.add_argument("--format", default="txt", choices=sorted(FORMAT_SUFFIX))
    t.add_argument("--output-dir", help="write FILE.<ext> there instead of printing")
    t.add_argument("--word-timestamps", action="store_true")
    t.add_argument("--diarize", action="store_true", help="label speakers (implied by --format diarized_json)")
    t.add_argument(
        "--known-speaker", action="append", metavar="NAME=FILE", help="name a speaker by 2-10 s of their voice"
    )
    t.add_argument("--strategy", default="batched", choices=["batched", "sequential"])
    t.add_argument("--beam-size", type=int, default=1)
    t.add_argument("--raw-pcm", action="store_true", help="inputs are headerless s16le, 16 kHz, mono")
    t.add_argument("--quiet", action="store_true", help="no progress bar")
    t.set_defaults(func=_transcribe)

    s = sub.add_parser(
        "serve",
        help="serve the OpenAI-compatible HTTP API",
        description="Serve the OpenAI-compatible HTTP API. Flags override WHISPER_* environment variables, which "
        "override the defaults; every other setting is a WHISPER_* variable only (README, Settings).",
    )
    s.add_argument("--host", help=_setting_help("host", "address to listen on"))
    s.add_argument("--port", type=int, help=_setting_help("port", "port to listen on"))
    s.add_argument("--model", help=_setting_help("model", "bundled alias (base, tiny.en), a folder or a hub id"))
    s.add_argument("--engine", choices=["auto", "ctranslate2", "vllm"], help=_setting_help("engine", "the engine"))
    s.add_argument("--gpus", type=int, help=_setting_help("gpus", "vLLM: one engine per GPU on this many (0: all)"))
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
    except BrokenPipeError:  # `transcribe ... | head`: the reader left; end quietly
        with contextlib.suppress(OSError):
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except WhisperEndpointError as exc:
        print(f"error: {exc.message}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
