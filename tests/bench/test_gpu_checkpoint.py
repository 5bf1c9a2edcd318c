"""The GPU benchmarks' CPU-testable parts: the large-v3-shaped checkpoint, made once, and with --real-suppress
listing large-v3's suppressed tokens (whisper-base's list, special tokens moved up one), which the engine then
reads as the model's own; the engine driver's reports, and how steps that start windows ran, read back from a
server log; a profiling command that runs too long is noted, not fatal to the rest."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import pytest
from benchmarks.gpu_check import large_v3_shape
from benchmarks.gpu_http import driver_reports, start_step_paths

from whisper_endpoint.engines.vllm import model_suppress_tokens

SCRIPT = """import json, sys
out = sys.argv[2]
json.dump({"vocab_size": 51866}, open(out + "/config.json", "w"))
json.dump({"decoder_start_token_id": 50258}, open(out + "/generation_config.json", "w"))
"""


def test_the_checkpoint_lists_large_v3s_suppressed_tokens_only_when_asked(tmp_path: Path) -> None:
    script = tmp_path / "make.py"
    script.write_text(SCRIPT)
    base = tmp_path / "base"
    base.mkdir()
    (base / "config.json").write_text(json.dumps({"suppress_ids": [1, 2, 50257, 50258, 50358, 50362]}))
    plain = large_v3_shape(str(tmp_path / "work"), str(script), str(base))
    assert model_suppress_tokens(plain) == ()  # as the checkpoint script makes it
    real = large_v3_shape(str(tmp_path / "work"), str(script), str(base), suppress=True)
    assert real != plain
    assert model_suppress_tokens(real) == (1, 2, 50257, 50258, 50359, 50363)
    assert json.loads((real / "config.json").read_text())["vocab_size"] == 51866  # the rest kept
    script.write_text("raise SystemExit(1)")  # made once: not run again
    assert large_v3_shape(str(tmp_path / "work"), str(script), str(base), suppress=True) == real


def test_the_driver_reports_are_read_back_from_the_servers_log() -> None:
    from whisper_endpoint.engines.vllm_driver import DriverStats

    stats = DriverStats(added=50, finished=40, aborted=3, steps=100, running_sum=30_000, step_s=2.5, add_s=4.0)
    report = stats.line(10.0)
    line = f"2026-11-27 06:59:37,193 INFO whisper_endpoint.engines.vllm_driver: {report}"
    log = f"INFO engine started\n{line}\nINFO vLLM engine: loaded the model\n{line}\n"
    expected = (
        "300 windows per step on average, 5.0 added, 4.0 finished and 0.3 aborted per second, 10 steps per second "
        "(25.0 ms in each), 400 ms a second adding windows"
    )
    assert driver_reports(log) == [expected] * 2


def test_how_steps_that_start_windows_ran_is_read_back_from_the_servers_log(caplog: pytest.LogCaptureFixture) -> None:
    from whisper_endpoint.engines.vllm_decoder import compiled_start_steps_forward

    caplog.set_level("INFO", logger="whisper_endpoint.engines.vllm_decoder")
    no_slots = SimpleNamespace(attn_metadata=None)
    forward = compiled_start_steps_forward(lambda *args: "eager", lambda: no_slots, lambda parts, dim: parts)
    model = SimpleNamespace(decoder=SimpleNamespace(layers=[]))
    forward(model, "ids", "positions", ["encoder output"])
    log = "\n".join(f"2026-11-27 08:30:02,001 INFO {r.name}: {r.getMessage()}" for r in caplog.records)
    assert start_step_paths(f"INFO engine started\n{log}\n") == ["eagerly (no cross-attention slots)"]


def test_a_profiling_command_that_runs_too_long_is_noted_and_the_next_one_still_runs() -> None:
    import io
    import sys

    from benchmarks.gpu_probe import run_noting_timeout

    notes = io.StringIO()
    slow = [sys.executable, "-c", "import time; time.sleep(30)"]
    assert run_noting_timeout(slow, 0.5, notes) is None
    assert notes.getvalue().startswith("### timed out after 0 s: ") and "time.sleep(30)" in notes.getvalue()
    done = run_noting_timeout([sys.executable, "-c", "print('stacks')"], 30, notes)
    assert done is not None and done.stdout == "stacks\n"
