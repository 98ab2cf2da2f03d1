"""Video question-answer records for supervised fine-tuning (``--dataset qa_json``), read from JSON files.

``--data_root`` is a folder with ``train.json`` and ``test.json`` (optionally ``val.json``; without it
``--val_fraction`` of train is held out, seeded). Each file is a JSON list of records (or JSON Lines, one record a
line). Two record formats are accepted:

1. plain::

       {"video": "clips/v1.mp4", "question": "What happens?", "answer": "a red ball rolls to the left"}

   ("id" optional; "question" optional: the default question is "Describe the video.")
2. the common multimodal chat format (LLaMA-Factory / ms-swift style)::

       {"messages": [{"role": "user", "content": "<video>What happens?"},
                     {"role": "assistant", "content": "a red ball rolls to the left"}],
        "videos": ["clips/v1.mp4"]}

   ``content`` may also be a list of parts (``{"type": "video"}``, ``{"type": "text", "text": ...}``); the
   ``<video>`` placeholder is dropped (the processor inserts the real one). A system message is ignored (the
   chat template adds its own). The question is the last user turn before the last assistant turn, the answer that
   assistant turn; exactly one video per record.

3. a WebVid-style CSV (``train.csv`` ...), one clip and its caption a row: the video in a ``video`` / ``path`` /
   ``videoid`` / ``video_id`` column (a path, or an id found as ``<id>.<ext>`` beside the CSV, in ``videos/`` or
   in its ``page_dir`` folder, as WebVid downloads are laid out), the caption in ``caption`` / ``name`` (WebVid's)
   / ``answer``, an optional ``question`` column (default "Describe the video.").

Or a LLaMA-Factory dataset description: ``<data_root>/dataset_info.json`` whose entries named ``train`` / ``val`` /
``test`` (or ending in ``_train``, ``_val``, ``_test``) give ``file_name``, ``formatting`` (``sharegpt``, the
default, or ``alpaca``), ``columns`` (messages / videos; prompt / query / response) and ``tags`` (role_tag,
content_tag, user_tag, assistant_tag), with LLaMA-Factory's defaults (``conversations``, ``from`` / ``value``,
``human`` / ``gpt``; ``instruction`` / ``input`` / ``output``).

``--max_eval_samples N`` evaluates on the first N validation and test records only (a quick check).

Video paths are relative to the JSON file's folder (or absolute): a video file (read with PyAV, see video_io.py),
a folder of frame images, or a ``.pt`` uint8 tensor [T, C, H, W] (what the synthetic dataset holds).
``--num_frames`` frames are sampled evenly (``--sampling uniform``). A record that breaks these rules stops the run
with one line naming the file, the record and the fix.

``python apps/make_qa_dataset.py --synthetic_root synthetic_dataset --out qa_synthetic`` turns the synthetic
dataset into such
files (chat format): for every video the question "Describe the video." with its caption as the answer, and with
``--motion_questions`` also "How does the shape move?" with the motion (e.g. "it moves to the left").
"""
from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from typing import Callable, Optional, Sequence

import torch

from videolab.core.errors import UsageError
from videolab.core.files import write_json
from videolab.core.inputs import quote, read_text
from videolab.data.clips import BadVideoLog, ClipDataset, DataBundle, DatasetSource, stratified_split
from videolab.data.frames import _image_files, read_frames
from videolab.data.sampling import ClipSpec
from videolab.data.synthetic import CAPTION_VERB, read_annotations
from videolab.data.video_io import VideoError, is_video_file, probe_video, read_frames as read_video_frames, \
    resized_shape

SPLIT_FILES = ("train", "val", "test")
VIDEO_PLACEHOLDER = re.compile(r"<video>\s*")
DESCRIBE = "Describe the video."
MOTION_QUESTION = "How does the shape move?"


@dataclass
class QARecord:
    video: str  # absolute path
    question: str
    answer: str
    video_id: str


# ----------------------------------------------------------------------------------------------------------------
# reading records
# ----------------------------------------------------------------------------------------------------------------
def _text_of(content, where: str) -> str:
    """A chat message's text: a string, or the text parts of a list of parts (video parts dropped)."""
    if isinstance(content, str):
        return VIDEO_PLACEHOLDER.sub("", content).strip()
    if isinstance(content, list):
        return " ".join(VIDEO_PLACEHOLDER.sub("", p.get("text", "")).strip() for p in content
                        if isinstance(p, dict) and p.get("type", "text") == "text").strip()
    raise ValueError(f"{where}: message content must be a string or a list of parts, got {type(content).__name__}")


def _from_chat(record: dict, where: str) -> tuple[str, str, str]:
    messages, videos = record.get("messages"), record.get("videos")
    if not isinstance(messages, list) or not messages:
        raise ValueError(f"{where}: 'messages' must be a non-empty list of {{role, content}}")
    if not isinstance(videos, list) or len(videos) != 1 or not isinstance(videos[0], str):
        raise ValueError(f"{where}: expected 'videos' with exactly one video path, got {videos!r}; split records "
                         f"with several videos into one record per video")
    roles = [m.get("role") if isinstance(m, dict) else None for m in messages]
    if "assistant" not in roles:
        raise ValueError(f"{where}: no assistant message; the last assistant turn is the answer to learn")
    last = len(roles) - 1 - roles[::-1].index("assistant")
    users = [i for i in range(last) if roles[i] == "user"]
    question = _text_of(messages[users[-1]]["content"], where) if users else ""
    return videos[0], question, _text_of(messages[last]["content"], where)


def parse_record(record, where: str) -> tuple[str, str, str]:
    """(video path as written, question, answer) of one record in either format; ValueError names the fix."""
    if not isinstance(record, dict):
        raise ValueError(f"{where}: expected a JSON object, got {type(record).__name__}")
    if "messages" in record:
        video, question, answer = _from_chat(record, where)
    elif "video" in record and "answer" in record:
        video, question, answer = record["video"], record.get("question") or "", record["answer"]
    else:
        raise ValueError(f"{where}: expected {{'video', 'question', 'answer'}} or {{'messages', 'videos'}}, got keys "
                         f"{sorted(record)}")
    if not isinstance(answer, str) or not answer.strip():
        raise ValueError(f"{where}: the answer is empty; every record needs a non-empty answer")
    return video, VIDEO_PLACEHOLDER.sub("", question).strip(), answer.strip()


def read_json_records(path: str) -> list:
    """A JSON list (or JSON Lines) of records, as written. Raises UsageError."""
    text = read_text(path, "question-answer file", "pass a JSON list or JSON Lines of records (videolab/data/qa.py)")
    try:
        data = json.loads(text)
        return data if isinstance(data, list) else [data]
    except (json.JSONDecodeError, RecursionError):
        try:
            return [json.loads(line) for line in text.splitlines() if line.strip()]
        except (json.JSONDecodeError, RecursionError) as exc:
            raise UsageError(f"{path} is neither a JSON list nor JSON Lines ({exc}); see videolab/data/qa.py for the "
                             f"format") from None


def read_records(path: str, entry: Optional[dict] = None) -> list[QARecord]:
    """A JSON list (or JSON Lines, or a WebVid-style CSV) of records -> QARecords with absolute video paths;
    ``entry``: the LLaMA-Factory dataset_info.json entry the file belongs to. Raises UsageError."""
    if path.lower().endswith(".csv"):
        data = read_csv_records(path)
    else:
        data = read_json_records(path)
        if entry is not None:
            data = [from_dataset_info(entry, r, f"{path} record {n}") if isinstance(r, dict) else r
                    for n, r in enumerate(data)]
    base = os.path.dirname(os.path.abspath(path))
    records = []
    for n, record in enumerate(data):
        if not isinstance(record, dict):
            raise UsageError(f"{path} record {n}: expected a JSON object, got {type(record).__name__} "
                             f"{quote(record, 40)}; see videolab/data/qa.py for the format")
        try:
            video, question, answer = parse_record(record, f"{path} record {n}")
        except ValueError as exc:
            raise UsageError(str(exc)) from None
        full = video if os.path.isabs(video) else os.path.join(base, video)
        video_id = str(record.get("id") or f"{os.path.splitext(os.path.basename(path))[0]}/{n}:{video}")
        records.append(QARecord(full, question, answer, video_id))
    if not records:
        raise UsageError(f"{path} holds no records")
    return records


CSV_VIDEO_COLUMNS = ("video", "path", "videoid", "video_id")
CSV_CAPTION_COLUMNS = ("caption", "name", "answer")


def _csv_video(row: dict, column: str, base: str) -> str:
    """The video file of a CSV row: a path (relative to the CSV's folder), or a WebVid id looked up as
    ``<id>.<ext>`` beside the CSV, in ``videos/`` and in ``<page_dir>/`` (the first that exists; else the path)."""
    value = row[column].strip()
    if os.path.exists(value if os.path.isabs(value) else os.path.join(base, value)):
        return value
    folders = [base, os.path.join(base, "videos")] + ([os.path.join(base, row["page_dir"].strip()),
                                                       os.path.join(base, "videos", row["page_dir"].strip())]
                                                      if row.get("page_dir") else [])
    for folder in folders:
        for ext in (".mp4", ".webm", ".mkv", ".avi", ".mov"):
            if os.path.isfile(os.path.join(folder, value + ext)):
                return os.path.join(folder, value + ext)
    return value


def read_csv_records(path: str) -> list[dict]:
    """A WebVid-style CSV -> plain records {id, video, question, answer}. Raises UsageError naming the fix."""
    import csv
    import io
    text = read_text(path, "caption CSV", "pass a CSV with a video and a caption column (videolab/data/qa.py)")
    try:
        rows = list(csv.DictReader(io.StringIO(text, newline="")))
    except csv.Error as exc:
        raise UsageError(f"{path} is not a readable CSV ({exc}); save it as plain comma-separated UTF-8") from None
    header = list(rows[0]) if rows else []
    video_col = next((c for c in CSV_VIDEO_COLUMNS if c in header), None)
    caption_col = next((c for c in CSV_CAPTION_COLUMNS if c in header), None)
    if video_col is None or caption_col is None:
        raise UsageError(f"{path}: expected a video column ({' / '.join(CSV_VIDEO_COLUMNS)}) and a caption column "
                         f"({' / '.join(CSV_CAPTION_COLUMNS)}), got {header}")
    short = next((n for n, row in enumerate(rows, 2) if row[video_col] is None or row[caption_col] is None), None)
    if short is not None:
        raise UsageError(f"{path} line {short}: fewer fields than the header ({', '.join(header)}); fill the row or "
                         f"remove it")
    base = os.path.dirname(os.path.abspath(path))
    return [dict(id=row[video_col].strip(), video=_csv_video(row, video_col, base),
                 question=(row.get("question") or "").strip(), answer=row[caption_col]) for row in rows]


# LLaMA-Factory's dataset_info.json defaults (data/README.md there): sharegpt and alpaca columns, sharegpt tags
SHAREGPT_COLUMNS = dict(messages="conversations", videos="videos")
SHAREGPT_TAGS = dict(role_tag="from", content_tag="value", user_tag="human", assistant_tag="gpt")
ALPACA_COLUMNS = dict(prompt="instruction", query="input", response="output", videos="videos")
DATASET_INFO = "dataset_info.json"


def dataset_info_entry(root: str, split: str) -> Optional[dict]:
    """The dataset_info.json entry of a split (named ``split`` or ending in ``_split``), or None."""
    path = os.path.join(root, DATASET_INFO)
    if not os.path.isfile(path):
        return None
    text = read_text(path, "dataset description", "pass LLaMA-Factory's dataset_info.json format")
    try:
        info = json.loads(text)
    except (json.JSONDecodeError, RecursionError) as exc:
        raise UsageError(f"{path} is not valid JSON ({getattr(exc, 'msg', 'nested too deep')})") from None
    if not isinstance(info, dict) or not all(isinstance(v, dict) for v in info.values()):
        raise UsageError(f"{path}: expected an object of dataset entries, each an object (LLaMA-Factory's "
                         f"dataset_info.json format), got {quote(info, 40)}")
    names = [n for n in info if n == split or n.endswith((f"_{split}", f"-{split}"))]
    if len(names) > 1:
        raise UsageError(f"{path}: several entries for the {split} split ({', '.join(names)}); keep one")
    return dict(info[names[0]], name=names[0]) if names else None


def from_dataset_info(entry: dict, record: dict, where: str) -> dict:
    """One record of a LLaMA-Factory dataset -> this module's chat format (messages with role / content)."""
    columns = entry.get("columns") or {}
    if entry.get("formatting", "sharegpt") == "alpaca":
        col = {**ALPACA_COLUMNS, **columns}
        prompt = " ".join(str(record.get(col[k]) or "") for k in ("prompt", "query")).strip()
        return dict(messages=[dict(role="user", content=prompt),
                              dict(role="assistant", content=record.get(col["response"], ""))],
                    videos=record.get(col["videos"]))
    col, tags = {**SHAREGPT_COLUMNS, **columns}, {**SHAREGPT_TAGS, **(entry.get("tags") or {})}
    roles = {tags["user_tag"]: "user", tags["assistant_tag"]: "assistant"}
    turns = record.get(col["messages"])
    if not isinstance(turns, list):
        raise UsageError(f"{where}: no {col['messages']!r} list (the entry's columns.messages); check "
                         f"{DATASET_INFO}")
    messages = [dict(role=roles.get(t.get(tags["role_tag"]), t.get(tags["role_tag"])),
                     content=t.get(tags["content_tag"], "")) for t in turns if isinstance(t, dict)]
    return dict(messages=messages, videos=record.get(col["videos"]))


def split_path(root: str, split: str) -> Optional[str]:
    """The records file of a split: ``<split>.json`` / ``.jsonl`` / ``.csv``, else the file a LLaMA-Factory
    ``dataset_info.json`` entry names."""
    for ext in (".json", ".jsonl", ".csv"):
        path = os.path.join(root, split + ext)
        if os.path.isfile(path):
            return path
    entry = dataset_info_entry(root, split)
    return os.path.join(root, entry["file_name"]) if entry and "file_name" in entry else None


# ----------------------------------------------------------------------------------------------------------------
# the dataset
# ----------------------------------------------------------------------------------------------------------------
class QAVideoDataset(ClipDataset):
    """One item per record: pixel_values + caption (the answer) + hint (the question) + video_id (labels -1)."""

    def __init__(self, records: Sequence[QARecord], spec, policy: str, max_bad_fraction: float = 1.0,
                 what: str = "videos"):
        self.records, self.spec = list(records), spec
        self.bad = BadVideoLog(len(self.records), policy, max_bad_fraction, what=what)

    def __len__(self) -> int:
        return len(self.records)

    def load_frames(self, i: int, pick: Callable[[int], list[int]]) -> torch.Tensor:
        return load_video(self.records[i].video, pick, self.spec.image_size)

    def fields(self, i: int) -> dict:
        r = self.records[i]
        return dict(labels=torch.tensor(-1), video_id=r.video_id, caption=r.answer, hint=r.question)


def load_video(path: str, pick: Callable[[int], list[int]], image_size: int) -> torch.Tensor:
    """The picked frames of a .pt tensor, a frame folder or a video file -> uint8 [F, C, H, W]."""
    if os.path.isdir(path):
        count = len(_image_files(path))
        if not count:
            raise VideoError(f"{path}: no frame images")
        return read_frames(path, pick(count))
    if not os.path.isfile(path):
        raise VideoError(f"{path}: no such file")
    if path.endswith(".pt"):
        try:
            video = torch.load(path, weights_only=True)
        except Exception as exc:  # noqa: BLE001 - a corrupt tensor file, whatever torch raises
            raise VideoError(f"{path}: cannot load ({type(exc).__name__})") from None
        if not isinstance(video, torch.Tensor) or video.dim() != 4 or not len(video):
            raise VideoError(f"{path}: expected a uint8 tensor [T, C, H, W]")
        return video[pick(len(video))]
    if not is_video_file(path):
        raise VideoError(f"{path}: not a video file, frame folder or .pt tensor")
    meta = probe_video(path)
    frames = read_video_frames(path, meta, pick(meta.num_frames),
                               resized_shape(meta.height, meta.width, image_size))  # [F, H, W, 3]
    return torch.from_numpy(frames).permute(0, 3, 1, 2)


def _root(cfg) -> str:
    if not os.path.isdir(cfg.data_root) or split_path(cfg.data_root, "train") is None:
        raise UsageError(f"--dataset qa_json: --data_root {cfg.data_root!r} must be a folder with train.json and "
                         f"test.json (or .jsonl, .csv, or a LLaMA-Factory dataset_info.json; see "
                         f"videolab/data/qa.py for the record formats; python apps/make_qa_dataset.py "
                         f"--synthetic_root ... --out ... writes one)")
    if split_path(cfg.data_root, "test") is None:
        raise UsageError(f"--dataset qa_json: {cfg.data_root!r} has no test.json; add the records to evaluate on")
    return cfg.data_root


def class_names(cfg) -> list[str]:
    """Question answering has no classes."""
    _root(cfg)
    return []


def split_records(root: str, split: str) -> Optional[list[QARecord]]:
    """The records of a split, from whichever file holds them (None: the split has none)."""
    path = split_path(root, split)
    if path is None:
        return None
    if not os.path.isfile(path):
        raise UsageError(f"{os.path.join(root, DATASET_INFO)}: the {split} entry's file_name {path!r} does not "
                         f"exist")
    own = any(os.path.isfile(os.path.join(root, split + ext)) for ext in (".json", ".jsonl", ".csv"))
    return read_records(path, None if own else dataset_info_entry(root, split))


def training_texts(cfg) -> list[str]:
    """Answers and questions of the training records (the offline tokenizer is trained on them)."""
    records = split_records(_root(cfg), "train")
    return [r.answer for r in records] + [r.question for r in records if r.question]


def build(cfg, train_spec: ClipSpec, eval_spec: ClipSpec, parts: Sequence[str]) -> DataBundle:
    """train / val / test QAVideoDatasets (no flips or random crops unless asked for: answers say left and
    right, which the registry's ``mirror_classes`` tells ``VLoader.clip_spec``)."""
    root = _root(cfg)
    lists = {split: split_records(root, split) for split in SPLIT_FILES if split_path(root, split)}
    if "val" not in lists and cfg.val_fraction > 0:
        train = lists["train"]
        kept, held = stratified_split([0] * len(train), cfg.val_fraction, cfg.seed)
        lists["train"], lists["val"] = [train[i] for i in kept], [train[i] for i in held]
    limit = getattr(cfg, "max_eval_samples", 0)
    if limit:  # a quick check: the first records of the evaluated splits
        lists.update({split: lists[split][:limit] for split in ("val", "test") if lists.get(split)})

    def dataset(split: str, spec, policy: str) -> Optional[QAVideoDataset]:
        if split not in parts or not lists.get(split):
            return None
        return QAVideoDataset(lists[split], spec, policy, cfg.max_bad_video_fraction, what=f"{split} videos")
    return DataBundle(dataset("train", train_spec, "skip"), dataset("val", eval_spec, "skip"),
                      dataset("test", eval_spec, "report"), [])


# ----------------------------------------------------------------------------------------------------------------
# the synthetic dataset as QA records
# ----------------------------------------------------------------------------------------------------------------
def synthetic_records(root: str, split: str, motion_questions: bool = False) -> list[dict]:
    """Chat-format records of one split of the synthetic dataset (video paths absolute)."""
    records = []
    for r in read_annotations(root, split):
        video = os.path.abspath(os.path.join(root, split, r["path"]))
        qa = [(DESCRIBE, r["caption"])]
        if motion_questions:
            qa.append((MOTION_QUESTION, f"it {CAPTION_VERB[r['label']]}"))
        for question, answer in qa:
            records.append({"id": f"{split}/{r['path']}" + ("" if question == DESCRIBE else "#motion"),
                            "messages": [{"role": "user", "content": f"<video>{question}"},
                                         {"role": "assistant", "content": answer}],
                            "videos": [video]})
    return records


def write_synthetic(root: str, out: str, motion_questions: bool = False) -> list[str]:
    os.makedirs(out, exist_ok=True)
    written = []
    for split in ("train", "test"):
        path = os.path.join(out, f"{split}.json")
        written.append(write_json(path, synthetic_records(root, split, motion_questions), indent=1))
    return written


class QASource(DatasetSource):
    """``--dataset qa_json`` (registered in ``data/registry.py``); records are never generated here
    (``apps/make_qa_dataset.py`` writes the synthetic ones)."""

    class_names = staticmethod(class_names)
    build = staticmethod(build)
    texts = staticmethod(training_texts)
