"""This repo's classifiers as ``transformers`` models: configs and ``PreTrainedModel`` wrappers that
``save_pretrained`` / ``from_pretrained`` round-trip (the export folders of ``videolab/export``, which carry this
module as their model code: ``auto_map`` in config.json, ``trust_remote_code=True`` to load).

Two things are written by hand because transformers' loader assumes its own model code: the model is built on a
real device rather than the meta device (timm and our fusion layers compute buffers at construction), and buffers
that are not saved (``persistent=False``, e.g. Swin's relative position index) are restored after loading, since
``from_pretrained`` re-creates them empty (:class:`KeepsUnsavedBuffers`).
"""
from __future__ import annotations

from typing import Optional

import torch
from transformers import PretrainedConfig, PreTrainedModel

from videolab.core.settings import Settings, settings_from_dict
from videolab.models.backbones import IMAGENET_MEAN, IMAGENET_STD
from videolab.models.classifier import VideoClassifier, build_video_classifier

MODEL_TYPE = "video-understanding-classifier"


class VideoClassifierConfig(PretrainedConfig):
    """Everything that rebuilds a ``VideoClassifier``: the model/data settings (``settings.Settings`` fields) and the
    backbone architecture the run recorded (``arch``), plus the labels and the input normalisation."""

    model_type = MODEL_TYPE

    def __init__(self, settings: Optional[dict] = None, arch: Optional[dict] = None,
                 image_mean: Optional[list] = None, image_std: Optional[list] = None, **kwargs):
        self.settings = dict(settings or {})
        self.arch = arch
        self.num_frames = self.settings.get("num_frames", Settings().num_frames)
        self.image_size = self.settings.get("image_size", Settings().image_size)
        self.image_mean = list(image_mean or IMAGENET_MEAN)
        self.image_std = list(image_std or IMAGENET_STD)
        super().__init__(**kwargs)


class KeepsUnsavedBuffers:
    """Mixin for a ``PreTrainedModel`` wrapped around modules built by our builders (timm, fusion layers): those
    compute some buffers at construction that ``state_dict`` leaves out (e.g. Swin's relative position index), so
    the model is built on a real device and ``from_pretrained`` puts those buffers back after loading. Call
    :meth:`remember_unsaved_buffers` at the end of ``__init__`` (before ``post_init``)."""

    def remember_unsaved_buffers(self) -> None:
        # (module, buffer name, value) of every non-persistent buffer
        self._unsaved_buffers = [(m, n, b.detach().clone()) for m in self.modules()
                                 for n, b in m.named_buffers(recurse=False) if n in m._non_persistent_buffers_set]

    @classmethod
    def get_init_context(cls, *args, **kwargs) -> list:
        """Build on a real device: construction computes buffers (timm, fusion) that the weights file lacks."""
        return [c for c in super().get_init_context(*args, **kwargs) if not isinstance(c, torch.device)]

    @classmethod
    def from_pretrained(cls, *args, **kwargs):
        loaded = super().from_pretrained(*args, **kwargs)
        model = loaded[0] if isinstance(loaded, tuple) else loaded  # (model, loading_info) with output_loading_info
        with torch.no_grad():
            for module, name, value in model._unsaved_buffers:
                module._buffers[name] = value.to(module._buffers[name].device)
        return loaded

    def _init_weights(self, module) -> None:
        """Nothing to do: the builders initialise every module, and from_pretrained then loads every weight."""


class TiesNestedWeights:
    """Mixin for a ``PreTrainedModel`` holding transformers models below its direct children (the captioner's
    GPT-2 sits in ``captioner.language_model``): transformers collects tied weights (GPT-2's ``lm_head`` = its
    token embedding) from direct children only, so ``save_pretrained`` would write one of the pair and
    ``from_pretrained`` leave the other random. This adds the nested models' ties, names prefixed."""

    def post_init(self) -> None:
        super().post_init()
        outer = []
        for name, module in self.named_modules():
            if name and isinstance(module, PreTrainedModel) and not any(name.startswith(o + ".") for o in outer):
                outer.append(name)
                self.all_tied_weights_keys.update({f"{name}.{k}": f"{name}.{v}"
                                                   for k, v in (module.all_tied_weights_keys or {}).items()})


HUB_ARGUMENTS = ("cache_dir", "force_download", "local_files_only", "token", "revision", "subfolder")


class LoadsFolderTokenizer:
    """Mixin for a ``PreTrainedModel`` built around a language model whose tokenizer is part of the model (it
    turns text into ids inside ``forward`` / ``generate``): ``from_pretrained(folder)`` also reads the tokenizer
    saved in the folder (a Hub id alike) and passes it to ``__init__`` as ``tokenizer``, unless one is given or
    :meth:`reads_tokenizer` says the config's model has none."""

    @classmethod
    def reads_tokenizer(cls, config: PretrainedConfig) -> bool:
        return True

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, *args, **kwargs):
        if kwargs.get("tokenizer") is None:
            from transformers import AutoTokenizer
            hub = {k: kwargs[k] for k in HUB_ARGUMENTS if kwargs.get(k) is not None}
            config = kwargs.get("config")
            if not isinstance(config, PretrainedConfig):
                config = cls.config_class.from_pretrained(pretrained_model_name_or_path, **hub)
            if cls.reads_tokenizer(config):  # the folder's code is trusted (it is running): its config may be read
                kwargs["tokenizer"] = AutoTokenizer.from_pretrained(pretrained_model_name_or_path,
                                                                    trust_remote_code=True, **hub)
        return super().from_pretrained(pretrained_model_name_or_path, *args, **kwargs)


class VideoClassifierForVideoClassification(KeepsUnsavedBuffers, PreTrainedModel):
    """pixel_values [B, T, C, H, W] -> ``logits`` [B, num_labels] (+ ``loss`` with ``labels`` [B])."""

    config_class = VideoClassifierConfig
    base_model_prefix = "classifier"
    main_input_name = "pixel_values"

    def __init__(self, config: VideoClassifierConfig, classifier: Optional[VideoClassifier] = None):
        super().__init__(config)
        if classifier is None:
            cfg = settings_from_dict(config.settings)
            classifier, _ = build_video_classifier(cfg, config.num_labels, arch=config.arch)
        self.classifier = classifier
        self.remember_unsaved_buffers()
        self.post_init()

    def forward(self, pixel_values: torch.Tensor, labels: Optional[torch.Tensor] = None, **kwargs):
        return self.classifier(pixel_values=pixel_values, labels=labels)


def register_auto_classes() -> None:
    """Make AutoConfig / AutoModel / AutoModelForVideoClassification load exported folders (idempotent)."""
    from transformers import AutoConfig, AutoModel, AutoModelForVideoClassification
    AutoConfig.register(MODEL_TYPE, VideoClassifierConfig, exist_ok=True)
    AutoModel.register(VideoClassifierConfig, VideoClassifierForVideoClassification, exist_ok=True)
    AutoModelForVideoClassification.register(VideoClassifierConfig, VideoClassifierForVideoClassification,
                                             exist_ok=True)
