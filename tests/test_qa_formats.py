"""Video-language data (issue 22): Qwen2-VL fine-tuning records also from a WebVid-style CSV and from a
LLaMA-Factory dataset description (dataset_info.json), and --max_eval_samples for quick checks."""
import json
import os

import pytest

from conftest import resolve
from videolab.core.errors import UsageError
from videolab.data import qa
from videolab.data.sampling import make_clip_spec


def write(path, text):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as fh:
        fh.write(text)
    return path


def test_webvid_csv_by_video_id_page_dir_or_path(tmp_path):
    root = str(tmp_path)
    for name in ("videos/000001_000050/1066674784.mp4", "clips/b.mp4", "42.webm"):
        write(os.path.join(root, name), "")
    write(os.path.join(root, "train.csv"), "videoid,contentUrl,duration,page_dir,name\n"
          "1066674784,https://x/1.mp4,PT00H00M10S,000001_000050,\"Aerial view of a city, at dusk\"\n"
          "42,https://x/2.mp4,PT00H00M05S,000001_000050,A dog runs\n")
    write(os.path.join(root, "test.csv"), "path,caption,question\nclips/b.mp4,a red ball,What rolls?\n")
    train = qa.split_records(root, "train")
    assert [(os.path.relpath(r.video, root), r.question, r.answer, r.video_id) for r in train] == [
        ("videos/000001_000050/1066674784.mp4", "", "Aerial view of a city, at dusk", "1066674784"),
        ("42.webm", "", "A dog runs", "42")]
    test = qa.split_records(root, "test")
    assert [(os.path.relpath(r.video, root), r.question, r.answer) for r in test] == [
        ("clips/b.mp4", "What rolls?", "a red ball")]
    write(os.path.join(root, "bad.csv"), "url,text\nx,y\n")
    with pytest.raises(UsageError, match="expected a video column"):
        qa.read_records(os.path.join(root, "bad.csv"))


def test_llama_factory_dataset_info_sharegpt_and_alpaca(tmp_path):
    root = str(tmp_path)
    info = {
        "clips_train": {"file_name": "sharegpt.json", "formatting": "sharegpt",
                        "columns": {"messages": "messages", "videos": "videos"},
                        "tags": {"role_tag": "role", "content_tag": "content", "user_tag": "user",
                                 "assistant_tag": "assistant"}},
        "clips_test": {"file_name": "default_sharegpt.json"},  # LLaMA-Factory's defaults: conversations, from/value
        "clips_val": {"file_name": "alpaca.json", "formatting": "alpaca", "columns": {"videos": "videos"}},
    }
    write(os.path.join(root, "dataset_info.json"), json.dumps(info))
    write(os.path.join(root, "sharegpt.json"), json.dumps([
        {"messages": [{"role": "user", "content": "<video>What happens?"},
                      {"role": "assistant", "content": "a ball rolls"}], "videos": ["a.mp4"]}]))
    write(os.path.join(root, "default_sharegpt.json"), json.dumps([
        {"conversations": [{"from": "human", "value": "<video>Which way?"}, {"from": "gpt", "value": "left"}],
         "videos": ["b.mp4"]}]))
    write(os.path.join(root, "alpaca.json"), json.dumps([
        {"instruction": "<video>Describe", "input": "briefly", "output": "a cat", "videos": ["c.mp4"]}]))
    got = {split: [(os.path.basename(r.video), r.question, r.answer) for r in qa.split_records(root, split)]
           for split in ("train", "val", "test")}
    assert got == {"train": [("a.mp4", "What happens?", "a ball rolls")], "test": [("b.mp4", "Which way?", "left")],
                   "val": [("c.mp4", "Describe briefly", "a cat")]}
    info["clips_test"]["file_name"] = "missing.json"
    write(os.path.join(root, "dataset_info.json"), json.dumps(info))
    with pytest.raises(UsageError, match="file_name .* does not exist"):
        qa.split_records(root, "test")


def test_max_eval_samples_limits_validation_and_test(tmp_path):
    root = str(tmp_path)
    records = [{"video": f"v{i}.pt", "answer": f"answer {i}"} for i in range(10)]
    for split in ("train", "val", "test"):
        write(os.path.join(root, f"{split}.json"), json.dumps(records))
    cfg, _, _ = resolve(["--dataset", "qa_json", "--data_root", root, "--use_vlm", "True", "--captioning", "True",
                         "--max_eval_samples", "3"])
    spec = make_clip_spec(4, 32, (0.5,) * 3, (0.25,) * 3)
    bundle = qa.build(cfg, spec, spec, ("train", "val", "test"))
    assert (len(bundle.train), len(bundle.val), len(bundle.test)) == (10, 3, 3)
    with pytest.raises(UsageError, match="--max_eval_samples limits the records of --dataset qa_json"):
        resolve(["--max_eval_samples", "3"])
