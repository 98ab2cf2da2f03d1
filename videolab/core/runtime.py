"""The run's machinery around the model: the ``accelerate`` Accelerator (devices, DDP, mixed precision,
accumulation, trackers), progress bars and deterministic mode."""
from __future__ import annotations

import contextlib
import os
import sys
from typing import Optional

import torch
from accelerate import Accelerator
from accelerate.utils import (DataLoaderConfiguration, DistributedDataParallelKwargs, ProjectConfiguration,
                              is_tensorboard_available, is_wandb_available)

from videolab.core.errors import UsageError

TRACKER_INSTALLED = {"tensorboard": is_tensorboard_available, "wandb": is_wandb_available}


def progress_enabled(cfg) -> bool:
    return not cfg.quiet and sys.stderr.isatty()


def check_tracker_installed(report_to: str) -> None:
    """--report_to names an optional package: say how to install it instead of failing inside accelerate."""
    if report_to != "none" and not TRACKER_INSTALLED[report_to]():
        raise UsageError(f"--report_to {report_to} needs the {report_to} package, which is not installed: "
                         f"pip install {report_to} (or use --report_to none; metrics.jsonl is always written)")


def make_accelerator(cfg, log_with: Optional[str] = None, logging_dir: Optional[str] = None,
                     find_unused_parameters: bool = False) -> Accelerator:
    """Accelerator for the requested device and precision; fp16 needs a GPU (CPU autocast is bf16 only).
    ``log_with`` (an accelerate tracker name) writes under ``logging_dir``. Under ``accelerate launch`` /
    ``torchrun`` it joins the process group (DDP; gloo on CPU). ``find_unused_parameters``: the model has
    parameters that get no gradient (a BERT pooler the vision + language classifier never reads), which DDP must be
    told to look for (an extra graph walk per step)."""
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
        kwargs_handlers=[DistributedDataParallelKwargs(find_unused_parameters=find_unused_parameters)],
        log_with=log_with, project_config=project)
    accelerator.register_save_state_pre_hook(_weights_saved_by_us)
    accelerator.register_load_state_pre_hook(_weights_loaded_by_us)
    return accelerator


def _weights_saved_by_us(models, weights, output_dir) -> None:
    """save_state hook: the checkpoint writes model.safetensors itself (unwrapped names, tied weights kept)."""
    weights.clear()


def _weights_loaded_by_us(models, input_dir) -> None:
    """load_state hook: the weights are loaded from our model.safetensors (train_code.restore_training)."""
    models.clear()


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
