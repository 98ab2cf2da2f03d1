"""CUDA-only checks (issue 23), run by benchmarks/gpu_check.py on a GPU machine; skipped elsewhere. The mamba-ssm
kernel comparisons live beside their PyTorch references (test_ssm.py, test_ssd.py)."""
import pytest
import torch

import main as train_main
from conftest import TINY_FLAGS

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


def run(tiny_dataset, tmp_path, precision: str) -> dict:
    return train_main.main(["--data_root", tiny_dataset, "--output_dir", str(tmp_path), "--run_name", precision,
                            "--epochs", "3", "--batch_size", "4", "--device", "cuda", "--mixed_precision", precision,
                            *TINY_FLAGS, "--quiet", "--speed_repeats", "1"])


def test_fp16_with_loss_scaling_trains_on_cuda(tiny_dataset, tmp_path):
    """accelerate's GradScaler: the run finishes with finite losses that fall (a skipped overflow step is not an
    update and does not advance the schedule)."""
    report = run(tiny_dataset, tmp_path, "fp16")
    losses = [h["train_loss"] for h in report["history"]]
    assert all(torch.isfinite(torch.tensor(losses))) and losses[-1] < losses[0]
    assert report["settings"]["mixed_precision"] == "fp16"


def test_bf16_trains_on_cuda(tiny_dataset, tmp_path):
    report = run(tiny_dataset, tmp_path, "bf16")
    losses = [h["train_loss"] for h in report["history"]]
    assert all(torch.isfinite(torch.tensor(losses))) and losses[-1] < losses[0]
