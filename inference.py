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
import sys
from typing import Optional, Sequence

import torch

from build_model import MultiViewClassifier, rebuild_from_checkpoint
from checkpointing import find_runs, read_run_config, write_json_atomic
from reporting import class_metrics, view_protocol
from settings import (DATA, FIELDS, MODEL, RUNTIME, IncompleteResult, Settings, UsageError, check_views, resolve,
                      run_cli, settings_from_dict)
from train_code import caption_report, evaluate, generate_captions, make_accelerator, progress_enabled
from VLoader import FrameFolderDataset, clip_spec, make_loader, spec_options


def pick_checkpoint(cli: Settings, explicit: set[str]) -> str:
    """--checkpoint, or the newest run under output_dir whose saved settings match the model flags given."""
    if cli.checkpoint:
        return cli.checkpoint
    wanted = {k: getattr(cli, k) for k in explicit if FIELDS[k].metadata["group"] == MODEL}
    runs = find_runs(cli.output_dir)
    for folder in runs:
        saved = read_run_config(folder)["settings"]
        if all(saved.get(k) == v for k, v in wanted.items()):
            return folder
    flags = " ".join(f"--{k} {v}" for k, v in wanted.items())
    if not runs:
        raise UsageError(f"no trained model under {cli.output_dir!r}; train one with python main.py {flags}".rstrip()
                         + " or pass --checkpoint PATH")
    raise UsageError(f"no run under {cli.output_dir!r} was trained with {flags}; train one with python main.py "
                     f"{flags} or pass --checkpoint PATH")


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
    return settings_from_dict(merged)


def load_inputs(cfg: Settings, mean, std, class_names: list, modalities: Sequence[str] = ()):
    """The --video_dir inputs as a dataset (video files or frame folders), sampled as the checkpoint was trained."""
    from video_datasets import inference_videos
    from video_io import FrameCache
    spec = clip_spec(cfg, mean, std, train=False)
    try:
        videos = inference_videos(cfg.video_dir, spec, class_names, cfg.text_input,
                                  FrameCache(cfg.cache_dir) if cfg.cache_dir else None)
        if "audio" in modalities:  # issue 10: the clips' log-mel features
            from audio import attach_audio
            if videos is None:
                raise UsageError(f"this model hears audio: --video_dir {cfg.video_dir!r} must hold video files "
                                 f"(frame folders have no sound)")
            attach_audio([videos], cfg)
        if videos is not None:
            return videos
        return FrameFolderDataset(cfg.video_dir, cfg.num_frames, cfg.image_size, mean, std, class_names,
                                  text=cfg.text_input, **spec_options(spec))
    except FileNotFoundError as exc:
        raise UsageError(str(exc)) from None


def main(argv: Optional[Sequence[str]] = None) -> dict:
    cli, explicit, _ = resolve(argv, "inference.py", __doc__.splitlines()[0], check=False)
    if not cli.video_dir:
        raise UsageError("--video_dir is required: a video file, a folder of videos, a folder of frames, or a folder "
                         "of frame folders (python create_dummy.py writes ./frames_see/)")
    folder = pick_checkpoint(cli, explicit)
    run_config = read_run_config(folder)
    cfg = merge_with_checkpoint(settings_from_dict(run_config["settings"]), cli, explicit, folder)
    check_views(cfg)
    class_names = run_config["class_names"]
    accelerator = make_accelerator(cfg)
    info = run_config["model_info"]
    built = rebuild_from_checkpoint(cfg, run_config, folder)
    model = built.model.to(accelerator.device)
    dataset = load_inputs(cfg, built.backbone.mean, built.backbone.std, class_names,
                          getattr(built.model, "modalities", ()))
    reads_text = cfg.use_text or "text" in getattr(built.model, "modalities", ())  # issue 10: a text encoder
    if reads_text and any(t is None for t in dataset.texts):
        missing = sum(t is None for t in dataset.texts)
        what = "--use_text True" if cfg.use_text else "a text encoder"
        raise UsageError(f"this model reads text (trained with {what}) and {missing} video(s) have none: "
                         f"pass --text_input \"...\" or put texts.json ({{video_name: text}}) beside the videos")
    what = "captioner" if cfg.captioning else f"{len(class_names)} classes"
    language = f", language model: {info['language_model']}" if info.get("language_model") else ""
    views = view_protocol(cfg.test_clips, cfg.test_crops, cfg.sampling, cfg.num_frames, cfg.frame_stride)
    print(f"checkpoint: {folder} ({cfg.vision_model}, {what}{language}, pretrained backbone: "
          f"{info['pretrained']}) | {len(dataset)} video(s) | {views['clips']} clip(s) x {views['crops']} crop(s)")
    if views["views"] > 1:
        dataset, model = dataset.with_views(cfg.test_clips, cfg.test_crops), MultiViewClassifier(model)
    loader = make_loader(dataset, cfg.batch_size, False, cfg.num_workers, cfg.seed)
    if cfg.captioning:
        return caption_videos(cfg, model, loader, accelerator, folder, info, dataset)
    result = evaluate(model, loader, accelerator, "inference", progress_enabled(cfg))
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
    output = dict(checkpoint=folder, video_dir=cfg.video_dir, pretrained=run_config["model_info"]["pretrained"],
                  views=views, predictions=predictions, bad_videos=dataset.bad_videos())
    labelled = keep & (result["labels"] >= 0)
    if labelled.any():
        headline, report = class_metrics(result, labelled, class_names, None, cfg.label_smoothing)
        output.update(top1=headline["top1"], top5=headline["top5"], num_labelled=int(labelled.sum()),
                      mean_class_accuracy=headline["mean_class_accuracy"], **report)
        print(f"accuracy on {output['num_labelled']} labelled videos: top1 {100 * output['top1']:.1f}% | "
              f"top5 {100 * output['top5']:.1f}%")
    return finish(cfg, output, "predictions")


def finish(cfg: Settings, output: dict, what: str) -> dict:
    """Write the predictions file; IncompleteResult (exit code 3) if some videos could not be read."""
    write_json_atomic(cfg.predictions_file, output)
    print(f"{what} written to {os.path.abspath(cfg.predictions_file)}")
    bad = output["bad_videos"]
    if bad:
        raise IncompleteResult(f"{len(bad)} video(s) could not be read and have no prediction: "
                               f"{', '.join(b['video'] for b in bad[:5])}{' ...' if len(bad) > 5 else ''} (reasons "
                               f"under bad_videos in {cfg.predictions_file})", output)
    return output


def caption_videos(cfg: Settings, model, loader, accelerator, folder: str, info: dict, dataset) -> dict:
    """Print and save one caption per readable video; caption metrics when captions.json gives references."""
    generated = generate_captions(model, loader, accelerator, cfg, "captions", progress_enabled(cfg))
    keep = dataset.readable().tolist()
    generated = {k: [v for v, ok in zip(values, keep) if ok] for k, values in generated.items()}
    predictions = []
    for video, caption, reference in zip(generated["video_ids"], generated["captions"], generated["references"]):
        predictions.append(dict(video=video, caption=caption, **({"reference": reference} if reference else {})))
        print(f"{video}: {caption}")
    output = dict(checkpoint=folder, video_dir=cfg.video_dir, pretrained=info["pretrained"],
                  language_model=info.get("language_model"),
                  language_model_pretrained=info.get("language_model_pretrained"),
                  generation=dict(num_beams=cfg.num_beams, max_new_tokens=cfg.max_new_tokens,
                                  no_repeat_ngram_size=cfg.no_repeat_ngram_size,
                                  repetition_penalty=cfg.repetition_penalty, text_input=cfg.text_input),
                  predictions=predictions, bad_videos=dataset.bad_videos())
    if any(generated["references"]):
        output.update(caption_report(generated))
        metrics = output.get("metrics") or {}
        print("caption metrics: " + " | ".join(f"{k} {v:.3f}" for k, v in metrics.items() if isinstance(v, float)))
    return finish(cfg, output, "captions")


if __name__ == "__main__":
    raise SystemExit(run_cli(main))
