"""Self-supervised pretraining as a task: ``python main.py --task pretrain --pretrain_objective mvm|contrastive|both``.

The models and losses are ``models/pretrainer.py``; this module judges them and writes what a pretraining run
leaves behind: ``eval.json`` (test losses with fixed evaluation masks, retrieval, the mask actually used),
``plots/pretraining_curves.png``, ``plots/reconstruction.png`` (original / masked / reconstructed frames) and the
backbone folder (``<run>/backbone``, or ``--export_dir``): ``save_pretrained`` of the encoder, which
``--pretrained PATH`` loads for fine-tuning, with ``--use_lora_vision`` too.
"""
from __future__ import annotations

import math
import os
import time

import torch
import torch.nn.functional as F

from videolab.core.errors import UsageError
from videolab.data.registry import DATASETS
from videolab.evaluation.plots import save_figure
from videolab.export.huggingface import export_backbone
from videolab.models.pretrainer import (EVAL_MASK_SEED, VideoPretrainer, frame_differences, make_mask, patchify,
                                        retrieval_recall, to_unit_range, token_grid, unpatchify)
from videolab.models.registry import BACKBONES
from videolab.tasks.base import Task, TestResult, TestRun, model_inputs

BACKBONE_DIR = "backbone"
PRETRAIN_ONLY_FLAGS = ("pretrain_objective", "mask_ratio", "mask_type", "norm_pix_loss", "contrastive_dim",
                       "mvm_target")


def backbones_for(objective: str) -> list[str]:
    """The backbones (models/registry.py) that can be pretrained with ``objective``."""
    return [name for name in BACKBONES if objective in BACKBONES.meta(name).get("pretrain", ())]


def check_pretrain_flags(cfg) -> None:
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
    mvm, contrastive = backbones_for("mvm"), backbones_for("contrastive")
    if objective in ("mvm", "both") and cfg.vision_model not in backbones_for(objective):
        raise UsageError(f"--pretrain_objective {objective} (masked video modelling) is built on VideoMAE; got "
                         f"--vision_model {cfg.vision_model}. Use --vision_model {' or '.join(mvm)}, or "
                         f"--pretrain_objective contrastive with {' or '.join(contrastive)}")
    if objective == "contrastive" and cfg.vision_model not in contrastive:
        raise UsageError(f"--pretrain_objective contrastive exports a transformers video backbone; got --vision_model "
                         f"{cfg.vision_model}. Use --vision_model {' or --vision_model '.join(contrastive)}")
    if cfg.mvm_target == "frame_difference" and cfg.norm_pix_loss:
        raise UsageError("--mvm_target frame_difference predicts raw differences (static pixels are 0), and "
                         "per-patch normalisation would blow the noise of still patches up; add --norm_pix_loss False")
    if objective in ("contrastive", "both") and "captions" not in DATASETS.meta(cfg.dataset)["provides"]:
        raise UsageError(f"--pretrain_objective {objective} pairs clips with their captions, and --dataset "
                         f"{cfg.dataset} has none; use --pretrain_objective mvm (or the synthetic dataset)")


def result_line(results: dict) -> str:
    parts = [f"test loss {results['loss']:.4f}"]
    if results.get("mvm_loss") is not None:
        parts.append(f"reconstruction (hidden tokens, MSE) {results['mvm_loss']:.4f}")
    retrieval = results.get("retrieval")
    if retrieval:
        parts.append(" ".join(f"{k} {100 * v:.1f}%" for k, v in retrieval.items()))
    return " | ".join(parts)


@torch.no_grad()
def evaluate_pretrainer(cfg, model: VideoPretrainer, loader, num_samples: int, accelerator) -> dict:
    """Test split: mean losses (masks from the fixed evaluation seed) and, with captions, retrieval recall@1/5
    both ways over the whole split. Clips are gathered from every process (``loader`` is prepared)."""
    model = model.eval()
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
    results["num_samples"] = num_samples
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


def write_pretraining_plots(model: VideoPretrainer, test_set, history: list, run_dir: str, cfg
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


class PretrainingTask(Task):
    name = "pretraining"
    flags = PRETRAIN_ONLY_FLAGS
    output_name = "pretraining results"

    def check(self, cfg) -> None:
        check_pretrain_flags(cfg)

    def run_name(self, cfg) -> str:
        return f"pretrain-{cfg.pretrain_objective}-{cfg.vision_model}-{time.strftime('%Y%m%d-%H%M%S')}"

    def test(self, run: TestRun) -> TestResult:
        model = run.accelerator.unwrap_model(run.model)
        results = evaluate_pretrainer(run.cfg, model, run.loader, len(run.test_set), run.accelerator)
        return TestResult(results, dict(objective=run.cfg.pretrain_objective), result_line(results))

    def finish(self, run: TestRun, report: dict) -> dict:
        """The backbone folder (``--export_dir``, else ``<run>/backbone``), for ``--pretrained``."""
        if not run.accelerator.is_main_process:
            return {}
        cfg, model = run.cfg, run.accelerator.unwrap_model(run.model)
        folder = cfg.export_dir or os.path.join(run.run_dir, BACKBONE_DIR)
        test = {k: v for k, v in report.items() if k in ("loss", "mvm_loss", "contrastive_loss", "retrieval", "mask",
                                                          "num_samples")}
        files = export_backbone(model.encoder, folder, cfg.image_size, model.mean, model.std, dict(
            objective=cfg.pretrain_objective, vision_model=cfg.vision_model, model_size=cfg.model_size,
            num_frames=cfg.num_frames, image_size=cfg.image_size, mask_type=cfg.mask_type, mask_ratio=cfg.mask_ratio,
            norm_pix_loss=cfg.norm_pix_loss, started_from=report["weights_source"], source_run=run.run_dir,
            test=test), settings=cfg.to_dict(), report=report)
        print(f"backbone folder: {folder} ({', '.join(files)}) | fine-tune it with: python main.py --pretrained "
              f"{folder} --vision_model {cfg.vision_model} --model_size {cfg.model_size} --num_frames "
              f"{cfg.num_frames} --image_size {cfg.image_size} [--use_lora_vision True]")
        return dict(backbone_dir=folder)

    def plots(self, run: TestRun, report: dict) -> list[str]:
        return write_pretraining_plots(run.accelerator.unwrap_model(run.model), run.test_set, report["history"],
                                       run.run_dir, run.cfg)
