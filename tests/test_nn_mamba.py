"""Tests for rlts.nn.mamba / rlts.nn.mamba2: the SequenceLayer contract (step == forward,
pieces == whole, causality), gradients, state handling, initialisation and input errors.

Contract tests run in float64, where the parallel scans and the recurrent steps must agree
to rounding (1e-9)."""
import math

import pytest
import torch
import torch.nn.functional as F

from rlts.nn.mamba import Mamba, MambaBlock
from rlts.nn.mamba2 import GatedRMSNorm, Mamba2, Mamba2Block
from rlts.nn.model import SequenceModel, count_parameters

F64 = torch.float64
L = 13
TOL = dict(rtol=1e-9, atol=1e-9)

# name -> (factory, input width). Small sizes; Mamba2 chunk sizes that do not divide L.
CASES = {
    "mamba": (lambda: Mamba(16, d_state=4), 16),
    "mamba_rank3_conv2": (lambda: Mamba(16, d_state=3, d_conv=2, dt_rank=3, bias=True), 16),
    "mamba2": (lambda: Mamba2(16, d_state=4, headdim=8, chunk_size=4), 16),
    "mamba2_groups": (lambda: Mamba2(16, d_state=4, headdim=4, ngroups=2, chunk_size=5, bias=True), 16),
    "mamba_block": (lambda: MambaBlock(16, d_state=4), 16),
    "mamba2_block": (lambda: Mamba2Block(16, d_state=4, headdim=8, chunk_size=6), 16),
    "seq_mamba": (lambda: SequenceModel("mamba", d_model=16, n_layers=2, d_state=4), 16),
    "seq_mamba2": (lambda: SequenceModel("mamba2", d_model=16, n_layers=2, d_input=7, d_state=4,
                                         headdim=8, chunk_size=5), 7),
}


def make(name):
    factory, d_in = CASES[name]
    return factory().double(), d_in


def flat(state):
    """All tensors of a (nested) state, in order."""
    if isinstance(state, torch.Tensor):
        return [state]
    return [t for s in state for t in flat(s)]


def randomise(module):
    """Move every parameter off its structured init (D = 1, norm weights = 1, ...) so that a
    term the code dropped or mixed up cannot hide behind a neutral value."""
    with torch.no_grad():
        for name, p in module.named_parameters():
            if name.endswith("A_log"):
                p.add_(0.3 * torch.randn_like(p))
            elif name.endswith("dt_proj.bias") or name.endswith("dt_bias"):
                p.add_(0.5 * torch.randn_like(p))
            else:
                p.add_(0.2 * torch.randn_like(p))
    return module


@pytest.fixture(params=list(CASES))
def case(request):
    m, d_in = make(request.param)
    return randomise(m), d_in


# --------------------------------------------------------------------------- the contract
@pytest.mark.parametrize("start", ["none", "init_state"])
def test_step_equals_forward(case, start):
    m, d_in = case
    x = torch.randn(3, L, d_in, dtype=F64)
    y, state = m(x)
    s = None if start == "none" else m.init_state(3, dtype=F64)
    ys = []
    for t in range(L):
        y_t, s = m.step(x[:, t], s)
        ys.append(y_t)
    torch.testing.assert_close(torch.stack(ys, 1), y, **TOL)
    for a, b in zip(flat(s), flat(state)):
        torch.testing.assert_close(a, b, **TOL)


@pytest.mark.parametrize("cuts", [(6,), (5, 6), (1, 3), (2, 11)])
def test_pieces_equal_whole(case, cuts):
    """(1, 3) and (2, 11): pieces shorter than d_conv - 1, so the conv state mixes pieces."""
    m, d_in = case
    x = torch.randn(2, L, d_in, dtype=F64)
    y, state = m(x)
    bounds = (0,) + cuts + (L,)
    s, ys = None, []
    for l0, l1 in zip(bounds[:-1], bounds[1:]):
        y_p, s = m(x[:, l0:l1], s)
        ys.append(y_p)
    torch.testing.assert_close(torch.cat(ys, 1), y, **TOL)
    for a, b in zip(flat(s), flat(state)):
        torch.testing.assert_close(a, b, **TOL)


def test_forward_then_step_continues(case):
    """A prefix by forward, the rest by step: the same outputs as one forward."""
    m, d_in = case
    x = torch.randn(2, L, d_in, dtype=F64)
    y, _ = m(x)
    _, s = m(x[:, :7])
    for t in range(7, L):
        y_t, s = m.step(x[:, t], s)
        torch.testing.assert_close(y_t, y[:, t], **TOL)


def test_causal(case):
    m, d_in = case
    x = torch.randn(2, L, d_in, dtype=F64)
    y, _ = m(x)
    t = 5
    x2 = x.clone()
    x2[:, t + 1:] = torch.randn(2, L - t - 1, d_in, dtype=F64)
    y2, _ = m(x2)
    torch.testing.assert_close(y2[:, :t + 1], y[:, :t + 1], rtol=0, atol=1e-12)
    assert (y2[:, t + 1:] - y[:, t + 1:]).abs().amax(-1).min() > 1e-6  # later outputs do change
    # and through autograd: d y_t / d x_s = 0 for s > t, nonzero for s <= t
    xg = x.clone().requires_grad_(True)
    g, = torch.autograd.grad(m(xg)[0][:, t].sum(), xg)
    assert g[:, t + 1:].abs().max() == 0
    assert (g[:, :t + 1].abs().amax(-1) > 0).all()


# --------------------------------------------------------------------------- gradients
def test_gradients_reach_every_parameter(case):
    m, d_in = case
    x = torch.randn(2, L, d_in, dtype=F64)
    y, state = m(x)
    loss = (y * torch.randn_like(y)).sum() + sum((t * torch.randn_like(t)).sum() for t in flat(state))
    loss.backward()
    for name, p in m.named_parameters():
        assert p.grad is not None, name
        assert p.grad.abs().sum() > 0, name
        assert torch.isfinite(p.grad).all(), name


@pytest.mark.parametrize("name", ["mamba", "mamba2_groups"])
def test_gradcheck_through_input_and_state(name):
    """Finite differences vs autograd for the input and an incoming state (float64)."""
    m, d_in = make(name)
    m = randomise(m)
    x = torch.randn(1, 6, d_in, dtype=F64, requires_grad=True)
    s0 = [(0.5 * torch.randn_like(t)).requires_grad_(True) for t in flat(m.init_state(1, dtype=F64))]

    def fn(x, conv, ssm):
        y, (c, h) = m(x, (conv, ssm))
        return y, c, h

    assert torch.autograd.gradcheck(fn, (x, *s0), eps=1e-6, atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("name", ["mamba", "mamba2_groups"])
def test_triton_kernels_match_torch_path(name, monkeypatch):
    """On CUDA the layers run the Triton kernels (forward with an incoming state, backward,
    steps): forcing them here (TRITON_INTERPRET=1, see conftest) gives the CPU path's outputs,
    state and gradients."""
    import kernels.selective as ks
    import kernels.ssd as kssd
    if ks._tri is None:
        pytest.skip("triton kernels unavailable")
    m, d_in = make(name)
    m = randomise(m)
    x = torch.randn(2, 9, d_in, dtype=F64)
    params = list(m.parameters())

    def run():
        y1, s = m(x[:, :4])
        y2, s = m(x[:, 4:], s)
        y = torch.cat([y1, y2], 1)
        loss = (y * torch.randn(y.shape, generator=torch.Generator().manual_seed(0), dtype=F64)).sum()
        grads = torch.autograd.grad(loss + s[1].sum(), params)
        with torch.no_grad():
            steps, st = [], None
            for t in range(9):
                y_t, st = m.step(x[:, t], st)
                steps.append(y_t)
        return [y, *s, *grads, torch.stack(steps, 1)]

    ref = run()
    for mod in (ks, kssd):
        monkeypatch.setattr(mod, "use_triton", lambda op, t, backend=None: True)
    tri = run()
    for a, b in zip(tri, ref):
        torch.testing.assert_close(a, b, **TOL)


# --------------------------------------------------------------------------- state handling
def test_step_does_not_mutate_callers_state(case):
    m, d_in = case
    x = torch.randn(2, L, d_in, dtype=F64)
    _, state = m(x[:, :5])
    before = [t.clone() for t in flat(state)]
    _, new = m.step(x[:, 5], state)
    _, _ = m(x[:, 5:], state)
    for a, b, c in zip(flat(state), before, flat(new)):
        assert torch.equal(a, b)
        assert c.data_ptr() != a.data_ptr()
    assert any(not torch.equal(a, c) for a, c in zip(flat(state), flat(new)))


@pytest.mark.parametrize("cls,kw", [(Mamba, dict(d_state=5, d_conv=3)),
                                    (Mamba2, dict(d_state=5, d_conv=3, headdim=4, ngroups=2))])
def test_init_state_shapes_and_dtypes(cls, kw):
    m = cls(8, **kw)
    conv, ssm = m.init_state(3)
    assert conv.dtype == ssm.dtype == torch.float32 and not conv.any() and not ssm.any()
    conv_dim = m.d_inner if cls is Mamba else m.d_inner + 2 * 2 * 5
    assert conv.shape == (3, conv_dim, 2)
    assert ssm.shape == ((3, m.d_inner, 5) if cls is Mamba else (3, m.nheads, 4, 5))
    conv, ssm = m.init_state(2, dtype=torch.bfloat16)
    assert conv.dtype == torch.bfloat16 and ssm.dtype == torch.float32  # the scans accumulate in fp32
    # forward from None, from init_state and from a returned state keep the state's layout
    x = torch.randn(2, 4, 8)
    y, s = m(x)
    y2, s2 = m(x, m.init_state(2))
    torch.testing.assert_close(y, y2)
    assert [t.shape for t in s] == [t.shape for t in s2] and s[1].dtype == torch.float32


@pytest.mark.parametrize("name", ["mamba", "mamba2"])
def test_float32_step_matches_forward(name):
    m, d_in = make(name)
    m = randomise(m.float())
    x = torch.randn(2, L, d_in)
    y, _ = m(x)
    s = None
    for t in range(L):
        y_t, s = m.step(x[:, t], s)
        torch.testing.assert_close(y_t, y[:, t], rtol=1e-4, atol=1e-5)


# --------------------------------------------------------------------------- initialisation
def test_mamba_init():
    dt_min, dt_max = 0.01, 0.05
    m = Mamba(32, d_state=6, dt_rank=4, dt_min=dt_min, dt_max=dt_max)
    A = -torch.exp(m.A_log)
    torch.testing.assert_close(A, -torch.arange(1, 7, dtype=torch.float32).expand(64, 6))
    assert torch.equal(m.D, torch.ones(64))
    dt = F.softplus(m.dt_proj.bias.double())
    assert dt.min() >= dt_min * (1 - 1e-5) and dt.max() <= dt_max * (1 + 1e-5)
    mid = math.sqrt(dt_min * dt_max)  # log-uniform: both halves (in log) are populated
    assert (dt < mid).any() and (dt > mid).any()
    w, bound = m.dt_proj.weight, 4 ** -0.5
    assert w.abs().max() <= bound and w.abs().max() > 0.5 * bound
    assert m.dt_rank == 4 and Mamba(33).dt_rank == math.ceil(33 / 16)


def test_mamba2_init():
    dt_min, dt_max = 0.002, 0.2
    m = Mamba2(64, d_state=8, headdim=4, A_init_range=(2, 5), dt_min=dt_min, dt_max=dt_max)
    assert m.nheads == 32
    a = torch.exp(m.A_log)
    assert a.min() >= 2 * (1 - 1e-6) and a.max() <= 5 * (1 + 1e-6) and a.std() > 0.3
    assert torch.equal(m.D, torch.ones(32)) and torch.equal(m.norm.weight, torch.ones(128))
    dt = F.softplus(m.dt_bias.double())
    assert dt.min() >= dt_min * (1 - 1e-5) and dt.max() <= dt_max * (1 + 1e-5)
    mid = math.sqrt(dt_min * dt_max)
    assert (dt < mid).any() and (dt > mid).any()
    a_default = torch.exp(Mamba2(64, headdim=4).A_log)
    assert a_default.min() >= 1 * (1 - 1e-6) and a_default.max() <= 16 * (1 + 1e-6)


@pytest.mark.parametrize("cls", [Mamba, Mamba2])
def test_dt_init_floor(cls):
    """dt sampled below dt_init_floor is raised to it."""
    kw = dict(headdim=8) if cls is Mamba2 else {}
    m = cls(16, dt_min=1e-6, dt_max=1e-5, dt_init_floor=1e-3, **kw)
    bias = m.dt_proj.bias if cls is Mamba else m.dt_bias
    torch.testing.assert_close(F.softplus(bias.double()), torch.full_like(bias, 1e-3, dtype=F64), rtol=1e-5, atol=0)


def test_gated_rmsnorm_groups():
    """Each group of channels is normalised on its own, after the gate."""
    n = GatedRMSNorm(8, group_size=4).double()
    with torch.no_grad():
        n.weight.copy_(torch.randn(8))
    y, z = torch.randn(3, 8, dtype=F64), torch.randn(3, 8, dtype=F64)
    out = n(y, z)
    h = y * F.silu(z)
    for g in range(2):
        hg = h[:, 4 * g:4 * g + 4]
        want = hg / torch.sqrt(hg.pow(2).mean(-1, keepdim=True) + 1e-5) * n.weight[4 * g:4 * g + 4]
        torch.testing.assert_close(out[:, 4 * g:4 * g + 4], want, rtol=1e-12, atol=1e-12)


# --------------------------------------------------------------------------- parameter count
def test_drama_world_model_parameter_count():
    """Drama's sequence model: Linear(1024 + 18 -> 512) + 2 Mamba-2 blocks (d_state 16,
    expand 2, headdim 64) + final RMSNorm, about 3.7M parameters."""
    m = SequenceModel("mamba2", d_model=512, n_layers=2, d_input=1024 + 18, d_state=16)
    n = count_parameters(m)
    print(f"Drama sequence model: {n} parameters")
    d, d_inner, N, H = 512, 1024, 16, 16
    conv_dim = d_inner + 2 * N
    block = d * (d_inner + conv_dim + H) + conv_dim * (4 + 1) + 3 * H + d_inner + d_inner * d + d
    assert n == (1042 * d + d) + 2 * block + d
    assert abs(n - 3.7e6) <= 0.05 * 3.7e6


# --------------------------------------------------------------------------- bad input
@pytest.mark.parametrize("name", ["mamba", "mamba2", "mamba_block", "mamba2_block", "seq_mamba2"])
def test_bad_input(name):
    m, d_in = make(name)
    with pytest.raises(ValueError, match=rf"\(B, L, D\) with D = {d_in}"):
        m(torch.randn(2, 5, d_in + 1, dtype=F64))
    with pytest.raises(ValueError, match=rf"\(B, L, D\) with D = {d_in}"):
        m(torch.randn(5, d_in, dtype=F64))
    with pytest.raises(ValueError, match=rf"\(B, D\) with D = {d_in}"):
        m.step(torch.randn(2, 1, d_in, dtype=F64), m.init_state(2, dtype=F64))
    with pytest.raises(ValueError, match=rf"\(B, D\) with D = {d_in}"):
        m.step(torch.randn(2, d_in + 2, dtype=F64), m.init_state(2, dtype=F64))


@pytest.mark.parametrize("cls", [Mamba, Mamba2])
def test_bad_state(cls):
    m = cls(16, d_state=4, **(dict(headdim=8) if cls is Mamba2 else {})).double()
    x = torch.randn(2, 5, 16, dtype=F64)
    conv, ssm = m.init_state(2, dtype=F64)
    with pytest.raises(ValueError, match="state must be \\(conv_state, ssm_state\\)"):
        m(x, ssm)
    with pytest.raises(ValueError, match=rf"conv_state must have shape \(2, {conv.shape[1]}, 3\)"):
        m(x, (conv[..., :2], ssm))
    with pytest.raises(ValueError, match=rf"ssm_state must have shape {re_shape(ssm.shape)}"):
        m.step(x[:, 0], (conv, ssm[:1]))


def re_shape(shape):
    return "\\(" + ", ".join(str(s) for s in shape) + "\\)"


@pytest.mark.parametrize("kw,match", [
    (dict(headdim=12), r"headdim = 12 must divide d_inner = expand \* d_model = 32"),
    (dict(headdim=8, ngroups=3), r"ngroups = 3 must divide nheads"),
    (dict(headdim=8, A_init_range=(0, 4)), r"A_init_range"),
    (dict(headdim=8, dt_min=0.2, dt_max=0.1), r"dt_min <= dt_max"),
    (dict(headdim=8, d_state=0), r"Mamba2 needs"),
])
def test_bad_mamba2_options(kw, match):
    with pytest.raises(ValueError, match=match):
        Mamba2(16, **kw)


def test_bad_mamba_options():
    with pytest.raises(ValueError, match="Mamba needs"):
        Mamba(16, d_conv=0)
    with pytest.raises(ValueError, match="Mamba needs"):
        Mamba(16, dt_rank="full")


def test_mamba_parameter_count():
    """SequenceModel("mamba", d_model=256, n_layers=4) has exactly the parameters of the
    Mamba-1 architecture: in_proj, conv (+ bias), x_proj, dt_proj (+ bias), A_log, D,
    out_proj and the block's RMSNorm per layer, plus the final RMSNorm."""
    m = SequenceModel("mamba", d_model=256, n_layers=4)
    n = count_parameters(m)
    print(f"SequenceModel('mamba', d_model=256, n_layers=4): {n} parameters")
    print(f"SequenceModel('mamba2', d_model=256, n_layers=4): "
          f"{count_parameters(SequenceModel('mamba2', d_model=256, n_layers=4))} parameters")
    d, E, N, K, R = 256, 512, 16, 4, 16
    block = d * 2 * E + E * (K + 1) + E * (R + 2 * N) + (R * E + E) + E * N + E + E * d + d
    assert n == 4 * block + d
