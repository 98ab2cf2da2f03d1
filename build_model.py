"""Assemble a model from the registries: the model kind the settings describe, its parts, LoRA / freezing.

A **model kind** (``MODEL_KINDS``) is one way the parts fit together; each has a task (``videolab/tasks``), a
check of the settings it cannot run with, and a builder:

=================  ==========================================================================  ===========
kind               selected by                                                                 task
=================  ==========================================================================  ===========
pretrainer         ``--task pretrain`` (the pretraining task trains it)                         pretraining
composed           ``--modalities`` or a ``model:`` section (``--model_config``)                classification
qwen2_vl           ``--use_vlm --captioning --language_model qwen2-vl`` (or a Qwen2-VL id)      captioning
captioner          ``--use_vlm --captioning`` (GPT-2 continues the video tokens)                captioning
vision_language    ``--use_vlm`` (video tokens into a BERT-family or Qwen2 encoder)            classification
classifier         otherwise: backbone (+ fusion for per-frame backbones) + head                classification
=================  ==========================================================================  ===========

The parts come from ``videolab/models/registry.py`` (backbones, fusions, language models) and
``videolab/models/compose.py`` (encoders, heads of composed models). Settings are resolved once
(:func:`resolve_settings`: the defaults that depend on other settings filled in, as a new object) and then
checked (:func:`check_settings`), which changes nothing.

A built model records its architecture (``BuiltModel.info["arch"]``), so a checkpoint rebuilds it without the
Hub (:func:`rebuild_from_checkpoint`).
"""
from __future__ import annotations

import copy
import dataclasses
import os
from dataclasses import dataclass
from typing import Any, Callable, Optional, Sequence

from torch import nn

from videolab.core.checkpoints import CONFIG_FILE, TOKENIZER_DIR, WEIGHTS_FILE, load_weights
from videolab.core.errors import CheckpointError, UsageError
from videolab.core.hub import loud_note, quiet_note
from videolab.core.registry import Registry
from videolab.core.settings import Settings, settings_from_dict
from videolab.data.registry import DATASETS
from videolab.data.transforms import parse_rand_augment
from videolab.export import huggingface as hf_export
from videolab.export.onnx import missing_packages as onnx_missing_packages
from videolab.export.push import check_push, push_folder
from videolab.models import compose
from videolab.models.adapt import (adapt_backbone, adapt_language_model, checkpoint_activations, count_parameters,
                                   lora_targets)
from videolab.models.backbones import IMAGENET_MEAN, IMAGENET_STD, Backbone, backbone_shape, preset_note
from videolab.models.captioner import VideoCaptioner
from videolab.models.classifier import VideoClassifier
from videolab.models.language import (LanguageModel, is_causal, load_causal_lm, load_text_encoder,
                                      rebuild_language_model)
from videolab.models.pretrainer import DECODER_PRESETS, build_video_pretrainer
from videolab.models.qwen_vl import (QwenVLCaptioner, is_qwen_vl_name, load_qwen_vl, lora_settings,
                                     prepare_for_training, rebuild_qwen_vl)
from videolab.models.registry import FUSIONS, backbone_kind, build_backbone, check_vision_model, has_drop_path
from videolab.models.vlm import VideoTokenEncoder, VisionLanguageClassifier
from videolab.tasks.registry import TASKS


@dataclass
class BuiltModel:
    """A model and what the rest of the run needs to know about it."""
    model: nn.Module
    backbone: Backbone  # its mean / std normalise the data
    info: dict  # recorded in checkpoints and eval outputs
    language: Any = None  # videolab.models.language.LanguageModel when a language model is inside
    kind: str = "classifier"  # its MODEL_KINDS name
    task_name: str = "classification"  # the TASKS name of the task that trains and judges it

    @property
    def task(self):
        """The task that trains and judges this model (a ``videolab.tasks.base.Task``)."""
        return TASKS.get(self.task_name)()

    @property
    def modalities(self) -> tuple:
        """The inputs the model reads besides the frames (``audio``, ``text``), for the datasets."""
        return tuple(getattr(self.model, "modalities", ()))

    def write_assets(self, folder: str) -> None:
        """Files a checkpoint needs besides the weights: the language model's tokenizer (or processor)."""
        if self.language is not None:
            self.language.tokenizer.save_pretrained(os.path.join(folder, TOKENIZER_DIR))


def announcer(verbose: bool) -> Callable[[str], None]:
    return loud_note if verbose else quiet_note


def no_pretrained_note(cfg, backbone: Backbone) -> None:
    loud_note(f"{cfg.vision_model}: NO PRETRAINED WEIGHTS - {backbone.source} (pass --pretrained <hub id or folder> "
              f"to start from trained weights). Recorded as \"pretrained\": false in this run's outputs.")


def backbone_info(cfg, backbone: Backbone, model: nn.Module) -> dict:
    total, trainable = count_parameters(model)
    return dict(vision_model=cfg.vision_model, model_size=cfg.model_size, backbone_kind=backbone.kind,
                pretrained=backbone.pretrained, weights_source=backbone.source, arch=copy.deepcopy(backbone.arch),
                mean=list(backbone.mean), std=list(backbone.std), params_total=total, params_trainable=trainable)


def announce_model(info: dict, what: str) -> None:
    total, trainable = info["params_total"], info["params_trainable"]
    print(f"model: {what} | params total {total:,} | trainable {trainable:,} "
          f"({100.0 * trainable / max(total, 1):.2f}%)")


# ----------------------------------------------------------------------------------------------------------------
# the kinds' builders: (cfg, num_classes, arch, language_arch, checkpoint_folder, texts, verbose) -> BuiltModel
# ----------------------------------------------------------------------------------------------------------------
def build_classifier(cfg, num_classes, arch, language_arch, checkpoint_folder, texts, verbose) -> BuiltModel:
    """Backbone (+ LoRA / freezing) + fusion (per-frame backbones) + head."""
    backbone = build_backbone(cfg, arch)
    if not backbone.pretrained and arch is None and verbose:
        no_pretrained_note(cfg, backbone)
    adapt_backbone(cfg, backbone, announce=verbose and arch is None)
    model = VideoClassifier(backbone, cfg, num_classes)
    info = dict(backbone_info(cfg, backbone, model), fusion=cfg.fusion if backbone.kind == "frame" else "none",
                lora_targets=lora_targets(cfg, backbone) if cfg.use_lora_vision else [])
    shape = backbone_shape(backbone)
    info.update(backbone_width=shape["width"], backbone_depth=shape["depth"],
                fusion_width=model.temporal.layer_width if backbone.kind == "frame" else None)
    if verbose:
        fusion = f", {info['fusion']} fusion {info['fusion_width']} wide x {cfg.fusion_depth}" \
            if backbone.kind == "frame" and info["fusion"] != "mean" else f", {info['fusion']} fusion"
        announce_model(info, f"{cfg.vision_model} '{cfg.model_size}' preset ({backbone.kind} backbone "
                             f"{shape['width']} wide x {shape['depth']} blocks{fusion})")
        note = preset_note(cfg, backbone, info["params_total"]) if arch is None else None
        if note:
            loud_note(note)
    return BuiltModel(model, backbone, info)


def build_language_model(cfg, language_arch, checkpoint_folder, texts, verbose) -> LanguageModel:
    """The language model (+ LoRA / freezing): loaded (Hub, folder, offline fallback) or rebuilt from a checkpoint.
    ``texts`` train an offline tokenizer (the captions of a captioner, the hints a text encoder reads)."""
    announce = announcer(verbose)
    name = cfg.language_model
    if language_arch is not None:
        language = rebuild_language_model(language_arch, checkpoint_folder, cfg.captioning)
    elif cfg.captioning:
        language = load_causal_lm(name, texts or [], cfg.language_model_size, announce)
    else:
        language = load_text_encoder(name, announce, texts or [])
    adapt_language_model(cfg, language, announce if language_arch is None else quiet_note)
    return language


def _build_with_language(cfg, num_classes, arch, language_arch, checkpoint_folder, texts, verbose,
                         make: Callable[[Backbone, LanguageModel], nn.Module]) -> BuiltModel:
    backbone = build_backbone(cfg, arch)
    if not backbone.pretrained and arch is None and verbose:
        no_pretrained_note(cfg, backbone)
    adapt_backbone(cfg, backbone, announce=verbose and arch is None)
    language = build_language_model(cfg, language_arch, checkpoint_folder, texts, verbose)
    model = make(backbone, language)
    model.language_model_pretrained = language.pretrained  # train_code.param_groups: its weights get a lower lr
    info = dict(backbone_info(cfg, backbone, model), fusion="none",
                lora_targets=lora_targets(cfg, backbone) if cfg.use_lora_vision else [],
                language_model=cfg.language_model, language_model_source=language.source,
                language_model_pretrained=language.pretrained, language_arch=copy.deepcopy(language.arch),
                task="captioning" if cfg.captioning else "classification")
    if verbose:
        announce_model(info, f"{cfg.vision_model} ({backbone.kind} backbone, + {cfg.language_model} "
                             f"({language.source}))")
    return BuiltModel(model, backbone, info, language)


def build_vision_language(cfg, num_classes, arch, language_arch, checkpoint_folder, texts, verbose) -> BuiltModel:
    """Video tokens projected into a BERT-family (or Qwen2) encoder, with optional text; an MLP head."""
    return _build_with_language(cfg, num_classes, arch, language_arch, checkpoint_folder, texts, verbose,
                                lambda backbone, language: VisionLanguageClassifier(backbone, language, cfg,
                                                                                    num_classes))


def build_captioner(cfg, num_classes, arch, language_arch, checkpoint_folder, texts, verbose) -> BuiltModel:
    """Video tokens as a prefix GPT-2 continues with a caption."""
    def make(backbone: Backbone, language: LanguageModel) -> nn.Module:
        encoder = VideoTokenEncoder(backbone.module, cfg.max_video_tokens)
        model = VideoCaptioner(encoder, backbone.feature_dim, language.module, language.tokenizer,
                               max_caption_tokens=cfg.max_caption_tokens)
        model.batch_keys = {"pixel_values": "pixel_values", "captions": "caption",
                            **({"prompts": "hint"} if cfg.use_text else {})}
        return model
    return _build_with_language(cfg, num_classes, arch, language_arch, checkpoint_folder, texts, verbose, make)


def build_qwen_vl(cfg, num_classes, arch, language_arch, checkpoint_folder, texts, verbose) -> BuiltModel:
    """Qwen2-VL: its own vision tower and processor; LoRA / freezing of its language model."""
    announce = announcer(verbose)
    name = cfg.language_model
    if language_arch is not None:
        model, processor = rebuild_qwen_vl(language_arch, checkpoint_folder)
        pretrained, source = False, f"rebuilt from {checkpoint_folder}"
    else:
        model, processor, pretrained, source = load_qwen_vl(name, texts or [], cfg.image_size, announce)
    qwen_arch = model.config.to_dict()
    model = prepare_for_training(model, cfg)
    captioner = QwenVLCaptioner(model, processor, max_caption_tokens=cfg.max_caption_tokens)
    captioner.batch_keys = {"pixel_values": "pixel_values", "captions": "caption",
                            **({"prompts": "hint"} if cfg.use_text or "prompts" in
                               DATASETS.meta(cfg.dataset)["provides"] else {})}
    captioner.language_model_pretrained = pretrained
    if (cfg.use_lora_llm or cfg.freeze_language_model) and not pretrained and language_arch is None:
        announce("LoRA / freezing on a RANDOMLY INITIALISED Qwen2-VL: only the adapters learn, on top of random "
                 "weights. Online, --language_model qwen2-vl loads Qwen/Qwen2-VL-2B-Instruct.")
    visual = model.get_base_model().model.visual if cfg.use_lora_llm else model.model.visual
    # frames reach the processor as floats in [0, 1] (mean 0, std 1): it resizes and normalises them itself
    backbone = Backbone(visual, "video", qwen_arch["vision_config"]["hidden_size"], (0.0, 0.0, 0.0),
                        (1.0, 1.0, 1.0), pretrained, source, dict(qwen2_vl=True))
    language = LanguageModel(captioner.language_model, processor, True, pretrained, source, qwen_arch)
    total, trainable = count_parameters(captioner)
    info = dict(vision_model="qwen2-vl vision tower", model_size="from the language model", backbone_kind="video",
                fusion="none", pretrained=pretrained, weights_source=source, arch=copy.deepcopy(backbone.arch),
                mean=list(backbone.mean), std=list(backbone.std), params_total=total, params_trainable=trainable,
                lora_targets=lora_settings(cfg)["targets"] if cfg.use_lora_llm else [],
                language_model=name, language_model_source=source, language_model_pretrained=pretrained,
                language_arch=copy.deepcopy(qwen_arch), task="captioning")
    if verbose:
        announce_model(info, f"Qwen2-VL ({source})")
    return BuiltModel(captioner, backbone, info, language, kind="qwen2_vl")


def build_composed(cfg, num_classes, arch, language_arch, checkpoint_folder, texts, verbose) -> BuiltModel:
    """Per-modality encoders, a fusion and a head (models/compose.py); ``arch`` holds its composition."""
    model = compose.build_multimodal(cfg, num_classes, arch, verbose, checkpoint_folder, texts or [])
    backbone = model.backbone or Backbone(nn.Identity(), "none", 0, IMAGENET_MEAN, IMAGENET_STD, False,
                                          "no video encoder", {})
    total, trainable = count_parameters(model)
    info = dict(compose.multimodal_info(model), params_total=total, params_trainable=trainable)
    if verbose:
        spec = info["arch"]["composition"]
        print(f"model: composed {' + '.join(spec['encoders'])} -> {info['fusion']} fusion -> "
              f"{spec['head'].get('name', spec['head'].get('_target_'))} head | params total {total:,} | "
              f"trainable {trainable:,}")
    return BuiltModel(model, backbone, info, compose.text_language_model(model), kind="composed")


def build_pretrainer(cfg, num_classes, arch, language_arch, checkpoint_folder, texts, verbose) -> BuiltModel:
    """The backbone wrapped for self-supervised pretraining (models/pretrainer.py)."""
    model, backbone = build_video_pretrainer(cfg, print if verbose else quiet_note, arch)
    checkpoint_activations(cfg, model, "the pretraining model")
    total, trainable = count_parameters(model)
    info = dict(task="pretrain", objective=cfg.pretrain_objective, vision_model=cfg.vision_model,
                model_size=cfg.model_size, backbone_kind=backbone.kind, fusion="none", pretrained=backbone.pretrained,
                weights_source=backbone.source, arch=backbone.arch, mean=list(backbone.mean), std=list(backbone.std),
                params_total=total, params_trainable=trainable,
                decoder=dict(DECODER_PRESETS[cfg.model_size]) if model.uses_mvm else None,
                text_encoder=model.text.source if model.text else None)
    if verbose:
        parts = ["VideoMAEForPreTraining" if model.uses_mvm else "",
                 f"contrastive with {model.text.source}" if model.text else ""]
        print(f"pretraining model: {cfg.vision_model} {cfg.model_size} ({backbone.source}) | "
              f"{' + '.join(p for p in parts if p)} | trainable params {trainable:,}")
    return BuiltModel(model, backbone, info, kind="pretrainer")


# ----------------------------------------------------------------------------------------------------------------
# the kinds' checks: each a UsageError naming the fix
# ----------------------------------------------------------------------------------------------------------------
LANGUAGE_FLAGS = ("captioning", "use_text", "use_lora_llm", "freeze_language_model")  # need a language model


def refuse_language_flags(cfg, names: Sequence[str] = LANGUAGE_FLAGS + ("language_model",)) -> None:
    given = [name for name in names if getattr(cfg, name)]
    if given:
        raise UsageError(f"--{given[0]} needs a language model: add --use_vlm True (with --language_model bert for "
                         f"classification or gpt2 for captioning)")


def check_classifier(cfg) -> None:
    refuse_language_flags(cfg)
    temporal = FUSIONS.where(temporal=True)
    if cfg.fusion not in temporal:  # a fusion of several modalities (models/registry.py: temporal=False)
        raise UsageError(f"--fusion {cfg.fusion} joins several modalities: add --modalities video,audio (or "
                         f"--model_config), or choose {', '.join(temporal)}")


def check_language_model(cfg) -> None:
    """A vision + language model: the language model's kind fits the task, LoRA and freezing do not clash."""
    causal = is_causal(cfg.language_model)
    if cfg.captioning and causal is False:
        raise UsageError(f"--captioning True needs a causal (GPT-2 style) language model, got --language_model "
                         f"{cfg.language_model} (an encoder); use --language_model gpt2")
    if not cfg.captioning and causal is True:
        raise UsageError(f"--language_model {cfg.language_model} is a causal model: add --captioning True to caption "
                         f"with it, or use --language_model bert to classify")
    if cfg.use_lora_llm and cfg.freeze_language_model:
        raise UsageError("--use_lora_llm True and --freeze_language_model True contradict each other (LoRA trains "
                         "adapters inside the language model); choose one")
    if cfg.text_input and not cfg.use_text:
        raise UsageError("--text_input is only read by a model trained with --use_text True; add --use_text True "
                         "(and a checkpoint trained with it) or drop --text_input")


def check_composed(cfg) -> None:
    """The composition parses (names, arguments), its flags have their encoders, its data has what it reads."""
    if cfg.captioning:
        refuse_language_flags(cfg, ("captioning",))
    spec = compose.composition(cfg)
    compose.check_composed_flags(cfg, spec)
    provides = DATASETS.meta(cfg.dataset)["provides"]
    if "audio" in spec["encoders"] and "audio" not in provides:
        raise UsageError(f"audio needs video files with sound; --dataset {cfg.dataset} holds none: use --dataset "
                         f"synthetic_av (generated on first use), videofolder or ucf101")
    if "text" in spec["encoders"] and "hints" not in provides:
        raise UsageError(f"the text modality reads the text hints of the synthetic datasets; --dataset {cfg.dataset} "
                         f"has none: use --dataset synthetic or synthetic_av, or drop text from --modalities")


def uses_qwen_vl(cfg) -> bool:
    return cfg.use_vlm and cfg.captioning and is_qwen_vl_name(cfg.language_model)


def needs_hints(cfg) -> tuple:
    return ("hints",) if cfg.use_text else ()


# name -> the kind's builder; order matters: the first kind whose ``selects`` holds is built (the pretrainer is
# selected by its task). meta: task, selects(cfg), check(cfg), needs(cfg) (what the data must provide), texts
# (which texts train an offline tokenizer: captions or hints), flags (settings only this kind reads, with the
# label and flags that select it), unused_parameters (DDP must look for parameters without a gradient: a BERT
# pooler the vision + language classifier never reads), export (writes --export_dir: (cfg, built, class_names,
# report) -> files; the pretraining task writes its backbone folder itself), onnx (--export_onnx applies)
MODEL_KINDS = Registry("model kind")
MODEL_KINDS.add("pretrainer", build_pretrainer, task="pretraining", selects=lambda cfg: False, check=lambda cfg: None,
                needs=lambda cfg: (), texts=None, export=lambda *args: export_backbone_folder(*args))
MODEL_KINDS.add("composed", build_composed, task="classification", check=check_composed, texts="hints",
                selects=lambda cfg: bool(cfg.modalities or cfg.model_config), needs=lambda cfg: (),
                export=lambda *args: export_composed(*args))
MODEL_KINDS.add("qwen2_vl", build_qwen_vl, task="captioning", selects=uses_qwen_vl, check=check_language_model,
                needs=needs_hints, texts="captions", flags=("train_vision_tower",),
                label="Qwen2-VL", selected_by="--use_vlm True --captioning True --language_model qwen2-vl",
                export=lambda *args: export_qwen_vl(*args))
MODEL_KINDS.add("captioner", build_captioner, task="captioning", check=check_language_model, texts="captions",
                selects=lambda cfg: cfg.use_vlm and cfg.captioning, needs=needs_hints,
                export=lambda *args: export_captioner(*args))
MODEL_KINDS.add("vision_language", build_vision_language, task="classification", check=check_language_model,
                selects=lambda cfg: cfg.use_vlm, needs=needs_hints, texts="hints",
                unused_parameters=True, export=lambda *args: export_vision_language(*args))
MODEL_KINDS.add("classifier", build_classifier, task="classification", check=check_classifier,
                selects=lambda cfg: True, needs=lambda cfg: (), texts=None,
                export=lambda *args: export_classifier(*args), onnx=True)


def task_name(cfg) -> str:
    """The task the settings run: the one ``--task`` selects, or, for the tasks ``--task train`` shares, the task
    of the model kind the flags describe."""
    chosen = TASKS.where(flag=cfg.task)
    if len(chosen) == 1:
        return chosen[0]
    return MODEL_KINDS.meta(flag_kind(cfg))["task"]


def flag_kind(cfg) -> str:
    """The model kind the model flags describe (first match in MODEL_KINDS order)."""
    return next(name for name in MODEL_KINDS if MODEL_KINDS.meta(name)["selects"](cfg))


def kind_name(cfg) -> str:
    """The model kind the settings build: the task's own kind (pretraining), else the one the flags describe."""
    own = TASKS.meta(task_name(cfg)).get("kind")
    return own or flag_kind(cfg)


def checkpoint_kind(saved_settings: dict) -> str:
    """The model kind a checkpoint's saved settings build (inference.py picks runs of the kind its flags describe).
    """
    return kind_name(resolve_settings(settings_from_dict(saved_settings)))


def task_of(cfg):
    """The task object (``videolab.tasks.base.Task``) the settings run."""
    return TASKS.get(task_name(cfg))()


# ----------------------------------------------------------------------------------------------------------------
# settings: resolve once, then check
# ----------------------------------------------------------------------------------------------------------------
def resolve_settings(cfg: Settings) -> Settings:
    """The settings with the defaults that depend on other settings filled in (a new object; ``cfg`` is not
    changed): the language model a vision + language model uses (``bert``, or ``gpt2`` for captioning), and the
    modalities a ``model:`` section declares. These are recorded, so checkpoints match on them."""
    changes = {}
    if cfg.use_vlm and cfg.language_model is None:
        changes["language_model"] = "gpt2" if cfg.captioning else "bert"
    if cfg.model_config and not cfg.modalities and not cfg.use_vlm:  # a checkpoint's settings hold them already
        changes["modalities"] = ",".join(compose.composition(cfg)["encoders"])
    return dataclasses.replace(cfg, **changes) if changes else cfg


def check_settings(cfg: Settings, explicit: Sequence[str] = ()) -> None:
    """Every combination check of a run's settings (``cfg`` as :func:`resolve_settings` returns it), each a
    UsageError with the fix: the backbone name, the model kind's and the task's own checks, what the data must
    provide, and settings given (``explicit``: typed on the command line) for a part the run does not have."""
    check_vision_model(cfg.vision_model)
    task = task_of(cfg)
    kind = kind_name(cfg)
    meta = MODEL_KINDS.meta(kind)
    if cfg.use_lora_vision and cfg.freeze_visionbackbone:
        raise UsageError("--use_lora_vision True and --freeze_visionbackbone True contradict each other "
                         "(LoRA trains adapters inside the backbone); choose one")
    if cfg.image_size % 2:
        raise UsageError(f"--image_size must be even, got {cfg.image_size}")
    check_recipe(cfg)
    check_export_settings(cfg, kind)
    check_part_flags(cfg, explicit, task, kind)
    meta["check"](cfg)
    if kind == "composed" and cfg.model_config:
        compose.check_flags_against_section(cfg, explicit)  # a flag the section overrides: refused, not ignored
    check_views(cfg, task)
    check_data_fits(cfg, (*TASKS.meta(task.name).get("needs", ()), *meta["needs"](cfg)))
    if "fusion" in explicit and backbone_kind(cfg.vision_model) == "video" and kind == "classifier":
        raise UsageError(f"--fusion applies to per-frame (timm) backbones; {cfg.vision_model} models time itself. "
                         f"Drop --fusion or choose e.g. --vision_model vit_small_patch16_224")


def check_recipe(cfg) -> None:
    """The training-recipe settings alone and with the parts they need: --rand_augment parses, stochastic depth
    is in the backbone."""
    try:
        parse_rand_augment(cfg.rand_augment)
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    if cfg.max_eval_samples and cfg.dataset != "qa_json":
        raise UsageError(f"--max_eval_samples limits the records of --dataset qa_json; --dataset {cfg.dataset} "
                         f"evaluates every clip: drop --max_eval_samples")
    if cfg.skip_list and cfg.dataset not in ("ucf101", "videofolder"):
        raise UsageError(f"--skip_list names video files of --dataset ucf101 or videofolder; --dataset {cfg.dataset} "
                         f"has none: drop --skip_list")
    if cfg.drop_path_rate and not has_drop_path(cfg.vision_model):
        raise UsageError(f"--drop_path_rate: {cfg.vision_model} (transformers) has no stochastic depth; drop "
                         f"--drop_path_rate, or use --vision_model timesformer or a timm backbone")


EXPORT_SETTINGS = ("export_dir", "merge_lora", "export_onnx", "push_to_hub", "hub_private")  # what an export does


def check_export_settings(cfg, kind: str) -> None:
    """--export_dir and the flags that go with it, before anything is trained: the kind can be exported (and
    --export_onnx applies to it, its packages installed), --push_to_hub can upload from here."""
    meta = MODEL_KINDS.meta(kind)
    for flag in EXPORT_SETTINGS[1:]:
        if getattr(cfg, flag) and not cfg.export_dir:
            raise UsageError(f"--{flag} applies to --export_dir; add --export_dir DIR or drop --{flag}")
    if cfg.hub_private and not cfg.push_to_hub:
        raise UsageError("--hub_private True applies to --push_to_hub; add --push_to_hub USER/NAME or drop it")
    if cfg.export_dir and meta.get("export") is None:
        raise UsageError(f"--export_dir: the {kind} model has no Hugging Face export; drop --export_dir")
    if cfg.export_onnx:
        if not meta.get("onnx"):
            raise UsageError(f"--export_onnx exports the video classifiers (a backbone + fusion + head); this run "
                             f"builds a {kind} model: drop --export_onnx")
        missing = onnx_missing_packages()
        if missing:
            raise UsageError(f"--export_onnx needs {', '.join(missing)}: pip install {' '.join(missing)} (or pip "
                             f"install -e '.[onnx]')")
    if cfg.push_to_hub:
        check_push(cfg.push_to_hub)


def check_views(cfg, task) -> None:
    """The test views (the run-time settings inference may change) and the task's own checks."""
    if cfg.test_crops not in (1, 3):
        raise UsageError(f"--test_crops must be 1 (centre) or 3 (start, centre, end), got {cfg.test_crops}")
    task.check(cfg)


def check_part_flags(cfg, explicit: Sequence[str], task, kind: str) -> None:
    """Settings that only another task or model kind reads are refused, not silently ignored."""
    for other in TASKS:
        if other != task.name:
            given = [name for name in TASKS.get(other).flags if name in explicit and name not in task.flags]
            if given:
                raise UsageError(f"--{given[0]} applies to {other}: add --task {TASKS.meta(other)['flag']}, or drop "
                                 f"--{given[0]}")
    own = MODEL_KINDS.meta(kind).get("flags", ())
    for other in MODEL_KINDS:
        meta = MODEL_KINDS.meta(other)
        given = [name for name in meta.get("flags", ()) if getattr(cfg, name) and name not in own]
        if other != kind and given:
            raise UsageError(f"--{given[0]} applies to {meta['label']}: add {meta['selected_by']}, or drop the flag")


def check_data_fits(cfg, needs: Sequence[str]) -> None:
    """The dataset holds what the task and the model need (labels, captions, hints, audio ...)."""
    meta = DATASETS.meta(cfg.dataset)
    missing = [need for need in needs if need not in meta["provides"]]
    if not missing:
        return
    if "fix" in meta:
        raise UsageError(f"--dataset {cfg.dataset} has no {missing[0]}: {meta['fix']}")
    if missing[0] in ("captions", "hints"):
        name = "captioning" if cfg.captioning else "use_text"
        raise UsageError(f"--{name} True needs the captions and text hints of the synthetic dataset; --dataset "
                         f"{cfg.dataset} has none: use --dataset synthetic or drop --{name}")
    raise UsageError(f"--dataset {cfg.dataset} has no {missing[0]}, which this run needs; choose a dataset that "
                     f"provides it ({', '.join(n for n in DATASETS if missing[0] in DATASETS.meta(n)['provides'])})")


# ----------------------------------------------------------------------------------------------------------------
# building and rebuilding
# ----------------------------------------------------------------------------------------------------------------
def build_model(cfg: Settings, num_classes: int, arch: Optional[dict] = None, verbose: bool = True,
                language_arch: Optional[dict] = None, checkpoint_folder: Optional[str] = None,
                texts: Optional[Sequence[str]] = None) -> BuiltModel:
    """The model of the settings' kind (``cfg`` resolved by :func:`resolve_settings`).

    ``arch`` (and ``language_arch`` + ``checkpoint_folder`` for a language model and its tokenizer) rebuild a
    saved architecture without the Hub. ``texts`` train an offline tokenizer (``VLoader.tokenizer_texts``).
    """
    cfg = resolve_settings(cfg)
    kind = kind_name(cfg)
    if num_classes < 2 and MODEL_KINDS.meta(kind)["task"] == "classification":
        raise ValueError(f"need at least 2 classes, got {num_classes}")
    built = MODEL_KINDS.get(kind)(cfg, num_classes, arch, language_arch, checkpoint_folder, texts, verbose)
    built.kind, built.task_name = kind, task_name(cfg)
    return built


def rebuild_from_checkpoint(cfg: Settings, run_config: dict, folder: str) -> BuiltModel:
    """The model a checkpoint folder holds: its saved architecture (no Hub, no download) with its weights loaded.
    ``run_config`` is the folder's run_config.json (``videolab.core.checkpoints.read_run_config``)."""
    info = run_config["model_info"]
    config_file = os.path.join(folder, CONFIG_FILE)
    if "arch" not in info:
        raise CheckpointError(f"{config_file}: model_info has no 'arch' (the architecture to rebuild); the file is "
                              f"damaged or from another program: use another checkpoint of the run")
    try:
        built = build_model(cfg, len(run_config["class_names"]), arch=info["arch"], verbose=False,
                            language_arch=info.get("language_arch"), checkpoint_folder=folder)
    except (KeyError, TypeError) as exc:  # an arch that parses but is not one this code wrote
        raise CheckpointError(f"{config_file}: its model_info.arch does not describe a model this version builds "
                              f"({type(exc).__name__}: {str(exc)[:100]}); use another checkpoint or retrain") from None
    load_checkpoint_weights(built.model, folder, len(run_config["class_names"]))
    built.info = dict(info)  # what the run recorded (where the weights first came from, pretrained or not)
    return built


def load_checkpoint_weights(model, folder: str, num_classes: int) -> None:
    """The checkpoint's weights into the model its run_config rebuilt: every tensor present, of the right shape
    (the class count included) and finite; else one CheckpointError naming the file and the first problem."""
    weights_file = os.path.join(folder, WEIGHTS_FILE)
    weights = load_weights(folder)
    bad = [name for name, value in weights.items() if value.is_floating_point() and not bool(value.isfinite().all())]
    if bad:
        raise CheckpointError(f"{weights_file}: {len(bad)} tensor(s) hold NaN/inf (first: {bad[0]}); its "
                              f"predictions would be NaN: use another checkpoint of the run")
    try:
        model.load_state_dict(weights)
    except RuntimeError as exc:  # missing / unexpected tensors, shape mismatches (another class count)
        lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
        detail = lines[1] if len(lines) > 1 else lines[0] if lines else "does not fit"
        raise CheckpointError(f"{weights_file} does not fit the model its run_config.json describes "
                              f"({num_classes} classes): {detail[:160]}; use the run_config.json written with it "
                              f"or another checkpoint") from None


def export_model(cfg: Settings, built: BuiltModel, class_names: list, report: Optional[dict] = None) -> None:
    """--export_dir: the model in the Hugging Face format (its kind's exporter; ``report``: the run's eval.json, for
    the model card), then --push_to_hub uploads the folder."""
    exporter = MODEL_KINDS.meta(built.kind).get("export")
    if not cfg.export_dir or exporter is None:
        return
    written = exporter(cfg, built, class_names, report)
    print(f"exported (Hugging Face format) to {cfg.export_dir}: {', '.join(written)}")
    if cfg.push_to_hub:
        url = push_folder(cfg.export_dir, cfg.push_to_hub, private=cfg.hub_private)
        print(f"uploaded {cfg.export_dir} to the Hugging Face Hub: {url}")


def export_classifier(cfg: Settings, built: BuiltModel, class_names: list, report: Optional[dict]) -> list[str]:
    return hf_export.export_pretrained(built.model, built.info, class_names, cfg, cfg.export_dir,
                                       merge_lora=cfg.merge_lora, report=report, onnx=cfg.export_onnx,
                                       repo_id=cfg.push_to_hub)


def export_composed(cfg: Settings, built: BuiltModel, class_names: list, report: Optional[dict]) -> list[str]:
    return hf_export.save_composed(built.model, class_names, cfg.export_dir, cfg=cfg, merge_lora=cfg.merge_lora,
                                   report=report, repo_id=cfg.push_to_hub, info=built.info)


def export_vision_language(cfg: Settings, built: BuiltModel, class_names: list, report: Optional[dict]) -> list[str]:
    return hf_export.export_vision_language(built.model, built.info, class_names, cfg, cfg.export_dir,
                                            merge_lora=cfg.merge_lora, report=report, repo_id=cfg.push_to_hub)


def export_captioner(cfg: Settings, built: BuiltModel, class_names: list, report: Optional[dict]) -> list[str]:
    return hf_export.export_captioner(built.model, built.info, cfg, cfg.export_dir, merge_lora=cfg.merge_lora,
                                      report=report, repo_id=cfg.push_to_hub)


def export_qwen_vl(cfg: Settings, built: BuiltModel, class_names: list, report: Optional[dict]) -> list[str]:
    return hf_export.export_qwen_vl(built.model, built.info, cfg, cfg.export_dir, merge_lora=cfg.merge_lora,
                                    report=report, repo_id=cfg.push_to_hub)


def export_backbone_folder(cfg: Settings, built: BuiltModel, class_names: list, report: Optional[dict]) -> list[str]:
    """The pretraining task wrote the backbone folder (--export_dir) when it finished; its files."""
    return hf_export.files_in(cfg.export_dir)
