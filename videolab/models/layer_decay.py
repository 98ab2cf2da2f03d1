"""Layer-wise learning-rate decay (BEiT / VideoMAE fine-tuning): the deeper a backbone block, the closer its lr to
the head's.

A ViT-style backbone of L blocks gets layer ids 0 (patch / tube embedding, position and class tokens), 1..L (its
blocks) and L + 1 (what follows the blocks: the final norm, and every part outside the backbone: fusion, head,
projector). A parameter of layer i trains at ``lr * decay ** (L + 1 - i)``: the head at lr, the last block at
lr * decay, the embedding at lr * decay ** (L + 1).

Layer ids come from timm's own ``group_matcher`` for timm backbones (ViT, Swin, and any timm model that has one:
``timm.models.group_parameters``, the grouping ``timm.optim.param_groups_layer_decay`` uses), and from the module
names for the transformers video models (``embeddings.*`` and ``encoder.layer.<i>.*``). timm's
``param_groups_layer_decay`` itself is not used: it groups one timm model, while a video classifier is a backbone
(timm or transformers, possibly wrapped by peft) plus fusion and head, and only the backbone's blocks decay.
"""
from __future__ import annotations

import re

from torch import nn

from videolab.core.errors import UsageError
from videolab.models.backbones import FrameEncoder, HFVideoEncoder

HF_BLOCK = re.compile(r"(?:^|\.)encoder\.layer\.(\d+)\.")
HF_EMBEDDING = re.compile(r"(?:^|\.)embeddings\.")


def _timm_model(encoder: FrameEncoder) -> nn.Module:
    """The timm model inside a FrameEncoder (peft wraps it as base_model.model.model)."""
    for module in encoder.modules():
        if hasattr(module, "group_matcher"):
            return module
    raise UsageError("--layer_decay: this timm backbone has no group_matcher (no known block structure); use "
                     "--layer_decay 1, or a ViT / Swin / VideoMAE / TimeSformer backbone")


def timm_layer_ids(encoder: FrameEncoder) -> tuple[dict[int, int], int]:
    """({id(parameter): layer id}, top id) from timm's fine-grained group_matcher: 0 = stem, then one id per block
    (timm puts the final norm with the last block); the head's level, top, is one above the last block, as for the
    transformers models (``timm.optim.param_groups_layer_decay`` would train the last block at the head's lr)."""
    from timm.models import group_parameters
    model = _timm_model(encoder)
    by_name = group_parameters(model, model.group_matcher(coarse=False), reverse=True)  # name -> group id
    ids = {id(p): by_name[name] for name, p in model.named_parameters() if name in by_name}
    return ids, max(ids.values(), default=0) + 1


def hf_layer_ids(encoder: HFVideoEncoder) -> tuple[dict[int, int], int]:
    """({id(parameter): layer id}, top id) of a transformers video model: embeddings 0, encoder.layer.<i> i + 1,
    the rest (a final norm, when the model has one) and the head's level num_layers + 1."""
    blocks = {}
    for name, p in encoder.named_parameters():
        block = HF_BLOCK.search(name)
        blocks[id(p)] = int(block.group(1)) + 1 if block else (0 if HF_EMBEDDING.search(name) else None)
    top = max((i for i in blocks.values() if i is not None), default=0) + 1
    return {k: top if v is None else v for k, v in blocks.items()}, top


def backbone_layer_ids(model: nn.Module) -> list[tuple[dict[int, int], int]]:
    """One ({id(parameter): layer id}, top id) per ViT-style backbone inside ``model`` (a classifier has one)."""
    found = []
    for module in model.modules():
        if isinstance(module, HFVideoEncoder):
            found.append(hf_layer_ids(module))
        elif isinstance(module, FrameEncoder):
            found.append(timm_layer_ids(module))
    return found


def layer_lr_scales(model: nn.Module, decay: float) -> dict[int, float]:
    """id(parameter) -> lr multiplier ``decay ** (top - layer id)``, for the parameters of the backbones in
    ``model`` (the others, at the head's level, train at multiplier 1 and are absent)."""
    if decay >= 1.0:
        return {}
    backbones = backbone_layer_ids(model)
    if not backbones:
        raise UsageError("--layer_decay applies to a ViT-style vision backbone (VideoMAE, TimeSformer, timm ViT / "
                         "Swin); this model has none: use --layer_decay 1")
    scales = {}
    for ids, top in backbones:
        scales.update({pid: decay ** (top - layer) for pid, layer in ids.items()})
    return scales
