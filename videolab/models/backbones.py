"""Vision backbones: TimeSformer and VideoMAE (``transformers``), and any ``timm`` image model run per frame.

Two kinds (``models/registry.py`` ``BACKBONES`` names them and looks them up):

* video models (``timesformer``, ``videomae``): [B, T, C, H, W] -> tokens [B, L, D].
* per-frame image models (timm): each frame -> a feature vector, [B, T, D], then a temporal fusion layer.

Weights: ``--pretrained`` takes a Hub id or a local folder. When the weights cannot be had (offline, no such
folder) or none are asked for, the backbone is built from its preset config with random weights, and the result
says so (``Backbone.pretrained = False`` is recorded in every run's outputs). A built backbone records its
architecture (``arch``) so a checkpoint can rebuild it without the Hub.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Optional

import torch
from torch import nn

from videolab.core.errors import UsageError
from videolab.core.hub import hub_offline_mode, hub_reachable, loud_note

IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
KINETICS_MEAN, KINETICS_STD = (0.45, 0.45, 0.45), (0.225, 0.225, 0.225)


@dataclass
class Backbone:
    """A built vision backbone and what the rest of the pipeline needs to know about it."""
    module: nn.Module
    kind: str  # "video" (sees the clip) or "frame" (sees one image, needs fusion)
    feature_dim: int
    mean: tuple
    std: tuple
    pretrained: bool
    source: str  # where the weights came from, in words
    arch: dict  # enough to rebuild the same architecture offline
    lora_targets: list = field(default_factory=list)


# ----------------------------------------------------------------------------------------------------------------
# Hugging Face video backbones
# ----------------------------------------------------------------------------------------------------------------
# preset -> config overrides. 'base' is the library default = the published architecture.
HF_PRESETS = {
    "tiny": dict(hidden_size=96, num_hidden_layers=3, num_attention_heads=4, intermediate_size=384, patch_size=8),
    "small": dict(hidden_size=384, num_hidden_layers=12, num_attention_heads=6, intermediate_size=1536),
    "base": {},
}


def fp32_output(module: nn.Module, inputs, output):
    """Forward hook: the module's floating-point output (a tensor, or the tensors of a tuple) in fp32; a no-op
    outside autocast."""
    if isinstance(output, tuple):
        return tuple(o.float() if torch.is_tensor(o) and o.is_floating_point() else o for o in output)
    return output.float()


def keep_residual_stream_fp32(model: nn.Module) -> None:
    """Under bf16 autocast, VideoMAE's patch embedding (a convolution) returns bf16 and its embeddings cast the
    position table to that dtype, so every residual addition and LayerNorm of the encoder then runs in bf16
    (8 bits of mantissa): the blocks' small updates to the stream are rounded away, and training stalls (BENCHMARKS.md,
    bf16). An fp32 patch embedding output keeps the stream fp32, as it already is in TimeSformer (whose fp32 position
    parameters promote it) and in timm ViTs; the matrix products inside the blocks still run in bf16."""
    model.get_input_embeddings().register_forward_hook(fp32_output)


class HFVideoEncoder(nn.Module):
    """Wraps a transformers video model: pixel_values [B, T, C, H, W] -> tokens [B, L, D]. The residual stream
    stays fp32 under autocast (:func:`keep_residual_stream_fp32`)."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model
        keep_residual_stream_fp32(model)

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        return self.model(pixel_values=pixel_values).last_hidden_state


def _hf_from_pretrained(model_cls, config_cls, source: str, cfg, overrides: Optional[dict] = None
                        ) -> Optional[nn.Module]:
    """Load weights from a Hub id or folder (``overrides``: config values such as the drop path rate); None (with
    a loud note) when they cannot be had."""
    try:
        if not os.path.isdir(source) and not hub_offline_mode() and not hub_reachable():
            raise OSError("huggingface.co cannot be reached (with HF_HUB_OFFLINE=1 cached weights are used)")
        if not overrides:
            return model_cls.from_pretrained(source)
        config = config_cls.from_pretrained(source)
        return model_cls.from_pretrained(source, config=_with_values(config, overrides))
    except (OSError, ValueError) as exc:  # offline, unknown id, missing folder, wrong architecture
        loud_note(f"could not load pretrained weights from {source!r} ({str(exc).splitlines()[0][:160]}); "
                  f"building {cfg.vision_model} from the '{cfg.model_size}' preset with RANDOM weights")
        return None


def _with_values(config, values: dict):
    """``config`` with ``values`` set. Written into the instance dict: transformers 5.x annotates
    ``TimesformerConfig.drop_path_rate`` as an int, and its strict validation refuses a rate such as 0.1."""
    config.__dict__.update(values)
    return config


def _config_from_dict(config_cls, values: dict):
    """A config from a saved dict (a checkpoint's arch), the drop path rate set as :func:`_with_values` does."""
    rate = {k: values[k] for k in ("drop_path_rate",) if isinstance(values.get(k), float)}
    return _with_values(config_cls.from_dict({k: v for k, v in values.items() if k not in rate}), rate)


def _build_hf_video(cfg, arch: Optional[dict], model_cls, config_cls, mean, std, lora_targets,
                    pooling: str, overrides: Optional[dict] = None) -> Backbone:
    """``overrides``: config values the settings give over a preset or pretrained config (drop path rate)."""
    model, source, pretrained, overrides = None, "", False, overrides or {}
    if arch is None and cfg.pretrained:
        model = _hf_from_pretrained(model_cls, config_cls, cfg.pretrained, cfg, overrides)
        if model is not None:
            source, pretrained = cfg.pretrained, True
    if model is None:
        if arch is None:
            config = config_cls(**HF_PRESETS[cfg.model_size], num_frames=cfg.num_frames, image_size=cfg.image_size)
            arch = dict(config=_with_values(config, overrides).to_dict(), pooling=pooling)
        model = model_cls(_config_from_dict(config_cls, arch["config"]))
        source = f"random init from the '{cfg.model_size}' preset"
    arch = dict(config=model.config.to_dict(), pooling=pooling)
    image_size, frames = model.config.image_size, model.config.num_frames
    if (image_size, frames) != (cfg.image_size, cfg.num_frames):
        raise UsageError(f"the {cfg.vision_model} weights expect {frames} frames of {image_size}px, got "
                         f"--num_frames {cfg.num_frames} --image_size {cfg.image_size}; set those flags to match")
    return Backbone(HFVideoEncoder(model), "video", model.config.hidden_size, mean, std, pretrained, source, arch,
                    lora_targets)


def build_timesformer(cfg, arch: Optional[dict] = None) -> Backbone:
    from transformers import TimesformerConfig, TimesformerModel
    drop_path = dict(drop_path_rate=cfg.drop_path_rate) if cfg.drop_path_rate else {}
    return _build_hf_video(cfg, arch, TimesformerModel, TimesformerConfig, KINETICS_MEAN, KINETICS_STD,
                           ["qkv"], pooling="cls", overrides=drop_path)


def build_videomae(cfg, arch: Optional[dict] = None) -> Backbone:
    from transformers import VideoMAEConfig, VideoMAEModel
    return _build_hf_video(cfg, arch, VideoMAEModel, VideoMAEConfig, IMAGENET_MEAN, IMAGENET_STD,
                           ["query", "value"], pooling="mean")


# ----------------------------------------------------------------------------------------------------------------
# timm per-frame backbones
# ----------------------------------------------------------------------------------------------------------------
# family prefix -> preset -> create_model overrides ('base' = the named architecture unchanged)
TIMM_PRESETS = {
    "vit": {"tiny": dict(patch_size=8, embed_dim=96, depth=3, num_heads=4),
            "small": dict(patch_size=8, embed_dim=192, depth=6, num_heads=3)},
    "swin": {"tiny": dict(embed_dim=48, depths=(2, 2), num_heads=(3, 6), window_size=4),
             "small": dict(embed_dim=96, depths=(2, 2, 6), num_heads=(3, 6, 12), window_size=4)},
}
TIMM_LORA_TARGETS = {"vit": ["qkv"], "swin": ["qkv"]}


def _timm_family(name: str) -> Optional[str]:
    return next((f for f in TIMM_PRESETS if name.startswith(f)), None)


class FrameEncoder(nn.Module):
    """Runs an image model on every frame: [B, T, C, H, W] -> [B, T, D]."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        batch, frames = pixel_values.shape[:2]
        features = self.model(pixel_values.flatten(0, 1))  # [B*T, D]
        return features.view(batch, frames, -1)


def _timm_create(name: str, kwargs: dict, pretrained: bool = False, overlay: Optional[dict] = None) -> nn.Module:
    import timm
    extra = dict(pretrained_cfg_overlay=overlay) if overlay else {}
    try:
        return timm.create_model(name, pretrained=pretrained, num_classes=0, **kwargs, **extra)
    except TypeError:  # models without img_size (convnets)
        kwargs = {k: v for k, v in kwargs.items() if k != "img_size"}
        return timm.create_model(name, pretrained=pretrained, num_classes=0, **kwargs, **extra)


def build_timm_backbone(cfg, arch: Optional[dict] = None) -> Backbone:
    name = cfg.vision_model
    family = _timm_family(name)
    if arch is None:
        if cfg.model_size != "base" and family is None:
            raise UsageError(f"--model_size {cfg.model_size} is defined for vit* and swin* timm models only; "
                             f"use --model_size base for {name}")
        kwargs = dict(img_size=cfg.image_size, **(TIMM_PRESETS[family].get(cfg.model_size, {}) if family else {}),
                      **(dict(drop_path_rate=cfg.drop_path_rate) if cfg.drop_path_rate else {}))
        arch = dict(name=name, kwargs=kwargs)
    model, source, pretrained = None, f"random init from the '{cfg.model_size}' preset", False
    if cfg.pretrained and "loaded" not in arch:
        overlay = None
        if os.path.isdir(cfg.pretrained):
            files = [f for f in ("model.safetensors", "pytorch_model.bin") if
                     os.path.isfile(os.path.join(cfg.pretrained, f))]
            overlay = dict(file=os.path.join(cfg.pretrained, files[0])) if files else None
        elif cfg.pretrained not in ("timm", name):
            overlay = dict(hf_hub_id=cfg.pretrained)
        try:
            if (overlay is None or "hf_hub_id" in overlay) and not hub_offline_mode() and not hub_reachable():
                raise OSError("huggingface.co cannot be reached (with HF_HUB_OFFLINE=1 cached weights are used)")
            model = _timm_create(name, arch["kwargs"], pretrained=True, overlay=overlay)
            source, pretrained = cfg.pretrained, True
        except (OSError, RuntimeError, ValueError) as exc:
            loud_note(f"could not load pretrained timm weights for {name} from {cfg.pretrained!r} "
                      f"({str(exc).splitlines()[0][:160]}); using RANDOM weights")
    if model is None:
        model = _timm_create(name, arch["kwargs"])
    data_cfg = model.pretrained_cfg or {}
    return Backbone(FrameEncoder(model), "frame", model.num_features, tuple(data_cfg.get("mean", IMAGENET_MEAN)),
                    tuple(data_cfg.get("std", IMAGENET_STD)), pretrained, source, arch,
                    TIMM_LORA_TARGETS.get(family, []))


def backbone_shape(backbone: Backbone) -> dict:
    """{width, depth}: the feature width and the number of transformer blocks (None when the model has no blocks
    we know of, such as a convnet), for the start-up banner and the run's model info."""
    module, depth = backbone.module, None
    for inner in module.modules():
        config = getattr(inner, "config", None)
        if config is not None and hasattr(config, "num_hidden_layers"):  # transformers video models
            depth = config.num_hidden_layers
            break
        if hasattr(inner, "group_matcher"):  # timm: ViT blocks, or Swin stages of blocks
            if hasattr(inner, "blocks"):
                depth = len(inner.blocks)
            elif hasattr(inner, "layers"):
                depth = sum(len(getattr(stage, "blocks", ())) for stage in inner.layers) or None
            break
    return dict(width=backbone.feature_dim, depth=depth)


def preset_note(cfg, backbone: Backbone, params: int) -> Optional[str]:
    """A warning when a reduced preset ('tiny', 'small') builds a timm model whose name promises the full one."""
    if backbone.kind != "frame" or cfg.model_size == "base" or backbone.arch.get("loaded"):
        return None
    shape = backbone_shape(backbone)
    return (f"--model_size {cfg.model_size} builds a REDUCED {cfg.vision_model} ({shape['width']} features, "
            f"{shape['depth']} blocks, {params / 1e6:.2f} M parameters in all), not the architecture its name "
            f"says: pass --model_size base for it")
