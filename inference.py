"""Run a trained model on frame folders: ``python inference.py --video_dir ./frames_see/ [--checkpoint PATH]``.

The checkpoint carries the settings that built the model, so no training flags need repeating. Model flags given
here only pick a checkpoint (the newest run under ``--output_dir`` whose settings match them) and must agree with
it; run-time flags (device, batch size, top-k, output file) apply as given.
"""
from __future__ import annotations

import os
import sys
from typing import Optional, Sequence

from build_model import rebuild_from_checkpoint
from checkpointing import find_runs, read_run_config, write_json_atomic
from settings import DATA, FIELDS, MODEL, RUNTIME, Settings, UsageError, resolve, run_cli, settings_from_dict
from train_code import (caption_report, classification_report, evaluate, generate_captions, make_accelerator,
                        progress_enabled)
from VLoader import FrameFolderDataset, make_loader


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


def main(argv: Optional[Sequence[str]] = None) -> dict:
    cli, explicit, _ = resolve(argv, "inference.py", __doc__.splitlines()[0], check=False)
    if not cli.video_dir:
        raise UsageError("--video_dir is required: a folder of frames, or a folder of frame folders "
                         "(python create_dummy.py writes ./frames_see/)")
    folder = pick_checkpoint(cli, explicit)
    run_config = read_run_config(folder)
    cfg = merge_with_checkpoint(settings_from_dict(run_config["settings"]), cli, explicit, folder)
    class_names = run_config["class_names"]
    accelerator = make_accelerator(cfg)
    info = run_config["model_info"]
    built = rebuild_from_checkpoint(cfg, run_config, folder)
    model = built.model.to(accelerator.device)
    try:
        dataset = FrameFolderDataset(cfg.video_dir, cfg.num_frames, cfg.image_size, built.backbone.mean,
                                     built.backbone.std, class_names, text=cfg.text_input)
    except (FileNotFoundError, ValueError) as exc:
        raise UsageError(str(exc)) from None
    if cfg.use_text and any(t is None for t in dataset.texts):
        missing = sum(t is None for t in dataset.texts)
        raise UsageError(f"this model reads text (trained with --use_text True) and {missing} video(s) have none: "
                         f"pass --text_input \"...\" or put texts.json ({{video_name: text}}) beside the frames")
    what = "captioner" if cfg.captioning else f"{len(class_names)} classes"
    language = f", language model: {info['language_model']}" if info.get("language_model") else ""
    print(f"checkpoint: {folder} ({cfg.vision_model}, {what}{language}, pretrained backbone: "
          f"{info['pretrained']}) | {len(dataset)} video(s)")
    loader = make_loader(dataset, cfg.batch_size, False, cfg.num_workers, cfg.seed)
    if cfg.captioning:
        return caption_videos(cfg, model, loader, accelerator, folder, info)
    result = evaluate(model, loader, accelerator, "inference", progress_enabled(cfg))
    probs = result["logits"].softmax(-1)
    k = min(cfg.top_k, len(class_names))
    predictions = []
    for i, video_id in enumerate(os.path.basename(f) for f in dataset.folders):
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
                  predictions=predictions)
    if "top1" in result:
        output.update(top1=result["top1"], top5=result["top5"], num_labelled=int((result["labels"] >= 0).sum()),
                      **classification_report(result["preds"], result["labels"], class_names))
        print(f"accuracy on {output['num_labelled']} labelled videos: top1 {100 * result['top1']:.1f}% | "
              f"top5 {100 * result['top5']:.1f}%")
    write_json_atomic(cfg.predictions_file, output)
    print(f"predictions written to {os.path.abspath(cfg.predictions_file)}")
    return output


def caption_videos(cfg: Settings, model, loader, accelerator, folder: str, info: dict) -> dict:
    """Print and save one caption per video; caption metrics when captions.json gives references."""
    generated = generate_captions(model, loader, accelerator, cfg, "captions", progress_enabled(cfg))
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
                  predictions=predictions)
    if any(generated["references"]):
        output.update(caption_report(generated))
        metrics = output.get("metrics") or {}
        print("caption metrics: " + " | ".join(f"{k} {v:.3f}" for k, v in metrics.items() if isinstance(v, float)))
    write_json_atomic(cfg.predictions_file, output)
    print(f"captions written to {os.path.abspath(cfg.predictions_file)}")
    return output


if __name__ == "__main__":
    raise SystemExit(run_cli(main))
