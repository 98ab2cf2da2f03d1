"""The synthetic dataset as video question-answer records (chat format), for Qwen2-VL fine-tuning:
``python apps/make_qa_dataset.py --synthetic_root synthetic_dataset --out qa_synthetic [--motion_questions]``.

``videolab/data/qa.py`` describes the record formats ``--dataset qa_json`` reads.
"""
from __future__ import annotations

import os
import sys
from typing import Optional, Sequence

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # the repo root, for videolab

from videolab.cli import Parser, run_cli  # noqa: E402


def main(argv: Optional[Sequence[str]] = None) -> list[str]:
    parser = Parser(allow_abbrev=False, description="Write the synthetic dataset as video QA records (chat format)")
    parser.add_argument("--synthetic_root", default="synthetic_dataset")
    parser.add_argument("--out", default="qa_synthetic")
    parser.add_argument("--motion_questions", action="store_true", help="also ask how the shape moves")
    args = parser.parse_args(argv)
    from videolab.data.qa import write_synthetic  # after parsing: --help answers at once
    written = write_synthetic(args.synthetic_root, args.out, args.motion_questions)
    print(f"wrote {', '.join(written)}")
    return written


if __name__ == "__main__":
    raise SystemExit(run_cli(main))
