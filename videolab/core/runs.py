"""Run folders: where a run writes, which checkpoint a resume continues from, which run inference picks.

A run lives in ``<output_dir>/<run_name>/`` (``checkpoints.py`` describes what a run folder holds).
"""
from __future__ import annotations

import os
from typing import Optional

from videolab.core.checkpoints import (BEST_DIR, CONFIG_FILE, LAST_LINK, STATE_FILE, WEIGHTS_FILE, is_checkpoint,
                                       latest_checkpoint, read_run_config)
from videolab.core.errors import CheckpointError, UsageError


def run_folder(output_dir: str, run_name: Optional[str], resume_from: Optional[str], default_name: str) -> str:
    """<output_dir>/<run_name>; a resumed run without --run_name continues in its checkpoint's run folder."""
    if resume_from and not run_name:
        return os.path.dirname(os.path.normpath(resume_from))
    return os.path.join(output_dir, run_name or default_name)


def resume_folder(path: str, output_dir: str, run_name: Optional[str]) -> str:
    """The folder ``--resume_from_checkpoint`` names: a checkpoint folder, a run folder, or ``latest`` (the newest
    checkpoint of --run_name, or of the most recently saved run in output_dir)."""
    if path != "latest":
        folder = latest_checkpoint(path) if not is_checkpoint(path) and os.path.isdir(path) else path
        if folder is None or not is_checkpoint(folder):
            raise CheckpointError(f"--resume_from_checkpoint {path!r} is not a checkpoint (expected {WEIGHTS_FILE}, "
                                  f"{CONFIG_FILE} and {STATE_FILE}); pass checkpoints/<run>/last, a "
                                  f"checkpoints/<run>/checkpoint-<step> folder, or 'latest'")
        return folder
    runs = [os.path.join(output_dir, run_name)] if run_name else \
        [os.path.join(output_dir, d) for d in os.listdir(output_dir)] if os.path.isdir(output_dir) else []
    found = [f for f in (latest_checkpoint(r) for r in runs if os.path.isdir(r)) if f is not None]
    if not found:
        where = f"run {run_name!r} in {output_dir!r}" if run_name else f"any run in {output_dir!r}"
        raise CheckpointError(f"--resume_from_checkpoint latest: no resumable checkpoint in {where}; pass --run_name "
                              f"of the run to continue, or a checkpoint folder")
    return max(found, key=lambda f: os.path.getmtime(os.path.join(f, STATE_FILE)))


def find_runs(output_dir: str) -> list[str]:
    """Checkpoint folders (<run>/best, else <run>/last) under output_dir, newest first."""
    if not os.path.isdir(output_dir):
        return []
    found = []
    for run in os.listdir(output_dir):
        for sub in (BEST_DIR, LAST_LINK):
            folder = os.path.join(output_dir, run, sub)
            if is_checkpoint(folder):
                found.append(folder)
                break
    return sorted(found, key=lambda f: os.path.getmtime(os.path.join(f, WEIGHTS_FILE)), reverse=True)


def pick_checkpoint(checkpoint: Optional[str], output_dir: str, wanted: dict) -> str:
    """``checkpoint``, or the newest run under ``output_dir`` whose saved settings hold every ``wanted`` value
    (the model flags the user typed)."""
    if checkpoint:
        return checkpoint
    runs = find_runs(output_dir)
    for folder in runs:
        saved = read_run_config(folder)["settings"]
        if all(saved.get(k) == v for k, v in wanted.items()):
            return folder
    flags = " ".join(f"--{k} {v}" for k, v in wanted.items())
    if not runs:
        raise UsageError(f"no trained model under {output_dir!r}; train one with python main.py {flags}".rstrip()
                         + " or pass --checkpoint PATH")
    raise UsageError(f"no run under {output_dir!r} was trained with {flags}; train one with python main.py "
                     f"{flags} or pass --checkpoint PATH")
