"""Assemble the datasets of a run from the data registry (``videolab/data/registry.py``).

The parts live in ``videolab/data``: pure temporal sampling (``sampling.py``), tensor transforms
(``transforms.py``), the dataset base and bad-video policy (``clips.py``), decoding (``video_io.py``) and one
module per dataset. This file picks the dataset the settings name, generates it when it is synthetic and missing,
builds its splits for the model's normalisation and inputs, and builds the inference inputs of ``--video_dir``.
"""
from __future__ import annotations

import sys
from typing import Optional, Sequence

from videolab.core.errors import UsageError
from videolab.data.audio import attach_audio
from videolab.data.clips import DataBundle, make_loader  # noqa: F401  (make_loader: the loaders of every split)
from videolab.data.frames import FrameFolderDataset
from videolab.data.registry import DATASETS
from videolab.data.sampling import ClipSpec, make_clip_spec, spec_options
from videolab.data.transforms import parse_rand_augment
from videolab.data.video_io import FrameCache
from videolab.data.videos import inference_videos


def clip_spec(cfg, mean, std, train: bool) -> ClipSpec:
    """The ClipSpec of a split from the settings. Training augmentation ``auto``: random resized crops and flips
    for real videos; neither for a dataset whose labels tell left from right (the registry's ``mirror_classes``:
    the synthetic one has move left / move right, where a flip would swap the label; QA answers say left and
    right)."""
    mirrored = DATASETS.meta(cfg.dataset).get("mirror_classes", False)
    random_crop = cfg.train_crop == "random_resized" or (cfg.train_crop == "auto" and not mirrored)
    flip = cfg.horizontal_flip if cfg.horizontal_flip is not None else not mirrored
    return make_clip_spec(cfg.num_frames, cfg.image_size, mean, std, sampling=cfg.sampling,
                          frame_stride=cfg.frame_stride, train=train, random_crop=train and random_crop,
                          crop_scale_min=cfg.crop_scale_min, flip=train and flip,
                          rand_augment=rand_augment(cfg, mirrored, train))


def rand_augment(cfg, mirrored: bool, train: bool) -> Optional[tuple]:
    """--rand_augment of the training clips: (operations, magnitude), or None. Off, with a note, for a dataset whose
    labels tell left from right (rotations, shears and translations move the object against its label)."""
    if not train or not getattr(cfg, "rand_augment", None):
        return None
    if mirrored:
        print(f"note: --rand_augment {cfg.rand_augment} is off for --dataset {cfg.dataset}: its labels tell "
              f"directions apart, which RandAugment's rotations, shears and translations would change",
              file=sys.stderr)
        return None
    return parse_rand_augment(cfg.rand_augment)


def source(cfg):
    """The registered source of ``--dataset`` (a ``videolab.data.clips.DatasetSource``)."""
    return DATASETS.get(cfg.dataset)()


def ensure_dataset(cfg, quiet: bool = True) -> None:
    """Generate a synthetic dataset at ``--data_root`` if it is not there; real datasets are never generated."""
    source(cfg).ensure(cfg, quiet=quiet)


def dataset_class_names(cfg) -> list[str]:
    """The class names of the configured dataset, without building (or decoding) anything."""
    return source(cfg).class_names(cfg)


def reversal_pairs(cfg) -> Optional[dict]:
    """class -> its time-reversed twin, for a dataset whose classes come in such pairs (the synthetic one), else
    None (the report's family and direction accuracy)."""
    pairs = getattr(source(cfg), "reversal_pairs", None)
    return pairs(cfg) if pairs else None


def tokenizer_texts(cfg, which: Optional[str]) -> Optional[list[str]]:
    """The texts an offline tokenizer of the model is trained on: ``captions`` (the training captions or answers)
    or ``hints`` (the texts a text encoder reads), or None when the model trains none."""
    if which is None:
        return None
    data = source(cfg)
    return data.texts(cfg) if which == "captions" else list(getattr(data, "hints", lambda cfg: [])(cfg))


def build_datasets(cfg, mean, std, parts: Sequence[str] = ("train", "val", "test"),
                   modalities: Sequence[str] = ()) -> DataBundle:
    """The requested splits of the configured dataset (others are None), normalised with ``mean`` / ``std``;
    with ``audio`` among the model's ``modalities``, items also carry the clip's log-mel features."""
    bundle = source(cfg).build(cfg, clip_spec(cfg, mean, std, True), clip_spec(cfg, mean, std, False), parts)
    if "audio" in modalities:
        attach_audio([bundle.train, bundle.val, bundle.test], cfg)
    return bundle


def inference_dataset(cfg, mean, std, class_names: list, modalities: Sequence[str] = ()):
    """The ``--video_dir`` inputs as a dataset (video files or frame folders), sampled as the checkpoint was
    trained; labels, texts and reference captions from the side files beside them."""
    spec = clip_spec(cfg, mean, std, train=False)
    try:
        videos = inference_videos(cfg.video_dir, spec, class_names, cfg.text_input,
                                  FrameCache(cfg.cache_dir) if cfg.cache_dir else None)
        if "audio" in modalities:  # the clips' log-mel features
            if videos is None:
                raise UsageError(f"this model hears audio: --video_dir {cfg.video_dir!r} must hold video files "
                                 f"(frame folders have no sound)")
            attach_audio([videos], cfg)
        if videos is not None:
            return videos
        return FrameFolderDataset(cfg.video_dir, cfg.num_frames, cfg.image_size, mean, std, class_names,
                                  text=cfg.text_input, **spec_options(spec))
    except FileNotFoundError as exc:
        raise UsageError(str(exc)) from None
