"""Video captioning with a GPT-2-style causal LM: visual tokens become a prefix the LM continues with a caption.

    visual = video_encoder(pixel_values)              # [B, L, video_dim]
    prefix = projector(visual)                        # [B, L, n_embd]   (Linear -> GELU -> Linear)
    LM input, training:   [prefix, prompt, <bos>, caption, <eos>, pad...]   right-padded, loss on caption + <eos>
    LM input, generation: [pad..., prefix, prompt, <bos>]                   left-padded, the LM writes the caption

The prompt is optional text per video (e.g. a question or a hint); it conditions the caption but is never a
target. Padding never changes a result: padded positions are masked out of attention, and position ids count real
tokens only, so a video gets the same loss terms and the same caption alone or in any batch.

Pieces:
* ``train_caption_tokenizer``: a byte-level BPE trained on the captions (``tokenizers``), wrapped as a
  ``transformers`` fast tokenizer that saves/loads offline. Specials ``<|pad|> <|bos|> <|eos|> <|unk|>`` are ids
  0..3 and are never added automatically: ``VideoCaptioner`` places <bos>/<eos> itself.
* ``tiny_gpt2_config``: GPT2Config presets small enough for CPU runs.
* ``VideoCaptioner``: the model; ``forward`` (teacher forcing, returns ``.loss``/``.logits``) and ``generate``
  (greedy or beam search through the LM's Hugging Face ``generate``).

Checkpoints: GPT-2 ties ``lm_head.weight`` to ``transformer.wte.weight``, so a captioner's ``state_dict()`` holds
one tensor under two names and ``safetensors.torch.save_file(model.state_dict(), path)`` raises ("Some tensors
share memory"). Use ``safetensors.torch.save_model(model, path)`` and ``safetensors.torch.load_model(model, path)``
(they drop and restore the duplicate name), or clone every tensor before ``save_file``. The tokenizer goes beside
the weights with ``save_tokenizer`` / ``load_tokenizer``.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Optional

import torch
from torch import nn
from transformers.utils import ModelOutput

from videolab.core.files import atomic_folder

PAD, BOS, EOS, UNK = "<|pad|>", "<|bos|>", "<|eos|>", "<|unk|>"
SPECIAL_TOKENS = (PAD, BOS, EOS, UNK)  # ids 0..3, in this order
IGNORE_INDEX = -100  # label value the cross-entropy skips


# ----------------------------------------------------------------------------------------------------------------
# Tokenizer
# ----------------------------------------------------------------------------------------------------------------
def train_caption_tokenizer(texts: list[str], vocab_size: int = 512):
    """Byte-level BPE trained on ``texts`` -> ``transformers.PreTrainedTokenizerFast``.

    Deterministic: the same texts and vocab_size give the same vocabulary and merges. Every byte is in the initial
    alphabet, so any text encodes (``<|unk|>`` is never produced). No post-processor: <bos>/<eos> are not added by
    ``tokenizer(text)``; callers add them by hand. ``len(tokenizer)`` <= vocab_size (fewer when the texts run out
    of merges).
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    texts = [t for t in texts if isinstance(t, str) and t.strip()] if isinstance(texts, (list, tuple)) else []
    if not texts:
        raise ValueError("train_caption_tokenizer got no non-empty texts; expected a list of caption strings")
    minimum = len(SPECIAL_TOKENS) + 256
    if vocab_size < minimum:
        raise ValueError(f"vocab_size {vocab_size} is below the byte alphabet plus specials; expected >= {minimum}")
    tok = Tokenizer(models.BPE(unk_token=UNK))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=list(SPECIAL_TOKENS),
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(texts, trainer=trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token=BOS, eos_token=EOS, pad_token=PAD,
                                   unk_token=UNK, padding_side="right")


def save_tokenizer(tokenizer, folder: str) -> str:
    """``tokenizer.save_pretrained(folder)``, written atomically; reload with ``load_tokenizer(folder)`` (no
    network)."""
    with atomic_folder(folder) as tmp:
        tokenizer.save_pretrained(tmp)
    return folder


def load_tokenizer(folder: str):
    """AutoTokenizer from a folder written by ``save_tokenizer``; never touches the Hub."""
    from transformers import AutoTokenizer
    if not os.path.isfile(os.path.join(folder, "tokenizer.json")):
        raise ValueError(f"{folder!r} holds no tokenizer.json; expected a folder written by save_tokenizer")
    return AutoTokenizer.from_pretrained(folder, local_files_only=True)


# ----------------------------------------------------------------------------------------------------------------
# Language model
# ----------------------------------------------------------------------------------------------------------------
GPT2_PRESETS = {
    "tiny": dict(n_layer=4, n_embd=256, n_head=4, n_positions=256),
    "small": dict(n_layer=6, n_embd=384, n_head=6, n_positions=512),
}


def tiny_gpt2_config(vocab_size: int, bos_id: int, eos_id: int, pad_id: int, size: str = "tiny", **overrides):
    """GPT2Config from a preset (``GPT2_PRESETS``), with the tokenizer's special ids; ``overrides`` win.

    Build the LM with ``transformers.GPT2LMHeadModel(config)`` (random weights).
    """
    from transformers import GPT2Config
    if size not in GPT2_PRESETS:
        raise ValueError(f"unknown GPT-2 size {size!r}; choose one of {', '.join(GPT2_PRESETS)}")
    kwargs = dict(GPT2_PRESETS[size], vocab_size=vocab_size, bos_token_id=bos_id, eos_token_id=eos_id,
                  pad_token_id=pad_id)
    kwargs.update(overrides)
    return GPT2Config(**kwargs)


def _max_positions(lm) -> Optional[int]:
    config = getattr(lm, "config", None)
    return getattr(config, "n_positions", None) or getattr(config, "max_position_embeddings", None)


# ----------------------------------------------------------------------------------------------------------------
# The captioner
# ----------------------------------------------------------------------------------------------------------------
@dataclass
class CaptionerOutput(ModelOutput):
    loss: Optional[torch.Tensor] = None  # mean cross-entropy over caption tokens and <eos>
    logits: Optional[torch.Tensor] = None  # [B, S, vocab] over the right-padded sequence (prefix included)


def generation_settings(cfg) -> dict:
    """The run's decoding settings (``cfg``: Settings), as :meth:`VideoCaptioner.generation_kwargs` takes them; the
    captioning task and the export both read them here."""
    return dict(num_beams=cfg.num_beams, max_new_tokens=cfg.max_new_tokens,
                no_repeat_ngram_size=cfg.no_repeat_ngram_size, repetition_penalty=cfg.repetition_penalty)


class VideoCaptioner(nn.Module):
    """pixel_values [B, T, C, H, W] (+ optional prompts) -> captions, with a causal LM fed a visual prefix.

    Args:
        video_encoder: any module, pixel_values [B, T, C, H, W] -> visual tokens [B, L, video_dim].
        video_dim: width of the visual tokens.
        language_model: a GPT-2-family causal LM (``GPT2LMHeadModel``) or a ``peft.PeftModel`` wrapping one.
        tokenizer: its tokenizer (``train_caption_tokenizer``) with bos/eos/pad tokens.
        max_caption_tokens: training captions longer than this many tokens are cut to it (before <eos> is added),
            so the LM learns to end them there.
    """

    def __init__(self, video_encoder: nn.Module, video_dim: int, language_model, tokenizer,
                 max_caption_tokens: int = 32):
        super().__init__()
        missing = [name for name in ("bos_token_id", "eos_token_id", "pad_token_id")
                   if getattr(tokenizer, name, None) is None]
        if missing:
            raise ValueError(f"the tokenizer has no {', '.join(missing)}; expected bos/eos/pad tokens "
                             f"(use train_caption_tokenizer)")
        if max_caption_tokens < 1:
            raise ValueError(f"max_caption_tokens must be >= 1, got {max_caption_tokens}")
        embed = language_model.get_input_embeddings()
        if len(tokenizer) > embed.num_embeddings:
            raise ValueError(f"the tokenizer has {len(tokenizer)} tokens but the LM embeds {embed.num_embeddings}; "
                             f"build the LM with vocab_size=len(tokenizer)")
        self.video_encoder = video_encoder
        self.video_dim = video_dim
        self.language_model = language_model
        self.tokenizer = tokenizer  # not a module: saved separately (save_tokenizer)
        self.max_caption_tokens = max_caption_tokens
        self.lm_dim = embed.embedding_dim
        self.max_positions = _max_positions(language_model)
        self.projector = nn.Sequential(nn.Linear(video_dim, self.lm_dim), nn.GELU(),
                                       nn.Linear(self.lm_dim, self.lm_dim))  # [B, L, video_dim] -> [B, L, n_embd]

    # -- pieces ---------------------------------------------------------------------------------------------------
    def visual_prefix(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """pixel_values [B, T, C, H, W] -> prefix embeddings [B, L, n_embd] in the LM's dtype."""
        if pixel_values.dim() != 5:
            raise ValueError(f"expected pixel_values [B, T, C, H, W], got shape {tuple(pixel_values.shape)}; "
                             f"add the batch dimension with pixel_values[None] for one video")
        visual = self.video_encoder(pixel_values)  # [B, L, video_dim]
        if visual.dim() != 3 or visual.shape[0] != pixel_values.shape[0] or visual.shape[-1] != self.video_dim:
            raise ValueError(f"the video encoder returned shape {tuple(visual.shape)}, expected "
                             f"[{pixel_values.shape[0]}, L, {self.video_dim}]; set video_dim to the encoder's width "
                             f"and return tokens, not a pooled vector (use x[:, None] for one token)")
        embed = self.language_model.get_input_embeddings()
        return self.projector(visual).to(embed.weight.dtype)  # [B, L, n_embd]

    def _prompt_ids(self, prompts: Optional[list[str]], batch: int) -> list[list[int]]:
        if prompts is None:
            return [[] for _ in range(batch)]
        if isinstance(prompts, str) or len(prompts) != batch:
            raise ValueError(f"expected one prompt per video ({batch}), got "
                             f"{'a single string' if isinstance(prompts, str) else len(prompts)}; pass a list "
                             f"(use '' for no prompt) or prompts=None")
        return [self.tokenizer(p, add_special_tokens=False)["input_ids"] if p else [] for p in prompts]

    def _caption_ids(self, captions: list[str], batch: int) -> list[list[int]]:
        if isinstance(captions, str) or len(captions) != batch:
            raise ValueError(f"expected one caption per video ({batch}), got "
                             f"{'a single string' if isinstance(captions, str) else len(captions)}")
        ids = self.tokenizer([c.strip() for c in captions], add_special_tokens=False)["input_ids"]
        return [x[:self.max_caption_tokens] for x in ids]

    def _check_length(self, length: int, what: str) -> None:
        if self.max_positions is not None and length > self.max_positions:
            raise ValueError(f"{what} needs {length} positions but the LM has {self.max_positions} "
                             f"(n_positions); use fewer visual tokens, shorter prompts/captions, or a bigger "
                             f"n_positions")

    def _embed(self, ids: list[list[int]], device) -> torch.Tensor:
        """Ragged token ids -> embeddings [B, max_len, n_embd] (rows padded with <pad>, masked later)."""
        width = max(len(x) for x in ids)
        table = torch.full((len(ids), width), self.tokenizer.pad_token_id, dtype=torch.long, device=device)
        for i, x in enumerate(ids):
            table[i, :len(x)] = torch.tensor(x, dtype=torch.long, device=device)
        return self.language_model.get_input_embeddings()(table)

    # -- training -------------------------------------------------------------------------------------------------
    def forward(self, pixel_values: torch.Tensor, captions: list[str],
                prompts: Optional[list[str]] = None) -> CaptionerOutput:
        """Teacher forcing on [prefix, prompt, <bos>, caption, <eos>], right-padded.

        Labels are IGNORE_INDEX on the prefix, the prompt, <bos> and padding; the loss is the mean cross-entropy
        of predicting each caption token and <eos> (over all of them in the batch). Captions are stripped and cut
        to ``max_caption_tokens`` tokens.
        """
        prefix = self.visual_prefix(pixel_values)  # [B, L, D]
        batch, n_visual, device = prefix.shape[0], prefix.shape[1], prefix.device
        prompt_ids, caption_ids = self._prompt_ids(prompts, batch), self._caption_ids(captions, batch)
        bos, eos = self.tokenizer.bos_token_id, self.tokenizer.eos_token_id
        text_ids = [p + [bos] + c + [eos] for p, c in zip(prompt_ids, caption_ids)]
        text_labels = [[IGNORE_INDEX] * (len(p) + 1) + c + [eos] for p, c in zip(prompt_ids, caption_ids)]
        width = max(len(x) for x in text_ids)
        self._check_length(n_visual + width, "the longest [prefix, prompt, <bos>, caption, <eos>]")

        text = self._embed(text_ids, device)  # [B, W, D]
        lengths = torch.tensor([len(x) for x in text_ids], device=device)
        text_mask = torch.arange(width, device=device)[None] < lengths[:, None]  # [B, W]
        labels = torch.full((batch, n_visual + width), IGNORE_INDEX, dtype=torch.long, device=device)
        for i, lab in enumerate(text_labels):
            labels[i, n_visual:n_visual + len(lab)] = torch.tensor(lab, dtype=torch.long, device=device)

        inputs_embeds = torch.cat([prefix, text * text_mask[..., None].to(text.dtype)], dim=1)  # [B, L+W, D]
        attention_mask = torch.cat([torch.ones(batch, n_visual, dtype=torch.long, device=device),
                                    text_mask.long()], dim=1)  # [B, L+W]
        position_ids = torch.arange(n_visual + width, device=device)[None].expand(batch, -1)  # right padding
        out = self.language_model(inputs_embeds=inputs_embeds, attention_mask=attention_mask,
                                  position_ids=position_ids, labels=labels, use_cache=False)
        return CaptionerOutput(loss=out.loss, logits=out.logits)

    # -- generation -----------------------------------------------------------------------------------------------
    def prepare_generation_inputs(self, pixel_values: torch.Tensor,
                                  prompts: Optional[list[str]] = None) -> tuple[torch.Tensor, torch.Tensor]:
        """-> (inputs_embeds [B, S, D], attention_mask [B, S]) for [pad..., prefix, prompt, <bos>], LEFT-padded.

        Left padding puts every video's last real token in the last column, where generation continues; padded
        slots are zero vectors with mask 0 (Hugging Face derives position ids from the mask).
        """
        prefix = self.visual_prefix(pixel_values)  # [B, L, D]
        batch, n_visual, device = prefix.shape[0], prefix.shape[1], prefix.device
        text_ids = [p + [self.tokenizer.bos_token_id] for p in self._prompt_ids(prompts, batch)]
        text = self._embed(text_ids, device)  # [B, W, D], right-padded
        width = text.shape[1]
        inputs_embeds = prefix.new_zeros(batch, n_visual + width, prefix.shape[2])  # [B, S, D]
        attention_mask = torch.zeros(batch, n_visual + width, dtype=torch.long, device=device)
        for i, ids in enumerate(text_ids):
            start = width - len(ids)  # left padding
            inputs_embeds[i, start:start + n_visual] = prefix[i]
            inputs_embeds[i, start + n_visual:] = text[i, :len(ids)]
            attention_mask[i, start:] = 1
        return inputs_embeds, attention_mask

    def generation_kwargs(self, num_beams: int = 1, max_new_tokens: int = 20, no_repeat_ngram_size: int = 0,
                          repetition_penalty: float = 1.0, use_cache: bool = True) -> dict:
        """The keyword arguments ``generate`` passes to the LM's Hugging Face ``generate`` (besides the inputs)."""
        if num_beams < 1 or max_new_tokens < 1:
            raise ValueError(f"expected num_beams >= 1 and max_new_tokens >= 1, got {num_beams} and {max_new_tokens}")
        return dict(max_new_tokens=max_new_tokens, num_beams=num_beams, do_sample=False,
                    no_repeat_ngram_size=no_repeat_ngram_size, repetition_penalty=repetition_penalty,
                    use_cache=use_cache, pad_token_id=self.tokenizer.pad_token_id,
                    eos_token_id=self.tokenizer.eos_token_id, bos_token_id=self.tokenizer.bos_token_id)

    @torch.no_grad()
    def generate(self, pixel_values: torch.Tensor, prompts: Optional[list[str]] = None, num_beams: int = 1,
                 max_new_tokens: int = 20, no_repeat_ngram_size: int = 0, repetition_penalty: float = 1.0,
                 use_cache: bool = True) -> list[str]:
        """One caption per video: greedy (num_beams == 1) or beam search, never sampling.

        Runs in eval mode (dropout off) and restores the previous mode afterwards. Returns the decoded new
        tokens with special tokens removed, stripped.
        """
        kwargs = self.generation_kwargs(num_beams, max_new_tokens, no_repeat_ngram_size, repetition_penalty,
                                        use_cache)
        was_training = self.training
        self.eval()
        try:
            inputs_embeds, attention_mask = self.prepare_generation_inputs(pixel_values, prompts)
            self._check_length(inputs_embeds.shape[1] + max_new_tokens, "[prefix, prompt, <bos>] + max_new_tokens")
            # with inputs_embeds only, HF returns just the new tokens: [B, new_len]
            tokens = self.language_model.generate(inputs_embeds=inputs_embeds, attention_mask=attention_mask,
                                                  **kwargs)
        finally:
            self.train(was_training)
        return self.decode(tokens)

    def decode(self, tokens: torch.Tensor) -> list[str]:
        """New-token ids [B, new_len] -> captions (special tokens dropped, whitespace stripped)."""
        return [text.strip() for text in self.tokenizer.batch_decode(tokens, skip_special_tokens=True)]
