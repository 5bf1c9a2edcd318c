"""CPU per process and thread from /proc, and the GPU's busy share, for the benchmarks."""

from __future__ import annotations

import os
import subprocess
import time
from collections import Counter
from pathlib import Path
from typing import Any

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def descendants(root: int) -> list[int]:
    """This process and every process under it."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(entry.name))
    found, todo = [], [root]
    while todo:
        pid = todo.pop()
        found.append(pid)
        todo.extend(children.get(pid, []))
    return found


def process_name(pid: int) -> str:
    """The process's name (what `set_process_name` or the executable set); "" once it has gone."""
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return ""


def thread_cpu_ticks(pids: list[int]) -> dict[tuple[int, str, str, int], int]:
    """CPU ticks (user + system) per thread: (pid, process name, thread name, thread id)."""
    ticks: dict[tuple[int, str, str, int], int] = {}
    for pid in pids:
        try:
            process = process_name(pid)
            for task in Path(f"/proc/{pid}/task").iterdir():
                stat = (task / "stat").read_text()
                name = stat[stat.index("(") + 1 : stat.rindex(")")]
                fields = stat.rsplit(")", 1)[1].split()
                ticks[(pid, process, name, int(task.name))] = int(fields[11]) + int(fields[12])
        except (OSError, ValueError):
            continue
    return ticks


def cpu_by_thread(seconds: float) -> list[dict[str, Any]]:
    """Cores' worth of CPU over `seconds` per process and thread name in this process tree (threads of
    one name summed, and counted), busiest first."""
    before = thread_cpu_ticks(descendants(os.getpid()))
    time.sleep(seconds)
    after = thread_cpu_ticks(descendants(os.getpid()))
    used: Counter[tuple[int, str, str]] = Counter()
    busy: Counter[tuple[int, str, str]] = Counter()
    for (pid, process, thread, tid), t in after.items():
        delta = t - before.get((pid, process, thread, tid), 0)
        used[(pid, process, thread)] += delta
        busy[(pid, process, thread)] += delta > 0
    return [
        {
            "pid": k[0],
            "process": k[1],
            "threads": k[2],
            "busy_threads": busy[k],
            "cores": round(t / CLOCK_TICKS / seconds, 2),
        }
        for k, t in used.most_common(12)
        if t > 0
    ]


def process_cpu_s(root: int) -> dict[int, tuple[str, float]]:
    """(name, CPU seconds so far, user + system) of `root` and of each process under it."""
    seconds = {}
    for pid in descendants(root):
        try:
            name = process_name(pid)
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            seconds[pid] = (name, (int(fields[11]) + int(fields[12])) / CLOCK_TICKS)
        except (OSError, IndexError, ValueError):
            continue
    return seconds


def cpu_used_s(before: dict[int, tuple[str, float]], after: dict[int, tuple[str, float]]) -> dict[int, float]:
    """CPU seconds each process used between two `process_cpu_s` readings."""
    return {pid: t - before.get(pid, (name, 0.0))[1] for pid, (name, t) in after.items()}


def busiest_processes(
    before: dict[int, tuple[str, float]], after: dict[int, tuple[str, float]], wall_s: float, top: int = 8
) -> list[dict[str, Any]]:
    """Cores' worth of CPU per process between two `process_cpu_s` readings, busiest first."""
    used = {pid: (after[pid][0], t) for pid, t in cpu_used_s(before, after).items()}
    ranked = sorted(used.items(), key=lambda item: -item[1][1])[:top]
    return [{"pid": pid, "process": name, "cores": round(t / wall_s, 2)} for pid, (name, t) in ranked if t > 0]


class GpuBusy:
    """`nvidia-smi`'s GPU utilisation every 100 ms while running: the share of time a kernel ran, averaged
    over every sample of every GPU (None without nvidia-smi)."""

    mean_pct: float | None = None

    def __enter__(self) -> GpuBusy:
        query = ["nvidia-smi", "--query-gpu=utilization.gpu", "--format=csv,noheader,nounits", "-lms", "100"]
        try:
            self._proc: subprocess.Popen[str] | None = subprocess.Popen(query, stdout=subprocess.PIPE, text=True)
        except FileNotFoundError:
            self._proc = None
        return self

    def __exit__(self, *exc: object) -> None:
        if self._proc is None:
            return
        self._proc.terminate()
        out, _ = self._proc.communicate(timeout=10)
        samples = [int(line) for line in out.split() if line.strip().isdigit()]
        self.mean_pct = round(sum(samples) / len(samples), 1) if samples else None
