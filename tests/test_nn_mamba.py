"""Tests for rlts.nn.mamba / rlts.nn.mamba2: gradcheck through the input and an incoming
state, the Triton path against the PyTorch path, state handling, float32 steps,
initialisation, parameter counts, and state and option errors. The SequenceLayer contract
(step == forward, pieces == whole, causality, gradients, input shapes) is checked for the
Mamba and Mamba-2 layers, blocks and models in test_nn_contract.py, whose BUILDERS (with
randomised parameters) these tests use too."""
import math

import pytest
import torch
import torch.nn.functional as F

from rlts.nn.mamba import Mamba
from rlts.nn.mamba2 import GatedRMSNorm, Mamba2
from rlts.nn.model import SequenceModel, count_parameters
from test_nn_contract import BUILDERS, build, d_in, flat

F64 = torch.float64
L = 13
TOL = dict(rtol=1e-9, atol=1e-9)
MAMBA_CASES = [name for name in BUILDERS if "mamba" in name]


# --------------------------------------------------------------------------- gradients
@pytest.mark.parametrize("name", ["mamba", "mamba2_groups"])
def test_gradcheck_through_input_and_state(name):
    """Finite differences vs autograd for the input and an incoming state (float64)."""
    m = build(name)
    x = torch.randn(1, 6, d_in(m), dtype=F64, requires_grad=True)
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
    import rlts.kernels.selective as ks
    import rlts.kernels.ssd as kssd
    if ks._tri is None:
        pytest.skip("triton kernels unavailable")
    m = build(name)
    x = torch.randn(2, 9, d_in(m), dtype=F64)
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
@pytest.mark.parametrize("name", MAMBA_CASES)
def test_step_does_not_mutate_callers_state(name):
    m = build(name)
    x = torch.randn(2, L, d_in(m), dtype=F64)
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
    m = build(name).float()
    x = torch.randn(2, L, d_in(m))
    y, _ = m(x)
    s = None
    for t in range(L):
        y_t, s = m.step(x[:, t], s)
        torch.testing.assert_close(y_t, y[:, t], rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("name", MAMBA_CASES)
def test_step_under_bfloat16_autocast_matches_forward(name):
    """Under bfloat16 autocast (bfloat16 projections, float32 weights) a step takes the
    tokens' dtype through the conv and the scan step, as the forward does, and agrees with
    the autocast forward and with the float64 model to bfloat16 precision."""
    m = build(name).float()
    x = torch.randn(2, L, d_in(m))
    with torch.no_grad():
        exact, _ = m.double()(x.double())
        m.float()
        with torch.autocast("cpu", dtype=torch.bfloat16):
            y, _ = m(x)
            s, steps = None, []
            for t in range(L):
                y_t, s = m.step(x[:, t], s)
                steps.append(y_t)
    steps = torch.stack(steps, 1)
    assert steps.dtype == y.dtype
    scale = exact.abs().max().item()
    for got in (steps, y):
        assert (got.double() - exact).abs().max().item() <= 0.05 * scale, name


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


# --------------------------------------------------------------------------- bad state, options
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
