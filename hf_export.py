"""The video classifiers in the Hugging Face format: ``save_pretrained`` / ``from_pretrained``, Auto classes, PEFT.

``python main.py ... --export_dir DIR`` (after training, or with ``--eval_only --checkpoint ...``) writes::

    DIR/config.json                      VideoClassifierConfig: the model settings and saved architecture, num_frames,
                                         image_size, id2label / label2id, image_mean / image_std
    DIR/model.safetensors                the weights (a LoRA run: the backbone's base weights + the trained rest)
    DIR/video_preprocessor_config.json   VideoMAEVideoProcessor: resize short side, centre crop, rescale, normalise
                                         (what VLoader.preprocess_video does; frames are sampled by the caller)
    DIR/adapter/                         a LoRA run without --merge_lora: adapter_config.json and
                                         adapter_model.safetensors (PEFT), relative to the exported model

Loading::

    from hf_export import VideoClassifierForVideoClassification, register_auto_classes
    model = VideoClassifierForVideoClassification.from_pretrained(DIR)
    register_auto_classes()                       # then the Auto classes know the model type
    model = AutoModelForVideoClassification.from_pretrained(DIR)
    model = PeftModel.from_pretrained(model, f"{DIR}/adapter")      # LoRA adapters, if exported apart
    processor = AutoVideoProcessor.from_pretrained(DIR)

``load_exported(DIR)`` does the last three. With ``--merge_lora True`` the adapters are merged into the weights
(``merge_and_unload``) and DIR holds a plain model; merged and unmerged give the same logits.

The wrapper (``VideoClassifierForVideoClassification``) holds the repo's ``VideoClassifier`` rebuilt from the
config's settings and architecture (``build_model``), so every backbone / fusion the registry knows exports. Two
things are written by hand because transformers' loader assumes its own model code: the model is built on a real
device rather than the meta device (timm and our fusion layers compute buffers at construction), and buffers that
are not saved (``persistent=False``, e.g. Swin's relative position index) are restored after loading, since
``from_pretrained`` re-creates them empty.
"""
from __future__ import annotations

import copy
import dataclasses
import os
import re
from typing import Optional

import torch
from transformers import PretrainedConfig, PreTrainedModel

from build_model import IMAGENET_MEAN, IMAGENET_STD, VideoClassifier, build_model
from settings import DATA, FIELDS, MODEL, Settings, UsageError, settings_from_dict

MODEL_TYPE = "video-understanding-classifier"
ADAPTER_DIR = "adapter"


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


class VideoClassifierForVideoClassification(KeepsUnsavedBuffers, PreTrainedModel):
    """pixel_values [B, T, C, H, W] -> ``logits`` [B, num_labels] (+ ``loss`` with ``labels`` [B])."""

    config_class = VideoClassifierConfig
    base_model_prefix = "classifier"
    main_input_name = "pixel_values"

    def __init__(self, config: VideoClassifierConfig, classifier: Optional[VideoClassifier] = None):
        super().__init__(config)
        if classifier is None:
            cfg = settings_from_dict(config.settings)
            classifier = build_model(cfg, config.num_labels, arch=config.arch, verbose=False).model
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


def to_pretrained(model: VideoClassifier, info: dict, class_names: list, cfg: Settings
                  ) -> VideoClassifierForVideoClassification:
    """Wrap a trained classifier (no LoRA, or LoRA already merged/unloaded) for ``save_pretrained``; shares its
    weights. ``info`` is the run's model_info (build_model): it holds the architecture and the normalisation."""
    check_exportable(model)
    settings = {k: v for k, v in cfg.to_dict().items() if FIELDS[k].metadata["group"] in (MODEL, DATA)
                and k != "data_root"}
    settings.update(use_lora_vision=False, pretrained=None)  # the weights file holds every weight
    config = VideoClassifierConfig(settings=settings, arch=info["arch"], image_mean=info["mean"],
                                   image_std=info["std"], id2label=dict(enumerate(class_names)),
                                   label2id={name: i for i, name in enumerate(class_names)})
    return VideoClassifierForVideoClassification(config, classifier=model)


def check_exportable(model) -> None:
    if not isinstance(model, VideoClassifier):
        raise UsageError(f"the Hugging Face export covers the video classifiers, got a {type(model).__name__}; "
                         f"vision + language checkpoints run with inference.py. Drop --export_dir")


def video_processor(cfg: Settings, info: dict):
    """The preprocessing of VLoader.preprocess_video as a transformers video processor."""
    from transformers import VideoMAEVideoProcessor
    return VideoMAEVideoProcessor(size={"shortest_edge": cfg.image_size},
                                  crop_size={"height": cfg.image_size, "width": cfg.image_size},
                                  image_mean=list(info["mean"]), image_std=list(info["std"]), do_sample_frames=False)


def export_pretrained(model: VideoClassifier, info: dict, class_names: list, cfg: Settings, folder: str,
                      merge_lora: bool = False) -> list[str]:
    """Write ``folder`` (see the module docstring); the trained model is not changed. Returns the files written."""
    check_exportable(model)
    model = copy.deepcopy(model).cpu().eval()
    adapter = None
    if cfg.use_lora_vision:
        lora = model.backbone  # peft.PeftModel around the backbone
        if merge_lora:
            model.backbone = lora.merge_and_unload()
        else:
            adapter = (adapter_state(lora), lora.peft_config["default"])
            model.backbone = lora.unload()  # base weights, LoRA layers removed, nothing merged
    hf_model = to_pretrained(model, info, class_names, cfg)
    hf_model.save_pretrained(folder)
    video_processor(cfg, info).save_pretrained(folder)
    if adapter is not None:
        save_adapter(hf_model, *adapter, os.path.join(folder, ADAPTER_DIR))
    return sorted(os.path.relpath(os.path.join(root, f), folder) for root, _, files in os.walk(folder) for f in files)


def adapter_state(lora) -> dict[str, torch.Tensor]:
    """LoRA weights of a PeftModel around the backbone, named as in a PeftModel around the exported model."""
    from peft import get_peft_model_state_dict
    inner = "base_model.model."
    return {f"{inner}classifier.backbone.{key[len(inner):]}": value
            for key, value in get_peft_model_state_dict(lora).items()}


def save_adapter(hf_model: VideoClassifierForVideoClassification, state: dict, trained_config, folder: str) -> None:
    """PEFT's save_pretrained for adapters on the exported model's backbone (the same layers training adapted)."""
    from peft import get_peft_model, set_peft_model_state_dict
    targets = trained_config.target_modules
    names = "|".join(re.escape(t) for t in ([targets] if isinstance(targets, str) else sorted(targets)))
    config = dataclasses.replace(trained_config, target_modules=rf"classifier\.backbone\..*\.({names})",
                                 base_model_name_or_path=None)
    peft_model = get_peft_model(hf_model, config)
    result = set_peft_model_state_dict(peft_model, state)
    if result.unexpected_keys:
        raise RuntimeError(f"LoRA weights did not map onto the exported model: {result.unexpected_keys[:3]}")
    peft_model.save_pretrained(folder)


def load_exported(folder: str):
    """An exported folder -> (model, video processor): LoRA adapters applied when ``adapter/`` is there."""
    from transformers import AutoModelForVideoClassification, AutoVideoProcessor
    register_auto_classes()
    model = AutoModelForVideoClassification.from_pretrained(folder)
    if os.path.isdir(os.path.join(folder, ADAPTER_DIR)):
        from peft import PeftModel
        model = PeftModel.from_pretrained(model, os.path.join(folder, ADAPTER_DIR))
    return model.eval(), AutoVideoProcessor.from_pretrained(folder)
