"""Stock ``transformers`` video classifiers, where this repo's classifier differs from them by a head part.

``videolab.models.classifier.VideoClassifier`` over a transformers video backbone is ``backbone -> pool -> LayerNorm
-> Dropout -> Linear``:

* VideoMAE (mean pooling, ``use_mean_pooling=True``, so the backbone has no final LayerNorm) is, layer for layer,
  ``VideoMAEForVideoClassification``: ``videomae`` -> mean -> ``fc_norm`` -> ``classifier``. It exports as that
  class with a key rename and nothing here.
* TimeSformer reads the [CLS] token of ``TimesformerModel``, whose output already went through the model's own final
  LayerNorm; our head then normalises once more. ``TimesformerForVideoClassification`` is ``timesformer`` -> [CLS]
  -> ``classifier``, without that second LayerNorm, and no choice of its weights gives the same logits (the two
  LayerNorms do not fold into one), so :class:`TimesformerWithHeadNormForVideoClassification` is the stock class
  plus that LayerNorm (``fc_norm``, as VideoMAE names it) and nothing else. Its config has its own ``model_type``,
  so a loader without the code (``trust_remote_code``) refuses the folder instead of silently dropping the norm.

This module imports only torch and transformers: export folders carry it as their model code.
"""
from __future__ import annotations

from typing import Optional

import torch
from torch import nn
from transformers import TimesformerConfig, TimesformerForVideoClassification
from transformers.modeling_outputs import ImageClassifierOutput

TIMESFORMER_HEAD_NORM = "timesformer-with-head-norm"


class TimesformerWithHeadNormConfig(TimesformerConfig):
    """``TimesformerConfig`` under its own model type (the model differs from the stock one by ``fc_norm``)."""

    model_type = TIMESFORMER_HEAD_NORM


class TimesformerWithHeadNormForVideoClassification(TimesformerForVideoClassification):
    """pixel_values [B, T, C, H, W] -> TimesformerModel -> [CLS] [B, D] -> fc_norm (LayerNorm) -> classifier
    -> logits [B, num_labels]; ``loss`` (the stock class's) with ``labels``."""

    config_class = TimesformerWithHeadNormConfig

    def __init__(self, config: TimesformerWithHeadNormConfig):
        super().__init__(config)
        self.fc_norm = nn.LayerNorm(config.hidden_size)
        self.post_init()

    def forward(self, pixel_values: Optional[torch.Tensor] = None, labels: Optional[torch.Tensor] = None,
                output_attentions: Optional[bool] = None, output_hidden_states: Optional[bool] = None,
                return_dict: Optional[bool] = None, **kwargs) -> ImageClassifierOutput:
        outputs = self.timesformer(pixel_values, output_attentions=output_attentions,
                                   output_hidden_states=output_hidden_states, return_dict=True)
        logits = self.classifier(self.fc_norm(outputs.last_hidden_state[:, 0]))  # [B, num_labels]
        loss = None
        if labels is not None:
            loss = nn.functional.cross_entropy(logits.view(-1, self.num_labels), labels.view(-1))
        return ImageClassifierOutput(loss=loss, logits=logits, hidden_states=outputs.hidden_states,
                                     attentions=outputs.attentions)
