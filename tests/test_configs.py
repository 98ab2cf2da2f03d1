"""The published recipes in configs/ (issue 22): the three OmniQ compositions build to its table's parameter
counts (within 1 %), and the VideoMAE-B UCF101 recipe holds the authors' hyperparameters. Built with random init
on the meta device (no memory, no download): a few seconds each."""
import os

import pytest
import torch

import build_model
from conftest import ROOT, resolve

CONFIGS = os.path.join(ROOT, "configs")


def built_on_meta(*argv):
    cfg, _, _ = resolve(list(argv))
    with torch.device("meta"):
        return cfg, build_model.build_model(cfg, 101, verbose=False)


@pytest.mark.parametrize("name, published", [
    ("omniq_swin_t_transformer_lora.yaml", 28.1e6),
    ("omniq_swin_t_mamba.yaml", 27.8e6),
    ("omniq_swin_b.yaml", 87.2e6),
])
def test_omniq_compositions_match_the_published_parameter_counts(name, published):
    cfg, built = built_on_meta("--config", os.path.join(CONFIGS, name))
    assert (cfg.num_frames, cfg.image_size, cfg.dataset) == (32, 224, "ucf101")
    assert built.model.head[-1].out_features == 101
    total = built.info["params_total"]
    assert abs(total - published) / published < 0.01, f"{name}: {total:,} parameters, published {published:,.0f}"
    assert built.info["backbone_width"] in (768, 1024) and built.info["fusion_width"] == 128


def test_the_automatic_fusion_width_gives_omniq_without_fusion_flags():
    """The default --fusion_dim (none) caps the fusion at 128 wide: Swin-T + Transformer fusion + LoRA is OmniQ's
    28.1 M, where the backbone's own width (--fusion_dim 0, the former default) gives 42 M."""
    flags = ["--vision_model", "swin_tiny_patch4_window7_224", "--model_size", "base", "--num_frames", "32",
             "--image_size", "224", "--use_lora_vision", "True"]
    _, auto = built_on_meta(*flags)
    _, full = built_on_meta(*flags, "--fusion_dim", "0")
    assert abs(auto.info["params_total"] - 28.1e6) / 28.1e6 < 0.01
    assert full.info["params_total"] > 41e6 and full.info["fusion_width"] == 768


def test_videomae_b_recipe_holds_the_published_hyperparameters():
    cfg, built = built_on_meta("--config", os.path.join(CONFIGS, "videomae_b_ucf101.yaml"), "--pretrained", "none")
    expected = dict(vision_model="videomae", model_size="base", num_frames=16, sampling="dense", frame_stride=4,
                    image_size=224, layer_decay=0.7, mixup_alpha=0.8, cutmix_alpha=1.0, label_smoothing=0.1,
                    head_dropout=0.5, epochs=100, weight_decay=0.05, test_clips=5, test_crops=3, rand_augment="4,7")
    assert {k: getattr(cfg, k) for k in expected} == expected
    assert cfg.lr * cfg.batch_size * cfg.gradient_accumulation_steps == pytest.approx(5e-4 * 128 / 256 * 128)
    assert built.info["backbone_width"] == 768 and built.info["backbone_depth"] == 12
    assert built.info["params_total"] == pytest.approx(86.2e6, rel=0.01)  # ViT-B/16 video + a 101-class head


def test_a_run_saved_with_the_former_fusion_dim_default_still_resumes_when_it_has_no_fusion():
    import train_code
    from videolab.core.settings import Settings
    here = Settings()  # fusion_dim none: the automatic width
    saved = dict(settings=Settings(fusion_dim=0).to_dict(), class_names=["a", "b"], model_info=dict(fusion="none"))
    state = dict(num_processes=1, batch=0)
    assert train_code.resume_differences(here, saved, state, ["a", "b"], 1) == []
    saved["model_info"]["fusion"] = "transformer"  # a per-frame backbone: the widths may differ, refused
    assert train_code.resume_differences(here, saved, state, ["a", "b"], 1) == ["fusion_dim=0 there, None here"]
