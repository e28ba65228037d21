"""Mamba (Gu & Dao 2023): the selective state-space mixer, and a pre-norm residual block on it.

    x, z  = in_proj(u).chunk(2)                       (B, L, d_inner) each
    x     = silu(causal depthwise conv1d(x))          kernel d_conv, per channel
    dt, B, C = x_proj(x).split(dt_rank, N, N)         dt low rank: dt = dt_proj(dt) (B, L, d_inner)
    y     = selective_scan(x, dt, A, B, C, D, z)      h_t = exp(dt A) h_{t-1} + dt B_t x_t,
                                                      y_t = (C_t . h_t + D x_t) * silu(z_t)
    out   = out_proj(y)                               (B, L, d_model)

with dt <- softplus(dt + dt_bias) inside the scan (`rlts.kernels.selective_scan`: Triton on CUDA,
PyTorch on CPU) and A = -exp(A_log) (d_inner, N) diagonal per channel.

State = (conv_state, ssm_state): conv_state (B, d_inner, d_conv - 1) holds the last d_conv - 1
conv inputs (zeros at the start of a sequence, i.e. the conv's causal zero padding);
ssm_state (B, d_inner, N) is h after the last token, float32 for fp16/bf16 models (float64
for float64 ones). `forward(x, state)` continues from a state, so a long sequence may be fed
in pieces; the returned state stays in the autograd graph (detach it for truncated BPTT).
`step` is the O(1) recurrence; it returns new state tensors and never writes into the ones
it was given (the in-place `selective_state_update` runs on a clone).
"""
from __future__ import annotations

import math
from typing import Optional, Tuple, Union

import torch
import torch.nn.functional as F
from torch import nn

from rlts.kernels import compute_dtype
from rlts.kernels.selective import selective_scan, selective_state_update
from rlts.nn.base import PreNormResidual, SequenceLayer, check_input, register_backbone

MambaState = Tuple[torch.Tensor, torch.Tensor]  # conv_state (B, C, d_conv - 1), ssm_state


# --------------------------------------------------------------------------- shared with mamba2
def dt_bias_init(n: int, dt_min: float, dt_max: float, dt_init_floor: float) -> torch.Tensor:
    """Bias b (n,) with softplus(b) = dt, dt log-uniform in [dt_min, dt_max], floored at
    dt_init_floor (the Mamba initialisation). Inverse softplus: b = dt + log(1 - exp(-dt))."""
    if not 0 < dt_min <= dt_max:
        raise ValueError(f"need 0 < dt_min <= dt_max, got dt_min={dt_min}, dt_max={dt_max}")
    dt = torch.exp(torch.rand(n, dtype=torch.float64) * (math.log(dt_max) - math.log(dt_min))
                   + math.log(dt_min)).clamp(min=dt_init_floor)
    return (dt + torch.log(-torch.expm1(-dt))).float()


def check_state(layer: str, state, shapes) -> None:
    """state must be a pair of tensors of the given shapes (conv_state, ssm_state)."""
    names = ("conv_state", "ssm_state")
    if not isinstance(state, (tuple, list)) or len(state) != 2:
        raise ValueError(f"{layer}: state must be (conv_state, ssm_state) of shapes "
                         f"{shapes[0]}, {shapes[1]}, got {type(state).__name__}")
    for name, t, shape in zip(names, state, shapes):
        if not isinstance(t, torch.Tensor) or tuple(t.shape) != tuple(shape):
            got = tuple(t.shape) if isinstance(t, torch.Tensor) else type(t).__name__
            raise ValueError(f"{layer}: {name} must have shape {tuple(shape)}, got {got}")


def causal_conv(x: torch.Tensor, conv_state: torch.Tensor, conv: nn.Conv1d) -> Tuple[torch.Tensor, torch.Tensor]:
    """Depthwise causal conv of x (B, C, L) continuing from conv_state (B, C, K - 1), the last
    K - 1 inputs before x. Returns silu(conv) (B, C, L) and the new conv_state (B, C, K - 1)."""
    K = conv.kernel_size[0]
    xp = torch.cat([conv_state.to(x.dtype), x], dim=-1)          # (B, C, K - 1 + L)
    y = F.conv1d(xp, conv.weight, conv.bias, groups=conv.groups)  # (B, C, L), no padding
    return F.silu(y), xp[..., xp.shape[-1] - (K - 1):].clone()   # clone: do not keep xp alive


def causal_conv_step(x_t: torch.Tensor, conv_state: torch.Tensor, conv: nn.Conv1d) -> Tuple[torch.Tensor, torch.Tensor]:
    """One token of `causal_conv`: x_t (B, C) -> silu(conv) (B, C) and a new conv_state.
    The sum runs in the wider of x_t's and the weights' dtypes and comes back in x_t's, as
    `causal_conv` under autocast gives (bfloat16 tokens, float32 weights)."""
    window = torch.cat([conv_state.to(x_t.dtype), x_t[..., None]], dim=-1)  # (B, C, K)
    wide = torch.promote_types(x_t.dtype, conv.weight.dtype)
    y = (window.to(wide) * conv.weight[:, 0].to(wide)).sum(-1)              # (B, C)
    if conv.bias is not None:
        y = y + conv.bias.to(wide)
    return F.silu(y).to(x_t.dtype), window[..., 1:]


# --------------------------------------------------------------------------- the mixer
class Mamba(SequenceLayer):
    """The Mamba-1 mixer (selective SSM with input-dependent dt, B, C).

    Options:
        d_state: N, state size per channel (default 16).
        d_conv: kernel size of the causal depthwise conv (default 4).
        expand: d_inner = expand * d_model (default 2).
        dt_rank: rank of the dt projection; "auto" = ceil(d_model / 16).
        dt_min, dt_max: softplus(dt_bias) is initialised log-uniform in [dt_min, dt_max]
            (defaults 0.001, 0.1), floored at dt_init_floor (default 1e-4).
        conv_bias: bias in the conv (default True).
        bias: biases in in_proj and out_proj (default False).

    Initialisation (Mamba paper / mamba-ssm): A = -(1, ..., N) for every channel, stored as
    A_log = log(1..N); D = 1; dt_proj weight uniform in +-dt_rank**-0.5; in_proj, x_proj,
    out_proj and conv at PyTorch's defaults.
    """

    def __init__(self, d_model: int, d_state: int = 16, d_conv: int = 4, expand: float = 2,
                 dt_rank: Union[int, str] = "auto", dt_min: float = 0.001, dt_max: float = 0.1,
                 dt_init_floor: float = 1e-4, conv_bias: bool = True, bias: bool = False):
        super().__init__()
        d_inner = int(expand * d_model)
        dt_rank = math.ceil(d_model / 16) if dt_rank == "auto" else dt_rank
        if min(d_model, d_state, d_conv, d_inner) < 1 or not isinstance(dt_rank, int) or dt_rank < 1:
            raise ValueError(f"Mamba needs d_model, d_state, d_conv, expand * d_model, dt_rank >= 1, got "
                             f"{d_model}, {d_state}, {d_conv}, {d_inner}, {dt_rank!r}")
        self.d_model, self.d_state, self.d_conv, self.d_inner, self.dt_rank = d_model, d_state, d_conv, d_inner, dt_rank

        self.in_proj = nn.Linear(d_model, 2 * d_inner, bias=bias)
        self.conv1d = nn.Conv1d(d_inner, d_inner, d_conv, groups=d_inner, bias=conv_bias)
        self.x_proj = nn.Linear(d_inner, dt_rank + 2 * d_state, bias=False)
        self.dt_proj = nn.Linear(dt_rank, d_inner, bias=True)
        self.A_log = nn.Parameter(torch.log(torch.arange(1, d_state + 1, dtype=torch.float32)).repeat(d_inner, 1))
        self.D = nn.Parameter(torch.ones(d_inner))
        self.out_proj = nn.Linear(d_inner, d_model, bias=bias)
        with torch.no_grad():
            nn.init.uniform_(self.dt_proj.weight, -dt_rank ** -0.5, dt_rank ** -0.5)
            self.dt_proj.bias.copy_(dt_bias_init(d_inner, dt_min, dt_max, dt_init_floor))
        self.A_log._no_weight_decay = True  # the mamba-ssm convention, for optimiser grouping
        self.D._no_weight_decay = True

    def _state(self, state, batch: int, x: torch.Tensor, op: str) -> MambaState:
        if state is None:
            return self.init_state(batch, x.device, x.dtype)
        check_state(op, state, [(batch, self.d_inner, self.d_conv - 1), (batch, self.d_inner, self.d_state)])
        return state

    def _ssm_inputs(self, x: torch.Tensor):
        """x (..., d_inner) -> dt (..., d_inner) before bias/softplus, B, C (..., N)."""
        dt, B, C = self.x_proj(x).split([self.dt_rank, self.d_state, self.d_state], dim=-1)
        return F.linear(dt, self.dt_proj.weight), B, C  # dt_proj's bias is added in the scan

    def forward(self, u: torch.Tensor, state: Optional[MambaState] = None) -> Tuple[torch.Tensor, MambaState]:
        check_input("Mamba", u, self.d_model)
        conv_state, ssm_state = self._state(state, u.shape[0], u, "Mamba")
        x, z = self.in_proj(u).chunk(2, dim=-1)                        # (B, L, d_inner) each
        x, conv_state = causal_conv(x.transpose(1, 2), conv_state, self.conv1d)  # (B, d_inner, L)
        dt, B, C = self._ssm_inputs(x.transpose(1, 2))                 # (B, L, d_inner), (B, L, N) x2
        y, ssm_state = selective_scan(
            x, dt.transpose(1, 2), -torch.exp(self.A_log), B.transpose(1, 2), C.transpose(1, 2),
            D=self.D, z=z.transpose(1, 2), delta_bias=self.dt_proj.bias, delta_softplus=True,
            return_last_state=True, initial_state=ssm_state)           # y (B, d_inner, L)
        return self.out_proj(y.transpose(1, 2)), (conv_state, ssm_state)

    def step(self, u_t: torch.Tensor, state: Optional[MambaState] = None) -> Tuple[torch.Tensor, MambaState]:
        check_input("Mamba.step", u_t, self.d_model, rank=2)
        conv_state, ssm_state = self._state(state, u_t.shape[0], u_t, "Mamba.step")
        x, z = self.in_proj(u_t).chunk(2, dim=-1)                      # (B, d_inner) each
        x, conv_state = causal_conv_step(x, conv_state, self.conv1d)   # (B, d_inner)
        dt, B, C = self._ssm_inputs(x)
        ssm_state = ssm_state.clone()                                  # updated in place below
        y = selective_state_update(ssm_state, x, dt, -torch.exp(self.A_log), B, C, D=self.D, z=z,
                                   dt_bias=self.dt_proj.bias, dt_softplus=True)  # (B, d_inner)
        return self.out_proj(y), (conv_state, ssm_state)

    def init_state(self, batch_size: int, device: Optional[torch.device] = None,
                   dtype: Optional[torch.dtype] = None) -> MambaState:
        device = device if device is not None else self.D.device
        dtype = dtype or self.D.dtype
        return (torch.zeros(batch_size, self.d_inner, self.d_conv - 1, device=device, dtype=dtype),
                torch.zeros(batch_size, self.d_inner, self.d_state, device=device, dtype=compute_dtype(dtype)))


@register_backbone("mamba")
class MambaBlock(PreNormResidual):
    """Pre-norm residual Mamba block: x = x + Mamba(RMSNorm(x)) (no MLP, as in mamba-ssm).

    Options: those of `Mamba` (d_state, d_conv, expand, dt_rank, dt_min, dt_max,
    dt_init_floor, conv_bias, bias). The state is the Mamba state (conv_state, ssm_state).
    """

    def __init__(self, d_model: int, **mamba_options):
        super().__init__(d_model, Mamba(d_model, **mamba_options))
