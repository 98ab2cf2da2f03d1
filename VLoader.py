"""Datasets, frame sampling and transforms.

Kept apart, as in PyTorchVideo / MMAction2:
* sampling (:func:`sample_frame_indices`) is a pure function of (frames available, frames wanted);
* transforms (:func:`preprocess_video`) are pure tensor functions: uint8 [T, C, H, W] -> normalised float;
* datasets only find files, read them, and call the two.

Frame-count policy: a clip is always resampled to exactly ``num_frames`` frames by uniform sampling at segment
centres, ``index_i = floor((i + 0.5) * n / T)``. A longer video keeps T evenly spaced frames; a shorter one repeats
frames in order (each about T / n times, nearest-neighbour in time), never padding with black frames.
"""
from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from typing import Optional, Sequence

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset
from torchvision.transforms.v2 import functional as TF

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".webp", ".tif", ".tiff", ".gif")
FRAME_LABELS_FILE = "labels.json"  # optional {video_name: class_name} beside exported frame folders
FRAME_TEXTS_FILE = "texts.json"  # optional {video_name: text hint}
FRAME_CAPTIONS_FILE = "captions.json"  # optional {video_name: reference caption}


# ----------------------------------------------------------------------------------------------------------------
# sampling and transforms (pure)
# ----------------------------------------------------------------------------------------------------------------
def sample_frame_indices(num_available: int, num_frames: int) -> list[int]:
    """Uniform sampling at segment centres. Returns ``num_frames`` indices into [0, num_available)."""
    if num_available < 1:
        raise ValueError("cannot sample frames from a video with 0 frames")
    if num_frames < 1:
        raise ValueError(f"num_frames must be >= 1, got {num_frames}")
    return [min(int((i + 0.5) * num_available / num_frames), num_available - 1) for i in range(num_frames)]


def preprocess_video(video: torch.Tensor, image_size: int, mean: Sequence[float], std: Sequence[float]
                     ) -> torch.Tensor:
    """uint8 (or float in [0, 1]) [T, C, H, W] -> float32 [T, C, S, S]: resize short side, centre crop, normalise.

    No flips or time reversal: on motion classes they would change the label.
    """
    if video.dim() != 4 or video.shape[1] not in (1, 3):
        raise ValueError(f"expected a video [T, C, H, W] with C = 1 or 3, got shape {tuple(video.shape)}")
    video = video.float() / 255.0 if video.dtype == torch.uint8 else video.float()
    if video.shape[1] == 1:
        video = video.expand(-1, 3, -1, -1)
    if min(video.shape[-2:]) != image_size:
        video = TF.resize(video, [image_size], antialias=True)
    if tuple(video.shape[-2:]) != (image_size, image_size):
        video = TF.center_crop(video, [image_size, image_size])
    return TF.normalize(video, list(mean), list(std))


def natural_key(text: str) -> list:
    """'frame_10' after 'frame_9'."""
    return [int(part) if part.isdigit() else part.lower() for part in re.split(r"(\d+)", text)]


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


def stratified_split(labels: Sequence[int], fraction: float, seed: int) -> tuple[list[int], list[int]]:
    """Indices (kept, held_out): ``fraction`` of every class held out, chosen by a seeded permutation."""
    rng = np.random.default_rng(seed)
    kept, held = [], []
    for label in sorted(set(labels)):
        idx = [i for i, y in enumerate(labels) if y == label]
        idx = [idx[j] for j in rng.permutation(len(idx))]
        n_held = int(round(fraction * len(idx)))
        held += idx[:n_held]
        kept += idx[n_held:]
    return sorted(kept), sorted(held)


class SyntheticVideoDataset(Dataset):
    """The .pt videos written by dummy_data.py. Items: pixel_values [T, C, S, S] float, labels, text fields."""

    def __init__(self, root: str, split: str, num_frames: int, image_size: int, mean, std,
                 indices: Optional[Sequence[int]] = None):
        self.root, self.split = root, split
        records = read_annotations(root, split)
        self.records = records if indices is None else [records[i] for i in indices]
        self.class_names = read_class_names(root)
        self.num_frames, self.image_size, self.mean, self.std = num_frames, image_size, mean, std

    def __len__(self) -> int:
        return len(self.records)

    def load_raw(self, i: int) -> torch.Tensor:
        path = os.path.join(self.root, self.split, self.records[i]["path"])
        video = torch.load(path, weights_only=True)  # uint8 [T, C, H, W]
        if not isinstance(video, torch.Tensor) or video.dim() != 4:
            raise ValueError(f"{path}: expected a [T, C, H, W] tensor, got {getattr(video, 'shape', type(video))}")
        return video

    def __getitem__(self, i: int) -> dict:
        video = self.load_raw(i)
        video = video[sample_frame_indices(video.shape[0], self.num_frames)]
        rec = self.records[i]
        return dict(pixel_values=preprocess_video(video, self.image_size, self.mean, self.std),
                    labels=torch.tensor(rec["label"]), video_id=f"{self.split}/{rec['path']}",
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
    """Images of one frame folder (natural order) -> uint8 [T, 3, H, W]; only ``indices`` are read if given."""
    from PIL import Image
    files = _image_files(folder)
    chosen = files if indices is None else [files[i] for i in indices]
    frames = []
    for name in chosen:
        with Image.open(os.path.join(folder, name)) as img:
            frames.append(torch.from_numpy(np.asarray(img.convert("RGB")).copy()).permute(2, 0, 1))
    sizes = {tuple(f.shape) for f in frames}
    if len(sizes) > 1:
        raise ValueError(f"{folder}: frames differ in size {sorted(sizes)}; all frames of a video must match")
    return torch.stack(frames)


def read_frame_labels(video_dir: str, filename: str = FRAME_LABELS_FILE) -> dict[str, str]:
    """{video_name: value} from a JSON file beside the frame folders ({} when absent)."""
    path = os.path.join(video_dir, filename)
    if not os.path.isfile(path):
        return {}
    with open(path) as fh:
        return json.load(fh)


class FrameFolderDataset(Dataset):
    """One item per frame folder. Labels come from ``labels.json`` in ``video_dir`` when present (else -1), text
    hints from ``texts.json`` (or ``text`` for every video), reference captions from ``captions.json``."""

    def __init__(self, video_dir: str, num_frames: int, image_size: int, mean, std,
                 class_names: Optional[Sequence[str]] = None, text: Optional[str] = None):
        self.folders = find_frame_folders(video_dir)
        names = [os.path.basename(f) for f in self.folders]
        labels = read_frame_labels(video_dir)
        index = {c: i for i, c in enumerate(class_names or [])}
        self.labels = [index.get(labels.get(name, ""), -1) for name in names]
        texts = read_frame_labels(video_dir, FRAME_TEXTS_FILE)
        captions = read_frame_labels(video_dir, FRAME_CAPTIONS_FILE)
        self.texts = [text if text is not None else texts.get(name) for name in names]  # None = no text
        self.captions = [captions.get(name, "") for name in names]
        self.num_frames, self.image_size, self.mean, self.std = num_frames, image_size, mean, std

    def __len__(self) -> int:
        return len(self.folders)

    def __getitem__(self, i: int) -> dict:
        n = len(_image_files(self.folders[i]))
        video = read_frames(self.folders[i], sample_frame_indices(n, self.num_frames))
        return dict(pixel_values=preprocess_video(video, self.image_size, self.mean, self.std),
                    labels=torch.tensor(self.labels[i]), video_id=os.path.basename(self.folders[i]),
                    caption=self.captions[i], hint=self.texts[i] or "")


# ----------------------------------------------------------------------------------------------------------------
# loaders
# ----------------------------------------------------------------------------------------------------------------
def collate(items: list[dict]) -> dict:
    """Stack tensors ([B, T, C, H, W], [B]); keep strings as lists."""
    return {k: torch.stack([it[k] for it in items]) if isinstance(items[0][k], torch.Tensor)
            else [it[k] for it in items] for k in items[0]}


@dataclass
class DataBundle:
    train: Dataset
    val: Optional[Dataset]
    test: Dataset
    class_names: list


def build_datasets(cfg, mean, std) -> DataBundle:
    """train / val (held out of train, stratified, seeded) / test for the configured dataset."""
    root = cfg.data_root
    train_full = SyntheticVideoDataset(root, "train", cfg.num_frames, cfg.image_size, mean, std)
    labels = [r["label"] for r in train_full.records]
    val = None
    if cfg.val_fraction > 0:
        kept, held = stratified_split(labels, cfg.val_fraction, cfg.seed)
        train = SyntheticVideoDataset(root, "train", cfg.num_frames, cfg.image_size, mean, std, kept)
        val = SyntheticVideoDataset(root, "train", cfg.num_frames, cfg.image_size, mean, std, held)
    else:
        train = train_full
    test = SyntheticVideoDataset(root, "test", cfg.num_frames, cfg.image_size, mean, std)
    return DataBundle(train, val, test, train_full.class_names)


def make_loader(dataset: Dataset, batch_size: int, shuffle: bool, num_workers: int, seed: int) -> DataLoader:
    generator = torch.Generator().manual_seed(seed)
    return DataLoader(dataset, batch_size=batch_size, shuffle=shuffle, num_workers=num_workers, collate_fn=collate,
                      generator=generator, persistent_workers=num_workers > 0)
