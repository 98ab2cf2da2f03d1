"""The synthetic motion dataset: videos whose class can be told only from motion, generated and read here.

Eight classes form four *time-reversal pairs*: move right / left, move down / up, rotate clockwise /
counter-clockwise, grow / shrink. Within a pair, one class is the other played backwards, and the start state is
drawn so that the *set* of frames has the same distribution for both classes: a model that pools single frames
without their order (frame averaging) cannot beat chance within a pair; only a temporal model can.

Distractors: random object colour, shape and size, random background colour with a soft gradient, a static
distractor blob, and pixel noise. Every video also gets a ground-truth caption and a text hint (the motion family,
never the direction) for the vision+language models.

Layout written by :func:`write_dataset`::

    <root>/classes.json                          class names, pairs, generator settings
    <root>/{train,test}/annotations.jsonl        one record per video: path, label, class_name, caption, hint
    <root>/{train,test}/class_<k>/video_<i>.pt   uint8 tensor [T, C, H, W]

Each video is drawn from its own generator seeded by (seed, split, class, index): the same seed gives the same
bytes, whatever order or subset is generated.

Two tasks share the videos:

* ``motion`` (default): the hint names the motion family, which the frames already show;
* ``playback``: half the clips (a seeded coin per video) are stored played backwards, and the label stays the
  motion that happened. A backwards clip of "move right" looks exactly like "move left" played forwards, so from
  the frames alone the direction is a coin toss; the hint ("the clip is played backwards" / "... forwards") is
  the only thing that says which way round the clip runs. Frames alone: about 50 % (right family, chance within
  the pair); text alone: chance (it does not name the family); frames + text: everything. This is the benchmark
  for text-conditioned classification (``--use_text``).
"""
from __future__ import annotations

import json
import os
import sys
from dataclasses import dataclass
from typing import Callable, Optional, Sequence

import numpy as np
import torch
from tqdm.auto import tqdm

from videolab.core.errors import UsageError
from videolab.core.files import atomic_file, write_json, write_text
from videolab.core.inputs import parse_json, quote, read_json, read_text
from videolab.data.clips import BadVideoLog, ClipDataset, DataBundle, DatasetSource, label_budget, stratified_split
from videolab.data.sampling import ClipSpec, make_clip_spec, spec_options
from videolab.data.video_io import VideoError

CLASS_NAMES = ("move_right", "move_left", "move_down", "move_up", "rotate_clockwise", "rotate_counterclockwise",
               "grow", "shrink")
# class -> index of its time-reversed twin
REVERSAL_PAIR = {0: 1, 1: 0, 2: 3, 3: 2, 4: 5, 5: 4, 6: 7, 7: 6}
CAPTION_VERB = {0: "moves to the right", 1: "moves to the left", 2: "moves down", 3: "moves up",
                4: "rotates clockwise", 5: "rotates counterclockwise", 6: "grows", 7: "shrinks"}
PLAYBACK_HINT = {False: "the clip is played forwards", True: "the clip is played backwards"}
TASKS = ("motion", "playback")
HINT_BY_FAMILY = {0: "the shape slides sideways", 1: "the shape slides vertically", 2: "the shape turns in place",
                  3: "the shape changes size"}
SHAPES = ("triangle", "ell", "key")
# Bright objects on dark backgrounds: colours vary freely, but the object is always the brighter thing, so a
# model can find it without first learning each video's colour pair.
COLOURS = {"red": (1.0, 0.3, 0.25), "green": (0.35, 1.0, 0.4), "blue": (0.45, 0.6, 1.0), "yellow": (1.0, 0.95, 0.3),
           "pink": (1.0, 0.5, 0.9), "cyan": (0.3, 0.95, 1.0), "white": (0.97, 0.97, 0.97),
           "orange": (1.0, 0.65, 0.2)}
BACKGROUNDS = {"black": (0.03, 0.03, 0.03), "gray": (0.2, 0.2, 0.2), "navy": (0.04, 0.06, 0.28),
               "olive": (0.22, 0.22, 0.05), "maroon": (0.28, 0.04, 0.06), "teal": (0.04, 0.22, 0.22)}
SPLIT_IDS = {"train": 0, "val": 1, "test": 2}


@dataclass(frozen=True)
class VideoSpec:
    """Everything that decides one video (drawn from the per-video generator)."""
    label: int
    shape: str
    colour: str
    background: str


def class_family(label: int) -> int:
    """0 horizontal, 1 vertical, 2 rotation, 3 scale."""
    return label // 2


def _shape_mask(shape: str, u: np.ndarray, v: np.ndarray, r: float) -> np.ndarray:
    """Boolean mask of a shape with no rotational symmetry, in object coordinates (u, v), radius r."""
    if shape == "triangle":  # points along +u
        return (u >= -0.5 * r) & (u <= r) & (np.abs(v) <= 0.6 * (r - u) * 0.75)
    if shape == "ell":  # long arm along +u, short arm along +v
        w = 0.28 * r
        return ((u >= -w) & (u <= r) & (np.abs(v) <= w)) | ((np.abs(u) <= w) & (v >= -w) & (v <= 0.65 * r))
    # key: a bar with a round head at +u
    return ((u >= -r) & (u <= 0.3 * r) & (np.abs(v) <= 0.2 * r)) | ((u - 0.6 * r) ** 2 + v ** 2 <= (0.4 * r) ** 2)


def _trajectory(label: int, size: int, num_frames: int, rng: np.random.Generator):
    """Per-frame (cx, cy, angle, radius), each shape [T]. Reversal pairs get mirrored start distributions."""
    s = np.linspace(0.0, 1.0, num_frames)
    family, backwards = class_family(label), label % 2 == 1
    radius = rng.uniform(0.18, 0.22) * size
    angle0 = rng.uniform(0, 2 * np.pi)
    margin = 0.02 * size + radius  # keeps the whole shape inside the frame: 2 * 0.24 + 0.5 travel < 1
    cx = np.full(num_frames, rng.uniform(margin, size - margin))
    cy = np.full(num_frames, rng.uniform(margin, size - margin))
    angle = np.full(num_frames, angle0)
    rad = np.full(num_frames, radius)
    if family in (0, 1):
        travel = rng.uniform(0.42, 0.5) * size
        start = rng.uniform(margin, size - margin - travel)
        path = start + travel * s  # forwards: increasing coordinate (right / down)
        path = path[::-1] if backwards else path
        if family == 0:
            cx = path
        else:
            cy = path
    elif family == 2:
        turn = rng.uniform(0.75, 1.0) * np.pi
        angle = angle0 + turn * s  # image y points down, so increasing angle is clockwise on screen
        angle = angle[::-1] if backwards else angle
    else:
        small, big = rng.uniform(0.1, 0.13) * size, rng.uniform(0.26, 0.32) * size
        rad = small + (big - small) * s
        rad = rad[::-1] if backwards else rad
        margin = 0.05 * size + big
        cx = np.full(num_frames, rng.uniform(margin, size - margin))
        cy = np.full(num_frames, rng.uniform(margin, size - margin))
    return cx, cy, angle, rad


def make_video(label: int, num_frames: int = 8, size: int = 32, seed: Sequence[int] | int = 0,
               noise: float = 0.02) -> tuple[torch.Tensor, VideoSpec]:
    """One synthetic clip.

    Returns:
        video: uint8 tensor [T, 3, H, W] (H = W = size).
        spec: what was drawn (shape, colours), for captions.
    """
    if not 0 <= label < len(CLASS_NAMES):
        raise ValueError(f"label must be in [0, {len(CLASS_NAMES)}), got {label}")
    if num_frames < 2 or size < 16:
        raise ValueError(f"need num_frames >= 2 and size >= 16 for visible motion, got {num_frames}, {size}")
    rng = np.random.default_rng(seed)
    spec = VideoSpec(label, SHAPES[rng.integers(len(SHAPES))], list(COLOURS)[rng.integers(len(COLOURS))],
                     list(BACKGROUNDS)[rng.integers(len(BACKGROUNDS))])
    colour = np.clip(np.array(COLOURS[spec.colour]) + rng.uniform(-0.08, 0.08, 3), 0, 1)
    background = np.clip(np.array(BACKGROUNDS[spec.background]) + rng.uniform(-0.04, 0.04, 3), 0, 1)
    ys, xs = np.mgrid[0:size, 0:size].astype(np.float32) + 0.5  # pixel centres, [H, W]
    gradient_dir = rng.normal(size=2)
    gradient = ((xs * gradient_dir[0] + ys * gradient_dir[1]) / size) * 0.04  # soft static background gradient
    frame_bg = background[:, None, None] + gradient[None]  # [3, H, W]
    # static distractor blob (present in 30 % of the videos)
    blob = None
    if rng.random() < 0.3:
        bx, by, br = rng.uniform(0, size, 2).tolist() + [rng.uniform(0.05, 0.1) * size]
        blob_colour = np.clip(background + rng.uniform(-0.3, 0.3, 3), 0, 1)
        blob = (((xs - bx) ** 2 + (ys - by) ** 2) <= br ** 2, blob_colour)
    cx, cy, angle, rad = _trajectory(label, size, num_frames, rng)
    frames = np.empty((num_frames, 3, size, size), dtype=np.float32)
    for t in range(num_frames):
        frame = frame_bg.copy()
        if blob is not None:
            frame[:, blob[0]] = blob[1][:, None]
        dx, dy = xs - cx[t], ys - cy[t]
        cos, sin = np.cos(angle[t]), np.sin(angle[t])
        u, v = dx * cos + dy * sin, -dx * sin + dy * cos  # rotate pixel offsets into object coordinates
        mask = _shape_mask(spec.shape, u, v, rad[t])
        frame[:, mask] = colour[:, None]
        frames[t] = frame
    frames += rng.normal(0.0, noise, frames.shape).astype(np.float32)
    video = torch.from_numpy(np.clip(frames * 255.0 + 0.5, 0, 255).astype(np.uint8))  # [T, 3, H, W]
    return video, spec


def caption_for(spec: VideoSpec) -> str:
    article = "an" if spec.colour[0] in "aeiou" else "a"
    return f"{article} {spec.colour} {spec.shape} {CAPTION_VERB[spec.label]} on a {spec.background} background"


def hint_for(spec: VideoSpec) -> str:
    return HINT_BY_FAMILY[class_family(spec.label)]


def _atomic_torch_save(tensor: torch.Tensor, path: str) -> None:
    with atomic_file(path) as tmp:
        torch.save(tensor, tmp)


def played_backwards(seed: int, split: str, label: int, index: int) -> bool:
    """The playback task's coin for one video (its own generator: the motion videos' bytes do not change)."""
    return bool(np.random.default_rng((seed, SPLIT_IDS[split], label, index, 1)).random() < 0.5)


def write_split(root: str, split: str, per_class: int, num_classes: int, num_frames: int, size: int, seed: int,
                quiet: bool = False, task: str = "motion") -> list[dict]:
    """Write one split's videos and annotations.jsonl; returns the annotation records."""
    records = []
    jobs = [(label, i) for label in range(num_classes) for i in range(per_class)]
    for label, i in tqdm(jobs, desc=f"synthetic {split}", disable=quiet or not sys.stderr.isatty(), leave=False):
        video, spec = make_video(label, num_frames, size, seed=(seed, SPLIT_IDS[split], label, i))
        caption, hint = caption_for(spec), hint_for(spec)
        if task == "playback":
            backwards = played_backwards(seed, split, label, i)
            video = video.flip(0) if backwards else video  # [T, C, H, W] in reverse time order
            caption, hint = f"{caption}, played {'backwards' if backwards else 'forwards'}", PLAYBACK_HINT[backwards]
        rel = f"class_{label}/video_{i}.pt"
        os.makedirs(os.path.join(root, split, f"class_{label}"), exist_ok=True)
        _atomic_torch_save(video, os.path.join(root, split, rel))
        records.append(dict(path=rel, label=label, class_name=CLASS_NAMES[label], caption=caption, hint=hint))
    write_text(os.path.join(root, split, "annotations.jsonl"), "".join(json.dumps(r) + "\n" for r in records))
    return records


def write_dataset(root: str = "synthetic_dataset", num_classes: int = 8, train_per_class: int = 400,
                  test_per_class: int = 50, num_frames: int = 8, size: int = 32, seed: int = 0,
                  quiet: bool = False, task: str = "motion") -> str:
    """Write the whole dataset (train + test) under ``root``. classes.json is written last: it marks completion."""
    if task not in TASKS:
        raise ValueError(f"task must be one of {', '.join(TASKS)}, got {task!r}")
    if not 2 <= num_classes <= len(CLASS_NAMES):
        raise ValueError(f"num_classes must be in [2, {len(CLASS_NAMES)}], got {num_classes}")
    if train_per_class < 1 or test_per_class < 1:
        raise ValueError(f"need at least one video per class, got train {train_per_class}, test {test_per_class}")
    os.makedirs(root, exist_ok=True)
    write_split(root, "train", train_per_class, num_classes, num_frames, size, seed, quiet, task)
    write_split(root, "test", test_per_class, num_classes, num_frames, size, seed, quiet, task)
    meta = dict(class_names=list(CLASS_NAMES[:num_classes]), reversal_pairs=REVERSAL_PAIR, task=task,
                num_frames=num_frames, size=size, seed=seed, train_per_class=train_per_class,
                test_per_class=test_per_class)
    write_json(os.path.join(root, "classes.json"), meta)
    return root


def dataset_is_complete(root: str) -> bool:
    return os.path.isfile(os.path.join(root, "classes.json"))


# ----------------------------------------------------------------------------------------------------------------
# reading the dataset
# ----------------------------------------------------------------------------------------------------------------
def read_annotations(root: str, split: str) -> list[dict]:
    path = os.path.join(root, split, "annotations.jsonl")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path} not found; generate the dataset with: python dummy_data.py --root {root}")
    fix = f"regenerate the dataset (delete {root} and run python dummy_data.py --root {root})"
    records = []
    for number, line in enumerate(read_text(path, "annotations file", fix).splitlines(), 1):
        if line.strip():
            record = parse_json(line, f"{path} line {number}")
            if not isinstance(record, dict) or not isinstance(record.get("path"), str) or \
                    not isinstance(record.get("label"), int) or isinstance(record.get("label"), bool):
                raise UsageError(f"{path} line {number}: expected a record with a path (string) and a label "
                                 f"(integer), got {quote(record, 60)}; {fix}")
            records.append(record)
    return records


def read_dataset_meta(root: str) -> dict:
    """classes.json of a synthetic dataset: class names, reversal pairs, generator settings."""
    path = os.path.join(root, "classes.json")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path} not found; generate the dataset with: python dummy_data.py --root {root}")
    meta = read_json(path, "dataset file", f"regenerate the dataset: python dummy_data.py --root {root}")
    names = meta.get("class_names")
    if not isinstance(names, list) or not names or not all(isinstance(n, str) for n in names):
        raise UsageError(f"{path}: class_names must be a non-empty list of strings, got {quote(names, 60)}; "
                         f"regenerate the dataset: python dummy_data.py --root {root}")
    return meta


def read_class_names(root: str) -> list[str]:
    return read_dataset_meta(root)["class_names"]


def load_clip_file(path: str) -> object:
    """A clip file's content (torch.load, weights_only: tensors only, never code); a missing, empty, truncated or
    unsafe file is a VideoError (the bad-video policy skips it in training and lists it in evaluation)."""
    import pickle
    if not os.path.isfile(path):
        raise VideoError(f"{path}: file not found")
    if os.path.getsize(path) == 0:
        raise VideoError(f"{path}: empty file")
    try:
        return torch.load(path, weights_only=True, map_location="cpu")
    except (pickle.UnpicklingError, RuntimeError, EOFError, ValueError, OSError) as exc:
        detail = str(exc).strip().splitlines()[0][:100] if str(exc).strip() else type(exc).__name__
        raise VideoError(f"{path}: not a readable clip file ({detail})") from None


def as_uint8_clip(video: object, path: str) -> torch.Tensor:
    """A loaded clip -> uint8 [T, 3, H, W]. Written clips are uint8; another integer dtype is taken when its values
    are pixels (0..255), a float clip when it is finite, in 0..1 (scaled by 255) or in 0..255; one channel is
    repeated to three. Anything else is a VideoError naming the file, what it holds and what is expected."""
    if not isinstance(video, torch.Tensor) or video.dim() != 4 or video.shape[1] not in (1, 3) or \
            min(video.shape) < 1:
        got = tuple(video.shape) if isinstance(video, torch.Tensor) else type(video).__name__
        raise VideoError(f"{path}: expected a uint8 tensor [T, C, H, W] with C = 1 or 3, got {got}")
    if video.dtype == torch.uint8:
        pass
    elif video.dtype == torch.bool or video.is_complex():
        raise VideoError(f"{path}: {video.dtype} is not a pixel type; expected uint8 [T, C, H, W]")
    elif video.is_floating_point():
        video = video.float()
        if not bool(video.isfinite().all()):
            raise VideoError(f"{path}: the float clip holds NaN/inf; expected uint8 pixels")
        low, high = float(video.min()), float(video.max())
        if low < 0 or high > 255:
            raise VideoError(f"{path}: float pixels in [{low:g}, {high:g}], expected [0, 1] or [0, 255]")
        video = (video * (255.0 if high <= 1.0 else 1.0)).round().to(torch.uint8)
    else:
        low, high = int(video.min()), int(video.max())
        if low < 0 or high > 255:
            raise VideoError(f"{path}: {video.dtype} pixels in [{low}, {high}], expected 0..255 (uint8)")
        video = video.to(torch.uint8)
    return video.expand(-1, 3, -1, -1).contiguous() if video.shape[1] == 1 else video


SYNTHETIC_CACHE_BYTES = 1 << 30  # a split of generated clips up to 1 GiB is kept in memory (per process)


class SyntheticVideoDataset(ClipDataset):
    """The .pt videos written by :func:`write_dataset`. Items: pixel_values [T, C, S, S] float, labels, text fields.
    ``clip_options`` are further :class:`ClipSpec` fields (sampling, train, clips, crops, ...)."""

    def __init__(self, root: str, split: str, num_frames: int, image_size: int, mean, std,
                 indices: Optional[Sequence[int]] = None, max_bad_fraction: float = 0.05, **clip_options):
        self.root, self.split = root, split
        records = read_annotations(root, split)
        self.records = records if indices is None else [records[i] for i in indices]
        self.class_names = read_class_names(root)
        self.spec = make_clip_spec(num_frames, image_size, mean, std, **clip_options)
        # a damaged clip file (load_raw: VideoError) is skipped and named in training, listed in evaluation
        self.bad = BadVideoLog(len(self.records), "skip" if self.spec.train else "report", max_bad_fraction,
                               what=f"{split} clips")
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
        video = as_uint8_clip(load_clip_file(path), path)  # uint8 [T, C, H, W]
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


def build_splits(cfg, train_spec: ClipSpec, eval_spec: ClipSpec, parts: Sequence[str]) -> DataBundle:
    """train / val (held out of train, stratified, seeded) / test of the synthetic dataset."""
    root = cfg.data_root

    def split(name: str, spec: ClipSpec, indices=None) -> SyntheticVideoDataset:
        return SyntheticVideoDataset(root, name, spec.num_frames, spec.image_size, spec.mean, spec.std, indices,
                                     max_bad_fraction=cfg.max_bad_video_fraction, **spec_options(spec))
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


class SyntheticSource(DatasetSource):
    """``--dataset synthetic``: the generated motion clips (registered in ``data/registry.py``)."""

    @staticmethod
    def ensure(cfg, quiet: bool = True) -> None:
        """Generate the dataset at cfg.data_root if it is not there (classes.json marks a finished one); refuse a
        folder that holds the other synthetic task."""
        if dataset_is_complete(cfg.data_root):
            task = read_dataset_meta(cfg.data_root).get("task", "motion")
            if task != cfg.synthetic_task:
                raise UsageError(f"{cfg.data_root!r} holds the synthetic '{task}' task, not '{cfg.synthetic_task}'; "
                                 f"pass --data_root with another folder (it is generated there), e.g. --data_root "
                                 f"synthetic_{cfg.synthetic_task}")
            return
        print(f"synthetic dataset not found at {cfg.data_root!r}: generating it (python dummy_data.py does the same)")
        write_dataset(cfg.data_root, num_frames=max(cfg.num_frames, 2), size=max(cfg.image_size, 16), seed=cfg.seed,
                      quiet=quiet, task=cfg.synthetic_task)

    build = staticmethod(build_splits)

    @staticmethod
    def class_names(cfg) -> list[str]:
        return read_class_names(cfg.data_root)

    @staticmethod
    def texts(cfg) -> list[str]:
        """The training captions (an offline captioner's tokenizer is trained on them)."""
        return [r["caption"] for r in read_annotations(cfg.data_root, "train")]

    @staticmethod
    def hints(cfg) -> list[str]:
        """Every text a model reading the hints may be given (an offline text encoder's tokenizer is trained on
        them)."""
        return list(HINT_BY_FAMILY.values()) + list(PLAYBACK_HINT.values())

    @staticmethod
    def reversal_pairs(cfg) -> Optional[dict]:
        """class -> its time-reversed twin (the report's family and direction accuracy)."""
        return read_dataset_meta(cfg.data_root).get("reversal_pairs")
