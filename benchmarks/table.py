"""`python -m benchmarks.table [RESULTS.json ...]`: the README's Markdown benchmark table from
result files (default `benchmarks/results/latest.json`); a row's --quick flag and the load
average it ran under (from `extra`) go into its last column."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from benchmarks.common import RESULTS

HEADER = (
    "| Benchmark | vipe s | anchor | anchor s | ratio | vipe MB | anchor MB | run (load) |\n"
    "|---|---|---|---|---|---|---|---|"
)


def row(result: dict) -> str:
    """One Markdown table row."""
    extra = result.get("extra") or {}
    run = "--quick" if extra.get("quick") else f"{result['runs']} run(s)"
    load = extra.get("load")
    if load:
        run += f" ({load[0]:.1f})"
    anchor_mb = f"{result['anchor_peak_mb']:.0f}" if result["anchor_peak_mb"] else "–"
    return (
        f"| {result['name']} | {result['vipe_s']:.3f} | {result['anchor']} | "
        f"{result['anchor_s']:.3f} | {result['ratio']:.2f} | {result['vipe_peak_mb']:.0f} | "
        f"{anchor_mb} | {run} |"
    )


def main(paths: list[str]) -> int:
    files = [Path(p) for p in paths] or [RESULTS / "latest.json"]
    print(HEADER)
    for path in files:
        for result in json.loads(path.read_text()):
            print(row(result))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
