"""Hostile and conflicting inputs (issue 19): every one gets one clear line and its exit code, and nothing is lost.

Each case runs the real command line in-process (``run_cli(main.main, argv)`` / ``run_cli(inference.main, argv)``;
real processes only for the lock), and asserts: the exit code, exactly one error line that names the input, no
traceback, no file outside the run folder changed and no earlier run lost a file (``Snapshot``). Most cases stop
before any training: they cost well under a second each. One tiny run (1 step) is trained per module and copied
where a case damages it.
"""
import errno
import json
import os
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

import inference
import main as train_main
from conftest import ROOT, TINY_FLAGS
from videolab.cli import run_cli
from videolab.core import inputs
from videolab.core.checkpoints import CONFIG_FILE, WEIGHTS_FILE
from videolab.core.errors import UsageError
from videolab.core.files import default_mode
from videolab.core.hub import check_weights_path
from videolab.core.runs import LOCK_FILE, run_lock
from videolab.core.settings import Settings, settings_from_dict
from videolab.data.synthetic import as_uint8_clip, load_clip_file
from videolab.data.video_io import VideoError

RUN = [*TINY_FLAGS, "--epochs", "1", "--max_steps", "1", "--batch_size", "8", "--quiet", "--speed_repeats", "0",
       "--summary_csv", "none", "--seed", "0"]
ERROR_MARKS = (": error: ", ": stopped: ", ": incomplete: ")


# ----------------------------------------------------------------------------------------------------------------
# helpers
# ----------------------------------------------------------------------------------------------------------------
class Snapshot:
    """Every file under ``root`` with its size, mtime and mode: what a failed command must leave as it was."""

    def __init__(self, root, skip=()):
        self.root, self.skip = str(root), [os.path.abspath(str(s)) for s in skip]
        self.files = self.take()

    def take(self) -> dict:
        found = {}
        for folder, dirs, files in os.walk(self.root):
            if any(os.path.abspath(folder).startswith(s) for s in self.skip):
                continue
            for name in files + [d for d in dirs if os.path.islink(os.path.join(folder, d))]:
                if name == LOCK_FILE:  # a run folder's lock (rewritten by every command that takes it)
                    continue
                path = os.path.join(folder, name)
                st = os.lstat(path)
                found[os.path.relpath(path, self.root)] = (st.st_size, st.st_mtime_ns, st.st_mode)
        return found

    def assert_unchanged(self, allowed=()):
        now = self.take()
        allowed = set(allowed)
        lost = sorted(set(self.files) - set(now) - allowed)
        changed = sorted(k for k in set(self.files) & set(now) if self.files[k] != now[k] and k not in allowed)
        added = sorted(k for k in set(now) - set(self.files) if k not in allowed)
        assert not lost, f"files lost: {lost[:5]}"
        assert not changed, f"files changed: {changed[:5]}"
        assert not added, f"files added: {added[:5]}"


def run(script, argv, capsys):
    """(exit code, the one error line) of ``script``'s command line; asserts no traceback and a single error
    line."""
    capsys.readouterr()
    code = run_cli(script.main, [str(a) for a in argv])
    captured = capsys.readouterr()
    err = captured.err
    assert "Traceback" not in err and "Traceback" not in captured.out, err[-2000:]
    lines = [line for line in err.splitlines() if any(mark in line for mark in ERROR_MARKS)]
    if code == 0:
        assert not lines, lines
        return code, ""
    assert len(lines) == 1, err[-2000:]
    assert len(lines[0]) < 700, f"message too long ({len(lines[0])} chars): {lines[0][:300]}"
    return code, lines[0]


def expect(script, argv, capsys, code, *names):
    """Run and assert the exit code and that the error line names each of ``names``."""
    got, line = run(script, argv, capsys)
    assert got == code, f"exit {got}, expected {code}: {line}"
    for name in names:
        assert str(name) in line, f"{name!r} not in: {line}"
    return line


def write(path, text, mode="w"):
    path = str(path)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, mode) as fh:
        fh.write(text)
    return path


def copy_run(base, tmp_path, name="run"):
    out = tmp_path / "out"
    shutil.copytree(base, out / name, symlinks=True)
    return out, out / name


def edit_run_config(folder, change):
    path = os.path.join(folder, CONFIG_FILE)
    with open(path) as fh:
        config = json.load(fh)
    change(config)
    with open(path, "w") as fh:
        json.dump(config, fh)


# ----------------------------------------------------------------------------------------------------------------
# fixtures: one tiny trained run, and a data copy to damage
# ----------------------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def trained(tiny_dataset, tmp_path_factory):
    """A 1-step run in <out>/base (best/, last -> checkpoint-1, eval.json)."""
    out = tmp_path_factory.mktemp("hostile_runs")
    train_main.main(["--data_root", tiny_dataset, "--output_dir", str(out), "--run_name", "base", *RUN])
    return dict(out=out, run=out / "base", data=tiny_dataset)


@pytest.fixture
def data_copy(tiny_dataset, tmp_path):
    target = tmp_path / "data"
    shutil.copytree(tiny_dataset, target)
    return target


@pytest.fixture
def frames(tmp_path):
    """Two frame folders of 4 PNG frames at 32 px (what create_dummy.py writes)."""
    from PIL import Image
    root = tmp_path / "frames"
    rng = np.random.default_rng(0)
    for video in ("a", "b"):
        os.makedirs(root / video)
        for i in range(4):
            Image.fromarray(rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)).save(root / video / f"f{i}.png")
    return root


# ----------------------------------------------------------------------------------------------------------------
# 1. numbers: finite, in range, never an overflow
# ----------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("flag,value", [
    ("lr", "nan"), ("lr", "inf"), ("max_bad_video_fraction", "nan"), ("warmup_ratio", "-inf"),
    ("fusion_dropout", "NaN"), ("label_smoothing", "1e309"), ("epochs", "1e400"), ("num_frames", "1e3000"),
    ("epochs", "99999999999999999999999"), ("seed", str(2**40)), ("batch_size", "-1"), ("top_k", "0x10"),
    ("save_steps", str(10**30)), ("lr_language_model", "nan")])
def test_numbers_must_be_finite_and_in_range(flag, value, in_tmp, capsys):
    snapshot = Snapshot(in_tmp)
    expect(train_main, [f"--{flag}", value, "--output_dir", in_tmp / "out"], capsys, 2, f"--{flag}")
    snapshot.assert_unchanged()


@pytest.mark.parametrize("text,flag", [("lr: .nan\n", "lr"), ("epochs: 1.0e+400\n", "epochs"),
                                       ("max_bad_video_fraction: .inf\n", "max_bad_video_fraction"),
                                       ("seed: 123456789012345678901234567890\n", "seed")])
def test_yaml_numbers_must_be_finite_and_in_range(text, flag, in_tmp, capsys):
    expect(train_main, ["--config", write(in_tmp / "c.yaml", text)], capsys, 2, flag)


# ----------------------------------------------------------------------------------------------------------------
# 2. settings files: limits, encodings, shapes, types
# ----------------------------------------------------------------------------------------------------------------
BILLION_LAUGHS = "a: &a [x, x, x, x, x, x, x, x, x]\n" + "".join(
    f"{chr(98 + i)}: &{chr(98 + i)} [{', '.join(['*' + chr(97 + i)] * 9)}]\n" for i in range(8)) + "lr: *i\n"


BAD_SETTINGS = [
    ("alias bomb", BILLION_LAUGHS, ["c.yaml", "100,000"]),
    ("many aliases", "a: &a 1\n" + "".join(f"k{i}: *a\n" for i in range(150)), ["c.yaml", "aliases"]),
    ("recursive alias", "lr: &a [*a]\n", ["c.yaml"]),
    ("not utf-8", b"lr: 0.1\nrun_name: \xff\xfe\n", ["c.yaml", "UTF-8"]),
    ("utf-16", "lr: 0.1\n".encode("utf-16"), ["c.yaml", "UTF-8"]),
    ("not yaml", "lr: [0.1\n", ["c.yaml", "not valid YAML"]),
    ("a list", "- lr\n- 0.1\n", ["c.yaml", "mapping"]),
    ("a scalar", "just text\n", ["c.yaml", "mapping"]),
    ("python tag", "lr: !!python/object/apply:os.system [echo hacked]\n", ["c.yaml", "not valid YAML"]),
    ("wrong type list", "epochs: [1, 2]\n", ["--epochs", "expects an integer"]),
    ("wrong type mapping", "lr: {a: 1}\n", ["lr"]),
    ("wrong bool", "use_vlm: maybe\n", ["--use_vlm", "boolean"]),
    ("huge unknown key", "x" * 900 + ": 1\n", ["unknown key", "characters"]),
    ("model not a mapping", "model: '{\"encoders\": {\"audio\": \"conv_transformer\"}}'\n", ["model", "mapping"]),
    ("allowlist from a file", "allowed_target_prefixes: compose,evil\n", ["allowed_target_prefixes", "command line"]),
    ("binary value", "run_name: !!binary aGVsbG8=\n", ["c.yaml", "bytes value"]),
    ("set value", "run_name: !!set {a: null}\n", ["c.yaml", "set value"]),
    ("binary key in model section", "model: {encoders: {? !!binary aGVsbG8= : 1}}\n", ["c.yaml", "key", "bytes"]),
]


@pytest.mark.parametrize("name,content,names", BAD_SETTINGS, ids=[case[0] for case in BAD_SETTINGS])
def test_bad_settings_files(name, content, names, in_tmp, capsys):
    path = write(in_tmp / "c.yaml", content, "wb" if isinstance(content, bytes) else "w")
    snapshot = Snapshot(in_tmp)
    start = time.time()
    line = expect(train_main, ["--config", path], capsys, 2, *names)
    assert time.time() - start < 10, f"{name}: took {time.time() - start:.1f}s"
    assert "x, x, x, x, x, x, x, x, x, x" not in line  # never the expanded value
    snapshot.assert_unchanged()


def test_settings_file_over_the_size_limit(in_tmp, capsys, monkeypatch):
    monkeypatch.setattr(inputs, "MAX_FILE_BYTES", 1000)
    path = write(in_tmp / "big.yaml", "# padding\n" * 200)
    expect(train_main, ["--config", path], capsys, 2, "big.yaml", "over the limit")


@pytest.mark.parametrize("kind", ["missing", "folder"])
def test_settings_file_missing_or_a_folder(kind, in_tmp, capsys):
    path = in_tmp / "c.yaml"
    if kind == "folder":
        os.makedirs(path)
    expect(train_main, ["--config", path], capsys, 2, "c.yaml")


# ----------------------------------------------------------------------------------------------------------------
# 3. model sections: arguments checked against the builder, conflicts refused
# ----------------------------------------------------------------------------------------------------------------
AV = ["--dataset", "synthetic_av", *TINY_FLAGS, "--fusion_dim", "32", "--audio_seconds", "0.5"]


@pytest.mark.parametrize("section,names", [
    ("{encoders: {audio: {name: conv_transformer, dim: abc}}}", ["audio encoder", "'dim'", "int"]),
    ("{encoders: {audio: {name: conv_transformer, dim: -5}}}", ["audio encoder", "'dim'", ">="]),
    ("{encoders: {audio: {name: conv_transformer, dim: .nan}}}", ["audio encoder", "'dim'"]),
    ("{encoders: {audio: {name: conv_transformer, dimm: 4}}}", ["no argument 'dimm'", "did you mean"]),
    ("{encoders: {video: {name: backbone, model_size: huge}}}", ["model_size", "huge"]),
    ("{encoders: {audio: {_target_: audio.AudioEncoder, widht: 3}}}", ["audio.AudioEncoder", "widht", "signature"]),
    ("{encoders: {audio: conv_transformer}, fusion: {_target_: fusion.TransformerFusion, dim: 3}}",
     ["fusion.TransformerFusion", "'dim'", "set by the model"]),
    ("{encoders: {audio: {_target_: os.system}}}", ["os.system", "refused"]),
    ("{encoders: {audio: {_target_: evil.Module}}}", ["evil.Module", "--allowed_target_prefixes"]),
    ("{encoders: {audio: {_target_: audio.AudioEncoder, dim: [[1]]}}}", ["audio.AudioEncoder", "'dim'"]),
    ("[1, 2]", ["model", "mapping"]),
])
def test_bad_model_sections(section, names, in_tmp, capsys):
    path = write(in_tmp / "c.yaml", f"model: {section}\n")
    expect(train_main, ["--config", path, *AV, "--output_dir", in_tmp / "out"], capsys, 2, *names)
    assert not os.path.exists(in_tmp / "out")


def test_model_section_number_with_an_automatic_default(in_tmp, capsys):
    """Without --fusion_dim the fusion width is automatic (None), so the argument's type comes from the setting."""
    path = write(in_tmp / "c.yaml", "model: {encoders: {audio: conv_transformer}, fusion: {name: bottleneck, "
                                    "dim: xyz}}\n")
    at = AV.index("--fusion_dim")
    flags = AV[:at] + AV[at + 2:]
    expect(train_main, ["--config", path, *flags, "--output_dir", in_tmp / "out"], capsys, 2, "fusion", "'dim'",
           "expects a number")


@pytest.mark.parametrize("flag,value,names", [
    ("--fusion_depth", "3", ["--fusion_depth", "fusion depth: 1"]),
    ("--audio_dim", "64", ["--audio_dim", "audio encoder dim: 32"]),
    ("--fusion", "mamba", ["--fusion mamba", "sets fusion: transformer"]),
])
def test_flags_a_model_section_overrides_are_refused(flag, value, names, in_tmp, capsys):
    path = write(in_tmp / "c.yaml", "model:\n  encoders: {video: backbone, audio: {name: conv_transformer, dim: 32}}"
                                    "\n  fusion: {name: transformer, depth: 1}\n")
    expect(train_main, ["--config", path, *AV, flag, value, "--output_dir", in_tmp / "out"], capsys, 2, *names)


@pytest.mark.parametrize("inline,names", [
    ('{"encoders": ', ["model section", "not valid JSON"]),
    ('{"encoders": 5}', ["encoders"]),
    ('{"encoders": {"audio": "conv_transformer"}, "fusion": {"name": "concat", "dim": "wide"}}', ["fusion", "'dim'"]),
])
def test_inline_json_model_config(inline, names, in_tmp, capsys):
    expect(train_main, ["--model_config", inline, *AV, "--output_dir", in_tmp / "out"], capsys, 2, *names)


def test_model_config_alias_bomb_is_refused_fast(in_tmp, capsys):
    path = write(in_tmp / "m.yaml", BILLION_LAUGHS.replace("lr: *i", "model: {encoders: {audio: *i}}"))
    start = time.time()
    expect(train_main, ["--model_config", path, *AV], capsys, 2, "m.yaml")
    assert time.time() - start < 10


# ----------------------------------------------------------------------------------------------------------------
# 4. security: nothing read from a file widens what may run; checkpoint and data folders are never code
# ----------------------------------------------------------------------------------------------------------------
EVIL = ("import os\nopen(os.environ['EVIL_MARK'], 'w').write('ran')\nimport torch\n"
        "class Module(torch.nn.Module):\n    def __init__(self, **kw):\n        super().__init__()\n"
        "        self.out_dim = 8\n")


def evil_checkpoint(trained, tmp_path, monkeypatch, saved_prefixes="evil"):
    """A copy of the trained run whose run_config declares a composed model with an audio encoder
    ``_target_: evil.Module``, its saved allowlist widened to ``evil``, and evil.py inside the checkpoints folder
    (on sys.path, as the repo folder holding checkpoints/ is when a script runs)."""
    out, run_dir = copy_run(trained["run"], tmp_path)
    write(out / "evil.py", EVIL)
    monkeypatch.syspath_prepend(str(out))
    mark = tmp_path / "EVIL_RAN"
    monkeypatch.setenv("EVIL_MARK", str(mark))
    composition = dict(encoders=dict(audio={"_target_": "evil.Module"}), fusion=dict(name="concat", dim=8),
                       head=dict(name="linear", dropout=0.0))

    def change(config):
        config["settings"].update(allowed_target_prefixes=saved_prefixes, modalities="audio",
                                  model_config=json.dumps(composition))
        config["model_info"]["arch"] = dict(composition=composition, backbone_arch=None, text_arch=None)
    edit_run_config(run_dir / "best", change)
    return out, run_dir, mark


def test_saved_allowlist_of_a_checkpoint_is_ignored(trained, tmp_path, monkeypatch, capsys):
    out, run_dir, mark = evil_checkpoint(trained, tmp_path, monkeypatch)
    snapshot = Snapshot(tmp_path)
    expect(inference, ["--video_dir", tmp_path, "--checkpoint", run_dir / "best", "--output_dir", out,
                       "--predictions_file", tmp_path / "p.json"], capsys, 2, "evil.Module",
           "--allowed_target_prefixes")
    assert not mark.exists(), "code from the checkpoint folder ran"
    snapshot.assert_unchanged()


def test_eval_only_ignores_the_saved_allowlist_too(trained, tmp_path, monkeypatch, capsys):
    out, run_dir, mark = evil_checkpoint(trained, tmp_path, monkeypatch)
    expect(train_main, ["--eval_only", "True", "--checkpoint", run_dir / "best", "--data_root", trained["data"]],
           capsys, 2, "evil.Module")
    assert not mark.exists()


def test_a_module_inside_the_checkpoints_folder_is_never_imported(trained, tmp_path, monkeypatch, capsys):
    out, run_dir, mark = evil_checkpoint(trained, tmp_path, monkeypatch)
    expect(inference, ["--video_dir", tmp_path, "--checkpoint", run_dir / "best", "--output_dir", out,
                       "--predictions_file", tmp_path / "p.json", "--allowed_target_prefixes",
                       "compose,audio,fusion,evil"], capsys, 2,
           "evil.Module", "checkpoint or data folder")
    assert not mark.exists(), "a module inside --output_dir was imported"


def test_a_module_inside_the_data_folder_is_never_imported(data_copy, in_tmp, monkeypatch, capsys):
    write(data_copy / "datacode.py", EVIL)
    monkeypatch.syspath_prepend(str(data_copy))
    monkeypatch.setenv("EVIL_MARK", str(in_tmp / "EVIL_RAN"))
    path = write(in_tmp / "c.yaml", "model: {encoders: {audio: {_target_: datacode.Module}}}\n")
    expect(train_main, ["--config", path, *AV, "--data_root", data_copy, "--allowed_target_prefixes",
                        "compose,audio,fusion,datacode"], capsys, 2, "datacode.Module", str(data_copy))
    assert not (in_tmp / "EVIL_RAN").exists()


def test_settings_from_a_checkpoint_never_carry_the_allowlist():
    saved = Settings().to_dict()
    saved["allowed_target_prefixes"] = "os,subprocess,evil"
    assert settings_from_dict(saved).allowed_target_prefixes == Settings().allowed_target_prefixes


# ----------------------------------------------------------------------------------------------------------------
# 5. run folders are owned
# ----------------------------------------------------------------------------------------------------------------
def test_rerunning_a_run_name_is_refused_and_keeps_every_file(trained, tmp_path, capsys):
    out, run_dir = copy_run(trained["run"], tmp_path)
    snapshot = Snapshot(tmp_path)
    expect(train_main, ["--data_root", trained["data"], "--output_dir", out, "--run_name", "run", *RUN], capsys, 2,
           str(run_dir), "--overwrite", "--resume_from_checkpoint")
    snapshot.assert_unchanged()


@pytest.mark.parametrize("name", ["../escape", "a/b", "..", ".", "/tmp/abs", "x" * 300])
def test_run_name_must_stay_inside_output_dir(name, in_tmp, capsys):
    os.makedirs(in_tmp / "out" / "runs")
    snapshot = Snapshot(in_tmp)
    expect(train_main, ["--run_name", name, "--output_dir", in_tmp / "out" / "runs", *RUN], capsys, 2, "--run_name")
    snapshot.assert_unchanged()
    assert os.listdir(in_tmp / "out") == ["runs"]


def test_run_folder_linked_out_of_output_dir_is_refused(trained, tmp_path, capsys):
    outside = tmp_path / "outside"
    os.makedirs(outside)
    os.makedirs(tmp_path / "out")
    os.symlink(outside, tmp_path / "out" / "linked")
    expect(train_main, ["--data_root", trained["data"], "--output_dir", tmp_path / "out", "--run_name", "linked",
                        *RUN], capsys, 2, "outside --output_dir")
    assert os.listdir(outside) == []


def test_last_link_pointing_outside_the_run_is_refused(trained, tmp_path, capsys):
    out, run_dir = copy_run(trained["run"], tmp_path)
    victim = tmp_path / "victim" / "checkpoint-9"
    shutil.copytree(run_dir / "last", victim, symlinks=True)
    os.remove(run_dir / "last")
    os.symlink(os.path.relpath(victim, run_dir), run_dir / "last")
    snapshot = Snapshot(tmp_path)
    for target in ("latest", run_dir / "last", run_dir):
        expect(train_main, ["--data_root", trained["data"], "--output_dir", out, "--run_name", "run", *RUN,
                            "--resume_from_checkpoint", target], capsys, 2, "outside")
    snapshot.assert_unchanged()


def test_resume_into_another_existing_run_is_refused(trained, tmp_path, capsys):
    out, run_dir = copy_run(trained["run"], tmp_path)
    shutil.copytree(run_dir, out / "other", symlinks=True)
    snapshot = Snapshot(tmp_path)
    expect(train_main, ["--data_root", trained["data"], "--output_dir", out, "--run_name", "other", *RUN,
                        "--resume_from_checkpoint", run_dir / "last"], capsys, 2, str(out / "other"), "--overwrite")
    snapshot.assert_unchanged()


def test_run_folder_that_is_a_file(trained, tmp_path, capsys):
    write(tmp_path / "out" / "file", "x")
    expect(train_main, ["--data_root", trained["data"], "--output_dir", tmp_path / "out", "--run_name", "file",
                        *RUN], capsys, 2, "not a folder")


LOCK_HOLDER = ("import sys, time; sys.path.insert(0, {root!r}); from videolab.core.runs import run_lock\n"
               "with run_lock({folder!r}):\n    print('locked', flush=True)\n    time.sleep(60)\n")
# the same protocol without importing the repo (torch): a second run's first step, in a tenth of the time
LIGHT_LOCK_HOLDER = ("import fcntl, os, time\nos.makedirs({folder!r}, exist_ok=True)\n"
                     "fd = os.open(os.path.join({folder!r}, '.lock'), os.O_RDWR | os.O_CREAT, 0o644)\n"
                     "fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)\nos.ftruncate(fd, 0)\n"
                     "os.write(fd, str(os.getpid()).encode())\nprint('locked', flush=True)\ntime.sleep(60)\n")


def hold_lock(folder, light=False):
    """A real second process holding the run folder's lock (what a concurrent run does first)."""
    script = (LIGHT_LOCK_HOLDER if light else LOCK_HOLDER).format(root=ROOT, folder=str(folder))
    child = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True,
                             env=dict(os.environ, PYTHONPATH=ROOT))
    assert child.stdout.readline().strip() == "locked"
    return child


def test_two_runs_in_one_folder_at_once_are_refused(trained, tmp_path, capsys):
    out, run_dir = copy_run(trained["run"], tmp_path)
    assert LOCK_FILE == ".lock"
    child = hold_lock(run_dir, light=True)
    try:
        snapshot = Snapshot(tmp_path)
        for argv in (["--run_name", "run", "--overwrite", "True"],
                     ["--run_name", "run", "--resume_from_checkpoint", "latest"]):
            expect(train_main, ["--data_root", trained["data"], "--output_dir", out, *RUN, *argv], capsys, 2,
                   f"in use by process {child.pid}")
        expect(train_main, ["--eval_only", "True", "--checkpoint", run_dir / "best", "--data_root", trained["data"]],
               capsys, 2, f"in use by process {child.pid}")
        snapshot.assert_unchanged()
    finally:
        child.kill()
        child.wait()


def test_a_killed_runs_lock_is_taken_over(tmp_path):
    folder = tmp_path / "run"
    child = hold_lock(folder)
    os.kill(child.pid, signal.SIGKILL)  # kill -9: no cleanup runs, the lock file stays
    child.wait()
    assert (folder / LOCK_FILE).read_text().strip() == str(child.pid)
    with run_lock(str(folder)):
        assert (folder / LOCK_FILE).read_text().strip() == str(os.getpid())


def test_overwrite_replaces_the_run_and_nothing_else(trained, tmp_path, capsys):
    out, run_dir = copy_run(trained["run"], tmp_path)
    shutil.copytree(run_dir, out / "neighbour", symlinks=True)
    write(run_dir / "checkpoint-99" / "stale.txt", "old")
    snapshot = Snapshot(tmp_path, skip=[run_dir])
    expect(train_main, ["--data_root", trained["data"], "--output_dir", out, "--run_name", "run", *RUN,
                        "--overwrite", "True"], capsys, 0)
    assert not (run_dir / "checkpoint-99").exists() and (run_dir / "best" / WEIGHTS_FILE).is_file()
    snapshot.assert_unchanged()


# ----------------------------------------------------------------------------------------------------------------
# 6. outputs: checked up front, never replaced silently, ordinary permissions, a full disk in one line
# ----------------------------------------------------------------------------------------------------------------
def test_predictions_file_is_not_overwritten_silently(trained, frames, tmp_path, capsys):
    target = write(tmp_path / "predictions.json", '{"earlier": "400 videos"}')
    argv = ["--video_dir", frames, "--checkpoint", trained["run"] / "best", "--predictions_file", target, "--quiet"]
    expect(inference, argv, capsys, 2, "predictions.json", "--overwrite")
    assert json.load(open(target)) == {"earlier": "400 videos"}
    expect(inference, [*argv, "--overwrite", "True"], capsys, 0)
    written = json.load(open(target))
    assert len(written["predictions"]) == 2
    assert os.stat(target).st_mode & 0o777 == default_mode()  # the user's umask, not owner-only


@pytest.mark.parametrize("case", ["folder", "parent is a file", "read-only file", "read-only folder"])
def test_unwritable_predictions_file_is_refused_before_running(case, trained, frames, tmp_path, capsys):
    target = tmp_path / "p.json"
    if case == "folder":
        os.makedirs(target)
    elif case == "parent is a file":
        write(tmp_path / "file", "x")
        target = tmp_path / "file" / "p.json"
    elif case == "read-only file":
        write(target, "{}")
        os.chmod(target, 0o444)
    else:
        os.makedirs(tmp_path / "ro")
        os.chmod(tmp_path / "ro", 0o555)
        target = tmp_path / "ro" / "p.json"
    try:
        expect(inference, ["--video_dir", frames, "--checkpoint", trained["run"] / "best", "--predictions_file",
                           target, "--overwrite", "True"], capsys, 2, "--predictions_file")
    finally:
        os.chmod(tmp_path / "ro", 0o755) if (tmp_path / "ro").exists() else None


@pytest.mark.parametrize("flag", ["--output_dir", "--summary_csv", "--export_dir"])
def test_unwritable_run_outputs_are_refused_before_training(flag, trained, tmp_path, capsys):
    write(tmp_path / "file", "x")
    value = tmp_path / ("results" if flag == "--summary_csv" else "file")
    if flag == "--summary_csv":
        os.makedirs(value)  # a folder where the table file belongs
    snapshot = Snapshot(tmp_path)
    expect(train_main, ["--data_root", trained["data"], "--output_dir", tmp_path / "out", *RUN, flag, value], capsys,
           2, flag)
    snapshot.assert_unchanged()


def test_a_full_disk_is_one_line(trained, frames, tmp_path, capsys, monkeypatch):
    import videolab.core.files as files

    def full(path, data, indent=2):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), path)
    monkeypatch.setattr(files, "write_json", full)
    expect(inference, ["--video_dir", frames, "--checkpoint", trained["run"] / "best", "--predictions_file",
                       tmp_path / "p.json"], capsys, 1, "disk is full", "p.json")


def test_run_outputs_get_ordinary_permissions(trained):
    for path in (trained["run"] / "best" / WEIGHTS_FILE, trained["run"] / "eval.json",
                 trained["run"] / "best" / CONFIG_FILE):
        assert os.stat(path).st_mode & 0o777 == default_mode(), path


# ----------------------------------------------------------------------------------------------------------------
# 7. inference picks the model kind the flags describe, and says which
# ----------------------------------------------------------------------------------------------------------------
def make_captioner_run(trained, out, name="captioner"):
    shutil.copytree(trained["run"], out / name, symlinks=True)
    edit_run_config(out / name / "best", lambda c: c["settings"].update(use_vlm=True, captioning=True,
                                                                        language_model="gpt2",
                                                                        vision_model="timesformer"))
    os.utime(out / name / "best" / WEIGHTS_FILE)  # the newest run


def test_the_newest_run_of_another_kind_is_never_picked(trained, frames, tmp_path, capsys):
    out, _ = copy_run(trained["run"], tmp_path, "classifier")
    make_captioner_run(trained, out)
    code, _ = run(inference, ["--video_dir", frames, "--output_dir", out, "--predictions_file",
                              tmp_path / "p.json", "--quiet"], capsys)
    assert code == 0


def test_inference_says_which_run_and_kind_it_picked(trained, frames, tmp_path, capsys):
    out, _ = copy_run(trained["run"], tmp_path, "classifier")
    make_captioner_run(trained, out)
    capsys.readouterr()
    assert run_cli(inference.main, ["--video_dir", str(frames), "--output_dir", str(out), "--predictions_file",
                                    str(tmp_path / "p.json"), "--quiet"]) == 0
    said = capsys.readouterr().out
    assert "picked the newest matching run" in said and "classifier" in said and "captioner" not in said


def test_no_run_of_the_wanted_kind_is_an_error_naming_what_there_is(trained, frames, tmp_path, capsys):
    os.makedirs(tmp_path / "out")
    make_captioner_run(trained, tmp_path / "out")
    pick = ["--video_dir", frames, "--output_dir", tmp_path / "out", "--predictions_file", tmp_path / "p.json"]
    expect(inference, pick, capsys, 2, "classifier", "captioner")
    # the case: the newest TimeSformer run is a GPT-2 captioner; classifier flags never get it
    expect(inference, [*pick, "--vision_model", "timesformer"], capsys, 2, "--vision_model timesformer",
           "captioner (captioner)")


# ----------------------------------------------------------------------------------------------------------------
# 8. no surprising fallbacks
# ----------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("value", ["./my_backbone", "~/no_such_backbone_folder", "/no/such/folder",
                                   "EMPTY", "FILE", "PARTLY/inside"])
def test_pretrained_that_looks_like_a_path_must_be_a_model_folder(value, in_tmp, capsys):
    os.makedirs(in_tmp / "EMPTY")
    write(in_tmp / "FILE", "x")
    os.makedirs(in_tmp / "PARTLY")
    expect(train_main, ["--pretrained", value, "--output_dir", in_tmp / "out", *RUN], capsys, 2, "--pretrained",
           value)
    assert not (in_tmp / "out").exists()


def test_hub_ids_and_model_folders_pass_the_path_check(in_tmp):
    check_weights_path("pretrained", "MCG-NJU/videomae-base")
    write(in_tmp / "weights" / "config.json", "{}")
    check_weights_path("pretrained", str(in_tmp / "weights"))
    with pytest.raises(UsageError, match="--language_model"):
        check_weights_path("language_model", "./my_lm")


# ----------------------------------------------------------------------------------------------------------------
# 9. checkpoints that parse but do not fit
# ----------------------------------------------------------------------------------------------------------------
def break_weights(folder, change):
    weights = load_file(str(folder / WEIGHTS_FILE))
    save_file(change(dict(weights)), str(folder / WEIGHTS_FILE))


def nan_first(weights):
    name = next(k for k, v in weights.items() if v.is_floating_point())
    weights[name] = torch.full_like(weights[name], float("nan"))
    return weights


def drop_one(weights):
    weights.pop(sorted(weights)[0])
    return weights


@pytest.mark.parametrize("damage,names", [
    (lambda f: write(f / CONFIG_FILE, '{"settings": {'), [CONFIG_FILE, "not valid JSON"]),
    (lambda f: write(f / CONFIG_FILE, "[1, 2]"), [CONFIG_FILE, "object"]),
    (lambda f: write(f / CONFIG_FILE, b"\xff\xfe{}", "wb"), [CONFIG_FILE, "UTF-8"]),
    (lambda f: edit_run_config(f, lambda c: c.pop("model_info")), [CONFIG_FILE, "model_info"]),
    (lambda f: edit_run_config(f, lambda c: c.update(class_names="abcd")), [CONFIG_FILE, "class_names"]),
    (lambda f: edit_run_config(f, lambda c: c["settings"].update(num_frames="many")), [CONFIG_FILE, "--num_frames"]),
    (lambda f: edit_run_config(f, lambda c: c["settings"].update(lr=float("nan"))), [CONFIG_FILE, "--lr"]),
    (lambda f: edit_run_config(f, lambda c: c["model_info"].update(arch={"nonsense": 1})), [CONFIG_FILE, "arch"]),
    (lambda f: edit_run_config(f, lambda c: c.update(class_names=c["class_names"] + ["extra"])),
     [WEIGHTS_FILE, "5 classes"]),
    (lambda f: break_weights(f, drop_one), [WEIGHTS_FILE, "does not fit"]),
    (lambda f: break_weights(f, nan_first), [WEIGHTS_FILE, "NaN"]),
    (lambda f: write(f / WEIGHTS_FILE, b"\x00" * 10, "wb"), [WEIGHTS_FILE, "corrupt"]),
])
def test_checkpoints_that_do_not_fit(damage, names, trained, frames, tmp_path, capsys):
    out, run_dir = copy_run(trained["run"], tmp_path)
    best = run_dir / "best"
    damage(best)
    snapshot = Snapshot(tmp_path)
    expect(inference, ["--video_dir", frames, "--checkpoint", best, "--predictions_file", tmp_path / "p.json"],
           capsys, 2, *names)
    assert not (tmp_path / "p.json").exists()
    snapshot.assert_unchanged()


# ----------------------------------------------------------------------------------------------------------------
# 10. damaged data: skipped and named in training, listed with exit 3 in evaluation and inference
# ----------------------------------------------------------------------------------------------------------------
def clip_path(root, split="test", k=0, i=0):
    return os.path.join(str(root), split, f"class_{k}", f"video_{i}.pt")


@pytest.mark.parametrize("damage", ["truncated", "empty", "wrong shape", "bool dtype", "float out of range",
                                    "int64 out of range", "not a tensor"])
def test_damaged_clip_files_are_video_errors(damage, data_copy):
    path = clip_path(data_copy)
    clip = torch.load(path, weights_only=True)
    if damage == "truncated":
        write(path, open(path, "rb").read()[:100], "wb")
    elif damage == "empty":
        write(path, b"", "wb")
    else:
        value = {"wrong shape": clip[0], "bool dtype": clip > 0, "float out of range": clip.float() * 300,
                 "int64 out of range": clip.long() - 300, "not a tensor": {"frames": [1, 2]}}[damage]
        torch.save(value, path)
    with pytest.raises(VideoError, match="video_0.pt"):
        as_uint8_clip(load_clip_file(path), path)


def test_float_and_int64_clips_are_scaled_to_pixels(data_copy):
    clip = torch.load(clip_path(data_copy), weights_only=True)
    assert torch.equal(as_uint8_clip(clip.float() / 255, "x"), clip)  # float in [0, 1]
    assert torch.equal(as_uint8_clip(clip.long(), "x"), clip)  # int64 pixels
    assert as_uint8_clip(clip[:, :1], "x").shape == clip.shape  # one channel -> three


def test_evaluation_lists_damaged_clips_with_exit_3(trained, data_copy, tmp_path, capsys):
    write(clip_path(data_copy, k=1), b"", "wb")
    torch.save(torch.zeros(3, 3), clip_path(data_copy, k=2))
    out, run_dir = copy_run(trained["run"], tmp_path)
    line = expect(train_main, ["--eval_only", "True", "--checkpoint", run_dir / "best", "--data_root", data_copy,
                               "--speed_repeats", "0", "--summary_csv", "none", "--quiet"], capsys, 3,
                  "2 test video(s)", "class_1/video_0.pt")
    report = json.load(open(run_dir / "eval.json"))  # valid JSON
    assert {b["video"] for b in report["bad_videos"]["test"]} == {"test/class_1/video_0.pt", "test/class_2/video_0.pt"}
    assert "eval.json" in line


def test_training_skips_and_names_a_damaged_clip(data_copy, tmp_path, capsys):
    write(clip_path(data_copy, "train", 0, 0), b"garbage", "wb")
    code, _ = run(train_main, ["--data_root", data_copy, "--output_dir", tmp_path / "out", "--run_name", "r", *RUN,
                               "--max_bad_video_fraction", "0.2", "--val_fraction", "0", "--batch_size", "24"],
                  capsys)  # one step reads every training clip
    assert code == 0
    report = json.load(open(tmp_path / "out" / "r" / "eval.json"))
    assert [b["video"] for b in report["bad_videos"]["skipped_in_training"]] == ["train/class_0/video_0.pt"]


def test_training_stops_above_max_bad_video_fraction(data_copy, tmp_path, capsys):
    for k in range(4):
        for i in range(3):
            write(clip_path(data_copy, "train", k, i), b"", "wb")
    expect(train_main, ["--data_root", data_copy, "--output_dir", tmp_path / "out", "--run_name", "r", *RUN,
                        "--max_bad_video_fraction", "0.1", "--val_fraction", "0"], capsys, 2,
           "--max_bad_video_fraction")


@pytest.mark.parametrize("damage", ["corrupt png", "decompression bomb"])
def test_inference_lists_unreadable_frames_with_exit_3(damage, trained, frames, tmp_path, capsys, monkeypatch):
    if damage == "corrupt png":
        write(frames / "b" / "f1.png", b"\x89PNG\r\n\x1a\n broken", "wb")
    else:
        import videolab.data.frames as frames_module
        from PIL import Image
        Image.fromarray(np.zeros((300, 300, 3), dtype=np.uint8)).save(frames / "b" / "f1.png")
        monkeypatch.setattr(frames_module, "MAX_FRAME_PIXELS", 32 * 32 * 4)  # 300 x 300 is a "bomb" here
    expect(inference, ["--video_dir", frames, "--checkpoint", trained["run"] / "best", "--predictions_file",
                       tmp_path / "p.json", "--quiet"], capsys, 3, "1 video(s)", "b")
    saved = json.load(open(tmp_path / "p.json"))
    assert [b["video"] for b in saved["bad_videos"]] == ["b"] and len(saved["predictions"]) == 1


def test_16_bit_frames_are_scaled_not_white(tmp_path):
    from PIL import Image

    from videolab.data.frames import read_image
    ramp = (np.arange(32 * 32).reshape(32, 32) * 64).astype(np.uint16)  # 0 .. 65472
    Image.fromarray(ramp).save(tmp_path / "f.png")
    assert Image.open(tmp_path / "f.png").mode == "I;16"
    frame = read_image(str(tmp_path / "f.png"))
    assert frame.dtype == torch.uint8 and frame.shape == (3, 32, 32)
    assert int(frame.min()) == 0 and int(frame.max()) == 255 and 100 < float(frame.float().mean()) < 155


@pytest.mark.parametrize("name,content,names", [
    ("labels.json", "{broken", ["labels.json", "not valid JSON"]),
    ("labels.json", "[1, 2]", ["labels.json", "object"]),
    ("texts.json", '{"a": 5}', ["texts.json", "not a string"]),
    ("captions.json", b"\xff\xff", ["captions.json", "UTF-8"]),
])
def test_malformed_side_files(name, content, names, trained, frames, tmp_path, capsys):
    write(frames / name, content, "wb" if isinstance(content, bytes) else "w")
    expect(inference, ["--video_dir", frames, "--checkpoint", trained["run"] / "best", "--predictions_file",
                       tmp_path / "p.json"], capsys, 2, *names)


@pytest.mark.parametrize("file,content,names", [
    ("train/annotations.jsonl", '{"path": "class_0/video_0.pt", "label": 0}\n{oops\n', ["annotations.jsonl", "line 2"]),
    ("train/annotations.jsonl", '{"path": 5, "label": "x"}\n', ["annotations.jsonl", "line 1"]),
    ("classes.json", '["a", "b"]', ["classes.json", "object"]),
    ("classes.json", '{"class_names": []}', ["classes.json", "class_names"]),
])
def test_malformed_dataset_files(file, content, names, data_copy, tmp_path, capsys):
    write(data_copy / file, content)
    expect(train_main, ["--data_root", data_copy, "--output_dir", tmp_path / "out", *RUN], capsys, 2, *names)


@pytest.mark.parametrize("content,names", [
    ("[1, 2]", ["train.json record 0", "JSON object"]),
    (b"\xff\xfe[", ["train.json", "UTF-8"]),
    ("[{\"video\": \"a.mp4\"", ["train.json", "neither a JSON list nor JSON Lines"]),
])
def test_malformed_question_answer_files(content, names, tmp_path, capsys):
    write(tmp_path / "qa" / "train.json", content, "wb" if isinstance(content, bytes) else "w")
    write(tmp_path / "qa" / "test.json", "[]")
    expect(train_main, ["--dataset", "qa_json", "--data_root", tmp_path / "qa", "--output_dir", tmp_path / "out",
                        "--use_vlm", "True", "--captioning", "True", *RUN], capsys, 2, *names)


@pytest.mark.parametrize("file,content,names", [
    ("train.csv", b"video,caption\n\xff\xfe.mp4,a ball\n", ["train.csv", "UTF-8"]),
    ("train.csv", "video,caption\na.mp4\n", ["train.csv", "line 2", "fewer fields"]),
    ("train.csv", "clip,text\na.mp4,a ball\n", ["train.csv", "video column"]),
    ("dataset_info.json", '{"train": "train_data.json"}', ["dataset_info.json", "each an object"]),
    ("dataset_info.json", '{"train": {', ["dataset_info.json", "not valid JSON"]),
])
def test_malformed_caption_csv_and_dataset_info(file, content, names, tmp_path, capsys):
    write(tmp_path / "qa" / file, content, "wb" if isinstance(content, bytes) else "w")
    write(tmp_path / "qa" / "test.json", "[]")
    expect(train_main, ["--dataset", "qa_json", "--data_root", tmp_path / "qa", "--output_dir", tmp_path / "out",
                        "--use_vlm", "True", "--captioning", "True", *RUN], capsys, 2, *names)
