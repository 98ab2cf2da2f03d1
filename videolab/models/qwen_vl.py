"""Qwen2-VL video question answering / description: the model, its processor, the SFT collator, generation.

    frames [B, T, C, H, W] in [0, 1] + questions
      -> chat template: <|im_start|>user\\n<|vision_start|><|video_pad|><|vision_end|>{question}<|im_end|>\\n
                        <|im_start|>assistant\\n
      -> Qwen2VLProcessor: the video processor resizes (multiples of patch x merge), normalises and patchifies the
         frames, giving pixel_values_videos [sum of t*h*w patches, C * temporal_patch * patch^2] and video_grid_thw
         [B, 3]; the tokenizer then expands each <|video_pad|> into t*h*w / merge^2 copies, one per visual feature.
      -> Qwen2VLForConditionalGeneration (vision tower -> merger -> features scattered into the <|video_pad|> slots)

The placeholder count is never written by hand: it comes from the processor (``video_grid_thw`` and the merge
size), and ``check_video_tokens`` compares input_ids with what the features need before every forward, raising a
ValueError that says what was got, what was expected and how to fix it (instead of the library's "Video features
and video tokens do not match, tokens: 0, features: 256" deep inside the model).

Supervised fine-tuning (``SFTCollator``): [prompt built by the processor] + answer tokens + <|im_end|>, right-padded;
labels are -100 on the prompt (system, question, video tokens) and on padding, so the loss counts the answer and
its end token only. Generation: the prompt alone, left-padded, greedy or beam search (never sampling), with
max_new_tokens, repetition penalty and no-repeat n-grams; the new tokens are decoded with special tokens skipped.

Weights: ``--language_model qwen2-vl`` means ``Qwen/Qwen2-VL-2B-Instruct`` online; any Hub id or local folder of a
Qwen2-VL model works too. Offline, ``qwen2-vl`` becomes a TINY Qwen2-VL built from ``Qwen2VLConfig`` with random
weights (``tiny_qwen2_vl_config``) and a byte-level BPE tokenizer trained on the training captions, holding Qwen's
special tokens and its chat template (``train_qwen_tokenizer``), wrapped in the real ``Qwen2VLProcessor``. The run
says so loudly and records ``"language_model_pretrained": false``.

LoRA (``--use_lora_llm``) defaults to the usual Qwen2-VL fine-tune: ``q_proj,v_proj`` of the language model, rank
64, alpha 128, dropout 0.05 (``--lora_llm_*`` change them). The vision tower (``model.visual``, merger included)
stays frozen unless ``--train_vision_tower True``.
"""
from __future__ import annotations

import json
import os
from typing import Callable, Optional, Sequence

import torch
from torch import nn

from videolab.core.layout import TOKENIZER_DIR
from videolab.core.errors import UsageError
from videolab.core.hub import hub_offline_mode, hub_reachable
from videolab.models.adapt import apply_lora, freeze
from videolab.models.captioner import IGNORE_INDEX, CaptionerOutput
from videolab.models.registry import LANGUAGE_MODELS

QWEN_VL_NAMES = tuple(LANGUAGE_MODELS.where(role="vision_language"))  # --language_model names of this model
QWEN_VL_HUB_ID = LANGUAGE_MODELS.meta(QWEN_VL_NAMES[0])["hub_id"]
QWEN_VL_MODEL_TYPES = ("qwen2_vl",)
PAD, IM_START, IM_END = "<|endoftext|>", "<|im_start|>", "<|im_end|>"
VISION_START, VISION_END, IMAGE_PAD, VIDEO_PAD = "<|vision_start|>", "<|vision_end|>", "<|image_pad|>", "<|video_pad|>"
SPECIAL_TOKENS = (PAD, IM_START, IM_END, VISION_START, VISION_END, IMAGE_PAD, VIDEO_PAD)  # ids 0..6 offline
SYSTEM_PROMPT = "You are a helpful assistant."
DEFAULT_QUESTION = "Describe the video."
LORA_DEFAULTS = dict(r=64, alpha=128.0, dropout=0.05, targets=("q_proj", "v_proj"))
# Qwen2-VL's own chat template (as shipped with Qwen/Qwen2-VL-2B-Instruct)
CHAT_TEMPLATE = (
    "{% set image_count = namespace(value=0) %}{% set video_count = namespace(value=0) %}{% for message in messages %}"
    "{% if loop.first and message['role'] != 'system' %}<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
    "{% endif %}<|im_start|>{{ message['role'] }}\n{% if message['content'] is string %}{{ message['content'] }}"
    "<|im_end|>\n{% else %}{% for content in message['content'] %}{% if content['type'] == 'image' or 'image' in "
    "content or 'image_url' in content %}{% set image_count.value = image_count.value + 1 %}{% if add_vision_id %}"
    "Picture {{ image_count.value }}: {% endif %}<|vision_start|><|image_pad|><|vision_end|>{% elif content['type'] "
    "== 'video' or 'video' in content %}{% set video_count.value = video_count.value + 1 %}{% if add_vision_id %}"
    "Video {{ video_count.value }}: {% endif %}<|vision_start|><|video_pad|><|vision_end|>{% elif 'text' in content %}"
    "{{ content['text'] }}{% endif %}{% endfor %}<|im_end|>\n{% endif %}{% endfor %}{% if add_generation_prompt %}"
    "<|im_start|>assistant\n{% endif %}")
# the offline tiny model: patch 8 and merge 2, so a 32 px frame pair gives 2 x 2 = 4 video tokens
TINY_VISION = dict(depth=2, embed_dim=48, hidden_size=64, num_heads=2, mlp_ratio=2, patch_size=8, spatial_merge_size=2,
                   temporal_patch_size=2)
# initializer_range 0.2, not 0.02: with LoRA the random lm_head stays frozen, and at 0.02 its logits span about
# +-1.3 (rows of norm 0.16 against an RMS-normed state of norm 8), so no adapter could make a confident prediction
TINY_TEXT = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                 num_key_value_heads=2, max_position_embeddings=1024, initializer_range=0.2,
                 rope_parameters={"rope_type": "default", "rope_theta": 10000.0, "mrope_section": [2, 3, 3]})


def is_qwen_vl_name(name: Optional[str]) -> bool:
    """True for ``qwen2-vl``, a Qwen2-VL Hub id, or a folder whose config.json says model_type qwen2_vl."""
    if not name:
        return False
    if name in QWEN_VL_NAMES or "qwen2-vl" in name.lower():
        return True
    config_path = os.path.join(name, "config.json")
    if os.path.isfile(config_path):
        with open(config_path) as fh:
            return json.load(fh).get("model_type") in QWEN_VL_MODEL_TYPES
    return False


# ----------------------------------------------------------------------------------------------------------------
# offline tokenizer, config and processor
# ----------------------------------------------------------------------------------------------------------------
def train_qwen_tokenizer(texts: Sequence[str], vocab_size: int = 512):
    """Byte-level BPE trained on ``texts`` plus the chat template's words, with Qwen's special tokens (ids 0..6)
    and Qwen2-VL's chat template -> ``PreTrainedTokenizerFast`` (eos <|im_end|>, pad <|endoftext|>).

    Deterministic for the same texts. Every byte is in the alphabet, so any question or answer encodes.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    texts = [t for t in texts if isinstance(t, str) and t.strip()]
    if not texts:
        raise ValueError("train_qwen_tokenizer got no non-empty texts; expected the training captions")
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=list(SPECIAL_TOKENS), show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    template_words = ["system\n" + SYSTEM_PROMPT, "user\n", "assistant\n", DEFAULT_QUESTION]
    tok.train_from_iterator(list(texts) + template_words, trainer=trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token=IM_END, pad_token=PAD, padding_side="left",
                                   chat_template=CHAT_TEMPLATE)


def tiny_qwen2_vl_config(tokenizer, vision: Optional[dict] = None, text: Optional[dict] = None):
    """A small ``Qwen2VLConfig`` (random-init CPU model) whose special ids are the tokenizer's."""
    from transformers import Qwen2VLConfig
    ids = tokenizer.convert_tokens_to_ids
    text_config = dict(TINY_TEXT, **(text or {}), vocab_size=len(tokenizer), bos_token_id=None,
                       eos_token_id=ids(IM_END), pad_token_id=ids(PAD))
    return Qwen2VLConfig(text_config=text_config, vision_config=dict(TINY_VISION, **(vision or {})),
                         image_token_id=ids(IMAGE_PAD), video_token_id=ids(VIDEO_PAD),
                         vision_start_token_id=ids(VISION_START), vision_end_token_id=ids(VISION_END))


def make_processor(tokenizer, vision_config, image_size: int):
    """The real ``Qwen2VLProcessor`` around ``tokenizer``, with image / video processors matching the vision tower
    (patch, merge and temporal patch sizes) and frames kept at about ``image_size`` px (pixel budget from
    (patch x merge)^2 up to image_size^2)."""
    from transformers import Qwen2VLImageProcessor, Qwen2VLProcessor, Qwen2VLVideoProcessor
    patch, merge, temporal = vision_config.patch_size, vision_config.spatial_merge_size, \
        vision_config.temporal_patch_size
    factor = patch * merge
    size = {"shortest_edge": factor * factor, "longest_edge": max(image_size, factor) ** 2}
    shared = dict(patch_size=patch, merge_size=merge, temporal_patch_size=temporal, size=size)
    return Qwen2VLProcessor(image_processor=Qwen2VLImageProcessor(**shared), tokenizer=tokenizer,
                            video_processor=Qwen2VLVideoProcessor(**shared, cap_pixels_per_frame=False),
                            chat_template=CHAT_TEMPLATE)


# ----------------------------------------------------------------------------------------------------------------
# prompts and the placeholder check
# ----------------------------------------------------------------------------------------------------------------
def chat_messages(question: str) -> list[dict]:
    """One user turn: the video, then the question (the common multimodal chat format)."""
    return [{"role": "user", "content": [{"type": "video"}, {"type": "text", "text": question}]}]


def prompt_text(processor, question: Optional[str]) -> str:
    """The chat-template prompt for one video + question, ending with the assistant header."""
    return processor.apply_chat_template(chat_messages(question or DEFAULT_QUESTION), tokenize=False,
                                         add_generation_prompt=True)


def expected_video_tokens(video_grid_thw: torch.Tensor, merge_size: int) -> list[int]:
    """Placeholder tokens each video needs: t * h * w / merge^2 (video_grid_thw [B, 3] from the processor)."""
    return (video_grid_thw.prod(-1) // (merge_size ** 2)).tolist()


def check_video_tokens(input_ids: torch.Tensor, video_grid_thw: torch.Tensor, video_token_id: int,
                       merge_size: int) -> None:
    """Raise ValueError (got / expected / fix) unless row i of input_ids [B, S] holds exactly the placeholder
    tokens video i's features fill (one video per row)."""
    if video_grid_thw.shape[0] != input_ids.shape[0]:
        raise ValueError(f"got {video_grid_thw.shape[0]} videos for {input_ids.shape[0]} prompts; expected one video "
                         f"per prompt: pass one clip per question")
    got = (input_ids == video_token_id).sum(-1).tolist()
    expected = expected_video_tokens(video_grid_thw, merge_size)
    for row, (n, need) in enumerate(zip(got, expected)):
        if n != need:
            t, h, w = video_grid_thw[row].tolist()
            raise ValueError(f"prompt {row} holds {n} video placeholder tokens ({VIDEO_PAD}) but its video gives "
                             f"{need} features (grid t={t} h={h} w={w} / merge {merge_size}^2); build prompts with "
                             f"the chat template (one {{'type': 'video'}} entry) and the processor "
                             f"(processor(text=..., videos=...)), which expands the placeholder, never by hand")


# ----------------------------------------------------------------------------------------------------------------
# SFT collator
# ----------------------------------------------------------------------------------------------------------------
class SFTCollator:
    """(videos, questions[, answers]) -> the model's inputs.

    Training (answers given): input_ids [B, S] = prompt + answer + <|im_end|>, RIGHT-padded; labels [B, S] =
    -100 on the prompt and padding, the token ids on the answer and <|im_end|>; attention_mask, mm_token_type_ids
    [B, S]; pixel_values_videos [N, D]; video_grid_thw [B, 3]. Answers longer than ``max_answer_tokens`` are cut.
    Generation (no answers): the prompt alone, LEFT-padded (every row ends where generation continues).

    ``videos``: frames [B, T, C, H, W] (or a list of [T, C, H, W]) as floats in [0, 1].
    """

    def __init__(self, processor, max_answer_tokens: int = 32):
        self.processor = processor
        self.tokenizer = processor.tokenizer
        self.max_answer_tokens = max_answer_tokens
        self.end_id = self.tokenizer.convert_tokens_to_ids(IM_END)
        self.pad_id = self.tokenizer.pad_token_id

    def prompts(self, videos, questions: Optional[Sequence[str]]):
        batch = len(videos)
        questions = [None] * batch if questions is None else list(questions)
        if len(questions) != batch:
            raise ValueError(f"expected one question per video ({batch}), got {len(questions)}; use '' for the "
                             f"default question {DEFAULT_QUESTION!r}")
        texts = [prompt_text(self.processor, q) for q in questions]
        frames = [v.float().cpu() for v in videos]  # [T, C, H, W] each, in [0, 1]
        return self.processor(text=texts, videos=frames, return_tensors="pt", padding=True, padding_side="left",
                              videos_kwargs=dict(do_rescale=False))

    def __call__(self, videos, questions: Optional[Sequence[str]] = None, answers: Optional[Sequence[str]] = None):
        enc = self.prompts(videos, questions)
        if answers is None:
            return enc
        if len(answers) != len(videos):
            raise ValueError(f"expected one answer per video ({len(videos)}), got {len(answers)}")
        answer_ids = self.tokenizer([a.strip() for a in answers], add_special_tokens=False)["input_ids"]
        rows, labels, types = [], [], []
        for i, ids in enumerate(answer_ids):
            keep = enc["attention_mask"][i].bool()  # drop the left padding of the prompt
            prompt = enc["input_ids"][i][keep].tolist()
            target = ids[:self.max_answer_tokens] + [self.end_id]
            rows.append(prompt + target)
            labels.append([IGNORE_INDEX] * len(prompt) + target)
            types.append(enc["mm_token_type_ids"][i][keep].tolist() + [0] * len(target))
        width = max(len(r) for r in rows)

        def pad(values: list[list[int]], fill: int) -> torch.Tensor:
            return torch.tensor([v + [fill] * (width - len(v)) for v in values], dtype=torch.long)
        enc["input_ids"], enc["labels"] = pad(rows, self.pad_id), pad(labels, IGNORE_INDEX)
        enc["attention_mask"] = pad([[1] * len(r) for r in rows], 0)
        enc["mm_token_type_ids"] = pad(types, 0)
        return enc


# ----------------------------------------------------------------------------------------------------------------
# the model
# ----------------------------------------------------------------------------------------------------------------
class QwenVLCaptioner(nn.Module):
    """Qwen2-VL as a video describer / question answerer with the captioner interface of ``captioner.py``:
    ``forward(pixel_values, captions, prompts)`` -> loss/logits, ``generate(pixel_values, prompts, ...)`` -> texts.

    Args:
        model: ``Qwen2VLForConditionalGeneration`` (or a ``peft.PeftModel`` wrapping one).
        processor: its ``Qwen2VLProcessor``.
        max_caption_tokens: answer tokens learned per video (longer answers are cut).
    """

    def __init__(self, model: nn.Module, processor, max_caption_tokens: int = 32):
        super().__init__()
        self.language_model = model
        self.processor = processor  # not a module: saved beside the weights (tokenizer/ in a checkpoint)
        self.tokenizer = processor.tokenizer
        self.collator = SFTCollator(processor, max_caption_tokens)
        config = model.config
        self.video_token_id = config.video_token_id
        self.merge_size = processor.video_processor.merge_size
        if self.merge_size != config.vision_config.spatial_merge_size:
            raise ValueError(f"the video processor merges {self.merge_size}^2 patches per token but the vision tower "
                             f"merges {config.vision_config.spatial_merge_size}^2; load the processor that belongs "
                             f"to the model")

    @property
    def base_model(self) -> nn.Module:
        """The Qwen2VLForConditionalGeneration inside (under peft's wrapper with LoRA)."""
        lm = self.language_model
        return lm.get_base_model() if hasattr(lm, "get_base_model") else lm

    def run_model(self, **inputs):
        """The checked forward: ``check_video_tokens`` first, then the Qwen2-VL model."""
        if "pixel_values_videos" in inputs:
            check_video_tokens(inputs["input_ids"], inputs["video_grid_thw"], self.video_token_id, self.merge_size)
        return self.language_model(**inputs)

    def _inputs(self, pixel_values: torch.Tensor, prompts, captions=None) -> dict:
        if pixel_values.dim() != 5:
            raise ValueError(f"expected pixel_values [B, T, C, H, W] in [0, 1], got shape "
                             f"{tuple(pixel_values.shape)}")
        enc = self.collator(pixel_values, prompts, captions)
        device = next(self.language_model.parameters()).device
        return {k: v.to(device) for k, v in enc.items()}

    def forward(self, pixel_values: torch.Tensor, captions: list[str],
                prompts: Optional[list[str]] = None) -> CaptionerOutput:
        """Teacher forcing; loss = mean cross-entropy over answer tokens and <|im_end|> only."""
        out = self.run_model(**self._inputs(pixel_values, prompts, captions), use_cache=False)
        return CaptionerOutput(loss=out.loss, logits=out.logits)

    def generation_kwargs(self, num_beams: int = 1, max_new_tokens: int = 32, no_repeat_ngram_size: int = 0,
                          repetition_penalty: float = 1.0) -> dict:
        if num_beams < 1 or max_new_tokens < 1:
            raise ValueError(f"expected num_beams >= 1 and max_new_tokens >= 1, got {num_beams} and {max_new_tokens}")
        return dict(max_new_tokens=max_new_tokens, num_beams=num_beams, do_sample=False,
                    no_repeat_ngram_size=no_repeat_ngram_size, repetition_penalty=repetition_penalty,
                    pad_token_id=self.tokenizer.pad_token_id, eos_token_id=self.collator.end_id,
                    temperature=None, top_p=None, top_k=None)

    @torch.no_grad()
    def generate(self, pixel_values: torch.Tensor, prompts: Optional[list[str]] = None, num_beams: int = 1,
                 max_new_tokens: int = 32, no_repeat_ngram_size: int = 0, repetition_penalty: float = 1.0,
                 **_) -> list[str]:
        """One answer per video: greedy (num_beams 1) or beam search; special tokens dropped, whitespace stripped.
        Runs in eval mode and restores the previous mode."""
        kwargs = self.generation_kwargs(num_beams, max_new_tokens, no_repeat_ngram_size, repetition_penalty)
        was_training = self.training
        self.eval()
        try:
            inputs = self._inputs(pixel_values, prompts)
            check_video_tokens(inputs["input_ids"], inputs["video_grid_thw"], self.video_token_id, self.merge_size)
            tokens = self.language_model.generate(**inputs, **kwargs)  # [B, S + new]
        finally:
            self.train(was_training)
        return self.decode(tokens[:, inputs["input_ids"].shape[1]:])

    def decode(self, tokens: torch.Tensor) -> list[str]:
        """New-token ids [B, new] -> texts (special tokens dropped, whitespace stripped)."""
        return [t.strip() for t in self.tokenizer.batch_decode(tokens, skip_special_tokens=True)]


# ----------------------------------------------------------------------------------------------------------------
# loading, rebuilding, LoRA / freezing
# ----------------------------------------------------------------------------------------------------------------
def load_qwen_vl(name: str, caption_texts: Sequence[str], image_size: int, announce: Callable[[str], None]):
    """(model, processor, pretrained, source): a Hub id / folder via from_pretrained, or offline ``qwen2-vl`` ->
    the tiny random-init model with a tokenizer trained on ``caption_texts``."""
    from transformers import AutoProcessor, Qwen2VLForConditionalGeneration

    source = QWEN_VL_HUB_ID if name in QWEN_VL_NAMES else name
    local_only = not os.path.isdir(source) and not hub_reachable()
    if os.path.isdir(source) or not local_only or hub_offline_mode():
        try:
            model = Qwen2VLForConditionalGeneration.from_pretrained(source, local_files_only=local_only)
            processor = AutoProcessor.from_pretrained(source, local_files_only=local_only)
            return model, processor, True, source
        except (OSError, ValueError):
            pass
    if name not in QWEN_VL_NAMES:
        raise UsageError(f"--language_model {name!r}: no Qwen2-VL model could be loaded from it (offline: pass a "
                         f"folder with config.json, weights, tokenizer and preprocessor files, or use qwen2-vl for "
                         f"the tiny random-init model)")
    if not caption_texts:
        raise UsageError("the offline qwen2-vl needs training captions to train its tokenizer on, and the dataset "
                         "has none")
    tokenizer = train_qwen_tokenizer(list(caption_texts))
    config = tiny_qwen2_vl_config(tokenizer)
    model = Qwen2VLForConditionalGeneration(config)
    announce(f"language model: {QWEN_VL_HUB_ID} cannot be downloaded here, so the describer is a TINY Qwen2-VL "
             f"({config.text_config.num_hidden_layers} text layers of width {config.text_config.hidden_size}, vision "
             f"depth {config.vision_config.depth}) with RANDOM weights and a byte-level BPE tokenizer "
             f"({len(tokenizer)} tokens, Qwen's special tokens and chat template) trained on this dataset's training "
             f"captions. Recorded as \"language_model_pretrained\": false in this run's outputs.")
    return model, make_processor(tokenizer, config.vision_config, image_size), False, \
        "random init, tiny Qwen2-VL preset; tokenizer trained on the training captions"


def rebuild_qwen_vl(arch: dict, checkpoint_folder: str):
    """(model, processor) with a checkpoint's architecture (weights come from its model.safetensors)."""
    from transformers import AutoProcessor, Qwen2VLConfig, Qwen2VLForConditionalGeneration

    folder = os.path.join(checkpoint_folder, TOKENIZER_DIR)
    if not os.path.isdir(folder):
        raise UsageError(f"{checkpoint_folder} has no {TOKENIZER_DIR}/ folder (the Qwen2-VL processor); pass a run's "
                         f"best/ or last/ folder")
    model = Qwen2VLForConditionalGeneration(Qwen2VLConfig.from_dict(arch))
    return model, AutoProcessor.from_pretrained(folder, local_files_only=True)


def lora_settings(cfg) -> dict:
    """LoRA of the language model: --lora_llm_* where given, else Qwen2-VL's usual fine-tune (LORA_DEFAULTS)."""
    targets = cfg.lora_llm_target_modules
    return dict(r=cfg.lora_llm_r or LORA_DEFAULTS["r"],
                alpha=cfg.lora_llm_alpha if cfg.lora_llm_alpha is not None else LORA_DEFAULTS["alpha"],
                dropout=cfg.lora_llm_dropout if cfg.lora_llm_dropout is not None else LORA_DEFAULTS["dropout"],
                targets=[t.strip() for t in targets.split(",") if t.strip()] if targets else
                list(LORA_DEFAULTS["targets"]))


def prepare_for_training(model: nn.Module, cfg) -> nn.Module:
    """Freeze the vision tower (unless --train_vision_tower), LoRA or freezing on the language model, gradient
    checkpointing. Returns the model to train (a PeftModel with LoRA)."""
    if cfg.freeze_language_model and not cfg.train_vision_tower:
        raise UsageError("--freeze_language_model True with the vision tower frozen (the default) leaves nothing to "
                         "train in Qwen2-VL; use --use_lora_llm True, or add --train_vision_tower True")
    if not cfg.train_vision_tower:
        freeze(model.model.visual)
    if cfg.gradient_checkpointing:
        # non-reentrant: works with frozen embeddings (LoRA), no enable_input_require_grads needed
        model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
        model.config.use_cache = False
    if cfg.use_lora_llm:
        lora = lora_settings(cfg)
        # target only the language model's layers: the vision tower's attention is named qkv/proj anyway, but a
        # user's --lora_llm_target_modules must not reach into it unless --train_vision_tower says so
        pattern = rf"^(?!.*visual).*\.({'|'.join(lora['targets'])})$" if not cfg.train_vision_tower else \
            lora["targets"]
        model = apply_lora(model, pattern, lora["r"], lora["alpha"], lora["dropout"])
        if cfg.train_vision_tower:
            for p in model.base_model.model.model.visual.parameters():
                p.requires_grad_(True)
    elif cfg.freeze_language_model:
        freeze(model.model.language_model)
        freeze(model.lm_head)
    return model
