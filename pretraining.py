"""Self-supervised pretraining: ``python main.py --task pretrain --pretrain_objective mvm|contrastive|both``.

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
import os
import time
from dataclasses import dataclass
from typing import Optional, Sequence

import torch
import torch.nn.functional as F
from torch import nn
from transformers.utils import ModelOutput

from settings import Settings, UsageError

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

    def __init__(self, cfg: Settings, encoder: nn.Module, mae: Optional[nn.Module] = None,
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
PRETRAIN_ONLY_FLAGS = ("pretrain_objective", "mask_ratio", "mask_type", "norm_pix_loss", "contrastive_dim",
                       "mvm_target")
MVM_BACKBONES = ("videomae",)
CONTRASTIVE_BACKBONES = ("videomae", "timesformer")  # transformers video models: the backbone folder loads back


def check_supervised_flags(explicit: set[str]) -> None:
    """--task train: the pretraining flags would be silently ignored; say so instead."""
    given = [name for name in PRETRAIN_ONLY_FLAGS if name in explicit]
    if given:
        raise UsageError(f"--{given[0]} applies to self-supervised pretraining: add --task pretrain, or drop "
                         f"--{given[0]}")


def check_pretrain_flags(cfg: Settings) -> None:
    """Combinations --task pretrain cannot run, each with its fix."""
    objective = cfg.pretrain_objective
    if cfg.eval_only:
        raise UsageError("--eval_only evaluates a trained classifier; a pretraining run evaluates itself at its end "
                         "(eval.json in its run folder). Drop --eval_only or use --task train")
    if cfg.use_vlm:
        raise UsageError("--task pretrain trains a vision backbone (its contrastive objective brings its own text "
                         "encoder); drop --use_vlm")
    if cfg.use_lora_vision or cfg.freeze_visionbackbone:
        name = "use_lora_vision" if cfg.use_lora_vision else "freeze_visionbackbone"
        raise UsageError(f"--{name} applies to fine-tuning: pretraining trains the whole backbone. Drop it here and "
                         f"pass it to the fine-tuning run with --pretrained <the exported backbone folder>")
    if cfg.label_fraction < 1.0:
        raise UsageError("--label_fraction limits the labelled clips of supervised training; pretraining ignores "
                         "labels and uses every training clip. Drop --label_fraction or use --task train")
    if objective in ("mvm", "both") and cfg.vision_model not in MVM_BACKBONES:
        raise UsageError(f"--pretrain_objective {objective} (masked video modelling) is built on VideoMAE; got "
                         f"--vision_model {cfg.vision_model}. Use --vision_model videomae, or --pretrain_objective "
                         f"contrastive with {' or '.join(CONTRASTIVE_BACKBONES)}")
    if objective == "contrastive" and cfg.vision_model not in CONTRASTIVE_BACKBONES:
        raise UsageError(f"--pretrain_objective contrastive exports a transformers video backbone; got --vision_model "
                         f"{cfg.vision_model}. Use --vision_model {' or --vision_model '.join(CONTRASTIVE_BACKBONES)}")
    if cfg.mvm_target == "frame_difference" and cfg.norm_pix_loss:
        raise UsageError("--mvm_target frame_difference predicts raw differences (static pixels are 0), and "
                         "per-patch normalisation would blow the noise of still patches up; add --norm_pix_loss False")
    if objective in ("contrastive", "both") and cfg.dataset != "synthetic":
        raise UsageError(f"--pretrain_objective {objective} pairs clips with their captions, and --dataset "
                         f"{cfg.dataset} has none; use --pretrain_objective mvm (or the synthetic dataset)")


@dataclass
class BuiltPretrainer:
    model: VideoPretrainer
    backbone: object  # build_model.Backbone: mean / std for the datasets
    info: dict  # recorded in checkpoints and eval.json

    def write_assets(self, folder: str) -> None:
        """Nothing besides the weights: the frozen text encoder is rebuilt from its package."""


def build_pretrainer(cfg: Settings, verbose: bool = True) -> BuiltPretrainer:
    """The backbone of ``build_model.build_backbone`` (presets, --pretrained, offline fallback), wrapped for the
    objective: VideoMAEForPreTraining around the same encoder weights, and/or the contrastive heads."""
    from build_model import build_backbone, count_parameters
    from language import load_text_encoder
    backbone = build_backbone(cfg)
    encoder = backbone.module.model  # HFVideoEncoder.model: VideoMAEModel / TimesformerModel
    mae = None
    if cfg.pretrain_objective in ("mvm", "both"):
        from transformers import VideoMAEConfig, VideoMAEForPreTraining
        config = VideoMAEConfig.from_dict({**encoder.config.to_dict(), **DECODER_PRESETS[cfg.model_size],
                                           "norm_pix_loss": cfg.norm_pix_loss})
        mae = VideoMAEForPreTraining(config)
        mae.videomae.load_state_dict(encoder.state_dict())  # the backbone's weights: random or --pretrained
        grid = token_grid(config)  # a ratio that hides nothing or everything fails here, before training
        try:
            unit, count = MASK_UNITS[cfg.mask_type]
            num_masked(count(grid), cfg.mask_ratio, unit)
        except ValueError as exc:
            raise UsageError(f"--mask_ratio {cfg.mask_ratio} with --mask_type {cfg.mask_type}: {exc}") from None
    text = None
    if cfg.pretrain_objective in ("contrastive", "both"):
        text = FrozenTextEncoder(load_text_encoder("bert", print if verbose else (lambda message: None)))
    model = VideoPretrainer(cfg, encoder, mae, text, backbone.mean, backbone.std)
    total, trainable = count_parameters(model)
    info = dict(task="pretrain", objective=cfg.pretrain_objective, vision_model=cfg.vision_model,
                model_size=cfg.model_size, pretrained=backbone.pretrained, weights_source=backbone.source,
                arch=backbone.arch, mean=list(backbone.mean), std=list(backbone.std), params_total=total,
                params_trainable=trainable, decoder=dict(DECODER_PRESETS[cfg.model_size]) if mae else None,
                text_encoder=text.source if text else None)
    if verbose:
        parts = ["VideoMAEForPreTraining" if mae else "", f"contrastive with {text.source}" if text else ""]
        print(f"pretraining model: {cfg.vision_model} {cfg.model_size} ({backbone.source}) | "
              f"{' + '.join(p for p in parts if p)} | trainable params {trainable:,}")
    return BuiltPretrainer(model, backbone, info)


def export_backbone(model: VideoPretrainer, cfg: Settings, info: dict, folder: str, extra: dict) -> list[str]:
    """The pretrained encoder as a ``save_pretrained`` folder (config.json, model.safetensors), the video processor
    and pretraining.json (objective, settings, results), written atomically. ``--pretrained folder`` loads it."""
    import copy

    from checkpointing import commit_folder, new_temp_folder, write_json_atomic
    from hf_export import video_processor
    tmp = new_temp_folder(folder)
    try:
        copy.deepcopy(model.encoder).cpu().save_pretrained(tmp)
        video_processor(cfg, info).save_pretrained(tmp)
        write_json_atomic(os.path.join(tmp, PRETRAIN_INFO_FILE),
                          dict(objective=cfg.pretrain_objective, vision_model=cfg.vision_model,
                               model_size=cfg.model_size, num_frames=cfg.num_frames, image_size=cfg.image_size,
                               mask_type=cfg.mask_type, mask_ratio=cfg.mask_ratio, norm_pix_loss=cfg.norm_pix_loss,
                               started_from=info["weights_source"], **extra))
        commit_folder(tmp, folder)
    except BaseException:
        import shutil
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return sorted(os.listdir(folder))


# ----------------------------------------------------------------------------------------------------------------
# the run
# ----------------------------------------------------------------------------------------------------------------
def run_pretraining(cfg: Settings, explicit: set[str]) -> dict:
    """``main.py --task pretrain``: train with the shared loop (checkpoints, resume, DDP), then evaluate on the test
    split, draw the plots and export the backbone folder. Returns the eval.json report."""
    import yaml
    from accelerate.utils import set_seed

    import main as entry
    from checkpointing import load_weights, resume_folder, write_json_atomic
    from reporting import environment_info, timestamp
    from train_code import check_resume, check_tracker_installed, train
    from VLoader import build_datasets, dataset_class_names
    check_pretrain_flags(cfg)
    check_tracker_installed(cfg.report_to)
    resume_from = resume_folder(cfg.resume_from_checkpoint, cfg.output_dir, cfg.run_name) \
        if cfg.resume_from_checkpoint else None
    if not cfg.run_name and not resume_from:
        cfg.run_name = f"pretrain-{cfg.pretrain_objective}-{cfg.vision_model}-{time.strftime('%Y%m%d-%H%M%S')}"
    run_dir = entry.run_folder(cfg, resume_from)
    accelerator = entry.make_run_accelerator(cfg, run_dir)
    with accelerator.main_process_first():
        entry.ensure_dataset(cfg)
    class_names = dataset_class_names(cfg)  # recorded only: labels are not used
    if resume_from:
        check_resume(cfg, resume_from, class_names, accelerator)
    set_seed(cfg.seed)
    built = build_pretrainer(cfg, verbose=accelerator.is_main_process)
    data = build_datasets(cfg, built.backbone.mean, built.backbone.std)
    os.makedirs(run_dir, exist_ok=True)
    if accelerator.is_main_process:
        with open(os.path.join(run_dir, "settings.yaml"), "w") as fh:
            yaml.safe_dump(cfg.to_dict(), fh, sort_keys=False)
    entry.start_trackers(accelerator, cfg, os.path.basename(run_dir), run_dir)
    run_config = dict(settings=cfg.to_dict(), model_info=built.info, class_names=class_names,
                      dataset=dict(name=cfg.dataset, root=cfg.data_root), torch_version=torch.__version__)
    accelerator.print(f"run folder: {run_dir} | pretraining ({cfg.pretrain_objective}) on {len(data.train)} train "
                      f"clips, labels unused | val {len(data.val) if data.val else 0} / test {len(data.test)} | "
                      f"device {accelerator.device}")
    t0 = time.time()
    result = train(cfg, built, data, run_dir, run_config, accelerator, resume_from)
    train_seconds = time.time() - t0
    built.model.load_state_dict(load_weights(result.best_dir))
    results = evaluate_pretrainer(cfg, built.model, data.test, accelerator)
    report = dict(run_dir=run_dir, mode="pretrain", task="pretrain", objective=cfg.pretrain_objective,
                  split="test", checkpoint=result.best_dir, finished=timestamp(), **results,
                  pretrained=built.info["pretrained"], weights_source=built.info["weights_source"],
                  text_encoder=built.info["text_encoder"], params_total=built.info["params_total"],
                  params_trainable=built.info["params_trainable"], train_seconds=round(train_seconds, 1),
                  history=result.history, settings=cfg.to_dict(), environment=environment_info(accelerator.device))
    if accelerator.is_main_process:
        folder = cfg.export_dir or os.path.join(run_dir, BACKBONE_DIR)
        files = export_backbone(built.model, cfg, built.info, folder,
                                dict(source_run=run_dir, test=dict((k, v) for k, v in results.items()
                                                                   if k != "reconstruction_example")))
        report["backbone_dir"] = folder
        report["plots"] = write_pretraining_plots(built.model, data.test, result.history, run_dir, cfg)
        write_json_atomic(os.path.join(run_dir, "eval.json"), report)
        print(result_line(results))
        print(f"backbone folder: {folder} ({', '.join(files)}) | fine-tune it with: python main.py --pretrained "
              f"{folder} --vision_model {cfg.vision_model} --model_size {cfg.model_size} --num_frames "
              f"{cfg.num_frames} --image_size {cfg.image_size} [--use_lora_vision True]")
        print(f"done in {train_seconds:.0f}s | evaluation: {os.path.join(run_dir, 'eval.json')} | plots: "
              f"{', '.join(os.path.basename(p) for p in report['plots'])} in {os.path.join(run_dir, 'plots')}")
    accelerator.end_training()
    return report


def result_line(results: dict) -> str:
    parts = [f"test loss {results['loss']:.4f}"]
    if results.get("mvm_loss") is not None:
        parts.append(f"reconstruction (hidden tokens, MSE) {results['mvm_loss']:.4f}")
    retrieval = results.get("retrieval")
    if retrieval:
        parts.append(" ".join(f"{k} {100 * v:.1f}%" for k, v in retrieval.items()))
    return " | ".join(parts)


@torch.no_grad()
def evaluate_pretrainer(cfg: Settings, model: VideoPretrainer, test_set, accelerator) -> dict:
    """Test split: mean losses (masks from the fixed evaluation seed) and, with captions, retrieval recall@1/5
    both ways over the whole split. Clips are gathered from every process, as in train_code.evaluate."""
    from train_code import model_inputs
    from VLoader import make_loader
    model = model.to(accelerator.device).eval()
    loader = accelerator.prepare(make_loader(test_set, cfg.batch_size, False, cfg.num_workers, cfg.seed))
    sums, videos, texts, captions = {}, [], [], []
    for batch in loader:
        inputs = model_inputs(model, batch, accelerator.device)
        with accelerator.autocast():
            out = model(**inputs)
        for name in ("loss", "mvm_loss", "contrastive_loss"):
            value = getattr(out, name)
            if value is not None:
                per_clip = value.float().reshape(1).expand(len(batch["pixel_values"]))  # [B]
                sums.setdefault(name, []).append(accelerator.gather_for_metrics(per_clip).cpu())
        if model.uses_text:
            videos.append(accelerator.gather_for_metrics(model.video_embedding(inputs["pixel_values"]).float()).cpu())
            texts.append(accelerator.gather_for_metrics(
                model.text_embedding(inputs["captions"], accelerator.device).float()).cpu())
            captions += accelerator.gather_for_metrics(list(batch["caption"]), use_gather_object=True)
    results = {name: torch.cat(v).double().mean().item() for name, v in sums.items()}
    results.setdefault("mvm_loss", None)
    results.setdefault("contrastive_loss", None)
    results["num_samples"] = len(test_set)
    if model.uses_mvm:
        grid = token_grid(model.mae.config)
        hidden = int(model.draw_mask(1).sum())
        results["mask"] = dict(type=cfg.mask_type, ratio=cfg.mask_ratio, tokens=math.prod(grid), hidden=hidden,
                               grid=list(grid), norm_pix_loss=cfg.norm_pix_loss)
    results["retrieval"] = None
    if videos:
        video, text = F.normalize(torch.cat(videos), dim=-1), F.normalize(torch.cat(texts), dim=-1)
        index = {c: i for i, c in enumerate(dict.fromkeys(captions))}
        ids = torch.tensor([index[c] for c in captions])
        positives = ids.unsqueeze(1) == ids.unsqueeze(0)  # [N, N]: caption j describes clip i
        results["retrieval"] = retrieval_recall(video @ text.T, positives)
        results["retrieval_chance_R@1"] = positives.float().sum(1).mean().item() / len(captions)
    return results


# ----------------------------------------------------------------------------------------------------------------
# plots
# ----------------------------------------------------------------------------------------------------------------
RECONSTRUCTION_CLIPS = 3


def write_pretraining_plots(model: VideoPretrainer, test_set, history: list, run_dir: str, cfg: Settings
                            ) -> list[str]:
    """plots/pretraining_curves.png (loss per epoch) and, for masked video modelling, plots/reconstruction.png."""
    folder = os.path.join(run_dir, "plots")
    os.makedirs(folder, exist_ok=True)
    written = [save_figure(plot_pretraining_curves(history, cfg.pretrain_objective, os.path.basename(run_dir)),
                           os.path.join(folder, "pretraining_curves.png"))]
    if model.uses_mvm:
        model = model.cpu().eval()
        clips = torch.stack([test_set[i]["pixel_values"] for i in range(min(RECONSTRUCTION_CLIPS, len(test_set)))])
        mask = make_mask(cfg.mask_type, len(clips), token_grid(model.mae.config), cfg.mask_ratio,
                         torch.Generator().manual_seed(EVAL_MASK_SEED))
        written.append(save_figure(plot_reconstruction(model, clips, mask, os.path.basename(run_dir)),
                                   os.path.join(folder, "reconstruction.png")))
    return written


def save_figure(fig, path: str) -> str:
    fig.savefig(path, dpi=120, facecolor="white")
    return path


def plot_pretraining_curves(history: list, objective: str, title: str):
    from matplotlib.figure import Figure
    fig = Figure(figsize=(6.5, 4.2), layout="constrained")
    ax = fig.subplots()
    for key, label, style in (("train_loss", "train", dict(color="tab:blue", marker="o")),
                              ("val_loss", "validation", dict(color="tab:orange", marker="s"))):
        points = [(r["epoch"], r[key]) for r in history if r.get(key) is not None]
        if points:
            ax.plot(*zip(*points), label=label, **style)
    what = {"mvm": "reconstruction MSE (hidden tokens)", "contrastive": "symmetric InfoNCE",
            "both": "reconstruction MSE + InfoNCE"}[objective]
    ax.set(title=f"Pretraining ({objective}) - {title}", xlabel="epoch", ylabel=what)
    ax.grid(alpha=0.3)
    ax.legend()
    return fig


def plot_reconstruction(model: VideoPretrainer, clips: torch.Tensor, mask: torch.Tensor, title: str):
    """Rows per clip: original, masked (hidden tokens grey), reconstructed (visible tokens + predictions); one
    column per frame. clips: normalised [K, T, C, H, W]; mask bool [K, N]."""
    from matplotlib.figure import Figure
    config = model.mae.config
    original = to_unit_range(clips, model.mean, model.std).clamp(0, 1)  # [K, T, C, H, W]
    grey = patchify(original, config.tubelet_size, config.patch_size).clone()
    grey[mask] = 0.5
    masked = unpatchify(grey, token_grid(config), config.tubelet_size, config.patch_size)
    rebuilt = model.reconstruct(clips, mask)
    shown = [("original", original), ("masked", masked), ("reconstructed", rebuilt)]
    if model.target == "frame_difference":  # differences drawn around mid-grey: 0.5 + d
        truth = (0.5 + frame_differences(original)).clamp(0, 1)
        shown[2:] = [("true difference", truth), ("reconstructed diff.", (0.5 + rebuilt).clamp(0, 1))]
    rows = [(f"clip {k + 1}: {name}", video[k]) for k in range(len(clips)) for name, video in shown]
    frames = clips.shape[1]
    fig = Figure(figsize=(1.1 * frames + 1.6, 1.15 * len(rows) + 0.6), layout="constrained")
    axes = fig.subplots(len(rows), frames, squeeze=False)
    for r, (label, video) in enumerate(rows):
        for t in range(frames):
            ax = axes[r][t]
            ax.imshow(video[t].permute(1, 2, 0).numpy(), interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            if t == 0:
                ax.set_ylabel(label, fontsize=7)
            if r == 0:
                ax.set_title(f"frame {t + 1}", fontsize=8)
    ratio = mask.float().mean().item()
    if model.target == "frame_difference":
        note = "\nframe differences (next frame minus this one) around mid-grey: visible tokens true, hidden predicted"
    elif config.norm_pix_loss:
        note = ("\nnorm_pix_loss: predictions shown with each hidden patch's TRUE mean and std (as in the MAE "
                "papers), which reveal its average colour")
    else:
        note = "\nhidden patches: the raw-pixel predictions"
    fig.suptitle(f"Masked video modelling, test clips ({100 * ratio:.0f}% of tokens hidden) - {title}{note}",
                 fontsize=9)
    return fig
