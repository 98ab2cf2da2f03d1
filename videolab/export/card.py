"""The model card (``README.md``, written with ``huggingface_hub.ModelCard``) of every export folder, and the card
of a PEFT adapter folder (PEFT writes an empty template there).

A card says what the model does and how it was made, from what the run recorded: the task and labels, frames and
frame size, the preprocessing (``video_preprocessor_config.json`` does the same), the training data and settings,
the test figures from the run's ``eval.json`` with the test protocol (single- or multi-view), whether the backbone
(and the language model) started from pretrained weights, and the commands that load the folder. The YAML header
(``ModelCardData``) carries the labels the Hub indexes: library, pipeline tag, tags, base model, and the test
accuracy as ``model-index``.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from typing import Any, Optional

from videolab.core.files import write_text

# the settings a card lists under "Training" (every model/data setting is also in config.json for our own classes)
TRAINING_SETTINGS = ("epochs", "max_steps", "batch_size", "gradient_accumulation_steps", "lr", "lr_language_model",
                     "weight_decay", "warmup_ratio", "label_smoothing", "max_grad_norm", "mixed_precision", "seed",
                     "train_crop", "horizontal_flip", "label_fraction", "val_fraction")
MODEL_SETTINGS = ("vision_model", "model_size", "pretrained", "fusion", "fusion_depth", "fusion_dim", "modalities",
                  "use_lora_vision", "use_lora_llm", "lora_r", "lora_alpha", "freeze_visionbackbone",
                  "freeze_language_model", "use_vlm", "language_model", "use_text", "captioning", "max_video_tokens",
                  "train_vision_tower")
DATA_SETTINGS = ("dataset", "synthetic_task", "num_frames", "sampling", "frame_stride", "image_size", "audio_seconds")
CLASSIFICATION_FIGURES = ("top1", "top5", "mean_class_accuracy", "loss", "family_accuracy", "direction_accuracy")


@dataclass
class CardFacts:
    """What a card says; the exporters fill it in (``export/huggingface.py``)."""
    title: str  # e.g. "VideoMAE video classifier"
    task: str  # "video classification" | "video captioning" ...
    pipeline_tag: str  # Hub pipeline tag: video-classification, video-text-to-text ...
    route: str  # how it loads: "stock transformers class X" / "remote code (trust_remote_code=True)"
    load: str  # Python that loads and runs the folder
    settings: dict  # the run's settings (Settings.to_dict())
    info: dict  # the run's model_info (pretrained, weights_source, language model ...)
    labels: Optional[list] = None
    report: Optional[dict] = None  # the run's eval.json
    preprocessing: str = ""
    files: list = field(default_factory=list)
    tags: list = field(default_factory=list)
    library_name: str = "transformers"
    base_model: Optional[str] = None
    adapter: Optional[str] = None  # a sentence on the adapter folder, when there is one
    onnx: Optional[dict] = None  # what the ONNX export checked
    notes: list = field(default_factory=list)


def _value(value: Any) -> str:
    return "none" if value is None else f"`{value}`"


def _figures(report: dict) -> list[str]:
    """The test figures of an eval.json and the protocol they were measured with."""
    lines = []
    views = report.get("views") or {}
    if report.get("task") == "classification":
        lines.append(f"Test split of `{report.get('settings', {}).get('dataset', '?')}`: "
                     f"{report.get('num_samples', '?')} clips; protocol **{views.get('protocol', 'single-view')}** "
                     f"({views.get('clips', 1)} clip(s) x {views.get('crops', 1)} crop(s), "
                     f"{views.get('sampling', '?')} sampling of {views.get('num_frames', '?')} frames; logits "
                     f"averaged over the views).")
        lines += ["", "| metric | value |", "|---|---|"]
        lines += [f"| {k} | {report[k]:.4f} |" for k in CLASSIFICATION_FIGURES if isinstance(report.get(k), float)]
        single = views.get("single_view")
        if views.get("views", 1) > 1 and isinstance(single, dict):
            lines.append(f"| top1, single centre view | {single.get('top1', float('nan')):.4f} |")
    else:
        lines.append(f"Test split: {report.get('num_samples', '?')} videos ({report.get('task', '?')}).")
        lines += ["", "| metric | value |", "|---|---|"]
        if isinstance(report.get("loss"), float):
            lines.append(f"| loss | {report['loss']:.4f} |")
        for name, value in (report.get("metrics") or {}).items():
            if isinstance(value, float):
                lines.append(f"| {name} | {value:.4f} |")
        for key in ("loss", "mvm_loss", "contrastive_loss"):
            if key != "loss" and isinstance(report.get(key), float):
                lines.append(f"| {key} | {report[key]:.4f} |")
    epoch, seconds = report.get("checkpoint_epoch"), report.get("train_seconds")
    lines += ["", f"Checkpoint: epoch {epoch if epoch is not None else '?'}"
                  f"{'' if seconds is None else f', {seconds:.0f} s of training'}; finished {report.get('finished', '?')}."]
    return lines


def relevant_settings(settings: dict, info: dict) -> set:
    """The settings a card lists: those this model reads (no fusion without one, no frame stride without dense
    sampling ...), without unset or off values."""
    skip = set()
    if info.get("fusion") in (None, "none"):
        skip |= {"fusion", "fusion_depth", "fusion_dim"}
    if settings.get("sampling") != "dense":
        skip.add("frame_stride")
    if "audio" not in (settings.get("modalities") or ""):
        skip.add("audio_seconds")
    if not settings.get("use_vlm"):
        skip |= {"max_video_tokens", "lr_language_model", "language_model"}
    if not (settings.get("use_lora_vision") or settings.get("use_lora_llm")):
        skip |= {"lora_r", "lora_alpha"}
    if settings.get("dataset") != "synthetic":
        skip.add("synthetic_task")
    return {k for k, v in settings.items() if k not in skip and v not in (None, False, "")} | \
        {k for k in TRAINING_SETTINGS if k in settings and k not in skip and settings[k] is not None}


def model_card(facts: CardFacts):
    """The ``huggingface_hub.ModelCard`` of an export folder."""
    from huggingface_hub import EvalResult, ModelCard, ModelCardData

    settings, info, report = facts.settings, facts.info, facts.report
    eval_results = None
    if report and report.get("task") == "classification" and isinstance(report.get("top1"), float):
        eval_results = [EvalResult(task_type=facts.pipeline_tag, dataset_type=settings.get("dataset", "video"),
                                   dataset_name=settings.get("dataset", "video"), dataset_split="test",
                                   metric_type="accuracy", metric_name="top-1 accuracy",
                                   metric_value=round(report["top1"], 4))]
    data = ModelCardData(library_name=facts.library_name, pipeline_tag=facts.pipeline_tag,
                         tags=sorted(set(["video", "videolab", *facts.tags])), base_model=facts.base_model,
                         model_name=facts.title, eval_results=eval_results)
    pretrained = info.get("pretrained")
    body = [f"# {facts.title}", "",
            f"A {facts.task} model trained with the video-understanding repo (`videolab`). Loads with "
            f"{facts.route}.", "", "## Model", ""]
    body.append(f"- backbone: {_value(settings.get('vision_model'))} ({_value(settings.get('model_size'))} preset), "
                f"{'**pretrained**' if pretrained else '**not pretrained** (random initialisation)'}: "
                f"{info.get('weights_source', '?')}")
    if info.get("language_model"):
        body.append(f"- language model: {_value(info.get('language_model'))}, "
                    f"{'pretrained' if info.get('language_model_pretrained') else 'not pretrained'}: "
                    f"{info.get('language_model_source', '?')}")
    if info.get("fusion") not in (None, "none"):
        body.append(f"- fusion: {_value(info.get('fusion'))}")
    body.append(f"- parameters: {info.get('params_total', '?'):,} ({info.get('params_trainable', '?'):,} trained)"
                if isinstance(info.get("params_total"), int) else "- parameters: ?")
    if facts.labels:
        shown = ", ".join(f"`{name}`" for name in facts.labels[:50])
        body.append(f"- labels ({len(facts.labels)}): {shown}{' ...' if len(facts.labels) > 50 else ''}")
    body += ["", "## Inputs and preprocessing", "",
             f"- frames: {settings.get('num_frames')} per clip, {settings.get('image_size')} x "
             f"{settings.get('image_size')} px, sampled `{settings.get('sampling')}` over the video",
             f"- {facts.preprocessing}" if facts.preprocessing else "", ""]
    shown = relevant_settings(settings, info)
    body += ["## Training", "",
             "Data: " + ", ".join(f"{k} {_value(settings[k])}" for k in DATA_SETTINGS if k in shown), "",
             "Model settings: " + ", ".join(f"{k} {_value(settings[k])}" for k in MODEL_SETTINGS if k in shown), "",
             "Training settings: " + ", ".join(f"{k} {_value(settings[k])}" for k in TRAINING_SETTINGS
                                                if k in shown), ""]
    body += ["## Evaluation", ""]
    body += _figures(report) if report else ["No evaluation was recorded with this export."]
    body += ["", "## How to load", "", "```python", facts.load.strip(), "```", ""]
    if facts.adapter:
        body += [facts.adapter, ""]
    if facts.onnx:
        body += ["## ONNX", "", f"`model.onnx`: the classifier for onnxruntime (opset {facts.onnx.get('opset')}, "
                 f"input `pixel_values` [batch, {settings.get('num_frames')}, 3, {settings.get('image_size')}, "
                 f"{settings.get('image_size')}] float32 with a dynamic batch axis, output `logits`). Checked "
                 f"against PyTorch on batches of {', '.join(map(str, facts.onnx.get('batches', [])))} random clips: "
                 f"largest absolute logit difference {facts.onnx.get('max_abs_diff'):.2e}.", "",
                 "```python", "import onnxruntime", "session = onnxruntime.InferenceSession(\"model.onnx\")",
                 "logits = session.run(None, {\"pixel_values\": pixel_values.numpy()})[0]", "```", ""]
    if facts.notes:
        body += ["## Notes", "", *[f"- {note}" for note in facts.notes], ""]
    if facts.files:
        body += ["## Files", "", *[f"- `{name}`" for name in facts.files], ""]
    return ModelCard(f"---\n{data.to_yaml()}\n---\n\n" + "\n".join(body))


def write_card(folder: str, facts: CardFacts) -> str:
    return write_text(os.path.join(folder, "README.md"), str(model_card(facts)))


def adapter_card(folder: str, base: str, what: str, load: str) -> str:
    """Fill in PEFT's adapter card (``folder/README.md``): the base model named, what the adapter adapts, how to
    load it, its LoRA settings (from ``adapter_config.json``). ``base``: a Hub id, or a phrase such as "the
    export folder above"."""
    from huggingface_hub import ModelCard, ModelCardData

    with open(os.path.join(folder, "adapter_config.json")) as fh:
        config = json.load(fh)
    data = ModelCardData(library_name="peft", base_model=None if base.startswith(("..", ".", "the ")) else base,
                         tags=["lora", "peft", "video", "videolab"])
    targets = config.get("target_modules") or []
    body = [f"# LoRA adapter: {what}", "", f"Base model: **{base}**.", "",
            f"LoRA (PEFT) rank {config.get('r')}, alpha {config.get('lora_alpha')}, dropout "
            f"{config.get('lora_dropout')}, on {len(targets)} layers"
            + (f" (ranks per layer: {config['rank_pattern']})" if config.get("rank_pattern") else "") + ".",
            "", "## How to load", "", "```python", load.strip(),
            "```", ""]
    return write_text(os.path.join(folder, "README.md"), str(ModelCard(f"---\n{data.to_yaml()}\n---\n\n"
                                                                       + "\n".join(body))))
