"""Mamba-2 (Dao & Gu 2024): the SSD mixer, and a pre-norm residual block on it.

    z, xBC, dt = in_proj(u).split(d_inner, d_inner + 2 G N, H)
    xBC        = silu(causal depthwise conv1d(xBC))          kernel d_conv, per channel
    x, B, C    = xBC.split(d_inner, G N, G N)                x (B, L, H, P); B, C (B, L, G, N)
    y          = ssd_scan(x, dt, A, B, C, D)                 per head h (scalar A_h < 0):
                 state_t = exp(dt_t A_h) state_{t-1} + dt_t x_t B_t^T,  y_t = state_t C_t + D_h x_t
    out        = out_proj(RMSNorm(y * silu(z)))             gated RMSNorm, groups of d_inner / G

with dt <- softplus(dt + dt_bias) inside the scan (`rlts.kernels.ssd_scan`: chunked; Triton on
CUDA, PyTorch on CPU), H = d_inner / headdim heads of width P = headdim, and G = ngroups
groups of heads sharing B and C.

State = (conv_state, ssm_state): conv_state (B, conv_dim, d_conv - 1) holds the last
d_conv - 1 conv inputs (conv_dim = d_inner + 2 G N); ssm_state (B, H, P, N), float32 for
fp16/bf16 models (float64 for float64 ones). As for `Mamba`, `forward(x, state)` continues
a sequence (the state stays in the autograd graph), and `step` returns new state tensors
without writing into the caller's (`ssd_state_update` runs on a clone; it is inference
only, without autograd).
"""
from __future__ import annotations

from typing import Optional, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from rlts.kernels import compute_dtype
from rlts.kernels.ssd import ssd_scan, ssd_state_update
from rlts.nn.base import PreNormResidual, SequenceLayer, check_input, register_backbone
from rlts.nn.mamba import causal_conv, causal_conv_step, check_state, dt_bias_init

Mamba2State = Tuple[torch.Tensor, torch.Tensor]  # conv_state (B, conv_dim, d_conv - 1), ssm_state (B, H, P, N)


class GatedRMSNorm(nn.Module):
    """out = RMSNorm(y * silu(z)) * weight, the RMS taken over groups of `group_size`
    channels (mamba-ssm's RMSNormGated with norm_before_gate=False). Computed in float32
    for fp16/bf16 inputs."""

    def __init__(self, d: int, group_size: Optional[int] = None, eps: float = 1e-5):
        super().__init__()
        self.group_size, self.eps = group_size or d, eps
        self.weight = nn.Parameter(torch.ones(d))

    def forward(self, y: torch.Tensor, z: torch.Tensor) -> torch.Tensor:  # (..., d) each
        cd = compute_dtype(y.dtype)
        h = y.to(cd) * F.silu(z.to(cd))
        g = h.unflatten(-1, (-1, self.group_size))                      # (..., groups, group_size)
        g = g * torch.rsqrt(g.pow(2).mean(-1, keepdim=True) + self.eps)
        return (g.flatten(-2) * self.weight).to(y.dtype)


class Mamba2(SequenceLayer):
    """The Mamba-2 mixer (SSD: scalar decay per head, state (headdim, d_state) per head).

    Options:
        d_state: N, state size (default 64).
        d_conv: kernel size of the causal depthwise conv over x, B, C (default 4).
        expand: d_inner = expand * d_model (default 2).
        headdim: P, channels per head; must divide d_inner (default 64).
        ngroups: G, groups of heads sharing B and C (and the gated norm's groups); must
            divide the number of heads (default 1).
        chunk_size: chunk length of the SSD scan (default 256); any sequence length works.
        dt_min, dt_max: softplus(dt_bias) is initialised log-uniform in [dt_min, dt_max]
            (defaults 0.001, 0.1), floored at dt_init_floor (default 1e-4).
        A_init_range: -A = exp(A_log) is initialised uniform in this range (default (1, 16)).
        conv_bias: bias in the conv (default True).
        bias: biases in in_proj and out_proj (default False).

    D = 1 per head at init; in_proj, out_proj and the conv at PyTorch's defaults.
    """

    def __init__(self, d_model: int, d_state: int = 64, d_conv: int = 4, expand: float = 2,
                 headdim: int = 64, ngroups: int = 1, chunk_size: int = 256, dt_min: float = 0.001,
                 dt_max: float = 0.1, dt_init_floor: float = 1e-4, A_init_range: Tuple[float, float] = (1, 16),
                 conv_bias: bool = True, bias: bool = False):
        super().__init__()
        d_inner = int(expand * d_model)
        if min(d_model, d_state, d_conv, d_inner, headdim, ngroups, chunk_size) < 1:
            raise ValueError("Mamba2 needs d_model, d_state, d_conv, expand * d_model, headdim, ngroups, "
                             f"chunk_size >= 1, got {d_model}, {d_state}, {d_conv}, {d_inner}, {headdim}, "
                             f"{ngroups}, {chunk_size}")
        if d_inner % headdim:
            raise ValueError(f"Mamba2: headdim = {headdim} must divide d_inner = expand * d_model = {d_inner}")
        nheads = d_inner // headdim
        if nheads % ngroups:
            raise ValueError(f"Mamba2: ngroups = {ngroups} must divide nheads = d_inner / headdim = {nheads}")
        lo, hi = A_init_range
        if not 0 < lo <= hi:
            raise ValueError(f"Mamba2: A_init_range must satisfy 0 < low <= high, got {A_init_range}")
        self.d_model, self.d_state, self.d_conv, self.d_inner = d_model, d_state, d_conv, d_inner
        self.headdim, self.nheads, self.ngroups, self.chunk_size = headdim, nheads, ngroups, chunk_size
        self.conv_dim = d_inner + 2 * ngroups * d_state

        self.in_proj = nn.Linear(d_model, d_inner + self.conv_dim + nheads, bias=bias)  # z, xBC, dt
        self.conv1d = nn.Conv1d(self.conv_dim, self.conv_dim, d_conv, groups=self.conv_dim, bias=conv_bias)
        self.dt_bias = nn.Parameter(dt_bias_init(nheads, dt_min, dt_max, dt_init_floor))
        self.A_log = nn.Parameter(torch.empty(nheads).uniform_(lo, hi).log())
        self.D = nn.Parameter(torch.ones(nheads))
        self.norm = GatedRMSNorm(d_inner, group_size=d_inner // ngroups, eps=1e-5)
        self.out_proj = nn.Linear(d_inner, d_model, bias=bias)
        for p in (self.dt_bias, self.A_log, self.D):
            p._no_weight_decay = True  # the mamba-ssm convention, for optimiser grouping

    def _state(self, state, batch: int, x: torch.Tensor, op: str) -> Mamba2State:
        if state is None:
            return self.init_state(batch, x.device, x.dtype)
        check_state(op, state, [(batch, self.conv_dim, self.d_conv - 1),
                                (batch, self.nheads, self.headdim, self.d_state)])
        return state

    def _split(self, zxbcdt: torch.Tensor):
        """(..., d_in_proj) -> z (..., d_inner), xBC (..., conv_dim), dt (..., nheads)."""
        return zxbcdt.split([self.d_inner, self.conv_dim, self.nheads], dim=-1)

    def _split_xbc(self, xbc: torch.Tensor):
        """(..., conv_dim) -> x (..., H, P), B, C (..., G, N)."""
        GN = self.ngroups * self.d_state
        x, B, C = xbc.split([self.d_inner, GN, GN], dim=-1)
        gn = (self.ngroups, self.d_state)
        return x.unflatten(-1, (self.nheads, self.headdim)), B.unflatten(-1, gn), C.unflatten(-1, gn)

    def forward(self, u: torch.Tensor, state: Optional[Mamba2State] = None) -> Tuple[torch.Tensor, Mamba2State]:
        check_input("Mamba2", u, self.d_model)
        conv_state, ssm_state = self._state(state, u.shape[0], u, "Mamba2")
        z, xbc, dt = self._split(self.in_proj(u))                       # (B, L, .)
        xbc, conv_state = causal_conv(xbc.transpose(1, 2), conv_state, self.conv1d)  # (B, conv_dim, L)
        x, B, C = self._split_xbc(xbc.transpose(1, 2))                  # (B, L, H, P), (B, L, G, N) x2
        y, ssm_state = ssd_scan(x, dt, -torch.exp(self.A_log), B, C, self.chunk_size, D=self.D,
                                dt_bias=self.dt_bias, initial_states=ssm_state, dt_softplus=True,
                                return_final_states=True)               # y (B, L, H, P)
        y = self.norm(y.flatten(-2), z)                                  # (B, L, d_inner)
        return self.out_proj(y), (conv_state, ssm_state)

    def step(self, u_t: torch.Tensor, state: Optional[Mamba2State] = None) -> Tuple[torch.Tensor, Mamba2State]:
        check_input("Mamba2.step", u_t, self.d_model, rank=2)
        conv_state, ssm_state = self._state(state, u_t.shape[0], u_t, "Mamba2.step")
        z, xbc, dt = self._split(self.in_proj(u_t))                     # (B, .)
        xbc, conv_state = causal_conv_step(xbc, conv_state, self.conv1d)  # (B, conv_dim)
        x, B, C = self._split_xbc(xbc)                                  # (B, H, P), (B, G, N) x2
        ssm_state = ssm_state.clone()                                   # updated in place below
        y = ssd_state_update(ssm_state, x, dt, -torch.exp(self.A_log), B, C, D=self.D,
                             dt_bias=self.dt_bias, dt_softplus=True)    # (B, H, P)
        return self.out_proj(self.norm(y.flatten(-2), z)), (conv_state, ssm_state)

    def init_state(self, batch_size: int, device: Optional[torch.device] = None,
                   dtype: Optional[torch.dtype] = None) -> Mamba2State:
        device = device if device is not None else self.D.device
        dtype = dtype or self.D.dtype
        return (torch.zeros(batch_size, self.conv_dim, self.d_conv - 1, device=device, dtype=dtype),
                torch.zeros(batch_size, self.nheads, self.headdim, self.d_state, device=device,
                            dtype=compute_dtype(dtype)))


@register_backbone("mamba2")
class Mamba2Block(PreNormResidual):
    """Pre-norm residual Mamba-2 block: x = x + Mamba2(RMSNorm(x)) (no MLP, as in mamba-ssm).

    Options: those of `Mamba2` (d_state, d_conv, expand, headdim, ngroups, chunk_size, dt_min,
    dt_max, dt_init_floor, A_init_range, conv_bias, bias). The state is the Mamba2 state.
    """

    def __init__(self, d_model: int, **mamba2_options):
        super().__init__(d_model, Mamba2(d_model, **mamba2_options))
