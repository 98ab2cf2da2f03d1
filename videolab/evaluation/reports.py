"""What an evaluation records besides its metrics, and the results table every evaluated run adds a row to.

* speed: latency per clip (batch 1) and throughput (clips/s at the evaluation batch size), each the median of
  ``repeats`` timed runs after ``warmup`` untimed ones, on the evaluation device and precision. Only the model
  runs inside the timer (no data loading); on CUDA the timer waits for the GPU.
* memory: peak CPU resident set size (VmHWM, reset at the start of the run where Linux allows it, so it covers
  this run only) and, on CUDA, the peak GPU memory allocated by PyTorch.
* environment: library versions, the git commit (None outside a git checkout), Python, platform, Hub mode.
* ``results/summary.csv``: one row per evaluated run. Appends hold an exclusive lock (``filelock``) on
  ``summary.csv.lock`` and replace the file atomically, so runs that finish together never interleave rows or
  write the header twice.
"""
from __future__ import annotations

import csv
import importlib.metadata
import io
import os
import platform
import subprocess
import sys
import time
from typing import Any, Callable, Optional

import torch
from filelock import FileLock

from videolab.core.files import write_bytes
from videolab.evaluation.measure import median_time, reset_peak_rss, vm_hwm_bytes

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # the checkout
LIBRARIES = ("torch", "torchvision", "transformers", "timm", "peft", "accelerate", "safetensors", "tokenizers",
             "numpy", "matplotlib", "pycocoevalcap")
MIB = 2 ** 20

CROP_NAMES = {1: "centre", 3: "start, centre and end of the long side"}


def view_protocol(clips: int, crops: int, sampling: str, num_frames: int, frame_stride: int) -> dict[str, Any]:
    """How a test clip was seen, for eval.json and predictions.json: ``single-view`` (one clip, one centre crop)
    or ``multi-view`` (clips x crops views, logits averaged)."""
    return dict(protocol="single-view" if clips * crops == 1 else "multi-view", clips=clips, crops=crops,
                views=clips * crops, crop_positions=CROP_NAMES[crops], sampling=sampling, num_frames=num_frames,
                frame_stride=frame_stride if sampling == "dense" else None,
                combined="mean of the class logits over the views" if clips * crops > 1 else None)


# ----------------------------------------------------------------------------------------------------------------
# environment
# ----------------------------------------------------------------------------------------------------------------
def library_versions(names=LIBRARIES) -> dict[str, Optional[str]]:
    """{package: installed version, or None when it is not installed}."""
    versions = {}
    for name in names:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def _git(folder: str, *args: str) -> Optional[str]:
    try:
        done = subprocess.run(["git", "-C", folder, *args], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):  # no git executable, or it hung
        return None
    return done.stdout.strip() if done.returncode == 0 else None


def git_state(folder: str = REPO_ROOT) -> dict[str, Any]:
    """{commit, dirty} of the code's git checkout; both None outside a checkout or without git."""
    commit = _git(folder, "rev-parse", "HEAD")
    if commit is None:
        return dict(commit=None, dirty=None)
    status = _git(folder, "status", "--porcelain", "--untracked-files=no")
    return dict(commit=commit, dirty=bool(status) if status is not None else None)


def environment_info(device: torch.device) -> dict[str, Any]:
    gpu = torch.cuda.get_device_name(device) if device.type == "cuda" else None
    return dict(versions=library_versions(), torch_build=torch.__version__, cuda=torch.version.cuda,
                python=platform.python_version(), platform=platform.platform(), device=str(device), gpu=gpu,
                git=git_state())


# ----------------------------------------------------------------------------------------------------------------
# memory
# ----------------------------------------------------------------------------------------------------------------
def reset_peak_memory(device: torch.device) -> bool:
    """Start counting peak memory now. True if the CPU peak could be reset (Linux), else it counts from process
    start."""
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    return reset_peak_rss()


def peak_memory(device: torch.device, counted_from_run_start: bool) -> dict[str, Any]:
    gpu = torch.cuda.max_memory_allocated(device) / MIB if device.type == "cuda" else None
    return dict(cpu_peak_rss_mib=round(vm_hwm_bytes() / MIB, 1),
                gpu_peak_allocated_mib=round(gpu, 1) if gpu is not None else None,
                counted_from="run start" if counted_from_run_start else "process start")


# ----------------------------------------------------------------------------------------------------------------
# speed
# ----------------------------------------------------------------------------------------------------------------
def first_items(batch: dict, n: int) -> dict:
    """The first ``n`` clips of a collated batch (tensors and lists alike)."""
    return {k: v[:n] for k, v in batch.items()}


def median_seconds(fn: Callable[[], Any], repeats: int, warmup: int, device: torch.device) -> float:
    """Median wall time of ``fn()`` over ``repeats`` runs after ``warmup`` untimed runs (GPU work included)."""
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)

    def run():
        fn()
        sync()
    for _ in range(warmup):
        run()
    return median_time(run, repeats)


def measure_speed(predict: Callable[[dict], Any], batch: dict, device: torch.device, repeats: int,
                  warmup: int = 2) -> dict[str, Any]:
    """{latency, throughput} of ``predict(batch)``: latency on the batch's first clip alone, throughput on the
    whole batch. ``repeats == 0`` records that nothing was timed."""
    size = len(batch["pixel_values"])
    if repeats == 0:
        skipped = dict(measured=False, reason="--speed_repeats 0")
        return dict(latency=skipped, throughput=skipped)
    one = first_items(batch, 1)
    per_clip = median_seconds(lambda: predict(one), repeats, warmup, device)
    per_batch = median_seconds(lambda: predict(batch), repeats, warmup, device)
    # CPU timings depend on the thread count (and suffer when other processes compete for those cores)
    protocol = dict(repeats=repeats, warmup=warmup, statistic="median", device=str(device),
                    cpu_threads=torch.get_num_threads())
    return dict(latency=dict(ms_per_clip=round(1000 * per_clip, 3), batch_size=1, **protocol),
                throughput=dict(clips_per_s=round(size / per_batch, 2), batch_size=size, **protocol))


# ----------------------------------------------------------------------------------------------------------------
# results table
# ----------------------------------------------------------------------------------------------------------------
SUMMARY_COLUMNS = ("finished", "run_name", "mode", "task", "vision_model", "model_size", "pretrained", "fusion",
                   "language_model", "lora_vision", "lora_llm", "lora_r", "dataset", "num_frames", "image_size",
                   "checkpoint_epoch", "split", "views", "num_samples", "num_bad_videos", "top1", "top5",
                   "mean_class_accuracy", "single_view_top1", "CIDEr", "BLEU-4",
                   "params_total", "params_trainable", "peak_rss_mib", "peak_gpu_mib", "latency_ms_per_clip",
                   "throughput_clips_per_s", "device", "git_commit", "run_dir", "checkpoint")


def summary_row(report: dict) -> dict[str, Any]:
    """One results-table row (SUMMARY_COLUMNS) from an eval.json dict."""
    s = report["settings"]
    lora = s["use_lora_vision"] or s["use_lora_llm"]
    caption_metrics = report.get("metrics") or {}
    views = report.get("views") or {}
    return dict(
        finished=report["finished"], run_name=os.path.basename(report["run_dir"]), mode=report["mode"],
        task=report["task"], vision_model=s["vision_model"], model_size=s["model_size"],
        pretrained=report["pretrained"], fusion=report["fusion"], language_model=report.get("language_model"),
        lora_vision=s["use_lora_vision"], lora_llm=s["use_lora_llm"], lora_r=s["lora_r"] if lora else None,
        dataset=s.get("dataset"), num_frames=s["num_frames"], image_size=s["image_size"],
        checkpoint_epoch=report["checkpoint_epoch"], split=report["split"],
        views=f"{views.get('clips', 1)}x{views.get('crops', 1)}", num_samples=report["num_samples"],
        num_bad_videos=len((report.get("bad_videos") or {}).get("test", [])), top1=report.get("top1"),
        top5=report.get("top5"), mean_class_accuracy=report.get("mean_class_accuracy"),
        single_view_top1=(views.get("single_view") or {}).get("top1"), CIDEr=caption_metrics.get("CIDEr"),
        **{"BLEU-4": caption_metrics.get("BLEU-4")}, params_total=report["params_total"],
        params_trainable=report["params_trainable"], peak_rss_mib=report["peak_memory"]["cpu_peak_rss_mib"],
        peak_gpu_mib=report["peak_memory"]["gpu_peak_allocated_mib"],
        latency_ms_per_clip=report["latency"].get("ms_per_clip"),
        throughput_clips_per_s=report["throughput"].get("clips_per_s"), device=report["environment"]["device"],
        git_commit=report["environment"]["git"]["commit"], run_dir=report["run_dir"],
        checkpoint=report["checkpoint"])


def _csv_value(value: Any) -> Any:
    if value is None:
        return ""
    return round(value, 5) if isinstance(value, float) else value


def _read_header(path: str) -> Optional[list[str]]:
    if not os.path.isfile(path) or os.path.getsize(path) == 0:
        return None
    with open(path, newline="") as fh:
        return next(csv.reader(fh), None)


def append_summary_row(path: str, row: dict[str, Any], columns=SUMMARY_COLUMNS) -> None:
    """Add one row to the CSV at ``path``, writing the header first if the file is new or empty.

    The read-then-rewrite happens under an exclusive lock and the file is replaced atomically, so concurrent writers
    (runs finishing together) each add exactly one whole row, only the first writes the header, and a crash leaves
    the previous table. A file written by an older version with other columns keeps its header: the row is written
    in that file's columns, and a warning names what was left out.
    """
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with FileLock(f"{path}.lock", timeout=60):
        header = _read_header(path)
        if header is not None and header != list(columns):
            left_out = [c for c in columns if c not in header]
            if left_out:
                print(f"warning: {path} has older columns; not recorded: {', '.join(left_out)} (move the file "
                      f"away to start a table with every column)", file=sys.stderr)
        previous = open(path, "rb").read() if header is not None else b""
        text = io.StringIO()
        writer = csv.DictWriter(text, fieldnames=header or list(columns), extrasaction="ignore", restval="",
                                lineterminator="\n")
        if header is None:
            writer.writeheader()
        writer.writerow({k: _csv_value(v) for k, v in row.items()})
        if previous and not previous.endswith(b"\n"):
            previous += b"\n"
        write_bytes(path, previous + text.getvalue().encode("utf-8"))


def timestamp() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S")
