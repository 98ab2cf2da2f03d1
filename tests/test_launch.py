"""accelerate launch: its precision and accumulation are used unless a flag says otherwise, and the run records
where each value came from; FSDP (sharded parameters) saves, resumes exactly and exports.

On a machine without GPUs, ``accelerate launch --multi_gpu --num_processes 2`` starts the two processes (the
launcher is torchrun's) and main.py puts them on the CPU (gloo); ``--cpu --num_processes 2`` would start one.
"""
import json
import math
import os
import socket
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file

import train_code
from conftest import ROOT, TINY_FLAGS
from videolab.core.errors import UsageError
from videolab.core.runtime import accelerate_values, make_accelerator
from videolab.core.settings import Settings

ACCELERATE = [sys.executable, "-m", "accelerate.commands.launch"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def env(**extra):
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("ACCELERATE_", "FSDP_"))}
    return dict(clean, OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1", PYTHONPATH=ROOT, **extra)


def accelerate_config(path, **settings):
    """An accelerate config file as `accelerate config` writes one (LOCAL_MACHINE, one machine)."""
    lines = dict(compute_environment="LOCAL_MACHINE", distributed_type="MULTI_GPU", num_machines=1,
                 machine_rank=0, main_training_function="main", rdzv_backend="static", same_network=True,
                 use_cpu=False, **settings)
    path.write_text("".join(f"{k}: {json.dumps(v) if isinstance(v, str) else str(v).lower()}\n"
                            for k, v in lines.items()))
    return str(path)


def test_a_typed_flag_wins_and_launcher_values_are_used_otherwise(monkeypatch):
    monkeypatch.setenv("ACCELERATE_MIXED_PRECISION", "bf16")
    monkeypatch.setenv("ACCELERATE_GRADIENT_ACCUMULATION_STEPS", "2")
    cfg, sources = accelerate_values(Settings(), {})
    assert (cfg.mixed_precision, cfg.gradient_accumulation_steps) == ("bf16", 2)
    assert sources["mixed_precision"].startswith("accelerate launch (ACCELERATE_MIXED_PRECISION=bf16")
    cfg, sources = accelerate_values(Settings(gradient_accumulation_steps=4), {"gradient_accumulation_steps": "flag"})
    assert (cfg.mixed_precision, cfg.gradient_accumulation_steps) == ("bf16", 4)
    assert sources["gradient_accumulation_steps"] == "flag"
    monkeypatch.delenv("ACCELERATE_MIXED_PRECISION")
    assert accelerate_values(Settings(), {})[1]["mixed_precision"] == "default"
    monkeypatch.setenv("ACCELERATE_GRADIENT_ACCUMULATION_STEPS", "0")
    with pytest.raises(UsageError, match="ACCELERATE_GRADIENT_ACCUMULATION_STEPS"):
        accelerate_values(Settings(), {})


def test_the_accelerator_applies_the_accumulation_the_schedule_counts(monkeypatch):
    """accelerate itself would let the environment override the value it is given; ours is what it applies."""
    monkeypatch.setenv("ACCELERATE_GRADIENT_ACCUMULATION_STEPS", "3")
    accelerator = make_accelerator(Settings(device="cpu", gradient_accumulation_steps=2))
    assert accelerator.gradient_accumulation_steps == 2
    assert train_code.planned_steps(Settings(epochs=3), 10, accelerator.gradient_accumulation_steps) == 15


def test_two_processes_take_bf16_and_accumulation_2_from_accelerate_launch(tmp_path):
    """An accelerate config file with bf16 for 2 processes, and accumulation 2 from the launcher's environment
    (ACCELERATE_GRADIENT_ACCUMULATION_STEPS: what accelerate launch hands over; its config file has no such key
    outside DeepSpeed). No precision or accumulation flag is typed, so the run uses both and says so."""
    import dummy_data
    data = dummy_data.write_dataset(str(tmp_path / "data"), num_classes=4, train_per_class=6, test_per_class=1,
                                    num_frames=4, size=32, seed=3, quiet=True)
    config = accelerate_config(tmp_path / "accelerate.yaml", num_processes=2, mixed_precision="bf16")
    flags = ["--data_root", data, "--output_dir", str(tmp_path), "--run_name", "launched", *TINY_FLAGS,
             "--epochs", "2", "--batch_size", "2", "--val_fraction", "0", "--device", "cpu", "--quiet",
             "--speed_repeats", "0", "--summary_csv", "none"]  # cwd tmp_path: no config_file.yaml is read
    proc = subprocess.run([*ACCELERATE, "--config_file", config, "--main_process_port", str(free_port()),
                           os.path.join(ROOT, "main.py"), *flags], capture_output=True, text=True, cwd=tmp_path,
                          env=env(ACCELERATE_GRADIENT_ACCUMULATION_STEPS="2"), timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "| 2 processes" in proc.stdout and "precision bf16 | accumulation 2" in proc.stdout, proc.stdout
    report = json.loads((tmp_path / "launched" / "eval.json").read_text())
    assert report["settings"]["mixed_precision"] == "bf16" and report["settings"]["gradient_accumulation_steps"] == 2
    for name in ("mixed_precision", "gradient_accumulation_steps"):
        assert report["settings_sources"][name].startswith("accelerate launch"), report["settings_sources"]
    batches = math.ceil(24 / (2 * 2))  # per process per epoch: 24 clips, batch 2, 2 processes
    assert [r["step"] for r in report["history"]] == [math.ceil(batches / 2), 2 * math.ceil(batches / 2)]
    saved = json.loads((tmp_path / "launched" / "best" / "run_config.json").read_text())
    assert saved["settings_sources"] == report["settings_sources"]


SHARDED_LOAD = """
import sys, torch, torch.distributed as dist
from types import SimpleNamespace
from accelerate.utils import DistributedType
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.fsdp import fully_shard
from videolab.core.runtime import load_full_state_dict

dist.init_process_group("gloo")
torch.manual_seed(0)
make = lambda: torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.ReLU(), torch.nn.Linear(16, 4))
saved = {k: torch.randn_like(v) for k, v in make().state_dict().items()}  # full tensors, as model.safetensors
model, mesh = make(), init_device_mesh("cpu", (2,))
for part in (model[0], model[2], model):
    fully_shard(part, mesh=mesh)  # FSDP2: every parameter is a DTensor holding this process's shard
assert model[0].weight.to_local().shape == (8, 8)
try:
    model.load_state_dict({k: v.clone() for k, v in saved.items()})  # what restore did before
    plain = "loaded"
except Exception as exc:
    plain = type(exc).__name__
sharded = SimpleNamespace(distributed_type=DistributedType.FSDP, unwrap_model=lambda m: m)
load_full_state_dict(sharded, model, {k: v.clone() for k, v in saved.items()})
for k, v in model.state_dict().items():
    assert torch.equal(v.full_tensor(), saved[k]), k
print(f"rank {dist.get_rank()}: sharded load ok (plain load_state_dict: {plain})", flush=True)
# Both ranks have checked their shards and said so. Tearing gloo + FSDP2 down (destroy_process_group, or the
# interpreter's exit) aborts one rank now and then on this torch build ('terminate called without an active
# exception', SIGABRT: 4 of 6 runs without the barrier, 1 of 8 with it, 1 of 10 with no destroy at all), after the
# work is done; so wait for both, then leave without the teardown (0 of 12 runs failed).
dist.barrier()
import os
os._exit(0)
"""


def test_full_weights_load_into_sharded_parameters_on_cpu(tmp_path):
    """The resume path's loader with FSDP2-sharded parameters, 2 CPU processes over gloo (torch shards on CPU;
    accelerate does not, see the next test): every process ends with its shard of exactly the saved weights."""
    script = tmp_path / "sharded_load.py"
    script.write_text(SHARDED_LOAD)
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port",
                           str(free_port()), str(script)], capture_output=True, text=True, cwd=tmp_path, env=env(),
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.count("sharded load ok") == 2, proc.stdout


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="FSDP through accelerate needs 2 CUDA GPUs: accelerate "
                    "1.15 enables FSDP only for GPU launches (on CPU, ACCELERATE_USE_FSDP is ignored and the "
                    "processes run DDP over gloo)")
def test_fsdp_saves_resumes_exactly_and_exports(tmp_path):
    """2 GPUs, FSDP through accelerate launch: an interrupted run resumed from its mid-run checkpoint ends with the
    weights of the uninterrupted one, and --export_dir writes full (unsharded) weights."""
    import dummy_data
    data = dummy_data.write_dataset(str(tmp_path / "data"), num_classes=4, train_per_class=6, test_per_class=2,
                                    num_frames=4, size=32, seed=3, quiet=True)
    config = accelerate_config(tmp_path / "fsdp.yaml", num_processes=2, distributed_type="FSDP",
                               fsdp_config={"fsdp_version": 2, "fsdp_auto_wrap_policy": "NO_WRAP",
                                            "fsdp_state_dict_type": "SHARDED_STATE_DICT"})
    flags = ["--data_root", data, "--output_dir", str(tmp_path), *TINY_FLAGS, "--epochs", "2", "--batch_size", "2",
             "--quiet", "--deterministic", "True", "--speed_repeats", "0", "--summary_csv", "none"]

    def launch(*extra):
        proc = subprocess.run([*ACCELERATE, "--config_file", config, "--main_process_port", str(free_port()),
                               os.path.join(ROOT, "main.py"), *flags, *extra], capture_output=True, text=True,
                              cwd=tmp_path, env=env(), timeout=900)
        assert proc.returncode == 0, proc.stderr[-3000:]
        return proc
    assert "FSDP" in launch("--run_name", "whole", "--save_steps", "2", "--save_total_limit", "0",
                            "--export_dir", str(tmp_path / "exported")).stdout
    launch("--run_name", "resumed", "--resume_from_checkpoint", str(tmp_path / "whole" / "checkpoint-2"))
    whole = load_file(str(tmp_path / "whole" / "last" / "model.safetensors"))
    resumed = load_file(str(tmp_path / "resumed" / "last" / "model.safetensors"))
    assert whole.keys() == resumed.keys()
    for key in whole:
        torch.testing.assert_close(resumed[key], whole[key], rtol=0, atol=0)
    exported = load_file(str(tmp_path / "exported" / "model.safetensors"))
    assert all(t.numel() > 0 for t in exported.values())
