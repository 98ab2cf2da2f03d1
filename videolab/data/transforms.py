"""Pixels of a clip: tensor functions from uint8 [T, C, H, W] frames to normalised float model input.

Spatial views: evaluation resizes the short side to ``--image_size`` and takes the centre square
(``--test_crops 1``) or three squares at the start, centre and end of the long side (``--test_crops 3``).
Training (``--train_crop random_resized``) takes one crop of [``--crop_scale_min``, 1] of the frame area with
aspect ratio in [3/4, 4/3] (torchvision's ``RandomResizedCrop`` parameters), the same for every frame of the clip,
resized to the square; ``--horizontal_flip`` flips the whole clip with p = 0.5; ``--rand_augment N,M`` applies
torchvision's RandAugment to the whole clip, one draw of operations and magnitudes for all its frames (v2 transforms
treat the leading T of a [T, C, H, W] tensor as a batch of images sharing one set of parameters).
"""
from __future__ import annotations

from typing import Optional, Sequence

import torch
from torchvision.transforms import RandomResizedCrop
from torchvision.transforms.v2 import RandAugment
from torchvision.transforms.v2 import functional as TF

from videolab.data.sampling import ClipSpec

CROP_RATIO = (3 / 4, 4 / 3)  # aspect ratios a training crop may have (torchvision's default)


def _check_video(video: torch.Tensor) -> None:
    if video.dim() != 4 or video.shape[1] not in (1, 3):
        raise ValueError(f"expected a video [T, C, H, W] with C = 1 or 3, got shape {tuple(video.shape)}")


def _as_float01(video: torch.Tensor) -> torch.Tensor:
    """uint8 (or float in [0, 1]) [T, C, H, W] -> float in [0, 1] (for the resizes, which work in float)."""
    return video.float() / 255.0 if video.dtype == torch.uint8 else video.float()


def normalise(views: torch.Tensor, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    """uint8 (0..255) or float (0..1) [..., C, H, W], C = 1 or 3 -> a new contiguous float32 [..., 3, H, W]
    tensor, (x - mean) / std per channel.

    Written out rather than torchvision's ``normalize`` after a ``/ 255`` copy: one contiguous float copy of the
    already cropped pixels (decoded frames arrive channels-last, and arithmetic on that strided layout is several
    times slower), then two in-place passes. Cached clips spend most of their time here: 0.15 ms per 8 x 112^2
    clip, against 2 ms on the strided crop (a uint8 x float multiply is as slow).
    """
    scale = 255.0 if views.dtype == torch.uint8 else 1.0
    views = views.to(torch.float32, memory_format=torch.contiguous_format, copy=True)
    if views.shape[-3] == 1:
        views = views.expand(*views.shape[:-3], 3, *views.shape[-2:]).contiguous()
    std_t = torch.tensor(std, dtype=torch.float32).view(-1, 1, 1)
    shift = torch.tensor(mean, dtype=torch.float32).view(-1, 1, 1) / std_t
    return views.mul_(1.0 / (std_t * scale)).sub_(shift)


def _resize_short_side(video: torch.Tensor, size: int) -> torch.Tensor:
    return TF.resize(_as_float01(video), [size], antialias=True) if min(video.shape[-2:]) != size else video


def crop_offsets(height: int, width: int, size: int, crops: int) -> list[tuple[int, int]]:
    """(top, left) of ``crops`` size x size squares: 1 = the centre (torchvision's rounding), 3 = start, centre
    and end of the long side, centred on the short side."""
    centre = (int(round((height - size) / 2.0)), int(round((width - size) / 2.0)))
    if crops == 1:
        return [centre]
    if width >= height:
        return [(centre[0], 0), centre, (centre[0], width - size)]
    return [(0, centre[1]), centre, (height - size, centre[1])]


def eval_views(video: torch.Tensor, image_size: int, mean: Sequence[float], std: Sequence[float],
               crops: int = 1) -> torch.Tensor:
    """uint8 (or float in [0, 1]) [T, C, H, W] -> float [crops, T, 3, S, S]: short side resized to S (skipped when
    it already is, as for decoded video files), ``crops`` squares, normalised."""
    _check_video(video)
    video = _resize_short_side(video, image_size)  # [T, C, H', W'], min(H', W') = S
    h, w = video.shape[-2:]
    views = torch.stack([video[..., top:top + image_size, left:left + image_size]
                         for top, left in crop_offsets(h, w, image_size, crops)])  # [crops, T, C, S, S]
    return normalise(views, mean, std)


def preprocess_video(video: torch.Tensor, image_size: int, mean: Sequence[float], std: Sequence[float]
                     ) -> torch.Tensor:
    """uint8 (or float in [0, 1]) [T, C, H, W] -> float32 [T, 3, S, S]: resize short side, centre crop, normalise."""
    return eval_views(video, image_size, mean, std, crops=1)[0]


def parse_rand_augment(text: Optional[str]) -> Optional[tuple[int, int]]:
    """--rand_augment 'N,M' -> (N, M): N operations (1-14) of magnitude M (0-30, torchvision's scale); none -> None.
    A malformed value raises ValueError with the fix."""
    if not text:
        return None
    parts = [p.strip() for p in str(text).split(",")]
    try:
        num_ops, magnitude = (int(p) for p in parts)
    except ValueError:
        raise ValueError(f"--rand_augment expects 'N,M' (operations, magnitude), e.g. 2,9; got {text!r}") from None
    if not 1 <= num_ops <= 14 or not 0 <= magnitude <= 30:
        raise ValueError(f"--rand_augment {text!r}: N must be 1-14 operations and M a magnitude 0-30 (e.g. 2,9)")
    return num_ops, magnitude


def rand_augment_clip(video: torch.Tensor, num_ops: int, magnitude: int) -> torch.Tensor:
    """uint8 (or float in [0, 1]) [T, C, H, W] -> uint8 [T, C, H, W]: RandAugment with one draw for the whole
    clip (the same operations and magnitudes on every frame, so motion stays coherent)."""
    if video.is_floating_point():
        video = (video.clamp(0, 1) * 255).round().to(torch.uint8)
    return RandAugment(num_ops=num_ops, magnitude=magnitude)(video)


def train_view(video: torch.Tensor, spec: ClipSpec) -> torch.Tensor:
    """uint8 [T, C, H, W] -> float [T, 3, S, S]: the training crop (random resized, or the centre) and flip, one
    draw for the whole clip so motion stays coherent."""
    _check_video(video)
    size = spec.image_size
    if spec.random_crop:
        top, left, h, w = RandomResizedCrop.get_params(video, [spec.crop_scale_min, 1.0], list(CROP_RATIO))
        video = TF.resized_crop(_as_float01(video), top, left, h, w, [size, size], antialias=True)
    else:
        video = _resize_short_side(video, size)
        top, left = crop_offsets(*video.shape[-2:], size, 1)[0]
        video = video[..., top:top + size, left:left + size]
    if spec.flip and torch.rand(()).item() < 0.5:
        video = TF.horizontal_flip(video)
    if spec.rand_augment:
        video = rand_augment_clip(video, *spec.rand_augment)
    return normalise(video, spec.mean, spec.std)
