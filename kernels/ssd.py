"""Mamba-2's chunked state-space-duality (SSD) scan.

Per head (scalar decay A per head, state of shape (P, N)):

    dt_t    = softplus(dt_t + dt_bias)                  (bias / softplus optional)
    state_t = exp(dt_t * A) * state_{t-1} + dt_t * x_t ⊗ B_t
    y_t     = state_t · C_t  (sum over N)  +  D * x_t
    y_t     = y_t * silu(z_t)                             (if z is given)

Heads share B and C by groups: head i reads group i // (H // G). Same semantics as
mamba-ssm's `mamba_chunk_scan_combined`.

The sequence is cut into chunks of Q steps. Inside a chunk the output is a masked
"attention" (the quadratic form of the SSD):

    y_intra[t] = sum_{s <= t} (C_t · B_s) exp(cs_t - cs_s) dt_s x_s,    cs = cumsum(dt * A)

and the state carried in from earlier chunks adds y_inter[t] = exp(cs_t) C_t · state0.
At the end of a chunk state_end = exp(cs_Q) state0 + sum_s exp(cs_Q - cs_s) dt_s x_s ⊗ B_s.

Implementations:
  * `ssd_scan` with backend "triton" (CUDA tensors): fused Triton kernels, forward and
    backward (kernels/_ssd_triton.py), wrapped in `_SSDScanTriton`.
  * backend "torch" (CPU tensors): `_ssd_chunked_torch`, batched PyTorch ops over all
    chunks at once plus a short loop over chunks; backward by autograd.
  * `ssd_scan_ref`: the step-by-step loop, for tests.
  * `ssd_state_update`: one decoding step, updating the state in place.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from rlts.kernels._common import check_same, check_tensor, compute_dtype, fail, use_triton

__all__ = ["ssd_scan", "ssd_scan_ref", "ssd_state_update"]


# --------------------------------------------------------------------------------------
# Input checks
# --------------------------------------------------------------------------------------


def _check_params(op, h, p, A, D, dt_bias):
    check_tensor(op, "A", A, (h,), "(H,)")
    if D is not None:
        if isinstance(D, torch.Tensor) and D.dim() == 1:
            check_tensor(op, "D", D, (h,), "(H, P) or (H,)")
        else:
            check_tensor(op, "D", D, (h, p), "(H, P) or (H,)")
    if dt_bias is not None:
        check_tensor(op, "dt_bias", dt_bias, (h,), "(H,)")


def _check_scan_inputs(x, dt, A, B, C, chunk_size, D, z, dt_bias, initial_states):
    op = "ssd_scan"
    check_tensor(op, "x", x, (None, None, None, None), "(B, L, H, P)")
    b, L, h, p = x.shape
    if L == 0:
        fail(op, "`x` must have at least one time step, got L = 0")
    check_tensor(op, "dt", dt, (b, L, h), "(B, L, H)")
    check_tensor(op, "B", B, (b, L, None, None), "(B, L, G, N)")
    g, n = B.shape[2], B.shape[3]
    if g == 0 or h % g != 0:
        fail(op, f"`B` must have shape (B, L, G, N) with G dividing H = {h}, got G = {g}")
    check_tensor(op, "C", C, (b, L, g, n), "(B, L, G, N)")
    if isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size <= 0:
        fail(op, f"`chunk_size` must be a positive int, got {chunk_size!r}")
    _check_params(op, h, p, A, D, dt_bias)
    if z is not None:
        check_tensor(op, "z", z, (b, L, h, p), "(B, L, H, P)")
    if initial_states is not None:
        check_tensor(op, "initial_states", initial_states, (b, h, p, n), "(B, H, P, N)")
    # activations share one dtype; parameters and states may be fp32 next to bf16 activations
    check_same(op, {"x": x, "dt": dt, "B": B, "C": C, "z": z})
    check_same(op, {"x": x, "A": A, "D": D, "dt_bias": dt_bias, "initial_states": initial_states},
               dtype=False)


def _check_step_inputs(state, x, dt, A, B, C, D, z, dt_bias):
    op = "ssd_state_update"
    check_tensor(op, "x", x, (None, None, None), "(B, H, P)")
    b, h, p = x.shape
    check_tensor(op, "dt", dt, (b, h), "(B, H)")
    check_tensor(op, "B", B, (b, None, None), "(B, G, N)")
    g, n = B.shape[1], B.shape[2]
    if g == 0 or h % g != 0:
        fail(op, f"`B` must have shape (B, G, N) with G dividing H = {h}, got G = {g}")
    check_tensor(op, "C", C, (b, g, n), "(B, G, N)")
    check_tensor(op, "state", state, (b, h, p, n), "(B, H, P, N)")
    _check_params(op, h, p, A, D, dt_bias)
    if z is not None:
        check_tensor(op, "z", z, (b, h, p), "(B, H, P)")
    check_same(op, {"x": x, "dt": dt, "B": B, "C": C, "z": z})
    check_same(op, {"x": x, "state": state, "A": A, "D": D, "dt_bias": dt_bias}, dtype=False)


def _prep_dt(dt, dt_bias, dt_softplus):
    """dt + dt_bias, then softplus (threshold 20 as in mamba-ssm). dt already in compute dtype."""
    if dt_bias is not None:
        dt = dt + dt_bias.to(dt.dtype)
    if dt_softplus:
        dt = F.softplus(dt)
    return dt


def _d_term(D, x):
    """D * x for D of shape (H, P) or (H,); x (..., H, P)."""
    D = D.to(x.dtype)
    return x * (D if D.dim() == 2 else D[:, None])


# --------------------------------------------------------------------------------------
# Naive reference (tests only)
# --------------------------------------------------------------------------------------


def ssd_scan_ref(x, dt, A, B, C, D=None, z=None, dt_bias=None, initial_states=None,
                 dt_softplus=False, return_final_states=False):
    """Step-by-step recurrence, one token at a time. Slow; for tests.

    Computes in fp32, or in fp64 when x is fp64. Same shapes as `ssd_scan` (no chunk_size).
    """
    cdt = compute_dtype(x.dtype)
    b, L, h, p = x.shape
    g, n = B.shape[2], B.shape[3]
    xs, Bs, Cs = x.to(cdt), B.to(cdt), C.to(cdt)
    dts = _prep_dt(dt.to(cdt), dt_bias, dt_softplus)                      # (B, L, H)
    Bs = Bs.repeat_interleave(h // g, dim=2)                              # (B, L, H, N)
    Cs = Cs.repeat_interleave(h // g, dim=2)                              # (B, L, H, N)
    A = A.to(cdt)
    if initial_states is None:
        state = x.new_zeros(b, h, p, n, dtype=cdt)
    else:
        state = initial_states.to(cdt)                                    # (B, H, P, N)
    ys = []
    for x_t, dt_t, B_t, C_t in zip(xs.unbind(1), dts.unbind(1), Bs.unbind(1), Cs.unbind(1)):
        decay = torch.exp(dt_t * A)[:, :, None, None]                    # (B, H, 1, 1)
        state = decay * state + (dt_t[:, :, None] * x_t)[..., None] * B_t[:, :, None, :]
        ys.append(torch.einsum("bhpn,bhn->bhp", state, C_t))              # (B, H, P)
    y = torch.stack(ys, dim=1)                                            # (B, L, H, P)
    if D is not None:
        y = y + _d_term(D, xs)
    if z is not None:
        y = y * F.silu(z.to(cdt))
    y = y.to(x.dtype)
    return (y, state) if return_final_states else y


# --------------------------------------------------------------------------------------
# PyTorch chunked path (CPU; autograd backward)
# --------------------------------------------------------------------------------------


def _segsum(a: torch.Tensor) -> torch.Tensor:
    """a (..., Q) -> (..., Q, Q) with out[t, s] = a[s+1] + ... + a[t] for s <= t, 0 above.

    Summed directly (a masked cumsum) rather than as cumsum(a)[t] - cumsum(a)[s]: no
    cancellation between two large cumulative sums. Callers mask the upper triangle (where
    exp(out) = 1) themselves; nothing large and positive is ever exponentiated when a <= 0.
    """
    Q = a.shape[-1]
    strict = torch.ones(Q, Q, dtype=torch.bool, device=a.device).tril(-1)   # s < t
    a_rep = a[..., :, None].expand(*a.shape, Q)                           # [r, s] = a[r]
    return torch.cumsum(a_rep.masked_fill(~strict, 0), dim=-2)            # sum over s < r <= t


def _ssd_chunked_torch(x, dt, A, B, C, chunk_size, D, z, dt_bias, initial_states, dt_softplus):
    """Chunked SSD with batched torch ops. Returns (y in x.dtype, final states in compute dtype).

    Works head-major, (B, G, K, c, Q, ...) with K = H // G heads per group and c chunks of Q
    steps, so that every matmul sees contiguous batches (CPU bmm is many times slower when
    the batch dimension is not outermost). Autograd keeps two (Q, Q) tensors per chunk and
    head (decay mask, scores), i.e. 2 * B * H * L * Q values, about five (B, H, L, P) ones
    (x, dt * x and products with it), C B^T per group and the chunk starts: ~7 * B * H * L
    * max(Q, P) values in all, e.g. 58 MiB for B=1, L=4096, H=8, P=64, N=16, Q=64 in fp32.
    """
    cdt = compute_dtype(x.dtype)
    b, L, h, p = x.shape
    g, n = B.shape[2], B.shape[3]
    k = h // g                                    # heads per group
    Q = min(chunk_size, L)
    nc = -(-L // Q)                               # number of chunks
    pad = nc * Q - L                              # dt = 0, x = 0 there: state passes unchanged

    dtf = _prep_dt(dt.to(cdt), dt_bias, dt_softplus)                      # (B, L, H)
    xc = F.pad(x.to(cdt).transpose(1, 2), (0, 0, 0, pad)).contiguous()    # (B, H, L', P)
    xc = xc.reshape(b, g, k, nc, Q, p)                                    # (B, G, K, c, Q, P)
    dtc = F.pad(dtf.transpose(1, 2), (0, pad)).reshape(b, g, k, nc, Q)    # (B, G, K, c, Q)
    Bc = F.pad(B.to(cdt).transpose(1, 2), (0, 0, 0, pad)).reshape(b, g, 1, nc, Q, n)  # (B, G, 1, c, Q, N)
    Cc = F.pad(C.to(cdt).transpose(1, 2), (0, 0, 0, pad)).reshape(b, g, 1, nc, Q, n)  # (B, G, 1, c, Q, N)
    dA = dtc * A.to(cdt).reshape(g, k, 1, 1)                              # (B, G, K, c, Q)
    dA_cs = torch.cumsum(dA, dim=-1)                                      # (B, G, K, c, Q)

    xdt = xc * dtc[..., None]                                             # (B, G, K, c, Q, P)

    # 1. within chunks: y_intra = ((C B^T) * causal decay mask) (dt x)
    segs = _segsum(dA)                                                    # (B, G, K, c, Q, Q)
    causal = torch.ones(Q, Q, dtype=torch.bool, device=x.device).tril()   # s <= t
    CB = (Cc @ Bc.transpose(-1, -2)).masked_fill(~causal, 0)              # (B, G, 1, c, Q, Q)
    scores = CB * torch.exp(segs)                                         # (B, G, K, c, Q, Q)
    y = scores @ xdt                                                      # (B, G, K, c, Q, P)

    # 2. each chunk's own contribution to the state at its end (decay s -> end: last row)
    to_end = torch.exp(segs[..., -1, :])                                  # (B, G, K, c, Q)
    chunk_states = (xdt * to_end[..., None]).transpose(-1, -2) @ Bc       # (B, G, K, c, P, N)

    # 3. carry the state across chunks (short loop: L / Q steps)
    if initial_states is None:
        state = x.new_zeros(b, g, k, p, n, dtype=cdt)
    else:
        state = initial_states.to(cdt).reshape(b, g, k, p, n)             # (B, G, K, P, N)
    chunk_decay = torch.exp(dA_cs[..., -1])[..., None, None]              # (B, G, K, c, 1, 1)
    starts = []
    for decay_c, states_c in zip(chunk_decay.unbind(3), chunk_states.unbind(3)):  # (unbind, not
        starts.append(state)                                              # [..., c]: cheap backward)
        state = decay_c * state + states_c
    starts = torch.stack(starts, dim=3)                                   # (B, G, K, c, P, N)

    # 4. the carried state's contribution: y_inter[t] = exp(cs_t) * C_t . state0
    y = y + (Cc @ starts.transpose(-1, -2)) * torch.exp(dA_cs)[..., None]  # (B, G, K, c, Q, P)

    if y.requires_grad:  # the incoming grad is (B, L, H, P)-strided: make bmm's batches dense
        y.register_hook(lambda grad: None if grad is None else grad.contiguous())
    y = y.reshape(b, h, nc * Q, p)[:, :, :L].transpose(1, 2)              # (B, L, H, P)
    if D is not None:
        y = y + _d_term(D, x.to(cdt))
    if z is not None:
        y = y * F.silu(z.to(cdt))
    return y.to(x.dtype), state.reshape(b, h, p, n)


# --------------------------------------------------------------------------------------
# Triton path: autograd.Function around the fused kernels
# --------------------------------------------------------------------------------------


class _SSDScanTriton(torch.autograd.Function):
    """Forward: one fused kernel, saving the state at the start of every chunk. Backward: a
    state-passing kernel walking the chunks in reverse, then a kernel over all chunks in
    parallel (kernels/_ssd_triton.py)."""

    @staticmethod
    def forward(ctx, x, dt, A, B, C, D, z, dt_bias, initial_states, chunk_size, dt_softplus):
        from rlts.kernels import _ssd_triton as tri

        y, final, chunk_starts = tri.ssd_fwd(x, dt, A, B, C, chunk_size, D, z, dt_bias,
                                             initial_states, dt_softplus)
        ctx.save_for_backward(x, dt, A, B, C, D, z, dt_bias, initial_states, chunk_starts)
        ctx.chunk_size, ctx.dt_softplus = chunk_size, dt_softplus
        ctx.set_materialize_grads(False)  # unused outputs give None: the kernel skips them
        return y, final

    @staticmethod
    def backward(ctx, dy, dfinal):
        from rlts.kernels import _ssd_triton as tri

        x, dt, A, B, C, D, z, dt_bias, initial_states, chunk_starts = ctx.saved_tensors
        grads = tri.ssd_bwd(dy, dfinal, x, dt, A, B, C, ctx.chunk_size, D, z, dt_bias,
                            initial_states, ctx.dt_softplus, chunk_starts)
        dx, ddt, dA, dB, dC, dD, dz, ddt_bias, dinit = grads
        return dx, ddt, dA, dB, dC, dD, dz, ddt_bias, dinit, None, None


# --------------------------------------------------------------------------------------
# Public ops
# --------------------------------------------------------------------------------------


def ssd_scan(x, dt, A, B, C, chunk_size, D=None, z=None, dt_bias=None, initial_states=None,
             dt_softplus=False, return_final_states=False, backend=None):
    """Chunked SSD scan (Mamba-2), semantics of mamba-ssm's `mamba_chunk_scan_combined`.

    x (B, L, H, P), dt (B, L, H), A (H,), B, C (B, L, G, N) with G dividing H, D (H, P) or (H,),
    z (B, L, H, P), dt_bias (H,), initial_states (B, H, P, N). Any L (need not divide by
    chunk_size). Returns y (B, L, H, P) in x's dtype and, if `return_final_states`, the final
    states (B, H, P, N) in fp32 (fp64 for fp64 input).
    backend: None / "auto" (CUDA -> Triton, CPU -> PyTorch), "torch" or "triton".
    """
    _check_scan_inputs(x, dt, A, B, C, chunk_size, D, z, dt_bias, initial_states)
    if use_triton("ssd_scan", x, backend):
        y, final = _SSDScanTriton.apply(x, dt, A, B, C, D, z, dt_bias, initial_states,
                                        chunk_size, dt_softplus)
    else:
        y, final = _ssd_chunked_torch(x, dt, A, B, C, chunk_size, D, z, dt_bias,
                                      initial_states, dt_softplus)
    return (y, final) if return_final_states else y


@torch.no_grad()
def ssd_state_update(state, x, dt, A, B, C, D=None, z=None, dt_bias=None, dt_softplus=False,
                     backend=None):
    """One decoding step. state (B, H, P, N) is updated IN PLACE; returns y (B, H, P).

    x (B, H, P), dt (B, H), A (H,), B, C (B, G, N), D (H, P) or (H,), z (B, H, P), dt_bias (H,).
    Inference only (no autograd).
    """
    _check_step_inputs(state, x, dt, A, B, C, D, z, dt_bias)
    if use_triton("ssd_state_update", x, backend):
        from rlts.kernels import _ssd_triton as tri

        return tri.ssd_step(state, x, dt, A, B, C, D, z, dt_bias, dt_softplus)

    cdt = compute_dtype(x.dtype)
    b, h, p = x.shape
    g = B.shape[1]
    xf = x.to(cdt)
    dtf = _prep_dt(dt.to(cdt), dt_bias, dt_softplus)                      # (B, H)
    Bh = B.to(cdt).repeat_interleave(h // g, dim=1)                       # (B, H, N)
    Ch = C.to(cdt).repeat_interleave(h // g, dim=1)                       # (B, H, N)
    decay = torch.exp(dtf * A.to(cdt))[..., None, None]                   # (B, H, 1, 1)
    new = decay * state.to(cdt) + (dtf[..., None] * xf)[..., None] * Bh[:, :, None, :]
    state.copy_(new)
    y = torch.einsum("bhpn,bhn->bhp", new, Ch)                            # (B, H, P)
    if D is not None:
        y = y + _d_term(D, xf)
    if z is not None:
        y = y * F.silu(z.to(cdt))
    return y.to(x.dtype)
