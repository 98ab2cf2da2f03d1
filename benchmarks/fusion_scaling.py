"""Temporal fusion layers against sequence length: forward + backward time and peak memory.

    python benchmarks/fusion_scaling.py --json benchmarks/fusion_scaling_cpu.json     # about 10 minutes on 2 cores

Batch 4, width 256, 2 layers, fp32, L = 16 ... 4096, for:
  * ours: Transformer fusion (fusion.TransformerFusion, 4 heads), Mamba fusion (fusion.MambaFusion, Mamba-1,
    d_state 16, expand 2) and Mamba-2 fusion (fusion.Mamba2Fusion, SSD, same sizes, head width 64), each
    bidirectional (our classification default) and causal;
  * mambapy's Mamba (Blelloch parallel scan, causal);
  * transformers' MambaModel without the CUDA kernels (its sequential fallback), only up to the first length that
    takes more than --slow_limit seconds.
Each figure is the median of --repeats timings after one warm-up (one timing where the warm-up took over 30 s).
The timings of one length are taken round-robin (one step of every implementation, then the next round), so a
burst of load from other processes hits all of them alike; wall time and process CPU time are both recorded.
Peak memory is measured in a fresh process per row: the rise of the peak RSS (VmHWM) during one forward + backward
over the RSS after building the layer and its input (memory the allocator keeps from earlier runs would hide it). Goals (issue 4): at L >= 1024 our Mamba fusion is
faster than our Transformer fusion and at least 2x faster than mambapy; time(4096) / time(1024) <= 4.5.
No figure is a pass/fail test; results go to BENCHMARKS.md.
"""
from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from videolab.core.files import write_json  # noqa: E402
from videolab.evaluation.measure import current_rss_bytes, reset_peak_rss, vm_hwm_bytes  # noqa: E402
from videolab.models.fusion import Mamba2Fusion, MambaFusion, TransformerFusion  # noqa: E402

BATCH, WIDTH, DEPTH, D_STATE, EXPAND, HEAD_DIM = 4, 256, 2, 16, 2, 64


def build(name: str) -> torch.nn.Module:
    if name == "transformer (ours)":
        return TransformerFusion(WIDTH, depth=DEPTH, n_heads=4, dropout=0.0)
    if name == "mamba bidirectional (ours)":
        return MambaFusion(WIDTH, depth=DEPTH, d_state=D_STATE, expand=EXPAND, dropout=0.0, bidirectional=True)
    if name == "mamba causal (ours)":
        return MambaFusion(WIDTH, depth=DEPTH, d_state=D_STATE, expand=EXPAND, dropout=0.0, bidirectional=False)
    if name == "mamba2 bidirectional (ours)":
        return Mamba2Fusion(WIDTH, depth=DEPTH, d_state=D_STATE, expand=EXPAND, head_dim=HEAD_DIM, dropout=0.0,
                            bidirectional=True)
    if name == "mamba2 causal (ours)":
        return Mamba2Fusion(WIDTH, depth=DEPTH, d_state=D_STATE, expand=EXPAND, head_dim=HEAD_DIM, dropout=0.0,
                            bidirectional=False)
    if name == "mambapy (causal)":
        from mambapy.mamba import Mamba, MambaConfig
        return Mamba(MambaConfig(d_model=WIDTH, n_layers=DEPTH, d_state=D_STATE, expand_factor=EXPAND, pscan=True))
    if name == "transformers fallback (causal)":
        from transformers import MambaConfig, MambaModel
        config = MambaConfig(hidden_size=WIDTH, num_hidden_layers=DEPTH, state_size=D_STATE, expand=EXPAND,
                             vocab_size=16, use_mambapy=False)
        model = MambaModel(config)
        return _EmbedsOnly(model)
    raise ValueError(name)


class _EmbedsOnly(torch.nn.Module):
    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, x):
        return self.model(inputs_embeds=x, use_cache=False).last_hidden_state


IMPLEMENTATIONS = ["transformer (ours)", "mamba bidirectional (ours)", "mamba causal (ours)",
                   "mamba2 bidirectional (ours)", "mamba2 causal (ours)", "mambapy (causal)",
                   "transformers fallback (causal)"]
OURS_MAMBA = ["mamba bidirectional (ours)", "mamba causal (ours)", "mamba2 bidirectional (ours)", "mamba2 causal (ours)"]


def forward_backward(module: torch.nn.Module, length: int):
    x = torch.randn(BATCH, length, WIDTH, requires_grad=True)

    def step():
        module.zero_grad(set_to_none=True)
        module(x).square().mean().backward()
    return step


def peak_memory_child(name: str, length: int) -> None:
    """Runs in a fresh process: one forward + backward, prints the peak RSS rise in bytes (or -1)."""
    torch.manual_seed(0)
    step = forward_backward(build(name).train(), length)
    rss_before = current_rss_bytes()
    if not reset_peak_rss():
        print(-1)
        return
    step()
    print(max(0, vm_hwm_bytes() - rss_before))


def peak_memory_mib(name: str, length: int):
    out = subprocess.run([sys.executable, __file__, "--_memory_child", f"{name}|{length}"], capture_output=True,
                         text=True, check=True)
    peak = int(out.stdout.strip().splitlines()[-1])
    return None if peak < 0 else peak / 2**20


def timed(step) -> tuple[float, float]:
    """(wall seconds, process CPU seconds) of one call."""
    wall, cpu = time.perf_counter(), time.process_time()
    step()
    return time.perf_counter() - wall, time.process_time() - cpu


def measure_length(names: list[str], length: int, repeats: int) -> list[dict]:
    """Times every implementation at one length, round-robin over the repeats; peak memory in fresh processes."""
    steps, warmup = {}, {}
    for name in names:
        torch.manual_seed(0)
        steps[name] = forward_backward(build(name).train(), length)
        warmup[name] = timed(steps[name])  # also the single timing of an implementation slower than 30 s
    fast = [name for name in names if warmup[name][0] <= 30]
    timings = {name: [] for name in fast}
    for _ in range(repeats):
        for name in fast:
            timings[name].append(timed(steps[name]))
    rows = []
    for name in names:
        runs = timings.get(name) or [warmup[name]]
        rows.append(dict(implementation=name, length=length, seconds=statistics.median(r[0] for r in runs),
                         cpu_seconds=statistics.median(r[1] for r in runs), repeats=len(runs),
                         peak_mib=peak_memory_mib(name, length) if name in fast else None))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lengths", default="16,64,256,1024,4096")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--slow_limit", type=float, default=60.0, help="stop an implementation after a slower length")
    parser.add_argument("--only", help="comma-separated implementation names to run")
    parser.add_argument("--json", help="also write the results to this file")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0 = torch's default)")
    parser.add_argument("--_memory_child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args._memory_child:
        name, length = args._memory_child.split("|")
        peak_memory_child(name, int(length))
        return
    if args.threads:
        torch.set_num_threads(args.threads)
    lengths = [int(v) for v in args.lengths.split(",")]
    names = IMPLEMENTATIONS if not args.only else [n for n in IMPLEMENTATIONS if any(o in n for o in args.only.split(","))]
    rows, stopped = [], set()
    for length in lengths:
        for row in measure_length([n for n in names if n not in stopped], length, args.repeats):
            rows.append(row)
            peak = "not measured" if row["peak_mib"] is None else f"+{row['peak_mib']:.1f} MiB"
            print(f"L={length:5d} {row['implementation']:32s} {row['seconds']:9.3f} s wall {row['cpu_seconds']:9.3f} s "
                  f"CPU  peak {peak}", flush=True)
            if row["seconds"] > args.slow_limit:
                stopped.add(row["implementation"])
    summary = summarize(rows)
    for line in summary["lines"]:
        print(line)
    if args.json:
        write_json(args.json, dict(torch=torch.__version__, threads=torch.get_num_threads(), batch=BATCH,
                                          width=WIDTH, depth=DEPTH, d_state=D_STATE, expand=EXPAND, rows=rows,
                                          summary=summary["ratios"]))


def summarize(rows: list[dict]) -> dict:
    """The issue's goals as ratios, from wall time and from process CPU time (less sensitive to other load)."""
    ratios, lines = {}, []
    for clock in ("seconds", "cpu_seconds"):
        time_of = {(r["implementation"], r["length"]): r[clock] for r in rows}
        for ours in OURS_MAMBA:
            for length in (1024, 4096):
                if (ours, length) not in time_of:
                    continue
                vs_transformer = time_of.get(("transformer (ours)", length), float("nan")) / time_of[(ours, length)]
                vs_mambapy = time_of.get(("mambapy (causal)", length), float("nan")) / time_of[(ours, length)]
                ratios[f"{clock}: {ours} L={length}"] = dict(speedup_vs_transformer=vs_transformer,
                                                             speedup_vs_mambapy=vs_mambapy)
                lines.append(f"[{clock}] {ours} L={length}: {vs_transformer:.2f}x faster than our Transformer "
                             f"(goal > 1), {vs_mambapy:.2f}x faster than mambapy (goal >= 2)")
            if (ours, 4096) in time_of and (ours, 1024) in time_of:
                growth = time_of[(ours, 4096)] / time_of[(ours, 1024)]
                ratios[f"{clock}: {ours} growth 4096/1024"] = growth
                lines.append(f"[{clock}] {ours}: time(4096) / time(1024) = {growth:.2f} (goal <= 4.5)")
    return dict(ratios=ratios, lines=lines)


if __name__ == "__main__":
    main()
