"""What a video classifier attends to, for the analysis plots (``evaluation/plots.py`` draws them):

* :func:`fusion_attention`: per head, how much the temporal fusion's class token attends to each frame in the last
  Transformer fusion layer, [B, heads, T];
* :func:`attention_rollout`: attention rollout (Abnar & Zuidema 2020: the product over layers of the head-averaged
  attention plus the identity, row-normalised) of a ViT-style backbone, as one map per frame [B, T, h, w] -
  VideoMAE (joint space-time tokens, read with transformers' eager attention) and timm ViTs run per frame (their
  class token's row).

Both return None for a model they do not apply to (Mamba or mean fusion, Swin, TimeSformer's divided attention).
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


@torch.no_grad()
def attention_rollout(model: nn.Module, pixel_values: torch.Tensor) -> Optional[torch.Tensor]:
    """pixel_values [B, T, C, H, W] -> [B, T, h, w] (each frame's map sums to 1 over its patches), or None."""
    backbone = getattr(model, "backbone", None)
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
