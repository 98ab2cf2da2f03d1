"""Does our masked-video pretraining help with few labels? Pretrain, then fine-tune with 10 % of the labels.

    python benchmarks/pretrain_finetune.py --data_root synthetic_dataset            # everything (one core: ~30 min)
    python benchmarks/pretrain_finetune.py --steps pretrain                         # only the pretraining run
    python benchmarks/pretrain_finetune.py --steps finetune --seeds 0 1 2           # fine-tunes (pretraining done)
    python benchmarks/pretrain_finetune.py --steps report                           # table, JSON and curves only

1. ``main.py --task pretrain --pretrain_objective mvm`` on the whole train split (labels unused, ``--val_fraction
   0``): VideoMAE-tiny, 200 epochs, frame masking of 75 % of the tokens (3 of the 4 time slots: predict the frames
   not shown), raw-pixel targets (``--norm_pix_loss False``; per-patch normalised targets are mostly pixel noise on
   this dataset), exports ``<output_dir>/pretrain-mvm/backbone``.
2. Four fine-tuning runs per seed with ``--label_fraction 0.1`` (a stratified 10 % of the train split, 10 % of that
   held out for validation) and the same budget (epochs, lr, batch): full fine-tuning from scratch and from the
   pretrained backbone; LoRA (adapters + head) on a random and on the pretrained backbone.
3. ``--json`` (default benchmarks/pretrain_finetune_cpu.json): test top-1 per run, medians over seeds;
   ``--plot`` (default benchmarks/pretrain_finetune_curves.png): validation top-1 per epoch of every run and the
   pretraining loss; the pretraining run's reconstruction figure is copied next to it.

Every run is a separate ``python main.py`` process pinned by the caller (``taskset -c N``), with one thread.
Results and the runs that led to this recipe: BENCHMARKS.md, "Self-supervised pretraining with 10 % of the labels".
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
from typing import Optional, Sequence

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from videolab.core.files import write_json  # noqa: E402
PRETRAIN_RUN = "pretrain-mvm"
VARIANTS = {  # name -> extra fine-tuning flags (the backbone folder is filled in)
    "scratch": [],
    "pretrained": ["--pretrained", "{backbone}"],
    "lora_random": ["--use_lora_vision", "True"],
    "lora_pretrained": ["--use_lora_vision", "True", "--pretrained", "{backbone}"],
}
COMMON = ["--vision_model", "videomae", "--model_size", "tiny", "--num_frames", "8", "--image_size", "32",
          "--batch_size", "32", "--quiet", "--speed_repeats", "0", "--summary_csv", "none"]


def run(args: list[str]) -> None:
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
    command = [sys.executable, os.path.join(ROOT, "main.py"), *args]
    print("$ " + " ".join(command[1:]), flush=True)
    subprocess.run(command, check=True, env=env)


def pretrain(opts) -> None:
    run([*COMMON, "--task", "pretrain", "--pretrain_objective", "mvm", "--data_root", opts.data_root,
         "--output_dir", opts.output_dir, "--run_name", PRETRAIN_RUN, "--val_fraction", "0",
         "--epochs", str(opts.pretrain_epochs), "--lr", str(opts.pretrain_lr), "--mask_ratio", str(opts.mask_ratio),
         "--mask_type", opts.mask_type, "--norm_pix_loss", str(opts.norm_pix_loss), "--seed", "0"])


def finetune(opts) -> None:
    backbone = os.path.join(opts.output_dir, PRETRAIN_RUN, "backbone")
    for seed in opts.seeds:
        for name in opts.variants:
            extra = [a.format(backbone=backbone) for a in VARIANTS[name]]
            lr = opts.lora_lr if "lora" in name else opts.lr
            run([*COMMON, "--data_root", opts.data_root, "--output_dir", opts.output_dir,
                 "--run_name", f"finetune-{name}-seed{seed}", "--label_fraction", str(opts.label_fraction),
                 "--epochs", str(opts.epochs), "--lr", str(lr), "--seed", str(seed), *extra])


def read_json(path: str) -> dict:
    with open(path) as fh:
        return json.load(fh)


def report(opts) -> dict:
    runs = {}
    for seed in opts.seeds:
        for name in opts.variants:
            path = os.path.join(opts.output_dir, f"finetune-{name}-seed{seed}", "eval.json")
            if os.path.isfile(path):
                e = read_json(path)
                runs.setdefault(name, []).append(dict(seed=seed, top1=e["top1"], top5=e["top5"],
                                                      train_seconds=e["train_seconds"], pretrained=e["pretrained"],
                                                      params_trainable=e["params_trainable"],
                                                      val_top1=[r.get("val_top1") for r in e["history"]]))
    pre_path = os.path.join(opts.output_dir, PRETRAIN_RUN, "eval.json")
    pre = read_json(pre_path) if os.path.isfile(pre_path) else None
    result = dict(
        label_fraction=opts.label_fraction, epochs=opts.epochs, lr=opts.lr, lora_lr=opts.lora_lr,
        pretraining=None if pre is None else dict(
            epochs=len(pre["history"]), test_reconstruction_mse=pre["mvm_loss"], mask=pre.get("mask"),
            train_seconds=pre["train_seconds"], train_loss=[r["train_loss"] for r in pre["history"]]),
        runs=runs, median_top1={name: statistics.median(r["top1"] for r in rows) for name, rows in runs.items()})
    write_json(opts.json, result)
    for name, rows in runs.items():
        print(f"{name:16s} test top-1 " + ", ".join(f"{100 * r['top1']:.1f}%" for r in rows) +
              f" | median {100 * result['median_top1'][name]:.1f}%")
    if pre is not None:
        plot(result, opts.plot)
        source = os.path.join(opts.output_dir, PRETRAIN_RUN, "plots", "reconstruction.png")
        if os.path.isfile(source):
            shutil.copyfile(source, os.path.join(os.path.dirname(opts.plot), "pretrain_reconstruction.png"))
    return result


def plot(result: dict, path: str) -> None:
    from matplotlib.figure import Figure
    fig = Figure(figsize=(12, 4.4), layout="constrained")
    loss_ax, acc_ax = fig.subplots(1, 2)
    losses = result["pretraining"]["train_loss"]
    loss_ax.plot(range(1, len(losses) + 1), losses, marker="o")
    loss_ax.set(title="MVM pretraining (whole train split, no labels)", xlabel="epoch",
                ylabel="reconstruction MSE, hidden tokens")
    colours = dict(scratch="tab:gray", pretrained="tab:blue", lora_random="tab:orange", lora_pretrained="tab:green")
    for name, rows in result["runs"].items():
        for i, r in enumerate(rows):
            acc_ax.plot(range(1, len(r["val_top1"]) + 1), [100 * v for v in r["val_top1"]], color=colours[name],
                        alpha=0.85, label=f"{name} (median test {100 * result['median_top1'][name]:.1f}%)"
                        if i == 0 else None)
    acc_ax.set(title=f"Fine-tuning with {100 * result['label_fraction']:.0f}% of the labels: validation top-1",
               xlabel="epoch", ylabel="validation top-1 (%)", ylim=(0, 100))
    acc_ax.axhline(100 / 8, color="black", linestyle=":", linewidth=1, label="chance (8 classes)")
    for ax in (loss_ax, acc_ax):
        ax.grid(alpha=0.3)
    acc_ax.legend(fontsize=8)
    fig.savefig(path, dpi=120, facecolor="white")


def main(argv: Optional[Sequence[str]] = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data_root", default="synthetic_dataset")
    parser.add_argument("--output_dir", default="checkpoints/pretrain_benchmark")
    parser.add_argument("--steps", nargs="+", default=["pretrain", "finetune", "report"],
                        choices=["pretrain", "finetune", "report"])
    parser.add_argument("--seeds", nargs="+", type=int, default=[0])
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    parser.add_argument("--pretrain_epochs", type=int, default=200)
    parser.add_argument("--pretrain_lr", type=float, default=1e-3)
    parser.add_argument("--mask_ratio", type=float, default=0.75)
    parser.add_argument("--mask_type", default="frame", choices=["tube", "random", "frame"])
    parser.add_argument("--norm_pix_loss", default="False")
    parser.add_argument("--label_fraction", type=float, default=0.1)
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--lr", type=float, default=5e-4)
    parser.add_argument("--lora_lr", type=float, default=1e-3)
    parser.add_argument("--json", default=os.path.join(ROOT, "benchmarks", "pretrain_finetune_cpu.json"))
    parser.add_argument("--plot", default=os.path.join(ROOT, "benchmarks", "pretrain_finetune_curves.png"))
    opts = parser.parse_args(argv)
    if "pretrain" in opts.steps:
        pretrain(opts)
    if "finetune" in opts.steps:
        finetune(opts)
    return report(opts) if "report" in opts.steps else {}


if __name__ == "__main__":
    main()
