"""Benchmark scripts (`python -m benchmarks.NAME`); results go under benchmarks/results/."""

from __future__ import annotations

import sys


def command_line(module: str, data: str | None = None) -> str:
    """This run's command as result files record it, with the corpus folder `data` written `<corpus>`: its
    path here means nothing on another machine."""
    argv = ["<corpus>" if data is not None and a == data else a for a in sys.argv[1:]]
    return " ".join([f"python -m {module}", *argv])
