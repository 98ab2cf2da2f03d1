"""Does the fine-tuning recipe (layer-wise lr decay + EMA of the weights + the augmentations that fit the data) help?

    python benchmarks/recipe.py --setups default --seeds 0 1 2
    python benchmarks/recipe.py --setups low_label --pretrained RUNS/pretrain-mvm/backbone --seeds 0 1 2
    python benchmarks/recipe.py --steps report                          # table and JSON from the runs on disk

Two setups, each run with today's recipe and with the new one, same seeds, same data, same budget:

* ``default``: ``python main.py`` (VideoMAE-tiny from random weights, the synthetic motion dataset), with
  config_file.yaml's epochs and lr (``--epochs`` to change them);
* ``low_label``: ``--label_fraction 0.1`` fine-tuning from the masked-video-pretrained backbone
  (``benchmarks/pretrain_finetune.py --steps pretrain`` writes it), ``--low_label_epochs`` (30).

The recipe is ``RECIPE`` below. On the synthetic dataset Mixup, CutMix and RandAugment are off (its classes tell
left from right and forwards from backwards, ``--dataset synthetic`` turns them off), so there the recipe is layer
decay + EMA. Every run is a separate ``python main.py`` process with one thread. Results: BENCHMARKS.md, "Training
recipes".
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from typing import Optional, Sequence

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from videolab.core.files import write_json  # noqa: E402

COMMON = ["--vision_model", "videomae", "--model_size", "tiny", "--num_frames", "8", "--image_size", "32",
          "--batch_size", "32", "--quiet", "--speed_repeats", "0", "--summary_csv", "none"]
LAYER_DECAY = ["--layer_decay", "0.75"]
EMA = ["--model_ema", "True", "--model_ema_decay", "0.9998", "--model_ema_warmup", "True"]
RECIPES = {"today": [], "recipe": LAYER_DECAY + EMA,
           "layer_decay_only": LAYER_DECAY, "ema_only": EMA}  # the last two: which part does what


def setup_flags(setup: str, opts) -> list[str]:
    if setup == "default":  # config_file.yaml's epochs and lr unless --epochs is given
        return ["--epochs", str(opts.epochs)] if opts.epochs else []
    return ["--label_fraction", "0.1", "--epochs", str(opts.low_label_epochs), "--lr", "5e-4", "--pretrained",
            opts.pretrained]


def run_name(setup: str, recipe: str, seed: int) -> str:
    return f"{setup}-{recipe}-seed{seed}"


def train(opts) -> None:
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
    for setup in opts.setups:
        for seed in opts.seeds:
            for recipe, flags in RECIPES.items():
                if recipe not in opts.recipes:
                    continue
                if os.path.isfile(os.path.join(opts.output_dir, run_name(setup, recipe, seed), "eval.json")):
                    continue
                command = [sys.executable, os.path.join(ROOT, "main.py"), *COMMON, "--data_root", opts.data_root,
                           "--output_dir", opts.output_dir, "--run_name", run_name(setup, recipe, seed),
                           "--seed", str(seed), *setup_flags(setup, opts), *flags]
                print("$ " + " ".join(command[1:]), flush=True)
                subprocess.run(command, check=True, env=env)


def report(opts) -> dict:
    result = dict(recipes=RECIPES, setups={})
    for setup in opts.setups:
        rows = {}
        for recipe in RECIPES:
            for seed in opts.seeds:
                path = os.path.join(opts.output_dir, run_name(setup, recipe, seed), "eval.json")
                if os.path.isfile(path):
                    with open(path) as fh:
                        e = json.load(fh)
                    rows.setdefault(recipe, []).append(dict(seed=seed, top1=e["top1"], train_seconds=e["train_seconds"],
                                                            best_epoch=e["checkpoint_epoch"]))
        medians = {recipe: statistics.median(r["top1"] for r in runs) for recipe, runs in rows.items()}
        result["setups"][setup] = dict(flags=setup_flags(setup, opts), runs=rows, median_top1=medians)
        for recipe, runs in rows.items():
            print(f"{setup:10s} {recipe:7s} test top-1 " + ", ".join(f"{100 * r['top1']:.1f}%" for r in runs) +
                  f" | median {100 * medians[recipe]:.1f}%")
    write_json(opts.json, result)
    return result


def main(argv: Optional[Sequence[str]] = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data_root", default="synthetic_dataset")
    parser.add_argument("--output_dir", default="checkpoints/recipe_benchmark")
    parser.add_argument("--setups", nargs="+", default=["default", "low_label"], choices=["default", "low_label"])
    parser.add_argument("--steps", nargs="+", default=["train", "report"], choices=["train", "report"])
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--recipes", nargs="+", default=["today", "recipe"], choices=list(RECIPES),
                        help="train only these (several drivers can then share the runs)")
    parser.add_argument("--epochs", type=int, help="the default setup's epochs (default: config_file.yaml's)")
    parser.add_argument("--low_label_epochs", type=int, default=30, help="the low_label setup's epochs")
    parser.add_argument("--pretrained", default="checkpoints/pretrain_benchmark/pretrain-mvm/backbone")
    parser.add_argument("--json", default=os.path.join(ROOT, "benchmarks", "recipe_cpu.json"))
    opts = parser.parse_args(argv)
    if "train" in opts.steps:
        train(opts)
    return report(opts) if "report" in opts.steps else {}


if __name__ == "__main__":
    main()
