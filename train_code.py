"""The train / evaluate loop, on Hugging Face ``accelerate`` (devices, DDP, mixed precision, accumulation, state).

One loop serves every task: models return ``loss`` and ``logits`` (``ModelOutput`` style), so nothing here
branches on the model. AdamW (no decay on biases and norms), linear warm-up then cosine decay, label smoothing
(in the model's loss), gradient clipping, gradient accumulation, bf16/fp16 autocast, per-epoch train/val
loss and top-1/top-5, best + resumable checkpoints.

Several processes (``accelerate launch`` / ``torchrun``): DDP; ``--batch_size`` is per process, so the global batch
is batch_size x processes x gradient_accumulation_steps. Every process trains on its shard of each global batch;
evaluation shards the data too and ``gather_for_metrics`` collects the predictions (dropping the samples accelerate
repeats to even out the last batch); only the main process writes files and prints. The LR schedule counts
optimizer steps of the prepared (sharded) loader, so 2 processes x batch B follow the same schedule as 1 process x
batch 2B.

Exact resume: a checkpoint holds the weights, accelerate's optimizer / scheduler / scaler / per-process RNG state,
and ``Progress`` (epoch, batch position within the epoch, step, best score, history, the epoch's running sums).
Resuming restores all of it and skips the batches already seen (``skip_first_batches``; the shuffle order is a
function of seed and epoch), so an interrupted run ends with the same weights and metrics as an uninterrupted one.
SIGINT / SIGTERM finish the current optimizer step, save, and exit. A non-finite loss stops the run before the
update (``--nan_policy stop``) or skips the batch (``skip``); NaN weights are never written.
"""
from __future__ import annotations

import contextlib
import json
import math
import os
import signal
import sys
import threading
import time
from dataclasses import dataclass, field
from typing import Optional

import torch
from accelerate import Accelerator, skip_first_batches
from accelerate.utils import (DataLoaderConfiguration, DistributedDataParallelKwargs, ProjectConfiguration,
                               is_tensorboard_available, is_wandb_available, set_seed)
from tqdm.auto import tqdm
from transformers import get_cosine_schedule_with_warmup

from build_model import classification_loss
from checkpointing import (BEST_DIR, LAST_LINK, STATE_FORMAT, CheckpointError, latest_checkpoint, load_training_state,
                           load_weights, read_run_config, remove_stale_temp, save_checkpoint, save_resumable,
                           verify_checkpoint)
from settings import DATA, FIELDS, MODEL, RunError, Settings, UsageError


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
    ``log_with`` (an accelerate tracker name) writes under ``logging_dir``. Under ``accelerate launch`` /
    ``torchrun`` it joins the process group (DDP; gloo on CPU)."""
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
    project = ProjectConfiguration(project_dir=logging_dir, logging_dir=logging_dir) if logging_dir else None
    accelerator = Accelerator(
        cpu=use_cpu, mixed_precision=cfg.mixed_precision, gradient_accumulation_steps=cfg.gradient_accumulation_steps,
        # seedable sampler: the shuffle order is a function of (seed, epoch), so a resumed run sees the same order
        dataloader_config=DataLoaderConfiguration(use_seedable_sampler=True),
        # the schedule is counted in optimizer steps and stepped by optimizer_step (accelerate would otherwise step it
        # once per process per step, which makes the schedule depend on the process count)
        step_scheduler_with_optimizer=False,
        # a BERT encoder's pooler gets no gradient (the vision + language classifier reads the token states), and
        # DDP fails on parameters without one unless told to look for them (an extra graph walk per step)
        kwargs_handlers=[DistributedDataParallelKwargs(find_unused_parameters=cfg.use_vlm)],
        log_with=log_with, project_config=project)
    accelerator.register_save_state_pre_hook(_weights_saved_by_us)
    accelerator.register_load_state_pre_hook(_weights_loaded_by_us)
    return accelerator


def _weights_saved_by_us(models, weights, output_dir) -> None:
    """save_state hook: checkpointing writes model.safetensors itself (unwrapped names, tied weights kept)."""
    weights.clear()


def _weights_loaded_by_us(models, input_dir) -> None:
    """load_state hook: the weights are loaded from our model.safetensors (restore_training)."""
    models.clear()


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
    A model without labels (a captioner) gets its mean loss only.

    With several processes, each evaluates its shard of an ``accelerator.prepare``-d loader and
    ``gather_for_metrics`` collects every sample once, in dataset order (it drops the samples accelerate repeats
    to fill the last batch). The loss is per sample, so the result does not depend on how batches were split.
    """
    model.eval()
    if not is_classifier(model):
        return _evaluate_loss(model, loader, accelerator, desc, show_progress)
    label_smoothing = accelerator.unwrap_model(model).label_smoothing
    logits_all, labels_all, losses_all = [], [], []
    for batch in tqdm(loader, desc=desc, disable=not show_progress, leave=False):
        inputs = model_inputs(model, batch, accelerator.device)
        labels = inputs.pop("labels")  # [B]; -1 = unlabelled
        with accelerator.autocast():
            logits = model(**inputs).logits.float()  # [B, num_classes]
        losses = classification_loss(logits, labels.clamp(min=0), label_smoothing, "none") * (labels >= 0)  # [B]
        logits, labels, losses = accelerator.gather_for_metrics((logits, labels, losses))
        logits_all.append(logits.cpu())
        labels_all.append(labels.cpu())
        losses_all.append(losses.cpu())
    logits, labels, losses = torch.cat(logits_all), torch.cat(labels_all), torch.cat(losses_all)
    labelled = labels >= 0
    result = dict(num_samples=len(labels), logits=logits, labels=labels, preds=logits.argmax(-1))
    if labelled.any():
        hits = topk_correct(logits[labelled], labels[labelled])
        n = int(labelled.sum())
        result.update(top1=hits[1] / n, top5=hits[5] / n, loss=losses[labelled].double().sum().item() / n)
    return result


@torch.no_grad()
def _evaluate_loss(model, loader, accelerator: Accelerator, desc: str, show_progress: bool) -> dict:
    """Mean loss of a captioner: each clip carries its batch's mean (token-level) loss; clips are gathered from all
    processes as in ``evaluate``."""
    losses = []
    for batch in tqdm(loader, desc=desc, disable=not show_progress, leave=False):
        with accelerator.autocast():
            out = model(**model_inputs(model, batch, accelerator.device))
        per_clip = out.loss.float().reshape(1).expand(len(batch["pixel_values"]))  # [B]
        losses.append(accelerator.gather_for_metrics(per_clip).cpu())
    losses = torch.cat(losses) if losses else torch.zeros(0)
    return dict(num_samples=len(losses), loss=losses.double().sum().item() / max(len(losses), 1))


@torch.no_grad()
def generate_captions(model, loader, accelerator: Accelerator, cfg: Settings, desc: str = "captions",
                      show_progress: bool = False) -> dict:
    """Captions for every video of a loader: {video_ids, captions, references (the dataset's, '' if none)},
    gathered from all processes (each generates for its shard)."""
    model.eval()
    rows = []  # (video_id, caption, reference)
    for batch in tqdm(loader, desc=desc, disable=not show_progress, leave=False):
        mine = list(zip(batch["video_id"], caption_batch(model, batch, accelerator, cfg), batch["caption"]))
        rows += accelerator.gather_for_metrics(mine, use_gather_object=True)
    video_ids, captions, references = (list(column) for column in zip(*rows)) if rows else ([], [], [])
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


def all_finite(loss: torch.Tensor, accelerator: Accelerator) -> bool:
    """Whether the loss is finite on every process (they must agree: a skipped backward on one process and not on
    another would hang DDP)."""
    finite = torch.isfinite(loss.detach()).all().reshape(1).float()  # [1]
    if accelerator.num_processes > 1:
        finite = accelerator.gather(finite).min()
    return bool(finite.item())


def forward_backward(model, batch: dict, accelerator: Accelerator, skip_nonfinite: bool = False):
    """One micro-batch inside accelerate's accumulation context: forward, then backward unless the loss is
    non-finite. Returns (model output, finite). With ``skip_nonfinite`` and several processes, a skipped batch
    back-propagates an exact zero instead, because DDP expects a backward after every training forward."""
    with accelerator.accumulate(model):
        out = model(**model_inputs(model, batch))
        finite = all_finite(out.loss, accelerator)
        if finite:
            accelerator.backward(out.loss)
        elif skip_nonfinite and accelerator.num_processes > 1:
            accelerator.backward(sum(p.sum() for p in model.parameters() if p.requires_grad) * 0.0)
    return out, finite


def optimizer_step(model, optimizer, scheduler, accelerator: Accelerator, max_grad_norm: float,
                   update: bool = True) -> None:
    """At the end of an accumulation window: clip, step the optimizer (unless ``update`` is False: every batch of
    the window was skipped), step the schedule (it follows the data position), clear the gradients."""
    if update:
        if max_grad_norm > 0:
            accelerator.clip_grad_norm_(model.parameters(), max_grad_norm)
        optimizer.step()
    if not accelerator.optimizer_step_was_skipped:  # fp16: the loss scaler skipped an overflowing step
        scheduler.step()
    optimizer.zero_grad(set_to_none=True)


def train_step(model, batch: dict, optimizer, scheduler, accelerator: Accelerator, max_grad_norm: float):
    """One micro-batch: forward, backward, and (when accumulation is complete) clip + optimizer + scheduler step.
    A non-finite loss raises RunError before any update."""
    out, finite = forward_backward(model, batch, accelerator)
    if not finite:
        raise RunError(f"non-finite training loss ({out.loss.item()}); no update was made")
    if accelerator.sync_gradients:
        optimizer_step(model, optimizer, scheduler, accelerator, max_grad_norm)
    return out


@dataclass
class Progress:
    """Where a run is. Saved in every resumable checkpoint as plain values (loads with weights_only=True)."""
    epoch: int = 0  # epochs completed
    batch: int = 0  # batches of the current epoch already trained on, per process (0 at an epoch boundary)
    step: int = 0  # optimizer steps taken
    best_score: float = -math.inf
    history: list = field(default_factory=list)  # one record per completed epoch (metrics.jsonl)
    loss_sum: float = 0.0  # this process's running totals over the current epoch's finite batches
    correct: int = 0
    seen: int = 0
    skipped: int = 0  # batches skipped for a non-finite loss (--nan_policy skip), whole run

    def count(self, out, batch: dict, classifier: bool) -> None:
        n = len(batch["pixel_values"])
        self.loss_sum += out.loss.item() * n
        if classifier:
            self.correct += int((out.logits.argmax(-1) == batch["labels"]).sum())
        self.seen += n

    def next_epoch(self) -> None:
        self.epoch, self.batch, self.loss_sum, self.correct, self.seen = self.epoch + 1, 0, 0.0, 0, 0

    def sums(self, device) -> torch.Tensor:
        return torch.tensor([[self.loss_sum, self.correct, self.seen]], dtype=torch.float64, device=device)  # [1, 3]

    def to_state(self, all_sums: torch.Tensor, cfg: Settings, num_processes: int) -> dict:
        """``all_sums``: [processes, 3] running sums of every process (each restores its own row)."""
        return dict(format=STATE_FORMAT, epoch=self.epoch, batch=self.batch, step=self.step,
                    best_score=self.best_score, history=self.history, epoch_sums=all_sums.cpu(),
                    skipped=self.skipped, num_processes=num_processes, batch_size=cfg.batch_size,
                    gradient_accumulation_steps=cfg.gradient_accumulation_steps,
                    sampler=dict(seed=cfg.seed, epoch=self.epoch), settings=cfg.to_dict())

    @classmethod
    def from_state(cls, state: dict, process_index: int) -> "Progress":
        loss_sum, correct, seen = state["epoch_sums"][process_index].tolist()
        return cls(epoch=state["epoch"], batch=state["batch"], step=state["step"], best_score=state["best_score"],
                   history=list(state["history"]), loss_sum=loss_sum, correct=int(correct), seen=int(seen),
                   skipped=state["skipped"])


class TrainingInterrupted(KeyboardInterrupt):
    """SIGINT / SIGTERM during training, after a resumable checkpoint was saved. Exit code 128 + signal number."""

    def __init__(self, message: str, signum: int):
        super().__init__(message)
        self.exit_code = 128 + signum


class StopOnSignal:
    """SIGINT and SIGTERM during training ask for a clean stop: the handler only sets accelerate's trigger, and the
    loop checks it (``accelerator.check_trigger``, a max over all processes) after each optimizer step, so every
    process saves the same checkpoint and exits. A second signal stops at once. Handlers are restored on exit."""

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self, accelerator: Accelerator):
        self.accelerator, self.received, self.previous = accelerator, None, {}

    def __enter__(self) -> "StopOnSignal":
        if threading.current_thread() is threading.main_thread():  # Python allows handlers there only
            self.previous = {sig: signal.signal(sig, self._handle) for sig in self.SIGNALS}
        return self

    def _handle(self, signum, frame) -> None:
        if self.received is not None:
            self.__exit__()
            raise KeyboardInterrupt
        self.received = signum
        self.accelerator.set_trigger()
        if self.accelerator.is_main_process:
            print(f"received {signal.Signals(signum).name}: saving a resumable checkpoint after this step "
                  f"(signal again to stop at once)", file=sys.stderr, flush=True)

    def __exit__(self, *exc) -> None:
        for sig, handler in self.previous.items():
            signal.signal(sig, handler)
        self.previous = {}

    def requested(self) -> bool:
        return self.accelerator.check_trigger()

    def stop(self, folder: str, run_name: str) -> TrainingInterrupted:
        signum = self.received or signal.SIGTERM  # another process got it: the launcher forwards SIGTERM
        return TrainingInterrupted(f"{signal.Signals(signum).name}: resumable checkpoint saved at {folder}; continue "
                                   f"with --resume_from_checkpoint latest --run_name {run_name}", signum)


@contextlib.contextmanager
def deterministic_algorithms(enabled: bool):
    """torch.use_deterministic_algorithms for the block (restored after: it is process-wide)."""
    previous = torch.are_deterministic_algorithms_enabled()
    if enabled:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")  # required by deterministic cuBLAS
        torch.backends.cudnn.benchmark = False
        torch.use_deterministic_algorithms(True)
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(previous)


@dataclass
class TrainResult:
    run_dir: str
    best_dir: str
    last_dir: str
    history: list = field(default_factory=list)


@dataclass
class Loop:
    """Everything the training loop works with; model, optimizer, scheduler and loaders prepared by accelerate."""
    cfg: Settings
    accelerator: Accelerator
    model: torch.nn.Module
    optimizer: object
    scheduler: object
    train_loader: object
    val_loader: object
    run_dir: str
    run_config: dict
    write_assets: object

    @property
    def metrics_log(self) -> str:
        return os.path.join(self.run_dir, "metrics.jsonl")


def planned_steps(cfg: Settings, batches_per_epoch: int) -> int:
    """Optimizer steps of the whole run, from the batches each process sees per epoch."""
    total = math.ceil(batches_per_epoch / cfg.gradient_accumulation_steps) * cfg.epochs
    return min(total, cfg.max_steps) if cfg.max_steps else total


def prepare_training(cfg: Settings, built, data, run_dir: str, run_config: dict, accelerator: Accelerator) -> Loop:
    from VLoader import make_loader
    train_loader = accelerator.prepare(make_loader(data.train, cfg.batch_size, True, cfg.num_workers, cfg.seed))
    val_loader = accelerator.prepare(make_loader(data.val, cfg.batch_size, False, cfg.num_workers, cfg.seed)) \
        if data.val else None
    total_steps = planned_steps(cfg, len(train_loader))  # len of the sharded loader: batches per process
    optimizer = torch.optim.AdamW(param_groups(built.model, cfg.weight_decay, cfg.lr, cfg.lr_language_model),
                                  lr=cfg.lr, betas=(0.9, 0.999))
    scheduler = get_cosine_schedule_with_warmup(optimizer, int(cfg.warmup_ratio * total_steps), total_steps)
    model, optimizer, scheduler = accelerator.prepare(built.model, optimizer, scheduler)
    return Loop(cfg, accelerator, model, optimizer, scheduler, train_loader, val_loader, run_dir, run_config,
                built.write_assets)


def train(cfg: Settings, built, data, run_dir: str, run_config: dict,
          accelerator: Optional[Accelerator] = None, resume_from: Optional[str] = None) -> TrainResult:
    """Train ``built.model`` on ``data.train``; validate each epoch; write checkpoint-<step>/, last and best/ under
    run_dir. ``resume_from``: a checkpoint folder (checked by ``check_resume``) to continue exactly from."""
    accelerator = accelerator or make_accelerator(cfg)
    set_seed(cfg.seed)
    loop = prepare_training(cfg, built, data, run_dir, run_config, accelerator)
    progress = restore_training(loop, resume_from) if resume_from else Progress()
    if accelerator.is_main_process:
        remove_stale_temp(run_dir)
        _rewrite_jsonl(loop.metrics_log, progress.history)  # a resumed run continues the checkpoint's history
    with StopOnSignal(accelerator) as stop, deterministic_algorithms(cfg.deterministic):
        while progress.epoch < cfg.epochs and not (cfg.max_steps and progress.step >= cfg.max_steps):
            t0 = time.time()
            train_epoch(loop, progress, stop)
            folder = end_epoch(loop, progress, time.time() - t0)
            if stop.requested():
                raise stop.stop(folder, os.path.basename(run_dir))
    accelerator.wait_for_everyone()
    return TrainResult(run_dir, os.path.join(run_dir, BEST_DIR), os.path.join(run_dir, LAST_LINK), progress.history)


def train_epoch(loop: Loop, progress: Progress, stop: StopOnSignal) -> None:
    """Train from ``progress.batch`` to the end of epoch ``progress.epoch`` (or --max_steps). Saves every
    --save_steps steps; on a stop request saves and raises TrainingInterrupted."""
    cfg, accelerator, model = loop.cfg, loop.accelerator, loop.model
    model.train()
    loop.train_loader.set_epoch(progress.epoch)
    loader = skip_first_batches(loop.train_loader, progress.batch) if progress.batch else loop.train_loader
    classifier = is_classifier(model)
    show = progress_enabled(cfg) and accelerator.is_main_process
    bar = tqdm(loader, desc=f"epoch {progress.epoch + 1}/{cfg.epochs}", disable=not show, leave=False,
               initial=progress.batch, total=len(loop.train_loader))
    window_has_grad = False  # a batch of the current accumulation window back-propagated a finite loss
    for batch in bar:
        out, finite = forward_backward(model, batch, accelerator, skip_nonfinite=cfg.nan_policy == "skip")
        progress.batch += 1
        if finite:
            progress.count(out, batch, classifier)
        elif cfg.nan_policy == "stop":
            raise nonfinite_stop(loop, progress, out.loss)
        else:
            progress.skipped += 1
        window_has_grad |= finite
        if not accelerator.sync_gradients:
            continue
        optimizer_step(model, loop.optimizer, loop.scheduler, accelerator, cfg.max_grad_norm, window_has_grad)
        window_has_grad = False
        progress.step += 1
        bar.set_postfix(loss=f"{progress.loss_sum / max(progress.seen, 1):.3f}",
                        acc=f"{progress.correct / max(progress.seen, 1):.3f}")
        if progress.batch == len(loop.train_loader) or (cfg.max_steps and progress.step >= cfg.max_steps):
            return  # end_epoch saves this state
        if stop.requested():
            raise stop.stop(save_progress(loop, progress), os.path.basename(loop.run_dir))
        if cfg.save_steps and progress.step % cfg.save_steps == 0:
            save_progress(loop, progress)


def nonfinite_stop(loop: Loop, progress: Progress, loss: torch.Tensor) -> RunError:
    last = latest_checkpoint(loop.run_dir)
    kept = f"the last good checkpoint is {last}" if last else "no checkpoint was written yet"
    return RunError(f"non-finite training loss ({loss.item()}) at epoch {progress.epoch + 1}, batch {progress.batch}"
                    f" (after step {progress.step}); stopped before the update, {kept}. Lower --lr, check the data, "
                    f"or pass --nan_policy skip to skip such batches")


def end_epoch(loop: Loop, progress: Progress, seconds: float) -> str:
    """Epoch record (train totals over all processes, validation), metrics.jsonl, best/ and a resumable
    checkpoint. Returns the checkpoint folder."""
    cfg, accelerator = loop.cfg, loop.accelerator
    loss_sum, correct, seen = accelerator.reduce(progress.sums(accelerator.device), "sum")[0].tolist()
    record = dict(epoch=progress.epoch + 1, step=progress.step, train_loss=loss_sum / max(seen, 1),
                  lr=loop.scheduler.get_last_lr()[0], epoch_seconds=round(seconds, 2))
    classifier = is_classifier(loop.model)
    if classifier:
        record["train_top1"] = correct / max(seen, 1)
    if cfg.nan_policy == "skip":
        record["skipped_batches"] = progress.skipped
    if loop.val_loader is not None:
        val = evaluate(loop.model, loop.val_loader, accelerator, "val", progress_enabled(cfg) and
                       accelerator.is_main_process)
        record["val_loss"] = val["loss"]
        if classifier:
            record.update(val_top1=val["top1"], val_top5=val["top5"])
    # checkpoint score: validation top-1 for classifiers, minus the (validation) loss for captioners
    score = record.get("val_top1", record.get("train_top1")) if classifier else \
        -record.get("val_loss", record["train_loss"])
    accelerator.log({k: v for k, v in record.items() if k != "step"}, step=progress.step)  # --report_to trackers
    progress.history.append(record)
    progress.next_epoch()
    if accelerator.is_main_process:
        _log_jsonl(loop.metrics_log, record)
        print(_epoch_line(record, cfg.epochs), flush=True)
    weights = accelerator.get_state_dict(loop.model)
    if score > progress.best_score:  # best/ first: a crash before the resumable save redoes this epoch
        progress.best_score = score
        if accelerator.is_main_process:
            meta = dict(loop.run_config, epoch=progress.epoch, step=progress.step, metrics=record,
                        history=progress.history)
            save_checkpoint(os.path.join(loop.run_dir, BEST_DIR), weights, meta, write_assets=loop.write_assets)
    return save_progress(loop, progress, weights)


def save_progress(loop: Loop, progress: Progress, weights: Optional[dict] = None) -> str:
    """A resumable checkpoint-<step>/ of the current state (all processes call this)."""
    accelerator = loop.accelerator
    weights = weights if weights is not None else accelerator.get_state_dict(loop.model)
    all_sums = accelerator.gather(progress.sums(accelerator.device))  # [processes, 3]
    state = progress.to_state(all_sums, loop.cfg, accelerator.num_processes)
    meta = dict(loop.run_config, epoch=progress.epoch, step=progress.step, history=progress.history)
    folder = os.path.join(loop.run_dir, f"checkpoint-{progress.step}")
    return save_resumable(accelerator, folder, weights, meta, state, loop.write_assets, loop.cfg.save_total_limit)


def restore_training(loop: Loop, folder: str) -> Progress:
    """Weights, optimizer, scheduler, scaler, this process's RNG (accelerate's load_state) and Progress."""
    loop.accelerator.load_state(folder)  # the model is skipped by _weights_loaded_by_us: ours is loaded below
    loop.accelerator.unwrap_model(loop.model).load_state_dict(load_weights(folder))
    progress = Progress.from_state(load_training_state(folder), loop.accelerator.process_index)
    if loop.accelerator.is_main_process:
        where = f"epoch {progress.epoch + 1}, batch {progress.batch}" if progress.batch else \
            f"the end of epoch {progress.epoch}"
        print(f"resumed from {folder} at {where} (step {progress.step})", flush=True)
    return progress


# settings that may differ on resume without making the run a different model
RESUME_FREE = {"data_root", "resume_from_checkpoint"}
# settings that fix the batches of an epoch: a mid-epoch position is counted in them
BATCH_LAYOUT = ("batch_size", "gradient_accumulation_steps", "seed")
# settings that may change on resume, at the price of no longer matching the uninterrupted run
TRAINING_KNOBS = ("epochs", "max_steps", "lr", "weight_decay", "warmup_ratio", "label_smoothing", "max_grad_norm",
                  "mixed_precision", *BATCH_LAYOUT)


def check_resume(cfg: Settings, folder: str, class_names: list, accelerator: Accelerator) -> None:
    """Refuse a checkpoint that cannot continue this run exactly, naming the difference: another model or data
    setting, other classes, another process count, or (mid-epoch) another batch layout. Every file is read the safe
    way first (``verify_checkpoint``). Other training settings may change, with a note."""
    verify_checkpoint(folder)
    saved_config, state = read_run_config(folder), load_training_state(folder)
    if state is None or state.get("format") != STATE_FORMAT:
        raise CheckpointError(f"{folder} has no resumable training state of this version (expected "
                              f"training_state.pt format {STATE_FORMAT}); resume from checkpoints/<run>/last or a "
                              f"checkpoint-<step> folder written by this version")
    diffs = resume_differences(cfg, saved_config, state, list(class_names), accelerator.num_processes)
    if diffs:
        raise CheckpointError(f"cannot resume from {folder}: it differs from this run in " + "; ".join(diffs[:4]) +
                              ". Use the checkpoint's settings (see its run_config.json) or start a new run")
    saved = saved_config["settings"]
    changed = [k for k in TRAINING_KNOBS if k in saved and saved[k] != getattr(cfg, k)]
    if changed and accelerator.is_main_process:
        print(f"note: resuming with changed {', '.join(f'{k} ({saved[k]} -> {getattr(cfg, k)})' for k in changed)};"
              f" the run will not match an uninterrupted one", file=sys.stderr)


def resume_differences(cfg: Settings, saved_config: dict, state: dict, class_names: list, num_processes: int
                       ) -> list[str]:
    """What makes a checkpoint unfit to continue this run, each as 'what there, what here'."""
    # a setting added after the checkpoint was written holds its default there
    saved = {**{k: f.default for k, f in FIELDS.items()}, **saved_config["settings"]}
    diffs = []
    if saved_config["class_names"] != class_names:
        diffs.append(f"{len(saved_config['class_names'])} classes {saved_config['class_names']} there, "
                     f"{len(class_names)} classes {class_names} here")
    model_and_data = [k for k in FIELDS if FIELDS[k].metadata["group"] in (MODEL, DATA) and k not in RESUME_FREE]
    diffs += [f"{k}={saved.get(k)!r} there, {getattr(cfg, k)!r} here" for k in model_and_data
              if saved.get(k) != getattr(cfg, k)]
    if state["num_processes"] != num_processes:
        diffs.append(f"{state['num_processes']} processes there, {num_processes} here (each process's RNG state is "
                     f"saved; launch with --nproc_per_node / --num_processes {state['num_processes']})")
    if state["batch"]:  # the position within the epoch is counted in batches of the saved layout and order
        diffs += [f"{k}={saved.get(k)!r} there, {getattr(cfg, k)!r} here (mid-epoch checkpoint)" for k in BATCH_LAYOUT
                  if saved.get(k) != getattr(cfg, k)]
    return diffs


def _log_jsonl(path: str, record: dict) -> None:
    with open(path, "a") as fh:
        fh.write(json.dumps(record) + "\n")


def _rewrite_jsonl(path: str, records: list) -> None:
    """metrics.jsonl = exactly these records (a resume from an older checkpoint drops the later epochs)."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    if records or os.path.exists(path):
        with open(f"{path}.tmp", "w") as fh:
            fh.writelines(json.dumps(r) + "\n" for r in records)
        os.replace(f"{path}.tmp", path)


def _epoch_line(r: dict, epochs: int) -> str:
    line = f"epoch {r['epoch']:>3}/{epochs} | train loss {r['train_loss']:.4f}"
    if "train_top1" in r:
        line += f" top1 {100 * r['train_top1']:5.1f}%"
    if "val_loss" in r:
        line += f" | val loss {r['val_loss']:.4f}"
    if "val_top1" in r:
        line += f" top1 {100 * r['val_top1']:5.1f}% top5 {100 * r['val_top5']:5.1f}%"
    if r.get("skipped_batches"):
        line += f" | {r['skipped_batches']} non-finite batches skipped"
    return line + f" | lr {r['lr']:.2e} | {r['epoch_seconds']:.1f}s"


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
