"""The self-supervised pretraining models (``main.py --task pretrain --pretrain_objective mvm|contrastive|both``).

Labels are ignored; any dataset the repo reads works for ``mvm`` (captions are needed for ``contrastive``).

Masked video modelling (``mvm``, the VideoMAE recipe) on transformers' ``VideoMAEForPreTraining``:

* the clip is cut into tokens of ``tubelet x patch x patch`` pixels, a grid of T' x H' x W' (T' = frames / tubelet);
* a mask hides exactly ``round(mask_ratio * n)`` of them per clip. ``tube`` masking draws a spatial mask of
  H' x W' and repeats it over all T' time slots (the same patches are hidden in every frame, so a hidden patch
  cannot be copied from its neighbour in time); ``random`` draws over all T' H' W' tokens;
  ``frame`` hides whole time slots (round(mask_ratio * T') of them: predict the frames that are not shown);
* the encoder sees the visible tokens only; a small decoder gets them plus a mask token per hidden position and
  predicts the pixels of the hidden tokens; the loss is the MSE on hidden tokens only, against per-patch
  normalised pixels with ``--norm_pix_loss`` (each patch's pixels minus their mean, over their std, per channel).
  ``--mvm_target frame_difference`` scores the same predictions against the next frame minus this one instead
  (static pixels are 0), computed here from the decoder's output.

Video-text alignment (``contrastive``, CLIP's loss): the backbone's mean-pooled tokens and the caption's
MiniLM embedding (pretrained, frozen, offline; ``language.load_text_encoder``) are each projected to
``--contrastive_dim`` and L2-normalised; with s = exp(logit_scale) (learnable, clamped to <= 100) the loss is

    L = ( CE(s V T^T, I) + CE(s T V^T, I) ) / 2          V, T: [B, D] normalised, I: matched pairs on the diagonal

``both`` adds the two losses (the contrastive branch sees the whole clip, the masked branch its visible tokens).
Retrieval on the test split: recall@1/5 video->text and text->video; a caption counts as a match for every video
whose caption is the same string (identical captions cannot be told apart).

The run writes, besides the usual checkpoints and metrics.jsonl: ``eval.json`` (test reconstruction loss,
retrieval), ``plots/pretraining_curves.png``, ``plots/reconstruction.png`` (original / masked / reconstructed
frames) and the backbone folder (``<run>/backbone`` or ``--export_dir``): ``save_pretrained`` of the encoder
(``VideoMAEModel`` / ``TimesformerModel``), which ``--pretrained PATH`` loads for fine-tuning, with
``--use_lora_vision`` too.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional, Sequence

import torch
import torch.nn.functional as F
from torch import nn
from transformers.utils import ModelOutput

from videolab.core.errors import UsageError
from videolab.models.language import load_text_encoder
from videolab.models.registry import build_backbone

# decoder of the masked video model per --model_size ('base' = transformers' default, the published one)
DECODER_PRESETS = {
    "tiny": dict(decoder_hidden_size=64, decoder_num_hidden_layers=2, decoder_num_attention_heads=4,
                 decoder_intermediate_size=256),
    "small": dict(decoder_hidden_size=192, decoder_num_hidden_layers=4, decoder_num_attention_heads=3,
                  decoder_intermediate_size=768),
    "base": {},
}
EVAL_MASK_SEED = 1234  # evaluation masks are drawn from this seed, so validation losses compare across epochs
MAX_LOGIT_SCALE = math.log(100.0)  # CLIP's clamp of the learnable temperature
BACKBONE_DIR = "backbone"
PRETRAIN_INFO_FILE = "pretraining.json"


# ----------------------------------------------------------------------------------------------------------------
# masking (pure)
# ----------------------------------------------------------------------------------------------------------------
def num_masked(num_tokens: int, ratio: float, unit: str = "tokens") -> int:
    """Units (tokens, or the patches / time slots a mask draws) hidden out of ``num_tokens``: round(ratio * n), at
    least 1 hidden and 1 visible."""
    k = int(round(ratio * num_tokens))
    if not 0 < k < num_tokens:
        raise ValueError(f"mask ratio {ratio} hides {k} of {num_tokens} {unit}; at least one must be hidden and one "
                         f"visible: choose --mask_ratio in [{1 / num_tokens:.3f}, {1 - 1 / num_tokens:.3f}]")
    return k


def random_mask(batch: int, num_tokens: int, ratio: float, generator: Optional[torch.Generator] = None
                ) -> torch.Tensor:
    """bool [B, N], True = hidden: exactly ``num_masked(N, ratio)`` per row, positions uniformly at random."""
    k = num_masked(num_tokens, ratio)
    noise = torch.rand(batch, num_tokens, generator=generator)  # [B, N]
    ranks = noise.argsort(dim=1).argsort(dim=1)  # each token's rank in its row: a random permutation
    return ranks < k


def tube_mask(batch: int, grid: Sequence[int], ratio: float, generator: Optional[torch.Generator] = None
              ) -> torch.Tensor:
    """bool [B, T' * H' * W'] in VideoMAE's token order (time slot, row, column): one random spatial mask of
    exactly ``num_masked(H' W', ratio)`` patches per clip, the same in every time slot."""
    slots, height, width = grid
    spatial = random_mask(batch, height * width, ratio, generator)  # [B, H' W']
    return spatial.unsqueeze(1).expand(batch, slots, height * width).reshape(batch, -1)


def frame_mask(batch: int, grid: Sequence[int], ratio: float, generator: Optional[torch.Generator] = None
               ) -> torch.Tensor:
    """bool [B, T' * H' * W']: exactly ``num_masked(T', ratio)`` whole time slots hidden per clip (every patch of
    those frames), the others fully visible. The clip's still content can be copied from the visible slots, so
    what is left to predict is what moved: a hidden slot is filled in from where the motion seen in the visible
    ones leads."""
    slots, height, width = grid
    hidden = random_mask(batch, slots, ratio, generator)  # [B, T']
    return hidden.unsqueeze(-1).expand(batch, slots, height * width).reshape(batch, -1)


# mask type -> (what it draws: the name, and how many a token grid (T', H', W') has)
MASK_UNITS = {"tube": ("patches per frame", lambda grid: grid[1] * grid[2]), "random": ("tokens", math.prod),
              "frame": ("time slots", lambda grid: grid[0])}


def make_mask(kind: str, batch: int, grid: Sequence[int], ratio: float,
              generator: Optional[torch.Generator] = None) -> torch.Tensor:
    if kind == "tube":
        return tube_mask(batch, grid, ratio, generator)
    if kind == "random":
        return random_mask(batch, math.prod(grid), ratio, generator)
    if kind == "frame":
        return frame_mask(batch, grid, ratio, generator)
    raise ValueError(f"mask type must be one of {', '.join(MASK_UNITS)}, got {kind!r}")


def token_grid(config) -> tuple[int, int, int]:
    """(T', H', W') of a VideoMAE config: frames / tubelet, rows and columns of patches."""
    return (config.num_frames // config.tubelet_size, config.image_size // config.patch_size,
            config.image_size // config.patch_size)


# ----------------------------------------------------------------------------------------------------------------
# patches (pure; the layout of VideoMAEForPreTraining's targets)
# ----------------------------------------------------------------------------------------------------------------
def patchify(frames: torch.Tensor, tubelet: int, patch: int) -> torch.Tensor:
    """[B, T, C, H, W] -> [B, N, tubelet * patch * patch * C], tokens in (t, h, w) order, values in (dt, dy, dx, c)
    order: the layout transformers' VideoMAE predicts."""
    b, t, c, h, w = frames.shape
    x = frames.reshape(b, t // tubelet, tubelet, c, h // patch, patch, w // patch, patch)
    x = x.permute(0, 1, 4, 6, 2, 5, 7, 3)  # [B, T', H', W', dt, dy, dx, C]
    return x.reshape(b, (t // tubelet) * (h // patch) * (w // patch), tubelet * patch * patch * c)


def unpatchify(patches: torch.Tensor, grid: Sequence[int], tubelet: int, patch: int, channels: int = 3
               ) -> torch.Tensor:
    """Inverse of :func:`patchify`: [B, N, tubelet * patch * patch * C] -> [B, T, C, H, W]."""
    slots, height, width = grid
    b = patches.shape[0]
    x = patches.reshape(b, slots, height, width, tubelet, patch, patch, channels)
    x = x.permute(0, 1, 4, 7, 2, 5, 3, 6)  # [B, T', dt, C, H', dy, W', dx]
    return x.reshape(b, slots * tubelet, channels, height * patch, width * patch)


def patch_statistics(patches: torch.Tensor, channels: int = 3) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-patch, per-channel mean and std (unbiased, + 1e-6) as VideoMAE's norm_pix_loss computes them:
    [B, N, P * C] -> two [B, N, 1, C]."""
    x = patches.reshape(*patches.shape[:2], -1, channels)  # [B, N, P, C]
    return x.mean(dim=-2, keepdim=True), x.var(dim=-2, unbiased=True, keepdim=True).sqrt() + 1e-6


def reconstruction_targets(frames01: torch.Tensor, tubelet: int, patch: int, norm_pix: bool) -> torch.Tensor:
    """What the decoder learns to predict, for every token: frames in [0, 1] [B, T, C, H, W] ->
    [B, N, tubelet * patch * patch * C] (per-patch normalised with ``norm_pix``)."""
    patches = patchify(frames01, tubelet, patch)
    if not norm_pix:
        return patches
    channels = frames01.shape[2]
    mean, std = patch_statistics(patches, channels)
    x = patches.reshape(*patches.shape[:2], -1, channels)
    return ((x - mean) / std).reshape(patches.shape)


def frame_differences(frames01: torch.Tensor) -> torch.Tensor:
    """[B, T, C, H, W] -> [B, T, C, H, W]: frame t+1 minus frame t; the last frame repeats the difference before
    it. What is static (background, still distractors) is 0; what moves is not."""
    diff = frames01[:, 1:] - frames01[:, :-1]  # [B, T-1, C, H, W]
    return torch.cat([diff, diff[:, -1:]], dim=1)


def mvm_targets(frames01: torch.Tensor, target: str, tubelet: int, patch: int, norm_pix: bool) -> torch.Tensor:
    """Per-token targets [B, N, tubelet * patch * patch * C] of ``--mvm_target``: the (normalised) pixels, or the
    raw frame differences."""
    if target == "frame_difference":
        return patchify(frame_differences(frames01), tubelet, patch)
    return reconstruction_targets(frames01, tubelet, patch, norm_pix)


# ----------------------------------------------------------------------------------------------------------------
# contrastive loss and retrieval (pure)
# ----------------------------------------------------------------------------------------------------------------
def clip_loss(video: torch.Tensor, text: torch.Tensor, logit_scale: torch.Tensor) -> tuple[torch.Tensor,
                                                                                          torch.Tensor]:
    """Symmetric InfoNCE. video, text: [B, D] (normalised here); logit_scale: scalar log-temperature (clamped to
    log 100). Returns (loss, similarity logits [B_video, B_text]); pair i of the batch is the positive of row i."""
    video, text = F.normalize(video.float(), dim=-1), F.normalize(text.float(), dim=-1)
    logits = logit_scale.float().clamp(max=MAX_LOGIT_SCALE).exp() * video @ text.T  # [B, B]
    target = torch.arange(len(video), device=video.device)
    loss = (F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target)) / 2
    return loss, logits


def retrieval_recall(similarity: torch.Tensor, positives: torch.Tensor, ks: Sequence[int] = (1, 5)) -> dict:
    """Recall@k both ways. similarity [Nv, Nt] (video i vs text j), positives bool [Nv, Nt] (j describes i).
    video->text: share of videos with a positive text among their k most similar texts; text->video likewise."""
    result = {}
    for name, sim, pos in (("video_to_text", similarity, positives), ("text_to_video", similarity.T, positives.T)):
        top = sim.topk(min(max(ks), sim.shape[1]), dim=1).indices  # [N, kmax]
        hits = pos.gather(1, top)  # [N, kmax]
        for k in ks:
            result[f"{name}_R@{k}"] = hits[:, :k].any(dim=1).float().mean().item()
    return result


# ----------------------------------------------------------------------------------------------------------------
# models
# ----------------------------------------------------------------------------------------------------------------
@dataclass
class PretrainOutput(ModelOutput):
    """``loss`` (the objective's, summed for 'both'), ``logits`` (decoder pixel predictions for the hidden tokens
    [B, N_hidden, P * C], or the video-text similarity [B, B] for 'contrastive'), the parts and the mask."""
    loss: Optional[torch.Tensor] = None
    logits: Optional[torch.Tensor] = None
    mvm_loss: Optional[torch.Tensor] = None
    contrastive_loss: Optional[torch.Tensor] = None
    bool_masked_pos: Optional[torch.Tensor] = None


class FrozenTextEncoder:
    """Pretrained MiniLM (offline, ``language.load_text_encoder('bert')``), frozen: captions -> [B, 384] masked
    mean of its token states. Kept out of the model's modules (so neither the optimizer nor the checkpoints carry
    its 22.7 M fixed weights), with a cache: each caption is encoded once per process."""

    def __init__(self, language):
        self.model = language.module.eval().requires_grad_(False)
        self.tokenizer = language.tokenizer
        self.dim = self.model.config.hidden_size
        self.source = language.source
        self.cache: dict[str, torch.Tensor] = {}

    @torch.no_grad()
    def __call__(self, texts: Sequence[str], device) -> torch.Tensor:
        new = sorted({t for t in texts if t not in self.cache})
        if new:
            tokens = self.tokenizer(new, padding=True, truncation=True, max_length=64, return_tensors="pt")
            hidden = self.model(**tokens).last_hidden_state  # [n, L, D]
            keep = tokens["attention_mask"].unsqueeze(-1).float()  # [n, L, 1]
            pooled = (hidden * keep).sum(1) / keep.sum(1)  # [n, D]
            self.cache.update(zip(new, pooled))
        return torch.stack([self.cache[t] for t in texts]).to(device)  # [B, D]


class VideoPretrainer(nn.Module):
    """The pretraining model of one objective. ``mae`` (VideoMAEForPreTraining; its ``videomae`` is the encoder)
    for mvm / both, ``backbone`` (a transformers video model) for contrastive alone; the contrastive parts are
    the two projections and ``logit_scale``."""

    def __init__(self, cfg, encoder: nn.Module, mae: Optional[nn.Module] = None,
                 text: Optional[FrozenTextEncoder] = None, mean: Sequence[float] = (), std: Sequence[float] = ()):
        super().__init__()
        self.objective = cfg.pretrain_objective
        self.mask_ratio, self.mask_type, self.target = cfg.mask_ratio, cfg.mask_type, cfg.mvm_target
        self.mean, self.std = tuple(mean), tuple(std)
        if mae is not None:
            self.mae = mae
        else:
            self.backbone = encoder
        self.uses_mvm = mae is not None
        self.uses_text = text is not None
        self.text = text
        if text is not None:
            dim = encoder.config.hidden_size
            self.video_projection = nn.Sequential(nn.LayerNorm(dim), nn.Linear(dim, cfg.contrastive_dim))
            self.text_projection = nn.Linear(text.dim, cfg.contrastive_dim)
            self.logit_scale = nn.Parameter(torch.tensor(math.log(1 / 0.07)))  # CLIP's initial temperature 0.07
        self.batch_keys = {"pixel_values": "pixel_values", **({"captions": "caption"} if text is not None else {})}

    @property
    def encoder(self) -> nn.Module:
        """The backbone being pretrained (what the backbone folder holds)."""
        return self.mae.videomae if self.uses_mvm else self.backbone

    def draw_mask(self, batch: int) -> torch.Tensor:
        """bool [B, N]: training draws from torch's RNG (seeded; restored on resume), evaluation from a fixed seed."""
        generator = None if self.training else torch.Generator().manual_seed(EVAL_MASK_SEED)
        return make_mask(self.mask_type, batch, token_grid(self.mae.config), self.mask_ratio, generator)

    def video_embedding(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """[B, T, C, H, W] -> [B, contrastive_dim] (not normalised): mean of the encoder's tokens, projected."""
        tokens = self.encoder(pixel_values=pixel_values).last_hidden_state  # [B, L, D]
        return self.video_projection(tokens.mean(dim=1))

    def text_embedding(self, captions: Sequence[str], device) -> torch.Tensor:
        """captions -> [B, contrastive_dim] (not normalised)."""
        return self.text_projection(self.text(list(captions), device))

    def forward(self, pixel_values: torch.Tensor, captions: Optional[Sequence[str]] = None,
                bool_masked_pos: Optional[torch.Tensor] = None) -> PretrainOutput:
        if pixel_values.dim() != 5:
            raise ValueError(f"expected pixel_values [B, T, C, H, W], got shape {tuple(pixel_values.shape)}")
        out = PretrainOutput()
        losses = []
        if self.uses_mvm:
            mask = bool_masked_pos if bool_masked_pos is not None else self.draw_mask(len(pixel_values))
            mask = mask.to(pixel_values.device)
            mae_out = self.mae(pixel_values=pixel_values, bool_masked_pos=mask)
            loss = mae_out.loss  # transformers' MSE on the hidden tokens' (normalised) pixels
            if self.target != "pixels":  # the same decoder output, compared with another target
                config = self.mae.config
                targets = mvm_targets(to_unit_range(pixel_values, self.mean, self.std), self.target,
                                      config.tubelet_size, config.patch_size, config.norm_pix_loss)  # [B, N, P*C]
                loss = F.mse_loss(mae_out.logits.float(), targets[mask].view(mae_out.logits.shape).float())
            out.mvm_loss, out.logits, out.bool_masked_pos = loss, mae_out.logits, mask
            losses.append(loss)
        if self.uses_text:
            if captions is None or len(captions) != len(pixel_values):
                raise ValueError(f"the contrastive objective needs one caption per clip, got "
                                 f"{None if captions is None else len(captions)} for {len(pixel_values)} clips")
            loss, logits = clip_loss(self.video_embedding(pixel_values),
                                     self.text_embedding(captions, pixel_values.device), self.logit_scale)
            out.contrastive_loss = loss
            out.logits = logits if out.logits is None else out.logits
            losses.append(loss)
        out.loss = sum(losses)
        return out

    @torch.no_grad()
    def reconstruct(self, pixel_values: torch.Tensor, bool_masked_pos: torch.Tensor) -> torch.Tensor:
        """Clips as the model fills them in: the visible tokens as given, the hidden ones predicted (norm_pix
        predictions un-normalised with the true patch's statistics, as in the MAE papers' figures).
        pixel_values [B, T, C, H, W] (normalised input) -> frames in [0, 1] [B, T, C, H, W]."""
        config = self.mae.config
        frames = to_unit_range(pixel_values, self.mean, self.std)
        if self.target == "frame_difference":
            frames = frame_differences(frames)
        patches = patchify(frames, config.tubelet_size, config.patch_size)  # [B, N, P*C]
        channels = frames.shape[2]
        pred = self.mae(pixel_values=pixel_values, bool_masked_pos=bool_masked_pos).logits  # [B, N_hidden, P*C]
        pred = pred.reshape(-1, pred.shape[-1]).to(patches.dtype)  # [M, P*C], hidden tokens in mask order
        if config.norm_pix_loss and self.target == "pixels":
            hidden = patches[bool_masked_pos]  # [M, P*C], the same order
            mean, std = patch_statistics(hidden.unsqueeze(0), channels)  # [1, M, 1, C]
            pred = (pred.reshape(1, len(pred), -1, channels) * std + mean).reshape(hidden.shape)
        filled = patches.clone()
        filled[bool_masked_pos] = pred
        rebuilt = unpatchify(filled, token_grid(config), config.tubelet_size, config.patch_size)
        return rebuilt if self.target == "frame_difference" else rebuilt.clamp(0, 1)


def to_unit_range(pixel_values: torch.Tensor, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    """Normalised [B, T, C, H, W] -> pixels in [0, 1] (x * std + mean per channel)."""
    m = torch.tensor(mean, dtype=pixel_values.dtype, device=pixel_values.device).view(1, 1, -1, 1, 1)
    s = torch.tensor(std, dtype=pixel_values.dtype, device=pixel_values.device).view(1, 1, -1, 1, 1)
    return pixel_values * s + m


# ----------------------------------------------------------------------------------------------------------------
# building
# ----------------------------------------------------------------------------------------------------------------
def build_video_pretrainer(cfg, announce=print, arch: Optional[dict] = None):
    """(VideoPretrainer, the backbone): the backbone of ``build_backbone`` (presets, --pretrained, offline
    fallback), wrapped for the objective: VideoMAEForPreTraining around the same encoder weights, and/or the
    contrastive heads with the frozen MiniLM text encoder. A mask ratio that hides nothing or everything is a
    UsageError here, before training. ``arch``: a saved backbone architecture (rebuilding a checkpoint)."""
    backbone = build_backbone(cfg, arch)
    encoder = backbone.module.model  # HFVideoEncoder.model: VideoMAEModel / TimesformerModel
    mae = None
    if cfg.pretrain_objective in ("mvm", "both"):
        from transformers import VideoMAEConfig, VideoMAEForPreTraining
        config = VideoMAEConfig.from_dict({**encoder.config.to_dict(), **DECODER_PRESETS[cfg.model_size],
                                           "norm_pix_loss": cfg.norm_pix_loss})
        mae = VideoMAEForPreTraining(config)
        mae.videomae.load_state_dict(encoder.state_dict())  # the backbone's weights: random or --pretrained
        grid = token_grid(config)
        try:
            unit, count = MASK_UNITS[cfg.mask_type]
            num_masked(count(grid), cfg.mask_ratio, unit)
        except ValueError as exc:
            raise UsageError(f"--mask_ratio {cfg.mask_ratio} with --mask_type {cfg.mask_type}: {exc}") from None
    text = None
    if cfg.pretrain_objective in ("contrastive", "both"):
        text = FrozenTextEncoder(load_text_encoder("bert", announce))
    return VideoPretrainer(cfg, encoder, mae, text, backbone.mean, backbone.std), backbone
