"""UCF101 split files with the real quirks, video folders, multi-view items, the cache through the dataset, and
the bad-video policy in training, evaluation and inference (main.py / inference.py in-process)."""
import json
import os

import pytest
import torch

import inference
import main as train_main
from videolab.models.classifier import MultiViewClassifier
from conftest import TINY_FLAGS
from videolab.cli import run_cli
from videolab.core.errors import UsageError
from videolab.core.settings import Settings
from video_fixtures import frame_numbers, write_index_video
from videolab.data.clips import BadVideoLog, TooManyBadVideos, make_loader
from videolab.data.sampling import ClipSpec
from videolab.data.video_io import FrameCache
from videolab.data.videos import (VideoFileDataset, VideoItem, build_video_datasets, ucf101_class_names,
                                  ucf101_groups, ucf101_lists, videofolder_lists)

MEAN, STD = (0.0,) * 3, (1 / 255,) * 3  # normalised values are the uint8 levels: frame numbers stay readable
UCF_CLASSES = ["ApplyEyeMakeup", "HandstandPushups", "YoYo"]
FILE_CLASS = {"HandstandPushups": "HandStandPushups"}  # the real file-name spelling: v_HandStandPushups_g01_c01.avi


def ucf_name(cls: str, group: int, clip: int) -> str:
    return f"{cls}/v_{FILE_CLASS.get(cls, cls)}_g{group:02d}_c{clip:02d}.avi"


def write_lines(path, lines, bom=False):
    """CRLF line endings and blank lines, as the official split files (and a BOM, as some re-saved copies)."""
    with open(path, "wb") as fh:
        fh.write((b"\xef\xbb\xbf" if bom else b"") + "\r\n".join(lines).encode() + b"\r\n\r\n")


def make_ucf101(root, split_dir=None, missing=(), train_label_of=None):
    """A tiny UCF101: 3 classes x groups 1-3 (train) and 4 (test) x 2 clips; returns (data_root, split_dir).
    ``missing`` names listed files not written; ``train_label_of`` overrides a trainlist label."""
    data = os.path.join(root, "UCF-101")
    split_dir = split_dir or os.path.join(root, "ucfTrainTestlist")  # beside the data, as the official zips unpack
    os.makedirs(split_dir, exist_ok=True)
    train, test = [], []
    for label, cls in enumerate(UCF_CLASSES, 1):
        for group in (1, 2, 3, 4):
            for clip in (1, 2):
                name = ucf_name(cls, group, clip)
                if name not in missing:
                    write_index_video(os.path.join(data, name), 6 + 3 * group + clip)
                given = (train_label_of or {}).get(name, label)
                (test.append(name) if group == 4 else train.append(f"{name} {given}"))
    write_lines(os.path.join(split_dir, "classInd.txt"), [f"{i} {c}" for i, c in enumerate(UCF_CLASSES, 1)] + [""],
                bom=True)
    write_lines(os.path.join(split_dir, "trainlist01.txt"), train[:5] + [""] + train[5:])
    write_lines(os.path.join(split_dir, "testlist01.txt"), test)
    return data, split_dir


def ucf_cfg(data_root, **kw):
    return Settings(dataset="ucf101", data_root=data_root, **kw)


@pytest.fixture(scope="module")
def ucf(tmp_path_factory):
    return make_ucf101(str(tmp_path_factory.mktemp("ucf")))


# ----------------------------------------------------------------------------------------------------------------
# UCF101
# ----------------------------------------------------------------------------------------------------------------
def test_ucf101_split_files_with_the_real_quirks(ucf):
    data, _ = ucf  # split folder found beside the data root (not given)
    cfg = ucf_cfg(data)
    assert ucf101_class_names(cfg) == UCF_CLASSES  # BOM, CRLF, blank lines ignored; 1-based -> 0-based
    lists = ucf101_lists(cfg)
    assert len(lists["train"]) == 3 * 3 * 2 and len(lists["test"]) == 3 * 2
    handstand = [it for it in lists["train"] + lists["test"] if "andStand" in it.path]
    assert len(handstand) == 8 and {it.label for it in handstand} == {1}  # case mismatch resolved, folder label
    assert all(os.path.isfile(it.path) for it in handstand)
    assert [it.label for it in lists["test"]] == [0, 0, 1, 1, 2, 2]  # testlist has no labels: from the folder
    assert lists["test"][0].video_id == "ApplyEyeMakeup/v_ApplyEyeMakeup_g04_c01.avi"


def test_ucf101_validation_holds_out_whole_groups(ucf):
    data, _ = ucf
    cfg = ucf_cfg(data, val_fraction=0.34, num_frames=4, image_size=16)
    spec = ClipSpec(4, 16, MEAN, STD)
    bundle = build_video_datasets(cfg, spec, spec, ("train", "val"))
    train_groups = set(ucf101_groups(bundle.train.items))
    val_groups = set(ucf101_groups(bundle.val.items))
    assert not train_groups & val_groups and len(val_groups) == 3  # one group (2 clips) per class held out
    assert sorted(it.label for it in bundle.val.items) == [0, 0, 1, 1, 2, 2]
    again = build_video_datasets(cfg, spec, spec, ("val",))
    assert [it.path for it in again.val.items] == [it.path for it in bundle.val.items]  # seeded


def test_ucf101_missing_files_are_listed_and_dropped(tmp_path, capsys):
    gone = [ucf_name("YoYo", 2, 1), ucf_name("ApplyEyeMakeup", 4, 2)]
    data, _ = make_ucf101(str(tmp_path), missing=gone)
    lists = ucf101_lists(ucf_cfg(data))
    assert len(lists["train"]) == 17 and len(lists["test"]) == 5
    err = capsys.readouterr().err
    assert "1 video(s) listed in" in err and gone[0] in err and gone[1] in err


@pytest.mark.parametrize("break_it,message", [
    ("label_range", "label 4 out of range 1..3"),
    ("label_folder", "disagrees with the folder"),
    ("no_folder", "has no folder under"),
    ("empty_split", "no video listed in"),
    ("no_split_file", "testlist01.txt not found"),
    ("no_root", "does not exist"),
    ("class_without_videos", "no training video on disk"),
])
def test_ucf101_errors_are_one_line_exit_2(tmp_path, break_it, message, capsys):
    first = ucf_name("YoYo", 1, 1)
    data, split_dir = make_ucf101(str(tmp_path), split_dir=str(tmp_path / "lists"),
                                  train_label_of={first: 4 if break_it == "label_range" else 2} if
                                  break_it.startswith("label") else None,
                                  missing=[ucf_name("YoYo", g, c) for g in (1, 2, 3) for c in (1, 2)]
                                  if break_it == "class_without_videos" else ())
    if break_it == "no_folder":
        os.rename(os.path.join(data, "YoYo"), os.path.join(data, "Yo-Yo"))
    if break_it == "empty_split":
        write_lines(os.path.join(split_dir, "testlist01.txt"), [ucf_name("YoYo", 9, 9)])
    if break_it == "no_split_file":
        os.remove(os.path.join(split_dir, "testlist01.txt"))
    root = str(tmp_path / "elsewhere") if break_it == "no_root" else data
    code = run_cli(train_main.main, ["--dataset", "ucf101", "--data_root", root, "--split_dir", split_dir,
                                     "--output_dir", str(tmp_path / "runs"), *TINY_FLAGS, "--quiet"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and message in err[-1] and ": error: " in err[-1], err


# ----------------------------------------------------------------------------------------------------------------
# video folders
# ----------------------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def folder_videos(tmp_path_factory):
    """3 classes x 5 videos (mp4 and avi, 9 to 21 frames)."""
    root = tmp_path_factory.mktemp("vf") / "videos"
    for c, cls in enumerate(["jump", "run", "swim"]):
        for k in range(5):
            write_index_video(str(root / cls / f"clip{k}{'.mp4' if k % 2 else '.AVI'}"), 9 + 3 * k + c)
    (root / "run" / "notes.txt").write_text("not a video")
    return str(root)


def test_videofolder_classes_from_folders_and_a_seeded_stratified_split(folder_videos):
    cfg = Settings(dataset="videofolder", data_root=folder_videos, test_fraction=0.2, seed=3)
    lists = videofolder_lists(cfg)
    assert sorted(it.label for it in lists["test"]) == [0, 1, 2]  # one test video per class
    assert len(lists["train"]) == 12 and {it.video_id.split("/")[0] for it in lists["train"]} == {"jump", "run",
                                                                                                   "swim"}
    assert not {it.path for it in lists["train"]} & {it.path for it in lists["test"]}
    assert [it.path for it in videofolder_lists(cfg)["test"]] == [it.path for it in lists["test"]]
    other = videofolder_lists(Settings(dataset="videofolder", data_root=folder_videos, test_fraction=0.2, seed=4))
    assert [it.path for it in other["test"]] != [it.path for it in lists["test"]]


def test_videofolder_given_split_files_and_errors(folder_videos, tmp_path):
    lists_dir = tmp_path / "lists"
    lists_dir.mkdir()
    write_lines(lists_dir / "train.txt", ["jump/clip0.AVI", "run/CLIP1.mp4", "swim/clip2.AVI", "swim/gone.mp4"])
    write_lines(lists_dir / "test.txt", ["jump/clip3.mp4"])
    lists = videofolder_lists(Settings(dataset="videofolder", data_root=folder_videos, split_dir=str(lists_dir)))
    assert [it.label for it in lists["train"]] == [0, 1, 2] and "val" not in lists
    empty = tmp_path / "with_empty"
    write_index_video(str(empty / "a" / "x.mp4"), 5)
    (empty / "b").mkdir()
    with pytest.raises(UsageError, match="without videos .* b"):
        videofolder_lists(Settings(dataset="videofolder", data_root=str(empty)))
    with pytest.raises(UsageError, match="no class folders"):
        videofolder_lists(Settings(dataset="videofolder", data_root=str(tmp_path / "lists")))


# ----------------------------------------------------------------------------------------------------------------
# items: views, cache
# ----------------------------------------------------------------------------------------------------------------
def test_multi_view_items_and_logit_averaging(folder_videos):
    items = [VideoItem(os.path.join(folder_videos, "swim", "clip4.AVI"), 2, "swim/clip4.AVI")]  # 23 frames
    dataset = VideoFileDataset(items, ["jump", "run", "swim"], ClipSpec(4, 16, MEAN, STD), "report")
    single = dataset[0]["pixel_values"]
    assert single.shape == (4, 3, 16, 16)
    views = dataset.with_views(2, 3)[0]["pixel_values"]  # [clips x crops, T, C, S, S]
    assert views.shape == (6, 4, 3, 16, 16)
    clip_frames = [frame_numbers(views[v]) for v in (0, 3)]  # view 0 = clip 0 left crop, view 3 = clip 1 left
    assert clip_frames == [[1, 7, 12, 18], [4, 10, 15, 21]]  # clips at 1/4 and 3/4 of every segment
    class Linear(torch.nn.Module):  # logits = a linear function of the mean pixel, different per view
        batch_keys = {"pixel_values": "pixel_values", "labels": "labels"}

        def forward(self, pixel_values, labels=None):
            from videolab.models.classifier import ClassifierOutput
            m = pixel_values.mean(dim=(1, 2, 3, 4))[:, None]  # [B, 1]
            return ClassifierOutput(logits=torch.cat([m, -m, 2 * m], dim=1))
    batch = views[None]  # [1, V, T, C, S, S]
    out = MultiViewClassifier(Linear())(pixel_values=batch, labels=torch.tensor([2]))
    expected = torch.stack([Linear()(pixel_values=batch[:, v]).logits for v in range(6)]).mean(0)
    torch.testing.assert_close(out.logits, expected)
    assert out.loss is not None and out.logits.shape == (1, 3)


def test_cached_items_equal_decoded_items(folder_videos, tmp_path):
    items = [VideoItem(os.path.join(folder_videos, "run", f"clip{k}{'.mp4' if k % 2 else '.AVI'}"), 1, str(k))
             for k in range(5)]
    spec = ClipSpec(5, 16, MEAN, STD, sampling="dense", frame_stride=2, clips=2, crops=3)
    plain = VideoFileDataset(items, ["run"], spec, "report")
    cached = VideoFileDataset(items, ["run"], spec, "report", cache=FrameCache(str(tmp_path)))
    for epoch in range(2):  # the first fills the cache, the second reads it
        for i in range(len(items)):
            torch.testing.assert_close(cached[i]["pixel_values"], plain[i]["pixel_values"], rtol=0, atol=0)
    assert len([f for _, _, fs in os.walk(tmp_path) for f in fs]) == len(items)


# ----------------------------------------------------------------------------------------------------------------
# bad videos
# ----------------------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def folder_with_bad_videos(folder_videos, tmp_path_factory):
    """(root, split_dir): the video folder plus a zero-byte and a zero-frame video in class 'run', all in the
    training list; the test list is clip0 of every class."""
    import shutil

    from video_fixtures import write_zero_frame_avi
    base = tmp_path_factory.mktemp("bad")
    root, lists = str(base / "videos"), base / "lists"
    shutil.copytree(folder_videos, root)
    open(os.path.join(root, "run", "empty.mp4"), "wb").close()
    write_zero_frame_avi(os.path.join(root, "run", "no_frames.avi"))
    lists.mkdir()
    names = [f"{c}/{f}" for c in ("jump", "run", "swim") for f in sorted(os.listdir(os.path.join(root, c)))
             if not f.endswith(".txt")]
    write_lines(lists / "test.txt", [n for n in names if "clip0" in n])
    write_lines(lists / "train.txt", [n for n in names if "clip0" not in n])
    return root, str(lists)


def test_training_skips_bad_videos_by_name_and_stops_above_the_limit(folder_with_bad_videos, tmp_path, capsys):
    root, lists = folder_with_bad_videos
    flags = ["--dataset", "videofolder", "--data_root", root, "--split_dir", lists, "--output_dir", str(tmp_path),
             "--val_fraction", "0", "--epochs", "1", "--batch_size", "4", *TINY_FLAGS,
             "--quiet", "--summary_csv", "none", "--speed_repeats", "0"]
    code = run_cli(train_main.main, flags + ["--run_name", "strict"])  # default limit 5 %: 2 of 14 is too many
    err = capsys.readouterr().err
    assert code == 2 and "run/empty.mp4" in err and "run/no_frames.avi" in err
    assert "2 of 14 train videos (14.3%) cannot be read, more than --max_bad_video_fraction 0.05" in err
    report = train_main.main(flags + ["--run_name", "lenient", "--max_bad_video_fraction", "0.2"])
    skipped = {b["video"]: b["reason"] for b in report["bad_videos"]["skipped_in_training"]}
    assert set(skipped) == {"run/empty.mp4", "run/no_frames.avi"} and "0 frames" in skipped["run/no_frames.avi"]
    assert report["bad_videos"]["test"] == [] and report["num_samples"] == 3


@pytest.mark.filterwarnings("ignore:This DataLoader will create")  # 2 workers on a 1-core taskset
def test_a_video_that_fails_in_a_worker_is_replaced_counted_and_the_limit_stops_training(folder_videos, tmp_path):
    import shutil
    root = str(tmp_path / "videos")
    shutil.copytree(folder_videos, root)
    items = [VideoItem(os.path.join(root, "jump", f), 0, f) for f in ("clip0.AVI", "clip1.mp4", "clip2.AVI")]
    spec = ClipSpec(4, 16, MEAN, STD, train=True)
    lenient = VideoFileDataset(items, ["jump"], spec, "skip", max_bad_fraction=0.5)  # indexed while all are fine
    strict = VideoFileDataset(items, ["jump"], spec, "skip", max_bad_fraction=0.4)
    open(items[1].path, "wb").close()  # breaks after indexing: found while loading, in a DataLoader worker
    batch = next(iter(make_loader(lenient, 3, False, 2, 0)))
    assert batch["video_id"] == ["clip0.AVI", "clip2.AVI", "clip2.AVI"]  # the next good video took its place
    assert lenient.bad.count() == 1  # the worker's mark is seen by the main process
    assert lenient.bad_videos() == [dict(video="clip1.mp4", reason=f"{items[1].path}: empty file (0 bytes)")]
    open(items[2].path, "wb").close()
    with pytest.raises(TooManyBadVideos) as info:  # 1 of 3 is allowed, 2 of 3 is not
        list(make_loader(strict, 3, False, 2, 0))
    assert "\n" not in str(info.value) and str(info.value).startswith("2 of 3 videos (66.7%) cannot be read")


def test_bad_video_log_threshold():
    log = BadVideoLog(10, "skip", max_fraction=0.2)
    log.mark(0, "a", "broken", warn=False)
    log.mark(1, "b", "broken", warn=False)
    with pytest.raises(TooManyBadVideos, match="3 of 10"):
        log.mark(2, "c", "broken", warn=False)
    report = BadVideoLog(2, "report", max_fraction=0.0)
    report.mark(0, "a", "broken", warn=False)  # evaluation never stops: it lists
    assert report.count() == 1


@pytest.fixture(scope="module")
def video_run(folder_videos, tmp_path_factory):
    """A tiny model trained on the clean video folder."""
    out = tmp_path_factory.mktemp("video_runs")
    report = train_main.main(["--dataset", "videofolder", "--data_root", folder_videos, "--output_dir", str(out),
                              "--run_name", "tiny", "--epochs", "1", "--batch_size", "4", *TINY_FLAGS, "--quiet",
                              "--summary_csv", "none", "--speed_repeats", "0", "--cache_dir", str(out / "cache")])
    return str(out / "tiny" / "best"), report


def test_multi_view_evaluation_reports_both_protocols(video_run, folder_videos):
    folder, trained = video_run
    assert trained["views"]["protocol"] == "single-view" and trained["views"]["multi_view"] is None
    report = train_main.main(["--eval_only", "True", "--checkpoint", folder, "--test_clips", "2", "--test_crops", "3",
                              "--quiet", "--summary_csv", "none", "--speed_repeats", "0"])
    views = report["views"]
    assert (views["protocol"], views["clips"], views["crops"], views["views"]) == ("multi-view", 2, 3, 6)
    assert views["single_view"] == pytest.approx(trained["views"]["single_view"])  # same weights, same view
    assert report["top1"] == views["multi_view"]["top1"] and report["loss"] == views["multi_view"]["loss"]
    assert views["multi_view"]["loss"] != views["single_view"]["loss"]


def test_evaluation_lists_bad_test_videos_and_exits_3(video_run, folder_videos, tmp_path, capsys):
    import shutil
    folder, trained = video_run
    root = str(tmp_path / "videos")
    shutil.copytree(folder_videos, root)
    cfg = Settings(dataset="videofolder", data_root=root, test_fraction=0.2)
    victim = videofolder_lists(cfg)["test"][1]
    with open(victim.path, "wb") as fh:
        fh.write(b"broken")
    code = run_cli(train_main.main, ["--eval_only", "True", "--checkpoint", folder, "--data_root", root, "--quiet",
                                     "--summary_csv", "none", "--speed_repeats", "0"])
    err = capsys.readouterr().err
    assert code == 3 and "1 test video(s) could not be read" in err and victim.video_id in err
    saved = json.load(open(os.path.join(os.path.dirname(folder), "eval.json")))
    assert [b["video"] for b in saved["bad_videos"]["test"]] == [victim.video_id]
    assert saved["num_samples"] == 2 and saved["num_bad_videos"] == 1
    assert sum(map(sum, saved["confusion_matrix"])) == 2  # the bad video is in no metric


def test_inference_on_video_files_and_a_bad_one(video_run, folder_videos, tmp_path, monkeypatch, capsys):
    folder, _ = video_run
    monkeypatch.chdir(tmp_path)
    one = inference.main(["--video_dir", os.path.join(folder_videos, "swim", "clip3.mp4"), "--checkpoint", folder,
                          "--quiet", "--top_k", "2"])
    assert [p["video"] for p in one["predictions"]] == ["clip3.mp4"] and len(one["predictions"][0]["top_k"]) == 2
    assert one["views"]["protocol"] == "single-view" and one["bad_videos"] == []
    every = inference.main(["--video_dir", folder_videos, "--checkpoint", folder, "--quiet", "--test_clips", "2",
                            "--predictions_file", "every.json"])  # predictions.json exists: never replaced silently
    assert len(every["predictions"]) == 15 and every["num_labelled"] == 15  # class folders give the labels
    assert every["views"]["clips"] == 2 and every["predictions"][0]["video"] == "jump/clip0.AVI"
    mixed = tmp_path / "mixed"
    mixed.mkdir()
    write_index_video(str(mixed / "good.mkv"), 12)
    (mixed / "bad.webm").write_bytes(b"\x1a\x45\xdf\xa3 not really")
    code = run_cli(inference.main, ["--video_dir", str(mixed), "--checkpoint", folder, "--quiet",
                                    "--predictions_file", "mixed.json"])
    assert code == 3 and "bad.webm" in capsys.readouterr().err
    saved = json.load(open("mixed.json"))
    assert [p["video"] for p in saved["predictions"]] == ["good.mkv"]
    assert [b["video"] for b in saved["bad_videos"]] == ["bad.webm"]
