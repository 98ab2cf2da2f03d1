"""Synthetic data determinism and motion-only design, sampling, transforms, frame folders."""
import hashlib
import os

import numpy as np
import pytest
import torch

import dummy_data
from videolab.data.clips import natural_key, stratified_split
from videolab.data.frames import FrameFolderDataset, find_frame_folders
from videolab.data.sampling import sample_frame_indices
from videolab.data.synthetic import SyntheticVideoDataset
from videolab.data.transforms import preprocess_video


def digest(root):
    h = hashlib.sha256()
    for folder, _, files in sorted(os.walk(root)):
        for name in sorted(files):
            h.update(name.encode())
            with open(os.path.join(folder, name), "rb") as fh:
                h.update(fh.read())
    return h.hexdigest()


def test_same_seed_same_bytes_other_seed_other_bytes(tmp_path):
    kw = dict(num_classes=3, train_per_class=2, test_per_class=1, num_frames=4, size=32, quiet=True)
    dummy_data.write_dataset(str(tmp_path / "a"), seed=5, **kw)
    dummy_data.write_dataset(str(tmp_path / "b"), seed=5, **kw)
    dummy_data.write_dataset(str(tmp_path / "c"), seed=6, **kw)
    assert digest(tmp_path / "a") == digest(tmp_path / "b") != digest(tmp_path / "c")


def test_layout_and_annotations(tiny_dataset):
    video = torch.load(os.path.join(tiny_dataset, "train", "class_2", "video_0.pt"), weights_only=True)
    assert video.shape == (4, 3, 32, 32) and video.dtype == torch.uint8
    ds = SyntheticVideoDataset(tiny_dataset, "train", 4, 32, (0.5,) * 3, (0.25,) * 3)
    item = ds[0]
    assert item["pixel_values"].shape == (4, 3, 32, 32) and item["labels"].item() == 0
    assert item["caption"].split()[0] in ("a", "an") and "right" in item["caption"] and item["hint"]
    assert len(ds) == 4 * 6 and ds.class_names == list(dummy_data.CLASS_NAMES[:4])


def test_synthetic_clips_are_read_once_and_kept_unchanged(tiny_dataset, monkeypatch):
    """load_raw keeps a split that fits the budget in memory: the second epoch reads no file, and what a caller
    does with an item never reaches the kept clip."""
    ds = SyntheticVideoDataset(tiny_dataset, "train", 4, 32, (0.5,) * 3, (0.25,) * 3, train=True)
    first = ds[3]["pixel_values"].clone()
    reads = []
    real_load = torch.load
    monkeypatch.setattr(torch, "load", lambda *a, **k: reads.append(a) or real_load(*a, **k))
    ds[3]["pixel_values"].mul_(0)  # a caller scribbling on its item
    raw = ds.load_raw(3)
    assert not reads and raw.abs().sum() > 0
    assert torch.equal(ds.load_raw(3), real_load(os.path.join(tiny_dataset, "train", ds.records[3]["path"]),
                                                 weights_only=True))
    monkeypatch.setattr("videolab.data.synthetic.SYNTHETIC_CACHE_BYTES", 0)  # a split over the budget is read from disk each time
    fresh = SyntheticVideoDataset(tiny_dataset, "train", 4, 32, (0.5,) * 3, (0.25,) * 3)
    fresh.load_raw(0), fresh.load_raw(0)
    assert len(reads) == 2 and not fresh._cache and first.shape == (4, 3, 32, 32)


def test_reversal_pairs_have_the_same_frame_statistics():
    """Within a time-reversal pair the per-frame statistics match: mean object position over many clips."""
    def centroid_x(label):
        xs = []
        for i in range(300):
            video, _ = dummy_data.make_video(label, 8, 32, seed=(9, label, i), noise=0.0)
            bright = video.float().mean(1) > 150  # [T, H, W] object pixels (bright on dark)
            cols = torch.arange(32).float()
            xs += [(bright[t].float().sum(0) * cols).sum().item() / max(bright[t].sum().item(), 1) for t in range(8)]
        return np.mean(xs), np.std(xs)
    (m_right, s_right), (m_left, s_left) = centroid_x(0), centroid_x(1)
    assert abs(m_right - m_left) < 1.2 and abs(s_right - s_left) < 1.2  # ~2 standard errors
    video_right, _ = dummy_data.make_video(0, 8, 32, seed=1, noise=0.0)
    bright = video_right.float().mean(1) > 150
    first, last = [(bright[t].float().sum(0) * torch.arange(32)).sum() / bright[t].sum() for t in (0, 7)]
    assert last - first > 8  # it really moves right


@pytest.mark.parametrize("n,t,expected", [(8, 8, list(range(8))), (16, 4, [2, 6, 10, 14]), (3, 6, [0, 0, 1, 1, 2, 2]),
                                          (1, 3, [0, 0, 0])])
def test_uniform_sampling(n, t, expected):
    assert sample_frame_indices(n, t) == expected


def test_sampling_rejects_empty_video():
    with pytest.raises(ValueError, match="0 frames"):
        sample_frame_indices(0, 4)


def test_preprocess_resizes_crops_and_normalises():
    video = torch.full((2, 3, 40, 60), 255, dtype=torch.uint8)
    out = preprocess_video(video, 32, (0.5, 0.5, 0.5), (0.25, 0.25, 0.25))
    assert out.shape == (2, 3, 32, 32) and out.dtype == torch.float32
    torch.testing.assert_close(out, torch.full_like(out, 2.0))
    with pytest.raises(ValueError, match=r"\[T, C, H, W\]"):
        preprocess_video(torch.zeros(3, 32, 32), 32, (0.5,) * 3, (0.25,) * 3)


def test_stratified_split_is_seeded_and_balanced():
    labels = [i % 4 for i in range(40)]
    kept, held = stratified_split(labels, 0.3, seed=3)
    assert (kept, held) == stratified_split(labels, 0.3, seed=3)
    assert sorted(kept + held) == list(range(40)) and [labels[i] for i in held].count(2) == 3


def test_natural_sort():
    assert sorted(["frame_10.png", "frame_9.png", "frame_100.png"], key=natural_key) == \
        ["frame_9.png", "frame_10.png", "frame_100.png"]


def test_frame_folders_any_format_natural_order(tmp_path):
    from PIL import Image
    clip = tmp_path / "clip"
    clip.mkdir()
    for i, ext in zip(range(11), ["png", "jpg", "bmp"] * 4):
        Image.new("RGB", (32, 32), (i * 20, 0, 0)).save(clip / f"f_{i}.{ext}")
    assert find_frame_folders(str(clip)) == [str(clip)]  # one folder of frames
    assert find_frame_folders(str(tmp_path)) == [str(clip)]  # a folder of frame folders
    ds = FrameFolderDataset(str(tmp_path), 11, 32, (0.0,) * 3, (1.0,) * 3)
    reds = ds[0]["pixel_values"][:, 0, 16, 16]
    assert torch.all(reds[1:] > reds[:-1])  # natural order kept (f_10 after f_9)
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="no frames found"):
        find_frame_folders(str(tmp_path / "empty"))
    with pytest.raises(FileNotFoundError, match="is not a folder"):
        find_frame_folders(str(tmp_path / "missing"))
