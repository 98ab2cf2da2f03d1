"""The dataset base every dataset shares, the bad-video policy, splits and loaders.

Datasets only find and read frames (synthetic ``.pt`` files, frame folders, video files); the shared base
:class:`ClipDataset` turns what they read into model input with ``sampling`` and ``transforms``.

Bad videos (:class:`BadVideoLog`): a video that cannot be read is marked in a shared-memory flag tensor, so the
main process sees what DataLoader workers found. Policy ``skip`` (training): warn naming it, use the next good
video in its place, and stop with :class:`TooManyBadVideos` once more than ``--max_bad_video_fraction`` of the
videos failed. Policy ``report`` (evaluation, inference): the item becomes a placeholder the caller leaves out of
every metric and lists as bad; nothing is replaced.
"""
from __future__ import annotations

import copy
import re
import sys
from collections import Counter
from dataclasses import dataclass, replace
from typing import Callable, Optional, Sequence

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, default_collate

from videolab.core.errors import UsageError
from videolab.data.sampling import ClipSpec, clip_indices
from videolab.data.transforms import eval_views, train_view
from videolab.data.video_io import VideoError


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
# splits
# ----------------------------------------------------------------------------------------------------------------
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


def make_loader(dataset: Dataset, batch_size: int, shuffle: bool, num_workers: int, seed: int) -> DataLoader:
    generator = torch.Generator().manual_seed(seed)
    return DataLoader(dataset, batch_size=batch_size, shuffle=shuffle, num_workers=num_workers, collate_fn=collate,
                      generator=generator, persistent_workers=num_workers > 0)


class DatasetSource:
    """What ``data/registry.py`` registers for a ``--dataset`` name. ``cfg`` is the run's settings. Subclasses
    implement ``class_names`` and ``build``; the rest has defaults for data that is never generated and has no
    texts."""

    @staticmethod
    def ensure(cfg, quiet: bool = True) -> None:
        """Make the data exist (a synthetic dataset is generated if missing); real datasets do nothing."""

    @staticmethod
    def class_names(cfg) -> list[str]:
        """The class names, without decoding anything."""
        raise NotImplementedError

    @staticmethod
    def build(cfg, train_spec: ClipSpec, eval_spec: ClipSpec, parts: Sequence[str]) -> "DataBundle":
        """The requested splits (``train``, ``val``, ``test``; others None), seen through the training and the
        evaluation ClipSpec (frames, size, normalisation, augmentation: ``VLoader.clip_spec``)."""
        raise NotImplementedError

    @staticmethod
    def texts(cfg) -> list[str]:
        """The texts an offline tokenizer of a captioner is trained on (the training captions or answers)."""
        return []
