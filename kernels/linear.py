"""First-order linear recurrence h_t = a_t * h_{t-1} + b_t (elementwise, per channel).

    linear_scan(a, b, h0=None, reverse=False, return_last=False, backend=None)
    linear_scan_step(a_t, b_t, h)          one token, for recurrent inference
    linear_scan_ref(a, b, h0, reverse, return_last)   naive loop, tests only

Shapes: a (B, L, D) or (B, L, 1) (one decay shared by every channel), b (B, L, D),
h0 (B, D). The recurrence starts from h_{-1} = h0 (zero when None). With reverse=True it
runs from the end: h_t = a_t * h_{t+1} + b_t, h_L = h0. No division anywhere, so `a` may
hold zeros and negative values.

Implementations:
  * Triton (CUDA tensors, or backend="triton" under TRITON_INTERPRET=1): one program per
    (batch, block of channels) walks L in blocks, scans each block with
    tl.associative_scan and carries the state between blocks in registers
    (kernels/_linear_triton.py).
  * PyTorch (CPU): a chunked scan whose chunk carries are scanned recursively, see
    `_scan_torch`; no division, every torch call vectorised over all chunks at once.
Both accumulate in fp32 for fp16/bf16 inputs and return the input dtype.

Backward (custom autograd.Function) is itself a linear scan run the other way:
    g_t  = dh_t + a_{t+1} g_{t+1}     (g_{L-1} = dh_{L-1} + d last)
    da_t = g_t * h_{t-1},  db_t = g_t,  dh0 = a_0 * g_0
(mirror the indices for reverse=True). It needs a, h and h0, which are saved.
"""
from __future__ import annotations

import functools
from typing import Optional, Tuple, Union

import torch

from rlts.kernels._common import check_backend, check_same, check_tensor, compute_dtype, fail, use_triton

_OP = "linear_scan"

# Sequences no longer than this are scanned step by step (a chunked pass would not pay).
_SEQ_MAX = 32


# --------------------------------------------------------------------------- PyTorch path
# Cost model of the CPU scan, in torch calls: a chunked level costs 2T calls (two passes)
# plus about _LEVEL_CALLS of bookkeeping plus r = L mod T plain steps, then the carries
# recurse on L // T. On 2 cores a strided addcmul costs ~5 us up to ~1e5 elements, so call
# count is what matters until the arrays stop fitting in cache.
_LEVEL_CALLS = 10
_SLAB = 1 << 17  # elements (512 KiB fp32): keep the (B, C, D) carry slab of a pass in cache


@functools.lru_cache(maxsize=None)
def _plan(L: int, t_min: int = 2) -> Tuple[int, int]:
    """(T, calls): the chunk length minimising the modelled call count for length L
    (T = 0: scan step by step). Small T makes more levels, large T longer passes; the optimum
    sits near L^(1/3) and prefers T dividing L (no remainder steps)."""
    best = (0, L)
    if L <= _SEQ_MAX:
        return best
    for T in range(max(2, t_min), min(128, L // 2) + 1):
        calls = 2 * T + _LEVEL_CALLS + L % T + _plan(L // T)[1]
        if calls < best[1]:
            best = (T, calls)
    return best


def _chunk_len(L: int, width: int = 1) -> int:
    """Chunk length T for a scan of length L over `width` = B*D parallel channels: the call
    count optimum of `_plan`, but at least large enough that a (B, C, D) slab fits `_SLAB`.

    Chosen by timing the CPU scan against one fixed T at every level, T = L^(1/3) and
    T = sqrt(L/2) (the optimum with a sequential carry scan): across shapes from many short
    channels to few long ones this rule is never far from the fastest, where each fixed choice
    falls behind on some shape. docs/benchmarks.md ("Scan kernels") has the scan's timings.
    """
    t_min = -(-L * width // _SLAB)  # ceil
    T = _plan(L, max(2, t_min))[0]
    return T if T else (t_min if t_min * 2 <= L and L > _SEQ_MAX else 0)


def _seq(a: torch.Tensor, b: torch.Tensor, h: Optional[torch.Tensor], out: torch.Tensor, reverse: bool) -> None:
    """Plain step loop over all of dim 1, writing out (B, n, D), starting from h (None: zero)."""
    a_, b_, o_ = a.unbind(1), b.unbind(1), out.unbind(1)  # views made once: indexing costs more than the op
    for t in (range(len(b_) - 1, -1, -1) if reverse else range(len(b_))):
        if h is None:
            h = o_[t].copy_(b_[t])
        else:
            h = torch.addcmul(b_[t], a_[t], h, out=o_[t])


def _scan_torch(
    a: torch.Tensor, b: torch.Tensor, h0: Optional[torch.Tensor], reverse: bool, out: Optional[torch.Tensor] = None
) -> torch.Tensor:
    """CPU scan. a (B, L, Da) with Da in {1, D}, b (B, L, D), h0 (B, D) or None; all contiguous,
    one dtype. Returns h (B, L, D), written into `out` if given (out may be b itself: every
    b_t is read for the last time just before h_t is written; saves a large allocation).

    Chunked scan: L = C chunks of T steps (+ a remainder r < T done step by step), T from
    `_chunk_len`.
      pass 1: within-chunk loop over T steps, vectorised over all (B, C, D) at once, giving each
              chunk's final state from a zero start and (torch.prod) its total decay;
      level 2: the C chunk carries form a linear scan of length C: solved recursively;
      pass 2: rerun the within-chunk loop from the true chunk-start states, writing h.
    Each pass touches every element once, in T calls of B*C*D elements each.
    """
    B, L, D = b.shape
    out = torch.empty_like(b) if out is None else out  # (B, L, D)
    T = _chunk_len(L, B * D)
    if T == 0:
        _seq(a, b, h0, out, reverse)
        return out
    C = L // T
    n = C * T
    r = L - n
    lo = r if reverse else 0  # the chunked region is [lo, lo + n); the remainder is done last
    av = a[:, lo:lo + n].view(B, C, T, a.shape[2])  # (B, C, T, Da)
    bv = b[:, lo:lo + n].view(B, C, T, D)  # (B, C, T, D)
    ov = out[:, lo:lo + n].view(B, C, T, D)  # (B, C, T, D)
    a_, b_, o_ = av.unbind(2), bv.unbind(2), ov.unbind(2)  # T views (B, C, Da|D) each
    steps = list(range(T - 1, -1, -1)) if reverse else list(range(T))

    # pass 1: local chunk-final states (zero start) and chunk decays
    loc = b_[steps[0]].clone()  # (B, C, D)
    for t in steps[1:]:
        loc = torch.addcmul(b_[t], a_[t], loc)
    decay = av.prod(dim=2)  # (B, C, Da)

    # level 2: state at the end of each chunk (in scan order), then the state entering it
    ends = _scan_torch(decay, loc, h0, reverse, out=loc)  # (B, C, D)
    starts = torch.empty_like(ends)  # (B, C, D)
    first, rest, prev = (-1, slice(0, -1), slice(1, None)) if reverse else (0, slice(1, None), slice(0, -1))
    if h0 is None:
        starts[:, first].zero_()
    else:
        starts[:, first].copy_(h0)
    starts[:, rest] = ends[:, prev]

    # pass 2: rerun each chunk from its true start
    h = starts
    for t in steps:
        h = torch.addcmul(b_[t], a_[t], h, out=o_[t])

    # remainder: the first r positions for reverse, the last r otherwise
    if r:
        if reverse:
            _seq(a[:, :r], b[:, :r], out[:, r], out[:, :r], True)
        else:
            _seq(a[:, n:], b[:, n:], out[:, n - 1], out[:, n:], False)
    return out


def _shift_a(a: torch.Tensor, reverse: bool) -> torch.Tensor:
    """Decay of the backward scan: a_{t+1} for a forward scan (a_{t-1} for reverse), 1 past the end."""
    one = torch.ones_like(a[:, :1])  # (B, 1, Da)
    return torch.cat([a[:, 1:], one], 1) if not reverse else torch.cat([one, a[:, :-1]], 1)


def _backward_torch(a, h, h0, dh, dlast, reverse, need_da):
    """Returns (g, da_full) with g = dL/db (B, L, D) and da_full = g * h_prev (B, L, D) or None."""
    g = _scan_torch(_shift_a(a, reverse), dh, dlast, not reverse)  # (B, L, D)
    if not need_da:
        return g, None
    da = torch.empty_like(g)  # (B, L, D)
    if reverse:  # h_prev_t = h_{t+1}, h_L = h0
        torch.mul(g[:, :-1], h[:, 1:], out=da[:, :-1])
        edge = -1
    else:  # h_prev_t = h_{t-1}, h_{-1} = h0
        torch.mul(g[:, 1:], h[:, :-1], out=da[:, 1:])
        edge = 0
    if h0 is None:
        da[:, edge].zero_()
    else:
        torch.mul(g[:, edge], h0, out=da[:, edge])
    return g, da


# --------------------------------------------------------------------------- autograd
def _run_forward(a, b, h0, reverse, triton):
    if triton:
        from rlts.kernels._linear_triton import linear_scan_fwd_triton

        return linear_scan_fwd_triton(a, b, h0, reverse)
    cd = compute_dtype(b.dtype)
    h = _scan_torch(a.to(cd), b.to(cd), None if h0 is None else h0.to(cd), reverse)
    return h.to(b.dtype)


def _run_backward(a, h, h0, dh, dlast, reverse, need_da, triton):
    if triton:
        from rlts.kernels._linear_triton import linear_scan_bwd_triton

        return linear_scan_bwd_triton(a, h, h0, dh, dlast, reverse, need_da)
    cd = compute_dtype(dh.dtype)
    up = lambda x: None if x is None else x.to(cd)  # noqa: E731
    return _backward_torch(up(a), up(h), up(h0), up(dh), up(dlast), reverse, need_da)


class _LinearScanFn(torch.autograd.Function):
    @staticmethod
    def forward(ctx, a, b, h0, reverse: bool, triton: bool):
        h = _run_forward(a, b, h0, reverse, triton)  # (B, L, D)
        last = h[:, 0 if reverse else -1].clone()  # (B, D)
        ctx.save_for_backward(a, h, h0)
        ctx.reverse, ctx.triton = reverse, triton
        return h, last

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, dh, dlast):
        a, h, h0 = ctx.saved_tensors
        need_a, need_b, need_h0 = ctx.needs_input_grad[:3]
        dh = dh.contiguous()
        g, da = _run_backward(a, h, h0, dh, dlast.contiguous(), ctx.reverse, need_a, ctx.triton)
        if da is not None and a.shape[2] == 1 and h.shape[2] != 1:
            da = da.sum(dim=2, keepdim=True)  # decay shared across channels
        da = None if da is None else da.to(a.dtype)
        dh0 = None
        if need_h0:
            t = -1 if ctx.reverse else 0
            dh0 = (a[:, t].to(g.dtype) * g[:, t]).to(h0.dtype)  # (B, D)
        return da, g.to(h.dtype) if need_b else None, dh0, None, None


# --------------------------------------------------------------------------- public API
def _check(a, b, h0, op=_OP):
    check_tensor(op, "b", b, (None, None, None), "(B, L, D)")
    B, L, D = b.shape
    if L < 1:
        fail(op, f"`b` must have shape (B, L, D) with L >= 1, got {tuple(b.shape)}")
    check_tensor(op, "a", a, (B, L, None), "(B, L, D) or (B, L, 1)")
    if a.shape[2] not in (1, D):
        fail(op, f"`a` must have shape (B, L, D) = {(B, L, D)} or (B, L, 1), got {tuple(a.shape)}")
    if h0 is not None:
        check_tensor(op, "h0", h0, (B, D), "(B, D)")
    check_same(op, {"b": b, "a": a, "h0": h0})


def linear_scan(
    a: torch.Tensor,
    b: torch.Tensor,
    h0: Optional[torch.Tensor] = None,
    reverse: bool = False,
    return_last: bool = False,
    backend: Optional[str] = None,
) -> Union[torch.Tensor, Tuple[torch.Tensor, torch.Tensor]]:
    """h_t = a_t * h_{t-1} + b_t over t = 0..L-1 (reverse: h_t = a_t * h_{t+1} + b_t).

    Args:
        a: (B, L, D) decays, or (B, L, 1) for one decay shared by all D channels.
        b: (B, L, D) inputs.
        h0: (B, D) state before the first step (h_{-1}, or h_L when reverse); None = zeros.
        reverse: scan from t = L-1 down to 0.
        return_last: also return the state after the whole sequence, h_{L-1} (h_0 if reverse),
            which can be passed as h0 of the next piece.
        backend: "auto" (CUDA -> Triton, CPU -> PyTorch), "torch" or "triton".

    Returns:
        h (B, L, D) in b's dtype, and the last state (B, D) if return_last.
    Differentiable with respect to a, b and h0.
    """
    _check(a, b, h0)
    triton = use_triton(_OP, b, backend)
    h, last = _LinearScanFn.apply(a.contiguous(), b.contiguous(), None if h0 is None else h0.contiguous(),
                                  bool(reverse), triton)
    return (h, last) if return_last else h


def linear_scan_step(
    a_t: torch.Tensor, b_t: torch.Tensor, h: Optional[torch.Tensor] = None, backend: Optional[str] = None
) -> torch.Tensor:
    """One step of the recurrence: returns a_t * h + b_t (B, D).

    a_t (B, D) or (B, 1), b_t (B, D), h (B, D) or None (zeros). Plain PyTorch on every
    backend (`backend` is only validated); differentiable.
    """
    op = "linear_scan_step"
    check_backend(op, backend)
    check_tensor(op, "b_t", b_t, (None, None), "(B, D)")
    B, D = b_t.shape
    check_tensor(op, "a_t", a_t, (B, None), "(B, D) or (B, 1)")
    if a_t.shape[1] not in (1, D):
        fail(op, f"`a_t` must have shape (B, D) = {(B, D)} or (B, 1), got {tuple(a_t.shape)}")
    if h is not None:
        check_tensor(op, "h", h, (B, D), "(B, D)")
    check_same(op, {"b_t": b_t, "a_t": a_t, "h": h})
    if h is None:
        return b_t.clone()
    cd = compute_dtype(b_t.dtype)
    return torch.addcmul(b_t.to(cd), a_t.to(cd), h.to(cd)).to(b_t.dtype)


def linear_scan_ref(
    a: torch.Tensor,
    b: torch.Tensor,
    h0: Optional[torch.Tensor] = None,
    reverse: bool = False,
    return_last: bool = False,
) -> Union[torch.Tensor, Tuple[torch.Tensor, torch.Tensor]]:
    """Naive Python loop over time (tests only). Same contract as `linear_scan`, computed in
    the inputs' dtype (pass float64 for a reference)."""
    _check(a, b, h0, op="linear_scan_ref")
    B, L, D = b.shape
    h = torch.zeros(B, D, dtype=b.dtype, device=b.device) if h0 is None else h0  # (B, D)
    out = [None] * L
    for t in (range(L - 1, -1, -1) if reverse else range(L)):
        h = a[:, t] * h + b[:, t]
        out[t] = h
    hs = torch.stack(out, dim=1)  # (B, L, D)
    return (hs, h) if return_last else hs
