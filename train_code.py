"""The train / evaluate loop, on Hugging Face ``accelerate`` (devices, DDP, mixed precision, accumulation, state).

One loop serves every task: models return ``loss`` and ``logits`` (``ModelOutput`` style) and the task
(``videolab/tasks``) judges them (its running train accuracy, its validation, which epoch is best, its test
report), so nothing here asks which task it runs. AdamW (no decay on biases and norms), linear warm-up then cosine
decay, label smoothing (in the model's loss), gradient clipping, gradient accumulation, bf16/fp16 autocast,
per-epoch train/val records, best + resumable checkpoints; then :func:`test_and_report` (eval.json, the results
table, plots).

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

import json
import math
import os
import signal
import sys
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Optional

import torch
from accelerate import Accelerator, skip_first_batches
from accelerate.utils import set_seed
from safetensors.torch import load_model, save_model
from tqdm.auto import tqdm
from transformers import get_cosine_schedule_with_warmup

from videolab.core.checkpoints import (BEST_DIR, LAST_LINK, STATE_FORMAT, latest_checkpoint, load_training_state,
                                       load_weights, read_run_config, save_checkpoint, save_resumable,
                                       verify_checkpoint)
from videolab.core.errors import CheckpointError, IncompleteResult, RunError, UsageError
from videolab.core.files import remove_stale_temp, write_json, write_text
from videolab.core.hub import hub_offline_mode
from videolab.core.runtime import (deterministic_algorithms, full_state_dict, is_sharded, load_full_state_dict,
                                   make_accelerator, progress_enabled)
from videolab.core.settings import DATA, FIELDS, MODEL, Settings
from videolab.data.clips import make_loader
from videolab.evaluation.reports import (append_summary_row, environment_info, measure_speed, peak_memory,
                                         summary_row, timestamp, view_protocol)
from videolab.models.layer_decay import layer_lr_scales
from videolab.tasks.base import Task, TestRun, model_inputs

# accelerate's project name: for TensorBoard the sub-folder of the run folder, for W&B the project
TRACKER_PROJECT = {"tensorboard": "tensorboard", "wandb": "video-understanding"}
EMA_FILE = "ema.safetensors"  # --model_ema: the averaged weights in a resumable checkpoint (best/ holds them as its
#                               model.safetensors)


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
                 lr_language_model: Optional[float] = None, layer_decay: float = 1.0) -> list[dict]:
    """AdamW groups: weight decay on matrices only (not biases, norms, 1-D params); a pretrained language model's
    own weights at ``lr_language_model`` (default lr / 10), so fine-tuning does not wreck what it learned while the
    new parts (projector, head, a backbone trained from scratch) learn at ``lr``; with ``layer_decay`` < 1 a
    ViT-style backbone's blocks at ``lr * layer_decay ** depth-from-the-top`` (``videolab.models.layer_decay``)."""
    lm_weights = pretrained_language_weights(model)
    lm_lr = lr / 10 if lr_language_model is None else lr_language_model
    scales = layer_lr_scales(model, layer_decay)
    groups = {}  # (is LM weight, lr scale, decays) -> params
    for p in model.parameters():
        if p.requires_grad:
            groups.setdefault((id(p) in lm_weights, scales.get(id(p), 1.0), p.ndim >= 2), []).append(p)
    return [dict(params=params, weight_decay=weight_decay if decays else 0.0,
                 lr=(lm_lr if is_lm else lr) * scale, lr_scale=scale)
            for (is_lm, scale, decays), params in sorted(groups.items())]


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
    train_seconds: float = 0.0  # training wall time before this session (a resumed run adds to it)
    epoch_seconds: float = 0.0  # of the current epoch, before this session (a mid-epoch resume adds to it)
    phases: dict = field(default_factory=dict)  # wall seconds by phase (PHASES), whole run, resumed sessions included
    # this session's clocks (not saved): when it started, when the current epoch's part of it started
    session_start: float = field(default_factory=time.time, repr=False)
    epoch_start: float = field(default_factory=time.time, repr=False)

    def elapsed(self) -> float:
        """Training wall time of the whole run so far, every session of it."""
        return self.train_seconds + time.time() - self.session_start

    def epoch_elapsed(self) -> float:
        return self.epoch_seconds + time.time() - self.epoch_start

    def count(self, out, batch: dict, task: Task) -> None:
        n = len(batch["pixel_values"])
        self.loss_sum += out.loss.item() * n
        self.correct += task.train_correct(out, batch)
        self.seen += n

    def next_epoch(self) -> None:
        self.epoch, self.batch, self.loss_sum, self.correct, self.seen = self.epoch + 1, 0, 0.0, 0, 0

    def sums(self, device) -> torch.Tensor:
        return torch.tensor([[self.loss_sum, self.correct, self.seen]], dtype=torch.float64, device=device)  # [1, 3]

    def to_state(self, all_sums: torch.Tensor, cfg: Settings, num_processes: int) -> dict:
        """``all_sums``: [processes, 3] running sums of every process (each restores its own row)."""
        return dict(format=STATE_FORMAT, epoch=self.epoch, batch=self.batch, step=self.step,
                    best_score=self.best_score, history=self.history, epoch_sums=all_sums.cpu(),
                    skipped=self.skipped, train_seconds=self.elapsed(), epoch_seconds=self.epoch_elapsed(),
                    phases=dict(self.phases),
                    num_processes=num_processes, batch_size=cfg.batch_size,
                    gradient_accumulation_steps=cfg.gradient_accumulation_steps,
                    sampler=dict(seed=cfg.seed, epoch=self.epoch), settings=cfg.to_dict())

    @classmethod
    def from_state(cls, state: dict, process_index: int) -> "Progress":
        loss_sum, correct, seen = state["epoch_sums"][process_index].tolist()
        return cls(epoch=state["epoch"], batch=state["batch"], step=state["step"], best_score=state["best_score"],
                   history=list(state["history"]), loss_sum=loss_sum, correct=int(correct), seen=int(seen),
                   skipped=state["skipped"], train_seconds=float(state.get("train_seconds", 0.0)),
                   epoch_seconds=float(state.get("epoch_seconds", 0.0)), phases=dict(state.get("phases", {})))

    @contextmanager
    def timed(self, phase: str):
        """Adds the wall time of the block to ``phases[phase]`` (one perf_counter pair: microseconds)."""
        start = time.perf_counter()
        try:
            yield
        finally:
            self.phases[phase] = self.phases.get(phase, 0.0) + time.perf_counter() - start

    def timed_batches(self, loader):
        """The loader's batches, with the wait for each one counted as ``data``."""
        batches = iter(loader)
        while True:
            with self.timed("data"):
                batch = next(batches, None)
            if batch is None:
                return
            yield batch

    def time_breakdown(self) -> dict:
        """Training wall time by phase (data, step, validation, checkpoint, other = the rest: logging, progress
        bars, the epoch bookkeeping), seconds; benchmarks/run_time.py reads it from eval.json."""
        phases = {name: round(self.phases.get(name, 0.0), 2) for name in PHASES}
        return dict(phases, other=round(max(self.elapsed() - sum(phases.values()), 0.0), 2))


# the phases of training that Progress times: waiting for a batch, forward + backward + optimizer step, validation,
# writing checkpoints (gathering the weights, best/, checkpoint-<step>/)
PHASES = ("data", "step", "validation", "checkpoint")


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


@dataclass
class TrainResult:
    run_dir: str
    best_dir: str
    last_dir: str
    history: list = field(default_factory=list)
    train_seconds: float = 0.0  # the whole run's training time, resumed sessions included
    time_breakdown: dict = field(default_factory=dict)  # Progress.time_breakdown(): seconds by phase


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
    task: Task
    ema: Optional[torch.nn.Module] = None  # timm ModelEmaV3 (--model_ema): its .module is validated and saved
    batch_transform: Optional[object] = None  # the task's change to every training batch (Mixup / CutMix)

    @property
    def eval_model(self) -> torch.nn.Module:
        """What validation judges and best/ holds: the EMA of the weights with --model_ema, else the model."""
        return self.ema.module if self.ema is not None else self.model

    def checkpoint_files(self, folder: str) -> None:
        """Files of a resumable checkpoint besides ours and accelerate's: the model's assets, the EMA weights."""
        self.write_assets(folder)
        if self.ema is not None:
            save_model(self.ema.module, os.path.join(folder, EMA_FILE))

    @property
    def metrics_log(self) -> str:
        return os.path.join(self.run_dir, "metrics.jsonl")


def planned_steps(cfg: Settings, batches_per_epoch: int, accumulation: int) -> int:
    """Optimizer steps of the whole run, from the batches each process sees per epoch and the accumulation the
    accelerator applies (``accelerator.gradient_accumulation_steps``)."""
    total = math.ceil(batches_per_epoch / accumulation) * cfg.epochs
    return min(total, cfg.max_steps) if cfg.max_steps else total


def prepare_training(cfg: Settings, built, data, run_dir: str, run_config: dict, accelerator: Accelerator) -> Loop:
    train_loader = accelerator.prepare(make_loader(data.train, cfg.batch_size, True, cfg.num_workers, cfg.seed))
    val_loader = accelerator.prepare(make_loader(data.val, cfg.batch_size, False, cfg.num_workers, cfg.seed)) \
        if data.val else None
    # len of the sharded loader: batches per process
    total_steps = planned_steps(cfg, len(train_loader), accelerator.gradient_accumulation_steps)
    optimizer = torch.optim.AdamW(param_groups(built.model, cfg.weight_decay, cfg.lr, cfg.lr_language_model,
                                               cfg.layer_decay), lr=cfg.lr, betas=(0.9, 0.999))
    scheduler = get_cosine_schedule_with_warmup(optimizer, int(cfg.warmup_ratio * total_steps), total_steps)
    model, optimizer, scheduler = accelerator.prepare(built.model, optimizer, scheduler)
    return Loop(cfg, accelerator, model, optimizer, scheduler, train_loader, val_loader, run_dir, run_config,
                built.write_assets, built.task, make_ema(cfg, accelerator, model),
                built.task.batch_transform(cfg, len(run_config["class_names"])))


def make_ema(cfg: Settings, accelerator: Accelerator, model: torch.nn.Module):
    """--model_ema: timm's ModelEmaV3 over the unwrapped model (a copy on the same device, updated after every
    optimizer step; with --model_ema_warmup the decay ramps up as 1 - (1 + step) ** -0.75). None without it."""
    if not cfg.model_ema:
        return None
    if is_sharded(accelerator):
        raise UsageError("--model_ema keeps a full copy of the weights on every process, which FSDP's sharding is "
                         "there to avoid; drop --model_ema or train without FSDP")
    from timm.utils import ModelEmaV3
    return ModelEmaV3(accelerator.unwrap_model(model), decay=cfg.model_ema_decay, use_warmup=cfg.model_ema_warmup,
                      warmup_power=3 / 4)


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
        write_jsonl(loop.metrics_log, progress.history)  # a resumed run continues the checkpoint's history
    with StopOnSignal(accelerator) as stop, deterministic_algorithms(cfg.deterministic):
        while progress.epoch < cfg.epochs and not (cfg.max_steps and progress.step >= cfg.max_steps):
            if progress.batch == 0:  # a new epoch starts its clock (a mid-epoch resume continues the saved one)
                progress.epoch_seconds, progress.epoch_start = 0.0, time.time()
            train_epoch(loop, progress, stop)
            folder = end_epoch(loop, progress, progress.epoch_elapsed())
            if stop.requested():
                raise stop.stop(folder, os.path.basename(run_dir))
    accelerator.wait_for_everyone()
    return TrainResult(run_dir, os.path.join(run_dir, BEST_DIR), os.path.join(run_dir, LAST_LINK), progress.history,
                       round(progress.elapsed(), 1), progress.time_breakdown())


def train_epoch(loop: Loop, progress: Progress, stop: StopOnSignal) -> None:
    """Train from ``progress.batch`` to the end of epoch ``progress.epoch`` (or --max_steps). Saves every
    --save_steps steps; on a stop request saves and raises TrainingInterrupted."""
    cfg, accelerator, model = loop.cfg, loop.accelerator, loop.model
    model.train()
    loop.train_loader.set_epoch(progress.epoch)
    loader = skip_first_batches(loop.train_loader, progress.batch) if progress.batch else loop.train_loader
    show = progress_enabled(cfg) and accelerator.is_main_process
    bar = tqdm(loader, desc=f"epoch {progress.epoch + 1}/{cfg.epochs}", disable=not show, leave=False,
               initial=progress.batch, total=len(loop.train_loader))
    window_has_grad = False  # a batch of the current accumulation window back-propagated a finite loss
    for batch in progress.timed_batches(bar):
        if loop.batch_transform is not None:
            batch = loop.batch_transform(batch)
        with progress.timed("step"):
            out, finite = forward_backward(model, batch, accelerator, skip_nonfinite=cfg.nan_policy == "skip")
        progress.batch += 1
        if finite:
            progress.count(out, batch, loop.task)
        elif cfg.nan_policy == "stop":
            raise nonfinite_stop(loop, progress, out.loss)
        else:
            progress.skipped += 1
        window_has_grad |= finite
        if not accelerator.sync_gradients:
            continue
        with progress.timed("step"):
            optimizer_step(model, loop.optimizer, loop.scheduler, accelerator, cfg.max_grad_norm, window_has_grad)
            if loop.ema is not None and window_has_grad:
                loop.ema.update(accelerator.unwrap_model(model), step=progress.step + 1)
        window_has_grad = False
        progress.step += 1
        bar.set_postfix({k.removeprefix("train_"): f"{v:.3f}" for k, v in
                         loop.task.epoch_record(progress.loss_sum, progress.correct, progress.seen).items()})
        if progress.batch == len(loop.train_loader) or (cfg.max_steps and progress.step >= cfg.max_steps):
            return  # end_epoch saves this state
        if stop.requested():
            raise stop.stop(save_progress(loop, progress), os.path.basename(loop.run_dir))
        if cfg.save_steps and progress.step % cfg.save_steps == 0:
            with progress.timed("checkpoint"):
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
    record = dict(epoch=progress.epoch + 1, step=progress.step, **loop.task.epoch_record(loss_sum, correct, seen),
                  lr=loop.scheduler.get_last_lr()[0], epoch_seconds=round(seconds, 2))
    if cfg.nan_policy == "skip":
        record["skipped_batches"] = progress.skipped
    if loop.val_loader is not None:
        with progress.timed("validation"):
            record.update(loop.task.validate(loop.eval_model, loop.val_loader, accelerator,
                                             progress_enabled(cfg) and accelerator.is_main_process))
    score = loop.task.score(record)  # the task's judgement: validation top-1, minus the validation loss, ...
    accelerator.log({k: v for k, v in record.items() if k != "step"}, step=progress.step)  # --report_to trackers
    progress.history.append(record)
    progress.next_epoch()
    if accelerator.is_main_process:
        write_jsonl(loop.metrics_log, progress.history)
        print(_epoch_line(record, cfg.epochs), flush=True)
    with progress.timed("checkpoint"):
        weights = full_state_dict(accelerator, loop.model)  # every process takes part (FSDP gathers the shards)
        if score > progress.best_score:  # best/ first: a crash before the resumable save redoes this epoch
            progress.best_score = score
            if accelerator.is_main_process:
                meta = dict(loop.run_config, epoch=progress.epoch, step=progress.step, metrics=record,
                            history=progress.history, weights="ema" if loop.ema is not None else "model")
                best = weights if loop.ema is None else loop.ema.module.state_dict()
                save_checkpoint(os.path.join(loop.run_dir, BEST_DIR), best, meta, write_assets=loop.write_assets)
        return save_progress(loop, progress, weights)


def save_progress(loop: Loop, progress: Progress, weights: Optional[dict] = None) -> str:
    """A resumable checkpoint-<step>/ of the current state (all processes call this)."""
    accelerator = loop.accelerator
    weights = weights if weights is not None else full_state_dict(accelerator, loop.model)
    all_sums = accelerator.gather(progress.sums(accelerator.device))  # [processes, 3]
    state = progress.to_state(all_sums, loop.cfg, accelerator.num_processes)
    meta = dict(loop.run_config, epoch=progress.epoch, step=progress.step, history=progress.history)
    folder = os.path.join(loop.run_dir, f"checkpoint-{progress.step}")
    return save_resumable(accelerator, folder, weights, meta, state, loop.checkpoint_files, loop.cfg.save_total_limit)


def restore_training(loop: Loop, folder: str) -> Progress:
    """Weights, optimizer, scheduler, scaler, this process's RNG (accelerate's load_state) and Progress."""
    loop.accelerator.load_state(folder)  # the model is skipped by _weights_loaded_by_us: ours is loaded below
    load_full_state_dict(loop.accelerator, loop.model, load_weights(folder))  # FSDP: each process keeps its shard
    progress = Progress.from_state(load_training_state(folder), loop.accelerator.process_index)
    if loop.ema is not None:
        restore_ema(loop, folder)
    if loop.accelerator.is_main_process:
        where = f"epoch {progress.epoch + 1}, batch {progress.batch}" if progress.batch else \
            f"the end of epoch {progress.epoch}"
        print(f"resumed from {folder} at {where} (step {progress.step})", flush=True)
    return progress


def restore_ema(loop: Loop, folder: str) -> None:
    """The EMA weights of a resumable checkpoint; one saved without --model_ema starts the average from the
    restored weights (with a note)."""
    ema, path = loop.ema.module, os.path.join(folder, EMA_FILE)
    if os.path.isfile(path):
        load_model(ema, path, device=str(next(ema.parameters()).device))
        return
    ema.load_state_dict(loop.accelerator.unwrap_model(loop.model).state_dict())
    if loop.accelerator.is_main_process:
        print(f"note: {folder} holds no EMA weights (saved without --model_ema); the average starts from the "
              f"restored weights", file=sys.stderr)


# settings that may differ on resume without making the run a different model
RESUME_FREE = {"data_root", "resume_from_checkpoint"}
# settings that fix the batches of an epoch: a mid-epoch position is counted in them
BATCH_LAYOUT = ("batch_size", "gradient_accumulation_steps", "seed")
# settings that may change on resume, at the price of no longer matching the uninterrupted run
TRAINING_KNOBS = ("epochs", "max_steps", "lr", "weight_decay", "warmup_ratio", "label_smoothing", "max_grad_norm",
                  "mixed_precision", "layer_decay", "model_ema", "model_ema_decay", "model_ema_warmup", "mixup_alpha",
                  "cutmix_alpha", "mixup_prob", "mixup_switch_prob", *BATCH_LAYOUT)


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
              if saved.get(k) != getattr(cfg, k) and not same_model(k, saved.get(k), getattr(cfg, k), saved_config)]
    if state["num_processes"] != num_processes:
        diffs.append(f"{state['num_processes']} processes there, {num_processes} here (each process's RNG state is "
                     f"saved; launch with --nproc_per_node / --num_processes {state['num_processes']})")
    if state["batch"]:  # the position within the epoch is counted in batches of the saved layout and order
        diffs += [f"{k}={saved.get(k)!r} there, {getattr(cfg, k)!r} here (mid-epoch checkpoint)" for k in BATCH_LAYOUT
                  if saved.get(k) != getattr(cfg, k)]
    return diffs


def same_model(key: str, there, here, saved_config: dict) -> bool:
    """A setting that differs in value but not in the model built: --fusion_dim 0 (the former default) and none
    (the automatic width) when the saved model has no fusion (a video backbone's classifier)."""
    return key == "fusion_dim" and {there, here} == {0, None} and \
        saved_config.get("model_info", {}).get("fusion") == "none" and not saved_config["settings"].get("modalities")


def write_jsonl(path: str, records: list) -> None:
    """metrics.jsonl = exactly these records, one JSON line each (rewritten whole and atomically every epoch; a
    resume from an older checkpoint drops the later epochs)."""
    if records or os.path.exists(path):
        write_text(path, "".join(json.dumps(r) + "\n" for r in records))


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


# ----------------------------------------------------------------------------------------------------------------
# trackers
# ----------------------------------------------------------------------------------------------------------------
def make_run_accelerator(cfg: Settings, run_dir: str, find_unused_parameters: bool = False) -> Accelerator:
    """The run's Accelerator, with the --report_to tracker writing under the run folder."""
    log_with = None if cfg.report_to == "none" else cfg.report_to
    return make_accelerator(cfg, log_with=log_with, logging_dir=run_dir if log_with else None,
                            find_unused_parameters=find_unused_parameters)


def start_trackers(accelerator: Accelerator, cfg: Settings, run_name: str, run_dir: str) -> None:
    if cfg.report_to == "none":
        return
    config = {k: "none" if v is None else v for k, v in cfg.to_dict().items()}  # TensorBoard hparams refuse None
    accelerator.init_trackers(TRACKER_PROJECT[cfg.report_to], config=config,
                              init_kwargs={"wandb": {"name": run_name, "dir": run_dir}})


def tracker_scalars(report: dict) -> dict[str, float]:
    """The report's headline numbers, as ``test/<name>`` scalars for TensorBoard / W&B."""
    values = {k: report.get(k) for k in ("top1", "top5", "mean_class_accuracy", "loss")}
    values.update(report.get("metrics") or {})
    values.update(latency_ms_per_clip=report["latency"].get("ms_per_clip"),
                  throughput_clips_per_s=report["throughput"].get("clips_per_s"))
    return {f"test/{k}": float(v) for k, v in values.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}


# ----------------------------------------------------------------------------------------------------------------
# the test report
# ----------------------------------------------------------------------------------------------------------------
def test_and_report(cfg: Settings, built, test_set, class_names: list, run_dir: str, run: dict,
                    accelerator: Accelerator, memory_from_start: bool, reversal_pairs: Optional[dict] = None) -> dict:
    """The task's test + speed + memory + environment -> <run_dir>/eval.json, a summary.csv row, plots, trackers.

    ``run``: what was evaluated (mode, checkpoint, checkpoint_epoch, train_seconds, train_time_breakdown (training
    only), history, skipped_in_training).
    Test videos that cannot be read are left out of every metric and listed under ``bad_videos``; the report is
    still written, then IncompleteResult (exit code 3) says so.
    """
    task, info = built.task, built.info
    model = built.model.to(accelerator.device).eval()
    plain = make_loader(test_set, cfg.batch_size, False, cfg.num_workers, cfg.seed)
    loader = accelerator.prepare(plain)  # sharded over the processes; evaluation gathers every clip once
    views = view_protocol(cfg.test_clips, cfg.test_crops, cfg.sampling, cfg.num_frames, cfg.frame_stride)
    test = TestRun(cfg, model, test_set, loader, accelerator, class_names, run_dir, reversal_pairs,
                   progress_enabled(cfg) and accelerator.is_main_process)
    t0 = time.time()
    result = task.test(test)
    views.update(result.views)
    eval_seconds = time.time() - t0
    t0 = time.time()
    speed = measure_speed(lambda batch: task.predict(model, batch, accelerator, cfg), next(iter(plain)),
                          accelerator.device, cfg.speed_repeats)
    speed_seconds = time.time() - t0
    history = run["history"]
    bad = dict(test=test_set.bad_videos(), skipped_in_training=run["skipped_in_training"])
    report = dict(
        run_dir=run_dir, mode=run["mode"], task=task.name, split="test", checkpoint=run["checkpoint"],
        finished=timestamp(), **result.headline, views=views, bad_videos=bad, params_total=info["params_total"],
        params_trainable=info["params_trainable"], **speed, peak_memory=peak_memory(accelerator.device,
                                                                                    memory_from_start),
        checkpoint_epoch=run["checkpoint_epoch"], train_seconds=run["train_seconds"],
        train_time_breakdown=run.get("train_time_breakdown"), eval_seconds=round(eval_seconds, 2),
        speed_seconds=round(speed_seconds, 2), fusion=info.get("fusion", "none"), pretrained=info["pretrained"],
        weights_source=info["weights_source"], hf_hub_offline=hub_offline_mode(),
        **{k: info[k] for k in ("language_model", "language_model_source", "language_model_pretrained",
                                "text_encoder") if k in info},
        **result.details, history=history, settings=cfg.to_dict(), settings_sources=run.get("settings_sources"),
        environment=environment_info(accelerator.device))
    if accelerator.is_main_process:
        report.update(task.finish(test, report))
        write_report(cfg, report, run_dir, result.line)
        plots = task.plots(test, report)
        table = f" | results table: {cfg.summary_csv}" if cfg.summary_csv else ""
        print(f"evaluation: {os.path.join(run_dir, 'eval.json')} | plots: "
              f"{', '.join(os.path.basename(p) for p in plots)} in {os.path.join(run_dir, 'plots')}{table}")
    accelerator.log(tracker_scalars(report), step=history[-1]["step"] if history else 0)
    accelerator.end_training()
    if bad["test"]:
        raise IncompleteResult(f"{len(bad['test'])} test video(s) could not be read and are not in the metrics: "
                               f"{', '.join(b['video'] for b in bad['test'][:5])}"
                               f"{' ...' if len(bad['test']) > 5 else ''} (all listed with the reason under "
                               f"bad_videos in {os.path.join(run_dir, 'eval.json')})", report)
    return report


def write_report(cfg: Settings, report: dict, run_dir: str, line: str) -> None:
    """eval.json, the results-table row, and the headline printed."""
    write_json(os.path.join(run_dir, "eval.json"), report)
    if cfg.summary_csv:
        append_summary_row(cfg.summary_csv, summary_row(report))
    print(line)
    latency, memory = report["latency"], report["peak_memory"]
    if latency.get("ms_per_clip") is not None:
        print(f"speed: {latency['ms_per_clip']:.1f} ms per clip (batch 1) | "
              f"{report['throughput']['clips_per_s']:.1f} clips/s (batch {report['throughput']['batch_size']}) | "
              f"peak RSS {memory['cpu_peak_rss_mib']:.0f} MiB")
    if not report["pretrained"]:
        print("note: the backbone started from RANDOM weights (\"pretrained\": false in eval.json)")
    if report.get("language_model_pretrained") is False:
        print("note: the language model started from RANDOM weights (\"language_model_pretrained\": false)")
