"""Export synthetic test videos as image frames: ``./frames_see/<video_name>/frame_00000.png``.

Also writes ``<out_dir>/labels.json`` ({video_name: class_name}) so ``inference.py`` can report accuracy,
``texts.json`` ({video_name: hint}) for text-conditioned models, and ``captions.json`` ({video_name: caption})
so captioning inference can report caption metrics.
"""
from __future__ import annotations

import os
from typing import Optional, Sequence

from videolab.cli import Parser, run_cli
from videolab.core.errors import UsageError


def main(argv: Optional[Sequence[str]] = None) -> None:
    parser = Parser(allow_abbrev=False, description=__doc__.splitlines()[0])
    parser.add_argument("--data_root", default="synthetic_dataset")
    parser.add_argument("--split", default="test", choices=("train", "test"))
    parser.add_argument("--out_dir", default="frames_see")
    parser.add_argument("--max_videos", type=int, default=0, help="0 = all videos of the split")
    parser.add_argument("--quiet", action="store_true")
    args = parser.parse_args(argv)
    from videolab.data.frames import export_split  # after parsing: --help answers before torch is imported
    try:
        labels = export_split(args.data_root, args.split, args.out_dir, args.max_videos, args.quiet)
    except FileNotFoundError as exc:
        raise UsageError(str(exc)) from None
    print(f"wrote {len(labels)} frame folders to {os.path.abspath(args.out_dir)}")


if __name__ == "__main__":
    raise SystemExit(run_cli(main))
