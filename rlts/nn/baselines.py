"""Baseline backbones: a causal Transformer with a KV cache, and a GRU.

    transformer   pre-norm softmax self-attention (RoPE) + MLP; state = KV cache, grows with
                  the context (or a sliding window of max_cache tokens): O(T) per step
    gru           x + GRU(RMSNorm(x)); state = hidden (B, D): O(1) per step, but the
                  parallel forward is a sequential cuDNN/CPU loop over L
"""
from __future__ import annotations

from typing import Optional, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from rlts.nn.base import MLP, SequenceLayer, check_input, register_backbone

KVState = Tuple[torch.Tensor, torch.Tensor, torch.Tensor]  # k, v (B, H, T, Dh) and pos (B,)


def rope(x: torch.Tensor, pos: torch.Tensor, base: float) -> torch.Tensor:
    """Rotary position embedding, half-split layout (pairs (x_i, x_{i + Dh/2})).

    x (B, H, L, Dh); pos (B, L) integer positions. Pair i turns by angle pos * base^(-2i/Dh).
    Angles are computed in float64 for float64 inputs and float32 otherwise.
    """
    Dh = x.shape[-1]
    dt = torch.float64 if x.dtype == torch.float64 else torch.float32
    inv_freq = base ** (-torch.arange(0, Dh, 2, device=x.device, dtype=dt) / Dh)  # (Dh/2,)
    ang = pos.to(dt).unsqueeze(-1) * inv_freq  # (B, L, Dh/2)
    cos, sin = ang.cos().unsqueeze(1).to(x.dtype), ang.sin().unsqueeze(1).to(x.dtype)  # (B, 1, L, Dh/2)
    x1, x2 = x.chunk(2, dim=-1)  # (B, H, L, Dh/2) each
    return torch.cat([x1 * cos - x2 * sin, x2 * cos + x1 * sin], dim=-1)


@register_backbone("transformer")
class CausalTransformerBlock(SequenceLayer):
    """Pre-norm Transformer block: x = x + dropout(Attn(RMSNorm(x))); x = x + MLP(RMSNorm(x)).

    Multi-head causal self-attention (torch scaled_dot_product_attention) with rotary
    position embeddings, so any length works and positions continue across calls.

    State (k, v, pos): the KV cache k, v (B, H, T, Dh) of the T past tokens the next token
    may attend to (keys stored already rotated), and pos (B,) int64, the absolute position of
    the next token (= number of tokens seen; equals T unless the window dropped some).
    `forward(x, state)` attends over cached + new tokens (new token i sees every cached token
    and the new tokens <= i) and returns the cache extended by x; `step` appends one token.
    Memory grows with the context: that is this baseline's nature.

    Options:
        n_heads: attention heads (default 4); head_dim = d_model // n_heads must be even.
        mlp_ratio: MLP hidden width / d_model (default 4); GELU.
        dropout: attention-weight dropout and dropout on both residual branches (default 0.0).
        max_cache: None (default) keeps every past token. An int W >= 1 makes a sliding window:
            each token attends to itself and the (at most) W tokens before it, and the state
            keeps only the last W tokens. Chunked forward, step and whole forward all agree.
        rope_base: RoPE frequency base (default 10000).
        bias: biases in every Linear of the block (default False).
    """

    def __init__(self, d_model: int, n_heads: int = 4, mlp_ratio: float = 4, dropout: float = 0.0,
                 max_cache: Optional[int] = None, rope_base: float = 10000.0, bias: bool = False):
        super().__init__()
        if n_heads < 1 or d_model % n_heads or (d_model // n_heads) % 2:
            raise ValueError(f"transformer: d_model ({d_model}) must split into n_heads ({n_heads}) heads "
                             f"of even width (RoPE rotates pairs)")
        if max_cache is not None and max_cache < 1:
            raise ValueError(f"transformer: max_cache must be None or >= 1, got {max_cache}")
        self.d_model, self.n_heads, self.head_dim = d_model, n_heads, d_model // n_heads
        self.max_cache, self.rope_base, self.dropout = max_cache, rope_base, dropout
        self.norm1 = nn.RMSNorm(d_model)
        self.qkv = nn.Linear(d_model, 3 * d_model, bias=bias)
        self.out_proj = nn.Linear(d_model, d_model, bias=bias)
        self.drop = nn.Dropout(dropout)
        self.norm2 = nn.RMSNorm(d_model)
        self.mlp = MLP(d_model, mlp_ratio, dropout, bias)

    def _attend(self, x: torch.Tensor, state: KVState) -> Tuple[torch.Tensor, KVState]:
        B, L, D = x.shape
        H, Dh = self.n_heads, self.head_dim
        k_cache, v_cache, pos0 = state
        T = k_cache.shape[2]
        q, k, v = self.qkv(x).view(B, L, 3, H, Dh).permute(2, 0, 3, 1, 4)  # (B, H, L, Dh) each
        pos = pos0.unsqueeze(1) + torch.arange(L, device=x.device)  # (B, L) absolute positions
        q, k = rope(q, pos, self.rope_base), rope(k, pos, self.rope_base)
        k, v = torch.cat([k_cache, k], dim=2), torch.cat([v_cache, v], dim=2)  # (B, H, T + L, Dh)
        # key c is the token T - c places before new token 0; query i may see c <= T + i, and
        # with a window also c >= T + i - W.
        mask, causal = None, False
        if T == 0 and self.max_cache is None:
            causal = L > 1
        elif L > 1 or self.max_cache is not None:
            c = torch.arange(T + L, device=x.device)
            i = torch.arange(L, device=x.device).unsqueeze(1) + T  # (L, 1)
            mask = c <= i  # (L, T + L)
            if self.max_cache is not None:
                mask = mask & (c >= i - self.max_cache)
        p = self.dropout if self.training else 0.0
        o = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=p, is_causal=causal)  # (B, H, L, Dh)
        if self.max_cache is not None:
            k, v = k[:, :, -self.max_cache:], v[:, :, -self.max_cache:]
        y = self.out_proj(o.transpose(1, 2).reshape(B, L, D))  # (B, L, D)
        return y, (k, v, pos0 + L)

    def _check_state(self, state: Optional[KVState], x: torch.Tensor) -> KVState:
        if state is None:
            return self.init_state(x.shape[0], x.device, x.dtype)
        B, H, Dh = x.shape[0], self.n_heads, self.head_dim
        ok = isinstance(state, (tuple, list)) and len(state) == 3
        if ok:
            k, v, pos = state
            ok = (k.dim() == 4 and k.shape[:2] == (B, H) and k.shape[3] == Dh and v.shape == k.shape
                  and pos.shape == (B,))
        if not ok:
            raise ValueError(f"transformer: state must be (k, v (B, H, T, Dh), pos (B,)) with B={B}, H={H}, "
                             f"Dh={Dh}, or None")
        return state

    def forward(self, x: torch.Tensor, state: Optional[KVState] = None) -> Tuple[torch.Tensor, KVState]:
        check_input("CausalTransformerBlock", x, self.d_model)
        a, state = self._attend(self.norm1(x), self._check_state(state, x))
        x = x + self.drop(a)
        return x + self.mlp(self.norm2(x)), state

    def step(self, x_t: torch.Tensor, state: Optional[KVState] = None) -> Tuple[torch.Tensor, KVState]:
        """One token: attends over the cache and itself (O(T)), then appends itself."""
        check_input("CausalTransformerBlock.step", x_t, self.d_model, rank=2)
        y, state = self.forward(x_t.unsqueeze(1), state)
        return y.squeeze(1), state

    def init_state(self, batch_size: int, device: Optional[torch.device] = None,
                   dtype: Optional[torch.dtype] = None) -> KVState:
        """An empty cache (T = 0) at position 0."""
        kv = torch.zeros(batch_size, self.n_heads, 0, self.head_dim, device=device, dtype=dtype)
        return kv, kv.clone(), torch.zeros(batch_size, dtype=torch.long, device=device)


@register_backbone("gru")
class GRUBlock(SequenceLayer):
    """Residual GRU block: x = x + dropout(GRU(RMSNorm(x))), torch.nn.GRU with hidden size d_model.

    State: the hidden state h (B, D) (batch first, like every other state; nn.GRU's
    (1, B, D) layout is internal). `step` runs the same nn.GRU on a length-1 sequence.

    Options:
        dropout: dropout on the residual branch (default 0.0; training mode only).
        bias: biases of the GRU (default True, torch's default).
    """

    def __init__(self, d_model: int, dropout: float = 0.0, bias: bool = True):
        super().__init__()
        self.d_model = d_model
        self.norm = nn.RMSNorm(d_model)
        self.gru = nn.GRU(d_model, d_model, batch_first=True, bias=bias)
        self.drop = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, state: Optional[torch.Tensor] = None) -> Tuple[torch.Tensor, torch.Tensor]:
        check_input("GRUBlock", x, self.d_model)
        if state is not None and state.shape != (x.shape[0], self.d_model):
            raise ValueError(f"GRUBlock: state must have shape (B, D) = {(x.shape[0], self.d_model)}, "
                             f"got {tuple(state.shape)}")
        h0 = None if state is None else state.unsqueeze(0).contiguous()  # (1, B, D)
        y, h = self.gru(self.norm(x), h0)  # (B, L, D), (1, B, D)
        return x + self.drop(y), h.squeeze(0)

    def step(self, x_t: torch.Tensor, state: Optional[torch.Tensor] = None) -> Tuple[torch.Tensor, torch.Tensor]:
        check_input("GRUBlock.step", x_t, self.d_model, rank=2)
        y, state = self.forward(x_t.unsqueeze(1), state)
        return y.squeeze(1), state

    def init_state(self, batch_size: int, device: Optional[torch.device] = None,
                   dtype: Optional[torch.dtype] = None) -> torch.Tensor:
        return torch.zeros(batch_size, self.d_model, device=device, dtype=dtype)


# Short names for the baseline layers, as the docs use them.
CausalTransformer = CausalTransformerBlock
GRU = GRUBlock
