"""Plots of a run folder as PNG files: ``python apps/visualize_results.py --run_dir checkpoints/<run>``.

Redraws what every evaluation draws (``videolab/evaluation/plots.py``) from the run folder's ``metrics.jsonl`` and
``eval.json``, into ``<run_dir>/plots/`` or ``--out_dir``.
"""
from __future__ import annotations

import os
import sys
from typing import Optional, Sequence

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # the repo root, for videolab

from videolab.cli import Parser, run_cli  # noqa: E402


def main(argv: Optional[Sequence[str]] = None) -> list[str]:
    parser = Parser(prog="visualize_results.py", allow_abbrev=False, description=__doc__.splitlines()[0])
    parser.add_argument("--run_dir", required=True, help="a run folder written by main.py: checkpoints/<run_name>")
    parser.add_argument("--out_dir", default=None, help="where the PNG files go (default: <run_dir>/plots)")
    parser.add_argument("--data_root", default=None,
                        help="dataset folder for the caption frames (default: the one recorded in eval.json)")
    args = parser.parse_args(argv)
    from videolab.evaluation.plots import write_plots  # after parsing: --help answers before matplotlib loads
    written = write_plots(args.run_dir, args.out_dir, args.data_root)
    for path in written:
        print(f"wrote {path}")
    return written


if __name__ == "__main__":
    raise SystemExit(run_cli(main))
