"""Write the synthetic motion dataset: ``python dummy_data.py [--root synthetic_dataset] [--task playback]``.

Eight classes (four time-reversal pairs: move right / left, down / up, rotate clockwise / counter-clockwise,
grow / shrink) that only motion tells apart, as uint8 ``[T, C, H, W]`` tensors with a caption and a text hint
each; ``videolab/data/synthetic.py`` describes the data and holds the generator, whose names this module hands
on: ``import dummy_data; dummy_data.make_video(label, num_frames, size, seed)``, ``dummy_data.write_dataset(root)``.
"""
from __future__ import annotations

import os
from typing import Optional, Sequence

from videolab.cli import Parser, run_cli
from videolab.core.errors import UsageError


def __getattr__(name: str):
    """The generator's names (``make_video``, ``write_dataset``, ``CLASS_NAMES`` ...), imported on first use so
    ``--help`` answers before torch is imported."""
    from videolab.data import synthetic
    return getattr(synthetic, name)


def main(argv: Optional[Sequence[str]] = None) -> None:
    parser = Parser(allow_abbrev=False, description="Write the synthetic motion dataset ([T, C, H, W] uint8 .pt files)")
    parser.add_argument("--root", default="synthetic_dataset", help="output folder (default: synthetic_dataset)")
    parser.add_argument("--num_classes", type=int, default=8, help="2..8 (default: 8)")
    parser.add_argument("--train_per_class", type=int, default=400)
    parser.add_argument("--test_per_class", type=int, default=50)
    parser.add_argument("--num_frames", type=int, default=8)
    parser.add_argument("--image_size", type=int, default=32)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--task", default="motion", help="motion | playback (default: motion; see the module doc)")
    parser.add_argument("--quiet", action="store_true")
    args = parser.parse_args(argv)
    from videolab.data.synthetic import write_dataset  # after parsing: --help answers before torch is imported
    try:
        write_dataset(args.root, args.num_classes, args.train_per_class, args.test_per_class, args.num_frames,
                      args.image_size, args.seed, args.quiet, args.task)
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    print(f"wrote synthetic dataset to {os.path.abspath(args.root)}")


if __name__ == "__main__":
    raise SystemExit(run_cli(main))
