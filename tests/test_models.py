"""Every registry entry trains (forward + backward); LoRA and freezing train exactly what they should."""
import pytest
import torch

from build_model import build_model
from videolab.models.adapt import count_parameters
from videolab.models.classifier import TemporalFusionEncoder
from videolab.models.registry import BACKBONES, FUSIONS, check_vision_model
from videolab.core.errors import UsageError
from videolab.core.settings import Settings

FRAMES, SIZE, CLASSES = 4, 32, 5  # odd sizes so swapped dimensions fail loudly


def tiny(**kw) -> Settings:
    base = dict(model_size="tiny", num_frames=FRAMES, image_size=SIZE, fusion_depth=1, fusion_n_heads=2,
                fusion_dropout=0.0, lora_dropout=0.0)
    base.update(kw)
    return Settings(**base)


def batch(b=3):
    torch.manual_seed(0)
    return torch.randn(b, FRAMES, 3, SIZE, SIZE), torch.tensor([0, 3, 4][:b])


@pytest.mark.parametrize("name", BACKBONES.names() + ["resnet18"])
def test_every_backbone_forward_backward(name):
    cfg = tiny(vision_model=name, model_size="base" if name == "resnet18" else "tiny")
    built = build_model(cfg, CLASSES, verbose=False)
    x, y = batch()
    out = built.model(pixel_values=x, labels=y)
    assert out.logits.shape == (3, CLASSES)
    out.loss.backward()
    grads = [p.grad for p in built.model.parameters() if p.requires_grad]
    assert all(g is not None for g in grads) and any(g.abs().sum() > 0 for g in grads)
    assert built.info["pretrained"] is False


@pytest.mark.parametrize("fusion", sorted(FUSIONS.where(temporal=True)))
def test_every_fusion_layer(fusion):
    built = build_model(tiny(vision_model="vit_small_patch16_224", fusion=fusion), CLASSES, verbose=False)
    x, y = batch()
    built.model(pixel_values=x, labels=y).loss.backward()


def test_mean_fusion_ignores_frame_order_transformer_does_not():
    """The frame-averaging baseline sees an unordered set of frames; temporal fusion sees the order."""
    x, _ = batch(2)
    reversed_x = x.flip(1)
    for fusion, same in (("mean", True), ("transformer", False)):
        model = build_model(tiny(vision_model="vit_small_patch16_224", fusion=fusion), CLASSES, verbose=False).model
        model.eval()
        with torch.no_grad():
            a, b = model(pixel_values=x).logits, model(pixel_values=reversed_x).logits
        assert torch.allclose(a, b, atol=1e-5) is same


def test_fusion_padding_mask_is_honoured():
    torch.manual_seed(0)
    enc = TemporalFusionEncoder(12, 16, "transformer", depth=1, n_heads=2, dropout=0.0).eval()
    frames = torch.randn(1, 3, 12)
    padded = torch.cat([frames, torch.randn(1, 2, 12) * 100], dim=1)  # garbage in the padded slots
    mask = torch.tensor([[False, False, False, True, True]])
    torch.testing.assert_close(enc(frames), enc(padded, mask), atol=1e-5, rtol=1e-5)


def lora_and_head_only(model):
    names = [n for n, p in model.named_parameters() if p.requires_grad]
    return names, all("lora_" in n or n.startswith(("head.", "temporal.")) for n in names)


@pytest.mark.parametrize("name", ["timesformer", "videomae", "vit_small_patch16_224", "swin_tiny_patch4_window7_224"])
def test_lora_trains_only_adapters_and_head(name):
    built = build_model(tiny(vision_model=name, use_lora_vision=True, lora_r=4), CLASSES, verbose=False)
    model = built.model
    names, ok = lora_and_head_only(model)
    assert ok and any("lora_A" in n for n in names), names
    total, trainable = count_parameters(model)
    head = sum(p.numel() for n, p in model.named_parameters() if n.startswith(("head.", "temporal.")))
    lora = sum(p.numel() for n, p in model.named_parameters() if "lora_" in n)
    assert trainable == head + lora and trainable < total
    frozen_before = {n: p.detach().clone() for n, p in model.named_parameters() if not p.requires_grad}
    lora_before = {n: p.detach().clone() for n, p in model.named_parameters() if "lora_B" in n}
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    x, y = batch()
    model(pixel_values=x, labels=y).loss.backward()
    opt.step()
    for n, p in model.named_parameters():
        if n in frozen_before:
            assert torch.equal(p, frozen_before[n]), f"frozen weight {n} changed"
    assert any(not torch.equal(p, lora_before[n]) for n, p in model.named_parameters() if n in lora_before)


def test_freeze_trains_only_head():
    model = build_model(tiny(vision_model="timesformer", freeze_visionbackbone=True), CLASSES, verbose=False).model
    names = [n for n, p in model.named_parameters() if p.requires_grad]
    assert names and all(n.startswith("head.") for n in names)
    model_frame = build_model(tiny(vision_model="vit_small_patch16_224", freeze_visionbackbone=True), CLASSES,
                              verbose=False).model
    assert all(n.startswith(("head.", "temporal.")) for n, p in model_frame.named_parameters() if p.requires_grad)


def test_lora_on_random_weights_warns_loudly(capsys):
    build_model(tiny(vision_model="timesformer", use_lora_vision=True), CLASSES)
    err = capsys.readouterr().err
    assert "RANDOMLY INITIALISED backbone" in err and "--pretrained" in err


def test_offline_pretrained_falls_back_to_random_and_says_so(capsys, tmp_path):
    built = build_model(tiny(vision_model="timesformer", pretrained=str(tmp_path / "no_such_model")), CLASSES)
    assert built.info["pretrained"] is False and "random" in built.info["weights_source"]
    assert "RANDOM weights" in capsys.readouterr().err


def test_pretrained_from_local_folder(tmp_path):
    """A folder saved with save_pretrained is a valid --pretrained source (the offline path for real weights)."""
    from transformers import TimesformerConfig, TimesformerModel
    config = TimesformerConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=37,
                               patch_size=8, num_frames=FRAMES, image_size=SIZE)
    TimesformerModel(config).save_pretrained(tmp_path / "tsf")
    built = build_model(tiny(vision_model="timesformer", pretrained=str(tmp_path / "tsf")), CLASSES, verbose=False)
    assert built.info["pretrained"] is True and built.backbone.feature_dim == 32


def test_base_presets_are_the_published_architectures():
    """TimeSformer-base (8 x 224^2) has 121 M parameters; VideoMAE-base 86 M; counted on the meta device."""
    from transformers import TimesformerConfig, TimesformerModel, VideoMAEConfig, VideoMAEModel
    with torch.device("meta"):
        tsf = TimesformerModel(TimesformerConfig())
        mae = VideoMAEModel(VideoMAEConfig())
    assert round(sum(p.numel() for p in tsf.parameters()) / 1e6) == 121
    assert round(sum(p.numel() for p in mae.parameters()) / 1e6) == 86
    from videolab.models.backbones import HF_PRESETS
    assert HF_PRESETS["base"] == {}


def test_unknown_model_name_lists_choices():
    with pytest.raises(UsageError, match="choose one of timesformer, videomae"):
        check_vision_model("not_a_model_anywhere")
    check_vision_model("resnet18")  # any timm name is accepted
    assert set(BACKBONES) >= {"timesformer", "videomae", "swin_tiny_patch4_window7_224",
                                     "vit_small_patch16_224"}


def test_presets_only_for_known_timm_families():
    with pytest.raises(UsageError, match="use --model_size base"):
        build_model(tiny(vision_model="resnet18"), CLASSES, verbose=False)
