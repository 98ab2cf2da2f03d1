"""Analysis plots (issue 22): the attention maps (per-head temporal attention of the fusion, attention rollout of
the backbone over the frames), the dataset analysis and the comparison of runs, each produced from a tiny run or
tree and checked for size and content."""
import csv
import json
import os

import numpy as np
import pytest
import torch
from PIL import Image

import build_model
import main as train_main
import visualize_results
from conftest import TINY_FLAGS, resolve
from video_fixtures import write_bad_videos, write_index_video
from videolab.evaluation.plots import DPI
from videolab.models.attention import attention_rollout, divided_attention_matrices, fusion_attention


def png(path) -> np.ndarray:
    with Image.open(path) as img:
        return np.asarray(img.convert("RGB"))


def assert_drawn(path, min_size=(300, 300)):
    """A PNG of at least ``min_size`` (width, height) pixels that is not one flat colour."""
    pixels = png(path)
    assert pixels.shape[1] >= min_size[0] and pixels.shape[0] >= min_size[1], pixels.shape
    assert pixels.std() > 5 and len(np.unique(pixels.reshape(-1, 3), axis=0)) > 50


@pytest.fixture(scope="module")
def vit_run(tiny_dataset, tmp_path_factory):
    out = tmp_path_factory.mktemp("attn")
    train_main.main([*TINY_FLAGS, "--vision_model", "vit_small_patch16_224", "--fusion_n_heads", "4",
                     "--data_root", tiny_dataset, "--output_dir", str(out), "--run_name", "vit", "--epochs", "1",
                     "--max_steps", "2", "--batch_size", "4", "--quiet", "--speed_repeats", "0", "--summary_csv",
                     str(out / "summary.csv")])
    return out / "vit"


def test_a_run_ends_with_its_attention_plots_frames_x_heads(vit_run):
    plots = vit_run / "plots"
    numbers = json.loads((plots / "attention.json").read_text())
    fusion = np.array(numbers["fusion_attention"])  # [heads, T]
    assert fusion.shape == (4, 4)  # 4 heads x 4 frames
    assert np.allclose(fusion.sum(-1), 1.0, atol=1e-5) and (fusion >= 0).all()
    rollout = np.array(numbers["attention_rollout"])  # [T, h, w]: 32 px frames, 8 px patches
    assert rollout.shape == (4, 4, 4) and np.allclose(rollout.sum((-2, -1)), 1.0, atol=1e-5)
    for name in ("fusion_attention.png", "attention_rollout.png"):
        assert_drawn(plots / name, (600, 300))


def test_visualize_results_redraws_the_attention_of_the_best_checkpoint(vit_run, tiny_dataset, tmp_path):
    written = visualize_results.main(["--run_dir", str(vit_run), "--attention", "--out_dir", str(tmp_path),
                                      "--data_root", tiny_dataset])
    names = {os.path.basename(p) for p in written}
    assert {"fusion_attention.png", "attention_rollout.png", "attention.json", "training_curves.png"} <= names
    again = json.loads((tmp_path / "attention.json").read_text())
    first = json.loads((vit_run / "plots" / "attention.json").read_text())
    assert np.allclose(again["fusion_attention"], first["fusion_attention"], atol=1e-5)  # the best checkpoint


def test_videomae_rollout_covers_every_frame_and_fusion_attention_needs_a_transformer():
    cfg, _, _ = resolve([*TINY_FLAGS, "--vision_model", "videomae"])
    model = build_model.build_model(cfg, 4, verbose=False).model.eval()
    clip = torch.randn(2, 4, 3, 32, 32)
    maps = attention_rollout(model, clip)  # [B, T, h, w]
    assert maps.shape == (2, 4, 4, 4) and torch.allclose(maps.sum((-2, -1)), torch.ones(2, 4), atol=1e-5)
    assert torch.equal(maps[:, 0], maps[:, 1])  # one tube (2 frames) shares its tokens
    assert fusion_attention(model, clip) is None  # VideoMAE models time itself: no fusion
    mamba, _, _ = resolve([*TINY_FLAGS, "--vision_model", "vit_small_patch16_224", "--fusion", "mean"])
    assert fusion_attention(build_model.build_model(mamba, 4, verbose=False).model, clip) is None


def test_timesformer_rollout_follows_divided_attention():
    """TimeSformer's divided attention written out over the whole clip: stochastic rows, the temporal matrix only
    links a patch position across frames, the spatial one only within a frame; the rollout is one map per frame."""
    cfg, _, _ = resolve([*TINY_FLAGS, "--vision_model", "timesformer"])
    model = build_model.build_model(cfg, 4, verbose=False).model.eval()
    clip = torch.randn(2, 4, 3, 32, 32)
    maps = attention_rollout(model, clip)  # [B, T, h, w]
    assert maps.shape == (2, 4, 4, 4) and torch.allclose(maps.sum((-2, -1)), torch.ones(2, 4), atol=1e-5)
    assert not torch.allclose(maps[:, 0], maps[:, 1])  # frames have their own maps
    lora, _, _ = resolve([*TINY_FLAGS, "--vision_model", "timesformer", "--use_lora_vision", "True"])
    with_lora = build_model.build_model(lora, 4, verbose=False).model.eval()  # the seed command's model
    assert attention_rollout(with_lora, clip).shape == (2, 4, 4, 4)
    batch, patches, frames, heads = 2, 3, 2, 2
    temporal = torch.softmax(torch.randn(batch * patches, heads, frames, frames), -1)
    spatial = torch.softmax(torch.randn(batch * frames, heads, 1 + patches, 1 + patches), -1)
    t_full, s_full = (m[:, 0] for m in divided_attention_matrices(temporal, spatial, batch))
    for m in (t_full, s_full):
        assert torch.allclose(m.sum(-1), torch.ones(batch, 1 + patches * frames), atol=1e-6)
    token = lambda n, t: 1 + n * frames + t  # noqa: E731  transformers' order
    b, n, t, s = 1, 2, 0, 1
    assert t_full[b, token(n, t), token(n, s)] == pytest.approx(temporal[b * patches + n, :, t, s].mean().item())
    assert t_full[b, token(n, t), token(0, s)] == 0  # another patch position: no temporal link
    assert s_full[b, token(n, t), token(0, t)] == pytest.approx(spatial[b * frames + t, :, 1 + n, 1].mean().item())
    assert s_full[b, token(n, t), token(0, s)] == 0  # another frame: no spatial link
    assert s_full[b, token(n, t), 0] == pytest.approx(spatial[b * frames + t, :, 1 + n, 0].mean().item())
    assert s_full[b, 0, token(n, s)] == pytest.approx(spatial[b * frames + s, :, 0, 1 + n].mean().item() / frames)


def test_runs_compared_from_the_summary_csv(vit_run, tmp_path):
    table = vit_run.parent / "summary.csv"
    with open(table) as fh:
        rows = list(csv.DictReader(fh))
    extra = dict(rows[0], run_name="bigger", params_total=str(3 * int(rows[0]["params_total"])), top1="0.5")
    with open(table, "a", newline="") as fh:
        csv.DictWriter(fh, fieldnames=list(rows[0])).writerow(extra)
    written = visualize_results.main(["--summary_csv", str(table), "--out_dir", str(tmp_path)])
    assert [os.path.basename(p) for p in written] == ["runs_compared.png"]
    pixels = png(written[0])
    assert pixels.shape[:2] == (round(4.6 * DPI), 15 * DPI)
    assert_drawn(written[0])


def test_dataset_analysis_of_a_video_tree(tmp_path):
    root = tmp_path / "videos"
    for c, cls in enumerate(["jump", "run", "swim"]):
        for k in range(2 + c):
            write_index_video(str(root / cls / f"v{k}.mp4"), 10 + 3 * k, height=40, width=56)
    write_bad_videos(str(root / "run"), str(root / "run" / "v0.mp4"))
    written = visualize_results.main(["--dataset_root", str(root), "--out_dir", str(tmp_path / "out")])
    assert [os.path.basename(p) for p in written] == ["dataset_analysis.png"]
    assert png(written[0]).shape[:2] == (round(7.5 * DPI), 13 * DPI)
    assert_drawn(written[0])
    from videolab.data.check import scan_dataset
    records, problems = scan_dataset(str(root), "videos", 8, 32, show_progress=False)
    readable = [r for r in records if r["frames"] is not None]
    assert sorted(r["label"] for r in readable) == ["jump"] * 2 + ["run"] * 3 + ["swim"] * 4
    assert {r["frames"] for r in readable} == {10, 13, 16, 19} and {(r["width"], r["height"]) for r in readable} == \
        {(56, 40)}
    assert len(problems) == 4


def test_nothing_to_draw_is_a_one_line_error():
    from videolab.core.errors import UsageError
    with pytest.raises(UsageError, match="nothing to draw"):
        visualize_results.main([])
