"""Training-step benchmark: our loop vs a bare PyTorch loop, achieved FLOP/s vs the matmul peak, LoRA memory.

    python benchmarks/train_step.py                 # everything (about 5 minutes on 2 CPU cores)
    python benchmarks/train_step.py --skip_base     # only the loop-overhead part (seconds)

1. Loop overhead: the same model, batch and optimizer, stepped by ``train_code.train_step`` (accelerate,
   clipping, scheduler) and by a bare ``loss.backward(); clip; opt.step()`` loop, interleaved; median of
   ``--repeats`` timings of ``--steps`` steps each. Goal: ours within 5 %.
2. Achieved FLOP/s of a base-size training step (TimeSformer-base, 8 x 224^2, batch 1; FLOPs counted by
   ``torch.utils.flop_counter``) against this machine's measured matmul peak in the same dtype (fp32, bf16).
   Goal: >= 50 % of the fp32 peak.
3. Peak memory of a base-size training step with LoRA against full fine-tuning, each with and without
   ``--gradient_checkpointing``, each in a fresh process (peak RSS during the two training steps, model build
   excluded), and the step time checkpointing costs. Goal: LoRA + checkpointing <= 0.6x full fine-tuning.
   ``--memory_only`` runs just this part.
No figure is a pass/fail test; results go to BENCHMARKS.md.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from videolab.core.files import write_json  # noqa: E402
from videolab.evaluation.measure import median_time, reset_peak_rss, vm_hwm_bytes  # noqa: E402
from build_model import build_model  # noqa: E402
from videolab.core.settings import Settings  # noqa: E402
from train_code import param_groups, train_step  # noqa: E402
from videolab.core.runtime import make_accelerator  # noqa: E402


def loop_overhead(steps: int, repeats: int, batch_size: int) -> dict:
    """Our train_step vs a bare loop on the same tiny TimeSformer and batch (fp32, CPU)."""
    from transformers import get_cosine_schedule_with_warmup
    cfg = Settings(device="cpu", quiet=True)
    torch.manual_seed(0)
    batch = dict(pixel_values=torch.randn(batch_size, cfg.num_frames, 3, cfg.image_size, cfg.image_size),
                 labels=torch.randint(0, 8, (batch_size,)))
    ours = build_model(cfg, 8, verbose=False).model
    bare = build_model(cfg, 8, verbose=False).model
    bare.load_state_dict(ours.state_dict())
    accelerator = make_accelerator(cfg)
    opt_ours = torch.optim.AdamW(param_groups(ours, cfg.weight_decay, cfg.lr), lr=cfg.lr)
    sched = get_cosine_schedule_with_warmup(opt_ours, 10, 10 ** 6)
    ours, opt_ours, sched = accelerator.prepare(ours, opt_ours, sched)
    opt_bare = torch.optim.AdamW(param_groups(bare, cfg.weight_decay, cfg.lr), lr=cfg.lr)

    def run_ours():
        for _ in range(steps):
            train_step(ours, batch, opt_ours, sched, accelerator, cfg.max_grad_norm)

    def run_bare():
        for _ in range(steps):
            loss = bare(**batch).loss
            loss.backward()
            torch.nn.utils.clip_grad_norm_(bare.parameters(), cfg.max_grad_norm)
            opt_bare.step()
            opt_bare.zero_grad(set_to_none=True)

    run_ours(), run_bare()  # warm-up
    ours_t, bare_t = [], []
    for _ in range(repeats):  # interleaved so drift hits both
        ours_t.append(median_time(run_ours, 1) / steps)
        bare_t.append(median_time(run_bare, 1) / steps)
    o, b = statistics.median(ours_t), statistics.median(bare_t)
    return dict(model=f"{cfg.vision_model} {cfg.model_size} ({cfg.num_frames} x {cfg.image_size}^2)", batch=batch_size, steps=steps, repeats=repeats,
                ours_ms=1000 * o, bare_ms=1000 * b, ratio=o / b)


def matmul_peak(dtype: torch.dtype, n: int = 2048, repeats: int = 5) -> float:
    a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
    a @ b
    return 2 * n ** 3 / median_time(lambda: a @ b, repeats)


def base_step_flops(dtype_name: str, repeats: int) -> dict:
    """FLOPs and time of one TimeSformer-base training step (batch 1, 8 x 224^2) in the given autocast dtype."""
    from torch.utils.flop_counter import FlopCounterMode
    cfg = Settings(vision_model="timesformer", model_size="base", image_size=224, num_frames=8, device="cpu",
                   mixed_precision=dtype_name)
    torch.manual_seed(0)
    model = build_model(cfg, 400, verbose=False).model
    accelerator = make_accelerator(cfg)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-5)
    from transformers import get_constant_schedule
    model, optimizer, sched = accelerator.prepare(model, optimizer, get_constant_schedule(optimizer))
    batch = dict(pixel_values=torch.randn(1, 8, 3, 224, 224), labels=torch.tensor([3]))
    step = lambda: train_step(model, batch, optimizer, sched, accelerator, 1.0)  # noqa: E731
    with FlopCounterMode(display=False) as counter:
        step()
    flops = counter.get_total_flops()
    seconds = median_time(step, repeats)
    return dict(dtype=dtype_name, flops_per_step=flops, step_seconds=seconds, achieved_flops=flops / seconds)


def _peak_memory_child(lora: bool, checkpointing: bool = False) -> None:
    """Runs in a fresh process: build base TimeSformer, one warm-up + one measured training step, print JSON (peak
    RSS, and the median time of the two steps)."""
    import time

    import psutil
    cfg = Settings(vision_model="timesformer", model_size="base", image_size=224, num_frames=8, device="cpu",
                   use_lora_vision=lora, gradient_checkpointing=checkpointing)
    model = build_model(cfg, 400, verbose=False).model
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-5)
    batch = dict(pixel_values=torch.randn(1, 8, 3, 224, 224), labels=torch.tensor([3]))
    rss_model = psutil.Process().memory_info().rss
    reset_peak_rss()  # so model building does not count
    times = []
    for _ in range(2):  # the second step has optimizer state allocated
        t0 = time.perf_counter()
        model.train()(**batch).loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        times.append(time.perf_counter() - t0)
    peak = vm_hwm_bytes()
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    print(json.dumps(dict(lora=lora, gradient_checkpointing=checkpointing, peak_rss_bytes=peak,
                          rss_after_build_bytes=rss_model, trainable=trainable, step_seconds=times)))


MEMORY_VARIANTS = {"full": (False, False), "lora": (True, False), "full_checkpointing": (False, True),
                   "lora_checkpointing": (True, True)}  # name -> (LoRA, gradient checkpointing)


def peak_memory() -> dict:
    """Peak RSS of every variant, each in a fresh process; ratios against full fine-tuning without checkpointing,
    and the step-time cost of checkpointing (second step, with optimizer state)."""
    results = {}
    for name, (lora, checkpointing) in MEMORY_VARIANTS.items():
        out = subprocess.run([sys.executable, __file__, "--_memory_child", f"{int(lora)}{int(checkpointing)}"],
                             capture_output=True, text=True, check=True)
        results[name] = json.loads(out.stdout.strip().splitlines()[-1])
    full = results["full"]["peak_rss_bytes"]
    results["ratio"] = results["lora"]["peak_rss_bytes"] / full
    results["ratio_lora_checkpointing"] = results["lora_checkpointing"]["peak_rss_bytes"] / full
    results["ratio_full_checkpointing"] = results["full_checkpointing"]["peak_rss_bytes"] / full
    results["checkpointing_step_time_ratio_lora"] = (results["lora_checkpointing"]["step_seconds"][-1] /
                                                     results["lora"]["step_seconds"][-1])
    return results


def print_memory(mem: dict) -> None:
    gib = {k: v["peak_rss_bytes"] / 2 ** 30 for k, v in mem.items() if isinstance(v, dict)}
    print("[memory] TimeSformer-base step peak RSS (GiB): " + " | ".join(f"{k} {v:.2f}" for k, v in gib.items()) +
          f" | LoRA / full {mem['ratio']:.2f}, LoRA + checkpointing / full {mem['ratio_lora_checkpointing']:.2f} "
          f"(goal <= 0.6) | checkpointing step time x{mem['checkpointing_step_time_ratio_lora']:.2f} (LoRA)",
          flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--batch_size", type=int, default=32)
    parser.add_argument("--skip_base", action="store_true", help="skip the base-size FLOP/s and memory parts")
    parser.add_argument("--json", help="also write the results to this file")
    parser.add_argument("--memory_only", action="store_true", help="only the peak-memory part (4 fresh processes)")
    parser.add_argument("--_memory_child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args._memory_child is not None:
        _peak_memory_child(args._memory_child[0] == "1", args._memory_child[1:] == "1")
        return
    if args.memory_only:
        mem = peak_memory()
        print_memory(mem)
        if args.json:
            write_json(args.json, dict(torch=torch.__version__, threads=torch.get_num_threads(), peak_memory=mem))
        return
    results = dict(torch=torch.__version__, threads=torch.get_num_threads())
    r = loop_overhead(args.steps, args.repeats, args.batch_size)
    results["loop_overhead"] = r
    print(f"[loop] {r['model']} batch {r['batch']}: ours {r['ours_ms']:.1f} ms/step | bare PyTorch "
          f"{r['bare_ms']:.1f} ms/step | ratio {r['ratio']:.3f} (goal <= 1.05)", flush=True)
    if not args.skip_base:
        for name, dtype in (("no", torch.float32), ("bf16", torch.bfloat16)):
            peak = matmul_peak(dtype)
            step = base_step_flops(name, repeats=3)
            step.update(matmul_peak_flops=peak, fraction_of_peak=step["achieved_flops"] / peak)
            results[f"base_step_{'fp32' if name == 'no' else name}"] = step
            print(f"[flops] TimeSformer-base step ({'fp32' if name == 'no' else name}): "
                  f"{step['flops_per_step'] / 1e12:.3f} TFLOP in {step['step_seconds']:.2f} s = "
                  f"{step['achieved_flops'] / 1e9:.1f} GFLOP/s | matmul peak {peak / 1e9:.1f} GFLOP/s | "
                  f"{100 * step['fraction_of_peak']:.1f}% of peak", flush=True)
        mem = peak_memory()
        results["peak_memory"] = mem
        print_memory(mem)
    if args.json:
        write_json(args.json, results)


if __name__ == "__main__":
    main()
