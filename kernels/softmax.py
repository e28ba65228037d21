"""Causal softmax attention of one fixed query, as a scan (Aaren: "Attention as an RNN",
Feng et al. 2024).

    softmax_scan(s, v, state=None, return_state=False, backend=None)
    softmax_scan_step(s_t, v_t, state=None)      one token, O(1) memory
    softmax_scan_ref(s, v, state, return_state)  naive loop, tests only

s (B, H, L) are the scores of the query against each key, v (B, H, L, E) the values:

    o_t = sum_{i<=t} exp(s_i) v_i / sum_{i<=t} exp(s_i)          o (B, H, L, E)

The running state is (m, u, w): m (B, H) the running max of the scores, u (B, H) =
sum exp(s_i - m), w (B, H, E) = sum exp(s_i - m) v_i, so that o = w / u. Two states combine
with the paper's associative operator
    (mA, uA, wA) + (mB, uB, wB) = (m, uA e^{mA-m} + uB e^{mB-m}, wA e^{mA-m} + wB e^{mB-m}),
    m = max(mA, mB);  a token is the leaf (s_i, 1, v_i).
Every exponent is <= 0, so nothing overflows for any finite scores. A `state` returned by
one call continues the scan in the next (pieces equal the whole); the empty state is
(m = -inf, u = 0, w = 0). States are kept in float32 for fp16/bf16 inputs.

Implementations:
  * PyTorch (CPU): with m_t = max(m0, cummax(s)_t), (u, w) follow the linear recurrence
    w_t = e^{m_{t-1}-m_t} w_{t-1} + e^{s_t-m_t} v_t (u likewise with 1 for v), so the forward
    is one torch.cummax plus the chunked linear scan of rlts.kernels.linear_scan, run with one decay
    shared by all channels over u (1 channel) and, in place, over w (E channels).
  * Triton: a fused kernel per (batch*head, block of E) scans blocks of the sequence with the
    paper's operator and carries (m, u, w) across blocks (kernels/_softmax_triton.py).

Gradients. o does not depend on the stabiliser m, so m is treated as a constant (and the
returned m is non-differentiable; any use of (m, u, w) that does not depend on the
representation, e.g. continuing the scan or w/u or m + log u, gets correct gradients).
With g_t = do_t / u_t and q_t = -(o_t . do_t) / u_t (plus the grads of the returned w, u at
t = L-1), reverse linear scans (E channels for G, one for Hh) give
    G_t = g_t + e^{m_t - m_{t+1}} G_{t+1},   Hh_t = q_t + e^{m_t - m_{t+1}} Hh_{t+1},
    dv_t = e^{s_t - m_t} G_t,   ds_t = e^{s_t - m_t} (v_t . G_t + Hh_t),
    dw0 = e^{m0 - m_0} G_0,   du0 = e^{m0 - m_0} Hh_0,   dm0 = w0 . dw0 + u0 du0.
The backward saves s, v, o and the per-position m and u (B, H, L).
"""
from __future__ import annotations

from typing import Optional, Tuple

import torch

from rlts.kernels._common import check_backend, check_same, check_tensor, compute_dtype, fail, use_triton
from rlts.kernels.linear import _scan_torch

_OP = "softmax_scan"

State = Tuple[torch.Tensor, torch.Tensor, torch.Tensor]  # m (B, H), u (B, H), w (B, H, E)


# --------------------------------------------------------------------------- PyTorch path
def _forward_torch(s, v, m0, u0, w0):
    """s (B, H, L), v (B, H, L, E), state tensors or None, all in the compute dtype.
    Returns o (B, H, L, E), m (B, H, L), u (B, H, L), w_last (B, H, E)."""
    B, H, L, E = v.shape
    m = torch.cummax(s, dim=-1).values  # (B, H, L)
    if m0 is not None:
        m = torch.maximum(m, m0.unsqueeze(-1))
    m_prev = torch.cat([m0.unsqueeze(-1) if m0 is not None else torch.full_like(m[..., :1], -float("inf")),
                        m[..., :-1]], dim=-1)  # (B, H, L)
    decay = torch.exp(m_prev - m).view(B * H, L, 1)  # in [0, 1]; 0 at t = 0 for an empty state
    p = torch.exp(s - m)  # (B, H, L), in [0, 1]
    # two scans sharing the decay: u over one channel, w over E, in place in a contiguous buffer
    u = _scan_torch(decay, p.view(B * H, L, 1), None if m0 is None else u0.reshape(B * H, 1), False)
    u = u.view(B, H, L)
    w = (v * p.unsqueeze(-1)).view(B * H, L, E)  # (B*H, L, E)
    _scan_torch(decay, w, None if m0 is None else w0.reshape(B * H, E), False, out=w)
    w = w.view(B, H, L, E)
    w_last = w[..., -1, :].clone()  # (B, H, E)
    o = w.div_(u.unsqueeze(-1))  # (B, H, L, E), in place: only the last w_t is kept
    return o, m, u, w_last


def _backward_torch(s, v, o, m, u, do, dw_last, du_last, m0, u0, w0, need_state):
    """All inputs in the compute dtype. Returns ds, dv, (dm0, du0, dw0) or None."""
    B, H, L, E = v.shape
    decay = torch.ones_like(m)  # (B, H, L): e^{m_t - m_{t+1}}; the last entry is not used
    torch.exp(m[..., :-1] - m[..., 1:], out=decay[..., :-1])
    decay = decay.view(B * H, L, 1)
    q = -torch.einsum("bhle,bhle->bhl", o, do) / u  # (B, H, L)
    Hh = _scan_torch(decay, q.view(B * H, L, 1), du_last.reshape(B * H, 1), True).view(B, H, L)
    G = (do / u.unsqueeze(-1)).view(B * H, L, E)  # g, then G in place
    _scan_torch(decay, G, dw_last.reshape(B * H, E), True, out=G)
    G = G.view(B, H, L, E)
    p = torch.exp(s - m)  # (B, H, L)
    ds = p * (torch.einsum("bhle,bhle->bhl", v, G) + Hh)  # (B, H, L)
    grads0 = None
    if need_state:
        grads0 = _state_grads(m0, u0, w0, m[..., 0], G[..., 0, :].clone(), Hh[..., 0])
    dv = G.mul_(p.unsqueeze(-1))  # (B, H, L, E), in place
    return ds, dv, grads0


def _state_grads(m0, u0, w0, m_first, G0, Hh0):
    """dm0, du0, dw0 from G_0 (B, H, E) and Hh_0 (B, H); safe for the empty state m0 = -inf."""
    a0 = torch.exp(m0 - m_first)  # (B, H); 0 when m0 = -inf
    dw0 = a0.unsqueeze(-1) * G0  # (B, H, E)
    du0 = a0 * Hh0  # (B, H)
    dm0 = (w0 * dw0).sum(-1) + u0 * du0  # (B, H)
    dm0 = torch.where(torch.isfinite(m0), dm0, torch.zeros_like(dm0))
    return dm0, du0, dw0


# --------------------------------------------------------------------------- autograd
class _SoftmaxScanFn(torch.autograd.Function):
    @staticmethod
    def forward(ctx, s, v, m0, u0, w0, triton: bool):
        cd = compute_dtype(v.dtype)
        if triton:
            from rlts.kernels._softmax_triton import softmax_scan_fwd_triton

            o, m, u, w_last = softmax_scan_fwd_triton(s, v, m0, u0, w0)
        else:
            up = lambda x: None if x is None else x.to(cd)  # noqa: E731
            o, m, u, w_last = _forward_torch(up(s), up(v), up(m0), up(u0), up(w0))
            o = o.to(v.dtype)
        m_last, u_last = m[..., -1].clone(), u[..., -1].clone()  # (B, H)
        ctx.save_for_backward(s, v, o, m, u, m0, u0, w0)
        ctx.triton = triton
        ctx.mark_non_differentiable(m_last)
        return o, m_last, u_last, w_last

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, do, _dm_last, du_last, dw_last):
        s, v, o, m, u, m0, u0, w0 = ctx.saved_tensors
        do, du_last, dw_last = do.contiguous(), du_last.contiguous(), dw_last.contiguous()
        need_state = m0 is not None and any(ctx.needs_input_grad[2:5])
        cd = compute_dtype(v.dtype)
        if ctx.triton:
            from rlts.kernels._softmax_triton import softmax_scan_bwd_triton

            ds, dv, g0, hh0 = softmax_scan_bwd_triton(s, v, o, m, u, do, dw_last, du_last)
            grads0 = _state_grads(m0, u0, w0, m[..., 0], g0, hh0) if need_state else None
        else:
            up = lambda x: None if x is None else x.to(cd)  # noqa: E731
            ds, dv, grads0 = _backward_torch(up(s), up(v), up(o), m, u, up(do), up(dw_last), up(du_last),
                                             up(m0), up(u0), up(w0), need_state)
        dm0 = du0 = dw0 = None
        if grads0 is not None:
            dm0, du0, dw0 = (g.to(x.dtype) for g, x in zip(grads0, (m0, u0, w0)))
        return ds.to(s.dtype), dv.to(v.dtype), dm0, du0, dw0, None


# --------------------------------------------------------------------------- public API
def _check_state(op, state, B, H, E):
    if state is None:
        return None, None, None
    if not isinstance(state, (tuple, list)) or len(state) != 3:
        fail(op, f"`state` must be None or a tuple (m, u, w) of shapes (B, H), (B, H), (B, H, E), "
                 f"got {type(state).__name__}")
    m0, u0, w0 = state
    check_tensor(op, "state[0] (m)", m0, (B, H), "(B, H)")
    check_tensor(op, "state[1] (u)", u0, (B, H), "(B, H)")
    check_tensor(op, "state[2] (w)", w0, (B, H, E), "(B, H, E)")
    check_same(op, {"state[0] (m)": m0, "state[1] (u)": u0, "state[2] (w)": w0})
    return m0, u0, w0


def _check(op, s, v, state):
    check_tensor(op, "s", s, (None, None, None), "(B, H, L)")
    B, H, L = s.shape
    if L < 1:
        fail(op, f"`s` must have shape (B, H, L) with L >= 1, got {tuple(s.shape)}")
    check_tensor(op, "v", v, (B, H, L, None), "(B, H, L, E)")
    check_same(op, {"s": s, "v": v})
    m0, u0, w0 = _check_state(op, state, B, H, v.shape[3])
    check_same(op, {"s": s, "state[0] (m)": m0}, dtype=False)
    return m0, u0, w0


def softmax_scan(
    s: torch.Tensor,
    v: torch.Tensor,
    state: Optional[State] = None,
    return_state: bool = False,
    backend: Optional[str] = None,
):
    """Causal softmax-weighted running mean of v: o_t = sum_{i<=t} e^{s_i} v_i / sum_{i<=t} e^{s_i}.

    Args:
        s: (B, H, L) scores. v: (B, H, L, E) values (fp32, fp16, bf16 or fp64, one dtype).
        state: None, or (m (B, H), u (B, H), w (B, H, E)) from an earlier call; the tokens
            seen there are included in every o_t.
        return_state: also return the state after the last token.
        backend: "auto" (CUDA -> Triton, CPU -> PyTorch), "torch" or "triton".

    Returns:
        o (B, H, L, E) in v's dtype, and (m, u, w) if return_state (float32 for half inputs;
        m is not differentiable, see the module docstring). Differentiable in s, v and state.
    """
    m0, u0, w0 = _check(_OP, s, v, state)
    triton = use_triton(_OP, v, backend)
    if m0 is not None:
        cd = compute_dtype(v.dtype)
        m0, u0, w0 = m0.to(cd).contiguous(), u0.to(cd).contiguous(), w0.to(cd).contiguous()
    o, m, u, w = _SoftmaxScanFn.apply(s.contiguous(), v.contiguous(), m0, u0, w0, triton)
    return (o, (m, u, w)) if return_state else o


def softmax_scan_step(
    s_t: torch.Tensor, v_t: torch.Tensor, state: Optional[State] = None, backend: Optional[str] = None
):
    """One token: s_t (B, H), v_t (B, H, E), state (m, u, w) or None (empty).

    Returns (o_t (B, H, E) in v_t's dtype, new state). O(1) memory; plain PyTorch on every
    backend (`backend` is only validated); differentiable.
    """
    op = "softmax_scan_step"
    check_backend(op, backend)
    check_tensor(op, "s_t", s_t, (None, None), "(B, H)")
    B, H = s_t.shape
    check_tensor(op, "v_t", v_t, (B, H, None), "(B, H, E)")
    check_same(op, {"s_t": s_t, "v_t": v_t})
    m, u, w = _check_state(op, state, B, H, v_t.shape[2])
    check_same(op, {"s_t": s_t, "state[0] (m)": m}, dtype=False)
    out_dtype, cd = v_t.dtype, compute_dtype(v_t.dtype)
    s_t, v_t = s_t.to(cd), v_t.to(cd)
    # m is a constant stabiliser, as in the scan: detached, but beta = e^{s_t - m} (= 1 in value
    # for the first token) keeps the dependence on s_t.
    m_new = (s_t if m is None else torch.maximum(m.to(cd), s_t)).detach()  # (B, H)
    beta = torch.exp(s_t - m_new)  # (B, H), weight of the new token
    u_new, w_new = beta, beta.unsqueeze(-1) * v_t  # (B, H), (B, H, E)
    if m is not None:
        alpha = torch.exp(m.to(cd) - m_new)  # (B, H), rescales the old state
        u_new = u.to(cd) * alpha + u_new
        w_new = w.to(cd) * alpha.unsqueeze(-1) + w_new
    o = (w_new / u_new.unsqueeze(-1)).to(out_dtype)
    return o, (m_new, u_new, w_new)


def softmax_scan_ref(s: torch.Tensor, v: torch.Tensor, state: Optional[State] = None, return_state: bool = False):
    """Naive loop over tokens applying the paper's operator with leaf (s_t, 1, v_t); computed
    in the inputs' dtype (pass float64 for a reference). Same contract as `softmax_scan`."""
    m, u, w = _check("softmax_scan_ref", s, v, state)
    B, H, L, E = v.shape
    if m is None:
        m = torch.full((B, H), -float("inf"), dtype=s.dtype, device=s.device)
        u = torch.zeros(B, H, dtype=s.dtype, device=s.device)
        w = torch.zeros(B, H, E, dtype=v.dtype, device=v.device)
    outs = []
    for t in range(L):
        m_new = torch.maximum(m, s[..., t])
        e_old = torch.exp(m - m_new)  # 0 for the empty state
        e_new = torch.exp(s[..., t] - m_new)
        u = u * e_old + e_new
        w = w * e_old.unsqueeze(-1) + e_new.unsqueeze(-1) * v[..., t, :]
        m = m_new
        outs.append(w / u.unsqueeze(-1))
    o = torch.stack(outs, dim=2)  # (B, H, L, E)
    return (o, (m, u, w)) if return_state else o
