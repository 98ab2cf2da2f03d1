"""Vision + language classification: video tokens projected into a BERT-family (or Qwen2) encoder.

``VideoTokenEncoder`` also feeds the GPT-2 captioner (``captioner.py``).
"""
from __future__ import annotations

import warnings
from typing import Optional

import torch
from torch import nn

from videolab.core.errors import UsageError
from videolab.models.backbones import Backbone
from videolab.models.classifier import ClassifierOutput, VideoClassifier, classification_loss, fp32_head
from videolab.models.language import LAST_TOKEN_POOLING, last_token_pool, real_token_positions


class VideoTokenEncoder(nn.Module):
    """The backbone as a token source for a language model: [B, T, C, H, W] -> [B, L, D_vision], L <= max_tokens.

    A video backbone gives all its tokens, a per-frame backbone one token per frame; longer sequences are
    average-pooled (in order) down to ``max_tokens``.
    """

    def __init__(self, backbone: nn.Module, max_tokens: int):
        super().__init__()
        self.backbone, self.max_tokens = backbone, max_tokens

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        if pixel_values.dim() != 5:
            raise ValueError(f"expected pixel_values [B, T, C, H, W], got shape {tuple(pixel_values.shape)}")
        tokens = self.backbone(pixel_values)  # [B, L, D]
        if tokens.shape[1] > self.max_tokens:
            tokens = nn.functional.adaptive_avg_pool1d(tokens.transpose(1, 2), self.max_tokens).transpose(1, 2)
        return tokens


class VisionLanguageClassifier(nn.Module):
    """Video tokens projected into a BERT-family encoder's embedding space, joined with text tokens.

        [CLS] video_1 .. video_L [SEP] (text_1 .. text_n [SEP] pad ..)  -> encoder -> masked mean --+-> MLP head
        video_1 .. video_L (projected, before the encoder)                     -> mean -------------+

    Video tokens come from ``VideoTokenEncoder``. Token type 0 marks the video segment, 1 the text. Text is
    right-padded and masked, so padding never changes the result. Without ``use_text`` the video alone goes through
    the encoder. The joint summary is the masked mean of the encoder's output (the pooling sentence encoders such
    as MiniLM are trained with; reading [CLS] alone left training at chance for 4 epochs). The head also gets the
    mean projected video token directly: with text, the pretrained encoder's attention at first goes to the real
    words, and without this path training stayed at chance for 8 epochs on the playback task (BENCHMARKS.md). The
    head is an MLP so it can combine what the video shows with what the text says.
    """

    def __init__(self, backbone: Backbone, language, cfg, num_classes: int):
        super().__init__()
        self.video = VideoTokenEncoder(backbone.module, cfg.max_video_tokens)
        self.lm = language.module
        self.tokenizer = language.tokenizer
        config = self.lm.config
        width = config.hidden_size
        self.project = nn.Sequential(nn.Linear(backbone.feature_dim, width), nn.GELU(), nn.Linear(width, width))
        # the head reads [video summary; joint summary]: an MLP, so it can combine what the video shows with what the
        # text says (e.g. "played backwards" flips the direction seen), which one linear layer cannot
        self.head = nn.Sequential(nn.LayerNorm(2 * width), nn.Dropout(cfg.head_dropout), nn.Linear(2 * width, width),
                                  nn.GELU(), nn.Linear(width, num_classes))
        self.use_text, self.max_text_tokens = cfg.use_text, cfg.max_text_tokens
        self.max_video_tokens = cfg.max_video_tokens
        self.use_token_types = getattr(config, "type_vocab_size", 0) >= 2
        self.cls_id = self.tokenizer.cls_token_id if self.tokenizer.cls_token_id is not None else \
            self.tokenizer.bos_token_id
        self.sep_id = self.tokenizer.sep_token_id if self.tokenizer.sep_token_id is not None else \
            self.tokenizer.eos_token_id
        if self.cls_id is None:  # Qwen2 has no [CLS]/<bos>: its end-of-text marks the start
            self.cls_id = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else self.sep_id
        self.last_token_pooling = config.model_type in LAST_TOKEN_POOLING  # decoders: the last real token's state
        self.pad_id = self.tokenizer.pad_token_id or 0
        longest = 2 + self.max_video_tokens + (self.max_text_tokens + 1 if self.use_text else 0)
        if longest > config.max_position_embeddings:
            raise UsageError(f"{longest} tokens (video + text) exceed the language model's "
                             f"{config.max_position_embeddings} positions; lower --max_video_tokens or "
                             f"--max_text_tokens")
        self.label_smoothing = cfg.label_smoothing
        self.num_classes = num_classes
        self.batch_keys = dict(VideoClassifier.batch_keys, **({"text": "hint"} if self.use_text else {}))
        self._warned_truncation = False

    def text_ids(self, texts: list[str], device) -> tuple[torch.Tensor, torch.Tensor]:
        """Texts -> (ids [B, n], mask [B, n]): each text's tokens then [SEP], right-padded; long texts truncated."""
        pieces = self.tokenizer(list(texts), add_special_tokens=False)["input_ids"]
        if any(len(p) > self.max_text_tokens for p in pieces) and not self._warned_truncation:
            longest = max(len(p) for p in pieces)
            warnings.warn(f"text of {longest} tokens truncated to --max_text_tokens {self.max_text_tokens}",
                          stacklevel=2)
            self._warned_truncation = True
        pieces = [p[: self.max_text_tokens] + [self.sep_id] for p in pieces]
        width = max(len(p) for p in pieces)
        ids = torch.full((len(pieces), width), self.pad_id, dtype=torch.long)
        mask = torch.zeros(len(pieces), width, dtype=torch.long)
        for row, p in enumerate(pieces):
            ids[row, : len(p)] = torch.tensor(p)
            mask[row, : len(p)] = 1
        return ids.to(device), mask.to(device)

    def forward(self, pixel_values: torch.Tensor, labels: Optional[torch.Tensor] = None,
                text: Optional[list[str]] = None) -> ClassifierOutput:
        video = self.project(self.video(pixel_values))  # [B, L, D_lm]
        batch, device = video.shape[0], video.device
        embed = self.lm.get_input_embeddings()
        marker = lambda token_id: embed(torch.full((batch, 1), token_id, device=device))  # noqa: E731  [B, 1, D]
        parts = [marker(self.cls_id), video.to(embed.weight.dtype), marker(self.sep_id)]
        mask = [torch.ones(batch, video.shape[1] + 2, dtype=torch.long, device=device)]
        if self.use_text:
            if text is None or len(text) != batch:
                raise ValueError(f"this model reads text (--use_text True): pass one text per video, got "
                                 f"{None if text is None else len(text)} for {batch} videos")
            ids, text_mask = self.text_ids(text, device)
            parts.append(embed(ids))
            mask.append(text_mask)
        inputs = torch.cat(parts, dim=1)  # [B, 2 + L (+ n), D]
        attention_mask = torch.cat(mask, dim=1)
        kwargs = {}
        if self.use_token_types:
            kwargs["token_type_ids"] = torch.cat([torch.zeros_like(mask[0])] + mask[1:], dim=1)  # 0 video, 1 text
        if self.last_token_pooling:
            hidden = self.lm(inputs_embeds=inputs, attention_mask=attention_mask,
                             position_ids=real_token_positions(attention_mask)).last_hidden_state
            pooled = last_token_pool(hidden, attention_mask)  # [B, D]
        else:
            hidden = self.lm(inputs_embeds=inputs, attention_mask=attention_mask, **kwargs).last_hidden_state
            keep = attention_mask.unsqueeze(-1).to(hidden.dtype)  # [B, S, 1]
            pooled = (hidden * keep).sum(1) / keep.sum(1)  # masked mean of the joint sequence: [B, D]
        # the projected video tokens also reach the head directly, so the video encoder learns even while the
        # language model's attention still favours the (real-word) text tokens over the new video tokens
        logits = fp32_head(self.head, torch.cat([video.mean(1).float(), pooled.float()], dim=-1))  # [B, classes]
        loss = None
        if labels is not None:
            loss = classification_loss(logits, labels, self.label_smoothing)
        return ClassifierOutput(loss=loss, logits=logits)
