"""The options that reproduce Drama's code (and the `drama` overlay of atari.yaml that sets them):
each one is off by default, each one on does what its docstring says on a tiny world model, and
bad values are refused with the key's name."""
import dataclasses
import io

import numpy as np
import pytest
import torch

from rlts.config import check_ranges
from rlts.nn import count_parameters
from rlts.world_models.actor_critic import ActorCritic, ActorCriticConfig
from rlts.world_models.agent import Agent
from rlts.world_models.functions import ReturnScale, lambda_returns
from rlts.world_models.learner import Learner, LearnerConfig
from rlts.world_models.optim import LaProp
from rlts.world_models.replay import ReplayBuffer
from rlts.world_models.world_model import WorldModel, WorldModelConfig

pytestmark = pytest.mark.usefixtures("one_thread")

CPU = torch.device("cpu")


def tiny(**kw) -> WorldModelConfig:
    opts = dict(d_model=32, n_layers=2, d_state=8, headdim=16, n_latents=4, n_classes=4, channels=(4, 8, 8, 8, 8),
                mlp_units=32, head_units=32)
    opts.update(kw)
    return WorldModelConfig(**opts)


def tiny_agent(**kw) -> ActorCriticConfig:
    opts = dict(actor_layers=2, actor_units=32, critic_layers=2, critic_units=32)
    opts.update(kw)
    return ActorCriticConfig(**opts)


def frames(B, L, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (B, L, 64, 64, 3), generator=g, dtype=torch.uint8)


def filled_buffer(obs_shape, steps=24, seed=0) -> ReplayBuffer:
    image = len(obs_shape) == 3
    buffer = ReplayBuffer(64, 1, obs_shape, torch.uint8 if image else torch.float32)
    rng = np.random.default_rng(seed)
    for _ in range(steps):
        obs = rng.integers(0, 256, (1, *obs_shape)) if image else rng.normal(size=(1, *obs_shape))
        buffer.add(obs.astype(np.uint8 if image else np.float32), rng.integers(3, size=1), rng.normal(size=1),
                   [False])
    return buffer


def tiny_learner(obs_shape=(5,), agent=None, world_model=None, **options) -> Learner:
    cfg = LearnerConfig(world_model=world_model or tiny(), agent=agent or tiny_agent(), batch_size=2,
                        batch_length=8, imagine_batch=4, imagine_context=4, imagine_horizon=3, wm_lr=1e-3,
                        wm_warmup=2, **options)
    torch.manual_seed(0)
    return Learner(obs_shape, 3, cfg, CPU)


# ---------------------------------------------------------------- defaults

def test_the_options_are_off_by_default():
    """Off by default, the full-size models have Drama's paper sizes (parameter counts and
    state-dict keys as pinned here) and no BatchNorm."""
    wm_cfg, ac_cfg, learner_cfg = WorldModelConfig(), ActorCriticConfig(), LearnerConfig()
    assert (wm_cfg.image_norm, wm_cfg.head_layers, wm_cfg.imagine_heads) == ("group", 2, "next")
    assert (ac_cfg.optimizer, ac_cfg.lr, ac_cfg.eps, ac_cfg.warmup, ac_cfg.grad_clip, ac_cfg.grad_clip_scope) == \
        ("adam", 3e-5, 1e-5, 0, 100.0, "separate")
    assert (ac_cfg.return_bootstrap, ac_cfg.slow_target, ac_cfg.loss_weighting, ac_cfg.acting) == \
        ("next", "value", "continuation", "recurrent")
    assert learner_cfg.laprop_lr_in_momentum is False
    wm = WorldModel((64, 64, 3), 18)
    ac = ActorCritic(wm.d_feat, 18)
    assert (count_parameters(wm), len(wm.state_dict())) == (7_209_731, 72)
    assert (count_parameters(ac), len(ac.state_dict())) == (1_975_057, 35)
    assert count_parameters(WorldModel((5,), 3)) == 6_567_589
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in wm.modules())


# ---------------------------------------------------------------- validation

@pytest.mark.parametrize("section, key, value, message", [
    ("world_model", "image_norm", "layer", "unknown image_norm 'layer'; use one of group, batch"),
    ("world_model", "head_layers", 0, "head_layers must be at least 1, got 0"),
    ("world_model", "imagine_heads", "previous", "unknown imagine_heads 'previous'; use one of next, current"),
    ("agent", "optimizer", "sgd", "unknown optimizer 'sgd'; use one of adam, laprop"),
    ("agent", "warmup", -1, "warmup must be at least 0, got -1"),
    ("agent", "grad_clip_scope", "both", "unknown grad_clip_scope 'both'; use one of separate, joint"),
    ("agent", "return_bootstrap", "last", "unknown return_bootstrap 'last'; use one of next, current"),
    ("agent", "slow_target", "slow", "unknown slow_target 'slow'; use one of value, return"),
    ("agent", "loss_weighting", "mask", "unknown loss_weighting 'mask'; use one of continuation, none"),
    ("agent", "acting", "window", "unknown acting 'window'; use one of recurrent, drama"),
    ("agent", "acting_context", 0, "acting_context must be at least 1, got 0"),
])
def test_bad_option_values_are_refused_with_the_key(section, key, value, message):
    """By the model that reads the option, and by the run config's check (with the section)."""
    from rlts.tasks.rl.config import parse_rl_config

    if section == "world_model":
        with pytest.raises(ValueError, match=f"^{message}$"):
            WorldModel((5,), 3, tiny(**{key: value}))
    else:
        with pytest.raises(ValueError, match=f"^{message}$"):
            ActorCritic(10, 3, tiny_agent(**{key: value}))
    with pytest.raises(ValueError, match=f"^{message.replace(key, f'{section}.{key}', 1)}$"):
        check_ranges(parse_rl_config([f"--{section}.{key}", str(value)], "atari.yaml"))


def test_laprop_lr_in_momentum_must_be_a_bool():
    from rlts.tasks.rl.config import parse_rl_config

    with pytest.raises(ValueError, match="laprop_lr_in_momentum.*true/false"):
        parse_rl_config(["--laprop_lr_in_momentum", "sometimes"], "atari.yaml")
    with pytest.raises(ValueError, match="lr_in_momentum must be True or False"):
        LaProp([torch.zeros(1, requires_grad=True)], lr_in_momentum="yes")


# ---------------------------------------------------------------- world model: BatchNorm

def test_batch_norm_in_the_image_encoder_and_decoder():
    """image_norm="batch": BatchNorm2d in place of the default's GroupNorm, plus BatchNorm + SiLU after the
    decoder's linear stem; the same parameters otherwise (the norms' affine weights match)."""
    group, batch = WorldModel((64, 64, 3), 3, tiny()), WorldModel((64, 64, 3), 3, tiny(image_norm="batch"))

    def kinds(module):
        return [type(m).__name__ for m in module.modules() if isinstance(m, (torch.nn.GroupNorm, torch.nn.BatchNorm2d))]

    assert kinds(group.encoder) == ["GroupNorm"] * 5 and kinds(group.decoder) == ["GroupNorm"] * 4
    assert kinds(batch.encoder) == ["BatchNorm2d"] * 5 and kinds(batch.decoder) == ["BatchNorm2d"] * 5
    assert count_parameters(batch) == count_parameters(group) + 2 * 8       # the stem's norm, 8 channels
    vector = WorldModel((5,), 3, tiny(image_norm="batch"))                    # an MLP encoder: unaffected
    assert count_parameters(vector) == count_parameters(WorldModel((5,), 3, tiny()))


def test_batch_norm_learns_its_statistics_in_the_loss_only():
    """The loss (training mode) normalises with batch statistics and updates the running ones;
    acting, imagination and open-loop prediction use the running statistics and leave them as
    they are, in training mode too, and give what the model gives in eval mode."""
    torch.manual_seed(0)
    wm = WorldModel((64, 64, 3), 3, tiny(image_norm="batch"))
    ac = ActorCritic(wm.d_feat, 3, tiny_agent())
    obs, action = frames(2, 6), torch.randint(0, 3, (2, 6))
    bn = wm.encoder.net[1]

    def stats():
        return {k: v.clone() for k, v in wm.state_dict().items() if "running" in k or "num_batches" in k}

    before = stats()
    loss, _ = wm.loss(obs, action, torch.zeros(2, 6), torch.zeros(2, 6))
    loss.backward()
    assert bn.num_batches_tracked.item() == 1 and not torch.equal(bn.running_mean, before["encoder.net.1.running_mean"])
    assert wm.decoder.stem[0].num_batches_tracked.item() == 1
    learned = stats()

    def outputs():
        out = {}
        torch.manual_seed(1)
        out["observe"] = wm.observe(obs[:, 0], torch.zeros(2, 32))
        out["window"] = wm.predict_features(obs, action)
        out["imagine"] = wm.imagine(ac.policy, obs[:, :4], action[:, :4], 3)["feat"]
        out["open_loop"] = wm.open_loop(obs, action, 3)["recon"]
        return out

    train_mode = outputs()
    assert wm.training and bn.training                                        # modes restored
    for k, v in stats().items():
        assert torch.equal(v, learned[k]), k
    wm.eval()
    eval_mode = outputs()
    for k in train_mode:
        torch.testing.assert_close(train_mode[k], eval_mode[k], msg=k)


# ---------------------------------------------------------------- world model: heads

def test_head_layers():
    one = WorldModel((5,), 3, tiny(head_layers=1))
    two = WorldModel((5,), 3, tiny())
    assert len(one.reward_head) == 4 and len(two.reward_head) == 7 and len(one.termination_head) == 4
    assert count_parameters(two) - count_parameters(one) == 2 * (32 * 32 + 2 * 32)   # a Linear + LayerNorm each
    obs = torch.randn(2, 6, 5)
    loss, _ = one.loss(obs, torch.randint(0, 3, (2, 6)), torch.randn(2, 6), torch.zeros(2, 6))
    loss.backward()
    assert all(p.grad is not None for p in one.reward_head.parameters())


@pytest.mark.parametrize("heads", ["next", "current"])
def test_imagined_reward_and_continuation_alignment(heads):
    """next: step i's reward and continuation are decoded from the sequence output after
    action i, which step i + 1's features carry; current: from the output step i's own
    features carry (Drama's imagination)."""
    torch.manual_seed(0)
    wm = WorldModel((5,), 3, tiny(imagine_heads=heads)).double()
    ac = ActorCritic(wm.d_feat, 3, tiny_agent()).double()
    obs, action = torch.randn(3, 4, 5, dtype=torch.float64), torch.randint(0, 3, (3, 4))
    rollout = wm.imagine(ac.policy, obs, action, 5)
    h = rollout["feat"][..., wm.d_z:]                                         # (B, H+1, D): h of each step's features
    read = h[:, 1:] if heads == "next" else h[:, :-1]
    with torch.no_grad():
        torch.testing.assert_close(rollout["reward"], wm.reward(read))
        torch.testing.assert_close(rollout["cont"], wm.continues(read))


# ---------------------------------------------------------------- actor-critic losses

def fixed_rollout(d_feat, B=4, H=5, seed=0):
    g = torch.Generator().manual_seed(seed)
    cont = torch.ones(B, H)
    cont[0, 1], cont[2, 3] = 0.0, 0.0
    return {"feat": torch.randn(B, H + 1, d_feat, generator=g), "action": torch.randint(0, 3, (B, H), generator=g),
            "reward": torch.randn(B, H, generator=g), "cont": cont}


@pytest.mark.parametrize("options", [{}, {"loss_weighting": "none"}, {"slow_target": "return"},
                                     {"return_bootstrap": "current"},
                                     {"loss_weighting": "none", "slow_target": "return",
                                      "return_bootstrap": "current"}],
                         ids=["defaults", "unweighted", "slow-return", "current-bootstrap", "drama"])
def test_actor_critic_losses_by_hand(options):
    """The actor and critic losses recomputed from their definitions for each setting; a slow
    critic that differs from the critic makes the two slow targets differ."""
    d = 12
    torch.manual_seed(0)
    ac = ActorCritic(d, 3, tiny_agent(**options))
    with torch.no_grad():
        for p in ac.slow_critic.parameters():
            p.add_(0.3 * torch.randn_like(p))
    rollout = fixed_rollout(d)
    actor_loss, critic_loss, metrics = ac.loss(rollout)

    cfg = ac.cfg
    feat, reward, cont, action = rollout["feat"], rollout["reward"], rollout["cont"], rollout["action"]
    with torch.no_grad():
        value = ac.twohot.decode(ac.critic(feat))
        slow = ac.twohot.decode(ac.slow_critic(feat))
        bootstrap = options.get("return_bootstrap", "next")
        returns = lambda_returns(reward, cont, value, cfg.gamma, cfg.lam, bootstrap)
        target = lambda_returns(reward, cont, slow, cfg.gamma, cfg.lam, bootstrap) \
            if options.get("slow_target") == "return" else slow[:, :-1]
        if options.get("loss_weighting") == "none":
            weight = torch.ones_like(returns)
        else:
            weight = torch.ones_like(cont)
            weight[0, 2:], weight[2, 4:] = 0.0, 0.0                          # after the predicted terminations
        scale = ReturnScale().update(returns)
        dist = torch.distributions.Categorical(logits=ac.actor(feat[:, :-1]))
        want_actor = (weight * (-dist.log_prob(action) * (returns - value[:, :-1]) / scale
                                - cfg.entropy * dist.entropy())).mean()
        logits = ac.critic(feat[:, :-1])
        want_critic = (weight * (ac.twohot.loss(logits, returns) + ac.twohot.loss(logits, target))).mean()
    torch.testing.assert_close(actor_loss.detach(), want_actor)
    torch.testing.assert_close(critic_loss.detach(), want_critic)
    torch.testing.assert_close(metrics["ac/return"], returns.mean())
    assert not torch.allclose(slow[:, :-1], lambda_returns(reward, cont, slow, cfg.gamma, cfg.lam, bootstrap))


# ---------------------------------------------------------------- learner: optimiser, clipping, metrics

def test_learner_metrics_by_default():
    """wm/lr (the warm-up's rate of the step), ac/lr, and the actor-critic gradient norms
    before clipping: each part's and both together."""
    learner = tiny_learner()
    metrics = learner.update(filled_buffer((5,)))
    assert metrics["wm/lr"].item() == pytest.approx(0.5e-3) and metrics["ac/lr"].item() == pytest.approx(3e-5)
    torch.testing.assert_close(metrics["ac/grad_norm"], torch.hypot(metrics["ac/actor_grad_norm"],
                                                                    metrics["ac/critic_grad_norm"]))
    assert all(v.dtype == torch.float32 and v.dim() == 0 for v in metrics.values())
    assert isinstance(learner.actor_opt, torch.optim.Adam) and isinstance(learner.critic_opt, torch.optim.Adam)
    assert learner.wm_opt.param_groups[0]["lr_in_momentum"] is False
    assert learner.update(filled_buffer((5,)))["wm/lr"].item() == pytest.approx(1e-3)


def test_learner_laprop_warm_up_and_joint_clip():
    agent = tiny_agent(optimizer="laprop", lr=4e-5, eps=1e-20, warmup=4, grad_clip_scope="joint")
    learner = tiny_learner(agent=agent, laprop_lr_in_momentum=True)
    assert isinstance(learner.actor_opt, LaProp) and isinstance(learner.critic_opt, LaProp)
    for opt in (learner.wm_opt, learner.actor_opt, learner.critic_opt):
        assert opt.param_groups[0]["lr_in_momentum"] is True
    assert learner.actor_opt.param_groups[0]["eps"] == 1e-20
    buffer = filled_buffer((5,))
    for k in range(5):
        metrics = learner.update(buffer)
        want = 4e-5 * min(1.0, (k + 1) / 4)
        assert metrics["ac/lr"].item() == pytest.approx(want)
        assert learner.actor_opt.param_groups[0]["lr"] == learner.critic_opt.param_groups[0]["lr"] == want
    assert "ac/actor_grad_norm" not in metrics and metrics["ac/grad_norm"] > 0
    assert all("exp_avg_lr" in s for s in learner.actor_opt.state.values())
    fresh = tiny_learner(agent=agent, laprop_lr_in_momentum=True)
    fresh.load_state_dict(learner.state_dict())
    assert fresh.updates == 5
    assert fresh.actor_opt.state_dict()["state"].keys() == learner.actor_opt.state_dict()["state"].keys()


@pytest.mark.parametrize("scope", ["separate", "joint"])
def test_actor_critic_gradient_clip_scope(scope):
    """A tiny clip: separate scales the actor's and the critic's gradients to that norm each,
    joint scales both together to it (the gradients stay until the next update)."""
    learner = tiny_learner(agent=tiny_agent(grad_clip=1e-3, grad_clip_scope=scope))
    learner.update(filled_buffer((5,)))
    norm = lambda params: torch.linalg.vector_norm(torch.stack([p.grad.norm() for p in params])).item()
    actor, critic = norm(learner.ac.actor.parameters()), norm(learner.ac.critic.parameters())
    if scope == "joint":
        assert np.hypot(actor, critic) == pytest.approx(1e-3, rel=1e-4)
    else:
        assert actor == pytest.approx(1e-3, rel=1e-4) and critic == pytest.approx(1e-3, rel=1e-4)


# ---------------------------------------------------------------- acting

def drama_agent(obs_shape=(5,), greedy=True, **kw):
    torch.manual_seed(0)
    wm = WorldModel(obs_shape, 3, tiny())
    return Agent(wm, ActorCritic(wm.d_feat, 3, tiny_agent(acting="drama", **kw)), CPU, greedy=greedy)


def test_drama_acting_reads_the_window_of_earlier_frames():
    """The first action is random without reading the model; later ones are the actor's on
    [prior sample, h] after the window of earlier frames; the current frame does not change
    the current action but joins the window; the window keeps the last `acting_context`."""
    agent = drama_agent(acting_context=3)
    agent.wm.predict_features = lambda *a: pytest.fail("the first step read the world model")
    rng = np.random.default_rng(0)
    obs = [rng.normal(size=(2, 5)).astype(np.float32) for _ in range(6)]
    agent.start(2)
    assert agent.state[0].shape == (2, 0, 5) and agent.state[1].shape == (2, 0)
    first = agent.act(obs[0])
    assert first.shape == (2,) and int(first.max()) < 3
    del agent.wm.predict_features
    assert torch.equal(agent.state[0][:, 0], torch.as_tensor(obs[0])) and torch.equal(agent.state[1][:, 0], first)
    actions = [first]
    for t in range(1, 6):
        window = agent.state
        torch.manual_seed(t)
        want = agent.ac.policy(agent.wm.predict_features(*window), greedy=True)
        other = Agent(agent.wm, agent.ac, CPU, greedy=True)
        other.state = window
        torch.manual_seed(t)
        unseen = other.act(obs[t] + 100.0)                                  # another current frame
        torch.manual_seed(t)
        actions.append(agent.act(obs[t]))
        assert torch.equal(actions[-1], want) and torch.equal(unseen, want)
        assert agent.state[1].shape == (2, min(t + 1, 3))
    assert torch.equal(agent.state[0], torch.as_tensor(np.stack(obs[3:], 1)))
    assert torch.equal(agent.state[1], torch.stack(actions[3:], 1))


def test_drama_acting_keeps_rows_checkpoints_and_acts_on_frames():
    agent = drama_agent((64, 64, 3), greedy=False)
    agent.start(3)
    for t in range(4):
        agent.act(frames(3, 1, seed=t)[:, 0].numpy())
    obs_window, action_window = agent.state
    assert obs_window.dtype == torch.uint8 and obs_window.shape == (3, 4, 64, 64, 3)
    agent.keep([0, 2])
    assert torch.equal(agent.state[0], obs_window[[0, 2]]) and torch.equal(agent.state[1], action_window[[0, 2]])
    assert agent.act(frames(2, 1)[:, 0].numpy()).shape == (2,)
    buf = io.BytesIO()
    torch.save(agent.state, buf)
    buf.seek(0)
    restored = torch.load(buf, weights_only=True)
    assert all(torch.equal(a, b) for a, b in zip(restored, agent.state))
    with pytest.raises(ValueError, match="3 observations for 2 episodes"):
        agent.act(frames(3, 1)[:, 0].numpy())


def test_recurrent_acting_is_the_default():
    torch.manual_seed(0)
    wm = WorldModel((5,), 3, tiny())
    agent = Agent(wm, ActorCritic(wm.d_feat, 3, tiny_agent()), CPU, greedy=True)
    agent.start(2)
    h, _ = agent.state
    assert h.shape == (2, 32)
    feat = wm.observe(torch.zeros(2, 5), h)
    torch.manual_seed(3)
    want = agent.ac.policy(wm.observe(torch.zeros(2, 5), h), greedy=True)
    torch.manual_seed(3)
    assert torch.equal(agent.act(np.zeros((2, 5), np.float32)), want) and feat.shape == (2, wm.d_feat)


# ---------------------------------------------------------------- the overlay

def test_drama_overlay_sets_every_option_and_builds_a_learner():
    from rlts.tasks.rl.config import RLConfig, parse_rl_config

    cfg = parse_rl_config(["--config", "drama"], "atari.yaml")
    check_ranges(cfg)
    wm, a = cfg.world_model, cfg.agent
    assert (wm.image_norm, wm.head_layers, wm.imagine_heads) == ("batch", 1, "current")
    assert (a.optimizer, a.lr, a.eps, a.warmup, a.grad_clip, a.grad_clip_scope) == \
        ("laprop", 4e-5, 1e-20, 1000, 100.0, "joint")
    assert (a.return_bootstrap, a.slow_target, a.loss_weighting, a.acting, a.acting_context) == \
        ("current", "return", "none", "drama", 16)
    assert cfg.laprop_lr_in_momentum and cfg.autocast == "bf16"
    # everything else as the defaults (Drama's Atari100k settings)
    default = RLConfig()
    same = {f.name for f in dataclasses.fields(RLConfig)} - {"world_model", "agent", "laprop_lr_in_momentum",
                                                            "autocast", "env"}
    assert all(getattr(cfg, k) == getattr(default, k) for k in same)

    learner_cfg = LearnerConfig(**{f.name: getattr(cfg, f.name) for f in dataclasses.fields(LearnerConfig)})
    torch.manual_seed(0)
    learner = Learner((64, 64, 3), 6, learner_cfg, CPU)
    assert 6.5e6 < count_parameters(learner.wm) < 7.5e6
    assert isinstance(learner.actor_opt, LaProp) and learner.actor_opt.param_groups[0]["lr"] == 4e-5
    assert any(isinstance(m, torch.nn.BatchNorm2d) for m in learner.wm.encoder.modules())


def test_drama_overlay_debug_run_updates_and_acts():
    """--config drama,debug: one learner update on frames (bf16 autocast, BatchNorm, LaProp
    warm-up, one clip) and a few acting steps on the window."""
    from rlts.tasks.rl.config import parse_rl_config

    cfg = parse_rl_config(["--config", "drama,debug"], "atari.yaml")
    learner_cfg = LearnerConfig(**{f.name: getattr(cfg, f.name) for f in dataclasses.fields(LearnerConfig)})
    torch.manual_seed(0)
    learner = Learner((64, 64, 3), 3, learner_cfg, CPU)
    metrics = learner.update(filled_buffer((64, 64, 3), steps=40))
    assert all(torch.isfinite(v) for v in metrics.values())
    assert metrics["ac/lr"].item() == pytest.approx(4e-5 / 1000)             # warm-up: 1 of 1000 updates
    assert metrics["wm/lr"].item() == pytest.approx(4e-5 / 1000)
    assert "ac/grad_norm" in metrics and "ac/actor_grad_norm" not in metrics
    assert learner.wm.encoder.net[1].num_batches_tracked.item() == 1
    agent = Agent(learner.wm, learner.ac, CPU)
    agent.start(2)
    for t in range(3):
        assert agent.act(frames(2, 1, seed=t)[:, 0].numpy()).shape == (2,)
    assert learner.wm.encoder.net[1].num_batches_tracked.item() == 1         # acting left the statistics
    assert set(learner.images()) == {"wm/real_vs_reconstruction", "wm/imagined_rollout", "wm/open_loop"}
    assert learner.wm.encoder.net[1].num_batches_tracked.item() == 1
