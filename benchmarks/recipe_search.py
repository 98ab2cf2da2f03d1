"""A faster first run (issue 23): candidate recipes for the README's first command, over several seeds.

    nice -n 10 python benchmarks/recipe_search.py --seeds 0 1 2 --json benchmarks/recipe_search_cpu.json

Every run is ``python main.py`` (the defaults of config_file.yaml) with the candidate's flags and ``--seed S``, in a
fresh process and on a fresh dataset generated with that seed (what a new user running ``python main.py --seed S``
gets), so the figures include everything a user waits for. Recorded per run: test top-1 (the run's eval.json),
training time (``train_seconds``), wall time of the process. A candidate qualifies when its median test top-1 is
>= 95 % and its worst seed > 93 %; the fastest qualifying one is the new default. No figure is a pass/fail test;
results go to BENCHMARKS.md.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from videolab.core.files import write_json  # noqa: E402

CANDIDATES = {  # name -> flags over config_file.yaml
    "30 epochs (old default)": ["--epochs", "30", "--mixed_precision", "no"],
    "30 epochs, bf16": ["--epochs", "30", "--mixed_precision", "bf16"],
    "12 epochs": ["--epochs", "12", "--mixed_precision", "no"],
    "12 epochs, bf16": ["--epochs", "12", "--mixed_precision", "bf16"],
    "15 epochs, bf16": ["--epochs", "15", "--mixed_precision", "bf16"],
    "12 epochs, lr 1e-3": ["--epochs", "12", "--lr", "1e-3", "--mixed_precision", "no"],
    "10 epochs, lr 1e-3": ["--epochs", "10", "--lr", "1e-3", "--mixed_precision", "no"],
}


def headline_score(report: dict) -> tuple:
    """(metric name, value) of a run's eval.json: test top-1 for classifiers, CIDEr for captioners."""
    if "top1" in report:
        return "top1", report["top1"]
    return "CIDEr", report["metrics"]["CIDEr"]


def one_run(name: str, flags: list, seed: int, work: str, core=None) -> dict:
    """``python main.py`` with these flags on the dataset generated with this seed; ``core``: pinned, one thread."""
    tag = "".join(c if c.isalnum() else "_" for c in name)
    out, data = os.path.join(work, "runs"), os.path.join(work, f"data_seed{seed}")
    command = [sys.executable, os.path.join(ROOT, "main.py"), *flags, "--seed", str(seed), "--data_root", data,
               "--output_dir", out, "--run_name", f"{tag}_s{seed}", "--quiet", "--summary_csv", "none"]
    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
    if core is not None:
        env.update(OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
        command = ["taskset", "-c", str(core), *command]
    t0 = time.time()
    subprocess.run(command, cwd=ROOT, env=env, check=True, stdout=subprocess.DEVNULL)
    wall = time.time() - t0
    with open(os.path.join(out, f"{tag}_s{seed}", "eval.json")) as f:
        report = json.load(f)
    metric, value = headline_score(report)
    return dict(candidate=name, seed=seed, metric=metric, **{metric: value}, train_seconds=report["train_seconds"],
                wall_seconds=round(wall, 1), command=" ".join(command[command.index(sys.executable) + 1:]))


def summarise(runs: list) -> dict:
    by = {}
    for r in runs:
        by.setdefault(r["candidate"], []).append(r)
    summary = {}
    for name, rs in by.items():
        top1 = [r["top1"] for r in rs]
        summary[name] = dict(seeds=[r["seed"] for r in rs], top1=top1, median_top1=statistics.median(top1),
                             worst_top1=min(top1), median_train_seconds=statistics.median(r["train_seconds"]
                                                                                           for r in rs),
                             qualifies=statistics.median(top1) >= 0.95 and min(top1) > 0.93)
    return summary


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--only", nargs="+", help="candidate names (default: all)", choices=list(CANDIDATES))
    parser.add_argument("--work", default="/tmp/recipe_search", help="data and run folders")
    parser.add_argument("--json", help="write the runs and the summary here (rewritten after every run)")
    args = parser.parse_args()
    runs = []
    for seed in args.seeds:  # seed-major: every candidate has some seeds early on
        for name in args.only or CANDIDATES:
            r = one_run(name, CANDIDATES[name], seed, args.work)
            runs.append(r)
            print(f"{name} seed {seed}: test top-1 {100 * r['top1']:.1f} % | training {r['train_seconds']:.0f} s "
                  f"| wall {r['wall_seconds']:.0f} s", flush=True)
            if args.json:
                write_json(args.json, dict(runs=runs, summary=summarise(runs), load=os.getloadavg()))
    for name, s in summarise(runs).items():
        print(f"{name}: median {100 * s['median_top1']:.1f} % worst {100 * s['worst_top1']:.1f} % | median "
              f"training {s['median_train_seconds']:.0f} s | qualifies {s['qualifies']}")


if __name__ == "__main__":
    main()
