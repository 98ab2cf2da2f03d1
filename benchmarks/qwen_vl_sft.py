"""Qwen2-VL description fine-tune on the synthetic set, offline: caption metrics of the untrained vs the trained model.

    taskset -c 0 env OMP_NUM_THREADS=1 python benchmarks/qwen_vl_sft.py --out /tmp/qwen_bench   # ~10 min, 1 core

What runs (all through main.py, so the numbers are the CLI's own eval.json):
1. the synthetic dataset (8 classes x 60 train / 10 test videos, 8 frames, 32 px) written with dummy_data.py and
   exported as chat-format QA records (sft_data.py: "Describe the video." -> its caption);
2. ``untrained``: the tiny offline Qwen2-VL (random weights) + LoRA q_proj,v_proj r 64 / alpha 128 / dropout 0.05,
   vision tower frozen, evaluated after one step at lr 0 (the same initial weights the trained run starts from);
3. ``trained``: the same model and seed, ``--epochs`` epochs of SFT (loss on the answers only) at ``--lr``;
4. both generate greedily (``--num_beams 1``) and the trained checkpoint again with beam search
   (``--eval_only --num_beams 3``).
Metrics: BLEU-1..4, METEOR, ROUGE-L, CIDEr (pycocoevalcap, caption_metrics.py) on the 80 test videos.
One training run per configuration (a shared CPU; the seed is fixed), so differences between runs of a few
hundredths are noise.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import dummy_data  # noqa: E402
from videolab.core.files import write_json  # noqa: E402
import main as train_main  # noqa: E402
from videolab.data import qa as sft_data  # noqa: E402

KEYS = ("BLEU-1", "BLEU-4", "METEOR", "ROUGE-L", "CIDEr")


def run(args) -> dict:
    data, qa, runs = (os.path.join(args.out, name) for name in ("synthetic", "qa", "runs"))
    if not dummy_data.dataset_is_complete(data):
        dummy_data.write_dataset(data, num_classes=8, train_per_class=60, test_per_class=10, num_frames=8, size=32,
                                 seed=0, quiet=True)
    sft_data.write_synthetic(data, qa)
    common = ["--dataset", "qa_json", "--data_root", qa, "--output_dir", runs, "--num_frames", "8", "--image_size",
              "32", "--use_vlm", "True", "--captioning", "True", "--language_model", "qwen2-vl", "--use_lora_llm",
              "True", "--batch_size", "16", "--max_new_tokens", "24", "--speed_repeats", "1", "--seed",
              str(args.seed), "--summary_csv", "none", "--quiet"]
    results = {}
    t0 = time.time()
    results["untrained"] = train_main.main([*common, "--run_name", "untrained", "--epochs", "1", "--max_steps", "1",
                                            "--lr", "0"])
    t1 = time.time()
    results["trained"] = train_main.main([*common, "--run_name", "trained", "--epochs", str(args.epochs), "--lr",
                                          str(args.lr)])
    train_seconds = time.time() - t1
    results["trained_beams3"] = train_main.main(["--eval_only", "True", "--checkpoint",
                                                 os.path.join(runs, "trained", "best"), "--num_beams", "3",
                                                 "--summary_csv", "none", "--speed_repeats", "1", "--quiet"])
    table = {name: {k: round(r["metrics"][k], 3) for k in KEYS if r["metrics"].get(k) is not None}
             for name, r in results.items()}
    for name, r in results.items():
        table[name].update(loss=round(r["loss"], 3), empty=r.get("empty_captions"),
                           example=r["captions"][0]["generated"], reference=r["captions"][0]["reference"])
    summary = dict(table=table, train_seconds=round(train_seconds, 1), untrained_seconds=round(t1 - t0, 1),
                   epochs=args.epochs, lr=args.lr, seed=args.seed, tokenizer=results["trained"]["metrics"]["tokenizer"],
                   params_trainable=results["trained"]["params_trainable"],
                   params_total=results["trained"]["params_total"])
    return summary


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="qwen_vl_bench")
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", default=None, help="also write the summary here")
    args = parser.parse_args(argv)
    summary = run(args)
    print(json.dumps(summary, indent=1))
    if args.json:
        write_json(args.json, summary)
    return summary


if __name__ == "__main__":
    main()
