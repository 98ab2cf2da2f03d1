"""Classification: cross-entropy training (with Mixup / CutMix of the training batches when asked), top-1 / top-5
validation, the test report (single- and multi-view, per class, confusion, time-reversal pairs) and top-k
predictions at inference."""
from __future__ import annotations

import os
import sys
from typing import Callable, Optional

import numpy as np

import torch
from tqdm.auto import tqdm

from videolab.core.errors import UsageError
from videolab.core.files import write_json
from videolab.data.clips import make_loader
from videolab.data.registry import DATASETS
from videolab.evaluation.metrics import classification_report, topk_correct
from videolab.evaluation.plots import (PLOTS_DIR, plot_attention_rollout, plot_fusion_attention, save_figure,
                                      write_plots)
from videolab.models.attention import attention_rollout, fusion_attention
from videolab.models.classifier import MultiViewClassifier, classification_loss
from videolab.tasks.base import InferenceRun, Task, TestResult, TestRun, model_inputs

METRICS = ("top1", "top5", "mean_class_accuracy", "loss")


@torch.no_grad()
def gather_logits(model, loader, accelerator, desc: str = "eval", show_progress: bool = False) -> dict:
    """Loss, top-1, top-5 and per-sample predictions over a loader (labels < 0 are skipped in the metrics).

    Each process evaluates its shard of an ``accelerator.prepare``-d loader and ``gather_for_metrics`` collects
    every sample once, in dataset order. The loss is per sample, so the result does not depend on how batches
    were split."""
    model.eval()
    label_smoothing = accelerator.unwrap_model(model).label_smoothing
    logits_all, labels_all, losses_all = [], [], []
    for batch in tqdm(loader, desc=desc, disable=not show_progress, leave=False):
        inputs = model_inputs(model, batch, accelerator.device)
        labels = inputs.pop("labels")  # [B]; -1 = unlabelled
        with accelerator.autocast():
            logits = model(**inputs).logits.float()  # [B, num_classes]
        losses = classification_loss(logits, labels.clamp(min=0), label_smoothing, "none") * (labels >= 0)  # [B]
        logits, labels, losses = accelerator.gather_for_metrics((logits, labels, losses))
        logits_all.append(logits.cpu())
        labels_all.append(labels.cpu())
        losses_all.append(losses.cpu())
    logits, labels, losses = torch.cat(logits_all), torch.cat(labels_all), torch.cat(losses_all)
    labelled = labels >= 0
    result = dict(num_samples=len(labels), logits=logits, labels=labels, preds=logits.argmax(-1))
    if labelled.any():
        hits = topk_correct(logits[labelled], labels[labelled])
        n = int(labelled.sum())
        result.update(top1=hits[1] / n, top5=hits[5] / n, loss=losses[labelled].double().sum().item() / n)
    return result


def class_metrics(result: dict, keep: torch.Tensor, class_names: list, pairs: Optional[dict],
                  label_smoothing: float) -> tuple[dict, dict]:
    """(top1, top5, mean class accuracy, loss [, family / direction accuracy]; per-class accuracy and confusion)
    of a :func:`gather_logits` result over the samples ``keep`` (bool [N], at least one): unreadable videos and
    unlabelled ones are left out this way. The loss is the models' own: cross-entropy of the logits with the
    run's label smoothing."""
    logits, labels = result["logits"][keep], result["labels"][keep]  # [n, K], [n]
    hits, n = topk_correct(logits, labels), len(labels)
    report = classification_report(logits.argmax(-1), labels, class_names, pairs)
    loss = classification_loss(logits, labels, label_smoothing).item()
    headline = dict(top1=hits[1] / n, top5=hits[5] / n, mean_class_accuracy=report.pop("mean_class_accuracy"),
                    loss=loss, **{k: report.pop(k) for k in ("family_accuracy", "direction_accuracy") if k in report})
    return headline, report


def test_line(headline: dict, cfg, single_view_top1: Optional[float]) -> str:
    line = (f"test top1 {100 * headline['top1']:.1f}% | top5 {100 * headline['top5']:.1f}% | mean class accuracy "
            f"{100 * headline['mean_class_accuracy']:.1f}%")
    if single_view_top1 is not None:
        line += (f" ({cfg.test_clips} clips x {cfg.test_crops} crops; single-view top1 "
                 f"{100 * single_view_top1:.1f}%)")
    if "direction_accuracy" in headline:
        line += (f" | motion family {100 * headline['family_accuracy']:.1f}% | direction within family "
                 f"{100 * headline['direction_accuracy']:.1f}%")
    return line


MIX_FLAGS = ("mixup_alpha", "cutmix_alpha", "mixup_prob", "mixup_switch_prob")


class ClipMixer:
    """Mixup and CutMix of a training batch of clips (``timm.data.Mixup``, batch mode: one lambda per batch, each
    clip mixed with its mirror in the batch); labels become soft targets [B, K] that sum to 1.

    timm cuts its CutMix box out of the last two dimensions, so the clips are mixed through a [B, T * C, H, W] view
    of pixel_values [B, T, C, H, W]: the box is the same in every frame and every channel, and Mixup's blend is the
    same for every frame. The soft targets go to the model's own loss, ``classifier.classification_loss``: torch's
    cross-entropy with probability targets is timm's SoftTargetCrossEntropy, and it applies --label_smoothing as
    timm's Mixup would (so Mixup's own smoothing is 0). timm pairs clips, so a batch of odd size is not mixed; its
    labels become one-hot targets, the same loss as hard labels."""

    def __init__(self, cfg, num_classes: int):
        from timm.data import Mixup
        self.num_classes = num_classes
        self.mixup = Mixup(mixup_alpha=cfg.mixup_alpha, cutmix_alpha=cfg.cutmix_alpha, prob=cfg.mixup_prob,
                           switch_prob=cfg.mixup_switch_prob, mode="batch", label_smoothing=0.0,
                           num_classes=num_classes)

    def __call__(self, batch: dict) -> dict:
        clips, labels = batch["pixel_values"].contiguous(), batch["labels"]  # [B, T, C, H, W], [B]
        if len(clips) % 2:
            return dict(batch, labels=torch.nn.functional.one_hot(labels, self.num_classes).float())
        frames_folded = clips.view(len(clips), -1, *clips.shape[-2:])  # [B, T * C, H, W], a view: mixed in place
        _, targets = self.mixup(frames_folded, labels)  # targets [B, K]
        return dict(batch, pixel_values=clips, labels=targets)


def mixing_wanted(cfg) -> bool:
    return bool(cfg.mixup_alpha or cfg.cutmix_alpha) and cfg.mixup_prob > 0


def display_frames(pixel_values: torch.Tensor, spec) -> np.ndarray:
    """A normalised clip [T, 3, H, W] -> uint8 [T, H, W, 3] for drawing (the dataset's mean / std undone)."""
    mean = torch.tensor(spec.mean).view(1, -1, 1, 1)
    std = torch.tensor(spec.std).view(1, -1, 1, 1)
    return ((pixel_values.float().cpu() * std + mean).clamp(0, 1) * 255).round().byte().permute(0, 2, 3, 1).numpy()


def attention_plots(model, test_set, out_dir: str, title: str) -> list[str]:
    """Where they apply (a Transformer fusion; VideoMAE or a timm ViT backbone): the fusion's per-head temporal
    attention and the backbone's attention rollout for the first readable test clip, drawn over its frames, and
    ``attention.json`` with the numbers ([heads, T] and [T, h, w]). Returns the files written."""
    readable = torch.nonzero(test_set.readable()).flatten().tolist()
    if not readable or not hasattr(test_set, "spec"):
        return []
    item = test_set[readable[0]]
    clip = item["pixel_values"]  # [T, 3, S, S]
    device = next(model.parameters()).device
    weights = fusion_attention(model, clip[None].to(device))  # [1, heads, T] or None
    maps = attention_rollout(model, clip[None].to(device))  # [1, T, h, w] or None
    video = test_set.video_id(readable[0])
    frames, written, numbers, title = display_frames(clip, test_set.spec), [], dict(video=video), f"{title} | {video}"
    if weights is not None:
        numbers["fusion_attention"] = weights[0].cpu().tolist()
        written.append(save_figure(plot_fusion_attention(weights[0].cpu().numpy(), frames, title),
                                   os.path.join(out_dir, "fusion_attention.png")))
    if maps is not None:
        numbers["attention_rollout"] = maps[0].cpu().tolist()
        written.append(save_figure(plot_attention_rollout(maps[0].cpu().numpy(), frames, title),
                                   os.path.join(out_dir, "attention_rollout.png")))
    if written:
        written.append(write_json(os.path.join(out_dir, "attention.json"), numbers))
    return written


class ClassificationTask(Task):
    name = "classification"
    flags = MIX_FLAGS  # another task refuses them

    def check(self, cfg) -> None:
        if mixing_wanted(cfg) and (cfg.use_text or cfg.modalities or cfg.model_config):
            raise UsageError("--mixup_alpha / --cutmix_alpha mix the frames only, and this model also reads text or "
                             "audio, which cannot be mixed with them; drop the mixing flags or the other inputs")

    def batch_transform(self, cfg, num_classes: int) -> Optional[Callable[[dict], dict]]:
        """Mixup / CutMix (:class:`ClipMixer`) when asked for; off, with a note, for a dataset whose labels tell
        left from right or forwards from backwards (a CutMix box from a clip moving left in one moving right)."""
        if not mixing_wanted(cfg):
            return None
        if DATASETS.meta(cfg.dataset).get("mirror_classes", False):
            print(f"note: Mixup / CutMix are off for --dataset {cfg.dataset}: its labels tell directions apart, "
                  f"which mixing two clips would blur", file=sys.stderr)
            return None
        return ClipMixer(cfg, num_classes)

    def train_correct(self, out, batch: dict) -> int:
        labels = batch["labels"].to(out.logits.device)
        labels = labels.argmax(-1) if labels.dim() == 2 else labels  # soft targets: the class that weighs most
        return int((out.logits.argmax(-1) == labels).sum())

    def epoch_record(self, loss_sum: float, correct: float, seen: float) -> dict:
        return dict(train_loss=loss_sum / max(seen, 1), train_top1=correct / max(seen, 1))

    def validate(self, model, loader, accelerator, show_progress: bool = False) -> dict:
        val = gather_logits(model, loader, accelerator, "val", show_progress)
        return dict(val_loss=val["loss"], val_top1=val["top1"], val_top5=val["top5"])

    def score(self, record: dict) -> float:
        return record.get("val_top1", record.get("train_top1"))

    def test(self, run: TestRun) -> TestResult:
        """Single-view always; with more than one test view also clips x crops views with averaged logits, which
        then give the headline and per-class numbers. Videos found unreadable in either pass are left out of
        both."""
        cfg, accelerator = run.cfg, run.accelerator
        views = cfg.test_clips * cfg.test_crops
        passes = {"single_view": gather_logits(run.model, run.loader, accelerator, "test", run.show_progress)}
        if views > 1:
            multi_view = run.test_set.with_views(cfg.test_clips, cfg.test_crops)
            loader = accelerator.prepare(make_loader(multi_view, cfg.batch_size, False, cfg.num_workers, cfg.seed))
            passes["multi_view"] = gather_logits(MultiViewClassifier(run.model), loader, accelerator,
                                                 f"test x{views}", run.show_progress)
        keep = run.test_set.readable()
        if not keep.any():
            raise UsageError(f"none of the {len(run.test_set)} test videos could be read: "
                             f"{run.test_set.bad_videos()[0]['reason']} (and the others alike)")
        metrics = {name: class_metrics(result, keep, run.class_names, run.reversal_pairs, cfg.label_smoothing)
                   for name, result in passes.items()}
        headline, report = metrics["multi_view" if views > 1 else "single_view"]
        headline = dict(num_samples=int(keep.sum()), num_bad_videos=int((~keep).sum()), **headline)
        results = {"multi_view": None}
        results.update({name: {k: m[0][k] for k in METRICS} for name, m in metrics.items()})
        single = results["single_view"]["top1"] if views > 1 else None
        return TestResult(headline, dict(class_names=run.class_names, **report), test_line(headline, cfg, single),
                          results)

    def plots(self, run: TestRun, report: dict) -> list[str]:
        """The run's plots and, where they apply, the attention plots (:func:`attention_plots`)."""
        model = run.accelerator.unwrap_model(run.model)
        title = f"{os.path.basename(run.run_dir)} | {run.cfg.vision_model}"
        return write_plots(run.run_dir) + attention_plots(model, run.test_set, os.path.join(run.run_dir, PLOTS_DIR),
                                                          title)

    @torch.no_grad()
    def predict(self, model, batch: dict, accelerator, cfg):
        """Class logits [B, num_classes] (labels not passed)."""
        inputs = model_inputs(model, batch, accelerator.device)
        inputs["labels"] = None
        with accelerator.autocast():
            return model(**inputs).logits

    def infer(self, run: InferenceRun) -> dict:
        """Top-k classes per readable video; accuracy when the inputs have labels."""
        cfg, class_names, dataset = run.cfg, run.class_names, run.dataset
        model = MultiViewClassifier(run.model) if run.views["views"] > 1 else run.model
        result = gather_logits(model, run.loader, run.accelerator, "inference", run.show_progress)
        keep = dataset.readable()
        probs = result["logits"].softmax(-1)
        k = min(cfg.top_k, len(class_names))
        predictions = []
        for i in torch.nonzero(keep).flatten().tolist():
            video_id = dataset.video_id(i)
            p, idx = probs[i].topk(k)
            top = [dict(class_name=class_names[c], probability=round(float(q), 4)) for q, c in zip(p, idx.tolist())]
            label = int(result["labels"][i])
            entry = dict(video=video_id, top_k=top, predicted=top[0]["class_name"])
            if label >= 0:
                entry.update(true_class=class_names[label], correct=top[0]["class_name"] == class_names[label])
            predictions.append(entry)
            shown = ", ".join(f"{t['class_name']} {100 * t['probability']:.1f}%" for t in top)
            print(f"{video_id}: {shown}" + (f"  [true: {class_names[label]}]" if label >= 0 else ""))
        output = dict(checkpoint=run.checkpoint, video_dir=cfg.video_dir, pretrained=run.info["pretrained"],
                      views=run.views, predictions=predictions, bad_videos=dataset.bad_videos())
        labelled = keep & (result["labels"] >= 0)
        if labelled.any():
            headline, report = class_metrics(result, labelled, class_names, None, cfg.label_smoothing)
            output.update(top1=headline["top1"], top5=headline["top5"], num_labelled=int(labelled.sum()),
                          mean_class_accuracy=headline["mean_class_accuracy"], **report)
            print(f"accuracy on {output['num_labelled']} labelled videos: top1 {100 * output['top1']:.1f}% | "
                  f"top5 {100 * output['top5']:.1f}%")
        return output
