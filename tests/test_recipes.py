"""Training recipes (issue 22): EMA of the weights, layer-wise lr decay, drop path, the peft LoRA options.

The EMA update is checked against its formula on a toy model and a run with --model_ema resumed mid-run ends with
bit-identical (EMA) weights and metrics; the layer-decay parameter groups hold the lrs the formula gives for
VideoMAE, TimeSformer, timm ViT and Swin.
"""
import math

import pytest
import torch
from safetensors.torch import load_file
from torch import nn

import build_model
import main as train_main
import train_code
from conftest import TINY_FLAGS, resolve
from videolab.core.checkpoints import WEIGHTS_FILE
from videolab.core.errors import UsageError
from videolab.models.layer_decay import backbone_layer_ids


pytestmark = pytest.mark.usefixtures("one_thread")  # bit-identical resumes need one thread count


# ----------------------------------------------------------------------------------------------------------------
# EMA
# ----------------------------------------------------------------------------------------------------------------
def test_ema_update_is_the_formula_on_a_toy_model():
    from timm.utils import ModelEmaV3
    torch.manual_seed(0)
    model = nn.Linear(3, 2)
    ema = ModelEmaV3(model, decay=0.9)
    before = {k: v.clone() for k, v in ema.module.state_dict().items()}
    with torch.no_grad():
        model.weight.add_(1.0)
        model.bias.mul_(-2.0)
    ema.update(model)  # no step: the fixed decay
    for name, value in model.state_dict().items():
        expected = 0.9 * before[name] + 0.1 * value
        assert torch.allclose(ema.module.state_dict()[name], expected, atol=1e-7), name
    # warm-up (what --model_ema_warmup asks for): decay 1 - (1 + step) ** -0.75 at step 1 + step, capped
    warm = ModelEmaV3(model, decay=0.999, use_warmup=True, warmup_power=3 / 4)
    assert warm.get_decay(1) == 0.0  # the first update copies the weights
    assert math.isclose(warm.get_decay(11), 1 - 11 ** -0.75)
    assert warm.get_decay(10 ** 9) == 0.999


RUN = [*TINY_FLAGS, "--epochs", "2", "--batch_size", "4", "--seed", "0", "--quiet", "--deterministic", "True",
       "--save_steps", "3", "--save_total_limit", "0", "--speed_repeats", "0", "--summary_csv", "none",
       "--model_ema", "True", "--model_ema_decay", "0.5", "--layer_decay", "0.7"]


def test_ema_run_validates_and_saves_the_average_and_resumes_bit_identically(tiny_dataset, tmp_path):
    reference = train_main.main(["--data_root", tiny_dataset, "--output_dir", str(tmp_path), "--run_name", "ref",
                                 *RUN])
    run_dir = tmp_path / "ref"
    ema = load_file(str(run_dir / "last" / train_code.EMA_FILE))
    weights = load_file(str(run_dir / "last" / WEIGHTS_FILE))
    assert ema.keys() == weights.keys()
    assert any(not torch.equal(ema[k], weights[k]) for k in ema), "the average must differ from the weights"
    best = load_file(str(run_dir / "best" / WEIGHTS_FILE))
    if reference["checkpoint_epoch"] == 2:  # best/ = the last epoch: it holds the average, not the weights
        assert all(torch.equal(best[k], ema[k]) for k in ema)
    # resume from the mid-epoch checkpoint at step 3: every weight, the average and the metrics as before
    resumed = train_main.main(["--data_root", tiny_dataset, "--output_dir", str(tmp_path), "--run_name", "res",
                               *RUN, "--resume_from_checkpoint", str(run_dir / "checkpoint-3")])
    for name, expected in ((WEIGHTS_FILE, weights), (train_code.EMA_FILE, ema)):
        got = load_file(str(tmp_path / "res" / "last" / name))
        assert all(torch.equal(got[k], expected[k]) for k in expected), name
    strip = lambda history: [{k: v for k, v in r.items() if k != "epoch_seconds"} for r in history]  # noqa: E731
    assert strip(resumed["history"]) == strip(reference["history"])
    assert resumed["top1"] == reference["top1"] and resumed["loss"] == reference["loss"]


# ----------------------------------------------------------------------------------------------------------------
# layer-wise lr decay
# ----------------------------------------------------------------------------------------------------------------
def built(*flags):
    cfg, _, _ = resolve([*TINY_FLAGS, *flags])
    return build_model.build_model(cfg, 4, verbose=False).model


def group_lr(groups, param) -> float:
    return next(g["lr"] for g in groups if any(p is param for p in g["params"]))


@pytest.mark.parametrize("vision_model, block, embedding", [
    ("videomae", "backbone.model.encoder.layer.{i}.attention.attention.query.weight",
     "backbone.model.embeddings.patch_embeddings.projection.weight"),
    ("timesformer", "backbone.model.encoder.layer.{i}.attention.attention.qkv.weight",
     "backbone.model.embeddings.patch_embeddings.projection.weight"),
    ("vit_small_patch16_224", "backbone.model.blocks.{i}.attn.qkv.weight", "backbone.model.patch_embed.proj.weight"),
])
def test_layer_decay_groups_have_the_expected_lrs(vision_model, block, embedding):
    model = built("--vision_model", vision_model)
    params = dict(model.named_parameters())
    depth = 3  # the tiny presets' blocks
    groups = train_code.param_groups(model, 0.05, 1e-3, layer_decay=0.5)
    for i in range(depth):  # block i is layer i + 1 of depth + 1
        assert math.isclose(group_lr(groups, params[block.format(i=i)]), 1e-3 * 0.5 ** (depth - i))
    assert math.isclose(group_lr(groups, params[embedding]), 1e-3 * 0.5 ** (depth + 1))
    assert math.isclose(group_lr(groups, params["head.2.weight"]), 1e-3)
    decays = {g["weight_decay"] for g in groups if any(p.ndim == 1 for p in g["params"])}
    assert decays == {0.0}  # biases and norms keep no weight decay
    plain = train_code.param_groups(model, 0.05, 1e-3)
    assert {g["lr"] for g in plain} == {1e-3}


def test_layer_decay_on_swin_follows_timm_blocks_and_lora_adapters_decay_too():
    model = built("--vision_model", "swin_tiny_patch4_window7_224", "--use_lora_vision", "True")
    ids, top = backbone_layer_ids(model)[0]
    names = {id(p): n for n, p in model.named_parameters()}
    by_name = {names[k]: v for k, v in ids.items()}
    first = [v for n, v in by_name.items() if "layers.0.blocks.0." in n]
    last = [v for n, v in by_name.items() if "layers.1.blocks.1." in n]
    stem = [v for n, v in by_name.items() if "patch_embed" in n]
    assert set(stem) == {0} and len(set(first)) == 1 and len(set(last)) == 1 and first[0] < last[0]
    assert any("lora_A" in n for n in by_name)  # the adapters of a block train at that block's lr
    groups = train_code.param_groups(model, 0.05, 1.0, layer_decay=0.8)
    assert len({round(g["lr"], 9) for g in groups}) > 3


def test_layer_decay_without_a_vit_backbone_is_refused():
    model = nn.Sequential(nn.Linear(2, 2))
    with pytest.raises(UsageError, match="--layer_decay"):
        train_code.param_groups(model, 0.05, 1e-3, layer_decay=0.75)


# ----------------------------------------------------------------------------------------------------------------
# drop path, LoRA options
# ----------------------------------------------------------------------------------------------------------------
def test_drop_path_reaches_timm_and_timesformer_and_is_refused_for_videomae():
    vit = built("--vision_model", "vit_small_patch16_224", "--drop_path_rate", "0.2")
    rates = [m.drop_prob for m in vit.modules() if type(m).__name__ == "DropPath"]
    assert rates and math.isclose(max(rates), 0.2, rel_tol=1e-6)
    tsf = built("--vision_model", "timesformer", "--drop_path_rate", "0.1")
    assert tsf.backbone.model.config.drop_path_rate == 0.1
    with pytest.raises(UsageError, match="--drop_path_rate: videomae"):
        resolve([*TINY_FLAGS, "--vision_model", "videomae", "--drop_path_rate", "0.1"])


def test_lora_options_rslora_bias_and_excluded_modules_reach_peft():
    model = built("--vision_model", "vit_small_patch16_224", "--use_lora_vision", "True", "--lora_r", "4",
                  "--lora_alpha", "8", "--lora_use_rslora", "True", "--lora_bias", "all",
                  "--lora_exclude_modules", "blocks.0.attn.qkv")
    layers = {n: m for n, m in model.named_modules() if hasattr(m, "scaling") and isinstance(m.scaling, dict)}
    assert layers and all(math.isclose(m.scaling["default"], 8 / math.sqrt(4)) for m in layers.values())
    assert not any("blocks.0.attn.qkv" in n for n in layers)  # excluded: no adapter there
    assert any("blocks.1.attn.qkv" in n for n in layers)
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert any(n.endswith("blocks.0.mlp.fc1.bias") for n in trainable)  # bias "all": every bias trains
    assert not any(n.endswith("blocks.0.mlp.fc1.weight") for n in trainable)
    plain = built("--vision_model", "vit_small_patch16_224", "--use_lora_vision", "True", "--lora_r", "4",
                  "--lora_alpha", "8")
    assert all(math.isclose(m.scaling["default"], 2.0) for n, m in plain.named_modules()
               if hasattr(m, "scaling") and isinstance(m.scaling, dict))
