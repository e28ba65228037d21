"""Triton kernels for the SSD scan (see kernels/ssd.py for the maths and the API).

Imported lazily by kernels/ssd.py, only when the Triton path runs, so that
`import kernels` works without Triton.

Per chunk of Q rows, in fp32 (fp64 for fp64 input):

    cs      = cumsum(dt * A)                                    (Q,)
    decay   = exp(cs_t - cs_s) for s <= t, 0 above               (Q, Q)
    scores  = (C B^T) * decay * dt_s                             (Q, Q)
    y       = scores x + exp(cs_t) C state0^T  [+ D x] [* silu(z)]
    state   = exp(cs_Q) state0 + (x * exp(cs_Q - cs) dt)^T B

Forward, `_ssd_fwd_kernel`: one program per (batch, head, block of P) walks the chunks of L in
order, keeping its (BLOCK_P, N) slice of the state on chip, and saves the state at the start
of every chunk, (B, H, nchunks, P, N) in fp32/fp64.

Backward, two kernels (as mamba-ssm splits its chunked scan):
  * `_ssd_bwd_state_kernel`, one program per (batch, head, block of P), walks the chunks in
    reverse carrying d(state) (the gradient reaching a chunk's start state is
    (dy * exp(cs))^T C) and saves d(state at the end of every chunk), (B, H, nchunks, P, N),
    and d(initial state). It reads dt, C and dout (and z) only.
  * `_ssd_bwd_chunk_kernel`, one program per (batch, head, chunk), all chunks in parallel:
    from the chunk's saved start state and the d(state) at its end it recomputes the chunk
    and writes every gradient. It holds a whole head, walking P in blocks inside the program,
    so that dB, dC, ddt and ddA (sums over P) are written once per head; sums over the heads
    of a group (dB, dC), over L (dA, dD) and over chunks (dD) are taken on the host
    (deterministic, no atomics).
Over the (B, L, H, P) tensors the backward makes one pass over x, two over dout (and z), one
per kernel, and writes dx (and dz) once; the chunk kernel's second walk over P reads its
tiles again right after the first (from cache). dt + dt_bias and the softplus are applied on
the host (a (B, L, H) tensor), and chained back there in the backward.

tl.dot needs every block dimension >= 16 on GPUs: Q, P and N are padded to powers of two
(>= 16) and masked. The (Q, Q) tiles live in registers, so the kernels cut chunks to at most
64 steps (32 when N > 32) whatever `chunk_size` says; that changes only rounding. The forward
splits P in blocks of 32, the backward in blocks of 32 (state passing) and 16 (chunks, with
8 warps). Offsets within a chunk are int32 from an int64 base (fewer registers than int64
offsets per element). Matmuls use tf32 tensor cores for fp32 / bf16 / fp16 input (as
mamba-ssm), exact fp64 for fp64 input.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
import triton
import triton.language as tl


@triton.jit
def _chunk_dt(dt_ptr, A, bi, hi, k, L, H, chunk_size, offs_q, IS_FP64: tl.constexpr):
    """Rows k*chunk_size ... of one (batch, head): r0, the index of the chunk's first row in
    (B*L,) (int64), the row mask, dt (Q,) and cs = cumsum(dt * A). Rows past the chunk or past
    L read dt = 0 (no decay)."""
    ACC = tl.float64 if IS_FP64 else tl.float32
    t = k * chunk_size + offs_q
    mask_q = (offs_q < chunk_size) & (t < L)
    r0 = bi * L + k * chunk_size                                         # int64
    dt = tl.load(dt_ptr + r0 * H + hi + offs_q * H, mask=mask_q, other=0.0).to(ACC)
    cs = tl.cumsum(dt * A, axis=0)
    return r0, mask_q, dt, cs


@triton.jit
def _rows(ptr, r0, heads, head, width, offs_q, offs):
    """Pointers to a (Q, len(offs)) tile of a (B*L, heads, width) tensor: rows r0 + offs_q,
    columns `offs` of one head. int64 scalar base, int32 offsets within the chunk (fewer
    registers than int64 offsets per element)."""
    return ptr + (r0 * heads + head) * width + (offs_q[:, None] * (heads * width) + offs[None, :])


@triton.jit
def _load_rows(ptr, r0, heads, head, width, offs_q, offs, mask, ACC: tl.constexpr):
    """The tile of `_rows`, masked (zeros outside), in ACC."""
    return tl.load(_rows(ptr, r0, heads, head, width, offs_q, offs), mask=mask, other=0.0).to(ACC)


@triton.jit
def _load_chunk(x_ptr, dt_ptr, B_ptr, C_ptr, A, bi, hi, gi, k, L, H, G, P, N, chunk_size,
                offs_q, offs_p, offs_n, IS_FP64: tl.constexpr):
    """Rows k*chunk_size ... of one (batch, head, P-block): r0 (see `_chunk_dt`), the masks of
    the (Q, BP) and (Q, BN) tiles, dt (Q,), x (Q, BP), B, C (Q, BN), cs = cumsum(dt * A). Rows
    past the chunk or past L load as zeros (dt = 0: no decay)."""
    ACC = tl.float64 if IS_FP64 else tl.float32
    r0, mask_q, dt, cs = _chunk_dt(dt_ptr, A, bi, hi, k, L, H, chunk_size, offs_q, IS_FP64)
    mask_qp = mask_q[:, None] & (offs_p < P)[None, :]
    mask_qn = mask_q[:, None] & (offs_n < N)[None, :]
    x = _load_rows(x_ptr, r0, H, hi, P, offs_q, offs_p, mask_qp, ACC)    # (Q, BP)
    Bm = _load_rows(B_ptr, r0, G, gi, N, offs_q, offs_n, mask_qn, ACC)   # (Q, BN)
    Cm = _load_rows(C_ptr, r0, G, gi, N, offs_q, offs_n, mask_qn, ACC)   # (Q, BN)
    return r0, mask_qp, mask_qn, dt, x, Bm, Cm, cs


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
        r0, mask_qp, mask_qn, dt, x, Bm, Cm, cs = _load_chunk(
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
        if HAS_Z:
            zz = _load_rows(z_ptr, r0, H, hi, P, offs_q, offs_p, mask_qp, ACC)
            y = y * zz * tl.sigmoid(zz)
        tl.store(_rows(y_ptr, r0, H, hi, P, offs_q, offs_p), y.to(y_ptr.dtype.element_ty), mask=mask_qp)

        # B loaded again (a cache hit) rather than kept in registers in a second layout
        w = tl.exp(total - cs) * dt                                      # (Q,)
        Bm = _load_rows(B_ptr, r0, G, gi, N, offs_q, offs_n, mask_qn, ACC)   # (Q, BN)
        state = state * tl.exp(total) + tl.dot(tl.trans(x * w[:, None]), Bm, input_precision=DOT_PREC)

    tl.store(final_ptr + (bi * H + hi) * P * N + state_off, state, mask=mask_pn)


@triton.jit
def _ssd_bwd_state_kernel(
    dt_ptr, A_ptr, C_ptr, z_ptr, dout_ptr, dfinal_ptr,                  # inputs
    dstates_ptr, dinit_ptr,                                             # outputs
    L, H, G, P, N, chunk_size, nchunks,
    HAS_Z: tl.constexpr, HAS_DFINAL: tl.constexpr, IS_FP64: tl.constexpr, DOT_PREC: tl.constexpr,
    BLOCK_Q: tl.constexpr, BLOCK_P: tl.constexpr, BLOCK_N: tl.constexpr,
):
    """Backward state passing: one program per (batch, head, P-block) walks the chunks in
    reverse, carrying d(state) across chunk boundaries:

        dstates[k] = d(loss)/d(state at the end of chunk k)                 (BP, BN)
        dstates[k-1] = exp(total_k) dstates[k] + (dy * exp(cs))^T C        over chunk k's rows

    and stores d(initial state) = the carry after chunk 0. Only dt, C and dout (and z) are
    read; the chunks' own gradients come from `_ssd_bwd_chunk_kernel`."""
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

    A = tl.load(A_ptr + hi).to(ACC)
    if HAS_DFINAL:
        dstate = tl.load(dfinal_ptr + (bi * H + hi) * P * N + state_off, mask=mask_pn, other=0.0).to(ACC)
    else:
        dstate = tl.zeros((BLOCK_P, BLOCK_N), dtype=ACC)                 # (BP, BN)

    for kk in range(0, nchunks):
        k = nchunks - 1 - kk
        r0, mask_q, dt, cs = _chunk_dt(dt_ptr, A, bi, hi, k, L, H, chunk_size, offs_q, IS_FP64)
        mask_qp = mask_q[:, None] & (offs_p < P)[None, :]
        mask_qn = mask_q[:, None] & (offs_n < N)[None, :]
        Cm = _load_rows(C_ptr, r0, G, gi, N, offs_q, offs_n, mask_qn, ACC)     # (Q, BN)
        dy = _load_rows(dout_ptr, r0, H, hi, P, offs_q, offs_p, mask_qp, ACC)  # (Q, BP)
        if HAS_Z:   # out = y * silu(z): the gradient reaching y
            zz = _load_rows(z_ptr, r0, H, hi, P, offs_q, offs_p, mask_qp, ACC)
            dy = dy * zz * tl.sigmoid(zz)
        tl.store(dstates_ptr + ((bi * H + hi) * nchunks + k) * P * N + state_off, dstate, mask=mask_pn)
        total = tl.sum(dt * A, axis=0)
        dstate = dstate * tl.exp(total) + tl.dot(tl.trans(dy * tl.exp(cs)[:, None]), Cm,
                                                 input_precision=DOT_PREC)

    tl.store(dinit_ptr + (bi * H + hi) * P * N + state_off, dstate, mask=mask_pn)


@triton.jit
def _ssd_bwd_chunk_kernel(
    x_ptr, dt_ptr, A_ptr, B_ptr, C_ptr, D_ptr, z_ptr, starts_ptr, dstates_ptr, dout_ptr,   # inputs
    dx_ptr, dz_ptr, ddt_ptr, ddA_ptr, dB_ptr, dC_ptr, dD_ptr,                              # outputs
    L, H, G, P, N, chunk_size, nchunks,
    HAS_D: tl.constexpr, D_PER_P: tl.constexpr, HAS_Z: tl.constexpr,
    IS_FP64: tl.constexpr, DOT_PREC: tl.constexpr,
    BLOCK_Q: tl.constexpr, BLOCK_P: tl.constexpr, BLOCK_N: tl.constexpr,
):
    """The gradients of one chunk, one program per (batch, head, chunk), all chunks at once:
    the chunk's start state (saved by the forward) and the d(state) at its end (from
    `_ssd_bwd_state_kernel`) make every chunk independent.

    Two walks over the head's P channels, in blocks of BLOCK_P, keep few (Q, Q) tiles alive
    at a time. The first sums over P: dy x^T (Q, Q), dy state0 and x dstate (Q, BN),
    <dstate, state0>, and dD (per (batch, head, chunk), summed on the host); from these come
    dB, dC (per head, summed over the heads of a group on the host), ddt (explicit dt
    factors) and ddA (w.r.t. dt * A). The second builds the scores and writes dx and dz per
    block; its tiles were read by the first, just before, by the same program."""
    ACC = tl.float64 if IS_FP64 else tl.float32
    pid_bh = tl.program_id(0)
    k = tl.program_id(1)
    bi = (pid_bh // H).to(tl.int64)
    hi = pid_bh % H
    gi = hi // (H // G)
    offs_q = tl.arange(0, BLOCK_Q)
    offs_n = tl.arange(0, BLOCK_N)
    causal = offs_q[:, None] >= offs_q[None, :]                          # (Q, Q) t >= s

    A = tl.load(A_ptr + hi).to(ACC)
    r0, mask_q, dt, cs = _chunk_dt(dt_ptr, A, bi, hi, k, L, H, chunk_size, offs_q, IS_FP64)
    mask_qn = mask_q[:, None] & (offs_n < N)[None, :]
    total = tl.sum(dt * A, axis=0)
    exp_cs = tl.exp(cs)
    w = tl.exp(total - cs) * dt                                          # (Q,)
    state_base = ((bi * H + hi) * nchunks + k) * P * N

    # 1. sums over P
    dyx = tl.zeros((BLOCK_Q, BLOCK_Q), dtype=ACC)                        # dy x^T [t, s]
    dy_s0 = tl.zeros((BLOCK_Q, BLOCK_N), dtype=ACC)                      # dy state0
    x_ds = tl.zeros((BLOCK_Q, BLOCK_N), dtype=ACC)                       # x dstate
    ds_s0 = tl.zeros((BLOCK_N,), dtype=ACC)                              # <dstate, state0>
    for p0 in range(0, P, BLOCK_P):
        offs_p = p0 + tl.arange(0, BLOCK_P)
        mask_p = offs_p < P
        mask_qp = mask_q[:, None] & mask_p[None, :]
        mask_pn = mask_p[:, None] & (offs_n < N)[None, :]
        state_off = offs_p[:, None] * N + offs_n[None, :]               # (BP, BN)
        x = _load_rows(x_ptr, r0, H, hi, P, offs_q, offs_p, mask_qp, ACC)      # (Q, BP)
        dy = _load_rows(dout_ptr, r0, H, hi, P, offs_q, offs_p, mask_qp, ACC)  # (Q, BP)
        if HAS_Z:   # out = y * silu(z): the gradient reaching y
            zz = _load_rows(z_ptr, r0, H, hi, P, offs_q, offs_p, mask_qp, ACC)
            dy = dy * zz * tl.sigmoid(zz)
        state0 = tl.load(starts_ptr + state_base + state_off, mask=mask_pn, other=0.0).to(ACC)   # (BP, BN)
        dstate = tl.load(dstates_ptr + state_base + state_off, mask=mask_pn, other=0.0).to(ACC)  # (BP, BN)
        dyx += tl.dot(dy, tl.trans(x), input_precision=DOT_PREC)
        dy_s0 += tl.dot(dy, state0, input_precision=DOT_PREC)
        x_ds += tl.dot(x, dstate, input_precision=DOT_PREC)
        ds_s0 += tl.sum(dstate * state0, axis=0)
        if HAS_D:   # summed over P on the host if D is (H,)
            tl.store(dD_ptr + ((bi * H + hi) * nchunks + k) * P + offs_p, tl.sum(dy * x, axis=0), mask=mask_p)

    # 2. dC, dB, ddt, ddA of this head
    Bm = _load_rows(B_ptr, r0, G, gi, N, offs_q, offs_n, mask_qn, ACC)   # (Q, BN)
    Cm = _load_rows(C_ptr, r0, G, gi, N, offs_q, offs_n, mask_qn, ACC)   # (Q, BN)
    CB = tl.dot(Cm, tl.trans(Bm), input_precision=DOT_PREC)              # (Q, Q)
    decay = tl.exp(tl.where(causal, cs[:, None] - cs[None, :], float("-inf")))   # (Q, Q)
    Gd = dyx * decay                                                     # (Q, Q)
    dC = tl.dot(Gd * dt[None, :], Bm, input_precision=DOT_PREC) + dy_s0 * exp_cs[:, None]
    dB = (tl.dot(tl.trans(Gd), Cm, input_precision=DOT_PREC) * dt[:, None]  # (Gd dt)^T C
          + x_ds * w[:, None])
    tl.store(_rows(dC_ptr, r0, H, hi, N, offs_q, offs_n), dC, mask=mask_qn)
    tl.store(_rows(dB_ptr, r0, H, hi, N, offs_q, offs_n), dB, mask=mask_qn)

    # dt: explicit factors dt_s, and through cs = cumsum(dt * A) (and total = cs at the end).
    # Pm = Gd * CB * dt_s is d(loss)/d(log decay): its row and column sums come from the same
    # tile, so that they cancel as they should.
    GC = Gd * CB                                                         # (Q, Q)
    Pm = GC * dt[None, :]
    kx = tl.sum(x_ds * Bm, axis=1)                                       # (Q,) <dstate, x_s ⊗ B_s>
    ddt = tl.sum(GC, axis=0) + tl.exp(total - cs) * kx
    dcs = tl.sum(Pm, axis=1) - tl.sum(Pm, axis=0) + exp_cs * tl.sum(dy_s0 * Cm, axis=1) - w * kx
    dtotal = tl.exp(total) * tl.sum(ds_s0, axis=0) + tl.sum(w * kx, axis=0)
    ddA = tl.sum(dcs, axis=0) - tl.cumsum(dcs, axis=0) + dcs + dtotal   # reverse cumsum
    tl.store(ddt_ptr + r0 * H + hi + offs_q * H, ddt, mask=mask_q)
    tl.store(ddA_ptr + r0 * H + hi + offs_q * H, ddA, mask=mask_q)

    # 3. dx (through the scores, the state at the chunk end and D) and dz, per P-block. B and C
    # are loaded again for each use (cache hits) rather than kept in registers in several layouts.
    scores = CB * decay * dt[None, :]                                    # (Q, Q)
    Bm = _load_rows(B_ptr, r0, G, gi, N, offs_q, offs_n, mask_qn, ACC)   # (Q, BN)
    if HAS_Z:
        Cm = _load_rows(C_ptr, r0, G, gi, N, offs_q, offs_n, mask_qn, ACC)     # (Q, BN)
    for p0 in range(0, P, BLOCK_P):
        offs_p = p0 + tl.arange(0, BLOCK_P)
        mask_p = offs_p < P
        mask_qp = mask_q[:, None] & mask_p[None, :]
        mask_pn = mask_p[:, None] & (offs_n < N)[None, :]
        state_off = offs_p[:, None] * N + offs_n[None, :]               # (BP, BN)
        dy = _load_rows(dout_ptr, r0, H, hi, P, offs_q, offs_p, mask_qp, ACC)  # (Q, BP)
        dstate = tl.load(dstates_ptr + state_base + state_off, mask=mask_pn, other=0.0).to(ACC)  # (BP, BN)
        if HAS_D:
            if D_PER_P:
                Dv = tl.load(D_ptr + hi * P + offs_p, mask=mask_p, other=0.0).to(ACC)[None, :]
            else:
                Dv = tl.load(D_ptr + hi).to(ACC)
        if HAS_Z:   # recompute y (before the gate)
            x = _load_rows(x_ptr, r0, H, hi, P, offs_q, offs_p, mask_qp, ACC)
            state0 = tl.load(starts_ptr + state_base + state_off, mask=mask_pn, other=0.0).to(ACC)
            y = tl.dot(scores, x, input_precision=DOT_PREC)
            y += tl.dot(Cm, tl.trans(state0), input_precision=DOT_PREC) * exp_cs[:, None]
            if HAS_D:
                y += x * Dv
            zz = _load_rows(z_ptr, r0, H, hi, P, offs_q, offs_p, mask_qp, ACC)
            sig = tl.sigmoid(zz)
            tl.store(_rows(dz_ptr, r0, H, hi, P, offs_q, offs_p),
                     (dy * y * sig * (1 + zz * (1 - sig))).to(dz_ptr.dtype.element_ty), mask=mask_qp)
            dy = dy * zz * sig
        dx = tl.dot(tl.trans(scores), dy, input_precision=DOT_PREC)
        dx += tl.dot(Bm, tl.trans(dstate), input_precision=DOT_PREC) * w[:, None]
        if HAS_D:
            dx += dy * Dv
        tl.store(_rows(dx_ptr, r0, H, hi, P, offs_q, offs_p), dx.to(dx_ptr.dtype.element_ty), mask=mask_qp)


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
    # loads issued one chunk ahead (2 stages): B is loaded twice per chunk (see the kernel), and
    # a third stage would buffer both copies (up to 65 KB of shared memory, d64 fp32)
    _ssd_fwd_kernel[grid](
        x, dtp, A, B, C, Dc, zc, init, y, starts, final,
        L, h, g, p, n, Q, nc,
        HAS_D=D is not None, D_PER_P=D is not None and D.dim() == 2, HAS_Z=z is not None,
        HAS_INIT=initial_states is not None, IS_FP64=cdt == torch.float64, DOT_PREC=prec,
        **blocks, num_stages=2)
    return y, final, starts


def ssd_bwd(dout, dfinal, x, dt, A, B, C, chunk_size, D, z, dt_bias, initial_states,
            dt_softplus, starts):
    """Gradients w.r.t. (x, dt, A, B, C, D, z, dt_bias, initial_states); None where absent.

    Two kernels: `_ssd_bwd_state_kernel` carries d(state) back across the chunks (sequential
    over chunks, reads dt, C and dout), then `_ssd_bwd_chunk_kernel` computes every chunk's
    gradients in parallel from its start state and the d(state) at its end."""
    b, L, h, p, g, n, cdt, Q, nc, prec, blocks = _setup(x, B, chunk_size)
    dt_in = _dt_in(dt, dt_bias, cdt)                                       # (B, L, H)
    dtp = (F.softplus(dt_in) if dt_softplus else dt_in).contiguous()
    xc, Bc, Cc = x.contiguous(), B.contiguous(), C.contiguous()
    Ac = A.to(cdt).contiguous()
    Dc = D.to(cdt).contiguous() if D is not None else Ac
    zc = z.contiguous() if z is not None else xc
    dout = (dout if dout is not None else torch.zeros_like(x)).contiguous()
    dfin = dfinal.to(cdt).contiguous() if dfinal is not None else Ac
    flags = dict(HAS_Z=z is not None, IS_FP64=cdt == torch.float64, DOT_PREC=prec)
    BQ, BN = blocks["BLOCK_Q"], blocks["BLOCK_N"]

    # 1. d(state) at the end of every chunk, and d(initial state). A light loop: 4 warps, its
    # loads issued one chunk ahead (2 stages; with 3, ptxas spilled 8 B in some builds).
    BP = blocks["BLOCK_P"]
    dstates = x.new_empty(b, h, nc, p, n, dtype=cdt)                       # (B, H, nc, P, N)
    dinit = x.new_empty(b, h, p, n, dtype=cdt)                             # (B, H, P, N)
    _ssd_bwd_state_kernel[(b * h, triton.cdiv(p, BP))](
        dtp, Ac, Cc, zc, dout, dfin, dstates, dinit,
        L, h, g, p, n, Q, nc,
        HAS_DFINAL=dfinal is not None, **flags,
        BLOCK_Q=BQ, BLOCK_P=BP, BLOCK_N=BN, num_warps=4, num_stages=2)

    # 2. every chunk at once; a head's P channels in blocks of 16 inside one program. 8 warps
    # spread its (Q, Q) tiles (at Q = 32 too: with 4 warps, N = 64 spills).
    dx = torch.empty_like(xc)
    dz = torch.empty_like(zc) if z is not None else xc
    ddt = x.new_empty(b, L, h, dtype=cdt)                                  # explicit dt factors
    ddA = x.new_empty(b, L, h, dtype=cdt)                                  # w.r.t. dt * A
    dB_h = x.new_empty(b, L, h, n, dtype=cdt)                              # per head
    dC_h = x.new_empty(b, L, h, n, dtype=cdt)
    dD_part = x.new_empty(b, h, nc, p, dtype=cdt) if D is not None else Ac
    _ssd_bwd_chunk_kernel[(b * h, nc)](
        xc, dtp, Ac, Bc, Cc, Dc, zc, starts, dstates, dout,
        dx, dz, ddt, ddA, dB_h, dC_h, dD_part,
        L, h, g, p, n, Q, nc,
        HAS_D=D is not None, D_PER_P=D is not None and D.dim() == 2, **flags,
        BLOCK_Q=BQ, BLOCK_P=_block(p, 16), BLOCK_N=BN, num_warps=8)

    # reductions over the heads of a group; the dt chain rule
    ddt = ddt + ddA * Ac                                                   # d/d(dt after softplus)
    dA = (ddA * dtp).sum((0, 1))
    if dt_softplus:   # F.softplus: identity above 20
        ddt = ddt * torch.where(dt_in > 20, torch.ones_like(dt_in), torch.sigmoid(dt_in))
    ddt_bias = ddt.sum((0, 1)).to(dt_bias.dtype) if dt_bias is not None else None
    dB = dB_h.reshape(b, L, g, h // g, n).sum(3)                           # (B, L, G, N)
    dC = dC_h.reshape(b, L, g, h // g, n).sum(3)
    dD = None
    if D is not None:
        dD = dD_part.sum((0, 2))                                           # (H, P)
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
