"""The audio encoder of the composed model: Whisper's encoder in small, over the log-mel features that
``data/audio.py`` computes."""
from __future__ import annotations

import math
from typing import Optional

import torch
from torch import nn

from videolab.models.fusion import attention_safe_mask


def sinusoidal_positions(length: int, dim: int) -> torch.Tensor:
    """Whisper's fixed sinusoidal positions [length, dim] (sin in the first half, cos in the second)."""
    log_timescale = math.log(10000) / (dim // 2 - 1)
    inv = torch.exp(-log_timescale * torch.arange(dim // 2, dtype=torch.float32))
    scaled = torch.arange(length, dtype=torch.float32)[:, None] * inv[None]
    return torch.cat([scaled.sin(), scaled.cos()], dim=1)


class AudioEncoder(nn.Module):
    """Log-mel [B, n_mels, F] + attention mask [B, F] (1/True = real frame) -> (tokens [B, F', D], padding mask
    [B, F'] True = padded), F' = ceil(ceil(F / 2) / 2).

    Whisper's encoder in small: two GELU 1-D convolutions (kernel 3; the second and a third stride 2), fixed
    sinusoidal positions, pre-norm transformer layers. Padded frames are zeroed before every convolution (so a
    real frame next to padding sees the same zeros as at the end of an unpadded clip) and masked in attention.
    """

    def __init__(self, n_mels: int = 80, dim: int = 64, depth: int = 2, n_heads: int = 4, dropout: float = 0.1):
        super().__init__()
        if dim % n_heads or dim % 2:
            raise ValueError(f"audio width {dim} must be even and divisible by the {n_heads} heads; change "
                             f"--audio_dim or --fusion_n_heads")
        self.n_mels, self.dim = n_mels, dim
        self.convs = nn.ModuleList([nn.Conv1d(n_mels, dim, 3, padding=1), nn.Conv1d(dim, dim, 3, stride=2, padding=1),
                                    nn.Conv1d(dim, dim, 3, stride=2, padding=1)])
        layer = nn.TransformerEncoderLayer(dim, n_heads, dim_feedforward=4 * dim, dropout=dropout, activation="gelu",
                                           batch_first=True, norm_first=True)
        self.layers = nn.TransformerEncoder(layer, depth, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(dim)

    def forward(self, input_features: torch.Tensor, attention_mask: Optional[torch.Tensor] = None
                ) -> tuple[torch.Tensor, torch.Tensor]:
        if input_features.dim() != 3 or input_features.shape[1] != self.n_mels:
            raise ValueError(f"expected input_features [B, {self.n_mels}, F] (Whisper log-mel), got shape "
                             f"{tuple(input_features.shape)}")
        batch, _, frames = input_features.shape
        if attention_mask is None:
            attention_mask = torch.ones(batch, frames, dtype=torch.bool, device=input_features.device)
        if attention_mask.shape != (batch, frames):
            raise ValueError(f"expected audio_attention_mask [B, F] = {(batch, frames)}, got "
                             f"{tuple(attention_mask.shape)}")
        lengths = attention_mask.bool().sum(1)  # [B] real frames (the mask is a prefix: audio then padding)
        x = input_features
        for conv in self.convs:
            keep = torch.arange(x.shape[-1], device=x.device)[None] < lengths[:, None]  # [B, F_k]
            x = nn.functional.gelu(conv(x * keep[:, None].to(x.dtype)))  # [B, D, F_k+1]
            if conv.stride[0] == 2:
                lengths = (lengths + 1) // 2
        tokens = x.transpose(1, 2)  # [B, F', D]
        padding = torch.arange(tokens.shape[1], device=x.device)[None] >= lengths[:, None]  # [B, F']
        tokens = tokens + sinusoidal_positions(tokens.shape[1], self.dim).to(tokens)
        tokens = self.layers(tokens, src_key_padding_mask=attention_safe_mask(padding))
        return self.norm(tokens), padding
