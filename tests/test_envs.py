"""rlts.tasks.rl.envs: Atari100k protocol, error messages, determinism given reset seed + actions,
Gymnasium's env checker, and ale_py's vector env against make_env."""
import gymnasium as gym
import numpy as np
import pytest

from rlts.tasks.rl.envs import (AtariVector, EnvSpec, env_spec, is_atari, make_env, make_envs, rebuild_env,
                                 replay_actions)
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


# ---------------------------------------------------------------- Gymnasium's env checker

class _Grid(gym.Env):
    """A 2-D float64 observation and a Box action in [0, 2]: every wrapper make_env adds to a
    non-Atari env (flatten, float32, rescaled actions)."""

    metadata = {"render_modes": []}

    def __init__(self, render_mode=None):
        self.render_mode = render_mode
        self.observation_space = gym.spaces.Box(-5.0, 5.0, (2, 3), np.float64)
        self.action_space = gym.spaces.Box(0.0, 2.0, (2,), np.float32)
        self._x = np.zeros((2, 3))

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self._x = self.np_random.uniform(-1, 1, (2, 3))
        return self._x.copy(), {}

    def step(self, action):
        self._x = np.clip(self._x + 0.1 * float(np.sum(action)) - 0.1, -5.0, 5.0)
        return self._x.copy(), float(self._x.sum()), bool(np.abs(self._x).max() >= 5.0), False, {}


@pytest.fixture
def grid_env():
    gym.register("RltsTest/Grid-v0", entry_point=_Grid, max_episode_steps=30)
    yield "RltsTest/Grid-v0"
    gym.registry.pop("RltsTest/Grid-v0")


# Warnings of the checker that are no fault of the env: it is wrapped (make_env's wrappers are the
# point), and some tasks' observations are unbounded (CartPole's velocities, MuJoCo's states).
_HARMLESS = ("is different from the unwrapped version", "observation space minimum value is -infinity",
             "observation space maximum value is infinity")


def _mujoco_installed() -> bool:
    try:
        import mujoco  # noqa: F401
    except ImportError:
        return False
    return True


@pytest.mark.parametrize("name,kw", [
    ("Pong", {}),                                   # Atari, no lives
    ("Breakout", {}),                               # Atari with lives: life_loss
    ("Breakout", {"noop_max": 30, "image_size": 84}),
    ("CartPole-v1", {}),                            # Discrete actions, float32 vectors
    ("MountainCarContinuous-v0", {}),               # Box actions already in [-1, 1]
    ("Pendulum-v1", {}),                            # Box actions rescaled to [-1, 1]
    pytest.param("HalfCheetah-v5", {}, marks=pytest.mark.skipif(not _mujoco_installed(), reason="no MuJoCo")),
    ("grid", {}),                                   # 2-D float64 observations: flattened, cast
])
def test_every_env_passes_gymnasiums_env_checker(name, kw, request):
    import warnings

    from gymnasium.utils.env_checker import check_env, env_render_passive_checker

    name = request.getfixturevalue("grid_env") if name == "grid" else name
    env = make_env(name, **kw)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        check_env(env, skip_render_check=True)     # "human" rendering needs a display
    problems = [str(w.message) for w in caught if not any(h in str(w.message) for h in _HARMLESS)]
    assert not problems
    assert env.spec.make().observation_space == env.observation_space  # rebuilt from its spec
    if is_atari(name) or name == "CartPole-v1":  # rlts play renders these (MuJoCo would need OpenGL)
        env = make_env(name, render_mode="rgb_array", **kw)
        env.reset(seed=0)
        env_render_passive_checker(env)
    env.close()


# ---------------------------------------------------------------- ale_py's vector env

def _vector_vs_single(game, seeds, steps, **kw):
    """Step an AtariVector and len(seeds) make_env envs with the same seeds and random actions;
    assert every frame, reward, flag and life loss identical. An env whose episode ended stays at
    its end (final frame and flags, reward 0) for 3 steps, then is reset alone (a partial reset)
    and goes on beside the others. Returns how each episode ended: (terminated, truncated)."""
    n = len(seeds)
    vec = AtariVector(game, n, envs_per_thread=1 if n > 2 else 0, **kw)
    singles = [make_env(game, **kw) for _ in range(n)]
    assert vec.single_observation_space == singles[0].observation_space
    assert vec.single_action_space == singles[0].action_space
    obs, info = vec.reset(seed=seeds)
    want = [env.reset(seed=s)[0] for env, s in zip(singles, seeds)]
    assert np.array_equal(obs, np.stack(want)) and not info["life_loss"].any()
    rng, ended, ends = np.random.default_rng(0), {}, []      # ended: env -> (steps idle, its last step)
    for _ in range(steps):
        reset = [i for i, (idle, _) in ended.items() if idle == 3]
        if reset:
            mask = np.isin(np.arange(n), reset)
            obs, _ = vec.reset(seed=seeds, options={"reset_mask": mask})
            for i in reset:
                assert np.array_equal(obs[i], singles[i].reset(seed=seeds[i])[0]), (game, i)
                del ended[i]
        actions = rng.integers(vec.single_action_space.n, size=n)
        obs, reward, term, trunc, info = vec.step(actions)
        assert obs.dtype == np.uint8 and reward.dtype == np.float64
        for i, env in enumerate(singles):
            if i in ended:                                    # at its end: not stepped
                idle, (o, r, te, tr, inf) = ended[i]
                ended[i] = (idle + 1, (o, 0.0, te, tr, {"life_loss": False}))
                r, inf = 0.0, {"life_loss": False}
            else:
                o, r, te, tr, inf = env.step(int(actions[i]))
                if te or tr:
                    ends.append((te, tr))
                    ended[i] = (0, (o, r, te, tr, inf))
            assert np.array_equal(obs[i], o), (game, i)
            assert (reward[i], term[i], trunc[i], info["life_loss"][i]) == (r, te, tr, inf["life_loss"]), (game, i)
    vec.close()
    return ends


@pytest.mark.parametrize("game,kw", [
    ("Pong", {"max_episode_frames": 802}),               # no lives; the cap ends it mid frame skip
    ("Breakout", {"max_episode_frames": 2002}),          # lives, life losses, game over
    ("MsPacman", {"max_episode_frames": 1000, "image_size": 84}),
    ("Seaquest", {"max_episode_frames": 1000, "image_size": 96}),
])
def test_atari_vector_matches_make_env_bit_for_bit(game, kw):
    ends = _vector_vs_single(game, [3, 2**32 - 5, 11], 520, **kw)
    assert len(ends) > 3                                # episodes ended, and others began after them
    if game == "Pong":
        assert all(tr and not te for te, tr in ends)
    if game == "Breakout":
        assert any(te for te, _ in ends)


def test_atari_vector_partial_reset_and_make_envs():
    vec = make_envs("Breakout", 3)
    assert isinstance(vec, AtariVector) and env_spec(vec) == env_spec(make_env("Breakout"))
    first, _ = vec.reset(seed=[1, 2, 3])
    for _ in range(20):
        moved, *_ = vec.step(np.array([2, 2, 3]))          # paddles moved away from the start
    obs, info = vec.reset(seed=[1, 5, 3], options={"reset_mask": np.array([False, True, False])})
    assert np.array_equal(obs[1], first[1]) and not np.array_equal(moved[1], first[1])
    assert np.array_equal(obs[[0, 2]], moved[[0, 2]]) and not np.array_equal(obs[0], first[0])
    with pytest.raises(ValueError, match="one seed per env"):
        vec.reset(seed=[1, 2])
    with pytest.raises(ValueError, match="reset_mask must have shape"):
        vec.reset(options={"reset_mask": np.array([True, False])})
    vec.close()
    # no-op starts and rendering: make_env's envs held together (AtariVector cannot draw the same no-ops)
    for kw in ({"noop_max": 30}, {"render_mode": "rgb_array"}):
        vec = make_envs("Pong", 2, **kw)
        assert isinstance(vec, gym.vector.SyncVectorEnv) and env_spec(vec).name == "Pong"
        vec.close()
    assert isinstance(make_envs("CartPole-v1", 2), gym.vector.SyncVectorEnv)
    assert isinstance(make_envs("Pong", 1), gym.vector.SyncVectorEnv)       # one env: no threads
    with pytest.raises(ValueError, match="unknown make_env setting"):
        make_envs("Pong", 2, sticky=0.25)
    with pytest.raises(ValueError, match="num_envs must be >= 1"):
        make_envs("Pong", 0)
    with pytest.raises(ValueError, match="unknown game"):
        AtariVector("Pongg", 2)
    with pytest.raises(ValueError, match="'CartPole-v1' is not an Atari game"):
        AtariVector("CartPole-v1", 2)
