"""Evaluation reports: every eval.json field on a tiny run, the results table (one row per run, safe under
concurrent appends), PNG plots, --eval_only on a saved checkpoint, and the optional trackers."""
import csv
import io
import json
import multiprocessing
import os
import re
import shutil
import time

import pytest
from PIL import Image

import main as train_main
import visualize_results
from videolab.core import runtime
from videolab.evaluation import plots
from videolab.evaluation import reports as reporting
from conftest import ROOT, TINY_FLAGS
from videolab.evaluation.reports import SUMMARY_COLUMNS, append_summary_row, git_state, library_versions
from videolab.cli import run_cli
from videolab.core.errors import UsageError
from videolab.data.synthetic import read_annotations, read_class_names

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
CLASSIFIER_PLOTS = ("training_curves.png", "confusion_matrix.png", "per_class_accuracy.png")
VIDEOMAE_ATTENTION = ("attention_rollout.png", "attention.json")  # issue 22: the backbone's attention rollout
EVAL_FIELDS = {"run_dir", "mode", "task", "split", "checkpoint", "finished", "num_samples", "top1", "top5",
               "mean_class_accuracy", "loss", "views", "params_total", "params_trainable", "latency", "throughput",
               "peak_memory", "checkpoint_epoch", "train_seconds", "eval_seconds", "fusion", "pretrained",
               "weights_source", "hf_hub_offline", "class_names", "per_class_accuracy", "confusion_matrix",
               "history", "settings", "environment"}


@pytest.fixture(scope="module")
def report_run(tiny_dataset, tmp_path_factory):
    """Tiny VideoMAE, 2 epochs of 3 steps with validation (20 train / 4 val / 8 test clips), then the test report."""
    out = tmp_path_factory.mktemp("report_runs")
    summary = str(out / "summary.csv")
    report = train_main.main(["--data_root", tiny_dataset, "--output_dir", str(out), "--run_name", "tiny",
                              "--epochs", "2", "--batch_size", "8", *TINY_FLAGS, "--quiet", "--summary_csv", summary,
                              "--speed_repeats", "3"])
    return dict(report=report, run_dir=str(out / "tiny"), summary=summary, data=tiny_dataset)


def read_csv(path):
    with open(path, newline="") as fh:
        text = fh.read()
    return text, list(csv.DictReader(io.StringIO(text)))


def assert_valid_png(path, min_side=300, max_side=4000):
    with open(path, "rb") as fh:
        assert fh.read(8) == PNG_SIGNATURE, f"{path} is not a PNG file"
    with Image.open(path) as img:
        img.verify()
    with Image.open(path) as img:
        width, height = img.size
        lo, hi = img.convert("L").getextrema()
    assert min_side <= width <= max_side and min_side <= height <= max_side, (path, img.size)
    assert hi - lo > 100, f"{path} looks blank"


# ----------------------------------------------------------------------------------------------------------------
# eval.json
# ----------------------------------------------------------------------------------------------------------------
def test_eval_json_has_every_field_with_sane_values(report_run):
    saved = json.load(open(os.path.join(report_run["run_dir"], "eval.json")))
    assert EVAL_FIELDS <= set(saved), EVAL_FIELDS - set(saved)
    assert saved["top1"] == report_run["report"]["top1"]
    assert (saved["mode"], saved["task"], saved["split"]) == ("train", "classification", "test")
    best_epoch = max(saved["history"], key=lambda r: r["val_top1"])["epoch"]  # the first epoch with the best score
    assert saved["checkpoint"].endswith(os.path.join("tiny", "best")) and saved["checkpoint_epoch"] == best_epoch

    names = read_class_names(report_run["data"])
    confusion, per_class = saved["confusion_matrix"], saved["per_class_accuracy"]
    assert saved["class_names"] == names and list(per_class) == names
    assert sum(map(sum, confusion)) == saved["num_samples"] == 8
    assert saved["top1"] == pytest.approx(sum(confusion[i][i] for i in range(4)) / 8)
    assert saved["top5"] == 1.0  # 4 classes: top-5 is clipped to top-4, which always holds the label
    for i, name in enumerate(names):
        assert per_class[name] == pytest.approx(confusion[i][i] / sum(confusion[i]))
    assert saved["mean_class_accuracy"] == pytest.approx(sum(per_class.values()) / 4)

    assert saved["params_total"] == saved["params_trainable"] > 10_000  # full training: every weight trains
    latency, throughput = saved["latency"], saved["throughput"]
    assert latency["batch_size"] == 1 and latency["repeats"] == 3 and latency["statistic"] == "median"
    assert 0 < latency["ms_per_clip"] < 10_000
    assert throughput["batch_size"] == 8 and throughput["clips_per_s"] > 0
    memory = saved["peak_memory"]
    assert 50 < memory["cpu_peak_rss_mib"] < 64 * 1024 and memory["gpu_peak_allocated_mib"] is None
    assert saved["views"]["protocol"] == "single-view" and (saved["views"]["clips"], saved["views"]["crops"]) == (1, 1)

    assert saved["pretrained"] is False and saved["hf_hub_offline"] is True  # conftest sets HF_HUB_OFFLINE=1
    assert saved["settings"]["num_frames"] == 4 and len(saved["history"]) == 2
    env = saved["environment"]
    assert env["versions"] == library_versions() and env["versions"]["torch"] and env["versions"]["peft"]
    commit = env["git"]["commit"]
    if os.path.exists(os.path.join(ROOT, ".git")):
        assert re.fullmatch(r"[0-9a-f]{40}", commit) and env["git"]["dirty"] in (True, False)
    else:
        assert commit is None


def test_git_state_is_none_outside_a_checkout_or_without_git(tmp_path, monkeypatch):
    assert git_state(str(tmp_path)) == dict(commit=None, dirty=None)
    monkeypatch.setenv("PATH", str(tmp_path))  # no git executable to be found
    assert git_state(ROOT) == dict(commit=None, dirty=None)


# ----------------------------------------------------------------------------------------------------------------
# results table
# ----------------------------------------------------------------------------------------------------------------
def test_summary_csv_gets_one_row_per_run(report_run):
    text, rows = read_csv(report_run["summary"])
    report = report_run["report"]
    assert text.splitlines()[0].split(",") == list(SUMMARY_COLUMNS) and len(rows) == 1
    row = rows[0]
    assert (row["run_name"], row["mode"], row["vision_model"], row["fusion"], row["lora_vision"]) == \
        ("tiny", "train", "videomae", "none", "False")
    assert (int(row["num_frames"]), int(row["image_size"])) == (4, 32)
    assert int(row["checkpoint_epoch"]) == report["checkpoint_epoch"]
    assert float(row["top1"]) == pytest.approx(report["top1"]) and float(row["top5"]) == 1.0
    assert int(row["params_trainable"]) == report["params_trainable"]
    assert float(row["latency_ms_per_clip"]) == pytest.approx(report["latency"]["ms_per_clip"])
    assert float(row["peak_rss_mib"]) == pytest.approx(report["peak_memory"]["cpu_peak_rss_mib"])
    assert row["run_dir"] == report_run["run_dir"] and row["CIDEr"] == ""


def _slowed_after_first_call(read_header, seconds=0.2):
    calls = []

    def slowed(path):
        header = read_header(path)
        if not calls:
            calls.append(path)
            time.sleep(seconds)
        return header
    return slowed


def _append_rows(path, writer, count, barrier):
    # Between reading the header and appending lie microseconds; widened to 0.2 s (in this child process only),
    # writers without the lock would all see a new file and all write the header, every time.
    reporting._read_header = _slowed_after_first_call(reporting._read_header)
    barrier.wait()  # every process starts appending at the same moment
    for i in range(count):
        append_summary_row(path, dict(run_name=f"writer{writer}", num_samples=i, top1=0.5,
                                      run_dir="/a/path/with,comma/and \"quotes\""))


def test_concurrent_appends_keep_one_header_and_whole_rows(tmp_path):
    path = str(tmp_path / "results" / "summary.csv")
    writers, per_writer = 6, 15
    context = multiprocessing.get_context("fork")  # children only write files; nothing of torch runs in them
    barrier = context.Barrier(writers)
    processes = [context.Process(target=_append_rows, args=(path, w, per_writer, barrier)) for w in range(writers)]
    for p in processes:
        p.start()
    for p in processes:
        p.join(60)
    assert [p.exitcode for p in processes] == [0] * writers
    text, rows = read_csv(path)
    assert text.count("finished,run_name,") == 1  # the header, exactly once
    assert len(rows) == writers * per_writer
    assert all(list(row) == list(SUMMARY_COLUMNS) and None not in row.values() for row in rows)
    assert {(r["run_name"], int(r["num_samples"])) for r in rows} == \
        {(f"writer{w}", i) for w in range(writers) for i in range(per_writer)}
    assert {r["run_dir"] for r in rows} == {"/a/path/with,comma/and \"quotes\""}


def test_table_with_older_columns_keeps_its_header_and_says_what_was_left_out(tmp_path, capsys):
    path = tmp_path / "summary.csv"
    path.write_text("run_name,top1\nold,0.25\n")
    append_summary_row(str(path), dict(run_name="new", top1=0.75, top5=1.0))
    assert path.read_text() == "run_name,top1\nold,0.25\nnew,0.75\n"
    assert "not recorded: finished, mode" in capsys.readouterr().err


# ----------------------------------------------------------------------------------------------------------------
# plots
# ----------------------------------------------------------------------------------------------------------------
def test_training_writes_readable_plots(report_run):
    folder = os.path.join(report_run["run_dir"], "plots")
    assert sorted(os.listdir(folder)) == sorted(CLASSIFIER_PLOTS + VIDEOMAE_ATTENTION)
    for name in CLASSIFIER_PLOTS:
        assert_valid_png(os.path.join(folder, name))


def test_visualize_results_script_redraws_plots_and_refuses_bad_run_dirs(report_run, tmp_path, capsys):
    written = visualize_results.main(["--run_dir", report_run["run_dir"], "--out_dir", str(tmp_path / "p")])
    assert sorted(os.path.basename(p) for p in written) == sorted(CLASSIFIER_PLOTS)
    for path in written:
        assert_valid_png(path)
    capsys.readouterr()
    for argv, needle in ((["--run_dir", str(tmp_path / "missing")], "is not a folder"),
                         (["--run_dir", str(tmp_path / "p")], "nothing to plot"),
                         ([], "--run_dir")):
        assert run_cli(visualize_results.main, argv) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and needle in err[0], err


def test_caption_sheet_shows_frames_and_both_captions(tiny_dataset, tmp_path):
    records = read_annotations(tiny_dataset, "test")
    examples = [dict(video=f"test/{r['path']}", generated=f"generated caption {i}", reference=r["caption"])
                for i, r in enumerate(records)]
    examples[0]["video"] = "test/no_such_video.pt"  # a missing video gets a note, not a crash
    fig = plots.plot_caption_examples(examples, tiny_dataset, "run cap")
    texts = [t.get_text() for ax in fig.axes for t in ax.texts]
    shown = examples[::len(examples) // plots.MAX_CAPTION_EXAMPLES][:6]
    assert len(fig.axes) == 6 * (plots.FRAMES_PER_EXAMPLE + 1)
    for example in shown:
        assert f"generated: {example['generated']}" in texts
        assert any(t.replace("\n", " ") == f"reference: {example['reference']}" for t in texts)
    assert any(t.startswith("frames not found") for t in texts)
    images = sum(len(ax.images) for ax in fig.axes)
    assert images == 5 * plots.FRAMES_PER_EXAMPLE  # every shown video but the missing one
    path = str(tmp_path / "captions.png")
    fig.savefig(path)
    assert_valid_png(path)


# ----------------------------------------------------------------------------------------------------------------
# --eval_only
# ----------------------------------------------------------------------------------------------------------------
def test_eval_only_reproduces_the_test_report_from_a_checkpoint(report_run, tmp_path):
    run_dir = str(tmp_path / "copied_run")  # a copy, so the module's run folder keeps its own eval.json
    shutil.copytree(report_run["run_dir"], run_dir, ignore=shutil.ignore_patterns("eval.json", "plots"))
    summary = str(tmp_path / "summary.csv")
    result = train_main.main(["--eval_only", "True", "--checkpoint", os.path.join(run_dir, "best"), "--quiet",
                              "--data_root", report_run["data"], "--summary_csv", summary, "--speed_repeats", "1"])
    trained = report_run["report"]
    assert result["mode"] == "eval_only" and result["train_seconds"] is None
    for key in ("checkpoint_epoch", "top1", "top5", "confusion_matrix", "per_class_accuracy", "params_total",
                "num_samples"):
        assert result[key] == trained[key], key
    assert json.load(open(os.path.join(run_dir, "eval.json")))["checkpoint"] == os.path.join(run_dir, "best")
    assert sorted(os.listdir(os.path.join(run_dir, "plots"))) == sorted(CLASSIFIER_PLOTS + VIDEOMAE_ATTENTION)
    _, rows = read_csv(summary)
    assert [(r["mode"], r["run_name"]) for r in rows] == [("eval_only", "copied_run")]


@pytest.mark.parametrize("checkpoint,needle", [(None, "needs --checkpoint"), ("missing", "does not exist"),
                                               ("empty", "is not a checkpoint")])
def test_eval_only_with_a_bad_checkpoint_is_one_line_exit_2(tmp_path, capsys, checkpoint, needle):
    (tmp_path / "empty").mkdir()
    argv = ["--eval_only", "True"] + (["--checkpoint", str(tmp_path / checkpoint)] if checkpoint else [])
    assert run_cli(train_main.main, argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and needle in err[0], err


def test_eval_only_refuses_a_dataset_with_other_classes(report_run, tmp_path):
    import dummy_data
    other = str(tmp_path / "three_classes")
    dummy_data.write_dataset(other, num_classes=3, train_per_class=1, test_per_class=1, num_frames=4, size=32,
                             quiet=True)
    with pytest.raises(UsageError, match="was trained on"):
        train_main.main(["--eval_only", "True", "--checkpoint", os.path.join(report_run["run_dir"], "best"),
                         "--data_root", other, "--quiet"])


# ----------------------------------------------------------------------------------------------------------------
# trackers
# ----------------------------------------------------------------------------------------------------------------
def test_missing_tracker_package_says_how_to_install_it(monkeypatch):
    monkeypatch.setitem(runtime.TRACKER_INSTALLED, "wandb", lambda: False)
    with pytest.raises(UsageError, match="pip install wandb"):
        train_main.main(["--report_to", "wandb"])


def test_tensorboard_gets_epoch_and_test_metrics(tiny_dataset, tmp_path):
    pytest.importorskip("tensorboard", reason="optional: pip install tensorboard to test --report_to tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    report = train_main.main(["--data_root", tiny_dataset, "--output_dir", str(tmp_path), "--run_name", "tb",
                              "--epochs", "1", "--max_steps", "2", "--batch_size", "8", *TINY_FLAGS, "--quiet",
                              "--report_to", "tensorboard", "--summary_csv", "none", "--speed_repeats", "1"])
    events = EventAccumulator(str(tmp_path / "tb" / "tensorboard"))
    events.Reload()
    assert [(e.step, round(e.value, 4)) for e in events.Scalars("train_loss")] == \
        [(2, round(report["history"][0]["train_loss"], 4))]
    assert events.Scalars("test/top1")[0].value == pytest.approx(report["top1"])
    assert "val_top1" in events.Tags()["scalars"]
