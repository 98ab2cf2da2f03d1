"""Qwen2-VL video description (tiny random config, offline): placeholder counts, masking, LoRA, generation, round
trips; and Qwen2 as a text encoder (last-token pooling, padding side)."""
import os

import pytest
import torch

from videolab.models.captioner import IGNORE_INDEX
from videolab.models.qwen_vl import (DEFAULT_QUESTION, IM_END, VIDEO_PAD, QwenVLCaptioner, check_video_tokens,
                                     expected_video_tokens, make_processor, prompt_text, tiny_qwen2_vl_config,
                                     train_qwen_tokenizer)
from videolab.core.settings import Settings

CAPTIONS = ["a red triangle moves to the right on a dark blue background",
            "a green key rotates clockwise on a black background", "a white ell shrinks on a grey background"]


@pytest.fixture(scope="module")
def tokenizer():
    return train_qwen_tokenizer(CAPTIONS)


def make_model(tokenizer, seed=0, image_size=32, **cfg_kw):
    from transformers import Qwen2VLForConditionalGeneration

    from videolab.models.qwen_vl import prepare_for_training
    torch.manual_seed(seed)
    config = tiny_qwen2_vl_config(tokenizer)
    model = Qwen2VLForConditionalGeneration(config)
    cfg = Settings(use_vlm=True, captioning=True, language_model="qwen2-vl", **dict(dict(use_lora_llm=True), **cfg_kw))
    model = prepare_for_training(model, cfg)
    return QwenVLCaptioner(model, make_processor(tokenizer, config.vision_config, image_size)).eval()


@pytest.fixture(scope="module")
def model(tokenizer):
    return make_model(tokenizer)


def clips(n, frames=4, size=32, seed=0):
    return torch.rand(n, frames, 3, size, size, generator=torch.Generator().manual_seed(seed))  # [B, T, C, H, W]


@pytest.mark.parametrize("frames,height,width", [(2, 32, 32), (4, 32, 32), (8, 32, 32), (5, 48, 32), (6, 16, 64)])
def test_placeholder_count_matches_the_features(model, frames, height, width):
    """The processor expands <|video_pad|> to t*h*w / merge^2 copies, and the vision tower gives that many
    features, for several frame counts and sizes (an odd frame count is padded to the temporal patch)."""
    videos = torch.rand(2, frames, 3, height, width)
    enc = model.collator(videos, ["what moves?", None])
    need = expected_video_tokens(enc["video_grid_thw"], model.merge_size)
    got = (enc["input_ids"] == model.video_token_id).sum(-1).tolist()
    assert got == need and need[0] > 0
    check_video_tokens(enc["input_ids"], enc["video_grid_thw"], model.video_token_id, model.merge_size)
    base = model.base_model
    features = base.model.get_video_features(enc["pixel_values_videos"], enc["video_grid_thw"]).pooler_output
    assert [f.shape[0] for f in features] == need
    with torch.no_grad():
        out = model.run_model(**enc)
    assert out.logits.shape[:2] == enc["input_ids"].shape


def test_a_broken_prompt_gives_our_error_not_the_librarys(model):
    """The seed's failure: a hand-written prompt with one <|video_pad|> (or none) for a video of many features."""
    videos = clips(1, frames=8)
    enc = model.collator(videos, ["describe"])
    hand_written = f"<|im_start|>user\n<|vision_start|>{VIDEO_PAD}<|vision_end|>describe<|im_end|>\n"
    enc["input_ids"] = model.tokenizer(hand_written, return_tensors="pt")["input_ids"]
    enc["attention_mask"] = torch.ones_like(enc["input_ids"])
    enc["mm_token_type_ids"] = (enc["input_ids"] == model.video_token_id).long() * 2
    with pytest.raises(ValueError, match=r"prompt 0 holds 1 video placeholder tokens .* gives 16 features .*chat "
                                         r"template"):
        model.run_model(**enc)
    enc["input_ids"][enc["input_ids"] == model.video_token_id] = model.tokenizer.pad_token_id
    with pytest.raises(ValueError, match="holds 0 video placeholder tokens"):
        model.run_model(**enc)


def test_loss_is_masked_to_answer_tokens(model, tokenizer):
    model = QwenVLCaptioner(model.language_model, model.processor, max_caption_tokens=10)
    videos = clips(3)
    answers = [CAPTIONS[0], CAPTIONS[1] + " " + CAPTIONS[2], "yes"]
    questions = ["what happens?", "", "is something moving in this rather long clip?"]
    enc = model.collator(videos, questions, answers)
    end = tokenizer.convert_tokens_to_ids(IM_END)
    for i, (q, a) in enumerate(zip(questions, answers)):
        target = tokenizer(a, add_special_tokens=False)["input_ids"][:model.collator.max_answer_tokens] + [end]
        labelled = enc["labels"][i][enc["labels"][i] != IGNORE_INDEX].tolist()
        assert labelled == target  # exactly the answer + <|im_end|>
        n_prompt = int((enc["labels"][i] == IGNORE_INDEX)[: int(enc["attention_mask"][i].sum())].sum())
        prompt_ids = enc["input_ids"][i][:n_prompt]
        assert tokenizer.decode(prompt_ids).startswith("<|im_start|>system")  # right padding: prompt first
        assert (enc["labels"][i][enc["attention_mask"][i] == 0] == IGNORE_INDEX).all()
    assert len(tokenizer(answers[1], add_special_tokens=False)["input_ids"]) > model.collator.max_answer_tokens
    # the loss is the mean cross-entropy over exactly those positions (shifted by one)
    out = model(videos, answers, questions)
    logits = out.logits[:, :-1].float()
    labels = enc["labels"][:, 1:]
    manual = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), labels.reshape(-1),
                                               ignore_index=IGNORE_INDEX)
    torch.testing.assert_close(out.loss, manual, rtol=1e-4, atol=1e-5)
    assert prompt_text(model.processor, None).count(DEFAULT_QUESTION) == 1


def test_lora_targets_exactly_q_and_v_projections_and_the_vision_tower_is_frozen(model):
    lora_modules = {name.rsplit(".lora_A", 1)[0] for name, _ in model.named_parameters() if ".lora_A" in name}
    assert lora_modules and {m.rsplit(".", 1)[1] for m in lora_modules} == {"q_proj", "v_proj"}
    assert all(".language_model." in m for m in lora_modules)
    layers = model.base_model.config.text_config.num_hidden_layers
    assert len(lora_modules) == 2 * layers
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n for n in trainable)
    adapter = model.language_model.peft_config["default"]
    assert (adapter.r, adapter.lora_alpha, adapter.lora_dropout) == (64, 128.0, 0.05)


def test_vision_tower_trains_when_asked_and_gradient_checkpointing_runs(tokenizer):
    model = make_model(tokenizer, train_vision_tower=True, gradient_checkpointing=True).train()
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert any(".visual." in n for n in trainable)
    assert any(getattr(m, "gradient_checkpointing", False) for m in model.base_model.modules())
    out = model(clips(2), CAPTIONS[:2])
    out.loss.backward()
    grads = [p.grad for n, p in model.named_parameters() if "lora_B" in n]
    assert grads and all(g is not None for g in grads)


def test_generation_greedy_and_beams_return_clean_text(tokenizer):
    model = make_model(tokenizer, seed=1)
    videos = clips(2, seed=3)
    greedy = model.generate(videos, ["what happens?", None], max_new_tokens=6)
    beams = model.generate(videos, ["what happens?", None], num_beams=3, max_new_tokens=6, repetition_penalty=1.3)
    for texts in (greedy, beams):
        assert len(texts) == 2 and all(isinstance(t, str) for t in texts)
        assert not any(s in t for t in texts for s in ("<|im_end|>", "<|endoftext|>", VIDEO_PAD))
    # beam search is the real thing: it equals transformers' beam search on the same inputs
    inputs = model.collator(videos, ["what happens?", None])
    raw = model.language_model.generate(**inputs, **model.generation_kwargs(3, 6, 0, 1.3))
    assert model.decode(raw[:, inputs["input_ids"].shape[1]:]) == beams
    # a video is answered the same alone and in a batch (left padding, positions from the mask)
    assert model.generate(videos[1:], [None], max_new_tokens=6) == greedy[1:]


def test_adapter_save_and_load_round_trip_gives_identical_answers(tokenizer, tmp_path):
    from peft import PeftModel
    from transformers import Qwen2VLForConditionalGeneration
    model = make_model(tokenizer, seed=2)
    with torch.no_grad():  # make the adapters non-trivial (lora_B starts at zero)
        for n, p in model.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.5)
    videos = clips(2, seed=5)
    before = model.generate(videos, None, num_beams=2, max_new_tokens=8)
    model.language_model.save_pretrained(str(tmp_path / "adapter"))
    base = model.base_model
    fresh = Qwen2VLForConditionalGeneration(base.config)
    fresh.load_state_dict({k.replace("base_layer.", ""): v for k, v in base.state_dict().items()
                           if "lora_" not in k})
    loaded = PeftModel.from_pretrained(fresh, str(tmp_path / "adapter"))
    again = QwenVLCaptioner(loaded, model.processor).eval()
    assert again.generate(videos, None, num_beams=2, max_new_tokens=8) == before
    plain = QwenVLCaptioner(Qwen2VLForConditionalGeneration(base.config), model.processor).eval()
    assert plain.generate(videos, None, num_beams=2, max_new_tokens=8) != before  # the adapters matter


def test_collator_rejects_mismatched_inputs(model):
    with pytest.raises(ValueError, match="one question per video"):
        model.collator(clips(2), ["only one"])
    with pytest.raises(ValueError, match="one answer per video"):
        model.collator(clips(2), None, ["one"])
    with pytest.raises(ValueError, match=r"expected pixel_values \[B, T, C, H, W\]"):
        model(clips(1)[0], ["x"])


# ----------------------------------------------------------------------------------------------------------------
# Qwen2 as the text encoder of the vision + text classifier
# ----------------------------------------------------------------------------------------------------------------
QWEN2_VLM = dict(vision_model="videomae", model_size="tiny", num_frames=4, image_size=32, use_vlm=True,
                 language_model="qwen2", use_text=True, device="cpu")
TEXTS = ["the shape slides sideways", "the clip is played backwards and the shape changes size quite slowly", "up"]


@pytest.fixture(scope="module")
def qwen2_encoder():
    from videolab.data.synthetic import SyntheticSource
    from videolab.models.language import tiny_qwen2_encoder
    torch.manual_seed(0)
    model, tokenizer = tiny_qwen2_encoder(SyntheticSource.hints(None))  # the tokenizer learns the hints
    return model.eval(), tokenizer


def test_last_token_embeddings_do_not_depend_on_padding_side_or_batch(qwen2_encoder):
    from videolab.models.language import text_embeddings
    model, tokenizer = qwen2_encoder
    left = text_embeddings(model, tokenizer, TEXTS, padding_side="left")
    right = text_embeddings(model, tokenizer, TEXTS, padding_side="right")
    alone = torch.cat([text_embeddings(model, tokenizer, [t]) for t in TEXTS])
    assert left.shape == (3, model.config.hidden_size)
    torch.testing.assert_close(left, alone, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(right, alone, rtol=1e-4, atol=1e-5)
    assert not torch.allclose(alone[0], alone[1])
    # the last REAL token: a mean over positions, or the last column of a right-padded batch, would differ
    enc = tokenizer(TEXTS, return_tensors="pt", padding=True, padding_side="right")
    naive = model(**enc).last_hidden_state[:, -1]
    assert not torch.allclose(naive[0], alone[0], atol=1e-3)


def test_qwen2_text_encoder_in_the_classifier():
    from build_model import build_model
    torch.manual_seed(0)
    built = build_model(Settings(**QWEN2_VLM, use_lora_llm=True), 4, verbose=False)
    model = built.model.eval()
    assert built.info["language_model_pretrained"] is False and built.info["language_arch"]["model_type"] == "qwen2"
    assert model.last_token_pooling
    lora = {n.split(".lora_A")[0].rsplit(".", 1)[1] for n, _ in model.named_parameters() if ".lora_A" in n}
    assert lora == {"q_proj", "v_proj"}
    clip = torch.rand(1, 4, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        alone = model(clip, text=[TEXTS[0]]).logits
        batch = model(clip.repeat(2, 1, 1, 1, 1), text=[TEXTS[0], TEXTS[1]]).logits  # row 0 right-padded
        other = model(clip, text=[TEXTS[2]]).logits
    torch.testing.assert_close(batch[0:1], alone, rtol=1e-4, atol=1e-5)
    assert not torch.allclose(other, alone)  # the text reaches the classifier
    out = model(clip.repeat(2, 1, 1, 1, 1), labels=torch.tensor([0, 1]), text=TEXTS[:2])
    out.loss.backward()
    assert all(p.grad is not None for n, p in model.named_parameters() if "lora_B" in n)


# ----------------------------------------------------------------------------------------------------------------
# SFT records and the CLI
# ----------------------------------------------------------------------------------------------------------------
def test_sft_records_in_both_formats_and_clear_errors(tmp_path):
    import json

    from videolab.data.qa import read_records
    from videolab.core.errors import UsageError
    (tmp_path / "v1.pt").write_bytes(b"")
    records = [
        {"video": "v1.pt", "question": "What moves?", "answer": "a red key"},
        {"video": "v1.pt", "answer": "no question"},
        {"messages": [{"role": "system", "content": "be brief"}, {"role": "user", "content": "<video>How?"},
                      {"role": "assistant", "content": "it grows"}], "videos": ["v1.pt"], "id": "chat"},
        {"messages": [{"role": "user", "content": [{"type": "video"}, {"type": "text", "text": "Colour?"}]},
                      {"role": "assistant", "content": [{"type": "text", "text": "blue"}]}],
         "videos": [str(tmp_path / "v1.pt")]},
    ]
    path = tmp_path / "train.json"
    path.write_text(json.dumps(records))
    got = [(os.path.basename(r.video), r.question, r.answer) for r in read_records(str(path))]
    assert got == [("v1.pt", "What moves?", "a red key"), ("v1.pt", "", "no question"), ("v1.pt", "How?", "it grows"),
                   ("v1.pt", "Colour?", "blue")]
    assert read_records(str(path))[2].video_id == "chat"
    jsonl = tmp_path / "lines.jsonl"
    jsonl.write_text("\n".join(json.dumps(r) for r in records[:2]) + "\n")
    assert len(read_records(str(jsonl))) == 2
    for bad, needle in [({"messages": [{"role": "user", "content": "x"}], "videos": ["v1.pt"]}, "no assistant"),
                        ({"messages": records[2]["messages"], "videos": ["a.mp4", "b.mp4"]}, "exactly one video"),
                        ({"video": "v1.pt", "answer": " "}, "answer is empty"),
                        ({"clip": "v1.pt"}, "expected {'video', 'question', 'answer'}")]:
        path.write_text(json.dumps([bad]))
        with pytest.raises(UsageError, match=needle):
            read_records(str(path))


def test_qa_json_train_then_inference_gives_identical_answers(tiny_dataset, tmp_path):
    """SFT from chat-format records through main.py (LoRA, gradient checkpointing, beams); the checkpoint, rebuilt
    by inference.py from its folder alone, answers the exported frames exactly as the trained model did."""
    import json

    import create_dummy
    import inference
    import main as train_main
    from videolab.data import qa as sft_data
    qa = str(tmp_path / "qa")
    sft_data.write_synthetic(tiny_dataset, qa)
    out = str(tmp_path / "runs")
    flags = ["--dataset", "qa_json", "--data_root", qa, "--use_vlm", "True", "--captioning", "True",
             "--language_model", "qwen2-vl", "--use_lora_llm", "True", "--gradient_checkpointing", "True"]
    result = train_main.main(["--output_dir", out, "--run_name", "qwen", "--epochs", "1", "--max_steps", "2",
                              "--batch_size", "8", "--num_frames", "4", "--image_size", "32", "--num_beams", "2",
                              "--max_new_tokens", "5", "--speed_repeats", "0", "--summary_csv", "none", "--quiet",
                              *flags, "--export_dir", str(tmp_path / "export")])
    exported = json.load(open(tmp_path / "export" / "generation_config.json"))  # the run's decoding settings
    assert (exported["num_beams"], exported["max_new_tokens"]) == (2, 5)
    assert os.path.isfile(tmp_path / "export" / "adapter" / "adapter_model.safetensors")
    assert result["language_model"] == "qwen2-vl" and result["language_model_pretrained"] is False
    assert set(result["metrics"]) >= {"BLEU-4", "CIDEr", "ROUGE-L"} and result["num_samples"] == 8
    best = os.path.join(out, "qwen", "best")
    saved = json.load(open(os.path.join(best, "run_config.json")))["model_info"]
    assert saved["lora_targets"] == ["q_proj", "v_proj"] and saved["language_arch"]["model_type"] == "qwen2_vl"
    frames = str(tmp_path / "frames")
    create_dummy.main(["--data_root", tiny_dataset, "--out_dir", frames, "--quiet"])
    # the question goes in with --text_input (texts.json beside the frames holds the synthetic hints instead)
    predicted = inference.main(["--video_dir", frames, "--checkpoint", best, "--num_beams", "2", "--max_new_tokens",
                                "5", "--text_input", sft_data.DESCRIBE, "--predictions_file",
                                str(tmp_path / "answers.json"), "--quiet"])
    by_video = {p["video"]: p["caption"] for p in predicted["predictions"]}
    trained = {c["video"].split(":", 1)[0].split("/", 1)[1]: c["generated"] for c in result["captions"]}
    trained = {k.replace(".pt", "").replace("/", "_"): v for k, v in trained.items()}
    assert by_video == trained


def test_qwen_flags_are_refused_elsewhere_in_one_line(capsys):
    import main as train_main
    from videolab.cli import run_cli
    code = run_cli(train_main.main, ["--train_vision_tower", "True"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "applies to Qwen2-VL" in err[0]
    code = run_cli(train_main.main, ["--dataset", "qa_json", "--data_root", "nowhere"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "--captioning True" in err[0]


def test_freezing_everything_is_refused(tokenizer):
    from videolab.core.errors import UsageError
    with pytest.raises(UsageError, match="leaves nothing to train"):
        make_model(tokenizer, use_lora_llm=False, freeze_language_model=True)


def test_a_checkpoint_older_than_the_new_settings_still_resumes():
    """Settings added later (these Qwen ones) count as their defaults in a checkpoint written before them."""
    from train_code import resume_differences
    cfg = Settings()
    old = {k: v for k, v in cfg.to_dict().items() if not k.startswith(("lora_llm_", "train_vision_tower"))}
    state = dict(num_processes=1, batch=0)
    assert resume_differences(cfg, dict(settings=old, class_names=["a", "b"]), state, ["a", "b"], 1) == []
    cfg.train_vision_tower = True
    assert resume_differences(cfg, dict(settings=old, class_names=["a", "b"]), state, ["a", "b"], 1) == \
        ["train_vision_tower=False there, True here"]
