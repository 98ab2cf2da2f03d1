"""Hugging Face export: save_pretrained / from_pretrained round trips for every kind of backbone, the Auto classes
after registration, the video processor against our preprocessing, LoRA adapters (PEFT) apart or merged with the
same logits, and --export_dir from the CLI."""
import json

import pytest
import torch
from transformers import AutoConfig, AutoModel, AutoModelForVideoClassification, AutoVideoProcessor

import main as train_main
from build_model import build_model
from conftest import TINY_FLAGS
from videolab.export.huggingface import ADAPTER_DIR, export_pretrained, load_exported
from videolab.models.hf import VideoClassifierForVideoClassification, register_auto_classes
from videolab.core.errors import UsageError
from videolab.core.settings import Settings
from videolab.data.transforms import preprocess_video

FRAMES, SIZE = 4, 32
CLASSES = ["move_right", "move_left", "grow", "shrink", "spin"]  # 5: odd, so swapped dimensions fail loudly


def tiny(**kw) -> Settings:
    base = dict(model_size="tiny", num_frames=FRAMES, image_size=SIZE, fusion_depth=1, fusion_n_heads=2,
                lora_dropout=0.0)
    base.update(kw)
    return Settings(**base)


def clips(b=3):
    return torch.randn(b, FRAMES, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(0))


@torch.no_grad()
def logits(model, x):
    return model.eval()(pixel_values=x).logits


@pytest.mark.parametrize("name,extra", [("videomae", {}), ("timesformer", {}),
                                        ("swin_tiny_patch4_window7_224", {}),  # buffers left out of state_dict
                                        ("vit_small_patch16_224", dict(fusion="mamba"))])
def test_export_round_trip(tmp_path, name, extra):
    cfg = tiny(vision_model=name, **extra)
    built = build_model(cfg, len(CLASSES), verbose=False)
    x = clips()
    expected = logits(built.model, x)
    files = export_pretrained(built.model, built.info, CLASSES, cfg, str(tmp_path))
    assert {"config.json", "model.safetensors", "video_preprocessor_config.json"} <= set(files)
    torch.testing.assert_close(logits(VideoClassifierForVideoClassification.from_pretrained(tmp_path), x), expected,
                               rtol=0, atol=1e-6)
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["id2label"] == {str(i): c for i, c in enumerate(CLASSES)} and config["label2id"]["spin"] == 4
    assert (config["num_frames"], config["image_size"]) == (FRAMES, SIZE)
    register_auto_classes()
    assert AutoConfig.from_pretrained(tmp_path).id2label[4] == "spin"
    for auto in (AutoModel, AutoModelForVideoClassification):
        torch.testing.assert_close(logits(auto.from_pretrained(tmp_path), x), expected, rtol=0, atol=1e-6)


@pytest.mark.parametrize("height,width", [(32, 48), (40, 56)], ids=["crop-only", "resize"])
def test_exported_video_processor_matches_our_preprocessing(tmp_path, height, width):
    """Exact when only cropping; when resizing, the processor rounds the resized uint8 frames to whole levels (we
    resize in float), so they agree to one level: 1/255 before normalisation."""
    cfg = tiny()
    built = build_model(cfg, len(CLASSES), verbose=False)
    export_pretrained(built.model, built.info, CLASSES, cfg, str(tmp_path))
    processor = AutoVideoProcessor.from_pretrained(tmp_path)
    video = torch.randint(0, 256, (FRAMES, 3, height, width), dtype=torch.uint8,
                          generator=torch.Generator().manual_seed(1))
    ours = preprocess_video(video, SIZE, built.backbone.mean, built.backbone.std)  # [T, C, S, S]
    theirs = processor(videos=[video], return_tensors="pt")["pixel_values"]  # [1, T, C, S, S]
    assert theirs.shape == (1, FRAMES, 3, SIZE, SIZE)
    level = 1.0 / 255 / min(built.backbone.std) if height != SIZE else 0.0
    torch.testing.assert_close(theirs[0], ours, rtol=0, atol=level + 1e-5)


def test_lora_export_apart_and_merged_give_the_same_logits(tmp_path):
    cfg = tiny(use_lora_vision=True)
    built = build_model(cfg, len(CLASSES), verbose=False)
    with torch.no_grad():  # LoRA's B starts at zero: make the adapters matter
        for name, p in built.model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.2, generator=torch.Generator().manual_seed(len(name)))
    x = clips()
    expected = logits(built.model, x)
    apart, merged = tmp_path / "apart", tmp_path / "merged"
    files = export_pretrained(built.model, built.info, CLASSES, cfg, str(apart))
    assert {f"{ADAPTER_DIR}/adapter_config.json", f"{ADAPTER_DIR}/adapter_model.safetensors"} <= set(files)
    export_pretrained(built.model, built.info, CLASSES, cfg, str(merged), merge_lora=True)
    assert not (merged / ADAPTER_DIR).exists()
    for folder in (apart, merged):  # the base weights file never holds adapter weights
        from safetensors.torch import load_file
        assert not [k for k in load_file(str(folder / "model.safetensors")) if "lora" in k]
    base = VideoClassifierForVideoClassification.from_pretrained(apart)
    assert not torch.allclose(logits(base, x), expected, atol=1e-3)  # the adapters change the output
    with_adapter, _ = load_exported(str(apart))
    merged_model, _ = load_exported(str(merged))
    torch.testing.assert_close(logits(with_adapter, x), expected, rtol=0, atol=1e-5)
    torch.testing.assert_close(logits(merged_model, x), logits(with_adapter, x), rtol=0, atol=1e-5)
    assert any("lora" in n for n, _ in built.model.named_parameters())  # the trained model was not changed


def test_export_dir_from_the_cli_after_lora_training(tiny_dataset, tmp_path):
    export = tmp_path / "export"
    train_main.main(["--data_root", tiny_dataset, "--output_dir", str(tmp_path), "--run_name", "lora", *TINY_FLAGS,
                     "--epochs", "1", "--max_steps", "2", "--batch_size", "8", "--use_lora_vision", "True", "--quiet",
                     "--speed_repeats", "0", "--summary_csv", "none", "--export_dir", str(export),
                     "--merge_lora", "True"])
    model, processor = load_exported(str(export))
    assert model.config.id2label[0] == "move_right" and processor.crop_size.height == SIZE
    from build_model import rebuild_from_checkpoint
    from videolab.core.checkpoints import read_run_config
    best = str(tmp_path / "lora" / "best")
    config = read_run_config(best)
    trained = rebuild_from_checkpoint(tiny(use_lora_vision=True), config, best).model
    x = clips()
    torch.testing.assert_close(logits(model, x), logits(trained, x), rtol=0, atol=1e-5)


def test_export_refuses_vision_language_models(in_tmp):
    with pytest.raises(UsageError, match="--export_dir writes the video classifiers"):
        train_main.main(["--use_vlm", "True", "--export_dir", "x"])
    with pytest.raises(UsageError, match="--merge_lora True applies to --export_dir"):
        train_main.main(["--merge_lora", "True"])
