"""Audio-visual benchmark: the same composed model trained on video only, audio only, and video + audio.

    taskset -c 1 env OMP_NUM_THREADS=1 python benchmarks/audiovisual.py --json benchmarks/audiovisual_cpu.json

On the synthetic audio-visual dataset (``av_data.py``: class = (motion, tone), 8 classes) video alone can reach
50 %, audio alone 25 %, and only both together 100 %. Every run trains ``main.py`` in-process with the same settings
except ``--modalities`` (and the fusion, for the extra fusion rows), evaluates on the test split, and the script
writes test top-1, the best epoch and the training time per run. No figure is a pass/fail test; results go to
BENCHMARKS.md.
"""
from __future__ import annotations

import argparse
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

from videolab.evaluation.measure import run_and_record  # noqa: E402

COMMON = ["--dataset", "synthetic_av", "--vision_model", "videomae", "--model_size", "tiny", "--num_frames", "8",
          "--image_size", "32", "--audio_seconds", "1.0", "--fusion_dim", "64", "--audio_dim", "64", "--batch_size",
          "32", "--quiet", "--speed_repeats", "0", "--summary_csv", "none"]
RUNS = {  # name -> the flags that differ
    "video": ["--modalities", "video", "--fusion", "bottleneck"],
    "audio": ["--modalities", "audio", "--fusion", "bottleneck"],
    "video+audio": ["--modalities", "video,audio", "--fusion", "bottleneck"],
    "video+audio concat": ["--modalities", "video,audio", "--fusion", "concat"],
    "video+audio transformer": ["--modalities", "video,audio", "--fusion", "transformer"],
}


def factor_accuracy(report: dict) -> dict:
    """From the test confusion matrix (rows = true class): the share of clips whose predicted class has the right
    motion, and the right tone (class names are '<motion>+<tone>_tone')."""
    names, matrix = report["class_names"], report["confusion_matrix"]
    total = sum(map(sum, matrix))
    split = [name.split("+") for name in names]
    motion = sum(matrix[t][p] for t in range(len(names)) for p in range(len(names)) if split[t][0] == split[p][0])
    tone = sum(matrix[t][p] for t in range(len(names)) for p in range(len(names)) if split[t][1] == split[p][1])
    return dict(motion_accuracy=motion / total, tone_accuracy=tone / total)


def run(name: str, flags: list, args) -> dict:
    import main
    run_name = f"av_{name.replace('+', '_').replace(' ', '_')}_s{args.seed}"
    report = main.main(COMMON + flags + ["--data_root", args.data_root, "--epochs", str(args.epochs), "--seed",
                                         str(args.seed), "--output_dir", args.output_dir, "--run_name", run_name])
    return dict(run=name, flags=" ".join(flags), seed=args.seed, epochs=args.epochs, top1=report["top1"],
                mean_class_accuracy=report["mean_class_accuracy"], best_epoch=report["checkpoint_epoch"],
                train_seconds=report["train_seconds"], params_total=report["params_total"], **factor_accuracy(report))


def main(argv=None) -> list:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data_root", default="synthetic_av", help="generated on first use")
    parser.add_argument("--output_dir", default="checkpoints/audiovisual")
    parser.add_argument("--epochs", type=int, default=15)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--runs", default="video,audio,video+audio", help=f"comma-separated of: {', '.join(RUNS)}")
    parser.add_argument("--json", default=None, help="append the results to this JSON file")
    args = parser.parse_args(argv)
    return run_and_record(args.runs, lambda name: run(name, RUNS[name], args), args.json)


if __name__ == "__main__":
    main()
