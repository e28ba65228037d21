"""Triton kernels for the Mamba-1 selective scan (imported only when triton is installed).

Layout: activations are (batch, dim, L), B and C are (batch, G, N, L); every tensor is
passed with its strides, so views and stride-0 expands need no copy. One program owns
(batch b, group g, a block of BLOCK_D channels of that group) and walks L in blocks of
BLOCK_L. Its state h (BLOCK_D, N) lives in registers; inside a block the recurrence

    h_t = exp(delta_t * A) * h_{t-1} + delta_t * u_t * B_t

is solved with `tl.associative_scan` over (BLOCK_L, BLOCK_D, N) pairs (a_t, b_t), using the
composition of affine maps x -> a x + b ("apply 1, then 2"):

    (a1, b1), (a2, b2) -> (a1 * a2, a2 * b1 + b2)

The carried h starts from the initial state (zeros if none is given). The forward writes
the state at the start of every L-block (batch, dim, nblocks, N); the
backward walks the blocks from the end, recomputes h inside the block from that state, and
runs the adjoint recurrence dh_t = gy_t C_t + exp(delta_{t+1} A) dh_{t+1} as a reverse scan
with the same combine (Triton's reverse scan feeds the later elements in as the first
argument, so "apply 1, then 2" still holds). After block 0, dh is the adjoint of h_0, and
the initial state's gradient is exp(delta_0 A) dh_0.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

BLOCK_L_MAX = 16
# Register budget per (BLOCK_L, BLOCK_D, BLOCK_N) tile; the backward keeps ~8 such tiles live.
TILE_ELEMS = 4096


@triton.jit
def _affine_combine(a1, b1, a2, b2):
    return a1 * a2, a2 * b1 + b2


@triton.jit
def _softplus(x):
    # Same threshold as torch.nn.functional.softplus; min() keeps exp() from overflowing.
    return tl.where(x <= 20.0, tl.log(1.0 + tl.exp(tl.minimum(x, 20.0))), x)


@triton.jit
def _load_delta(delta_ptr, bias, offs_l, offs_d, mask, s_l, s_d,
                HAS_BIAS: tl.constexpr, SOFTPLUS: tl.constexpr, CDT: tl.constexpr):
    """delta + delta_bias (then softplus) for a (BLOCK_L, BLOCK_D) tile; 0 where masked.

    Returns (delta, pre-activation) - the latter is needed for the softplus derivative."""
    dt = tl.load(delta_ptr + offs_l[:, None] * s_l + offs_d[None, :] * s_d, mask=mask, other=0.0).to(CDT)
    if HAS_BIAS:
        dt = dt + bias[None, :]
    pre = dt
    if SOFTPLUS:
        dt = _softplus(dt)
    return tl.where(mask, dt, 0.0), pre


@triton.jit
def _selective_scan_fwd_kernel(
    u_ptr, delta_ptr, A_ptr, B_ptr, C_ptr, D_ptr, z_ptr, bias_ptr, init_ptr,
    out_ptr, states_ptr, last_ptr,
    L, N, dpg, n_lblocks,
    s_u_b, s_u_d, s_u_l,
    s_dt_b, s_dt_d, s_dt_l,
    s_A_d, s_A_n,
    s_B_b, s_B_g, s_B_n, s_B_l,
    s_C_b, s_C_g, s_C_n, s_C_l,
    s_D, s_bias,
    s_z_b, s_z_d, s_z_l,
    s_o_b, s_o_d, s_o_l,
    s_i_b, s_i_d, s_i_n,
    HAS_D: tl.constexpr, HAS_Z: tl.constexpr, HAS_BIAS: tl.constexpr, SOFTPLUS: tl.constexpr,
    HAS_INIT: tl.constexpr,
    BLOCK_L: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_N: tl.constexpr, CDT: tl.constexpr,
):
    pid_b = tl.program_id(0).to(tl.int64)  # 64-bit offsets for large (batch, dim, L)
    pid_g = tl.program_id(1)
    pid_d = tl.program_id(2)
    dim = tl.num_programs(1) * dpg

    offs_d = pid_d * BLOCK_D + tl.arange(0, BLOCK_D)        # channel index inside the group
    mask_d = offs_d < dpg
    offs_d = (pid_g * dpg + offs_d).to(tl.int64)             # global channel index
    offs_n = tl.arange(0, BLOCK_N)
    mask_n = offs_n < N
    offs_t = tl.arange(0, BLOCK_L)
    mask_dn = mask_d[:, None] & mask_n[None, :]

    # Padded n get A = 0 and B = C = 0, so their state stays 0.
    A = tl.load(A_ptr + offs_d[:, None] * s_A_d + offs_n[None, :] * s_A_n, mask=mask_dn, other=0.0).to(CDT)
    bias = tl.zeros((BLOCK_D,), CDT)
    if HAS_BIAS:
        bias = tl.load(bias_ptr + offs_d * s_bias, mask=mask_d, other=0.0).to(CDT)
    Dv = tl.zeros((BLOCK_D,), CDT)
    if HAS_D:
        Dv = tl.load(D_ptr + offs_d * s_D, mask=mask_d, other=0.0).to(CDT)

    u_ptr += pid_b * s_u_b
    delta_ptr += pid_b * s_dt_b
    B_ptr += pid_b * s_B_b + pid_g * s_B_g
    C_ptr += pid_b * s_C_b + pid_g * s_C_g
    z_ptr += pid_b * s_z_b
    out_ptr += pid_b * s_o_b
    # states: (batch, dim, n_lblocks, N) contiguous; last: (batch, dim, N) contiguous
    st_ptrs = states_ptr + pid_b * dim * n_lblocks * N + offs_d[:, None] * n_lblocks * N + offs_n[None, :]

    if HAS_INIT:                                             # (BLOCK_D, N) carried state
        h = tl.load(init_ptr + pid_b * s_i_b + offs_d[:, None] * s_i_d + offs_n[None, :] * s_i_n,
                    mask=mask_dn, other=0.0).to(CDT)
    else:
        h = tl.zeros((BLOCK_D, BLOCK_N), CDT)
    for lb in range(0, n_lblocks):
        tl.store(st_ptrs + lb * N, h, mask=mask_dn)
        offs_l = lb * BLOCK_L + offs_t
        mask_l = offs_l < L
        mask_ld = mask_l[:, None] & mask_d[None, :]
        mask_ln = mask_l[:, None] & mask_n[None, :]
        u = tl.load(u_ptr + offs_l[:, None] * s_u_l + offs_d[None, :] * s_u_d, mask=mask_ld, other=0.0).to(CDT)
        dt, _ = _load_delta(delta_ptr, bias, offs_l, offs_d, mask_ld, s_dt_l, s_dt_d, HAS_BIAS, SOFTPLUS, CDT)
        Bt = tl.load(B_ptr + offs_l[:, None] * s_B_l + offs_n[None, :] * s_B_n, mask=mask_ln, other=0.0).to(CDT)
        Ct = tl.load(C_ptr + offs_l[:, None] * s_C_l + offs_n[None, :] * s_C_n, mask=mask_ln, other=0.0).to(CDT)

        dA = tl.exp(dt[:, :, None] * A[None, :, :])                # (BLOCK_L, BLOCK_D, N)
        dBu = (dt * u)[:, :, None] * Bt[:, None, :]                 # (BLOCK_L, BLOCK_D, N)
        pa, pb = tl.associative_scan((dA, dBu), 0, _affine_combine)
        hs = pb + pa * h[None, :, :]                                # h_t for the block
        y = tl.sum(hs * Ct[:, None, :], axis=2)                     # (BLOCK_L, BLOCK_D)
        if HAS_D:
            y += u * Dv[None, :]
        if HAS_Z:
            z = tl.load(z_ptr + offs_l[:, None] * s_z_l + offs_d[None, :] * s_z_d, mask=mask_ld, other=0.0).to(CDT)
            y = y * z * tl.sigmoid(z)
        tl.store(out_ptr + offs_l[:, None] * s_o_l + offs_d[None, :] * s_o_d, y, mask=mask_ld)
        # Padded rows have dA = 1, dBu = 0, so the last row is the state after the last valid step.
        h = tl.sum(tl.where(offs_t[:, None, None] == BLOCK_L - 1, hs, 0.0), axis=0)
    tl.store(last_ptr + pid_b * dim * N + offs_d[:, None] * N + offs_n[None, :], h, mask=mask_dn)


@triton.jit
def _selective_scan_bwd_kernel(
    u_ptr, delta_ptr, A_ptr, B_ptr, C_ptr, D_ptr, z_ptr, bias_ptr,
    states_ptr, dout_ptr, dlast_ptr,
    du_ptr, ddelta_ptr, dz_ptr, dA_ptr, dB_ptr, dC_ptr, dD_ptr, dbias_ptr, dinit_ptr,
    L, N, dpg, n_lblocks, n_dblocks,
    s_u_b, s_u_d, s_u_l,
    s_dt_b, s_dt_d, s_dt_l,
    s_A_d, s_A_n,
    s_B_b, s_B_g, s_B_n, s_B_l,
    s_C_b, s_C_g, s_C_n, s_C_l,
    s_D, s_bias,
    s_z_b, s_z_d, s_z_l,
    s_g_b, s_g_d, s_g_l,
    HAS_D: tl.constexpr, HAS_Z: tl.constexpr, HAS_BIAS: tl.constexpr, SOFTPLUS: tl.constexpr,
    HAS_DLAST: tl.constexpr, HAS_INIT: tl.constexpr,
    BLOCK_L: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_N: tl.constexpr, CDT: tl.constexpr,
):
    """Gradients for one (batch, group, channel block). Outputs, all contiguous:
    du, ddelta, dz (batch, dim, L); per-program partial sums dA (batch, dim, N),
    dB, dC (batch, G, n_dblocks, N, L), dD, dbias (batch, dim) - summed by the caller;
    dinit (batch, dim, N) if HAS_INIT."""
    pid_b = tl.program_id(0).to(tl.int64)  # 64-bit offsets for large (batch, dim, L)
    pid_g = tl.program_id(1)
    pid_d = tl.program_id(2)
    G = tl.num_programs(1)
    dim = G * dpg

    offs_d = pid_d * BLOCK_D + tl.arange(0, BLOCK_D)
    mask_d = offs_d < dpg
    offs_d = (pid_g * dpg + offs_d).to(tl.int64)
    offs_n = tl.arange(0, BLOCK_N)
    mask_n = offs_n < N
    offs_t = tl.arange(0, BLOCK_L)
    mask_dn = mask_d[:, None] & mask_n[None, :]

    A = tl.load(A_ptr + offs_d[:, None] * s_A_d + offs_n[None, :] * s_A_n, mask=mask_dn, other=0.0).to(CDT)
    bias = tl.zeros((BLOCK_D,), CDT)
    if HAS_BIAS:
        bias = tl.load(bias_ptr + offs_d * s_bias, mask=mask_d, other=0.0).to(CDT)
    Dv = tl.zeros((BLOCK_D,), CDT)
    if HAS_D:
        Dv = tl.load(D_ptr + offs_d * s_D, mask=mask_d, other=0.0).to(CDT)

    u_ptr += pid_b * s_u_b
    delta_ptr += pid_b * s_dt_b
    B_ptr += pid_b * s_B_b + pid_g * s_B_g
    C_ptr += pid_b * s_C_b + pid_g * s_C_g
    z_ptr += pid_b * s_z_b
    dout_ptr += pid_b * s_g_b
    act = pid_b * dim * L + offs_d[None, :] * L              # contiguous (batch, dim, L) outputs
    part_bc = ((pid_b * G + pid_g) * n_dblocks + pid_d) * N * L  # (batch, G, n_dblocks, N, L)
    st_ptrs = states_ptr + pid_b * dim * n_lblocks * N + offs_d[:, None] * n_lblocks * N + offs_n[None, :]

    # dh: adjoint of the state at the first step of the block processed last (i.e. the next one).
    if HAS_DLAST:
        dh = tl.load(dlast_ptr + pid_b * dim * N + offs_d[:, None] * N + offs_n[None, :],
                     mask=mask_dn, other=0.0).to(CDT)
    else:
        dh = tl.zeros((BLOCK_D, BLOCK_N), CDT)
    dA_acc = tl.zeros((BLOCK_D, BLOCK_N), CDT)
    dD_acc = tl.zeros((BLOCK_D,), CDT)
    dbias_acc = tl.zeros((BLOCK_D,), CDT)

    for i in range(0, n_lblocks):
        lb = n_lblocks - 1 - i
        offs_l = lb * BLOCK_L + offs_t
        mask_l = offs_l < L
        mask_ld = mask_l[:, None] & mask_d[None, :]
        mask_ln = mask_l[:, None] & mask_n[None, :]
        u = tl.load(u_ptr + offs_l[:, None] * s_u_l + offs_d[None, :] * s_u_d, mask=mask_ld, other=0.0).to(CDT)
        dt, dt_pre = _load_delta(delta_ptr, bias, offs_l, offs_d, mask_ld, s_dt_l, s_dt_d,
                                 HAS_BIAS, SOFTPLUS, CDT)
        # delta_{t+1}, 0 past the end (so exp(delta_{t+1} A) = 1 there)
        mask_next = ((offs_l + 1) < L)[:, None] & mask_d[None, :]
        dt_next, _ = _load_delta(delta_ptr, bias, offs_l + 1, offs_d, mask_next, s_dt_l, s_dt_d,
                                 HAS_BIAS, SOFTPLUS, CDT)
        Bt = tl.load(B_ptr + offs_l[:, None] * s_B_l + offs_n[None, :] * s_B_n, mask=mask_ln, other=0.0).to(CDT)
        Ct = tl.load(C_ptr + offs_l[:, None] * s_C_l + offs_n[None, :] * s_C_n, mask=mask_ln, other=0.0).to(CDT)
        g = tl.load(dout_ptr + offs_l[:, None] * s_g_l + offs_d[None, :] * s_g_d, mask=mask_ld, other=0.0).to(CDT)

        # Recompute the states of this block from its start state.
        h0 = tl.load(st_ptrs + lb * N, mask=mask_dn, other=0.0)
        dA = tl.exp(dt[:, :, None] * A[None, :, :])                 # (BLOCK_L, BLOCK_D, N)
        dBu = (dt * u)[:, :, None] * Bt[:, None, :]
        pa, pb = tl.associative_scan((dA, dBu), 0, _affine_combine)
        hs = pb + pa * h0[None, :, :]                               # h_t

        # Output gate and skip: out = (y + D u) * silu(z).
        if HAS_Z:
            z = tl.load(z_ptr + offs_l[:, None] * s_z_l + offs_d[None, :] * s_z_d, mask=mask_ld, other=0.0).to(CDT)
            y = tl.sum(hs * Ct[:, None, :], axis=2) + u * Dv[None, :]
            sz = tl.sigmoid(z)
            dz = g * y * sz * (1.0 + z * (1.0 - sz))
            tl.store(dz_ptr + act + offs_l[:, None], dz, mask=mask_ld)
            gy = g * z * sz
        else:
            gy = g
        du = gy * Dv[None, :]
        dD_acc += tl.sum(gy * u, axis=0)

        # Adjoint scan from the end of the block: dh_t = gy_t C_t + exp(delta_{t+1} A) dh_{t+1}.
        dA_next = tl.exp(dt_next[:, :, None] * A[None, :, :])
        cy = gy[:, :, None] * Ct[:, None, :]
        ra, rb = tl.associative_scan((dA_next, cy), 0, _affine_combine, reverse=True)
        dhs = rb + ra * dh[None, :, :]                              # dL/dh_t
        dh = tl.sum(tl.where(offs_t[:, None, None] == 0, dhs, 0.0), axis=0)

        # dL/dC_t = sum_d gy h_t;  dL/dB_t = sum_d dh_t delta_t u_t  (partial over this channel block)
        dC = tl.sum(gy[:, :, None] * hs, axis=1)                   # (BLOCK_L, N)
        dB = tl.sum(dhs * (dt * u)[:, :, None], axis=1)
        tl.store(dC_ptr + part_bc + offs_n[None, :] * L + offs_l[:, None], dC, mask=mask_ln)
        tl.store(dB_ptr + part_bc + offs_n[None, :] * L + offs_l[:, None], dB, mask=mask_ln)

        # q = dh_t * exp(delta_t A) h_{t-1}, with exp(delta_t A) h_{t-1} = h_t - delta_t u_t B_t.
        q = dhs * (hs - dBu)
        dA_acc += tl.sum(q * dt[:, :, None], axis=0)
        s = tl.sum(dhs * Bt[:, None, :], axis=2)                    # (BLOCK_L, BLOCK_D)
        ddt = tl.sum(q * A[None, :, :], axis=2) + s * u
        du += s * dt
        if SOFTPLUS:
            ddt = ddt * tl.sigmoid(dt_pre)
        ddt = tl.where(mask_ld, ddt, 0.0)
        dbias_acc += tl.sum(ddt, axis=0)
        tl.store(du_ptr + act + offs_l[:, None], du, mask=mask_ld)
        tl.store(ddelta_ptr + act + offs_l[:, None], ddt, mask=mask_ld)

    tl.store(dA_ptr + pid_b * dim * N + offs_d[:, None] * N + offs_n[None, :], dA_acc, mask=mask_dn)
    tl.store(dD_ptr + pid_b * dim + offs_d, dD_acc, mask=mask_d)
    tl.store(dbias_ptr + pid_b * dim + offs_d, dbias_acc, mask=mask_d)
    if HAS_INIT:
        # h_0 = exp(delta_0 A) h_init + ...: d h_init = exp(delta_0 A) dh_0 (dh is dh_0 here)
        dt0, _ = _load_delta(delta_ptr, bias, offs_t, offs_d, (offs_t == 0)[:, None] & mask_d[None, :],
                             s_dt_l, s_dt_d, HAS_BIAS, SOFTPLUS, CDT)
        dt0 = tl.sum(dt0, axis=0)                                   # (BLOCK_D,): row 0 only
        dinit = tl.exp(dt0[:, None] * A) * dh
        tl.store(dinit_ptr + pid_b * dim * N + offs_d[:, None] * N + offs_n[None, :], dinit, mask=mask_dn)


def _blocks(L: int, dpg: int, N: int):
    block_n = triton.next_power_of_2(N)
    block_l = min(BLOCK_L_MAX, triton.next_power_of_2(max(L, 1)))
    block_d = max(1, min(triton.next_power_of_2(dpg), TILE_ELEMS // (block_l * block_n)))
    return block_l, block_d, block_n


def _tl_dtype(dtype: torch.dtype):
    return tl.float64 if dtype == torch.float64 else tl.float32


def _strides(t, n):
    return t.stride() if t is not None else (0,) * n


def selective_scan_fwd(u, delta, A, B, C, D, z, delta_bias, initial_state, delta_softplus,
                       compute_dtype):
    """u, delta, z (batch, dim, L); A (dim, N); B, C (batch, G, N, L); D, delta_bias (dim,);
    initial_state (batch, dim, N) or None.

    Returns out (batch, dim, L) in u's dtype, last state (batch, dim, N) and the block-start
    states (batch, dim, n_lblocks, N), both in compute_dtype, plus BLOCK_L."""
    batch, dim, L = u.shape
    G, N = B.shape[1], A.shape[1]
    dpg = dim // G
    block_l, block_d, block_n = _blocks(L, dpg, N)
    n_lblocks = triton.cdiv(L, block_l)
    out = torch.empty_like(u, memory_format=torch.contiguous_format)
    states = torch.empty(batch, dim, n_lblocks, N, device=u.device, dtype=compute_dtype)
    last = torch.empty(batch, dim, N, device=u.device, dtype=compute_dtype)
    grid = (batch, G, triton.cdiv(dpg, block_d))
    _selective_scan_fwd_kernel[grid](
        u, delta, A, B, C, D if D is not None else u, z if z is not None else u,
        delta_bias if delta_bias is not None else u,
        initial_state if initial_state is not None else u,
        out, states, last,
        L, N, dpg, n_lblocks,
        *u.stride(), *delta.stride(), *A.stride(), *B.stride(), *C.stride(),
        _strides(D, 1)[0], _strides(delta_bias, 1)[0], *_strides(z, 3), *out.stride(),
        *_strides(initial_state, 3),
        HAS_D=D is not None, HAS_Z=z is not None, HAS_BIAS=delta_bias is not None,
        SOFTPLUS=bool(delta_softplus), HAS_INIT=initial_state is not None,
        BLOCK_L=block_l, BLOCK_D=block_d, BLOCK_N=block_n, CDT=_tl_dtype(compute_dtype),
        num_warps=4,
    )
    return out, last, states, block_l


def selective_scan_bwd(u, delta, A, B, C, D, z, delta_bias, delta_softplus, states, block_l,
                       dout, dlast, has_init, compute_dtype):
    """Returns du, ddelta, dA, dB (batch, G, N, L), dC, dD, dz, ddelta_bias, dinitial_state
    (None where absent), in compute_dtype; the caller casts to the input dtypes."""
    batch, dim, L = u.shape
    G, N = B.shape[1], A.shape[1]
    dpg = dim // G
    _, block_d, block_n = _blocks(L, dpg, N)
    n_lblocks = states.shape[2]
    n_dblocks = triton.cdiv(dpg, block_d)
    kw = dict(device=u.device, dtype=compute_dtype)
    du = torch.empty(batch, dim, L, **kw)
    ddelta = torch.empty(batch, dim, L, **kw)
    dz = torch.empty(batch, dim, L, **kw) if z is not None else None
    dA = torch.empty(batch, dim, N, **kw)
    dB = torch.empty(batch, G, n_dblocks, N, L, **kw)
    dC = torch.empty(batch, G, n_dblocks, N, L, **kw)
    dD = torch.empty(batch, dim, **kw)
    dbias = torch.empty(batch, dim, **kw)
    dinit = torch.empty(batch, dim, N, **kw) if has_init else None
    grid = (batch, G, n_dblocks)
    _selective_scan_bwd_kernel[grid](
        u, delta, A, B, C, D if D is not None else u, z if z is not None else u,
        delta_bias if delta_bias is not None else u,
        states, dout, dlast if dlast is not None else states,
        du, ddelta, dz if dz is not None else du, dA, dB, dC, dD, dbias,
        dinit if dinit is not None else dA,
        L, N, dpg, n_lblocks, n_dblocks,
        *u.stride(), *delta.stride(), *A.stride(), *B.stride(), *C.stride(),
        _strides(D, 1)[0], _strides(delta_bias, 1)[0], *_strides(z, 3), *dout.stride(),
        HAS_D=D is not None, HAS_Z=z is not None, HAS_BIAS=delta_bias is not None,
        SOFTPLUS=bool(delta_softplus), HAS_DLAST=dlast is not None, HAS_INIT=has_init,
        BLOCK_L=block_l, BLOCK_D=block_d, BLOCK_N=block_n, CDT=_tl_dtype(compute_dtype),
        # 8 warps: with 4, the ~8 live (BLOCK_L, BLOCK_D, BLOCK_N) tiles hit the 255-register cap
        # and spilled 56-136 B per thread (scripts/gpu_compile.py); 8 warps need 214-232, no spills.
        num_warps=8,
    )
    return (du, ddelta, dA.sum(0), dB.sum(2), dC.sum(2),
            dD.sum(0) if D is not None else None, dz,
            dbias.sum(0) if delta_bias is not None else None, dinit)


# --------------------------------------------------------------------------- one-token step
@triton.jit
def _state_update_kernel(
    state_ptr, x_ptr, dt_ptr, A_ptr, B_ptr, C_ptr, D_ptr, z_ptr, bias_ptr, out_ptr,
    P, N, heads_per_group,
    s_st_b, s_st_h, s_st_p, s_st_n,
    s_x_b, s_x_h, s_x_p,
    s_dt_b, s_dt_h, s_dt_p,
    s_A_h, s_A_p, s_A_n,
    s_B_b, s_B_g, s_B_n,
    s_C_b, s_C_g, s_C_n,
    s_D_h, s_D_p,
    s_z_b, s_z_h, s_z_p,
    s_bias_h, s_bias_p,
    s_o_b, s_o_h, s_o_p,
    HAS_D: tl.constexpr, HAS_Z: tl.constexpr, HAS_BIAS: tl.constexpr, SOFTPLUS: tl.constexpr,
    BLOCK_P: tl.constexpr, BLOCK_N: tl.constexpr, CDT: tl.constexpr,
):
    """state (batch, nheads, headdim, N) <- exp(dt A) state + dt x B; out = (C . state + D x) silu(z).
    One program per (batch, head, block of headdim); the update is written back in place."""
    pid_b = tl.program_id(0).to(tl.int64)
    pid_h = tl.program_id(1)
    pid_p = tl.program_id(2)
    g = pid_h // heads_per_group
    offs_p = pid_p * BLOCK_P + tl.arange(0, BLOCK_P)
    offs_n = tl.arange(0, BLOCK_N)
    mask_p = offs_p < P
    mask_pn = mask_p[:, None] & (offs_n < N)[None, :]

    st_ptrs = state_ptr + pid_b * s_st_b + pid_h * s_st_h + offs_p[:, None] * s_st_p + offs_n[None, :] * s_st_n
    st = tl.load(st_ptrs, mask=mask_pn, other=0.0).to(CDT)                          # (BLOCK_P, N)
    x = tl.load(x_ptr + pid_b * s_x_b + pid_h * s_x_h + offs_p * s_x_p, mask=mask_p, other=0.0).to(CDT)
    dt = tl.load(dt_ptr + pid_b * s_dt_b + pid_h * s_dt_h + offs_p * s_dt_p, mask=mask_p, other=0.0).to(CDT)
    if HAS_BIAS:
        dt += tl.load(bias_ptr + pid_h * s_bias_h + offs_p * s_bias_p, mask=mask_p, other=0.0).to(CDT)
    if SOFTPLUS:
        dt = _softplus(dt)
    A = tl.load(A_ptr + pid_h * s_A_h + offs_p[:, None] * s_A_p + offs_n[None, :] * s_A_n,
                mask=mask_pn, other=0.0).to(CDT)
    Bv = tl.load(B_ptr + pid_b * s_B_b + g * s_B_g + offs_n * s_B_n, mask=offs_n < N, other=0.0).to(CDT)
    Cv = tl.load(C_ptr + pid_b * s_C_b + g * s_C_g + offs_n * s_C_n, mask=offs_n < N, other=0.0).to(CDT)

    st = st * tl.exp(dt[:, None] * A) + (dt * x)[:, None] * Bv[None, :]
    tl.store(st_ptrs, st, mask=mask_pn)
    out = tl.sum(st * Cv[None, :], axis=1)                                          # (BLOCK_P,)
    if HAS_D:
        out += x * tl.load(D_ptr + pid_h * s_D_h + offs_p * s_D_p, mask=mask_p, other=0.0).to(CDT)
    if HAS_Z:
        z = tl.load(z_ptr + pid_b * s_z_b + pid_h * s_z_h + offs_p * s_z_p, mask=mask_p, other=0.0).to(CDT)
        out = out * z * tl.sigmoid(z)
    tl.store(out_ptr + pid_b * s_o_b + pid_h * s_o_h + offs_p * s_o_p, out, mask=mask_p)


def selective_state_update(state, x, dt, A, B, C, D, z, dt_bias, dt_softplus, compute_dtype):
    """Multi-head layout only: state (batch, H, P, N), x/dt/z (batch, H, P), A (H, P, N),
    B/C (batch, G, N), D/dt_bias (H, P). Updates state in place; returns out (batch, H, P)."""
    batch, H, P, N = state.shape
    G = B.shape[1]
    out = torch.empty(batch, H, P, device=x.device, dtype=x.dtype)
    block_n = triton.next_power_of_2(N)
    block_p = max(1, min(triton.next_power_of_2(P), 4096 // block_n))
    grid = (batch, H, triton.cdiv(P, block_p))
    _state_update_kernel[grid](
        state, x, dt, A, B, C, D if D is not None else x, z if z is not None else x,
        dt_bias if dt_bias is not None else x, out,
        P, N, H // G,
        *state.stride(), *x.stride(), *dt.stride(), *A.stride(), *B.stride(), *C.stride(),
        *_strides(D, 2), *_strides(z, 3), *_strides(dt_bias, 2), *out.stride(),
        HAS_D=D is not None, HAS_Z=z is not None, HAS_BIAS=dt_bias is not None,
        SOFTPLUS=bool(dt_softplus), BLOCK_P=block_p, BLOCK_N=block_n, CDT=_tl_dtype(compute_dtype),
        num_warps=4,
    )
    return out
