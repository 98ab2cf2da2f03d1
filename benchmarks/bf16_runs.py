"""bf16 against fp32, whole runs (issue 23): the default classifier, vision + BERT, and the captioner.

    python benchmarks/bf16_runs.py --json benchmarks/bf16_runs_cpu.json
    python benchmarks/bf16_runs.py --setups captioner --epochs 12 --seeds 0
    python benchmarks/bf16_runs.py --step_probe        # step time fp32 vs bf16 at two widths (seconds)

For every setup and seed, ``python main.py`` with the setup's flags runs twice at the same time, ``--mixed_precision
no`` pinned to one core and ``--mixed_precision bf16`` to the other (one thread each; the cores swap with every
seed, so a slower core is not always charged to one precision), on the same generated dataset. Recorded per run:
the headline metric of its eval.json (test top-1; CIDEr for the captioner), training time, wall time. bf16 only
pays on a CPU with native bf16 instructions (AVX512-BF16 / AMX; ``torch.ops.mkldnn._is_mkldnn_bf16_supported()``),
which the JSON records. ``--step_probe``: one VideoMAE training step (batch 32, 8 x 32^2, patch 8, AdamW, one
thread), fp32 against bf16 autocast, at the default width (96) and at 384, median of 6 steps. No figure is a pass/fail test; results go to BENCHMARKS.md.
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
from concurrent.futures import ThreadPoolExecutor

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from recipe_search import ROOT, one_run  # noqa: E402  (benchmarks/ is this script's folder)
from run_time import settings_for  # noqa: E402

sys.path.insert(0, ROOT)
from videolab.core.files import write_json  # noqa: E402

SETUPS = {  # name -> main.py flags over config_file.yaml
    "default": [],
    "vision_language": ["--use_vlm", "True", "--language_model", "bert"],
    "captioner": ["--use_vlm", "True", "--captioning", "True"],
}
PRECISIONS = ("no", "bf16")


def ensure_data(flags: list, seed: int, work: str) -> None:
    """Generate the seed's dataset once, before two runs would both start writing it."""
    import VLoader
    VLoader.ensure_dataset(settings_for([*flags, "--seed", str(seed), "--data_root",
                                         os.path.join(work, f"data_seed{seed}")]))


def pair(setup: str, flags: list, seed: int, work: str) -> list:
    ensure_data(flags, seed, work)
    cores = (0, 1) if seed % 2 == 0 else (1, 0)
    with ThreadPoolExecutor(2) as pool:
        jobs = [pool.submit(one_run, f"{setup} {p}", [*flags, "--mixed_precision", p], seed, work, core)
                for p, core in zip(PRECISIONS, cores)]
        return [dict(job.result(), setup=setup, mixed_precision=p, core=core)
                for job, p, core in zip(jobs, PRECISIONS, cores)]


def summarise(runs: list) -> dict:
    summary = {}
    for setup in dict.fromkeys(r["setup"] for r in runs):
        per = {p: [r for r in runs if r["setup"] == setup and r["mixed_precision"] == p] for p in PRECISIONS}
        if not all(per.values()):
            continue
        metric = per["no"][0]["metric"]
        median = {p: statistics.median(r[metric] for r in rs) for p, rs in per.items()}
        seconds = {p: statistics.median(r["train_seconds"] for r in rs) for p, rs in per.items()}
        summary[setup] = dict(metric=metric, median=median, median_train_seconds=seconds,
                              bf16_minus_fp32=median["bf16"] - median["no"],
                              time_ratio_bf16_over_fp32=round(seconds["bf16"] / seconds["no"], 3))
    return summary


STEP_PROBE_WIDTHS = {"96 wide x 3 layers (tiny)": dict(hidden_size=96, num_attention_heads=4, intermediate_size=384),
                     "384 wide x 3 layers": dict(hidden_size=384, num_attention_heads=6, intermediate_size=1536)}


def step_probe() -> dict:
    """Median training-step time, fp32 and under bf16 autocast, of VideoMAE at two widths (one thread)."""
    import contextlib
    import time

    import torch
    from transformers import VideoMAEConfig, VideoMAEForVideoClassification
    torch.set_num_threads(1)
    pixels, labels = torch.randn(32, 8, 3, 32, 32), torch.randint(0, 8, (32,))
    result = {}
    for name, width in STEP_PROBE_WIDTHS.items():
        torch.manual_seed(0)
        model = VideoMAEForVideoClassification(VideoMAEConfig(**width, num_hidden_layers=3, patch_size=8,
                                                              num_frames=8, image_size=32, num_labels=8))
        optimizer = torch.optim.AdamW(model.parameters(), 1e-3)
        seconds = {}
        for precision in PRECISIONS:
            autocast = torch.autocast("cpu", torch.bfloat16) if precision == "bf16" else contextlib.nullcontext()
            times = []
            for _ in range(8):
                t0 = time.perf_counter()
                with autocast:
                    loss = model(pixel_values=pixels, labels=labels).loss
                loss.backward()
                optimizer.step()
                optimizer.zero_grad()
                times.append(time.perf_counter() - t0)
            seconds[precision] = statistics.median(times[2:])  # the first two warm up
        result[name] = dict(fp32_ms=round(1e3 * seconds["no"], 1), bf16_ms=round(1e3 * seconds["bf16"], 1),
                            fp32_over_bf16=round(seconds["no"] / seconds["bf16"], 2))
        print(f"{name}: {result[name]}", flush=True)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--setups", nargs="+", default=list(SETUPS), choices=list(SETUPS))
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--epochs", type=int, help="override config_file.yaml's epochs for every setup")
    parser.add_argument("--work", default="/tmp/bf16_runs", help="data and run folders")
    parser.add_argument("--json", help="write the runs and the summary here (rewritten after every pair)")
    parser.add_argument("--step_probe", action="store_true", help="only the step-time probe at two widths")
    args = parser.parse_args()
    import torch
    native = bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    if args.step_probe:
        probe = step_probe()
        if args.json:
            write_json(args.json, dict(native_cpu_bf16=native, step_probe=probe, load=os.getloadavg()))
        return
    runs = []
    for setup in args.setups:
        flags = SETUPS[setup] + (["--epochs", str(args.epochs)] if args.epochs else [])
        for seed in args.seeds:
            for r in pair(setup, flags, seed, args.work):
                runs.append(r)
                print(f"{setup} {r['mixed_precision']} seed {seed} (core {r['core']}): {r['metric']} "
                      f"{r[r['metric']]:.4f} | training {r['train_seconds']:.0f} s | wall {r['wall_seconds']:.0f} s",
                      flush=True)
            if args.json:
                write_json(args.json, dict(native_cpu_bf16=native, runs=runs, summary=summarise(runs),
                                           load=os.getloadavg()))
    for setup, s in summarise(runs).items():
        print(f"{setup}: {s['metric']} fp32 {s['median']['no']:.4f} bf16 {s['median']['bf16']:.4f} | training time "
              f"bf16 / fp32 {s['time_ratio_bf16_over_fp32']:.3f}")


if __name__ == "__main__":
    main()
