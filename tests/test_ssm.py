"""The parallel selective scan against a sequential reference, and the Mamba fusion layer built on it."""
import pytest
import torch
import torch.nn.functional as F

from videolab.models import ssm
from conftest import train_in_bf16
from videolab.models.classifier import TemporalFusionEncoder
from videolab.models.fusion import MambaFusion
from test_ssd import CLOSE as SSD_CLOSE, sequential_ssd


def sequential_scan(x, dt, A, B, C):
    """Reference: one time step at a time. x, dt [B, L, D]; A [D, N]; B, C [B, L, N] -> y [B, L, D]."""
    state = x.new_zeros(x.shape[0], x.shape[2], A.shape[1])  # [B, D, N]
    ys = []
    for t in range(x.shape[1]):
        state = torch.exp(dt[:, t, :, None] * A) * state + (dt[:, t] * x[:, t])[..., None] * B[:, t, None, :]
        ys.append((state * C[:, t, None, :]).sum(-1))
    return torch.stack(ys, dim=1)


def scan_inputs(batch, length, dim=6, d_state=4, seed=0, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, length, dim, generator=g, dtype=dtype)
    dt = F.softplus(torch.randn(batch, length, dim, generator=g, dtype=dtype) - 1)
    A = -torch.rand(dim, d_state, generator=g, dtype=dtype) * 4 - 0.1
    B = torch.randn(batch, length, d_state, generator=g, dtype=dtype)
    C = torch.randn(batch, length, d_state, generator=g, dtype=dtype)
    return [t.requires_grad_() for t in (x, dt, A, B, C)]


def outputs_and_grads(fn, inputs, grad_out):
    y = fn(*inputs)
    return [y, *torch.autograd.grad(y, inputs, grad_out)]


@pytest.mark.parametrize("length,chunk_len", [(1, 8), (7, 8), (8, 8), (37, 8), (100, 16), (33, None)])
def test_chunked_scan_matches_sequential_reference(length, chunk_len):
    inputs = scan_inputs(2, length)
    grad_out = torch.randn(2, length, 6)
    fast = outputs_and_grads(lambda *a: ssm.ChunkedSelectiveScan.apply(*a, chunk_len or ssm.default_chunk_len(length)),
                             inputs, grad_out)
    reference = outputs_and_grads(sequential_scan, inputs, grad_out)
    for name, got, expected in zip(["y", "dx", "ddt", "dA", "dB", "dC"], fast, reference):
        torch.testing.assert_close(got, expected, msg=lambda m, n=name: f"{n}: {m}")


def test_scan_has_no_python_loop_over_time():
    """The number of tensor steps grows like sqrt(L), not L."""
    assert ssm.default_chunk_len(4096) == 64 and ssm.default_chunk_len(1024) == 32
    calls = {"n": 0}
    original = ssm._step_

    def counting_step(*args):
        calls["n"] += 1
        return original(*args)

    ssm._step_ = counting_step
    try:
        ssm.selective_scan(*[t.detach() for t in scan_inputs(1, 1024)])
    finally:
        ssm._step_ = original
    assert calls["n"] <= 2 * 32, f"{calls['n']} sequential steps for L=1024"


def test_selective_scan_keeps_fp32_state_under_bf16_autocast():
    inputs = [t.detach() for t in scan_inputs(2, 300, dim=8)]
    reference = sequential_scan(*inputs)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = ssm.selective_scan(*[t.bfloat16() for t in inputs])
    assert y.dtype == torch.bfloat16 and torch.isfinite(y).all()
    # only the inputs were rounded to bf16: the result is close to fp32, not drifting with length
    torch.testing.assert_close(y.float(), reference, rtol=0.05, atol=0.1)


# The mixer-level contracts hold for both Mamba layers: Mamba-1 (selective scan) and Mamba-2 (SSD, tests/test_ssd.py).
# name -> (mixer of width dim, the scan function the mixer calls, its step-by-step reference, comparison tolerance)
MIXERS = {
    "mamba": (lambda dim, bi: ssm.MambaMixer(dim, d_state=4, bidirectional=bi), "selective_scan",
              lambda x, dt, A, B, C, chunk_len=None: sequential_scan(x, dt, A, B, C), {}),
    "mamba2": (lambda dim, bi: ssm.Mamba2Mixer(dim, d_state=4, head_dim=dim // 2, bidirectional=bi), "ssd_scan",
               lambda x, dt, A, B, C, chunk_len=None: sequential_ssd(x, dt, A, B, C), SSD_CLOSE),
}


@pytest.mark.parametrize("kind", sorted(MIXERS))
def test_padding_does_not_change_real_positions_in_either_direction(kind):
    torch.manual_seed(0)
    mixer = MIXERS[kind][0](16, True).eval()
    x = torch.randn(1, 5, 16)
    padded = torch.cat([x, torch.randn(1, 3, 16) * 10], dim=1)  # right padding with junk
    mask = torch.tensor([[False] * 5 + [True] * 3])
    torch.testing.assert_close(mixer(padded, mask)[:, :5], mixer(x), rtol=1e-5, atol=1e-5)
    left = torch.cat([torch.randn(1, 2, 16) * 10, x], dim=1)  # left padding
    left_mask = torch.tensor([[True] * 2 + [False] * 5])
    torch.testing.assert_close(mixer(left, left_mask)[:, 2:], mixer(x), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("kind", sorted(MIXERS))
def test_bidirectional_mixer_matches_reference_built_from_sequential_scans(kind, monkeypatch):
    """Forward + reversed scans through the fast path equal the same layer computed with the sequential scan."""
    build, scan_name, reference, close = MIXERS[kind]
    torch.manual_seed(0)
    mixer = build(8, True)
    x = torch.randn(2, 11, 8, requires_grad=True)
    mask = torch.zeros(2, 11, dtype=torch.bool)
    mask[1, 8:] = True
    fast = mixer(x, mask)
    (fast_grad,) = torch.autograd.grad(fast.square().sum(), x)
    monkeypatch.setattr(ssm, scan_name, reference)
    slow = mixer(x, mask)
    (slow_grad,) = torch.autograd.grad(slow.square().sum(), x)
    torch.testing.assert_close(fast, slow, **close)
    torch.testing.assert_close(fast_grad, slow_grad, **close)


@pytest.mark.parametrize("kind", sorted(MIXERS))
def test_causal_mixer_does_not_look_ahead_and_bidirectional_does(kind):
    torch.manual_seed(0)
    x = torch.randn(1, 10, 8)
    changed = x.clone()
    changed[:, 7:] += 1.0
    causal = MIXERS[kind][0](8, False)
    torch.testing.assert_close(causal(x)[:, :7], causal(changed)[:, :7])
    both = MIXERS[kind][0](8, True)
    assert not torch.allclose(both(x)[:, :7], both(changed)[:, :7])


@pytest.mark.parametrize("fusion", ["mamba", "mamba2"])
@pytest.mark.parametrize("bidirectional", [True, False])
def test_mamba_fusion_encoder_reads_a_token_that_saw_every_frame(fusion, bidirectional):
    torch.manual_seed(0)
    encoder = TemporalFusionEncoder(12, 16, fusion, depth=1, d_state=4, dropout=0.0, head_dim=8,
                                    bidirectional=bidirectional).eval()
    frames = torch.randn(2, 6, 12)
    last_changed = frames.clone()
    last_changed[:, -1] += 1.0
    assert not torch.allclose(encoder(frames), encoder(last_changed))  # the pooled token depends on the last frame
    # padding the clip leaves the clip vector unchanged
    padded = torch.cat([frames, torch.randn(2, 2, 12)], dim=1)
    mask = torch.tensor([[False] * 6 + [True] * 2] * 2)
    torch.testing.assert_close(encoder(padded, mask), encoder(frames), rtol=1e-5, atol=1e-5)


def test_mamba_fusion_trains_in_bf16_without_nan():
    torch.manual_seed(0)
    layer = MambaFusion(32, depth=2, d_state=8)
    train_in_bf16(layer, torch.randn(4, 50, 32), torch.randn(4, 50, 32), steps=3, lr=1e-3)
    assert layer.mixers[0].forward_ssm.A_log.dtype == torch.float32



def test_cuda_kernels_are_optional():
    """Without mamba-ssm (or without a GPU) the PyTorch path is used and the layer still works."""
    assert ssm.cuda_kernels_available() in (True, False)
    if not torch.cuda.is_available():
        assert not ssm.cuda_kernels_available()
    y = ssm.MambaMixer(8, d_state=4)(torch.randn(1, 4, 8))
    assert y.shape == (1, 4, 8)


@pytest.mark.skipif(not ssm.cuda_kernels_available(), reason="needs mamba-ssm and a CUDA GPU")
def test_cuda_kernels_agree_with_pytorch_scan():
    inputs = [t.detach() for t in scan_inputs(2, 257, dim=64, d_state=16)]
    cpu = ssm.ChunkedSelectiveScan.apply(*inputs, 16)
    gpu = ssm.selective_scan(*[t.cuda() for t in inputs])
    torch.testing.assert_close(gpu.cpu(), cpu, rtol=1e-4, atol=1e-4)
