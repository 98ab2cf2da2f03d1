"""Caption generation speed: ``VideoCaptioner.generate`` vs the LM's Hugging Face ``generate`` called directly.

    python benchmarks/caption_generation.py                  # tiny GPT-2, batch 8, greedy and beams=3 (~20 s, 2 CPUs)
    python benchmarks/caption_generation.py --json out.json

Both paths use the same model and the same inputs: the direct path gets ``prepare_generation_inputs`` output
computed once outside the timed region and decodes its tokens with the same tokenizer, so the ratio
ours / direct is what the wrapper costs on top of Hugging Face generation (visual encoder + projector + building the
left-padded inputs + decoding). The video encoder here is deliberately cheap (one linear map per frame), so the
ratio measures the wrapper, not a vision backbone; its share is reported separately as ``prepare_ms``. Timings
are interleaved (ours, direct, ours, ...) so machine drift hits both, and the median of ``--repeats`` is reported.
Both paths must produce identical captions; the script stops if they do not. No figure is a pass/fail test.
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys

import torch
from torch import nn

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from videolab.core.files import write_json  # noqa: E402
from videolab.evaluation.measure import median_time  # noqa: E402
from videolab.models.captioner import VideoCaptioner, tiny_gpt2_config, train_caption_tokenizer  # noqa: E402

CAPTION_WORDS = ["a", "the", "red", "blue", "green", "small", "big", "square", "circle", "star", "moves", "left",
                 "right", "up", "down", "rotates", "clockwise", "grows", "shrinks", "slowly", "quickly", "then"]


class FrameLinearEncoder(nn.Module):
    """Cheap stand-in for a video backbone: [B, T, C, H, W] -> one token per frame [B, T, dim]."""

    def __init__(self, channels: int, size: int, dim: int):
        super().__init__()
        self.proj = nn.Linear(channels * size * size, dim)

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        return self.proj(pixel_values.flatten(2))  # [B, T, C*H*W] -> [B, T, dim]


def synthetic_captions(n: int, seed: int) -> list[str]:
    g = torch.Generator().manual_seed(seed)
    return [" ".join(CAPTION_WORDS[int(i)] for i in torch.randint(len(CAPTION_WORDS), (8,), generator=g))
            for _ in range(n)]


def build(size: str, frames: int, image_size: int, video_dim: int, seed: int) -> VideoCaptioner:
    """A random-weight captioner: tokenizer trained on synthetic captions, GPT-2 from the size preset."""
    from transformers import GPT2LMHeadModel
    tokenizer = train_caption_tokenizer(synthetic_captions(200, seed), vocab_size=512)
    torch.manual_seed(seed)
    lm = GPT2LMHeadModel(tiny_gpt2_config(len(tokenizer), tokenizer.bos_token_id, tokenizer.eos_token_id,
                                          tokenizer.pad_token_id, size=size))
    return VideoCaptioner(FrameLinearEncoder(3, image_size, video_dim), video_dim, lm, tokenizer).eval()


def compare(model: VideoCaptioner, pixel_values: torch.Tensor, prompts: list[str], num_beams: int,
            max_new_tokens: int, repeats: int) -> dict:
    """Median seconds per call of ours vs direct HF generate on the same inputs (interleaved)."""
    kwargs = model.generation_kwargs(num_beams=num_beams, max_new_tokens=max_new_tokens)
    with torch.no_grad():
        inputs_embeds, attention_mask = model.prepare_generation_inputs(pixel_values, prompts)

    def ours():
        return model.generate(pixel_values, prompts, num_beams=num_beams, max_new_tokens=max_new_tokens)

    def direct():
        with torch.no_grad():
            tokens = model.language_model.generate(inputs_embeds=inputs_embeds, attention_mask=attention_mask,
                                                   **kwargs)
        return model.decode(tokens)

    def prepare():
        with torch.no_grad():
            model.prepare_generation_inputs(pixel_values, prompts)

    a, b = ours(), direct()  # warm-up, and the two paths must agree
    with torch.no_grad():
        new_tokens = model.language_model.generate(inputs_embeds=inputs_embeds, attention_mask=attention_mask,
                                                   **kwargs).shape[1]
    if a != b:
        raise SystemExit(f"ours and direct generate disagree (num_beams={num_beams}): {a[:2]} vs {b[:2]}")
    ours_t, direct_t = [], []
    for _ in range(repeats):
        ours_t.append(median_time(ours, 1))
        direct_t.append(median_time(direct, 1))
    o, d = statistics.median(ours_t), statistics.median(direct_t)
    batch = pixel_values.shape[0]
    return dict(num_beams=num_beams, batch=batch, max_new_tokens=max_new_tokens, repeats=repeats,
                new_tokens=new_tokens,
                ours_ms=1000 * o, direct_ms=1000 * d, prepare_ms=1000 * median_time(prepare, repeats),
                ours_captions_per_s=batch / o, direct_captions_per_s=batch / d, ratio=o / d)


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", default="tiny", choices=["tiny", "small"], help="GPT-2 preset")
    parser.add_argument("--batch_size", type=int, default=8)
    parser.add_argument("--num_frames", type=int, default=8)
    parser.add_argument("--image_size", type=int, default=32)
    parser.add_argument("--max_new_tokens", type=int, default=20)
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--beams", type=int, nargs="+", default=[1, 3])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0 = torch's default)")
    parser.add_argument("--json", help="also write the results to this file")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)

    model = build(args.size, args.num_frames, args.image_size, video_dim=96, seed=args.seed)
    g = torch.Generator().manual_seed(args.seed)
    pixel_values = torch.randn(args.batch_size, args.num_frames, 3, args.image_size, args.image_size, generator=g)
    prompts = [("describe the video:" if i % 2 else "") for i in range(args.batch_size)]  # ragged: padding in play
    results = dict(torch=torch.__version__, threads=torch.get_num_threads(), gpt2=args.size,
                   lm_parameters=sum(p.numel() for p in model.language_model.parameters()),
                   visual_tokens=args.num_frames, rows=[])
    for beams in args.beams:
        r = compare(model, pixel_values, prompts, beams, args.max_new_tokens, args.repeats)
        results["rows"].append(r)
        print(f"[generate] GPT-2 {args.size}, batch {r['batch']}, beams {beams}, {r['new_tokens']} new tokens: "
              f"VideoCaptioner.generate {r['ours_ms']:.1f} ms ({r['ours_captions_per_s']:.1f} captions/s) | direct HF "
              f"generate {r['direct_ms']:.1f} ms ({r['direct_captions_per_s']:.1f} captions/s) | ratio "
              f"{r['ratio']:.3f} | of which prepare_generation_inputs {r['prepare_ms']:.2f} ms", flush=True)
    if args.json:
        write_json(args.json, results)
    return results


if __name__ == "__main__":
    main()
