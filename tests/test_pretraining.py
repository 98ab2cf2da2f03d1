"""Self-supervised pretraining (models/pretrainer.py, tasks/pretraining.py): masks exact and seeded, the reconstruction loss on hidden tokens
only, the loss falling on a tiny run, the contrastive loss, retrieval recall, label budgets, and the exported
backbone loading back through --pretrained (LoRA too)."""
import json
import math
import os

import pytest
import torch
from transformers import VideoMAEConfig, VideoMAEForPreTraining

import main as train_main
from build_model import build_model
from conftest import TINY_FLAGS
from videolab.models.pretrainer import (VideoPretrainer, clip_loss, frame_differences, frame_mask, make_mask,
                                        num_masked, patchify, random_mask, reconstruction_targets, retrieval_recall,
                                        to_unit_range, token_grid, tube_mask, unpatchify)
from videolab.cli import run_cli
from videolab.core.errors import UsageError
from videolab.core.settings import Settings
from VLoader import build_datasets
from videolab.data.clips import label_budget

MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)  # what VideoMAEForPreTraining un-normalises with


def tiny_mae(norm_pix_loss: bool = True) -> VideoMAEForPreTraining:
    """Hidden 32, 2 layers, intermediate 37, 4 frames of 32 px, patch 8, tubelet 2: a 2 x 4 x 4 token grid."""
    torch.manual_seed(0)
    config = VideoMAEConfig(image_size=32, patch_size=8, num_frames=4, tubelet_size=2, hidden_size=32,
                            num_hidden_layers=2, num_attention_heads=2, intermediate_size=37,
                            decoder_hidden_size=24, decoder_num_hidden_layers=1, decoder_num_attention_heads=2,
                            decoder_intermediate_size=29, norm_pix_loss=norm_pix_loss)
    return VideoMAEForPreTraining(config)


@pytest.mark.parametrize("num_tokens,ratio", [(16, 0.9), (64, 0.75), (37, 0.5), (10, 0.11)])
def test_random_mask_hides_exactly_round_ratio_n_and_is_seeded(num_tokens, ratio):
    mask = random_mask(50, num_tokens, ratio, torch.Generator().manual_seed(3))
    assert mask.dtype == torch.bool and mask.shape == (50, num_tokens)
    assert (mask.sum(1) == round(ratio * num_tokens)).all()
    assert torch.equal(mask, random_mask(50, num_tokens, ratio, torch.Generator().manual_seed(3)))
    assert not torch.equal(mask, random_mask(50, num_tokens, ratio, torch.Generator().manual_seed(4)))
    assert len({tuple(row.tolist()) for row in mask}) > 1  # rows differ: positions are drawn per clip


def test_tube_mask_hides_the_same_patches_in_every_time_slot():
    grid = (4, 3, 5)  # T' x H' x W', odd sizes so a wrong reshape shows
    mask = tube_mask(20, grid, 0.6, torch.Generator().manual_seed(0))
    assert mask.shape == (20, 60)
    slots = mask.view(20, 4, 15)  # VideoMAE's token order: time slot, then row and column
    assert (slots == slots[:, :1]).all()
    assert (slots.sum(2) == num_masked(15, 0.6)).all() and (mask.sum(1) == 4 * 9).all()
    assert make_mask("random", 20, grid, 0.6).view(20, 4, 15).ne(slots[:, :1]).any()  # random is not tubes


def test_frame_mask_hides_exactly_round_ratio_time_slots_whole():
    grid = (4, 3, 5)
    mask = frame_mask(30, grid, 0.75, torch.Generator().manual_seed(0))
    slots = mask.view(30, 4, 15)
    assert (slots.all(2) | ~slots.any(2)).all()  # every slot entirely hidden or entirely visible
    assert (slots.all(2).sum(1) == 3).all() and (mask.sum(1) == 3 * 15).all()
    assert len({tuple(row.tolist()) for row in slots.all(2)}) > 1  # which slots: drawn per clip
    assert torch.equal(mask, make_mask("frame", 30, grid, 0.75, torch.Generator().manual_seed(0)))


def test_a_ratio_that_hides_nothing_or_everything_is_refused():
    with pytest.raises(ValueError, match="hides 16 of 16 tokens; at least one must be hidden"):
        num_masked(16, 0.99)
    with pytest.raises(ValueError, match="hides 0 of 16 tokens; at least one must be hidden"):
        num_masked(16, 0.01)
    for n in (4, 15, 16):  # both ends of the range the error suggests are valid
        assert num_masked(n, 1 / n) == 1 and num_masked(n, 1 - 1 / n) == n - 1


def test_patchify_is_the_videomae_token_layout():
    frames = torch.rand(2, 4, 3, 32, 40)
    patches = patchify(frames, tubelet=2, patch=8)  # [B, 2 * 4 * 5, 2 * 8 * 8 * 3]
    assert patches.shape == (2, 40, 384)
    torch.testing.assert_close(unpatchify(patches, (2, 4, 5), 2, 8), frames, rtol=0, atol=0)
    token = 1 * 20 + 2 * 5 + 3  # time slot 1, row 2, column 3: frames 2-3, pixels [16:24, 24:32]
    block = frames[1, 2:4, :, 16:24, 24:32].permute(0, 2, 3, 1)  # (dt, dy, dx, C)
    torch.testing.assert_close(patches[1, token], block.reshape(-1), rtol=0, atol=0)


@pytest.mark.parametrize("norm_pix_loss", [True, False])
def test_reconstruction_loss_is_the_mse_on_hidden_tokens_only(norm_pix_loss):
    model = tiny_mae(norm_pix_loss).eval()
    pixels = torch.randn(3, 4, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    mask = tube_mask(3, token_grid(model.config), 0.75, torch.Generator().manual_seed(2))
    with torch.no_grad():
        out = model(pixel_values=pixels, bool_masked_pos=mask)
    hidden = int(mask[0].sum())
    assert out.logits.shape == (3, hidden, 2 * 8 * 8 * 3)  # predictions for the hidden tokens only
    targets = reconstruction_targets(to_unit_range(pixels, MEAN, STD), 2, 8, norm_pix_loss)  # [B, N, P*C]
    on_hidden = torch.nn.functional.mse_loss(out.logits, targets[mask].view(3, hidden, -1))
    torch.testing.assert_close(out.loss, on_hidden)
    # the visible tokens' pixels are not targets: they could be anything without changing what is compared
    padded = torch.zeros_like(targets)
    padded[mask] = out.logits.reshape(-1, targets.shape[-1])
    on_all = torch.nn.functional.mse_loss(padded, targets)
    assert not torch.allclose(out.loss, on_all)


def test_frame_difference_target_is_zero_where_nothing_moves_and_scored_on_hidden_tokens_only():
    still = torch.rand(2, 1, 3, 32, 32).expand(2, 4, 3, 32, 32)
    assert frame_differences(still).abs().max() == 0
    moving = torch.rand(2, 4, 3, 32, 32)
    torch.testing.assert_close(frame_differences(moving)[:, 1], moving[:, 2] - moving[:, 1])
    cfg = Settings(model_size="tiny", num_frames=4, image_size=32, mvm_target="frame_difference",
                   norm_pix_loss=False)
    mae = tiny_mae(norm_pix_loss=False)
    model = VideoPretrainer(cfg, mae.videomae, mae, mean=MEAN, std=STD).eval()
    pixels = torch.randn(3, 4, 3, 32, 32, generator=torch.Generator().manual_seed(5))
    mask = random_mask(3, 32, 0.5, torch.Generator().manual_seed(6))
    with torch.no_grad():
        out = model(pixel_values=pixels, bool_masked_pos=mask)
    targets = patchify(frame_differences(to_unit_range(pixels, MEAN, STD)), 2, 8)  # [B, N, P*C]
    torch.testing.assert_close(out.loss, torch.nn.functional.mse_loss(out.logits, targets[mask].view(3, 16, -1)))


def test_masked_video_loss_falls_on_a_tiny_run(tiny_dataset):
    cfg = Settings(model_size="tiny", num_frames=4, image_size=32, mask_ratio=0.75)
    mae = tiny_mae(norm_pix_loss=False)  # raw pixels: per-patch normalised noise would hide the fall in 40 steps
    model = VideoPretrainer(cfg, mae.videomae, mae, mean=MEAN, std=STD)
    clips = torch.stack([build_datasets(Settings(data_root=tiny_dataset, num_frames=4, image_size=32,
                                                      val_fraction=0.0), MEAN, STD, ("train",)).train[i]
                         ["pixel_values"] for i in range(8)])  # [8, 4, 3, 32, 32]
    fixed = model.eval().draw_mask(8)

    def loss() -> float:
        with torch.no_grad():
            return model.eval()(pixel_values=clips, bool_masked_pos=fixed).loss.item()
    before = loss()
    optimizer = torch.optim.AdamW(model.parameters(), lr=2e-3)
    torch.manual_seed(0)
    for _ in range(40):
        out = model.train()(pixel_values=clips)  # a fresh random mask every step
        optimizer.zero_grad()
        out.loss.backward()
        optimizer.step()
    assert loss() < 0.8 * before


def test_contrastive_loss_is_symmetric_and_lowest_for_matched_pairs():
    g = torch.Generator().manual_seed(0)
    video, text = torch.randn(6, 11, generator=g), torch.randn(6, 11, generator=g)
    scale = torch.tensor(math.log(1 / 0.07))
    loss, logits = clip_loss(video, text, scale)
    assert logits.shape == (6, 6)
    swapped, swapped_logits = clip_loss(text, video, scale)
    torch.testing.assert_close(loss, swapped)
    torch.testing.assert_close(swapped_logits, logits.T)
    matched = clip_loss(video, video, scale)[0]  # every clip with its own description
    assert matched < loss
    for shift in range(1, 6):  # any mismatch of the pairs costs more than the right pairing
        assert matched < clip_loss(video, video.roll(shift, 0), scale)[0]
    assert clip_loss(video, video, torch.tensor(math.log(100.0)))[0] < 1e-3  # sharp and matched: near 0
    # the learnable temperature is clamped at 100 (CLIP): beyond it nothing changes, and no gradient flows
    big = torch.tensor(10.0, requires_grad=True)
    clamped = clip_loss(video, text, big)[0]
    torch.testing.assert_close(clamped, clip_loss(video, text, torch.tensor(math.log(100.0)))[0])
    clamped.backward()
    assert big.grad == 0
    free = torch.tensor(1.0, requires_grad=True)
    clip_loss(video, text, free)[0].backward()
    assert free.grad != 0


def test_retrieval_recall_both_directions():
    similarity = torch.tensor([[0.9, 0.1, 0.0],    # video 0 -> text 0 (right)
                               [0.8, 0.2, 0.1],    # video 1 -> text 0 (wrong), text 1 second
                               [0.0, 0.1, 0.7]])   # video 2 -> text 2 (right)
    positives = torch.eye(3, dtype=torch.bool)
    r = retrieval_recall(similarity, positives, ks=(1, 2))
    assert r["video_to_text_R@1"] == pytest.approx(2 / 3) and r["video_to_text_R@2"] == 1.0
    # text 0 -> video 0 (0.9 > 0.8), text 1 -> video 1 (0.2 > 0.1), text 2 -> video 2
    assert r["text_to_video_R@1"] == 1.0
    positives[1, 0] = True  # text 0 also describes video 1 (identical captions)
    assert retrieval_recall(similarity, positives, ks=(1,))["video_to_text_R@1"] == 1.0


def test_label_fraction_is_stratified_and_seeded(tiny_dataset):
    labels = [c for c in range(5) for _ in range(40)]
    chosen = label_budget(labels, 0.1, seed=0)
    assert [sum(labels[i] == c for i in chosen) for c in range(5)] == [4] * 5
    assert chosen == label_budget(labels, 0.1, seed=0) and chosen != label_budget(labels, 0.1, seed=1)
    assert label_budget(labels, 1.0, seed=0) == list(range(200))
    with pytest.raises(UsageError, match="without a training clip"):
        label_budget(labels, 0.01, seed=0)
    cfg = Settings(data_root=tiny_dataset, num_frames=4, image_size=32, val_fraction=0.0, label_fraction=0.5)
    train = build_datasets(cfg, MEAN, STD, ("train",)).train  # 4 classes x 6 clips -> 3 per class
    assert len(train) == 12 and sorted(r["label"] for r in train.records) == [c for c in range(4) for _ in range(3)]


def test_pretrain_export_then_finetune_from_it_with_and_without_lora(tiny_dataset, tmp_path):
    folder = tmp_path / "backbone"
    report = train_main.main(["--task", "pretrain", "--pretrain_objective", "both", *TINY_FLAGS, "--mask_ratio",
                              "0.75", "--data_root", tiny_dataset, "--output_dir", str(tmp_path / "runs"),
                              "--run_name", "pre", "--epochs", "1", "--batch_size", "8", "--val_fraction", "0",
                              "--quiet", "--export_dir", str(folder)])
    assert report["mask"]["hidden"] == 2 * num_masked(16, 0.75) and report["mask"]["tokens"] == 32
    assert set(report["retrieval"]) == {f"{d}_R@{k}" for d in ("video_to_text", "text_to_video") for k in (1, 5)}
    assert all(0.0 <= v <= 1.0 for v in report["retrieval"].values()) and math.isfinite(report["mvm_loss"])
    assert {"config.json", "model.safetensors", "pretraining.json"} <= set(os.listdir(folder))
    assert json.loads((folder / "pretraining.json").read_text())["objective"] == "both"
    card = (folder / "README.md").read_text()  # the model card: what it is, how it was made, how to load it
    assert "VideoMAEModel pretrained with both" in card and f"| mvm_loss | {report['mvm_loss']:.4f} |" in card
    assert f"python main.py --pretrained {folder}" in card
    plots = os.listdir(tmp_path / "runs" / "pre" / "plots")
    assert {"pretraining_curves.png", "reconstruction.png"} <= set(plots)

    from videolab.core.checkpoints import load_weights
    prefix = "mae.videomae."  # the pretrained encoder inside the run's best checkpoint
    trained = {k[len(prefix):]: v for k, v in load_weights(str(tmp_path / "runs" / "pre" / "best")).items()
               if k.startswith(prefix)}
    for lora in (False, True):
        cfg = Settings(model_size="tiny", num_frames=4, image_size=32, pretrained=str(folder), use_lora_vision=lora)
        built = build_model(cfg, 4, verbose=False)
        assert built.backbone.pretrained and built.info["weights_source"] == str(folder)
        encoder = built.backbone.module.get_base_model() if lora else built.backbone.module  # HFVideoEncoder
        weights = {k.replace(".base_layer", ""): v for k, v in encoder.model.state_dict().items() if "lora_" not in k}
        assert weights.keys() == trained.keys()
        for key, value in trained.items():
            torch.testing.assert_close(weights[key], value, rtol=0, atol=0)
    result = train_main.main([*TINY_FLAGS, "--pretrained", str(folder), "--use_lora_vision", "True",
                              "--data_root", tiny_dataset, "--output_dir", str(tmp_path / "runs"), "--run_name",
                              "fine", "--epochs", "1", "--batch_size", "8", "--label_fraction", "0.5", "--quiet",
                              "--speed_repeats", "0", "--summary_csv", "none"])
    assert result["pretrained"] is True and result["weights_source"] == str(folder)


@pytest.mark.parametrize("argv,needle", [
    (["--task", "pretrain", "--vision_model", "timesformer"], "built on VideoMAE"),
    (["--task", "pretrain", "--use_lora_vision", "True"], "applies to fine-tuning"),
    (["--task", "pretrain", "--label_fraction", "0.5"], "ignores labels"),
    (["--task", "pretrain", "--pretrain_objective", "contrastive", "--dataset", "ucf101"], "has none"),
    (["--mask_ratio", "0.8"], "add --task pretrain"),
    (["--task", "pretrain", "--mvm_target", "frame_difference"], "add --norm_pix_loss False"),
])
def test_pretraining_misuse_is_a_usage_error(in_tmp, argv, needle, capsys):
    assert run_cli(train_main.main, argv) == 2
    err = capsys.readouterr().err
    assert needle in err and err.count("\n") == 1


def test_a_mask_ratio_that_hides_every_patch_is_a_usage_error():
    from build_model import build_model
    with pytest.raises(UsageError, match="hides 16 of 16 patches per frame"):  # tube: round(0.98 * 16) = 16
        build_model(Settings(task="pretrain", model_size="tiny", mask_ratio=0.98), 8, verbose=False)
    with pytest.raises(UsageError, match="--mask_type frame: .* hides 4 of 4 time slots"):  # 8 frames / tubelet 2
        build_model(Settings(task="pretrain", model_size="tiny", mask_type="frame", mask_ratio=0.9), 8,
                    verbose=False)


def test_pretraining_resumes_bit_identical_mid_epoch(tiny_dataset, tmp_path):
    """The masks come from torch's RNG, which the checkpoint restores: 24 clips, batch 8 = 3 steps per epoch,
    checkpoint-2 lies inside epoch 1; resuming from it ends with the uninterrupted run's weights and losses."""
    from safetensors.torch import load_file
    flags = ["--task", "pretrain", *TINY_FLAGS, "--mask_ratio", "0.75", "--data_root", tiny_dataset, "--output_dir",
             str(tmp_path), "--epochs", "2", "--batch_size", "8", "--val_fraction", "0", "--save_steps", "2",
             "--save_total_limit", "0", "--quiet"]
    whole = train_main.main([*flags, "--run_name", "whole"])
    resumed = train_main.main([*flags, "--run_name", "resumed", "--resume_from_checkpoint",
                               str(tmp_path / "whole" / "checkpoint-2")])
    assert [r["train_loss"] for r in resumed["history"]] == [r["train_loss"] for r in whole["history"]]
    a, b = (load_file(str(tmp_path / name / "last" / "model.safetensors")) for name in ("whole", "resumed"))
    for key in a:
        torch.testing.assert_close(b[key], a[key], rtol=0, atol=0)
