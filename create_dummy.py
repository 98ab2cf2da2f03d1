"""Export synthetic test videos as image frames: ``./frames_see/<video_name>/frame_00000.png``.

Also writes ``<out_dir>/labels.json`` ({video_name: class_name}) so ``inference.py`` can report accuracy,
``texts.json`` ({video_name: hint}) for text-conditioned models, and ``captions.json`` ({video_name: caption})
so captioning inference can report caption metrics.
"""
from __future__ import annotations

import json
import os
import sys
from typing import Optional, Sequence

import torch
from PIL import Image
from tqdm.auto import tqdm

from settings import Parser, UsageError, run_cli
from VLoader import FRAME_CAPTIONS_FILE, FRAME_LABELS_FILE, FRAME_TEXTS_FILE, read_annotations


def video_to_frames(video: torch.Tensor, folder: str) -> int:
    """uint8 [T, C, H, W] -> folder/frame_00000.png ...; returns the number of frames written."""
    if video.dtype != torch.uint8 or video.dim() != 4:
        raise ValueError(f"expected a uint8 [T, C, H, W] video, got {video.dtype} {tuple(video.shape)}")
    os.makedirs(folder, exist_ok=True)
    for t, frame in enumerate(video):
        Image.fromarray(frame.permute(1, 2, 0).numpy()).save(os.path.join(folder, f"frame_{t:05d}.png"))
    return len(video)


def export_split(data_root: str, split: str, out_dir: str, max_videos: int = 0, quiet: bool = False) -> dict:
    """Write every video of a split (or the first max_videos) as frame folders; returns {video_name: class_name}."""
    records = read_annotations(data_root, split)
    if max_videos:
        records = records[:: max(1, len(records) // max_videos)][:max_videos]  # spread over all classes
    labels, texts, captions = {}, {}, {}
    for rec in tqdm(records, desc=f"frames -> {out_dir}", disable=quiet or not sys.stderr.isatty(), leave=False):
        name = os.path.splitext(rec["path"])[0].replace("/", "_")  # class_3/video_12.pt -> class_3_video_12
        video = torch.load(os.path.join(data_root, split, rec["path"]), weights_only=True)
        video_to_frames(video, os.path.join(out_dir, name))
        labels[name], texts[name], captions[name] = rec["class_name"], rec.get("hint", ""), rec.get("caption", "")
    for filename, content in ((FRAME_LABELS_FILE, labels), (FRAME_TEXTS_FILE, texts),
                              (FRAME_CAPTIONS_FILE, captions)):
        with open(os.path.join(out_dir, filename), "w") as fh:
            json.dump(content, fh, indent=1)
    return labels


def main(argv: Optional[Sequence[str]] = None) -> None:
    parser = Parser(allow_abbrev=False, description=__doc__.splitlines()[0])
    parser.add_argument("--data_root", default="synthetic_dataset")
    parser.add_argument("--split", default="test", choices=("train", "test"))
    parser.add_argument("--out_dir", default="frames_see")
    parser.add_argument("--max_videos", type=int, default=0, help="0 = all videos of the split")
    parser.add_argument("--quiet", action="store_true")
    args = parser.parse_args(argv)
    try:
        labels = export_split(args.data_root, args.split, args.out_dir, args.max_videos, args.quiet)
    except FileNotFoundError as exc:
        raise UsageError(str(exc)) from None
    print(f"wrote {len(labels)} frame folders to {os.path.abspath(args.out_dir)}")


if __name__ == "__main__":
    raise SystemExit(run_cli(main))
