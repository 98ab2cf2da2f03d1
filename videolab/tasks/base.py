"""The task interface: what a run learns, how an epoch and a test are judged, what inference outputs.

The training loop (``train_code.py``), ``main.py`` and ``inference.py`` call these methods and never ask which
task they run. A model declares the batch fields it reads (``batch_keys``: forward argument -> batch field) and
returns ``loss`` and ``logits`` (``ModelOutput`` style); a task reads those.

    class MyTask(Task):
        name = "my_task"
        def validate(self, model, loader, accelerator, show): ...     # {"val_loss": ...}
        def test(self, run): ...                                      # TestResult(headline, details, line)
        def infer(self, run): ...                                     # the predictions file
    TASKS.add("my_task", MyTask())                                    # tasks/registry.py, or from your own code

Multi-process runs: evaluation shards the data and ``gather_for_metrics`` collects every sample once, in dataset
order (it drops the samples accelerate repeats to fill the last batch), so results do not depend on how many
processes ran.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Callable, Optional

import torch
from tqdm.auto import tqdm

from videolab.core.errors import UsageError
from videolab.evaluation.plots import write_plots
from videolab.models.registry import backbone_kind

DEFAULT_BATCH_KEYS = {"pixel_values": "pixel_values", "labels": "labels"}


def batch_keys(model) -> dict:
    """forward argument -> batch field, declared by the model (``batch_keys``); unwraps DDP-style wrappers."""
    inner = getattr(model, "module", model)
    return getattr(inner, "batch_keys", getattr(model, "batch_keys", DEFAULT_BATCH_KEYS))


def model_inputs(model, batch: dict, device=None) -> dict:
    """The keyword arguments ``model`` takes, from a collated batch (tensors moved to ``device`` if given)."""
    inputs = {}
    for arg, key in batch_keys(model).items():
        value = batch[key]
        inputs[arg] = value.to(device) if device is not None and isinstance(value, torch.Tensor) else value
    return inputs


@torch.no_grad()
def mean_loss(model, loader, accelerator, desc: str = "eval", show_progress: bool = False) -> dict:
    """{num_samples, loss}: each clip carries its batch's mean loss (a captioner's is token-level), gathered from
    every process."""
    model.eval()
    losses = []
    for batch in tqdm(loader, desc=desc, disable=not show_progress, leave=False):
        with accelerator.autocast():
            out = model(**model_inputs(model, batch, accelerator.device))
        per_clip = out.loss.float().reshape(1).expand(len(batch["pixel_values"]))  # [B]
        losses.append(accelerator.gather_for_metrics(per_clip).cpu())
    losses = torch.cat(losses) if losses else torch.zeros(0)
    return dict(num_samples=len(losses), loss=losses.double().sum().item() / max(len(losses), 1))


@dataclass
class TestRun:
    """What a task's test sees: the settings, the model on its device, the test set and its prepared (sharded)
    loader, the accelerator, the class names, the run folder, and what the dataset knows about its classes."""
    cfg: Any
    model: torch.nn.Module
    test_set: Any
    loader: Any
    accelerator: Any
    class_names: list
    run_dir: str
    reversal_pairs: Optional[dict] = None
    show_progress: bool = False


@dataclass
class TestResult:
    """``headline``: eval.json's top numbers; ``details``: the rest of the task's report; ``line``: printed;
    ``views``: single-view / multi-view results merged into the report's ``views``."""
    headline: dict
    details: dict = field(default_factory=dict)
    line: str = ""
    views: dict = field(default_factory=dict)


@dataclass
class InferenceRun:
    """What a task's inference sees (``inference.py``): the settings, the model, the inputs as a dataset and a
    plain loader, the accelerator, the checkpoint folder, its model info and class names, the view protocol."""
    cfg: Any
    model: torch.nn.Module
    dataset: Any
    loader: Any
    accelerator: Any
    checkpoint: str
    info: dict
    class_names: list
    views: dict
    show_progress: bool = False


class Task:
    """The base: a loss-only task (validation and test report the mean loss). Subclasses override what they
    judge differently."""

    name = "task"
    flags: tuple = ()  # settings only this task reads: given to another task they are refused, not ignored
    output_name = "predictions"  # what inference writes, in words

    def check(self, cfg) -> None:
        """Combinations this task cannot run, each a UsageError with the fix."""

    def run_name(self, cfg) -> str:
        """The run folder's name when --run_name is not given: ``<vision_model>-<fusion or size>-<time>``."""
        part = cfg.fusion if backbone_kind(cfg.vision_model) == "frame" else cfg.model_size
        return f"{cfg.vision_model}-{part}-{time.strftime('%Y%m%d-%H%M%S')}"

    # --- training ------------------------------------------------------------------------------------------------
    def batch_transform(self, cfg, num_classes: int) -> Optional[Callable[[dict], dict]]:
        """What the task does to every training batch before the forward pass (classification: Mixup / CutMix),
        or None. Called once per training run."""
        return None

    def train_correct(self, out, batch: dict) -> int:
        """Training clips of a batch this task counts as correct (accuracy), 0 when it has no accuracy."""
        return 0

    def epoch_record(self, loss_sum: float, correct: float, seen: float) -> dict:
        """The training part of an epoch's record from the running sums over every process."""
        return dict(train_loss=loss_sum / max(seen, 1))

    def validate(self, model, loader, accelerator, show_progress: bool = False) -> dict:
        """The validation part of an epoch's record."""
        return dict(val_loss=mean_loss(model, loader, accelerator, "val", show_progress)["loss"])

    def score(self, record: dict) -> float:
        """Higher is better: the epoch whose score is best becomes best/ (default: minus the validation loss)."""
        return -record.get("val_loss", record["train_loss"])

    # --- testing -------------------------------------------------------------------------------------------------
    def test(self, run: TestRun) -> TestResult:
        result = mean_loss(run.model, run.loader, run.accelerator, "test", run.show_progress)
        return TestResult(dict(num_samples=result["num_samples"], loss=result["loss"]),
                          line=f"test loss {result['loss']:.4f}")

    @torch.no_grad()
    def predict(self, model, batch: dict, accelerator, cfg):
        """What the model is used for, on one collated batch (timed for the latency / throughput report)."""
        with accelerator.autocast():
            return model(**model_inputs(model, batch, accelerator.device))

    def finish(self, run: TestRun, report: dict) -> dict:
        """After the report is assembled, before it is written (main process only): outputs of the task's own
        (a pretrained backbone folder), returned as report fields."""
        return {}

    def plots(self, run: TestRun, report: dict) -> list[str]:
        """The run's PNG plots, after eval.json is written (main process only); returns their paths."""
        return write_plots(run.run_dir)

    # --- inference -----------------------------------------------------------------------------------------------
    def infer(self, run: InferenceRun) -> dict:
        """The predictions file's content for ``run.dataset``."""
        raise UsageError(f"a {self.name} checkpoint has no predictions to make for videos; evaluate it with "
                         f"python main.py --eval_only True --checkpoint {run.checkpoint}")
