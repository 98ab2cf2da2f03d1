"""The Mamba-2 (SSD) chunked scan against a sequential reference, and the Mamba-2 fusion layer built on it."""
import pytest
import torch
import torch.nn.functional as F

from videolab.models import ssm
from conftest import train_in_bf16
from videolab.models.fusion import Mamba2Fusion
from videolab.models.registry import FUSIONS


def sequential_ssd(x, dt, A, B, C):
    """Reference, one step at a time. x [B, L, H, P]; dt [B, L, H]; A [H]; B, C [B, L, N] -> y [B, L, H, P].

    h[t] = exp(dt[t] A) h[t-1] + dt[t] x[t] B[t]^T (a [P, N] matrix per head); y[t] = h[t] C[t].
    """
    batch, length, heads, head_dim = x.shape
    state = x.new_zeros(batch, heads, head_dim, B.shape[-1])
    ys = []
    for t in range(length):
        decay = torch.exp(dt[:, t] * A)[..., None, None]  # [B, H, 1, 1]
        drive = (dt[:, t, :, None] * x[:, t])[..., None] * B[:, t, None, None, :]  # [B, H, P, N]
        state = decay * state + drive
        ys.append((state * C[:, t, None, None, :]).sum(-1))
    return torch.stack(ys, dim=1)


def ssd_inputs(batch, length, heads=3, head_dim=5, d_state=4, seed=0, dt_shift=-1.0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, length, heads, head_dim, generator=g)
    dt = F.softplus(torch.randn(batch, length, heads, generator=g) + dt_shift)
    A = -torch.rand(heads, generator=g) * 4 - 0.1
    B = torch.randn(batch, length, d_state, generator=g)
    C = torch.randn(batch, length, d_state, generator=g)
    return [t.requires_grad_() for t in (x, dt, A, B, C)]


# The chunked scan forms decays as exp(cum[t] - cum[s]) (as mamba-ssm's kernel does) where the reference multiplies
# step by step: the same fp32 math summed in another order, equal to about 1e-5 relative.
CLOSE = dict(rtol=1e-4, atol=1e-4)


def outputs_and_grads(fn, inputs, grad_out):
    y = fn(*inputs)
    return [y, *torch.autograd.grad(y, inputs, grad_out)]


@pytest.mark.parametrize("length,chunk_len", [(1, 4), (7, 4), (8, 4), (37, 8), (130, 16), (65, 64)])
def test_ssd_scan_matches_sequential_reference(length, chunk_len):
    inputs = ssd_inputs(2, length)
    grad_out = torch.randn(2, length, 3, 5)
    fast = outputs_and_grads(lambda *a: ssm.ssd_chunked_scan(*a, chunk_len=chunk_len), inputs, grad_out)
    reference = outputs_and_grads(sequential_ssd, inputs, grad_out)
    for name, got, expected in zip(["y", "dx", "ddt", "dA", "dB", "dC"], fast, reference):
        torch.testing.assert_close(got, expected, **CLOSE, msg=lambda m, n=name: f"{n}: {m}")


def test_ssd_scan_stays_exact_over_long_strongly_decaying_sequences():
    """Cumulative log-decays reach thousands over 600 steps: the chunk carry must not subtract two of them."""
    inputs = [t.detach() for t in ssd_inputs(1, 600, dt_shift=1.5)]
    y = ssm.ssd_chunked_scan(*inputs, chunk_len=16)
    assert torch.isfinite(y).all()
    torch.testing.assert_close(y, sequential_ssd(*inputs), **CLOSE)


def test_ssd_scan_work_does_not_loop_over_time():
    """No loop over time steps or chunks: the number of tensor operations is the same for 64 and 1024 steps (up to
    32 chunks of 32: one chunk-carry product) and for 2048 and 4096 (one recursive carry level more)."""
    def op_count(length):
        inputs = [t.detach() for t in ssd_inputs(1, length, heads=1, head_dim=2, d_state=2)]
        with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
            ssm.ssd_chunked_scan(*inputs, chunk_len=32)
        return sum(event.count for event in prof.key_averages())
    assert op_count(1024) == op_count(64)
    assert op_count(4096) == op_count(2048)


@pytest.mark.parametrize("chunks", [1, 5, 32, 33, 100, 1100])
def test_chunk_carry_matches_sequential_recurrence(chunks):
    g = torch.Generator().manual_seed(chunks)
    own_ends = torch.randn(2, 3, chunks, 4, generator=g, dtype=torch.float64)
    log_decay = -torch.rand(2, 3, chunks, generator=g, dtype=torch.float64) * 3
    state, expected = torch.zeros(2, 3, 4, dtype=torch.float64), []
    for c in range(chunks):
        state = log_decay[:, :, c, None].exp() * state + own_ends[:, :, c]
        expected.append(state)
    torch.testing.assert_close(ssm.carry_states(own_ends, log_decay, block=8), torch.stack(expected, dim=2))


def test_ssd_scan_keeps_fp32_under_bf16_autocast():
    inputs = [t.detach() for t in ssd_inputs(2, 200)]
    reference = sequential_ssd(*inputs)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = ssm.ssd_scan(inputs[0].bfloat16(), *inputs[1:])
    assert y.dtype == torch.bfloat16 and torch.isfinite(y).all()
    torch.testing.assert_close(y.float(), reference, rtol=0.05, atol=0.1)  # only x was rounded to bf16


def test_mixer_rejects_a_head_width_that_does_not_divide():
    with pytest.raises(ValueError, match="fusion_head_dim"):
        ssm.Mamba2Mixer(12, expand=2, head_dim=7)


# padding, the bidirectional reference, causality and the fusion encoder: tests/test_ssm.py, for both mixers


def test_mamba2_fusion_trains_in_bf16_without_nan_and_learns():
    torch.manual_seed(0)
    layer = Mamba2Fusion(32, depth=2, d_state=8, head_dim=16, dropout=0.0)
    x = torch.randn(4, 50, 32)
    target = torch.roll(x, shifts=1, dims=1)  # needs the previous token: only the scan can provide it
    losses = train_in_bf16(layer, x, target, steps=30, lr=3e-3)
    assert losses[-1] < 0.7 * losses[0], losses
    assert layer.mixers[0].forward_ssd.A_log.dtype == torch.float32


def test_mamba2_is_in_the_fusion_registry():
    assert FUSIONS.get("mamba2") is Mamba2Fusion


@pytest.mark.skipif(not (torch.cuda.is_available() and ssm._cuda_ssd_scan is not None),
                    reason="needs mamba-ssm's Triton kernels and a CUDA GPU")
def test_cuda_ssd_kernel_agrees_with_pytorch_scan():
    inputs = [t.detach() for t in ssd_inputs(2, 257, heads=4, head_dim=16, d_state=16)]
    cpu = ssm.ssd_chunked_scan(*inputs)
    gpu = ssm.ssd_scan(*[t.cuda() for t in inputs])
    torch.testing.assert_close(gpu.cpu(), cpu, rtol=1e-3, atol=1e-3)


def test_a_head_width_that_does_not_fit_is_a_clear_error_and_exit_2(tiny_dataset, capsys):
    import main as train_main
    from conftest import TINY_FLAGS
    from videolab.cli import run_cli
    code = run_cli(train_main.main, ["--data_root", tiny_dataset, *TINY_FLAGS, "--vision_model",
                                     "vit_small_patch16_224", "--fusion", "mamba2", "--fusion_head_dim", "7",
                                     "--max_steps", "1", "--quiet"])
    err = capsys.readouterr().err.strip().splitlines()  # the offline-weights note, then the error
    assert code == 2 and "--fusion_head_dim to a divisor of" in err[-1]
    assert not any("Traceback" in line for line in err)
