"""One LoRA training step of a Qwen2-VL-2B-size model (random weights): peak memory and step time.

    python benchmarks/qwen_vl_2b_step.py --device cuda --dtype bf16            # needs a GPU (about 10 GB)
    python benchmarks/qwen_vl_2b_step.py --size tiny --device cpu              # the same code path, tiny config

The 2B configuration is Qwen2-VL-2B-Instruct's architecture (text: 28 layers, width 1536, 12 heads / 2 KV heads,
MLP 8960, vocabulary 151,936; vision: 32 layers, width 1280, merger to 1536) built from ``Qwen2VLConfig`` with
random weights (no download), with the run's defaults: LoRA r 64 / alpha 128 / dropout 0.05 on ``q_proj,v_proj``,
vision tower frozen, gradient checkpointing (non-reentrant), bf16 weights. Inputs: ``--batch`` clips of
``--frames`` frames at ``--pixels`` px through the real ``Qwen2VLProcessor`` (patch 14, merge 2) and the SFT
collator, a 20-word answer each. Reported: the median of ``--steps`` timed steps (forward + backward + AdamW) after
one warm-up step, and the peak allocated GPU memory (CUDA) or peak RSS (CPU).
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from videolab.core.files import write_json  # noqa: E402
from videolab.models.qwen_vl import QwenVLCaptioner, make_processor, prepare_for_training, train_qwen_tokenizer  # noqa: E402
from videolab.core.settings import Settings  # noqa: E402

SIZES = {
    "2b": dict(text=dict(hidden_size=1536, intermediate_size=8960, num_hidden_layers=28, num_attention_heads=12,
                         num_key_value_heads=2, max_position_embeddings=32768, vocab_size=151936,
                         tie_word_embeddings=True,
                         rope_parameters={"rope_type": "default", "rope_theta": 1000000.0,
                                          "mrope_section": [16, 24, 24]}),
               vision=dict(depth=32, embed_dim=1280, hidden_size=1536, num_heads=16, mlp_ratio=4, patch_size=14,
                           spatial_merge_size=2, temporal_patch_size=2)),
    "tiny": dict(text=dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                           num_key_value_heads=2, max_position_embeddings=4096,
                           rope_parameters={"rope_type": "default", "rope_theta": 10000.0,
                                            "mrope_section": [2, 3, 3]}),
                 vision=dict(depth=2, embed_dim=48, hidden_size=64, num_heads=2, mlp_ratio=2, patch_size=14,
                             spatial_merge_size=2, temporal_patch_size=2)),
}
ANSWER = "a small red ball rolls slowly from the left edge to the right edge of a wooden table and then stops"


def build(size: str, device: str, dtype: torch.dtype, pixels: int):
    from transformers import Qwen2VLConfig, Qwen2VLForConditionalGeneration
    tokenizer = train_qwen_tokenizer([ANSWER, "What happens in the video?"])
    ids = tokenizer.convert_tokens_to_ids
    text = dict(SIZES[size]["text"])
    text.setdefault("vocab_size", len(tokenizer))  # the 2B vocabulary is kept (its memory is part of the cost)
    text.update(bos_token_id=None, eos_token_id=ids("<|im_end|>"), pad_token_id=ids("<|endoftext|>"))
    config = Qwen2VLConfig(text_config=text,
                           vision_config=SIZES[size]["vision"], image_token_id=ids("<|image_pad|>"),
                           video_token_id=ids("<|video_pad|>"), vision_start_token_id=ids("<|vision_start|>"),
                           vision_end_token_id=ids("<|vision_end|>"))
    with torch.device(device):
        model = Qwen2VLForConditionalGeneration(config).to(dtype)
    cfg = Settings(use_vlm=True, captioning=True, language_model="qwen2-vl", use_lora_llm=True,
                   gradient_checkpointing=True)
    model = prepare_for_training(model, cfg)
    return QwenVLCaptioner(model, make_processor(tokenizer, config.vision_config, pixels), max_caption_tokens=64)


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", choices=sorted(SIZES), default="2b")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dtype", choices=("bf16", "fp32"), default="bf16")
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--frames", type=int, default=8)
    parser.add_argument("--pixels", type=int, default=224)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--json", default=None)
    args = parser.parse_args(argv)
    torch.manual_seed(0)
    dtype = torch.bfloat16 if args.dtype == "bf16" else torch.float32
    model = build(args.size, args.device, dtype, args.pixels).train()
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=1e-4)
    videos = torch.rand(args.batch, args.frames, 3, args.pixels, args.pixels)
    questions, answers = ["What happens in the video?"] * args.batch, [ANSWER] * args.batch
    cuda = args.device.startswith("cuda")
    times = []
    for step in range(args.steps + 1):
        if cuda:
            torch.cuda.synchronize()
            if step == 1:
                torch.cuda.reset_peak_memory_stats()
        t0 = time.perf_counter()
        loss = model(videos, answers, questions).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if cuda:
            torch.cuda.synchronize()
        if step:  # step 0 is the warm-up
            times.append(time.perf_counter() - t0)
    if cuda:
        peak = dict(gpu_peak_allocated_mib=round(torch.cuda.max_memory_allocated() / 2 ** 20))
    else:
        import resource
        peak = dict(cpu_peak_rss_mib=round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024))
    enc = model.collator(videos, questions, answers)
    result = dict(size=args.size, device=torch.cuda.get_device_name() if cuda else "cpu", dtype=args.dtype,
                  batch=args.batch, frames=args.frames, pixels=args.pixels,
                  video_tokens_per_clip=int((enc["input_ids"][0] == model.video_token_id).sum()),
                  sequence_length=int(enc["input_ids"].shape[1]), loss=round(loss.item(), 4),
                  params_total=sum(p.numel() for p in model.parameters()),
                  params_trainable=sum(p.numel() for p in params),
                  step_seconds_median=round(statistics.median(times), 3), **peak)
    print(json.dumps(result, indent=1))
    if args.json:
        write_json(args.json, result)
    return result


if __name__ == "__main__":
    main()
