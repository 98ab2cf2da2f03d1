"""LoRA (``peft``) and freezing of a backbone or a language model, and parameter counts."""
from __future__ import annotations

from typing import Callable, Optional

from torch import nn

from videolab.core.errors import UsageError
from videolab.core.hub import loud_note
from videolab.models.backbones import Backbone


def lora_targets(cfg, backbone: Backbone) -> list[str]:
    if cfg.lora_target_modules.strip().lower() != "auto":
        return [m.strip() for m in cfg.lora_target_modules.split(",") if m.strip()]
    if not backbone.lora_targets:
        raise UsageError(f"no default LoRA target modules for {cfg.vision_model}; pass "
                         f"--lora_target_modules with the names of its nn.Linear layers (comma-separated)")
    return backbone.lora_targets


def lora_excluded(cfg) -> list[str]:
    """--lora_exclude_modules as a list (empty: none excluded)."""
    text = getattr(cfg, "lora_exclude_modules", None) or ""
    return [m.strip() for m in text.split(",") if m.strip()]


def apply_lora(module: nn.Module, targets: list[str], r: int, alpha: float, dropout: float,
               fan_in_fan_out: bool = False, use_rslora: bool = False, bias: str = "none",
               exclude_modules: Optional[list[str]] = None) -> nn.Module:
    """Wrap ``module`` with peft LoRA; only adapter weights stay trainable (and the biases ``bias`` names: none,
    all, lora_only). ``fan_in_fan_out`` for GPT-2's Conv1D; ``use_rslora``: scale alpha / sqrt(r) (rank-stabilised
    LoRA); ``exclude_modules``: names (or name suffixes) that get no adapter even where ``targets`` match."""
    try:  # optional where no LoRA is applied (model code copied into an export folder: export/remote_code.py)
        from peft import LoraConfig, get_peft_model
    except ImportError:
        raise UsageError("LoRA needs peft: pip install peft") from None
    config = LoraConfig(r=r, lora_alpha=alpha, lora_dropout=dropout, target_modules=targets, bias=bias,
                        fan_in_fan_out=fan_in_fan_out, use_rslora=use_rslora, exclude_modules=exclude_modules or None)
    try:
        return get_peft_model(module, config)
    except ValueError as exc:
        raise UsageError(f"LoRA could not attach to {targets}: {str(exc).splitlines()[0][:200]}; "
                         f"check --lora_target_modules and --lora_exclude_modules") from None


def freeze(module: nn.Module) -> None:
    for p in module.parameters():
        p.requires_grad_(False)


def count_parameters(model: nn.Module) -> tuple[int, int]:
    """(total, trainable)"""
    total = sum(p.numel() for p in model.parameters())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return total, trainable


def enable_gradient_checkpointing(module: nn.Module) -> int:
    """Activation checkpointing in every part of ``module`` that has its own switch: transformers models
    (``activation_checkpointing_enable``, non-reentrant, so frozen inputs under LoRA need no
    ``enable_input_require_grads``) and timm models (``set_grad_checkpointing``). Each recomputes its blocks'
    activations in the backward pass (only in training mode). Returns how many models were switched on (0: none
    supports it)."""
    from transformers import PreTrainedModel
    switched, inside = 0, []  # a model switched on handles its own submodules
    for name, part in module.named_modules():
        if any(name.startswith(prefix) for prefix in inside):
            continue
        if isinstance(part, PreTrainedModel) and part.supports_gradient_checkpointing:
            part.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
        elif callable(getattr(part, "set_grad_checkpointing", None)) and hasattr(part, "pretrained_cfg"):  # timm
            part.set_grad_checkpointing(True)
        else:
            continue
        switched += 1
        inside.append(f"{name}." if name else "")
    return switched


def checkpoint_activations(cfg, module: nn.Module, what: str) -> None:
    """--gradient_checkpointing on ``module`` (before LoRA wraps it); refused where nothing inside supports it."""
    if cfg.gradient_checkpointing and not enable_gradient_checkpointing(module):
        raise UsageError(f"--gradient_checkpointing True: {what} ({type(module).__name__}) has no gradient "
                         f"checkpointing (transformers and timm models do); drop the flag")


def adapt_backbone(cfg, backbone: Backbone, announce: bool) -> None:
    """--gradient_checkpointing, then --use_lora_vision (peft LoRA on the backbone's attention) or
    --freeze_visionbackbone, in place; ``announce`` warns when LoRA or freezing meets a randomly initialised
    backbone. Shared with the composed model (compose.py)."""
    checkpoint_activations(cfg, backbone.module, f"the {cfg.vision_model} backbone")
    if cfg.use_lora_vision:
        backbone.module = apply_lora(backbone.module, lora_targets(cfg, backbone), cfg.lora_r, cfg.lora_alpha,
                                     cfg.lora_dropout, use_rslora=getattr(cfg, "lora_use_rslora", False),
                                     bias=getattr(cfg, "lora_bias", "none"), exclude_modules=lora_excluded(cfg))
    elif cfg.freeze_visionbackbone:
        freeze(backbone.module)
    if (cfg.use_lora_vision or cfg.freeze_visionbackbone) and not backbone.pretrained and announce:
        what = "LoRA" if cfg.use_lora_vision else "--freeze_visionbackbone"
        loud_note(f"{what} on a RANDOMLY INITIALISED backbone: the backbone has learned nothing, so only the "
                  f"adapters/head learn, from random features. Point --pretrained at trained weights (a Hub id, "
                  f"or a local folder such as a model this repo trained and exported).")


def adapt_language_model(cfg, language, announce: Callable[[str], None]) -> None:
    """--use_lora_llm (peft LoRA) or --freeze_language_model on ``language.module``, in place; ``announce`` warns
    when either meets a randomly initialised language model. Shared with the composed model's text encoder.
    --gradient_checkpointing applies to it too."""
    checkpoint_activations(cfg, language.module, "the language model")
    if cfg.use_lora_llm:
        if not language.lora_targets:
            raise UsageError(f"no default LoRA targets for the {language.arch.get('model_type')} language model; "
                             f"--use_lora_llm supports BERT-family encoders and GPT-2")
        targets = [t.strip() for t in cfg.lora_llm_target_modules.split(",") if t.strip()] \
            if cfg.lora_llm_target_modules else language.lora_targets
        language.module = apply_lora(language.module, targets, cfg.lora_llm_r or cfg.lora_r,
                                     cfg.lora_alpha if cfg.lora_llm_alpha is None else cfg.lora_llm_alpha,
                                     cfg.lora_dropout if cfg.lora_llm_dropout is None else cfg.lora_llm_dropout,
                                     fan_in_fan_out=language.causal and language.arch.get("model_type") == "gpt2")
    elif cfg.freeze_language_model:
        freeze(language.module)
    if (cfg.use_lora_llm or cfg.freeze_language_model) and not language.pretrained:
        what = "--use_lora_llm" if cfg.use_lora_llm else "--freeze_language_model"
        announce(f"{what} on a RANDOMLY INITIALISED language model: it has learned nothing, so only the adapters "
                 f"and the projector learn. Online, --language_model gpt2 loads the pretrained GPT-2.")
