"""Audio input: decoding with PyAV, Whisper log-mel features, and the missing-audio policy.

    video file --PyAV--> mono float32 waveform at 16 kHz (the window of ``--audio_seconds`` centred on the clip's
    frames) --WhisperFeatureExtractor--> log-mel [80, F] (F = 100 per second) + mask [F]
    (then ``models/audio_encoder.py``: 2 strided 1-D convs, transformer layers -> tokens [F / 4, D] + padding mask)

The feature extractor is ``transformers.WhisperFeatureExtractor()`` built from its defaults (80 mel bins, 16 kHz,
hop 160, 25 ms window), so nothing is downloaded; it is saved next to a composed model (``save_pretrained``) and
loaded back from there. Features are padded to the clip's window (``padding="max_length"``), and the attention
mask marks the frames that hold real audio: the audio encoder zeroes the padded frames before every convolution and
masks them in every attention, so a short clip gives the same tokens whatever it is padded to.

Missing audio (a video without an audio stream): by default the audio is a *masked-out modality* (features zero,
mask all False); the composed model then leaves the audio out for that clip (``models/compose.py``). With
``--require_audio True`` such a video is an error that names it (:class:`MissingAudioError`, exit code 2).
"""
from __future__ import annotations

from typing import Optional, Sequence

import av
import numpy as np
import torch

from videolab.core.errors import UsageError
from videolab.data.video_io import VideoError

SAMPLE_RATE = 16_000  # Whisper's rate: every waveform is resampled to it
FEATURE_KEYS = ("input_features", "audio_attention_mask")  # the batch fields an audio item adds


class MissingAudioError(UsageError):
    """--require_audio True and a video has no audio stream. One line even from a DataLoader worker."""

    def __str__(self) -> str:
        text = super().__str__()
        return text.rsplit(f"{type(self).__name__}: ", 1)[-1].strip().splitlines()[0] if "\n" in text else text


def has_audio(path: str) -> bool:
    try:
        with av.open(path) as container:
            return bool(container.streams.audio)
    except (av.FFmpegError, OSError, ValueError) as exc:
        raise VideoError(f"{path}: not a readable video ({exc})") from None


def read_audio(path: str, start: float = 0.0, seconds: Optional[float] = None) -> Optional[np.ndarray]:
    """The first audio stream of ``path`` from ``start`` for ``seconds`` (to the end when None), downmixed to mono
    and resampled to 16 kHz by libswresample: float32 [N]. None when the file has no audio stream."""
    try:
        container = av.open(path)
    except (av.FFmpegError, OSError, ValueError) as exc:
        raise VideoError(f"{path}: not a readable video ({exc})") from None
    with container:
        if not container.streams.audio:
            return None
        stream = container.streams.audio[0]
        resampler = av.AudioResampler(format="flt", layout="mono", rate=SAMPLE_RATE)
        chunks = []
        try:
            for frame in container.decode(stream):
                chunks += [f.to_ndarray().reshape(-1) for f in resampler.resample(frame)]
            chunks += [f.to_ndarray().reshape(-1) for f in resampler.resample(None)]  # flush
        except av.FFmpegError as exc:
            raise VideoError(f"{path}: audio stream does not decode ({exc})") from None
    wave = np.concatenate(chunks).astype(np.float32) if chunks else np.zeros(0, np.float32)
    first = int(round(max(start, 0.0) * SAMPLE_RATE))
    last = None if seconds is None else first + int(round(seconds * SAMPLE_RATE))
    return wave[first:last]


def feature_extractor():
    """Whisper's log-mel feature extractor from its defaults (no download)."""
    from transformers import WhisperFeatureExtractor
    return WhisperFeatureExtractor()


def log_mel(extractor, wave: np.ndarray, seconds: float) -> tuple[torch.Tensor, torch.Tensor]:
    """float32 [N] at 16 kHz -> (log-mel [n_mels, F] float32, mask [F] bool, True = real audio), F = the frames of
    ``seconds`` (longer audio is cut, shorter is padded)."""
    samples = int(round(seconds * SAMPLE_RATE))
    out = extractor(wave[:samples] if len(wave) else np.zeros(1, np.float32), sampling_rate=SAMPLE_RATE,
                    padding="max_length", max_length=samples, return_attention_mask=True, return_tensors="pt")
    mask = out["attention_mask"][0].bool()
    if not len(wave):
        mask[:] = False
    return out["input_features"][0], mask


def empty_features(extractor, seconds: float) -> tuple[torch.Tensor, torch.Tensor]:
    """The masked-out audio of a clip without audio: zeros [n_mels, F] and an all-False mask [F]."""
    frames = int(round(seconds * SAMPLE_RATE)) // extractor.hop_length
    return torch.zeros(extractor.feature_size, frames), torch.zeros(frames, dtype=torch.bool)


class AudioReader:
    """Adds ``input_features`` [n_mels, F] and ``audio_attention_mask`` [F] to the items of a video-file dataset
    (``VLoader.ClipDataset.extra_fields``): the audio window of ``seconds`` centred on the clip's frames."""

    def __init__(self, seconds: float, require: bool, extractor=None):
        self.seconds, self.require = seconds, require
        self.extractor = extractor or feature_extractor()

    def window(self, dataset, i: int, indices: Optional[Sequence[int]]) -> tuple[float, float]:
        """(start, seconds) of the audio for item i whose clip used frames ``indices``."""
        meta = dataset.index[i]
        fps = meta.fps if meta is not None and meta.fps > 0 else 25.0
        if not indices:
            return 0.0, self.seconds
        centre = (min(indices) + max(indices) + 1) / 2 / fps
        duration = meta.num_frames / fps
        start = min(max(centre - self.seconds / 2, 0.0), max(duration - self.seconds, 0.0))
        return start, self.seconds

    def __call__(self, dataset, i: int, indices: Optional[Sequence[int]]) -> dict:
        if indices is None:  # a placeholder for an unreadable video
            features, mask = empty_features(self.extractor, self.seconds)
            return dict(input_features=features, audio_attention_mask=mask)
        path = dataset.items[i].path
        start, seconds = self.window(dataset, i, indices)
        wave = read_audio(path, start, seconds)
        if wave is None:
            if self.require:
                raise MissingAudioError(f"{path} has no audio track and --require_audio is True; drop "
                                        f"--require_audio to treat missing audio as a masked-out modality, or "
                                        f"remove the video")
            features, mask = empty_features(self.extractor, self.seconds)
        else:
            features, mask = log_mel(self.extractor, wave, self.seconds)
        return dict(input_features=features, audio_attention_mask=mask)


def attach_audio(datasets, cfg) -> None:
    """Give video-file datasets (None entries skipped) an AudioReader: their items then carry ``input_features``
    and ``audio_attention_mask``."""
    reader = AudioReader(cfg.audio_seconds, cfg.require_audio)
    for dataset in datasets:
        if dataset is None:
            continue
        if not hasattr(dataset, "items") or not hasattr(dataset, "index"):
            raise UsageError(f"audio needs video files, and --dataset {cfg.dataset} has none; use --dataset "
                             f"synthetic_av, videofolder or ucf101, or drop audio from --modalities")
        dataset.extra_fields = reader
