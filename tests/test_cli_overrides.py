"""Nested overrides (issue 22): ``key.sub=value`` and ``--key.sub value`` for the YAML sections and the ``model:``
section; they parse, conflict and fail like flat flags, and the resolved result is what is recorded and built."""
import json
import os

import pytest
import torch
import yaml

import build_model
import main as train_main
from conftest import ROOT, TINY_FLAGS, resolve
from videolab.cli import run_cli, split_overrides
from videolab.core.errors import UsageError

AV = os.path.join(ROOT, "configs", "model_audiovisual.yaml")


def test_section_overrides_set_the_flat_settings_in_every_spelling():
    cfg, explicit, _ = resolve([*TINY_FLAGS, "lora.r=4", "--lora.alpha", "32", "--fusion.depth=3",
                                "fusion.type=mean", "--vision_model", "vit_small_patch16_224"])
    assert (cfg.lora_r, cfg.lora_alpha, cfg.fusion_depth, cfg.fusion) == (4, 32.0, 3, "mean")
    assert {"lora_r", "lora_alpha", "fusion_depth", "fusion"} <= explicit  # typed, like flags


def test_overrides_win_over_the_yaml_file(tmp_path):
    config = tmp_path / "c.yaml"
    config.write_text("lora:\n  r: 16\nfusion:\n  type: transformer\n  depth: 2\n")
    cfg, _, ns = resolve(["--config", str(config), *TINY_FLAGS, "lora.r=2", "fusion.depth=1"])
    assert (cfg.lora_r, cfg.fusion_depth, cfg.fusion) == (2, 1, "transformer")


def test_model_section_overrides_change_what_is_built():
    cfg, explicit, _ = resolve(["--config", AV, "--dataset", "synthetic_av", "model.fusion.depth=1",
                                "--model.encoders.audio.dim", "32", "model.head.dropout=0.5"])
    section = json.loads(cfg.model_config)
    assert section["fusion"]["depth"] == 1 and section["encoders"]["audio"]["dim"] == 32  # YAML values: ints
    assert section["head"]["dropout"] == 0.5 and "model_config" in explicit
    built = build_model.build_model(cfg, 4, verbose=False)
    composition = built.info["arch"]["composition"]
    assert composition["fusion"]["depth"] == 1 and composition["encoders"]["audio"]["dim"] == 32


def test_a_model_config_file_is_overridden_too(tmp_path):
    cfg, _, _ = resolve(["--model_config", AV, "--dataset", "synthetic_av", "model.encoders.video.model_size=small"])
    assert json.loads(cfg.model_config)["encoders"]["video"]["model_size"] == "small"


@pytest.mark.parametrize("argv, message", [
    (["lora.rr=3"], r"unknown setting lora.rr \(no setting 'lora_rr'\); did you mean 'lora_r'"),
    (["lora.r=x"], r"lora.r \(--lora_r\) expects an integer, got 'x'"),
    (["fusion.dropout=2"], r"--fusion_dropout must be <= 1.0"),  # ranges: checked like every value
    (["lora.r=3", "--lora_r", "4"], r"lora.r and --lora_r set the same setting \(lora_r\); give it once"),
    (["lora.r=3", "--lora.r", "5"], r"--lora.r and lora.r set the same setting|lora.r and --lora.r set"),
    (["model.fusion.dim=3"], r"overrides the model: section, and this run has none"),
    (["--lora.r"], r"--lora.r expects a value"),
    (["lora..r=1"], r"empty key"),
])
def test_bad_overrides_are_one_line_usage_errors(argv, message):
    with pytest.raises(UsageError, match=message):
        resolve([*TINY_FLAGS, *argv])


def test_model_section_conflicts_and_non_sections(tmp_path):
    with pytest.raises(UsageError, match="set the same key"):
        resolve(["--config", AV, "--dataset", "synthetic_av", "model.fusion.depth=1", "model.fusion.depth=2"])
    with pytest.raises(UsageError, match="model.head.dropout is 0.0, not a section"):
        resolve(["--config", AV, "--dataset", "synthetic_av", "model.head.dropout.x=1"])


def test_split_overrides_leaves_flags_and_values_alone():
    rest, overrides = split_overrides(["--lr", "1e-3", "--run_name", "a.b", "x.y=1", "--p.q", "2", "--data_root",
                                       "some.dir"])
    assert rest == ["--lr", "1e-3", "--run_name", "a.b", "--data_root", "some.dir"]
    assert overrides == [("x.y", "1", "x.y"), ("p.q", "2", "--p.q")]


def test_exit_code_2_and_one_line(capsys):
    assert run_cli(train_main.main, ["lora.rr=3"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "unknown setting lora.rr" in err[0]


def test_settings_yaml_records_the_resolved_overrides(tiny_dataset, tmp_path):
    torch.manual_seed(0)
    train_main.main([*TINY_FLAGS, "--data_root", tiny_dataset, "--output_dir", str(tmp_path), "--run_name", "o",
                     "--epochs", "1", "--max_steps", "1", "--batch_size", "4", "--quiet", "--speed_repeats", "0",
                     "--summary_csv", "none", "--vision_model", "vit_small_patch16_224", "fusion.depth=1",
                     "--fusion.n_heads", "2"])
    with open(tmp_path / "o" / "settings.yaml") as fh:
        saved = yaml.safe_load(fh)
    assert saved["fusion_depth"] == 1 and saved["fusion_n_heads"] == 2
