"""The run's machinery around the model: the ``accelerate`` Accelerator (devices, DDP / FSDP, mixed precision,
accumulation, trackers), progress bars and deterministic mode.

Who decides the precision and the accumulation: a flag the user typed (or a key of the settings YAML) wins;
otherwise what ``accelerate launch`` was given (its flags or its config file, which it hands to the script as
``ACCELERATE_MIXED_PRECISION`` / ``ACCELERATE_GRADIENT_ACCUMULATION_STEPS``); otherwise the Settings default.
:func:`accelerate_values` folds that into the settings before the Accelerator is built, so the settings the run
records, the LR schedule and the Accelerator all hold the same values, and it says where each came from.
"""
from __future__ import annotations

import contextlib
import dataclasses
import os
import sys
from typing import Optional

import torch
from accelerate import Accelerator
from accelerate.utils import (DataLoaderConfiguration, DistributedDataParallelKwargs, DistributedType,
                              GradientAccumulationPlugin, ProjectConfiguration, is_tensorboard_available,
                              is_wandb_available)

from videolab.core.errors import UsageError
from videolab.core.settings import check_values, coerce

# settings accelerate's launcher may supply -> the environment variable it hands them to the script in
LAUNCHER_ENV = {"mixed_precision": "ACCELERATE_MIXED_PRECISION",
                "gradient_accumulation_steps": "ACCELERATE_GRADIENT_ACCUMULATION_STEPS"}

TRACKER_INSTALLED = {"tensorboard": is_tensorboard_available, "wandb": is_wandb_available}


def progress_enabled(cfg) -> bool:
    return not cfg.quiet and sys.stderr.isatty()


def check_tracker_installed(report_to: str) -> None:
    """--report_to names an optional package: say how to install it instead of failing inside accelerate."""
    if report_to != "none" and not TRACKER_INSTALLED[report_to]():
        raise UsageError(f"--report_to {report_to} needs the {report_to} package, which is not installed: "
                         f"pip install {report_to} (or use --report_to none; metrics.jsonl is always written)")


def accelerate_values(cfg, chosen: dict[str, str]):
    """(settings with the values accelerate will apply, {setting: where its value came from}) for LAUNCHER_ENV.

    ``chosen``: the settings the user set, each with where (``"flag"``, ``"settings file config_file.yaml"``);
    those win. Else a value ``accelerate launch`` handed over (its flag or config file) is taken; else the
    default. A launcher value that is not valid here is a UsageError naming the variable."""
    updates, sources = {}, {}
    for name, variable in LAUNCHER_ENV.items():
        if name in chosen:
            sources[name] = chosen[name]
        elif os.environ.get(variable):
            try:
                updates[name] = coerce(name, os.environ[variable].strip().lower())
            except UsageError as exc:
                raise UsageError(f"{variable}={os.environ[variable]!r} (from accelerate launch): {exc}") from None
            sources[name] = f"accelerate launch ({variable}={os.environ[variable]}: its flag or config file)"
        else:
            sources[name] = "default"
    cfg = dataclasses.replace(cfg, **updates)
    try:
        check_values(cfg)
    except UsageError as exc:
        handed = ", ".join(f"{LAUNCHER_ENV[k]}={os.environ[LAUNCHER_ENV[k]]}" for k in sorted(updates))
        raise UsageError(f"{exc} (from accelerate launch: {handed}); fix the launcher's flag or config file, or "
                         f"type the flag") from None
    return cfg, sources


def make_accelerator(cfg, log_with: Optional[str] = None, logging_dir: Optional[str] = None,
                     find_unused_parameters: bool = False) -> Accelerator:
    """Accelerator for the requested device, precision and accumulation (exactly these: the launcher's values are
    folded into ``cfg`` by :func:`accelerate_values` first); fp16 needs a GPU (CPU autocast is bf16 only).
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
        cpu=use_cpu, mixed_precision=cfg.mixed_precision,
        # a plugin, not gradient_accumulation_steps=: accelerate would let ACCELERATE_GRADIENT_ACCUMULATION_STEPS
        # override that silently, while the LR schedule counts our value
        gradient_accumulation_plugin=GradientAccumulationPlugin(num_steps=cfg.gradient_accumulation_steps),
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


def is_sharded(accelerator: Accelerator) -> bool:
    """FSDP (through ``accelerate launch --use_fsdp`` or its config file): the parameters are sharded over the
    processes, so weights are gathered to save them and scattered to load them."""
    return accelerator.distributed_type == DistributedType.FSDP


def full_state_dict(accelerator: Accelerator, model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """Every weight under the unwrapped model's names, full tensors (FSDP: gathered; every process must call
    this, and with FSDP only the main process gets the tensors)."""
    return accelerator.get_state_dict(model)


def load_full_state_dict(accelerator: Accelerator, model: torch.nn.Module, state_dict: dict[str, torch.Tensor]
                         ) -> None:
    """Load full (unsharded) weights into ``model``, wrapped or not: with FSDP each process keeps its shard
    (``torch.distributed.checkpoint.state_dict.set_model_state_dict``; every process must call this), else a
    plain ``load_state_dict`` on the unwrapped model."""
    if is_sharded(accelerator):
        from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict
        set_model_state_dict(model, state_dict, options=StateDictOptions(full_state_dict=True, strict=True))
    else:
        accelerator.unwrap_model(model).load_state_dict(state_dict)


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
