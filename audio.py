"""Audio: decoding with PyAV, Whisper log-mel features, the audio encoder, and the missing-audio policy.

    video file --PyAV--> mono float32 waveform at 16 kHz (the window of ``--audio_seconds`` centred on the clip's
    frames) --WhisperFeatureExtractor--> log-mel [80, F] (F = 100 per second) + mask [F]
    --AudioEncoder (2 strided 1-D convs, then transformer layers)--> tokens [F / 4, D] + padding mask

The feature extractor is ``transformers.WhisperFeatureExtractor()`` built from its defaults (80 mel bins, 16 kHz,
hop 160, 25 ms window), so nothing is downloaded; it is saved next to a composed model (``save_pretrained``) and
loaded back from there. Features are padded to the clip's window (``padding="max_length"``), and the attention
mask marks the frames that hold real audio: the encoder zeroes the padded frames before every convolution and
masks them in every attention, so a short clip gives the same tokens whatever it is padded to.

Missing audio (a video without an audio stream): by default the audio is a *masked-out modality* (features zero,
mask all False); the composed model then leaves the audio out for that clip (``compose.py``). With
``--require_audio True`` such a video is an error that names it (:class:`MissingAudioError`, exit code 2).
"""
from __future__ import annotations

import math
from typing import Optional, Sequence

import av
import numpy as np
import torch
from torch import nn

from fusion import attention_safe_mask
from settings import UsageError
from video_io import VideoError

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


def sinusoidal_positions(length: int, dim: int) -> torch.Tensor:
    """Whisper's fixed sinusoidal positions [length, dim] (sin in the first half, cos in the second)."""
    log_timescale = math.log(10000) / (dim // 2 - 1)
    inv = torch.exp(-log_timescale * torch.arange(dim // 2, dtype=torch.float32))
    scaled = torch.arange(length, dtype=torch.float32)[:, None] * inv[None]
    return torch.cat([scaled.sin(), scaled.cos()], dim=1)


class AudioEncoder(nn.Module):
    """Log-mel [B, n_mels, F] + attention mask [B, F] (1/True = real frame) -> (tokens [B, F', D], padding mask
    [B, F'] True = padded), F' = ceil(ceil(F / 2) / 2).

    Whisper's encoder in small: two GELU 1-D convolutions (kernel 3; the second and a third stride 2), fixed
    sinusoidal positions, pre-norm transformer layers. Padded frames are zeroed before every convolution (so a
    real frame next to padding sees the same zeros as at the end of an unpadded clip) and masked in attention.
    """

    def __init__(self, n_mels: int = 80, dim: int = 64, depth: int = 2, n_heads: int = 4, dropout: float = 0.1):
        super().__init__()
        if dim % n_heads or dim % 2:
            raise ValueError(f"audio width {dim} must be even and divisible by the {n_heads} heads; change "
                             f"--audio_dim or --fusion_n_heads")
        self.n_mels, self.dim = n_mels, dim
        self.convs = nn.ModuleList([nn.Conv1d(n_mels, dim, 3, padding=1), nn.Conv1d(dim, dim, 3, stride=2, padding=1),
                                    nn.Conv1d(dim, dim, 3, stride=2, padding=1)])
        layer = nn.TransformerEncoderLayer(dim, n_heads, dim_feedforward=4 * dim, dropout=dropout, activation="gelu",
                                           batch_first=True, norm_first=True)
        self.layers = nn.TransformerEncoder(layer, depth, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(dim)

    def forward(self, input_features: torch.Tensor, attention_mask: Optional[torch.Tensor] = None
                ) -> tuple[torch.Tensor, torch.Tensor]:
        if input_features.dim() != 3 or input_features.shape[1] != self.n_mels:
            raise ValueError(f"expected input_features [B, {self.n_mels}, F] (Whisper log-mel), got shape "
                             f"{tuple(input_features.shape)}")
        batch, _, frames = input_features.shape
        if attention_mask is None:
            attention_mask = torch.ones(batch, frames, dtype=torch.bool, device=input_features.device)
        if attention_mask.shape != (batch, frames):
            raise ValueError(f"expected audio_attention_mask [B, F] = {(batch, frames)}, got "
                             f"{tuple(attention_mask.shape)}")
        lengths = attention_mask.bool().sum(1)  # [B] real frames (the mask is a prefix: audio then padding)
        x = input_features
        for conv in self.convs:
            keep = torch.arange(x.shape[-1], device=x.device)[None] < lengths[:, None]  # [B, F_k]
            x = nn.functional.gelu(conv(x * keep[:, None].to(x.dtype)))  # [B, D, F_k+1]
            if conv.stride[0] == 2:
                lengths = (lengths + 1) // 2
        tokens = x.transpose(1, 2)  # [B, F', D]
        padding = torch.arange(tokens.shape[1], device=x.device)[None] >= lengths[:, None]  # [B, F']
        tokens = tokens + sinusoidal_positions(tokens.shape[1], self.dim).to(tokens)
        tokens = self.layers(tokens, src_key_padding_mask=attention_safe_mask(padding))
        return self.norm(tokens), padding
