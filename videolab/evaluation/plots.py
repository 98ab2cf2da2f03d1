"""Plots of a run folder as PNG files (``python apps/visualize_results.py --run_dir checkpoints/<run>``).

Reads what ``main.py`` wrote there (``metrics.jsonl``, ``eval.json``) and writes into ``<run_dir>/plots/``:

* ``training_curves.png``    loss and top-1 accuracy per epoch, train and validation;
* ``confusion_matrix.png``   test confusion matrix with class names (counts; colour = share of the true class);
* ``per_class_accuracy.png`` test accuracy of every class, with the mean class accuracy and chance level;
* ``caption_examples.png``   captioning runs: frames of example test videos with generated and reference captions.

Every evaluation calls :func:`write_plots` at its end (``train_code.test_and_report``). Figures are drawn with
matplotlib's
object-oriented API on the Agg canvas (``Figure``, no pyplot), so no display and no global backend are involved.
"""
from __future__ import annotations

import json
import os
import textwrap
from typing import Optional, Sequence

import numpy as np
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator, PercentFormatter

from videolab.core.errors import UsageError
from videolab.core.files import atomic_file
from videolab.data.sampling import sample_frame_indices

DPI = 120
PLOTS_DIR = "plots"
MAX_CAPTION_EXAMPLES, FRAMES_PER_EXAMPLE = 6, 4
TRAIN_STYLE, VAL_STYLE = dict(color="tab:blue", marker="o"), dict(color="tab:orange", marker="s")


# ----------------------------------------------------------------------------------------------------------------
# reading a run folder
# ----------------------------------------------------------------------------------------------------------------
def read_eval(run_dir: str) -> Optional[dict]:
    path = os.path.join(run_dir, "eval.json")
    if not os.path.isfile(path):
        return None
    try:
        with open(path) as fh:
            return json.load(fh)
    except json.JSONDecodeError as exc:
        raise UsageError(f"{path} is not valid JSON ({exc.msg}, line {exc.lineno}); re-run the evaluation with "
                         f"python main.py --eval_only True --checkpoint {os.path.join(run_dir, 'best')}") from None


def read_history(run_dir: str, report: Optional[dict] = None) -> list[dict]:
    """Per-epoch records from metrics.jsonl (a resumed run's repeated epochs: the last record wins), else from
    eval.json's history."""
    path = os.path.join(run_dir, "metrics.jsonl")
    if not os.path.isfile(path):
        return list((report or {}).get("history") or [])
    by_epoch = {}
    with open(path) as fh:
        for line in fh:
            if line.strip():
                record = json.loads(line)
                by_epoch[record["epoch"]] = record
    return [by_epoch[e] for e in sorted(by_epoch)]


def run_title(report: Optional[dict], run_dir: str) -> str:
    """'run <name> | <backbone> <size> | <fusion or language model>' for figure titles."""
    name = os.path.basename(os.path.normpath(run_dir))
    if not report:
        return f"run {name}"
    s = report["settings"]
    joined = report.get("language_model") or (f"{report['fusion']} fusion" if report.get("fusion") != "none" else "")
    lora = " + LoRA" if s.get("use_lora_vision") or s.get("use_lora_llm") else ""
    return " | ".join(p for p in (f"run {name}", f"{s['vision_model']} {s['model_size']}{lora}", joined) if p)


def headline(report: dict) -> str:
    """The test result in one line: top-1 / top-5 / mean class accuracy, or the caption metrics."""
    if report.get("top1") is not None:
        return (f"test top-1 {100 * report['top1']:.1f}% | top-5 {100 * report['top5']:.1f}% | mean class accuracy "
                f"{100 * report['mean_class_accuracy']:.1f}% | {report['num_samples']} clips")
    metrics = report.get("metrics") or {}
    shown = [f"{k} {metrics[k]:.3f}" for k in ("BLEU-4", "METEOR", "ROUGE-L", "CIDEr")
             if isinstance(metrics.get(k), float)]
    return " | ".join(["test"] + shown + [f"{report['num_samples']} clips"])


# ----------------------------------------------------------------------------------------------------------------
# figures
# ----------------------------------------------------------------------------------------------------------------
def _plot_series(ax, history: list[dict], key: str, label: str, scale: float = 1.0, **style) -> None:
    """``key`` per epoch, where recorded (a run without validation has no val_* values: no line, no legend)."""
    points = [(r["epoch"], scale * r[key]) for r in history if r.get(key) is not None]
    if points:
        ax.plot(*zip(*points), label=label, **style)


def plot_training_curves(history: list[dict], title: str) -> Figure:
    """Loss (and top-1 accuracy for classifiers) per epoch, train and validation."""
    has_accuracy = any("train_top1" in r or "val_top1" in r for r in history)
    fig = Figure(figsize=(11 if has_accuracy else 6.5, 4.4), dpi=DPI, layout="constrained")
    axes = fig.subplots(1, 2 if has_accuracy else 1, squeeze=False)[0]
    loss_ax = axes[0]
    for key, label, style in (("train_loss", "train", TRAIN_STYLE), ("val_loss", "validation", VAL_STYLE)):
        _plot_series(loss_ax, history, key, label, **style)
    loss_ax.set(title="Loss per epoch", xlabel="epoch", ylabel="loss (cross-entropy)")
    if has_accuracy:
        acc_ax = axes[1]
        _plot_series(acc_ax, history, "train_top1", "train top-1", scale=100, **TRAIN_STYLE)
        _plot_series(acc_ax, history, "val_top1", "validation top-1", scale=100, **VAL_STYLE)
        _plot_series(acc_ax, history, "val_top5", "validation top-5", scale=100, color="tab:orange",
                     linestyle="--", alpha=0.6)
        acc_ax.set(title="Accuracy per epoch", xlabel="epoch", ylabel="accuracy", ylim=(-2, 105))
        acc_ax.yaxis.set_major_formatter(PercentFormatter(100))
    for ax in axes:
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
        ax.legend(loc="best", framealpha=0.9)
    fig.suptitle(f"Training curves - {title}")
    return fig


def plot_confusion_matrix(confusion: Sequence[Sequence[int]], class_names: Sequence[str], title: str) -> Figure:
    """Rows = true class, columns = predicted class; cells show counts, colour shows the share of the true class."""
    counts = np.asarray(confusion, dtype=np.int64)
    n = len(class_names)
    if counts.shape != (n, n):
        raise ValueError(f"confusion matrix of shape {counts.shape} does not match {n} class names")
    shares = counts / np.maximum(counts.sum(1, keepdims=True), 1)
    side = float(np.clip(0.6 * n + 3.5, 6, 22))
    fig = Figure(figsize=(side + 1.2, side), dpi=DPI, layout="constrained")
    ax = fig.subplots()
    image = ax.imshow(shares, cmap="Blues", vmin=0, vmax=1)
    fig.colorbar(image, ax=ax, shrink=0.8, format=PercentFormatter(1)).set_label("share of the true class")
    label_size = 9 if n <= 20 else 7
    ax.set_xticks(range(n), class_names, rotation=45, ha="right", rotation_mode="anchor", fontsize=label_size)
    ax.set_yticks(range(n), class_names, fontsize=label_size)
    if n <= 30:  # beyond that the numbers no longer fit in the cells
        for i in range(n):
            for j in range(n):
                if counts[i, j]:
                    ax.text(j, i, str(counts[i, j]), ha="center", va="center", fontsize=label_size,
                            color="white" if shares[i, j] > 0.5 else "black")
    ax.set(xlabel="predicted class", ylabel="true class")
    ax.set_title(f"Confusion matrix - test split\n{title}", fontsize=11)
    return fig


def plot_per_class_accuracy(per_class: dict, confusion: Sequence[Sequence[int]], class_names: Sequence[str],
                            mean_class_accuracy: float, title: str) -> Figure:
    """Horizontal bars (class names stay horizontal and readable); the right axis reads accuracy and
    correct / test clips for every class, so no label sits on a bar or a reference line."""
    n = len(class_names)
    counts = np.asarray(confusion)
    values = [per_class.get(name) for name in class_names]
    fig = Figure(figsize=(9.5, float(np.clip(0.42 * n + 2.2, 3.5, 30))), dpi=DPI, layout="constrained")
    ax = fig.subplots()
    positions = np.arange(n)
    label_size = 9 if n <= 30 else 7
    ax.barh(positions, [100 * (v or 0) for v in values], color="tab:blue", height=0.7)
    ax.axvline(100 * mean_class_accuracy, color="tab:red", linestyle="--",
               label=f"mean class accuracy {100 * mean_class_accuracy:.1f}%")
    ax.axvline(100 / n, color="black", linestyle=":", label=f"chance {100 / n:.1f}%")
    ax.set_yticks(positions, class_names, fontsize=label_size)
    ax.set(xlim=(0, 100), ylim=(n - 0.5, -0.5),  # first class on top, as in the confusion matrix
           xlabel="top-1 accuracy on the class's test clips", ylabel="class")
    ax.xaxis.set_major_formatter(PercentFormatter(100))
    ax.grid(axis="x", alpha=0.3)
    ax.legend(loc="lower right", fontsize=9, framealpha=0.9)
    readout = [f"{100 * v:.1f}%  ({counts[c, c]}/{counts[c].sum()})" if v is not None else "no test clips"
               for c, v in enumerate(values)]
    right = ax.secondary_yaxis("right")
    right.set_yticks(positions, readout, fontsize=label_size)
    right.set_ylabel("accuracy (correct / clips)")
    ax.set_title(f"Per-class accuracy - test split\n{title}", fontsize=11)
    return fig


def load_example_frames(data_root: str, video_id: str, count: int = FRAMES_PER_EXAMPLE) -> Optional[np.ndarray]:
    """``count`` evenly spaced frames [count, H, W, 3] uint8 of a synthetic test video, or None if it is gone."""
    import torch
    path = os.path.join(data_root, video_id)
    if not os.path.isfile(path):
        return None
    video = torch.load(path, weights_only=True)  # uint8 [T, C, H, W]
    frames = video[sample_frame_indices(video.shape[0], min(count, video.shape[0]))]
    return frames.expand(-1, 3, -1, -1).permute(0, 2, 3, 1).numpy()  # [count, H, W, 3]


def plot_caption_examples(examples: list[dict], data_root: str, title: str) -> Figure:
    """One row per example (spread over the test set, so over its classes): a few frames, then the generated and
    the reference caption."""
    examples = examples[::max(1, len(examples) // MAX_CAPTION_EXAMPLES)][:MAX_CAPTION_EXAMPLES]
    if not examples:
        raise ValueError("no caption examples to plot")
    columns = FRAMES_PER_EXAMPLE + 4  # the text takes the width of four frames
    fig = Figure(figsize=(13, 1.9 * len(examples) + 0.9), dpi=DPI, layout="constrained")
    grid = fig.add_gridspec(len(examples), columns)
    for row, example in enumerate(examples):
        frames = load_example_frames(data_root, example["video"])
        frame_axes = [fig.add_subplot(grid[row, col]) for col in range(FRAMES_PER_EXAMPLE)]
        for ax, frame in zip(frame_axes, frames if frames is not None else []):
            ax.imshow(frame, interpolation="nearest")
        for ax in frame_axes:
            ax.set_axis_off()
        if frames is None:
            frame_axes[0].text(0, 0.5, f"frames not found in\n{data_root}", fontsize=8, va="center")
        text_ax = fig.add_subplot(grid[row, FRAMES_PER_EXAMPLE:])
        text_ax.set_axis_off()
        generated = textwrap.fill(f"generated: {example['generated'] or '(empty)'}", 70)
        reference = textwrap.fill(f"reference: {example['reference'] or '(none)'}", 70)
        text_ax.text(0, 0.95, example["video"], fontsize=9, color="gray", va="top")
        text_ax.text(0, 0.72, generated, fontsize=10, va="top", color="tab:blue", fontweight="bold")
        text_ax.text(0, 0.32, reference, fontsize=10, va="top")
    fig.suptitle(f"Example test captions: generated vs reference\n{title}", fontsize=11)
    return fig


# ----------------------------------------------------------------------------------------------------------------
# a run folder -> PNG files
# ----------------------------------------------------------------------------------------------------------------
def save_figure(fig: Figure, path: str) -> str:
    """``fig`` as a PNG at ``path``, written atomically."""
    with atomic_file(path, keep_extension=True) as tmp:
        fig.savefig(tmp, dpi=DPI, facecolor="white")
    return path


def write_plots(run_dir: str, out_dir: Optional[str] = None, data_root: Optional[str] = None) -> list[str]:
    """Every plot the run folder has data for, as PNG files in ``out_dir`` (default ``<run_dir>/plots``).
    ``data_root`` overrides the dataset folder recorded in eval.json (for the caption frames). Returns the paths."""
    if not os.path.isdir(run_dir):
        raise UsageError(f"--run_dir {run_dir!r} is not a folder; pass a run folder written by main.py, such as "
                         f"checkpoints/<run_name>")
    report = read_eval(run_dir)
    history = read_history(run_dir, report)
    if report is None and not history:
        raise UsageError(f"nothing to plot in {run_dir!r}: it has neither eval.json nor metrics.jsonl (main.py "
                         f"writes them; pass the run folder, not its best/ or last/ checkpoint)")
    out_dir = out_dir or os.path.join(run_dir, PLOTS_DIR)
    os.makedirs(out_dir, exist_ok=True)
    title = run_title(report, run_dir)
    result = f"{title}\n{headline(report)}" if report else title
    written = []
    if history:
        written.append(save_figure(plot_training_curves(history, title), os.path.join(out_dir, "training_curves.png")))
    if report and report.get("confusion_matrix"):
        names, confusion = report["class_names"], report["confusion_matrix"]
        written.append(save_figure(plot_confusion_matrix(confusion, names, result),
                             os.path.join(out_dir, "confusion_matrix.png")))
        written.append(save_figure(plot_per_class_accuracy(report["per_class_accuracy"], confusion, names,
                                                     report["mean_class_accuracy"], result),
                             os.path.join(out_dir, "per_class_accuracy.png")))
    if report and report.get("captions"):
        root = data_root or report["settings"]["data_root"]
        written.append(save_figure(plot_caption_examples(report["captions"], root, result),
                             os.path.join(out_dir, "caption_examples.png")))
    return written


# ----------------------------------------------------------------------------------------------------------------
# analysis plots (issue 22): attention, the dataset, runs side by side
# ----------------------------------------------------------------------------------------------------------------
def plot_fusion_attention(weights: np.ndarray, frames: np.ndarray, title: str) -> Figure:
    """``weights`` [heads, T]: the fusion class token's attention to each frame, per head; ``frames`` [T, H, W, 3]
    uint8 drawn above the heat map, one column per frame."""
    heads, length = weights.shape
    fig = Figure(figsize=(max(6.0, 1.1 * length + 1.5), 2.2 + 0.45 * heads), dpi=DPI, layout="constrained")
    grid = fig.add_gridspec(2, length, height_ratios=[1.0, max(1.0, 0.4 * heads)])
    for t in range(length):
        ax = fig.add_subplot(grid[0, t])
        ax.imshow(frames[t], interpolation="nearest")
        ax.set_axis_off()
        ax.set_title(f"frame {t}", fontsize=8)
    ax = fig.add_subplot(grid[1, :])
    image = ax.imshow(weights, aspect="auto", cmap="viridis", vmin=0.0)
    ax.set(xlabel="frame", ylabel="head", xticks=range(length), yticks=range(heads))
    fig.colorbar(image, ax=ax, label="attention of the class token")
    fig.suptitle(f"Temporal attention of the last fusion layer, per head\n{title}", fontsize=10)
    return fig


def plot_attention_rollout(maps: np.ndarray, frames: np.ndarray, title: str) -> Figure:
    """``maps`` [T, h, w] (attention rollout of the backbone, per frame) drawn over ``frames`` [T, H, W, 3]."""
    length = len(frames)
    fig = Figure(figsize=(max(6.0, 1.6 * length), 3.6), dpi=DPI, layout="constrained")
    axes = np.atleast_2d(fig.subplots(2, length, squeeze=False))
    height, width = frames.shape[1:3]
    for t in range(length):
        axes[0, t].imshow(frames[t], interpolation="nearest")
        axes[0, t].set_title(f"frame {t}", fontsize=8)
        axes[1, t].imshow(frames[t], interpolation="nearest")
        axes[1, t].imshow(maps[t], cmap="jet", alpha=0.5, extent=(-0.5, width - 0.5, height - 0.5, -0.5),
                          interpolation="bilinear", vmin=0.0, vmax=float(maps.max()))
        for ax in axes[:, t]:
            ax.set_axis_off()
    fig.suptitle(f"Attention rollout of the backbone over the frames\n{title}", fontsize=10)
    return fig


def plot_dataset_analysis(records: Sequence[dict], problems: Sequence[dict], title: str) -> Figure:
    """``records``: one per readable video {video, label, frames, width, height}; ``problems``: the checker's
    {video, kind, reason}. Class distribution, clip lengths, frame sizes and the bad files by kind."""
    fig = Figure(figsize=(13, 7.5), dpi=DPI, layout="constrained")
    (classes_ax, lengths_ax), (sizes_ax, bad_ax) = fig.subplots(2, 2)
    labels = sorted({r["label"] for r in records})
    counts = [sum(r["label"] == c for r in records) for c in labels]
    classes_ax.bar(range(len(labels)), counts, color="tab:blue")
    classes_ax.set(title=f"Class distribution ({len(records)} readable videos, {len(labels)} classes)",
                   ylabel="videos", xticks=range(len(labels)))
    classes_ax.set_xticklabels(labels, rotation=90 if len(labels) > 12 else 0, fontsize=7 if len(labels) > 12 else 9)
    lengths = [r["frames"] for r in records]
    lengths_ax.hist(lengths, bins=min(30, max(1, len(set(lengths)))), color="tab:green")
    lengths_ax.set(title="Clip lengths", xlabel="frames", ylabel="videos")
    sizes = {}
    for r in records:
        sizes[(r["width"], r["height"])] = sizes.get((r["width"], r["height"]), 0) + 1
    sizes_ax.scatter([w for w, _ in sizes], [h for _, h in sizes], s=[20 + 5 * n for n in sizes.values()],
                     color="tab:purple", alpha=0.7)
    for (w, h), n in sizes.items():
        sizes_ax.annotate(f"{w}x{h}: {n}", (w, h), fontsize=8, xytext=(4, 4), textcoords="offset points")
    sizes_ax.set(title="Frame sizes", xlabel="width (px)", ylabel="height (px)")
    kinds = sorted({p["kind"] for p in problems})
    bad_ax.bar(kinds, [sum(p["kind"] == k for p in problems) for k in kinds], color="tab:red")
    bad_ax.set(title=f"Bad files: {len(problems)}" + ("" if problems else " (none)"), ylabel="videos")
    bad_ax.yaxis.set_major_locator(MaxNLocator(integer=True))
    fig.suptitle(f"Dataset analysis\n{title}", fontsize=11)
    return fig


COMPARED = (("params_total", "parameters (M)", 1e-6), ("peak_memory_mib", "peak memory (MiB)", 1.0),
            ("latency_ms_per_clip", "latency (ms per clip, batch 1)", 1.0))


def read_summary_rows(path: str) -> list[dict]:
    """The results table (``--summary_csv``), rows with a top-1 accuracy."""
    import csv
    if not os.path.isfile(path):
        raise UsageError(f"--summary_csv {path!r} not found; every evaluated run appends a row to "
                         f"results/summary.csv (main.py --summary_csv)")
    with open(path, newline="") as fh:
        rows = [r for r in csv.DictReader(fh) if r.get("top1")]
    if not rows:
        raise UsageError(f"{path} has no row with a top-1 accuracy to compare (captioning and pretraining runs "
                         f"have none)")
    return rows


def _number(text: Optional[str]) -> Optional[float]:
    try:
        return float(text) if text not in (None, "") else None
    except ValueError:
        return None


def plot_run_comparison(rows: Sequence[dict], title: str) -> Figure:
    """Test top-1 of every run against its parameters, peak memory (GPU if measured, else CPU RSS) and latency."""
    fig = Figure(figsize=(15, 4.6), dpi=DPI, layout="constrained")
    for ax, (key, label, scale) in zip(fig.subplots(1, 3), COMPARED):
        points = []
        for r in rows:
            value = (_number(r.get("peak_gpu_mib")) or _number(r.get("peak_rss_mib"))) if key == "peak_memory_mib" \
                else _number(r.get(key))
            if value is not None:
                points.append((value * scale, 100 * float(r["top1"]), r.get("run_name", "")))
        ax.scatter([p[0] for p in points], [p[1] for p in points], color="tab:blue")
        for x, y, name in points:
            ax.annotate(name, (x, y), fontsize=7, xytext=(3, 3), textcoords="offset points")
        ax.set(xlabel=label, ylabel="test top-1 (%)", title=f"accuracy vs {label.split(' (')[0]}")
        ax.grid(alpha=0.3)
    fig.suptitle(f"Runs compared ({len(rows)} rows)\n{title}", fontsize=11)
    return fig
