"""Augmentation (issue 22): Mixup / CutMix targets sum to 1 and the CutMix box is the same in every frame;
RandAugment is the same on every frame; both are off for the synthetic direction classes; a videofolder run trains
with them."""
import json
import os
import types

import numpy as np
import pytest
import torch

import main as train_main
import VLoader
from conftest import TINY_FLAGS, resolve
from video_fixtures import write_index_video
from videolab.core.errors import UsageError
from videolab.data.sampling import make_clip_spec
from videolab.data.transforms import rand_augment_clip, train_view
from videolab.models.classifier import classification_loss
from videolab.tasks.classification import ClassificationTask, ClipMixer


def mix_settings(**values):
    base = dict(mixup_alpha=0.0, cutmix_alpha=0.0, mixup_prob=1.0, mixup_switch_prob=0.5, dataset="videofolder",
                use_text=False, modalities=None, model_config=None)
    return types.SimpleNamespace(**{**base, **values})


def constant_clips(batch=4, frames=3, size=16):
    """[B, T, 3, S, S]: clip b is the constant b + 1 (so what came from the partner clip is visible)."""
    return torch.arange(1, batch + 1, dtype=torch.float32).view(batch, 1, 1, 1, 1).expand(
        batch, frames, 3, size, size).clone()


@pytest.mark.parametrize("seed", range(5))
def test_cutmix_box_is_the_same_in_every_frame_and_targets_sum_to_one(seed):
    np.random.seed(seed)
    clips, labels = constant_clips(), torch.tensor([0, 1, 2, 3])
    mixed = ClipMixer(mix_settings(cutmix_alpha=1.0), num_classes=5)(dict(pixel_values=clips.clone(), labels=labels))
    x, targets = mixed["pixel_values"], mixed["labels"]  # [B, T, C, H, W], [B, K]
    assert targets.shape == (4, 5) and torch.allclose(targets.sum(-1), torch.ones(4))
    for b in range(4):
        pasted = x[b] != clips[b]  # [T, C, H, W]: where the partner's pixels are
        assert torch.equal(pasted, pasted[:1].expand_as(pasted)), "the CutMix box differs between frames"
        partner = 3 - b  # timm mixes clip b with clip B - 1 - b
        assert torch.all(x[b][pasted] == partner + 1)
        area = pasted[0, 0].float().mean().item()  # share of the frame the box covers
        assert targets[b, labels[b]].item() == pytest.approx(1 - area, abs=1e-5)
        assert targets[b, labels[partner]].item() == pytest.approx(area, abs=1e-5)


def test_mixup_blends_every_frame_alike_and_odd_batches_get_one_hot_targets():
    np.random.seed(0)
    clips, labels = constant_clips(), torch.tensor([0, 1, 2, 3])
    mixed = ClipMixer(mix_settings(mixup_alpha=0.8), num_classes=4)(dict(pixel_values=clips.clone(), labels=labels))
    x, targets = mixed["pixel_values"], mixed["labels"]
    lam = targets[0, 0].item()
    assert torch.allclose(x[0], lam * clips[0] + (1 - lam) * clips[3])  # the same blend in every frame and pixel
    assert torch.allclose(targets.sum(-1), torch.ones(4))
    odd = ClipMixer(mix_settings(mixup_alpha=0.8), 4)(dict(pixel_values=constant_clips(3), labels=labels[:3]))
    assert torch.equal(odd["labels"], torch.eye(4)[:3]) and torch.equal(odd["pixel_values"], constant_clips(3))


def test_soft_target_loss_equals_timm_soft_target_cross_entropy_with_smoothing():
    from timm.data.mixup import mixup_target
    from timm.loss import SoftTargetCrossEntropy
    torch.manual_seed(0)
    logits, a, lam = torch.randn(6, 5), torch.tensor([0, 1, 2, 3, 4, 0]), 0.7
    ours = classification_loss(logits, mixup_target(a, 5, lam, smoothing=0.0), label_smoothing=0.1)
    timm_loss = SoftTargetCrossEntropy()(logits, mixup_target(a, 5, lam, smoothing=0.1))
    assert ours.item() == pytest.approx(timm_loss.item(), rel=1e-6)
    hard = classification_loss(logits, a, 0.1)
    assert classification_loss(logits, torch.eye(5)[a], 0.1).item() == pytest.approx(hard.item(), rel=1e-6)


@pytest.mark.parametrize("seed", range(8))
def test_rand_augment_is_the_same_on_every_frame(seed):
    torch.manual_seed(seed)
    frame = torch.randint(0, 256, (1, 3, 24, 24), dtype=torch.uint8)
    clip = frame.expand(4, -1, -1, -1).clone()  # four identical frames
    out = rand_augment_clip(clip, num_ops=3, magnitude=15)
    assert out.dtype == torch.uint8 and out.shape == clip.shape
    assert all(torch.equal(out[0], out[t]) for t in range(1, 4))
    spec = make_clip_spec(4, 16, (0.5,) * 3, (0.25,) * 3, train=True, random_crop=True, rand_augment=(2, 9))
    view = train_view(clip, spec)  # [T, 3, 16, 16]
    assert all(torch.equal(view[0], view[t]) for t in range(1, 4))


def test_rand_augment_changes_the_pixels():
    torch.manual_seed(0)
    clip = torch.randint(0, 256, (2, 3, 24, 24), dtype=torch.uint8)
    changed = sum(not torch.equal(rand_augment_clip(clip, 2, 20), clip) for _ in range(10))
    assert changed >= 5


def test_augmentations_are_off_for_the_synthetic_direction_classes(capsys):
    cfg, _, _ = resolve([*TINY_FLAGS, "--rand_augment", "2,9", "--mixup_alpha", "0.8"])
    assert VLoader.clip_spec(cfg, (0.5,) * 3, (0.25,) * 3, train=True).rand_augment is None
    assert ClassificationTask().batch_transform(cfg, 8) is None
    err = capsys.readouterr().err
    assert "--rand_augment 2,9 is off for --dataset synthetic" in err and "Mixup / CutMix are off" in err
    video, _, _ = resolve([*TINY_FLAGS, "--dataset", "videofolder", "--rand_augment", "2,9", "--cutmix_alpha", "1"])
    assert VLoader.clip_spec(video, (0.5,) * 3, (0.25,) * 3, train=True).rand_augment == (2, 9)
    assert VLoader.clip_spec(video, (0.5,) * 3, (0.25,) * 3, train=False).rand_augment is None
    assert isinstance(ClassificationTask().batch_transform(video, 3), ClipMixer)


@pytest.mark.parametrize("flags, message", [
    (["--rand_augment", "9"], "--rand_augment expects 'N,M'"),
    (["--rand_augment", "2,40"], "M a magnitude 0-30"),
    (["--mixup_alpha", "0.8", "--use_vlm", "True", "--use_text", "True"], "mix the frames only"),
    (["--mixup_alpha", "0.8", "--task", "pretrain"], "--mixup_alpha applies to classification"),
])
def test_bad_augmentation_settings_are_one_line_errors(flags, message):
    with pytest.raises(UsageError, match=message):
        resolve([*TINY_FLAGS, "--dataset", "videofolder", *flags])


@pytest.fixture(scope="module")
def video_folder(tmp_path_factory):
    root = tmp_path_factory.mktemp("aug") / "videos"
    for c, cls in enumerate(["jump", "run"]):
        for k in range(5):
            write_index_video(str(root / cls / f"clip{k}.mp4"), 12 + k + c, height=24, width=32)
    return str(root)


def test_a_videofolder_run_trains_with_mixup_cutmix_and_rand_augment(video_folder, tmp_path):
    report = train_main.main([*TINY_FLAGS, "--dataset", "videofolder", "--data_root", video_folder, "--epochs", "1",
                              "--batch_size", "4", "--val_fraction", "0", "--quiet", "--speed_repeats", "0",
                              "--summary_csv", "none", "--output_dir", str(tmp_path), "--run_name", "aug",
                              "--mixup_alpha", "0.8", "--cutmix_alpha", "1.0", "--rand_augment", "2,9"])
    assert report["settings"]["mixup_alpha"] == 0.8 and report["settings"]["rand_augment"] == "2,9"
    with open(os.path.join(tmp_path, "aug", "metrics.jsonl")) as fh:
        record = json.loads(fh.readline())
    assert np.isfinite(record["train_loss"]) and 0.0 <= record["train_top1"] <= 1.0
