"""Temporal sampling (pure functions), test views and training augmentation."""
import numpy as np
import pytest
import torch

from videolab.data.sampling import ClipSpec, clip_indices, dense_indices, segment_indices
from videolab.data.transforms import crop_offsets, eval_views, preprocess_video, train_view


# ----------------------------------------------------------------------------------------------------------------
# sampling (pure)
# ----------------------------------------------------------------------------------------------------------------
def test_segment_sampling_takes_one_frame_per_segment():
    n, t = 100, 8
    assert segment_indices(n, t, [0.5] * t) == [6, 18, 31, 43, 56, 68, 81, 93]  # centres = uniform
    for seed in range(20):
        offsets = torch.rand(t, generator=torch.Generator().manual_seed(seed)).tolist()
        for i, idx in enumerate(segment_indices(n, t, offsets)):
            assert i * n // t <= idx < (i + 1) * n // t + 1  # inside segment i
    assert segment_indices(3, 6, [0.5] * 6) == [0, 0, 1, 1, 2, 2]  # short video: repeats in order


def test_dense_sampling_strides_and_short_video_policy():
    assert dense_indices(100, 4, 5, 0.0) == [0, 5, 10, 15]
    assert dense_indices(100, 4, 5, 0.5) == [42, 47, 52, 57]  # centred: start floor(0.5 * 85)
    assert dense_indices(100, 4, 5, 0.999999) == [84, 89, 94, 99]  # last start that fits
    assert dense_indices(10, 4, 5, 0.5) == segment_indices(10, 4, [0.5] * 4) == [1, 3, 6, 8]  # too short: uniform
    assert dense_indices(2, 4, 3, 0.5) == [0, 0, 1, 1]
    with pytest.raises(ValueError, match="0 frames"):
        dense_indices(0, 4, 2, 0.5)


def test_clip_positions_training_random_evaluation_spread():
    spec = ClipSpec(4, 32, (0.5,) * 3, (0.5,) * 3, sampling="dense", frame_stride=2, clips=3)
    starts = [clip_indices(spec, 61, k)[0] for k in range(3)]
    assert starts == [9, 27, 45] and all(np.diff(clip_indices(spec, 61, 0)) == 2)  # evenly spread over 55 starts
    uniform = ClipSpec(4, 32, (0.5,) * 3, (0.5,) * 3, clips=2)
    assert [clip_indices(uniform, 40, k) for k in range(2)] == [[2, 12, 22, 32], [7, 17, 27, 37]]
    train = ClipSpec(4, 32, (0.5,) * 3, (0.5,) * 3, sampling="dense", frame_stride=3, train=True)
    torch.manual_seed(0)
    first = [clip_indices(train, 200, 0)[0] for _ in range(50)]
    torch.manual_seed(0)
    assert first == [clip_indices(train, 200, 0)[0] for _ in range(50)]  # seeded by torch's RNG
    assert len(set(first)) > 20 and min(first) >= 0 and max(first) <= 200 - 10
    segment = ClipSpec(4, 32, (0.5,) * 3, (0.5,) * 3, sampling="segment", train=True)
    assert len({tuple(clip_indices(segment, 40, 0)) for _ in range(30)}) > 10
    assert clip_indices(ClipSpec(4, 32, (0.5,) * 3, (0.5,) * 3, sampling="segment"), 40, 0) == [5, 15, 25, 35]


# ----------------------------------------------------------------------------------------------------------------
# spatial views and training augmentation
# ----------------------------------------------------------------------------------------------------------------
def column_video(t=2, h=32, w=48) -> torch.Tensor:
    """uint8 [T, 3, H, W] whose pixel value is its column (0..w-1): crops can be read back."""
    return torch.arange(w, dtype=torch.uint8).expand(t, 3, h, w).clone()


def test_three_crops_cover_the_long_side_and_the_middle_one_is_the_single_view():
    assert crop_offsets(32, 48, 32, 3) == [(0, 0), (0, 8), (0, 16)]
    assert crop_offsets(48, 32, 32, 3) == [(0, 0), (8, 0), (16, 0)]
    video = column_video()
    views = eval_views(video, 32, (0.0,) * 3, (1 / 255,) * 3, crops=3)  # std 1/255: values back in 0..255
    assert views.shape == (3, 2, 3, 32, 32)
    assert [int(v[0, 0, 0, 0]) for v in views] == [0, 8, 16]  # left edges of left / centre / right crops
    torch.testing.assert_close(views[1], preprocess_video(video, 32, (0.0,) * 3, (1 / 255,) * 3))


def test_training_view_crops_and_flips_only_when_asked():
    video = column_video(t=3)
    base = dict(num_frames=3, image_size=16, mean=(0.0,) * 3, std=(1 / 255,) * 3, train=True)
    torch.manual_seed(0)
    no_flip = [train_view(video, ClipSpec(**base, random_crop=True, crop_scale_min=0.3)) for _ in range(20)]
    assert all(v.shape == (3, 3, 16, 16) for v in no_flip)
    assert all(bool((v[:, 0, 0, 1:] >= v[:, 0, 0, :-1] - 1e-3).all()) for v in no_flip)  # columns still ascend
    assert all(torch.equal(v[0], v[2]) for v in no_flip)  # one crop for every frame of the clip
    assert len({round(float(v[0, 0, 0, 0]), 3) for v in no_flip}) > 5  # crops differ
    torch.manual_seed(0)
    flipped = [train_view(video, ClipSpec(**base, flip=True)) for _ in range(40)]
    descending = sum(bool(v[0, 0, 0, 0] > v[0, 0, 0, -1]) for v in flipped)
    assert 8 < descending < 32  # about half the clips are mirrored
