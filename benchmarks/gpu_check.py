"""The GPU check (issue 23): one command that, on a CUDA machine, in under 8 minutes, writes one JSON with

1. the CUDA-only tests (``CUDA_TESTS``: mamba-ssm's kernels against our scans where mamba-ssm is installed, fp16
   with loss scaling, bf16; the 2-GPU FSDP test when two GPUs exist), run by pytest;
2. training MFU of VideoMAE-B (16 x 224^2) and TimeSformer-B (8 x 224^2): bf16 autocast, fused AdamW, eager and
   ``torch.compile``; the batch doubles until memory or ``--max_batch`` runs out, and the largest batch that fits
   is measured (FLOPs per step counted by ``torch.utils.flop_counter``, median step time); MFU against
   ``--peak_tflops`` (default 790, the dense bf16 peak the issue gives for an H200) and against a measured bf16
   matmul;
3. the loader's clips/s (``VideoFileDataset`` over generated .mp4 files, 320 x 240 h264, 16 frames decoded to a 224 px
   short side and centre-cropped) with 0 / 4 / 8 / 16 DataLoader workers, against the model's training clips/s;
4. one DDP training step over NCCL in 2 processes when two GPUs exist (gradients equal on both ranks).

    python benchmarks/gpu_check.py --json gpu_check.json        # a CUDA machine: under 8 minutes
    python benchmarks/gpu_check.py --dry --json /tmp/dry.json   # anywhere: tiny shapes on CPU, seconds

``--dry`` (the default without CUDA) runs every part with tiny shapes on the CPU: the tests are not run, but their
ids must exist, MFU of the tiny presets at batch 2 without compile, 4 small videos with 0 and 2 workers,
and the DDP step over gloo. ``tests/test_run_speed.py`` runs it. Every part has a time budget; a part that fails
records its error and the others still run. No figure is a pass/fail test; results go to BENCHMARKS.md.
"""
from __future__ import annotations

import argparse
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import traceback

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

CUDA_TESTS = [
    "tests/test_cuda.py",
    "tests/test_ssm.py::test_cuda_kernels_agree_with_pytorch_scan",
    "tests/test_ssd.py::test_cuda_ssd_kernel_agrees_with_pytorch_scan",
    "tests/test_launch.py::test_fsdp_saves_resumes_exactly_and_exports",
]
MODELS = {  # name -> settings (full size on a GPU)
    "videomae-base": dict(vision_model="videomae", model_size="base", num_frames=16, image_size=224),
    "timesformer-base": dict(vision_model="timesformer", model_size="base", num_frames=8, image_size=224),
}
DRY_MODELS = {name: dict(s, model_size="tiny", num_frames=4, image_size=32) for name, s in MODELS.items()}
WORKERS, DRY_WORKERS = (0, 4, 8, 16), (0, 2)


class Budget:
    """Seconds left of the whole check; every part takes a share and stops extending itself when it is spent."""

    def __init__(self, seconds: float):
        self.end = time.time() + seconds

    def left(self) -> float:
        return self.end - time.time()


def part(name: str, results: dict, fn, *args) -> None:
    """Run one part; its result, or the error that stopped it, goes under ``results[name]``."""
    t0 = time.time()
    try:
        results[name] = dict(status="ok", **fn(*args))
    except Exception as exc:  # a report of everything: one part failing must not lose the others' figures
        results[name] = dict(status="failed", error=f"{type(exc).__name__}: {exc}", traceback=traceback.format_exc())
        print(results[name]["traceback"], file=sys.stderr, flush=True)  # a bug still shows its traceback
    results[name]["seconds"] = round(time.time() - t0, 1)
    print(f"[{name}] {results[name]['status']} in {results[name]['seconds']:.0f} s", flush=True)


# ----------------------------------------------------------------------------------------------------------------
# 1. CUDA-only tests
# ----------------------------------------------------------------------------------------------------------------
def cuda_tests(dry: bool, budget: Budget) -> dict:
    try:
        import mamba_ssm  # noqa: F401
        mamba = "installed"
    except ImportError:
        mamba = "not installed: the kernel tests skip (pip install mamba-ssm on the GPU machine to run them)"
    command = [sys.executable, "-m", "pytest", "-q", "-rs", "-p", "no:cacheprovider", *CUDA_TESTS]
    if dry:  # the ids must still exist (a renamed test would silently drop out of the GPU run)
        return dict(command=" ".join(command[2:]), mamba_ssm=mamba, checked_ids=[check_test_id(t) for t in CUDA_TESTS])
    proc = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=max(budget.left(), 30))
    tail = proc.stdout.strip().splitlines()[-12:]
    if proc.returncode not in (0, 5):  # 5: nothing collected
        raise RuntimeError(f"pytest exit {proc.returncode}: {' | '.join(tail)}")
    return dict(command=" ".join(command[2:]), mamba_ssm=mamba, summary=tail[-1] if tail else "", output=tail)


def check_test_id(node: str) -> str:
    """A pytest id 'file[::function]' that exists in this checkout, or ValueError."""
    path, _, function = node.partition("::")
    with open(os.path.join(ROOT, path)) as fh:
        source = fh.read()
    if function and f"def {function}(" not in source:
        raise ValueError(f"{node}: no such test (update CUDA_TESTS in benchmarks/gpu_check.py)")
    return node


# ----------------------------------------------------------------------------------------------------------------
# 2. training MFU
# ----------------------------------------------------------------------------------------------------------------
def matmul_peak(device: str, dtype: torch.dtype, n: int) -> float:
    a, b = torch.randn(n, n, device=device, dtype=dtype), torch.randn(n, n, device=device, dtype=dtype)
    times = []
    for _ in range(6):
        t0 = sync_time(device)
        a @ b
        times.append(sync_time(device) - t0)
    return 2 * n ** 3 / statistics.median(times[1:])


def sync_time(device: str) -> float:
    if device == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter()


def training_step(settings: dict, batch: int, device: str, compile_model: bool):
    """(step function, model): one bf16-autocast training step of the classifier on random clips."""
    from build_model import build_model
    from videolab.core.settings import Settings
    cfg = Settings(**settings)
    model = build_model(cfg, 400, verbose=False).model.to(device).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=device == "cuda")
    forward = torch.compile(model) if compile_model else model
    x = torch.randn(batch, cfg.num_frames, 3, cfg.image_size, cfg.image_size, device=device)
    y = torch.randint(0, 400, (batch,), device=device)

    def step():
        with torch.autocast(device, dtype=torch.bfloat16):
            loss = forward(pixel_values=x, labels=y).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    return step, model


def step_flops(settings: dict, batch: int, device: str) -> int:
    from torch.utils.flop_counter import FlopCounterMode
    step, _ = training_step(settings, batch, device, False)
    with FlopCounterMode(display=False) as counter:
        step()
    return counter.get_total_flops()


def time_steps(step, device: str, warmup: int, repeats: int) -> float:
    for _ in range(warmup):
        step()
    times = []
    for _ in range(repeats):
        t0 = sync_time(device)
        step()
        times.append(sync_time(device) - t0)
    return statistics.median(times)


def fits(settings: dict, batch: int, device: str) -> bool:
    """Whether a training step at this batch fits in memory (two steps: optimizer state included)."""
    try:
        step, _ = training_step(settings, batch, device, False)
        step(), step()
        return True
    except torch.OutOfMemoryError:
        return False
    finally:
        if device == "cuda":
            torch.cuda.empty_cache()


def largest_batch(settings: dict, device: str, start: int, limit: int, budget: Budget, share: float) -> int:
    """Double the batch from ``start`` while a step fits, up to ``limit`` and within ``share`` seconds."""
    stop, batch = time.time() + share, start
    while batch * 2 <= limit and time.time() < stop and fits(settings, batch * 2, device):
        batch *= 2
    return batch


def mfu(dry: bool, device: str, peak_tflops: float, max_batch: int, budget: Budget) -> dict:
    models = DRY_MODELS if dry else MODELS
    measured_peak = matmul_peak(device, torch.bfloat16, 512 if dry else 8192)
    out = dict(device=device, peak_tflops_nominal=peak_tflops, bf16_matmul_peak_tflops=measured_peak / 1e12,
               models={})
    for name, settings in models.items():
        share = budget.left() * (0.45 if name == next(iter(models)) else 0.9) * 0.5  # this model's part of MFU
        batch = 2 if dry else largest_batch(settings, device, 8, max_batch, budget, share * 0.2)
        flops = step_flops(settings, batch, device)
        row = dict(settings=settings, batch=batch, flops_per_step=flops, runs={})
        for compile_model in ((False,) if dry else (False, True)):
            if compile_model and budget.left() < 60:
                row["runs"]["compile"] = dict(skipped="the check's time budget ran out")
                continue
            t0 = time.time()
            step, _ = training_step(settings, batch, device, compile_model)
            seconds = time_steps(step, device, warmup=1 if dry else 3, repeats=2 if dry else 10)
            achieved = flops / seconds
            row["runs"]["compile" if compile_model else "eager"] = dict(
                step_seconds=seconds, clips_per_s=batch / seconds, achieved_tflops=achieved / 1e12,
                mfu_nominal=achieved / (peak_tflops * 1e12), mfu_of_measured_matmul=achieved / measured_peak,
                wall_seconds_incl_compile=round(time.time() - t0, 1))
            if device == "cuda":
                row["runs"]["compile" if compile_model else "eager"]["max_memory_gib"] = \
                    torch.cuda.max_memory_allocated() / 2 ** 30
                torch.cuda.reset_peak_memory_stats()
        out["models"][name] = row
        print(f"  {name} batch {batch}: " + ", ".join(
            f"{k} {100 * v['mfu_nominal']:.1f} % MFU ({v['clips_per_s']:.1f} clips/s)"
            for k, v in row["runs"].items() if "mfu_nominal" in v), flush=True)
    return out


# ----------------------------------------------------------------------------------------------------------------
# 3. the loader against the model
# ----------------------------------------------------------------------------------------------------------------
def write_videos(folder: str, count: int, frames: int, height: int, width: int) -> list:
    import numpy as np

    from videolab.data.video_io import write_video
    from videolab.data.videos import VideoItem
    rng = np.random.default_rng(0)
    ys, xs = np.mgrid[0:height, 0:width]
    items = []
    for i in range(count):
        video = np.empty((frames, height, width, 3), dtype=np.uint8)
        for t in range(frames):  # a panning gradient with a moving square and light noise: compresses like footage
            video[t] = ((xs + 3 * t + 40 * i) % 256)[..., None]
            video[t, (ys // 20 + t) % 12 == 0] = (200, 60, 60)
        video = np.clip(video + rng.integers(0, 8, video.shape), 0, 255).astype(np.uint8)
        path = os.path.join(folder, f"class_{i % 2}", f"v{i}.mp4")
        os.makedirs(os.path.dirname(path), exist_ok=True)
        write_video(path, video)
        items.append(VideoItem(path, i % 2, os.path.relpath(path, folder)))
    return items


def loader(dry: bool, model_clips_per_s, budget: Budget) -> dict:
    from torch.utils.data import DataLoader

    from videolab.data.clips import collate
    from videolab.data.sampling import make_clip_spec
    from videolab.data.videos import VideoFileDataset
    count, frames, (height, width) = (4, 8, (40, 56)) if dry else (64, 64, (240, 320))
    clip_frames, size, batch = (4, 32, 2) if dry else (16, 224, 16)
    with tempfile.TemporaryDirectory() as folder:
        t0 = time.time()
        items = write_videos(folder, count, frames, height, width)
        written = time.time() - t0
        spec = make_clip_spec(clip_frames, size, (0.45,) * 3, (0.225,) * 3, train=False)
        dataset = VideoFileDataset(items, ["a", "b"], spec, policy="report")
        rows = {}
        for workers in (DRY_WORKERS if dry else WORKERS):
            if budget.left() < 20 and rows:
                rows[str(workers)] = dict(skipped="the check's time budget ran out")
                continue
            data = DataLoader(dataset, batch_size=batch, num_workers=workers, collate_fn=collate,
                              persistent_workers=workers > 0)
            for _ in data:  # warm-up epoch: workers start, files get cached by the OS
                pass
            t0, clips = time.time(), 0
            for _ in range(1 if dry else 3):
                for b in data:
                    clips += len(b["labels"])
            rows[str(workers)] = dict(clips_per_s=clips / (time.time() - t0))
    best = max((r["clips_per_s"] for r in rows.values() if "clips_per_s" in r), default=None)
    return dict(videos=count, video_frames=frames, video_size=f"{width}x{height} h264 .mp4", clip_frames=clip_frames,
                clip_size=size, batch=batch, seconds_writing_videos=round(written, 1), workers=rows,
                model_clips_per_s=model_clips_per_s,
                loader_keeps_up=None if best is None or model_clips_per_s is None else best >= model_clips_per_s)


# ----------------------------------------------------------------------------------------------------------------
# 4. DDP step over NCCL (gloo in the dry mode)
# ----------------------------------------------------------------------------------------------------------------
def _ddp_worker(rank: int, world: int, port: int, backend: str, queue) -> None:
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel
    device = f"cuda:{rank}" if backend == "nccl" else "cpu"
    if backend == "nccl":
        torch.cuda.set_device(rank)
    dist.init_process_group(backend, init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    from build_model import build_model
    from videolab.core.settings import Settings
    torch.manual_seed(0)
    cfg = Settings(model_size="tiny", num_frames=4, image_size=32)
    model = DistributedDataParallel(build_model(cfg, 8, verbose=False).model.to(device))
    torch.manual_seed(rank)  # each rank its own batch: DDP must average the gradients
    x, y = torch.randn(4, 4, 3, 32, 32, device=device), torch.randint(0, 8, (4,), device=device)
    t0 = time.time()
    model(pixel_values=x, labels=y).loss.backward()
    grad = torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None])
    gathered = [torch.empty_like(grad) for _ in range(world)]
    dist.all_gather(gathered, grad)
    if rank == 0:
        queue.put(dict(backend=backend, processes=world, step_seconds=time.time() - t0,
                       gradients_equal_on_all_ranks=all(torch.equal(gathered[0], g) for g in gathered)))
    dist.barrier()  # no rank tears the group down under another (gloo aborts with 'terminate called' otherwise)
    dist.destroy_process_group()


def ddp(dry: bool, budget: Budget) -> dict:
    if not dry and torch.cuda.device_count() < 2:
        return dict(skipped=f"{torch.cuda.device_count()} GPU(s): the NCCL step needs 2")
    import torch.multiprocessing as mp
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    context = mp.get_context("spawn")
    queue = context.SimpleQueue()
    mp.start_processes(_ddp_worker, args=(2, port, "gloo" if dry else "nccl", queue), nprocs=2, join=True,
                       start_method="spawn")
    return queue.get()


# ----------------------------------------------------------------------------------------------------------------
def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dry", action="store_true", help="tiny shapes on the CPU (the default without CUDA)")
    parser.add_argument("--budget", type=float, default=450.0, help="seconds for the whole check (default 450)")
    parser.add_argument("--peak_tflops", type=float, default=790.0, help="the GPU's dense bf16 peak, TFLOP/s")
    parser.add_argument("--max_batch", type=int, default=256)
    parser.add_argument("--skip", nargs="*", default=[], choices=("tests", "mfu", "loader", "ddp"))
    parser.add_argument("--json", help="write the results here")
    args = parser.parse_args(argv)
    dry = args.dry or not torch.cuda.is_available()
    device = "cpu" if dry else "cuda"
    budget = Budget(args.budget)
    t0 = time.time()
    results = dict(dry=dry, device=torch.cuda.get_device_name(0) if not dry else "cpu (dry run)",
                   gpus=torch.cuda.device_count(), torch=torch.__version__, cuda=torch.version.cuda,
                   command=" ".join(["python", "benchmarks/gpu_check.py", *(argv if argv is not None else
                                                                               sys.argv[1:])]))
    if "tests" not in args.skip:
        part("cuda_tests", results, cuda_tests, dry, budget)
    if "mfu" not in args.skip:
        part("mfu", results, mfu, dry, device, args.peak_tflops, args.max_batch, budget)
    model_rate = None
    if results.get("mfu", {}).get("status") == "ok":
        first = next(iter(results["mfu"]["models"].values()))
        model_rate = max(r["clips_per_s"] for r in first["runs"].values() if "clips_per_s" in r)
    if "loader" not in args.skip:
        part("loader", results, loader, dry, model_rate, budget)
    if "ddp" not in args.skip:
        part("ddp", results, ddp, dry, budget)
    results["seconds"] = round(time.time() - t0, 1)
    if args.json:
        from videolab.core.files import write_json
        write_json(args.json, results)
    print(f"gpu check ({'dry' if dry else device}): {results['seconds']:.0f} s | " + ", ".join(
        f"{k} {v['status']}" for k, v in results.items() if isinstance(v, dict) and "status" in v), flush=True)
    return results


if __name__ == "__main__":
    main()
