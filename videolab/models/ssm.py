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
    # x [B, L, D] seen as [B, D, 1, L] is a channels-last image: a depthwise conv2d over it runs without the two
    # transposing copies that Conv1d on [B, D, L] needs (about 2x faster forward + backward at L = 1024; those
    # strided copies were the part of the layer that grew fastest with L)
    image = x.transpose(1, 2).unsqueeze(2)  # [B, D, 1, L], channels-last strides
    y = F.conv2d(image, conv.weight.unsqueeze(2), conv.bias, padding=(0, conv.kernel_size[0] - 1),
                 groups=conv.groups)  # [B, D, 1, L + d_conv - 1]
    return F.silu(y.squeeze(2)[..., :length].transpose(1, 2))  # [B, L, D]


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


# ----------------------------------------------------------------------------------------------------------------------
# Mamba-2: structured state space duality (SSD)
# ----------------------------------------------------------------------------------------------------------------------
# Mamba-2 (Dao & Gu, 2024) restricts the decay to one scalar per head and time step, a[t, h] = exp(dt[t, h] A[h]).
# The state of head h is a matrix h[t] [P, N] (P = head width), and the recurrence is
#
#     h[t] = a[t] h[t-1] + dt[t] x[t] B[t]^T          y[t] = h[t] C[t]
#
# Because a[t] does not depend on the channel or the state index, the output inside a chunk of Q steps is a masked
# "attention" product, y = (L * (C B^T)) (dt x) with L[t, s] = a[s+1] ... a[t] (1 on the diagonal, 0 above it), and
# the state at a chunk's end is a product too. Everything is matrix multiplication over [Q, Q] or [Q, N] blocks; the
# only sequential part, carrying states from chunk to chunk, is again a (tiny) masked matrix product. This is what
# makes Mamba-2 fast without custom kernels on a CPU, where Mamba-1's per-channel decay makes the scan elementwise
# and memory-bound. Autograd differentiates it directly; nothing of size [B, L, H, P, N] is ever built.

try:  # optional Triton kernels for the SSD scan (CUDA); never required
    from mamba_ssm.ops.triton.ssd_combined import mamba_chunk_scan_combined as _cuda_ssd_scan
except Exception:
    _cuda_ssd_scan = None

SSD_CHUNK_LEN = 32


def segment_sums(log_decay: torch.Tensor) -> torch.Tensor:
    """log_decay [..., T] -> [..., T, T] with out[i, j] = sum(log_decay[j+1 : i+1]) for j <= i, -inf above.

    exp(out) is the lower-triangular decay matrix L. Summing masked copies (instead of subtracting two cumulative
    sums) keeps it exact when the cumulative sums grow large over a long sequence.
    """
    length = log_decay.shape[-1]
    below = torch.ones(length, length, dtype=torch.bool, device=log_decay.device).tril(-1)
    sums = log_decay.unsqueeze(-1).expand(*log_decay.shape, length).masked_fill(~below, 0.0).cumsum(-2)
    return sums.masked_fill(~below.logical_or(torch.eye(length, dtype=torch.bool, device=log_decay.device)),
                            float("-inf"))


def carry_states(own_ends: torch.Tensor, log_decay: torch.Tensor, block: int = SSD_CHUNK_LEN) -> torch.Tensor:
    """The state recurrence at chunk level: s[c] = exp(log_decay[c]) s[c-1] + own_ends[c], s[-1] = 0.

    own_ends [B, H, n, F] (each chunk's end state started from zero), log_decay [B, H, n] (each chunk's total) ->
    s [B, H, n, F]. The same trick once more: up to ``block`` chunks are one masked matrix product; longer sequences
    are cut into blocks, solved inside each block, and the blocks' end states are carried by a recursive call. The
    work stays linear in n (a single n x n product would be quadratic) with log_block(n) levels of calls.
    """
    batch, heads, n, feat = own_ends.shape
    if n <= block:
        return segment_sums(log_decay).exp() @ own_ends
    pad = (-n) % block
    own_ends, log_decay = F.pad(own_ends, (0, 0, 0, pad)), F.pad(log_decay, (0, pad))
    n_blocks = (n + pad) // block
    log_decay = log_decay.view(batch, heads, n_blocks, block)
    inside = segment_sums(log_decay).exp() @ own_ends.view(batch, heads, n_blocks, block, feat)  # [B, H, nb, b, F]
    block_ends = carry_states(inside[..., -1, :], log_decay.sum(-1), block)  # [B, H, nb, F]
    entering = F.pad(block_ends[:, :, :-1], (0, 0, 1, 0)).unsqueeze(3)  # state entering each block: [B, H, nb, 1, F]
    inside = inside + log_decay.cumsum(-1).exp().unsqueeze(-1) * entering
    return inside.view(batch, heads, n_blocks * block, feat)[:, :, :n]


def ssd_chunked_scan(x: torch.Tensor, dt: torch.Tensor, A: torch.Tensor, B: torch.Tensor, C: torch.Tensor,
                     chunk_len: int = SSD_CHUNK_LEN) -> torch.Tensor:
    """x [B, L, H, P]; dt [B, L, H] (positive); A [H] (negative); B, C [B, L, N] -> y [B, L, H, P] (fp32 math).

    Pure PyTorch, parallel over the sequence: O(L Q) work, no Python loop over time or chunks.
    """
    batch, length, heads, head_dim = x.shape
    pad = (-length) % chunk_len
    # padded steps: dt = 0 (decay 1, no drive) and C = 0 (no output); they are cut off at the end
    x, B, C = (F.pad(t, (0, 0, 0, pad)) if t.dim() == 3 else F.pad(t, (0, 0, 0, 0, 0, pad)) for t in (x, B, C))
    dt = F.pad(dt, (0, 0, 0, pad))
    n_chunks = (length + pad) // chunk_len
    x = x.view(batch, n_chunks, chunk_len, heads, head_dim).permute(0, 3, 1, 2, 4)  # [B, H, nc, Q, P]
    dt = dt.view(batch, n_chunks, chunk_len, heads).permute(0, 3, 1, 2)  # [B, H, nc, Q]
    B = B.view(batch, 1, n_chunks, chunk_len, -1)  # [B, 1, nc, Q, N] (shared by the heads)
    C = C.view(batch, 1, n_chunks, chunk_len, -1)
    # dt x is never formed: dt (and every decay) is folded into the [Q, Q] and [Q, N] factors, which are smaller
    # than [Q, P] ones (Q = 32, N = 16 < P = 64), so fewer bytes pass through memory
    log_decay = dt * A.view(1, heads, 1, 1)  # [B, H, nc, Q]

    # L[t, s] = exp(cum[t] - cum[s]) for s <= t (as mamba-ssm's kernel computes it). Above the diagonal the
    # difference is positive: clamped to 0 so that exp stays finite, and zeroed by the causal mask, which is applied
    # to C B^T (shared by the heads, H times smaller than L) instead of L.
    cumulative = log_decay.cumsum(-1)  # [B, H, nc, Q]
    decay = (cumulative.unsqueeze(-1) - cumulative.unsqueeze(-2)).clamp_(max=0.0).exp_()  # [B, H, nc, Q(t), Q(s)]
    causal = torch.ones(chunk_len, chunk_len, dtype=torch.bool, device=x.device).tril()
    scores = (C @ B.transpose(-1, -2)).masked_fill(~causal, 0.0)  # [B, 1, nc, Q, Q]
    y_inside = (scores * decay * dt.unsqueeze(-2)) @ x  # L * C B^T * dt[s], times x: [B, H, nc, Q, P]

    # each chunk's own end state (from zero), then the state entering every chunk from the ones before it
    to_end = (cumulative[..., -1:] - cumulative).exp().unsqueeze(-1)  # a[s+1] ... a[Q-1]: [B, H, nc, Q, 1]
    end_states = x.transpose(-1, -2) @ (B * (to_end * dt.unsqueeze(-1)))  # [B, H, nc, P, N]
    true_ends = carry_states(end_states.flatten(-2), log_decay.sum(-1)).view_as(end_states)  # [B, H, nc, P, N]
    starts = F.pad(true_ends[:, :, :-1], (0, 0, 0, 0, 1, 0))  # state entering chunk c = true end of chunk c-1
    from_start = cumulative.exp().unsqueeze(-1)  # a[0] ... a[t] within the chunk: [B, H, nc, Q, 1]
    y_carried = (C * from_start) @ starts.transpose(-1, -2)  # [B, H, nc, Q, P]

    y = (y_inside + y_carried).permute(0, 2, 3, 1, 4).reshape(batch, n_chunks * chunk_len, heads, head_dim)
    return y[:, :length]


def ssd_scan(x: torch.Tensor, dt: torch.Tensor, A: torch.Tensor, B: torch.Tensor, C: torch.Tensor,
             chunk_len: int = SSD_CHUNK_LEN) -> torch.Tensor:
    """The SSD scan in x's dtype, computed in fp32: mamba-ssm's Triton kernel for CUDA tensors when installed,
    :func:`ssd_chunked_scan` otherwise. Shapes as in :func:`ssd_chunked_scan`."""
    out_dtype = x.dtype
    if x.is_cuda and _cuda_ssd_scan is not None:
        y = _cuda_ssd_scan(x.float().contiguous(), dt.float().contiguous(), A.float(),
                           B.float().unsqueeze(2).contiguous(), C.float().unsqueeze(2).contiguous(), chunk_len)
        return y.to(out_dtype)
    with torch.autocast(device_type=x.device.type, enabled=False):
        y = ssd_chunked_scan(x.float(), dt.float(), A.float(), B.float(), C.float(), chunk_len)
    return y.to(out_dtype)


class SSDBranch(nn.Module):
    """One scan direction of a Mamba-2 mixer: causal conv over (x, B, C) -> SSD scan -> + D x.

    xbc [B, L, D_inner + 2N], dt_raw [B, L, H], keep [B, L, 1] or None -> y [B, L, D_inner]. Padding gets x = 0 and
    dt = 0, so the state passes through it unchanged (as in :class:`SelectiveSSM`).
    """

    def __init__(self, d_inner: int, d_state: int, d_conv: int, heads: int, dt_min: float = 1e-3,
                 dt_max: float = 0.1):
        super().__init__()
        self.d_inner, self.d_state, self.heads = d_inner, d_state, heads
        channels = d_inner + 2 * d_state
        self.conv = nn.Conv1d(channels, channels, d_conv, groups=channels, padding=d_conv - 1)
        dt = torch.exp(torch.rand(heads) * (math.log(dt_max) - math.log(dt_min)) + math.log(dt_min))
        self.dt_bias = nn.Parameter(dt + torch.log(-torch.expm1(-dt)))  # inverse softplus of the initial dt
        self.A_log = nn.Parameter(torch.log(torch.empty(heads).uniform_(1, 16)))  # A = -exp(A_log) in [-16, -1]
        self.D = nn.Parameter(torch.ones(heads))

    def forward(self, xbc: torch.Tensor, dt_raw: torch.Tensor, keep: Optional[torch.Tensor] = None) -> torch.Tensor:
        if keep is not None:
            xbc = xbc * keep
        xbc = _causal_depthwise_conv_silu(xbc, self.conv)  # [B, L, D_inner + 2N]
        if keep is not None:
            xbc = xbc * keep
        x, B, C = xbc.split([self.d_inner, self.d_state, self.d_state], dim=-1)
        dt = F.softplus(dt_raw.float() + self.dt_bias.float())  # [B, L, H], fp32
        if keep is not None:
            dt = dt * keep
        heads_x = x.unflatten(-1, (self.heads, -1))  # [B, L, H, P]
        y = ssd_scan(heads_x, dt, -torch.exp(self.A_log.float()), B, C)
        y = y + heads_x * self.D.to(x.dtype).unsqueeze(-1)
        return y.flatten(-2)  # [B, L, D_inner]


class Mamba2Mixer(nn.Module):
    """Mamba-2 block body: in_proj -> (z, x, B, C, dt); SSD branch (and a reversed one when bidirectional); gated
    RMSNorm(y * silu(z)) -> out_proj. As in :class:`MambaMixer`, the bidirectional mode shares the projections and
    gives each direction its own conv, dt bias, A and D, and averages the two.

    x [B, L, D] with padding_mask [B, L] (True = padding) -> [B, L, D].
    """

    def __init__(self, dim: int, d_state: int = 16, d_conv: int = 4, expand: int = 2, head_dim: int = 64,
                 bidirectional: bool = True):
        super().__init__()
        d_inner = expand * dim
        if d_inner % head_dim:
            raise ValueError(f"Mamba-2 inner width {d_inner} (= expand {expand} x width {dim}) is not divisible by "
                             f"fusion_head_dim {head_dim}; set --fusion_head_dim to a divisor of {d_inner}")
        heads = d_inner // head_dim
        self.sizes = [d_inner, d_inner + 2 * d_state, heads]  # z, (x, B, C), dt
        self.in_proj = nn.Linear(dim, sum(self.sizes), bias=False)
        self.forward_ssd = SSDBranch(d_inner, d_state, d_conv, heads)
        self.backward_ssd = SSDBranch(d_inner, d_state, d_conv, heads) if bidirectional else None
        self.norm = nn.RMSNorm(d_inner)
        self.out_proj = nn.Linear(d_inner, dim, bias=False)

    def forward(self, x: torch.Tensor, padding_mask: Optional[torch.Tensor] = None) -> torch.Tensor:
        keep = None if padding_mask is None else (~padding_mask).unsqueeze(-1).to(x.dtype)  # [B, L, 1]
        z, xbc, dt_raw = self.in_proj(x).split(self.sizes, dim=-1)
        y = self.forward_ssd(xbc, dt_raw, keep)
        if self.backward_ssd is not None:
            flipped_keep = None if keep is None else keep.flip(1)
            y = (y + self.backward_ssd(xbc.flip(1), dt_raw.flip(1), flipped_keep).flip(1)) / 2
        return self.out_proj(self.norm(y * F.silu(z)))
