"""Aaren: "Attention as an RNN" (Feng et al. 2024), and a pre-norm block built on it.

Each head attends with one *learned* query q_h (a parameter, not a function of the input)
to keys and values projected from the input, causally:

    s_t = k_t . q_h / sqrt(head_dim)                      scores      (B, H, L)
    o_t = sum_{i<=t} e^{s_i} v_i / sum_{i<=t} e^{s_i}     many-to-many outputs (B, H, L, head_dim)

Because the query is fixed, o_t is a running softmax-weighted mean: a parallel scan over the
sequence for training (`rlts.kernels.softmax_scan`, Triton on CUDA, PyTorch on CPU) and an O(1)
recurrence per token for inference (`rlts.kernels.softmax_scan_step`). The state is the scan's
(m, u, w): m (B, H) the running max of the scores, u (B, H) = sum e^{s_i - m} and
w (B, H, head_dim) = sum e^{s_i - m} v_i, so o = w / u. It is float32 for fp16/bf16 inputs
(the kernels accumulate in float32) and float64 for float64 inputs.

Option `decay` (an rlts extension, off by default): each head also keeps a learned clock
c_t = sum_{j<=t} softplus(a_h . x_j + b_h) and scores s_t + c_t, so that at step t token i
weighs e^{s_i - (c_t - c_i)} relative to token t: an exponential forgetting of old tokens at a
rate the input sets (with the inter-event time among its features, c can learn elapsed time, as
a Hawkes kernel needs). Softmax is shift-invariant, so this is the same scan; the state gains
the clock c (B, H).

Option `mass` (an rlts extension, off by default): softmax attention returns a weighted MEAN,
so it cannot tell one recent event from ten; a Hawkes intensity is a weighted SUM. With `mass`
each head also reports its log attention mass g_t = log sum_{i<=t} e^{s_i + c_i} - c_t
(= log sum_i e^{s_i - (c_t - c_i)}: the log of the decayed sum of the past tokens' weights;
without decay, log sum_i e^{s_i}), mapped to d_model by a Linear (zero-initialised, so a new
layer starts as plain Aaren) and added to the output. It is m + log u of the scan state, so the
recurrent step gets it for free; the parallel form takes a logcumsumexp of the scores. No new
state.
"""
from __future__ import annotations

import math
from typing import Optional, Tuple

import torch
from torch import nn

from rlts.kernels import compute_dtype
from rlts.kernels.softmax import softmax_scan, softmax_scan_step
from rlts.nn.base import MLP, SequenceLayer, check_input, register_backbone

AarenState = Tuple[torch.Tensor, ...]  # m (B, H), u (B, H), w (B, H, head_dim) [, clock c (B, H) with decay]


class Aaren(SequenceLayer):
    """Multi-head Aaren attention: learned queries, causal softmax via a prefix scan.

    Options:
        n_heads: number of heads H, each with its own learned query (default 4).
        head_dim: width of each head's keys and values (default d_model // n_heads).
        bias: biases in the key/value and output projections (default False).
        decay: a learned per-head clock that discounts older tokens (default False; see the
            module docstring).
        mass: also output each head's log attention mass (default False; see the module
            docstring).

    The queries q (H, head_dim) are initialised N(0, 1): with keys of unit-order entries the
    scores k . q / sqrt(head_dim) then have unit-order spread, as in ordinary attention, so
    each head starts with its own (mild) preference over tokens rather than a plain mean.
    """

    def __init__(self, d_model: int, n_heads: int = 4, head_dim: Optional[int] = None, bias: bool = False,
                 decay: bool = False, mass: bool = False):
        super().__init__()
        head_dim = head_dim or (d_model // n_heads if n_heads >= 1 else 0)
        if n_heads < 1 or head_dim < 1:
            raise ValueError(f"Aaren needs n_heads >= 1 and head_dim >= 1, got n_heads={n_heads}, "
                             f"head_dim={head_dim} (d_model={d_model})")
        self.d_model, self.n_heads, self.head_dim = d_model, n_heads, head_dim
        self.scale = 1.0 / math.sqrt(head_dim)
        self.query = nn.Parameter(torch.randn(n_heads, head_dim))  # (H, Dh)
        self.kv_proj = nn.Linear(d_model, 2 * n_heads * head_dim, bias=bias)
        self.out_proj = nn.Linear(n_heads * head_dim, d_model, bias=bias)
        self.decay = decay
        if decay:  # clock increments softplus(a . x + b), starting near 0.13 per token
            self.clock = nn.Linear(d_model, n_heads)
            nn.init.constant_(self.clock.bias, -2.0)
        self.mass = mass
        if mass:  # log attention mass per head -> d_model; zero: starts as plain Aaren
            self.mass_proj = nn.Linear(n_heads, d_model, bias=False)
            nn.init.zeros_(self.mass_proj.weight)

    def _split(self, state):
        """(scan state (m, u, w) or None, clock c (B, H) or None)."""
        if state is None or not self.decay:
            return state, None
        if not (isinstance(state, (tuple, list)) and len(state) == 4):
            raise ValueError("Aaren(decay=True): state must be (m, u, w, c)")
        return tuple(state[:3]), state[3]

    def forward(self, x: torch.Tensor, state: Optional[AarenState] = None) -> Tuple[torch.Tensor, AarenState]:
        check_input("Aaren", x, self.d_model)
        B, L, _ = x.shape
        H, Dh = self.n_heads, self.head_dim
        k, v = self.kv_proj(x).view(B, L, 2, H, Dh).unbind(2)  # (B, L, H, Dh) each
        s = torch.einsum("blhd,hd->bhl", k, self.query) * self.scale  # (B, H, L)
        scan_state, c0 = self._split(state)
        if self.decay:
            c = torch.cumsum(nn.functional.softplus(self.clock(x)), dim=1).transpose(1, 2)  # (B, H, L)
            c = c if c0 is None else c + c0.unsqueeze(-1).to(c.dtype)
            s = s + c
        s = s.to(v.dtype)  # the scan takes one dtype (under autocast the fp32 query may promote s)
        o, state = softmax_scan(s, v.transpose(1, 2), scan_state, return_state=True)  # (B, H, L, Dh)
        y = self.out_proj(o.transpose(1, 2).reshape(B, L, H * Dh))  # (B, L, D)
        if self.mass:
            g = torch.logcumsumexp(s.to(state[1].dtype), dim=-1)  # (B, H, L) log sum_{i<=t} e^{s_i}
            if scan_state is not None:  # the tokens before this call: m0 + log u0 (-inf when none)
                m0, u0 = scan_state[0].to(g.dtype), scan_state[1].to(g.dtype)
                prev = torch.where(u0 > 0, m0 + torch.log(u0.clamp_min(torch.finfo(g.dtype).tiny)), -math.inf)
                g = torch.logaddexp(g, prev.unsqueeze(-1))
            y = y + self._mass_out(g - c.to(g.dtype) if self.decay else g)
        return y, (*state, c[:, :, -1]) if self.decay else state

    def _mass_out(self, g: torch.Tensor) -> torch.Tensor:
        """Log masses (B, H, L) or (B, H) -> their contribution (B, L, D) or (B, D)."""
        w = self.mass_proj.weight
        return self.mass_proj(g.movedim(1, -1).to(w.dtype))

    def step(self, x_t: torch.Tensor, state: Optional[AarenState] = None) -> Tuple[torch.Tensor, AarenState]:
        check_input("Aaren.step", x_t, self.d_model, rank=2)
        B = x_t.shape[0]
        H, Dh = self.n_heads, self.head_dim
        k, v = self.kv_proj(x_t).view(B, 2, H, Dh).unbind(1)  # (B, H, Dh) each
        s = (k * self.query).sum(-1) * self.scale  # (B, H)
        scan_state, c = self._split(state)
        if self.decay:
            inc = nn.functional.softplus(self.clock(x_t))  # (B, H)
            c = inc if c is None else c.to(inc.dtype) + inc
            s = s + c
        o, scan_state = softmax_scan_step(s.to(v.dtype), v, scan_state)  # (B, H, Dh)
        new = (*scan_state, c) if self.decay else scan_state
        y = self.out_proj(o.reshape(B, H * Dh))  # (B, D)
        if self.mass:
            g = scan_state[0] + torch.log(scan_state[1])  # (B, H): log sum_{i<=t} e^{s_i}
            y = y + self._mass_out(g - c.to(g.dtype) if self.decay else g)
        return y, new

    def init_state(self, batch_size: int, device: Optional[torch.device] = None,
                   dtype: Optional[torch.dtype] = None) -> AarenState:
        """The empty state (m = -inf, u = 0, w = 0), in the scan's accumulation dtype."""
        dt = compute_dtype(dtype or torch.get_default_dtype())
        B, H = batch_size, self.n_heads
        m = torch.full((B, H), -float("inf"), device=device, dtype=dt)
        u = torch.zeros(B, H, device=device, dtype=dt)
        w = torch.zeros(B, H, self.head_dim, device=device, dtype=dt)
        if self.decay:
            return m, u, w, torch.zeros(B, H, device=device, dtype=dt)
        return m, u, w


@register_backbone("aaren")
class AarenBlock(SequenceLayer):
    """Pre-norm Transformer-style block with Aaren in place of self-attention:

        x = x + dropout(Aaren(RMSNorm(x)));   x = x + MLP(RMSNorm(x))

    Options:
        n_heads: Aaren heads (default 4); each block has its own learned queries.
        head_dim: Aaren head width (default d_model // n_heads).
        mlp_ratio: MLP hidden width / d_model (default 4); GELU.
        dropout: dropout on both residual branches (default 0.0; training mode only).
        bias: biases in every Linear of the block (default False).
        decay: Aaren's learned per-head clock that discounts older tokens (default False).
        mass: Aaren also outputs each head's log attention mass (default False).

    The state is the Aaren state (m, u, w) (+ the clock c with decay), see `Aaren`.
    """

    def __init__(self, d_model: int, n_heads: int = 4, head_dim: Optional[int] = None, mlp_ratio: float = 4,
                 dropout: float = 0.0, bias: bool = False, decay: bool = False, mass: bool = False):
        super().__init__()
        self.d_model = d_model
        self.norm1 = nn.RMSNorm(d_model)
        self.attn = Aaren(d_model, n_heads=n_heads, head_dim=head_dim, bias=bias, decay=decay, mass=mass)
        self.drop = nn.Dropout(dropout)
        self.norm2 = nn.RMSNorm(d_model)
        self.mlp = MLP(d_model, mlp_ratio, dropout, bias)

    def forward(self, x: torch.Tensor, state: Optional[AarenState] = None) -> Tuple[torch.Tensor, AarenState]:
        check_input("AarenBlock", x, self.d_model)
        a, state = self.attn(self.norm1(x), state)  # (B, L, D)
        x = x + self.drop(a)
        return x + self.mlp(self.norm2(x)), state

    def step(self, x_t: torch.Tensor, state: Optional[AarenState] = None) -> Tuple[torch.Tensor, AarenState]:
        check_input("AarenBlock.step", x_t, self.d_model, rank=2)
        a, state = self.attn.step(self.norm1(x_t), state)  # (B, D)
        x_t = x_t + self.drop(a)
        return x_t + self.mlp(self.norm2(x_t)), state

    def init_state(self, batch_size: int, device: Optional[torch.device] = None,
                   dtype: Optional[torch.dtype] = None) -> AarenState:
        return self.attn.init_state(batch_size, device, dtype)
