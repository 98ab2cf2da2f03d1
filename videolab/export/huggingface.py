"""Export folders that the Hugging Face ecosystem loads without this repo.

``python main.py ... --export_dir DIR`` (after training, or with ``--eval_only --checkpoint ...``) writes the
model the run trained, in one of two forms:

* **stock classes** where the architecture is stock. A VideoMAE classifier (mean pooling, LayerNorm, Linear) *is*
  ``VideoMAEForVideoClassification``: its weights are renamed (``backbone.model.*`` -> ``videomae.*``, ``head.0``
  -> ``fc_norm``, ``head.2`` -> ``classifier``) with no key missing or left over, and the logits are the same.
  ``AutoModelForVideoClassification.from_pretrained(DIR)`` and ``pipeline("video-classification", model=DIR)``
  load it with transformers alone. Qwen2-VL runs are ``Qwen2VLForConditionalGeneration`` with its processor.
* **remote code** where the model is ours: timm + fusion classifiers, vision + BERT classifiers, GPT-2
  captioners, composed multimodal models, and TimeSformer (our head normalises the [CLS] token once more than
  ``TimesformerForVideoClassification``; ``models/hf_stock.py`` is the stock class plus that LayerNorm). The folder
  carries its model code (``export/remote_code.py``) and ``auto_map`` in config.json, so
  ``AutoModel....from_pretrained(DIR, trust_remote_code=True)`` works with transformers, torch and timm installed
  and nothing of this repo.

Every folder has ``config.json`` (labels, frames, frame size, normalisation), ``model.safetensors``, the
processor that prepares its inputs (``video_preprocessor_config.json``: resize the short side, centre crop,
rescale, normalise, as ``data/transforms.preprocess_video``; a tokenizer, a Whisper feature extractor, a
generation config where the model reads text, audio or writes text) and a model card (``README.md``, ``card.py``).

LoRA runs: the base weights (adapters unloaded) and ``adapter/``, a PEFT adapter folder (``PeftModel.from_pretrained
(model, DIR + "/adapter")``; its card names the base model), or with ``--merge_lora True`` the adapters merged into
the weights (``merge_and_unload``); both give the trained model's outputs. A Qwen2-VL run that trained only LoRA
adapters on a Hub model exports as the adapter folder alone, naming that model as its base (the base-model
reference); otherwise the base weights travel with the folder.

``--export_onnx True`` (video classifiers) adds ``model.onnx``, checked against PyTorch with onnxruntime
(``onnx.py``); ``--push_to_hub REPO_ID`` uploads the folder (``push.py``).

:func:`load_exported` / :func:`load_composed` read folders back inside this repo (any folder this module writes,
and the older ones without ``auto_map``).
"""
from __future__ import annotations

import copy
import json
import os
import re
from dataclasses import dataclass, field
from typing import Callable, Optional

import torch
from torch import nn

from videolab.core.files import atomic_folder, write_json
from videolab.core.settings import DATA, FIELDS, MODEL, Settings
from videolab.export import card as cards
from videolab.export.remote_code import write_remote_code
from videolab.models.captioner import generation_settings
from videolab.models.classifier import VideoClassifier
from videolab.models.compose import MultimodalClassifier
from videolab.models.hf import VideoClassifierConfig, VideoClassifierForVideoClassification, register_auto_classes

ADAPTER_DIR = "adapter"
ONNX_FILE = "model.onnx"
LORA_FLAGS = ("use_lora_vision", "use_lora_llm")


def files_in(folder: str) -> list[str]:
    return sorted(os.path.relpath(os.path.join(root, f), folder) for root, _, names in os.walk(folder)
                  for f in names)


def exported_settings(cfg: Settings) -> dict:
    """The model/data settings an exported config keeps to rebuild the model: no data location, no LoRA (the
    weights hold none: adapters are apart or merged), no pretrained source (the weights file holds every weight)."""
    settings = {k: v for k, v in cfg.to_dict().items() if FIELDS[k].metadata["group"] in (MODEL, DATA)
                and k != "data_root"}
    return dict(settings, **{flag: False for flag in LORA_FLAGS}, pretrained=None)


def labels(class_names: list) -> dict:
    return dict(id2label=dict(enumerate(class_names)), label2id={name: i for i, name in enumerate(class_names)})


# ----------------------------------------------------------------------------------------------------------------
# LoRA: apart (PEFT adapter folder) or merged
# ----------------------------------------------------------------------------------------------------------------
@dataclass
class LoraGroup:
    """One PEFT-wrapped part of a trained model: where it sat (``prefix``), its LoRA config, the full names of
    its adapted layers and its adapter weights (full names + ``.lora_A.weight`` ...), names of the trained model."""
    prefix: str
    config: object  # peft.LoraConfig
    modules: list
    state: dict


def strip_lora(model: nn.Module, merge: bool) -> tuple[nn.Module, list[LoraGroup]]:
    """A copy of ``model`` (CPU, eval) with every peft wrapper removed: adapters merged into the weights
    (``merge``), or unloaded and returned as :class:`LoraGroup` s. ``model`` itself is not changed."""
    from peft import PeftModel, get_peft_model_state_dict
    model = copy.deepcopy(model).cpu().eval()
    wrapped = [(name, module) for name, module in model.named_modules() if isinstance(module, PeftModel)]
    wrapped = [(n, m) for n, m in wrapped if not any(n.startswith(o + ".") for o, _ in wrapped if o and o != n)]
    groups = []
    inner = "base_model.model."
    for name, peft_model in wrapped:
        full = (lambda key, name=name: f"{name}.{key}" if name else key)
        if not merge:
            modules = [full(n[len(inner):]) for n, m in peft_model.named_modules()
                       if hasattr(m, "lora_A") and n.startswith(inner)]
            state = {full(k[len(inner):]): v for k, v in get_peft_model_state_dict(peft_model).items()}
            groups.append(LoraGroup(name, peft_model.peft_config["default"], modules, state))
        plain = peft_model.merge_and_unload() if merge else peft_model.unload()
        if not name:
            return plain, groups
        model.set_submodule(name, plain)
    return model, groups


def save_adapters(hf_model: nn.Module, groups: list[LoraGroup], rename: Callable[[str], str], folder: str,
                  base: Optional[str]) -> None:
    """PEFT's ``save_pretrained`` for the trained adapters on the exported model (``rename``: trained-model names
    -> exported-model names). One LoraConfig covers every group (exact layer names; ranks and alphas of the other
    groups in rank_pattern / alpha_pattern). ``base``: base_model_name_or_path (a Hub id), or None."""
    from peft import LoraConfig, get_peft_model, set_peft_model_state_dict
    first = groups[0].config
    targets = [rename(m) for g in groups for m in g.modules]
    others = [(rename(m), g.config) for g in groups[1:] for m in g.modules]
    config = LoraConfig(r=first.r, lora_alpha=first.lora_alpha, lora_dropout=first.lora_dropout, bias="none",
                        target_modules=targets,
                        fan_in_fan_out=any(g.config.fan_in_fan_out for g in groups),
                        rank_pattern={re.escape(m): c.r for m, c in others if c.r != first.r},
                        alpha_pattern={re.escape(m): c.lora_alpha for m, c in others
                                       if c.lora_alpha != first.lora_alpha})
    peft_model = get_peft_model(hf_model, config)
    state = {f"base_model.model.{rename(k)}": v for g in groups for k, v in g.state.items()}
    result = set_peft_model_state_dict(peft_model, state)
    missing = [k for k in result.missing_keys if "lora_" in k]
    if result.unexpected_keys or missing:
        raise RuntimeError(f"LoRA weights did not map onto the exported model: unexpected "
                           f"{list(result.unexpected_keys)[:3]}, missing {missing[:3]}")
    peft_model.save_pretrained(folder)
    with open(os.path.join(folder, "adapter_config.json")) as fh:
        saved = json.load(fh)
    if saved.get("base_model_name_or_path") != base:  # PEFT writes the wrapped model's _name_or_path
        write_json(os.path.join(folder, "adapter_config.json"), dict(saved, base_model_name_or_path=base))


def load_weights_into(hf_model: nn.Module, model: nn.Module, rename: Callable[[str], str]) -> None:
    """``model``'s weights into ``hf_model`` under their exported names; every key must match."""
    result = hf_model.load_state_dict({rename(k): v for k, v in model.state_dict().items()}, strict=False)
    if result.missing_keys or result.unexpected_keys:
        raise RuntimeError(f"the weights do not map onto {type(hf_model).__name__}: missing "
                           f"{result.missing_keys[:3]}, left over {result.unexpected_keys[:3]}")


def prefixed(prefix: str) -> Callable[[str], str]:
    return lambda key: f"{prefix}.{key}"


def renamer(pairs: list[tuple[str, str]]) -> Callable[[str], str]:
    """Rename by the first matching name prefix (``("backbone.model.", "videomae.")``...)."""
    def rename(key: str) -> str:
        for old, new in pairs:
            if key.startswith(old):
                return new + key[len(old):]
        raise KeyError(f"no exported name for {key!r}")
    return rename


# ----------------------------------------------------------------------------------------------------------------
# what every export shares: processors, the adapter folder, the card, ONNX
# ----------------------------------------------------------------------------------------------------------------
def video_processor(image_size: int, mean, std):
    """The preprocessing of ``data.transforms.preprocess_video`` as a transformers video processor: resize the
    short side to ``image_size``, centre crop, rescale, normalise with ``mean`` / ``std``."""
    from transformers import VideoMAEVideoProcessor
    return VideoMAEVideoProcessor(size={"shortest_edge": image_size}, crop_size={"height": image_size,
                                                                                  "width": image_size},
                                  image_mean=list(mean), image_std=list(std), do_sample_frames=False)


def preprocessing_text(image_size: int, mean, std) -> str:
    return (f"preprocessing (`video_preprocessor_config.json`, VideoMAEVideoProcessor): resize the short side to "
            f"{image_size} px, centre crop {image_size} x {image_size}, scale to [0, 1], normalise with mean "
            f"{[round(m, 4) for m in mean]} and std {[round(s, 4) for s in std]}")


@dataclass
class Export:
    """One export being written: the exported model and how it loads (for the adapter folder and the card)."""
    hf_model: nn.Module
    rename: Callable[[str], str]
    title: str
    task: str
    pipeline_tag: str
    route: str
    load: str  # Python that loads the folder (without the adapter)
    use: str = ""  # Python that runs it, after loading
    use_with_adapter: Optional[str] = None  # ... after applying the adapter, if not `use`
    code: dict = field(default_factory=dict)  # auto class -> "videolab.module:Class" (remote code)
    tags: list = field(default_factory=list)
    adapter_load: str = ""  # Python that applies adapter/ (after `load`)
    base_model: Optional[str] = None
    notes: list = field(default_factory=list)


def write_export(folder: str, export: Export, groups: list[LoraGroup], cfg: Settings, info: dict, report,
                 class_names: Optional[list], processors: list, repo_id: Optional[str] = None,
                 onnx_model: Optional[nn.Module] = None) -> list[str]:
    """Write ``folder`` atomically: model code (remote), config + weights, processors, adapter/, model.onnx,
    README.md. ``processors``: objects with ``save_pretrained``. Returns the files written."""
    onnx = None
    use = export.use_with_adapter if groups and export.use_with_adapter is not None else export.use
    with atomic_folder(folder) as tmp:
        if export.code:
            export.hf_model.config.auto_map = write_remote_code(tmp, export.code)
        export.hf_model.save_pretrained(tmp)
        for processor in processors:
            processor.save_pretrained(tmp)
        adapter = None
        if groups:
            where = os.path.join(tmp, ADAPTER_DIR)
            save_adapters(export.hf_model, groups, export.rename, where, repo_id)
            base = repo_id or "the export folder above (its config.json and model.safetensors)"
            cards.adapter_card(where, base, export.title, export.load + export.adapter_load + use)
            adapter = (f"`{ADAPTER_DIR}/`: the LoRA adapters (PEFT) the run trained. The weights here hold the "
                       f"adapted layers as the run started them (adapters unloaded, not merged) and every other "
                       f"trained part; applying the adapters gives the trained model.")
        if onnx_model is not None:
            from videolab.export.onnx import export_onnx
            onnx = export_onnx(onnx_model, os.path.join(tmp, ONNX_FILE), cfg.num_frames, cfg.image_size)
        mean, std = info.get("mean", ()), info.get("std", ())
        facts = cards.CardFacts(
            title=export.title, task=export.task, pipeline_tag=export.pipeline_tag, route=export.route,
            load=export.load + (export.adapter_load if groups else "") + use, settings=cfg.to_dict(), info=info,
            labels=class_names, report=report, files=files_in(tmp) + ["README.md"], tags=export.tags,
            base_model=export.base_model, adapter=adapter, onnx=onnx, notes=export.notes,
            preprocessing=preprocessing_text(cfg.image_size, mean, std) if mean else "")
        cards.write_card(tmp, facts)
    return files_in(folder)


# ----------------------------------------------------------------------------------------------------------------
# video classifiers
# ----------------------------------------------------------------------------------------------------------------
def classifier_route(model: VideoClassifier, info: dict) -> str:
    """``videomae`` (the stock class), ``timesformer`` (stock + the head's LayerNorm, remote code) or ``ours``."""
    config = info["arch"].get("config", {}) if model.kind == "video" else {}
    if config.get("model_type") == "videomae" and model.pooling == "mean" and config.get("use_mean_pooling", True):
        return "videomae"
    if config.get("model_type") == "timesformer" and model.pooling == "cls":
        return "timesformer"
    return "ours"


CLASSIFY = '\nlogits = model(**processor(videos=[frames], return_tensors="pt")).logits   # frames: uint8 [T, 3, H, W]'
PIPELINE_LOAD = '''
from transformers import pipeline
classify = pipeline("video-classification", model="{path}"{remote})   # decodes video files with torchcodec
print(classify("clip.mp4", top_k=3))
'''
PIPELINE_WITH_ADAPTER = '''
from transformers import pipeline   # decodes video files with torchcodec
classify = pipeline("video-classification", model=model.merge_and_unload(), video_processor=processor)
print(classify("clip.mp4", top_k=3))
'''


def to_pretrained(model: VideoClassifier, info: dict, class_names: list, cfg: Settings
                  ) -> VideoClassifierForVideoClassification:
    """Wrap a trained classifier (no LoRA, or LoRA already merged/unloaded) as this repo's transformers model;
    shares its weights. ``info`` is the run's model_info (build_model): it holds the architecture and the
    normalisation."""
    check_exportable(model)
    config = VideoClassifierConfig(settings=exported_settings(cfg), arch=info["arch"], image_mean=info["mean"],
                                   image_std=info["std"], **labels(class_names))
    return VideoClassifierForVideoClassification(config, classifier=model)


def check_exportable(model) -> None:
    if not isinstance(model, VideoClassifier):
        raise TypeError(f"expected a VideoClassifier, got a {type(model).__name__}")


def classifier_export(base: VideoClassifier, info: dict, class_names: list, cfg: Settings, path: str) -> Export:
    """The exported form of a classifier (LoRA already stripped)."""
    route = classifier_route(base, info)
    adapter_load = (f'\nfrom peft import PeftModel\nmodel = PeftModel.from_pretrained(model, "{path}", '
                    f'subfolder="{ADAPTER_DIR}")   # LoRA adapters')
    if route == "videomae":
        from transformers import VideoMAEConfig, VideoMAEForVideoClassification
        config = VideoMAEConfig.from_dict(dict(info["arch"]["config"], **labels(class_names)))
        hf_model = VideoMAEForVideoClassification(config)
        load = ('from transformers import AutoModelForVideoClassification, AutoVideoProcessor\n'
                f'model = AutoModelForVideoClassification.from_pretrained("{path}")   # VideoMAEForVideoClassification\n'
                f'processor = AutoVideoProcessor.from_pretrained("{path}")')
        use = CLASSIFY + PIPELINE_LOAD.format(path=path, remote="")
        export = Export(hf_model, renamer([("backbone.model.", "videomae."), ("head.0.", "fc_norm."),
                                           ("head.2.", "classifier.")]),
                        "VideoMAE video classifier", "video classification", "video-classification",
                        "the stock `transformers` class `VideoMAEForVideoClassification` (no remote code)", load, use,
                        tags=["videomae"], adapter_load=adapter_load)
    elif route == "timesformer":
        from videolab.models.hf_stock import TimesformerWithHeadNormConfig, \
            TimesformerWithHeadNormForVideoClassification
        arch = {k: v for k, v in info["arch"]["config"].items() if k != "model_type"}
        config = TimesformerWithHeadNormConfig.from_dict(dict(arch, **labels(class_names)))
        hf_model = TimesformerWithHeadNormForVideoClassification(config)
        load = ('from transformers import AutoModelForVideoClassification, AutoVideoProcessor\n'
                f'model = AutoModelForVideoClassification.from_pretrained("{path}", trust_remote_code=True)\n'
                f'processor = AutoVideoProcessor.from_pretrained("{path}")')
        use = CLASSIFY + PIPELINE_LOAD.format(path=path, remote=", trust_remote_code=True")
        module = "videolab.models.hf_stock"
        export = Export(hf_model, renamer([("backbone.model.", "timesformer."), ("head.0.", "fc_norm."),
                                           ("head.2.", "classifier.")]),
                        "TimeSformer video classifier", "video classification", "video-classification",
                        "remote code (`trust_remote_code=True`): `TimesformerForVideoClassification` plus one "
                        "LayerNorm on the [CLS] token before the classifier (`fc_norm`)", load, use,
                        code={"AutoConfig": f"{module}:TimesformerWithHeadNormConfig",
                              "AutoModel": f"{module}:TimesformerWithHeadNormForVideoClassification",
                              "AutoModelForVideoClassification": f"{module}:TimesformerWithHeadNormForVideoClassification"},
                        tags=["timesformer"], adapter_load=adapter_load,
                        notes=["TimesformerModel already normalises its output (final LayerNorm); this model's head "
                               "normalises the [CLS] token once more, which TimesformerForVideoClassification does "
                               "not and no choice of its weights can reproduce, so the folder carries the stock "
                               "class plus that LayerNorm as remote code (weights named as the stock class's)."])
    else:
        hf_model = to_pretrained(base, info, class_names, cfg)
        load = ('from transformers import AutoModelForVideoClassification, AutoVideoProcessor\n'
                f'model = AutoModelForVideoClassification.from_pretrained("{path}", trust_remote_code=True)\n'
                f'processor = AutoVideoProcessor.from_pretrained("{path}")')
        use = CLASSIFY + PIPELINE_LOAD.format(path=path, remote=", trust_remote_code=True")
        module = "videolab.models.hf"
        what = f"{cfg.vision_model} + {info.get('fusion', 'no')} fusion" if base.kind == "frame" else cfg.vision_model
        export = Export(hf_model, prefixed("classifier"), f"Video classifier ({what})", "video classification",
                        "video-classification", "remote code (`trust_remote_code=True`; needs torch, transformers"
                        + (" and timm)" if base.kind == "frame" else ")"), load, use,
                        code={"AutoConfig": f"{module}:VideoClassifierConfig",
                              "AutoModel": f"{module}:VideoClassifierForVideoClassification",
                              "AutoModelForVideoClassification": f"{module}:VideoClassifierForVideoClassification"},
                        tags=["timm"] if base.kind == "frame" else [], adapter_load=adapter_load)
    export.use_with_adapter = CLASSIFY + PIPELINE_WITH_ADAPTER
    load_weights_into(export.hf_model, base, export.rename)
    return export


def export_pretrained(model: VideoClassifier, info: dict, class_names: list, cfg: Settings, folder: str,
                      merge_lora: bool = False, report: Optional[dict] = None, onnx: bool = False,
                      repo_id: Optional[str] = None) -> list[str]:
    """Write ``folder`` for a trained video classifier (module docstring); the trained model is not changed.
    Returns the files written."""
    check_exportable(model)
    base, groups = strip_lora(model, merge_lora)
    export = classifier_export(base, info, class_names, cfg, repo_id or folder)
    onnx_model = strip_lora(model, True)[0] if onnx and groups else (base if onnx else None)
    return write_export(folder, export, groups, cfg, info, report, class_names,
                        [video_processor(cfg.image_size, info["mean"], info["std"])], repo_id, onnx_model)


def load_exported(folder: str):
    """An exported classifier folder -> (model, video processor), LoRA adapters applied when ``adapter/`` is
    there. Folders with model code load it (``trust_remote_code``); older ones without ``auto_map`` use this repo's
    classes (``register_auto_classes``)."""
    from transformers import AutoModelForVideoClassification, AutoVideoProcessor
    with open(os.path.join(folder, "config.json")) as fh:
        remote = "auto_map" in json.load(fh)
    if not remote:
        register_auto_classes()
    model = AutoModelForVideoClassification.from_pretrained(folder, trust_remote_code=remote)
    return with_adapter(model, folder).eval(), AutoVideoProcessor.from_pretrained(folder)


def with_adapter(model: nn.Module, folder: str) -> nn.Module:
    if os.path.isdir(os.path.join(folder, ADAPTER_DIR)):
        from peft import PeftModel
        model = PeftModel.from_pretrained(model, os.path.join(folder, ADAPTER_DIR))
    return model


# ----------------------------------------------------------------------------------------------------------------
# the composed multimodal model
# ----------------------------------------------------------------------------------------------------------------
def save_composed(model: MultimodalClassifier, class_names: list, folder: str, cfg: Optional[Settings] = None,
                  merge_lora: bool = False, report: Optional[dict] = None, repo_id: Optional[str] = None,
                  info: Optional[dict] = None) -> list[str]:
    """The composed model (config.json with the composition, model.safetensors, its code) and its processors:
    the Whisper feature extractor (preprocessor_config.json) for audio, a video processor for video, the text
    encoder's tokenizer for text; LoRA adapters apart (``adapter/``) or merged. ``cfg`` / ``info`` / ``report``:
    the run's settings, model info and eval.json, for the card."""
    from transformers import WhisperFeatureExtractor

    from videolab.models.compose import multimodal_info
    cfg = cfg or Settings(**{k: v for k, v in model.config.settings.items() if k in FIELDS})
    info = info or multimodal_info(model)
    base, groups = strip_lora(model, merge_lora)
    base.config.update(labels(class_names))
    base.config.settings = dict(base.config.settings, **{flag: False for flag in LORA_FLAGS}, pretrained=None)
    base.config.composition = copy.deepcopy(base.config.composition)
    for entry in base.config.composition["encoders"].values():
        if "pretrained" in entry:  # rebuilt from backbone_arch: the weights file holds every weight
            entry["pretrained"] = None
    processors = []
    if "audio" in base.modalities:
        processors.append(WhisperFeatureExtractor())  # its defaults: what data/audio.py computes
    if "video" in base.modalities:
        size = base.config.settings.get("image_size", Settings().image_size)
        processors.append(video_processor(size, base.config.image_mean, base.config.image_std))
    if base.lm is not None:
        processors.append(base.encoders["text"].tokenizer)
    path = repo_id or folder
    inputs = {"video": "pixel_values=...", "audio": "input_features=..., audio_attention_mask=...",
              "text": "text=[...]"}
    load = ('from transformers import AutoModel\n'
            f'model = AutoModel.from_pretrained("{path}", trust_remote_code=True)   # MultimodalClassifier')
    use = f'\nlogits = model({", ".join(inputs[m] for m in base.modalities)}).logits'

    spec = base.config.composition
    export = Export(base, lambda key: key, f"Composed {' + '.join(base.modalities)} classifier "
                    f"({spec['fusion'].get('name', 'custom')} fusion)", f"{' + '.join(base.modalities)} classification",
                    "video-classification", "remote code (`trust_remote_code=True`)", load, use,
                    code={"AutoConfig": "videolab.models.compose:MultimodalConfig",
                          "AutoModel": "videolab.models.compose:MultimodalClassifier"},
                    tags=["multimodal", *base.modalities],
                    adapter_load=(f'\nfrom peft import PeftModel\nmodel = PeftModel.from_pretrained(model, "{path}", '
                                  f'subfolder="{ADAPTER_DIR}")   # LoRA adapters'))
    return write_export(folder, export, groups, cfg, info, report, class_names, processors, repo_id)


def load_composed(folder: str, allowed_target_prefixes: Optional[str] = None):
    """(model, {"feature_extractor": WhisperFeatureExtractor or None, "video_processor": ... or None,
    "tokenizer": the text encoder's tokenizer or None}); LoRA adapters applied when ``adapter/`` is there."""
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
    return with_adapter(model, folder).eval(), processors


# ----------------------------------------------------------------------------------------------------------------
# vision + language models
# ----------------------------------------------------------------------------------------------------------------
def language_config_args(info: dict, cfg: Settings, class_names: Optional[list]) -> dict:
    return dict(settings=exported_settings(cfg), arch=info["arch"], language_arch=info["language_arch"],
                image_mean=info["mean"], image_std=info["std"], **(labels(class_names) if class_names else {}))


def export_vision_language(model: nn.Module, info: dict, class_names: list, cfg: Settings, folder: str,
                           merge_lora: bool = False, report: Optional[dict] = None,
                           repo_id: Optional[str] = None) -> list[str]:
    """A vision + BERT-family classifier (``vlm.VisionLanguageClassifier``) as remote code, with its tokenizer."""
    from videolab.models.hf_language import VisionLanguageConfig, VisionLanguageForVideoClassification
    base, groups = strip_lora(model, merge_lora)
    hf_model = VisionLanguageForVideoClassification(VisionLanguageConfig(**language_config_args(info, cfg,
                                                                                                class_names)),
                                                    classifier=base)
    path, module = repo_id or folder, "videolab.models.hf_language"
    load = ('from transformers import AutoModelForVideoClassification, AutoVideoProcessor\n'
            f'model = AutoModelForVideoClassification.from_pretrained("{path}", trust_remote_code=True)\n'
            f'processor = AutoVideoProcessor.from_pretrained("{path}")')
    use = ('\ninputs = processor(videos=[frames], return_tensors="pt")   # frames: uint8 [T, 3, H, W]\n'
           f'logits = model(**inputs{", text=[hint]" if cfg.use_text else ""}).logits'
           f'{"   # the text each video comes with" if cfg.use_text else ""}')
    export = Export(hf_model, prefixed("classifier"), f"Video + language classifier ({cfg.vision_model} + "
                    f"{info.get('language_model')})", "video classification" + (" with text" if cfg.use_text else ""),
                    "video-classification", "remote code (`trust_remote_code=True`)", load, use,
                    code={"AutoConfig": f"{module}:VisionLanguageConfig",
                          "AutoModel": f"{module}:VisionLanguageForVideoClassification",
                          "AutoModelForVideoClassification": f"{module}:VisionLanguageForVideoClassification"},
                    tags=["vision-language"], adapter_load=(
                        f'\nfrom peft import PeftModel\nmodel = PeftModel.from_pretrained(model, "{path}", '
                        f'subfolder="{ADAPTER_DIR}")   # LoRA adapters'))
    return write_export(folder, export, groups, cfg, info, report, class_names,
                        [video_processor(cfg.image_size, info["mean"], info["std"]), base.tokenizer], repo_id)


def generation_config(kwargs: dict):
    """A GenerationConfig of a captioner's ``generation_kwargs`` (the run's decoding settings)."""
    from transformers import GenerationConfig
    return GenerationConfig(**{k: v for k, v in kwargs.items() if v is not None})


def export_captioner(model: nn.Module, info: dict, cfg: Settings, folder: str, merge_lora: bool = False,
                     report: Optional[dict] = None, repo_id: Optional[str] = None) -> list[str]:
    """A GPT-2 captioner (``captioner.VideoCaptioner``: our video encoder and projector, a GPT-2-family LM) as
    remote code, with its tokenizer and generation config; LoRA on the LM apart (``adapter/``) or merged."""
    from videolab.models.hf_language import VideoCaptionerConfig, VideoCaptionerForConditionalGeneration
    base, groups = strip_lora(model, merge_lora)
    generation = generation_config(base.generation_kwargs(**generation_settings(cfg)))
    hf_model = VideoCaptionerForConditionalGeneration(VideoCaptionerConfig(**language_config_args(info, cfg, None)),
                                                      captioner=base, generation_config=generation)
    path, module = repo_id or folder, "videolab.models.hf_language"
    load = ('from transformers import AutoModel, AutoVideoProcessor\n'
            f'model = AutoModel.from_pretrained("{path}", trust_remote_code=True)   # the tokenizer comes with it\n'
            f'processor = AutoVideoProcessor.from_pretrained("{path}")')
    use = ('\npixel_values = processor(videos=[frames], return_tensors="pt")["pixel_values"]   # uint8 [T, 3, H, W]\n'
           f'print(model.caption(pixel_values{", prompts=[hint]" if cfg.use_text else ""}))'
           '   # generation_config.json: the run\'s decoding settings')
    export = Export(hf_model, prefixed("captioner"), f"Video captioner ({cfg.vision_model} + "
                    f"{info.get('language_model')})", "video captioning", "video-text-to-text",
                    "remote code (`trust_remote_code=True`)", load, use,
                    code={"AutoConfig": f"{module}:VideoCaptionerConfig",
                          "AutoModel": f"{module}:VideoCaptionerForConditionalGeneration"},
                    tags=["video-captioning", "gpt2"], adapter_load=(
                        f'\nfrom peft import PeftModel\nmodel = PeftModel.from_pretrained(model, "{path}", '
                        f'subfolder="{ADAPTER_DIR}")   # LoRA adapters of the language model'),
                    notes=["The folder holds every weight: the video encoder and projector trained here, and the "
                           "language model's base weights (its LoRA adapters apart in adapter/, or merged)."])
    return write_export(folder, export, groups, cfg, info, report, None,
                        [video_processor(cfg.image_size, info["mean"], info["std"]), base.tokenizer, generation],
                        repo_id)


def export_qwen_vl(captioner: nn.Module, info: dict, cfg: Settings, folder: str, merge_lora: bool = False,
                   report: Optional[dict] = None, repo_id: Optional[str] = None) -> list[str]:
    """A Qwen2-VL run: the stock ``Qwen2VLForConditionalGeneration`` with its processor and generation config.
    LoRA on a Hub model that trained nothing else: the adapter folder alone, naming the Hub model as its base;
    otherwise the base weights + ``adapter/`` (or merged)."""
    base, groups = strip_lora(captioner, merge_lora)
    stock = base.language_model  # Qwen2VLForConditionalGeneration
    generation = generation_config(base.generation_kwargs(**generation_settings(cfg)))
    source = info.get("language_model_source", "")
    reference = source if (groups and info.get("language_model_pretrained") and not os.path.isdir(source)
                           and not cfg.train_vision_tower) else None
    path = repo_id or folder
    rename = renamer([("language_model.", "")])
    use = ('\nmessages = [{"role": "user", "content": [{"type": "video"}, {"type": "text", "text": "Describe the '
           'video."}]}]\n'
           'prompt = processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)\n'
           'inputs = processor(text=[prompt], videos=[frames], return_tensors="pt")   # frames: [T, 3, H, W]\n'
           'ids = model.generate(**inputs)   # generation_config.json: the run\'s decoding settings\n'
           'print(processor.batch_decode(ids[:, inputs["input_ids"].shape[1]:], skip_special_tokens=True))')
    title, task = "Qwen2-VL video describer", "video question answering / description"
    tags, route = ["qwen2-vl", "video-text-to-text"], "the stock `transformers` class `Qwen2VLForConditionalGeneration`"
    if reference:  # the base-model reference: the adapter folder is the export
        with atomic_folder(folder) as tmp:
            save_adapters(stock, groups, rename, tmp, reference)
            base.processor.save_pretrained(tmp)
            generation.save_pretrained(tmp)
            load = ('from peft import PeftModel\nfrom transformers import AutoProcessor, '
                    'Qwen2VLForConditionalGeneration\n'
                    f'model = Qwen2VLForConditionalGeneration.from_pretrained("{reference}")   # the base model\n'
                    f'model = PeftModel.from_pretrained(model, "{path}")   # + the LoRA adapters trained here\n'
                    f'processor = AutoProcessor.from_pretrained("{path}")')
            cards.write_card(tmp, cards.CardFacts(
                title=title, task=task, pipeline_tag="video-text-to-text", library_name="peft",
                route=f"{route} and PEFT: LoRA adapters over the base model {reference}", load=load + use,
                settings=cfg.to_dict(), info=info, report=report, files=files_in(tmp) + ["README.md"], tags=tags,
                base_model=reference))
        return files_in(folder)
    load = ('from transformers import AutoProcessor, Qwen2VLForConditionalGeneration\n'
            f'model = Qwen2VLForConditionalGeneration.from_pretrained("{path}")\n'
            f'processor = AutoProcessor.from_pretrained("{path}")')
    export = Export(stock, rename, title, task, "video-text-to-text", route + " (no remote code)", load, use,
                    tags=tags, adapter_load=(f'\nfrom peft import PeftModel\nmodel = PeftModel.from_pretrained(model, '
                                             f'"{path}", subfolder="{ADAPTER_DIR}")   # LoRA adapters'),
                    base_model=source if info.get("language_model_pretrained") and not os.path.isdir(source) else None)
    stock.generation_config = generation
    return write_export(folder, export, groups, cfg, info, report, None, [base.processor], repo_id)


# ----------------------------------------------------------------------------------------------------------------
# a pretrained backbone
# ----------------------------------------------------------------------------------------------------------------
PRETRAIN_INFO_FILE = "pretraining.json"


def export_backbone(encoder: torch.nn.Module, folder: str, image_size: int, mean, std, pretraining: dict,
                    settings: Optional[dict] = None, report: Optional[dict] = None) -> list[str]:
    """A pretrained encoder (a transformers video model) as a ``save_pretrained`` folder (config.json,
    model.safetensors), its video processor, ``pretraining.json`` (objective, settings, results) and a model card
    (``settings`` / ``report``: the run's settings and eval.json), written atomically. ``--pretrained folder``
    loads it for fine-tuning. Returns the files written."""
    with atomic_folder(folder) as tmp:
        copy.deepcopy(encoder).cpu().save_pretrained(tmp)
        video_processor(image_size, mean, std).save_pretrained(tmp)
        write_json(os.path.join(tmp, PRETRAIN_INFO_FILE), pretraining)
        if settings is not None:
            name = type(encoder).__name__
            info = {k: (report or {}).get(k) for k in ("pretrained", "weights_source", "params_total",
                                                       "params_trainable")}
            load = ("from transformers import AutoModel, AutoVideoProcessor\n"
                    f'model = AutoModel.from_pretrained("{folder}")   # {name}\n'
                    f'processor = AutoVideoProcessor.from_pretrained("{folder}")\n'
                    'tokens = model(**processor(videos=[frames], return_tensors="pt")).last_hidden_state\n'
                    f'# fine-tune it here: python main.py --pretrained {folder} --vision_model '
                    f'{settings.get("vision_model")} --num_frames {settings.get("num_frames")} --image_size {image_size}')
            cards.write_card(tmp, cards.CardFacts(
                title=f"{name} pretrained with {pretraining.get('objective')}", pipeline_tag="feature-extraction",
                task="self-supervised video representation (a backbone to fine-tune)",
                route=f"the stock `transformers` class `{name}`", load=load, settings=settings, info=info,
                report=report, files=files_in(tmp) + ["README.md"], tags=["self-supervised"],
                preprocessing=preprocessing_text(image_size, mean, std)))
    return sorted(os.listdir(folder))
