"""Temporal fusion after a per-frame backbone (the OmniQ design).

    per-frame features [B, T, D_in] -> Linear to D -> [CLS] + frames -> + temporal position + modality type
    -> fusion layers [B, 1 + T, D] -> CLS [B, D]

Every fusion layer has one interface, ``layer(x [B, L, D], padding_mask [B, L] bool, True = pad) -> [B, L, D]``,
so the same slot can also fuse video tokens with text tokens. ``FUSION_LAYERS`` is the only place names are
looked up; a new layer is one class and one entry.

``mean`` is the frame-averaging baseline: no temporal layers, no positions, masked mean over frames. It sees the
frames as an unordered set, so it cannot tell a clip from the same clip played backwards.
"""
from __future__ import annotations

from typing import Optional

import torch
from torch import nn

from ssm import Mamba2Mixer, MambaMixer


class TransformerFusion(nn.Module):
    """Pre-norm Transformer encoder layers over the token sequence, honouring the padding mask."""

    order_aware = True
    sees_whole_sequence = True  # token 0 (CLS) attends to every token

    def __init__(self, dim: int, depth: int = 2, n_heads: int = 4, dropout: float = 0.1, **_unused):
        super().__init__()
        if dim % n_heads:
            raise ValueError(f"fusion width {dim} is not divisible by fusion_n_heads {n_heads}; "
                             f"set --fusion_n_heads to a divisor of {dim} or change --fusion_dim")
        layer = nn.TransformerEncoderLayer(dim, n_heads, dim_feedforward=4 * dim, dropout=dropout,
                                           activation="gelu", batch_first=True, norm_first=True)
        self.layers = nn.TransformerEncoder(layer, depth, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(dim)

    def forward(self, x: torch.Tensor, padding_mask: Optional[torch.Tensor] = None) -> torch.Tensor:
        # x: [B, L, D]; padding_mask: [B, L], True where padded
        return self.norm(self.layers(x, src_key_padding_mask=padding_mask))


class MambaFusion(nn.Module):
    """Pre-norm residual Mamba layers (``x + mixer(rmsnorm(x))``), then a final RMSNorm.

    Bidirectional (default) scans both ways, so token 0 (CLS) sees every token; a causal (one-way) stack sees only
    what came before, so the encoder reads the last real token instead. Runs mamba-ssm's CUDA kernels when they are
    installed and the input is on a GPU, and a parallel pure-PyTorch scan everywhere else (ssm.py).
    """

    order_aware = True

    def __init__(self, dim: int, depth: int = 2, d_state: int = 16, d_conv: int = 4, expand: int = 2,
                 dropout: float = 0.1, bidirectional: bool = True, head_dim: int = 64, **_unused):
        super().__init__()
        self.sees_whole_sequence = bidirectional
        self.norms = nn.ModuleList(nn.RMSNorm(dim) for _ in range(depth))
        self.mixers = nn.ModuleList(self.build_mixer(dim, d_state, d_conv, expand, head_dim, bidirectional)
                                    for _ in range(depth))
        self.dropout = nn.Dropout(dropout)
        self.norm = nn.RMSNorm(dim)

    def forward(self, x: torch.Tensor, padding_mask: Optional[torch.Tensor] = None) -> torch.Tensor:
        # x: [B, L, D]; padding_mask: [B, L], True where padded
        for norm, mixer in zip(self.norms, self.mixers):
            x = x + self.dropout(mixer(norm(x), padding_mask))
        return self.norm(x)


    @staticmethod
    def build_mixer(dim, d_state, d_conv, expand, head_dim, bidirectional) -> nn.Module:
        return MambaMixer(dim, d_state, d_conv, expand, bidirectional)  # Mamba-1 has no heads


class Mamba2Fusion(MambaFusion):
    """:class:`MambaFusion` with Mamba-2 (SSD) mixers: one decay per head instead of per channel and state index,
    which turns the scan into chunked matrix products (ssm.py). Faster than Mamba-1 wherever no fused kernel runs
    the Mamba-1 scan (CPU, GPUs without mamba-ssm); ``head_dim`` channels per head."""

    @staticmethod
    def build_mixer(dim, d_state, d_conv, expand, head_dim, bidirectional) -> nn.Module:
        return Mamba2Mixer(dim, d_state, d_conv, expand, head_dim, bidirectional)


class MeanFusion(nn.Module):
    """Identity layer: the encoder then pools by masked mean (frame-averaging baseline)."""

    order_aware = False

    def __init__(self, dim: int, **_unused):
        super().__init__()

    def forward(self, x: torch.Tensor, padding_mask: Optional[torch.Tensor] = None) -> torch.Tensor:
        return x


FUSION_LAYERS: dict[str, type[nn.Module]] = {"transformer": TransformerFusion, "mamba": MambaFusion,
                                             "mamba2": Mamba2Fusion, "mean": MeanFusion}

VIDEO_MODALITY = 0


def fusion_options(cfg) -> dict:
    """The fusion-layer keyword arguments from settings (``fusion_*`` keys)."""
    return dict(depth=cfg.fusion_depth, n_heads=cfg.fusion_n_heads, dropout=cfg.fusion_dropout,
                d_state=cfg.fusion_d_state, d_conv=cfg.fusion_d_conv, expand=cfg.fusion_expand,
                bidirectional=cfg.fusion_bidirectional, head_dim=cfg.fusion_head_dim)


class TemporalFusionEncoder(nn.Module):
    """Per-frame features [B, T, D_in] -> one clip vector [B, D]."""

    def __init__(self, in_dim: int, dim: int, fusion: str = "transformer", max_len: int = 1024,
                 num_modalities: int = 2, **layer_options):
        """``layer_options`` go to the fusion layer: depth, n_heads, dropout, d_state, d_conv, expand, bidirectional,
        head_dim."""
        super().__init__()
        if fusion not in FUSION_LAYERS:
            raise ValueError(f"unknown fusion {fusion!r}; choose one of {sorted(FUSION_LAYERS)}")
        self.layer = FUSION_LAYERS[fusion](dim=dim, **layer_options)
        self.order_aware = self.layer.order_aware
        self.proj = nn.Linear(in_dim, dim) if in_dim != dim else nn.Identity()
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
