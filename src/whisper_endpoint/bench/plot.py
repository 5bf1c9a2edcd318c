"""RTFx and p95 latency against concurrency, one line per system (needs matplotlib: the `bench` extra)."""

from __future__ import annotations

import json
import sys
from collections import defaultdict
from pathlib import Path
from typing import Any


def plot(results: list[dict[str, Any]], out: Path, title: str = "") -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    by_system: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for r in results:
        if r.get("rtfx"):
            by_system[r.get("system", "whisper-endpoint")].append(r)
    fig, (rtfx, p95) = plt.subplots(1, 2, figsize=(11, 4.2))
    for system, rows in sorted(by_system.items()):
        rows.sort(key=lambda r: r["concurrency"])
        levels = [r["concurrency"] for r in rows]
        rtfx.plot(levels, [r["rtfx"] for r in rows], marker="o", label=system)
        p95.plot(levels, [r["p95_s"] for r in rows], marker="o", label=system)
    for ax, label in ((rtfx, "RTFx (audio s per wall s)"), (p95, "p95 latency (s)")):
        ax.set_xscale("log", base=2)
        ax.set_xlabel("concurrent clients")
        ax.set_ylabel(label)
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=8, loc="best")
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)


def main() -> None:
    """python -m whisper_endpoint.bench.plot RESULTS.json OUT.png [TITLE]"""
    results = json.loads(Path(sys.argv[1]).read_text())
    rows = results if isinstance(results, list) else [r for v in results.values() if isinstance(v, list) for r in v]
    plot(rows, Path(sys.argv[2]), sys.argv[3] if len(sys.argv) > 3 else "")


if __name__ == "__main__":
    main()
