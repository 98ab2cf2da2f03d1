"""The vision + language models as ``transformers`` models (export folders carry this module as their code):

* :class:`VisionLanguageForVideoClassification`: video tokens projected into a BERT-family (or Qwen2) encoder,
  with optional text, and an MLP head (``vlm.VisionLanguageClassifier``);
* :class:`VideoCaptionerForConditionalGeneration`: video tokens as a prefix a GPT-2-family LM continues with a
  caption (``captioner.VideoCaptioner``); ``generate`` returns the new token ids, ``caption`` the texts, with the
  folder's ``generation_config.json`` as the defaults.

Each config carries what rebuilds the model without the Hub: the model/data settings, the vision backbone's
architecture (``arch``) and the language model's config (``language_arch``); the tokenizer is saved beside the
weights and read by ``from_pretrained`` (``hf.LoadsFolderTokenizer``). LoRA is never inside: an export holds the
base weights (adapters unloaded or merged) and, apart, a PEFT adapter folder.
"""
from __future__ import annotations

import copy
from typing import Optional

import torch
from transformers import GenerationConfig, PretrainedConfig, PreTrainedModel

from videolab.core.settings import settings_from_dict
from videolab.models.backbones import IMAGENET_MEAN, IMAGENET_STD
from videolab.models.captioner import CaptionerOutput, VideoCaptioner
from videolab.models.hf import HUB_ARGUMENTS, KeepsUnsavedBuffers, LoadsFolderTokenizer, TiesNestedWeights
from videolab.models.language import rebuild_language_model
from videolab.models.registry import build_backbone
from videolab.models.vlm import VideoTokenEncoder, VisionLanguageClassifier

VISION_LANGUAGE_TYPE = "video-understanding-vision-language"
CAPTIONER_TYPE = "video-understanding-captioner"


class VisionLanguageConfigBase(PretrainedConfig):
    """Model/data ``settings`` (``settings.Settings`` fields), the backbone ``arch``, the language model's config
    ``language_arch``, the input normalisation."""

    def __init__(self, settings: Optional[dict] = None, arch: Optional[dict] = None,
                 language_arch: Optional[dict] = None, image_mean: Optional[list] = None,
                 image_std: Optional[list] = None, **kwargs):
        self.settings = dict(settings or {})
        self.arch = copy.deepcopy(arch)
        self.language_arch = copy.deepcopy(language_arch)
        self.num_frames = self.settings.get("num_frames")
        self.image_size = self.settings.get("image_size")
        self.image_mean = list(image_mean or IMAGENET_MEAN)
        self.image_std = list(image_std or IMAGENET_STD)
        super().__init__(**kwargs)


def _rebuilt_parts(config: VisionLanguageConfigBase, tokenizer, causal: bool):
    """(settings, vision Backbone, LanguageModel) of a saved architecture, random weights (from_pretrained loads)."""
    if tokenizer is None:
        raise ValueError(f"{type(config).__name__}: the model needs its tokenizer; from_pretrained(folder) reads the "
                         f"one saved beside the weights, or pass tokenizer=")
    cfg = settings_from_dict(config.settings)
    return cfg, build_backbone(cfg, config.arch), rebuild_language_model(config.language_arch, None, causal,
                                                                         tokenizer=tokenizer)


class VisionLanguageConfig(VisionLanguageConfigBase):
    model_type = VISION_LANGUAGE_TYPE


class VisionLanguageForVideoClassification(LoadsFolderTokenizer, TiesNestedWeights, KeepsUnsavedBuffers,
                                           PreTrainedModel):
    """pixel_values [B, T, C, H, W] (+ ``text``: one string per video, for a model trained with text) ->
    ``logits`` [B, num_labels] (+ ``loss`` with ``labels`` [B])."""

    config_class = VisionLanguageConfig
    base_model_prefix = "classifier"
    main_input_name = "pixel_values"

    def __init__(self, config: VisionLanguageConfig, tokenizer=None,
                 classifier: Optional[VisionLanguageClassifier] = None):
        super().__init__(config)
        if classifier is None:
            cfg, backbone, language = _rebuilt_parts(config, tokenizer, causal=False)
            classifier = VisionLanguageClassifier(backbone, language, cfg, config.num_labels)
        self.classifier = classifier
        self.remember_unsaved_buffers()
        self.post_init()

    def forward(self, pixel_values: torch.Tensor, labels: Optional[torch.Tensor] = None,
                text: Optional[list] = None, **kwargs):
        return self.classifier(pixel_values=pixel_values, labels=labels, text=text)


class VideoCaptionerConfig(VisionLanguageConfigBase):
    model_type = CAPTIONER_TYPE


class VideoCaptionerForConditionalGeneration(LoadsFolderTokenizer, TiesNestedWeights, KeepsUnsavedBuffers,
                                              PreTrainedModel):
    """pixel_values [B, T, C, H, W] (+ ``prompts``: optional text per video) -> a caption per video.

    ``forward(pixel_values, captions, prompts)``: teacher forcing, ``loss`` / ``logits`` (``CaptionerOutput``);
    ``generate(pixel_values, prompts, **generation settings)``: the new token ids [B, new] (greedy or beam search,
    ``generation_config`` = the folder's ``generation_config.json`` unless given); ``caption(...)``: the texts.
    """

    config_class = VideoCaptionerConfig
    base_model_prefix = "captioner"
    main_input_name = "pixel_values"

    def __init__(self, config: VideoCaptionerConfig, tokenizer=None, captioner: Optional[VideoCaptioner] = None,
                 generation_config: Optional[GenerationConfig] = None):
        super().__init__(config)
        if captioner is None:
            cfg, backbone, language = _rebuilt_parts(config, tokenizer, causal=True)
            captioner = VideoCaptioner(VideoTokenEncoder(backbone.module, cfg.max_video_tokens),
                                       backbone.feature_dim, language.module, tokenizer,
                                       max_caption_tokens=cfg.max_caption_tokens)
        self.captioner = captioner
        self.tokenizer = captioner.tokenizer
        self.remember_unsaved_buffers()
        self.post_init()
        self.generation_config = generation_config or GenerationConfig(
            **captioner.generation_kwargs(max_new_tokens=config.settings.get("max_new_tokens", 32)))

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, *args, **kwargs):
        """Also reads ``generation_config.json`` (when the folder has one) as the generation defaults."""
        if kwargs.get("generation_config") is None:
            hub = {k: kwargs[k] for k in HUB_ARGUMENTS if kwargs.get(k) is not None}
            try:
                kwargs["generation_config"] = GenerationConfig.from_pretrained(pretrained_model_name_or_path, **hub)
            except OSError:  # no generation_config.json: the defaults of __init__
                pass
        return super().from_pretrained(pretrained_model_name_or_path, *args, **kwargs)

    def forward(self, pixel_values: torch.Tensor, captions: Optional[list] = None,
                prompts: Optional[list] = None, **kwargs) -> CaptionerOutput:
        if captions is None:
            raise ValueError("forward is teacher forcing and needs captions (one per video); generate() or caption() "
                             "write new ones")
        return self.captioner(pixel_values, captions, prompts)

    @torch.no_grad()
    def generate(self, pixel_values: torch.Tensor, prompts: Optional[list] = None,
                 generation_config: Optional[GenerationConfig] = None, **kwargs) -> torch.Tensor:
        """New token ids [B, new] (decode with ``tokenizer.batch_decode(..., skip_special_tokens=True)``)."""
        config = copy.deepcopy(generation_config or self.generation_config)
        config.update(**kwargs)
        inputs_embeds, attention_mask = self.captioner.prepare_generation_inputs(pixel_values, prompts)
        return self.captioner.language_model.generate(inputs_embeds=inputs_embeds, attention_mask=attention_mask,
                                                      generation_config=config)

    def caption(self, pixel_values: torch.Tensor, prompts: Optional[list] = None, **kwargs) -> list[str]:
        """One caption per video (special tokens dropped, whitespace stripped)."""
        return self.captioner.decode(self.generate(pixel_values, prompts, **kwargs))
