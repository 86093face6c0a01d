"""`python -m benchmarks [--quick] [--only NAME ...]`: every benchmark, a table, and
`benchmarks/results/latest.json`."""

from __future__ import annotations

import argparse
import dataclasses
import importlib
import os
import sys

from rich.console import Console
from rich.table import Table

from benchmarks.common import Result, compile_project, save_results

# module name -> what it measures; each module has run(quick: bool) -> list[Result] | Result
BENCHMARKS = {
    "ladder": "H.264 V2 ladder encode vs one ffmpeg CLI process",
    "packaging": "packaging + encryption (Cmaf cbcs, Dash cenc) vs Shaka Packager",
    "thumbnails": "thumbnail tiles vs ffmpeg fps/scale/tile",
    "scaling": "ladder encode time and peak memory for 15, 30, 60 s sources",
    "api": "POST /Job latency, 20 concurrent clients against vipe serve",
    "perscene": "EncodingMode PerScene vs Default: kbps, VMAF (libvmaf on the package), time",
    "chunked": "1080p ladder: one pass vs vipe run --parallel N (chunks), cores, speed-up",
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks")
    parser.add_argument("--quick", action="store_true", help="smaller sources, fewer runs")
    parser.add_argument("--only", nargs="*", choices=sorted(BENCHMARKS), help="run only these")
    args = parser.parse_args(argv)
    console = Console()
    results: list[Result] = []
    compile_project()
    for name in args.only or BENCHMARKS:
        console.print(f"[bold]{name}[/bold]: {BENCHMARKS[name]}")
        module = importlib.import_module(f"benchmarks.{name}")
        produced = module.run(quick=args.quick)
        # every row notes how it was run and the machine's load (benchmarks share 2 cores)
        load = [round(v, 2) for v in os.getloadavg()]
        results += [
            dataclasses.replace(r, extra={**(r.extra or {}), "quick": args.quick, "load": load})
            for r in (produced if isinstance(produced, list) else [produced])
        ]
    table = Table(title="vipe vs the tools users would pick instead (medians)")
    for column in ("benchmark", "vipe s", "anchor", "anchor s", "ratio", "vipe MB", "anchor MB"):
        table.add_column(column)
    for r in results:
        table.add_row(
            r.name, f"{r.vipe_s:.2f}", r.anchor, f"{r.anchor_s:.2f}", f"{r.ratio:.2f}",
            f"{r.vipe_peak_mb:.0f}", f"{r.anchor_peak_mb:.0f}",
        )  # fmt: skip
    console.print(table)
    console.print(f"results: {save_results(results)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
