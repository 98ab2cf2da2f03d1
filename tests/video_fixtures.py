"""Small videos written by the tests themselves (PyAV), whose pixels say which frame they are.

Frame i is a flat grey of level 16 + 6 i with a white 8 x 8 square that moves 5 px per frame (so inter-frame
prediction has real work to do). The median level survives lossy coding to within a few levels, so
:func:`frame_numbers` reads back which frame a decoder returned (frames 0..39).
"""
from __future__ import annotations

import os

import av
import numpy as np

from videolab.data.video_io import write_video

MAX_FRAMES = 40  # 16 + 6 * 39 = 250 < 256
# encoder options per container: short GOPs so reads must seek, B-frames in the mp4 (reordered presentation),
# a bit rate high enough that mpeg4 keeps each frame's grey level
CODEC_OPTIONS = {".mp4": {"g": 6, "bf": 2}, ".avi": {"g": 5, "b": "2M"}, ".mkv": {"g": 4}, ".webm": {"g": 5},
                 ".mov": {"g": 7}}


def index_frames(n: int, height: int = 40, width: int = 56) -> np.ndarray:
    """uint8 [n, H, W, 3]: frame i encodes i in its grey level."""
    if not 1 <= n <= MAX_FRAMES:
        raise ValueError(f"1..{MAX_FRAMES} frames, got {n}")
    frames = np.empty((n, height, width, 3), np.uint8)
    for i in range(n):
        frames[i] = 16 + 6 * i
        x = (5 * i) % (width - 8)
        frames[i, 8:16, x:x + 8] = 255
    return frames


def frame_numbers(frames) -> list[int]:
    """Which frame of :func:`index_frames` each decoded frame ([F, H, W, 3] or [F, 3, H, W], uint8) is."""
    flat = np.asarray(frames).reshape(len(frames), -1)
    return np.round((np.median(flat, axis=1) - 16) / 6).astype(int).tolist()


def write_index_video(path: str, n: int, height: int = 40, width: int = 56) -> str:
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    return write_video(path, index_frames(n, height, width), options=CODEC_OPTIONS[os.path.splitext(path)[1].lower()])


def write_zero_frame_avi(path: str) -> str:
    """A valid AVI header with a video stream and no frames."""
    with av.open(path, "w") as container:
        stream = container.add_stream("mpeg4", rate=25)
        stream.width, stream.height, stream.pix_fmt = 32, 32, "yuv420p"
        container.start_encoding()
    return path


def write_bad_videos(folder: str, good_mp4: str) -> dict[str, str]:
    """{kind: path}: zero-byte, random bytes, truncated mp4 (its index is at the end), zero-frame avi."""
    os.makedirs(folder, exist_ok=True)
    paths = {k: os.path.join(folder, name) for k, name in (("zero_byte", "zero_byte.avi"), ("garbage", "garbage.mp4"),
                                                            ("truncated", "truncated.mp4"),
                                                            ("zero_frames", "zero_frames.avi"))}
    open(paths["zero_byte"], "wb").close()
    with open(paths["garbage"], "wb") as fh:
        fh.write(np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes())
    with open(good_mp4, "rb") as fh:
        data = fh.read()
    with open(paths["truncated"], "wb") as fh:
        fh.write(data[: len(data) // 2])
    write_zero_frame_avi(paths["zero_frames"])
    return paths
