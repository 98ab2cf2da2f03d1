"""Temporal fusion layers against sequence length: forward + backward time and peak memory.

    python benchmarks/fusion_scaling.py --json benchmarks/fusion_scaling_cpu.json     # about 10 minutes on 2 cores

Batch 4, width 256, 2 layers, fp32, L = 16 ... 4096, for:
  * ours: Transformer fusion (fusion.TransformerFusion, 4 heads) and Mamba fusion (fusion.MambaFusion, d_state 16,
    expand 2), bidirectional (our classification default) and causal;
  * mambapy's Mamba (Blelloch parallel scan, causal);
  * transformers' MambaModel without the CUDA kernels (its sequential fallback), only up to the first length that
    takes more than --slow_limit seconds.
Each figure is the median of --repeats timings after one warm-up (one timing where the warm-up took over 30 s).
Peak memory is measured in a fresh process per row: the rise of the peak RSS (VmHWM) during one forward + backward
over the RSS after building the layer and its input (memory the allocator keeps from earlier runs would hide it). Goals (issue 4): at L >= 1024 our Mamba fusion is
faster than our Transformer fusion and at least 2x faster than mambapy; time(4096) / time(1024) <= 4.5.
No figure is a pass/fail test; results go to BENCHMARKS.md.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from benchmarks.common import current_rss_bytes, median_time, reset_peak_rss, vm_hwm_bytes  # noqa: E402
from fusion import MambaFusion, TransformerFusion  # noqa: E402

BATCH, WIDTH, DEPTH, D_STATE, EXPAND = 4, 256, 2, 16, 2


def build(name: str) -> torch.nn.Module:
    if name == "transformer (ours)":
        return TransformerFusion(WIDTH, depth=DEPTH, n_heads=4, dropout=0.0)
    if name == "mamba bidirectional (ours)":
        return MambaFusion(WIDTH, depth=DEPTH, d_state=D_STATE, expand=EXPAND, dropout=0.0, bidirectional=True)
    if name == "mamba causal (ours)":
        return MambaFusion(WIDTH, depth=DEPTH, d_state=D_STATE, expand=EXPAND, dropout=0.0, bidirectional=False)
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


IMPLEMENTATIONS = ["transformer (ours)", "mamba bidirectional (ours)", "mamba causal (ours)", "mambapy (causal)",
                   "transformers fallback (causal)"]


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


def measure(name: str, length: int, repeats: int) -> dict:
    torch.manual_seed(0)
    step = forward_backward(build(name).train(), length)
    first = median_time(step, 1)  # warm-up, also the single timing for slow implementations
    seconds = first if first > 30 else median_time(step, repeats)
    peak = peak_memory_mib(name, length) if first <= 30 else None  # a slow row is not run a second time
    return dict(implementation=name, length=length, seconds=seconds, peak_mib=peak, repeats=1 if first > 30 else repeats)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lengths", default="16,64,256,1024,4096")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--slow_limit", type=float, default=60.0, help="stop an implementation after a slower length")
    parser.add_argument("--only", help="comma-separated implementation names to run")
    parser.add_argument("--json", help="also write the results to this file")
    parser.add_argument("--_memory_child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args._memory_child:
        name, length = args._memory_child.split("|")
        peak_memory_child(name, int(length))
        return
    lengths = [int(v) for v in args.lengths.split(",")]
    names = IMPLEMENTATIONS if not args.only else [n for n in IMPLEMENTATIONS if any(o in n for o in args.only.split(","))]
    rows, stopped = [], set()
    for length in lengths:
        for name in names:
            if name in stopped:
                continue
            row = measure(name, length, args.repeats)
            rows.append(row)
            peak = "not measured" if row["peak_mib"] is None else f"+{row['peak_mib']:.1f} MiB"
            print(f"L={length:5d} {name:32s} {row['seconds']:9.3f} s  peak {peak}", flush=True)
            if row["seconds"] > args.slow_limit:
                stopped.add(name)
    summary = summarize(rows)
    for line in summary["lines"]:
        print(line)
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(dict(torch=torch.__version__, threads=torch.get_num_threads(), batch=BATCH, width=WIDTH,
                           depth=DEPTH, d_state=D_STATE, expand=EXPAND, rows=rows, summary=summary["ratios"]), fh,
                      indent=2)


def summarize(rows: list[dict]) -> dict:
    time_of = {(r["implementation"], r["length"]): r["seconds"] for r in rows}
    ratios, lines = {}, []
    for ours in ("mamba bidirectional (ours)", "mamba causal (ours)"):
        for length in (1024, 4096):
            if (ours, length) not in time_of:
                continue
            vs_transformer = time_of.get(("transformer (ours)", length), float("nan")) / time_of[(ours, length)]
            vs_mambapy = time_of.get(("mambapy (causal)", length), float("nan")) / time_of[(ours, length)]
            ratios[f"{ours} L={length}"] = dict(speedup_vs_transformer=vs_transformer, speedup_vs_mambapy=vs_mambapy)
            lines.append(f"{ours} L={length}: {vs_transformer:.2f}x faster than our Transformer (goal > 1), "
                         f"{vs_mambapy:.2f}x faster than mambapy (goal >= 2)")
        if (ours, 4096) in time_of and (ours, 1024) in time_of:
            growth = time_of[(ours, 4096)] / time_of[(ours, 1024)]
            ratios[f"{ours} growth 4096/1024"] = growth
            lines.append(f"{ours}: time(4096) / time(1024) = {growth:.2f} (goal <= 4.5)")
    return dict(ratios=ratios, lines=lines)


if __name__ == "__main__":
    main()
