"""rlts.nn.aaren: the Aaren layer and the "aaren" backbone, in float64. Aaren against masked
causal softmax attention computed independently (identity projections, then random multi-head
weights with huge inputs), the empty and low-precision states, and state and option
validation. The layer contract (step == forward, pieces == whole, causality, gradients, input
shapes) is checked for the Aaren layer, block and models in test_nn_contract.py."""
import math

import pytest
import torch

import rlts.nn.aaren  # noqa: F401  (registers "aaren")
from rlts.nn import BACKBONES
from rlts.nn.aaren import Aaren, AarenBlock
from test_nn_contract import max_diff

F64 = torch.float64
L = 13


def attention_ref(s, v):
    """Independent masked causal softmax: s (B, H, L) scores, v (B, H, L, E)."""
    n = s.shape[-1]
    causal = torch.ones(n, n, dtype=torch.bool).tril()  # row t: keys i <= t
    a = s.unsqueeze(-2).expand(*s.shape[:-1], n, n).masked_fill(~causal, -math.inf)
    return torch.softmax(a, dim=-1) @ v  # (B, H, L, E)


def test_registered():
    assert BACKBONES["aaren"] is AarenBlock


def test_identity_projections_reproduce_attention():
    """One head, k = v = x, identity output: o_t = softmax_{i<=t}(q . x_i / sqrt(d)) weighted sum of x_i."""
    d = 6
    layer = Aaren(d, n_heads=1, head_dim=d).double()
    assert layer.query.shape == (1, d)
    eye = torch.eye(d, dtype=F64)
    with torch.no_grad():
        layer.kv_proj.weight.copy_(torch.cat([eye, eye], 0))
        layer.out_proj.weight.copy_(eye)
    x = torch.randn(2, L, d, dtype=F64) * 3
    q = layer.query.detach()[0]  # (d,)
    ref = torch.empty_like(x)
    for t in range(L):
        w = torch.softmax(x[:, :t + 1] @ q / math.sqrt(d), dim=-1)  # (B, t + 1)
        ref[:, t] = (w.unsqueeze(-1) * x[:, :t + 1]).sum(1)
    y, _ = layer(x)
    assert max_diff(y, ref) < 1e-12
    # the query is learned, not derived from x: the weights are not uniform
    assert max_diff(ref[:, -1], x.mean(1)) > 1e-3
    y_step, state = [], None
    for t in range(L):
        y_t, state = layer.step(x[:, t], state)
        y_step.append(y_t)
    assert max_diff(torch.stack(y_step, 1), ref) < 1e-12


def _reference_multihead(layer, x):
    """Aaren recomputed from its weights with plain float64 masked softmax attention."""
    B, n, _ = x.shape
    H, Dh = layer.n_heads, layer.head_dim
    kv = x.double() @ layer.kv_proj.weight.double().T  # (B, L, 2 H Dh)
    k, v = kv[..., :H * Dh].view(B, n, H, Dh), kv[..., H * Dh:].view(B, n, H, Dh)
    s = torch.einsum("blhd,hd->bhl", k, layer.query.double()) / math.sqrt(Dh)  # (B, H, L)
    o = attention_ref(s, v.transpose(1, 2))  # (B, H, L, Dh)
    return o.transpose(1, 2).reshape(B, n, H * Dh) @ layer.out_proj.weight.double().T, s


def test_huge_inputs_stay_finite_and_exact():
    layer = Aaren(16, n_heads=2).double()
    x = torch.randn(2, 40, 16, dtype=F64) * 1e4
    ref, s = _reference_multihead(layer, x)
    assert s.abs().max() > 5e3  # scores far beyond exp's range (e^710 overflows float64)
    x.requires_grad_(True)
    y, state = layer(x)
    assert torch.isfinite(y).all() and all(torch.isfinite(t).all() for t in state)
    assert max_diff(y, ref) / ref.abs().max() < 1e-12
    y.sum().backward()
    assert torch.isfinite(x.grad).all() and torch.isfinite(layer.query.grad).all()
    y_step, st = [], None
    for t in range(x.shape[1]):
        y_t, st = layer.step(x[:, t].detach(), st)
        y_step.append(y_t)
    assert max_diff(torch.stack(y_step, 1), ref) / ref.abs().max() < 1e-12


def test_huge_inputs_float32():
    layer = Aaren(16, n_heads=2)
    x = torch.randn(2, 40, 16) * 1e4
    ref, s = _reference_multihead(layer, x.double())
    assert s.abs().max() > 5e3
    y, state = layer(x)
    assert y.dtype == torch.float32 and torch.isfinite(y).all()
    assert max_diff(y.double(), ref) / ref.abs().max() < 1e-4


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32])
def test_low_precision_state_is_float32(dtype):
    block = AarenBlock(16).to(dtype)
    m, u, w = block.init_state(2, dtype=dtype)
    assert m.dtype == u.dtype == w.dtype == torch.float32
    assert m.shape == (2, 4) and u.shape == (2, 4) and w.shape == (2, 4, 4)
    assert torch.isinf(m).all() and (u == 0).all() and (w == 0).all()
    x = torch.randn(2, 5, 16).to(dtype)
    y, state = block(x, (m, u, w))
    assert y.dtype == dtype and all(t.dtype == torch.float32 for t in state)
    y_t, state = block.step(x[:, 0], state)
    assert y_t.dtype == dtype and all(t.dtype == torch.float32 for t in state)


def test_init_state_float64():
    m, u, w = Aaren(12, n_heads=3).init_state(5, dtype=F64)
    assert m.shape == (5, 3) and w.shape == (5, 3, 4) and w.dtype == F64


def test_bad_state_raises():
    layer = Aaren(16).double()
    bad = layer.init_state(3, dtype=F64)  # batch 3, input batch 2
    with pytest.raises(ValueError, match="state"):
        layer(torch.randn(2, 5, 16, dtype=F64), bad)


def test_bad_options():
    with pytest.raises(ValueError, match="n_heads"):
        Aaren(16, n_heads=0)
    with pytest.raises(ValueError, match="head_dim"):
        Aaren(2, n_heads=4)


def naive_decay(layer: Aaren, x: torch.Tensor) -> torch.Tensor:
    """Independent loop of Aaren with decay: o_t = sum_{i<=t} e^{s_i - (c_t - c_i)} v_i / (same
    without v), c_t = sum_{j<=t} softplus(a . x_j + b), per head, in float64; with `mass` also
    g_t = log sum_{i<=t} e^{s_i - (c_t - c_i)} per head through mass_proj (no decay: c = 0)."""
    B, L, _ = x.shape
    H, Dh = layer.n_heads, layer.head_dim
    k, v = layer.kv_proj(x).view(B, L, 2, H, Dh).unbind(2)
    out = torch.zeros(B, L, H, Dh, dtype=x.dtype)
    mass = torch.zeros(B, L, H, dtype=x.dtype)
    for b in range(B):
        for h in range(H):
            c = 0.0
            clocks, scores = [], []
            for t in range(L):
                if layer.decay:
                    c = c + torch.nn.functional.softplus(layer.clock(x[b, t]))[h]
                clocks.append(c)
                scores.append((k[b, t, h] * layer.query[h]).sum() / math.sqrt(Dh))
                logits = torch.stack([scores[i] - (clocks[t] - clocks[i]) for i in range(t + 1)])
                w = torch.softmax(logits, 0)
                out[b, t, h] = (w[:, None] * v[b, : t + 1, h]).sum(0)
                mass[b, t, h] = torch.logsumexp(logits, 0)
    y = layer.out_proj(out.reshape(B, L, H * Dh))
    return y + layer.mass_proj(mass) if layer.mass else y


@pytest.mark.parametrize("L", [1, 9])
def test_decay_matches_a_naive_loop_and_forgets(L):
    torch.manual_seed(0)
    layer = Aaren(8, n_heads=2, decay=True).double()
    with torch.no_grad():
        layer.clock.bias.fill_(1.5)  # a fast clock: old tokens matter little
    x = torch.randn(2, L, 8, dtype=torch.float64)
    y, _ = layer(x)
    assert max_diff(y, naive_decay(layer, x)) < 1e-10
    if L > 1:  # with decay the last output depends much less on the first token than without
        plain = Aaren(8, n_heads=2).double()
        plain.load_state_dict({k: v for k, v in layer.state_dict().items() if not k.startswith("clock")})
        x2 = x.clone()
        x2[:, 0] += 5.0
        change = lambda m: (m(x2)[0][:, -1] - m(x)[0][:, -1]).abs().max().item()  # noqa: E731
        assert change(layer) < 0.1 * change(plain)


@pytest.mark.parametrize("decay", [False, True])
def test_mass_matches_a_naive_loop_forward_and_backward(decay):
    torch.manual_seed(0)
    layer = Aaren(8, n_heads=2, decay=decay, mass=True).double()
    with torch.no_grad():
        layer.mass_proj.weight.normal_()  # zero at init: make the mass term count
    x = torch.randn(2, 11, 8, dtype=torch.float64, requires_grad=True)
    y, _ = layer(x)
    want = naive_decay(layer, x)
    assert max_diff(y, want) < 1e-10
    g = torch.randn_like(y)
    gx, gw = torch.autograd.grad((y * g).sum(), (x, layer.mass_proj.weight))
    wx, ww = torch.autograd.grad((want * g).sum(), (x, layer.mass_proj.weight))
    assert max_diff(gx, wx) < 1e-9 and max_diff(gw, ww) < 1e-9


def test_mass_counts_tokens_that_the_mean_cannot():
    """Equal tokens: plain Aaren's output is the same after 1 or 50 of them (a mean); the mass
    term grows like log t (no decay), so the layer tells them apart."""
    torch.manual_seed(0)
    x = torch.randn(1, 1, 8, dtype=torch.float64).expand(1, 50, 8).contiguous()
    layer = Aaren(8, n_heads=2, mass=True).double()
    with torch.no_grad():
        y_plain = layer(x)[0]  # mass_proj starts at zero: plain Aaren
        assert max_diff(y_plain[:, 0], y_plain[:, -1]) < 1e-12
        layer.mass_proj.weight.fill_(1.0)  # every output unit gets sum_h g_t,h
        y = layer(x)[0]
        k = layer.kv_proj(x[0, 0]).view(2, 2, 4)[0]  # (H, Dh) the keys of the repeated token
        s = (k * layer.query).sum(-1) * layer.scale  # (H,) its score
        for t in (0, 9, 49):
            want = float((s + math.log(t + 1)).sum())
            assert float((y[0, t] - y_plain[0, t] - want).abs().max()) < 1e-9


def test_decay_huge_clocks_stay_finite():
    """A clock in the thousands (long sequences, fast clocks) shifts every score by as much:
    the scan's running max keeps it exact."""
    torch.manual_seed(0)
    layer = Aaren(8, n_heads=2, decay=True).double()
    with torch.no_grad():
        layer.clock.bias.fill_(50.0)  # ~50 per token -> c ~ 10^4 over 200 tokens
    x = torch.randn(1, 200, 8, dtype=torch.float64)
    y, state = layer(x)
    assert torch.isfinite(y).all() and state[3].min() > 9000
    ys, st = [], None
    for t in range(200):
        y_t, st = layer.step(x[:, t], st)
        ys.append(y_t)
    assert max_diff(torch.stack(ys, 1), y) < 1e-9
