"""ONNX export of a video classifier (``torch.onnx.export``, dynamic batch axis), checked against PyTorch with
onnxruntime.

    pixel_values float32 [batch, T, 3, S, S]  ->  model.onnx  ->  logits float32 [batch, num_labels]

The export traces the model with ``torch.export`` (torch's default ONNX exporter), with the batch dimension left
symbolic; T and S are fixed by the model (its positional embeddings). :func:`export_onnx` then runs the file with
onnxruntime on random clips at two batch sizes and compares the logits with PyTorch's: beyond ``tolerance`` the
export is refused (RunError), so a file that computes something else is never left behind.

onnx, onnxscript and onnxruntime are optional (the ``onnx`` extra: ``pip install -e ".[onnx]"``);
:func:`missing_packages` names the ones missing, for the up-front check of ``--export_onnx``.
"""
from __future__ import annotations

import importlib.util
import warnings

import torch
from torch import nn

from videolab.core.errors import RunError
from videolab.core.files import atomic_file

PACKAGES = ("onnx", "onnxscript", "onnxruntime")  # torch.onnx's exporter needs onnx + onnxscript; checks: onnxruntime
OPSET = 18
TOLERANCE = 1e-4  # largest absolute logit difference ONNX vs PyTorch accepted


def missing_packages() -> list[str]:
    return [name for name in PACKAGES if importlib.util.find_spec(name) is None]


class LogitsOnly(nn.Module):
    """model(pixel_values=x).logits as a plain function of one tensor (what ONNX exports)."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        return self.model(pixel_values=pixel_values).logits


def export_onnx(model: nn.Module, path: str, num_frames: int, image_size: int, batches=(1, 3),
                tolerance: float = TOLERANCE) -> dict:
    """Write ``model`` (a classifier: pixel_values [B, T, 3, S, S] -> .logits [B, K]; eval mode, CPU) to ``path``
    and check it with onnxruntime on random clips of each batch size. Returns {opset, batches, max_abs_diff}."""
    import onnxruntime

    wrapped = LogitsOnly(model).eval()
    example = torch.randn(2, num_frames, 3, image_size, image_size, generator=torch.Generator().manual_seed(0))
    with atomic_file(path, keep_extension=True) as tmp, warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the exporter's notes on every decomposed op
        torch.onnx.export(wrapped, (example,), tmp, input_names=["pixel_values"], output_names=["logits"],
                          dynamic_shapes={"pixel_values": {0: torch.export.Dim("batch", min=1)}}, dynamo=True,
                          opset_version=OPSET, external_data=False, verbose=False)
        session = onnxruntime.InferenceSession(tmp, providers=["CPUExecutionProvider"])
        worst = 0.0
        for batch in batches:
            x = torch.randn(batch, num_frames, 3, image_size, image_size,
                            generator=torch.Generator().manual_seed(batch))
            with torch.no_grad():
                expected = wrapped(x)
            got = torch.from_numpy(session.run(None, {"pixel_values": x.numpy()})[0])
            if got.shape != expected.shape:
                raise RunError(f"ONNX export: logits of shape {tuple(got.shape)} for a batch of {batch}, PyTorch gives "
                               f"{tuple(expected.shape)}; the export is not written")
            worst = max(worst, float((got - expected).abs().max()))
        if worst > tolerance:
            raise RunError(f"ONNX export: logits differ from PyTorch's by up to {worst:.2e} (> {tolerance:g}); the "
                           f"export is not written. Export without --export_onnx, or report the model settings")
    return dict(opset=OPSET, batches=list(batches), max_abs_diff=worst, tolerance=tolerance)
