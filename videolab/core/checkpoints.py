"""Checkpoints that carry their config, written atomically, loaded without pickle.

A run folder holds::

    checkpoint-<step>/    resumable checkpoints, the newest --save_total_limit of them (written every --save_steps
                          optimizer steps, at every epoch end, and on SIGINT/SIGTERM)
    last -> checkpoint-N  symlink to the newest one (what ``--resume_from_checkpoint latest`` reads)
    best/                 the best validation epoch's weights (+ config), kept whatever the limit

A checkpoint is a folder::

    model.safetensors     every weight of the model (LoRA adapters included), names of the unwrapped model
    run_config.json       the settings that built it, the architecture, class names, metrics, pretrained status
    tokenizer/            vision + language models: the language model's tokenizer
    training_state.pt     resumable checkpoints: epoch, batch position within the epoch, step, best score, history,
                          the epoch's running sums, skipped-batch count, settings (plain types and tensors)
    optimizer.bin, scheduler.bin, random_states_<rank>.pkl, scaler.pt (fp16)
                          written by ``accelerate``'s ``save_state``: optimizer and LR scheduler state, the
                          Python / NumPy / torch (and CUDA) RNG of every process, the fp16 loss scaler

Every ``.pt`` / ``.bin`` / ``.pkl`` file loads with ``torch.load(weights_only=True)``: only tensors and plain
containers, never code. A file that would need arbitrary unpickling is refused before anything is loaded, with a
message naming the file and what it tried to import (``verify_checkpoint``). The data sampler needs no file: its
order is a function of (--seed, epoch), and the batch position says where in the epoch to continue.

Writes go to a temporary folder beside the target (``.<name>.tmp*``), every file is fsynced, and the folder is
renamed into place (``os.replace``, atomic on POSIX); the ``last`` link is swapped the same way. A crash or
``kill -9`` during a save leaves the previous checkpoints and ``last`` untouched (the next save removes the
temporary leftovers).
"""
from __future__ import annotations

import contextlib
import errno
import os
import pickle
import re
import shutil
from typing import Any, Callable, Iterator, Optional

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from videolab.core.errors import CheckpointError, RunError, UsageError
from videolab.core.files import commit_folder, fsync_dir, new_temp_folder, write_json
from videolab.core.inputs import inside, read_json
from videolab.core.layout import TOKENIZER_DIR  # noqa: F401  (re-exported: checkpoint folders hold it)

WEIGHTS_FILE, CONFIG_FILE, STATE_FILE = "model.safetensors", "run_config.json", "training_state.pt"
LAST_LINK, BEST_DIR, CHECKPOINT_PREFIX = "last", "best", "checkpoint-"
PICKLE_SUFFIXES = (".pt", ".bin", ".pkl")  # torch.save files: ours and accelerate's
STATE_FORMAT = 2  # 1 = optimizer/scheduler/RNG inside training_state.pt (epoch-granular resume, before save_state)


# ----------------------------------------------------------------------------------------------------------------
# safe reading
# ----------------------------------------------------------------------------------------------------------------
def safe_torch_load(path: str) -> Any:
    """``torch.load(path, weights_only=True)`` (with accelerate's allow-list for NumPy RNG arrays), turning every
    failure into a CheckpointError that names the file: unsafe pickles (never executed), truncated or random bytes.
    """
    from accelerate.utils import load  # torch.load(weights_only=True) + numpy arrays/dtypes for RNG states
    name = os.path.basename(path)
    try:
        return load(path, map_location="cpu")
    except pickle.UnpicklingError as exc:
        found = re.search(r"GLOBAL (\S+)", str(exc))
        what = f"it asks to import {found.group(1)}, which could run code" if found else \
            "it holds pickle data that weights_only=True does not accept (not written by torch.save, or corrupt)"
        raise CheckpointError(f"refused to load {path}: {what}. Nothing in it was executed. Checkpoints of this repo "
                              f"hold only tensors and plain values; if you trust the file's origin, re-save it as "
                              f"tensors, else delete it") from None
    except Exception as exc:  # a broken zip (RuntimeError), an empty file (EOFError), ...
        detail = str(exc).splitlines()[0][:120] if str(exc) else type(exc).__name__
        raise CheckpointError(f"{path} is truncated or corrupt ({detail}); {name} cannot be read. Use an older "
                              f"checkpoint of the run (checkpoint-<step>/) or start a new run") from None


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


def check_finite(state_dict: dict[str, torch.Tensor]) -> None:
    """Refuse to write NaN/inf weights over a good checkpoint."""
    bad = [name for name, value in state_dict.items() if value.is_floating_point() and not
           bool(torch.isfinite(value).all())]
    if bad:
        raise RunError(f"not saving: {len(bad)} weight tensor(s) hold NaN/inf (first: {bad[0]}); the previous "
                       f"checkpoint is kept. Lower --lr, check the data, or use --nan_policy skip")


# ----------------------------------------------------------------------------------------------------------------
# writing
# ----------------------------------------------------------------------------------------------------------------
@contextlib.contextmanager
def torch_writes(folder: str) -> Iterator[None]:
    """torch.save reports a failed write (a full disk, above all) as a RuntimeError from its C++ writer; it becomes
    the OSError it is (run_cli prints a full disk as one line), naming the folder. Other RuntimeErrors pass."""
    try:
        yield
    except RuntimeError as exc:
        if "write failed" not in str(exc) and "No space left" not in str(exc):
            raise
        free = shutil.disk_usage(folder).free if os.path.isdir(folder) else 0
        code = errno.ENOSPC if free < 64 * 1024 * 1024 else errno.EIO
        raise OSError(code, os.strerror(code), folder) from None


def write_checkpoint_files(tmp: str, state_dict: dict[str, torch.Tensor], run_config: dict,
                           training_state: Optional[dict] = None,
                           write_assets: Optional[Callable[[str], None]] = None) -> None:
    """Our files of a checkpoint into ``tmp``: weights, run config, training state, assets (e.g. a tokenizer)."""
    check_finite(state_dict)
    save_file(_unshared(state_dict), os.path.join(tmp, WEIGHTS_FILE), metadata={"format": "pt"})
    write_json(os.path.join(tmp, CONFIG_FILE), run_config)
    if training_state is not None:
        with torch_writes(tmp):
            torch.save(training_state, os.path.join(tmp, STATE_FILE))
    if write_assets is not None:
        write_assets(tmp)


def save_checkpoint(folder: str, state_dict: dict[str, torch.Tensor], run_config: dict,
                    training_state: Optional[dict] = None, write_assets: Optional[Callable[[str], None]] = None) -> str:
    """Write a checkpoint folder atomically (temp folder, fsync, rename over the old one).

    ``write_assets(tmp_folder)`` adds files such as a tokenizer before the folder is swapped in.
    """
    tmp = new_temp_folder(folder)
    try:
        write_checkpoint_files(tmp, state_dict, run_config, training_state, write_assets)
        return commit_folder(tmp, folder)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def save_resumable(accelerator, folder: str, state_dict: dict[str, torch.Tensor], run_config: dict,
                   training_state: dict, write_assets: Optional[Callable[[str], None]] = None,
                   keep: int = 0) -> str:
    """A resumable checkpoint, written atomically by every process together.

    accelerate's ``save_state`` writes the optimizer, scheduler, scaler and every process's RNG into the temporary
    folder (the model weights are dropped by the hook ``make_accelerator`` registers; we write them ourselves, under
    the unwrapped model's names and with tied weights kept, so inference reads the same file); the main process adds
    our files, renames the folder into place, points ``last`` at it and keeps the newest ``keep`` checkpoints.
    """
    from accelerate.utils import broadcast_object_list
    tmp = [new_temp_folder(folder) if accelerator.is_main_process else None]
    broadcast_object_list(tmp)  # every process writes its RNG file into the same folder
    tmp = tmp[0]
    try:
        problem = [None]  # checked where the full weights are (FSDP gathers them on the main process only) ...
        if accelerator.is_main_process:
            try:
                check_finite(state_dict)
            except RunError as exc:
                problem = [str(exc)]
        broadcast_object_list(problem)  # ... and shared, so every process stops together
        if problem[0]:
            raise RunError(problem[0])
        with torch_writes(tmp):
            accelerator.save_state(tmp)
        accelerator.wait_for_everyone()
        if accelerator.is_main_process:
            write_checkpoint_files(tmp, state_dict, run_config, training_state, write_assets)
            commit_folder(tmp, folder)
            point_last(folder)
            rotate_checkpoints(os.path.dirname(os.path.abspath(folder)), keep)
    except BaseException:
        if accelerator.is_main_process:
            shutil.rmtree(tmp, ignore_errors=True)
        raise
    accelerator.wait_for_everyone()
    return folder


def point_last(folder: str) -> None:
    """Atomically make ``<run>/last`` a relative symlink to ``folder``. Where symlinks are not allowed, ``latest``
    still finds the newest checkpoint by itself."""
    run_dir = os.path.dirname(os.path.abspath(folder))
    link, tmp_link = os.path.join(run_dir, LAST_LINK), os.path.join(run_dir, f".{LAST_LINK}.tmp{os.getpid()}")
    try:
        if os.path.lexists(tmp_link):
            os.remove(tmp_link)
        os.symlink(os.path.basename(folder), tmp_link)
    except OSError:
        return
    if os.path.isdir(link) and not os.path.islink(link):  # a last/ folder from before step checkpoints
        shutil.rmtree(link)
    os.replace(tmp_link, link)
    fsync_dir(run_dir)


def step_checkpoints(run_dir: str) -> list[str]:
    """Complete resumable checkpoints of a run, oldest first (by the time their state was written)."""
    if not os.path.isdir(run_dir):
        return []
    found = [os.path.join(run_dir, d) for d in os.listdir(run_dir)
             if d.startswith(CHECKPOINT_PREFIX) and is_resumable(os.path.join(run_dir, d))]
    return sorted(found, key=lambda f: os.path.getmtime(os.path.join(f, STATE_FILE)))


def rotate_checkpoints(run_dir: str, keep: int) -> None:
    """Delete all but the newest ``keep`` checkpoint-<step>/ folders (0 = keep all); best/ is not one of them."""
    if keep <= 0:
        return
    for folder in step_checkpoints(run_dir)[:-keep]:
        shutil.rmtree(folder, ignore_errors=True)


# ----------------------------------------------------------------------------------------------------------------
# reading
# ----------------------------------------------------------------------------------------------------------------
def is_checkpoint(folder: str) -> bool:
    return os.path.isfile(os.path.join(folder, WEIGHTS_FILE)) and os.path.isfile(os.path.join(folder, CONFIG_FILE))


def is_resumable(folder: str) -> bool:
    return is_checkpoint(folder) and os.path.isfile(os.path.join(folder, STATE_FILE))


def read_run_config(folder: str) -> dict:
    if not is_checkpoint(folder):
        raise UsageError(f"{folder!r} is not a checkpoint (expected {WEIGHTS_FILE} and {CONFIG_FILE} in it); "
                         f"pass a folder such as checkpoints/<run>/best")
    path = os.path.join(folder, CONFIG_FILE)
    try:
        config = read_json(path, "checkpoint file", "use another checkpoint of the run")
    except UsageError as exc:
        raise CheckpointError(f"{exc} (truncated or corrupt)") from None
    check_run_config(config, path)
    return config


# run_config.json key -> (the type it must hold, in words); keys a run always writes
RUN_CONFIG_KEYS = {"settings": (dict, "a mapping of settings"), "class_names": (list, "a list of class names"),
                   "model_info": (dict, "a mapping describing the model")}


def check_run_config(config: dict, path: str) -> None:
    """The structure every reader of a run_config.json relies on: one line naming the file and the key."""
    for key, (kind, words) in RUN_CONFIG_KEYS.items():
        if not isinstance(config.get(key), kind):
            got = "nothing" if key not in config else type(config[key]).__name__
            raise CheckpointError(f"{path}: {key!r} must be {words}, got {got}; the file is damaged or from another "
                                  f"program: use another checkpoint of the run")
    if not all(isinstance(name, str) for name in config["class_names"]):
        raise CheckpointError(f"{path}: 'class_names' must hold strings only; use another checkpoint of the run")
    if not isinstance(config["model_info"].get("arch"), (dict, type(None))):
        raise CheckpointError(f"{path}: model_info.arch must be a mapping; use another checkpoint of the run")


def load_weights(folder: str) -> dict[str, torch.Tensor]:
    path = os.path.join(folder, WEIGHTS_FILE)
    try:
        return load_file(path)
    except SafetensorError as exc:
        raise CheckpointError(f"{path} is truncated or corrupt ({exc}); use another checkpoint of the run "
                              f"(checkpoint-<step>/ or best/)") from None


def load_training_state(folder: str) -> Optional[dict]:
    path = os.path.join(folder, STATE_FILE)
    return safe_torch_load(path) if os.path.isfile(path) else None


def verify_checkpoint(folder: str) -> None:
    """Read every file of a checkpoint the safe way before any of it is used: the JSON, the safetensors header and
    data size, every torch.save file with weights_only=True. Raises CheckpointError naming the first bad file."""
    read_run_config(folder)
    from safetensors import safe_open
    try:
        with safe_open(os.path.join(folder, WEIGHTS_FILE), "pt") as fh:  # checks the header against the file size
            fh.keys()
    except SafetensorError as exc:
        raise CheckpointError(f"{os.path.join(folder, WEIGHTS_FILE)} is truncated or corrupt ({exc}); use another "
                              f"checkpoint of the run") from None
    for name in sorted(os.listdir(folder)):
        if name.endswith(PICKLE_SUFFIXES):
            safe_torch_load(os.path.join(folder, name))


def latest_checkpoint(run_dir: str) -> Optional[str]:
    """The run's newest resumable checkpoint: what ``last`` points to, else the newest checkpoint-<step>/."""
    link = os.path.join(run_dir, LAST_LINK)
    if is_resumable(link):
        if not os.path.islink(link):
            return link
        target = os.path.join(run_dir, os.readlink(link))
        if not inside(target, run_dir):
            raise CheckpointError(f"{link} points to {os.path.realpath(target)}, outside its run folder; a resume "
                                  f"writes and deletes checkpoints where it points, so it is refused: remove the link "
                                  f"or pass a checkpoint-<step> folder of the run")
        return target
    found = step_checkpoints(run_dir)
    return found[-1] if found else None
