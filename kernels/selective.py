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

Implementations (chosen by `rlts.kernels._common.use_triton`):
  * Triton (CUDA, or backend="triton" under TRITON_INTERPRET=1): kernels/_selective_triton.py.
    The forward keeps each program's (BLOCK_D, N) state in registers and saves only the
    state at the start of every BLOCK_L block; the backward recomputes from those.
  * PyTorch (CPU): u, delta, z, B, C are copied step-major, (L, batch, ...), and L is cut
    into chunks of T steps, T such that a (T, batch, dim, N) tensor stays within
    `_CHUNK_ELEMS` (cache-sized). Per chunk, exp(delta A) (as exp2 of delta A log2(e)) and
    delta u B are written into two reused buffers and the state is scanned with one
    in-place addcmul per step on a contiguous (batch, G, N, dim/G) block; y = C . x is one
    bmm, and D, silu(z) are applied per chunk. The custom backward keeps only the chunk-start
    states, recomputes each chunk walking them from the end, and runs the adjoint recurrence
    the same way (one addcmul per step).
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

from rlts.kernels._common import check_backend, check_same, check_tensor, compute_dtype, fail, use_triton
from rlts.kernels.linear import _scan_torch

try:  # Triton is optional: without it the PyTorch path serves every device.
    from rlts.kernels import _selective_triton as _tri
except Exception:  # pragma: no cover - platform dependent
    _tri = None

_OP = "selective_scan"
_STEP_OP = "selective_state_update"

# CPU path: elements of one (batch, T, dim, N) chunk tensor (the backward holds ~8 of them),
# but at least _CHUNK_MIN steps per chunk so that per-chunk overhead and saved states stay small.
_CHUNK_ELEMS = 1 << 20
_CHUNK_MIN = 16
# Below this many state elements per step (batch * dim * N), the in-chunk scan uses the
# two-level rlts.kernels.linear scan (few large calls); above it, one in-place call per step is
# faster (timed on the CPU; docs/benchmarks.md, "Scan kernels", has the scan's timings).
_LOOP_MIN_WIDTH = 1 << 13


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
_LOG2E = 1.4426950408889634  # exp(x) = exp2(x * log2(e)); exp2 is faster on CPU


def _chunks(L: int, per_step: int):
    T = min(L, max(_CHUNK_MIN, _CHUNK_ELEMS // max(1, per_step)))
    return [(l0, min(l0 + T, L)) for l0 in range(0, L, T)]


# The state of one step is held as (batch, G, N, dim // G) ("state layout"): the channels of a
# group innermost, so that the contractions over N with C_t, B_t are batched (1, N) @ (N, dim/G)
# products and the per-channel vectors (delta, u, ...) broadcast along the contiguous last dim.
def _to_state(x, G):
    """(..., dim, N) -> (..., G, N, dim // G) contiguous."""
    *lead, dim, N = x.shape
    return x.reshape(*lead, G, dim // G, N).transpose(-1, -2).contiguous()


def _from_state(x):
    """(..., G, N, dim // G) -> (..., dim, N) contiguous."""
    *lead, G, N, dg = x.shape
    return x.transpose(-1, -2).reshape(*lead, G * dg, N)


def _fill_chunk(dA, H, dt_c, w_c, B_c, A2):
    """For the n steps of a chunk: dA[:n] = exp(delta A), H[1:n+1] = delta u B, then the scan in
    place, H[t+1] = dA[t] H[t] + H[t+1], from H[0] (the chunk-start state), so that H[t+1] = x_t.
    One torch call per step on one contiguous (batch, G, N, dim/G) block; nothing is allocated.
    dA, H: (T, batch, G, N, dim/G) and (T + 1, ...) buffers; dt_c, w_c (= delta u) (n, batch, dim);
    B_c (n, batch, G, N); A2 = A log2(e) in state layout (G, N, dim/G)."""
    n, batch, G, N = B_c.shape
    dg = A2.shape[-1]
    torch.mul(dt_c.view(n, batch, G, 1, dg), A2, out=dA[:n]).exp2_()
    torch.mul(w_c.view(n, batch, G, 1, dg), B_c[..., None], out=H[1:n + 1])
    width = batch * G * N * dg
    if width < _LOOP_MIN_WIDTH:  # narrow steps: the two-level scan makes ~n^(1/3) calls, not n
        b = H[1:n + 1].view(1, n, width)
        _scan_torch(dA[:n].view(1, n, width), b, H[0].view(1, width), False, out=b)
        return
    hs, As = H.unbind(0), dA.unbind(0)   # views made once: indexing costs more than the op
    for t in range(n):
        torch.addcmul(hs[t + 1], As[t], hs[t], out=hs[t + 1])


def _contract(v, x, out=None):
    """sum_n v[k, b, g, n] x[k, b, g, n, j] -> (k, batch, dim) as one bmm. x contiguous."""
    n, batch, G, N, dg = x.shape
    r = torch.bmm(v.reshape(n * batch * G, 1, N), x.view(n * batch * G, N, dg),
                  out=None if out is None else out.view(n * batch * G, 1, dg))
    return r.view(n, batch, G * dg)


def _buffers(T, batch, G, N, dg, cd, device, k):
    return [torch.empty(T + (i == 0), batch, G, N, dg, dtype=cd, device=device) for i in range(k)]


def _step_major(x, cd):
    """(batch, dim, L) -> (L, batch, dim) contiguous in cd, with as cheap a copy as the strides allow."""
    batch, dim, L = x.shape
    if x.is_contiguous():  # a 2-d transpose copies faster than the 3-d permute
        return x.view(batch * dim, L).t().to(cd).contiguous().view(L, batch, dim)
    return x.permute(2, 0, 1).to(cd).contiguous()


def _chunk_dt(dl_c, bias, softplus):
    """delta of a chunk from the step-major raw delta: softplus(delta + bias) as asked."""
    dt = dl_c if bias is None else dl_c + bias
    return F.softplus(dt) if softplus else dt


class _SelectiveScanTorch(torch.autograd.Function):
    @staticmethod
    def forward(ctx, u, delta, A, B4, C4, D, z, delta_bias, init, softplus: bool):
        cd = compute_dtype(u.dtype)
        batch, dim, L = u.shape
        G, N = B4.shape[1], A.shape[1]
        dg = dim // G
        # step-major copies (L, batch, dim) / (L, batch, G, N); the rest is done chunk by chunk
        ut, dl = _step_major(u, cd), _step_major(delta, cd)
        zt = None if z is None else _step_major(z, cd)
        Bt = B4.permute(3, 0, 1, 2).to(cd).contiguous()
        Ct = C4.permute(3, 0, 1, 2).to(cd).contiguous()
        bias = None if delta_bias is None else delta_bias.to(cd)
        Dc = None if D is None else D.to(cd)
        A2 = _to_state(A.to(cd) * _LOG2E, G)                         # (G, N, dg)
        y = torch.empty(L, batch, dim, dtype=cd, device=u.device)   # C.x + D u
        out = y if zt is None else torch.empty_like(y)
        chunks = _chunks(L, batch * dim * N)
        H, dA = _buffers(chunks[0][1], batch, G, N, dg, cd, u.device, 2)  # H[0]: chunk start
        if init is None:
            H[0].zero_()
        else:
            H[0].copy_(_to_state(init, G))
        starts = torch.empty(len(chunks), batch, G, N, dg, dtype=cd, device=u.device)
        for k, (l0, l1) in enumerate(chunks):
            n = l1 - l0
            starts[k].copy_(H[0])
            dt_c, u_c = _chunk_dt(dl[l0:l1], bias, softplus), ut[l0:l1]
            _fill_chunk(dA, H, dt_c, dt_c * u_c, Bt[l0:l1], A2)
            y_c = _contract(Ct[l0:l1], H[1:n + 1], out=y[l0:l1])    # y_t = C_t . x_t
            if Dc is not None:
                y_c.addcmul_(u_c, Dc)                                # + D u
            if zt is not None:
                torch.mul(y_c, F.silu(zt[l0:l1]), out=out[l0:l1])    # * silu(z)
            H[0].copy_(H[n])
        ctx.save_for_backward(ut, dl, A, Bt, Ct, D, zt, delta_bias, starts,
                              y if zt is not None else None)
        ctx.softplus, ctx.has_init, ctx.dtypes = softplus, init is not None, (
            u.dtype, delta.dtype, B4.dtype, None if z is None else z.dtype,
            None if init is None else init.dtype)
        ctx.bshape = B4.shape
        # (batch, dim, L) view of the step-major result: consumers that go back to (batch, L, dim)
        # (the Mamba layer) then read it with contiguous rows
        return out.to(u.dtype).permute(1, 2, 0), _from_state(H[0])

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, dout, dlast):
        ut, dl, A, Bt, Ct, D, zt, delta_bias, starts, pre = ctx.saved_tensors
        u_dtype, delta_dtype, b_dtype, z_dtype, init_dtype = ctx.dtypes
        cd = ut.dtype
        L, batch, dim = ut.shape
        G, N = Bt.shape[2], A.shape[1]
        dg = dim // G
        softplus = ctx.softplus
        bias = None if delta_bias is None else delta_bias.to(cd)
        Dc = None if D is None else D.to(cd)
        As_ = _to_state(A.to(cd), G)                                 # (G, N, dg)
        A2 = _to_state(A.to(cd) * _LOG2E, G)
        g = _step_major(dout, cd)                                    # (L, batch, dim)
        du = torch.empty_like(ut)
        ddt = torch.empty_like(ut)
        dz = None if zt is None else torch.empty_like(ut)
        dBt = torch.empty_like(Bt)                                   # (L, batch, G, N)
        dCt = torch.empty_like(Ct)
        dAs = torch.zeros_like(As_)                                  # (G, N, dg)
        dD = None if Dc is None else torch.zeros_like(Dc)
        dbias = None if bias is None else torch.zeros_like(bias)
        chunks = _chunks(L, batch * dim * N)
        H, dA, dH, tmp = _buffers(chunks[0][1], batch, G, N, dg, cd, ut.device, 4)
        dhs, As = dH.unbind(0), dA.unbind(0)
        # carry = exp(delta_{l1} A) dh_{l1}: what the later chunks add to dh_{l1 - 1}
        carry = (_to_state(dlast.to(cd), G) if dlast is not None
                 else torch.zeros(batch, G, N, dg, dtype=cd, device=ut.device))
        for k in range(len(chunks) - 1, -1, -1):
            l0, l1 = chunks[k]
            n = l1 - l0
            sl = slice(l0, l1)
            H[0].copy_(starts[k])
            dt_c, u_c = _chunk_dt(dl[sl], bias, softplus), ut[sl]
            w_c = dt_c * u_c                                         # delta u
            _fill_chunk(dA, H, dt_c, w_c, Bt[sl], A2)                # dA; H[t+1] = x_t
            gy = g[sl]
            if zt is not None:
                z_c = zt[sl]
                sz = torch.sigmoid(z_c)
                torch.mul(gy * pre[sl], sz * (1 + z_c * (1 - sz)), out=dz[sl])
                gy = gy * (z_c * sz)                                 # gy = dout * silu(z)
            # dh_t = gy_t C_t + dA_{t+1} dh_{t+1}, dh_{n-1} = gy C + carry
            dh, tm = dH[:n], tmp[:n]
            torch.mul(gy.view(n, batch, G, 1, dg), Ct[sl, ..., None], out=dh)
            dhs[n - 1].add_(carry)
            width = dh[0].numel()
            if n > 1 and width < _LOOP_MIN_WIDTH:  # reverse two-level scan (see _fill_chunk)
                b = dh[:n - 1].view(1, n - 1, width)
                _scan_torch(dA[1:n].view(1, n - 1, width), b, dh[n - 1].view(1, width), True, out=b)
            else:
                for t in range(n - 2, -1, -1):
                    torch.addcmul(dhs[t], As[t + 1], dhs[t + 1], out=dhs[t])
            carry = As[0] * dhs[0]
            # dC_t = sum_{d in g} gy_t x_t, dB_t = sum_{d in g} dh_t delta_t u_t
            torch.sum(torch.mul(H[1:n + 1], gy.view(n, batch, G, 1, dg), out=tm), -1, out=dCt[sl])
            torch.sum(torch.mul(dh, w_c.view(n, batch, G, 1, dg), out=tm), -1, out=dBt[sl])
            s = _contract(Bt[sl], dh)                                # sum_n dh B  (n, batch, dim)
            q = dA[:n].mul_(H[:n]).mul_(dh)                          # dh * exp(delta A) x_{t-1}
            dAs += torch.mul(q, dt_c.view(n, batch, G, 1, dg), out=tm).sum((0, 1))
            ddt_c = torch.mul(q, As_, out=tm).sum(-2).view(n, batch, dim)  # sum_n q A
            ddt_c.addcmul_(s, u_c)
            if softplus:  # d softplus(x) = sigmoid(x) = 1 - exp(-softplus(x))
                ddt_c.mul_(torch.neg(dt_c).expm1_().neg_())
            ddt[sl] = ddt_c
            if dbias is not None:
                dbias += ddt_c.sum((0, 1))
            du_c = torch.mul(s, dt_c, out=du[sl])
            if Dc is not None:
                du_c.addcmul_(gy, Dc)
                dD += (gy * u_c).sum((0, 1))
        # after chunk 0, carry = exp(delta_0 A) dh_0: the adjoint of the initial state
        need = ctx.needs_input_grad
        dinit = _from_state(carry) if ctx.has_init else None
        pairs = [(du.permute(1, 2, 0), u_dtype), (ddt.permute(1, 2, 0), delta_dtype),
                 (_from_state(dAs), A.dtype),
                 (dBt.permute(1, 2, 3, 0).view(ctx.bshape), b_dtype),
                 (dCt.permute(1, 2, 3, 0).view(ctx.bshape), b_dtype), (dD, None if D is None else D.dtype),
                 (None if dz is None else dz.permute(1, 2, 0), z_dtype),
                 (dbias, None if delta_bias is None else delta_bias.dtype), (dinit, init_dtype)]
        return tuple(None if (gr is None or not need[i]) else gr.to(dt_)
                     for i, (gr, dt_) in enumerate(pairs)) + (None,)


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
    check_backend(op, backend)
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
