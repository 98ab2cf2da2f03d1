"""Interactive browser demo: ``python apps/demo.py [--checkpoint PATH] [--port 8050]``.

Serves a local page (Dash, bound to 127.0.0.1 unless ``--host`` says otherwise) for any checkpoint the repo trains:
upload a video or click one of the bundled synthetic examples, and see the frames the model was given, the top-5
classes as a bar chart (classifiers) or the generated caption (captioners), with a text box when the model reads
text. Without ``--checkpoint`` it serves the newest run under ``--output_dir``.

The model path is ``inference.py``'s: the same checkpoint choice (``videolab.core.runs.pick_checkpoint``),
settings merge, :func:`build_model.rebuild_from_checkpoint`, video decoding (:func:`VLoader.inference_dataset`,
PyAV via ``video_io``) and forward (the task's ``predict``). This module only adds the upload checks, the examples
and the page.

Bad uploads (not a video, empty, too long, too large, undecodable) become a message on the page; the server keeps
serving. Uploads larger than ``--max_upload_mb`` never leave the browser: a client-side callback checks the size
first and sends only the size, and the server turns it into the message.
"""
from __future__ import annotations

import argparse
import base64
import binascii
import io
import os
import socket
import sys
import tempfile
import threading
import traceback
from dataclasses import dataclass, field, replace
from typing import Optional, Sequence

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # the repo root

import build_model  # noqa: E402
import VLoader  # noqa: E402
from videolab.cli import resolve, run_cli  # noqa: E402
from videolab.core.checkpoints import read_run_config  # noqa: E402
from videolab.core.errors import UsageError  # noqa: E402
from videolab.core.runs import pick_checkpoint  # noqa: E402
from videolab.core.runtime import make_accelerator  # noqa: E402
from videolab.core.settings import FIELDS, MODEL, Settings, merge_with_checkpoint, settings_from_dict  # noqa: E402
from videolab.data.clips import collate  # noqa: E402
from videolab.tasks.base import batch_keys  # noqa: E402

DEFAULT_PORT = 8050
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
    cfg: Settings
    model: torch.nn.Module
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
        return "labels" in batch_keys(self.model)

    @property
    def reads_text(self) -> bool:
        return bool(self.cfg.use_text) or "text" in self.modalities

    def describe(self) -> str:
        what = f"{len(self.class_names)} classes" if self.classifier else "captioner"
        language = f" + {self.info['language_model']}" if self.info.get("language_model") else ""
        return (f"{self.folder}: {self.cfg.vision_model}{language}, {what}, {self.cfg.num_frames} frames at "
                f"{self.cfg.image_size} px, pretrained backbone: {self.info['pretrained']}")


def load_demo_model(cli: Settings, explicit: set[str]) -> DemoModel:
    """--checkpoint (or the newest matching run) rebuilt from its folder alone, in eval mode."""
    wanted = {k: getattr(cli, k) for k in explicit if FIELDS[k].metadata["group"] == MODEL}
    folder = pick_checkpoint(cli.checkpoint, cli.output_dir, wanted)
    run_config = read_run_config(folder)
    cfg = merge_with_checkpoint(settings_from_dict(run_config["settings"]), cli, explicit, folder)
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


def save_upload(encoded: str, name: str, folder: str) -> str:
    """Base64 file contents (as the browser sent them) -> a new file in ``folder`` keeping the name's extension."""
    try:
        data = base64.b64decode(encoded, validate=True)
    except (binascii.Error, ValueError):
        raise UploadError(f"{name}: the upload arrived damaged (not base64); try again") from None
    extension = os.path.splitext(name)[1].lower()[:8]
    handle, path = tempfile.mkstemp(prefix="upload-", suffix=extension, dir=folder)
    with os.fdopen(handle, "wb") as fh:
        fh.write(data)
    return path


# ----------------------------------------------------------------------------------------------------------------
# prediction
# ----------------------------------------------------------------------------------------------------------------
@dataclass
class Prediction:
    frames: np.ndarray  # uint8 [T, S, S, 3]: the frames the model was given (after resize and centre crop)
    top: list = field(default_factory=list)  # [(class name, probability)], best first (classifiers)
    caption: Optional[str] = None  # captioners
    text: Optional[str] = None  # the text the model read, if any


@dataclass
class Result:
    message: str  # shown above the result: what ran, or what was wrong
    prediction: Optional[Prediction] = None


def displayed_frames(pixel_values: torch.Tensor, mean: Sequence[float], std: Sequence[float]) -> np.ndarray:
    """Normalised float [T, 3, S, S] (the model input) -> uint8 [T, S, S, 3] for display."""
    m = torch.tensor(mean).view(1, 3, 1, 1)
    s = torch.tensor(std).view(1, 3, 1, 1)
    frames = (pixel_values * s + m).clamp(0, 1) * 255.0 + 0.5  # [T, 3, S, S]
    return frames.to(torch.uint8).permute(0, 2, 3, 1).numpy()


def run_model(demo: DemoModel, path: str, name: str, text: Optional[str]) -> Prediction:
    """One video file through the inference pipeline: sampled and preprocessed as the checkpoint was trained."""
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


def predict_upload(demo: DemoModel, upload: Optional[dict], text: Optional[str], limits: Limits, folder: str
                   ) -> Result:
    """What the browser sent for an upload: {filename, size, contents (base64; None when over the size limit)}."""
    if not upload:
        return Result("no file received; choose a video file")
    name = os.path.basename(str(upload.get("filename") or "upload"))
    try:
        check_size(int(upload.get("size") or 0), name, limits)
        if upload.get("contents") is None:
            raise UploadError(f"{name}: no file contents were received; try again")
        path = save_upload(upload["contents"], name, folder)
    except UploadError as exc:
        return Result(str(exc))
    try:
        return predict_file(demo, path, name, text, limits)
    finally:
        os.remove(path)


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


def write_examples(cfg: Settings, class_names: Sequence[str], folder: str) -> list[Example]:
    """One synthetic test video per class (the synthetic test split, video 0: never a training video), written as
    .mp4 (H.264, lossless) at the size and length main.py generates the dataset with."""
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
# Runs in the browser: an upload over the limit is never sent, only its size (the server words the message).
SIZE_CHECK_JS = """
function(contents, filename, limit) {
    if (!contents) { return window.dash_clientside.no_update; }
    const comma = contents.indexOf(',');
    const encoded = contents.slice(comma + 1);
    const padding = encoded.endsWith('==') ? 2 : (encoded.endsWith('=') ? 1 : 0);
    const size = Math.floor(encoded.length * 3 / 4) - padding;
    return {filename: filename, size: size, contents: size <= limit ? encoded : null, sent: Date.now()};
}
"""


def png_data_uri(frame: np.ndarray) -> str:
    from PIL import Image
    buffer = io.BytesIO()
    Image.fromarray(frame).save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def bar_chart(top: list) -> dict:
    """Plotly figure: the top-k classes, best at the top, probabilities in %."""
    import plotly.graph_objects as go
    names = [name for name, _ in top][::-1]
    values = [100.0 * p for _, p in top][::-1]
    figure = go.Figure(go.Bar(x=values, y=names, orientation="h", text=[f"{v:.1f} %" for v in values],
                              textposition="auto", marker_color="#3b6ea5"))
    figure.update_layout(xaxis=dict(title="probability (%)", range=[0, 100]), height=60 + 40 * len(top),
                         margin=dict(l=10, r=10, t=10, b=40), yaxis=dict(automargin=True))
    return figure


def render(result: Result) -> tuple:
    """A Result -> the page's outputs: message, headline, chart figure, chart style, frame images."""
    from dash import html
    hidden, shown = {"display": "none"}, {"display": "block"}
    p = result.prediction
    if p is None:
        return "⚠ " + result.message, "", {}, hidden, []
    frames = [html.Img(src=png_data_uri(f), title=f"frame {t + 1}", className="frame",
                       style={"width": f"{max(FRAME_DISPLAY_PX, f.shape[1])}px", "imageRendering": "pixelated",
                              "marginRight": "4px"}) for t, f in enumerate(p.frames)]
    text = f"  |  text: “{p.text}”" if p.text else ""
    if p.caption is not None:
        return result.message + text, f"Caption: {p.caption}", {}, hidden, frames
    name, prob = p.top[0]
    return result.message + text, f"Prediction: {name} ({100 * prob:.1f} %)", bar_chart(p.top), shown, frames


def build_app(demo: DemoModel, examples: list[Example], limits: Limits, folder: str):
    """The Dash app: layout and callbacks (each a thin wrapper around the functions above)."""
    from dash import ALL, Dash, Input, Output, State, clientside_callback, ctx, dcc, html, no_update
    app = Dash(__name__, title="Video model demo", assets_folder=os.path.join(folder, "no-assets"))
    app.server.config["MAX_CONTENT_LENGTH"] = limits.max_bytes * 4 // 3 + 10_000_000  # base64 + JSON overhead
    text_style = {} if demo.reads_text else {"display": "none"}
    app.layout = html.Div(style={"fontFamily": "sans-serif", "maxWidth": "960px", "margin": "auto"}, children=[
        html.H2("Video model demo"),
        html.Div(demo.describe(), id="model-info", style={"color": "#555", "fontSize": "0.9em"}),
        dcc.Upload(id="upload", multiple=False, children=html.Div(
            ["Drop a video here or ", html.A("choose a file", style={"textDecoration": "underline"}),
             f" (up to {_mb(limits.max_bytes)}, {limits.max_seconds:.0f} s)"]),
            style={"border": "2px dashed #999", "borderRadius": "6px", "padding": "18px", "textAlign": "center",
                   "margin": "12px 0", "cursor": "pointer"}),
        html.Div(style=text_style, children=[
            html.Label("Text for the model: ", htmlFor="text"),
            dcc.Input(id="text", type="text", value=demo.cfg.text_input, debounce=False, style={"width": "60%"},
                      placeholder="empty: an example uses its own hint")]),
        html.Div(["Synthetic examples: "] + [
            html.Button(e.class_name, id={"type": "example", "index": i}, n_clicks=0, className="example",
                        style={"margin": "2px"}) for i, e in enumerate(examples)], style={"margin": "10px 0"}),
        dcc.Store(id="limit", data=limits.max_bytes),
        dcc.Store(id="checked-upload"),
        dcc.Loading(children=[
            html.Div(id="message", style={"margin": "8px 0", "color": "#333"}),
            html.H3(id="prediction"),
            dcc.Graph(id="top-k", style={"display": "none"}, config={"displayModeBar": False}),
            html.Div(id="frames", style={"display": "flex", "flexWrap": "wrap"})]),
    ])
    clientside_callback(SIZE_CHECK_JS, Output("checked-upload", "data"), Input("upload", "contents"),
                        State("upload", "filename"), State("limit", "data"))
    outputs = [Output("message", "children"), Output("prediction", "children"), Output("top-k", "figure"),
               Output("top-k", "style"), Output("frames", "children"), Output("upload", "contents")]

    @app.callback(*outputs, Input("checked-upload", "data"), Input({"type": "example", "index": ALL}, "n_clicks"),
                  State("text", "value"), prevent_initial_call=True)
    def on_input(upload, clicks, text):
        trigger = ctx.triggered_id
        if trigger == "checked-upload":
            result = predict_upload(demo, upload, text, limits, folder)
        elif isinstance(trigger, dict) and any(clicks):
            result = predict_example(demo, examples[trigger["index"]], text, limits)
        else:
            return (no_update,) * len(outputs)
        return (*render(result), None)  # clearing the upload lets the same file be sent again
    return app


def main(argv: Optional[Sequence[str]] = None) -> None:
    cli, explicit, ns = resolve(argv, "demo.py", __doc__.splitlines()[0], extra=demo_flags)
    limits = limits_from_flags(ns)
    check_address(ns.host, ns.port)
    demo = load_demo_model(cli, explicit)
    with tempfile.TemporaryDirectory(prefix="video-demo-") as folder:
        examples = write_examples(demo.cfg, demo.class_names, os.path.join(folder, "examples"))
        app = build_app(demo, examples, limits, folder)
        print(f"model: {demo.describe()}")
        print(f"serving on http://{ns.host}:{ns.port}/ (Ctrl-C stops)", flush=True)
        app.run(host=ns.host, port=ns.port, debug=False)


if __name__ == "__main__":
    raise SystemExit(run_cli(main))
