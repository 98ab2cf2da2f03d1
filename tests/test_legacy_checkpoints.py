"""Checkpoints and exports written by the flat-layout code (tests/fixtures/legacy_v1, commit 3a2e19e) still load:
rebuilt from their folder alone they give the logits the old code gave, inference.py and --eval_only run them,
a resumable checkpoint continues, the export loads with its LoRA adapter, a pretrained backbone folder
fine-tunes through --pretrained, and the composed model's saved ``_target_`` names (audio.AudioEncoder,
fusion.TransformerFusion) resolve."""
import os
import shutil

import pytest
import torch
from safetensors.torch import load_file

import create_dummy
import inference
import main as train_main
from build_model import rebuild_from_checkpoint
from conftest import ROOT
from videolab.core.checkpoints import read_run_config
from videolab.core.settings import settings_from_dict
from videolab.export.huggingface import load_exported

LEGACY = os.path.join(ROOT, "tests", "fixtures", "legacy_v1")
CHECKPOINTS = ["runs/videomae/best", "runs/vit_mamba2_lora/best", "runs/vit_mamba2_lora/checkpoint-1",
               "composed_targets"]
QUIET = ["--quiet", "--speed_repeats", "0", "--summary_csv", "none"]


def reference(folder: str) -> dict:
    return load_file(os.path.join(folder, "reference.safetensors"))


def copied(tmp_path, name: str) -> str:
    """A copy of a legacy run folder (resuming and evaluating write into the run folder)."""
    target = str(tmp_path / os.path.basename(name))
    shutil.copytree(os.path.join(LEGACY, name), target, symlinks=True)
    return target


@pytest.mark.parametrize("name", CHECKPOINTS)
def test_rebuilt_legacy_checkpoint_gives_the_old_logits(name):
    folder = os.path.join(LEGACY, name)
    run_config = read_run_config(folder)
    model = rebuild_from_checkpoint(settings_from_dict(run_config["settings"]), run_config, folder).model.eval()
    expected = reference(os.path.join(LEGACY, name.replace("checkpoint-1", "best")))
    inputs = {k: v for k, v in expected.items() if k != "logits"}
    with torch.no_grad():
        torch.testing.assert_close(model(**inputs).logits, expected["logits"], rtol=1e-5, atol=1e-5)


def test_legacy_export_loads_with_its_adapter():
    model, processor = load_exported(os.path.join(LEGACY, "runs", "vit_mamba2_lora_export"))
    expected = reference(os.path.join(LEGACY, "runs", "vit_mamba2_lora", "best"))
    with torch.no_grad():
        torch.testing.assert_close(model(pixel_values=expected["pixel_values"]).logits, expected["logits"],
                                   rtol=1e-5, atol=1e-5)
    assert processor.crop_size["height"] == 32


def test_inference_and_eval_only_run_a_legacy_checkpoint(tiny_dataset, tmp_path):
    run = copied(tmp_path, "runs/videomae")
    create_dummy.main(["--data_root", tiny_dataset, "--out_dir", str(tmp_path / "frames"), "--quiet"])
    result = inference.main(["--video_dir", str(tmp_path / "frames"), "--checkpoint", os.path.join(run, "best"),
                             "--predictions_file", str(tmp_path / "p.json"), "--quiet"])
    assert len(result["predictions"]) == 8 and result["num_labelled"] == 8
    report = train_main.main(["--eval_only", "True", "--checkpoint", os.path.join(run, "best"), "--data_root",
                              tiny_dataset, *QUIET])
    assert report["mode"] == "eval_only" and report["num_samples"] == 8 and 0.0 <= report["top1"] <= 1.0


def test_a_legacy_resumable_checkpoint_continues(tiny_dataset, tmp_path):
    run = copied(tmp_path, "runs/vit_mamba2_lora")
    report = train_main.main(["--resume_from_checkpoint", os.path.join(run, "last"), "--data_root", tiny_dataset,
                              "--vision_model", "vit_small_patch16_224", "--fusion", "mamba2", "--fusion_dim", "32",
                              "--fusion_depth", "1", "--use_lora_vision", "True", "--model_size", "tiny",
                              "--num_frames", "4", "--image_size", "32", "--batch_size", "8", "--seed", "0",
                              "--epochs", "2", "--max_steps", "2", *QUIET])
    assert [r["step"] for r in report["history"]] == [1, 2] and report["run_dir"] == run


def test_a_legacy_pretrained_backbone_fine_tunes(tiny_dataset, tmp_path):
    folder = os.path.join(LEGACY, "pretrained_backbone")
    report = train_main.main(["--pretrained", folder, "--use_lora_vision", "True", "--model_size", "tiny",
                              "--num_frames", "4", "--image_size", "32", "--data_root", tiny_dataset, "--output_dir",
                              str(tmp_path), "--epochs", "1", "--max_steps", "1", "--batch_size", "8", *QUIET])
    assert report["pretrained"] is True and report["weights_source"] == folder
    from transformers import VideoMAEModel
    saved = VideoMAEModel.from_pretrained(folder).state_dict()  # the folder's weights as transformers reads them
    trained = load_file(os.path.join(report["checkpoint"], "model.safetensors"))
    base = {k.replace("backbone.base_model.model.model.", "").replace(".base_layer", ""): v for k, v in trained.items()
            if k.startswith("backbone.") and "lora_" not in k}
    assert saved.keys() == base.keys()
    for key, value in saved.items():  # LoRA trains adapters only: the loaded backbone weights are unchanged
        torch.testing.assert_close(base[key], value, rtol=0, atol=0)
