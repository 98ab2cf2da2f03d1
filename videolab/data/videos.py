"""Real video datasets: UCF101 with its official split files, and any folder of class folders of videos.

This module only finds files, reads split lists and probes videos; decoding is ``video_io``, sampling, views and
the bad-video policy are ``sampling``, ``transforms`` and ``clips``.

UCF101 (``--dataset ucf101 --data_root UCF-101 --split 1``): ``<root>/<ClassName>/v_<ClassName>_gXX_cYY.avi``
and the split folder ``ucfTrainTestlist/`` (``classInd.txt``, ``trainlist0N.txt``, ``testlist0N.txt``), taken
from ``--split_dir``, else ``<root>/ucfTrainTestlist``, else beside the root (the official zip unpacks next to
``UCF-101/``). What the real files do, and how each is handled:

* ``classInd.txt`` lines ``1 ApplyEyeMakeup``: numbered from 1; must run 1..K without gaps or repeats.
* ``trainlist0N.txt`` lines ``ApplyEyeMakeup/v_ApplyEyeMakeup_g08_c01.avi 1``: the label is 1-based; it is
  checked to be in 1..K and to agree with the class folder of the path.
* ``testlist0N.txt`` lines have no label: the class comes from the folder part of the path.
* Windows line endings (CRLF), blank lines, surrounding spaces and a UTF-8 byte-order mark are ignored.
* ``HandstandPushups``: ``classInd.txt`` and the folder say ``HandstandPushups``, the files say
  ``v_HandStandPushups_...``, and some copies name the folder ``HandStandPushups``. Paths are matched
  case-insensitively against the files on disk, class names case-insensitively against ``classInd.txt``.

Before anything trains: listed files that are not on disk are named in one warning and dropped; a split left
empty, a class with no training video left, a label out of range or disagreeing with its folder, a class not in
``classInd.txt``, a class whose folder is missing, a missing split file: one line each, exit code 2. Validation
videos are held out of the training list by whole groups (``gXX``: the clips of a group are cut from one long
video, so a clip-level split would put near-duplicates on both sides), stratified by class and seeded.

videofolder (``--dataset videofolder --data_root PATH``): ``<root>/<class>/<video>.{avi,mp4,mkv,webm,mov}``
(extension case ignored, other files ignored); class names are the sorted folder names, as torchvision's
``ImageFolder`` does. Split: the lists in ``--split_dir`` (``train.txt``, ``test.txt`` and optionally
``val.txt``, one ``<class>/<file>`` per line, labels from the folder), or a seeded, stratified one:
``--test_fraction`` of every class to test, then ``--val_fraction`` of the rest to validation.

Every video of a split is probed (``video_io.probe_video``: its packet table, no decoding, about 1 ms) when the
split is built: frame counts drive the sampling, and unreadable videos are found before training starts.
Training and validation drop them (warning, counted against ``--max_bad_video_fraction``); the test split keeps
them as bad items that evaluation lists and leaves out of the metrics.
"""
from __future__ import annotations

import os
import re
import sys
from dataclasses import dataclass
from typing import Callable, Optional, Sequence

import torch
from tqdm.auto import tqdm

from videolab.core.errors import UsageError
from videolab.data.check import read_skip_list
from videolab.data.clips import (BadVideoLog, ClipDataset, DataBundle, DatasetSource, label_budget, natural_key,
                                  stratified_split)
from videolab.data.frames import SideFiles
from videolab.data.sampling import ClipSpec
from videolab.data.video_io import (VIDEO_EXTENSIONS, FrameCache, VideoError, VideoIndex, is_video_file,
                                    probe_video, read_frames, resized_shape)

UCF_SPLIT_FOLDER = "ucfTrainTestlist"
UCF_GROUP = re.compile(r"_g(\d+)_c\d+", re.IGNORECASE)  # v_<Class>_g08_c01.avi -> group 08
SPLIT_FILES = {"train": "train.txt", "val": "val.txt", "test": "test.txt"}  # videofolder --split_dir
MAX_NAMED = 10  # videos named in one warning line before "... and N more"


@dataclass(frozen=True)
class VideoItem:
    path: str  # the file on disk
    label: int  # 0-based class index (-1 = unknown)
    video_id: str  # how the video is named in reports: its path relative to the dataset root


def named(things: Sequence[str], limit: int = MAX_NAMED) -> str:
    """'a, b, c' or 'a, b, ... and 7 more'."""
    shown = ", ".join(things[:limit])
    return shown + (f" ... and {len(things) - limit} more" if len(things) > limit else "")


# ----------------------------------------------------------------------------------------------------------------
# list files and case-insensitive paths
# ----------------------------------------------------------------------------------------------------------------
def read_list(path: str) -> list[tuple[int, str]]:
    """The non-blank lines of a split file as (line number, stripped text); CRLF or LF, with or without a BOM."""
    with open(path, encoding="utf-8-sig") as fh:  # text mode turns \r\n into \n
        return [(n, line.strip()) for n, line in enumerate(fh, 1) if line.strip()]


class FileIndex:
    """``<class>/<file>`` paths under a root, matched case-insensitively (one listing per class folder)."""

    def __init__(self, root: str):
        self.root = root
        self.folders = {d.lower(): d for d in os.listdir(root) if os.path.isdir(os.path.join(root, d))}
        self._files: dict[str, dict[str, str]] = {}

    def folder(self, name: str) -> Optional[str]:
        return self.folders.get(name.lower())

    def resolve(self, relpath: str) -> Optional[str]:
        """The file on disk a listed ``Class/file.avi`` means, or None."""
        parts = relpath.replace("\\", "/").strip("/").split("/")
        folder = self.folder(parts[0]) if len(parts) == 2 else None
        if folder is None:
            return None
        if folder not in self._files:
            self._files[folder] = {f.lower(): f for f in os.listdir(os.path.join(self.root, folder))}
        name = self._files[folder].get(parts[1].lower())
        return os.path.join(self.root, folder, name) if name else None


def read_video_list(path: str, files: FileIndex, label_of: Callable[[str, list[str], int], int]) -> list[VideoItem]:
    """A split list, one ``<class>/<video>`` (plus optional columns) per line -> the listed videos on disk.
    ``label_of(relpath, columns, line_number)`` gives the 0-based label or raises UsageError for a bad line.
    Listed files that are not on disk are named in one warning and left out; none left is an error."""
    items, missing = [], []
    for n, text in read_list(path):
        columns = text.split()
        relpath = columns[0].replace("\\", "/")
        label = label_of(relpath, columns, n)
        resolved = files.resolve(relpath)
        if resolved is None:
            missing.append(relpath)
        else:
            items.append(VideoItem(resolved, label, relpath))
    warn_missing(missing, path, files.root)
    check_not_empty(items, missing, path, files.root)
    return items


def check_root(root: str) -> str:
    if not os.path.isdir(root):
        raise UsageError(f"--data_root {root!r} does not exist or is not a folder; pass the folder that holds the "
                         f"class folders (for UCF101 the unpacked UCF-101/)")
    return root


def warn_missing(missing: list[str], list_file: str, root: str) -> None:
    if missing:
        print(f"warning: {len(missing)} video(s) listed in {list_file} are not under {root} and are left out: "
              f"{named(missing)}", file=sys.stderr, flush=True)


def check_not_empty(items: list, missing: list, list_file: str, root: str) -> None:
    if not items:
        raise UsageError(f"no video listed in {list_file} was found under {root!r} ({len(missing)} listed, 0 on "
                         f"disk); check --data_root (the folder with the class folders) and --split_dir")


# ----------------------------------------------------------------------------------------------------------------
# UCF101
# ----------------------------------------------------------------------------------------------------------------
def ucf101_split_dir(cfg) -> str:
    root = os.path.normpath(cfg.data_root)
    tried = [cfg.split_dir] if cfg.split_dir else [os.path.join(root, UCF_SPLIT_FOLDER),
                                                   os.path.join(os.path.dirname(os.path.abspath(root)),
                                                                UCF_SPLIT_FOLDER)]
    for folder in tried:
        if os.path.isdir(folder):
            return folder
    raise UsageError(f"UCF101 split folder not found (tried {' and '.join(tried)}); unpack "
                     f"UCF101TrainTestSplits-RecognitionTask.zip there or pass --split_dir")


def split_file(folder: str, name: str) -> str:
    path = os.path.join(folder, name)
    if not os.path.isfile(path):
        raise UsageError(f"split file {path} not found; --split_dir must hold classInd.txt, trainlist0N.txt and "
                         f"testlist0N.txt (N = 1, 2, 3)")
    return path


def read_class_index(path: str) -> list[str]:
    """``classInd.txt`` -> class names in label order (its 1-based numbers become 0-based positions)."""
    names: dict[int, str] = {}
    for n, text in read_list(path):
        parts = text.split()
        if len(parts) != 2 or not parts[0].isdigit():
            raise UsageError(f"{path} line {n}: expected '<number> <ClassName>', got {text!r}")
        if int(parts[0]) in names:
            raise UsageError(f"{path} line {n}: class number {parts[0]} is used twice")
        names[int(parts[0])] = parts[1]
    if sorted(names) != list(range(1, len(names) + 1)):
        raise UsageError(f"{path}: class numbers must run 1..{len(names)} without gaps, got {sorted(names)[:5]}...")
    return [names[k] for k in range(1, len(names) + 1)]


def _parse_label(text: str, path: str, n: int, num_classes: int) -> int:
    try:
        label = int(text)
    except ValueError:
        raise UsageError(f"{path} line {n}: label {text!r} is not a number") from None
    if not 1 <= label <= num_classes:
        raise UsageError(f"{path} line {n}: label {label} out of range 1..{num_classes} (classInd.txt numbers "
                         f"classes from 1)")
    return label - 1


def read_ucf101_list(path: str, class_names: list[str], files: FileIndex) -> list[VideoItem]:
    """A train or test list -> its videos on disk. Labels from the folder part of each path; a label column
    (trainlist) is checked against it."""
    lookup = {c.lower(): i for i, c in enumerate(class_names)}

    def label_of(relpath: str, columns: list[str], n: int) -> int:
        folder = relpath.split("/")[0]
        label = lookup.get(folder.lower())
        if label is None or "/" not in relpath:
            raise UsageError(f"{path} line {n}: {relpath!r} does not start with a class of classInd.txt "
                             f"(expected '<ClassName>/<video>.avi')")
        if len(columns) > 1 and _parse_label(columns[1], path, n, len(class_names)) != label:
            raise UsageError(f"{path} line {n}: label {columns[1]} ({class_names[int(columns[1]) - 1]}) disagrees "
                             f"with the folder {folder!r} of {relpath!r}")
        if files.folder(folder) is None:
            raise UsageError(f"class {class_names[label]!r} ({path} line {n}) has no folder under "
                             f"{files.root!r}; is --data_root the unpacked UCF-101 folder?")
        return label
    return read_video_list(path, files, label_of)


def ucf101_class_names(cfg) -> list[str]:
    check_root(cfg.data_root)
    return read_class_index(split_file(ucf101_split_dir(cfg), "classInd.txt"))


def ucf101_lists(cfg) -> dict[str, list[VideoItem]]:
    """{train, test} items of official split ``cfg.split``, validated (see the module docstring)."""
    root = check_root(cfg.data_root)
    folder = ucf101_split_dir(cfg)
    class_names = read_class_index(split_file(folder, "classInd.txt"))
    files = FileIndex(root)
    lists = {}
    for part, name in (("train", f"trainlist0{cfg.split}.txt"), ("test", f"testlist0{cfg.split}.txt")):
        lists[part] = read_ucf101_list(split_file(folder, name), class_names, files)
    check_every_class_trains(lists["train"], class_names, f"trainlist0{cfg.split}.txt")
    return lists


def check_every_class_trains(items: list[VideoItem], class_names: list[str], where: str) -> None:
    present = {it.label for it in items}
    empty = [c for i, c in enumerate(class_names) if i not in present]
    if empty:
        raise UsageError(f"class(es) with no training video on disk in {where}: {named(empty)}; the model could "
                         f"never predict them: restore their videos or use another split")


def ucf101_groups(items: list[VideoItem]) -> list[str]:
    """The group of every clip (class + gXX); a name without one is its own group."""
    groups = []
    for it in items:
        match = UCF_GROUP.search(os.path.basename(it.path))
        groups.append(f"{it.label}:g{int(match.group(1))}" if match else it.video_id)
    return groups


# ----------------------------------------------------------------------------------------------------------------
# videofolder
# ----------------------------------------------------------------------------------------------------------------
def _video_files(folder: str) -> list[str]:
    return sorted((f for f in os.listdir(folder) if is_video_file(f) and os.path.isfile(os.path.join(folder, f))),
                  key=natural_key)


def videofolder_class_names(cfg) -> list[str]:
    """Sorted class folder names under the root; every class folder must hold at least one video."""
    root = check_root(cfg.data_root)
    classes = sorted(d for d in os.listdir(root) if os.path.isdir(os.path.join(root, d)) and not d.startswith("."))
    if not classes:
        raise UsageError(f"--data_root {root!r} has no class folders; expected <root>/<class>/<video> with videos "
                         f"{', '.join(VIDEO_EXTENSIONS)}")
    empty = [c for c in classes if not _video_files(os.path.join(root, c))]
    if empty:
        raise UsageError(f"class folder(s) without videos ({', '.join(VIDEO_EXTENSIONS)}) under {root!r}: "
                         f"{named(empty)}; add videos or remove the folders")
    return classes


def videofolder_lists(cfg) -> dict[str, list[VideoItem]]:
    """{train, val?, test} items: the --split_dir lists, else a seeded stratified split (test first)."""
    root = check_root(cfg.data_root)
    class_names = videofolder_class_names(cfg)
    if cfg.split_dir:
        return _given_lists(cfg, root, class_names)
    items = [VideoItem(os.path.join(root, c, f), label, f"{c}/{f}")
             for label, c in enumerate(class_names) for f in _video_files(os.path.join(root, c))]
    rest, test = stratified_split([it.label for it in items], cfg.test_fraction, cfg.seed)
    if not test:
        raise UsageError(f"--test_fraction {cfg.test_fraction} leaves no test video ({len(items)} videos in "
                         f"{len(class_names)} classes); raise it or add videos")
    return dict(train=[items[i] for i in rest], test=[items[i] for i in test])


def _given_lists(cfg, root: str, class_names: list[str]) -> dict[str, list[VideoItem]]:
    if not os.path.isdir(cfg.split_dir):
        raise UsageError(f"--split_dir {cfg.split_dir!r} is not a folder; it must hold train.txt and test.txt "
                         f"(optionally val.txt), one <class>/<video> per line")
    files, lookup, lists = FileIndex(root), {c.lower(): i for i, c in enumerate(class_names)}, {}
    for part, name in SPLIT_FILES.items():
        path = os.path.join(cfg.split_dir, name)
        if part == "val" and not os.path.isfile(path):
            continue

        def label_of(relpath: str, columns: list[str], n: int, path=path) -> int:
            label = lookup.get(relpath.split("/")[0].lower())
            if label is None:
                raise UsageError(f"{path} line {n}: {relpath!r} is not in a class folder of {root!r} (classes: "
                                 f"{named(class_names)})")
            return label
        lists[part] = read_video_list(split_file(cfg.split_dir, name), files, label_of)
    check_every_class_trains(lists["train"], class_names, os.path.join(cfg.split_dir, "train.txt"))
    return lists


# ----------------------------------------------------------------------------------------------------------------
# the dataset of video files
# ----------------------------------------------------------------------------------------------------------------
class VideoFileDataset(ClipDataset):
    """Video files read through PyAV (``video_io``), optionally through a decoded-frame cache.

    Every video is probed here; unreadable ones are dropped and warned about (``policy="skip"``, training) or
    kept as bad items (``policy="report"``). Frames are decoded at the clip's short side (``spec.image_size``), so
    the cached and the decoded path hand identical uint8 frames to the same transforms.
    """

    def __init__(self, items: Sequence[VideoItem], class_names: Sequence[str], spec: ClipSpec, policy: str,
                 max_bad_fraction: float = 1.0, cache: Optional[FrameCache] = None, what: str = "videos",
                 show_progress: bool = False):
        self.class_names, self.spec, self.cache = list(class_names), spec, cache
        self.items: list[VideoItem] = []
        self.index: list[Optional[VideoIndex]] = []
        skipped, unreadable = [], []
        for item in tqdm(items, desc=f"indexing {what}", disable=not show_progress, leave=False):
            try:
                meta = probe_video(item.path)
            except VideoError as exc:
                if policy == "skip":
                    skipped.append(dict(video=item.video_id, reason=str(exc)))
                    print(f"warning: cannot read {exc}; skipped", file=sys.stderr, flush=True)  # exc names the file
                    continue
                meta = None
                unreadable.append((len(self.items), str(exc)))
            self.items.append(item)
            self.index.append(meta)
        self.texts: list[Optional[str]] = [None] * len(self.items)  # inference: texts.json / --text_input
        self.captions = [""] * len(self.items)  # inference: captions.json
        self.bad = BadVideoLog(len(self.items), policy, max_bad_fraction, total=len(items), skipped=skipped,
                               what=what)
        for i, reason in unreadable:
            self.bad.mark(i, self.items[i].video_id, reason)
        if policy == "skip":
            self.bad.check()

    def __len__(self) -> int:
        return len(self.items)

    def load_frames(self, i: int, pick: Callable[[int], list[int]]) -> torch.Tensor:
        meta = self.index[i]
        indices = pick(meta.num_frames)
        size = resized_shape(meta.height, meta.width, self.spec.image_size)
        path = self.items[i].path
        if self.cache is not None:
            frames = self.cache.read(path, meta, indices, size)
        else:
            frames = read_frames(path, meta, indices, size)  # uint8 [F, H, W, 3]
        return torch.from_numpy(frames).permute(0, 3, 1, 2)  # [F, 3, H, W]

    def fields(self, i: int) -> dict:
        return dict(labels=torch.tensor(self.items[i].label), video_id=self.items[i].video_id,
                    caption=self.captions[i], hint=self.texts[i] or "")


# ----------------------------------------------------------------------------------------------------------------
# splits -> datasets (the sources data/registry.py registers)
# ----------------------------------------------------------------------------------------------------------------
LISTS = {"ucf101": ucf101_lists, "videofolder": videofolder_lists}
CLASS_NAMES = {"ucf101": ucf101_class_names, "videofolder": videofolder_class_names}


def video_class_names(cfg) -> list[str]:
    return CLASS_NAMES[cfg.dataset](cfg)


def drop_skipped(lists: dict[str, list[VideoItem]], skip_list: Optional[str]) -> dict[str, list[VideoItem]]:
    """The split lists without the videos a skip list (``apps/check_videos.py``) names, saying how many left."""
    if not skip_list:
        return lists
    skip = read_skip_list(skip_list)
    kept = {part: [it for it in items if it.video_id not in skip] for part, items in lists.items()}
    dropped = {part: len(lists[part]) - len(kept[part]) for part in lists if len(lists[part]) != len(kept[part])}
    print(f"--skip_list {skip_list}: left out " + (", ".join(f"{n} {part}" for part, n in dropped.items())
                                                   or "nothing") + f" of {len(skip)} listed videos", file=sys.stderr)
    return kept


def build_video_datasets(cfg, train_spec: ClipSpec, eval_spec: ClipSpec, parts: Sequence[str],
                         show_progress: bool = False) -> DataBundle:
    """The requested splits as VideoFileDatasets; validation is held out of train unless a list gives it."""
    lists = drop_skipped(LISTS[cfg.dataset](cfg), getattr(cfg, "skip_list", None))
    class_names = video_class_names(cfg)
    if getattr(cfg, "label_fraction", 1.0) < 1.0:  # a label budget: a stratified, seeded share of the train split
        train = lists["train"]
        groups = ucf101_groups(train) if cfg.dataset == "ucf101" else None
        lists["train"] = [train[i] for i in label_budget([it.label for it in train], cfg.label_fraction, cfg.seed,
                                                         groups)]
    if "val" not in lists and cfg.val_fraction > 0:
        train = lists["train"]
        groups = ucf101_groups(train) if cfg.dataset == "ucf101" else None
        kept, held = stratified_split([it.label for it in train], cfg.val_fraction, cfg.seed, groups)
        lists["train"], lists["val"] = [train[i] for i in kept], [train[i] for i in held]
    cache = FrameCache(cfg.cache_dir) if cfg.cache_dir else None

    def dataset(part: str, spec: ClipSpec, policy: str) -> Optional[VideoFileDataset]:
        if part not in parts or not lists.get(part):
            return None
        return VideoFileDataset(lists[part], class_names, spec, policy, cfg.max_bad_video_fraction, cache,
                                what=f"{part} videos", show_progress=show_progress)
    return DataBundle(dataset("train", train_spec, "skip"), dataset("val", eval_spec, "skip"),
                      dataset("test", eval_spec, "report"), class_names)


def find_videos(video_dir: str) -> Optional[list[tuple[str, Optional[str]]]]:
    """Inference inputs that are video files: [(path, class folder name or None)], or None when ``video_dir``
    holds no video file (then it is frame folders). A file, a folder of videos, or a folder of class folders of
    videos (the class folder names give the true labels)."""
    if os.path.isfile(video_dir):
        if not is_video_file(video_dir):
            raise UsageError(f"--video_dir {video_dir!r} is a file but not a video ({', '.join(VIDEO_EXTENSIONS)}); "
                             f"pass a video, a folder of videos or a folder of frame folders")
        return [(video_dir, None)]
    if not os.path.isdir(video_dir):
        return None
    direct = _video_files(video_dir)
    if direct:
        return [(os.path.join(video_dir, f), None) for f in direct]
    nested = [(os.path.join(video_dir, d, f), d) for d in sorted(os.listdir(video_dir), key=natural_key)
              if os.path.isdir(os.path.join(video_dir, d)) for f in _video_files(os.path.join(video_dir, d))]
    return nested or None


def inference_videos(video_dir: str, spec: ClipSpec, class_names: Sequence[str], text: Optional[str],
                     cache: Optional[FrameCache] = None) -> Optional[VideoFileDataset]:
    """A report-policy dataset of the video files in ``video_dir`` (None if there are none): labels from
    ``labels.json`` beside them or from their class folder; texts and captions from ``texts.json`` /
    ``captions.json``."""
    found = find_videos(video_dir)
    if found is None:
        return None
    base = video_dir if os.path.isdir(video_dir) else os.path.dirname(video_dir)
    names = [os.path.relpath(path, base) for path, _ in found]
    side = SideFiles(video_dir, names, class_names, text, known_labels=[folder for _, folder in found])
    items = [VideoItem(path, label, name) for (path, _), label, name in zip(found, side.labels, names)]
    dataset = VideoFileDataset(items, class_names, spec, "report", cache=cache)
    dataset.texts, dataset.captions = side.texts, side.captions
    return dataset


class VideoFileSource(DatasetSource):
    """A dataset of video files (``--dataset ucf101`` / ``videofolder``): nothing to generate, no texts."""

    class_names = staticmethod(video_class_names)
    build = staticmethod(build_video_datasets)


UCF101Source = VideoFolderSource = VideoFileSource  # the two differ in how they list files (LISTS, CLASS_NAMES)
