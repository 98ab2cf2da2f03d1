"""Datasets, frame sampling, test views and transforms.

Kept apart, as in PyTorchVideo / MMAction2:
* sampling (:func:`segment_indices`, :func:`dense_indices`, :func:`clip_indices`) is a pure function of (frames
  available, frames wanted, position in the video);
* transforms (:func:`preprocess_video`, :func:`eval_views`, :func:`train_view`) are tensor functions:
  uint8 [T, C, H, W] -> normalised float;
* datasets only find and read frames (synthetic .pt files and frame folders here, video files in
  ``video_datasets.py``); the shared base :class:`ClipDataset` turns what they read into model input.

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
  padding, never a jump back in time. A video with 0 frames never produces a sample (see bad videos below).

Spatial views: evaluation resizes the short side to ``--image_size`` and takes the centre square
(``--test_crops 1``) or three squares at the start, centre and end of the long side (``--test_crops 3``).
Training (``--train_crop random_resized``) takes one crop of [``--crop_scale_min``, 1] of the frame area with
aspect ratio in [3/4, 4/3] (torchvision's ``RandomResizedCrop`` parameters), the same for every frame of the clip,
resized to the square; ``--horizontal_flip`` flips the whole clip with p = 0.5. Random draws use torch's RNG, which
the DataLoader seeds per worker from ``--seed`` (numpy's global RNG would repeat across workers).

Bad videos (:class:`BadVideoLog`): a video that cannot be read is marked in a shared-memory flag tensor, so the
main process sees what DataLoader workers found. Policy ``skip`` (training): warn naming it, use the next good
video in its place, and stop with :class:`TooManyBadVideos` once more than ``--max_bad_video_fraction`` of the
videos failed. Policy ``report`` (evaluation, inference): the item becomes a placeholder the caller leaves out of
every metric and lists as bad; nothing is replaced.
"""
from __future__ import annotations

import copy
import json
import os
import re
import sys
from collections import Counter
from dataclasses import dataclass, fields, replace
from typing import Callable, Optional, Sequence

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, default_collate
from torchvision.transforms import RandomResizedCrop
from torchvision.transforms.v2 import functional as TF

from settings import UsageError
from video_io import VideoError

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".webp", ".tif", ".tiff", ".gif")
FRAME_LABELS_FILE = "labels.json"  # optional {video_name: class_name} beside exported frame folders or videos
FRAME_TEXTS_FILE = "texts.json"  # optional {video_name: text hint}
FRAME_CAPTIONS_FILE = "captions.json"  # optional {video_name: reference caption}
SAMPLINGS = ("uniform", "segment", "dense")
CROP_RATIO = (3 / 4, 4 / 3)  # aspect ratios a training crop may have (torchvision's default)


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


# ----------------------------------------------------------------------------------------------------------------
# transforms (pure tensor functions, except the training view's random draws)
# ----------------------------------------------------------------------------------------------------------------
def _check_video(video: torch.Tensor) -> None:
    if video.dim() != 4 or video.shape[1] not in (1, 3):
        raise ValueError(f"expected a video [T, C, H, W] with C = 1 or 3, got shape {tuple(video.shape)}")


def _as_float01(video: torch.Tensor) -> torch.Tensor:
    """uint8 (or float in [0, 1]) [T, C, H, W] -> float in [0, 1] (for the resizes, which work in float)."""
    return video.float() / 255.0 if video.dtype == torch.uint8 else video.float()


def normalise(views: torch.Tensor, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    """uint8 (0..255) or float (0..1) [..., C, H, W], C = 1 or 3 -> a new contiguous float32 [..., 3, H, W]
    tensor, (x - mean) / std per channel.

    Written out rather than torchvision's ``normalize`` after a ``/ 255`` copy: one contiguous float copy of the
    already cropped pixels (decoded frames arrive channels-last, and arithmetic on that strided layout is several
    times slower), then two in-place passes. Cached clips spend most of their time here: 0.15 ms per 8 x 112^2
    clip, against 2 ms on the strided crop (a uint8 x float multiply is as slow).
    """
    scale = 255.0 if views.dtype == torch.uint8 else 1.0
    views = views.to(torch.float32, memory_format=torch.contiguous_format, copy=True)
    if views.shape[-3] == 1:
        views = views.expand(*views.shape[:-3], 3, *views.shape[-2:]).contiguous()
    std_t = torch.tensor(std, dtype=torch.float32).view(-1, 1, 1)
    shift = torch.tensor(mean, dtype=torch.float32).view(-1, 1, 1) / std_t
    return views.mul_(1.0 / (std_t * scale)).sub_(shift)


def _resize_short_side(video: torch.Tensor, size: int) -> torch.Tensor:
    return TF.resize(_as_float01(video), [size], antialias=True) if min(video.shape[-2:]) != size else video


def crop_offsets(height: int, width: int, size: int, crops: int) -> list[tuple[int, int]]:
    """(top, left) of ``crops`` size x size squares: 1 = the centre (torchvision's rounding), 3 = start, centre
    and end of the long side, centred on the short side."""
    centre = (int(round((height - size) / 2.0)), int(round((width - size) / 2.0)))
    if crops == 1:
        return [centre]
    if width >= height:
        return [(centre[0], 0), centre, (centre[0], width - size)]
    return [(0, centre[1]), centre, (height - size, centre[1])]


def eval_views(video: torch.Tensor, image_size: int, mean: Sequence[float], std: Sequence[float],
               crops: int = 1) -> torch.Tensor:
    """uint8 (or float in [0, 1]) [T, C, H, W] -> float [crops, T, 3, S, S]: short side resized to S (skipped when
    it already is, as for decoded video files), ``crops`` squares, normalised."""
    _check_video(video)
    video = _resize_short_side(video, image_size)  # [T, C, H', W'], min(H', W') = S
    h, w = video.shape[-2:]
    views = torch.stack([video[..., top:top + image_size, left:left + image_size]
                         for top, left in crop_offsets(h, w, image_size, crops)])  # [crops, T, C, S, S]
    return normalise(views, mean, std)


def preprocess_video(video: torch.Tensor, image_size: int, mean: Sequence[float], std: Sequence[float]
                     ) -> torch.Tensor:
    """uint8 (or float in [0, 1]) [T, C, H, W] -> float32 [T, 3, S, S]: resize short side, centre crop, normalise."""
    return eval_views(video, image_size, mean, std, crops=1)[0]


def train_view(video: torch.Tensor, spec: ClipSpec) -> torch.Tensor:
    """uint8 [T, C, H, W] -> float [T, 3, S, S]: the training crop (random resized, or the centre) and flip, one
    draw for the whole clip so motion stays coherent."""
    _check_video(video)
    size = spec.image_size
    if spec.random_crop:
        top, left, h, w = RandomResizedCrop.get_params(video, [spec.crop_scale_min, 1.0], list(CROP_RATIO))
        video = TF.resized_crop(_as_float01(video), top, left, h, w, [size, size], antialias=True)
    else:
        video = _resize_short_side(video, size)
        top, left = crop_offsets(*video.shape[-2:], size, 1)[0]
        video = video[..., top:top + size, left:left + size]
    if spec.flip and torch.rand(()).item() < 0.5:
        video = TF.horizontal_flip(video)
    return normalise(video, spec.mean, spec.std)


def natural_key(text: str) -> list:
    """'frame_10' after 'frame_9'."""
    return [int(part) if part.isdigit() else part.lower() for part in re.split(r"(\d+)", text)]


# ----------------------------------------------------------------------------------------------------------------
# bad videos
# ----------------------------------------------------------------------------------------------------------------
class TooManyBadVideos(UsageError):
    """More videos failed than --max_bad_video_fraction allows. One line even when raised in a DataLoader worker
    (the DataLoader re-raises it in the main process with the worker's traceback in the message)."""

    def __str__(self) -> str:
        text = super().__str__()
        return text.rsplit(f"{type(self).__name__}: ", 1)[-1].strip().splitlines()[0] if "\n" in text else text


class BadVideoLog:
    """Which items of a dataset could not be read, visible across DataLoader workers (shared-memory flags).

    ``policy``: ``skip`` (training: the caller substitutes another video; stop above ``max_fraction``) or
    ``report`` (evaluation: the caller puts a placeholder in and leaves it out of the metrics). ``skipped`` are
    videos dropped before the dataset was built (found unreadable when indexing); they count against
    ``max_fraction`` of ``total`` = videos listed.
    """

    def __init__(self, num_items: int, policy: str, max_fraction: float = 1.0, total: Optional[int] = None,
                 skipped: Sequence[dict] = (), what: str = "videos"):
        if policy not in ("skip", "report"):
            raise ValueError(f"policy must be 'skip' or 'report', got {policy!r}")
        self.flags = torch.zeros(max(num_items, 1), dtype=torch.uint8).share_memory_()
        self.policy, self.max_fraction, self.what = policy, max_fraction, what
        self.total = num_items + len(skipped) if total is None else total
        self.skipped = list(skipped)
        self.reasons: dict[int, str] = {}  # reasons known in this process

    def is_bad(self, i: int) -> bool:
        return bool(self.flags[i])

    def count(self) -> int:
        return int(self.flags.sum()) + len(self.skipped)

    def mark(self, i: int, video_id: str, reason: str, warn: bool = True) -> None:
        self.flags[i] = 1
        self.reasons[i] = reason
        if warn:
            action = "skipped (another video takes its place in the batch)" if self.policy == "skip" else \
                "left out of the metrics and listed as bad"
            named = reason if video_id in reason else f"{video_id}: {reason}"  # a VideoError names the path
            print(f"warning: cannot read {named}; {action}", file=sys.stderr, flush=True)
        if self.policy == "skip":
            self.check()

    def check(self) -> None:
        """Raise TooManyBadVideos if the share of bad videos is above max_fraction."""
        bad, total = self.count(), max(self.total, 1)
        if bad / total > self.max_fraction or (self.policy == "skip" and bad >= total):
            raise TooManyBadVideos(f"{bad} of {total} {self.what} ({100 * bad / total:.1f}%) cannot be read, more "
                                   f"than --max_bad_video_fraction {self.max_fraction} allows (the warnings above "
                                   f"name them); repair or remove them, or raise --max_bad_video_fraction")


# ----------------------------------------------------------------------------------------------------------------
# the shared dataset base
# ----------------------------------------------------------------------------------------------------------------
class ClipDataset(Dataset):
    """One item per video: ``spec`` picks the frames and views, subclasses read them.

    Subclasses set ``self.spec`` and ``self.bad`` and implement ``__len__``, ``load_frames(i, pick)`` (call
    ``pick(n)`` with the video's frame count n, return the frames at the indices it gives as uint8 [F, C, H, W],
    raise VideoError if the video cannot be read) and ``fields(i)`` (labels, video_id, caption, hint).
    Items: pixel_values float [T, C, S, S] (one view) or [V, T, C, S, S] (V = clips x crops), plus the fields.
    """
    spec: ClipSpec
    bad: BadVideoLog
    # optional (dataset, i, frame indices or None for a placeholder) -> more item fields, e.g. audio.AudioReader
    extra_fields: Optional[Callable] = None

    def load_frames(self, i: int, pick: Callable[[int], list[int]]) -> torch.Tensor:
        raise NotImplementedError

    def fields(self, i: int) -> dict:
        raise NotImplementedError

    def with_views(self, clips: int, crops: int) -> "ClipDataset":
        """The same videos (and bad-video log) seen through clips x crops evaluation views."""
        other = copy.copy(self)
        other.spec = replace(self.spec, train=False, clips=clips, crops=crops)
        return other

    def video_id(self, i: int) -> str:
        return self.fields(i)["video_id"]

    def readable(self) -> torch.Tensor:
        """bool [N]: the items not marked bad (so far; a video is marked when it fails to load)."""
        return self.bad.flags[:len(self)] == 0

    def __getitem__(self, i: int) -> dict:
        if self.bad.policy == "skip":
            return self._first_good_item(i)
        if not self.bad.is_bad(i):
            try:
                return self._item(i)
            except VideoError as exc:
                self.bad.mark(i, self.video_id(i), str(exc))
        return self._placeholder(i)

    def _first_good_item(self, i: int) -> dict:
        """Item i, or the next readable one after it (training: a bad video is skipped, never fatal alone)."""
        for attempt in range(len(self)):
            j = (i + attempt) % len(self)
            if self.bad.is_bad(j):
                continue
            try:
                return self._item(j)
            except VideoError as exc:
                self.bad.mark(j, self.video_id(j), str(exc))
        self.bad.check()
        raise TooManyBadVideos(f"no {self.bad.what} of {len(self)} could be read")

    def _item(self, i: int) -> dict:
        spec = self.spec
        num_clips = 1 if spec.train else spec.clips

        picked = []

        def pick(num_available: int) -> list[int]:
            picked[:] = [j for k in range(num_clips) for j in clip_indices(spec, num_available, k)]
            return list(picked)
        frames = self.load_frames(i, pick)  # uint8 [num_clips * T, C, H, W]
        clips = frames.unflatten(0, (num_clips, spec.num_frames))  # [N, T, C, H, W]
        if spec.train:
            pixel_values = train_view(clips[0], spec)  # [T, 3, S, S]
        elif spec.views == 1:
            pixel_values = eval_views(clips[0], spec.image_size, spec.mean, spec.std)[0]  # [T, 3, S, S]
        else:
            pixel_values = torch.cat([eval_views(c, spec.image_size, spec.mean, spec.std, spec.crops)
                                      for c in clips])  # [V, T, 3, S, S]
        extra = self.extra_fields(self, i, picked) if self.extra_fields is not None else {}
        return dict(pixel_values=pixel_values, **self.fields(i), **extra)

    def _placeholder(self, i: int) -> dict:
        """A bad video in evaluation: zeros of the right shape; callers drop it by ``self.bad``."""
        s = self.spec
        shape = (s.num_frames, 3, s.image_size, s.image_size)
        extra = self.extra_fields(self, i, None) if self.extra_fields is not None else {}
        return dict(pixel_values=torch.zeros((s.views, *shape) if s.views > 1 else shape), **self.fields(i), **extra)

    def bad_videos(self) -> list[dict]:
        """[{video, reason}] of every video found unreadable so far (dropped beforehand, or while loading)."""
        found = list(self.bad.skipped)
        for i in torch.nonzero(self.bad.flags[:len(self)]).flatten().tolist():
            found.append(dict(video=self.video_id(i), reason=self.bad.reasons.get(i) or self._reason(i)))
        return found

    def _reason(self, i: int) -> str:
        """Why item i failed in a worker process: load it again here and keep the message."""
        try:
            self._item(i)
        except VideoError as exc:
            return str(exc)
        return "failed while loading in a DataLoader worker (reads fine now)"


# ----------------------------------------------------------------------------------------------------------------
# synthetic .pt dataset
# ----------------------------------------------------------------------------------------------------------------
def read_annotations(root: str, split: str) -> list[dict]:
    path = os.path.join(root, split, "annotations.jsonl")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path} not found; generate the dataset with: python dummy_data.py --root {root}")
    with open(path) as fh:
        return [json.loads(line) for line in fh if line.strip()]


def read_dataset_meta(root: str) -> dict:
    """classes.json of a synthetic dataset: class names, reversal pairs, generator settings."""
    path = os.path.join(root, "classes.json")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path} not found; generate the dataset with: python dummy_data.py --root {root}")
    with open(path) as fh:
        return json.load(fh)


def read_class_names(root: str) -> list[str]:
    return read_dataset_meta(root)["class_names"]


def stratified_split(labels: Sequence[int], fraction: float, seed: int,
                     groups: Optional[Sequence[str]] = None) -> tuple[list[int], list[int]]:
    """Indices (kept, held_out): about ``fraction`` of every class held out, chosen by a seeded permutation.

    With ``groups`` (e.g. UCF101's gXX: clips cut from the same long video), whole groups are held out, so no
    group is on both sides: the held-out share of a class is then the nearest the group sizes allow.
    """
    rng = np.random.default_rng(seed)
    kept, held = [], []
    for label in sorted(set(labels)):
        idx = [i for i, y in enumerate(labels) if y == label]
        if groups is None:  # every video its own group
            names, size = idx, dict.fromkeys(idx, 1)
            member = {i: i for i in idx}
        else:
            member = {i: groups[i] for i in idx}
            size = Counter(member.values())
            names = sorted(size, key=natural_key)
        names = [names[j] for j in rng.permutation(len(names))]
        target, count, taken = int(round(fraction * len(idx))), 0, set()
        for name in names:
            if count >= target:
                break
            if count + size[name] - target > target - count:  # this group overshoots more than stopping short
                continue
            taken.add(name)
            count += size[name]
        held += [i for i in idx if member[i] in taken]
        kept += [i for i in idx if member[i] not in taken]
    return sorted(kept), sorted(held)


def label_budget(labels: Sequence[int], fraction: float, seed: int, groups: Optional[Sequence[str]] = None
                 ) -> list[int]:
    """``--label_fraction``: indices of about ``fraction`` of every class (stratified, seeded; whole groups with
    ``groups``), the labelled pool that training and validation are then drawn from. ``fraction >= 1``: all."""
    if fraction >= 1.0:
        return list(range(len(labels)))
    _, chosen = stratified_split(labels, fraction, seed + 1, groups)  # its own draw, apart from the val split
    missing = sorted(set(labels) - {labels[i] for i in chosen})
    if missing:
        raise UsageError(f"--label_fraction {fraction} leaves class(es) {missing} without a training clip "
                         f"({len(labels)} clips in the train split); raise --label_fraction")
    return chosen


def _clip_spec(num_frames: int, image_size: int, mean, std, **options) -> ClipSpec:
    return ClipSpec(num_frames, image_size, tuple(mean), tuple(std), **options)


def spec_options(spec: ClipSpec) -> dict:
    """The ClipSpec fields after (num_frames, image_size, mean, std), as keyword arguments for a dataset."""
    return {f.name: getattr(spec, f.name) for f in fields(spec)[4:]}


SYNTHETIC_CACHE_BYTES = 1 << 30  # a split of generated clips up to 1 GiB is kept in memory (per process)


class SyntheticVideoDataset(ClipDataset):
    """The .pt videos written by dummy_data.py. Items: pixel_values [T, C, S, S] float, labels, text fields.
    ``clip_options`` are further :class:`ClipSpec` fields (sampling, train, clips, crops, ...)."""

    def __init__(self, root: str, split: str, num_frames: int, image_size: int, mean, std,
                 indices: Optional[Sequence[int]] = None, **clip_options):
        self.root, self.split = root, split
        records = read_annotations(root, split)
        self.records = records if indices is None else [records[i] for i in indices]
        self.class_names = read_class_names(root)
        self.spec = _clip_spec(num_frames, image_size, mean, std, **clip_options)
        self.bad = BadVideoLog(len(self.records), "skip" if self.spec.train else "report")  # never marked: a broken
        # generated file raises (load_raw), it is not a video to skip
        self._cache: dict[int, torch.Tensor] = {}  # record index -> raw clip (load_raw)

    def __len__(self) -> int:
        return len(self.records)

    def load_raw(self, i: int) -> torch.Tensor:
        """uint8 [T, C, H, W], kept in memory after the first read while the split fits SYNTHETIC_CACHE_BYTES
        (reading a .pt file costs ~4 ms, about what a tiny model's step spends per clip: without the cache the
        loader, not the model, set the pace of an epoch). Callers index it (a copy) and never write to it."""
        cached = self._cache.get(i)
        if cached is not None:
            return cached
        path = os.path.join(self.root, self.split, self.records[i]["path"])
        video = torch.load(path, weights_only=True)  # uint8 [T, C, H, W]
        if not isinstance(video, torch.Tensor) or video.dim() != 4:
            raise ValueError(f"{path}: expected a [T, C, H, W] tensor, got {getattr(video, 'shape', type(video))}")
        if video.nbytes * len(self.records) <= SYNTHETIC_CACHE_BYTES:
            self._cache[i] = video
        return video

    def load_frames(self, i: int, pick: Callable[[int], list[int]]) -> torch.Tensor:
        video = self.load_raw(i)
        return video[pick(video.shape[0])]

    def fields(self, i: int) -> dict:
        rec = self.records[i]
        return dict(labels=torch.tensor(rec["label"]), video_id=f"{self.split}/{rec['path']}",
                    caption=rec.get("caption", ""), hint=rec.get("hint", ""))


# ----------------------------------------------------------------------------------------------------------------
# folders of frames (inference)
# ----------------------------------------------------------------------------------------------------------------
def _image_files(folder: str) -> list[str]:
    return sorted((f for f in os.listdir(folder) if f.lower().endswith(IMAGE_EXTENSIONS)), key=natural_key)


def find_frame_folders(video_dir: str) -> list[str]:
    """``video_dir`` is one folder of frames, or a folder of such folders (natural order)."""
    if not os.path.isdir(video_dir):
        raise FileNotFoundError(f"--video_dir {video_dir!r} is not a folder; pass a folder of frames or of "
                                f"frame folders (python create_dummy.py writes ./frames_see/)")
    if _image_files(video_dir):
        return [video_dir]
    folders = [os.path.join(video_dir, d) for d in sorted(os.listdir(video_dir), key=natural_key)
               if os.path.isdir(os.path.join(video_dir, d)) and _image_files(os.path.join(video_dir, d))]
    if not folders:
        raise FileNotFoundError(f"no frames found in --video_dir {video_dir!r}: expected images "
                                f"({', '.join(IMAGE_EXTENSIONS)}) in it or in its sub-folders")
    return folders


def read_frames(folder: str, indices: Optional[Sequence[int]] = None) -> torch.Tensor:
    """Images of one frame folder (natural order) -> uint8 [T, 3, H, W]; only ``indices`` are read if given
    (each image once, even when an index repeats). An unreadable image raises VideoError."""
    from PIL import Image, UnidentifiedImageError
    files = _image_files(folder)
    indices = list(range(len(files))) if indices is None else list(indices)
    frames = {}
    for i in sorted(set(indices)):
        try:
            with Image.open(os.path.join(folder, files[i])) as img:
                frames[i] = torch.from_numpy(np.asarray(img.convert("RGB")).copy()).permute(2, 0, 1)
        except (OSError, UnidentifiedImageError) as exc:
            raise VideoError(f"{folder}: cannot read frame {files[i]} ({exc})") from None
    sizes = {tuple(f.shape) for f in frames.values()}
    if len(sizes) > 1:
        raise VideoError(f"{folder}: frames differ in size {sorted(sizes)}; all frames of a video must match")
    return torch.stack([frames[i] for i in indices])


def read_frame_labels(video_dir: str, filename: str = FRAME_LABELS_FILE) -> dict[str, str]:
    """{video_name: value} from a JSON file beside the frame folders or videos ({} when absent)."""
    path = os.path.join(video_dir, filename) if os.path.isdir(video_dir) else ""
    if not os.path.isfile(path):
        return {}
    with open(path) as fh:
        return json.load(fh)


class SideFiles:
    """Labels, text hints and reference captions for inference inputs, from the JSON files beside them
    (``labels.json``, ``texts.json``, ``captions.json``, each {video_name: value}); ``text`` overrides the hints.
    A video file is looked up by its file name, then by its name without the extension."""

    def __init__(self, video_dir: str, names: Sequence[str], class_names: Optional[Sequence[str]],
                 text: Optional[str], known_labels: Optional[Sequence[str]] = None):
        folder = video_dir if os.path.isdir(video_dir) else os.path.dirname(video_dir)
        labels = read_frame_labels(folder)
        texts = read_frame_labels(folder, FRAME_TEXTS_FILE)
        captions = read_frame_labels(folder, FRAME_CAPTIONS_FILE)
        index = {c: i for i, c in enumerate(class_names or [])}
        known = list(known_labels) if known_labels is not None else [None] * len(names)
        self.labels = [index.get(k or self._get(labels, n, ""), -1) for n, k in zip(names, known)]
        self.texts = [text if text is not None else self._get(texts, n, None) for n in names]  # None = no text
        self.captions = [self._get(captions, n, "") for n in names]

    @staticmethod
    def _get(table: dict, name: str, default):
        return table.get(name, table.get(os.path.splitext(name)[0], default))


class FrameFolderDataset(ClipDataset):
    """One item per frame folder. Labels come from ``labels.json`` in ``video_dir`` when present (else -1), text
    hints from ``texts.json`` (or ``text`` for every video), reference captions from ``captions.json``.
    Unreadable frames are reported, not replaced (policy ``report``)."""

    def __init__(self, video_dir: str, num_frames: int, image_size: int, mean, std,
                 class_names: Optional[Sequence[str]] = None, text: Optional[str] = None, **clip_options):
        self.folders = find_frame_folders(video_dir)
        side = SideFiles(video_dir, [os.path.basename(f) for f in self.folders], class_names, text)
        self.labels, self.texts, self.captions = side.labels, side.texts, side.captions
        self.spec = _clip_spec(num_frames, image_size, mean, std, **clip_options)
        self.bad = BadVideoLog(len(self.folders), "report")

    def __len__(self) -> int:
        return len(self.folders)

    def load_frames(self, i: int, pick: Callable[[int], list[int]]) -> torch.Tensor:
        return read_frames(self.folders[i], pick(len(_image_files(self.folders[i]))))

    def fields(self, i: int) -> dict:
        return dict(labels=torch.tensor(self.labels[i]), video_id=os.path.basename(self.folders[i]),
                    caption=self.captions[i], hint=self.texts[i] or "")


# ----------------------------------------------------------------------------------------------------------------
# datasets by name (--dataset) and loaders
# ----------------------------------------------------------------------------------------------------------------
def collate(items: list[dict]) -> dict:
    """Stack tensors ([B, T, C, H, W] or [B, V, T, C, H, W], [B]); keep strings as lists. torch's
    ``default_collate`` does exactly that, and in a DataLoader worker it stacks straight into shared memory
    (saving a copy of every batch on its way to the main process)."""
    return default_collate(items)


@dataclass
class DataBundle:
    train: Optional[Dataset]
    val: Optional[Dataset]
    test: Optional[Dataset]
    class_names: list


def is_synthetic(cfg) -> bool:
    return cfg.dataset == "synthetic"


def clip_spec(cfg, mean, std, train: bool) -> ClipSpec:
    """The ClipSpec of a split from the settings. Training augmentation ``auto``: random resized crops and flips
    for real videos; neither for the synthetic dataset (its classes come in left/right mirror pairs, and its
    published numbers were trained without them)."""
    random_crop = cfg.train_crop == "random_resized" or (cfg.train_crop == "auto" and not is_synthetic(cfg))
    flip = cfg.horizontal_flip if cfg.horizontal_flip is not None else not is_synthetic(cfg)
    return _clip_spec(cfg.num_frames, cfg.image_size, mean, std, sampling=cfg.sampling,
                      frame_stride=cfg.frame_stride, train=train, random_crop=train and random_crop,
                      crop_scale_min=cfg.crop_scale_min, flip=train and flip)


def _synthetic_classes(cfg) -> list[str]:
    return read_class_names(cfg.data_root)


def _build_synthetic(cfg, mean, std, parts: Sequence[str]) -> DataBundle:
    """train / val (held out of train, stratified, seeded) / test of the synthetic dataset."""
    root, train_spec, eval_spec = cfg.data_root, clip_spec(cfg, mean, std, True), clip_spec(cfg, mean, std, False)

    def split(name: str, spec: ClipSpec, indices=None) -> SyntheticVideoDataset:
        return SyntheticVideoDataset(root, name, spec.num_frames, spec.image_size, mean, std, indices,
                                     **spec_options(spec))
    train = val = test = None
    if "train" in parts or "val" in parts:
        labels = [r["label"] for r in read_annotations(root, "train")]
        pool = label_budget(labels, getattr(cfg, "label_fraction", 1.0), cfg.seed)  # --label_fraction
        kept, held = stratified_split([labels[i] for i in pool], cfg.val_fraction, cfg.seed) \
            if cfg.val_fraction > 0 else (list(range(len(pool))), [])
        kept, held = [pool[i] for i in kept], [pool[i] for i in held]
        train = split("train", train_spec, kept) if "train" in parts else None
        val = split("train", eval_spec, held) if held and "val" in parts else None
    if "test" in parts:
        test = split("test", eval_spec)
    return DataBundle(train, val, test, read_class_names(root))


def _video_classes(cfg) -> list[str]:
    from video_datasets import video_class_names
    return video_class_names(cfg)


def _build_videos(cfg, mean, std, parts: Sequence[str]) -> DataBundle:
    from video_datasets import build_video_datasets
    return build_video_datasets(cfg, clip_spec(cfg, mean, std, True), clip_spec(cfg, mean, std, False), parts)


def _av_classes(cfg) -> list[str]:
    from av_data import dataset_class_names
    return dataset_class_names(cfg)


def _build_av(cfg, mean, std, parts: Sequence[str]) -> DataBundle:
    from av_data import build_av_datasets
    return build_av_datasets(cfg, mean, std, parts)
def _qa_classes(cfg) -> list[str]:
    from sft_data import class_names
    return class_names(cfg)


def _build_qa(cfg, mean, std, parts: Sequence[str]) -> DataBundle:
    from sft_data import build
    return build(cfg, mean, std, parts)


# name -> (class names from the settings, builder of the splits); the only place dataset names are looked up
DATASETS: dict[str, tuple[Callable, Callable]] = {
    "synthetic": (_synthetic_classes, _build_synthetic),
    "ucf101": (_video_classes, _build_videos),
    "videofolder": (_video_classes, _build_videos),
    "synthetic_av": (_av_classes, _build_av),  # issue 10: video files with sound (av_data.py)
    "qa_json": (_qa_classes, _build_qa),  # issue 9: video question-answer records (sft_data.py)
}


def dataset_class_names(cfg) -> list[str]:
    """The class names of the configured dataset, without building (or decoding) anything."""
    return DATASETS[cfg.dataset][0](cfg)


def build_datasets(cfg, mean, std, parts: Sequence[str] = ("train", "val", "test")) -> DataBundle:
    """The requested splits of the configured dataset (others are None); with audio among ``--modalities``, items
    also carry the clip's log-mel features (audio.attach_audio)."""
    bundle = DATASETS[cfg.dataset][1](cfg, mean, std, parts)
    if "audio" in (getattr(cfg, "modalities", None) or ""):
        from audio import attach_audio
        attach_audio([bundle.train, bundle.val, bundle.test], cfg)
    return bundle


def make_loader(dataset: Dataset, batch_size: int, shuffle: bool, num_workers: int, seed: int) -> DataLoader:
    generator = torch.Generator().manual_seed(seed)
    return DataLoader(dataset, batch_size=batch_size, shuffle=shuffle, num_workers=num_workers, collate_fn=collate,
                      generator=generator, persistent_workers=num_workers > 0)
