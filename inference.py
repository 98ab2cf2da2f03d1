"""Run a trained model on videos: ``python inference.py --video_dir PATH [--checkpoint PATH]``.

``--video_dir`` is a video file, a folder of video files (or of class folders of them, which then give the true
labels), one folder of frames, or a folder of frame folders. The checkpoint carries the settings that built the
model and how it sampled frames, so no training flags need repeating. Model flags given here only pick a
checkpoint (the newest run under ``--output_dir`` whose settings match them) and must agree with it; run-time
flags (device, batch size, top-k, output file, test views, cache) apply as given.

Videos that cannot be read get no prediction: they are listed under ``bad_videos`` in the predictions file and
the exit status is 3.
"""
from __future__ import annotations

import os
from typing import Optional, Sequence

from videolab.cli import INFERENCE_ORDER, resolve, run_cli

# --help: what inference uses comes first; the flags a checkpoint fixes only select one
_PICKS = ("the checkpoint fixes these: given here, they pick the newest run under --output_dir that matches and must "
          "agree with it")
HELP_NOTES = {"model": _PICKS, "language": _PICKS, "data": _PICKS,
              "training": "training flags: no effect on a trained checkpoint"}


def main(argv: Optional[Sequence[str]] = None) -> dict:
    cli, explicit, _ = resolve(argv, "inference.py", __doc__.splitlines()[0], order=INFERENCE_ORDER, notes=HELP_NOTES)
    import build_model  # after parsing: --help and flag mistakes answer before torch is imported
    import VLoader
    from videolab.core.checkpoints import read_run_config
    from videolab.core.errors import UsageError
    from videolab.core.runs import check_inference_outputs, pick_checkpoint
    from videolab.core.runtime import make_accelerator, progress_enabled
    from videolab.core.settings import FIELDS, MODEL, merge_with_checkpoint, settings_from_dict
    from videolab.data.clips import make_loader
    from videolab.evaluation.reports import view_protocol
    from videolab.tasks.base import InferenceRun

    if not cli.video_dir:
        raise UsageError("--video_dir is required: a video file, a folder of videos, a folder of frames, or a folder "
                         "of frame folders (python create_dummy.py writes ./frames_see/)")
    wanted = {k: getattr(cli, k) for k in explicit if FIELDS[k].metadata["group"] == MODEL}
    folder = pick_checkpoint(cli.checkpoint, cli.output_dir, wanted,
                             build_model.kind_name(build_model.resolve_settings(cli)), build_model.checkpoint_kind)
    run_config = read_run_config(folder)
    saved = settings_from_dict(run_config["settings"], os.path.join(folder, "run_config.json"))
    cfg = build_model.resolve_settings(merge_with_checkpoint(saved, cli, explicit, folder))
    task = build_model.task_of(cfg)
    build_model.check_views(cfg, task)
    class_names = run_config["class_names"]
    accelerator = make_accelerator(cfg)
    built = build_model.rebuild_from_checkpoint(cfg, run_config, folder)
    info = built.info
    model = built.model.to(accelerator.device)
    dataset = VLoader.inference_dataset(cfg, built.backbone.mean, built.backbone.std, class_names,
                                        built.modalities)
    reads_text = cfg.use_text or "text" in built.modalities
    if reads_text and any(t is None for t in dataset.texts):
        missing = sum(t is None for t in dataset.texts)
        what = "--use_text True" if cfg.use_text else "a text encoder"
        raise UsageError(f"this model reads text (trained with {what}) and {missing} video(s) have none: "
                         f"pass --text_input \"...\" or put texts.json ({{video_name: text}}) beside the videos")
    check_inference_outputs(cfg)  # before the videos are run: an existing or unwritable predictions file
    views = view_protocol(cfg.test_clips, cfg.test_crops, cfg.sampling, cfg.num_frames, cfg.frame_stride)
    language = f", language model: {info['language_model']}" if info.get("language_model") else ""
    what = f"{len(class_names)} classes" if class_names else task.name
    print(f"checkpoint: {folder} ({cfg.vision_model}, {what}{language}, "
          f"pretrained backbone: {info['pretrained']}) | {len(dataset)} video(s) | {views['clips']} clip(s) x "
          f"{views['crops']} crop(s)")
    if views["views"] > 1:
        dataset = dataset.with_views(cfg.test_clips, cfg.test_crops)
    loader = make_loader(dataset, cfg.batch_size, False, cfg.num_workers, cfg.seed)
    output = task.infer(InferenceRun(cfg, model, dataset, loader, accelerator, folder, info, class_names, views,
                                     progress_enabled(cfg)))
    return finish(cfg, output, task.output_name)


def finish(cfg, output: dict, what: str) -> dict:
    """Write the predictions file; IncompleteResult (exit code 3) if some videos could not be read."""
    from videolab.core.errors import IncompleteResult
    from videolab.core.files import write_json
    write_json(cfg.predictions_file, output)
    print(f"{what} written to {os.path.abspath(cfg.predictions_file)}")
    bad = output["bad_videos"]
    if bad:
        raise IncompleteResult(f"{len(bad)} video(s) could not be read and have no prediction: "
                               f"{', '.join(b['video'] for b in bad[:5])}{' ...' if len(bad) > 5 else ''} (reasons "
                               f"under bad_videos in {cfg.predictions_file})", output)
    return output


def cli() -> int:
    """The console script ``videolab-infer`` (pyproject.toml): this file's command line; returns the exit code."""
    return run_cli(main)


if __name__ == "__main__":
    raise SystemExit(cli())
