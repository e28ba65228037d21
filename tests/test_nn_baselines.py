"""rlts.nn.baselines: the "transformer" (KV cache, RoPE, sliding window) and "gru" backbones,
in float64. The Transformer block against attention recomputed independently (RoPE via
complex rotations), RoPE's relative-position property, the KV cache and the max_cache window
against a forward restricted to the window, the GRU state, and state and option validation.
The layer contract (step == forward, pieces == whole, causality, gradients, input shapes) is
checked for these blocks and models in test_nn_contract.py."""
import math

import pytest
import torch

import rlts.nn.baselines  # noqa: F401  (registers "transformer" and "gru")
from rlts.nn import BACKBONES
from rlts.nn.baselines import CausalTransformerBlock, GRUBlock, rope
from test_nn_contract import build, max_diff, run_steps

F64 = torch.float64
L = 13


def test_registered():
    assert BACKBONES["transformer"] is CausalTransformerBlock and BACKBONES["gru"] is GRUBlock


# --------------------------------------------------------------------------- transformer
def reference_block(blk, x, pos0=0):
    """The block recomputed by hand: RoPE as complex rotations of the pairs (x_i, x_{i+Dh/2})
    by e^{j p theta_i}, theta_i = base^(-2i/Dh), then masked softmax attention. Norms and MLP
    are the block's own modules."""
    B, n, D = x.shape
    H, Dh, half = blk.n_heads, blk.head_dim, blk.head_dim // 2
    h = blk.norm1(x)
    q, k, v = (h @ blk.qkv.weight.T).view(B, n, 3, H, Dh).unbind(2)  # (B, L, H, Dh)
    theta = blk.rope_base ** (-2 * torch.arange(half, dtype=F64) / Dh)
    phase = torch.polar(torch.ones(n, half, dtype=F64), (pos0 + torch.arange(n, dtype=F64))[:, None] * theta)

    def rot(z):
        zc = torch.complex(z[..., :half], z[..., half:]) * phase[None, :, None, :]
        return torch.cat([zc.real, zc.imag], -1)

    q, k = rot(q), rot(k)
    scores = torch.einsum("blhd,bmhd->bhlm", q, k) / math.sqrt(Dh)
    causal = torch.ones(n, n, dtype=torch.bool).tril()
    if blk.max_cache is not None:
        causal &= ~torch.ones(n, n, dtype=torch.bool).tril(-blk.max_cache - 1)
    att = scores.masked_fill(~causal, -math.inf).softmax(-1)
    o = torch.einsum("bhlm,bmhd->blhd", att, v).reshape(B, n, D)
    x = x + o @ blk.out_proj.weight.T
    return x + blk.mlp(blk.norm2(x))


@pytest.mark.parametrize("max_cache", [None, 3])
def test_transformer_matches_reference(max_cache):
    blk = CausalTransformerBlock(16, n_heads=2, max_cache=max_cache).double()
    x = torch.randn(2, L, 16, dtype=F64) * 2
    ref = reference_block(blk, x)
    assert max_diff(blk(x)[0], ref) < 1e-12
    assert max_diff(run_steps(blk, x)[0], ref) < 1e-12


def test_rope_relative_and_norm_preserving():
    q, k = torch.randn(2, 3, 1, 8, dtype=F64), torch.randn(2, 3, 1, 8, dtype=F64)
    p = lambda i: torch.full((2, 1), i)  # noqa: E731
    dot = lambda a, b: (a * b).sum(-1)  # noqa: E731
    base = dot(rope(q, p(7), 1e4), rope(k, p(2), 1e4))
    assert max_diff(dot(rope(q, p(107), 1e4), rope(k, p(102), 1e4)), base) < 1e-12  # depends on 7 - 2 only
    assert max_diff(dot(rope(q, p(8), 1e4), rope(k, p(2), 1e4)), base) > 1e-6  # but does depend on it
    assert max_diff(rope(q, p(0), 1e4), q) == 0
    assert max_diff(rope(q, p(5), 1e4).norm(dim=-1), q.norm(dim=-1)) < 1e-12


def test_positions_continue_and_offset_is_relative():
    """A block started at position 100 (empty cache) gives the outputs of one started at 0
    (RoPE is relative); the state counts positions; the cache holds every token."""
    blk = CausalTransformerBlock(16, n_heads=4).double()
    x = torch.randn(2, L, 16, dtype=F64)
    y, (k, v, pos) = blk(x)
    assert k.shape == v.shape == (2, 4, L, 4) and pos.tolist() == [L, L]
    k0, v0, _ = blk.init_state(2, dtype=F64)
    y100, (_, _, pos100) = blk(x, (k0, v0, torch.full((2,), 100)))
    assert max_diff(y100, y) < 1e-9 and pos100.tolist() == [100 + L] * 2
    assert max_diff(reference_block(blk, x, pos0=100), y) < 1e-9
    _, (k, v, pos) = blk.step(x[:, 0], (k, v, pos))
    assert k.shape[2] == L + 1 and pos.tolist() == [L + 1] * 2


def test_rope_makes_order_matter():
    blk = CausalTransformerBlock(16, n_heads=4).double()
    x = torch.randn(1, 6, 16, dtype=F64)
    x_swapped = x[:, [1, 0, 2, 3, 4, 5]]
    assert max_diff(blk(x)[0][:, -1], blk(x_swapped)[0][:, -1]) > 1e-6


@pytest.mark.parametrize("W", [1, 4])
def test_sliding_window(W):
    """With max_cache = W, the output at t equals the last output of an unlimited block (same
    weights) run from scratch on the window x[t-W .. t]; the state keeps the last W tokens."""
    win = CausalTransformerBlock(16, n_heads=2, max_cache=W).double()
    full = CausalTransformerBlock(16, n_heads=2).double()
    full.load_state_dict(win.state_dict())
    x = torch.randn(2, L, 16, dtype=F64) * 2
    y, (k, v, pos) = win(x)
    for t in range(L):
        y_ref = full(x[:, max(0, t - W):t + 1])[0][:, -1]
        assert max_diff(y[:, t], y_ref) < 1e-9, t
    assert k.shape == v.shape == (2, 2, W, 8) and pos.tolist() == [L, L]
    # the window really limits attention: the unlimited block differs once t > W
    assert max_diff(full(x)[0][:, W + 1:], y[:, W + 1:]) > 1e-6
    # the kept keys are those of the last W tokens (same as the unlimited cache's tail)
    _, (k_full, v_full, _) = full(x)
    assert max_diff(k, k_full[:, :, -W:]) < 1e-12 and max_diff(v, v_full[:, :, -W:]) < 1e-12
    # stepping keeps the cache at W
    _, (k, _, _) = win.step(x[:, 0], (k, v, pos))
    assert k.shape[2] == W


# --------------------------------------------------------------------------- gru
def test_gru_state_is_final_hidden():
    blk = GRUBlock(16).double()
    x = torch.randn(3, L, 16, dtype=F64)
    y, h = blk(x)
    assert h.shape == (3, 16)
    out, h_ref = blk.gru(blk.norm(x))
    assert max_diff(h, h_ref[0]) < 1e-12 and max_diff(y, x + out) < 1e-12
    assert max_diff(h, out[:, -1]) < 1e-12


# --------------------------------------------------------------------------- validation
@pytest.mark.parametrize("name", ["tf_block", "gru_block"])
def test_bad_state_raises(name):
    m = build(name)
    bad = m.init_state(3, dtype=F64)  # batch 3, input batch 2
    with pytest.raises(ValueError, match="state"):
        m(torch.randn(2, 5, 16, dtype=F64), bad)


def test_bad_options():
    with pytest.raises(ValueError, match="even"):
        CausalTransformerBlock(12, n_heads=4)  # head_dim 3
    with pytest.raises(ValueError, match="n_heads"):
        CausalTransformerBlock(16, n_heads=3)
    with pytest.raises(ValueError, match="max_cache"):
        CausalTransformerBlock(16, max_cache=0)
