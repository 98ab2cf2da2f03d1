"""Captioning and video question answering: teacher-forced training, loss validation, generated captions scored
with BLEU / METEOR / ROUGE-L / CIDEr (pycocoevalcap), and one caption per video at inference."""
from __future__ import annotations

import torch
from tqdm.auto import tqdm

from videolab.core.errors import UsageError
from videolab.evaluation.caption_metrics import caption_scores
from videolab.models.captioner import generation_settings
from videolab.tasks.base import InferenceRun, Task, TestResult, TestRun, batch_keys, mean_loss


@torch.no_grad()
def caption_batch(model, batch: dict, accelerator, cfg) -> list[str]:
    """One caption per video of a collated batch, decoded with the run's generation settings."""
    inner = accelerator.unwrap_model(model)
    keys = batch_keys(inner)
    prompts = batch[keys["prompts"]] if "prompts" in keys else None
    with accelerator.autocast():
        return inner.generate(batch["pixel_values"].to(accelerator.device), prompts=prompts,
                              num_beams=cfg.num_beams, max_new_tokens=cfg.max_new_tokens,
                              no_repeat_ngram_size=cfg.no_repeat_ngram_size,
                              repetition_penalty=cfg.repetition_penalty)


@torch.no_grad()
def generate_captions(model, loader, accelerator, cfg, desc: str = "captions", show_progress: bool = False) -> dict:
    """Captions for every video of a loader: {video_ids, captions, references (the dataset's, '' if none)},
    gathered from all processes (each generates for its shard)."""
    model.eval()
    rows = []  # (video_id, caption, reference)
    for batch in tqdm(loader, desc=desc, disable=not show_progress, leave=False):
        mine = list(zip(batch["video_id"], caption_batch(model, batch, accelerator, cfg), batch["caption"]))
        rows += accelerator.gather_for_metrics(mine, use_gather_object=True)
    video_ids, captions, references = (list(column) for column in zip(*rows)) if rows else ([], [], [])
    return dict(video_ids=video_ids, captions=captions, references=references)


def caption_report(generated: dict) -> dict:
    """pycocoevalcap metrics of generated captions against the references (videos without one are skipped)."""
    pairs = [(v, c, r) for v, c, r in zip(generated["video_ids"], generated["captions"], generated["references"]) if r]
    if not pairs:
        return dict(metrics=None, notes=["no reference captions: metrics not computed"])
    scores = caption_scores({v: [r] for v, _, r in pairs}, {v: c for v, c, _ in pairs})
    empty = sum(1 for c in generated["captions"] if not c.strip())
    return dict(metrics=scores, num_scored=len(pairs), empty_captions=empty)


def metrics_line(metrics: dict) -> str:
    return " | ".join(f"{k} {v:.3f}" for k, v in (metrics or {}).items() if isinstance(v, float))


class CaptioningTask(Task):
    name = "captioning"
    output_name = "captions"

    def check(self, cfg) -> None:
        if cfg.test_clips * cfg.test_crops > 1:
            raise UsageError("multi-view testing averages class logits and a captioner generates text: use "
                             "--test_clips 1 --test_crops 1 with --captioning True")

    def test(self, run: TestRun) -> TestResult:
        """The test loss, then a caption for every test video scored against its reference."""
        loss = mean_loss(run.model, run.loader, run.accelerator, "test loss", run.show_progress)["loss"]
        generated = generate_captions(run.model, run.loader, run.accelerator, run.cfg, "test captions",
                                      run.show_progress)
        examples = [dict(video=v, generated=c, reference=r) for v, c, r in
                    zip(generated["video_ids"], generated["captions"], generated["references"])]
        headline = dict(num_samples=len(examples), loss=loss, **caption_report(generated))
        details = dict(generation=generation_settings(run.cfg), captions=examples)
        line = f"test caption loss {loss:.4f} | {metrics_line(headline.get('metrics'))}" + "".join(
            f"\nexample: {e['generated']!r} (reference: {e['reference']!r})" for e in examples[:3])
        return TestResult(headline, details, line)

    @torch.no_grad()
    def predict(self, model, batch: dict, accelerator, cfg):
        return caption_batch(model, batch, accelerator, cfg)

    def infer(self, run: InferenceRun) -> dict:
        """Print and save one caption per readable video; caption metrics when captions.json gives references."""
        cfg, dataset = run.cfg, run.dataset
        generated = generate_captions(run.model, run.loader, run.accelerator, cfg, "captions", run.show_progress)
        keep = dataset.readable().tolist()
        generated = {k: [v for v, ok in zip(values, keep) if ok] for k, values in generated.items()}
        predictions = []
        for video, caption, reference in zip(generated["video_ids"], generated["captions"], generated["references"]):
            predictions.append(dict(video=video, caption=caption, **({"reference": reference} if reference else {})))
            print(f"{video}: {caption}")
        output = dict(checkpoint=run.checkpoint, video_dir=cfg.video_dir, pretrained=run.info["pretrained"],
                      language_model=run.info.get("language_model"),
                      language_model_pretrained=run.info.get("language_model_pretrained"),
                      generation=dict(generation_settings(cfg), text_input=cfg.text_input),
                      predictions=predictions, bad_videos=dataset.bad_videos())
        if any(generated["references"]):
            output.update(caption_report(generated))
            print("caption metrics: " + metrics_line(output.get("metrics")))
        return output
