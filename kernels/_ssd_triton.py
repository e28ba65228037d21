"""Triton kernels for the SSD scan (see kernels/ssd.py for the maths and the API).

Imported lazily by kernels/ssd.py, only when the Triton path runs, so that
`import kernels` works without Triton.

One program per (batch, head, block of P). It walks the chunks of L in order, keeping its
(BLOCK_P, N) slice of the state on chip. Per chunk (Q rows), in fp32 (fp64 for fp64 input):

    cs      = cumsum(dt * A)                                    (Q,)
    decay   = exp(cs_t - cs_s) for s <= t, 0 above               (Q, Q)
    scores  = (C B^T) * decay * dt_s                             (Q, Q)
    y       = scores x + exp(cs_t) C state0^T  [+ D x] [* silu(z)]
    state   = exp(cs_Q) state0 + (x * exp(cs_Q - cs) dt)^T B

The forward saves the state at the start of every chunk, (B, H, nchunks, P, N) in fp32/fp64.
The backward walks the chunks in reverse carrying d(state), recomputing each chunk from its
saved start state. Gradients that sum over P and over the heads of a group (dB, dC, ddt, dA)
are written per P-block and per head, then summed on the host (deterministic, no atomics).
dt + dt_bias and the softplus are applied on the host (a (B, L, H) tensor), and chained
back there in the backward.

tl.dot needs every block dimension >= 16 on GPUs: Q, P and N are padded to powers of two
(>= 16) and masked. The (Q, Q) tiles live in registers, so the kernels cut chunks to at most
64 steps (32 when N > 32) whatever `chunk_size` says; that changes only rounding. P is split
in blocks of 32 (16 in the backward, which runs 8 warps). Matmuls use tf32 tensor cores for
fp32 / bf16 / fp16 input (as mamba-ssm), exact fp64 for fp64 input.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
import triton
import triton.language as tl


@triton.jit
def _load_chunk(x_ptr, dt_ptr, B_ptr, C_ptr, A, bi, hi, gi, k, L, H, G, P, N, chunk_size,
                offs_q, offs_p, offs_n, IS_FP64: tl.constexpr):
    """Rows k*chunk_size ... of one (batch, head, P-block): dt (Q,), x (Q, BP), B, C (Q, BN),
    cs = cumsum(dt * A). Rows past the chunk or past L load as zeros (dt = 0: no decay)."""
    ACC = tl.float64 if IS_FP64 else tl.float32
    t = k * chunk_size + offs_q
    mask_q = (offs_q < chunk_size) & (t < L)
    row = bi * L + t                                                     # (Q,) int64
    mask_qp = mask_q[:, None] & (offs_p < P)[None, :]
    mask_qn = mask_q[:, None] & (offs_n < N)[None, :]
    dt = tl.load(dt_ptr + row * H + hi, mask=mask_q, other=0.0).to(ACC)
    x = tl.load(x_ptr + (row[:, None] * H + hi) * P + offs_p[None, :], mask=mask_qp, other=0.0).to(ACC)
    Bm = tl.load(B_ptr + (row[:, None] * G + gi) * N + offs_n[None, :], mask=mask_qn, other=0.0).to(ACC)
    Cm = tl.load(C_ptr + (row[:, None] * G + gi) * N + offs_n[None, :], mask=mask_qn, other=0.0).to(ACC)
    cs = tl.cumsum(dt * A, axis=0)
    return t, mask_qp, dt, x, Bm, Cm, cs


@triton.jit
def _ssd_fwd_kernel(
    x_ptr, dt_ptr, A_ptr, B_ptr, C_ptr, D_ptr, z_ptr, init_ptr,        # inputs
    y_ptr, starts_ptr, final_ptr,                                       # outputs
    L, H, G, P, N, chunk_size, nchunks,
    HAS_D: tl.constexpr, D_PER_P: tl.constexpr, HAS_Z: tl.constexpr, HAS_INIT: tl.constexpr,
    IS_FP64: tl.constexpr, DOT_PREC: tl.constexpr,
    BLOCK_Q: tl.constexpr, BLOCK_P: tl.constexpr, BLOCK_N: tl.constexpr,
):
    ACC = tl.float64 if IS_FP64 else tl.float32
    pid_bh = tl.program_id(0)
    pid_p = tl.program_id(1)
    bi = (pid_bh // H).to(tl.int64)
    hi = pid_bh % H
    gi = hi // (H // G)
    offs_q = tl.arange(0, BLOCK_Q)
    offs_p = pid_p * BLOCK_P + tl.arange(0, BLOCK_P)
    offs_n = tl.arange(0, BLOCK_N)
    mask_pn = (offs_p < P)[:, None] & (offs_n < N)[None, :]
    state_off = offs_p[:, None] * N + offs_n[None, :]                   # (BP, BN)
    causal = offs_q[:, None] >= offs_q[None, :]                          # (Q, Q) t >= s

    A = tl.load(A_ptr + hi).to(ACC)
    if HAS_D:
        if D_PER_P:
            Dv = tl.load(D_ptr + hi * P + offs_p, mask=offs_p < P, other=0.0).to(ACC)
        else:
            Dv = tl.load(D_ptr + hi).to(ACC)
    if HAS_INIT:
        state = tl.load(init_ptr + (bi * H + hi) * P * N + state_off, mask=mask_pn, other=0.0).to(ACC)
    else:
        state = tl.zeros((BLOCK_P, BLOCK_N), dtype=ACC)                  # (BP, BN)

    for k in range(0, nchunks):
        t, mask_qp, dt, x, Bm, Cm, cs = _load_chunk(
            x_ptr, dt_ptr, B_ptr, C_ptr, A, bi, hi, gi, k, L, H, G, P, N, chunk_size,
            offs_q, offs_p, offs_n, IS_FP64)
        total = tl.sum(dt * A, axis=0)                                   # cs at the chunk end
        tl.store(starts_ptr + ((bi * H + hi) * nchunks + k) * P * N + state_off, state, mask=mask_pn)

        decay = tl.exp(tl.where(causal, cs[:, None] - cs[None, :], float("-inf")))   # (Q, Q)
        CB = tl.dot(Cm, tl.trans(Bm), input_precision=DOT_PREC)          # (Q, Q)
        scores = CB * decay * dt[None, :]
        y = tl.dot(scores, x, input_precision=DOT_PREC)                  # (Q, BP)
        y += tl.dot(Cm, tl.trans(state), input_precision=DOT_PREC) * tl.exp(cs)[:, None]
        if HAS_D:
            if D_PER_P:
                y += x * Dv[None, :]
            else:
                y += x * Dv
        out_off = ((bi * L + t[:, None]) * H + hi) * P + offs_p[None, :]
        if HAS_Z:
            zz = tl.load(z_ptr + out_off, mask=mask_qp, other=0.0).to(ACC)
            y = y * zz * tl.sigmoid(zz)
        tl.store(y_ptr + out_off, y.to(y_ptr.dtype.element_ty), mask=mask_qp)

        w = tl.exp(total - cs) * dt                                      # (Q,)
        state = state * tl.exp(total) + tl.dot(tl.trans(x * w[:, None]), Bm, input_precision=DOT_PREC)

    tl.store(final_ptr + (bi * H + hi) * P * N + state_off, state, mask=mask_pn)


@triton.jit
def _ssd_bwd_kernel(
    x_ptr, dt_ptr, A_ptr, B_ptr, C_ptr, D_ptr, z_ptr, starts_ptr, dout_ptr, dfinal_ptr,  # inputs
    dx_ptr, dz_ptr, ddt_ptr, ddA_ptr, dB_ptr, dC_ptr, dD_ptr, dinit_ptr,                 # outputs
    NB, L, H, G, P, N, chunk_size, nchunks,
    HAS_D: tl.constexpr, D_PER_P: tl.constexpr, HAS_Z: tl.constexpr, HAS_DFINAL: tl.constexpr,
    IS_FP64: tl.constexpr, DOT_PREC: tl.constexpr,
    BLOCK_Q: tl.constexpr, BLOCK_P: tl.constexpr, BLOCK_N: tl.constexpr,
):
    """Reverse walk over chunks. `dstate` is the gradient w.r.t. the state at the END of the
    current chunk. Per-P-block partials: ddt (explicit dt factors), ddA (w.r.t. dt*A),
    dB, dC, laid out (num_P_blocks, B, L, H[, N])."""
    ACC = tl.float64 if IS_FP64 else tl.float32
    pid_bh = tl.program_id(0)
    pid_p = tl.program_id(1)
    bi = (pid_bh // H).to(tl.int64)
    hi = pid_bh % H
    gi = hi // (H // G)
    offs_q = tl.arange(0, BLOCK_Q)
    offs_p = pid_p * BLOCK_P + tl.arange(0, BLOCK_P)
    offs_n = tl.arange(0, BLOCK_N)
    mask_pn = (offs_p < P)[:, None] & (offs_n < N)[None, :]
    state_off = offs_p[:, None] * N + offs_n[None, :]
    causal = offs_q[:, None] >= offs_q[None, :]

    A = tl.load(A_ptr + hi).to(ACC)
    if HAS_D:
        if D_PER_P:
            Dv = tl.load(D_ptr + hi * P + offs_p, mask=offs_p < P, other=0.0).to(ACC)
        else:
            Dv = tl.load(D_ptr + hi).to(ACC)
    dD_acc = tl.zeros((BLOCK_P,), dtype=ACC)
    if HAS_DFINAL:
        dstate = tl.load(dfinal_ptr + (bi * H + hi) * P * N + state_off, mask=mask_pn, other=0.0).to(ACC)
    else:
        dstate = tl.zeros((BLOCK_P, BLOCK_N), dtype=ACC)                 # (BP, BN)

    for kk in range(0, nchunks):
        k = nchunks - 1 - kk
        t, mask_qp, dt, x, Bm, Cm, cs = _load_chunk(
            x_ptr, dt_ptr, B_ptr, C_ptr, A, bi, hi, gi, k, L, H, G, P, N, chunk_size,
            offs_q, offs_p, offs_n, IS_FP64)
        mask_q = (offs_q < chunk_size) & (t < L)
        total = tl.sum(dt * A, axis=0)
        state0 = tl.load(starts_ptr + ((bi * H + hi) * nchunks + k) * P * N + state_off,
                         mask=mask_pn, other=0.0).to(ACC)                # (BP, BN)
        exp_cs = tl.exp(cs)
        w = tl.exp(total - cs) * dt                                      # (Q,)

        # recompute the chunk's forward pieces
        decay = tl.exp(tl.where(causal, cs[:, None] - cs[None, :], float("-inf")))   # (Q, Q)
        CB = tl.dot(Cm, tl.trans(Bm), input_precision=DOT_PREC)          # (Q, Q)
        scores = CB * decay * dt[None, :]
        Cs0 = tl.dot(Cm, tl.trans(state0), input_precision=DOT_PREC)     # (Q, BP)

        out_off = ((bi * L + t[:, None]) * H + hi) * P + offs_p[None, :]
        dy = tl.load(dout_ptr + out_off, mask=mask_qp, other=0.0).to(ACC)
        if HAS_Z:   # out = y * silu(z): recompute y (before the gate)
            y = tl.dot(scores, x, input_precision=DOT_PREC) + Cs0 * exp_cs[:, None]
            if HAS_D:
                if D_PER_P:
                    y += x * Dv[None, :]
                else:
                    y += x * Dv
            zz = tl.load(z_ptr + out_off, mask=mask_qp, other=0.0).to(ACC)
            sig = tl.sigmoid(zz)
            tl.store(dz_ptr + out_off, (dy * y * sig * (1 + zz * (1 - sig))).to(dz_ptr.dtype.element_ty),
                     mask=mask_qp)
            dy = dy * zz * sig

        # dx: through the scores, through the state at the chunk end, and through D
        Bds = tl.dot(Bm, tl.trans(dstate), input_precision=DOT_PREC)     # (Q, BP)
        dx = tl.dot(tl.trans(scores), dy, input_precision=DOT_PREC) + Bds * w[:, None]
        if HAS_D:
            if D_PER_P:
                dx += dy * Dv[None, :]
            else:
                dx += dy * Dv
            dD_acc += tl.sum(dy * x, axis=0)                             # summed over P on the host if D is (H,)
        tl.store(dx_ptr + out_off, dx.to(dx_ptr.dtype.element_ty), mask=mask_qp)

        # dC, dB (partial sums over this P-block)
        dyx = tl.dot(dy, tl.trans(x), input_precision=DOT_PREC)          # (Q, Q) [t, s]
        Gd = dyx * decay                                                 # (Q, Q)
        Gm = Gd * dt[None, :]
        dC = tl.dot(Gm, Bm, input_precision=DOT_PREC) + tl.dot(dy, state0, input_precision=DOT_PREC) * exp_cs[:, None]
        dB = tl.dot(tl.trans(Gm), Cm, input_precision=DOT_PREC) + tl.dot(x, dstate, input_precision=DOT_PREC) * w[:, None]
        part = ((pid_p * NB + bi) * L + t) * H + hi                      # (Q,)
        mask_qn = mask_q[:, None] & (offs_n < N)[None, :]
        tl.store(dC_ptr + part[:, None] * N + offs_n[None, :], dC, mask=mask_qn)
        tl.store(dB_ptr + part[:, None] * N + offs_n[None, :], dB, mask=mask_qn)

        # dt: explicit factors dt_s, and through cs = cumsum(dt * A) (and total = cs at the end)
        Pm = Gd * CB * dt[None, :]                                       # d(loss)/d(log decay)
        kx = tl.sum(x * Bds, axis=1)                                     # (Q,) <dstate, x_s ⊗ B_s>
        ddt = tl.sum(Gd * CB, axis=0) + tl.exp(total - cs) * kx
        dcs = tl.sum(Pm, axis=1) - tl.sum(Pm, axis=0) + exp_cs * tl.sum(dy * Cs0, axis=1) - w * kx
        dtotal = tl.exp(total) * tl.sum(tl.sum(dstate * state0, axis=1), axis=0) + tl.sum(w * kx, axis=0)
        ddA = tl.sum(dcs, axis=0) - tl.cumsum(dcs, axis=0) + dcs + dtotal   # reverse cumsum
        tl.store(ddt_ptr + part, ddt, mask=mask_q)
        tl.store(ddA_ptr + part, ddA, mask=mask_q)

        # carry d(state) to the end of the previous chunk
        dstate = dstate * tl.exp(total) + tl.dot(tl.trans(dy * exp_cs[:, None]), Cm, input_precision=DOT_PREC)

    tl.store(dinit_ptr + (bi * H + hi) * P * N + state_off, dstate, mask=mask_pn)
    if HAS_D:
        tl.store(dD_ptr + (bi * H + hi) * P + offs_p, dD_acc, mask=offs_p < P)


@triton.jit
def _ssd_step_kernel(
    state_ptr, x_ptr, dt_ptr, A_ptr, B_ptr, C_ptr, D_ptr, z_ptr, y_ptr,
    H, G, P, N,
    HAS_D: tl.constexpr, D_PER_P: tl.constexpr, HAS_Z: tl.constexpr, IS_FP64: tl.constexpr,
    BLOCK_P: tl.constexpr, BLOCK_N: tl.constexpr,
):
    """One token: state = exp(dt A) state + dt x ⊗ B (in place); y = state C + D x [* silu(z)]."""
    ACC = tl.float64 if IS_FP64 else tl.float32
    pid_bh = tl.program_id(0)
    pid_p = tl.program_id(1)
    bi = (pid_bh // H).to(tl.int64)
    hi = pid_bh % H
    gi = hi // (H // G)
    offs_p = pid_p * BLOCK_P + tl.arange(0, BLOCK_P)
    offs_n = tl.arange(0, BLOCK_N)
    mask_p = offs_p < P
    mask_n = offs_n < N
    mask_pn = mask_p[:, None] & mask_n[None, :]
    s_ptrs = state_ptr + (pid_bh.to(tl.int64) * P + offs_p[:, None]) * N + offs_n[None, :]
    state = tl.load(s_ptrs, mask=mask_pn, other=0.0).to(ACC)             # (BP, BN)
    x = tl.load(x_ptr + pid_bh.to(tl.int64) * P + offs_p, mask=mask_p, other=0.0).to(ACC)
    dt = tl.load(dt_ptr + pid_bh).to(ACC)
    A = tl.load(A_ptr + hi).to(ACC)
    Bv = tl.load(B_ptr + (bi * G + gi) * N + offs_n, mask=mask_n, other=0.0).to(ACC)
    Cv = tl.load(C_ptr + (bi * G + gi) * N + offs_n, mask=mask_n, other=0.0).to(ACC)

    state = state * tl.exp(dt * A) + (dt * x)[:, None] * Bv[None, :]
    tl.store(s_ptrs, state.to(state_ptr.dtype.element_ty), mask=mask_pn)
    y = tl.sum(state * Cv[None, :], axis=1)                              # (BP,)
    if HAS_D:
        if D_PER_P:
            y += x * tl.load(D_ptr + hi * P + offs_p, mask=mask_p, other=0.0).to(ACC)
        else:
            y += x * tl.load(D_ptr + hi).to(ACC)
    if HAS_Z:
        zz = tl.load(z_ptr + pid_bh.to(tl.int64) * P + offs_p, mask=mask_p, other=0.0).to(ACC)
        y = y * zz * tl.sigmoid(zz)
    tl.store(y_ptr + pid_bh.to(tl.int64) * P + offs_p, y.to(y_ptr.dtype.element_ty), mask=mask_p)


# --------------------------------------------------------------------------------------
# Host side
# --------------------------------------------------------------------------------------


MAX_CHUNK = 64  # longest chunk the kernels process at once (32 when N > 32)


def _block(v: int, cap: int = 1 << 30) -> int:
    """Power of two >= max(v, 16) (tl.dot's minimum), at most `cap`."""
    return min(max(16, triton.next_power_of_2(v)), cap)


def _dt_in(dt, dt_bias, cdt):
    """dt + dt_bias in the compute dtype, (B, L, H) or (B, H); softplus is applied by callers."""
    dt = dt.to(cdt)
    return dt + dt_bias.to(cdt) if dt_bias is not None else dt


def _setup(x, B, chunk_size):
    """Shapes, compute dtype, the kernel's chunk length Q, tile sizes and launch settings."""
    b, L, h, p = x.shape
    g, n = B.shape[2], B.shape[3]
    cdt = torch.float64 if x.dtype == torch.float64 else torch.float32
    # (Q, Q) tiles live in registers: longer chunks are cut (same result up to rounding)
    Q = min(chunk_size, L, MAX_CHUNK if n <= 32 else MAX_CHUNK // 2)
    nc = triton.cdiv(L, Q)
    # tf32 tensor cores for fp32 / bf16 / fp16 input (as mamba-ssm's kernels); fp64 exact
    prec = "ieee" if x.dtype == torch.float64 else "tf32"
    blocks = dict(BLOCK_Q=_block(Q), BLOCK_P=_block(p, 32), BLOCK_N=_block(n))
    num_warps = 8 if blocks["BLOCK_Q"] >= 64 or blocks["BLOCK_N"] >= 128 else 4
    return b, L, h, p, g, n, cdt, Q, nc, prec, dict(blocks, num_warps=num_warps)


def ssd_fwd(x, dt, A, B, C, chunk_size, D, z, dt_bias, initial_states, dt_softplus):
    """Returns y (x.dtype), final states and chunk-start states (B, H, nchunks, P, N), fp32/fp64."""
    b, L, h, p, g, n, cdt, Q, nc, prec, blocks = _setup(x, B, chunk_size)
    dtp = _dt_in(dt, dt_bias, cdt)
    dtp = (F.softplus(dtp) if dt_softplus else dtp).contiguous()           # (B, L, H)
    x, B, C = x.contiguous(), B.contiguous(), C.contiguous()
    A = A.to(cdt).contiguous()
    Dc = D.to(cdt).contiguous() if D is not None else A
    zc = z.contiguous() if z is not None else x
    init = initial_states.to(cdt).contiguous() if initial_states is not None else A

    y = torch.empty_like(x)                                                # (B, L, H, P)
    starts = x.new_empty(b, h, nc, p, n, dtype=cdt)                        # (B, H, nc, P, N)
    final = x.new_empty(b, h, p, n, dtype=cdt)                             # (B, H, P, N)
    grid = (b * h, triton.cdiv(p, blocks["BLOCK_P"]))             # (batch * head, P-block)
    _ssd_fwd_kernel[grid](
        x, dtp, A, B, C, Dc, zc, init, y, starts, final,
        L, h, g, p, n, Q, nc,
        HAS_D=D is not None, D_PER_P=D is not None and D.dim() == 2, HAS_Z=z is not None,
        HAS_INIT=initial_states is not None, IS_FP64=cdt == torch.float64, DOT_PREC=prec,
        **blocks)
    return y, final, starts


def ssd_bwd(dout, dfinal, x, dt, A, B, C, chunk_size, D, z, dt_bias, initial_states,
            dt_softplus, starts):
    """Gradients w.r.t. (x, dt, A, B, C, D, z, dt_bias, initial_states); None where absent."""
    b, L, h, p, g, n, cdt, Q, nc, prec, blocks = _setup(x, B, chunk_size)
    dt_in = _dt_in(dt, dt_bias, cdt)                                       # (B, L, H)
    dtp = (F.softplus(dt_in) if dt_softplus else dt_in).contiguous()
    xc, Bc, Cc = x.contiguous(), B.contiguous(), C.contiguous()
    Ac = A.to(cdt).contiguous()
    Dc = D.to(cdt).contiguous() if D is not None else Ac
    zc = z.contiguous() if z is not None else xc
    dout = (dout if dout is not None else torch.zeros_like(x)).contiguous()
    dfin = dfinal.to(cdt).contiguous() if dfinal is not None else Ac

    # The backward keeps about twice the forward's live tiles: P blocks of 16 and 8 warps cut its
    # spills (e.g. 272 -> 32 B per thread at N = 64, 3968 -> 592 B in the Drama bf16 build on
    # sm_80, scripts/gpu_compile.py), at the price of twice the P-block partials when P > 16.
    blocks = dict(blocks, BLOCK_P=min(blocks["BLOCK_P"], 16), num_warps=8)
    npb = triton.cdiv(p, blocks["BLOCK_P"])
    dx = torch.empty_like(xc)
    dz = torch.empty_like(zc) if z is not None else xc
    ddt_part = x.new_empty(npb, b, L, h, dtype=cdt)
    ddA_part = x.new_empty(npb, b, L, h, dtype=cdt)
    dB_part = x.new_empty(npb, b, L, h, n, dtype=cdt)
    dC_part = x.new_empty(npb, b, L, h, n, dtype=cdt)
    dD_part = x.new_empty(b, h, p, dtype=cdt) if D is not None else Ac
    dinit = x.new_empty(b, h, p, n, dtype=cdt)
    _ssd_bwd_kernel[(b * h, npb)](
        xc, dtp, Ac, Bc, Cc, Dc, zc, starts, dout, dfin,
        dx, dz, ddt_part, ddA_part, dB_part, dC_part, dD_part, dinit,
        b, L, h, g, p, n, Q, nc,
        HAS_D=D is not None, D_PER_P=D is not None and D.dim() == 2, HAS_Z=z is not None,
        HAS_DFINAL=dfinal is not None, IS_FP64=cdt == torch.float64, DOT_PREC=prec,
        **blocks)

    # reductions over P-blocks and over the heads of a group; the dt chain rule
    ddA = ddA_part.sum(0)                                                  # (B, L, H)
    ddt = ddt_part.sum(0) + ddA * Ac                                       # d/d(dt after softplus)
    dA = (ddA * dtp).sum((0, 1))
    if dt_softplus:   # F.softplus: identity above 20
        ddt = ddt * torch.where(dt_in > 20, torch.ones_like(dt_in), torch.sigmoid(dt_in))
    ddt_bias = ddt.sum((0, 1)).to(dt_bias.dtype) if dt_bias is not None else None
    dB = dB_part.sum(0).reshape(b, L, g, h // g, n).sum(3)                 # (B, L, G, N)
    dC = dC_part.sum(0).reshape(b, L, g, h // g, n).sum(3)
    dD = None
    if D is not None:
        dD = dD_part.sum(0)                                                # (H, P)
        dD = (dD if D.dim() == 2 else dD.sum(1)).to(D.dtype)
    return (dx, ddt.to(dt.dtype), dA.to(A.dtype), dB.to(B.dtype), dC.to(C.dtype), dD,
            dz if z is not None else None, ddt_bias,
            dinit.to(initial_states.dtype) if initial_states is not None else None)


def ssd_step(state, x, dt, A, B, C, D, z, dt_bias, dt_softplus):
    """One token; updates `state` (B, H, P, N) in place and returns y (B, H, P)."""
    b, h, p = x.shape
    g, n = B.shape[1], B.shape[2]
    cdt = torch.float64 if x.dtype == torch.float64 else torch.float32
    dtp = _dt_in(dt, dt_bias, cdt)
    dtp = (F.softplus(dtp) if dt_softplus else dtp).contiguous()           # (B, H)
    s = state if state.is_contiguous() else state.contiguous()
    xc, Bc, Cc = x.contiguous(), B.contiguous(), C.contiguous()
    Ac = A.to(cdt).contiguous()
    Dc = D.to(cdt).contiguous() if D is not None else Ac
    zc = z.contiguous() if z is not None else xc
    y = torch.empty_like(xc)
    BLOCK_P = _block(p, 32)
    _ssd_step_kernel[(b * h, triton.cdiv(p, BLOCK_P))](
        s, xc, dtp, Ac, Bc, Cc, Dc, zc, y, h, g, p, n,
        HAS_D=D is not None, D_PER_P=D is not None and D.dim() == 2, HAS_Z=z is not None,
        IS_FP64=cdt == torch.float64, BLOCK_P=BLOCK_P, BLOCK_N=_block(n))
    if s is not state:
        state.copy_(s)
    return y
