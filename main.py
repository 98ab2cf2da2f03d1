"""Train a video model: ``python main.py [flags]`` (see ``--help``; defaults in config_file.yaml).

With no flags: generate the synthetic dataset if it is missing, train the default model (a tiny VideoMAE),
evaluate on the test split, save checkpoints under ``checkpoints/<run_name>/{best,last}``, write ``eval.json``
and PNG plots there, append a row to ``results/summary.csv``, and print where everything went.

``python main.py --eval_only True --checkpoint checkpoints/<run>/best`` evaluates a saved checkpoint on the test
split without training and writes the same report beside the checkpoint (in ``checkpoints/<run>/``).
"""
from __future__ import annotations

import os
import shutil
import time
from typing import Optional, Sequence

import torch
import yaml
from accelerate.utils import set_seed

import dummy_data
from build_model import MultiViewClassifier, build_model, rebuild_from_checkpoint
from checkpointing import (BEST_DIR, commit_folder, is_checkpoint, load_weights, new_temp_folder, read_run_config,
                           resume_folder, write_json_atomic)
from inference import merge_with_checkpoint
from language import hub_offline_mode
from reporting import (append_summary_row, class_metrics, environment_info, measure_speed, peak_memory,
                       reset_peak_memory, summary_row, timestamp, view_protocol)
from settings import IncompleteResult, Settings, UsageError, resolve, run_cli, settings_from_dict
from train_code import (caption_report, check_resume, check_tracker_installed, evaluate, generate_captions,
                        make_accelerator, predict_batch, progress_enabled, train)
from visualize_results import write_plots
from VLoader import (build_datasets, dataset_class_names, is_synthetic, make_loader, read_annotations,
                     read_dataset_meta)

# accelerate's project name: for TensorBoard the sub-folder of the run folder, for W&B the project
TRACKER_PROJECT = {"tensorboard": "tensorboard", "wandb": "video-understanding"}


def ensure_dataset(cfg: Settings) -> None:
    """Generate the synthetic dataset at cfg.data_root if it is not there (classes.json marks a finished one).
    Real datasets (ucf101, videofolder) are never generated: a missing root is an error when they are read."""
    if not is_synthetic(cfg):
        return
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


def training_texts(cfg: Settings) -> list[str]:
    """The texts an offline captioner's tokenizer is trained on: the training captions (or QA answers/questions)."""
    if cfg.dataset == "qa_json":
        from sft_data import training_texts as qa_texts
        return qa_texts(cfg)
    return [r["caption"] for r in read_annotations(cfg.data_root, "train")]


def default_run_name(cfg: Settings) -> str:
    part = cfg.fusion if cfg.vision_model not in ("timesformer", "videomae") else cfg.model_size
    return f"{cfg.vision_model}-{part}-{time.strftime('%Y%m%d-%H%M%S')}"


def main(argv: Optional[Sequence[str]] = None) -> dict:
    cli, explicit, _ = resolve(argv, "main.py", __doc__.splitlines()[0])
    from pretraining import check_supervised_flags, run_pretraining  # issue 8: --task pretrain
    if cli.task == "pretrain":
        return run_pretraining(cli, explicit)
    check_supervised_flags(explicit)
    if cli.eval_only:
        return evaluate_checkpoint(cli, explicit)
    return train_and_evaluate(cli, explicit)


def train_and_evaluate(cfg: Settings, explicit: set[str]) -> dict:
    if "fusion" in explicit and cfg.vision_model in ("timesformer", "videomae") and not cfg.modalities \
            and not cfg.model_config:
        raise UsageError(f"--fusion applies to per-frame (timm) backbones; {cfg.vision_model} models time itself. "
                         f"Drop --fusion or choose e.g. --vision_model vit_small_patch16_224")
    check_tracker_installed(cfg.report_to)
    resume_from = resume_folder(cfg.resume_from_checkpoint, cfg.output_dir, cfg.run_name) \
        if cfg.resume_from_checkpoint else None
    run_dir = run_folder(cfg, resume_from)
    run_name = os.path.basename(run_dir)
    accelerator = make_run_accelerator(cfg, run_dir)
    memory_from_start = reset_peak_memory(accelerator.device)
    with accelerator.main_process_first():  # the main process generates a missing dataset, the others wait
        ensure_dataset(cfg)
    class_names = dataset_class_names(cfg)
    if resume_from:  # before building anything: an unsafe, corrupt or incompatible checkpoint stops here
        check_resume(cfg, resume_from, class_names, accelerator)
    caption_texts = training_texts(cfg) if cfg.captioning else None
    set_seed(cfg.seed)  # the same initial weights on every process and in every run with this seed
    built = build_model(cfg, len(class_names), caption_texts=caption_texts, verbose=accelerator.is_main_process)
    data = build_datasets(cfg, built.backbone.mean, built.backbone.std)
    os.makedirs(run_dir, exist_ok=True)
    if accelerator.is_main_process:
        with open(os.path.join(run_dir, "settings.yaml"), "w") as fh:
            yaml.safe_dump(cfg.to_dict(), fh, sort_keys=False)
        if resume_from:
            carry_best(resume_from, run_dir)
    start_trackers(accelerator, cfg, run_name, run_dir)
    run_config = dict(settings=cfg.to_dict(), model_info=built.info, class_names=class_names,
                      dataset=dict(name=cfg.dataset, root=cfg.data_root), torch_version=torch.__version__)
    accelerator.print(f"run folder: {run_dir} | train {len(data.train)} / val {len(data.val) if data.val else 0} / "
                      f"test {len(data.test)} clips | device {accelerator.device} | precision {cfg.mixed_precision}"
                      + (f" | {accelerator.num_processes} processes" if accelerator.num_processes > 1 else ""))
    t0 = time.time()
    result = train(cfg, built, data, run_dir, run_config, accelerator, resume_from)
    train_seconds = time.time() - t0

    built.model.load_state_dict(load_weights(result.best_dir))  # test with the best checkpoint's weights
    run = dict(mode="train", checkpoint=result.best_dir, checkpoint_epoch=read_run_config(result.best_dir)["epoch"],
               train_seconds=round(train_seconds, 1), history=result.history,
               skipped_in_training=[v for d in (data.train, data.val) if d is not None for v in d.bad_videos()])
    eval_json = evaluate_and_report(cfg, built.model, built.info, data.test, class_names, run_dir, run, accelerator,
                                    memory_from_start)
    if accelerator.is_main_process:
        export(cfg, built.model, built.info, class_names)
        print(f"done in {train_seconds:.0f}s | best checkpoint: {result.best_dir} | last: {result.last_dir} | "
              f"metrics: {os.path.join(run_dir, 'metrics.jsonl')}")
    return eval_json


def run_folder(cfg: Settings, resume_from: Optional[str]) -> str:
    """<output_dir>/<run_name>; a resumed run without --run_name continues in its checkpoint's run folder."""
    if resume_from and not cfg.run_name:
        return os.path.dirname(os.path.normpath(resume_from))
    return os.path.join(cfg.output_dir, cfg.run_name or default_run_name(cfg))


def carry_best(resume_from: str, run_dir: str) -> None:
    """A run resumed into a new folder takes the source run's best/ along, so its best/ is the best of the whole
    run even when no later epoch beats it."""
    source = os.path.join(os.path.dirname(os.path.normpath(resume_from)), BEST_DIR)
    target = os.path.join(run_dir, BEST_DIR)
    if is_checkpoint(source) and not os.path.exists(target):
        tmp = new_temp_folder(target)
        shutil.copytree(source, tmp, dirs_exist_ok=True)
        commit_folder(tmp, target)


def export(cfg: Settings, model, info: dict, class_names: list) -> None:
    """--export_dir: the model in the Hugging Face format (hf_export.py)."""
    if not cfg.export_dir:
        return
    if cfg.modalities or cfg.model_config:  # issue 10: the composed model is a PreTrainedModel already
        from compose import save_composed
        written = save_composed(model, class_names, cfg.export_dir)
        print(f"exported (Hugging Face format) to {cfg.export_dir}: {', '.join(written)}")
        return
    from hf_export import export_pretrained
    written = export_pretrained(model, info, class_names, cfg, cfg.export_dir, merge_lora=cfg.merge_lora)
    print(f"exported (Hugging Face format) to {cfg.export_dir}: {', '.join(written)}")


def evaluate_checkpoint(cli: Settings, explicit: set[str]) -> dict:
    """--eval_only: rebuild the model from the checkpoint alone and evaluate it on the test split.

    Model flags must agree with the checkpoint (as in inference.py); run-time flags apply; ``--data_root`` may point
    at another copy of the dataset (its classes must match the checkpoint's). The report goes to the run folder
    that holds the checkpoint (``checkpoints/<run>/best`` -> ``checkpoints/<run>/eval.json``).
    """
    folder = checkpoint_to_evaluate(cli)
    run_config = read_run_config(folder)
    moved = {"data_root", "split_dir"} & explicit  # where the data is may change; what it is may not
    cfg = merge_with_checkpoint(settings_from_dict(run_config["settings"]), cli, explicit - moved, folder)
    for key in moved:
        setattr(cfg, key, getattr(cli, key))
    check_tracker_installed(cfg.report_to)
    run_dir = os.path.dirname(os.path.normpath(folder))
    accelerator = make_run_accelerator(cfg, run_dir)
    memory_from_start = reset_peak_memory(accelerator.device)
    ensure_dataset(cfg)
    class_names = run_config["class_names"]
    check_same_classes(cfg, class_names, folder)
    built = rebuild_from_checkpoint(cfg, run_config, folder)
    test_set = build_datasets(cfg, built.backbone.mean, built.backbone.std, parts=("test",)).test
    start_trackers(accelerator, cfg, os.path.basename(run_dir), run_dir)
    print(f"evaluating {folder} on {cfg.data_root} (test, {len(test_set)} clips) | device {accelerator.device}")
    run = dict(mode="eval_only", checkpoint=folder, checkpoint_epoch=run_config.get("epoch"), train_seconds=None,
               history=run_config.get("history", []), skipped_in_training=None)
    report = evaluate_and_report(cfg, built.model, run_config["model_info"], test_set, class_names, run_dir, run,
                                 accelerator, memory_from_start)
    if accelerator.is_main_process:
        export(cfg, built.model, run_config["model_info"], class_names)
    return report


def checkpoint_to_evaluate(cli: Settings) -> str:
    if not cli.checkpoint:
        raise UsageError("--eval_only True needs --checkpoint PATH, a checkpoint folder such as "
                         "checkpoints/<run>/best")
    if not os.path.isdir(cli.checkpoint):
        raise UsageError(f"--checkpoint {cli.checkpoint!r} does not exist; pass a checkpoint folder such as "
                         f"checkpoints/<run>/best")
    return cli.checkpoint


def check_same_classes(cfg: Settings, class_names: list, folder: str) -> None:
    found = dataset_class_names(cfg)
    if found != class_names:
        raise UsageError(f"the dataset at {cfg.data_root!r} has classes {found}, but {folder} was trained on "
                         f"{class_names}; pass --data_root with the dataset it was trained on")


def make_run_accelerator(cfg: Settings, run_dir: str):
    """The run's Accelerator, with the --report_to tracker writing under the run folder."""
    log_with = None if cfg.report_to == "none" else cfg.report_to
    return make_accelerator(cfg, log_with=log_with, logging_dir=run_dir if log_with else None)


def start_trackers(accelerator, cfg: Settings, run_name: str, run_dir: str) -> None:
    if cfg.report_to == "none":
        return
    config = {k: "none" if v is None else v for k, v in cfg.to_dict().items()}  # TensorBoard hparams refuse None
    accelerator.init_trackers(TRACKER_PROJECT[cfg.report_to], config=config,
                              init_kwargs={"wandb": {"name": run_name, "dir": run_dir}})


def evaluate_and_report(cfg: Settings, model, info: dict, test_set, class_names: list, run_dir: str, run: dict,
                        accelerator, memory_from_start: bool) -> dict:
    """Test metrics + speed + memory + environment -> <run_dir>/eval.json, a summary.csv row, plots, trackers.

    Test videos that cannot be read are left out of every metric and listed under ``bad_videos``; the report is
    still written, then IncompleteResult (exit code 3) says so.
    """
    model = model.to(accelerator.device).eval()
    plain = make_loader(test_set, cfg.batch_size, False, cfg.num_workers, cfg.seed)
    loader = accelerator.prepare(plain)  # sharded over the processes; evaluation gathers every clip once
    views = view_protocol(cfg.test_clips, cfg.test_crops, cfg.sampling, cfg.num_frames, cfg.frame_stride)
    t0 = time.time()
    if cfg.captioning:
        headline, details, line = evaluate_captioner(cfg, model, loader, accelerator)
    else:
        headline, details, line, results = evaluate_classifier(cfg, model, test_set, loader, accelerator,
                                                               class_names, views["views"])
        views.update(results)
    eval_seconds = time.time() - t0
    speed = measure_speed(lambda batch: predict_batch(model, batch, accelerator, cfg), next(iter(plain)),
                          accelerator.device, cfg.speed_repeats)
    history = run["history"]
    bad = dict(test=test_set.bad_videos(), skipped_in_training=run["skipped_in_training"])
    report = dict(
        run_dir=run_dir, mode=run["mode"], task="captioning" if cfg.captioning else "classification",
        split="test", checkpoint=run["checkpoint"], finished=timestamp(), **headline, views=views,
        bad_videos=bad, params_total=info["params_total"], params_trainable=info["params_trainable"], **speed,
        peak_memory=peak_memory(accelerator.device, memory_from_start),
        checkpoint_epoch=run["checkpoint_epoch"], train_seconds=run["train_seconds"],
        eval_seconds=round(eval_seconds, 2), fusion=info["fusion"], pretrained=info["pretrained"],
        weights_source=info["weights_source"], hf_hub_offline=hub_offline_mode(),
        **{k: info[k] for k in ("language_model", "language_model_source", "language_model_pretrained")
           if k in info},
        **details, history=history, settings=cfg.to_dict(), environment=environment_info(accelerator.device))
    if accelerator.is_main_process:
        write_report(cfg, report, run_dir, line)
    accelerator.log(tracker_scalars(report), step=history[-1]["step"] if history else 0)
    accelerator.end_training()
    if bad["test"]:
        raise IncompleteResult(f"{len(bad['test'])} test video(s) could not be read and are not in the metrics: "
                               f"{', '.join(b['video'] for b in bad['test'][:5])}"
                               f"{' ...' if len(bad['test']) > 5 else ''} (all listed with the reason under "
                               f"bad_videos in {os.path.join(run_dir, 'eval.json')})", report)
    return report


def write_report(cfg: Settings, report: dict, run_dir: str, line: str) -> None:
    eval_path = os.path.join(run_dir, "eval.json")
    write_json_atomic(eval_path, report)
    if cfg.summary_csv:
        append_summary_row(cfg.summary_csv, summary_row(report))
    plots = write_plots(run_dir)
    print(line)
    latency, memory = report["latency"], report["peak_memory"]
    if latency.get("ms_per_clip") is not None:
        print(f"speed: {latency['ms_per_clip']:.1f} ms per clip (batch 1) | "
              f"{report['throughput']['clips_per_s']:.1f} clips/s (batch {report['throughput']['batch_size']}) | "
              f"peak RSS {memory['cpu_peak_rss_mib']:.0f} MiB")
    if not report["pretrained"]:
        print("note: the backbone started from RANDOM weights (\"pretrained\": false in eval.json)")
    if report.get("language_model_pretrained") is False:
        print("note: the language model started from RANDOM weights (\"language_model_pretrained\": false)")
    table = f" | results table: {cfg.summary_csv}" if cfg.summary_csv else ""
    print(f"evaluation: {eval_path} | plots: {', '.join(os.path.basename(p) for p in plots)} in "
          f"{os.path.join(run_dir, 'plots')}{table}")


def tracker_scalars(report: dict) -> dict[str, float]:
    """The report's headline numbers, as ``test/<name>`` scalars for TensorBoard / W&B."""
    values = {k: report.get(k) for k in ("top1", "top5", "mean_class_accuracy", "loss")}
    values.update(report.get("metrics") or {})
    values.update(latency_ms_per_clip=report["latency"].get("ms_per_clip"),
                  throughput_clips_per_s=report["throughput"].get("clips_per_s"))
    return {f"test/{k}": float(v) for k, v in values.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}


def evaluate_classifier(cfg: Settings, model, test_set, loader, accelerator, class_names: list, num_views: int):
    """(headline numbers, per-class details, one summary line, {single_view, multi_view} results).

    Single-view (``loader``) always; with more than one test view also clips x crops views with averaged logits,
    which then give the headline and per-class numbers. Videos found unreadable in either pass are left out of
    both.
    """
    show = progress_enabled(cfg) and accelerator.is_main_process
    passes = {"single_view": evaluate(model, loader, accelerator, "test", show)}
    if num_views > 1:
        multi_view = test_set.with_views(cfg.test_clips, cfg.test_crops)
        multi_loader = accelerator.prepare(make_loader(multi_view, cfg.batch_size, False, cfg.num_workers, cfg.seed))
        passes["multi_view"] = evaluate(MultiViewClassifier(model), multi_loader, accelerator, f"test x{num_views}",
                                        show)
    keep = test_set.readable()
    if not keep.any():
        raise UsageError(f"none of the {len(test_set)} test videos could be read: "
                         f"{test_set.bad_videos()[0]['reason']} (and the others alike)")
    pairs = read_dataset_meta(cfg.data_root).get("reversal_pairs") if is_synthetic(cfg) else None
    metrics = {name: class_metrics(result, keep, class_names, pairs, cfg.label_smoothing)
               for name, result in passes.items()}
    headline, report = metrics["multi_view" if num_views > 1 else "single_view"]
    headline = dict(num_samples=int(keep.sum()), num_bad_videos=int((~keep).sum()), **headline)
    results = {"multi_view": None}
    results.update({name: {k: m[0][k] for k in ("top1", "top5", "mean_class_accuracy", "loss")}
                    for name, m in metrics.items()})
    line = (f"test top1 {100 * headline['top1']:.1f}% | top5 {100 * headline['top5']:.1f}% | mean class accuracy "
            f"{100 * headline['mean_class_accuracy']:.1f}%")
    if num_views > 1:
        line += (f" ({cfg.test_clips} clips x {cfg.test_crops} crops; single-view top1 "
                 f"{100 * results['single_view']['top1']:.1f}%)")
    if "direction_accuracy" in headline:
        line += (f" | motion family {100 * headline['family_accuracy']:.1f}% | direction within family "
                 f"{100 * headline['direction_accuracy']:.1f}%")
    return headline, dict(class_names=class_names, **report), line, results


def evaluate_captioner(cfg: Settings, model, loader, accelerator):
    """(headline numbers with the caption metrics, generation settings and captions, one summary line)."""
    show = progress_enabled(cfg) and accelerator.is_main_process
    loss = evaluate(model, loader, accelerator, "test loss", show)["loss"]
    generated = generate_captions(model, loader, accelerator, cfg, "test captions", show)
    examples = [dict(video=v, generated=c, reference=r) for v, c, r in
                zip(generated["video_ids"], generated["captions"], generated["references"])]
    headline = dict(num_samples=len(examples), loss=loss, **caption_report(generated))
    details = dict(generation=dict(num_beams=cfg.num_beams, max_new_tokens=cfg.max_new_tokens,
                                   no_repeat_ngram_size=cfg.no_repeat_ngram_size,
                                   repetition_penalty=cfg.repetition_penalty),
                   captions=examples)
    metrics = headline.get("metrics") or {}
    shown = " | ".join(f"{k} {v:.3f}" for k, v in metrics.items() if isinstance(v, float))
    line = f"test caption loss {loss:.4f} | {shown}" + "".join(f"\nexample: {e['generated']!r} (reference: "
                                                               f"{e['reference']!r})" for e in examples[:3])
    return headline, details, line


if __name__ == "__main__":
    raise SystemExit(run_cli(main))
