"""The command line as a newcomer meets it: help, version, mistakes, several files, pipes, a busy port."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import JFK
from tests.datasets import clips
from whisper_endpoint import __version__

CLI = [sys.executable, "-m", "whisper_endpoint"]
SHORT = next(c for c in clips("A_short_en") if c.path.suffix == ".wav" and c.duration_s < 8).path


def run(*args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*CLI, *args], capture_output=True, text=True, timeout=timeout)


def test_version_and_serve_help_name_defaults_and_variables() -> None:
    version = run("--version")
    assert version.returncode == 0 and version.stdout.strip() == f"whisper-endpoint {__version__}"
    usage = run("serve", "--help").stdout
    for flag, default, variable in [
        ("--port", "8000", "WHISPER_PORT"),
        ("--host", "127.0.0.1", "WHISPER_HOST"),
        ("--model", "base", "WHISPER_MODEL"),
        ("--engine", "auto", "WHISPER_ENGINE"),
        ("--gpus", "1", "WHISPER_GPUS"),
    ]:
        line = " ".join(usage.split(flag, 2)[-1].split())  # the flag's help, however argparse wraps it
        assert f"default: {default}; env: {variable}" in line, (flag, usage)


def test_transcribe_a_missing_file_fails_before_loading_a_model() -> None:
    missing = run("transcribe", "no-such.flac", str(JFK))
    assert missing.returncode == 2
    assert missing.stderr.strip() == "error: no such file: no-such.flac"
    assert "loading engine" not in missing.stderr


@pytest.mark.slow
def test_several_files_to_stdout_are_labelled_and_json_is_one_document(tmp_path: Path) -> None:
    both = [str(JFK), str(SHORT)]
    text = run("transcribe", *both, "--model", "tiny.en", "--quiet")
    assert text.returncode == 0, text.stderr
    assert text.stdout.index(f"==> {JFK} <==") < text.stdout.index("ask not") < text.stdout.index(f"==> {SHORT} <==")
    as_json = run("transcribe", *both, "--model", "tiny.en", "--quiet", "--format", "json")
    document = json.loads(as_json.stdout)
    assert list(document) == both and "ask not" in document[str(JFK)]["text"]
    written = run(
        "transcribe", *both, "--model", "tiny.en", "--quiet", "--format", "srt", "--output-dir", str(tmp_path)
    )
    assert written.stdout.split() == [str(tmp_path / f"{Path(p).stem}.srt") for p in both]
    assert (tmp_path / f"{JFK.stem}.srt").read_text().startswith("1\n00:00:00,")


def test_piping_into_head_ends_quietly() -> None:
    command = " ".join([*CLI, "transcribe", str(JFK), str(JFK), "--model", "tiny.en", "--quiet"])
    done = subprocess.run(f"{command} --format verbose_json | head -n 1", shell=True, capture_output=True, text=True)
    assert done.stdout.strip() == "{"
    assert "Traceback" not in done.stderr and "BrokenPipe" not in done.stderr


def test_translation_with_an_english_only_model_names_the_task() -> None:
    done = run("transcribe", str(JFK), "--model", "tiny.en", "--task", "translate", "--quiet")
    assert done.returncode == 1
    assert "is English-only: it cannot translate" in done.stderr and "None" not in done.stderr


def test_serve_fails_in_one_line_on_a_busy_port_or_a_missing_engine() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = str(taken.getsockname()[1])
        busy = run("serve", "--model", "tiny.en", "--port", port, timeout=60)
    assert busy.returncode == 2
    assert busy.stderr.strip().splitlines()[-1].startswith(f"error: cannot listen on 127.0.0.1:{port}")
    assert "ready: model" not in busy.stderr and "Traceback" not in busy.stderr
    no_gpu = run("serve", "--engine", "vllm", "--port", "0", timeout=60)
    assert no_gpu.returncode == 2 and "Traceback" not in no_gpu.stderr
    assert no_gpu.stderr.strip().splitlines()[-1].startswith("error: --engine vllm needs")


def test_serve_refuses_a_setting_the_chosen_engine_would_ignore() -> None:
    import os

    env = {**os.environ, "WHISPER_MAX_NUM_SEQS": "12", "WHISPER_VLLM_ADMIT_EVERY_STEPS": "2"}
    done = subprocess.run(
        [*CLI, "serve", "--engine", "ctranslate2", "--port", "0"], capture_output=True, text=True, timeout=60, env=env
    )
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert done.stderr.strip().splitlines()[-1] == (
        "error: WHISPER_MAX_NUM_SEQS and WHISPER_VLLM_ADMIT_EVERY_STEPS do nothing with the ctranslate2 engine; "
        "unset it"
    )


def test_transcribe_takes_candidate_languages_and_keywords() -> None:
    done = run(
        "transcribe",
        str(JFK),
        "--languages",
        "de",
        "fr",
        "--keywords",
        "Americans",
        "--format",
        "verbose_json",
        "--quiet",
    )
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["language"] in ("german", "french")  # English audio, English not allowed


@pytest.mark.slow
def test_transcribe_with_speakers(tmp_path: Path) -> None:
    """Two readers: diarized_json labels them A and B; named by --known-speaker, srt cues carry the names."""
    from tests.conversations import build_conversations

    conversation = build_conversations(tmp_path, seed=41)[0]
    result = run("transcribe", str(conversation.path), "--format", "diarized_json", "--quiet")
    assert result.returncode == 0, result.stderr
    body = json.loads(result.stdout)
    assert {s["speaker"] for s in body["segments"]} == {"A", "B"} and body["task"] == "transcribe"
    first, second = sorted(conversation.references)
    named = run(
        "transcribe",
        str(conversation.path),
        "--format",
        "srt",
        "--quiet",
        "--known-speaker",
        f"first={conversation.references[first]}",
        "--known-speaker",
        f"second={conversation.references[second]}",
    )
    assert named.returncode == 0, named.stderr
    opener = conversation.turns[0].speaker
    assert named.stdout.split("\n")[2].startswith("first: " if opener == first else "second: ")
    assert "\nfirst: " in named.stdout and "\nsecond: " in named.stdout
    bad = run("transcribe", str(conversation.path), "--known-speaker", "nobody")
    assert bad.returncode == 2 and "NAME=FILE" in bad.stderr
