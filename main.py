"""Train a video model: ``python main.py [flags]`` (see ``--help``; defaults in config_file.yaml).

With no flags: generate the synthetic dataset if it is missing, train the default model (a tiny TimeSformer),
evaluate on the test split, save checkpoints under ``checkpoints/<run_name>/{best,last}``, write
``eval.json``, and print where everything went.
"""
from __future__ import annotations

import os
import time
from typing import Optional, Sequence

import torch
import yaml

import dummy_data
from build_model import build_model
from checkpointing import load_weights, write_json_atomic
from settings import Settings, UsageError, resolve, run_cli
from train_code import (caption_report, classification_report, evaluate, generate_captions, make_accelerator,
                        progress_enabled, train)
from VLoader import build_datasets, make_loader, read_annotations, read_class_names, read_dataset_meta


def ensure_dataset(cfg: Settings) -> None:
    """Generate the synthetic dataset at cfg.data_root if it is not there (classes.json marks a finished one)."""
    if dummy_data.dataset_is_complete(cfg.data_root):
        task = read_dataset_meta(cfg.data_root).get("task", "motion")
        if task != cfg.synthetic_task:
            raise UsageError(f"{cfg.data_root!r} holds the synthetic '{task}' task, not '{cfg.synthetic_task}'; pass "
                             f"--data_root with another folder (it is generated there), e.g. --data_root "
                             f"synthetic_{cfg.synthetic_task}")
        return
    print(f"synthetic dataset not found at {cfg.data_root!r}: generating it (python dummy_data.py does the same)")
    dummy_data.write_dataset(cfg.data_root, num_frames=max(cfg.num_frames, 2), size=max(cfg.image_size, 16),
                             seed=cfg.seed, quiet=not progress_enabled(cfg), task=cfg.synthetic_task)


def default_run_name(cfg: Settings) -> str:
    part = cfg.fusion if cfg.vision_model not in ("timesformer", "videomae") else cfg.model_size
    return f"{cfg.vision_model}-{part}-{time.strftime('%Y%m%d-%H%M%S')}"


def main(argv: Optional[Sequence[str]] = None) -> dict:
    cfg, explicit, _ = resolve(argv, "main.py", __doc__.splitlines()[0])
    if "fusion" in explicit and cfg.vision_model in ("timesformer", "videomae"):
        raise UsageError(f"--fusion applies to per-frame (timm) backbones; {cfg.vision_model} models time itself. "
                         f"Drop --fusion or choose e.g. --vision_model vit_small_patch16_224")
    accelerator = make_accelerator(cfg)
    ensure_dataset(cfg)
    class_names = read_class_names(cfg.data_root)
    caption_texts = [r["caption"] for r in read_annotations(cfg.data_root, "train")] if cfg.captioning else None
    built = build_model(cfg, len(class_names), caption_texts=caption_texts)
    data = build_datasets(cfg, built.backbone.mean, built.backbone.std)
    run_name = cfg.run_name or default_run_name(cfg)
    run_dir = os.path.join(cfg.output_dir, run_name)
    os.makedirs(run_dir, exist_ok=True)
    with open(os.path.join(run_dir, "settings.yaml"), "w") as fh:
        yaml.safe_dump(cfg.to_dict(), fh, sort_keys=False)
    run_config = dict(settings=cfg.to_dict(), model_info=built.info, class_names=class_names,
                      dataset=dict(name=cfg.dataset, root=cfg.data_root), torch_version=torch.__version__)
    print(f"run folder: {run_dir} | train {len(data.train)} / val {len(data.val) if data.val else 0} / "
          f"test {len(data.test)} clips | device {accelerator.device} | precision {cfg.mixed_precision}")
    t0 = time.time()
    result = train(cfg, built, data, run_dir, run_config, accelerator)
    train_seconds = time.time() - t0

    # test with the best checkpoint's weights
    model = built.model
    model.load_state_dict(load_weights(result.best_dir))
    model = model.to(accelerator.device)
    test_loader = make_loader(data.test, cfg.batch_size, False, cfg.num_workers, cfg.seed)
    common = dict(split="test", checkpoint=result.best_dir, train_seconds=round(train_seconds, 1),
                  pretrained=built.info["pretrained"], weights_source=built.info["weights_source"],
                  params_total=built.info["params_total"], params_trainable=built.info["params_trainable"],
                  **{k: built.info[k] for k in ("language_model", "language_model_source",
                                                "language_model_pretrained") if k in built.info},
                  history=result.history, settings=cfg.to_dict())
    if cfg.captioning:
        eval_json, line = evaluate_captioner(cfg, model, test_loader, accelerator, common)
    else:
        eval_json, line = evaluate_classifier(cfg, model, test_loader, accelerator, common, class_names)
    if accelerator.is_main_process:
        write_json_atomic(os.path.join(run_dir, "eval.json"), eval_json)
        print(line)
        if not built.info["pretrained"]:
            print("note: the backbone started from RANDOM weights (\"pretrained\": false in eval.json)")
        if built.info.get("language_model_pretrained") is False:
            print("note: the language model started from RANDOM weights (\"language_model_pretrained\": false)")
        print(f"done in {train_seconds:.0f}s | best checkpoint: {result.best_dir} | last: {result.last_dir} | "
              f"metrics: {os.path.join(run_dir, 'metrics.jsonl')} | evaluation: {os.path.join(run_dir, 'eval.json')}")
    return eval_json


def evaluate_classifier(cfg: Settings, model, loader, accelerator, common: dict, class_names: list):
    test = evaluate(model, loader, accelerator, "test", progress_enabled(cfg))
    pairs = read_dataset_meta(cfg.data_root).get("reversal_pairs")
    report = classification_report(test["preds"], test["labels"], class_names, pairs)
    eval_json = dict(common, num_samples=test["num_samples"], top1=test["top1"], top5=test["top5"],
                     loss=test["loss"], **report)
    line = f"test top1 {100 * test['top1']:.1f}% | top5 {100 * test['top5']:.1f}%"
    if "direction_accuracy" in report:
        line += (f" | motion family {100 * report['family_accuracy']:.1f}% | direction within family "
                 f"{100 * report['direction_accuracy']:.1f}%")
    return eval_json, line


def evaluate_captioner(cfg: Settings, model, loader, accelerator, common: dict):
    loss = evaluate(model, loader, accelerator, "test loss", progress_enabled(cfg))["loss"]
    generated = generate_captions(model, loader, accelerator, cfg, "test captions", progress_enabled(cfg))
    report = caption_report(generated)
    examples = [dict(video=v, generated=c, reference=r) for v, c, r in
                zip(generated["video_ids"], generated["captions"], generated["references"])]
    eval_json = dict(common, num_samples=len(examples), loss=loss, **report,
                     generation=dict(num_beams=cfg.num_beams, max_new_tokens=cfg.max_new_tokens,
                                     no_repeat_ngram_size=cfg.no_repeat_ngram_size,
                                     repetition_penalty=cfg.repetition_penalty),
                     captions=examples)
    metrics = report.get("metrics") or {}
    shown = " | ".join(f"{k} {v:.3f}" for k, v in metrics.items() if isinstance(v, float))
    line = f"test caption loss {loss:.4f} | {shown}" + "".join(f"\nexample: {e['generated']!r} (reference: "
                                                               f"{e['reference']!r})" for e in examples[:3])
    return eval_json, line


if __name__ == "__main__":
    raise SystemExit(run_cli(main))
