"""Which frames a clip holds: temporal sampling as pure functions, and the :class:`ClipSpec` of a split.

Kept apart from decoding and transforms, as in PyTorchVideo / MMAction2: sampling is a pure function of (frames
available, frames wanted, position in the video), testable without a video file.

Temporal sampling (``--sampling``; n = frames in the video, T = ``--num_frames``):

* ``uniform``: T equal segments, frame ``floor((i + p) * n / T)`` of segment i with p = 0.5 (the centres).
* ``segment`` (TSN): the same segments; training draws one offset p_i ~ U[0, 1) per segment (a random frame in
  every segment), evaluation takes the centres (then it equals ``uniform``).
* ``dense``: T frames ``--frame_stride`` apart, ``start + j * stride``; training draws the start uniformly,
  evaluation centres the clip.
* Test clips (``--test_clips N``): clip k uses position p = (k + 0.5) / N instead of the centre: uniform and
  segment shift the frame inside every segment, dense spreads the N starts evenly over the video.
* Short videos: with n < T, uniform and segment repeat frames in order (each about T / n times, nearest
  neighbour in time). A dense clip that does not fit (n < (T - 1) * stride + 1) covers the whole video with
  uniform sampling at the same position instead (the stride shrinks; frames repeat only when n < T). Never black
  padding, never a jump back in time. A video with 0 frames never produces a sample (see ``clips.BadVideoLog``).

Random draws use torch's RNG, which the DataLoader seeds per worker from ``--seed`` (numpy's global RNG would
repeat across workers).
"""
from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Optional, Sequence

from videolab.core.registry import Registry

# --sampling names (the command line reads them: this module imports torch only when a clip is drawn)
SAMPLINGS = Registry("temporal sampling", flag="sampling")
SAMPLINGS.add("uniform", help="T equal segments, the centre frame of each")
SAMPLINGS.add("segment", help="TSN: a random frame in each of the T segments in training, the centres in evaluation")
SAMPLINGS.add("dense", help="T frames --frame_stride apart, a random start in training, centred in evaluation")

# ----------------------------------------------------------------------------------------------------------------
# temporal sampling (pure)
# ----------------------------------------------------------------------------------------------------------------
def _check_counts(num_available: int, num_frames: int) -> None:
    if num_available < 1:
        raise ValueError("cannot sample frames from a video with 0 frames")
    if num_frames < 1:
        raise ValueError(f"num_frames must be >= 1, got {num_frames}")


def segment_indices(num_available: int, num_frames: int, offsets: Sequence[float]) -> list[int]:
    """T equal segments of the video; frame ``floor((i + offsets[i]) * n / T)`` of segment i, offsets in [0, 1)."""
    _check_counts(num_available, num_frames)
    if len(offsets) != num_frames:
        raise ValueError(f"expected {num_frames} segment offsets, got {len(offsets)}")
    return [min(int((i + o) * num_available / num_frames), num_available - 1) for i, o in enumerate(offsets)]


def sample_frame_indices(num_available: int, num_frames: int) -> list[int]:
    """Uniform sampling at segment centres. Returns ``num_frames`` indices into [0, num_available)."""
    return segment_indices(num_available, num_frames, [0.5] * num_frames)


def dense_indices(num_available: int, num_frames: int, stride: int, position: float) -> list[int]:
    """T frames ``stride`` apart, starting at ``floor(position * (n - span + 1))`` (span = (T - 1) * stride + 1).
    A video shorter than the span gets uniform sampling at ``position`` over its whole length instead."""
    _check_counts(num_available, num_frames)
    if stride < 1:
        raise ValueError(f"frame stride must be >= 1, got {stride}")
    span = (num_frames - 1) * stride + 1
    if num_available < span:
        return segment_indices(num_available, num_frames, [position] * num_frames)
    start = min(int(position * (num_available - span + 1)), num_available - span)
    return [start + j * stride for j in range(num_frames)]


# ----------------------------------------------------------------------------------------------------------------
# what a clip is
# ----------------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class ClipSpec:
    """Everything that decides which frames and pixels an item holds.

    ``train``: random temporal position (segment, dense) and the training crop/flip; one view per item.
    Otherwise ``clips`` x ``crops`` deterministic views (pixel_values [V, T, C, S, S] when V > 1, else
    [T, C, S, S]).
    """
    num_frames: int
    image_size: int
    mean: tuple
    std: tuple
    sampling: str = "uniform"
    frame_stride: int = 1
    train: bool = False
    clips: int = 1
    crops: int = 1
    random_crop: bool = False
    crop_scale_min: float = 0.25
    flip: bool = False
    rand_augment: Optional[tuple] = None  # (operations, magnitude) of RandAugment on training clips

    def __post_init__(self):
        if self.sampling not in SAMPLINGS:
            raise ValueError(f"sampling must be one of {', '.join(SAMPLINGS)}, got {self.sampling!r}")
        if self.crops not in (1, 3) or self.clips < 1:
            raise ValueError(f"expected clips >= 1 and crops 1 or 3, got clips {self.clips}, crops {self.crops}")
        if self.train and self.clips * self.crops != 1:
            raise ValueError("a training clip has one view; multi-view (clips x crops) is for evaluation")

    @property
    def views(self) -> int:
        return self.clips * self.crops


def clip_indices(spec: ClipSpec, num_available: int, clip: int = 0) -> list[int]:
    """The frame indices of clip ``clip`` (0..spec.clips-1) of a video with ``num_available`` frames.
    Training draws its random positions from torch's global RNG."""
    import torch  # here, not at the top: the command line imports this module for the --sampling names
    t = spec.num_frames
    if spec.train:
        if spec.sampling == "segment":
            return segment_indices(num_available, t, torch.rand(t).tolist())
        position = torch.rand(()).item() if spec.sampling == "dense" else 0.5
    else:
        position = (clip + 0.5) / spec.clips
    if spec.sampling == "dense":
        return dense_indices(num_available, t, spec.frame_stride, position)
    return segment_indices(num_available, t, [position] * t)


def make_clip_spec(num_frames: int, image_size: int, mean, std, **options) -> ClipSpec:
    return ClipSpec(num_frames, image_size, tuple(mean), tuple(std), **options)


def spec_options(spec: ClipSpec) -> dict:
    """The ClipSpec fields after (num_frames, image_size, mean, std), as keyword arguments for a dataset."""
    return {f.name: getattr(spec, f.name) for f in fields(spec)[4:]}
