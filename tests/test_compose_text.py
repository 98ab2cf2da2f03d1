"""Composed models with a text encoder (issue 10): masks in every fusion, LoRA / freezing of the video and text
encoders, save/load round trips with the tokenizer, refusals, and a train -> inference run on text hints."""
import os

import pytest
import torch

from build_model import build_model, rebuild_from_checkpoint
from conftest import resolve
from videolab.cli import run_cli
from videolab.core.errors import UsageError
from videolab.core.settings import settings_from_dict
from videolab.export.huggingface import load_composed, save_composed
from test_compose import TINY, assert_yaml_equals_flags, av_root, batch, build  # noqa: F401 (av_root: a fixture)

FUSIONS = ["concat", "transformer", "mamba", "mamba2", "bottleneck"]
TEXTS = ["the clip is played backwards", "forwards"]


def text_settings(tiny_bert, *flags, modalities="video,text"):
    return resolve(TINY + ["--modalities", modalities, "--language_model", tiny_bert, *flags], "t", "t")[0]


def tokens(model, texts, extra=0):
    """input_ids / text_attention_mask [B, L + extra]: ``extra`` padding columns holding random ids (never read)."""
    ids, mask = model.encoders["text"].tokenize(texts, "cpu")
    junk = torch.randint(1000, 2000, (ids.shape[0], extra), generator=torch.Generator().manual_seed(1))
    return torch.cat([ids, junk], 1), torch.cat([mask, torch.zeros_like(junk)], 1)


# ---------------------------------------------------------------------------------------------- masks
@pytest.mark.parametrize("fusion", FUSIONS)
def test_text_padding_changes_nothing(tiny_bert, fusion):
    model = build(text_settings(tiny_bert, "--fusion", fusion, modalities="video,audio,text"))
    inputs = batch()
    ids, mask = tokens(model, TEXTS)
    padded_ids, padded_mask = tokens(model, TEXTS, extra=5)
    with torch.no_grad():
        short = model(**inputs, input_ids=ids, text_attention_mask=mask).logits
        padded = model(**inputs, input_ids=padded_ids, text_attention_mask=padded_mask).logits
        # from strings: a short text alone, or padded inside a batch beside a longer one
        alone = model(**{k: v[1:] for k, v in inputs.items()}, text=TEXTS[1:]).logits
        beside = model(**inputs, text=TEXTS).logits
    assert (mask == 0).any()  # the short text is padded within the batch
    torch.testing.assert_close(padded, short, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(beside, short)
    torch.testing.assert_close(beside[1:], alone, atol=1e-5, rtol=1e-4)


def test_yaml_declared_text_model_equals_flag_declared(in_tmp, tiny_bert):
    section = dict(encoders=dict(video="backbone", audio=dict(name="conv_transformer"),
                                 text=dict(name="lm", language_model=tiny_bert, max_tokens=12)),
                   fusion=dict(name="bottleneck"), head="linear")
    flags = ["--modalities", "video,audio,text", "--fusion", "bottleneck", "--language_model", tiny_bert,
             "--max_text_tokens", "12"]
    assert_yaml_equals_flags(in_tmp, flags, section, dict(batch(), text=TEXTS), common=["--use_lora_llm", "True"])


def test_text_reaches_the_prediction_and_is_required(tiny_bert):
    model = build(text_settings(tiny_bert))
    video = batch()["pixel_values"]
    with torch.no_grad():
        a = model(pixel_values=video, text=["forwards", "forwards"]).logits
        b = model(pixel_values=video, text=["backwards", "backwards"]).logits
    assert not torch.allclose(a, b)
    with pytest.raises(ValueError, match="this model reads text"):
        model(pixel_values=video)
    assert model.batch_keys["text"] == "hint"


def test_text_only_model_works(tiny_bert):
    model = build(text_settings(tiny_bert, "--fusion", "transformer", modalities="text"))
    assert model.modalities == ["text"] and "pixel_values" not in model.batch_keys
    assert model(text=TEXTS).logits.shape == (2, 8)


# ---------------------------------------------------------------------------------------------- freezing / LoRA
def grads_after_backward(model, inputs):
    model.train()
    model(**inputs, labels=torch.tensor([1, 2])).loss.backward()
    return {name: p.grad for name, p in model.named_parameters()}


def test_frozen_encoders_get_no_gradient(tiny_bert):
    model = build(text_settings(tiny_bert, "--freeze_visionbackbone", "True", "--freeze_language_model", "True"))
    grads = grads_after_backward(model, dict(batch(), text=TEXTS))
    frozen = [n for n in grads if n.startswith(("encoders.video.", "encoders.text."))]
    assert frozen and all(grads[n] is None for n in frozen)
    assert all(not p.requires_grad for n, p in model.named_parameters() if n in frozen)
    learning = [n for n in grads if n.startswith(("project.", "fusion.", "head."))]
    assert learning and all(grads[n] is not None and grads[n].abs().sum() > 0 for n in learning)


def test_lora_adapters_are_the_only_trainable_encoder_weights_and_round_trip(tiny_bert, tmp_path):
    cfg = text_settings(tiny_bert, "--use_lora_vision", "True", "--use_lora_llm", "True", "--lora_r", "2",
                        "--fusion", "bottleneck")
    built = build_model(cfg, 8, verbose=False)
    model = built.model
    assert built.info["lora_targets"] == ["query", "value"]
    for modality in ("video", "text"):
        trainable = [n for n, p in model.encoders[modality].named_parameters() if p.requires_grad]
        assert trainable and all("lora_" in n for n in trainable), modality
        assert any("lora_" in n for n, p in model.encoders[modality].named_parameters())
    with torch.no_grad():  # adapters start as a no-op (B = 0): move them so the round trip compares something
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.1)
    grads = grads_after_backward(model, dict(batch(), text=TEXTS))
    assert all((g is not None) == ("lora_" in n) for n, g in grads.items() if n.startswith("encoders."))
    model.eval()
    inputs = dict(batch(), text=TEXTS)
    with torch.no_grad():
        expected = model(**inputs).logits
    # Hugging Face export: save_pretrained of model + tokenizer (+ video processor), from_pretrained back
    folder = str(tmp_path / "export")
    written = save_composed(model, [f"c{i}" for i in range(8)], folder)
    assert {"config.json", "model.safetensors", "tokenizer_config.json", "video_preprocessor_config.json"} <= set(
        written)
    loaded, processors = load_composed(folder)
    assert processors["tokenizer"] is not None and loaded.config.text_arch["hidden_size"] == 32
    # a run's checkpoint: weights + tokenizer/ (BuiltModel.write_assets), rebuilt from its run config
    checkpoint = str(tmp_path / "checkpoint")
    os.makedirs(checkpoint)
    built.write_assets(checkpoint)
    from safetensors.torch import save_file
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, os.path.join(checkpoint,
                                                                                     "model.safetensors"))
    run_config = dict(model_info=built.info, class_names=[f"c{i}" for i in range(8)])
    rebuilt = rebuild_from_checkpoint(settings_from_dict(cfg.to_dict()), run_config, checkpoint).model.eval()
    with torch.no_grad():
        for other in (loaded, rebuilt):
            torch.testing.assert_close(other(**inputs).logits, expected)


# ---------------------------------------------------------------------------------------------- refusals
@pytest.mark.parametrize("flags, expected", [
    (["--modalities", "video,audio", "--use_lora_llm", "True"], "acts on the text encoder"),
    (["--modalities", "audio", "--freeze_visionbackbone", "True"], "acts on the video encoder"),
    (["--modalities", "video,text", "--use_vlm", "True"], "sends the video tokens through the language model"),
    (["--modalities", "video,text", "--use_text", "True"], "drop --use_text"),
    (["--modalities", "video,text", "--use_lora_llm", "True", "--freeze_language_model", "True"], "contradict"),
])
def test_flags_without_their_encoder_are_refused(flags, expected):
    with pytest.raises(UsageError, match=expected):
        resolve(TINY + flags, "t", "t")


def test_text_needs_a_dataset_with_text(capsys):
    import main
    args = [a for a in TINY if a not in ("--dataset", "synthetic_av")]
    assert run_cli(main.main, args + ["--dataset", "videofolder", "--modalities", "video,text"]) == 2
    assert "text hints" in capsys.readouterr().err


# ---------------------------------------------------------------------------------------------- train + infer
def test_train_then_infer_with_text_hints(tiny_dataset, tiny_bert, tmp_path):
    import create_dummy
    import inference
    import main
    out = str(tmp_path / "runs")
    args = [a for a in TINY if a not in ("--dataset", "synthetic_av", "--audio_seconds", "0.5")]
    report = main.main(args + ["--dataset", "synthetic", "--data_root", tiny_dataset, "--modalities", "video,text",
                               "--language_model", tiny_bert, "--use_lora_llm", "True", "--epochs", "1",
                               "--max_steps", "2", "--batch_size", "8", "--output_dir", out, "--run_name", "vt",
                               "--quiet", "--summary_csv", "none", "--speed_repeats", "0"])
    assert report["language_model"] == tiny_bert
    best = os.path.join(out, "vt", "best")
    assert os.path.isfile(os.path.join(best, "tokenizer", "tokenizer_config.json"))
    frames = str(tmp_path / "frames")
    create_dummy.main(["--data_root", tiny_dataset, "--out_dir", frames, "--max_videos", "4", "--quiet"])
    common = ["--video_dir", frames, "--checkpoint", best, "--quiet"]
    hints = inference.main(common + ["--predictions_file", str(tmp_path / "a.json")])  # texts.json beside frames
    forced = inference.main(common + ["--text_input", "what moves?", "--predictions_file", str(tmp_path / "b.json")])
    assert len(hints["predictions"]) == len(forced["predictions"]) == 4
    os.remove(os.path.join(frames, "texts.json"))
    with pytest.raises(UsageError, match="trained with a text encoder"):
        inference.main(common)


def test_audio_visual_set_carries_text_hints_for_video_audio_text(av_root, tiny_bert, in_tmp):
    import dummy_data
    import main
    from VLoader import build_datasets
    cfg = text_settings(tiny_bert, "--data_root", av_root, "--val_fraction", "0", modalities="video,audio,text")
    data = build_datasets(cfg, (0.5,) * 3, (0.5,) * 3)
    for i in range(len(data.train)):
        item = data.train[i]
        name = data.train.class_names[item["labels"]]  # e.g. rotate_clockwise+high_tone
        motion = dummy_data.CLASS_NAMES.index(name.split("+")[0])
        assert item["hint"] == dummy_data.HINT_BY_FAMILY[dummy_data.class_family(motion)], name
    report = main.main(TINY + ["--data_root", av_root, "--modalities", "video,audio,text", "--language_model",
                               tiny_bert, "--epochs", "1", "--batch_size", "4", "--output_dir", str(in_tmp / "r"),
                               "--quiet", "--summary_csv", "none", "--speed_repeats", "0", "--val_fraction", "0"])
    assert report["num_samples"] == 8 and report["settings"]["modalities"] == "video,audio,text"


def test_pretrained_text_encoder_weights_learn_at_the_language_model_rate(tiny_bert):
    from train_code import param_groups
    model = build(text_settings(tiny_bert))
    lm = {id(p) for p in model.lm.parameters()}
    rates = {(id(p) in lm, g["lr"]) for g in param_groups(model, 0.05, 1e-3) for p in g["params"]}
    assert rates == {(True, 1e-4), (False, 1e-3)}  # the loaded language model at lr / 10, new parts at lr
