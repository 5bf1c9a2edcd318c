"""Where a Python process spends its time, thread by thread, without a profiler to install.

    python -m benchmarks.stack_sampler OUT.txt -m whisper_endpoint serve ...

Runs the module with a thread that samples every thread's stack every 5 ms; at exit writes the most
frequent innermost frames (function, file:line) per thread group, and how often each group ran Python.
"""

from __future__ import annotations

import atexit
import collections
import runpy
import sys
import threading
import time
from pathlib import Path
from types import FrameType

INTERVAL_S = 0.005
DEPTH = 4  # frames kept per sample, innermost first


def _group(name: str) -> str:
    return name.rstrip("0123456789_-").split("(")[0] or name


def main() -> None:
    out = Path(sys.argv[1])
    if sys.argv[2] != "-m":
        raise SystemExit(__doc__)
    module = sys.argv[3]
    sys.argv = [module, *sys.argv[4:]]
    counts: collections.Counter[tuple[str, str]] = collections.Counter()
    samples: collections.Counter[str] = collections.Counter()

    def sample() -> None:
        me = threading.get_ident()
        while True:
            time.sleep(INTERVAL_S)
            names = {t.ident: t.name for t in threading.enumerate()}
            for ident, top in sys._current_frames().items():
                if ident == me:
                    continue
                frame: FrameType | None = top
                group = _group(names.get(ident, "?"))
                samples[group] += 1
                where = []
                for _ in range(DEPTH):
                    if frame is None:
                        break
                    where.append(f"{frame.f_code.co_name} {Path(frame.f_code.co_filename).name}:{frame.f_lineno}")
                    frame = frame.f_back
                counts[(group, " < ".join(where))] += 1

    def write() -> None:
        lines = [f"{'samples':>8}  thread group: innermost frame"]
        for (group, where), n in counts.most_common(80):
            lines.append(f"{n:>8}  {group}: {where}  ({100 * n / max(1, samples[group]):.0f} % of the group)")
        out.write_text("\n".join(lines) + "\n")

    atexit.register(write)
    threading.Thread(target=sample, name="stack-sampler", daemon=True).start()
    runpy.run_module(module, run_name="__main__", alter_sys=True)


if __name__ == "__main__":
    main()
