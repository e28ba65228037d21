"""The Drama world model and actor-critic: every backbone trains, the recurrent paths used for
acting and imagination agree with the parallel training path, the model overfits a fixed
batch of real Atari frames, and the learner and the acting agent built on them work."""
import numpy as np
import pytest
import torch

from rlts.nn import count_parameters
from rlts.world_models.actor_critic import ActorCritic, ActorCriticConfig
from rlts.world_models.optim import LaProp
from rlts.world_models.world_model import WorldModel, WorldModelConfig

pytestmark = pytest.mark.usefixtures("one_thread")

BACKBONES = ["mamba2", "mamba", "aaren", "transformer", "gru"]


def tiny(backbone="mamba2", **kw) -> WorldModelConfig:
    opts = dict(backbone=backbone, d_model=32, n_layers=2, d_state=8, headdim=16, n_heads=4, n_latents=4,
                n_classes=4, channels=(4, 8, 8, 8, 8), mlp_units=32, head_units=32)
    opts.update(kw)
    return WorldModelConfig(**opts)


def tiny_agent() -> ActorCriticConfig:
    return ActorCriticConfig(actor_layers=2, actor_units=32, critic_layers=2, critic_units=32)


def random_batch(obs_shape, B=2, L=12, n_actions=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    if len(obs_shape) == 3:
        obs = torch.randint(0, 256, (B, L, *obs_shape), generator=g, dtype=torch.uint8)
    else:
        obs = torch.randn(B, L, *obs_shape, generator=g)
    action = torch.randint(0, n_actions, (B, L), generator=g)
    reward = torch.randn(B, L, generator=g)
    terminated = (torch.rand(B, L, generator=g) < 0.1).float()
    return obs, action, reward, terminated


def test_default_config_is_drama_sized():
    wm = WorldModel((64, 64, 3), 18)
    n = count_parameters(wm)
    assert 6.5e6 < n < 7.5e6, n  # the paper: about 7M world-model parameters
    assert wm.d_feat == 32 * 32 + 512


@pytest.mark.parametrize("backbone", BACKBONES)
@pytest.mark.parametrize("obs_shape", [(64, 64, 3), (5,)], ids=["image", "vector"])
def test_every_backbone_runs_one_training_step(backbone, obs_shape):
    wm = WorldModel(obs_shape, 3, tiny(backbone))
    ac = ActorCritic(wm.d_feat, 3, tiny_agent())
    obs, action, reward, terminated = random_batch(obs_shape)
    loss, metrics = wm.loss(obs, action, reward, terminated)
    assert torch.isfinite(loss) and set(metrics) >= {"wm/reconstruction", "wm/reward", "wm/kl"}
    loss.backward()
    grads = [p.grad for p in wm.parameters()]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    rollout = wm.imagine(ac.policy, obs[:, :4], action[:, :4], horizon=5)
    assert not rollout["feat"].requires_grad  # imagination trains only the actor-critic
    assert rollout["feat"].shape == (2, 6, wm.d_feat) and rollout["action"].shape == (2, 5)
    actor_loss, critic_loss, _ = ac.loss(rollout)
    (actor_loss + critic_loss).backward()
    assert all(p.grad is not None for p in ac.actor.parameters())


@pytest.mark.parametrize("backbone", BACKBONES)
def test_acting_steps_equal_the_parallel_training_forward(backbone):
    """observe/advance one frame at a time (acting, O(1) memory for the recurrent backbones)
    gives the same h_t as the parallel forward the world model is trained with."""
    torch.manual_seed(0)
    wm = WorldModel((6,), 3, tiny(backbone)).double()
    obs, action, _, _ = random_batch((6,), B=1, L=9)
    obs = obs.double()
    torch.manual_seed(1)
    h, state = wm.initial_state(1, torch.device("cpu"))
    hs, zs = [], []
    for t in range(9):
        feat = wm.observe(obs[:, t], h)
        assert torch.equal(feat[:, wm.d_z:], h)  # s_t = [z_t, h_{t-1}]
        zs.append(feat[:, : wm.d_z])
        h, state = wm.advance(feat, action[:, t], state)
        hs.append(h)
    with torch.no_grad():
        h_par, _ = wm.sequence(wm.seq_input(torch.stack(zs, 1), action))
    torch.testing.assert_close(torch.stack(hs, 1), h_par, rtol=1e-9, atol=1e-9)


def test_imagination_matches_a_parallel_replay_of_its_own_rollout():
    """The rollout's recurrent steps continue the context's state exactly: feeding context and
    imagined (z, a) pairs through one parallel forward reproduces the rollout's h."""
    torch.manual_seed(0)
    wm = WorldModel((6,), 3, tiny("mamba2")).double()
    ac = ActorCritic(wm.d_feat, 3, tiny_agent()).double()
    obs, action, _, _ = random_batch((6,), B=3, L=5)
    torch.manual_seed(2)
    z_ctx = wm.sample(wm.encode(obs.double()))
    torch.manual_seed(2)
    ro = wm.imagine(ac.policy, obs.double(), action, horizon=4)
    z_im, h_im = ro["feat"][:, :, : wm.d_z], ro["feat"][:, :, wm.d_z:]   # (B, H+1, .)
    with torch.no_grad():
        x = wm.seq_input(torch.cat([z_ctx, z_im[:, :-1]], 1), torch.cat([action, ro["action"]], 1))
        h_par, _ = wm.sequence(x)                                           # (B, C+H, D)
    torch.testing.assert_close(h_im[:, 0], h_par[:, 4], rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(h_im[:, 1:], h_par[:, 5:], rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(ro["reward"], wm.reward(h_par[:, 5:]))


def test_rejects_bad_observation_shapes():
    with pytest.raises(ValueError, match="observations must be"):
        WorldModel((4, 4), 2, tiny())
    with pytest.raises(ValueError, match="divisible"):
        WorldModel((60, 60, 3), 2, tiny())


def atari_frames(n=48, seed=0):
    """Real Pong frames under the Atari100k wrappers, with random actions."""
    from rlts.tasks.rl.envs import make_env

    env = make_env("Pong")
    obs, _ = env.reset(seed=seed)
    rng = np.random.default_rng(seed)
    frames, actions, rewards, terms = [], [], [], []
    for _ in range(n):
        a = int(rng.integers(env.action_space.n))
        frames.append(obs)
        obs, r, term, trunc, _ = env.step(a)
        actions.append(a), rewards.append(r), terms.append(term)
    env.close()
    return (torch.as_tensor(np.stack(frames))[None], torch.tensor(actions)[None],
            torch.tensor(rewards, dtype=torch.float32)[None], torch.tensor(terms, dtype=torch.float32)[None],
            env.action_space.n)


def test_overfits_a_fixed_batch_of_real_atari_frames():
    """Reconstruction loss falls by at least 3x and reward loss by at least 10x in 150 updates."""
    obs, action, reward, terminated, n_actions = atari_frames()
    torch.manual_seed(0)
    wm = WorldModel((64, 64, 3), n_actions, tiny(channels=(8, 16, 16, 16, 16)))
    opt = LaProp(wm.parameters(), lr=1e-3)
    first = None
    for i in range(150):
        loss, m = wm.loss(obs, action, reward, terminated)
        opt.zero_grad()
        loss.backward()
        opt.step()
        if first is None:
            first = m
    assert m["wm/reconstruction"] < first["wm/reconstruction"] / 3, (first, m)
    assert m["wm/reward"] < first["wm/reward"] / 10, (first, m)


def test_continuation_hard_and_soft():
    torch.manual_seed(0)
    h = torch.randn(50, 32) * 3
    hard = WorldModel((5,), 2, tiny())
    soft = WorldModel((5,), 2, tiny(soft_continuation=True))
    soft.load_state_dict(hard.state_dict())
    logit = hard.termination_head(h).squeeze(-1)
    with torch.no_grad():
        assert torch.equal(hard.continues(h), (logit <= 0).float())
        torch.testing.assert_close(soft.continues(h), 1 - torch.sigmoid(logit))


def test_learner_updates_and_restores_its_state():
    """One update of each model from a replay buffer; the state dict (the checkpoint layout of
    `rlts rl`) restores a fresh learner to the same models and optimisers."""
    from rlts.world_models.learner import Learner, LearnerConfig
    from rlts.world_models.replay import ReplayBuffer

    cfg = LearnerConfig(world_model=tiny(), agent=tiny_agent(), batch_size=2, batch_length=8, imagine_batch=4,
                        imagine_context=4, imagine_horizon=3, wm_lr=1e-3, wm_warmup=2)
    torch.manual_seed(0)
    learner = Learner((5,), 3, cfg, torch.device("cpu"))
    buffer = ReplayBuffer(64, 1, (5,), torch.float32)
    rng = np.random.default_rng(0)
    for _ in range(20):
        buffer.add(rng.normal(size=(1, 5)).astype(np.float32), rng.integers(3, size=1), rng.normal(size=1), [False])
    before = {k: v.clone() for k, v in learner.wm.state_dict().items()}
    metrics = learner.update(buffer)
    assert learner.updates == 1 and {"wm/loss", "ac/actor_loss", "wm/grad_norm"} <= set(metrics)
    assert learner.wm_opt.param_groups[0]["lr"] == pytest.approx(0.5e-3)   # warm-up: 1 of 2 updates
    assert any(not torch.equal(before[k], v) for k, v in learner.wm.state_dict().items())
    assert learner.images() == {}                                            # vector observations
    state = learner.state_dict()
    assert set(state) == {"wm", "ac", "wm_opt", "actor_opt", "critic_opt", "updates"}
    fresh = Learner((5,), 3, cfg, torch.device("cpu"))
    fresh.load_state_dict(state)
    assert fresh.updates == 1
    for k, v in learner.ac.state_dict().items():
        assert torch.equal(fresh.ac.state_dict()[k], v), k
    assert fresh.wm_opt.state_dict()["state"].keys() == learner.wm_opt.state_dict()["state"].keys()


def test_agent_acts_on_a_batch_and_keeps_rows():
    from rlts.world_models.agent import Agent

    torch.manual_seed(0)
    wm = WorldModel((5,), 3, tiny())
    agent = Agent(wm, ActorCritic(wm.d_feat, 3, tiny_agent()), torch.device("cpu"), greedy=True)
    agent.start(4)
    actions = agent.act(np.random.default_rng(0).normal(size=(4, 5)).astype(np.float32))
    assert actions.shape == (4,) and actions.dtype == torch.long and int(actions.max()) < 3
    h, _ = agent.state
    agent.keep([0, 2])
    assert torch.equal(agent.state[0], h[[0, 2]])
    assert agent.act(np.zeros((2, 5), np.float32)).shape == (2,)


def test_open_loop_reads_the_context_then_only_the_actions():
    """After `context` steps the prediction ignores the real observations (changing them changes
    nothing) but follows the actions; within the context it is the posterior's reconstruction."""
    from rlts.world_models.world_model import WorldModel, WorldModelConfig

    torch.manual_seed(0)
    wm = WorldModel((5,), 3, WorldModelConfig(d_model=16, headdim=8, n_latents=4, n_classes=4, mlp_units=16,
                                              head_units=16)).eval()
    obs = torch.randn(2, 12, 5)
    action = torch.randint(0, 3, (2, 12))

    def run(o, a, context=4, seed=1):
        torch.manual_seed(seed)
        return wm.open_loop(o, a, context)

    base = run(obs, action)
    assert base["recon"].shape == (2, 12, 5) and base["reward"].shape == base["cont"].shape == (2, 12)
    later = obs.clone()
    later[:, 4:] += 10.0
    same = run(later, action)
    for key in base:
        torch.testing.assert_close(same[key], base[key])
    other = action.clone()
    other[:, 6] = (other[:, 6] + 1) % 3
    moved = run(obs, other)
    torch.testing.assert_close(moved["recon"][:, :7], base["recon"][:, :7])   # frame t depends on actions < t
    assert not torch.allclose(moved["recon"][:, 7:], base["recon"][:, 7:])
    earlier = obs.clone()
    earlier[:, 2] += 10.0
    assert not torch.allclose(run(earlier, action)["recon"][:, 2], base["recon"][:, 2])
    with pytest.raises(ValueError, match=r"context must lie in \[1, 12\]"):
        wm.open_loop(obs, action, 13)


def _learner_after_update(obs_shape, **options):
    """A tiny learner fed a seeded replay buffer, after one update: (learner, metrics, the
    parameters before it, the dtypes of the outputs of a world-model, an actor and a critic Linear)."""
    from rlts.world_models.learner import Learner, LearnerConfig
    from rlts.world_models.replay import ReplayBuffer

    cfg = LearnerConfig(world_model=tiny(), agent=tiny_agent(), batch_size=2, batch_length=8, imagine_batch=4,
                        imagine_context=4, imagine_horizon=3, wm_lr=1e-3, wm_warmup=1, **options)
    torch.manual_seed(0)
    learner = Learner(obs_shape, 3, cfg, torch.device("cpu"))
    image = len(obs_shape) == 3
    buffer = ReplayBuffer(64, 1, obs_shape, torch.uint8 if image else torch.float32)
    rng = np.random.default_rng(0)
    for _ in range(20):
        obs = rng.integers(0, 256, (1, *obs_shape)) if image else rng.normal(size=(1, *obs_shape))
        buffer.add(obs.astype(np.uint8 if image else np.float32), rng.integers(3, size=1), rng.normal(size=1),
                   [False])
    before = {k: v.clone() for k, v in [*learner.wm.state_dict().items(), *learner.ac.state_dict().items()]}
    dtypes = {"wm": set(), "actor": set(), "critic": set()}
    hooks = [layer.register_forward_hook(lambda m, i, out, key=key: dtypes[key].add(out.dtype))
             for key, layer in (("wm", learner.wm.reward_head[0]), ("actor", learner.ac.actor[0]),
                                ("critic", learner.ac.critic[0]))]
    metrics = learner.update(buffer)
    for h in hooks:
        h.remove()
    return learner, metrics, before, dtypes


@pytest.mark.parametrize("obs_shape", [(64, 64, 3), (5,)], ids=["image", "vector"])
def test_learner_bf16_autocast_update_on_the_cpu(obs_shape):
    """autocast="bf16": the forward passes of both losses run in bfloat16 (their Linears give
    bfloat16 outputs), the losses stay float32 and finite, every model moves, and parameters
    and optimiser states stay float32; the losses are near the float32 update's."""
    learner, metrics, before, dtypes = _learner_after_update(obs_shape, autocast="bf16")
    assert all(torch.bfloat16 in d for d in dtypes.values()), dtypes
    for k, v in metrics.items():
        assert v.dtype == torch.float32 and torch.isfinite(v), (k, v)
    after = {**learner.wm.state_dict(), **learner.ac.state_dict()}
    for prefix in ("encoder", "sequence", "decoder", "reward_head", "actor", "critic"):
        assert any(not torch.equal(after[k], before[k]) for k in after if k.startswith(prefix)), prefix
    assert all(p.dtype == torch.float32 for p in [*learner.wm.parameters(), *learner.ac.parameters()])
    for opt in (learner.wm_opt, learner.actor_opt, learner.critic_opt):
        assert all(t.dtype == torch.float32 for s in opt.state.values() for t in s.values())
    _, fp32, _, fp32_dtypes = _learner_after_update(obs_shape)
    assert all(d == {torch.float32} for d in fp32_dtypes.values()), fp32_dtypes
    for k in ("wm/loss", "wm/reconstruction", "wm/reward", "ac/critic_loss"):
        assert metrics[k].item() == pytest.approx(fp32[k].item(), rel=0.05), k


def test_learner_autocast_none_is_the_float32_update():
    """autocast="none" (the default) leaves the update bit for bit as without the option;
    "bf16" changes it; an unknown value is refused."""
    from rlts.world_models.learner import Learner, LearnerConfig

    default, m_default, _, _ = _learner_after_update((5,))
    none, m_none, _, _ = _learner_after_update((5,), autocast="none")
    bf16, _, _, _ = _learner_after_update((5,), autocast="bf16")
    assert LearnerConfig().autocast == "none"
    for k in m_default:
        assert torch.equal(m_none[k], m_default[k]), k
    for a, b in ((none.state_dict(), default.state_dict()),):
        for part in ("wm", "ac"):
            for k, v in a[part].items():
                assert torch.equal(v, b[part][k]), (part, k)
        for part in ("wm_opt", "actor_opt", "critic_opt"):
            for i, s in a[part]["state"].items():
                for k, v in s.items():
                    assert torch.equal(v, b[part]["state"][i][k]), (part, i, k)
    assert any(not torch.equal(v, bf16.wm.state_dict()[k]) for k, v in none.wm.state_dict().items())
    with pytest.raises(ValueError, match="unknown autocast 'fp16'; use one of none, bf16"):
        Learner((5,), 3, LearnerConfig(world_model=tiny(), agent=tiny_agent(), autocast="fp16"), torch.device("cpu"))


def test_latent_log_probabilities_and_returns_are_float32_for_bf16_inputs():
    """What bf16 autocast hands them (bfloat16 logits, rewards, values) is upcast: the unimix
    log-probabilities and the lambda-returns come out float32, equal to the float32 computation
    on the same rounded values."""
    from rlts.world_models.functions import lambda_returns, unimix

    logits = torch.randn(3, 4, 4).bfloat16()
    assert unimix(logits).dtype == torch.float32
    assert torch.equal(unimix(logits), unimix(logits.float()))
    r, v = torch.randn(2, 50).bfloat16(), (torch.randn(2, 51) * 10).bfloat16()
    c = (torch.rand(2, 50) > 0.1).bfloat16()
    out = lambda_returns(r, c, v, 0.985, 0.95)
    assert out.dtype == torch.float32
    assert torch.equal(out, lambda_returns(r.float(), c.float(), v.float(), 0.985, 0.95))
