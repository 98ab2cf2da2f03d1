"""A 2-step train + export + inference run, in-process, on a tiny dataset; checkpoint round trip."""
import json
import os

import pytest
import torch

import create_dummy
import inference
import main as train_main
from build_model import build_model
from videolab.core.checkpoints import load_training_state, load_weights, read_run_config, save_checkpoint
from conftest import TINY_FLAGS
from videolab.core.errors import UsageError
from videolab.core.settings import settings_from_dict


@pytest.fixture(scope="module")
def trained_run(tiny_dataset, tmp_path_factory):
    out = str(tmp_path_factory.mktemp("runs"))
    result = train_main.main(["--data_root", tiny_dataset, "--output_dir", out, "--run_name", "tiny",
                              "--epochs", "2", "--max_steps", "2", "--batch_size", "8", *TINY_FLAGS,
                              "--quiet", "--seed", "0"])
    return out, result


def test_training_writes_checkpoints_and_eval(trained_run):
    out, result = trained_run
    run = os.path.join(out, "tiny")
    for sub in ("best", "last"):
        assert os.path.isfile(os.path.join(run, sub, "model.safetensors"))
    config = read_run_config(os.path.join(run, "best"))
    assert config["settings"]["vision_model"] == "videomae" and config["model_info"]["pretrained"] is False
    assert config["class_names"][:2] == ["move_right", "move_left"]
    state = load_training_state(os.path.join(run, "last"))  # weights_only=True load
    assert state["step"] == 2
    lines = open(os.path.join(run, "metrics.jsonl")).read().splitlines()
    assert [json.loads(line)["step"] for line in lines] == [2]  # 20 train clips / batch 8: stops in epoch 1
    assert 0.0 <= result["top1"] <= 1.0 and result["pretrained"] is False
    assert len(result["confusion_matrix"]) == 4


def test_checkpoint_round_trip_gives_identical_logits(trained_run):
    out, _ = trained_run
    folder = os.path.join(out, "tiny", "best")
    config = read_run_config(folder)
    cfg = settings_from_dict(config["settings"])
    a = build_model(cfg, 4, arch=config["model_info"]["arch"], verbose=False).model
    b = build_model(cfg, 4, arch=config["model_info"]["arch"], verbose=False).model
    a.load_state_dict(load_weights(folder))
    b.load_state_dict(load_weights(folder))
    x = torch.randn(2, 4, 3, 32, 32)
    a.eval(), b.eval()
    torch.testing.assert_close(a(pixel_values=x).logits, b(pixel_values=x).logits, rtol=0, atol=0)


def test_export_frames_and_run_inference(trained_run, tiny_dataset, tmp_path, monkeypatch):
    out, _ = trained_run
    monkeypatch.chdir(tmp_path)
    create_dummy.main(["--data_root", tiny_dataset, "--out_dir", "frames_see", "--quiet"])
    assert os.path.isfile("frames_see/class_1_video_0/frame_00003.png")
    result = inference.main(["--video_dir", "frames_see", "--output_dir", out, "--quiet", "--top_k", "3"])
    assert len(result["predictions"]) == 8 and len(result["predictions"][0]["top_k"]) == 3
    assert result["num_labelled"] == 8 and "top1" in result
    saved = json.load(open("predictions.json"))
    assert saved["predictions"][0]["video"] == "class_0_video_0"
    probs = [t["probability"] for t in saved["predictions"][0]["top_k"]]
    assert probs == sorted(probs, reverse=True) and 0 < sum(probs) <= 1.0001
    single = inference.main(["--video_dir", "frames_see/class_2_video_1", "--output_dir", out, "--quiet",
                             "--predictions_file", "one.json"])
    assert len(single["predictions"]) == 1


def test_inference_refuses_conflicting_model_flags(trained_run, tiny_dataset, tmp_path, monkeypatch):
    out, _ = trained_run
    folder = os.path.join(out, "tiny", "best")
    with pytest.raises(UsageError, match="conflicts with the checkpoint"):
        inference.main(["--video_dir", str(tmp_path), "--checkpoint", folder, "--num_frames", "8"])
    with pytest.raises(UsageError, match="no run under"):
        inference.main(["--video_dir", str(tmp_path), "--output_dir", out, "--vision_model", "timesformer"])
    with pytest.raises(UsageError, match="not a checkpoint"):
        inference.main(["--video_dir", str(tmp_path), "--checkpoint", str(tmp_path)])


def test_resume_continues_from_last(trained_run, tiny_dataset):
    out, _ = trained_run
    result = train_main.main(["--data_root", tiny_dataset, "--output_dir", out, "--run_name", "tiny",
                              "--epochs", "2", "--max_steps", "3", "--batch_size", "8", *TINY_FLAGS,
                              "--quiet", "--resume_from_checkpoint", "latest"])
    assert result["history"][-1]["step"] == 3
    with pytest.raises(UsageError, match="image_size"):
        train_main.main(["--data_root", tiny_dataset, "--output_dir", out, "--run_name", "tiny2",
                         "--resume_from_checkpoint", os.path.join(out, "tiny", "last"), *TINY_FLAGS[:4],
                         "--image_size", "48", "--quiet"])


def test_atomic_save_keeps_previous_checkpoint_on_failure(tmp_path):
    folder = str(tmp_path / "ckpt")
    save_checkpoint(folder, {"w": torch.ones(2)}, {"settings": {}})

    class Boom(dict):
        def items(self):
            raise RuntimeError("disk full")
    with pytest.raises(RuntimeError):
        save_checkpoint(folder, Boom(), {"settings": {}})
    torch.testing.assert_close(load_weights(folder)["w"], torch.ones(2))
    assert [f for f in os.listdir(tmp_path) if f != "ckpt"] == []  # no temp leftovers


def test_bf16_autocast_and_accumulation_train_on_cpu(tiny_dataset, tmp_path):
    result = train_main.main(["--data_root", tiny_dataset, "--output_dir", str(tmp_path), "--run_name", "bf16",
                              "--epochs", "1", "--batch_size", "4", "--gradient_accumulation_steps", "2",
                              "--mixed_precision", "bf16", *TINY_FLAGS, "--quiet"])
    assert result["history"][-1]["step"] == 3  # 20 clips / batch 4 = 5 micro-batches -> 3 optimizer steps
    assert all(torch.isfinite(torch.tensor(h["train_loss"])) for h in result["history"])
