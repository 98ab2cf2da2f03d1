"""Temporal fusion after a per-frame backbone (the OmniQ design).

    per-frame features [B, T, D_in] -> Linear to D -> [CLS] + frames -> + temporal position + modality type
    -> fusion layers [B, 1 + T, D] -> CLS [B, D]

Every fusion layer has one interface, ``layer(x [B, L, D], padding_mask [B, L] bool, True = pad) -> [B, L, D]``,
so the same slot can also fuse video tokens with text tokens. ``models/registry.py`` ``FUSIONS`` is the only
place names are looked up; a new layer is one class here and one entry there.

``mean`` is the frame-averaging baseline: no temporal layers, no positions, masked mean over frames. It sees the
frames as an unordered set, so it cannot tell a clip from the same clip played backwards.

``bottleneck`` is the multimodal bottleneck transformer (MBT; Nagrani et al., "Attention Bottlenecks for Multimodal
Fusion", NeurIPS 2021). Its input is the concatenation of M modality *segments* (``segments`` = their lengths,
e.g. [1 + T_video, 1 + T_audio]); every modality has its own transformer layers, and from layer
``bottleneck_layer`` on the modalities exchange information only through ``bottleneck_tokens`` shared tokens z::

    layer l < bottleneck_layer:   x_m <- Layer_m^l(x_m)                                  (no exchange)
    layer l >= bottleneck_layer:  [x_m, z_m] <- Layer_m^l([x_m, z])   for every modality m
                                  z <- mean over the modalities present of z_m

z as updated by layer l is read at layer l + 1, so a modality's tokens hear from the others only from layer
``bottleneck_layer + 1`` on (``bottleneck_layer >= depth - 1`` means no exchange at all: late fusion).
Each attention gets the padding mask of its segment (the bottleneck tokens are never padding), so padded tokens
change nothing. A modality missing for a sample (its whole segment is padding) is left out of the bottleneck
average. The other layers accept ``segments`` and ignore it (they attend over the whole sequence).
"""
from __future__ import annotations

from typing import Optional

import torch
from torch import nn

from videolab.core.errors import UsageError
from videolab.models.ssm import Mamba2Mixer, MambaMixer


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

    def forward(self, x: torch.Tensor, padding_mask: Optional[torch.Tensor] = None, segments=None) -> torch.Tensor:
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

    def forward(self, x: torch.Tensor, padding_mask: Optional[torch.Tensor] = None, segments=None) -> torch.Tensor:
        # x: [B, L, D]; padding_mask: [B, L], True where padded (at one end: see ssm.SelectiveSSM)
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

    def forward(self, x: torch.Tensor, padding_mask: Optional[torch.Tensor] = None, segments=None) -> torch.Tensor:
        return x


def attention_safe_mask(mask: torch.Tensor) -> torch.Tensor:
    """A key padding mask [B, L] whose fully padded rows keep position 0 visible: attention over no key at all is
    NaN. Only rows nobody reads (a missing modality) are affected."""
    empty = mask.all(dim=1)  # [B]
    if not empty.any():
        return mask
    mask = mask.clone()
    mask[empty, 0] = False
    return mask


class BottleneckFusion(nn.Module):
    """MBT: per-modality pre-norm transformer layers that exchange information only through a few shared bottleneck
    tokens from layer ``bottleneck_layer`` on (module docstring). x [B, L, D], padding_mask [B, L], segments =
    the M segment lengths (sum L; default one segment) -> [B, L, D]."""

    order_aware = True
    sees_whole_sequence = True
    takes_segments = True  # reads the modality segments (TokenFusion passes them)

    def __init__(self, dim: int, depth: int = 2, n_heads: int = 4, dropout: float = 0.1, bottleneck_tokens: int = 4,
                 bottleneck_layer: int = 0, num_modalities: int = 1, **_unused):
        super().__init__()
        if dim % n_heads:
            raise ValueError(f"fusion width {dim} is not divisible by fusion_n_heads {n_heads}; "
                             f"set --fusion_n_heads to a divisor of {dim} or change --fusion_dim")
        if bottleneck_tokens < 1 or not 0 <= bottleneck_layer <= depth:
            raise ValueError(f"bottleneck fusion needs bottleneck_tokens >= 1 and 0 <= bottleneck_layer <= depth "
                             f"({depth}), got {bottleneck_tokens} tokens from layer {bottleneck_layer}")

        def layer() -> nn.Module:
            return nn.TransformerEncoderLayer(dim, n_heads, dim_feedforward=4 * dim, dropout=dropout,
                                              activation="gelu", batch_first=True, norm_first=True)
        self.layers = nn.ModuleList(nn.ModuleList(layer() for _ in range(num_modalities)) for _ in range(depth))
        self.bottleneck = nn.Parameter(torch.zeros(1, bottleneck_tokens, dim))
        nn.init.trunc_normal_(self.bottleneck, std=0.02)
        self.bottleneck_layer, self.num_modalities = bottleneck_layer, num_modalities
        self.norm = nn.LayerNorm(dim)

    def forward(self, x: torch.Tensor, padding_mask: Optional[torch.Tensor] = None, segments=None) -> torch.Tensor:
        batch, length, _ = x.shape
        segments = [length] if segments is None else [int(n) for n in segments]
        if sum(segments) != length or len(segments) > self.num_modalities:
            raise ValueError(f"bottleneck fusion: segments {segments} must sum to the sequence length {length} and "
                             f"number at most {self.num_modalities} (the modalities it was built for)")
        if padding_mask is None:
            padding_mask = torch.zeros(batch, length, dtype=torch.bool, device=x.device)
        parts = list(x.split(segments, dim=1))  # M x [B, L_m, D]
        masks = padding_mask.split(segments, dim=1)  # M x [B, L_m]
        present = torch.stack([~m.all(dim=1) for m in masks], dim=1).to(x.dtype)  # [B, M]
        safe = [attention_safe_mask(m) for m in masks]
        z = self.bottleneck.expand(batch, -1, -1).to(x.dtype)  # [B, Z, D]
        no_pad = padding_mask.new_zeros(batch, z.shape[1])  # bottleneck tokens are never padding
        for depth, per_modality in enumerate(self.layers):
            if depth < self.bottleneck_layer:
                parts = [layer(p, src_key_padding_mask=m) for layer, p, m in zip(per_modality, parts, safe)]
                continue
            updates = []
            for k, (layer, m) in enumerate(zip(per_modality, safe)):
                own = parts[k].shape[1]
                out = layer(torch.cat([parts[k], z], dim=1), src_key_padding_mask=torch.cat([m, no_pad], dim=1))
                parts[k], z_k = out[:, :own], out[:, own:]  # [B, L_m, D], [B, Z, D]
                updates.append(z_k)
            weights = present  # [B, M]: a missing modality does not update z
            stacked = torch.stack(updates, dim=1)  # [B, M, Z, D]
            z = (stacked * weights[:, :, None, None]).sum(1) / weights.sum(1).clamp(min=1.0)[:, None, None]
        return self.norm(torch.cat(parts, dim=1))  # [B, L, D]


VIDEO_MODALITY = 0


def fusion_options(cfg) -> dict:
    """The fusion-layer keyword arguments from settings (``fusion_*`` keys)."""
    return dict(depth=cfg.fusion_depth, n_heads=cfg.fusion_n_heads, dropout=cfg.fusion_dropout,
                d_state=cfg.fusion_d_state, d_conv=cfg.fusion_d_conv, expand=cfg.fusion_expand,
                bidirectional=cfg.fusion_bidirectional, head_dim=cfg.fusion_head_dim,
                bottleneck_tokens=cfg.fusion_bottleneck_tokens, bottleneck_layer=cfg.fusion_bottleneck_layer)


# ----------------------------------------------------------------------------------------------------------------
# joining several modalities (the composed model)
# ----------------------------------------------------------------------------------------------------------------
class TokenFusion(nn.Module):
    """Per-modality tokens -> [CLS_m, tokens_m] for every modality -> a fusion layer -> mean of the present
    modalities' CLS outputs [B, D]. Sequence layers (transformer, mamba) get one sequence with the padding packed to
    its end (mamba's scan needs padding at one end); the bottleneck layer gets the modality segments."""

    def __init__(self, layer: nn.Module, dim: int, num_modalities: int):
        super().__init__()
        if not getattr(layer, "sees_whole_sequence", True):
            raise UsageError("a causal fusion layer cannot read per-modality CLS tokens; use --fusion_bidirectional "
                             "True with mamba fusion in the composed model")
        self.layer, self.out_dim = layer, dim
        self.segmented = getattr(layer, "takes_segments", False)
        self.cls = nn.Parameter(torch.zeros(1, num_modalities, dim))
        nn.init.trunc_normal_(self.cls, std=0.02)

    def forward(self, tokens: list[torch.Tensor], masks: list[torch.Tensor]) -> torch.Tensor:
        batch = tokens[0].shape[0]
        absent = torch.stack([m.all(dim=1) for m in masks], dim=1)  # [B, M]
        x = torch.cat([torch.cat([self.cls[:, k:k + 1].expand(batch, -1, -1).to(t.dtype), t], 1)
                       for k, t in enumerate(tokens)], dim=1)  # [B, L, D], L = sum(1 + L_m)
        mask = torch.cat([torch.cat([absent[:, k:k + 1], m], 1) for k, m in enumerate(masks)], dim=1)  # [B, L]
        segments = [1 + t.shape[1] for t in tokens]
        if self.segmented:
            out = self.layer(x, mask, segments=segments)
        else:
            order = torch.sort(mask.to(torch.uint8), dim=1, stable=True).indices  # real tokens first, in order
            packed = self.layer(x.gather(1, order[..., None].expand_as(x)), mask.gather(1, order))
            out = torch.empty_like(packed).scatter_(1, order[..., None].expand_as(packed), packed)  # unpacked
        starts = torch.tensor([0] + segments[:-1], device=x.device).cumsum(0)  # CLS positions [M]
        cls = out[:, starts]  # [B, M, D]
        present = (~absent).unsqueeze(-1).to(cls.dtype)  # [B, M, 1]
        return (cls * present).sum(1) / present.sum(1)  # [B, D]


class ConcatFusion(nn.Module):
    """Late fusion: the masked mean of every modality's tokens (zeros for a missing modality), concatenated:
    M x [B, L_m, D] -> [B, M * D]."""

    joins_modalities = True  # takes the modalities' token lists itself (no TokenFusion around it)

    def __init__(self, dim: int, num_modalities: int):
        super().__init__()
        self.out_dim = dim * num_modalities

    def forward(self, tokens: list[torch.Tensor], masks: list[torch.Tensor]) -> torch.Tensor:
        pooled = []
        for t, m in zip(tokens, masks):
            keep = (~m).unsqueeze(-1).to(t.dtype)  # [B, L_m, 1]
            pooled.append((t * keep).sum(1) / keep.sum(1).clamp(min=1.0))  # [B, D]
        return torch.cat(pooled, dim=-1)
