"""Check a video dataset before a long run (``apps/check_videos.py``, MMAction2's ``check_videos``): every video
file (UCF101, a videofolder) or frame folder is opened and decoded to its last frame, and reported when it is

* ``empty``: a 0-byte file, a video stream or frame folder with no frames;
* ``unreadable``: not a video, no video stream, truncated or corrupt (decoding fails), an unreadable image;
* ``too_short``: fewer frames than a clip samples (uniform sampling would repeat frames);
* ``mis_sized``: the short side below the training size (frames would be upscaled), or frames of different sizes.

The skip list it writes (one video id per line, the path relative to the dataset root as runs name it, with the
reason in a comment) is read by training with ``--skip_list``: the videos it names are left out of every split.
"""
from __future__ import annotations

import datetime
import os
from dataclasses import asdict, dataclass
from typing import Iterable, Optional

from videolab.core.errors import UsageError
from videolab.core.files import write_text
from videolab.data.clips import natural_key
from videolab.data.frames import IMAGE_EXTENSIONS
from videolab.data.video_io import VideoError, count_decoded_frames, is_video_file

KINDS = ("empty", "unreadable", "too_short", "mis_sized")


@dataclass(frozen=True)
class Problem:
    video: str  # the video id: its path relative to the dataset root
    kind: str  # one of KINDS
    reason: str


@dataclass(frozen=True)
class VideoShape:
    frames: int
    width: int
    height: int


def find_video_files(root: str) -> list[str]:
    """Every video file under ``root`` (natural order of the relative paths)."""
    found = [os.path.relpath(os.path.join(folder, name), root) for folder, _, names in os.walk(root)
             for name in names if is_video_file(name)]
    return sorted(found, key=natural_key)


def find_frame_folders(root: str) -> list[str]:
    """Every folder under ``root`` that holds images (a video as frames), relative to ``root``."""
    found = [os.path.relpath(folder, root) for folder, _, names in os.walk(root)
             if any(n.lower().endswith(IMAGE_EXTENSIONS) for n in names)]
    return sorted(found, key=natural_key)


def shape_of_video_file(path: str) -> VideoShape:
    """Frames the decoder puts out (to the last one: a truncated file fails here), and the frame size."""
    frames, width, height = count_decoded_frames(path)
    return VideoShape(frames, width, height)


def shape_of_frame_folder(folder: str) -> VideoShape:
    """Every image opened and fully read (Pillow); frames of different sizes raise VideoError."""
    from PIL import Image, UnidentifiedImageError
    names = sorted((n for n in os.listdir(folder) if n.lower().endswith(IMAGE_EXTENSIONS)), key=natural_key)
    sizes = set()
    for name in names:
        try:
            with Image.open(os.path.join(folder, name)) as img:
                img.load()
                sizes.add(img.size)
        except (OSError, UnidentifiedImageError) as exc:
            raise VideoError(f"cannot read frame {name} ({str(exc).splitlines()[0][:160]})") from None
    if len(sizes) > 1:
        raise VideoError(f"frames differ in size: {sorted(sizes)}")
    width, height = sizes.pop() if sizes else (0, 0)
    return VideoShape(len(names), width, height)


def inspect_video(video: str, path: str, frames_folder: bool, min_frames: int, min_side: int
                  ) -> tuple[Optional[VideoShape], Optional[Problem]]:
    """(its shape when it could be read, its first problem or None): empty, unreadable, too short, mis-sized."""
    if not frames_folder and os.path.getsize(path) == 0:
        return None, Problem(video, "empty", "0-byte file")
    try:
        shape = shape_of_frame_folder(path) if frames_folder else shape_of_video_file(path)
    except VideoError as exc:
        reason = str(exc).replace(f"{path}: ", "")
        kind = "mis_sized" if "differ in size" in reason else (
            "empty" if "0 frames" in reason or "no frame" in reason else "unreadable")
        return None, Problem(video, kind, reason)
    return shape, problem_of_shape(video, shape, min_frames, min_side)


def problem_of_shape(video: str, shape: VideoShape, min_frames: int, min_side: int) -> Optional[Problem]:
    if shape.frames == 0:
        return Problem(video, "empty", "no frames")
    if shape.frames < min_frames:
        return Problem(video, "too_short", f"{shape.frames} frames, fewer than the {min_frames} a clip samples")
    if min(shape.width, shape.height) < min_side:
        return Problem(video, "mis_sized", f"{shape.width}x{shape.height} px, short side below {min_side}")
    return None


def check_dataset(root: str, layout: str, min_frames: int, min_side: int, show_progress: bool = True
                  ) -> tuple[list[str], list[Problem]]:
    """(the videos checked, their problems) of the dataset at ``root``: ``layout`` videos (files) or frames
    (folders of images)."""
    records, problems = scan_dataset(root, layout, min_frames, min_side, show_progress)
    return [r["video"] for r in records], problems


def scan_dataset(root: str, layout: str, min_frames: int, min_side: int, show_progress: bool = True
                 ) -> tuple[list[dict], list[Problem]]:
    """(one record per video {video, label (its top folder), frames, width, height; None where unreadable or
    empty}, the problems) of the dataset at ``root``."""
    from tqdm.auto import tqdm
    if not os.path.isdir(root):
        raise UsageError(f"--data_root {root!r} is not a folder; pass the dataset folder (UCF101: UCF-101/)")
    frames_folder = layout == "frames"
    videos = find_frame_folders(root) if frames_folder else find_video_files(root)
    if not videos:
        what = "frame folders (images)" if frames_folder else "video files"
        raise UsageError(f"no {what} under --data_root {root!r}; check the path or --layout")
    records, problems = [], []
    for video in tqdm(videos, desc="checking videos", unit="video", disable=not show_progress):
        shape, problem = inspect_video(video, os.path.join(root, video), frames_folder, min_frames, min_side)
        label = video.split(os.sep)[0] if os.sep in video else "(top level)"
        records.append(dict(video=video, label=label, **(asdict(shape) if shape and shape.frames else
                                                          dict(frames=None, width=None, height=None))))
        if problem is not None:
            problems.append(problem)
    return records, problems


def skip_list_text(root: str, problems: Iterable[Problem]) -> str:
    lines = [f"# videos to skip under {os.path.abspath(root)} (apps/check_videos.py, "
             f"{datetime.datetime.now().isoformat(timespec='seconds')}); train with --skip_list THIS_FILE"]
    lines += [f"{p.video}  # {p.kind}: {p.reason}" for p in problems]
    return "\n".join(lines) + "\n"


def write_skip_list(path: str, root: str, problems: Iterable[Problem]) -> None:
    write_text(path, skip_list_text(root, problems))


def read_skip_list(path: str) -> set[str]:
    """The video ids of a skip list (comments and blank lines ignored); a missing file is a UsageError."""
    if not os.path.isfile(path):
        raise UsageError(f"--skip_list {path!r} not found; write one with python apps/check_videos.py "
                         f"--data_root DATASET --skip_list_out {path}")
    with open(path) as fh:
        return {line.split("#", 1)[0].strip() for line in fh if line.split("#", 1)[0].strip()}


def problems_as_dicts(problems: Iterable[Problem]) -> list[dict]:
    return [asdict(p) for p in problems]
