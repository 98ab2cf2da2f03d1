"""Model assembly: a registry of vision backbones, presets, LoRA/freezing, and the video classifier.

``VISION_BACKBONES`` is the only place ``--vision_model`` names are looked up; the CLI's choices come from it.
Any other timm model name also works as a per-frame backbone. Adding a backbone = one builder + one entry.

Two kinds of backbone:
* video models (``timesformer``, ``videomae``, Hugging Face ``transformers``): [B, T, C, H, W] -> tokens -> pooled.
* per-frame image models (timm): each frame -> a feature vector, then a temporal fusion layer (fusion.py).

Weights: ``--pretrained`` takes a Hub id or a local folder. When the weights cannot be had (offline, no such
folder) or none are asked for, the backbone is built from its preset config with random weights, and the result
says so (``Backbone.pretrained = False`` is recorded in every run's outputs).

A built model records its architecture (``arch``) so a checkpoint can rebuild it without the Hub.
"""
from __future__ import annotations

import copy
import os
import sys
import warnings
from dataclasses import dataclass, field
from typing import Any, Callable, Optional

import torch
from torch import nn
from transformers.utils import ModelOutput

from fusion import TemporalFusionEncoder, fusion_options
from settings import Settings, UsageError, default_language_model, nearest

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


def loud_note(message: str) -> None:
    """A warning nobody can miss (printed as a banner on stderr)."""
    bar = "!" * 100
    print(f"\n{bar}\n!! {message}\n{bar}\n", file=sys.stderr, flush=True)


# ----------------------------------------------------------------------------------------------------------------
# Hugging Face video backbones
# ----------------------------------------------------------------------------------------------------------------
# preset -> config overrides. 'base' is the library default = the published architecture.
HF_PRESETS = {
    "tiny": dict(hidden_size=96, num_hidden_layers=3, num_attention_heads=4, intermediate_size=384, patch_size=8),
    "small": dict(hidden_size=384, num_hidden_layers=12, num_attention_heads=6, intermediate_size=1536),
    "base": {},
}


class HFVideoEncoder(nn.Module):
    """Wraps a transformers video model: pixel_values [B, T, C, H, W] -> tokens [B, L, D]."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        return self.model(pixel_values=pixel_values).last_hidden_state


def _hf_from_pretrained(model_cls, config_cls, source: str, cfg: Settings) -> Optional[nn.Module]:
    """Load weights from a Hub id or folder; None (with a loud note) when they cannot be had."""
    from language import hub_offline_mode, hub_reachable
    try:
        if not os.path.isdir(source) and not hub_offline_mode() and not hub_reachable():
            raise OSError("huggingface.co cannot be reached (with HF_HUB_OFFLINE=1 cached weights are used)")
        return model_cls.from_pretrained(source)
    except (OSError, ValueError) as exc:  # offline, unknown id, missing folder, wrong architecture
        loud_note(f"could not load pretrained weights from {source!r} ({str(exc).splitlines()[0][:160]}); "
                  f"building {cfg.vision_model} from the '{cfg.model_size}' preset with RANDOM weights")
        return None


def _build_hf_video(cfg: Settings, arch: Optional[dict], model_cls, config_cls, mean, std, lora_targets,
                    pooling: str) -> Backbone:
    model, source, pretrained = None, "", False
    if arch is None and cfg.pretrained:
        model = _hf_from_pretrained(model_cls, config_cls, cfg.pretrained, cfg)
        if model is not None:
            source, pretrained = cfg.pretrained, True
    if model is None:
        if arch is None:
            arch = dict(config=config_cls(**HF_PRESETS[cfg.model_size], num_frames=cfg.num_frames,
                                          image_size=cfg.image_size).to_dict(), pooling=pooling)
        model = model_cls(config_cls.from_dict(arch["config"]))
        source = f"random init from the '{cfg.model_size}' preset"
    arch = dict(config=model.config.to_dict(), pooling=pooling)
    image_size, frames = model.config.image_size, model.config.num_frames
    if (image_size, frames) != (cfg.image_size, cfg.num_frames):
        raise UsageError(f"the {cfg.vision_model} weights expect {frames} frames of {image_size}px, got "
                         f"--num_frames {cfg.num_frames} --image_size {cfg.image_size}; set those flags to match")
    return Backbone(HFVideoEncoder(model), "video", model.config.hidden_size, mean, std, pretrained, source, arch,
                    lora_targets)


def build_timesformer(cfg: Settings, arch: Optional[dict] = None) -> Backbone:
    from transformers import TimesformerConfig, TimesformerModel
    return _build_hf_video(cfg, arch, TimesformerModel, TimesformerConfig, KINETICS_MEAN, KINETICS_STD,
                           ["qkv"], pooling="cls")


def build_videomae(cfg: Settings, arch: Optional[dict] = None) -> Backbone:
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


def build_timm_backbone(cfg: Settings, arch: Optional[dict] = None) -> Backbone:
    name = cfg.vision_model
    family = _timm_family(name)
    if arch is None:
        if cfg.model_size != "base" and family is None:
            raise UsageError(f"--model_size {cfg.model_size} is defined for vit* and swin* timm models only; "
                             f"use --model_size base for {name}")
        kwargs = dict(img_size=cfg.image_size, **(TIMM_PRESETS[family].get(cfg.model_size, {}) if family else {}))
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
        from language import hub_offline_mode, hub_reachable
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


VISION_BACKBONES: dict[str, Callable[..., Backbone]] = {
    "timesformer": build_timesformer,
    "videomae": build_videomae,
    "swin_tiny_patch4_window7_224": build_timm_backbone,
    "vit_small_patch16_224": build_timm_backbone,
}


def vision_model_choices() -> list[str]:
    return list(VISION_BACKBONES)


def check_vision_model(name: str) -> None:
    """A registry name or any timm model name; otherwise a UsageError listing the choices."""
    if name in VISION_BACKBONES:
        return
    import timm
    if timm.is_model(name):
        return
    candidates = list(VISION_BACKBONES) + timm.list_models()
    raise UsageError(f"unknown --vision_model {name!r}{nearest(name, candidates)}; choose one of "
                     f"{', '.join(VISION_BACKBONES)} or any timm model name (python -c 'import timm; "
                     f"print(timm.list_models())')")


def build_backbone(cfg: Settings, arch: Optional[dict] = None) -> Backbone:
    check_vision_model(cfg.vision_model)
    builder = VISION_BACKBONES.get(cfg.vision_model, build_timm_backbone)
    return builder(cfg, arch)


# ----------------------------------------------------------------------------------------------------------------
# LoRA and freezing
# ----------------------------------------------------------------------------------------------------------------
def lora_targets(cfg: Settings, backbone: Backbone) -> list[str]:
    if cfg.lora_target_modules.strip().lower() != "auto":
        return [m.strip() for m in cfg.lora_target_modules.split(",") if m.strip()]
    if not backbone.lora_targets:
        raise UsageError(f"no default LoRA target modules for {cfg.vision_model}; pass "
                         f"--lora_target_modules with the names of its nn.Linear layers (comma-separated)")
    return backbone.lora_targets


def apply_lora(module: nn.Module, targets: list[str], r: int, alpha: float, dropout: float,
               fan_in_fan_out: bool = False) -> nn.Module:
    """Wrap ``module`` with peft LoRA; only adapter weights stay trainable. ``fan_in_fan_out`` for GPT-2's Conv1D."""
    from peft import LoraConfig, get_peft_model
    config = LoraConfig(r=r, lora_alpha=alpha, lora_dropout=dropout, target_modules=targets, bias="none",
                        fan_in_fan_out=fan_in_fan_out)
    try:
        return get_peft_model(module, config)
    except ValueError as exc:
        raise UsageError(f"LoRA could not attach to {targets}: {str(exc).splitlines()[0][:200]}; "
                         f"check --lora_target_modules") from None


def freeze(module: nn.Module) -> None:
    for p in module.parameters():
        p.requires_grad_(False)


def count_parameters(model: nn.Module) -> tuple[int, int]:
    """(total, trainable)"""
    total = sum(p.numel() for p in model.parameters())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return total, trainable


# ----------------------------------------------------------------------------------------------------------------
# The classifier
# ----------------------------------------------------------------------------------------------------------------
def classification_loss(logits: torch.Tensor, labels: torch.Tensor, label_smoothing: float,
                        reduction: str = "mean") -> torch.Tensor:
    """Cross-entropy in fp32 with label smoothing: logits [B, C], labels [B] -> scalar, or [B] with 'none'."""
    return nn.functional.cross_entropy(logits.float(), labels, label_smoothing=label_smoothing, reduction=reduction)


@dataclass
class ClassifierOutput(ModelOutput):
    loss: Optional[torch.Tensor] = None
    logits: Optional[torch.Tensor] = None


class VideoClassifier(nn.Module):
    """pixel_values [B, T, C, H, W] -> logits [B, num_classes] (+ loss when labels are given)."""

    batch_keys = {"pixel_values": "pixel_values", "labels": "labels"}  # forward argument -> batch field

    def __init__(self, backbone: Backbone, cfg: Settings, num_classes: int):
        super().__init__()
        self.kind = backbone.kind
        self.pooling = backbone.arch.get("pooling", "cls")
        self.backbone = backbone.module
        dim = backbone.feature_dim
        if backbone.kind == "frame":
            dim = cfg.fusion_dim or backbone.feature_dim
            try:
                self.temporal = TemporalFusionEncoder(backbone.feature_dim, dim, cfg.fusion,
                                                      max_len=max(cfg.num_frames, 64), **fusion_options(cfg))
            except ValueError as exc:  # a fusion setting that does not fit this width (heads, head_dim, ...)
                raise UsageError(str(exc)) from exc
        self.head = nn.Sequential(nn.LayerNorm(dim), nn.Dropout(cfg.head_dropout), nn.Linear(dim, num_classes))
        self.label_smoothing = cfg.label_smoothing
        self.num_classes = num_classes

    def features(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """[B, T, C, H, W] -> clip features [B, D]."""
        if pixel_values.dim() != 5:
            raise ValueError(f"expected pixel_values [B, T, C, H, W], got shape {tuple(pixel_values.shape)}")
        out = self.backbone(pixel_values)
        if self.kind == "frame":
            return self.temporal(out)  # out: [B, T, D_in]
        return out[:, 0] if self.pooling == "cls" else out.mean(dim=1)  # out: [B, L, D]

    def forward(self, pixel_values: torch.Tensor, labels: Optional[torch.Tensor] = None) -> ClassifierOutput:
        logits = self.head(self.features(pixel_values))  # [B, num_classes]
        loss = None
        if labels is not None:
            loss = classification_loss(logits, labels, self.label_smoothing)
        return ClassifierOutput(loss=loss, logits=logits)


class VideoTokenEncoder(nn.Module):
    """The backbone as a token source for a language model: [B, T, C, H, W] -> [B, L, D_vision], L <= max_tokens.

    A video backbone gives all its tokens, a per-frame backbone one token per frame; longer sequences are
    average-pooled (in order) down to ``max_tokens``.
    """

    def __init__(self, backbone: nn.Module, max_tokens: int):
        super().__init__()
        self.backbone, self.max_tokens = backbone, max_tokens

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        if pixel_values.dim() != 5:
            raise ValueError(f"expected pixel_values [B, T, C, H, W], got shape {tuple(pixel_values.shape)}")
        tokens = self.backbone(pixel_values)  # [B, L, D]
        if tokens.shape[1] > self.max_tokens:
            tokens = nn.functional.adaptive_avg_pool1d(tokens.transpose(1, 2), self.max_tokens).transpose(1, 2)
        return tokens


class VisionLanguageClassifier(nn.Module):
    """Video tokens projected into a BERT-family encoder's embedding space, joined with text tokens.

        [CLS] video_1 .. video_L [SEP] (text_1 .. text_n [SEP] pad ..)  -> encoder -> masked mean --+-> MLP head
        video_1 .. video_L (projected, before the encoder)                     -> mean -------------+

    Video tokens come from ``VideoTokenEncoder``. Token type 0 marks the video segment, 1 the text. Text is
    right-padded and masked, so padding never changes the result. Without ``use_text`` the video alone goes through
    the encoder. The joint summary is the masked mean of the encoder's output (the pooling sentence encoders such
    as MiniLM are trained with; reading [CLS] alone left training at chance for 4 epochs). The head also gets the
    mean projected video token directly: with text, the pretrained encoder's attention at first goes to the real
    words, and without this path training stayed at chance for 8 epochs on the playback task (BENCHMARKS.md). The
    head is an MLP so it can combine what the video shows with what the text says.
    """

    def __init__(self, backbone: Backbone, language, cfg: Settings, num_classes: int):
        super().__init__()
        self.video = VideoTokenEncoder(backbone.module, cfg.max_video_tokens)
        self.lm = language.module
        self.tokenizer = language.tokenizer
        config = self.lm.config
        width = config.hidden_size
        self.project = nn.Sequential(nn.Linear(backbone.feature_dim, width), nn.GELU(), nn.Linear(width, width))
        # the head reads [video summary; joint summary]: an MLP, so it can combine what the video shows with what the
        # text says (e.g. "played backwards" flips the direction seen), which one linear layer cannot
        self.head = nn.Sequential(nn.LayerNorm(2 * width), nn.Dropout(cfg.head_dropout), nn.Linear(2 * width, width),
                                  nn.GELU(), nn.Linear(width, num_classes))
        self.use_text, self.max_text_tokens = cfg.use_text, cfg.max_text_tokens
        self.max_video_tokens = cfg.max_video_tokens
        self.use_token_types = getattr(config, "type_vocab_size", 0) >= 2
        self.cls_id = self.tokenizer.cls_token_id if self.tokenizer.cls_token_id is not None else \
            self.tokenizer.bos_token_id
        self.sep_id = self.tokenizer.sep_token_id if self.tokenizer.sep_token_id is not None else \
            self.tokenizer.eos_token_id
        if self.cls_id is None:  # Qwen2 has no [CLS]/<bos>: its end-of-text marks the start (issue 9)
            self.cls_id = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else self.sep_id
        from language import LAST_TOKEN_POOLING
        self.last_token_pooling = config.model_type in LAST_TOKEN_POOLING  # decoders: the last real token's state
        self.pad_id = self.tokenizer.pad_token_id or 0
        longest = 2 + self.max_video_tokens + (self.max_text_tokens + 1 if self.use_text else 0)
        if longest > config.max_position_embeddings:
            raise UsageError(f"{longest} tokens (video + text) exceed the language model's "
                             f"{config.max_position_embeddings} positions; lower --max_video_tokens or "
                             f"--max_text_tokens")
        self.label_smoothing = cfg.label_smoothing
        self.num_classes = num_classes
        self.batch_keys = dict(VideoClassifier.batch_keys, **({"text": "hint"} if self.use_text else {}))
        self._warned_truncation = False

    def text_ids(self, texts: list[str], device) -> tuple[torch.Tensor, torch.Tensor]:
        """Texts -> (ids [B, n], mask [B, n]): each text's tokens then [SEP], right-padded; long texts truncated."""
        pieces = self.tokenizer(list(texts), add_special_tokens=False)["input_ids"]
        if any(len(p) > self.max_text_tokens for p in pieces) and not self._warned_truncation:
            longest = max(len(p) for p in pieces)
            warnings.warn(f"text of {longest} tokens truncated to --max_text_tokens {self.max_text_tokens}",
                          stacklevel=2)
            self._warned_truncation = True
        pieces = [p[: self.max_text_tokens] + [self.sep_id] for p in pieces]
        width = max(len(p) for p in pieces)
        ids = torch.full((len(pieces), width), self.pad_id, dtype=torch.long)
        mask = torch.zeros(len(pieces), width, dtype=torch.long)
        for row, p in enumerate(pieces):
            ids[row, : len(p)] = torch.tensor(p)
            mask[row, : len(p)] = 1
        return ids.to(device), mask.to(device)

    def forward(self, pixel_values: torch.Tensor, labels: Optional[torch.Tensor] = None,
                text: Optional[list[str]] = None) -> ClassifierOutput:
        video = self.project(self.video(pixel_values))  # [B, L, D_lm]
        batch, device = video.shape[0], video.device
        embed = self.lm.get_input_embeddings()
        marker = lambda token_id: embed(torch.full((batch, 1), token_id, device=device))  # noqa: E731  [B, 1, D]
        parts = [marker(self.cls_id), video.to(embed.weight.dtype), marker(self.sep_id)]
        mask = [torch.ones(batch, video.shape[1] + 2, dtype=torch.long, device=device)]
        if self.use_text:
            if text is None or len(text) != batch:
                raise ValueError(f"this model reads text (--use_text True): pass one text per video, got "
                                 f"{None if text is None else len(text)} for {batch} videos")
            ids, text_mask = self.text_ids(text, device)
            parts.append(embed(ids))
            mask.append(text_mask)
        inputs = torch.cat(parts, dim=1)  # [B, 2 + L (+ n), D]
        attention_mask = torch.cat(mask, dim=1)
        kwargs = {}
        if self.use_token_types:
            kwargs["token_type_ids"] = torch.cat([torch.zeros_like(mask[0])] + mask[1:], dim=1)  # 0 video, 1 text
        if self.last_token_pooling:
            from language import last_token_pool, real_token_positions
            hidden = self.lm(inputs_embeds=inputs, attention_mask=attention_mask,
                             position_ids=real_token_positions(attention_mask)).last_hidden_state
            pooled = last_token_pool(hidden, attention_mask)  # [B, D]
        else:
            hidden = self.lm(inputs_embeds=inputs, attention_mask=attention_mask, **kwargs).last_hidden_state
            keep = attention_mask.unsqueeze(-1).to(hidden.dtype)  # [B, S, 1]
            pooled = (hidden * keep).sum(1) / keep.sum(1)  # masked mean of the joint sequence: [B, D]
        # the projected video tokens also reach the head directly, so the video encoder learns even while the
        # language model's attention still favours the (real-word) text tokens over the new video tokens
        logits = self.head(torch.cat([video.mean(1).to(pooled.dtype), pooled], dim=-1))  # [B, num_classes]
        loss = None
        if labels is not None:
            loss = classification_loss(logits, labels, self.label_smoothing)
        return ClassifierOutput(loss=loss, logits=logits)


class MultiViewClassifier(nn.Module):
    """Test-time views: pixel_values [B, V, T, C, H, W] -> the classifier's logits averaged over the V views
    [B, num_classes]; the loss is the classifier's loss (cross-entropy, same label smoothing) of those logits.

    Views run one at a time ([B, T, C, H, W] each), so memory stays that of single-view evaluation; the other
    inputs (text hints) are the same for every view.
    """

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model
        self.batch_keys = model.batch_keys
        self.label_smoothing = getattr(model, "label_smoothing", 0.0)

    def forward(self, pixel_values: torch.Tensor, labels: Optional[torch.Tensor] = None, **inputs
                ) -> ClassifierOutput:
        if pixel_values.dim() != 6:
            raise ValueError(f"expected pixel_values [B, V, T, C, H, W] (V = test clips x crops), got shape "
                             f"{tuple(pixel_values.shape)}")
        logits = torch.stack([self.model(pixel_values=pixel_values[:, v], **inputs).logits.float()
                              for v in range(pixel_values.shape[1])], dim=1).mean(1)  # [B, V, K] -> [B, K]
        loss = None
        if labels is not None:
            loss = classification_loss(logits, labels, self.label_smoothing)
        return ClassifierOutput(loss=loss, logits=logits)


@dataclass
class BuiltModel:
    model: nn.Module  # VideoClassifier, VisionLanguageClassifier or captioning.VideoCaptioner
    backbone: Backbone
    info: dict  # recorded in checkpoints and eval outputs
    language: Any = None  # language.LanguageModel with --use_vlm

    def write_assets(self, folder: str) -> None:
        """Files a checkpoint needs besides the weights: the language model's tokenizer."""
        if self.language is not None:
            from language import TOKENIZER_DIR
            self.language.tokenizer.save_pretrained(os.path.join(folder, TOKENIZER_DIR))


def build_model(cfg: Settings, num_classes: int, arch: Optional[dict] = None, verbose: bool = True,
                language_arch: Optional[dict] = None, checkpoint_folder: Optional[str] = None,
                caption_texts: Optional[list] = None) -> BuiltModel:
    """Backbone (+ LoRA / freezing) + fusion + head, or + language model with ``--use_vlm``.

    ``arch`` (and ``language_arch`` + ``checkpoint_folder`` for the language model and its tokenizer) rebuild a
    saved architecture without the Hub. ``caption_texts`` train the offline GPT-2's tokenizer.
    """
    if num_classes < 2 and not cfg.captioning:
        raise ValueError(f"need at least 2 classes, got {num_classes}")
    if cfg.modalities or cfg.model_config:  # issue 10: the composed multimodal model
        from compose import build_composed
        try:
            return build_composed(cfg, num_classes, arch, verbose, checkpoint_folder)
        except ValueError as exc:  # an encoder or fusion setting that does not fit a width (heads, head_dim, ...)
            raise UsageError(str(exc)) from exc
    if uses_qwen_vl(cfg):  # Qwen2-VL brings its own vision tower and processor (qwen_vl.py)
        from qwen_vl import build_qwen_vl
        return build_qwen_vl(cfg, language_arch, checkpoint_folder, caption_texts, verbose)
    backbone = build_backbone(cfg, arch)
    if not backbone.pretrained and arch is None and verbose:
        loud_note(f"{cfg.vision_model}: NO PRETRAINED WEIGHTS - {backbone.source} "
                  f"(pass --pretrained <hub id or folder> to start from trained weights). "
                  f"Recorded as \"pretrained\": false in this run's outputs.")
    adapt_backbone(cfg, backbone, announce=verbose and arch is None)
    language = None
    if cfg.use_vlm:
        language = build_language_model(cfg, language_arch, checkpoint_folder, caption_texts, verbose)
        model = build_vision_language_model(cfg, backbone, language, num_classes)
    else:
        model = VideoClassifier(backbone, cfg, num_classes)
    total, trainable = count_parameters(model)
    info = dict(vision_model=cfg.vision_model, model_size=cfg.model_size, backbone_kind=backbone.kind,
                fusion=cfg.fusion if backbone.kind == "frame" and not cfg.use_vlm else "none",
                pretrained=backbone.pretrained, weights_source=backbone.source, arch=copy.deepcopy(backbone.arch),
                mean=list(backbone.mean), std=list(backbone.std), params_total=total, params_trainable=trainable,
                lora_targets=lora_targets(cfg, backbone) if cfg.use_lora_vision else [])
    if language is not None:
        info.update(language_model=default_language_model(cfg), language_model_source=language.source,
                    language_model_pretrained=language.pretrained, language_arch=copy.deepcopy(language.arch),
                    task="captioning" if cfg.captioning else "classification")
    if verbose:
        joined = f"{info['fusion']} fusion" if language is None else f"+ {info['language_model']} ({language.source})"
        print(f"model: {cfg.vision_model} ({backbone.kind} backbone, {joined}) | "
              f"params total {total:,} | trainable {trainable:,} ({100.0 * trainable / max(total, 1):.2f}%)")
    return BuiltModel(model, backbone, info, language)


def uses_qwen_vl(cfg: Settings) -> bool:
    from qwen_vl import is_qwen_vl_name
    return cfg.use_vlm and cfg.captioning and is_qwen_vl_name(default_language_model(cfg))


def rebuild_from_checkpoint(cfg: Settings, run_config: dict, folder: str) -> BuiltModel:
    """The model a checkpoint folder holds: its saved architecture (no Hub, no download) with its weights loaded.
    ``run_config`` is the folder's run_config.json (checkpointing.read_run_config)."""
    from checkpointing import load_weights
    info = run_config["model_info"]
    built = build_model(cfg, len(run_config["class_names"]), arch=info["arch"], verbose=False,
                        language_arch=info.get("language_arch"), checkpoint_folder=folder)
    built.model.load_state_dict(load_weights(folder))
    return built


def build_language_model(cfg: Settings, language_arch: Optional[dict], checkpoint_folder: Optional[str],
                         caption_texts: Optional[list], verbose: bool):
    """The language model (+ LoRA / freezing): loaded (Hub, folder, offline fallback) or rebuilt from a checkpoint."""
    from language import load_causal_lm, load_text_encoder, rebuild_language_model
    announce = loud_note if verbose else (lambda message: None)
    name = default_language_model(cfg)
    if language_arch is not None:
        language = rebuild_language_model(language_arch, checkpoint_folder, cfg.captioning)
    elif cfg.captioning:
        language = load_causal_lm(name, caption_texts or [], cfg.language_model_size, announce)
    else:
        language = load_text_encoder(name, announce)
    adapt_language_model(cfg, language, announce if language_arch is None else (lambda message: None))
    return language


def adapt_backbone(cfg: Settings, backbone: Backbone, announce: bool) -> None:
    """--use_lora_vision (peft LoRA on the backbone's attention) or --freeze_visionbackbone, in place; ``announce``
    warns when either meets a randomly initialised backbone. Shared with the composed model (compose.py)."""
    if cfg.use_lora_vision:
        backbone.module = apply_lora(backbone.module, lora_targets(cfg, backbone), cfg.lora_r, cfg.lora_alpha,
                                     cfg.lora_dropout)
    elif cfg.freeze_visionbackbone:
        freeze(backbone.module)
    if (cfg.use_lora_vision or cfg.freeze_visionbackbone) and not backbone.pretrained and announce:
        what = "LoRA" if cfg.use_lora_vision else "--freeze_visionbackbone"
        loud_note(f"{what} on a RANDOMLY INITIALISED backbone: the backbone has learned nothing, so only the "
                  f"adapters/head learn, from random features. Point --pretrained at trained weights (a Hub id, "
                  f"or a local folder such as a model this repo trained and exported).")


def adapt_language_model(cfg: Settings, language, announce: Callable[[str], None]) -> None:
    """--use_lora_llm (peft LoRA) or --freeze_language_model on ``language.module``, in place; ``announce`` warns
    when either meets a randomly initialised language model. Shared with the composed model's text encoder."""
    if cfg.use_lora_llm:
        if not language.lora_targets:
            raise UsageError(f"no default LoRA targets for the {language.arch.get('model_type')} language model; "
                             f"--use_lora_llm supports BERT-family encoders and GPT-2")
        targets = [t.strip() for t in cfg.lora_llm_target_modules.split(",") if t.strip()] \
            if cfg.lora_llm_target_modules else language.lora_targets
        language.module = apply_lora(language.module, targets, cfg.lora_llm_r or cfg.lora_r,
                                     cfg.lora_alpha if cfg.lora_llm_alpha is None else cfg.lora_llm_alpha,
                                     cfg.lora_dropout if cfg.lora_llm_dropout is None else cfg.lora_llm_dropout,
                                     fan_in_fan_out=language.causal and language.arch.get("model_type") == "gpt2")
    elif cfg.freeze_language_model:
        freeze(language.module)
    if (cfg.use_lora_llm or cfg.freeze_language_model) and not language.pretrained:
        what = "--use_lora_llm" if cfg.use_lora_llm else "--freeze_language_model"
        announce(f"{what} on a RANDOMLY INITIALISED language model: it has learned nothing, so only the adapters "
                 f"and the projector learn. Online, --language_model gpt2 loads the pretrained GPT-2.")


def build_vision_language_model(cfg: Settings, backbone: Backbone, language, num_classes: int) -> nn.Module:
    if not cfg.captioning:
        model = VisionLanguageClassifier(backbone, language, cfg, num_classes)
    else:
        from captioning import VideoCaptioner
        encoder = VideoTokenEncoder(backbone.module, cfg.max_video_tokens)
        model = VideoCaptioner(encoder, backbone.feature_dim, language.module, language.tokenizer,
                               max_caption_tokens=cfg.max_caption_tokens)
        model.batch_keys = {"pixel_values": "pixel_values", "captions": "caption",
                            **({"prompts": "hint"} if cfg.use_text else {})}
    model.language_model_pretrained = language.pretrained  # train_code.param_groups: its weights get a lower lr
    return model
