"""Issue 23: where a run's time goes (the phase breakdown in eval.json), the GPU check's dry mode, and bf16
training that leaves chance."""
import json
import os

import main as train_main
from conftest import TINY_FLAGS
from videolab.core.checkpoints import load_training_state


def test_run_records_where_its_training_time_goes(tiny_dataset, tmp_path):
    report = train_main.main(["--data_root", tiny_dataset, "--output_dir", str(tmp_path), "--run_name", "timed",
                              "--epochs", "2", "--batch_size", "4", *TINY_FLAGS, "--quiet", "--speed_repeats", "1"])
    breakdown = report["train_time_breakdown"]
    assert set(breakdown) == {"data", "step", "validation", "checkpoint", "other"}
    assert all(v >= 0 for v in breakdown.values()) and breakdown["step"] > 0 and breakdown["checkpoint"] > 0
    assert abs(sum(breakdown.values()) - report["train_seconds"]) < 0.5  # the phases and the rest cover the run
    with open(os.path.join(tmp_path, "timed", "eval.json")) as fh:
        assert json.load(fh)["train_time_breakdown"] == breakdown
    state = load_training_state(os.path.join(tmp_path, "timed", "last"))
    assert state["phases"]["step"] > 0  # saved with the training state, so a resumed run keeps adding to it


def test_gpu_check_dry_mode_runs_every_part_on_cpu(tmp_path):
    """benchmarks/gpu_check.py --dry: tiny shapes on the CPU, every part reports ok, one JSON."""
    import sys
    sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "benchmarks"))
    import gpu_check
    out = tmp_path / "dry.json"
    results = gpu_check.main(["--dry", "--json", str(out)])
    with open(out) as fh:
        assert json.load(fh)["dry"] is True
    for name in ("cuda_tests", "mfu", "loader", "ddp"):
        assert results[name]["status"] == "ok", results[name].get("traceback")
    assert results["cuda_tests"]["checked_ids"] == gpu_check.CUDA_TESTS
    runs = [r for m in results["mfu"]["models"].values() for r in m["runs"].values()]
    assert runs and all(r["achieved_tflops"] > 0 and r["clips_per_s"] > 0 for r in runs)
    assert all(r["clips_per_s"] > 0 for r in results["loader"]["workers"].values())
    assert results["ddp"]["gradients_equal_on_all_ranks"] is True and results["ddp"]["backend"] == "gloo"


def test_gpu_check_names_a_missing_cuda_test():
    import sys
    sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "benchmarks"))
    import gpu_check
    import pytest
    with pytest.raises(ValueError, match="no such test"):
        gpu_check.check_test_id("tests/test_cuda.py::test_that_was_renamed")
