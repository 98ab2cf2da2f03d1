"""Run folders: where a run writes, which checkpoint a resume continues from, which run inference picks.

A run lives in ``<output_dir>/<run_name>/`` (``checkpoints.py`` describes what a run folder holds).
"""
from __future__ import annotations

import contextlib
import fcntl
import os
import shutil
import sys
from typing import Callable, Iterator, Optional

from videolab.core.checkpoints import (BEST_DIR, CONFIG_FILE, LAST_LINK, STATE_FILE, WEIGHTS_FILE, is_checkpoint,
                                       latest_checkpoint, read_run_config)
from videolab.core.errors import CheckpointError, UsageError
from videolab.core.files import check_output_file, check_output_folder, default_mode
from videolab.core.inputs import inside, quote

LOCK_FILE = ".lock"  # <run>/.lock: holds the pid of the process writing the run (fcntl.flock, released on exit)
MAX_NAME = 200


def check_run_name(run_name: Optional[str]) -> None:
    """--run_name is one folder name inside --output_dir: not empty, no path separator, not . or .."""
    if run_name is None:
        return
    if not run_name.strip() or run_name in (".", "..") or "/" in run_name or os.sep in run_name or "\0" in run_name \
            or len(run_name) > MAX_NAME:
        raise UsageError(f"--run_name {quote(run_name, 60)} must be one folder name (no '/', not '.' or '..', at "
                         f"most {MAX_NAME} characters): runs are written inside --output_dir only")


def run_folder(output_dir: str, run_name: Optional[str], resume_from: Optional[str], default_name: str) -> str:
    """<output_dir>/<run_name>; a resumed run without --run_name continues in its checkpoint's run folder. The
    folder must resolve inside --output_dir (a run folder that is a link out of it is refused)."""
    check_run_name(run_name)
    if resume_from and not run_name:
        return os.path.dirname(os.path.normpath(resume_from))
    folder = os.path.join(output_dir, run_name or default_name)
    if os.path.lexists(folder) and not inside(folder, output_dir):
        raise UsageError(f"run folder {folder} is a link to {os.path.realpath(folder)}, outside --output_dir "
                         f"{output_dir}; runs are written inside --output_dir only: remove the link or pick another "
                         f"--run_name")
    return folder


def run_contents(run_dir: str) -> list[str]:
    """What a run folder holds besides its lock and temporary leftovers (names starting with a dot)."""
    return sorted(n for n in os.listdir(run_dir) if not n.startswith(".")) if os.path.isdir(run_dir) else []


def claim_run_folder(run_dir: str, resume_from: Optional[str], overwrite: bool) -> None:
    """A run folder that holds a run is only written by a run that continues it (``resume_from`` inside it) or
    with --overwrite (then its files are deleted first). Call with the folder's lock held."""
    found = run_contents(run_dir)
    if not found or (resume_from and inside(resume_from, run_dir)):
        return
    if not overwrite:
        raise UsageError(f"run folder {run_dir} already holds a run ({', '.join(found[:4])}"
                         f"{' ...' if len(found) > 4 else ''}); continue it with --resume_from_checkpoint "
                         f"{os.path.join(run_dir, LAST_LINK)}, replace it with --overwrite True (its files are "
                         f"deleted), or pick another --run_name")
    for name in found:
        path = os.path.join(run_dir, name)
        shutil.rmtree(path) if os.path.isdir(path) and not os.path.islink(path) else os.remove(path)


@contextlib.contextmanager
def run_lock(run_dir: str) -> Iterator[None]:
    """Hold ``<run_dir>/.lock`` (``fcntl.flock``, exclusive) while the block runs: a second process (or a second
    run in this one) on the same folder is refused, naming the pid that holds it. The kernel releases the lock
    when its process dies, so a crashed or killed run never leaves the folder stuck."""
    os.makedirs(run_dir, exist_ok=True)
    path = os.path.join(run_dir, LOCK_FILE)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, default_mode())
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
        os.close(fd)
        raise UsageError(f"run folder {run_dir} is in use by process {holder} (another run with this --run_name, "
                         f"or its --eval_only); wait for it to finish or pick another --run_name") from None
    try:
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        yield
    finally:
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)


def launch_rank() -> int:
    """This process's global rank under torchrun / accelerate launch (RANK), 0 when run alone: the process that
    holds a run folder's lock. Read from the environment, before the Accelerator exists."""
    return int(os.environ.get("RANK", "0") or 0)


@contextlib.contextmanager
def own_run_folder(run_dir: str, resume_from: Optional[str], overwrite: bool, main_process: bool = True
                   ) -> Iterator[None]:
    """The main process holds the run folder's lock and claims it (``claim_run_folder``) for the block."""
    if not main_process:
        yield
        return
    if os.path.lexists(run_dir) and not os.path.isdir(run_dir):
        raise UsageError(f"run folder {run_dir} exists and is not a folder; remove it or pick another --run_name")
    with run_lock(run_dir):
        claim_run_folder(run_dir, resume_from, overwrite)
        yield


def resume_folder(path: str, output_dir: str, run_name: Optional[str]) -> str:
    """The folder ``--resume_from_checkpoint`` names: a checkpoint folder, a run folder, or ``latest`` (the newest
    checkpoint of --run_name, or of the most recently saved run in output_dir)."""
    if path != "latest":
        run_given = not is_checkpoint(path) and os.path.isdir(path)
        folder = latest_checkpoint(path) if run_given else path
        if folder is not None and os.path.islink(folder):  # <run>/last: the checkpoint it points to, in its run
            folder = os.path.join(os.path.dirname(os.path.normpath(folder)), os.readlink(folder))
        run = path if run_given else os.path.dirname(os.path.normpath(path))
        if folder is not None and not inside(folder, run):
            raise CheckpointError(f"--resume_from_checkpoint {path!r} leads to {os.path.realpath(folder)}, outside its "
                                  f"run folder {run}; a resume writes and deletes checkpoints there, so it must stay "
                                  f"inside: pass the checkpoint-<step> folder itself")
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
            if is_checkpoint(folder) and inside(folder, os.path.join(output_dir, run)):  # no link out of its run
                found.append(folder)
                break
    return sorted(found, key=lambda f: os.path.getmtime(os.path.join(f, WEIGHTS_FILE)), reverse=True)


def pick_checkpoint(checkpoint: Optional[str], output_dir: str, wanted: dict, kind: Optional[str] = None,
                    kind_of: Optional[Callable[[dict], str]] = None) -> str:
    """``checkpoint``, or the newest run under ``output_dir`` whose saved settings hold every ``wanted`` value
    (the model flags the user typed) and whose model kind (``kind_of(saved settings)``) is ``kind``, the kind the
    flags describe: a captioner is never served for a classifier's flags. Says which run and kind it picked."""
    if checkpoint:
        return checkpoint
    runs = find_runs(output_dir)
    others = []
    for folder in runs:
        try:
            saved = read_run_config(folder)["settings"]
            found_kind = kind_of(saved) if kind_of else None
        except UsageError as exc:  # a damaged run is named and passed over, never picked
            print(f"note: skipped {folder}: {exc}", file=sys.stderr)
            continue
        if all(saved.get(k) == v for k, v in wanted.items()) and found_kind == kind:
            print(f"picked the newest matching run: {folder} ({kind or 'model'}"
                  + (f", matching {', '.join(f'--{k} {v}' for k, v in wanted.items())}" if wanted else "") + ")")
            return folder
        others.append(f"{os.path.basename(os.path.dirname(folder))} ({found_kind})")
    flags = " ".join(f"--{k} {v}" for k, v in wanted.items())
    if not runs:
        raise UsageError(f"no trained model under {output_dir!r}; train one with python main.py {flags}".rstrip()
                         + " or pass --checkpoint PATH")
    what = f"a {kind} model" + (f" trained with {flags}" if flags else "")
    raise UsageError(f"no run under {output_dir!r} is {what} (found: {', '.join(others[:4])}"
                     f"{' ...' if len(others) > 4 else ''}); pass the flags of the model you want, --checkpoint PATH, "
                     f"or train one with python main.py {flags}".rstrip())


def check_run_outputs(cfg) -> None:
    """Every path a training or evaluation run writes, checked before the long work starts (``files``): the run
    folders, the results table, the export folder."""
    check_output_folder(cfg.output_dir, "--output_dir")
    if cfg.summary_csv:
        check_output_file(cfg.summary_csv, "--summary_csv")
    if cfg.export_dir:
        check_output_folder(cfg.export_dir, "--export_dir")


def check_inference_outputs(cfg) -> None:
    """inference.py: the predictions file (an existing one only with --overwrite)."""
    check_output_file(cfg.predictions_file, "--predictions_file", overwrite=cfg.overwrite)
