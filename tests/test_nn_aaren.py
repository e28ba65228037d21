"""rlts.nn.aaren: the Aaren layer and the "aaren" backbone, in float64. The layer contract
(step == forward, pieces == whole, causality, gradients everywhere, also through the state),
Aaren against masked causal softmax attention computed independently (identity projections,
then random multi-head weights with huge inputs), the empty and low-precision states, and
input validation."""
import math

import pytest
import torch

import rlts.nn.aaren  # noqa: F401  (registers "aaren")
from rlts.nn import BACKBONES, SequenceModel
from rlts.nn.aaren import Aaren, AarenBlock

F64 = torch.float64
L = 13

BUILDERS = {
    "layer": lambda: Aaren(16, n_heads=2, head_dim=5),
    "block": lambda: AarenBlock(16, n_heads=4),
    "model": lambda: SequenceModel("aaren", d_model=16, n_layers=2),
    "model_din_drop": lambda: SequenceModel("aaren", d_model=16, n_layers=2, d_input=7, dropout=0.1, mlp_ratio=2),
}


def build(name):
    return BUILDERS[name]().double().eval()


def d_in(m):
    return getattr(m, "d_input", None) or m.d_model


def rand_x(m, B=3, n=L, scale=2.0):
    return torch.randn(B, n, d_in(m), dtype=F64) * scale


def max_diff(a, b):
    return (a - b).abs().max().item()


def attention_ref(s, v):
    """Independent masked causal softmax: s (B, H, L) scores, v (B, H, L, E)."""
    n = s.shape[-1]
    causal = torch.ones(n, n, dtype=torch.bool).tril()  # row t: keys i <= t
    a = s.unsqueeze(-2).expand(*s.shape[:-1], n, n).masked_fill(~causal, -math.inf)
    return torch.softmax(a, dim=-1) @ v  # (B, H, L, E)


def test_registered():
    assert BACKBONES["aaren"] is AarenBlock


@pytest.mark.parametrize("name", list(BUILDERS))
def test_step_equals_forward(name):
    m = build(name)
    x = rand_x(m)
    y, _ = m(x)
    state, ys = None, []
    for t in range(L):
        y_t, state = m.step(x[:, t], state)
        ys.append(y_t)
    assert max_diff(torch.stack(ys, 1), y) < 1e-9
    # starting from init_state instead of None changes nothing
    state, ys = m.init_state(3, dtype=F64), []
    for t in range(L):
        y_t, state = m.step(x[:, t], state)
        ys.append(y_t)
    assert max_diff(torch.stack(ys, 1), y) < 1e-9


@pytest.mark.parametrize("name", list(BUILDERS))
@pytest.mark.parametrize("sizes", [(6, 7), (1, 12), (5, 1, 7), (3, 7, 3)])
def test_pieces_equal_whole(name, sizes):
    m = build(name)
    x = rand_x(m)
    y, s_whole = m(x)
    state, ys = None, []
    for piece in x.split(list(sizes), dim=1):
        y_p, state = m(piece, state)
        ys.append(y_p)
    assert max_diff(torch.cat(ys, 1), y) < 1e-9
    # the final states agree too (as w / u and m, the representation-free parts)
    flat = lambda s: s if isinstance(s, list) else [s]  # noqa: E731
    for (m1, u1, w1), (m2, u2, w2) in zip(flat(state), flat(s_whole)):
        assert max_diff(m1, m2) < 1e-9
        assert max_diff(w1 / u1.unsqueeze(-1), w2 / u2.unsqueeze(-1)) < 1e-9


@pytest.mark.parametrize("name", list(BUILDERS))
def test_forward_from_init_state(name):
    m = build(name)
    x = rand_x(m)
    assert max_diff(m(x, m.init_state(3, dtype=F64))[0], m(x)[0]) < 1e-12


@pytest.mark.parametrize("name", list(BUILDERS))
def test_causal(name):
    m = build(name)
    x = rand_x(m)
    y, _ = m(x)
    for t in (0, 4, L - 2):
        x2 = x.clone()
        x2[:, t + 1:] = torch.randn_like(x2[:, t + 1:]) * 5
        y2, _ = m(x2)
        assert max_diff(y2[:, :t + 1], y[:, :t + 1]) <= 1e-12
        assert max_diff(y2[:, t + 1:], y[:, t + 1:]) > 1e-6  # the change does reach later outputs


@pytest.mark.parametrize("name", list(BUILDERS))
def test_grads_reach_every_parameter(name):
    m = build(name)
    x = rand_x(m)
    y, _ = m(x)
    (y * torch.randn_like(y)).sum().backward()
    for pname, p in m.named_parameters():
        assert p.grad is not None, pname
        assert p.grad.abs().max() > 0, pname


@pytest.mark.parametrize("name", ["layer", "model"])
def test_grads_through_state_equal_whole(name):
    """Backward through a chunked forward (gradients flow through the passed state) equals
    the backward of the whole sequence, for parameters and inputs."""
    m = build(name)
    x = rand_x(m).requires_grad_(True)
    r = torch.randn(3, L, m.d_model, dtype=F64)

    def grads(sizes):
        m.zero_grad()
        x.grad = None
        state, ys = None, []
        for piece in x.split(list(sizes), dim=1):
            y_p, state = m(piece, state)
            ys.append(y_p)
        (torch.cat(ys, 1) * r).sum().backward()
        return [p.grad.clone() for p in m.parameters()] + [x.grad.clone()]

    for g1, g2 in zip(grads([L]), grads([4, 2, 7])):
        assert max_diff(g1, g2) < 1e-9


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


@pytest.mark.parametrize("name", ["layer", "block", "model"])
def test_bad_input_raises(name):
    m = build(name)
    with pytest.raises(ValueError, match=r"\(B, L, D\) with D = 16"):
        m(torch.randn(2, 5, 15, dtype=F64))
    with pytest.raises(ValueError, match=r"\(B, L, D\)"):
        m(torch.randn(5, 16, dtype=F64))
    with pytest.raises(ValueError, match=r"\(B, D\) with D = 16"):
        m.step(torch.randn(2, 1, 16, dtype=F64), None)
    with pytest.raises(ValueError, match=r"\(B, D\) with D = 16"):
        m.step(torch.randn(2, 17, dtype=F64), None)


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
