"""Folders of frames (an inference input; ``export_split`` writes them from the synthetic dataset, as
``create_dummy.py`` does) and the side files beside inference inputs: ``labels.json``, ``texts.json``,
``captions.json`` ({video_name: value})."""
from __future__ import annotations

import os
import sys
from typing import Callable, Optional, Sequence

import numpy as np
import torch
from tqdm.auto import tqdm

from videolab.core.errors import UsageError
from videolab.core.files import atomic_file, write_json
from videolab.core.inputs import quote, read_json
from videolab.data.clips import BadVideoLog, ClipDataset, natural_key
from videolab.data.sampling import make_clip_spec
from videolab.data.synthetic import read_annotations
from videolab.data.video_io import VideoError

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".webp", ".tif", ".tiff", ".gif")
FRAME_LABELS_FILE = "labels.json"  # optional {video_name: class_name} beside exported frame folders or videos
FRAME_TEXTS_FILE = "texts.json"  # optional {video_name: text hint}
FRAME_CAPTIONS_FILE = "captions.json"  # optional {video_name: reference caption}


def _image_files(folder: str) -> list[str]:
    return sorted((f for f in os.listdir(folder) if f.lower().endswith(IMAGE_EXTENSIONS)), key=natural_key)


def find_frame_folders(video_dir: str) -> list[str]:
    """``video_dir`` is one folder of frames, or a folder of such folders (natural order)."""
    if not os.path.isdir(video_dir):
        raise FileNotFoundError(f"--video_dir {video_dir!r} is not a folder; pass a folder of frames or of "
                                f"frame folders (python create_dummy.py writes ./frames_see/)")
    if _image_files(video_dir):
        return [video_dir]
    folders = [os.path.join(video_dir, d) for d in sorted(os.listdir(video_dir), key=natural_key)
               if os.path.isdir(os.path.join(video_dir, d)) and _image_files(os.path.join(video_dir, d))]
    if not folders:
        raise FileNotFoundError(f"no frames found in --video_dir {video_dir!r}: expected images "
                                f"({', '.join(IMAGE_EXTENSIONS)}) in it or in its sub-folders")
    return folders


MAX_FRAME_PIXELS = 8192 * 8192  # a frame larger than this (a decompression bomb) is refused, not decoded


def read_image(path: str) -> torch.Tensor:
    """One frame image -> uint8 [3, H, W]. 16-bit images (PNG ``I;16``, 32-bit ``I``, float ``F``) are scaled to
    8 bits from their own range (not clipped: a 16-bit frame would read as all white); a frame above
    MAX_FRAME_PIXELS (PIL's decompression-bomb check, made an error) and an unreadable one are VideoErrors."""
    import warnings

    from PIL import Image, UnidentifiedImageError
    previous = Image.MAX_IMAGE_PIXELS
    try:
        Image.MAX_IMAGE_PIXELS = MAX_FRAME_PIXELS
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as img:
                return _to_rgb8(img)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise VideoError(f"{path}: refused, the image is too large to decode ({str(exc)[:100]}); frames may hold "
                         f"at most {MAX_FRAME_PIXELS:,} pixels") from None
    except (OSError, UnidentifiedImageError, ValueError, SyntaxError) as exc:
        raise VideoError(f"{path}: cannot read the frame ({str(exc)[:100]})") from None
    finally:
        Image.MAX_IMAGE_PIXELS = previous


def _to_rgb8(img) -> torch.Tensor:
    """A PIL image -> uint8 [3, H, W]; high-bit-depth single-channel modes are scaled by their type's range."""
    if img.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        array = np.asarray(img).astype(np.float64)
        if not np.isfinite(array).all():
            raise ValueError("the frame holds NaN/inf values")
        high = float(array.max()) if array.size else 0.0
        if array.size and float(array.min()) < 0:
            raise ValueError(f"the {img.mode} frame holds negative values")
        # the range of the type: 16-bit PNG 0..65535; 32-bit int / float: the smallest of 1, 255, 65535 that holds it
        full = 65535.0 if img.mode.startswith("I;16") else next(
            (r for r in ((1.0,) if img.mode == "F" else ()) + (255.0, 65535.0) if high <= r), high or 1.0)
        gray = np.clip(np.round(array / full * 255.0), 0, 255).astype(np.uint8)  # [H, W]
        return torch.from_numpy(gray).unsqueeze(0).expand(3, -1, -1).contiguous()
    return torch.from_numpy(np.asarray(img.convert("RGB")).copy()).permute(2, 0, 1)


def read_frames(folder: str, indices: Optional[Sequence[int]] = None) -> torch.Tensor:
    """Images of one frame folder (natural order) -> uint8 [T, 3, H, W]; only ``indices`` are read if given
    (each image once, even when an index repeats). An unreadable image raises VideoError."""
    files = _image_files(folder)
    indices = list(range(len(files))) if indices is None else list(indices)
    frames = {}
    for i in sorted(set(indices)):
        frames[i] = read_image(os.path.join(folder, files[i]))
    if not frames:
        raise VideoError(f"{folder}: no frames to read")
    sizes = {tuple(f.shape) for f in frames.values()}
    if len(sizes) > 1:
        raise VideoError(f"{folder}: frames differ in size {sorted(sizes)}; all frames of a video must match")
    return torch.stack([frames[i] for i in indices])


def read_frame_labels(video_dir: str, filename: str = FRAME_LABELS_FILE) -> dict[str, str]:
    """{video_name: value} from a JSON file beside the frame folders or videos ({} when absent)."""
    path = os.path.join(video_dir, filename) if os.path.isdir(video_dir) else ""
    if not os.path.isfile(path):
        return {}
    fix = "it must map video names to strings, e.g. {\"video_1\": \"...\"}"
    table = read_json(path, "side file", fix)
    bad = [k for k, v in table.items() if not isinstance(v, str)]
    if bad:
        raise UsageError(f"{path}: the value of {quote(bad[0], 40)} is {type(table[bad[0]]).__name__}, not a string; "
                         f"{fix}")
    return table


class SideFiles:
    """Labels, text hints and reference captions for inference inputs, from the JSON files beside them
    (``labels.json``, ``texts.json``, ``captions.json``, each {video_name: value}); ``text`` overrides the hints.
    A video file is looked up by its file name, then by its name without the extension."""

    def __init__(self, video_dir: str, names: Sequence[str], class_names: Optional[Sequence[str]],
                 text: Optional[str], known_labels: Optional[Sequence[str]] = None):
        folder = video_dir if os.path.isdir(video_dir) else os.path.dirname(video_dir)
        labels = read_frame_labels(folder)
        texts = read_frame_labels(folder, FRAME_TEXTS_FILE)
        captions = read_frame_labels(folder, FRAME_CAPTIONS_FILE)
        index = {c: i for i, c in enumerate(class_names or [])}
        known = list(known_labels) if known_labels is not None else [None] * len(names)
        self.labels = [index.get(k or self._get(labels, n, ""), -1) for n, k in zip(names, known)]
        self.texts = [text if text is not None else self._get(texts, n, None) for n in names]  # None = no text
        self.captions = [self._get(captions, n, "") for n in names]

    @staticmethod
    def _get(table: dict, name: str, default):
        return table.get(name, table.get(os.path.splitext(name)[0], default))


class FrameFolderDataset(ClipDataset):
    """One item per frame folder. Labels come from ``labels.json`` in ``video_dir`` when present (else -1), text
    hints from ``texts.json`` (or ``text`` for every video), reference captions from ``captions.json``.
    Unreadable frames are reported, not replaced (policy ``report``)."""

    def __init__(self, video_dir: str, num_frames: int, image_size: int, mean, std,
                 class_names: Optional[Sequence[str]] = None, text: Optional[str] = None, **clip_options):
        self.folders = find_frame_folders(video_dir)
        side = SideFiles(video_dir, [os.path.basename(f) for f in self.folders], class_names, text)
        self.labels, self.texts, self.captions = side.labels, side.texts, side.captions
        self.spec = make_clip_spec(num_frames, image_size, mean, std, **clip_options)
        self.bad = BadVideoLog(len(self.folders), "report")

    def __len__(self) -> int:
        return len(self.folders)

    def load_frames(self, i: int, pick: Callable[[int], list[int]]) -> torch.Tensor:
        return read_frames(self.folders[i], pick(len(_image_files(self.folders[i]))))

    def fields(self, i: int) -> dict:
        return dict(labels=torch.tensor(self.labels[i]), video_id=os.path.basename(self.folders[i]),
                    caption=self.captions[i], hint=self.texts[i] or "")


# ----------------------------------------------------------------------------------------------------------------
# writing frame folders
# ----------------------------------------------------------------------------------------------------------------
def video_to_frames(video: torch.Tensor, folder: str) -> int:
    """uint8 [T, C, H, W] -> folder/frame_00000.png ...; returns the number of frames written."""
    if video.dtype != torch.uint8 or video.dim() != 4:
        raise ValueError(f"expected a uint8 [T, C, H, W] video, got {video.dtype} {tuple(video.shape)}")
    from PIL import Image
    os.makedirs(folder, exist_ok=True)
    for t, frame in enumerate(video):
        with atomic_file(os.path.join(folder, f"frame_{t:05d}.png"), keep_extension=True) as tmp:
            Image.fromarray(frame.permute(1, 2, 0).numpy()).save(tmp)
    return len(video)


def export_split(data_root: str, split: str, out_dir: str, max_videos: int = 0, quiet: bool = False) -> dict:
    """Write every video of a synthetic split (or max_videos of them, spread over the classes) as frame folders
    with labels.json, texts.json and captions.json; returns {video_name: class_name}."""
    records = read_annotations(data_root, split)
    if max_videos:
        records = records[:: max(1, len(records) // max_videos)][:max_videos]  # spread over all classes
    labels, texts, captions = {}, {}, {}
    for rec in tqdm(records, desc=f"frames -> {out_dir}", disable=quiet or not sys.stderr.isatty(), leave=False):
        name = os.path.splitext(rec["path"])[0].replace("/", "_")  # class_3/video_12.pt -> class_3_video_12
        video = torch.load(os.path.join(data_root, split, rec["path"]), weights_only=True)
        video_to_frames(video, os.path.join(out_dir, name))
        labels[name], texts[name], captions[name] = rec["class_name"], rec.get("hint", ""), rec.get("caption", "")
    for filename, content in ((FRAME_LABELS_FILE, labels), (FRAME_TEXTS_FILE, texts),
                              (FRAME_CAPTIONS_FILE, captions)):
        write_json(os.path.join(out_dir, filename), content, indent=1)
    return labels
