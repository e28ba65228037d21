"""Triton kernel for `rlts.kernels.linear_scan` (imported only when the Triton path is taken).

One kernel serves forward and backward. A program owns one (batch, block of BLOCK_D
channels) and walks the sequence in blocks of BLOCK_L steps, in scan order (from the end
when REVERSE). Inside a block, tl.associative_scan composes the affine maps
h -> a h + b with (a1, b1) then (a2, b2) = (a1 a2, a2 b1 + b2); the state entering the
block (the carry, in registers; fp32, fp64 for fp64 inputs) is then applied: h = A * carry + B. Out-of-range
rows load a = 1, b = 0, so the last row of a block is always the state to carry on.

Backward reuses it: g = reverse scan of dh with decay a shifted by one step (A_SHIFT,
1 past the end), started from the grad of the returned last state; with COMPUTE_DA the
same pass writes da_t = g_t * h_prev_t (h_prev = the forward state before step t).
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl


@triton.jit
def _affine_combine(a1, b1, a2, b2):
    return a1 * a2, a2 * b1 + b2


@triton.jit
def _linear_scan_kernel(
    a_ptr, b_ptr, h0_ptr, out_ptr,  # a (B, L, Da), b/out (B, L, D), h0 (B, D)
    hx_ptr, hx0_ptr, da_ptr,  # backward only: forward h (B, L, D), forward h0 (B, D), da (B, L, D)
    L, D,
    stride_ab, stride_al, stride_ad,  # strides of a; stride_ad = 0 when Da = 1
    HAS_H0: tl.constexpr, HAS_HX0: tl.constexpr, REVERSE: tl.constexpr,
    A_SHIFT: tl.constexpr, COMPUTE_DA: tl.constexpr, ACC: tl.constexpr,
    BLOCK_L: tl.constexpr, BLOCK_D: tl.constexpr,
):
    pid_b = tl.program_id(0).to(tl.int64)
    offs_d = tl.program_id(1) * BLOCK_D + tl.arange(0, BLOCK_D)  # (BLOCK_D,)
    mask_d = offs_d < D
    rows = tl.arange(0, BLOCK_L)  # (BLOCK_L,)
    base = pid_b * L * D  # b, out, hx, da are contiguous (B, L, D)
    a_base = a_ptr + pid_b * stride_ab

    if HAS_H0:
        carry = tl.load(h0_ptr + pid_b * D + offs_d, mask=mask_d, other=0.0).to(ACC)  # (BLOCK_D,)
    else:
        carry = tl.zeros([BLOCK_D], dtype=ACC)
    if COMPUTE_DA and HAS_HX0:
        hx0 = tl.load(hx0_ptr + pid_b * D + offs_d, mask=mask_d, other=0.0).to(ACC)  # (BLOCK_D,)

    for start in range(0, L, BLOCK_L):
        step = start + rows  # position in scan order
        if REVERSE:
            t = L - 1 - step  # (BLOCK_L,) time index
        else:
            t = step
        mask_t = step < L
        mask = mask_t[:, None] & mask_d[None, :]  # (BLOCK_L, BLOCK_D)
        ta = t + A_SHIFT
        mask_a = mask & ((ta >= 0) & (ta < L))[:, None]
        a = tl.load(a_base + ta[:, None] * stride_al + offs_d[None, :] * stride_ad,
                    mask=mask_a, other=1.0).to(ACC)  # (BLOCK_L, BLOCK_D)
        x_off = base + t[:, None] * D + offs_d[None, :]  # (BLOCK_L, BLOCK_D)
        b = tl.load(b_ptr + x_off, mask=mask, other=0.0).to(ACC)

        acc_a, acc_b = tl.associative_scan((a, b), 0, _affine_combine)
        h = acc_a * carry[None, :] + acc_b  # (BLOCK_L, BLOCK_D) in ACC
        tl.store(out_ptr + x_off, h.to(out_ptr.dtype.element_ty), mask=mask)

        if COMPUTE_DA:
            tp = t - A_SHIFT  # time of the forward state before step t
            inside = (tp >= 0) & (tp < L)
            hp = tl.load(hx_ptr + base + tp[:, None] * D + offs_d[None, :],
                         mask=mask & inside[:, None], other=0.0).to(ACC)
            if HAS_HX0:
                hp = tl.where(inside[:, None], hp, hx0[None, :])
            tl.store(da_ptr + x_off, (h * hp).to(da_ptr.dtype.element_ty), mask=mask)

        carry = tl.sum(tl.where((rows == BLOCK_L - 1)[:, None], h, 0.0), axis=0)  # last row


def _blocks(L: int, D: int):
    block_l = min(64, max(2, triton.next_power_of_2(L)))
    block_d = min(32, max(2, triton.next_power_of_2(D)))
    return block_l, block_d


def _launch(a, b, h0, out, reverse, a_shift, hx=None, hx0=None, da=None):
    B, L, D = b.shape
    block_l, block_d = _blocks(L, D)
    stride_ad = 0 if a.shape[2] == 1 else a.stride(2)
    grid = (B, triton.cdiv(D, block_d))
    _linear_scan_kernel[grid](
        a, b, h0 if h0 is not None else b, out,
        hx if hx is not None else b, hx0 if hx0 is not None else b, da if da is not None else out,
        L, D, a.stride(0), a.stride(1), stride_ad,
        HAS_H0=h0 is not None, HAS_HX0=hx0 is not None, REVERSE=reverse,
        A_SHIFT=a_shift, COMPUTE_DA=da is not None,
        ACC=tl.float64 if b.dtype == torch.float64 else tl.float32,
        BLOCK_L=block_l, BLOCK_D=block_d,
    )


def linear_scan_fwd_triton(a, b, h0, reverse: bool) -> torch.Tensor:
    """a (B, L, Da), b (B, L, D), h0 (B, D) or None, contiguous -> h (B, L, D) in b's dtype."""
    out = torch.empty_like(b)
    _launch(a, b, h0, out, reverse, 0)
    return out


def linear_scan_bwd_triton(a, h, h0, dh, dlast, reverse: bool, need_da: bool):
    """Returns (g, da_full): g = dL/db (B, L, D) in dh's dtype and da_full = g * h_prev (B, L, D)
    (fp32 when a is shared across channels, since it is summed afterwards) or None."""
    g = torch.empty_like(dh)
    da = None
    if need_da:
        da = torch.empty(dh.shape, device=dh.device,
                         dtype=torch.promote_types(dh.dtype, torch.float32) if a.shape[2] == 1 else dh.dtype)
    _launch(a, dh, dlast, g, not reverse, -1 if reverse else 1, hx=h, hx0=h0, da=da)
    return g, da
