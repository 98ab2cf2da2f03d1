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
