"""The SequenceLayer contract (rlts/nn/base.py), checked in float64 for every backbone: every
layer, block and SequenceModel variant in BUILDERS. `step` token by token equals `forward`,
also from init_state and continuing a forward; `forward` in pieces with the returned state
equals the whole (outputs and state); `forward` from init_state equals `forward` from None;
causality (by perturbation and through autograd); gradients reach every parameter, also
through the returned state; backward through a chunked forward equals the whole; wrong input
shapes raise. Backbone-specific tests stay in test_nn_aaren.py, test_nn_baselines.py and
test_nn_mamba.py (which take their modules from `build` here)."""
import pytest
import torch

import rlts.nn.aaren  # noqa: F401  (registers "aaren")
import rlts.nn.baselines  # noqa: F401  (registers "transformer" and "gru")
from rlts.nn import SequenceModel
from rlts.nn.aaren import Aaren, AarenBlock
from rlts.nn.baselines import CausalTransformerBlock, GRUBlock
from rlts.nn.mamba import Mamba, MambaBlock
from rlts.nn.mamba2 import Mamba2, Mamba2Block

F64 = torch.float64
L = 13
TOL = 1e-9  # float64: the parallel and recurrent paths agree to rounding


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


# name -> constructor. The name's first word is the backbone. Small sizes; Mamba2 chunk sizes
# that do not divide L; d_input and dropout (checked in eval mode) variants of the models.
BUILDERS = {
    "aaren_layer": lambda: Aaren(16, n_heads=2, head_dim=5),
    "aaren_block": lambda: AarenBlock(16, n_heads=4),
    "aaren_model": lambda: SequenceModel("aaren", d_model=16, n_layers=2),
    "aaren_decay_layer": lambda: randomise(Aaren(16, n_heads=2, head_dim=5, decay=True)),
    "aaren_decay_model": lambda: randomise(SequenceModel("aaren", d_model=16, n_layers=2, decay=True)),
    "aaren_mass_layer": lambda: randomise(Aaren(16, n_heads=2, head_dim=5, mass=True)),
    "aaren_decay_mass_model": lambda: randomise(SequenceModel("aaren", d_model=16, n_layers=2, decay=True,
                                                              mass=True)),
    "aaren_model_din_drop": lambda: SequenceModel("aaren", d_model=16, n_layers=2, d_input=7, dropout=0.1,
                                                  mlp_ratio=2),
    "tf_block": lambda: CausalTransformerBlock(16, n_heads=4),
    "tf_window": lambda: CausalTransformerBlock(16, n_heads=2, max_cache=4),
    "tf_model": lambda: SequenceModel("transformer", d_model=16, n_layers=2),
    "tf_model_window_din": lambda: SequenceModel("transformer", d_model=16, n_layers=2, d_input=7, max_cache=3,
                                                 dropout=0.1, mlp_ratio=2),
    "gru_block": lambda: GRUBlock(16),
    "gru_model": lambda: SequenceModel("gru", d_model=16, n_layers=2),
    "gru_model_din": lambda: SequenceModel("gru", d_model=16, n_layers=2, d_input=7, dropout=0.1),
    "mamba": lambda: randomise(Mamba(16, d_state=4)),
    "mamba_rank3_conv2": lambda: randomise(Mamba(16, d_state=3, d_conv=2, dt_rank=3, bias=True)),
    "mamba2": lambda: randomise(Mamba2(16, d_state=4, headdim=8, chunk_size=4)),
    "mamba2_groups": lambda: randomise(Mamba2(16, d_state=4, headdim=4, ngroups=2, chunk_size=5, bias=True)),
    "mamba_block": lambda: randomise(MambaBlock(16, d_state=4)),
    "mamba2_block": lambda: randomise(Mamba2Block(16, d_state=4, headdim=8, chunk_size=6)),
    "seq_mamba": lambda: randomise(SequenceModel("mamba", d_model=16, n_layers=2, d_state=4)),
    "seq_mamba2": lambda: randomise(SequenceModel("mamba2", d_model=16, n_layers=2, d_input=7, d_state=4,
                                                  headdim=8, chunk_size=5)),
}

# how many earlier tokens an output can see, for the sliding-window variants (max_cache per block)
REACH = {"tf_window": 4, "tf_model_window_din": 2 * 3}


def build(name):
    return BUILDERS[name]().double().eval()


def d_in(m):
    return getattr(m, "d_input", None) or m.d_model


def rand_x(m, B=3, n=L):
    return torch.randn(B, n, d_in(m), dtype=F64) * 2


def max_diff(a, b):
    assert a.shape == b.shape and a.dtype == b.dtype
    return (a - b).abs().max().item()


def flat(state):
    """All tensors of a (nested) state, in order."""
    if isinstance(state, torch.Tensor):
        return [state]
    return [t for s in state for t in flat(s)]


def comparable(name, state):
    """The state's tensors, representation-free: an Aaren state (m, u, w) is compared as m and
    w / u (u and w are scaled by exp(-m), the running max, which rounding may shift)."""
    ts = flat(state)
    if not name.startswith("aaren"):
        return ts
    if name.startswith("aaren_decay"):  # (m, u, w, clock) per layer
        return [t for m, u, w, c in zip(ts[0::4], ts[1::4], ts[2::4], ts[3::4]) for t in (m, w / u.unsqueeze(-1), c)]
    return [t for m, u, w in zip(ts[0::3], ts[1::3], ts[2::3]) for t in (m, w / u.unsqueeze(-1))]


def assert_same_state(name, s1, s2, tol=TOL):
    a, b = comparable(name, s1), comparable(name, s2)
    assert len(a) == len(b) > 0
    for t1, t2 in zip(a, b):
        assert max_diff(t1, t2) < tol


def run_steps(m, x, state=None):
    ys = []
    for t in range(x.shape[1]):
        y_t, state = m.step(x[:, t], state)
        ys.append(y_t)
    return torch.stack(ys, 1), state


def run_pieces(m, x, sizes):
    state, ys = None, []
    for piece in x.split(list(sizes), dim=1):
        y_p, state = m(piece, state)
        ys.append(y_p)
    return torch.cat(ys, 1), state


def assert_matches_whole(name, run, start=0, tol=TOL):
    """`run(m, x)` (outputs from `start` on, final state) equals one forward on the whole x."""
    m = build(name)
    x = rand_x(m)
    y, state = m(x)
    y_run, s = run(m, x)
    assert max_diff(y_run, y[:, start:]) < tol
    assert_same_state(name, s, state)


NAMES = list(BUILDERS)


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("start", ["none", "init_state"])
def test_step_equals_forward(name, start):
    assert_matches_whole(name, lambda m, x: run_steps(m, x, None if start == "none" else m.init_state(3, dtype=F64)))


@pytest.mark.parametrize("name", NAMES)
def test_forward_from_init_state(name):
    assert_matches_whole(name, lambda m, x: m(x, m.init_state(3, dtype=F64)), tol=1e-12)


# (1, 2, 10) and (2, 9, 2): pieces shorter than d_conv - 1, so the conv state mixes pieces
@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("sizes", [(6, 7), (1, 12), (5, 1, 7), (3, 7, 3), (1, 2, 10), (2, 9, 2)])
def test_pieces_equal_whole(name, sizes):
    assert_matches_whole(name, lambda m, x: run_pieces(m, x, sizes))


@pytest.mark.parametrize("name", NAMES)
def test_forward_then_step_continues(name):
    """A prefix by forward, the rest by step: the same outputs as one forward."""
    assert_matches_whole(name, lambda m, x: run_steps(m, x[:, 7:], m(x[:, :7])[1]), start=7)


@pytest.mark.parametrize("name", NAMES)
def test_causal(name):
    m = build(name)
    x = rand_x(m)
    y, _ = m(x)
    reach = REACH.get(name, L)
    for t in (0, 4, 5, L - 2):
        x2 = x.clone()
        x2[:, t + 1:] = torch.randn_like(x2[:, t + 1:]) * 5
        y2, _ = m(x2)
        assert max_diff(y2[:, :t + 1], y[:, :t + 1]) <= 1e-12
        # the change does reach every later output
        assert (y2[:, t + 1:] - y[:, t + 1:]).abs().amax(-1).min() > 1e-6
        # and through autograd: d y_t / d x_s = 0 for s > t (and, with a sliding window, for
        # s < t - reach), nonzero for the other s <= t
        xg = x.clone().requires_grad_(True)
        g, = torch.autograd.grad(m(xg)[0][:, t].sum(), xg)
        first = max(0, t - reach)
        assert g[:, t + 1:].abs().max() == 0
        assert g[:, :first].numel() == 0 or g[:, :first].abs().max() == 0
        assert (g[:, first:t + 1].abs().amax(-1) > 0).all()


@pytest.mark.parametrize("name", NAMES)
def test_grads_reach_every_parameter(name):
    """From the outputs alone, then from the outputs and the returned state."""
    m = build(name)
    x = rand_x(m)
    y, state = m(x)
    (y * torch.randn_like(y)).sum().backward(retain_graph=True)
    for pname, p in m.named_parameters():
        assert p.grad is not None, pname
        assert p.grad.abs().max() > 0, pname
        assert torch.isfinite(p.grad).all(), pname
    m.zero_grad()
    loss = (y * torch.randn_like(y)).sum() + sum((t * torch.randn_like(t)).sum()
                                                  for t in flat(state) if t.is_floating_point())
    loss.backward()
    for pname, p in m.named_parameters():
        assert p.grad is not None, pname
        assert p.grad.abs().sum() > 0, pname
        assert torch.isfinite(p.grad).all(), pname


@pytest.mark.parametrize("name", NAMES)
def test_grads_through_state_equal_whole(name):
    """Backward through a chunked forward (gradients flow through the passed state) equals
    the backward of the whole sequence, for parameters and inputs."""
    m = build(name)
    x = rand_x(m).requires_grad_(True)
    r = torch.randn(3, L, m.d_model, dtype=F64)

    def grads(sizes):
        m.zero_grad()
        x.grad = None
        (run_pieces(m, x, sizes)[0] * r).sum().backward()
        return [p.grad.clone() for p in m.parameters()] + [x.grad.clone()]

    for g1, g2 in zip(grads([L]), grads([4, 2, 7])):
        assert max_diff(g1, g2) < TOL


@pytest.mark.parametrize("name", NAMES)
def test_bad_input_raises(name):
    m = build(name)
    D = d_in(m)
    for state in (None, m.init_state(2, dtype=F64)):
        for bad in (D - 1, D + 1):
            with pytest.raises(ValueError, match=rf"\(B, L, D\) with D = {D}"):
                m(torch.randn(2, 5, bad, dtype=F64), state)
        with pytest.raises(ValueError, match=rf"\(B, L, D\) with D = {D}"):
            m(torch.randn(5, D, dtype=F64), state)
        with pytest.raises(ValueError, match=rf"\(B, D\) with D = {D}"):
            m.step(torch.randn(2, 1, D, dtype=F64), state)
        for bad in (D + 1, D + 2):
            with pytest.raises(ValueError, match=rf"\(B, D\) with D = {D}"):
                m.step(torch.randn(2, bad, dtype=F64), state)


def test_state_nbytes_counts_every_tensor():
    from rlts.nn import state_nbytes

    state = (torch.zeros(2, 3), [torch.zeros(4, dtype=torch.float64), None], {"k": torch.zeros(5, dtype=torch.int8)})
    assert state_nbytes(state) == 2 * 3 * 4 + 4 * 8 + 5
    assert state_nbytes(None) == 0
