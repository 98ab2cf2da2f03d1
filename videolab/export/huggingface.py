"""Export folders in the Hugging Face format: ``save_pretrained`` / ``from_pretrained``, Auto classes, PEFT.

``python main.py ... --export_dir DIR`` (after training, or with ``--eval_only --checkpoint ...``) writes::

    DIR/config.json                      VideoClassifierConfig: the model settings and saved architecture, num_frames,
                                         image_size, id2label / label2id, image_mean / image_std
    DIR/model.safetensors                the weights (a LoRA run: the backbone's base weights + the trained rest)
    DIR/video_preprocessor_config.json   VideoMAEVideoProcessor: resize short side, centre crop, rescale, normalise
                                         (what data.transforms.preprocess_video does; frames are sampled by the caller)
    DIR/adapter/                         a LoRA run without --merge_lora: adapter_config.json and
                                         adapter_model.safetensors (PEFT), relative to the exported model

Loading::

    from videolab.models.hf import VideoClassifierForVideoClassification, register_auto_classes
    model = VideoClassifierForVideoClassification.from_pretrained(DIR)
    register_auto_classes()                       # then the Auto classes know the model type
    model = AutoModelForVideoClassification.from_pretrained(DIR)
    model = PeftModel.from_pretrained(model, f"{DIR}/adapter")      # LoRA adapters, if exported apart
    processor = AutoVideoProcessor.from_pretrained(DIR)

``load_exported(DIR)`` does the last three. With ``--merge_lora True`` the adapters are merged into the weights
(``merge_and_unload``) and DIR holds a plain model; merged and unmerged give the same logits.

The wrapper (``models/hf.py`` ``VideoClassifierForVideoClassification``) holds the repo's ``VideoClassifier``
rebuilt from the config's settings and architecture, so every backbone / fusion the registry knows exports.

The composed multimodal model is a ``PreTrainedModel`` itself: :func:`save_composed` writes it with its
processors (Whisper feature extractor, video processor, tokenizer), :func:`load_composed` reads them back.
"""
from __future__ import annotations

import copy
import dataclasses
import os
import re
from typing import Optional

import torch

from videolab.core.errors import UsageError
from videolab.core.files import atomic_folder, write_json
from videolab.core.settings import DATA, FIELDS, MODEL, Settings
from videolab.models.classifier import VideoClassifier
from videolab.models.compose import MultimodalClassifier
from videolab.models.hf import VideoClassifierConfig, VideoClassifierForVideoClassification, register_auto_classes

ADAPTER_DIR = "adapter"


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


def video_processor(image_size: int, mean, std):
    """The preprocessing of ``data.transforms.preprocess_video`` as a transformers video processor: resize the
    short side to ``image_size``, centre crop, rescale, normalise with ``mean`` / ``std``."""
    from transformers import VideoMAEVideoProcessor
    return VideoMAEVideoProcessor(size={"shortest_edge": image_size}, crop_size={"height": image_size,
                                                                                  "width": image_size},
                                  image_mean=list(mean), image_std=list(std), do_sample_frames=False)


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
    with atomic_folder(folder) as tmp:
        hf_model.save_pretrained(tmp)
        video_processor(cfg.image_size, info["mean"], info["std"]).save_pretrained(tmp)
        if adapter is not None:
            save_adapter(hf_model, *adapter, os.path.join(tmp, ADAPTER_DIR))
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


# ----------------------------------------------------------------------------------------------------------------
# the composed multimodal model
# ----------------------------------------------------------------------------------------------------------------
def save_composed(model: MultimodalClassifier, class_names: list, folder: str) -> list[str]:
    """save_pretrained of the model (config.json with the composition, model.safetensors) and its processors:
    the Whisper feature extractor (preprocessor_config.json) for audio, a video processor for video, the text
    encoder's tokenizer (tokenizer_config.json, tokenizer.json ...) for text."""
    from transformers import WhisperFeatureExtractor
    model.config.id2label = dict(enumerate(class_names))
    model.config.label2id = {name: i for i, name in enumerate(class_names)}
    with atomic_folder(folder) as tmp:
        model.save_pretrained(tmp)
        if "audio" in model.modalities:
            WhisperFeatureExtractor().save_pretrained(tmp)  # its defaults: what data/audio.py computes
        if "video" in model.modalities:
            size = model.config.settings.get("image_size", Settings().image_size)
            video_processor(size, model.config.image_mean, model.config.image_std).save_pretrained(tmp)
        if isinstance(model.lm, torch.nn.Module):
            model.encoders["text"].tokenizer.save_pretrained(tmp)
    return sorted(os.listdir(folder))


def load_composed(folder: str, allowed_target_prefixes: Optional[str] = None):
    """(model, {"feature_extractor": WhisperFeatureExtractor or None, "video_processor": ... or None,
    "tokenizer": the text encoder's tokenizer or None})."""
    from transformers import AutoTokenizer, AutoVideoProcessor, WhisperFeatureExtractor
    tokenizer = None
    if os.path.isfile(os.path.join(folder, "tokenizer_config.json")):
        tokenizer = AutoTokenizer.from_pretrained(folder)
    model = MultimodalClassifier.from_pretrained(folder, allowed_target_prefixes=allowed_target_prefixes,
                                                 tokenizer=tokenizer)
    processors = dict(feature_extractor=None, video_processor=None, tokenizer=tokenizer)
    if os.path.isfile(os.path.join(folder, "preprocessor_config.json")):
        processors["feature_extractor"] = WhisperFeatureExtractor.from_pretrained(folder)
    if os.path.isfile(os.path.join(folder, "video_preprocessor_config.json")):
        processors["video_processor"] = AutoVideoProcessor.from_pretrained(folder)
    return model.eval(), processors


# ----------------------------------------------------------------------------------------------------------------
# a pretrained backbone
# ----------------------------------------------------------------------------------------------------------------
PRETRAIN_INFO_FILE = "pretraining.json"


def export_backbone(encoder: torch.nn.Module, folder: str, image_size: int, mean, std, pretraining: dict
                    ) -> list[str]:
    """A pretrained encoder (a transformers video model) as a ``save_pretrained`` folder (config.json,
    model.safetensors), its video processor and ``pretraining.json`` (objective, settings, results), written
    atomically. ``--pretrained folder`` loads it for fine-tuning. Returns the files written."""
    with atomic_folder(folder) as tmp:
        copy.deepcopy(encoder).cpu().save_pretrained(tmp)
        video_processor(image_size, mean, std).save_pretrained(tmp)
        write_json(os.path.join(tmp, PRETRAIN_INFO_FILE), pretraining)
    return sorted(os.listdir(folder))
