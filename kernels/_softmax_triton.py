"""Triton kernels for `rlts.kernels.softmax_scan` (imported only when the Triton path is taken).

Forward: one program per (batch*head, block of BLOCK_E value channels) walks the sequence in
blocks of BLOCK_L tokens. Each block is scanned with tl.associative_scan using the paper's
operator on (m, u, w) (m and u broadcast over the E block so all three share one shape),
then combined with the carry (m, u, w) of everything before the block; o = w / u. The
program of the first E block also writes the per-position m_t and u_t (B, H, L), which the
backward needs (2 floats per token, cheap next to v), and the final (m, u); every program
writes its slice of the final w.

Backward: one program per (batch*head, block of E) walks the blocks from the end, running
the reverse linear scans G_t = g_t + e^{m_t - m_{t+1}} G_{t+1} (2-D, g = do / u) and
Hh_t = q_t + e^{m_t - m_{t+1}} Hh_{t+1} (1-D, q = -(o . do) / u, with o . do precomputed by
PyTorch), started from the grads of the returned w and u. It writes dv = p G and this E
block's share of ds = p (v . G) (+ p Hh in block 0), summed over E blocks afterwards, and
G_0, Hh_0 for the state grads. p = e^{s - m}. Accumulation in fp32 (fp64 for fp64 inputs).
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl


@triton.jit
def _softmax_combine(m1, u1, w1, m2, u2, w2):
    # (m1, u1, w1) then (m2, u2, w2); one exp: the side holding the max keeps factor 1.
    m = tl.maximum(m1, m2)
    d = tl.where(m1 == m2, 0.0, -tl.abs(m1 - m2))  # guards -inf - -inf
    e = tl.exp(d)
    first = m1 >= m2
    e1 = tl.where(first, 1.0, e)
    e2 = tl.where(first, e, 1.0)
    return m, u1 * e1 + u2 * e2, w1 * e1 + w2 * e2


@triton.jit
def _affine_combine(a1, b1, a2, b2):
    return a1 * a2, a2 * b1 + b2


@triton.jit
def _softmax_scan_fwd_kernel(
    s_ptr, v_ptr, o_ptr,  # s (BH, L), v/o (BH, L, E)
    m0_ptr, u0_ptr, w0_ptr,  # initial state (BH), (BH), (BH, E)
    m_ptr, u_ptr,  # per-position m, u (BH, L), ACC dtype
    w_last_ptr,  # final w (BH, E), ACC dtype
    L, E,
    HAS_STATE: tl.constexpr, ACC: tl.constexpr, BLOCK_L: tl.constexpr, BLOCK_E: tl.constexpr,
):
    bh = tl.program_id(0).to(tl.int64)
    pid_e = tl.program_id(1)
    offs_e = pid_e * BLOCK_E + tl.arange(0, BLOCK_E)  # (BLOCK_E,)
    mask_e = offs_e < E
    rows = tl.arange(0, BLOCK_L)  # (BLOCK_L,)
    zero2 = tl.zeros([BLOCK_L, BLOCK_E], dtype=ACC)
    is_last = (rows == BLOCK_L - 1)[:, None]  # (BLOCK_L, 1)

    if HAS_STATE:  # carry, broadcast over the E block
        mc = tl.load(m0_ptr + bh).to(ACC) + tl.zeros([BLOCK_E], dtype=ACC)
        uc = tl.load(u0_ptr + bh).to(ACC) + tl.zeros([BLOCK_E], dtype=ACC)
        wc = tl.load(w0_ptr + bh * E + offs_e, mask=mask_e, other=0.0).to(ACC)
    else:
        mc = tl.full([BLOCK_E], float("-inf"), ACC)
        uc = tl.zeros([BLOCK_E], dtype=ACC)
        wc = tl.zeros([BLOCK_E], dtype=ACC)

    for start in range(0, L, BLOCK_L):
        t = start + rows  # (BLOCK_L,)
        mask_t = t < L
        mask = mask_t[:, None] & mask_e[None, :]
        s = tl.load(s_ptr + bh * L + t, mask=mask_t, other=float("-inf")).to(ACC)  # (BLOCK_L,)
        x_off = bh * L * E + t[:, None] * E + offs_e[None, :]  # (BLOCK_L, BLOCK_E)
        v = tl.load(v_ptr + x_off, mask=mask, other=0.0).to(ACC)
        # leaves (s_t, 1, v_t); rows past the end are the identity (-inf, 0, 0)
        m_leaf = s[:, None] + zero2
        u_leaf = tl.where(mask_t[:, None], 1.0, 0.0) + zero2
        M, U, W = tl.associative_scan((m_leaf, u_leaf, v), 0, _softmax_combine)
        M, U, W = _softmax_combine(mc[None, :], uc[None, :], wc[None, :], M, U, W)  # prefix with the carry
        tl.store(o_ptr + x_off, (W / U).to(o_ptr.dtype.element_ty), mask=mask)
        if pid_e == 0:  # columns are identical: keep one
            tl.store(m_ptr + bh * L + t, tl.max(M, axis=1), mask=mask_t)
            tl.store(u_ptr + bh * L + t, tl.max(U, axis=1), mask=mask_t)
        mc = tl.max(tl.where(is_last, M, float("-inf")), axis=0)
        uc = tl.sum(tl.where(is_last, U, 0.0), axis=0)
        wc = tl.sum(tl.where(is_last, W, 0.0), axis=0)

    tl.store(w_last_ptr + bh * E + offs_e, wc, mask=mask_e)


@triton.jit
def _softmax_scan_bwd_kernel(
    s_ptr, v_ptr, m_ptr, u_ptr, do_ptr, delta_ptr,  # s/m/u/delta (BH, L), v/do (BH, L, E)
    dw_last_ptr, du_last_ptr,  # grads of the returned w (BH, E), u (BH)
    dv_ptr, ds_part_ptr,  # dv (BH, L, E), ds_part (n_e_blocks, BH, L) ACC
    g0_ptr, hh0_ptr,  # G_0 (BH, E), Hh_0 (BH), ACC
    BH, L, E,
    ACC: tl.constexpr, BLOCK_L: tl.constexpr, BLOCK_E: tl.constexpr,
):
    bh = tl.program_id(0).to(tl.int64)
    pid_e = tl.program_id(1)
    offs_e = pid_e * BLOCK_E + tl.arange(0, BLOCK_E)  # (BLOCK_E,)
    mask_e = offs_e < E
    rows = tl.arange(0, BLOCK_L)
    is_last = rows == BLOCK_L - 1  # (BLOCK_L,)

    Gc = tl.load(dw_last_ptr + bh * E + offs_e, mask=mask_e, other=0.0).to(ACC)  # (BLOCK_E,)
    Hc = tl.load(du_last_ptr + bh).to(ACC)  # scalar

    for start in range(0, L, BLOCK_L):
        t = L - 1 - (start + rows)  # (BLOCK_L,) time, running backwards
        mask_t = t >= 0
        mask = mask_t[:, None] & mask_e[None, :]
        m = tl.load(m_ptr + bh * L + t, mask=mask_t, other=0.0).to(ACC)
        has_next = mask_t & (t + 1 < L)
        m_next = tl.load(m_ptr + bh * L + t + 1, mask=has_next, other=0.0).to(ACC)
        decay = tl.exp(tl.where(has_next, m - m_next, 0.0))  # (BLOCK_L,) e^{m_t - m_{t+1}}, 1 past the end
        u = tl.load(u_ptr + bh * L + t, mask=mask_t, other=1.0).to(ACC)
        s = tl.load(s_ptr + bh * L + t, mask=mask_t, other=0.0).to(ACC)
        p = tl.where(mask_t, tl.exp(s - m), 0.0)  # (BLOCK_L,)
        q = -tl.load(delta_ptr + bh * L + t, mask=mask_t, other=0.0).to(ACC) / u
        x_off = bh * L * E + t[:, None] * E + offs_e[None, :]
        do = tl.load(do_ptr + x_off, mask=mask, other=0.0).to(ACC)  # (BLOCK_L, BLOCK_E)
        v = tl.load(v_ptr + x_off, mask=mask, other=0.0).to(ACC)
        g = do / u[:, None]

        A2, G = tl.associative_scan((decay[:, None] + tl.zeros_like(g), g), 0, _affine_combine)
        G = A2 * Gc[None, :] + G  # (BLOCK_L, BLOCK_E)
        A1, Hh = tl.associative_scan((decay, q), 0, _affine_combine)
        Hh = A1 * Hc + Hh  # (BLOCK_L,)

        tl.store(dv_ptr + x_off, (p[:, None] * G).to(dv_ptr.dtype.element_ty), mask=mask)
        ds = p * tl.sum(v * G, axis=1)
        if pid_e == 0:
            ds += p * Hh
        tl.store(ds_part_ptr + (pid_e * BH + bh) * L + t, ds, mask=mask_t)

        Gc = tl.sum(tl.where(is_last[:, None], G, 0.0), axis=0)
        Hc = tl.sum(tl.where(is_last, Hh, 0.0), axis=0)

    tl.store(g0_ptr + bh * E + offs_e, Gc, mask=mask_e)
    if pid_e == 0:
        tl.store(hh0_ptr + bh, Hc)


def _acc(dtype):
    return (tl.float64, torch.float64) if dtype == torch.float64 else (tl.float32, torch.float32)


def _blocks(L, E):
    return min(64, max(2, triton.next_power_of_2(L))), min(32, max(2, triton.next_power_of_2(E)))


def _fwd_warps(block_l, block_e):
    # The forward scans three (BLOCK_L, BLOCK_E) tiles at once: with 4 warps a 64 x 16 or larger
    # tile spilled (8 B per thread for sm_80 / sm_90, scripts/gpu_compile.py); 8 warps halve the
    # tile each thread holds and leave no spills. Smaller tiles keep 4 warps.
    return 8 if block_l * block_e >= 1024 else 4


def softmax_scan_fwd_triton(s, v, m0, u0, w0):
    """s (B, H, L), v (B, H, L, E), state in the accumulation dtype or None; contiguous.
    Returns o (B, H, L, E) in v's dtype, m, u (B, H, L) and w_last (B, H, E) in fp32 (fp64)."""
    B, H, L, E = v.shape
    acc_tl, acc = _acc(v.dtype)
    block_l, block_e = _blocks(L, E)
    o = torch.empty_like(v)
    m = torch.empty(B, H, L, device=v.device, dtype=acc)
    u = torch.empty(B, H, L, device=v.device, dtype=acc)
    w_last = torch.empty(B, H, E, device=v.device, dtype=acc)
    has_state = m0 is not None
    grid = (B * H, triton.cdiv(E, block_e))
    _softmax_scan_fwd_kernel[grid](
        s, v, o,
        m0 if has_state else s, u0 if has_state else s, w0 if has_state else s,
        m, u, w_last, L, E,
        HAS_STATE=has_state, ACC=acc_tl, BLOCK_L=block_l, BLOCK_E=block_e,
        num_warps=_fwd_warps(block_l, block_e),
    )
    return o, m, u, w_last


def softmax_scan_bwd_triton(s, v, o, m, u, do, dw_last, du_last):
    """Returns ds (B, H, L), dv (B, H, L, E) and the adjoints of the first step, G_0 (B, H, E)
    and Hh_0 (B, H), from which the caller forms the gradients of an initial state."""
    B, H, L, E = v.shape
    acc_tl, acc = _acc(v.dtype)
    block_l, block_e = _blocks(L, E)
    n_e = triton.cdiv(E, block_e)
    delta = (o.to(acc) * do.to(acc)).sum(-1).contiguous()  # (B, H, L): o_t . do_t
    dv = torch.empty_like(v)
    ds_part = torch.empty(n_e, B, H, L, device=v.device, dtype=acc)
    g0 = torch.empty(B, H, E, device=v.device, dtype=acc)
    hh0 = torch.empty(B, H, device=v.device, dtype=acc)
    _softmax_scan_bwd_kernel[(B * H, n_e)](
        s, v, m, u, do, delta, dw_last.to(acc).contiguous(), du_last.to(acc).contiguous(),
        dv, ds_part, g0, hh0, B * H, L, E,
        ACC=acc_tl, BLOCK_L=block_l, BLOCK_E=block_e,
    )
    ds = ds_part.sum(0)  # (B, H, L)
    return ds, dv, g0, hh0
