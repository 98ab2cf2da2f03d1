"""A synthetic audio-visual dataset where only sound and picture together tell every class apart.

Class = (motion, tone): the picture shows one of four motions (the synthetic dataset's move right, move down, rotate
clockwise, grow (``synthetic.make_video``); random shape, colours, background, distractor blob, noise), the
sound track holds a low
(250-500 Hz) or a high (1-2 kHz) tone (random pitch in the band, onset, length, loudness and phase), over noise and,
in half the clips, a distractor tone between the bands. So

* video alone tells the motion, not the tone: at most 50 % of the 8 classes;
* audio alone tells the tone, not the motion: at most 25 %;
* video + audio can tell all 8 (the benchmark for ``--modalities video,audio``, BENCHMARKS.md).

Every clip is a real video file written with PyAV: H.264 video (``--num_frames`` frames at 8 fps) and an AAC audio
stream, stereo at 22.05 kHz, so reading it exercises the real decoding path (PyAV decode, downmix to mono,
resampling to 16 kHz). ``missing_audio`` clips are written without an audio stream (the missing-audio policy).

Layout (a ``videofolder`` with split lists)::

    <root>/videos/<class>/<split>_<i>.mp4   e.g. videos/move_right+low_tone/train_3.mp4
    <root>/splits/{train,test}.txt          <class>/<file> per line
    <root>/hints.json                       {<class>/<file>: text hint}: the motion family in words, never the
                                            tone (the synthetic motion-task hint), read by a composed model with
                                            text among its modalities (--modalities video,audio,text)
    <root>/classes.json                     class names (sorted, as videofolder numbers them) and generator
                                            settings, written last (marks completion)

``--dataset synthetic_av --data_root DIR`` generates it on first use (``write_av_dataset``), or run
``python apps/make_av_dataset.py --root DIR``.
"""
from __future__ import annotations

import copy
import os
from fractions import Fraction
from typing import Optional, Sequence

import av
import numpy as np

from videolab.core.errors import UsageError
from videolab.core.files import atomic_file, write_json, write_text
from videolab.core.inputs import read_json
from videolab.data import synthetic
from videolab.data.clips import DataBundle, DatasetSource
from videolab.data.sampling import ClipSpec
from videolab.data.videos import build_video_datasets

MOTIONS = (0, 2, 4, 6)  # synthetic labels: move_right, move_down, rotate_clockwise, grow
TONES = {"low": (250.0, 500.0), "high": (1000.0, 2000.0)}  # Hz bands
FPS = 8
AUDIO_RATE = 22_050  # written rate; readers resample to 16 kHz
SPLITS_DIR = "splits"
VIDEOS_DIR = "videos"
META_FILE = "classes.json"
HINTS_FILE = "hints.json"


def class_names() -> list[str]:
    """motion-major: label = motion index * len(TONES) + tone index."""
    return [f"{synthetic.CLASS_NAMES[m]}+{t}_tone" for m in MOTIONS for t in TONES]


def make_tone(tone: str, seconds: float, rng: np.random.Generator, rate: int = AUDIO_RATE) -> np.ndarray:
    """A stereo sound track float32 [2, N]: a tone in the band of ``tone`` over noise (and maybe a distractor)."""
    n = int(round(seconds * rate))
    t = np.arange(n) / rate
    low, high = TONES[tone]
    freq = np.exp(rng.uniform(np.log(low), np.log(high)))
    onset = rng.uniform(0.0, 0.3) * seconds
    length = rng.uniform(0.5, 0.7) * seconds
    envelope = ((t >= onset) & (t < onset + length)).astype(np.float64)
    wave = rng.uniform(0.2, 0.5) * envelope * np.sin(2 * np.pi * freq * t + rng.uniform(0, 2 * np.pi))
    if rng.random() < 0.5:  # a distractor tone between the bands, at any time
        wave += rng.uniform(0.05, 0.2) * np.sin(2 * np.pi * rng.uniform(600.0, 850.0) * t)
    noise = rng.normal(0.0, rng.uniform(0.01, 0.05), size=(2, n))
    balance = rng.uniform(0.6, 1.0, size=(2, 1))  # the tone louder on one side
    return np.clip(balance * wave[None] + noise, -1.0, 1.0).astype(np.float32)


def write_av_video(path: str, frames: np.ndarray, wave: Optional[np.ndarray], fps: int = FPS,
                   rate: int = AUDIO_RATE) -> str:
    """uint8 RGB [T, H, W, 3] (+ float32 [channels, N] in [-1, 1] at ``rate``, or None for no audio stream) ->
    an .mp4 with H.264 video and AAC audio."""
    with av.open(path, "w") as container:
        video = container.add_stream("libx264", rate=Fraction(fps))
        video.height, video.width = frames.shape[1:3]
        video.pix_fmt = "yuv420p"
        video.options = {"crf": "12"}
        audio = None
        if wave is not None:
            audio = container.add_stream("aac", rate=rate, layout="stereo" if wave.shape[0] == 2 else "mono")
        for frame in frames:
            container.mux(video.encode(av.VideoFrame.from_ndarray(np.ascontiguousarray(frame), format="rgb24")))
        container.mux(video.encode())
        if audio is not None:
            step = 1024  # AAC frame size
            for start in range(0, wave.shape[1], step):
                chunk = np.ascontiguousarray(wave[:, start:start + step])
                frame = av.AudioFrame.from_ndarray(chunk, format="fltp", layout=audio.layout.name)
                frame.sample_rate, frame.pts = rate, start
                container.mux(audio.encode(frame))
            container.mux(audio.encode())
    return path


def make_clip(label: int, num_frames: int, size: int, seed: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
    """(frames uint8 [T, H, W, 3], stereo wave float32 [2, N]) of one clip of class ``label``."""
    motion, tone = MOTIONS[label // len(TONES)], list(TONES)[label % len(TONES)]
    video, _ = synthetic.make_video(motion, num_frames, size, seed=tuple(seed))
    rng = np.random.default_rng((*seed, 7))  # its own stream: the picture does not change with the sound
    return video.permute(0, 2, 3, 1).numpy(), make_tone(tone, num_frames / FPS, rng)


def write_av_dataset(root: str, train_per_class: int = 150, test_per_class: int = 25, num_frames: int = 8,
                     size: int = 32, seed: int = 0, missing_audio: float = 0.0) -> str:
    """Write the dataset (module docstring); ``missing_audio`` = share of clips written without audio."""
    if train_per_class < 1 or test_per_class < 1:
        raise ValueError(f"need at least one video per class, got train {train_per_class}, test {test_per_class}")
    names = class_names()
    videos = os.path.join(root, VIDEOS_DIR)
    os.makedirs(os.path.join(root, SPLITS_DIR), exist_ok=True)
    hints = {}
    for split, per_class in (("train", train_per_class), ("test", test_per_class)):
        lines = []
        for label, name in enumerate(names):
            os.makedirs(os.path.join(videos, name), exist_ok=True)
            for i in range(per_class):
                key = (seed, synthetic.SPLIT_IDS[split], label, i)
                frames, wave = make_clip(label, num_frames, size, key)
                silent = np.random.default_rng((*key, 9)).random() < missing_audio
                rel = f"{name}/{split}_{i}.mp4"
                with atomic_file(os.path.join(videos, rel), keep_extension=True) as tmp:
                    write_av_video(tmp, frames, None if silent else wave)
                lines.append(rel)
                hints[rel] = synthetic.HINT_BY_FAMILY[synthetic.class_family(MOTIONS[label // len(TONES)])]
        write_text(os.path.join(root, SPLITS_DIR, f"{split}.txt"), "".join(line + "\n" for line in lines))
    write_json(os.path.join(root, HINTS_FILE), hints, indent=0)
    meta = dict(class_names=sorted(names), task="audiovisual", num_frames=num_frames, size=size, fps=FPS, seed=seed,
                audio_rate=AUDIO_RATE, train_per_class=train_per_class, test_per_class=test_per_class,
                missing_audio=missing_audio)
    write_json(os.path.join(root, META_FILE), meta)
    return root


def ensure_av_dataset(cfg) -> None:
    """Generate the dataset at cfg.data_root if classes.json is not there."""
    if os.path.isfile(os.path.join(cfg.data_root, META_FILE)):
        return
    print(f"synthetic audio-visual dataset not found at {cfg.data_root!r}: generating it (python "
          f"apps/make_av_dataset.py does the same)")
    write_av_dataset(cfg.data_root, num_frames=max(cfg.num_frames, 2), size=max(cfg.image_size, 16), seed=cfg.seed)


def as_videofolder(cfg):
    """The settings that read the dataset as a videofolder with its split lists."""
    folder = copy.copy(cfg)
    folder.dataset, folder.split_dir = "videofolder", os.path.join(cfg.data_root, SPLITS_DIR)
    folder.data_root = os.path.join(cfg.data_root, VIDEOS_DIR)
    return folder


def dataset_class_names(cfg) -> list[str]:
    ensure_av_dataset(cfg)
    path = os.path.join(cfg.data_root, META_FILE)
    names = read_json(path, "dataset file", f"delete {cfg.data_root} (it is generated again on first use)"
                      ).get("class_names")
    if not isinstance(names, list) or not names or not all(isinstance(n, str) for n in names):
        raise UsageError(f"{path}: class_names must be a non-empty list of strings; delete {cfg.data_root} (it is "
                         f"generated again on first use)")
    return names


def build_av_datasets(cfg, train_spec: ClipSpec, eval_spec: ClipSpec, parts: Sequence[str]) -> DataBundle:
    """train / val (held out of train, stratified, seeded) / test."""
    ensure_av_dataset(cfg)
    bundle = build_video_datasets(as_videofolder(cfg), train_spec, eval_spec, parts)
    if "text" in (getattr(cfg, "modalities", None) or "").split(","):
        attach_hints(cfg.data_root, [bundle.train, bundle.val, bundle.test])
    return bundle


def attach_hints(root: str, datasets) -> None:
    """Set each dataset's texts (the items' ``hint`` field) from ``hints.json``, for the text modality."""
    path = os.path.join(root, HINTS_FILE)
    if not os.path.isfile(path):
        raise UsageError(f"{path} not found: this copy of the dataset predates its text hints; delete {root} (it is "
                         f"generated again on first use) or run python apps/make_av_dataset.py --root {root}")
    hints = read_json(path, "hints file", f"run python apps/make_av_dataset.py --root {root}")
    videos = os.path.join(root, VIDEOS_DIR)
    for dataset in datasets:
        if dataset is not None:
            dataset.texts = [hints[os.path.relpath(item.path, videos).replace(os.sep, "/")]
                             for item in dataset.items]


class AudioVisualSource(DatasetSource):
    """``--dataset synthetic_av`` (registered in ``data/registry.py``)."""

    class_names = staticmethod(dataset_class_names)
    build = staticmethod(build_av_datasets)

    @staticmethod
    def ensure(cfg, quiet: bool = True) -> None:
        ensure_av_dataset(cfg)

    @staticmethod
    def hints(cfg) -> list[str]:
        """Every text hint (the motion family in words)."""
        return list(synthetic.HINT_BY_FAMILY.values())
