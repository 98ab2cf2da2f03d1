"""Check a video dataset before a long run: ``python apps/check_videos.py --dataset ucf101 --data_root UCF-101``.

Every video file (``--dataset ucf101`` / ``videofolder``; ``--layout frames``: every folder of frame images) is
decoded to its last frame; unreadable, empty, too short (fewer than ``--min_frames``, default ``--num_frames``) and
mis-sized (short side below ``--min_side``, default ``--image_size``) videos are printed with the reason and
written to the skip list (``--skip_list_out``), which ``main.py --skip_list FILE`` leaves out of training and
evaluation. Exit code 0: no problem found; 3: problems found (listed); 2: usage error. ``--report FILE``: the same
as JSON. Console script: ``videolab-check-videos``.
"""
from __future__ import annotations

import os
import sys
from typing import Optional, Sequence

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # the repo root, for videolab

from videolab.cli import resolve, run_cli  # noqa: E402
from videolab.core.errors import IncompleteResult  # noqa: E402


def extra_flags(parser) -> None:
    group = parser.add_argument_group("check_videos.py")
    group.add_argument("--layout", default="videos", choices=("videos", "frames"),
                       help="videos: video files under --data_root (UCF101, videofolder); frames: folders of frame "
                            "images (default: videos)")
    group.add_argument("--min_frames", type=int, default=None, help="fewer frames = too short (default: --num_frames)")
    group.add_argument("--min_side", type=int, default=None, help="shorter side below this = mis-sized (default: "
                                                                  "--image_size)")
    group.add_argument("--skip_list_out", default="skip_list.txt", help="where the skip list goes (default: "
                                                                        "skip_list.txt)")
    group.add_argument("--report", default=None, help="also write the findings as JSON here")


def main(argv: Optional[Sequence[str]] = None) -> dict:
    cfg, _, ns = resolve(argv, "check_videos.py", __doc__.splitlines()[0], extra_flags)
    from videolab.core.files import write_json
    from videolab.data.check import KINDS, check_dataset, problems_as_dicts, write_skip_list
    min_frames = ns.min_frames if ns.min_frames is not None else cfg.num_frames
    min_side = ns.min_side if ns.min_side is not None else cfg.image_size
    videos, problems = check_dataset(cfg.data_root, ns.layout, min_frames, min_side, show_progress=not cfg.quiet)
    for problem in problems:
        print(f"{problem.kind:10s} {problem.video}: {problem.reason}")
    counts = {kind: sum(p.kind == kind for p in problems) for kind in KINDS}
    summary = dict(data_root=cfg.data_root, layout=ns.layout, min_frames=min_frames, min_side=min_side,
                   checked=len(videos), problems=problems_as_dicts(problems), counts=counts,
                   skip_list=ns.skip_list_out)
    write_skip_list(ns.skip_list_out, cfg.data_root, problems)
    if ns.report:
        write_json(ns.report, summary)
    found = ", ".join(f"{n} {kind.replace('_', ' ')}" for kind, n in counts.items() if n) or "no problems"
    print(f"checked {len(videos)} videos under {cfg.data_root}: {found} | skip list: {ns.skip_list_out}"
          + (f" (train with --skip_list {ns.skip_list_out})" if problems else ""))
    if problems:
        raise IncompleteResult(f"{len(problems)} of {len(videos)} videos have problems (listed above and in "
                               f"{ns.skip_list_out})", summary)
    return summary


def cli() -> int:
    """The console script ``videolab-check-videos`` (pyproject.toml)."""
    return run_cli(main)


if __name__ == "__main__":
    raise SystemExit(cli())
