"""What a video classifier attends to, for the analysis plots (``evaluation/plots.py`` draws them):

* :func:`fusion_attention`: per head, how much the temporal fusion's class token attends to each frame in the last
  Transformer fusion layer, [B, heads, T];
* :func:`attention_rollout`: attention rollout (Abnar & Zuidema 2020: the product over layers of the head-averaged
  attention plus the identity, row-normalised) of a ViT-style backbone, as one map per frame [B, T, h, w] -
  VideoMAE (joint space-time tokens, read with transformers' eager attention), TimeSformer (divided space-time
  attention: each block's temporal and spatial attention written out as token-to-token matrices over the whole
  clip, :func:`divided_attention_matrices`) and timm ViTs run per frame (their class token's row); with or
  without LoRA adapters.

Both return None for a model they do not apply to (Mamba or mean fusion, Swin).
"""
from __future__ import annotations

import contextlib
from typing import Optional

import torch
from torch import nn

from videolab.models.backbones import FrameEncoder, HFVideoEncoder
from videolab.models.fusion import TransformerFusion


@torch.no_grad()
def fusion_attention(model: nn.Module, pixel_values: torch.Tensor) -> Optional[torch.Tensor]:
    """pixel_values [B, T, C, H, W] -> [B, heads, T]: the class token's attention to each frame in the last layer of
    a Transformer fusion, every head apart (each row sums to 1 with the class token's share to itself left out)."""
    temporal = getattr(model, "temporal", None)
    layer = getattr(temporal, "layer", None)
    if not isinstance(layer, TransformerFusion):
        return None
    last = layer.layers.layers[-1]  # nn.TransformerEncoderLayer, norm_first
    seen = {}
    handle = last.register_forward_pre_hook(lambda module, args, kwargs: seen.update(x=args[0]), with_kwargs=True)
    try:
        model.eval()
        model(pixel_values=pixel_values)
    finally:
        handle.remove()
    x = last.norm1(seen["x"])  # [B, 1 + T, D]
    _, weights = last.self_attn(x, x, x, need_weights=True, average_attn_weights=False)  # [B, heads, 1 + T, 1 + T]
    to_frames = weights[:, :, 0, 1:]  # [B, heads, T]
    return to_frames / to_frames.sum(-1, keepdim=True).clamp(min=1e-12)


def rollout(attentions: list[torch.Tensor]) -> torch.Tensor:
    """[N, heads, L, L] per layer -> [N, L, L]: prod_l norm(mean_heads(A_l) + I)."""
    result = None
    for a in attentions:
        a = a.float().mean(1)  # [N, L, L]
        a = a + torch.eye(a.shape[-1], device=a.device)
        a = a / a.sum(-1, keepdim=True)
        result = a if result is None else a @ result
    return result


@contextlib.contextmanager
def _timm_attention_probs(vit: nn.Module, store: list):
    """Capture every block's attention probabilities (the input of attn_drop, with timm's fused kernel off)."""
    handles, fused = [], []
    for block in vit.blocks:
        fused.append(block.attn.fused_attn)
        block.attn.fused_attn = False
        handles.append(block.attn.attn_drop.register_forward_hook(lambda m, i, o: store.append(o)))
    try:
        yield
    finally:
        for block, was in zip(vit.blocks, fused):
            block.attn.fused_attn = was
        for h in handles:
            h.remove()


def divided_attention_matrices(temporal: torch.Tensor, spatial: torch.Tensor, batch: int) -> list[torch.Tensor]:
    """One TimeSformer block's divided attention as two [B, 1, L, L] token-to-token matrices over the whole clip
    (L = 1 + N * T; token 0 is the class token, token 1 + n * T + t patch n of frame t, transformers' order).

    temporal [B * N, heads, T, T]: each patch position attends over the frames; the class token is left alone.
    spatial [B * T, heads, 1 + N, 1 + N]: each frame's patches attend over that frame's patches and a copy of the
    class token; the class token's update is the mean over the frames' copies. Every row sums to 1."""
    time_attn = temporal.float().mean(1)  # [B * N, T, T]
    space_attn = spatial.float().mean(1)  # [B * T, 1 + N, 1 + N]
    frames = time_attn.shape[-1]
    patches = space_attn.shape[-1] - 1
    size = 1 + patches * frames
    eye_n, eye_t = torch.eye(patches, device=temporal.device), torch.eye(frames, device=temporal.device)
    t_full = torch.zeros(batch, size, size, device=temporal.device)
    t_full[:, 0, 0] = 1.0
    t_full[:, 1:, 1:] = torch.einsum("bnst,nm->bnsmt", time_attn.view(batch, patches, frames, frames),
                                     eye_n).reshape(batch, size - 1, size - 1)
    s = space_attn.view(batch, frames, patches + 1, patches + 1)  # [B, T, 1 + N, 1 + N]
    s_full = torch.zeros(batch, size, size, device=temporal.device)
    s_full[:, 1:, 1:] = torch.einsum("btnm,ts->bntms", s[:, :, 1:, 1:], eye_t).reshape(batch, size - 1, size - 1)
    s_full[:, 1:, 0] = s[:, :, 1:, 0].transpose(1, 2).reshape(batch, -1)  # patch (n, t) -> class token
    s_full[:, 0, 0] = s[:, :, 0, 0].mean(1)
    s_full[:, 0, 1:] = (s[:, :, 0, 1:] / frames).transpose(1, 2).reshape(batch, -1)  # class token -> patch (n, t)
    return [t_full[:, None], s_full[:, None]]


@contextlib.contextmanager
def _timesformer_attention_probs(hf: nn.Module, temporal: list, spatial: list):
    """Capture every block's temporal and spatial attention probabilities (the input of their attn_drop)."""
    handles = []
    for layer in hf.encoder.layer:
        handles.append(layer.temporal_attention.attention.attn_drop.register_forward_hook(
            lambda m, i, o: temporal.append(o)))
        handles.append(layer.attention.attention.attn_drop.register_forward_hook(lambda m, i, o: spatial.append(o)))
    try:
        yield
    finally:
        for h in handles:
            h.remove()


def _timesformer_rollout(hf: nn.Module, pixel_values: torch.Tensor) -> torch.Tensor:
    """TimeSformer (divided space-time attention) -> [B, T, h, w]: the class token's row of the rollout (the
    classifier reads the class token)."""
    batch, frames = pixel_values.shape[:2]
    temporal, spatial = [], []
    with _timesformer_attention_probs(hf, temporal, spatial):
        hf(pixel_values=pixel_values)
    matrices = [m for t, s in zip(temporal, spatial) for m in divided_attention_matrices(t, s, batch)]
    share = rollout(matrices)[:, 0, 1:]  # [B, N * T], patch n of frame t at n * T + t
    side = hf.config.image_size // hf.config.patch_size
    return share.view(batch, side, side, frames).permute(0, 3, 1, 2)  # [B, T, h, w]


@torch.no_grad()
def attention_rollout(model: nn.Module, pixel_values: torch.Tensor) -> Optional[torch.Tensor]:
    """pixel_values [B, T, C, H, W] -> [B, T, h, w] (each frame's map sums to 1 over its patches), or None."""
    backbone = getattr(model, "backbone", None)
    if hasattr(backbone, "get_base_model"):  # LoRA: peft wraps the backbone; its adapters stay in the layers
        backbone = backbone.get_base_model()
    batch, frames = pixel_values.shape[:2]
    model.eval()
    if isinstance(backbone, HFVideoEncoder) and backbone.model.config.model_type == "videomae":
        hf, config = backbone.model, backbone.model.config
        previous = config._attn_implementation
        hf.set_attn_implementation("eager")
        try:
            attentions = hf(pixel_values=pixel_values, output_attentions=True).attentions  # [B, heads, L, L] each
        finally:
            hf.set_attn_implementation(previous)
        # the classifier mean-pools the tokens: a token's share is its column mean of the rollout
        share = rollout(list(attentions)).mean(1)  # [B, L]
        slots, side = frames // config.tubelet_size, config.image_size // config.patch_size
        maps = share.view(batch, slots, side, side).repeat_interleave(config.tubelet_size, dim=1)  # [B, T, h, w]
    elif isinstance(backbone, HFVideoEncoder) and backbone.model.config.model_type == "timesformer" and \
            backbone.model.config.attention_type == "divided_space_time":
        maps = _timesformer_rollout(backbone.model, pixel_values)
    elif isinstance(backbone, FrameEncoder) and hasattr(backbone.model, "blocks") and \
            hasattr(backbone.model, "patch_embed") and getattr(backbone.model, "cls_token", None) is not None:
        vit, store = backbone.model, []
        with _timm_attention_probs(vit, store):
            vit(pixel_values.flatten(0, 1))
        extra = vit.num_prefix_tokens
        side = int(round((store[0].shape[-1] - extra) ** 0.5))
        share = rollout(store)[:, 0, extra:]  # the class token's row, over the patches: [B * T, h * w]
        maps = share.view(batch, frames, side, side)
    else:
        return None
    return maps / maps.sum((-2, -1), keepdim=True).clamp(min=1e-12)
