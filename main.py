"""Train a video model: ``python main.py [flags]`` (see ``--help``; defaults in config_file.yaml).

With no flags: generate the synthetic dataset if it is missing, train the default model (a tiny VideoMAE),
evaluate on the test split, save checkpoints under ``checkpoints/<run_name>/{best,last}``, write ``eval.json``
and PNG plots there, append a row to ``results/summary.csv``, and print where everything went.
``--task pretrain`` pretrains a backbone the same way (self-supervised, labels ignored).

``python main.py --eval_only True --checkpoint checkpoints/<run>/best`` evaluates a saved checkpoint on the test
split without training and writes the same report beside the checkpoint (in ``checkpoints/<run>/``).
"""
from __future__ import annotations

import contextlib
import os
import shutil
from typing import Optional, Sequence

from videolab.cli import resolve, run_cli


def main(argv: Optional[Sequence[str]] = None) -> dict:
    cli, explicit, ns = resolve(argv, "main.py", __doc__.splitlines()[0])
    import build_model  # after parsing: --help and flag mistakes answer before torch is imported
    from videolab.core.runs import check_run_outputs
    cfg = build_model.resolve_settings(cli)
    build_model.check_settings(cfg, explicit)
    check_run_outputs(cfg)
    if cfg.eval_only:
        return evaluate_checkpoint(cli, explicit)
    chosen = {k: f"settings file {ns.config_file}" for k in ns.config_keys}
    chosen.update({k: "flag" for k in explicit})
    return train_and_evaluate(cfg, chosen)


def train_and_evaluate(cfg, chosen: Optional[dict] = None) -> dict:
    """Build the data and the model the settings describe, train, test the best checkpoint, report, export.

    ``chosen``: the settings the user set and where ({name: "flag" | "settings file F"}); a precision or
    accumulation not among them comes from ``accelerate launch`` when it was given one (runtime.accelerate_values).
    """
    import build_model
    from videolab.core.runs import launch_rank, own_run_folder, resume_folder, run_folder
    from videolab.core.runtime import accelerate_values, check_tracker_installed

    check_tracker_installed(cfg.report_to)
    cfg, sources = accelerate_values(cfg, chosen or {})
    if any(source.startswith("accelerate") for source in sources.values()):
        build_model.check_settings(cfg, set(chosen or ()))  # a launcher's precision must suit the model too
    task = build_model.task_of(cfg)
    resume_from = resume_folder(cfg.resume_from_checkpoint, cfg.output_dir, cfg.run_name) \
        if cfg.resume_from_checkpoint else None
    run_dir = run_folder(cfg.output_dir, cfg.run_name, resume_from, task.run_name(cfg))
    # one process at a time per run folder, and an existing run only when resumed or --overwrite
    with own_run_folder(run_dir, resume_from, cfg.overwrite, main_process=launch_rank() == 0):
        return train_in_folder(cfg, sources, resume_from, run_dir)


def train_in_folder(cfg, sources: dict, resume_from: Optional[str], run_dir: str) -> dict:
    """train_and_evaluate in the run folder it owns (``run_dir``)."""
    import torch
    from accelerate.utils import set_seed

    import build_model
    import train_code
    import VLoader
    from videolab.core.files import write_text
    from videolab.core.runtime import progress_enabled
    from videolab.evaluation.reports import reset_peak_memory

    task, kind = build_model.task_of(cfg), build_model.MODEL_KINDS.meta(build_model.kind_name(cfg))
    accelerator = train_code.make_run_accelerator(cfg, run_dir, kind.get("unused_parameters", False))
    memory_from_start = reset_peak_memory(accelerator.device)
    with accelerator.main_process_first():  # the main process generates a missing dataset, the others wait
        VLoader.ensure_dataset(cfg, quiet=not progress_enabled(cfg))
    class_names = VLoader.dataset_class_names(cfg)
    if resume_from:  # before building anything: an unsafe, corrupt or incompatible checkpoint stops here
        train_code.check_resume(cfg, resume_from, class_names, accelerator)
    texts = VLoader.tokenizer_texts(cfg, kind["texts"])
    set_seed(cfg.seed)  # the same initial weights on every process and in every run with this seed
    built = build_model.build_model(cfg, len(class_names), texts=texts, verbose=accelerator.is_main_process)
    data = VLoader.build_datasets(cfg, built.backbone.mean, built.backbone.std, modalities=built.modalities)
    os.makedirs(run_dir, exist_ok=True)
    if accelerator.is_main_process:
        import yaml
        write_text(os.path.join(run_dir, "settings.yaml"), yaml.safe_dump(cfg.to_dict(), sort_keys=False))
        if resume_from:
            carry_best(resume_from, run_dir)
    train_code.start_trackers(accelerator, cfg, os.path.basename(run_dir), run_dir)
    run_config = dict(settings=cfg.to_dict(), settings_sources=sources, model_info=built.info, class_names=class_names,
                      dataset=dict(name=cfg.dataset, root=cfg.data_root), torch_version=torch.__version__)
    accelerator.print(run_banner(cfg, task, data, run_dir, accelerator, sources))
    result = train_code.train(cfg, built, data, run_dir, run_config, accelerator, resume_from)
    train_seconds = result.train_seconds  # every session of the run: a resumed run counts the earlier ones too

    built, best_config = load_best(cfg, built, result.best_dir, accelerator)  # test the best checkpoint
    run = dict(mode="train", checkpoint=result.best_dir, checkpoint_epoch=best_config["epoch"],
               train_seconds=train_seconds, train_time_breakdown=result.time_breakdown, settings_sources=sources,
               history=result.history,
               skipped_in_training=[v for d in (data.train, data.val) if d is not None for v in d.bad_videos()])
    report = train_code.test_and_report(cfg, built, data.test, class_names, run_dir, run, accelerator,
                                        memory_from_start, VLoader.reversal_pairs(cfg))
    if accelerator.is_main_process:
        build_model.export_model(cfg, built, class_names, report)
        print(f"done in {train_seconds:.0f}s | best checkpoint: {result.best_dir} | last: {result.last_dir} | "
              f"metrics: {os.path.join(run_dir, 'metrics.jsonl')}")
    return report


def run_banner(cfg, task, data, run_dir: str, accelerator, sources: dict) -> str:
    """One line: where the run goes, what it trains on, and how it runs (what ``accelerate launch`` set included)."""
    from videolab.core.runtime import is_sharded

    launched = [k for k, v in sources.items() if v.startswith("accelerate")]
    parts = [f"run folder: {run_dir}", task.name,
             f"train {len(data.train)} / val {len(data.val) if data.val else 0} / test {len(data.test)} clips",
             f"device {accelerator.device}", f"precision {cfg.mixed_precision}"]
    if cfg.gradient_accumulation_steps > 1:
        parts.append(f"accumulation {cfg.gradient_accumulation_steps}")
    if accelerator.num_processes > 1:
        parts.append(f"{accelerator.num_processes} processes")
    if is_sharded(accelerator):
        parts.append(accelerator.distributed_type.value)
    if launched:
        parts.append(f"from accelerate launch: {', '.join(launched)}")
    return " | ".join(parts)


def load_best(cfg, built, best_dir: str, accelerator) -> tuple:
    """The model with the best checkpoint's weights (FSDP: an unsharded copy, rebuilt on every process) and that
    checkpoint's run_config."""
    import build_model
    from videolab.core.checkpoints import load_weights, read_run_config
    from videolab.core.runtime import is_sharded

    best_config = read_run_config(best_dir)
    if is_sharded(accelerator):
        return build_model.rebuild_from_checkpoint(cfg, best_config, best_dir), best_config
    built.model.load_state_dict(load_weights(best_dir))
    return built, best_config


def carry_best(resume_from: str, run_dir: str) -> None:
    """A run resumed into a new folder takes the source run's best/ along, so its best/ is the best of the whole
    run even when no later epoch beats it."""
    from videolab.core.checkpoints import BEST_DIR, is_checkpoint
    from videolab.core.files import atomic_folder
    source = os.path.join(os.path.dirname(os.path.normpath(resume_from)), BEST_DIR)
    target = os.path.join(run_dir, BEST_DIR)
    if is_checkpoint(source) and not os.path.exists(target):
        with atomic_folder(target) as tmp:
            shutil.copytree(source, tmp, dirs_exist_ok=True)


def evaluate_checkpoint(cli, explicit: set[str]) -> dict:
    """--eval_only: rebuild the model from the checkpoint alone and evaluate it on the test split.

    Model flags must agree with the checkpoint (as in inference.py); run-time flags apply; ``--data_root`` may point
    at another copy of the dataset (its classes must match the checkpoint's). The report goes to the run folder
    that holds the checkpoint (``checkpoints/<run>/best`` -> ``checkpoints/<run>/eval.json``).
    """
    import build_model
    from videolab.core.checkpoints import read_run_config
    from videolab.core.runs import launch_rank, run_lock
    from videolab.core.runtime import check_tracker_installed
    from videolab.core.settings import merge_with_checkpoint, settings_from_dict

    folder = checkpoint_to_evaluate(cli)
    run_config = read_run_config(folder)
    moved = {"data_root", "split_dir"} & explicit  # where the data is may change; what it is may not
    saved = settings_from_dict(run_config["settings"], os.path.join(folder, "run_config.json"))
    cfg = merge_with_checkpoint(saved, cli, explicit - moved, folder)
    for key in moved | set(build_model.EXPORT_SETTINGS):  # exporting (and uploading) is this command's choice
        setattr(cfg, key, getattr(cli, key))
    check_tracker_installed(cfg.report_to)
    run_dir = os.path.dirname(os.path.normpath(folder))
    with run_lock(run_dir) if launch_rank() == 0 else contextlib.nullcontext():  # one writer at a time in a run folder
        return evaluate_in_folder(cfg, run_config, folder, run_dir)


def evaluate_in_folder(cfg, run_config: dict, folder: str, run_dir: str) -> dict:
    """evaluate_checkpoint with the run folder's lock held."""
    import build_model
    import train_code
    import VLoader
    from videolab.core.errors import UsageError
    from videolab.evaluation.reports import reset_peak_memory

    accelerator = train_code.make_run_accelerator(cfg, run_dir)
    memory_from_start = reset_peak_memory(accelerator.device)
    VLoader.ensure_dataset(cfg)
    class_names = run_config["class_names"]
    found = VLoader.dataset_class_names(cfg)
    if found != class_names:
        raise UsageError(f"the dataset at {cfg.data_root!r} has classes {found}, but {folder} was trained on "
                         f"{class_names}; pass --data_root with the dataset it was trained on")
    built = build_model.rebuild_from_checkpoint(cfg, run_config, folder)
    test_set = VLoader.build_datasets(cfg, built.backbone.mean, built.backbone.std, parts=("test",),
                                      modalities=built.modalities).test
    train_code.start_trackers(accelerator, cfg, os.path.basename(run_dir), run_dir)
    print(f"evaluating {folder} on {cfg.data_root} (test, {len(test_set)} clips) | device {accelerator.device}")
    run = dict(mode="eval_only", checkpoint=folder, checkpoint_epoch=run_config.get("epoch"), train_seconds=None,
               history=run_config.get("history", []), skipped_in_training=None)
    report = train_code.test_and_report(cfg, built, test_set, class_names, run_dir, run, accelerator,
                                        memory_from_start, VLoader.reversal_pairs(cfg))
    if accelerator.is_main_process:
        build_model.export_model(cfg, built, class_names, report)
    return report


def checkpoint_to_evaluate(cli) -> str:
    from videolab.core.errors import UsageError
    if not cli.checkpoint:
        raise UsageError("--eval_only True needs --checkpoint PATH, a checkpoint folder such as "
                         "checkpoints/<run>/best")
    if not os.path.isdir(cli.checkpoint):
        raise UsageError(f"--checkpoint {cli.checkpoint!r} does not exist; pass a checkpoint folder such as "
                         f"checkpoints/<run>/best")
    return cli.checkpoint


def cli() -> int:
    """The console script ``videolab-train`` (pyproject.toml): this file's command line; returns the exit code."""
    return run_cli(main)


if __name__ == "__main__":
    raise SystemExit(cli())
