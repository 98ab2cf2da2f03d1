"""Mamba (selective state space) layers that run everywhere.

The selective scan is the recurrence, per channel ``d`` and state index ``n``::

    h[t] = exp(dt[t, d] * A[d, n]) * h[t-1] + dt[t, d] * x[t, d] * B[t, n]
    y[t, d] = sum_n C[t, n] * h[t, d, n]

Two implementations, chosen at run time by ``selective_scan``:

* ``mamba-ssm``'s fused CUDA kernel, when the package imports and the tensors are on a GPU;
* ``ChunkedSelectiveScan`` everywhere else: pure PyTorch, **parallel over the sequence**. The sequence is cut into
  ``n_chunks`` chunks of ``chunk_len`` steps (both about sqrt(L)); the steps inside a chunk advance for all chunks at
  once, a short pass carries the state from chunk to chunk, and a second pass adds it in. A length-L scan therefore
  takes about 3 sqrt(L) tensor steps forward and 4 sqrt(L) backward, instead of L. The backward pass is written out
  (it is the same recurrence run in reverse), so nothing of size [B, L, D, N] is kept between forward and backward:
  states are recomputed from the saved chunk-start states.

The state is always fp32, also under bf16/fp16 autocast.
"""
from __future__ import annotations

import math
from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

try:  # optional CUDA kernels; never required
    from mamba_ssm.ops.selective_scan_interface import selective_scan_fn as _cuda_selective_scan
except Exception:  # ImportError, or a build that does not match this torch
    _cuda_selective_scan = None
try:
    from causal_conv1d import causal_conv1d_fn as _cuda_causal_conv1d
except Exception:
    _cuda_causal_conv1d = None


def cuda_kernels_available() -> bool:
    return _cuda_selective_scan is not None and torch.cuda.is_available()


def default_chunk_len(length: int) -> int:
    """About sqrt(L), a power of two, between 8 and 128."""
    return int(min(128, max(8, 2 ** round(math.log2(max(1, length)) / 2))))


# ----------------------------------------------------------------------------------------------------------------------
# Pure-PyTorch chunked scan
# ----------------------------------------------------------------------------------------------------------------------

def _to_steps(t: torch.Tensor, n_chunks: int, chunk_len: int) -> torch.Tensor:
    """[B, n_chunks * chunk_len, F] -> [chunk_len, n_chunks * B, F] (step-major, then chunk-major, contiguous)."""
    batch, _, feat = t.shape
    return t.view(batch, n_chunks, chunk_len, feat).permute(2, 1, 0, 3).reshape(chunk_len, n_chunks * batch, feat)


def _from_steps(t: torch.Tensor, batch: int) -> torch.Tensor:
    """[chunk_len, n_chunks * B, F] -> [B, n_chunks * chunk_len, F]."""
    chunk_len, rows, feat = t.shape
    return t.view(chunk_len, rows // batch, batch, feat).permute(2, 1, 0, 3).reshape(batch, -1, feat)


# Inside the scan a state is stored [M, N, D] (D innermost) so that every broadcast runs along contiguous memory.

def _decay(dt_k: torch.Tensor, A_nd: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
    """exp(dt * A) into ``out``: dt_k [M, D], A_nd [N, D] -> [M, N, D]."""
    return torch.mul(dt_k.unsqueeze(1), A_nd, out=out).exp_()


def _step_(state: torch.Tensor, decay: torch.Tensor, dtx_k: torch.Tensor, B_k: torch.Tensor) -> torch.Tensor:
    """In place: state = decay * state + B outer (dt * x). state, decay [M, N, D]; dtx_k [M, D]; B_k [M, N]."""
    return state.mul_(decay).addcmul_(B_k.unsqueeze(-1), dtx_k.unsqueeze(1))


def _chunk_start_states(dt_s, dtx_s, B_s, A_nd, batch, n_chunks):
    """True state entering each chunk [M, N, D], and each chunk's total decay [nc, B, N, D].

    Pass 1 runs every chunk from a zero state; pass 2 walks the chunks in order, carrying the state through each
    chunk's total decay exp(A * sum(dt)) and adding the chunk's own zero-start end state.
    """
    rows, dim = dt_s.shape[1:]
    local_end = dt_s.new_zeros(rows, A_nd.shape[0], dim)  # [M, N, D]
    decay = torch.empty_like(local_end)
    for k in range(dt_s.shape[0]):
        _step_(local_end, _decay(dt_s[k], A_nd, decay), dtx_s[k], B_s[k])
    chunk_decay = _decay(dt_s.sum(0), A_nd, decay).view(n_chunks, batch, -1, dim)  # [nc, B, N, D]
    local_end = local_end.view(n_chunks, batch, -1, dim)
    starts = torch.zeros_like(local_end)
    for c in range(1, n_chunks):
        torch.addcmul(local_end[c - 1], chunk_decay[c - 1], starts[c - 1], out=starts[c])
    return starts.view(rows, -1, dim), chunk_decay


class ChunkedSelectiveScan(torch.autograd.Function):
    """y = selective_scan(x, dt, A, B, C); x, dt [B, L, D]; A [D, N]; B, C [B, L, N] -> y [B, L, D].

    M = n_chunks * B rows advance together; K = chunk_len steps per chunk. Tensors named ``*_s`` are step-major
    [K, M, F].
    """

    @staticmethod
    def forward(ctx, x, dt, A, B, C, chunk_len):
        batch, length, _ = x.shape
        pad = (-length) % chunk_len
        # padded steps have dt = 0 (decay 1, no drive) and C = 0 (no output): they change nothing
        x, dt, B, C = (F.pad(t, (0, 0, 0, pad)) for t in (x, dt, B, C))
        n_chunks = (length + pad) // chunk_len
        dt_s, x_s, B_s, C_s = (_to_steps(t, n_chunks, chunk_len) for t in (dt, x, B, C))  # [K, M, *]
        dtx_s = dt_s * x_s
        A_nd = A.T.contiguous()
        starts, chunk_decay = _chunk_start_states(dt_s, dtx_s, B_s, A_nd, batch, n_chunks)
        y_s = torch.empty_like(x_s)
        state, decay = starts.clone(), torch.empty_like(starts)
        for k in range(chunk_len):
            _step_(state, _decay(dt_s[k], A_nd, decay), dtx_s[k], B_s[k])  # h[k]: [M, N, D]
            torch.bmm(C_s[k].unsqueeze(1), state, out=y_s[k].unsqueeze(1))  # y[k] = C[k] h[k]: [M, 1, D]
        ctx.save_for_backward(dt_s, x_s, A_nd, B_s, C_s, starts, chunk_decay)
        ctx.shape = (batch, length, n_chunks)
        return _from_steps(y_s, batch)[:, :length]

    @staticmethod
    def backward(ctx, grad_y):
        dt_s, x_s, A_nd, B_s, C_s, starts, chunk_decay = ctx.saved_tensors
        batch, length, n_chunks = ctx.shape
        chunk_len, rows, dim = x_s.shape
        grad_y_s = _to_steps(F.pad(grad_y.to(x_s.dtype), (0, 0, 0, (-length) % chunk_len)), n_chunks, chunk_len)
        dtx_s = dt_s * x_s

        # decays a[k] and states h[k] for every step, recomputed from the saved chunk starts: [K, M, N, D] each
        decays = starts.new_empty(chunk_len, *starts.shape)
        states = torch.empty_like(decays)
        previous = starts
        for k in range(chunk_len):
            _decay(dt_s[k], A_nd, decays[k])
            previous = _step_(states[k].copy_(previous), decays[k], dtx_s[k], B_s[k])

        # g[t] = dL/dh[t] = C[t] dy[t] + a[t+1] g[t+1]: the same scan run backwards. Pass 1: from zero at each
        # chunk end; pass 2: carry across chunks (last to first); pass 3 below starts each chunk from its carry.
        carried = torch.zeros_like(starts)  # a[k] g[k] of the step just processed: [M, N, D]
        for k in reversed(range(chunk_len)):
            carried.addcmul_(C_s[k].unsqueeze(-1), grad_y_s[k].unsqueeze(1)).mul_(decays[k])
        into_chunk_end = torch.zeros_like(chunk_decay)  # dL/dh at a chunk's last step from later chunks
        carry_back = carried.view(n_chunks, batch, -1, dim)
        for c in range(n_chunks - 1, 0, -1):
            torch.addcmul(carry_back[c], chunk_decay[c], into_chunk_end[c], out=into_chunk_end[c - 1])

        grad_dtx_s, grad_B_s, grad_C_s = torch.empty_like(dtx_s), torch.empty_like(B_s), torch.empty_like(C_s)
        grad_dt_decay = torch.empty_like(dt_s)  # through exp(dt * A)
        grad_A_rows = torch.zeros_like(starts)  # sum over steps of dL/d(dt A) * dt; summed over rows at the end
        grad_state = into_chunk_end.view(rows, -1, dim)
        grad_log_decay = torch.empty_like(starts)
        for k in reversed(range(chunk_len)):
            grad_state.addcmul_(C_s[k].unsqueeze(-1), grad_y_s[k].unsqueeze(1))  # g[k]: [M, N, D]
            torch.bmm(states[k], grad_y_s[k].unsqueeze(-1), out=grad_C_s[k].unsqueeze(-1))  # [M, N, 1]
            torch.bmm(B_s[k].unsqueeze(1), grad_state, out=grad_dtx_s[k].unsqueeze(1))  # [M, 1, D]
            torch.bmm(grad_state, dtx_s[k].unsqueeze(-1), out=grad_B_s[k].unsqueeze(-1))  # [M, N, 1]
            grad_state.mul_(decays[k])  # a[k] g[k], carried to step k - 1
            # dL/d(dt A)[k] = g[k] a[k] h[k-1]: [M, N, D], contracted over N (for dt) and summed over M (for A)
            torch.mul(grad_state, states[k - 1] if k else starts, out=grad_log_decay)
            grad_A_rows.addcmul_(grad_log_decay, dt_s[k].unsqueeze(1))
            torch.sum(grad_log_decay.mul_(A_nd), dim=1, out=grad_dt_decay[k])

        grad_x_s = grad_dtx_s * dt_s
        grad_dt_s = grad_dt_decay + grad_dtx_s * x_s
        grad_A = grad_A_rows.sum(0).T  # [D, N]
        unsteps = lambda t: _from_steps(t, batch)[:, :length]  # noqa: E731
        return unsteps(grad_x_s), unsteps(grad_dt_s), grad_A, unsteps(grad_B_s), unsteps(grad_C_s), None


def selective_scan(x: torch.Tensor, dt: torch.Tensor, A: torch.Tensor, B: torch.Tensor, C: torch.Tensor,
                   chunk_len: Optional[int] = None) -> torch.Tensor:
    """x, dt [B, L, D] (dt already positive); A [D, N] (negative); B, C [B, L, N] -> y [B, L, D] in x's dtype.

    Uses mamba-ssm's CUDA kernel for CUDA tensors when it is installed, the chunked PyTorch scan otherwise.
    """
    out_dtype = x.dtype
    if x.is_cuda and _cuda_selective_scan is not None:
        # fp32 in (the kernel wants u and dt in one dtype, and dt must not be rounded to bf16); state is fp32 inside
        to_kernel = lambda t: t.float().transpose(1, 2).contiguous()  # noqa: E731  [B, L, F] -> [B, F, L]
        y = _cuda_selective_scan(to_kernel(x), to_kernel(dt), A.float(), to_kernel(B), to_kernel(C))  # [B, D, L]
        return y.transpose(1, 2).to(out_dtype)
    chunk_len = chunk_len or default_chunk_len(x.shape[1])
    with torch.autocast(device_type=x.device.type, enabled=False):
        y = ChunkedSelectiveScan.apply(x.float(), dt.float(), A.float(), B.float(), C.float(), chunk_len)
    return y.to(out_dtype)


# ----------------------------------------------------------------------------------------------------------------------
# Mamba mixer
# ----------------------------------------------------------------------------------------------------------------------

def _causal_depthwise_conv_silu(x: torch.Tensor, conv: nn.Conv1d) -> torch.Tensor:
    """silu(causal depthwise conv over time): x [B, L, D] -> [B, L, D]."""
    length = x.shape[1]
    if x.is_cuda and _cuda_causal_conv1d is not None:
        weight, bias = conv.weight.squeeze(1).to(x.dtype), conv.bias.to(x.dtype)  # the kernel wants one dtype
        return _cuda_causal_conv1d(x.transpose(1, 2).contiguous(), weight, bias, activation="silu").transpose(1, 2)
    return F.silu(conv(x.transpose(1, 2))[..., :length].transpose(1, 2))


class SelectiveSSM(nn.Module):
    """One scan direction of a Mamba mixer: conv -> input-dependent (dt, B, C) -> selective scan -> + D x.

    x [B, L, D_inner], keep [B, L, 1] (1 = real token, 0 = padding) -> y [B, L, D_inner]. Padding positions get
    dt = 0 and x = 0, so the state passes through them unchanged: padded and unpadded inputs give the same outputs
    at the real positions (padding must sit at one end of the sequence, as right- or left-padding does).
    """

    def __init__(self, d_inner: int, d_state: int, d_conv: int, dt_rank: int, dt_min: float = 1e-3,
                 dt_max: float = 0.1):
        super().__init__()
        self.d_state, self.dt_rank = d_state, dt_rank
        self.conv = nn.Conv1d(d_inner, d_inner, d_conv, groups=d_inner, padding=d_conv - 1)
        self.x_proj = nn.Linear(d_inner, dt_rank + 2 * d_state, bias=False)
        self.dt_proj = nn.Linear(dt_rank, d_inner)
        # dt starts log-uniform in [dt_min, dt_max]; the bias is its inverse softplus (as in the Mamba paper)
        dt = torch.exp(torch.rand(d_inner) * (math.log(dt_max) - math.log(dt_min)) + math.log(dt_min))
        with torch.no_grad():
            self.dt_proj.bias.copy_(dt + torch.log(-torch.expm1(-dt)))
        nn.init.uniform_(self.dt_proj.weight, -dt_rank ** -0.5, dt_rank ** -0.5)
        # A = -exp(A_log) = -[1, 2, ..., N] for every channel (S4D-real initialisation); kept fp32
        self.A_log = nn.Parameter(torch.log(torch.arange(1, d_state + 1, dtype=torch.float32)).repeat(d_inner, 1))
        self.D = nn.Parameter(torch.ones(d_inner))

    def forward(self, x: torch.Tensor, keep: Optional[torch.Tensor] = None) -> torch.Tensor:
        if keep is not None:
            x = x * keep
        x = _causal_depthwise_conv_silu(x, self.conv)  # [B, L, D_inner]
        if keep is not None:
            x = x * keep
        dt_low, B, C = self.x_proj(x).split([self.dt_rank, self.d_state, self.d_state], dim=-1)
        dt = F.softplus(self.dt_proj(dt_low).float())  # [B, L, D_inner], fp32
        if keep is not None:
            dt = dt * keep
        A = -torch.exp(self.A_log.float())  # [D_inner, N]
        y = selective_scan(x, dt, A, B, C)
        return y + x * self.D.to(x.dtype)


class MambaMixer(nn.Module):
    """Mamba block body: in_proj -> (x, z); x -> SSM (forward, and backward when bidirectional); y * silu(z) ->
    out_proj. Bidirectional mode (the VideoMamba design) runs a second SSM with its own parameters on the reversed
    sequence and averages the two, so every token sees the whole sequence.

    x [B, L, D] with padding_mask [B, L] (True = padding) -> [B, L, D].
    """

    def __init__(self, dim: int, d_state: int = 16, d_conv: int = 4, expand: int = 2, bidirectional: bool = True):
        super().__init__()
        d_inner = expand * dim
        dt_rank = math.ceil(dim / 16)
        self.in_proj = nn.Linear(dim, 2 * d_inner, bias=False)
        self.forward_ssm = SelectiveSSM(d_inner, d_state, d_conv, dt_rank)
        self.backward_ssm = SelectiveSSM(d_inner, d_state, d_conv, dt_rank) if bidirectional else None
        self.out_proj = nn.Linear(d_inner, dim, bias=False)

    def forward(self, x: torch.Tensor, padding_mask: Optional[torch.Tensor] = None) -> torch.Tensor:
        keep = None if padding_mask is None else (~padding_mask).unsqueeze(-1).to(x.dtype)  # [B, L, 1]
        x, z = self.in_proj(x).chunk(2, dim=-1)  # [B, L, D_inner] each
        y = self.forward_ssm(x, keep)
        if self.backward_ssm is not None:
            flipped_keep = None if keep is None else keep.flip(1)
            y = (y + self.backward_ssm(x.flip(1), flipped_keep).flip(1)) / 2
        return self.out_proj(y * F.silu(z))
