"""Settings precedence, boolean parsing, and every bad-input case (one line, exit code 2)."""
import os
import subprocess
import sys

import pytest

from conftest import ROOT
from conftest import resolve
from videolab.cli import run_cli
from videolab.core.errors import UsageError
from videolab.core.settings import FIELDS, Settings, parse_bool


def write(path, text):
    path.write_text(text)
    return str(path)


def test_defaults_then_yaml_then_cli(in_tmp):
    cfg, _, _ = resolve([], "t", "t")
    assert cfg.lr == Settings().lr and cfg.epochs == Settings().epochs
    yaml_file = write(in_tmp / "c.yaml", "lr: 0.01\nepochs: 3\nlora: {r: 4}\nfusion: {type: mean, depth: 3}\n")
    cfg, _, _ = resolve(["--config", yaml_file], "t", "t")
    assert (cfg.lr, cfg.epochs, cfg.lora_r, cfg.fusion, cfg.fusion_depth) == (0.01, 3, 4, "mean", 3)
    cfg, explicit, _ = resolve(["--config", yaml_file, "--lr", "0.5"], "t", "t")
    assert (cfg.lr, cfg.epochs) == (0.5, 3) and explicit == {"lr"}


def test_default_config_file_is_read_from_cwd(in_tmp):
    write(in_tmp / "config_file.yaml", "epochs: 7\n")
    cfg, _, _ = resolve([], "t", "t")
    assert cfg.epochs == 7


def test_readme_flag_table_lists_every_setting():
    with open(os.path.join(ROOT, "README.md")) as fh:
        readme = fh.read()
    missing = [name for name in FIELDS if f"`--{name}`" not in readme]
    assert not missing, f"add these flags to the README's settings table: {missing}"


def test_repo_config_file_matches_settings():
    """The shipped config_file.yaml only holds known keys (it is read on every run)."""
    cfg, _, _ = resolve(["--config", os.path.join(ROOT, "config_file.yaml")], "t", "t")
    assert cfg.vision_model == "videomae"


@pytest.mark.parametrize("text,expected", [("True", True), ("true", True), ("1", True), ("yes", True),
                                           ("False", False), ("false", False), ("0", False), ("no", False)])
def test_boolean_words(in_tmp, text, expected):
    cfg, _, _ = resolve(["--use_lora_vision", text], "t", "t")
    assert cfg.use_lora_vision is expected
    assert parse_bool(text) is expected


def test_bare_flag_means_true_and_false_means_off(in_tmp):
    assert resolve(["--use_lora_vision"], "t", "t")[0].use_lora_vision is True
    assert resolve(["--use_lora_vision", "False"], "t", "t")[0].use_lora_vision is False
    assert resolve(["--quiet", "--use_lora_vision", "--lr", "0.1"], "t", "t")[0].lr == 0.1


@pytest.mark.parametrize("argv,needle", [
    (["--use_lora_vision", "maybe"], "expects a boolean"),
    (["--epoch", "3"], "did you mean '--epochs'"),
    (["--vision_model", "timesformr"], "did you mean 'timesformer'"),
    (["--epochs", "0"], "must be >= 1"),
    (["--epochs", "two"], "expects an integer"),
    (["--batch_size", "1.5"], "expects an integer"),
    (["--lr", "-1"], "must be >= 0"),
    (["--mixed_precision", "fp8"], "choose one of"),
    (["--fusion", "lstm"], "choose one of"),
    (["--use_lora_vision", "True", "--freeze_visionbackbone", "True"], "contradict"),
    (["--captioning", "True"], "needs a language model: add --use_vlm True"),
    (["--language_model", "bert"], "add --use_vlm True"),
    (["--use_text", "True"], "add --use_vlm True"),
    (["--use_vlm", "True", "--language_model", "bert", "--captioning", "True"], "needs a causal"),
    (["--use_vlm", "True", "--language_model", "gpt2"], "add --captioning True"),
    (["--use_vlm", "True", "--use_lora_llm", "True", "--freeze_language_model", "True"], "contradict"),
    (["--use_vlm", "True", "--text_input", "hi"], "add --use_text True"),
    (["--config", "missing.yaml"], "not found"),
])
def test_bad_input_raises_usage_error(in_tmp, argv, needle):
    with pytest.raises(UsageError, match=needle):
        resolve(argv, "t", "t")


def test_unknown_yaml_key_names_nearest(in_tmp):
    path = write(in_tmp / "c.yaml", "learning_rat: 0.1\n")
    with pytest.raises(UsageError, match="unknown key 'learning_rat'"):
        resolve(["--config", path], "t", "t")
    path = write(in_tmp / "d.yaml", "lora: {rank: 4}\n")
    with pytest.raises(UsageError, match="did you mean 'lora_r'"):
        resolve(["--config", path], "t", "t")
    path = write(in_tmp / "e.yaml", "- just\n- a list\n")
    with pytest.raises(UsageError, match="must hold a mapping"):
        resolve(["--config", path], "t", "t")


def test_run_cli_turns_usage_error_into_exit_2(capsys):
    def bad(argv):
        raise UsageError("what was wrong; how to fix")
    assert run_cli(bad, []) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "what was wrong; how to fix" in err


@pytest.mark.parametrize("script,argv", [
    ("main.py", ["--no_such_flag", "1"]),
    ("main.py", ["--vision_model", "resnet_that_does_not_exist"]),
    ("main.py", ["--fusion", "mean"]),  # fusion with a video backbone
    ("main.py", ["--mixed_precision", "fp16", "--device", "cpu"]),
    ("inference.py", ["--top_k", "3"]),  # missing --video_dir
    ("dummy_data.py", ["--num_classes", "99", "--root", "x"]),
    ("create_dummy.py", ["--data_root", "nowhere"]),
    ("main.py", ["--eval_only", "True", "--checkpoint", "nowhere"]),
    ("apps/visualize_results.py", ["--run_dir", "nowhere"]),
])
def test_cli_misuse_is_one_line_exit_2(in_tmp, script, argv):
    proc = subprocess.run([sys.executable, os.path.join(ROOT, script), *argv], capture_output=True, text=True,
                          cwd=in_tmp, timeout=120)
    assert proc.returncode == 2, proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "error:" in lines[0] and "Traceback" not in proc.stderr, proc.stderr
