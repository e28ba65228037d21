"""rlts.tasks.rl.envs: Atari100k protocol, error messages, determinism given reset seed + actions."""
import gymnasium as gym
import numpy as np
import pytest

from rlts.tasks.rl.envs import EnvSpec, env_spec, is_atari, make_env, rebuild_env, replay_actions
from rlts.tasks.rl.games import ATARI100K_GAMES


def _rollout(env, seed, actions):
    """Reset with seed, step through actions; every (obs, reward, terminated, truncated,
    life_loss), stopping at the end of the episode."""
    obs, _ = env.reset(seed=seed)
    out = [(obs.copy(), 0.0, False, False, False)]
    for a in actions:
        obs, r, term, trunc, info = env.step(int(a))
        out.append((obs.copy(), float(r), term, trunc, info["life_loss"]))
        if term or trunc:
            break
    return out


def _assert_same(a, b):
    assert len(a) == len(b)
    for x, y in zip(a, b):
        assert x[0].dtype == y[0].dtype and np.array_equal(x[0], y[0])
        assert x[1:] == y[1:]


def test_atari100k_names_exist():
    assert len(ATARI100K_GAMES) == 26 and len(set(ATARI100K_GAMES)) == 26
    for game in ATARI100K_GAMES:
        assert f"ALE/{game}-v5" in gym.registry, game


def test_is_atari():
    for name in ("Pong", "ALE/Pong-v5", "pong", "MsPacman", "ms_pacman", "Tetris", "PongNoFrameskip-v4",
                 "Pong-v0", "ALE/MsPacman-v5"):
        assert is_atari(name), name
    for name in ("CartPole-v1", "Pendulum-v1", "Pongg", "LunarLander-v3", "Blackjack-v1"):
        assert not is_atari(name), name


def test_pong_spec_and_protocol():
    env = make_env("Pong")
    spec = env_spec(env)
    assert spec == EnvSpec("Pong", True, (64, 64, 3), np.dtype("uint8"), 6)
    ale_env = env.unwrapped
    assert ale_env._frameskip == 1
    assert ale_env.ale.getFloat("repeat_action_probability") == 0.0
    assert ale_env.ale.getInt("max_num_frames_per_episode") == 108_000
    obs, info = env.reset(seed=0)
    assert obs.shape == (64, 64, 3) and obs.dtype == np.uint8 and info["life_loss"] is False
    obs, r, term, trunc, info = env.step(0)
    assert obs.shape == (64, 64, 3) and info["life_loss"] is False
    env.close()


def test_continuous_actions_rescaled_to_unit_box():
    env = make_env("Pendulum-v1")  # torque in [-2, 2]
    space = env.action_space
    assert isinstance(space, gym.spaces.Box) and space.shape == (1,)
    assert np.all(space.low == -1.0) and np.all(space.high == 1.0)
    obs, _ = env.reset(seed=0)
    assert obs.dtype == np.float32 and obs.shape == (3,)
    env.step(np.array([1.0], np.float32))
    # the wrapped env receives the rescaled torque: +1 -> +2 (the bound)
    assert env.unwrapped.last_u == pytest.approx(2.0)
    with pytest.raises(ValueError, match="world-model agent needs a Discrete action space"):
        env_spec(env)
    env.close()


@pytest.mark.parametrize("name,obs_dim,act_dim", [("HalfCheetah-v5", 17, 6), ("Hopper-v5", 11, 3)])
def test_mujoco_envs(name, obs_dim, act_dim):
    env = make_env(name)
    assert env.observation_space.shape == (obs_dim,) and env.action_space.shape == (act_dim,)
    obs, _ = env.reset(seed=0)
    assert obs.dtype == np.float32
    obs2, r, term, trunc, info = env.step(env.action_space.sample())
    assert obs2.shape == (obs_dim,) and np.isfinite(r) and info["life_loss"] is False
    env.close()


def test_cartpole_spec():
    env = make_env("CartPole-v1")
    assert env_spec(env) == EnvSpec("CartPole-v1", False, (4,), np.dtype("float32"), 2)
    obs, _ = env.reset(seed=0)
    assert obs.dtype == np.float32
    assert env.step(0)[4]["life_loss"] is False


@pytest.mark.parametrize("name,n,kw", [("CartPole-v1", 200, {}), ("Pong", 200, {}),
                                        ("Pong", 100, {"noop_max": 30})])
def test_reset_seed_and_actions_reproduce_bit_for_bit(name, n, kw):
    actions = np.random.default_rng(1).integers(env_spec(make_env(name)).n_actions, size=n)
    first = _rollout(make_env(name, **kw), 7, actions)
    _assert_same(first, _rollout(make_env(name, **kw), 7, actions))
    # rebuild midway, then continue in lockstep with the original trajectory
    k = min(len(first) - 1, n // 2)
    env, obs = rebuild_env(name, 7, actions[:k], **kw)
    assert np.array_equal(obs, first[k][0])
    for t in range(k, len(first) - 1):
        o, r, term, trunc, info = env.step(int(actions[t]))
        assert np.array_equal(o, first[t + 1][0])
        assert (float(r), term, trunc, info["life_loss"]) == first[t + 1][1:]
    if name == "Pong":  # the seed matters only through the no-op starts
        other = _rollout(make_env(name, **kw), 8, actions)
        same = all(np.array_equal(x[0], y[0]) for x, y in zip(first, other))
        assert same == (kw.get("noop_max", 0) == 0)


def test_life_loss_on_breakout():
    env = make_env("Breakout")
    env.reset(seed=0)
    rng = np.random.default_rng(0)
    lives = env.unwrapped.ale.lives()
    for _ in range(3000):
        _, _, term, trunc, info = env.step(int(rng.integers(env.action_space.n)))
        new_lives = env.unwrapped.ale.lives()
        assert info["life_loss"] == (new_lives < lives and not term)
        if info["life_loss"]:
            return
        lives = new_lives
        assert not (term or trunc)
    pytest.fail("no life lost in 3000 random steps of Breakout")


def test_replay_actions_rejects_episode_ending_early():
    env = make_env("CartPole-v1")
    with pytest.raises(ValueError, match="episode ended"):
        replay_actions(env, 0, [0] * 500)


@pytest.mark.parametrize("name,message", [
    ("Pongg", r"unknown game or environment id 'Pongg'; did you mean Pong\?"),
    ("ALE/Pongg-v5", r"unknown game 'Pongg'.*ALE/Pong-v5"),
    ("CartPol-v1", r"unknown environment id 'CartPol-v1'; did you mean CartPole-v1"),
    ("Blackjack-v1", "a Box space is needed"),
])
def test_errors(name, message):
    with pytest.raises(ValueError, match=message):
        make_env(name)


def test_mujoco_warnings_become_python_warnings(tmp_path, monkeypatch):
    import warnings

    import mujoco

    monkeypatch.chdir(tmp_path)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        make_env("HalfCheetah-v5").reset(seed=0)  # its XML uses the deprecated settotalmass
        assert not [w for w in caught if "MuJoCo" in str(w.message)]
        model = mujoco.MjModel.from_xml_string(
            '<mujoco><worldbody><body><geom size=".1"/><joint type="free"/></body></worldbody></mujoco>')
        data = mujoco.MjData(model)
        data.qvel[:] = 1e20
        mujoco.mj_step(model, data)
    assert any("MuJoCo: Nan, Inf or huge value" in str(w.message) for w in caught)
    assert not (tmp_path / "MUJOCO_LOG.TXT").exists()


def test_replay_actions_continuous():
    env = make_env("Hopper-v5")
    env.reset(seed=3)
    rng = np.random.default_rng(0)
    actions = [rng.uniform(-1, 1, 3).astype(np.float32) for _ in range(15)]
    for a in actions:
        want, *_ = env.step(a)
    assert np.array_equal(replay_actions(make_env("Hopper-v5"), 3, actions), want)


def test_the_atari_path_imports_no_mujoco_sktime_or_stable_baselines():
    """GPU machines may lack them: the RL loop, the world model and an Atari env need none."""
    import subprocess
    import sys

    code = ("import sys; from rlts.tasks.rl import loop; from rlts.tasks.rl.envs import make_env; "
            "make_env('Pong').close(); "
            "print(sorted(m for m in ('mujoco', 'sktime', 'stable_baselines3') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip().splitlines()[-1] == "[]"
