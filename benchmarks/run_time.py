"""The whole run against a bare PyTorch loop (issue 23): same model, same clips, same recipe, side by side.

    python benchmarks/run_time.py --json benchmarks/run_time_cpu.json          # default, timesformer, mamba2
    python benchmarks/run_time.py --quick                                      # scaled down: minutes, not hours
    python benchmarks/run_time.py --setups default --epochs 12

For every setup (``default`` = ``python main.py``; ``timesformer`` = ``--vision_model timesformer``; ``mamba2`` = a
per-frame ViT + Mamba-2 fusion), in one invocation:

* **ours**: ``main.py`` with the setup's flags (config_file.yaml defaults otherwise), a fresh process; every
  epoch's resumable checkpoint is kept (``--save_total_limit 0``) so each epoch's test top-1 can be measured
  afterwards, outside the clock. Its eval.json says where the training time went (``train_time_breakdown``: data
  wait, forward/backward/step, validation, checkpoints, the rest) and what the test report cost.
* **bare**: a plain PyTorch loop in a fresh process: the same settings resolution, the same model (same seed, so
  the same initial weights), the same training clips (the run's train split, read by the same dataset class
  through a plain ``DataLoader``), AdamW with the same groups, warm-up + cosine, clipping and autocast; no
  validation, no checkpoints, no reports. It measures test top-1 after every epoch with its clock stopped.

Both run at the same time, each pinned to its own core with one thread (``--sequential``: one after the other on
every core), so machine load hits both alike. Reported: time to 90 % and 95 % test top-1 (training clock), total
wall time of each process, the ratio ours / bare, and our extra time by part. No figure is a pass/fail test;
results go to BENCHMARKS.md.
"""
from __future__ import annotations

import argparse
import glob
import json
import os
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

SETUPS = {  # name -> main.py flags over config_file.yaml
    "default": [],
    "timesformer": ["--vision_model", "timesformer"],
    "mamba2": ["--vision_model", "vit_small_patch16_224", "--fusion", "mamba2"],
}
THRESHOLDS = (0.90, 0.95)
QUICK = dict(epochs=3, train_per_class=40, test_per_class=10)  # --quick: a scaled run (about 1 min per setup)


# ----------------------------------------------------------------------------------------------------------------
# the bare loop (runs in its own process: --_bare)
# ----------------------------------------------------------------------------------------------------------------
def settings_for(flags: list):
    """Settings exactly as main.py resolves them from these flags (defaults < config_file.yaml < flags)."""
    import build_model
    import videolab.cli
    cli, _, _ = videolab.cli.resolve(flags, "run_time", "bare loop")
    return build_model.resolve_settings(cli)


def test_top1(model, loader, autocast) -> float:
    import torch
    model.eval()
    correct = seen = 0
    with torch.no_grad(), autocast():
        for batch in loader:
            logits = model(pixel_values=batch["pixel_values"]).logits
            correct += (logits.argmax(-1) == batch["labels"]).sum().item()
            seen += len(batch["labels"])
    model.train()
    return correct / max(seen, 1)


def bare_loop(flags: list) -> dict:
    """Train the setup's model with a plain PyTorch loop; test top-1 after each epoch (clock stopped)."""
    start = time.time()
    import contextlib

    import torch
    from torch.utils.data import DataLoader
    from transformers import get_cosine_schedule_with_warmup

    import build_model
    import VLoader
    from train_code import param_groups
    from videolab.data.clips import collate

    cfg = settings_for(flags)
    VLoader.ensure_dataset(cfg)
    torch.manual_seed(cfg.seed)  # main.py: set_seed(cfg.seed) before building, so the same initial weights
    from accelerate.utils import set_seed
    set_seed(cfg.seed)
    names = VLoader.dataset_class_names(cfg)
    built = build_model.build_model(cfg, len(names), texts=None, verbose=False)
    data = VLoader.build_datasets(cfg, built.backbone.mean, built.backbone.std)
    train = DataLoader(data.train, batch_size=cfg.batch_size, shuffle=True, collate_fn=collate,
                       generator=torch.Generator().manual_seed(cfg.seed))
    test = DataLoader(data.test, batch_size=cfg.batch_size, collate_fn=collate)
    model = built.model.train()
    optimizer = torch.optim.AdamW(param_groups(model, cfg.weight_decay, cfg.lr), lr=cfg.lr, betas=(0.9, 0.999))
    total = len(train) * cfg.epochs
    scheduler = get_cosine_schedule_with_warmup(optimizer, int(cfg.warmup_ratio * total), total)
    autocast = (lambda: torch.autocast("cpu", dtype=torch.bfloat16)) if cfg.mixed_precision == "bf16" else \
        contextlib.nullcontext
    setup_seconds, clock, epochs = time.time() - start, 0.0, []
    for epoch in range(cfg.epochs):
        t0 = time.time()
        for batch in train:
            with autocast():
                loss = model(pixel_values=batch["pixel_values"], labels=batch["labels"]).loss
            loss.backward()
            if cfg.max_grad_norm > 0:
                torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.max_grad_norm)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
        clock += time.time() - t0
        epochs.append(dict(epoch=epoch + 1, train_seconds=round(clock, 2), test_top1=test_top1(model, test, autocast)))
    return dict(setup_seconds=round(setup_seconds, 2), train_seconds=round(clock, 2), epochs=epochs)


# ----------------------------------------------------------------------------------------------------------------
# our run's per-epoch test accuracy, from its kept checkpoints (--_evaluate)
# ----------------------------------------------------------------------------------------------------------------
def evaluate_checkpoints(run_dir: str) -> list:
    """Test top-1 of every checkpoint-<step>/ of a run, with the training time at which it was saved."""
    import contextlib

    import torch
    from torch.utils.data import DataLoader

    import build_model
    import VLoader
    from videolab.core.checkpoints import load_training_state, read_run_config
    from videolab.core.settings import settings_from_dict
    from videolab.data.clips import collate

    folders = sorted(glob.glob(os.path.join(run_dir, "checkpoint-*")), key=lambda f: int(f.rsplit("-", 1)[1]))
    epochs, test = [], None
    for folder in folders:
        config = read_run_config(folder)
        cfg = settings_from_dict(config["settings"])
        built = build_model.rebuild_from_checkpoint(cfg, config, folder)
        if test is None:
            data = VLoader.build_datasets(cfg, built.backbone.mean, built.backbone.std, parts=("test",))
            test = DataLoader(data.test, batch_size=cfg.batch_size, collate_fn=collate)
        state = load_training_state(folder)
        autocast = (lambda: torch.autocast("cpu", dtype=torch.bfloat16)) if cfg.mixed_precision == "bf16" else \
            contextlib.nullcontext
        epochs.append(dict(epoch=state["epoch"], train_seconds=round(state["train_seconds"], 2),
                           test_top1=test_top1(built.model, test, autocast)))
    return epochs


# ----------------------------------------------------------------------------------------------------------------
# the comparison
# ----------------------------------------------------------------------------------------------------------------
def child(args: list, core, log: str) -> subprocess.Popen:
    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
    prefix = []
    if core is not None:
        env["OMP_NUM_THREADS"] = "1"
        prefix = ["taskset", "-c", str(core)]
    with open(log, "w") as fh:
        return subprocess.Popen(prefix + [sys.executable, *args], cwd=ROOT, env=env, stdout=fh,
                                stderr=subprocess.STDOUT)


def wait(procs: list, started: float, logs: list) -> list:
    """Wait for every process; each one's own wall time from ``started`` (polled, so one finishing early is not
    charged the other's time)."""
    ends = [None] * len(procs)
    while None in ends:
        for i, proc in enumerate(procs):
            if ends[i] is None and proc.poll() is not None:
                ends[i] = time.time()
                if proc.returncode != 0:
                    with open(logs[i]) as fh:
                        raise SystemExit(f"{' '.join(proc.args)} failed:\n{fh.read()[-3000:]}")
        time.sleep(0.05)
    return [end - started for end in ends]


def last_json(log: str) -> dict:
    with open(log) as fh:
        return json.loads([line for line in fh.read().splitlines() if line.startswith("{")][-1])


def time_to(epochs: list, threshold: float):
    return next((e["train_seconds"] for e in epochs if e["test_top1"] >= threshold), None)


def compare(setup: str, flags: list, work: str, sequential: bool) -> dict:
    name = f"ours_{setup}"
    ours_args = [os.path.join(ROOT, "main.py"), *flags, "--output_dir", os.path.join(work, "runs"), "--run_name",
                 name, "--save_total_limit", "0", "--quiet", "--summary_csv", "none"]
    bare_args = [os.path.abspath(__file__), "--_bare", json.dumps(flags)]
    logs = {k: os.path.join(work, f"{setup}_{k}.log") for k in ("ours", "bare", "eval")}
    import VLoader
    VLoader.ensure_dataset(settings_for(flags))  # here, not by both children at once
    if sequential:
        t0 = time.time()
        ours_wall, = wait([child(ours_args, None, logs["ours"])], t0, [logs["ours"]])
        t0 = time.time()
        bare_wall, = wait([child(bare_args, None, logs["bare"])], t0, [logs["bare"]])
    else:
        t0 = time.time()
        ours_wall, bare_wall = wait([child(ours_args, 0, logs["ours"]), child(bare_args, 1, logs["bare"])], t0,
                                    [logs["ours"], logs["bare"]])
    run_dir = os.path.join(work, "runs", name)
    wait([child([os.path.abspath(__file__), "--_evaluate", run_dir], None, logs["eval"])], time.time(),
         [logs["eval"]])
    ours_epochs, bare_result = last_json(logs["eval"])["epochs"], last_json(logs["bare"])
    with open(os.path.join(run_dir, "eval.json")) as fh:
        report = json.load(fh)
    breakdown = report["train_time_breakdown"]
    bare_train = bare_result["train_seconds"]
    extra = dict(breakdown, step=round(breakdown["step"] + breakdown["data"] - bare_train, 2),
                 test_report=round(report["eval_seconds"] + report["speed_seconds"], 2),
                 startup_and_export=round(ours_wall - report["train_seconds"] - report["eval_seconds"]
                                          - report["speed_seconds"], 2))
    extra.pop("data")  # the bare loop waits for the same clips: data + step against its training clock
    return dict(
        setup=setup, flags=flags, epochs=report["settings"]["epochs"], mixed_precision=report["settings"][
            "mixed_precision"],
        ours=dict(wall_seconds=round(ours_wall, 1), train_seconds=report["train_seconds"], final_test_top1=report[
            "top1"], train_time_breakdown=breakdown, test_report_seconds=extra["test_report"], epochs=ours_epochs,
            **{f"seconds_to_{int(100 * t)}": time_to(ours_epochs, t) for t in THRESHOLDS}),
        bare=dict(wall_seconds=round(bare_wall, 1), train_seconds=bare_train, setup_seconds=bare_result[
            "setup_seconds"], final_test_top1=bare_result["epochs"][-1]["test_top1"], epochs=bare_result["epochs"],
            **{f"seconds_to_{int(100 * t)}": time_to(bare_result["epochs"], t) for t in THRESHOLDS}),
        ratio_wall=round(ours_wall / bare_wall, 3), ratio_train=round(report["train_seconds"] / bare_train, 3),
        our_extra_seconds=dict(total=round(ours_wall - bare_wall, 1), by_part=extra),
        mode="sequential" if sequential else "parallel, one core and one thread each")


def print_result(r: dict) -> None:
    o, b = r["ours"], r["bare"]
    fmt = lambda s: "-" if s is None else f"{s:.0f} s"  # noqa: E731
    print(f"[{r['setup']}] {r['epochs']} epochs, {r['mixed_precision']}: ours {o['wall_seconds']:.0f} s wall "
          f"(training {o['train_seconds']:.0f} s), test {100 * o['final_test_top1']:.1f} % | bare "
          f"{b['wall_seconds']:.0f} s wall (training {b['train_seconds']:.0f} s), test "
          f"{100 * b['final_test_top1']:.1f} % | ratio {r['ratio_wall']:.3f} wall, {r['ratio_train']:.3f} training",
          flush=True)
    print(f"    time to 90 %: ours {fmt(o['seconds_to_90'])}, bare {fmt(b['seconds_to_90'])} | to 95 %: ours "
          f"{fmt(o['seconds_to_95'])}, bare {fmt(b['seconds_to_95'])} | our extra time by part (s): "
          f"{r['our_extra_seconds']['by_part']}", flush=True)


def quick_flags(work: str, seed: int) -> list:
    """--quick: a small dataset of its own and 3 epochs."""
    from videolab.data.synthetic import dataset_is_complete, write_dataset
    root = os.path.join(work, "quick_data")
    if not dataset_is_complete(root):
        write_dataset(root, train_per_class=QUICK["train_per_class"], test_per_class=QUICK["test_per_class"],
                      num_frames=8, size=32, seed=seed, quiet=True)
    return ["--data_root", root, "--epochs", str(QUICK["epochs"])]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--setups", nargs="+", default=list(SETUPS), choices=list(SETUPS))
    parser.add_argument("--epochs", type=int, help="override config_file.yaml's epochs")
    parser.add_argument("--quick", action="store_true", help=f"scaled down: {QUICK}")
    parser.add_argument("--sequential", action="store_true", help="run ours then bare, each on every core")
    parser.add_argument("--extra", default="", help="more main.py flags for both, e.g. '--mixed_precision bf16'")
    parser.add_argument("--work", default="/tmp/run_time", help="data, runs and logs")
    parser.add_argument("--json", help="write the results here")
    parser.add_argument("--_bare", help=argparse.SUPPRESS)
    parser.add_argument("--_evaluate", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args._bare is not None:
        print(json.dumps(bare_loop(json.loads(args._bare))))
        return
    if args._evaluate is not None:
        print(json.dumps(dict(epochs=evaluate_checkpoints(args._evaluate))))
        return
    os.makedirs(args.work, exist_ok=True)
    common = quick_flags(args.work, 0) if args.quick else ["--data_root", os.path.join(args.work, "data")]
    common += (["--epochs", str(args.epochs)] if args.epochs else []) + args.extra.split()
    results = dict(load_before=os.getloadavg(), quick=args.quick, results=[])
    for setup in args.setups:
        r = compare(setup, SETUPS[setup] + common, args.work, args.sequential)
        print_result(r)
        results["results"].append(r)
    results["load_after"] = os.getloadavg()
    if args.json:
        from videolab.core.files import write_json
        write_json(args.json, results)


if __name__ == "__main__":
    main()
