"""Composed multimodal models: allowlist, registries, YAML == flags, masks, missing audio, save/load, audio I/O."""
import json
import os

import numpy as np
import pytest
import torch
import yaml

from videolab.data import audio
from videolab.data import av_synthetic as av_data
from videolab.export.huggingface import load_composed, save_composed
from videolab.models import audio_encoder
from videolab.models import compose
from build_model import build_model
from conftest import resolve
from videolab.cli import run_cli
from videolab.core.errors import UsageError

TINY = ["--vision_model", "videomae", "--model_size", "tiny", "--num_frames", "4", "--image_size", "32",
        "--fusion_dim", "32", "--fusion_depth", "2", "--fusion_n_heads", "4", "--audio_dim", "32",
        "--audio_depth", "1", "--fusion_dropout", "0", "--audio_seconds", "0.5", "--dataset", "synthetic_av"]
SECTION = dict(encoders=dict(video=dict(name="backbone"), audio="conv_transformer"),
               fusion=dict(name="bottleneck"), head="linear")


def settings(*flags):
    return resolve(list(TINY) + list(flags), "test", "test")[0]


def batch(batch_size=2, frames=50, real=None):
    """Random inputs of the tiny settings: 4 frames of 32 px, log-mel [80, frames] with ``real`` real frames."""
    generator = torch.Generator().manual_seed(3)
    mask = torch.zeros(batch_size, frames, dtype=torch.bool)
    mask[:, : frames if real is None else real] = True
    return dict(pixel_values=torch.randn(batch_size, 4, 3, 32, 32, generator=generator),
                input_features=torch.randn(batch_size, 80, frames, generator=generator), audio_attention_mask=mask)


def build(cfg, seed=0):
    torch.manual_seed(seed)
    return build_model(cfg, 8, verbose=False).model.eval()


# ---------------------------------------------------------------------------------------------- allowlist
@pytest.mark.parametrize("target", ["os.system", "builtins.eval", "subprocess.Popen", "importlib.import_module",
                                    "torch.nn.Linear", "numpy.load", "compose.os", "composeX.Evil"])
def test_allowlist_refuses(target):
    with pytest.raises(UsageError, match="_target_"):
        compose.resolve_target(target, "compose,audio,fusion")


def test_allowlist_refuses_denied_roots_even_when_listed():
    with pytest.raises(UsageError, match="never instantiated"):
        compose.resolve_target("os.system", "os,compose")
    with pytest.raises(UsageError, match="nn.Module class"):  # allowed prefix, but not a module class
        compose.resolve_target("compose.composition", "compose")


def test_target_under_allowlist_builds(in_tmp):
    for fusion in ("concat", {"_target_": "fusion.TransformerFusion", "depth": 1, "n_heads": 4}):
        section = dict(encoders=dict(audio={"_target_": "audio.AudioEncoder", "dim": 32, "depth": 1}), fusion=fusion)
        path = in_tmp / "model.yaml"
        path.write_text(yaml.safe_dump(dict(model=section)))
        model = build(settings("--model_config", str(path)))
        assert isinstance(model.encoders["audio"], audio_encoder.AudioEncoder)
        assert model(**{k: v for k, v in batch().items() if k != "pixel_values"}).logits.shape == (2, 8)


def test_yaml_target_refused_from_the_command_line(in_tmp, capsys):
    path = in_tmp / "model.yaml"
    path.write_text(yaml.safe_dump(dict(model=dict(encoders=dict(audio={"_target_": "os.system"})))))
    import main
    assert run_cli(main.main, TINY + ["--model_config", str(path)]) == 2
    assert "os.system" in capsys.readouterr().err


# ---------------------------------------------------------------------------------------------- registries
@pytest.mark.parametrize("section, expected", [
    (dict(encoders=dict(audio="conv_transfomer")), "did you mean 'conv_transformer'"),
    (dict(encoders=dict(audoi="conv_transformer")), "did you mean 'audio'"),
    (dict(encoders=dict(audio="conv_transformer"), fusion="bottlenek"), "did you mean 'bottleneck'"),
    (dict(encoders=dict(audio="conv_transformer"), fusion=dict(name="transformer", dpeth=2)), "did you mean 'depth'"),
    (dict(encoders=dict(audio="conv_transformer"), haed="linear"), "did you mean 'head'"),
])
def test_typos_list_the_valid_names(section, expected):
    with pytest.raises(UsageError, match=expected) as info:
        compose.normalise(section, settings())
    assert "valid:" in str(info.value)


def test_flag_typo_and_mismatch():
    with pytest.raises(UsageError, match="did you mean 'audio'"):
        settings("--modalities", "video,audoi")
    with pytest.raises(UsageError, match="concat"):
        resolve(TINY[:-2] + ["--fusion", "concat"], "t", "t")
    with pytest.raises(UsageError, match="synthetic_av"):
        resolve(TINY[:-2] + ["--modalities", "audio"], "t", "t")


def test_fusion_arguments_that_do_not_fit_are_a_usage_error():
    with pytest.raises(UsageError, match="set --fusion_head_dim to a divisor"):
        build(settings("--modalities", "video,audio", "--fusion", "mamba2", "--fusion_head_dim", "7"))
    with pytest.raises(UsageError, match="divisible by the 5 heads"):
        build(settings("--modalities", "video,audio", "--fusion_n_heads", "5"))


# ---------------------------------------------------------------------------------------------- YAML == flags
def test_yaml_declared_model_equals_flag_declared(in_tmp):
    assert_yaml_equals_flags(in_tmp, ["--modalities", "video,audio", "--fusion", "bottleneck"], SECTION, batch())


def assert_yaml_equals_flags(folder, flag_list, section, inputs, common=()):
    """The model the flags declare, the settings YAML's model: section and a --model_config file: same parameters,
    same outputs, same composition (``common``: flags all three share)."""
    flags = build(settings(*flag_list, *common))
    config = folder / "settings.yaml"
    config.write_text(yaml.safe_dump(dict(model=section)))
    from_settings_yaml = build(resolve(TINY + list(common) + ["--config", str(config)], "t", "t")[0])
    model_file = folder / "model.yaml"
    model_file.write_text(yaml.safe_dump(section))
    from_model_config = build(settings("--model_config", str(model_file), *common))
    for other in (from_settings_yaml, from_model_config):
        assert list(other.state_dict()) == list(flags.state_dict())
        with torch.no_grad():
            torch.testing.assert_close(other(**inputs).logits, flags(**inputs).logits)
    assert from_settings_yaml.config.composition == flags.config.composition


# ---------------------------------------------------------------------------------------------- masks
@pytest.mark.parametrize("fusion", ["concat", "transformer", "mamba", "mamba2", "bottleneck"])
def test_audio_padding_changes_nothing(fusion):
    model = build(settings("--modalities", "video,audio", "--fusion", fusion))
    short = batch(frames=30)
    padded = dict(short, input_features=torch.cat([short["input_features"], 9 * torch.randn(2, 80, 21)], -1),
                  audio_attention_mask=torch.cat([short["audio_attention_mask"], torch.zeros(2, 21).bool()], -1))
    with torch.no_grad():
        torch.testing.assert_close(model(**padded).logits, model(**short).logits, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("fusion", ["concat", "transformer", "mamba", "mamba2", "bottleneck"])
def test_missing_audio_is_a_masked_out_modality(fusion):
    model = build(settings("--modalities", "video,audio", "--fusion", fusion))
    silent = batch(real=0)
    other = dict(silent, input_features=torch.randn_like(silent["input_features"]))
    with torch.no_grad():
        logits = model(**silent).logits
        torch.testing.assert_close(model(**other).logits, logits)  # the features of missing audio are never read
    assert torch.isfinite(logits).all()
    audio_only = build(settings("--modalities", "audio", "--fusion", fusion))
    with pytest.raises(ValueError, match="none of the model's modalities"):
        audio_only(**{k: v for k, v in silent.items() if k != "pixel_values"})


# ---------------------------------------------------------------------------------------------- audio files
@pytest.fixture(scope="module")
def av_root(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("av") / "synthetic_av")
    av_data.write_av_dataset(root, train_per_class=2, test_per_class=1, num_frames=4, size=32, seed=1)
    silent = os.path.join(root, av_data.VIDEOS_DIR, "silent.mp4")
    frames, _ = av_data.make_clip(0, 4, 32, (5, 5))
    av_data.write_av_video(silent, frames, None)
    return root


def test_audio_decodes_to_16k_mono_with_the_tone(av_root):
    names = av_data.class_names()
    for label in (0, 1):  # move_right + low tone, move_right + high tone
        path = os.path.join(av_root, av_data.VIDEOS_DIR, names[label], "train_0.mp4")
        wave = audio.read_audio(path)
        assert wave.ndim == 1 and wave.dtype == np.float32
        assert abs(len(wave) - 0.5 * audio.SAMPLE_RATE) < 0.1 * audio.SAMPLE_RATE  # 4 frames at 8 fps
        peak = np.argmax(np.abs(np.fft.rfft(wave))) * audio.SAMPLE_RATE / len(wave)
        low, high = list(av_data.TONES.values())[label]
        assert low * 0.9 < peak < high * 1.1
    features, mask = audio.log_mel(audio.feature_extractor(), wave, 1.0)
    assert features.shape == (80, 100) and 45 <= int(mask.sum()) <= 60 and not mask[70:].any()


def test_missing_audio_policy(av_root):
    from videolab.data.videos import VideoFileDataset, VideoItem
    from videolab.data.sampling import ClipSpec
    spec = ClipSpec(4, 32, (0.5,) * 3, (0.5,) * 3)
    path = os.path.join(av_root, av_data.VIDEOS_DIR, "silent.mp4")
    dataset = VideoFileDataset([VideoItem(path, 0, "silent.mp4")], ["a"], spec, "report")
    dataset.extra_fields = audio.AudioReader(0.5, require=False)
    item = dataset[0]
    assert item["input_features"].shape == (80, 50) and not item["audio_attention_mask"].any()
    dataset.extra_fields = audio.AudioReader(0.5, require=True)
    with pytest.raises(audio.MissingAudioError, match="require_audio"):
        dataset[0]


# ---------------------------------------------------------------------------------------------- save / load
def test_save_pretrained_round_trip(tmp_path):
    model = build(settings("--modalities", "video,audio", "--fusion", "transformer"))
    folder = str(tmp_path / "export")
    written = save_composed(model, [f"c{i}" for i in range(8)], folder)
    assert {"config.json", "model.safetensors", "preprocessor_config.json",
            "video_preprocessor_config.json"} <= set(written)
    loaded, processors = load_composed(folder)
    inputs = batch()
    with torch.no_grad():
        torch.testing.assert_close(loaded(**inputs).logits, model(**inputs).logits)
    assert loaded.config.composition == model.config.composition and loaded.config.id2label[3] == "c3"
    wave = np.sin(np.linspace(0, 400, 8000)).astype(np.float32)
    extractor = audio.feature_extractor()
    torch.testing.assert_close(audio.log_mel(processors["feature_extractor"], wave, 0.5)[0],
                               audio.log_mel(extractor, wave, 0.5)[0])


def test_train_then_infer_without_flags(av_root, in_tmp):
    import inference
    import main
    run = ["--dataset", "synthetic_av", "--data_root", av_root, "--modalities", "video,audio", "--fusion",
           "bottleneck", "--epochs", "1", "--batch_size", "4", "--output_dir", str(in_tmp / "runs"), "--run_name",
           "av", "--quiet", "--summary_csv", "none", "--speed_repeats", "0", "--val_fraction", "0"]
    report = main.main(TINY[:-2] + run)
    assert report["num_samples"] == 8
    with open(in_tmp / "runs" / "av" / "best" / "run_config.json") as fh:
        assert json.load(fh)["model_info"]["arch"]["composition"]["fusion"]["name"] == "bottleneck"
    output = inference.main(["--checkpoint", str(in_tmp / "runs" / "av" / "best"), "--video_dir",
                             os.path.join(av_root, av_data.VIDEOS_DIR, av_data.class_names()[0]),
                             "--predictions_file", str(in_tmp / "p.json")])
    assert len(output["predictions"]) == 3  # train_0, train_1, test_0


def test_a_checkpoint_of_a_model_config_file_runs_without_the_file(av_root, in_tmp):
    """The composition is recorded with the checkpoint: inference does not read --model_config again."""
    import inference
    import main
    path = in_tmp / "model.yaml"
    path.write_text(yaml.safe_dump(dict(model=SECTION)))
    main.main(TINY[:-2] + ["--dataset", "synthetic_av", "--data_root", av_root, "--model_config", str(path),
                           "--epochs", "1", "--max_steps", "1", "--batch_size", "4", "--output_dir",
                           str(in_tmp / "runs"), "--run_name", "yaml", "--quiet", "--summary_csv", "none",
                           "--speed_repeats", "0", "--val_fraction", "0"])
    path.unlink()
    output = inference.main(["--checkpoint", str(in_tmp / "runs" / "yaml" / "best"), "--video_dir",
                             os.path.join(av_root, av_data.VIDEOS_DIR, av_data.class_names()[0]),
                             "--predictions_file", str(in_tmp / "p.json")])
    assert len(output["predictions"]) == 3
