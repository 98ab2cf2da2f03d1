"""The video checker (issue 22, apps/check_videos.py): it finds every damaged file of a generated tree with its
reason, writes a skip list training reads (--skip_list), and its exit code says whether problems were found."""
import json
import os

import numpy as np
import pytest
from PIL import Image

import check_videos
import main as train_main
from conftest import TINY_FLAGS, resolve
from video_fixtures import write_bad_videos, write_index_video
from videolab.cli import run_cli
from videolab.core.errors import UsageError
from videolab.data.check import read_skip_list


@pytest.fixture(scope="module")
def damaged_tree(tmp_path_factory):
    """videofolder layout, 2 classes: 4 good videos each, plus every kind of damage in class 'run'."""
    root = tmp_path_factory.mktemp("check") / "videos"
    for cls in ("jump", "run"):
        for k in range(4):
            write_index_video(str(root / cls / f"good{k}.mp4"), 12 + k, height=40, width=56)
    bad = write_bad_videos(str(root / "run"), str(root / "run" / "good0.mp4"))
    short = write_index_video(str(root / "run" / "short.mp4"), 3, height=40, width=56)
    small = write_index_video(str(root / "jump" / "small.mp4"), 12, height=16, width=24)
    expected = {os.path.relpath(p, root): kind for kind, p in [
        ("empty", bad["zero_byte"]), ("unreadable", bad["garbage"]), ("unreadable", bad["truncated"]),
        ("empty", bad["zero_frames"]), ("too_short", short), ("mis_sized", small)]}
    return str(root), expected


def test_the_checker_finds_every_damaged_file_with_its_reason(damaged_tree, tmp_path, capsys):
    root, expected = damaged_tree
    skip, report = tmp_path / "skip.txt", tmp_path / "report.json"
    code = run_cli(check_videos.main, ["--data_root", root, "--num_frames", "8", "--image_size", "32", "--quiet",
                                       "--skip_list_out", str(skip), "--report", str(report)])
    assert code == 3  # problems found
    found = {p["video"]: p["kind"] for p in json.loads(report.read_text())["problems"]}
    assert found == expected
    assert read_skip_list(str(skip)) == set(expected)
    out = capsys.readouterr().out
    assert "checked 14 videos" in out and "short.mp4: 3 frames, fewer than the 8" in out
    assert "small.mp4: 24x16 px, short side below 32" in out


def test_a_clean_tree_exits_0(tmp_path):
    root = tmp_path / "clean"
    write_index_video(str(root / "a" / "v.mp4"), 10)
    code = run_cli(check_videos.main, ["--data_root", str(root), "--num_frames", "8", "--image_size", "32",
                                       "--quiet", "--skip_list_out", str(tmp_path / "s.txt")])
    assert code == 0 and read_skip_list(str(tmp_path / "s.txt")) == set()


def test_frame_folders(tmp_path):
    root = tmp_path / "frames"
    for name, sizes in (("ok", [(40, 40)] * 9), ("few", [(40, 40)] * 2), ("mixed", [(40, 40)] * 8 + [(30, 40)])):
        os.makedirs(root / name)
        for i, (w, h) in enumerate(sizes):
            Image.fromarray(np.zeros((h, w, 3), np.uint8)).save(root / name / f"{i:03d}.png")
    (root / "broken").mkdir()
    for i in range(9):
        (root / "broken" / f"{i:03d}.png").write_bytes(b"not a png")
    report = tmp_path / "r.json"
    code = run_cli(check_videos.main, ["--data_root", str(root), "--layout", "frames", "--num_frames", "8",
                                       "--image_size", "32", "--quiet", "--skip_list_out", str(tmp_path / "s.txt"),
                                       "--report", str(report)])
    assert code == 3
    found = {p["video"]: p["kind"] for p in json.loads(report.read_text())["problems"]}
    assert found == {"few": "too_short", "mixed": "mis_sized", "broken": "unreadable"}


def test_training_leaves_out_the_skip_list(damaged_tree, tmp_path, capsys):
    root, expected = damaged_tree
    skip = tmp_path / "skip.txt"
    run_cli(check_videos.main, ["--data_root", root, "--num_frames", "4", "--image_size", "32", "--quiet",
                                "--skip_list_out", str(skip)])
    report = train_main.main([*TINY_FLAGS, "--dataset", "videofolder", "--data_root", root, "--skip_list", str(skip),
                              "--epochs", "1", "--max_steps", "1", "--batch_size", "4", "--val_fraction", "0",
                              "--test_fraction", "0.3", "--quiet", "--speed_repeats", "0", "--summary_csv", "none",
                              "--output_dir", str(tmp_path), "--run_name", "s"])
    assert report["num_bad_videos"] == 0 and not report["bad_videos"]["skipped_in_training"]
    assert "--skip_list" in capsys.readouterr().err


def test_skip_list_errors_are_one_line():
    with pytest.raises(UsageError, match="--skip_list names video files"):
        resolve([*TINY_FLAGS, "--skip_list", "x.txt"])
    with pytest.raises(UsageError, match="not found; write one with"):
        read_skip_list("/nonexistent/skip.txt")
