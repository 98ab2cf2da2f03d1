"""Issue 23: where a run's time goes (the phase breakdown in eval.json), the GPU check's dry mode, and bf16
training that leaves chance."""
import json
import os

import main as train_main
from conftest import TINY_FLAGS
from videolab.core.checkpoints import load_training_state


def test_run_records_where_its_training_time_goes(tiny_dataset, tmp_path):
    report = train_main.main(["--data_root", tiny_dataset, "--output_dir", str(tmp_path), "--run_name", "timed",
                              "--epochs", "2", "--batch_size", "4", *TINY_FLAGS, "--quiet", "--speed_repeats", "1"])
    breakdown = report["train_time_breakdown"]
    assert set(breakdown) == {"data", "step", "validation", "checkpoint", "other"}
    assert all(v >= 0 for v in breakdown.values()) and breakdown["step"] > 0 and breakdown["checkpoint"] > 0
    assert abs(sum(breakdown.values()) - report["train_seconds"]) < 0.5  # the phases and the rest cover the run
    with open(os.path.join(tmp_path, "timed", "eval.json")) as fh:
        assert json.load(fh)["train_time_breakdown"] == breakdown
    state = load_training_state(os.path.join(tmp_path, "timed", "last"))
    assert state["phases"]["step"] > 0  # saved with the training state, so a resumed run keeps adding to it


def test_gpu_check_dry_mode_runs_every_part_on_cpu(tmp_path):
    """benchmarks/gpu_check.py --dry: tiny shapes on the CPU, every part reports ok, one JSON."""
    import sys
    sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "benchmarks"))
    import gpu_check
    out = tmp_path / "dry.json"
    results = gpu_check.main(["--dry", "--json", str(out)])
    with open(out) as fh:
        assert json.load(fh)["dry"] is True
    for name in ("cuda_tests", "mfu", "loader", "ddp"):
        assert results[name]["status"] == "ok", results[name].get("traceback")
    assert results["cuda_tests"]["checked_ids"] == gpu_check.CUDA_TESTS
    runs = [r for m in results["mfu"]["models"].values() for r in m["runs"].values()]
    assert runs and all(r["achieved_tflops"] > 0 and r["clips_per_s"] > 0 for r in runs)
    assert all(r["clips_per_s"] > 0 for r in results["loader"]["workers"].values())
    assert results["ddp"]["gradients_equal_on_all_ranks"] is True and results["ddp"]["backend"] == "gloo"


def test_gpu_check_names_a_missing_cuda_test():
    import sys
    sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "benchmarks"))
    import gpu_check
    import pytest
    with pytest.raises(ValueError, match="no such test"):
        gpu_check.check_test_id("tests/test_cuda.py::test_that_was_renamed")


# ----------------------------------------------------------------------------------------------------------------
# bf16 that converges
# ----------------------------------------------------------------------------------------------------------------
def bf16_settings(**kw):
    from build_model import resolve_settings
    from videolab.core.settings import Settings
    return resolve_settings(Settings(model_size="tiny", num_frames=4, image_size=32, head_dropout=0.0, **kw))


def clips(per_class: int = 2, classes: int = 4):
    """A small learnable task: synthetic motion clips, 4 frames of 32 px; captions name shape, colour, motion."""
    import torch
    from videolab.data.synthetic import caption_for, make_video
    videos, labels, captions = [], [], []
    for label in range(classes):
        for i in range(per_class):
            video, spec = make_video(label, 4, 32, seed=(7, label, i))
            videos.append(video), labels.append(label), captions.append(caption_for(spec))
    x = (torch.stack(videos).float() / 255 - 0.45) / 0.225  # [N, T, C, H, W]
    return x, torch.tensor(labels), captions


def train_bf16(model, inputs: dict, steps: int, lr: float) -> list:
    """Full-batch AdamW steps under CPU bf16 autocast (as accelerate runs them); the losses."""
    import torch
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=lr)
    losses = []
    for _ in range(steps):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = model(**inputs)
        assert out.logits.dtype == torch.float32 or out.logits.dim() == 3  # classifiers: fp32 logits
        out.loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        losses.append(out.loss.item())
    return losses


def test_residual_stream_stays_fp32_under_bf16_autocast():
    """The cause of the bf16 stall: VideoMAE's blocks added their updates to a bf16 stream. Every encoder block
    must now return fp32 under autocast (its matrix products still run in bf16), and the logits are fp32."""
    import torch
    from build_model import build_model
    model = build_model(bf16_settings(vision_model="videomae"), 4, verbose=False).model
    dtypes, matmuls = [], []
    for block in model.backbone.model.encoder.layer:
        block.register_forward_hook(lambda m, i, out: dtypes.append(out[0].dtype if isinstance(out, tuple)
                                                                     else out.dtype))
        block.attention.attention.query.register_forward_hook(lambda m, i, out: matmuls.append(out.dtype))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        logits = model(pixel_values=torch.randn(2, 4, 3, 32, 32)).logits
    assert dtypes and set(dtypes) == {torch.float32}
    assert set(matmuls) == {torch.bfloat16} and logits.dtype == torch.float32


def test_bf16_classifier_leaves_chance():
    """VideoMAE-tiny classifier, 8 clips of 4 classes, 40 bf16 steps: it learns them (chance 25 %)."""
    import torch
    from build_model import build_model
    x, y, _ = clips()
    torch.manual_seed(0)
    model = build_model(bf16_settings(vision_model="videomae"), 4, verbose=False).model.train()
    train_bf16(model, dict(pixel_values=x, labels=y), steps=40, lr=2e-3)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        accuracy = (model.eval()(pixel_values=x).logits.argmax(-1) == y).float().mean().item()
    assert accuracy >= 0.75


def test_bf16_vision_language_classifier_leaves_chance(tiny_bert):
    import torch
    from build_model import build_model
    x, y, _ = clips()
    torch.manual_seed(0)
    model = build_model(bf16_settings(use_vlm=True, language_model=tiny_bert), 4, verbose=False).model.train()
    train_bf16(model, dict(pixel_values=x, labels=y), steps=40, lr=2e-3)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        accuracy = (model.eval()(pixel_values=x).logits.argmax(-1) == y).float().mean().item()
    assert accuracy >= 0.75


def test_bf16_captioner_learns_its_captions(monkeypatch):
    """VideoMAE-tiny + random tiny GPT-2, 4 clips, 20 bf16 steps: the caption loss falls to under half the untrained
    model's."""
    import torch
    from build_model import build_model
    from videolab.models import captioner
    # a narrower GPT-2 than the 'tiny' preset (4 x 256): the same architecture, and bf16 is emulated on CPUs
    # without native bf16, where the preset made this test take minutes
    monkeypatch.setitem(captioner.GPT2_PRESETS, "tiny", dict(n_layer=2, n_embd=64, n_head=4, n_positions=128))
    x, _, captions = clips(per_class=1)
    torch.manual_seed(0)
    cfg = bf16_settings(use_vlm=True, captioning=True)
    model = build_model(cfg, 4, verbose=False, texts=captions).model.train()
    losses = train_bf16(model, dict(pixel_values=x, captions=captions), steps=20, lr=3e-3)
    assert losses[-1] < 0.5 * losses[0], losses[::5]
