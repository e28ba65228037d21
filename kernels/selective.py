"""Mamba-1 selective scan (S6), with mamba-ssm's `selective_scan_fn` semantics.

    selective_scan(u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False,
                   return_last_state=False, initial_state=None, backend=None)
    selective_state_update(state, x, dt, A, B, C, D=None, z=None, dt_bias=None,
                           dt_softplus=False, backend=None)      one token, state updated in place
    selective_scan_ref(...)                                       naive loop, tests only

Per channel d and state index n, with delta <- softplus(delta + delta_bias) (each optional):

    x_t[d, n] = exp(delta_t[d] A[d, n]) x_{t-1}[d, n] + delta_t[d] B_t[g(d), n] u_t[d]    (x_{-1} = initial_state or 0)
    y_t[d]    = sum_n C_t[g(d), n] x_t[d, n]
    out_t[d]  = (y_t[d] + D[d] u_t[d]) * silu(z_t[d])

g(d) = d // (dim // G) is the B/C group of channel d (G = 1 for B, C of shape (batch, N, L)).

Implementations (chosen by `kernels._common.use_triton`):
  * Triton (CUDA, or backend="triton" under TRITON_INTERPRET=1): kernels/_selective_triton.py.
    The forward keeps each program's (BLOCK_D, N) state in registers and saves only the
    state at the start of every BLOCK_L block; the backward recomputes from those.
  * PyTorch (CPU): L is cut into chunks sized so a (batch, T, dim, N) tensor stays within
    `_CHUNK_ELEMS`. Per chunk, deltaA = exp(delta A) and deltaB_u are built with one
    broadcast op each and the dim*N channels are scanned together with
    `kernels.linear.linear_scan`. The custom backward keeps only the chunk-start states
    (batch, dim, N) per chunk and recomputes each chunk, walking the chunks from the end; the
    adjoint recurrence of the state is itself a reverse `linear_scan`.
Both compute in float32 for fp16/bf16 inputs (float64 stays float64) and return `out` in u's
dtype; the last state is in that compute dtype.

Gradients (both backends), with q_t = dh_t * exp(delta_t A) x_{t-1} = dh_t * (x_t - delta_t u_t B_t):
    dh_t     = gy_t C_t + exp(delta_{t+1} A) dh_{t+1}         (gy = dout * silu(z))
    dA       = sum_t q_t delta_t
    ddelta_t = sum_n q_t A + u_t sum_n dh_t B_t
    du_t     = gy_t D + delta_t sum_n dh_t B_t
    dB_t     = sum_{d in group} dh_t delta_t u_t,   dC_t = sum_{d in group} gy_t x_t
    dx_{-1}  = exp(delta_0 A) dh_0                            (d initial_state)
"""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F

from kernels._common import BACKENDS, check_same, check_tensor, compute_dtype, fail, use_triton
from kernels.linear import linear_scan

try:  # Triton is optional: without it the PyTorch path serves every device.
    from kernels import _selective_triton as _tri
except Exception:  # pragma: no cover - platform dependent
    _tri = None

_OP = "selective_scan"
_STEP_OP = "selective_state_update"

# CPU path: elements of one (batch, T, dim, N) chunk tensor (the backward holds ~8 of them),
# but at least _CHUNK_MIN steps per chunk so that per-chunk overhead and saved states stay small.
_CHUNK_ELEMS = 1 << 20
_CHUNK_MIN = 16


# --------------------------------------------------------------------------- input checks
def _check_scan(op, u, delta, A, B, C, D, z, delta_bias, initial_state=None):
    """Validate and return (B4, C4): B and C as (batch, G, N, L) views."""
    check_tensor(op, "u", u, (None, None, None), "(batch, dim, L)")
    batch, dim, L = u.shape
    if L < 1:
        fail(op, f"`u` must have shape (batch, dim, L) with L >= 1, got {tuple(u.shape)}")
    check_tensor(op, "delta", delta, (batch, dim, L), "(batch, dim, L)")
    check_tensor(op, "A", A, (dim, None), "(dim, N)")
    N = A.shape[1]
    groups = {}
    for name, t in (("B", B), ("C", C)):
        if isinstance(t, torch.Tensor) and t.dim() == 4:
            check_tensor(op, name, t, (batch, None, N, L), "(batch, N, L) or (batch, G, N, L)")
            G = t.shape[1]
            if G < 1 or dim % G:
                fail(op, f"`{name}` has G = {G} groups, which must divide dim = {dim}; "
                         f"expected shape (batch, G, N, L) = ({batch}, G, {N}, {L})")
            groups[name] = t
        else:
            check_tensor(op, name, t, (batch, N, L), "(batch, N, L) or (batch, G, N, L)")
            groups[name] = t.unsqueeze(1)
    if groups["B"].shape[1] != groups["C"].shape[1]:
        fail(op, f"`C` must have the same groups as `B`: expected shape {tuple(groups['B'].shape)} "
                 f"(batch, G, N, L), got {tuple(C.shape)}")
    if D is not None:
        check_tensor(op, "D", D, (dim,), "(dim,)")
    if z is not None:
        check_tensor(op, "z", z, (batch, dim, L), "(batch, dim, L)")
    if delta_bias is not None:
        check_tensor(op, "delta_bias", delta_bias, (dim,), "(dim,)")
    if initial_state is not None:
        check_tensor(op, "initial_state", initial_state, (batch, dim, N), "(batch, dim, N)")
    # Activations share a dtype; B and C share one; parameters (A, D, delta_bias) may differ.
    check_same(op, {"u": u, "delta": delta, "z": z})
    check_same(op, {"B": B, "C": C})
    check_same(op, {"u": u, "delta": delta, "A": A, "B": B, "C": C, "D": D, "z": z,
                    "delta_bias": delta_bias, "initial_state": initial_state}, dtype=False)
    return groups["B"], groups["C"]


# --------------------------------------------------------------------------- PyTorch path
def _chunks(L: int, per_step: int):
    T = min(L, max(_CHUNK_MIN, _CHUNK_ELEMS // max(1, per_step)))
    return [(l0, min(l0 + T, L)) for l0 in range(0, L, T)]


def _prepare(u, delta, A, B4, C4, D, z, delta_bias, softplus, cd):
    """Time-major tensors in the compute dtype: u, delta, z (batch, L, dim); B, C (batch, L, G, N).

    Returns also the pre-softplus delta (for its derivative) and the parameters in cd."""
    ut = u.transpose(1, 2).to(cd).contiguous()                   # (batch, L, dim)
    dt = delta.transpose(1, 2).to(cd)                            # (batch, L, dim)
    if delta_bias is not None:
        dt = dt + delta_bias.to(cd)
    dt_pre = dt
    dt = F.softplus(dt) if softplus else dt.contiguous()
    Bt = B4.permute(0, 3, 1, 2).to(cd).contiguous()              # (batch, L, G, N)
    Ct = C4.permute(0, 3, 1, 2).to(cd).contiguous()              # (batch, L, G, N)
    zt = None if z is None else z.transpose(1, 2).to(cd)         # (batch, L, dim)
    Dc = None if D is None else D.to(cd)
    return ut, dt, dt_pre, A.to(cd), Bt, Ct, Dc, zt


def _chunk_terms(ut, dt, A, Bt, l0, l1, G):
    """deltaA = exp(delta A) and deltaB_u = delta u B for steps [l0, l1): (batch, T, dim, N) each."""
    batch, _, dim = ut.shape
    T, N = l1 - l0, A.shape[1]
    dt_c = dt[:, l0:l1]                                          # (batch, T, dim)
    dA = ut.new_empty(batch, T, dim, N)
    torch.mul(dt_c[..., None], A, out=dA).exp_()                 # (batch, T, dim, N)
    return dA, _group_outer(dt_c * ut[:, l0:l1], Bt[:, l0:l1])


def _group_outer(w, v):
    """w[b, t, d] * v[b, t, g(d), n] -> contiguous (batch, T, dim, N)."""
    batch, T, dim = w.shape
    G, N = v.shape[2], v.shape[3]
    out = w.new_empty(batch, T, G, dim // G, N)
    torch.mul(w.reshape(batch, T, G, dim // G, 1), v[:, :, :, None, :], out=out)
    return out.view(batch, T, dim, N)


def _group_contract(x, v, G):
    """sum_n x[b, t, d, n] v[b, t, g(d), n] -> (batch, T, dim)."""
    batch, T, dim, N = x.shape
    return torch.einsum("btgdn,btgn->btgd", x.view(batch, T, G, dim // G, N), v).reshape(batch, T, dim)


def _group_reduce(w, x, G):
    """sum_{d in g} w[b, t, d] x[b, t, d, n] -> (batch, T, G, N) as one batched matmul."""
    batch, T, dim, N = x.shape
    r = w.reshape(batch, T, G, 1, dim // G) @ x.view(batch, T, G, dim // G, N)
    return r.view(batch, T, G, N)


class _SelectiveScanTorch(torch.autograd.Function):
    @staticmethod
    def forward(ctx, u, delta, A, B4, C4, D, z, delta_bias, init, softplus: bool):
        cd = compute_dtype(u.dtype)
        batch, dim, L = u.shape
        G, N = B4.shape[1], A.shape[1]
        ut, dt, _, Ac, Bt, Ct, Dc, zt = _prepare(u, delta, A, B4, C4, D, z, delta_bias, softplus, cd)
        y = torch.empty(batch, L, dim, dtype=cd, device=u.device)   # (batch, L, dim)
        h = (torch.zeros(batch, dim * N, dtype=cd, device=u.device) if init is None  # carried
             else init.to(cd).reshape(batch, dim * N).clone())                    # state, flat
        starts = []                                                  # chunk-start states
        for l0, l1 in _chunks(L, batch * dim * N):
            starts.append(h)
            dA, dBu = _chunk_terms(ut, dt, Ac, Bt, l0, l1, G)      # (batch, T, dim, N)
            hs, h = linear_scan(dA.view(batch, l1 - l0, dim * N), dBu.view(batch, l1 - l0, dim * N),
                                h0=h, return_last=True, backend="torch")
            y[:, l0:l1] = _group_contract(hs.view(batch, l1 - l0, dim, N), Ct[:, l0:l1], G)
        if Dc is not None:
            y += ut * Dc                                             # y + D u
        out = y if zt is None else y * F.silu(zt)                    # * silu(z)
        out = out.transpose(1, 2).to(u.dtype).contiguous()           # (batch, dim, L)
        # With z, the backward needs y + D u (batch, L, dim): kept rather than recomputed.
        ctx.save_for_backward(u, delta, A, B4, C4, D, z, delta_bias, init, torch.stack(starts),
                              y if zt is not None else None)
        ctx.softplus = softplus
        return out, h.view(batch, dim, N)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, dout, dlast):
        u, delta, A, B4, C4, D, z, delta_bias, init, starts, pre = ctx.saved_tensors
        cd = compute_dtype(u.dtype)
        batch, dim, L = u.shape
        G, N = B4.shape[1], A.shape[1]
        ut, dt, dt_pre, Ac, Bt, Ct, Dc, zt = _prepare(u, delta, A, B4, C4, D, z, delta_bias,
                                                      ctx.softplus, cd)
        g = dout.transpose(1, 2).to(cd)                              # (batch, L, dim)
        dz = None
        if zt is not None:
            sz = torch.sigmoid(zt)
            dz = g * pre * sz * (1 + zt * (1 - sz))
            g = g * zt * sz                                          # gy = dout * silu(z)
        du = g * Dc if Dc is not None else torch.zeros_like(ut)      # (batch, L, dim)
        dD = (g * ut).sum((0, 1)) if Dc is not None else None
        ddt = torch.empty_like(ut)                                   # (batch, L, dim)
        dBt = torch.empty_like(Bt)                                   # (batch, L, G, N)
        dCt = torch.empty_like(Ct)
        dAc = torch.zeros_like(Ac)                                   # (dim, N)
        # carry = exp(delta_{l1} A) dh_{l1}: what the later chunks add to dh_{l1 - 1}
        carry = (dlast.to(cd).reshape(batch, dim * N) if dlast is not None
                 else torch.zeros(batch, dim * N, dtype=cd, device=u.device))
        chunks = _chunks(L, batch * dim * N)
        for k in range(len(chunks) - 1, -1, -1):
            l0, l1 = chunks[k]
            T = l1 - l0
            dA, dBu = _chunk_terms(ut, dt, Ac, Bt, l0, l1, G)       # (batch, T, dim, N)
            hs = linear_scan(dA.view(batch, T, dim * N), dBu.view(batch, T, dim * N),
                             h0=starts[k], backend="torch").view(batch, T, dim, N)
            gy = g[:, l0:l1]                                         # (batch, T, dim)
            cy = _group_outer(gy, Ct[:, l0:l1]).view(batch, T, dim * N)
            # dh_t = cy_t + a_{t+1} dh_{t+1}, dh_{T-1} = cy_{T-1} + carry. Scan r_t = a_t dh_t
            # instead (r_t = a_t r_{t+1} + a_t cy_t, r_T = carry): no shifted copy of a needed.
            a = dA.view(batch, T, dim * N)
            r = linear_scan(a, a * cy, h0=carry, reverse=True, backend="torch")  # (batch, T, dim*N)
            dh = cy
            dh[:, :-1] += r[:, 1:]
            dh[:, -1] += carry
            carry = r[:, 0].clone()
            dh = dh.view(batch, T, dim, N)
            dCt[:, l0:l1] = _group_reduce(gy, hs, G)
            dt_c, u_c = dt[:, l0:l1], ut[:, l0:l1]
            dBt[:, l0:l1] = _group_reduce(dt_c * u_c, dh, G)
            s = _group_contract(dh, Bt[:, l0:l1], G)                 # sum_n dh B  (batch, T, dim)
            q = hs.sub_(dBu).mul_(dh)                                # dh * exp(delta A) x_{t-1}
            dAc += (q * dt_c[..., None]).sum((0, 1))
            ddt[:, l0:l1] = torch.einsum("btdn,dn->btd", q, Ac) + s * u_c
            du[:, l0:l1] += s * dt_c
        if ctx.softplus:
            ddt = ddt * torch.sigmoid(dt_pre)
        dbias = ddt.sum((0, 1)) if delta_bias is not None else None
        # after chunk 0, carry = exp(delta_0 A) dh_0: the adjoint of the initial state
        dinit = carry.view(batch, dim, N) if init is not None else None
        return _grads(ctx, u, delta, A, B4, C4, D, z, delta_bias, init,
                      du.transpose(1, 2), ddt.transpose(1, 2), dAc, dBt.permute(0, 2, 3, 1),
                      dCt.permute(0, 2, 3, 1), dD, None if dz is None else dz.transpose(1, 2), dbias,
                      dinit)


def _grads(ctx, u, delta, A, B4, C4, D, z, delta_bias, init,
           du, ddelta, dA, dB, dC, dD, dz, dbias, dinit):
    """Cast gradients to their inputs' dtypes, None where not needed. dB, dC: (batch, G, N, L)."""
    pairs = [(du, u), (ddelta, delta), (dA, A), (dB, B4), (dC, C4), (dD, D), (dz, z), (dbias, delta_bias),
             (dinit, init)]
    need = ctx.needs_input_grad
    return tuple(None if (g is None or not need[i]) else g.to(x.dtype)
                 for i, (g, x) in enumerate(pairs)) + (None,)


class _SelectiveScanTriton(torch.autograd.Function):
    @staticmethod
    def forward(ctx, u, delta, A, B4, C4, D, z, delta_bias, init, softplus: bool):
        cd = compute_dtype(u.dtype)
        out, last, states, block_l = _tri.selective_scan_fwd(u, delta, A, B4, C4, D, z, delta_bias,
                                                             init, softplus, cd)
        ctx.save_for_backward(u, delta, A, B4, C4, D, z, delta_bias, init, states)
        ctx.softplus, ctx.block_l = softplus, block_l
        return out, last

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, dout, dlast):
        u, delta, A, B4, C4, D, z, delta_bias, init, states = ctx.saved_tensors
        cd = compute_dtype(u.dtype)
        if dlast is not None:
            dlast = dlast.to(cd).contiguous()
        grads = _tri.selective_scan_bwd(u, delta, A, B4, C4, D, z, delta_bias, ctx.softplus, states,
                                        ctx.block_l, dout, dlast, init is not None, cd)
        return _grads(ctx, u, delta, A, B4, C4, D, z, delta_bias, init, *grads)


# --------------------------------------------------------------------------- public API
def selective_scan(
    u: torch.Tensor,
    delta: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    D: Optional[torch.Tensor] = None,
    z: Optional[torch.Tensor] = None,
    delta_bias: Optional[torch.Tensor] = None,
    delta_softplus: bool = False,
    return_last_state: bool = False,
    initial_state: Optional[torch.Tensor] = None,
    backend: Optional[str] = None,
):
    """Mamba-1 selective scan, as mamba-ssm's `selective_scan_fn` (plus an initial state).

    Args:
        u, delta: (batch, dim, L) input and step size.
        A: (dim, N) real state matrix (diagonal per channel), usually negative.
        B, C: (batch, N, L), or (batch, G, N, L) with G dividing dim (channel d uses group
            d // (dim // G)).
        D: (dim,) skip connection. z: (batch, dim, L) gate, out *= silu(z).
        delta_bias: (dim,) added to delta; delta_softplus: then apply softplus to delta.
        return_last_state: also return the state after step L-1.
        initial_state: (batch, dim, N) state before step 0 (default zeros), e.g. the last
            state of the previous piece of the sequence; differentiable.
        backend: "auto" (CUDA -> Triton, CPU -> PyTorch), "torch" or "triton".

    Returns:
        out (batch, dim, L) in u's dtype, and if return_last_state the last state
        (batch, dim, N) in float32 (float64 for float64 u). Differentiable with respect to
        every tensor input (initial_state included), and through the last state.
    """
    B4, C4 = _check_scan(_OP, u, delta, A, B, C, D, z, delta_bias, initial_state)
    tri = use_triton(_OP, u, backend)
    if tri and _tri is None:  # triton is installed but our kernels failed to import
        if backend == "triton":
            fail(_OP, "backend='triton' was asked for but kernels/_selective_triton.py failed to import")
        tri = False
    fn = _SelectiveScanTriton if tri else _SelectiveScanTorch
    out, last = fn.apply(u, delta, A, B4, C4, D, z, delta_bias, initial_state, bool(delta_softplus))
    return (out, last) if return_last_state else out


def selective_scan_ref(
    u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False, return_last_state=False,
    initial_state=None,
):
    """Naive loop over L (tests only). Same contract as `selective_scan`, computed in float32
    (float64 when u is float64) and differentiable through plain autograd."""
    B4, C4 = _check_scan("selective_scan_ref", u, delta, A, B, C, D, z, delta_bias, initial_state)
    cd = compute_dtype(u.dtype)
    batch, dim, L = u.shape
    G = B4.shape[1]
    u_, dt = u.to(cd), delta.to(cd)
    if delta_bias is not None:
        dt = dt + delta_bias.to(cd)[:, None]
    if delta_softplus:
        dt = F.softplus(dt)
    Bd = B4.to(cd).repeat_interleave(dim // G, dim=1)            # (batch, dim, N, L)
    Cd = C4.to(cd).repeat_interleave(dim // G, dim=1)
    A_ = A.to(cd)
    x = (torch.zeros(batch, dim, A.shape[1], dtype=cd, device=u.device) if initial_state is None
         else initial_state.to(cd))                                  # (batch, dim, N)
    ys = []
    # unbind (not indexing) so that autograd's backward does not rebuild full tensors per step
    for dt_t, u_t, B_t, C_t in zip(dt.unbind(-1), u_.unbind(-1), Bd.unbind(-1), Cd.unbind(-1)):
        x = torch.exp(dt_t[..., None] * A_) * x + (dt_t * u_t)[..., None] * B_t
        ys.append((x * C_t).sum(-1))                               # (batch, dim)
    out = torch.stack(ys, dim=-1)                                  # (batch, dim, L)
    if D is not None:
        out = out + u_ * D.to(cd)[:, None]
    if z is not None:
        out = out * F.silu(z.to(cd))
    out = out.to(u.dtype)
    return (out, x) if return_last_state else out


def selective_state_update(
    state: torch.Tensor,
    x: torch.Tensor,
    dt: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    D: Optional[torch.Tensor] = None,
    z: Optional[torch.Tensor] = None,
    dt_bias: Optional[torch.Tensor] = None,
    dt_softplus: bool = False,
    backend: Optional[str] = None,
) -> torch.Tensor:
    """One token of the scan (recurrent inference); `state` is updated in place.

    Two layouts, as in mamba-ssm:
      * state (batch, dim, N); x, dt, z (batch, dim); A (dim, N); B, C (batch, N) or
        (batch, G, N); D, dt_bias (dim,).
      * multi-head: state (batch, nheads, headdim, N); x, dt, z (batch, nheads, headdim);
        A (nheads, headdim, N); B, C (batch, G, N) with G dividing nheads; D, dt_bias
        (nheads, headdim). Stride-0 expands (Mamba-2's per-head A, dt, D) are fine.
    Returns out (batch, dim) or (batch, nheads, headdim) in x's dtype, computed in float32
    (float64 if x or state is float64). One Triton kernel on CUDA (or backend="triton"), a
    few PyTorch ops otherwise. Not meant for autograd (state is overwritten in place).
    """
    op = _STEP_OP
    if backend not in (None,) + BACKENDS:
        fail(op, f"`backend` must be one of {BACKENDS}, got {backend!r}")
    lays = "(batch, dim, N) or (batch, nheads, headdim, N)"
    if not isinstance(state, torch.Tensor):
        check_tensor(op, "state", state, (None, None, None), lays)
    if state.dim() not in (3, 4):
        fail(op, f"`state` must have shape {lays}, got shape {tuple(state.shape)}")
    heads = state.dim() == 4
    if heads:
        batch, H, P, N = state.shape
        lay, act, par = "(batch, nheads, headdim, N)", "(batch, nheads, headdim)", "(nheads, headdim)"
        act_shape, par_shape = (batch, H, P), (H, P)
    else:
        batch, H, N = state.shape
        P = 1
        lay, act, par = "(batch, dim, N)", "(batch, dim)", "(dim,)"
        act_shape, par_shape = (batch, H), (H,)
    check_tensor(op, "state", state, state.shape, lay)
    check_tensor(op, "x", x, act_shape, act)
    check_tensor(op, "dt", dt, act_shape, act)
    check_tensor(op, "A", A, par_shape + (N,), "(nheads, headdim, N)" if heads else "(dim, N)")
    bc = "(batch, G, N)" if heads else "(batch, N) or (batch, G, N)"
    Bs = {}
    for name, t in (("B", B), ("C", C)):
        if isinstance(t, torch.Tensor) and t.dim() == 3 or heads:
            check_tensor(op, name, t, (batch, None, N), bc)
            if t.shape[1] < 1 or H % t.shape[1]:
                fail(op, f"`{name}` has G = {t.shape[1]} groups, which must divide "
                         f"{'nheads' if heads else 'dim'} = {H}; expected shape {bc}")
            Bs[name] = t
        else:
            check_tensor(op, name, t, (batch, N), bc)
            Bs[name] = t.unsqueeze(1)
    if Bs["B"].shape[1] != Bs["C"].shape[1]:
        fail(op, f"`C` must have the same groups as `B`: expected shape {tuple(Bs['B'].shape)}, "
                 f"got {tuple(C.shape)}")
    if D is not None:
        check_tensor(op, "D", D, par_shape, par)
    if z is not None:
        check_tensor(op, "z", z, act_shape, act)
    if dt_bias is not None:
        check_tensor(op, "dt_bias", dt_bias, par_shape, par)
    check_same(op, {"x": x, "dt": dt, "z": z})
    check_same(op, {"B": B, "C": C})
    check_same(op, {"state": state, "x": x, "dt": dt, "A": A, "B": B, "C": C, "D": D, "z": z,
                    "dt_bias": dt_bias}, dtype=False)

    # Work in the multi-head layout: (batch, dim, N) is (batch, nheads=dim, headdim=1, N).
    cd = torch.float64 if torch.float64 in (x.dtype, state.dtype) else torch.float32
    v = (lambda t: t) if heads else (lambda t: None if t is None else t.unsqueeze(-1))
    st = state if heads else state.unsqueeze(2)                        # (batch, H, P, N) view
    A4 = A if heads else A.unsqueeze(1)                                # (H, P, N)
    args = (st, v(x), v(dt), A4, Bs["B"], Bs["C"], v(D), v(z), v(dt_bias), dt_softplus)
    if _tri is not None and use_triton(op, x, backend):
        out = _tri.selective_state_update(*args, cd)
    else:
        out = _state_update_torch(*args, cd)
    return out if heads else out.squeeze(-1)


def _state_update_torch(st, x, dt, A, B, C, D, z, dt_bias, dt_softplus, cd):
    """PyTorch step in the multi-head layout (see _tri.selective_state_update); st updated in place."""
    H, G = st.shape[1], B.shape[1]
    x_, dt_ = x.to(cd), dt.to(cd)                                      # (batch, H, P)
    if dt_bias is not None:
        dt_ = dt_ + dt_bias.to(cd)
    if dt_softplus:
        dt_ = F.softplus(dt_)
    Bh = B.to(cd).repeat_interleave(H // G, dim=1)[:, :, None, :]      # (batch, H, 1, N)
    Ch = C.to(cd).repeat_interleave(H // G, dim=1)[:, :, None, :]
    new = torch.exp(dt_[..., None] * A.to(cd)) * st.to(cd) + (dt_ * x_)[..., None] * Bh
    st.copy_(new)
    out = (new * Ch).sum(-1)                                           # (batch, H, P)
    if D is not None:
        out = out + x_ * D.to(cd)
    if z is not None:
        out = out * F.silu(z.to(cd))
    return out.to(x.dtype)
