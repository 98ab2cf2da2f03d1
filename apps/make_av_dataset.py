"""Write the synthetic audio-visual dataset (.mp4 with sound): ``python apps/make_av_dataset.py --root DIR``.

``videolab/data/av_synthetic.py`` describes it; ``--dataset synthetic_av`` also generates it on first use.
"""
from __future__ import annotations

import os
import sys
from typing import Optional, Sequence

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # the repo root, for videolab

from videolab.cli import Parser, run_cli  # noqa: E402
from videolab.core.errors import UsageError  # noqa: E402


def main(argv: Optional[Sequence[str]] = None) -> None:
    parser = Parser(allow_abbrev=False, description="Write the synthetic audio-visual dataset (.mp4 with sound)")
    parser.add_argument("--root", default="synthetic_av", help="output folder (default: synthetic_av)")
    parser.add_argument("--train_per_class", type=int, default=150)
    parser.add_argument("--test_per_class", type=int, default=25)
    parser.add_argument("--num_frames", type=int, default=8)
    parser.add_argument("--image_size", type=int, default=32)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--missing_audio", type=float, default=0.0, help="share of clips without an audio stream")
    args = parser.parse_args(argv)
    from videolab.data.av_synthetic import write_av_dataset  # after parsing: --help answers at once
    try:
        write_av_dataset(args.root, args.train_per_class, args.test_per_class, args.num_frames, args.image_size,
                         args.seed, args.missing_audio)
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    print(f"wrote synthetic audio-visual dataset to {os.path.abspath(args.root)}")


if __name__ == "__main__":
    raise SystemExit(run_cli(main))
