"""Summarise a sweep directory (grid or Optuna; finished or cut off):

    python -m ferlab.summarize runs/multirun/2026-12-04_15-00-00
    python -m ferlab.summarize <sweep dir> --metric val/acc --direction maximize

writes summary.csv, summary.md and the plots into the sweep directory (multiruns do this by
themselves when they end) and prints summary.md.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ferlab.sweep import summarize


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m ferlab.summarize", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("sweep_dir", type=Path, help="the directory a multirun wrote")
    parser.add_argument("--metric", help="the figure to sort by (default: the sweep's "
                                         "optimized_metric, else val/acc_best)")
    parser.add_argument("--direction", choices=("maximize", "minimize"),
                        help="default: the sweep's, else maximize (minimize for a loss)")
    args = parser.parse_args(argv)
    try:
        paths = summarize(args.sweep_dir, metric=args.metric, direction=args.direction)
    except (FileNotFoundError, ValueError) as err:  # no sweep there, or a damaged record
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(paths["md"].read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
