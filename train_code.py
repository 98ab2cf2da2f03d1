"""The train / evaluate loop, on Hugging Face ``accelerate`` (device placement, mixed precision, accumulation).

One loop serves every task: models return ``loss`` and ``logits`` (``ModelOutput`` style), so nothing here
branches on the model. AdamW (no decay on biases and norms), linear warm-up then cosine decay, label smoothing
(in the model's loss), gradient clipping, gradient accumulation, bf16/fp16 autocast, per-epoch train/val
loss and top-1/top-5, best + last checkpoints, epoch-level resume.
"""
from __future__ import annotations

import json
import math
import os
import random
import sys
import time
from dataclasses import dataclass, field
from typing import Optional

import numpy as np
import torch
from accelerate import Accelerator
from accelerate.utils import (DataLoaderConfiguration, ProjectConfiguration, is_tensorboard_available,
                               is_wandb_available, set_seed)
from tqdm.auto import tqdm
from transformers import get_cosine_schedule_with_warmup

from checkpointing import load_training_state, load_weights, read_run_config, save_checkpoint
from settings import Settings, UsageError


def progress_enabled(cfg: Settings) -> bool:
    return not cfg.quiet and sys.stderr.isatty()


TRACKER_INSTALLED = {"tensorboard": is_tensorboard_available, "wandb": is_wandb_available}


def check_tracker_installed(report_to: str) -> None:
    """--report_to names an optional package: say how to install it instead of failing inside accelerate."""
    if report_to != "none" and not TRACKER_INSTALLED[report_to]():
        raise UsageError(f"--report_to {report_to} needs the {report_to} package, which is not installed: "
                         f"pip install {report_to} (or use --report_to none; metrics.jsonl is always written)")


def make_accelerator(cfg: Settings, log_with: Optional[str] = None, logging_dir: Optional[str] = None
                     ) -> Accelerator:
    """Accelerator for the requested device and precision; fp16 needs a GPU (CPU autocast is bf16 only).
    ``log_with`` (an accelerate tracker name) writes under ``logging_dir``."""
    use_cpu = cfg.device == "cpu" or (cfg.device == "auto" and not torch.cuda.is_available())
    if cfg.device == "cuda" and not torch.cuda.is_available():
        raise UsageError("--device cuda but no CUDA GPU is visible; use --device cpu (or auto)")
    if cfg.mixed_precision == "fp16" and use_cpu:
        raise UsageError("--mixed_precision fp16 needs a CUDA GPU; on CPU use --mixed_precision bf16 (or no)")
    if cfg.mixed_precision == "bf16" and not use_cpu and not torch.cuda.is_bf16_supported():
        raise UsageError("this GPU does not support bf16; use --mixed_precision fp16 (or no)")
    # AcceleratorState is a process-wide singleton that refuses a second precision; in-process callers (tests,
    # benchmarks, a notebook) build several. Reset it (not the distributed PartialState) so each run gets its own.
    from accelerate.state import AcceleratorState
    AcceleratorState._reset_state(reset_partial_state=False)
    # seedable sampler: the shuffle order is a function of (seed, epoch), so a resumed run sees the same order
    project = ProjectConfiguration(project_dir=logging_dir, logging_dir=logging_dir) if logging_dir else None
    return Accelerator(cpu=use_cpu, mixed_precision=cfg.mixed_precision,
                       gradient_accumulation_steps=cfg.gradient_accumulation_steps,
                       dataloader_config=DataLoaderConfiguration(use_seedable_sampler=True),
                       log_with=log_with, project_config=project)


LANGUAGE_MODEL_ATTRIBUTES = ("lm", "language_model")  # VisionLanguageClassifier.lm, VideoCaptioner.language_model


def pretrained_language_weights(model: torch.nn.Module) -> set[int]:
    """ids of a pretrained language model's own trainable weights (LoRA adapters excluded: they start new)."""
    if not getattr(model, "language_model_pretrained", False):
        return set()
    for attribute in LANGUAGE_MODEL_ATTRIBUTES:
        lm = getattr(model, attribute, None)
        if isinstance(lm, torch.nn.Module):
            return {id(p) for name, p in lm.named_parameters() if p.requires_grad and "lora_" not in name}
    return set()


def param_groups(model: torch.nn.Module, weight_decay: float, lr: float,
                 lr_language_model: Optional[float] = None) -> list[dict]:
    """AdamW groups: weight decay on matrices only (not biases, norms, 1-D params); a pretrained language model's
    own weights at ``lr_language_model`` (default lr / 10), so fine-tuning does not wreck what it learned while the
    new parts (projector, head, a backbone trained from scratch) learn at ``lr``."""
    lm_weights = pretrained_language_weights(model)
    lm_lr = lr / 10 if lr_language_model is None else lr_language_model
    groups = {}  # (is LM weight, decays) -> params
    for p in model.parameters():
        if p.requires_grad:
            groups.setdefault((id(p) in lm_weights, p.ndim >= 2), []).append(p)
    return [dict(params=params, weight_decay=weight_decay if decays else 0.0, lr=lm_lr if is_lm else lr)
            for (is_lm, decays), params in sorted(groups.items())]


def topk_correct(logits: torch.Tensor, labels: torch.Tensor, ks=(1, 5)) -> dict[int, int]:
    """Number of samples whose label is in the top-k predictions, for each k (k clipped to num classes)."""
    top = logits.topk(min(max(ks), logits.shape[-1]), dim=-1).indices  # [B, kmax]
    hits = top == labels.unsqueeze(-1)
    return {k: int(hits[:, :k].any(-1).sum()) for k in ks}


def rng_state() -> dict:
    np_state = np.random.get_state()
    return dict(python=list(random.getstate()[1]), python_pos=random.getstate()[2], torch=torch.get_rng_state(),
                numpy_keys=torch.from_numpy(np_state[1].astype(np.int64)), numpy_pos=int(np_state[2]))


def set_rng_state(state: dict) -> None:
    random.setstate((3, tuple(state["python"]), state["python_pos"]))
    torch.set_rng_state(state["torch"])
    np.random.set_state(("MT19937", state["numpy_keys"].numpy().astype(np.uint32), state["numpy_pos"], 0, 0.0))


DEFAULT_BATCH_KEYS = {"pixel_values": "pixel_values", "labels": "labels"}


def batch_keys(model) -> dict:
    """forward argument -> batch field, declared by the model (``batch_keys``); unwraps DDP-style wrappers."""
    inner = getattr(model, "module", model)
    return getattr(inner, "batch_keys", getattr(model, "batch_keys", DEFAULT_BATCH_KEYS))


def is_classifier(model) -> bool:
    return "labels" in batch_keys(model)


def model_inputs(model, batch: dict, device=None) -> dict:
    """The keyword arguments ``model`` takes, from a collated batch (tensors moved to ``device`` if given)."""
    inputs = {}
    for arg, key in batch_keys(model).items():
        value = batch[key]
        inputs[arg] = value.to(device) if device is not None and isinstance(value, torch.Tensor) else value
    return inputs


@torch.no_grad()
def evaluate(model, loader, accelerator: Accelerator, desc: str = "eval", show_progress: bool = False) -> dict:
    """Loss, top-1, top-5 and per-sample predictions over a loader (labels < 0 are skipped in metrics).
    A model without labels (a captioner) gets its mean loss only."""
    model.eval()
    if not is_classifier(model):
        return _evaluate_loss(model, loader, accelerator, desc, show_progress)
    losses, logits_all, labels_all = [], [], []
    for batch in tqdm(loader, desc=desc, disable=not show_progress, leave=False):
        inputs = model_inputs(model, batch, accelerator.device)
        labels = inputs["labels"]
        if not (labels >= 0).all():
            inputs["labels"] = None
        with accelerator.autocast():
            out = model(**inputs)
        if out.loss is not None:
            losses.append(out.loss.float().item() * len(labels))
        logits_all.append(out.logits.float().cpu())
        labels_all.append(labels.cpu())
    logits, labels = torch.cat(logits_all), torch.cat(labels_all)
    labelled = labels >= 0
    result = dict(num_samples=len(labels), logits=logits, labels=labels, preds=logits.argmax(-1))
    if labelled.any():
        hits = topk_correct(logits[labelled], labels[labelled])
        n = int(labelled.sum())
        result.update(top1=hits[1] / n, top5=hits[5] / n, loss=sum(losses) / n if losses else float("nan"))
    return result


@torch.no_grad()
def _evaluate_loss(model, loader, accelerator: Accelerator, desc: str, show_progress: bool) -> dict:
    total, count = 0.0, 0
    for batch in tqdm(loader, desc=desc, disable=not show_progress, leave=False):
        with accelerator.autocast():
            out = model(**model_inputs(model, batch, accelerator.device))
        n = len(batch["pixel_values"])
        total, count = total + out.loss.float().item() * n, count + n
    return dict(num_samples=count, loss=total / max(count, 1))


@torch.no_grad()
def generate_captions(model, loader, accelerator: Accelerator, cfg: Settings, desc: str = "captions",
                      show_progress: bool = False) -> dict:
    """Captions for every video of a loader: {video_ids, captions, references (the dataset's, '' if none)}."""
    model.eval()
    video_ids, captions, references = [], [], []
    for batch in tqdm(loader, desc=desc, disable=not show_progress, leave=False):
        captions += caption_batch(model, batch, accelerator, cfg)
        video_ids += list(batch["video_id"])
        references += list(batch["caption"])
    return dict(video_ids=video_ids, captions=captions, references=references)


@torch.no_grad()
def caption_batch(model, batch: dict, accelerator: Accelerator, cfg: Settings) -> list[str]:
    """One caption per video of a collated batch, decoded with the run's generation settings."""
    inner = accelerator.unwrap_model(model)
    keys = batch_keys(inner)
    prompts = batch[keys["prompts"]] if "prompts" in keys else None
    with accelerator.autocast():
        return inner.generate(batch["pixel_values"].to(accelerator.device), prompts=prompts,
                              num_beams=cfg.num_beams, max_new_tokens=cfg.max_new_tokens,
                              no_repeat_ngram_size=cfg.no_repeat_ngram_size,
                              repetition_penalty=cfg.repetition_penalty)


@torch.no_grad()
def predict_batch(model, batch: dict, accelerator: Accelerator, cfg: Settings):
    """What the model is used for at inference, on one collated batch: class logits [B, num_classes] for a
    classifier (labels not passed), captions for a captioner. Timed for the latency / throughput report."""
    if not is_classifier(model):
        return caption_batch(model, batch, accelerator, cfg)
    inputs = model_inputs(model, batch, accelerator.device)
    inputs["labels"] = None
    with accelerator.autocast():
        return model(**inputs).logits


def caption_report(generated: dict) -> dict:
    """pycocoevalcap metrics of generated captions against the references (videos without one are skipped)."""
    from caption_metrics import caption_scores
    pairs = [(v, c, r) for v, c, r in zip(generated["video_ids"], generated["captions"], generated["references"]) if r]
    if not pairs:
        return dict(metrics=None, notes=["no reference captions: metrics not computed"])
    scores = caption_scores({v: [r] for v, _, r in pairs}, {v: c for v, c, _ in pairs})
    empty = sum(1 for c in generated["captions"] if not c.strip())
    return dict(metrics=scores, num_scored=len(pairs), empty_captions=empty)


def train_step(model, batch: dict, optimizer, scheduler, accelerator: Accelerator, max_grad_norm: float):
    """One micro-batch: forward, backward, and (when accumulation is complete) clip + optimizer + scheduler step."""
    with accelerator.accumulate(model):
        out = model(**model_inputs(model, batch))
        accelerator.backward(out.loss)
        if accelerator.sync_gradients and max_grad_norm > 0:
            accelerator.clip_grad_norm_(model.parameters(), max_grad_norm)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
    return out


@dataclass
class TrainResult:
    run_dir: str
    best_dir: str
    last_dir: str
    history: list = field(default_factory=list)


def _log_jsonl(path: str, record: dict) -> None:
    with open(path, "a") as fh:
        fh.write(json.dumps(record) + "\n")


def train(cfg: Settings, built, data, run_dir: str, run_config: dict,
          accelerator: Optional[Accelerator] = None) -> TrainResult:
    """Train ``built.model`` on ``data.train``; validate each epoch; write best/ and last/ under run_dir."""
    accelerator = accelerator or make_accelerator(cfg)
    set_seed(cfg.seed)
    from VLoader import make_loader
    model = built.model
    train_loader = make_loader(data.train, cfg.batch_size, True, cfg.num_workers, cfg.seed)
    val_loader = make_loader(data.val, cfg.batch_size, False, cfg.num_workers, cfg.seed) if data.val else None
    steps_per_epoch = math.ceil(len(train_loader) / cfg.gradient_accumulation_steps)
    total_steps = steps_per_epoch * cfg.epochs
    if cfg.max_steps:
        total_steps = min(total_steps, cfg.max_steps)
    optimizer = torch.optim.AdamW(param_groups(model, cfg.weight_decay, cfg.lr, cfg.lr_language_model), lr=cfg.lr,
                                  betas=(0.9, 0.999))
    scheduler = get_cosine_schedule_with_warmup(optimizer, int(cfg.warmup_ratio * total_steps), total_steps)

    start_epoch, global_step, best_top1, history = 0, 0, -math.inf, []
    if cfg.resume_from_checkpoint:
        start_epoch, global_step, best_top1, history = _resume(cfg, run_dir, model, optimizer, scheduler,
                                                               train_loader)
    model, optimizer, train_loader, scheduler = accelerator.prepare(model, optimizer, train_loader, scheduler)
    show = progress_enabled(cfg) and accelerator.is_main_process
    best_dir, last_dir = os.path.join(run_dir, "best"), os.path.join(run_dir, "last")
    metrics_log = os.path.join(run_dir, "metrics.jsonl")

    for epoch in range(start_epoch, cfg.epochs):
        if cfg.max_steps and global_step >= cfg.max_steps:
            break
        model.train()
        train_loader.set_epoch(epoch)
        t0, loss_sum, correct, seen = time.time(), 0.0, 0, 0
        classifier = is_classifier(model)
        bar = tqdm(train_loader, desc=f"epoch {epoch + 1}/{cfg.epochs}", disable=not show, leave=False)
        for batch in bar:
            out = train_step(model, batch, optimizer, scheduler, accelerator, cfg.max_grad_norm)
            n = len(batch["pixel_values"])
            loss_sum += out.loss.item() * n
            if classifier:
                correct += int((out.logits.argmax(-1) == batch["labels"]).sum())
            seen += n
            if accelerator.sync_gradients:
                global_step += 1
                bar.set_postfix(loss=f"{loss_sum / seen:.3f}", acc=f"{correct / seen:.3f}")
                if cfg.max_steps and global_step >= cfg.max_steps:
                    break
        record = dict(epoch=epoch + 1, step=global_step, train_loss=loss_sum / max(seen, 1),
                      lr=scheduler.get_last_lr()[0], epoch_seconds=round(time.time() - t0, 2))
        if classifier:
            record["train_top1"] = correct / max(seen, 1)
        if val_loader is not None:
            val = evaluate(model, val_loader, accelerator, "val", show)
            record["val_loss"] = val["loss"]
            if classifier:
                record.update(val_top1=val["top1"], val_top5=val["top5"])
        history.append(record)
        # checkpoint score: validation top-1 for classifiers, minus the (validation) loss for captioners
        score = record.get("val_top1", record.get("train_top1")) if classifier else \
            -record.get("val_loss", record["train_loss"])
        # the --report_to trackers (a no-op without one); the step is their x axis
        accelerator.log({k: v for k, v in record.items() if k != "step"}, step=global_step)
        if accelerator.is_main_process:
            _log_jsonl(metrics_log, record)
            print(_epoch_line(record, cfg.epochs), flush=True)
            state_dict = accelerator.unwrap_model(model).state_dict()
            meta = dict(run_config, epoch=epoch + 1, step=global_step, metrics=record, history=history)
            training_state = dict(optimizer=optimizer.state_dict(), scheduler=scheduler.state_dict(),
                                  epoch=epoch + 1, step=global_step, best_top1=max(best_top1, score),
                                  rng=rng_state())
            save_checkpoint(last_dir, state_dict, meta, training_state, built.write_assets)
            if score > best_top1:
                best_top1 = score
                save_checkpoint(best_dir, state_dict, meta, write_assets=built.write_assets)
    accelerator.wait_for_everyone()
    return TrainResult(run_dir, best_dir, last_dir, history)


def _epoch_line(r: dict, epochs: int) -> str:
    line = f"epoch {r['epoch']:>3}/{epochs} | train loss {r['train_loss']:.4f}"
    if "train_top1" in r:
        line += f" top1 {100 * r['train_top1']:5.1f}%"
    if "val_loss" in r:
        line += f" | val loss {r['val_loss']:.4f}"
    if "val_top1" in r:
        line += f" top1 {100 * r['val_top1']:5.1f}% top5 {100 * r['val_top5']:5.1f}%"
    return line + f" | lr {r['lr']:.2e} | {r['epoch_seconds']:.1f}s"


def _resume(cfg: Settings, run_dir: str, model, optimizer, scheduler, train_loader):
    """Restore weights, optimizer, scheduler, epoch and RNG from a checkpoint (epoch granularity)."""
    path = cfg.resume_from_checkpoint
    if path == "latest":
        path = os.path.join(run_dir, "last")
    run_config = read_run_config(path)
    saved = run_config["settings"]
    for key in ("vision_model", "model_size", "fusion", "num_frames", "image_size", "use_lora_vision",
                "freeze_visionbackbone", "use_vlm", "language_model", "captioning", "use_text", "use_lora_llm"):
        if saved.get(key) != getattr(cfg, key):
            raise UsageError(f"cannot resume from {path}: it was trained with {key}={saved.get(key)!r}, "
                             f"this run has {key}={getattr(cfg, key)!r}; use the same settings or a new run")
    state = load_training_state(path)
    if state is None:
        raise UsageError(f"{path} has no training state to resume from; resume from checkpoints/<run>/last")
    missing, unexpected = model.load_state_dict(load_weights(path), strict=False)
    if missing or unexpected:
        raise UsageError(f"cannot resume from {path}: weights do not match this model (missing {missing[:3]}, "
                         f"unexpected {unexpected[:3]})")
    optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    set_rng_state(state["rng"])
    history = run_config.get("history", [])
    print(f"resumed from {path} at epoch {state['epoch']} (step {state['step']})")
    return int(state["epoch"]), int(state["step"]), float(state["best_top1"]), history


def classification_report(preds: torch.Tensor, labels: torch.Tensor, class_names: list,
                          reversal_pairs: Optional[dict] = None) -> dict:
    """Per-class accuracy, mean class accuracy, confusion matrix [true][pred]; with time-reversal pairs also
    ``family_accuracy`` (right pair) and ``direction_accuracy`` (right class, among samples in the right pair)."""
    num = len(class_names)
    keep = labels >= 0
    preds, labels = preds[keep], labels[keep]
    confusion = torch.zeros(num, num, dtype=torch.long)
    confusion.index_put_((labels, preds), torch.ones_like(labels), accumulate=True)
    support = confusion.sum(1)
    per_class = {class_names[c]: (confusion[c, c].item() / support[c].item()) if support[c] else None
                 for c in range(num)}
    valid = [v for v in per_class.values() if v is not None]
    report = dict(per_class_accuracy=per_class, mean_class_accuracy=sum(valid) / max(len(valid), 1),
                  confusion_matrix=confusion.tolist())
    if reversal_pairs:
        twin = torch.tensor([int(reversal_pairs.get(str(c), reversal_pairs.get(c, c))) for c in range(num)])
        in_pair = (preds == labels) | (preds == twin[labels])
        report["family_accuracy"] = in_pair.float().mean().item() if len(labels) else None
        report["direction_accuracy"] = ((preds == labels) & in_pair).sum().item() / max(int(in_pair.sum()), 1)
    return report
