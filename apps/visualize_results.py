"""Plots of a run folder as PNG files: ``python apps/visualize_results.py --run_dir checkpoints/<run>``.

Redraws what every evaluation draws (``videolab/evaluation/plots.py``) from the run folder's ``metrics.jsonl`` and
``eval.json``, into ``<run_dir>/plots/`` or ``--out_dir``. Also:

* ``--attention``: the attention plots of the run's best checkpoint on its first test clip (the Transformer
  fusion's per-head temporal attention, the attention rollout of a VideoMAE / timm ViT backbone over the frames);
* ``--summary_csv results/summary.csv``: the runs of the results table compared (``runs_compared.png``: test top-1
  against parameters, peak memory and latency);
* ``--dataset_root DIR`` (``--layout videos|frames``): the dataset analysis (``dataset_analysis.png``: class
  distribution, clip lengths, frame sizes and bad files, the checker's findings).
"""
from __future__ import annotations

import os
import sys
from typing import Optional, Sequence

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # the repo root, for videolab

from videolab.cli import Parser, run_cli  # noqa: E402
from videolab.core.errors import UsageError  # noqa: E402


def parse(argv: Optional[Sequence[str]]):
    parser = Parser(prog="visualize_results.py", allow_abbrev=False, description=__doc__.splitlines()[0])
    parser.add_argument("--run_dir", default=None, help="a run folder written by main.py: checkpoints/<run_name>")
    parser.add_argument("--out_dir", default=None, help="where the PNG files go (default: <run_dir>/plots, else "
                                                        "./plots)")
    parser.add_argument("--data_root", default=None,
                        help="dataset folder for the caption frames and --attention (default: the one recorded)")
    parser.add_argument("--attention", action="store_true", help="also the attention plots of the best checkpoint")
    parser.add_argument("--summary_csv", default=None, help="compare the runs of this results table")
    parser.add_argument("--dataset_root", default=None, help="analyse this dataset folder (videos or frames)")
    parser.add_argument("--layout", default="videos", choices=("videos", "frames"),
                        help="--dataset_root: video files (UCF101, videofolder) or folders of frame images")
    parser.add_argument("--min_frames", type=int, default=8, help="--dataset_root: fewer frames = too short")
    parser.add_argument("--min_side", type=int, default=32, help="--dataset_root: shorter side below = mis-sized")
    args = parser.parse_args(argv)
    if not (args.run_dir or args.summary_csv or args.dataset_root):
        raise UsageError("nothing to draw: pass --run_dir (a run folder), --summary_csv (a results table) or "
                         "--dataset_root (a dataset folder)")
    if args.attention and not args.run_dir:
        raise UsageError("--attention draws a run's best checkpoint: add --run_dir checkpoints/<run>")
    return args


def attention(run_dir: str, data_root: Optional[str], out_dir: str) -> list[str]:
    """Rebuild the run's best checkpoint and its test set, and draw the attention plots where they apply."""
    import build_model
    import VLoader
    from videolab.core.checkpoints import BEST_DIR, read_run_config
    from videolab.core.settings import settings_from_dict
    from videolab.tasks.classification import attention_plots
    folder = os.path.join(run_dir, BEST_DIR)
    if not os.path.isdir(folder):
        raise UsageError(f"--attention: {folder} not found; pass a run folder that holds best/ (a finished run)")
    run_config = read_run_config(folder)
    cfg = settings_from_dict(run_config["settings"])
    if data_root:
        cfg.data_root = data_root
    built = build_model.rebuild_from_checkpoint(cfg, run_config, folder)
    test_set = VLoader.build_datasets(cfg, built.backbone.mean, built.backbone.std, parts=("test",),
                                      modalities=built.modalities).test
    written = attention_plots(built.model.eval(), test_set, out_dir, f"{os.path.basename(run_dir)} | "
                                                                      f"{cfg.vision_model}")
    if not written:
        print(f"note: no attention plot applies to {run_dir} (a Transformer fusion, or a VideoMAE / timm ViT "
              f"backbone without LoRA, has them)", file=sys.stderr)
    return written


def main(argv: Optional[Sequence[str]] = None) -> list[str]:
    args = parse(argv)
    # after parsing: --help answers before matplotlib loads
    from videolab.evaluation.plots import (plot_dataset_analysis, plot_run_comparison, read_summary_rows,
                                           save_figure, write_plots)
    out_dir = args.out_dir or (os.path.join(args.run_dir, "plots") if args.run_dir else "plots")
    written = []
    if args.run_dir:
        written += write_plots(args.run_dir, args.out_dir, args.data_root)
        if args.attention:
            written += attention(args.run_dir, args.data_root, out_dir)
    os.makedirs(out_dir, exist_ok=True)
    if args.summary_csv:
        rows = read_summary_rows(args.summary_csv)
        written.append(save_figure(plot_run_comparison(rows, args.summary_csv),
                                   os.path.join(out_dir, "runs_compared.png")))
    if args.dataset_root:
        from videolab.data.check import problems_as_dicts, scan_dataset
        records, problems = scan_dataset(args.dataset_root, args.layout, args.min_frames, args.min_side)
        readable = [r for r in records if r["frames"] is not None]
        written.append(save_figure(plot_dataset_analysis(readable, problems_as_dicts(problems), args.dataset_root),
                                   os.path.join(out_dir, "dataset_analysis.png")))
    for path in written:
        print(f"wrote {path}")
    return written


if __name__ == "__main__":
    raise SystemExit(run_cli(main))
