"""Text modality benchmark (issue 10): the composed model on the playback task with and without its text encoder.

    taskset -c 1 env OMP_NUM_THREADS=1 python benchmarks/text_modality.py --json benchmarks/text_modality_cpu.json

``--synthetic_task playback`` (dummy_data.py): half the clips are stored played backwards and the label is the
motion that happened, so from the frames alone the direction within a time-reversal pair is a coin toss (top-1 at
most about 50 %); the hint ("the clip is played backwards / forwards") is the only thing that says which way round
the clip runs, and text alone cannot tell the motion family (chance, 12.5 %). Every run trains ``main.py``
in-process with the same settings except ``--modalities`` and the text encoder's training (full fine-tuning at the
language-model lr, frozen, or LoRA), evaluates on the test split, and writes test top-1, the motion-family and
within-family direction accuracy (the run's own report), the best epoch and the training time per run. No
figure is a pass/fail test; results go to BENCHMARKS.md.

With ``--motion_epochs N`` the video backbone first learns the ``motion`` task (the same kind of clips, always played
forwards, labels = what is seen; its own data folder, the playback test clips are never seen) as the plain VideoMAE
classifier, and every run starts from that backbone (``--pretrained``): then the frames already tell the apparent
direction and the short runs measure whether the model uses the hint to turn it into the true one. From a random
backbone, 10 epochs learn neither (BENCHMARKS.md).
"""
from __future__ import annotations

import argparse
import json
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

from videolab.evaluation.measure import run_and_record  # noqa: E402

COMMON = ["--dataset", "synthetic", "--synthetic_task", "playback", "--vision_model", "videomae", "--model_size",
          "tiny", "--num_frames", "8", "--image_size", "32", "--fusion", "transformer", "--fusion_dim", "64",
          "--fusion_depth", "2", "--batch_size", "32", "--mixed_precision", "no", "--quiet", "--speed_repeats", "0",
          "--summary_csv", "none"]
RUNS = {  # name -> the flags that differ
    "video": ["--modalities", "video"],
    "text": ["--modalities", "text"],
    "video+text": ["--modalities", "video,text"],
    "video+text frozen": ["--modalities", "video,text", "--freeze_language_model", "True"],
    "video+text lora": ["--modalities", "video,text", "--use_lora_llm", "True"],
    "video+text frozen + video lora": ["--modalities", "video,text", "--freeze_language_model", "True",
                                       "--use_lora_vision", "True"],
}


def motion_backbone(args) -> tuple[str, dict]:
    """Train the plain VideoMAE-tiny classifier on the motion task; save its backbone (save_pretrained) for
    --pretrained. Returns (folder, the run's test report)."""
    import main
    from build_model import rebuild_from_checkpoint
    from videolab.core.checkpoints import read_run_config
    from videolab.core.settings import settings_from_dict
    run_name = f"motion_backbone_s{args.seed}"
    report = main.main(["--dataset", "synthetic", "--synthetic_task", "motion", "--data_root", args.motion_root,
                        "--vision_model", "videomae", "--model_size", "tiny", "--num_frames", "8", "--image_size",
                        "32", "--batch_size", "32", "--quiet", "--speed_repeats", "0", "--summary_csv", "none",
                        "--epochs", str(args.motion_epochs), "--seed", str(args.seed), "--output_dir",
                        args.output_dir, "--run_name", run_name])
    best = report["checkpoint"]
    run_config = read_run_config(best)
    built = rebuild_from_checkpoint(settings_from_dict(run_config["settings"]), run_config, best)
    folder = os.path.join(args.output_dir, run_name, "backbone")
    built.model.backbone.model.save_pretrained(folder)  # HFVideoEncoder.model: the VideoMAEModel
    return folder, dict(run="motion backbone", top1=report["top1"], epochs=args.motion_epochs,
                        train_seconds=report["train_seconds"], direction_within_family=report.get("direction_accuracy"))


def run(name: str, flags: list, args, pretrained: list) -> dict:
    import main
    run_name = f"text_{name.replace('+', '_').replace(' ', '_')}_s{args.seed}" + ("_pre" if pretrained else "")
    report = main.main(COMMON + flags + pretrained + ["--data_root", args.data_root, "--epochs", str(args.epochs),
                                                      "--seed", str(args.seed), "--output_dir", args.output_dir,
                                                      "--run_name", run_name])
    return dict(run=name, flags=" ".join(flags + pretrained), seed=args.seed, epochs=args.epochs, top1=report["top1"],
                mean_class_accuracy=report["mean_class_accuracy"], best_epoch=report["checkpoint_epoch"],
                train_seconds=report["train_seconds"], params_total=report["params_total"],
                params_trainable=report["params_trainable"], family_accuracy=report.get("family_accuracy"),
                direction_within_family=report.get("direction_accuracy"))


def main(argv=None) -> list:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data_root", default="synthetic_playback", help="generated on first use (playback task)")
    parser.add_argument("--output_dir", default="checkpoints/text_modality")
    parser.add_argument("--epochs", type=int, default=6)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--runs", default="video,video+text", help=f"comma-separated of: {', '.join(RUNS)}")
    parser.add_argument("--motion_epochs", type=int, default=0, help="> 0: start every run from a backbone "
                        "trained this long on the motion task (module docstring)")
    parser.add_argument("--motion_root", default="synthetic_dataset", help="the motion-task data (generated)")
    parser.add_argument("--backbone", default=None, help="instead of --motion_epochs: a backbone folder it wrote")
    parser.add_argument("--json", default=None, help="append the results to this JSON file")
    args = parser.parse_args(argv)
    results, pretrained = [], []
    if args.motion_epochs > 0:
        folder, report = motion_backbone(args)
        results.append(report)
        print(json.dumps(report), flush=True)
        pretrained = ["--pretrained", folder]
    elif args.backbone:
        pretrained = ["--pretrained", args.backbone]
    return run_and_record(args.runs, lambda name: run(name, RUNS[name], args, pretrained), args.json, results)


if __name__ == "__main__":
    main()
