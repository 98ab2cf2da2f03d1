"""Fusion layers honour padding masks: padded and unpadded inputs give the same outputs at the real tokens."""
import pytest
import torch

from videolab.models.fusion import BottleneckFusion
from videolab.models.registry import FUSIONS

DIM = 32


def _layer(name: str, num_modalities: int = 1):
    torch.manual_seed(0)
    return FUSIONS.get(name)(dim=DIM, depth=3, n_heads=4, dropout=0.0, d_state=4, bottleneck_tokens=3,
                               bottleneck_layer=1, num_modalities=num_modalities).eval()


def _pad(x: torch.Tensor, extra: int) -> tuple[torch.Tensor, torch.Tensor]:
    """x [B, L, D] -> (x with ``extra`` random tokens appended, mask [B, L + extra], True = padding)."""
    noise = torch.randn(x.shape[0], extra, x.shape[2]) * 5
    mask = torch.cat([torch.zeros(x.shape[0], x.shape[1]), torch.ones(x.shape[0], extra)], 1).bool()
    return torch.cat([x, noise], 1), mask


@pytest.mark.parametrize("name", sorted(FUSIONS.where(temporal=True)))
def test_padding_changes_nothing(name):
    layer = _layer(name)
    x = torch.randn(2, 6, DIM)
    padded, mask = _pad(x, 3)
    with torch.no_grad():
        plain, masked = layer(x), layer(padded, mask)
    torch.testing.assert_close(masked[:, :6], plain, atol=1e-5, rtol=1e-4)


def test_bottleneck_segments_padded_inside():
    """Two modality segments, each padded at its own end (so padding sits inside the sequence)."""
    layer = _layer("bottleneck", num_modalities=2)
    a, b = torch.randn(2, 5, DIM), torch.randn(2, 3, DIM)
    (pa, ma), (pb, mb) = _pad(a, 2), _pad(b, 4)
    with torch.no_grad():
        plain = layer(torch.cat([a, b], 1), segments=[5, 3])
        masked = layer(torch.cat([pa, pb], 1), torch.cat([ma, mb], 1), segments=[7, 7])
    torch.testing.assert_close(masked[:, :5], plain[:, :5], atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(masked[:, 7:10], plain[:, 5:], atol=1e-5, rtol=1e-4)


def test_bottleneck_exchanges_only_from_its_layer_and_skips_missing_modality():
    layer = _layer("bottleneck", num_modalities=2)
    a, b = torch.randn(1, 4, DIM), torch.randn(1, 3, DIM)
    with torch.no_grad():
        out = layer(torch.cat([a, b], 1), segments=[4, 3])
        changed_b = layer(torch.cat([a, torch.randn_like(b)], 1), segments=[4, 3])
        missing = layer(torch.cat([a, b], 1), torch.tensor([[False] * 4 + [True] * 3]), segments=[4, 3])
        alone = layer(a, segments=[4])
    assert not torch.allclose(out[:, :4], changed_b[:, :4])  # information crosses through the bottleneck
    torch.testing.assert_close(missing[:, :4], alone, atol=1e-5, rtol=1e-4)  # a missing modality is left out
    assert torch.isfinite(missing).all()
    no_exchange = BottleneckFusion(DIM, depth=2, n_heads=4, dropout=0.0, bottleneck_layer=1, num_modalities=2).eval()
    with torch.no_grad():
        torch.testing.assert_close(no_exchange(torch.cat([a, b], 1), segments=[4, 3])[:, :4],
                                   no_exchange(torch.cat([a, torch.randn_like(b)], 1), segments=[4, 3])[:, :4])


def test_bottleneck_rejects_bad_segments():
    layer = _layer("bottleneck", num_modalities=2)
    with pytest.raises(ValueError, match="segments"):
        layer(torch.randn(1, 6, DIM), segments=[2, 2, 2])
