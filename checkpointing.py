"""Checkpoints that carry their config, written atomically, loaded without pickle.

A checkpoint is a folder::

    model.safetensors     every weight of the model (LoRA adapters included)
    run_config.json       the settings that built it, the architecture, class names, metrics, pretrained status
    tokenizer/            vision + language models: the language model's tokenizer
    training_state.pt     optimizer / scheduler / epoch / step / RNG (only tensors and plain containers:
                          it loads with ``torch.load(weights_only=True)``)

Writes go to a temporary folder beside the target, are flushed to disk, and then replace the target with
``os.replace``: a crash during a save leaves the previous checkpoint intact.
"""
from __future__ import annotations

import json
import os
import shutil
import tempfile
from typing import Any, Callable, Optional

import torch
from safetensors.torch import load_file, save_file

from settings import Settings, UsageError, settings_from_dict

WEIGHTS_FILE, CONFIG_FILE, STATE_FILE = "model.safetensors", "run_config.json", "training_state.pt"


def _fsync_dir(path: str) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_json_atomic(path: str, data: Any) -> None:
    folder = os.path.dirname(os.path.abspath(path))
    with tempfile.NamedTemporaryFile("w", dir=folder, delete=False, suffix=".tmp") as fh:
        json.dump(data, fh, indent=2, default=str)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(fh.name, path)


def _unshared(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """CPU, contiguous tensors; a tensor that shares memory with an earlier one (tied weights such as GPT-2's
    lm_head / wte) is copied, because safetensors refuses shared storage."""
    seen, tensors = set(), {}
    for name, value in state_dict.items():
        value = value.detach().to("cpu").contiguous()
        key = (value.untyped_storage().data_ptr(), value.storage_offset())
        tensors[name] = value.clone() if key in seen else value
        seen.add(key)
    return tensors


def save_checkpoint(folder: str, state_dict: dict[str, torch.Tensor], run_config: dict,
                    training_state: Optional[dict] = None, write_assets: Optional[Callable[[str], None]] = None) -> str:
    """Write a checkpoint folder atomically (temp folder, fsync, rename over the old one).

    ``write_assets(tmp_folder)`` adds files such as a tokenizer before the folder is swapped in.
    """
    parent = os.path.dirname(os.path.abspath(folder))
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=f".{os.path.basename(folder)}.tmp", dir=parent)
    try:
        save_file(_unshared(state_dict), os.path.join(tmp, WEIGHTS_FILE), metadata={"format": "pt"})
        with open(os.path.join(tmp, CONFIG_FILE), "w") as fh:
            json.dump(run_config, fh, indent=2, default=str)
        if training_state is not None:
            torch.save(training_state, os.path.join(tmp, STATE_FILE))
        if write_assets is not None:
            write_assets(tmp)
        for root, _, files in os.walk(tmp):
            for name in files:
                with open(os.path.join(root, name), "rb") as fh:
                    os.fsync(fh.fileno())
        old = None
        if os.path.exists(folder):
            old = f"{tmp}.old"
            os.replace(folder, old)
        os.replace(tmp, folder)
        _fsync_dir(parent)
        if old:
            shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return folder


def is_checkpoint(folder: str) -> bool:
    return os.path.isfile(os.path.join(folder, WEIGHTS_FILE)) and os.path.isfile(os.path.join(folder, CONFIG_FILE))


def read_run_config(folder: str) -> dict:
    if not is_checkpoint(folder):
        raise UsageError(f"{folder!r} is not a checkpoint (expected {WEIGHTS_FILE} and {CONFIG_FILE} in it); "
                         f"pass a folder such as checkpoints/<run>/best")
    with open(os.path.join(folder, CONFIG_FILE)) as fh:
        return json.load(fh)


def load_weights(folder: str) -> dict[str, torch.Tensor]:
    return load_file(os.path.join(folder, WEIGHTS_FILE))


def load_training_state(folder: str) -> Optional[dict]:
    path = os.path.join(folder, STATE_FILE)
    if not os.path.isfile(path):
        return None
    try:
        return torch.load(path, weights_only=True)
    except Exception as exc:  # pickle that would need arbitrary code
        raise UsageError(f"{path} holds objects that cannot be loaded safely (weights_only=True): "
                         f"{str(exc).splitlines()[0][:160]}; it was not written by this repo") from None


def checkpoint_settings(folder: str) -> Settings:
    return settings_from_dict(read_run_config(folder)["settings"])


def find_runs(output_dir: str) -> list[str]:
    """Checkpoint folders (<run>/best, else <run>/last) under output_dir, newest first."""
    if not os.path.isdir(output_dir):
        return []
    found = []
    for run in os.listdir(output_dir):
        for sub in ("best", "last"):
            folder = os.path.join(output_dir, run, sub)
            if is_checkpoint(folder):
                found.append(folder)
                break
    return sorted(found, key=lambda f: os.path.getmtime(os.path.join(f, WEIGHTS_FILE)), reverse=True)
