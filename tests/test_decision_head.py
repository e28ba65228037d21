"""rlts.heads.decision: DecisionModel (DecisionAaren / the Decision Transformer baseline) for every
backbone, discrete + vector and continuous + image observations: shapes, loss and gradients;
acting token by token == the parallel forward (float64, beyond the transformer's window too);
causality; the transformer's exact window; masked padding; a tiny overfit; constant memory
while acting; clear errors."""
import math

import pytest
import torch

from rlts.heads.decision import DecisionModel, decision_loss
from rlts.nn import state_nbytes

from _backbones import TINY_OPTIONS

F64 = torch.float64
BACKBONES = sorted(TINY_OPTIONS)
KINDS = ["discrete-vector", "continuous-image"]
IMG = (8, 8, 3)

pytestmark = pytest.mark.usefixtures("one_thread")


def model(backbone="aaren", kind="discrete-vector", context=3, **kw):
    torch.manual_seed(0)
    space = dict(n_actions=3) if kind == "discrete-vector" else dict(act_dim=2)
    obs_shape = (5,) if kind == "discrete-vector" else IMG
    kw = {"d_model": 16, "n_layers": 2, "context": context, "return_scale": 10.0, **TINY_OPTIONS[backbone], **kw}
    return DecisionModel(obs_shape, backbone=backbone, **space, **kw).double().eval()


def batch(m, B=2, T=7, seed=1):
    g = torch.Generator().manual_seed(seed)
    if m.image:
        obs = torch.randint(0, 256, (B, T, *m.obs_shape), generator=g, dtype=torch.uint8)
    else:
        obs = torch.randn(B, T, *m.obs_shape, generator=g, dtype=F64)
    if m.discrete:
        actions = torch.randint(0, m.action_size, (B, T), generator=g)
    else:
        actions = torch.rand(B, T, m.action_size, generator=g, dtype=F64) * 2 - 1
    rtg = torch.randn(B, T, generator=g, dtype=F64) * 10
    timesteps = torch.arange(T).expand(B, T) + torch.randint(0, 50, (B, 1), generator=g)
    return obs, actions, rtg, timesteps


def act_all(m, obs, actions, rtg, timesteps):
    """Acting token by token over the whole batch of episodes -> (B, T, ...) predictions."""
    state, preds = m.start(obs.shape[0]), []
    for t in range(obs.shape[1]):
        y, state = m.act(obs[:, t], rtg[:, t], timesteps[:, t], state)
        preds.append(y)
        state = m.observe_action(actions[:, t], timesteps[:, t], state)
    return torch.stack(preds, 1), state


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("backbone", BACKBONES)
def test_shapes_loss_and_gradients(backbone, kind):
    m = model(backbone, kind).float().train()
    obs, actions, rtg, timesteps = batch(m)
    obs = obs if m.image else obs.float()
    actions = actions if m.discrete else actions.float()
    pred = m(obs, actions, rtg.float(), timesteps)
    assert pred.shape == (2, 7, m.action_size) and pred.dtype == torch.float32
    if not m.discrete:
        assert bool((pred.abs() <= 1).all())
    loss, metrics = m.loss(obs, actions, rtg.float(), timesteps)
    assert math.isfinite(float(loss.detach())) and metrics["n_steps"] == 14
    assert ("accuracy" in metrics) == m.discrete
    loss.backward()
    for name, p in m.named_parameters():
        assert p.grad is not None and bool(torch.isfinite(p.grad).all()), name
        assert float(p.grad.abs().sum()) > 0, f"no gradient reaches {name}"


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("backbone", BACKBONES)
def test_acting_equals_forward(backbone, kind):
    """T = 7 > context = 3 steps: the transformer's sliding window applies on both paths."""
    m = model(backbone, kind, context=3)
    obs, actions, rtg, timesteps = batch(m, T=7)
    with torch.no_grad():
        ref = m(obs, actions, rtg, timesteps)
    got, _ = act_all(m, obs, actions, rtg, timesteps)
    assert got.shape == ref.shape
    torch.testing.assert_close(got, ref, rtol=0, atol=1e-9)


@pytest.mark.parametrize("backbone", BACKBONES)
def test_causal_and_blind_to_the_current_action(backbone):
    m = model(backbone)
    obs, actions, rtg, timesteps = batch(m, T=6)
    t = 3
    obs2, actions2, rtg2, ts2 = obs.clone(), actions.clone(), rtg.clone(), timesteps.clone()
    actions2[:, t:] = (actions[:, t:] + 1) % m.action_size  # a_t and later
    obs2[:, t + 1:] += 1.0
    rtg2[:, t + 1:] -= 3.0
    ts2[:, t + 1:] += 7
    with torch.no_grad():
        a, b = m(obs, actions, rtg, timesteps), m(obs2, actions2, rtg2, ts2)
    torch.testing.assert_close(a[:, :t + 1], b[:, :t + 1], rtol=0, atol=0)
    assert float((a[:, t + 1:] - b[:, t + 1:]).abs().max()) > 1e-6
    obs2 = obs.clone()
    obs2[:, t] += 1.0  # o_t itself does matter
    with torch.no_grad():
        assert float((m(obs2, actions, rtg, timesteps)[:, t] - a[:, t]).abs().max()) > 1e-6


def test_transformer_window_is_the_last_context_steps():
    """One layer: a_t is predicted from steps t-context+1..t exactly (the DT's input window)."""
    K = 3
    m = model("transformer", context=K, n_layers=1)
    assert m.backbone.layers[0].max_cache == 3 * K - 2
    obs, actions, rtg, timesteps = batch(m, B=1, T=8)
    t = 6
    with torch.no_grad():
        ref = m(obs, actions, rtg, timesteps)[:, t]
        old = obs.clone(), (actions + 1) % 3, rtg.clone()
        old[0][:, :t - K + 1] += 5.0
        old[2][:, :t - K + 1] -= 5.0
        actions_old = torch.where(torch.arange(8) <= t - K, old[1], actions)
        torch.testing.assert_close(m(old[0], actions_old, old[2], timesteps)[:, t], ref, rtol=0, atol=1e-12)
        rtg_in = rtg.clone()
        rtg_in[:, t - K + 1] += 5.0  # the oldest step inside the window
        assert float((m(obs, actions, rtg_in, timesteps)[:, t] - ref).abs().max()) > 1e-6


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("backbone", ["aaren", "transformer", "mamba2"])
def test_masked_loss_ignores_padding(backbone, kind):
    m = model(backbone, kind)
    obs, actions, rtg, timesteps = batch(m, B=2, T=9)
    lengths = torch.tensor([9, 4])
    mask = torch.arange(9)[None] < lengths[:, None]
    with torch.no_grad():
        loss, metrics = m.loss(obs, actions, rtg, timesteps, mask)
        pad = ~mask
        obs2, actions2, rtg2, ts2 = obs.clone(), actions.clone(), rtg.clone(), timesteps.clone()
        if m.image:
            obs2[pad] = 255 - obs2[pad]
            actions2[pad] = float("nan")
        else:
            obs2[pad] = float("nan")
            actions2[pad] = -100  # not even a valid action
        rtg2[pad], ts2[pad] = 1e6, 10 ** 7
        loss2, _ = m.loss(obs2, actions2, rtg2, ts2, mask)
        assert metrics["n_steps"] == 13
        assert float(loss2) == float(loss)
        # the same as scoring the two real sequences on their own
        l0, _ = m.loss(obs[:1], actions[:1], rtg[:1], timesteps[:1])
        l1, _ = m.loss(obs[1:, :4], actions[1:, :4], rtg[1:, :4], timesteps[1:, :4])
        assert math.isclose(float(loss), (9 * float(l0) + 4 * float(l1)) / 13, rel_tol=1e-12)


def test_decision_loss_for_the_trainer():
    m = model()
    obs, actions, rtg, timesteps = batch(m)
    mask = torch.ones(2, 7, dtype=torch.bool)
    with torch.no_grad():
        a, ma = decision_loss(m, {"observations": obs, "actions": actions, "returns_to_go": rtg,
                                  "timesteps": timesteps, "mask": mask})
        b, mb = m.loss(obs, actions, rtg, timesteps)
    assert float(a) == float(b) and ma == mb
    with pytest.raises(ValueError, match="needs a DecisionModel"):
        decision_loss(torch.nn.Linear(2, 2), {})


def test_timesteps_beyond_max_share_the_last_embedding():
    m = model(max_timestep=10)
    obs, actions, rtg, timesteps = batch(m)
    with torch.no_grad():
        a = m(obs, actions, rtg, timesteps.clamp(max=9))
        b = m(obs, actions, rtg, timesteps.clamp(max=9) + 100 * (timesteps >= 9))
    torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_overfits_a_return_conditioned_toy_task():
    """The right action is (obs[0] > 0) when the return-to-go is high and the opposite when it is
    low: the policy must read both tokens. Cross-entropy falls >= 20x within 150 Adam steps."""
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(3)
    B, T = 8, 6
    obs = torch.randn(B, T, 4, generator=g)
    high = (torch.arange(B) % 2 == 0)[:, None].expand(B, T)
    rtg = torch.where(high, 10.0, 1.0) - 0.5 * torch.arange(T)        # decreasing, as returns-to-go do
    actions = ((obs[..., 0] > 0) == high).long()
    timesteps = torch.arange(T).expand(B, T)
    m = DecisionModel((4,), n_actions=2, d_model=32, n_layers=2, return_scale=10.0, dropout=0.0)
    opt = torch.optim.Adam(m.parameters(), lr=3e-3)
    first = None
    for _ in range(150):
        loss, metrics = m.loss(obs, actions, rtg, timesteps)
        first = first if first is not None else metrics["loss"]
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert metrics["loss"] < first / 20, (first, metrics["loss"])
    assert metrics["accuracy"] == 1.0


def test_constant_memory_while_acting():
    """aaren: the state has the same size after 10 and 1000 steps; transformer: the KV cache
    stops growing at the window (3 * context - 2 tokens per layer)."""
    for backbone, n_small, n_big in [("aaren", 10, 1000), ("transformer", 10, 60)]:
        m = model(backbone, context=4)
        obs, actions, rtg, timesteps = batch(m, B=2, T=n_big, seed=2)
        sizes = {}
        state = m.start(2)
        for t in range(n_big):
            _, state = m.act(obs[:, t], rtg[:, t], timesteps[:, t], state)
            state = m.observe_action(actions[:, t], timesteps[:, t], state)
            if t + 1 in (2, n_small, n_big):
                sizes[t + 1] = state_nbytes(state)
        assert sizes[n_small] == sizes[n_big], backbone
        if backbone == "aaren":
            assert sizes[2] == sizes[n_big]
        else:
            assert sizes[2] < sizes[n_small]
            assert state[0][0].shape[2] == 3 * 4 - 2


def test_clear_errors():
    m = model()
    obs, actions, rtg, timesteps = batch(m)
    cases = [
        ((obs[..., :4], actions, rtg, timesteps), "obs must be"),
        ((obs, actions.double(), rtg, timesteps), "actions must be int"),
        ((obs, actions[:, :5], rtg, timesteps), "actions must be"),
        ((obs, actions, rtg[:, :, None], timesteps), "rtg must be"),
        ((obs, actions, rtg, timesteps.double()), "timesteps must be int"),
        ((obs, actions, rtg, timesteps, torch.ones(2, 7)), "mask must be bool"),
        ((obs, actions, rtg, timesteps, torch.arange(7).expand(2, 7) >= 2), "pad on the right"),
    ]
    for args, msg in cases:
        with pytest.raises(ValueError, match=msg):
            m(*args)
    c = model(kind="continuous-image")
    with pytest.raises(ValueError, match=r"actions must be float tensor of shape \(B=2, T=7, act_dim=2\)"):
        c(*batch(c)[:1], torch.zeros(2, 7, dtype=torch.long), *batch(c)[2:])
    state = m.start(2)
    with pytest.raises(ValueError, match="obs_t must be"):
        m.act(obs[:, 0, :3], rtg[:, 0], timesteps[:, 0], state)
    with pytest.raises(ValueError, match="rtg_t must be"):
        m.act(obs[:, 0], rtg[:1, 0], timesteps[:, 0], state)
    with pytest.raises(ValueError, match="action_t must be"):
        m.observe_action(actions[:, :2], timesteps[:, 0], state)
    for kw, msg in [(dict(n_actions=2, act_dim=2), "exactly one"), (dict(), "exactly one"),
                    (dict(n_actions=0), "int >= 1"), (dict(n_actions=2, return_scale=0.0), "return_scale"),
                    (dict(n_actions=2, backbone="nope"), "unknown backbone")]:
        with pytest.raises(ValueError, match=msg):
            DecisionModel((5,), **kw)
    with pytest.raises(ValueError, match="obs_shape"):
        DecisionModel((3, 4), n_actions=2)
    with pytest.raises(ValueError, match="H, W >= 8"):
        DecisionModel((4, 4, 3), n_actions=2)
    with pytest.raises(ValueError, match="batch_size"):
        m.start(0)


def test_decision_aaren_is_the_aaren_default():
    from rlts.heads import DecisionAaren

    m = DecisionAaren((4,), n_actions=2, d_model=16, n_layers=1)
    assert isinstance(m, DecisionModel) and type(m.backbone.layers[0]).__name__ == "AarenBlock"
