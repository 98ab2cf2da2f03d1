"""Interactive browser demo: ``python apps/demo.py [--checkpoint PATH] [--port 7860]`` (or ``videolab-demo``).

Serves a local Gradio page (bound to 127.0.0.1 unless ``--host`` says otherwise) for any checkpoint the repo
trains: upload a video or click one of the bundled synthetic examples, and see the frames the model was given, the
top-5 classes as a bar chart (classifiers) or the generated caption (captioners), with a text box when the model
reads text. Without ``--checkpoint`` it serves the newest run under ``--output_dir``.

The model path is ``inference.py``'s: the same checkpoint choice (``videolab.core.runs.pick_checkpoint``),
settings merge, :func:`build_model.rebuild_from_checkpoint`, video decoding (:func:`VLoader.inference_dataset`,
PyAV via ``video_io``) and forward (the task's ``predict``). This module only adds the upload checks, the examples
and the page.

Bad uploads (not a video, empty, too long, too large, undecodable) become a message on the page; the server keeps
serving. Uploads larger than ``--max_upload_mb`` never leave the browser: Gradio checks the size first (its
``max_file_size``) and says so on the page; the server checks again.

Torch, the model code and Gradio are imported after the flags are parsed, so ``--help`` answers at once.
"""
from __future__ import annotations

import argparse
import os
import socket
import sys
import tempfile
import threading
import traceback
from dataclasses import dataclass, field, replace
from typing import Any, Optional, Sequence

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # the repo root

from videolab.cli import INFERENCE_ORDER, resolve, run_cli  # noqa: E402
from videolab.core.errors import UsageError  # noqa: E402

DEFAULT_PORT = 7860  # Gradio's
FRAME_DISPLAY_PX = 96  # sampled frames are shown at least this wide (small training sizes are upscaled, pixelated)


class UploadError(Exception):
    """An input the demo cannot run the model on; the message is shown on the page as it is."""


# ----------------------------------------------------------------------------------------------------------------
# flags
# ----------------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Limits:
    """What an upload may be: at most ``max_bytes`` and ``max_seconds`` of video."""
    max_bytes: int
    max_seconds: float


def demo_flags(parser: argparse.ArgumentParser) -> None:
    """The demo's own flags (server and upload limits); every model/run-time flag is the shared Settings parser's."""
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default: 127.0.0.1, this machine "
                        "only; 0.0.0.0 exposes the demo to the network)")
    parser.add_argument("--port", default=DEFAULT_PORT, type=int, help=f"port to serve on (default: {DEFAULT_PORT})")
    parser.add_argument("--max_upload_mb", default=50.0, type=float, help="largest upload accepted, in MB "
                        "(default: 50)")
    parser.add_argument("--max_video_seconds", default=120.0, type=float, help="longest upload accepted, in "
                        "seconds of video (default: 120)")


def limits_from_flags(ns: argparse.Namespace) -> Limits:
    if not 0 < ns.port < 65536:
        raise UsageError(f"--port must be in 1..65535, got {ns.port}")
    if not (ns.max_upload_mb > 0 and ns.max_video_seconds > 0):  # NaN too
        raise UsageError(f"--max_upload_mb and --max_video_seconds must be > 0, got {ns.max_upload_mb} and "
                         f"{ns.max_video_seconds}")
    return Limits(int(ns.max_upload_mb * 1e6), float(ns.max_video_seconds))


def check_address(host: str, port: int) -> None:
    """Fail before loading the model when the address cannot be served (port taken, unknown host)."""
    try:
        with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the server will
            probe.bind((host, port))
    except OSError as exc:
        raise UsageError(f"cannot serve on {host}:{port} ({exc.strerror or exc}); pick another --port (or "
                         f"--host)") from None


# ----------------------------------------------------------------------------------------------------------------
# the model, loaded the way inference.py loads it
# ----------------------------------------------------------------------------------------------------------------
@dataclass
class DemoModel:
    cfg: Any  # videolab.core.settings.Settings
    model: Any  # torch.nn.Module, in eval mode
    accelerator: object
    class_names: list
    info: dict
    folder: str
    mean: tuple
    std: tuple
    task: object  # the checkpoint's task (videolab.tasks.base.Task): its predict() runs the model
    modalities: tuple = ()
    lock: threading.Lock = field(default_factory=threading.Lock)  # one forward at a time (threaded server)

    @property
    def classifier(self) -> bool:
        """The model predicts classes (it reads labels), else it writes text."""
        from videolab.tasks.base import batch_keys
        return "labels" in batch_keys(self.model)

    @property
    def reads_text(self) -> bool:
        return bool(self.cfg.use_text) or "text" in self.modalities

    def describe(self) -> str:
        what = f"{len(self.class_names)} classes" if self.classifier else "captioner"
        language = f" + {self.info['language_model']}" if self.info.get("language_model") else ""
        return (f"{self.folder}: {self.cfg.vision_model}{language}, {what}, {self.cfg.num_frames} frames at "
                f"{self.cfg.image_size} px, pretrained backbone: {self.info['pretrained']}")


def load_demo_model(cli, explicit: set[str]) -> DemoModel:
    """--checkpoint (or the newest matching run) rebuilt from its folder alone, in eval mode."""
    import build_model
    from videolab.core.checkpoints import read_run_config
    from videolab.core.runs import pick_checkpoint
    from videolab.core.runtime import make_accelerator
    from videolab.core.settings import FIELDS, MODEL, merge_with_checkpoint, settings_from_dict
    wanted = {k: getattr(cli, k) for k in explicit if FIELDS[k].metadata["group"] == MODEL}
    folder = pick_checkpoint(cli.checkpoint, cli.output_dir, wanted,
                             build_model.kind_name(build_model.resolve_settings(cli)), build_model.checkpoint_kind)
    run_config = read_run_config(folder)
    saved = settings_from_dict(run_config["settings"], os.path.join(folder, "run_config.json"))
    cfg = merge_with_checkpoint(saved, cli, explicit, folder)
    cfg = replace(build_model.resolve_settings(cfg), test_clips=1, test_crops=1, num_workers=0)  # one view shown
    accelerator = make_accelerator(cfg)
    built = build_model.rebuild_from_checkpoint(cfg, run_config, folder)
    model = built.model.to(accelerator.device).eval()
    return DemoModel(cfg, model, accelerator, run_config["class_names"], built.info, folder,
                     tuple(built.backbone.mean), tuple(built.backbone.std), built.task, built.modalities)


# ----------------------------------------------------------------------------------------------------------------
# uploads
# ----------------------------------------------------------------------------------------------------------------
def _mb(n: float) -> str:
    return f"{n / 1e6:.1f} MB"


def check_size(size: int, name: str, limits: Limits) -> None:
    if size <= 0:
        raise UploadError(f"{name} is empty (0 bytes): choose a video file")
    if size > limits.max_bytes:
        raise UploadError(f"{name} is too large: {_mb(size)}, the limit is {_mb(limits.max_bytes)} (start the demo "
                          f"with a larger --max_upload_mb, or cut the video)")


def check_upload(path: str, name: str, limits: Limits):
    """A file the user gave -> its video_io.VideoIndex; UploadError (with what to do) if the model cannot use it."""
    from videolab.data.video_io import VIDEO_EXTENSIONS, VideoError, is_video_file, probe_video
    check_size(os.path.getsize(path), name, limits)
    if not is_video_file(path):
        raise UploadError(f"{name} is not a video file: expected one of {', '.join(VIDEO_EXTENSIONS)}")
    try:
        index = probe_video(path)
    except VideoError as exc:
        reason = str(exc).split(": ", 1)[-1]  # the message starts with the (temporary) path
        raise UploadError(f"{name} cannot be read as a video: {reason}") from None
    seconds = index.num_frames / (index.fps or 25.0)  # no frame rate in the container: count 25 fps
    if seconds > limits.max_seconds:
        raise UploadError(f"{name} is too long: {seconds:.0f} s ({index.num_frames} frames), the limit is "
                          f"{limits.max_seconds:.0f} s (start the demo with a larger --max_video_seconds, or cut "
                          f"the video)")
    return index


# ----------------------------------------------------------------------------------------------------------------
# prediction
# ----------------------------------------------------------------------------------------------------------------
@dataclass
class Prediction:
    frames: Any  # numpy uint8 [T, S, S, 3]: the frames the model was given (after resize and centre crop)
    top: list = field(default_factory=list)  # [(class name, probability)], best first (classifiers)
    caption: Optional[str] = None  # captioners
    text: Optional[str] = None  # the text the model read, if any


@dataclass
class Result:
    message: str  # shown above the result: what ran, or what was wrong
    prediction: Optional[Prediction] = None


def displayed_frames(pixel_values, mean: Sequence[float], std: Sequence[float]):
    """Normalised float tensor [T, 3, S, S] (the model input) -> numpy uint8 [T, S, S, 3] for display."""
    import torch
    m = torch.tensor(mean).view(1, 3, 1, 1)
    s = torch.tensor(std).view(1, 3, 1, 1)
    frames = (pixel_values * s + m).clamp(0, 1) * 255.0 + 0.5  # [T, 3, S, S]
    return frames.to(torch.uint8).permute(0, 2, 3, 1).numpy()


def run_model(demo: DemoModel, path: str, name: str, text: Optional[str]) -> Prediction:
    """One video file through the inference pipeline: sampled and preprocessed as the checkpoint was trained."""
    import VLoader
    from videolab.data.clips import collate
    text = (text or "").strip() or None
    if demo.reads_text and text is None:
        raise UploadError("this model reads text (trained with --use_text True): type a text in the box first "
                          "(the examples fill in their hint)")
    cfg = replace(demo.cfg, video_dir=path, text_input=text if demo.reads_text else None)
    dataset = VLoader.inference_dataset(cfg, demo.mean, demo.std, demo.class_names, demo.modalities)
    item = dataset[0]
    if not bool(dataset.readable()[0]):
        reason = dataset.bad_videos()[0]["reason"].split(": ", 1)[-1]
        raise UploadError(f"{name} cannot be decoded: {reason}")
    batch = collate([item])
    with demo.lock:
        output = demo.task.predict(demo.model, batch, demo.accelerator, cfg)
    prediction = Prediction(displayed_frames(item["pixel_values"], demo.mean, demo.std),
                            text=text if demo.reads_text else None)
    if demo.classifier:
        probs = output.float().softmax(-1)[0].cpu()  # [num_classes]
        p, idx = probs.topk(min(cfg.top_k, len(demo.class_names)))
        prediction.top = [(demo.class_names[c], float(q)) for q, c in zip(p, idx.tolist())]
    else:
        prediction.caption = output[0]
    return prediction


def predict_file(demo: DemoModel, path: str, name: str, text: Optional[str], limits: Limits) -> Result:
    """Check, then run; every problem becomes a message (the server never stops over an input)."""
    try:
        check_upload(path, name, limits)
        prediction = run_model(demo, path, name, text)
    except UploadError as exc:
        return Result(str(exc))
    except Exception as exc:  # a failure inside the model must not take the page down; the log gets the traceback
        traceback.print_exc()
        first_line = (str(exc).splitlines() or [""])[0][:300]
        return Result(f"the model failed on {name}: {type(exc).__name__}: {first_line}")
    return Result(f"{name}: {len(prediction.frames)} frames sampled", prediction)


def predict_upload(demo: DemoModel, path: Optional[str], text: Optional[str], limits: Limits) -> Result:
    """An uploaded file as Gradio hands it over: the path of its copy on the server (it keeps the file's name)."""
    if not path or not os.path.isfile(path):
        return Result("no file received; choose a video file")
    return predict_file(demo, path, os.path.basename(path), text, limits)


# ----------------------------------------------------------------------------------------------------------------
# bundled synthetic examples
# ----------------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Example:
    path: str
    class_name: str
    hint: str
    caption: str


def example_classes(class_names: Sequence[str]) -> int:
    """How many synthetic classes to draw: the checkpoint's if it was trained on (a prefix of) them, else all."""
    from videolab.data.synthetic import CLASS_NAMES
    n = len(class_names)
    return n if 2 <= n <= len(CLASS_NAMES) and list(class_names) == list(CLASS_NAMES[:n]) else len(CLASS_NAMES)


def write_examples(cfg, class_names: Sequence[str], folder: str) -> list[Example]:
    """One synthetic test video per class (the synthetic test split, video 0: never a training video), written as
    .mp4 (H.264, lossless) at the size and length main.py generates the dataset with."""
    import torch

    from videolab.data.synthetic import write_split
    from videolab.data.video_io import write_video
    os.makedirs(folder, exist_ok=True)
    records = write_split(folder, "test", 1, example_classes(class_names), max(cfg.num_frames, 2),
                          max(cfg.image_size, 16), cfg.seed, quiet=True, task=cfg.synthetic_task)
    examples = []
    for record in records:
        video = torch.load(os.path.join(folder, "test", record["path"]), weights_only=True)  # uint8 [T, 3, H, W]
        path = os.path.join(folder, f"{record['class_name']}.mp4")
        write_video(path, video.permute(0, 2, 3, 1).numpy(), fps=8, options={"crf": "0"}, pix_fmt="yuv444p")
        examples.append(Example(path, record["class_name"], record["hint"], record["caption"]))
    return examples


def predict_example(demo: DemoModel, example: Example, text: Optional[str], limits: Limits) -> Result:
    """An example, with the text box's text or, when that is empty, the example's own hint."""
    text = (text or "").strip() or (example.hint if demo.reads_text else None)
    result = predict_file(demo, example.path, os.path.basename(example.path), text, limits)
    if result.prediction is not None:
        truth = f"reference caption: {example.caption}" if not demo.classifier else f"true class: {example.class_name}"
        result.message += f" (synthetic example, {truth})"
    return result


# ----------------------------------------------------------------------------------------------------------------
# the page
# ----------------------------------------------------------------------------------------------------------------
@dataclass
class Shown:
    """What the page shows for a Result (plain values; the Gradio callbacks hand them to the components)."""
    message: str  # above the result: what ran, or what was wrong (with a warning sign)
    headline: str  # "Prediction: <class> (p %)" or "Caption: ..."; empty on a problem
    top: Optional[dict]  # {class name: probability} for the bar chart, best first; None = no chart
    frames: list  # [(uint8 [S', S', 3] image, "frame k")], upscaled to at least FRAME_DISPLAY_PX


def enlarged(frame):
    """uint8 [S, S, 3] -> at least FRAME_DISPLAY_PX wide, by whole-pixel repetition (stays sharp)."""
    import numpy as np
    factor = max(1, -(-FRAME_DISPLAY_PX // frame.shape[1]))
    return np.ascontiguousarray(frame.repeat(factor, axis=0).repeat(factor, axis=1))


def render(result: Result) -> Shown:
    p = result.prediction
    if p is None:
        return Shown("⚠ " + result.message, "", None, [])
    frames = [(enlarged(f), f"frame {t + 1}") for t, f in enumerate(p.frames)]
    text = f"  |  text: “{p.text}”" if p.text else ""
    if p.caption is not None:
        return Shown(result.message + text, f"Caption: {p.caption}", None, frames)
    name, prob = p.top[0]
    return Shown(result.message + text, f"Prediction: {name} ({100 * prob:.1f} %)", dict(p.top), frames)


def build_app(demo: DemoModel, examples: list[Example], limits: Limits):
    """The Gradio Blocks page: layout and callbacks (each a thin wrapper around the functions above)."""
    import gradio as gr

    def show(result: Result):
        shown = render(result)
        # the upload box is cleared, so the next file (or the same one again) can be dropped at once
        return (shown.message, shown.headline, gr.update(value=shown.top, visible=shown.top is not None),
                shown.frames, None)

    def on_upload(path, text):
        return show(predict_upload(demo, path, text, limits))

    def on_example(index, text):
        return show(predict_example(demo, examples[index], text, limits))

    with gr.Blocks(title="Video model demo") as app:
        gr.Markdown("## Video model demo")
        gr.Markdown(demo.describe(), elem_id="model-info")
        upload = gr.File(label=f"Upload a video (up to {_mb(limits.max_bytes)}, {limits.max_seconds:.0f} s)",
                         file_count="single", type="filepath", elem_id="upload")
        text = gr.Textbox(label="Text for the model", value=demo.cfg.text_input or "", visible=demo.reads_text,
                          placeholder="empty: an example uses its own hint", elem_id="text")
        gr.Markdown("Synthetic examples (one test video per class):")
        with gr.Row():
            buttons = [gr.Button(e.class_name, size="sm", elem_classes="example") for e in examples]
        message = gr.Markdown(elem_id="message")
        headline = gr.Markdown(elem_id="prediction")
        top = gr.Label(num_top_classes=demo.cfg.top_k, label="top classes", visible=False, elem_id="top-k")
        frames = gr.Gallery(label="the frames the model was given", columns=min(demo.cfg.num_frames, 8),
                            height="auto", object_fit="contain", elem_id="frames")
        outputs = [message, headline, top, frames, upload]
        upload.upload(on_upload, [upload, text], outputs)
        for i, button in enumerate(buttons):
            button.click(lambda t, i=i: on_example(i, t), [text], outputs)
    return app


# no calls home: Gradio's usage statistics off; system fonts instead of Google Fonts (this may run offline)
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
SYSTEM_FONTS = dict(font=["ui-sans-serif", "system-ui", "sans-serif"], font_mono=["ui-monospace", "monospace"])


def main(argv: Optional[Sequence[str]] = None) -> None:
    cli, explicit, ns = resolve(argv, "demo.py", __doc__.splitlines()[0], extra=demo_flags, order=INFERENCE_ORDER)
    limits = limits_from_flags(ns)
    check_address(ns.host, ns.port)
    demo = load_demo_model(cli, explicit)
    import gradio as gr
    with tempfile.TemporaryDirectory(prefix="video-demo-") as folder:
        examples = write_examples(demo.cfg, demo.class_names, os.path.join(folder, "examples"))
        app = build_app(demo, examples, limits)
        print(f"model: {demo.describe()}")
        print(f"serving on http://{ns.host}:{ns.port}/ (Ctrl-C stops)", flush=True)
        app.launch(server_name=ns.host, server_port=ns.port, max_file_size=limits.max_bytes, share=False,
                   show_error=True, quiet=True, ssr_mode=False, footer_links=[], allowed_paths=[folder],
                   theme=gr.themes.Default(**SYSTEM_FONTS))


def cli() -> int:
    """The console script ``videolab-demo`` (pyproject.toml): this file's command line; returns the exit code."""
    return run_cli(main)


if __name__ == "__main__":
    raise SystemExit(cli())
