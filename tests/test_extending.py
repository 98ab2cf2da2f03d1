"""The README's "Extending" examples, each a part written here and registered with one line, then trained for one
step through ``main.main``: a backbone, a fusion layer, a dataset and a task. In the repo each part would be one
file in its folder (``videolab/models``, ``videolab/data``, ``videolab/tasks``) plus one ``add`` line in that
folder's ``registry.py``; here the tests register them for the test only (``Registry.temporarily``)."""
import os

import numpy as np
import torch
from torch import nn

import main as train_main
from videolab.data.clips import BadVideoLog, ClipDataset, DataBundle
from videolab.data.registry import DATASETS
from videolab.data.sampling import make_clip_spec, spec_options
from videolab.data.video_io import VideoError
from videolab.models.backbones import IMAGENET_MEAN, IMAGENET_STD, Backbone, FrameEncoder
from videolab.models.registry import BACKBONES, FUSIONS
from videolab.tasks.classification import ClassificationTask, gather_logits
from videolab.tasks.registry import TASKS

ONE_STEP = ["--model_size", "tiny", "--num_frames", "4", "--image_size", "32", "--epochs", "1", "--max_steps", "1",
            "--batch_size", "4", "--quiet", "--speed_repeats", "0", "--summary_csv", "none"]


# ------------------------------------------------------------------------------------------------ a backbone
class TinyCNN(nn.Module):
    """One frame [N, 3, H, W] -> a feature vector [N, width]."""

    def __init__(self, width: int):
        super().__init__()
        self.net = nn.Sequential(nn.Conv2d(3, width, 3, stride=2, padding=1), nn.GELU(),
                                 nn.AdaptiveAvgPool2d(1), nn.Flatten())

    def forward(self, frames: torch.Tensor) -> torch.Tensor:
        return self.net(frames)


def build_tiny_cnn(cfg, arch=None) -> Backbone:
    """A per-frame backbone: the fusion layer joins its frame vectors over time. ``arch`` rebuilds a checkpoint's."""
    arch = arch or dict(width=24)
    return Backbone(FrameEncoder(TinyCNN(arch["width"])), "frame", arch["width"], IMAGENET_MEAN, IMAGENET_STD,
                    pretrained=False, source="random init (tiny_cnn)", arch=arch)


def test_a_new_backbone_trains_through_main(tiny_dataset, tmp_path):
    with BACKBONES.temporarily("tiny_cnn", build_tiny_cnn, kind="frame"):
        report = train_main.main(["--vision_model", "tiny_cnn", "--data_root", tiny_dataset, "--output_dir",
                                  str(tmp_path), *ONE_STEP])
    assert report["history"][0]["step"] == 1 and report["settings"]["vision_model"] == "tiny_cnn"
    assert report["fusion"] == "transformer" and report["params_total"] < 200_000


# ------------------------------------------------------------------------------------------------ a fusion layer
class GRUFusion(nn.Module):
    """A bidirectional GRU over the token sequence: x [B, L, D] + padding mask [B, L] -> [B, L, D]."""

    order_aware = True  # the encoder adds positions and a CLS token, and reads the CLS output
    sees_whole_sequence = True  # token 0 sees everything (both directions)

    def __init__(self, dim: int, depth: int = 1, **_unused):  # the --fusion_* options it does not read
        super().__init__()
        self.gru = nn.GRU(dim, dim // 2, num_layers=depth, batch_first=True, bidirectional=True)

    def forward(self, x: torch.Tensor, padding_mask=None, segments=None) -> torch.Tensor:
        if padding_mask is not None:
            x = x.masked_fill(padding_mask.unsqueeze(-1), 0.0)
        return self.gru(x)[0]  # [B, L, 2 * (D // 2)] = [B, L, D]


def test_a_new_fusion_trains_through_main(tiny_dataset, tmp_path):
    with FUSIONS.temporarily("gru", GRUFusion, temporal=True, composed=False, options=("depth",)):
        report = train_main.main(["--vision_model", "vit_small_patch16_224", "--fusion", "gru", "--fusion_depth",
                                  "1", "--data_root", tiny_dataset, "--output_dir", str(tmp_path), *ONE_STEP])
    assert report["fusion"] == "gru" and report["history"][0]["step"] == 1


# ------------------------------------------------------------------------------------------------ a dataset
class NpyClips(ClipDataset):
    """Clips stored as uint8 .npy arrays [T, H, W, 3] in <root>/<split>/<class>/<name>.npy."""

    def __init__(self, items, class_names, spec, policy: str):
        self.items, self.class_names, self.spec = items, class_names, spec
        self.bad = BadVideoLog(len(items), policy)

    def __len__(self) -> int:
        return len(self.items)

    def load_frames(self, i, pick):
        try:
            video = np.load(self.items[i][0], mmap_mode="r")  # [T, H, W, 3]
        except (OSError, ValueError) as exc:
            raise VideoError(f"{self.items[i][0]}: {exc}") from None
        return torch.from_numpy(np.ascontiguousarray(video[pick(len(video))])).permute(0, 3, 1, 2)

    def fields(self, i) -> dict:
        path, label = self.items[i]
        return dict(labels=torch.tensor(label), video_id=os.path.basename(path), caption="", hint="")


class NpySource:
    """``--dataset npy``: what data/registry.py registers (a DatasetSource)."""

    @staticmethod
    def ensure(cfg, quiet=True):
        """Nothing to generate."""

    @staticmethod
    def class_names(cfg) -> list[str]:
        return sorted(os.listdir(os.path.join(cfg.data_root, "train")))

    @staticmethod
    def texts(cfg) -> list[str]:
        return []

    @classmethod
    def build(cls, cfg, train_spec, eval_spec, parts) -> DataBundle:
        names = cls.class_names(cfg)

        def split(name, spec, policy):
            folder = os.path.join(cfg.data_root, name)
            items = [(os.path.join(folder, c, f), names.index(c)) for c in names
                     for f in sorted(os.listdir(os.path.join(folder, c)))]
            return NpyClips(items, names, spec, policy) if name in parts or (name == "train" and "val" in parts) \
                else None
        return DataBundle(split("train", train_spec, "skip"), None, split("test", eval_spec, "report"), names)


def write_npy_dataset(root):
    rng = np.random.default_rng(0)
    for split, count in (("train", 4), ("test", 2)):
        for c in ("still", "noisy"):
            os.makedirs(os.path.join(root, split, c), exist_ok=True)
            for i in range(count):
                scale = 5 if c == "still" else 120
                video = np.clip(128 + rng.normal(0, scale, (6, 40, 48, 3)), 0, 255).astype(np.uint8)
                np.save(os.path.join(root, split, c, f"clip{i}.npy"), video)


def test_a_new_dataset_trains_through_main(tmp_path):
    write_npy_dataset(str(tmp_path / "npy"))
    with DATASETS.temporarily("npy", NpySource, provides=("labels",), tasks=("classification",)):
        report = train_main.main(["--dataset", "npy", "--data_root", str(tmp_path / "npy"), "--output_dir",
                                  str(tmp_path / "runs"), "--val_fraction", "0", *ONE_STEP])
    assert report["class_names"] == ["noisy", "still"] and report["num_samples"] == 4


# ------------------------------------------------------------------------------------------------ a task
class CalibratedClassification(ClassificationTask):
    """Classification judged by its calibration too: the test report adds the expected calibration error (ECE,
    10 confidence bins), and the best checkpoint is the one with the lowest validation loss."""

    name = "calibrated_classification"

    def score(self, record: dict) -> float:
        return -record.get("val_loss", record["train_loss"])

    def test(self, run):
        result = super().test(run)
        logits = gather_logits(run.model, run.loader, run.accelerator)
        confidence, predicted = logits["logits"].softmax(-1).max(-1)
        correct = (predicted == logits["labels"]).float()
        bins = torch.clamp((confidence * 10).long(), max=9)
        ece = sum((bins == b).float().mean() * (correct[bins == b].mean() - confidence[bins == b].mean()).abs()
                  for b in range(10) if (bins == b).any())
        result.headline["expected_calibration_error"] = float(ece)
        result.line += f" | ECE {float(ece):.3f}"
        return result


def test_a_new_task_trains_through_main(tiny_dataset, tmp_path):
    with TASKS.temporarily("calibrated_classification", CalibratedClassification, flag="calibrated",
                           kind="classifier", needs=("labels",)):
        report = train_main.main(["--task", "calibrated", "--data_root", tiny_dataset, "--output_dir",
                                  str(tmp_path), *ONE_STEP])
    assert report["task"] == "calibrated_classification"
    assert 0.0 <= report["expected_calibration_error"] <= 1.0 and 0.0 <= report["top1"] <= 1.0
