"""The settings: one dataclass holding every default, read from YAML and flags (plain data, no model code).

Precedence: the dataclass defaults below < ``config_file.yaml`` (or ``--config FILE``) < command-line flags
(``videolab.cli`` parses them).

* Every field of :class:`Settings` is a flag of the same name (``--vision_model``, ``--lr`` ...) and a key of the
  YAML file. YAML may group keys in sections: ``lora: {r: 8}`` means ``lora_r: 8`` and ``fusion: {type: mean}``
  means ``fusion: mean``.
* Booleans accept ``True/False/true/false/1/0/yes/no/on/off``; a bare ``--flag`` means True.
* A field's metadata says what it is for (``group``: model, data, train, runtime), its range and its choices:
  fixed ``choices`` here, or ``registry``, the name of the registry that owns its values (``videolab.cli`` asks
  the registry; this module imports none).
* :func:`check_values` checks each value alone (type, range, fixed choices) and changes nothing; combinations
  are checked by the parts that own them (``build_model.check_settings``).
"""
from __future__ import annotations

import dataclasses
import json
import math
import sys
from dataclasses import dataclass, field
from typing import Any, Optional, Sequence

from videolab.core.errors import CheckpointError, UsageError
from videolab.core.inputs import parse_json, parse_yaml, quote, read_yaml
from videolab.core.registry import nearest

DEFAULT_CONFIG_FILE = "config_file.yaml"


def _opt(default, help: str, choices: Optional[Sequence[str]] = None, registry: Optional[str] = None,
         minimum: Optional[float] = None, maximum: Optional[float] = None, group: str = "train",
         command_line_only: bool = False):
    """A dataclass field with CLI metadata: fixed ``choices``, or the ``registry`` that owns the valid values.
    ``command_line_only``: a setting that widens what code may run; only the command line (or the default) sets
    it, never a YAML file, a checkpoint or an export (see :func:`load_yaml`, :func:`settings_from_dict`)."""
    return field(default=default, metadata=dict(help=help, choices=choices, registry=registry, minimum=minimum,
                                                maximum=maximum, group=group, command_line_only=command_line_only))


# the largest integer a setting takes when its field names no maximum: every library (numpy, torch, the OS) takes
# it, while 10**30 would overflow somewhere deep inside one of them
MAX_INT = 2**31 - 1


# Groups say what a setting is for. Inference rebuilds the model from the checkpoint's "model" and "data" settings;
# the user may only override "runtime" ones there (see merge_with_checkpoint).
MODEL, DATA, TRAIN, RUNTIME = "model", "data", "train", "runtime"


@dataclass
class Settings:
    # --- model -------------------------------------------------------------------------------------------------
    vision_model: str = _opt("videomae", "vision backbone: a registry name or any timm model name",
                             registry="backbones", group=MODEL)
    model_size: str = _opt("tiny", "architecture preset: 'tiny' and 'small' are REDUCED copies for CPU tests "
                           "(VideoMAE tiny: 96 wide x 3 layers, 0.4 M; swin_tiny_patch4_window7_224 tiny: 0.3 M, not "
                           "Swin-T's 28 M); 'base' is the published / named architecture (the banner says what was "
                           "built)", choices=("tiny", "small", "base"), group=MODEL)
    pretrained: Optional[str] = _opt(None, "Hub id or local folder with pretrained weights; none = random init",
                                     group=MODEL)
    fusion: str = _opt("transformer", "temporal fusion after a per-frame (timm) backbone: transformer, mamba "
                       "(Mamba-1), mamba2 (Mamba-2, SSD) or 'mean' = frame averaging", registry="fusions", group=MODEL)
    fusion_depth: int = _opt(2, "fusion layers", minimum=1, group=MODEL)
    fusion_n_heads: int = _opt(4, "attention heads in the fusion layers", minimum=1, group=MODEL)
    fusion_dim: Optional[int] = _opt(None, "fusion width; none = the backbone's feature width up to 128 (Swin-T + "
                                     "fusion: OmniQ's 28 M), 0 = the backbone's feature width", minimum=0,
                                     group=MODEL)
    fusion_dropout: float = _opt(0.1, "dropout inside the fusion layers", minimum=0.0, maximum=1.0, group=MODEL)
    fusion_d_state: int = _opt(16, "Mamba fusion: state size per channel", minimum=1, group=MODEL)
    fusion_d_conv: int = _opt(4, "Mamba fusion: causal depthwise convolution width", minimum=1, group=MODEL)
    fusion_expand: int = _opt(2, "Mamba fusion: inner width = expand * fusion width", minimum=1, group=MODEL)
    fusion_bidirectional: bool = _opt(True, "Mamba fusion: scan both ways (non-causal, VideoMamba); False = causal",
                                      group=MODEL)
    fusion_head_dim: int = _opt(64, "Mamba-2 fusion: channels per head (divides expand * fusion width)", minimum=1,
                                group=MODEL)
    head_dropout: float = _opt(0.0, "dropout before the classification head", minimum=0.0, maximum=1.0,
                               group=MODEL)
    freeze_visionbackbone: bool = _opt(False, "train only what follows the backbone (fusion and head)",
                                       group=MODEL)
    use_lora_vision: bool = _opt(False, "wrap the vision backbone with peft LoRA; train adapters + head",
                                 group=MODEL)
    lora_r: int = _opt(8, "LoRA rank", minimum=1, group=MODEL)
    lora_alpha: float = _opt(16.0, "LoRA alpha (scale = alpha / r)", minimum=0.0, group=MODEL)
    lora_dropout: float = _opt(0.05, "LoRA dropout", minimum=0.0, maximum=1.0, group=MODEL)
    lora_target_modules: str = _opt("auto", "comma-separated module names for LoRA; 'auto' = per-backbone default",
                                    group=MODEL)
    use_vlm: bool = _opt(False, "vision + language model: video tokens go through --language_model", group=MODEL)
    language_model: Optional[str] = _opt(None, "for --use_vlm: bert (classification), gpt2 (captioning), a Hub id "
                                         "or a local folder; default: bert, or gpt2 with --captioning", group=MODEL)
    use_text: bool = _opt(False, "feed text to the model: the dataset's hints (training, evaluation) or "
                          "--text_input (inference)", group=MODEL)
    captioning: bool = _opt(False, "train/run a captioner (causal language model) instead of a classifier",
                            group=MODEL)
    use_lora_llm: bool = _opt(False, "LoRA on the language model (its own weights stay frozen)", group=MODEL)
    freeze_language_model: bool = _opt(False, "keep the language model's weights fixed (train projector + head)",
                                       group=MODEL)
    language_model_size: str = _opt("tiny", "preset for the random-init GPT-2 used offline",
                                    choices=("tiny", "small"), group=MODEL)
    max_text_tokens: int = _opt(32, "text tokens kept per input; longer text is truncated with a warning",
                                minimum=1, maximum=512, group=MODEL)
    max_video_tokens: int = _opt(16, "video tokens given to the language model (average-pooled down to this)",
                                 minimum=1, maximum=4096, group=MODEL)
    max_caption_tokens: int = _opt(32, "caption tokens learned per video (longer captions are truncated)",
                                   minimum=1, maximum=512, group=MODEL)
    # --- data --------------------------------------------------------------------------------------------------
    dataset: str = _opt("synthetic", "training data: synthetic (.pt, generated if missing), ucf101 (official splits), "
                        "videofolder (<data_root>/<class>/<video>) or qa_json (video question-answer records: "
                        "<data_root>/{train,test}.json)", registry="datasets", group=DATA)
    data_root: str = _opt("synthetic_dataset", "dataset folder; the synthetic one is generated if missing, for ucf101 "
                          "the unpacked UCF-101/ folder", group=DATA)
    split: int = _opt(1, "ucf101: official split 1, 2 or 3", minimum=1, maximum=3, group=DATA)
    split_dir: Optional[str] = _opt(None, "ucf101: folder of classInd.txt, trainlist0N.txt, testlist0N.txt (default: "
                                    "<data_root>/ucfTrainTestlist, then beside data_root); videofolder: folder of "
                                    "train.txt, test.txt [val.txt] (default: seeded stratified split)", group=DATA)
    test_fraction: float = _opt(0.2, "videofolder without --split_dir: share of every class held out as the test "
                                "split (stratified, seeded)", minimum=0.0, maximum=0.9, group=DATA)
    synthetic_task: str = _opt("motion", "synthetic data: motion (hints name the motion family) or playback (half "
                               "the clips run backwards and only the hint says so)", choices=("motion", "playback"),
                               group=DATA)
    num_frames: int = _opt(8, "frames sampled per clip", minimum=1, maximum=1024, group=DATA)
    sampling: str = _opt("uniform", "temporal sampling: uniform (segment centres), segment (TSN: a random frame per "
                         "segment in training, centres in evaluation) or dense (--frame_stride apart, random start in "
                         "training)", registry="samplings", group=DATA)
    frame_stride: int = _opt(4, "dense sampling: frames between two sampled frames", minimum=1, maximum=64,
                             group=DATA)
    image_size: int = _opt(32, "frame side in pixels after resize + centre crop", minimum=8, maximum=1024,
                           group=DATA)
    val_fraction: float = _opt(0.1, "share of the train split held out (stratified, seeded) for validation",
                               minimum=0.0, maximum=0.5, group=DATA)
    cache_dir: Optional[str] = _opt(None, "video files: keep decoded, resized frames here (memory-mapped .npy, one "
                                    "per video and size); later epochs and runs read them instead of decoding",
                                    group=RUNTIME)
    # --- training ----------------------------------------------------------------------------------------------
    train_crop: str = _opt("auto", "training crop: random_resized (RandomResizedCrop), center, or auto = "
                           "random_resized for video files, center for the synthetic dataset",
                           choices=("auto", "random_resized", "center"))
    crop_scale_min: float = _opt(0.25, "random_resized: smallest share of the frame area a training crop keeps",
                                 minimum=0.01, maximum=1.0)
    horizontal_flip: Optional[bool] = _opt(None, "flip half the training clips left-right; none = on for video files, "
                                           "off for the synthetic dataset (its classes include move left/right)")
    max_bad_video_fraction: float = _opt(0.05, "training: unreadable videos are skipped with a warning; stop when more "
                                         "than this share of a split fails", minimum=0.0, maximum=1.0)
    epochs: int = _opt(10, "training epochs", minimum=1)
    max_steps: int = _opt(0, "stop after this many optimizer steps (0 = no limit; for smoke tests)", minimum=0)
    batch_size: int = _opt(32, "clips per batch", minimum=1, group=RUNTIME)
    lr: float = _opt(1e-3, "peak learning rate (AdamW)", minimum=0.0)
    lr_language_model: Optional[float] = _opt(None, "peak learning rate of a PRETRAINED language model's own "
                                              "weights when they train fully; none = lr / 10 (new parts, LoRA "
                                              "adapters and a randomly initialised LM use --lr)", minimum=0.0)
    weight_decay: float = _opt(0.05, "AdamW weight decay (not on biases and norms)", minimum=0.0)
    warmup_ratio: float = _opt(0.1, "share of the steps spent in linear warm-up before the cosine decay",
                               minimum=0.0, maximum=1.0)
    label_smoothing: float = _opt(0.1, "cross-entropy label smoothing", minimum=0.0, maximum=1.0)
    max_grad_norm: float = _opt(1.0, "gradient clipping norm (0 = off)", minimum=0.0)
    gradient_accumulation_steps: int = _opt(1, "batches per optimizer step", minimum=1)
    mixed_precision: str = _opt("no", "autocast dtype: no, bf16 (CPU and recent GPUs) or fp16 (GPU, scaled)",
                                choices=("no", "bf16", "fp16"), group=RUNTIME)
    seed: int = _opt(0, "seed for data order, init and augmentation", minimum=0, maximum=2**32 - 1, group=RUNTIME)
    num_workers: int = _opt(0, "DataLoader worker processes", minimum=0, group=RUNTIME)
    device: str = _opt("auto", "auto, cpu or cuda", choices=("auto", "cpu", "cuda"), group=RUNTIME)
    output_dir: str = _opt("checkpoints", "where runs are written: <output_dir>/<run_name>/", group=RUNTIME)
    run_name: Optional[str] = _opt(None, "run folder name (one folder name inside --output_dir); default: "
                                   "<vision_model>-<fusion>-<time>", group=RUNTIME)
    overwrite: bool = _opt(False, "replace an existing run folder of --run_name (its checkpoints, best/ and reports "
                           "are deleted first) or an existing --predictions_file; default: refuse and say so",
                           group=RUNTIME)
    resume_from_checkpoint: Optional[str] = _opt(None, "continue a run exactly: a checkpoint folder "
                                                 "(<run>/checkpoint-<step>, <run>/last), or 'latest' (the newest "
                                                 "checkpoint of --run_name, else of the newest run in --output_dir)")
    save_steps: int = _opt(0, "also save a resumable checkpoint every N optimizer steps (0 = at epoch ends only)",
                           minimum=0)
    save_total_limit: int = _opt(2, "resumable checkpoints kept per run (the newest K; best/ is kept besides; "
                                 "0 = keep all)", minimum=0)
    nan_policy: str = _opt("stop", "a non-finite training loss: stop (before the update, keeping the last good "
                           "checkpoint) or skip the batch and count it", choices=("stop", "skip"))
    deterministic: bool = _opt(False, "torch.use_deterministic_algorithms during training (reproducible runs and "
                               "exact resume on GPU; slower)")
    quiet: bool = _opt(False, "no progress bars", group=RUNTIME)
    # --- inference ---------------------------------------------------------------------------------------------
    video_dir: Optional[str] = _opt(None, "inference input: a video file, a folder of videos (or of class folders of "
                                    "videos), one frame folder or a folder of them", group=RUNTIME)
    checkpoint: Optional[str] = _opt(None, "checkpoint folder for inference (default: newest run matching the flags) "
                                     "and for --eval_only", group=RUNTIME)
    top_k: int = _opt(5, "classes printed per video", minimum=1, group=RUNTIME)
    predictions_file: str = _opt("predictions.json", "where inference writes its predictions (JSON)",
                                 group=RUNTIME)
    text_input: Optional[str] = _opt(None, "text for a --use_text model at inference (every video gets it); "
                                     "default: the texts.json hints beside the frames", group=RUNTIME)
    num_beams: int = _opt(1, "captioning: beam width (1 = greedy)", minimum=1, maximum=32, group=RUNTIME)
    max_new_tokens: int = _opt(32, "captioning: longest caption generated, in tokens", minimum=1, maximum=512,
                               group=RUNTIME)
    no_repeat_ngram_size: int = _opt(0, "captioning: forbid repeating any n-gram of this size (0 = off)",
                                     minimum=0, group=RUNTIME)
    repetition_penalty: float = _opt(1.0, "captioning: >1 discourages repeated tokens (1 = off)", minimum=1.0,
                                     group=RUNTIME)
    # --- evaluation and reports --------------------------------------------------------------------------------
    test_clips: int = _opt(1, "test views: temporal clips per video (logits averaged)", minimum=1, maximum=100,
                           group=RUNTIME)
    test_crops: int = _opt(1, "test views: 1 (centre) or 3 (start, centre, end of the long side) crops per clip",
                           minimum=1, maximum=3, group=RUNTIME)
    eval_only: bool = _opt(False, "main.py: evaluate --checkpoint on the test split without training (writes "
                           "eval.json, a summary row and plots beside the checkpoint)", group=RUNTIME)
    summary_csv: Optional[str] = _opt("results/summary.csv", "results table: one row appended per evaluated run; "
                                      "none = no table", group=RUNTIME)
    report_to: str = _opt("none", "also log metrics to a tracker through accelerate: tensorboard (pip install "
                          "tensorboard) or wandb (pip install wandb); metrics.jsonl is always written",
                          choices=("none", "tensorboard", "wandb"), group=RUNTIME)
    export_dir: Optional[str] = _opt(None, "after training (or --eval_only) write the model in the Hugging Face "
                                     "format: stock transformers classes where the architecture is stock, else with "
                                     "its model code (trust_remote_code); processors, a model card (LoRA runs: "
                                     "adapter/ too, unless --merge_lora)", group=RUNTIME)
    merge_lora: bool = _opt(False, "--export_dir of a LoRA run: merge the adapters into the weights instead of "
                            "writing them apart", group=RUNTIME)
    export_onnx: bool = _opt(False, "--export_dir of a video classifier: also write model.onnx (dynamic batch), "
                             "checked against PyTorch with onnxruntime (pip install -e '.[onnx]')",
                             group=RUNTIME)
    push_to_hub: Optional[str] = _opt(None, "--export_dir: then upload the folder to this Hugging Face Hub repo "
                                      "(USER/NAME; needs the Hub and a token: hf auth login)", group=RUNTIME)
    hub_private: bool = _opt(False, "--push_to_hub: create the repo private", group=RUNTIME)
    speed_repeats: int = _opt(5, "timed runs (after 2 warm-up runs) for the latency and throughput in eval.json; "
                              "0 = do not time", minimum=0, group=RUNTIME)
    # --- composable multimodal models (models/compose.py, data/audio.py) -----------------------------------------
    modalities: Optional[str] = _opt(None, "inputs of the composed multimodal model, comma-separated: video, audio, "
                                     "text (e.g. video,audio); none = the video classifier (or --model_config)",
                                     group=MODEL)
    model_config: Optional[str] = _opt(None, "YAML file whose model: section declares the encoders, fusion and head "
                                       "(a model: section in the settings YAML does the same; see README)",
                                       group=MODEL)
    allowed_target_prefixes: str = _opt("compose,audio,fusion", "module prefixes a model section's _target_ may "
                                        "name (comma-separated); anything else is refused. Command line only: a "
                                        "YAML file, checkpoint or export never sets it", group=RUNTIME,
                                        command_line_only=True)
    fusion_bottleneck_tokens: int = _opt(4, "bottleneck fusion: shared tokens between the modalities", minimum=1,
                                         group=MODEL)
    fusion_bottleneck_layer: int = _opt(0, "bottleneck fusion: first layer that writes to the bottleneck (earlier "
                                        "layers see their own modality only; the next layer reads it)", minimum=0,
                                        group=MODEL)
    audio_dim: int = _opt(64, "audio encoder width (1-D conv + transformer over Whisper log-mel)", minimum=8,
                          group=MODEL)
    audio_depth: int = _opt(2, "audio encoder transformer layers", minimum=1, group=MODEL)
    audio_seconds: float = _opt(2.0, "audio read per clip (seconds, centred on the clip's frames), padded and "
                                "masked when shorter", minimum=0.1, maximum=30.0, group=DATA)
    require_audio: bool = _opt(False, "a video without an audio track is an error (default: its audio is a "
                               "masked-out modality)", group=DATA)
    # --- Qwen2-VL video description and Qwen2 text embeddings ---------------------------------------------------
    lora_llm_r: Optional[int] = _opt(None, "LoRA rank of the language model; none = 64 for qwen2-vl, else --lora_r",
                                     minimum=1, group=MODEL)
    lora_llm_alpha: Optional[float] = _opt(None, "LoRA alpha of the language model; none = 128 for qwen2-vl, else "
                                           "--lora_alpha", minimum=0.0, group=MODEL)
    lora_llm_dropout: Optional[float] = _opt(None, "LoRA dropout of the language model; none = 0.05 for qwen2-vl, "
                                             "else --lora_dropout", minimum=0.0, maximum=1.0, group=MODEL)
    lora_llm_target_modules: Optional[str] = _opt(None, "comma-separated language-model modules for LoRA; none = "
                                                  "q_proj,v_proj for qwen2-vl, else the model's default", group=MODEL)
    train_vision_tower: bool = _opt(False, "qwen2-vl: train its vision tower (and merger) too; by default it stays "
                                    "frozen", group=MODEL)
    gradient_checkpointing: bool = _opt(False, "recompute activations in the backward pass (less memory, more "
                                        "compute per step): the backbone, language model and Qwen2-VL (their "
                                        "transformers / timm switch)")
    # --- self-supervised pretraining (tasks/pretraining.py) and label budgets ------------------------------------
    task: str = _opt("train", "main.py: train (supervised classifier or captioner) or pretrain (self-supervised, "
                     "labels ignored; exports a backbone folder for --pretrained)", registry="task_flags",
                     group=MODEL)  # a model setting: resuming across tasks is refused, naming it
    pretrain_objective: str = _opt("mvm", "--task pretrain: mvm (masked video modelling, VideoMAE), contrastive "
                                   "(video-caption InfoNCE with the MiniLM text encoder) or both",
                                   choices=("mvm", "contrastive", "both"), group=MODEL)
    mask_ratio: float = _opt(0.9, "masked video modelling: share of the tokens hidden (exact per clip)",
                             minimum=0.05, maximum=0.99)
    mask_type: str = _opt("tube", "masked video modelling: tube (the same patches hidden in every frame), random "
                          "(tokens hidden independently) or frame (whole time slots hidden: predict unseen frames)",
                          choices=("tube", "random", "frame"))
    norm_pix_loss: bool = _opt(True, "masked video modelling: reconstruct per-patch normalised pixels", group=MODEL)
    contrastive_dim: int = _opt(128, "contrastive: width of the shared video-text embedding", minimum=8,
                                group=MODEL)
    mvm_target: str = _opt("pixels", "masked video modelling: reconstruct the hidden tokens' pixels (VideoMAE) or "
                           "their frame_difference (next frame minus this one: only what moves)",
                           choices=("pixels", "frame_difference"), group=MODEL)
    label_fraction: float = _opt(1.0, "share of every class of the train split used (stratified, seeded; the "
                                 "validation split is held out of it): a small label budget", minimum=0.001,
                                 maximum=1.0, group=DATA)
    # --- training recipes: augmentation, EMA, layer-wise lr decay, stochastic depth, LoRA variants (issue 22) ----
    mixup_alpha: float = _opt(0.0, "Mixup (timm.data.Mixup): Beta(alpha, alpha) mixing of two clips and their "
                              "labels, soft-target loss; 0 = off (also off, with a note, for datasets whose labels "
                              "tell left from right or forwards from backwards, such as the synthetic one)",
                              minimum=0.0)
    cutmix_alpha: float = _opt(0.0, "CutMix (timm.data.Mixup): one box pasted from another clip, the same box in "
                               "every frame, labels mixed by its area; 0 = off (also off for the datasets "
                               "--mixup_alpha names)", minimum=0.0)
    mixup_prob: float = _opt(1.0, "--mixup_alpha / --cutmix_alpha: share of the batches mixed", minimum=0.0,
                             maximum=1.0)
    mixup_switch_prob: float = _opt(0.5, "both --mixup_alpha and --cutmix_alpha: share of the mixed batches that use "
                                    "CutMix", minimum=0.0, maximum=1.0)
    rand_augment: Optional[str] = _opt(None, "RandAugment on training clips (torchvision.transforms.v2), the same "
                                       "operations and magnitudes on every frame: 'N,M' = N operations of magnitude "
                                       "M (0-30), e.g. 2,9; none = off (also off for the datasets --mixup_alpha "
                                       "names)", group=DATA)
    model_ema: bool = _opt(False, "keep an exponential moving average of the weights (timm.utils.ModelEmaV3); "
                           "validation, best/ and the test use the averaged weights")
    model_ema_decay: float = _opt(0.9998, "--model_ema: decay per optimizer step (ema = decay * ema + (1 - decay) * "
                                  "weights)", minimum=0.0, maximum=1.0)
    model_ema_warmup: bool = _opt(False, "--model_ema: ramp the decay up from 0 (1 - (1 + step) ** -0.75, capped at "
                                  "--model_ema_decay): for short runs, where a fixed 0.9998 would average in the "
                                  "initial weights")
    layer_decay: float = _opt(1.0, "layer-wise lr decay of a ViT-style backbone (VideoMAE, TimeSformer, timm ViT / "
                              "Swin): block i of L trains at lr * decay ** (L + 1 - i), the embeddings at "
                              "lr * decay ** (L + 1), fusion and head at lr; 1 = off", minimum=0.01, maximum=1.0)
    drop_path_rate: float = _opt(0.0, "stochastic depth of the backbone (TimeSformer, timm models), rising linearly "
                                 "to this rate in the last block; 0 = off", minimum=0.0, maximum=0.9, group=MODEL)
    lora_use_rslora: bool = _opt(False, "rank-stabilised LoRA (peft use_rslora): scale alpha / sqrt(r) instead of "
                                 "alpha / r", group=MODEL)
    lora_bias: str = _opt("none", "LoRA: which biases train besides the adapters (peft bias): none, all, or "
                          "lora_only", choices=("none", "all", "lora_only"), group=MODEL)
    lora_exclude_modules: Optional[str] = _opt(None, "LoRA: comma-separated module names (or suffixes) left without "
                                               "adapters even where --lora_target_modules matches (peft "
                                               "exclude_modules)", group=MODEL)
    max_eval_samples: int = _opt(0, "--dataset qa_json: evaluate on the first N validation and test records only (a "
                                 "quick check); 0 = all", minimum=0, group=RUNTIME)
    skip_list: Optional[str] = _opt(None, "ucf101 / videofolder: a skip list written by apps/check_videos.py; the "
                                    "videos it names are left out of every split", group=DATA)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


FIELDS = {f.name: f for f in dataclasses.fields(Settings)}

# Help topics: how --help groups the flags (presentation only; ``group`` above decides what a checkpoint fixes).
# A field not listed here is shown under its group's topic (model -> model, data -> data, train and runtime ->
# training).
TOPICS = ("model", "language", "data", "training", "inference", "output")
TOPIC_FIELDS = {
    "language": ("use_vlm", "language_model", "use_text", "captioning", "use_lora_llm", "freeze_language_model",
                 "language_model_size", "max_text_tokens", "max_video_tokens", "max_caption_tokens", "lora_llm_r",
                 "lora_llm_alpha", "lora_llm_dropout", "lora_llm_target_modules", "train_vision_tower",
                 "lr_language_model"),
    "data": ("cache_dir", "train_crop", "crop_scale_min", "horizontal_flip", "max_bad_video_fraction"),
    "inference": ("video_dir", "checkpoint", "top_k", "text_input", "num_beams", "max_new_tokens",
                  "no_repeat_ngram_size", "repetition_penalty", "test_clips", "test_crops", "eval_only", "device",
                  "batch_size", "num_workers"),
    "output": ("output_dir", "run_name", "overwrite", "predictions_file", "summary_csv", "report_to", "export_dir",
               "merge_lora",
               "speed_repeats", "save_steps", "save_total_limit", "quiet"),
}
_TOPIC_OF_GROUP = {MODEL: "model", DATA: "data", TRAIN: "training", RUNTIME: "training"}


def topic_of(name: str) -> str:
    """The --help topic of a field (one of TOPICS)."""
    for topic, names in TOPIC_FIELDS.items():
        if name in names:
            return topic
    return _TOPIC_OF_GROUP[FIELDS[name].metadata["group"]]


# ----------------------------------------------------------------------------------------------------------------
# value parsing
# ----------------------------------------------------------------------------------------------------------------
TRUE_WORDS = {"true", "1", "yes", "y", "on"}
FALSE_WORDS = {"false", "0", "no", "n", "off"}
NONE_WORDS = {"none", "null", ""}


def parse_bool(value: Any, name: str = "value") -> bool:
    """'True'/'false'/'1'/'no'/... -> bool. Never lets the string 'False' become truthy."""
    if isinstance(value, bool):
        return value
    if isinstance(value, int) and value in (0, 1):
        return bool(value)
    text = str(value).strip().lower()
    if text in TRUE_WORDS:
        return True
    if text in FALSE_WORDS:
        return False
    raise UsageError(f"--{name} expects a boolean, got {value!r}; use True or False")


def field_type(f: dataclasses.Field) -> str:
    return str(f.type).replace("Optional[", "").rstrip("]")


def coerce(name: str, value: Any) -> Any:
    """Convert a YAML or CLI value to the field's type, with a clear error."""
    f = FIELDS[name]
    kind = field_type(f)
    optional = "Optional" in str(f.type)
    if optional and (value is None or (isinstance(value, str) and value.strip().lower() in NONE_WORDS)):
        return None
    try:
        if kind == "bool":
            return parse_bool(value, name)
        if kind == "int":
            if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
                raise ValueError
            if isinstance(value, str) and "e" in value.lower():  # 1e5; never 2.5e0 cut to 2
                number = float(value)
                if not number.is_integer():
                    raise ValueError
                return int(number)
            return int(value)
        if kind == "float":
            if isinstance(value, bool):
                raise ValueError
            return float(value)
    except (TypeError, ValueError, OverflowError):
        raise UsageError(f"--{name} expects {'an integer' if kind == 'int' else 'a finite number'}, got "
                         f"{quote(value)}") from None
    if isinstance(value, (dict, list)):
        raise UsageError(f"--{name} expects a single value, got {quote(value)}")
    return str(value)


def check_values(cfg: Settings) -> None:
    """Each value alone: fixed choices and ranges. Raises UsageError naming the flag and the fix; changes nothing.
    Registry-backed values are checked by their registry (``videolab.cli.check_names``)."""
    for name in FIELDS:
        check_value(name, getattr(cfg, name))


def check_value(name: str, value: Any, label: Optional[str] = None) -> None:
    """One value of field ``name``: finite, in the field's range (an integer without a maximum: at most MAX_INT),
    one of its fixed choices. ``label`` names where it came from in the message (default ``--name``)."""
    f, label = FIELDS[name], label or f"--{name}"
    if value is None:
        return
    choices = f.metadata.get("choices")
    if choices is not None and value not in choices:
        raise UsageError(f"{label} {quote(value)} is not valid{nearest(str(value)[:100], choices)}; "
                         f"choose one of: {', '.join(choices)}")
    if isinstance(value, float) and not math.isfinite(value):
        raise UsageError(f"{label} must be a finite number, got {value}")
    lo, hi = f.metadata.get("minimum"), f.metadata.get("maximum")
    if (lo is not None or hi is not None) and (isinstance(value, bool) or not isinstance(value, (int, float))):
        raise UsageError(f"{label} expects a number, got {quote(value)}")  # a value from a file, not yet typed
    if hi is None and isinstance(value, int) and not isinstance(value, bool):
        hi = MAX_INT
    if lo is not None and value < lo:
        raise UsageError(f"{label} must be >= {lo}, got {value}")
    if hi is not None and value > hi:
        raise UsageError(f"{label} must be <= {hi}, got {value}")


# ----------------------------------------------------------------------------------------------------------------
# YAML
# ----------------------------------------------------------------------------------------------------------------
def flatten_yaml(data: dict, prefix: str = "") -> dict[str, Any]:
    """``{lora: {r: 8}, fusion: {type: mean, depth: 2}}`` -> ``{lora_r: 8, fusion: mean, fusion_depth: 2}``."""
    flat = {}
    for key, value in data.items():
        key = str(key)
        full = prefix if (prefix and key in ("type", "name")) else (f"{prefix}_{key}" if prefix else key)
        if isinstance(value, dict):
            flat.update(flatten_yaml(value, full))
        else:
            flat[full] = value
    return flat


def load_yaml(path: str) -> dict[str, Any]:
    """Read a settings YAML (safe, size- and alias-limited: ``inputs.read_yaml``) into flat, type-checked
    {field: value}. A command-line-only setting (``allowed_target_prefixes``) is refused unless it holds the
    default."""
    data = read_yaml(path, "config file", "pass a UTF-8 YAML file of settings with --config (see config_file.yaml)")
    values = {}
    if "model" in data:  # a model: section declares a composed model (models/compose.py)
        section = data.pop("model")
        if not isinstance(section, dict):
            raise UsageError(f"the model: section of {path} must be a mapping (encoders, fusion, head), got "
                             f"{type(section).__name__} {quote(section, 40)}")
        values["model_config"] = json.dumps(section, default=str)
    for key, value in flatten_yaml(data).items():
        if key not in FIELDS:
            raise UsageError(f"unknown key {quote(key, 60)} in {path}{nearest(key[:100], list(FIELDS))} (valid keys: "
                             f"see --help)")
        values[key] = coerce(key, value)
        if FIELDS[key].metadata.get("command_line_only") and values[key] != FIELDS[key].default:
            raise UsageError(f"{key} in {path} is refused: it decides what code a model section may import, so only "
                             f"the command line sets it (--{key} ...)")
    return values


def read_model_section(text: Optional[str]) -> Optional[dict]:
    """The ``model:`` section ``--model_config`` holds: a YAML file (a ``model:`` key or the bare section), or the
    inline section a settings YAML (or a nested override) carried as JSON; None when there is none. Read with the
    limits of ``videolab.core.inputs`` (size, aliases, encoding)."""
    if not text:
        return None
    if text.lstrip().startswith("{"):
        return parse_json(text, "the model section")
    data = read_yaml(text, "--model_config", "pass a UTF-8 YAML file with a model: section", expect=None)
    if isinstance(data, dict) and "model" in data:
        extra = sorted(str(k) for k in set(data) - {"model"})
        if extra:
            raise UsageError(f"--model_config {text!r} may only hold a model: section, found {extra[:5]}; settings go "
                             f"in --config")
        data = data["model"]
    return data


# ----------------------------------------------------------------------------------------------------------------
# nested overrides: key.sub=value, --key.sub value
# ----------------------------------------------------------------------------------------------------------------
MODEL_SECTION = "model"


def set_nested(section: dict, path: Sequence[str], value: Any, spelled: str) -> dict:
    """A copy of ``section`` with ``section[path[0]][path[1]]... = value`` (missing sections are created)."""
    out = json.loads(json.dumps(section))
    node = out
    for i, key in enumerate(path[:-1]):
        child = node.setdefault(key, {})
        if not isinstance(child, dict):
            where = ".".join([MODEL_SECTION, *path[:i + 1]])
            raise UsageError(f"{spelled}: {where} is {child!r}, not a section; override {where} itself, or write "
                             f"it as a section in the YAML file")
        node = child
    node[path[-1]] = value
    return out


def nested_field(dotted: str) -> str:
    """``lora.r`` -> ``lora_r``, ``fusion.type`` -> ``fusion`` (the YAML sections' shorthand, :func:`flatten_yaml`)."""
    parts = dotted.split(".")
    data: Any = "x"
    for key in reversed(parts):
        data = {key: data}
    return next(iter(flatten_yaml(data)))


def apply_overrides(values: dict[str, Any], overrides: Sequence[tuple[str, str, str]], flat_flags: set[str]
                    ) -> tuple[dict[str, Any], set[str]]:
    """Nested overrides on the settings read so far. ``overrides``: (dotted key, value text, as typed); the model
    section's keys (``model.encoders.video.model_size=small``) change the ``model:`` section (a YAML value:
    numbers, booleans, lists), every other dotted key names a setting through its section (``lora.r=4`` is
    ``lora_r``). Returns (the new values, the settings set). A setting given twice, or both as a flag and as an
    override, is refused like a flag given twice; unknown keys and bad values get the flags' errors."""
    values, set_here = dict(values), {}
    for dotted, text, spelled in overrides:
        parts = dotted.split(".")
        if any(not p for p in parts):
            raise UsageError(f"{spelled}: empty key in {dotted!r}; write section.key=value, e.g. lora.r=8")
        if parts[0] == MODEL_SECTION:
            if len(parts) < 2:
                raise UsageError(f"{spelled}: name a key of the model section, e.g. model.fusion.dim=128")
            section = read_model_section(values.get("model_config"))
            if section is None:
                raise UsageError(f"{spelled} overrides the model: section, and this run has none; give one with "
                                 f"--model_config FILE or a model: section in --config")
            if dotted in set_here:
                raise UsageError(f"{spelled} and {set_here[dotted]} set the same key; give it once")
            try:
                value = parse_yaml(text, spelled) if text.strip() else ""
            except UsageError:  # not YAML (an unbalanced quote ...): the text as it is
                value = text
            values["model_config"] = json.dumps(set_nested(section, parts[1:], value, spelled))
            set_here[dotted] = spelled
            continue
        name = nested_field(dotted)
        if name not in FIELDS:
            known = [k for k in FIELDS]
            raise UsageError(f"unknown setting {spelled} (no setting {name!r}){nearest(name, known)} (see --help)")
        if name in flat_flags or name in set_here:
            other = f"--{name}" if name in flat_flags else set_here[name]
            raise UsageError(f"{spelled} and {other} set the same setting ({name}); give it once")
        try:
            values[name] = coerce(name, text)
        except UsageError as exc:
            raise UsageError(str(exc).replace(f"--{name} ", f"{spelled} (--{name}) ", 1)) from None
        set_here[name] = spelled
    return values, {k if k in FIELDS else "model_config" for k in set_here}


def settings_from_dict(data: dict[str, Any], source: str = "the checkpoint") -> Settings:
    """Rebuild Settings saved in a checkpoint; keys this version does not know are dropped, and so are the
    command-line-only ones (a checkpoint or export never widens what code may run: they hold the default until the
    command line sets them, see :func:`merge_with_checkpoint`). Every value is type- and range-checked: a damaged
    or hand-edited file (``source`` names it) is a CheckpointError, not a crash later."""
    if not isinstance(data, dict):
        raise CheckpointError(f"{source}: the saved settings must be a mapping, got {type(data).__name__}; use "
                              f"another checkpoint")
    try:
        cfg = Settings(**{k: coerce(k, v) for k, v in data.items() if k in FIELDS
                          and not FIELDS[k].metadata["command_line_only"]})
        check_values(cfg)
    except UsageError as exc:
        raise CheckpointError(f"{source} holds a setting this version cannot use ({exc}); use another checkpoint "
                              f"or retrain") from None
    return cfg


def merge_with_checkpoint(saved: Settings, cli: Settings, explicit: set[str], folder: str) -> Settings:
    """The checkpoint's settings, with the user's run-time flags on top; model/data flags must agree."""
    merged = saved.to_dict()
    for key in sorted(explicit):
        group, value = FIELDS[key].metadata["group"], getattr(cli, key)
        if group in (MODEL, DATA):
            if value != merged[key]:
                raise UsageError(f"--{key} {value} conflicts with the checkpoint {folder} (trained with "
                                 f"{key}={merged[key]!r}); drop the flag or pick another --checkpoint")
        elif group == RUNTIME:
            merged[key] = value
        else:
            print(f"note: --{key} is a training flag and has no effect on a trained checkpoint", file=sys.stderr)
    cfg = settings_from_dict(merged, folder)
    for key, f in FIELDS.items():  # the command line's (or the default), never the checkpoint's
        if f.metadata["command_line_only"]:
            setattr(cfg, key, getattr(cli, key))
    return cfg
