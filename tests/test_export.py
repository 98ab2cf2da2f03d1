"""Hugging Face export, in this process: the stock VideoMAE class layer for layer, the route every backbone takes
(stock class / stock + head norm / our code), the copied model code's imports, the video processor against our
preprocessing, LoRA adapters apart or merged, the model card, ONNX parity, --push_to_hub at the library boundary,
and the export settings checked before training. (Loading the folders where this repo is not importable:
tests/test_export_clean.py.)"""
import json
import re

import pytest
import torch
from transformers import AutoConfig, AutoVideoProcessor, VideoMAEForVideoClassification

import main as train_main
from build_model import build_model
from conftest import TINY_FLAGS, resolve
from videolab.cli import run_cli
from videolab.core.errors import UsageError
from videolab.core.settings import Settings
from videolab.data.transforms import preprocess_video
from videolab.export import remote_code
from videolab.export.huggingface import ADAPTER_DIR, ONNX_FILE, export_pretrained, load_exported

FRAMES, SIZE = 4, 32
CLASSES = ["move_right", "move_left", "grow", "shrink", "spin"]  # 5: odd, so swapped dimensions fail loudly
# what the copied model code may import (besides the standard library): torch, transformers, timm and packages
# transformers itself depends on
ALLOWED_IMPORTS = {"torch", "transformers", "timm", "yaml", "tokenizers", "numpy", "safetensors", "huggingface_hub"}


def tiny(**kw) -> Settings:
    base = dict(model_size="tiny", num_frames=FRAMES, image_size=SIZE, fusion_depth=1, fusion_n_heads=2,
                lora_dropout=0.0)
    base.update(kw)
    return Settings(**base)


def clips(b=3, seed=0):
    return torch.randn(b, FRAMES, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(seed))


@torch.no_grad()
def logits(model, x):
    return model.eval()(pixel_values=x).logits


def move_adapters(model) -> None:
    """LoRA's B starts at zero: give the adapters weight so that losing them would show."""
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.2, generator=torch.Generator().manual_seed(len(name)))


def test_videomae_classifier_is_the_stock_class_layer_for_layer(tmp_path):
    cfg = tiny()
    built = build_model(cfg, len(CLASSES), verbose=False)
    files = export_pretrained(built.model, built.info, CLASSES, cfg, str(tmp_path))
    assert not [f for f in files if f.endswith(".py")]  # no model code: the stock class
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["model_type"] == "videomae" and "auto_map" not in config
    assert config["architectures"] == ["VideoMAEForVideoClassification"] and config["num_frames"] == FRAMES
    model, loading = VideoMAEForVideoClassification.from_pretrained(tmp_path, output_loading_info=True)
    assert not any(loading.values()), loading  # no missing, unexpected or mismatched key
    x = clips()
    torch.testing.assert_close(logits(model, x), logits(built.model, x), rtol=0, atol=0)
    assert AutoConfig.from_pretrained(tmp_path).id2label[4] == "spin"


@pytest.mark.parametrize("name,extra,route", [
    ("timesformer", {}, "timesformer"),  # stock class + the head's LayerNorm
    ("swin_tiny_patch4_window7_224", {}, "ours"),  # buffers left out of state_dict
    ("vit_small_patch16_224", dict(fusion="mamba"), "ours")])
def test_remote_code_round_trip(tmp_path, name, extra, route):
    cfg = tiny(vision_model=name, **extra)
    built = build_model(cfg, len(CLASSES), verbose=False)
    x = clips()
    files = export_pretrained(built.model, built.info, CLASSES, cfg, str(tmp_path))
    config = json.loads((tmp_path / "config.json").read_text())
    code = remote_code.code_files(str(tmp_path))
    if route == "timesformer":  # the stock TimeSformer plus one LayerNorm: one small file, stock weight names
        assert code == ["videolab_models_hf_stock.py"] and config["model_type"] == "timesformer-with-head-norm"
        from safetensors.torch import load_file
        keys = set(load_file(str(tmp_path / "model.safetensors")))
        assert {"fc_norm.weight", "classifier.weight"} <= keys and all(
            k.split(".")[0] in ("timesformer", "fc_norm", "classifier") for k in keys)
    else:
        assert "videolab_models_classifier.py" in code and "videolab_models_fusion.py" in code
    assert set(config["auto_map"]) == {"AutoConfig", "AutoModel", "AutoModelForVideoClassification"}
    assert {"config.json", "model.safetensors", "video_preprocessor_config.json", "README.md"} <= set(files)
    assert (config["num_frames"], config["image_size"]) == (FRAMES, SIZE)
    assert config["id2label"] == {str(i): c for i, c in enumerate(CLASSES)} and config["label2id"]["spin"] == 4
    loaded, _ = load_exported(str(tmp_path))
    torch.testing.assert_close(logits(loaded, x), logits(built.model, x), rtol=0, atol=1e-6)


def test_copied_model_code_is_self_contained(tmp_path):
    """The flat copy imports nothing of this repo and nothing beyond torch, transformers, timm (and what
    transformers depends on); it holds models/ and core/ modules only (never data/, tasks/ or the scripts)."""
    cfg = tiny(vision_model="vit_small_patch16_224", fusion="mamba2", fusion_head_dim=16)
    built = build_model(cfg, len(CLASSES), verbose=False)
    export_pretrained(built.model, built.info, CLASSES, cfg, str(tmp_path))
    files = remote_code.code_files(str(tmp_path))
    assert all(re.match(r"videolab_(core|models)_\w+\.py$", f) for f in files), files
    assert set(remote_code.third_party_imports(str(tmp_path))) <= ALLOWED_IMPORTS
    for name in files:
        text = (tmp_path / name).read_text()
        assert not re.search(r"^\s*(from|import) videolab\b", text, flags=re.MULTILINE), name
        assert not re.search(r"""["']videolab\.""", text), name  # registry targets rewritten too


def test_module_closure_and_rewrite():
    modules, only_named = remote_code.closure(["videolab.models.hf"])
    assert "videolab.models.fusion" in modules and not [m for m in modules if ".data." in m or ".tasks." in m]
    assert remote_code.rewrite('from videolab.models.fusion import X\nFUSION = "videolab.models.fusion:Y"\n'
                               '    from videolab.core.errors import E') == \
        'from .videolab_models_fusion import X\nFUSION = ".videolab_models_fusion:Y"\n' \
        '    from .videolab_core_errors import E'


@pytest.mark.parametrize("height,width", [(32, 48), (40, 56)], ids=["crop-only", "resize"])
def test_exported_video_processor_matches_our_preprocessing(tmp_path, height, width):
    """Exact when only cropping; when resizing, the processor rounds the resized uint8 frames to whole levels (we
    resize in float), so they agree to one level: 1/255 before normalisation."""
    cfg = tiny()
    built = build_model(cfg, len(CLASSES), verbose=False)
    export_pretrained(built.model, built.info, CLASSES, cfg, str(tmp_path))
    processor = AutoVideoProcessor.from_pretrained(tmp_path)
    video = torch.randint(0, 256, (FRAMES, 3, height, width), dtype=torch.uint8,
                          generator=torch.Generator().manual_seed(1))
    ours = preprocess_video(video, SIZE, built.backbone.mean, built.backbone.std)  # [T, C, S, S]
    theirs = processor(videos=[video], return_tensors="pt")["pixel_values"]  # [1, T, C, S, S]
    assert theirs.shape == (1, FRAMES, 3, SIZE, SIZE)
    level = 1.0 / 255 / min(built.backbone.std) if height != SIZE else 0.0
    torch.testing.assert_close(theirs[0], ours, rtol=0, atol=level + 1e-5)


@pytest.mark.parametrize("name", ["videomae", "vit_small_patch16_224"])
def test_lora_export_apart_and_merged_give_the_same_logits(tmp_path, name):
    cfg = tiny(vision_model=name, use_lora_vision=True)
    built = build_model(cfg, len(CLASSES), verbose=False)
    move_adapters(built.model)
    x = clips()
    expected = logits(built.model, x)
    apart, merged = tmp_path / "apart", tmp_path / "merged"
    files = export_pretrained(built.model, built.info, CLASSES, cfg, str(apart))
    assert {f"{ADAPTER_DIR}/adapter_config.json", f"{ADAPTER_DIR}/adapter_model.safetensors"} <= set(files)
    export_pretrained(built.model, built.info, CLASSES, cfg, str(merged), merge_lora=True)
    assert not (merged / ADAPTER_DIR).exists()
    from safetensors.torch import load_file
    for folder in (apart, merged):  # the base weights file never holds adapter weights
        assert not [k for k in load_file(str(folder / "model.safetensors")) if "lora" in k]
    with_adapter, _ = load_exported(str(apart))
    merged_model, _ = load_exported(str(merged))
    torch.testing.assert_close(logits(with_adapter, x), expected, rtol=0, atol=1e-5)
    torch.testing.assert_close(logits(merged_model, x), expected, rtol=0, atol=1e-5)
    with with_adapter.disable_adapter():  # the adapters change the output
        assert not torch.allclose(logits(with_adapter, x), expected, atol=1e-3)
    card = (apart / ADAPTER_DIR / "README.md").read_text()  # PEFT's template, filled in
    assert "Base model: **the export folder above" in card and "PeftModel.from_pretrained" in card
    assert any("lora" in n for n, _ in built.model.named_parameters())  # the trained model was not changed


def test_export_from_the_cli_writes_a_model_card_from_eval_json(tiny_dataset, tmp_path):
    export = tmp_path / "export"
    report = train_main.main(["--data_root", tiny_dataset, "--output_dir", str(tmp_path), "--run_name", "lora",
                              *TINY_FLAGS, "--epochs", "1", "--max_steps", "2", "--batch_size", "8",
                              "--use_lora_vision", "True", "--quiet", "--speed_repeats", "0", "--summary_csv", "none",
                              "--export_dir", str(export), "--merge_lora", "True", "--test_clips", "2"])
    model, processor = load_exported(str(export))
    assert model.config.id2label[0] == "move_right" and processor.crop_size.height == SIZE
    from build_model import rebuild_from_checkpoint
    from videolab.core.checkpoints import read_run_config
    best = str(tmp_path / "lora" / "best")
    trained = rebuild_from_checkpoint(tiny(use_lora_vision=True), read_run_config(best), best).model
    x = clips()
    torch.testing.assert_close(logits(model, x), logits(trained, x), rtol=0, atol=1e-5)
    card = (export / "README.md").read_text()
    eval_json = json.loads((tmp_path / "lora" / "eval.json").read_text())
    for label in ("move_right", "move_left", "move_down", "move_up"):
        assert f"`{label}`" in card
    assert "4 per clip, 32 x 32 px" in card and "pipeline_tag: video-classification" in card
    assert f"| top1 | {eval_json['top1']:.4f} |" in card and "multi-view" in card  # test protocol: 2 clips
    assert "**not pretrained** (random initialisation)" in card and "VideoMAEForVideoClassification" in card
    assert "value: " + str(round(eval_json["top1"], 4)) in card  # model-index: the Hub reads the accuracy
    assert report["top1"] == eval_json["top1"]


def test_onnx_export_matches_pytorch(tmp_path):
    pytest.importorskip("onnxruntime")
    pytest.importorskip("onnxscript")
    import onnxruntime
    cfg = tiny(use_lora_vision=True)
    built = build_model(cfg, len(CLASSES), verbose=False)
    move_adapters(built.model)  # adapters apart in the folder, merged into model.onnx
    files = export_pretrained(built.model, built.info, CLASSES, cfg, str(tmp_path), onnx=True)
    assert ONNX_FILE in files
    session = onnxruntime.InferenceSession(str(tmp_path / ONNX_FILE), providers=["CPUExecutionProvider"])
    for batch in (2, 5):  # a dynamic batch axis
        x = clips(batch, seed=batch)
        got = torch.from_numpy(session.run(None, {"pixel_values": x.numpy()})[0])
        assert got.shape == (batch, len(CLASSES))
        assert (got - logits(built.model, x)).abs().max() <= 1e-4
    assert "## ONNX" in (tmp_path / "README.md").read_text()


def test_push_to_hub_uploads_the_export_folder(tmp_path, monkeypatch):
    """The upload at the library boundary: HfApi's create_repo and upload_folder get the repo and the folder."""
    import huggingface_hub

    from videolab.export import push
    calls = []

    class FakeApi:
        def create_repo(self, repo_id, **kwargs):
            calls.append(("create_repo", repo_id, kwargs))

        def upload_folder(self, **kwargs):
            calls.append(("upload_folder", kwargs["repo_id"], kwargs))
            return huggingface_hub.CommitInfo(commit_url=f"https://huggingface.co/{kwargs['repo_id']}/commit/1",
                                              commit_message="", commit_description="", oid="1")

    monkeypatch.setattr(huggingface_hub, "HfApi", FakeApi)
    cfg = tiny()
    built = build_model(cfg, len(CLASSES), verbose=False)
    export_pretrained(built.model, built.info, CLASSES, cfg, str(tmp_path), repo_id="me/tiny-videomae")
    assert push.push_folder(str(tmp_path), "me/tiny-videomae", private=True).endswith("/commit/1")
    assert calls[0] == ("create_repo", "me/tiny-videomae", dict(repo_type="model", private=True, exist_ok=True))
    assert calls[1][1] == "me/tiny-videomae" and calls[1][2]["folder_path"] == str(tmp_path)
    assert 'from_pretrained("me/tiny-videomae")' in (tmp_path / "README.md").read_text()  # the card names the repo


def test_push_is_checked_before_training(monkeypatch, capsys, in_tmp):
    from videolab.export import push
    code = run_cli(train_main.main, ["--export_dir", "x", "--push_to_hub", "me/model"])  # HF_HUB_OFFLINE=1 here
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "Hub cannot be reached" in err[0] and "hf upload me/model" in err[0]
    monkeypatch.setattr(push, "hub_reachable", lambda: True)
    monkeypatch.setattr("huggingface_hub.get_token", lambda: None)
    with pytest.raises(UsageError, match="hf auth login"):
        push.check_push("me/model")
    with pytest.raises(UsageError, match="not a Hub repo id"):
        push.check_push("me/bad name")


@pytest.mark.parametrize("flags,expected", [
    (["--merge_lora", "True"], "--merge_lora applies to --export_dir"),
    (["--export_onnx", "True"], "--export_onnx applies to --export_dir"),
    (["--push_to_hub", "me/x"], "--push_to_hub applies to --export_dir"),
    (["--export_dir", "x", "--hub_private", "True"], "--hub_private True applies to --push_to_hub"),
    (["--export_dir", "x", "--export_onnx", "True", "--modalities", "video,audio", "--dataset", "synthetic_av"],
     "--export_onnx exports the video classifiers"),
])
def test_export_settings_are_refused_before_training(flags, expected, in_tmp):
    with pytest.raises(UsageError, match=re.escape(expected)):
        resolve(flags)


def test_every_model_kind_can_export(in_tmp):
    """--export_dir is accepted for vision + language runs too (it used to be refused after the evaluation)."""
    for flags in (["--use_vlm", "True"], ["--use_vlm", "True", "--captioning", "True"],
                  ["--use_vlm", "True", "--captioning", "True", "--language_model", "qwen2-vl"],
                  ["--modalities", "video,audio", "--dataset", "synthetic_av"], ["--task", "pretrain"]):
        resolve(flags + ["--export_dir", "x"])


def test_qwen2_vl_lora_on_a_hub_model_exports_as_an_adapter_naming_its_base(tmp_path):
    """Only LoRA adapters trained on a Hub model: the export is the adapter folder with the processor and the
    generation config, and the base is a reference (base_model_name_or_path). Applied to that base (here the
    tiny model standing in for the Hub one), the adapters give the run's answers."""
    from transformers import AutoProcessor

    from videolab.export.huggingface import export_qwen_vl, strip_lora
    from videolab.models.qwen_vl import QwenVLCaptioner
    captions = ["a red ball moves right", "a blue square moves left", "a green key spins"]
    cfg = tiny(use_vlm=True, captioning=True, language_model="qwen2-vl", use_lora_llm=True, max_new_tokens=5)
    torch.manual_seed(0)
    built = build_model(cfg, 3, verbose=False, texts=captions)
    move_adapters(built.model)
    hub_id = "Qwen/Qwen2-VL-2B-Instruct"
    info = dict(built.info, language_model_pretrained=True, language_model_source=hub_id)
    files = export_qwen_vl(built.model, info, cfg, str(tmp_path))
    assert {"adapter_config.json", "adapter_model.safetensors", "generation_config.json", "README.md"} <= set(files)
    assert "model.safetensors" not in files and "config.json" not in files  # the base weights stay on the Hub
    assert json.loads((tmp_path / "adapter_config.json").read_text())["base_model_name_or_path"] == hub_id
    assert f"base_model: {hub_id}" in (tmp_path / "README.md").read_text()
    from peft import PeftModel
    hub_model = strip_lora(built.model, merge=False)[0].language_model  # what from_pretrained(hub_id) would give
    model = PeftModel.from_pretrained(hub_model, str(tmp_path)).eval()
    again = QwenVLCaptioner(model, AutoProcessor.from_pretrained(tmp_path))
    frames = torch.rand(2, FRAMES, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(2))
    assert again.generate(frames, max_new_tokens=5) == built.model.generate(frames, max_new_tokens=5)


def test_composed_text_model_loads_its_tokenizer_from_the_folder(tmp_path, tiny_bert):
    """A composed video + text model turns strings into ids itself: from_pretrained (remote code) reads the
    tokenizer saved beside the weights."""
    from transformers import AutoModel

    from videolab.export.huggingface import save_composed
    cfg = tiny(modalities="video,text", language_model=tiny_bert, fusion="transformer")
    built = build_model(cfg, len(CLASSES), verbose=False, texts=["a hint"])
    files = save_composed(built.model, CLASSES, str(tmp_path), cfg=cfg, info=built.info)
    assert {"tokenizer_config.json", "videolab_models_compose.py"} <= set(files)
    loaded = AutoModel.from_pretrained(tmp_path, trust_remote_code=True).eval()
    x, text = clips(2), ["the ball moves left", "played backwards"]
    with torch.no_grad():
        torch.testing.assert_close(loaded(pixel_values=x, text=text).logits,
                                   built.model.eval()(pixel_values=x, text=text).logits, rtol=0, atol=1e-6)
    assert type(loaded).__module__.startswith("transformers_modules.")  # the folder's copy, not videolab's


def test_adapters_of_two_parts_with_their_own_ranks_go_into_one_adapter_folder(tmp_path, tiny_bert):
    """LoRA on the vision backbone (rank 8) and on the language model (rank 4, its own alpha): one PEFT folder,
    the second part's ranks and alphas per layer, and the trained model's logits back."""
    from peft import PeftModel
    from transformers import AutoModelForVideoClassification

    from videolab.export.huggingface import export_vision_language
    cfg = tiny(use_vlm=True, language_model=tiny_bert, use_lora_vision=True, use_lora_llm=True, lora_llm_r=4,
               lora_llm_alpha=2.0, max_video_tokens=8)
    built = build_model(cfg, len(CLASSES), verbose=False)
    move_adapters(built.model)
    export_vision_language(built.model, built.info, CLASSES, cfg, str(tmp_path))
    config = json.loads((tmp_path / ADAPTER_DIR / "adapter_config.json").read_text())
    assert config["r"] == 8 and set(config["rank_pattern"].values()) == {4}
    assert set(config["alpha_pattern"].values()) == {2.0}
    model = AutoModelForVideoClassification.from_pretrained(tmp_path, trust_remote_code=True)
    model = PeftModel.from_pretrained(model, str(tmp_path), subfolder=ADAPTER_DIR)
    x = clips(2)
    torch.testing.assert_close(logits(model, x), logits(built.model, x), rtol=0, atol=1e-5)
