"""Training that scales and survives: 2 processes (DDP, gloo) match 1 process; an interrupted run resumed mid-epoch
or at an epoch boundary ends bit-identical; SIGINT/SIGTERM save a resumable checkpoint; kill -9 during a save keeps
the previous one; unsafe, corrupt and incompatible checkpoints are refused with clear messages; a NaN loss stops
(or is skipped) without writing NaN weights.

The reference run trains a tiny VideoMAE for 2 epochs of 5 steps (20 train / 4 val / 8 test clips, batch 4) with
dropout before the head, so the torch RNG matters, on one thread with deterministic algorithms.
"""
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time

import pytest
import torch
from safetensors.torch import load_file

import main as train_main
import train_code
from conftest import ROOT, TINY_FLAGS
from train_code import TrainingInterrupted
from videolab.core.checkpoints import (STATE_FILE, WEIGHTS_FILE, latest_checkpoint, load_training_state, load_weights,
                                       save_checkpoint, verify_checkpoint)
from videolab.core.errors import CheckpointError, RunError
from videolab.data.synthetic import SyntheticVideoDataset

RUN_FLAGS = [*TINY_FLAGS, "--epochs", "2", "--batch_size", "4", "--head_dropout", "0.3", "--seed", "0", "--quiet",
             "--deterministic", "True", "--save_steps", "2", "--save_total_limit", "0", "--speed_repeats", "0",
             "--summary_csv", "none"]  # a later flag wins: run(..., "--epochs", "1") trains one epoch


pytestmark = pytest.mark.usefixtures("one_thread")  # bit-identical resumes need one thread count


def run(data, out, name, *extra):
    return train_main.main(["--data_root", data, "--output_dir", str(out), "--run_name", name, *RUN_FLAGS, *extra])


@pytest.fixture(scope="module")
def reference(tiny_dataset, tmp_path_factory):
    """The uninterrupted run; it keeps every checkpoint (steps 2, 4, 5 = end of epoch 1, 6, 8, 10)."""
    out = tmp_path_factory.mktemp("reference")
    report = run(tiny_dataset, out, "ref")
    weights = load_file(str(out / "ref" / "last" / WEIGHTS_FILE))
    return dict(out=out, run_dir=out / "ref", report=report, weights=weights)


def subprocess_env():
    return dict(os.environ, OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1", PYTHONPATH=ROOT)


def assert_same_run(report, reference, run_dir):
    """Bit-identical final weights, per-epoch metrics (timings aside) and test metrics."""
    weights = load_file(str(run_dir / "last" / WEIGHTS_FILE))
    assert weights.keys() == reference["weights"].keys()
    different = [k for k in weights if not torch.equal(weights[k], reference["weights"][k])]
    assert not different, f"weights differ from the uninterrupted run: {different[:5]}"
    strip = lambda history: [{k: v for k, v in r.items() if k != "epoch_seconds"} for r in history]  # noqa: E731
    assert strip(report["history"]) == strip(reference["report"]["history"])
    for key in ("top1", "top5", "loss", "confusion_matrix"):
        assert report[key] == reference["report"][key], key
    with open(run_dir / "metrics.jsonl") as fh:
        assert strip(json.loads(line) for line in fh) == strip(reference["report"]["history"])


# ----------------------------------------------------------------------------------------------------------------
# several processes
# ----------------------------------------------------------------------------------------------------------------
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_processes_match_one_process(tmp_path):
    """torchrun, 2 CPU processes (gloo) x batch 3 against 1 process x batch 6: 24 train clips (4 global steps per
    epoch), 4 val and 8 test clips, so evaluation ends on an uneven global batch that gather_for_metrics trims."""
    import dummy_data
    data = dummy_data.write_dataset(str(tmp_path / "data"), num_classes=4, train_per_class=7, test_per_class=2,
                                    num_frames=4, size=32, seed=3, quiet=True)
    flags = ["--data_root", data, "--output_dir", str(tmp_path), *TINY_FLAGS, "--epochs", "2", "--val_fraction", "0.15",
             "--quiet", "--speed_repeats", "0", "--summary_csv", "none"]
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port",
                           str(free_port()), os.path.join(ROOT, "main.py"), *flags, "--run_name", "two",
                           "--batch_size", "3"], capture_output=True, text=True, cwd=tmp_path, env=subprocess_env(),
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    one = train_main.main([*flags, "--run_name", "one", "--batch_size", "6"])
    two = json.loads((tmp_path / "two" / "eval.json").read_text())
    assert "| 2 processes" in proc.stdout and proc.stdout.count("run folder:") == 1  # only rank 0 prints
    assert proc.stdout.count("epoch   1/2") == 1
    assert {"random_states_0.pkl", "random_states_1.pkl"} <= set(os.listdir(tmp_path / "two" / "last"))
    assert two["num_samples"] == one["num_samples"] == 8  # no clip dropped or counted twice
    assert two["confusion_matrix"] == one["confusion_matrix"]
    assert two["top1"] == one["top1"] and two["loss"] == pytest.approx(one["loss"], rel=1e-5)
    assert len(two["history"]) == len(one["history"]) == 2
    for a, b in zip(two["history"], one["history"]):
        assert a["step"] == b["step"] and a["lr"] == pytest.approx(b["lr"], rel=1e-6)
        for key in ("train_loss", "train_top1", "val_loss", "val_top1", "val_top5"):
            assert a[key] == pytest.approx(b[key], rel=1e-5, abs=1e-7), key
    w2, w1 = load_file(str(tmp_path / "two" / "last" / WEIGHTS_FILE)), load_file(str(tmp_path / "one" / "last" /
                                                                                     WEIGHTS_FILE))
    for key in w1:
        torch.testing.assert_close(w2[key], w1[key], rtol=1e-4, atol=1e-5)


# ----------------------------------------------------------------------------------------------------------------
# exact resume
# ----------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("step,epoch,batch", [(2, 0, 2), (5, 1, 0)], ids=["mid-epoch", "epoch-boundary"])
def test_resume_is_bit_identical(reference, tiny_dataset, tmp_path, step, epoch, batch):
    folder = reference["run_dir"] / f"checkpoint-{step}"
    state = load_training_state(str(folder))
    assert (state["epoch"], state["batch"], state["step"]) == (epoch, batch, step)
    report = run(tiny_dataset, tmp_path, "resumed", "--resume_from_checkpoint", str(folder))
    assert_same_run(report, reference, tmp_path / "resumed")
    # the training time of the run before the interruption is counted too, not only the resumed part
    assert 0 < state["train_seconds"] <= report["train_seconds"]
    resumed_part = load_training_state(str(tmp_path / "resumed" / "last"))["train_seconds"] - state["train_seconds"]
    assert resumed_part > 0 and report["train_seconds"] >= state["train_seconds"] + resumed_part - 0.2
    if batch:  # a mid-epoch resume continues the epoch's clock: its record counts both sessions
        assert report["history"][0]["epoch_seconds"] >= state["epoch_seconds"]


def test_resume_with_gradient_accumulation_is_bit_identical(tiny_dataset, tmp_path):
    """Micro-batches of 2, 2 per optimizer step: checkpoint-2 sits after batch 4 of 10, inside the epoch."""
    flags = ("--batch_size", "2", "--gradient_accumulation_steps", "2", "--epochs", "1")
    report = run(tiny_dataset, tmp_path, "whole", *flags)
    reference = dict(report=report, weights=load_file(str(tmp_path / "whole" / "last" / WEIGHTS_FILE)))
    assert load_training_state(str(tmp_path / "whole" / "checkpoint-2"))["batch"] == 4
    resumed = run(tiny_dataset, tmp_path, "resumed", *flags, "--resume_from_checkpoint",
                  str(tmp_path / "whole" / "checkpoint-2"))
    assert_same_run(resumed, reference, tmp_path / "resumed")


SLOW_MAIN = """
import sys, time
import train_code, main
from videolab.cli import run_cli
original = train_code.forward_backward
def slow(*args, **kwargs):  # gives the test time to signal mid-run
    time.sleep(0.3)
    return original(*args, **kwargs)
train_code.forward_backward = slow
sys.exit(run_cli(main.main))
"""


def wait_for(path, proc, timeout=240):
    deadline = time.time() + timeout
    while not os.path.exists(path):
        assert proc.poll() is None, f"the run ended early with code {proc.returncode}"
        assert time.time() < deadline, f"{path} did not appear"
        time.sleep(0.05)


def test_sigterm_saves_a_checkpoint_that_resumes_bit_identical(reference, tiny_dataset, tmp_path):
    """A real signal from outside, at whatever step the subprocess has reached (exit code 143)."""
    signum = signal.SIGTERM
    script = tmp_path / "slow_main.py"
    script.write_text(SLOW_MAIN)
    argv = [sys.executable, str(script), "--data_root", tiny_dataset, "--output_dir", str(tmp_path), "--run_name",
            "sig", *RUN_FLAGS]
    with open(tmp_path / "log.txt", "w") as log:
        proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, cwd=tmp_path, env=subprocess_env())
        try:
            wait_for(tmp_path / "sig" / "checkpoint-2", proc)
            proc.send_signal(signum)
            code = proc.wait(timeout=120)
        finally:
            proc.kill()
    log = (tmp_path / "log.txt").read_text()
    assert code == 128 + signum, log[-2000:]
    assert "resumable checkpoint saved" in log and "Traceback" not in log, log[-2000:]
    folder = latest_checkpoint(str(tmp_path / "sig"))
    state = load_training_state(folder)
    assert 2 < state["step"] < 10  # stopped early, after the signal
    report = run(tiny_dataset, tmp_path, "sig", "--resume_from_checkpoint", "latest")
    assert_same_run(report, reference, tmp_path / "sig")


def test_sigint_saves_at_the_step_boundary_and_resumes_bit_identical(reference, tiny_dataset, tmp_path, monkeypatch):
    """Ctrl-C in the 2nd batch of epoch 2 (in-process, so the step is known): that step completes, checkpoint-7 is
    written, the run stops with exit code 130; resuming it matches the uninterrupted run."""
    original, batches = train_code.forward_backward, []

    def interrupted(*args, **kwargs):
        batches.append(1)
        if len(batches) == 7:
            os.kill(os.getpid(), signal.SIGINT)
        return original(*args, **kwargs)
    monkeypatch.setattr(train_code, "forward_backward", interrupted)
    with pytest.raises(TrainingInterrupted, match=r"SIGINT: resumable checkpoint saved at .*checkpoint-7; continue "
                                                  r"with --resume_from_checkpoint latest --run_name int") as stop:
        run(tiny_dataset, tmp_path, "int")
    assert stop.value.exit_code == 130 and len(batches) == 7
    assert load_training_state(str(tmp_path / "int" / "last"))["batch"] == 2
    monkeypatch.undo()
    report = run(tiny_dataset, tmp_path, "int", "--resume_from_checkpoint", "latest")
    assert_same_run(report, reference, tmp_path / "int")


KILLED_IN_SAVE = """
import os, sys, time
import main
from videolab.cli import run_cli
from videolab.core import checkpoints as checkpointing
original, saves = checkpointing.commit_folder, []
def commit(tmp, folder):  # the second resumable save hangs with its files written, before the rename
    if os.path.basename(folder).startswith("checkpoint-"):
        saves.append(folder)
        if len(saves) == 2:
            open(os.environ["MARKER"], "w").close()
            time.sleep(600)
    return original(tmp, folder)
checkpointing.commit_folder = commit
sys.exit(run_cli(main.main))
"""


def test_kill_9_during_save_keeps_previous_checkpoint(tiny_dataset, tmp_path):
    script, marker = tmp_path / "killed.py", tmp_path / "in_save"
    script.write_text(KILLED_IN_SAVE)
    argv = [sys.executable, str(script), "--data_root", tiny_dataset, "--output_dir", str(tmp_path), "--run_name",
            "k", *RUN_FLAGS, "--epochs", "1"]
    with open(tmp_path / "log.txt", "w") as log:
        proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, cwd=tmp_path,
                                env=dict(subprocess_env(), MARKER=str(marker)))
        try:
            wait_for(marker, proc)
            proc.send_signal(signal.SIGKILL)
            assert proc.wait(timeout=60) == -signal.SIGKILL
        finally:
            proc.kill()
    run_dir = tmp_path / "k"
    leftovers = [d for d in os.listdir(run_dir) if d.startswith(".checkpoint-4.tmp")]
    assert leftovers, "the kill did not land inside the save"
    assert latest_checkpoint(str(run_dir)) == str(run_dir / "checkpoint-2")
    verify_checkpoint(str(run_dir / "last"))  # every file loads safely
    assert load_training_state(str(run_dir / "last"))["step"] == 2
    report = run(tiny_dataset, tmp_path, "k", "--epochs", "1", "--resume_from_checkpoint", "latest")
    assert report["history"][-1]["step"] == 5
    assert not [d for d in os.listdir(run_dir) if ".tmp" in d]  # the next save cleaned up


# ----------------------------------------------------------------------------------------------------------------
# refused checkpoints
# ----------------------------------------------------------------------------------------------------------------
class Payload:
    """Unpickling this runs os.mkdir(path): what a malicious checkpoint would do."""

    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return os.mkdir, (self.path,)


@pytest.mark.parametrize("name", [STATE_FILE, "optimizer.bin", "random_states_0.pkl"])
def test_malicious_pickle_is_refused_without_running_it(reference, tiny_dataset, tmp_path, name):
    folder = tmp_path / "ckpt"
    shutil.copytree(reference["run_dir"] / "checkpoint-2", folder)
    pwned = tmp_path / "pwned"
    torch.save({"state": Payload(str(pwned))}, folder / name)
    with pytest.raises(CheckpointError, match=rf"refused to load .*{name}: it asks to import posix\.mkdir"):
        run(tiny_dataset, tmp_path, "evil", "--resume_from_checkpoint", str(folder))
    assert not pwned.exists(), "the payload ran"
    torch.load(folder / name, weights_only=False)  # the control: loaded unsafely, the payload does run
    assert pwned.is_dir()


@pytest.mark.parametrize("name,damage", [(WEIGHTS_FILE, "truncate"), (WEIGHTS_FILE, "random"),
                                         (STATE_FILE, "truncate"), (STATE_FILE, "random"),
                                         ("optimizer.bin", "truncate"), ("run_config.json", "truncate")])
def test_corrupt_checkpoint_files_give_clear_errors(reference, tmp_path, name, damage):
    folder = tmp_path / "ckpt"
    shutil.copytree(reference["run_dir"] / "checkpoint-2", folder)
    data = (folder / name).read_bytes()
    (folder / name).write_bytes(data[: len(data) // 2] if damage == "truncate" else os.urandom(len(data)))
    with pytest.raises(CheckpointError, match=rf"{name}.*(truncated or corrupt|not written by torch.save, or corrupt)"):
        verify_checkpoint(str(folder))
    if name == WEIGHTS_FILE:  # inference and --eval_only read the weights directly
        with pytest.raises(CheckpointError, match="truncated or corrupt"):
            load_weights(str(folder))


def test_incompatible_resume_is_refused_naming_the_difference(reference, tiny_dataset, tmp_path):
    mid_epoch, boundary = reference["run_dir"] / "checkpoint-2", reference["run_dir"] / "checkpoint-5"
    with pytest.raises(CheckpointError, match="vision_model='videomae' there, 'vit_small_patch16_224' here"):
        run(tiny_dataset, tmp_path, "x", "--resume_from_checkpoint", str(boundary), "--vision_model",
            "vit_small_patch16_224", "--model_size", "tiny")
    import dummy_data
    other = dummy_data.write_dataset(str(tmp_path / "six"), num_classes=6, train_per_class=2, test_per_class=1,
                                     num_frames=4, size=32, seed=1, quiet=True)
    with pytest.raises(CheckpointError, match=r"4 classes .* there, 6 classes .* here"):
        run(other, tmp_path, "x", "--resume_from_checkpoint", str(boundary))
    with pytest.raises(CheckpointError, match=r"batch_size=4 there, 5 here \(mid-epoch checkpoint\)"):
        run(tiny_dataset, tmp_path, "x", "--resume_from_checkpoint", str(mid_epoch), "--batch_size", "5")
    with pytest.raises(CheckpointError, match="no resumable checkpoint in run 'nothing'"):
        run(tiny_dataset, tmp_path, "nothing", "--resume_from_checkpoint", "latest")


# ----------------------------------------------------------------------------------------------------------------
# non-finite losses
# ----------------------------------------------------------------------------------------------------------------
@pytest.fixture
def poisoned(monkeypatch):
    """Items 9-12 the training loader reads (the 3rd batch of 4) become NaN videos."""
    original, calls = SyntheticVideoDataset.__getitem__, []

    def getitem(self, i):
        item = original(self, i)
        calls.append(i)
        if 9 <= len(calls) <= 12:
            item["pixel_values"] = torch.full_like(item["pixel_values"], float("nan"))
        return item
    monkeypatch.setattr(SyntheticVideoDataset, "__getitem__", getitem)


def test_nan_loss_stops_before_the_update_keeping_the_last_checkpoint(poisoned, tiny_dataset, tmp_path):
    with pytest.raises(RunError, match=r"non-finite training loss \(nan\) at epoch 1, batch 3 \(after step 2\).*"
                                       r"last good checkpoint is .*checkpoint-2"):
        run(tiny_dataset, tmp_path, "nan", "--save_steps", "1")
    run_dir = tmp_path / "nan"
    assert latest_checkpoint(str(run_dir)) == str(run_dir / "checkpoint-2")
    assert not (run_dir / "checkpoint-3").exists()
    assert all(torch.isfinite(w).all() for w in load_weights(str(run_dir / "last")).values())


def test_nan_loss_skip_counts_the_batch_and_finishes(poisoned, tiny_dataset, tmp_path):
    report = run(tiny_dataset, tmp_path, "skip", "--nan_policy", "skip", "--epochs", "1", "--save_steps", "1",
                 "--save_total_limit", "2")
    assert report["history"][0]["skipped_batches"] == 1 and report["history"][0]["step"] == 5
    assert torch.isfinite(torch.tensor(report["history"][0]["train_loss"]))
    run_dir = tmp_path / "skip"
    assert all(torch.isfinite(w).all() for w in load_weights(str(run_dir / "last")).values())
    # --save_total_limit 2: the newest two resumable checkpoints, plus best/
    assert sorted(d for d in os.listdir(run_dir) if d.startswith("checkpoint-")) == ["checkpoint-4", "checkpoint-5"]
    assert os.readlink(run_dir / "last") == "checkpoint-5" and (run_dir / "best" / WEIGHTS_FILE).is_file()


def test_nan_weights_are_never_written_over_a_good_checkpoint(tmp_path):
    folder = str(tmp_path / "ckpt")
    save_checkpoint(folder, {"w": torch.ones(3)}, {"settings": {}})
    before = open(os.path.join(folder, WEIGHTS_FILE), "rb").read()
    with pytest.raises(RunError, match="NaN/inf"):
        save_checkpoint(folder, {"w": torch.tensor([1.0, float("nan"), 2.0])}, {"settings": {}})
    assert open(os.path.join(folder, WEIGHTS_FILE), "rb").read() == before
    assert os.listdir(tmp_path) == ["ckpt"]
