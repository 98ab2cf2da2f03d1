"""The video classifier: backbone (+ temporal fusion for per-frame backbones) + head, and multi-view testing.

Every model here returns ``ClassifierOutput(loss, logits)`` (``ModelOutput`` style), so the training loop never
branches on the model.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch
from torch import nn
from transformers.utils import ModelOutput

from videolab.core.errors import UsageError
from videolab.models.backbones import Backbone
from videolab.models.fusion import VIDEO_MODALITY, fusion_options
from videolab.models.registry import FUSIONS, build_backbone


class TemporalFusionEncoder(nn.Module):
    """Per-frame features [B, T, D_in] -> one clip vector [B, D]."""

    def __init__(self, in_dim: int, dim: int, fusion: str = "transformer", max_len: int = 1024,
                 num_modalities: int = 2, **layer_options):
        """``layer_options`` go to the fusion layer: depth, n_heads, dropout, d_state, d_conv, expand, bidirectional,
        head_dim."""
        super().__init__()
        temporal = FUSIONS.where(temporal=True)
        if fusion not in temporal:
            raise ValueError(f"unknown temporal fusion {fusion!r}; choose one of {', '.join(temporal)}")
        self.layer = FUSIONS.get(fusion)(dim=dim, **layer_options)
        self.order_aware = self.layer.order_aware
        self.proj = nn.Linear(in_dim, dim) if in_dim != dim else nn.Identity()
        self.layer_width = dim
        if self.order_aware:
            self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
            self.temporal_pos = nn.Parameter(torch.zeros(1, max_len + 1, dim))
            self.modality_type = nn.Embedding(num_modalities, dim)
            nn.init.trunc_normal_(self.cls_token, std=0.02)
            nn.init.trunc_normal_(self.temporal_pos, std=0.02)
        self.max_len = max_len

    def forward(self, frames: torch.Tensor, frame_mask: Optional[torch.Tensor] = None) -> torch.Tensor:
        """frames: [B, T, D_in]; frame_mask: [B, T] bool, True = padded frame. Returns [B, D]."""
        batch, length, _ = frames.shape
        if length > self.max_len:
            raise ValueError(f"got {length} frames, the fusion layer takes at most {self.max_len}")
        x = self.proj(frames)  # [B, T, D]
        if not self.order_aware:
            if frame_mask is None:
                return x.mean(dim=1)
            keep = (~frame_mask).unsqueeze(-1).to(x.dtype)  # [B, T, 1]
            return (x * keep).sum(1) / keep.sum(1).clamp(min=1.0)
        x = x + self.modality_type.weight[VIDEO_MODALITY]
        cls = self.cls_token.expand(batch, -1, -1)  # [B, 1, D]
        x = torch.cat([cls, x], dim=1) + self.temporal_pos[:, : length + 1]  # [B, 1 + T, D]
        mask = None
        if frame_mask is not None:
            mask = torch.cat([frame_mask.new_zeros(batch, 1), frame_mask], dim=1)  # CLS is never padding
        out = self.layer(x, mask)  # [B, 1 + T, D]
        if self.layer.sees_whole_sequence:
            return out[:, 0]  # CLS: [B, D]
        last = length if mask is None else (~mask).sum(1) - 1  # a causal layer: the last real token has seen all
        return out[torch.arange(batch, device=out.device), last]


def fp32_head(head: nn.Module, features: torch.Tensor) -> torch.Tensor:
    """The classification head outside autocast: features [B, D] -> fp32 logits [B, K]. Under bf16 the logits
    would be rounded to 8 bits of mantissa before the loss; the head is a few small layers, so fp32 costs nothing."""
    with torch.autocast(features.device.type, enabled=False):
        return head(features.float())


AUTO_FUSION_WIDTH = 128  # --fusion_dim none: a per-frame backbone's width, up to this


def fusion_width(fusion_dim: Optional[int], feature_dim: int) -> int:
    """The temporal fusion's width: --fusion_dim, 0 = the backbone's feature width (what checkpoints before
    the automatic width recorded), none = the backbone's width up to 128 (Swin-T's 768 features would otherwise
    give a 14 M-parameter fusion: 42 M in all instead of OmniQ's 28 M)."""
    if fusion_dim is None:
        return min(feature_dim, AUTO_FUSION_WIDTH)
    return fusion_dim or feature_dim


def classification_loss(logits: torch.Tensor, labels: torch.Tensor, label_smoothing: float,
                        reduction: str = "mean") -> torch.Tensor:
    """Cross-entropy in fp32 with label smoothing: logits [B, C], labels [B] (class indices) or [B, C] (soft targets
    of Mixup / CutMix, summing to 1) -> scalar, or [B] with 'none'."""
    labels = labels.float() if labels.is_floating_point() else labels
    return nn.functional.cross_entropy(logits.float(), labels, label_smoothing=label_smoothing, reduction=reduction)


@dataclass
class ClassifierOutput(ModelOutput):
    loss: Optional[torch.Tensor] = None
    logits: Optional[torch.Tensor] = None


class VideoClassifier(nn.Module):
    """pixel_values [B, T, C, H, W] -> logits [B, num_classes] (+ loss when labels are given)."""

    batch_keys = {"pixel_values": "pixel_values", "labels": "labels"}  # forward argument -> batch field

    def __init__(self, backbone: Backbone, cfg, num_classes: int):
        super().__init__()
        self.kind = backbone.kind
        self.pooling = backbone.arch.get("pooling", "cls")
        self.backbone = backbone.module
        dim = backbone.feature_dim
        if backbone.kind == "frame":
            dim = fusion_width(cfg.fusion_dim, backbone.feature_dim)
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
        logits = fp32_head(self.head, self.features(pixel_values))  # [B, num_classes]
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


def build_video_classifier(cfg, num_classes: int, arch: Optional[dict] = None) -> tuple[VideoClassifier, Backbone]:
    """The backbone of ``cfg`` (or the saved architecture ``arch``) with fusion and head; no LoRA / freezing."""
    backbone = build_backbone(cfg, arch)
    return VideoClassifier(backbone, cfg, num_classes), backbone
