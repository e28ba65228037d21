"""Environments for the world-model agent: Atari100k games and plain Gymnasium control tasks.

    env = make_env("Pong")                      # (64, 64, 3) uint8 frames, 6 actions
    env = make_env("CartPole-v1")               # (4,) float32 vectors, 2 actions

Atari follows the Atari100k protocol of STORM / Drama: `ALE/<Game>-v5` with sticky actions
off (repeat_action_probability=0), the minimal action set and a 108k-frame episode cap,
wrapped by gymnasium's `AtariPreprocessing` (frame skip 4 with a max-pool over the last two
frames, resize to `image_size` x `image_size` RGB uint8, no grayscale, no terminal on life
loss). There are no no-op starts by default (noop_max=0, as STORM/Drama). Note what that
implies: with sticky actions off and no no-ops, an ALE game is a deterministic function of the
actions alone, and the reset seed changes nothing (checked: Pong, Breakout, MsPacman give the same
frames for every seed); the only randomness is the agent's own action sampling. With
noop_max > 0 the reset seed picks the number of no-ops (from the env's seeded np_random).

Every env made here reports `info["life_loss"]`: True when the number of lives dropped during
the step and the episode did not terminate (always False for non-Atari envs). The training
loop stores `terminated or life_loss` as the world model's termination target.

Determinism and rebuilding. With sticky actions off, an ALE env is a deterministic function of
its reset seed and the actions taken (also with noop_max > 0); so are the classic-control and
MuJoCo envs. The commands seed every episode explicitly and record its actions
(rlts.tasks.rl.episodes); after a kill, `replay_actions` / `rebuild_env` bring an env back to the
exact state it had: reset with the episode's seed, then stepped through that episode's actions.
"""
from __future__ import annotations

import difflib
import warnings
from dataclasses import dataclass
from typing import List, Optional, Sequence

import gymnasium as gym
import numpy as np

import ale_py

from rlts.tasks.rl.games import close_games, find_game

gym.register_envs(ale_py)  # registers the ALE/<Game>-v5 ids


def _mujoco_warning(message: str) -> None:
    """MuJoCo's warnings as Python RuntimeWarnings, instead of stderr plus a MUJOCO_LOG.TXT
    written into the user's working directory. The deprecation of `settotalmass`, used by
    Gymnasium's own HalfCheetah model, is dropped: nothing a user can act on."""
    if "settotalmass" not in message:
        warnings.warn(f"MuJoCo: {message.strip()}", RuntimeWarning, stacklevel=2)


def _route_mujoco_warnings() -> None:
    """Install `_mujoco_warning` as MuJoCo's warning handler (leaving one the user installed
    alone), when MuJoCo is installed: called for the non-Atari envs only, so that Atari needs
    no MuJoCo."""
    try:
        import mujoco
    except ImportError:
        return
    if mujoco.get_mju_user_warning() is None:
        mujoco.set_mju_user_warning(_mujoco_warning)


def _ale_games() -> List[str]:
    """The CamelCase name of every game registered as ALE/<Game>-v5."""
    return [env_id[4:-3] for env_id in gym.registry if env_id.startswith("ALE/") and env_id.endswith("-v5")]


def _atari_game(name: str) -> str | None:
    """The CamelCase ALE game that `name` refers to, or None if `name` is not an Atari name.

    Accepts every spelling of `rlts.tasks.rl.games.find_game` ("Pong", "pong", "ms_pacman",
    "ALE/Pong-v5", "PongNoFrameskip-v4") and any other id that ale_py registers for a game. A
    registered id of another env is not an Atari name, even if it spells one ("Blackjack-v1" is
    Gymnasium's toy-text game, not ALE/Blackjack-v5).
    """
    games = _ale_games()
    if name in gym.registry:
        spec = gym.spec(name)
        if not str(spec.entry_point).startswith("ale_py"):
            return None
        return find_game(str(spec.kwargs.get("game", "")), games) or find_game(name, games)
    return find_game(name, games)


def is_atari(name: str) -> bool:
    """True if `name` names an ALE game ("Pong", "pong", "ALE/Pong-v5"), else False."""
    return _atari_game(name) is not None


def _unknown(name: str) -> ValueError:
    """A ValueError for an unknown name, suggesting close game names or env ids."""
    games = _ale_games()
    if "/" in name or "-v" in name:
        base = name[4:].rsplit("-v", 1)[0] if name.startswith("ALE/") else None
        if base is not None:  # an ALE id with an unknown game
            ids = ", ".join(f"ALE/{g}-v5" for g in close_games(base, games))
            hint = f"; did you mean {ids}?" if ids else ""
            return ValueError(f"unknown game {base!r} in {name!r}{hint}")
        close = difflib.get_close_matches(name, list(gym.registry), n=3)
        hint = f"; did you mean {', '.join(close)}?" if close else ""
        return ValueError(f"unknown environment id {name!r}{hint}")
    ids = difflib.get_close_matches(name, list(gym.registry), n=3)
    ids = [i for i in ids if not str(gym.spec(i).entry_point).startswith("ale_py")]
    suggestions = close_games(name, games) + ids
    hint = f"; did you mean {', '.join(suggestions)}?" if suggestions else ""
    return ValueError(f"unknown game or environment id {name!r}{hint}")


class LifeLossInfo(gym.Wrapper):
    """Adds `info["life_loss"]` (lives dropped this step and the episode did not terminate)
    and remembers the name the env was made from (`rlts_name`)."""

    def __init__(self, env: gym.Env, name: str, atari: bool):
        super().__init__(env)
        self.rlts_name = name
        self._atari = atari
        self._lives = 0

    def _read_lives(self) -> int:
        return int(self.env.unwrapped.ale.lives()) if self._atari else 0

    def reset(self, **kwargs):
        obs, info = self.env.reset(**kwargs)
        self._lives = self._read_lives()
        info["life_loss"] = False
        return obs, info

    def step(self, action):
        obs, reward, terminated, truncated, info = self.env.step(action)
        lives = self._read_lives()
        info["life_loss"] = bool(lives < self._lives and not terminated)
        self._lives = lives
        return obs, reward, terminated, truncated, info


def make_env(name: str, *, image_size: int = 64, noop_max: int = 0,
             max_episode_frames: int = 108_000, render_mode: Optional[str] = None) -> gym.Env:
    """One environment: an Atari game (Atari100k protocol, see the module docstring) or any
    Gymnasium id with a Box observation space and a Discrete or 1-D Box action space (MuJoCo
    tasks such as HalfCheetah-v5 and Hopper-v5 included).

    Atari observations are (image_size, image_size, 3) uint8. `noop_max` = 0 (default, as in
    STORM/Drama) means no no-op starts: the game then no longer depends on the reset seed, only
    on the actions; with noop_max > 0 the reset seed draws 1..noop_max no-ops.
    Other envs: observations flattened to 1-D float32 if needed; continuous actions rescaled
    to [-1, 1] (`RescaleAction`) when the env's bounds are other finite values. Raises ValueError
    for an unknown game or id (with close matches), for unbounded or multi-dimensional Box
    actions, and for other action spaces. The world-model agent needs Discrete actions: its
    `env_spec` says so. `render_mode` ("rgb_array" for videos) is passed to gym.make.
    """
    game = _atari_game(name)
    if game is not None:
        env = gym.make(f"ALE/{game}-v5", frameskip=1, repeat_action_probability=0.0,
                       full_action_space=False, max_num_frames_per_episode=max_episode_frames,
                       render_mode=render_mode)
        env = gym.wrappers.AtariPreprocessing(
            env, frame_skip=4, screen_size=image_size, grayscale_obs=False, noop_max=noop_max,
            terminal_on_life_loss=False)
        return LifeLossInfo(env, name, atari=True)
    if name not in gym.registry:
        raise _unknown(name)
    _route_mujoco_warnings()
    try:
        env = gym.make(name, render_mode=render_mode)
    except gym.error.DependencyNotInstalled as e:
        raise ValueError(f"{name!r} needs a package that is not installed: {e}") from None
    actions = env.action_space
    if isinstance(actions, gym.spaces.Box):
        low, high = np.asarray(actions.low, np.float64), np.asarray(actions.high, np.float64)
        if len(actions.shape) != 1 or not (np.isfinite(low).all() and np.isfinite(high).all()):
            env.close()
            raise ValueError(f"{name!r} has action space {actions}; continuous actions must be a 1-D Box "
                             "with finite bounds")
        if not (np.all(low == -1.0) and np.all(high == 1.0)):
            env = gym.wrappers.RescaleAction(env, np.float32(-1.0), np.float32(1.0))
    elif not isinstance(actions, gym.spaces.Discrete):
        env.close()
        raise ValueError(f"{name!r} has action space {actions}; a Discrete or a 1-D Box action space is needed")
    space = env.observation_space
    if not isinstance(space, gym.spaces.Box):
        env.close()
        raise ValueError(f"{name!r} has observation space {space}; a Box space is needed")
    if len(space.shape) != 1:
        env = gym.wrappers.FlattenObservation(env)
    if env.observation_space.dtype != np.float32:
        with warnings.catch_warnings():  # float64 bounds (MuJoCo's +-inf) cast to float32: intended
            warnings.filterwarnings("ignore", message=".*precision lowered by casting to float32")
            env = gym.wrappers.DtypeObservation(env, np.float32)
    return LifeLossInfo(env, name, atari=False)


@dataclass(frozen=True)
class EnvSpec:
    """What the agent needs to know about an env's observations and actions."""

    name: str
    is_image: bool
    obs_shape: tuple
    obs_dtype: np.dtype
    n_actions: int


def env_spec(env: gym.Env | gym.vector.VectorEnv) -> EnvSpec:
    """The EnvSpec of an env from `make_env`, or of a vector env (its single-env spaces), for
    the world-model agent; ValueError for a non-Discrete action space."""
    if isinstance(env, gym.vector.VectorEnv):
        obs_space, act_space = env.single_observation_space, env.single_action_space
        inner = env.envs[0] if hasattr(env, "envs") else None
    else:
        obs_space, act_space, inner = env.observation_space, env.action_space, env
    name = getattr(inner, "rlts_name", None)
    if name is None:
        name = inner.spec.id if inner is not None and inner.spec is not None else "?"
    if not isinstance(act_space, gym.spaces.Discrete):
        raise ValueError(f"{name!r} has action space {act_space}; the world-model agent needs a Discrete "
                         "action space")
    is_image = len(obs_space.shape) == 3 and obs_space.dtype == np.uint8
    return EnvSpec(name=name, is_image=is_image, obs_shape=tuple(obs_space.shape),
                   obs_dtype=np.dtype(obs_space.dtype), n_actions=int(act_space.n))


def replay_actions(env: gym.Env, seed: int, actions: Sequence):
    """Reset `env` with `seed` and step it through `actions` (ints, or (act_dim,) arrays for a
    Box action space: the recorded actions of the
    episode in progress); return the last observation. The episode may end on the last action
    (the caller then resets with the next seed) but not before: that means the seed or the
    actions do not belong to one episode, and is a ValueError."""
    discrete = isinstance(env.action_space, gym.spaces.Discrete)
    obs, _ = env.reset(seed=int(seed))
    for t, a in enumerate(actions):
        obs, _, terminated, truncated, _ = env.step(int(a) if discrete else np.asarray(a, env.action_space.dtype))
        if (terminated or truncated) and t < len(actions) - 1:
            raise ValueError(
                f"the episode ended at action {t} of {len(actions)}: seed {seed} and the actions "
                "are not one episode")
    return obs


def rebuild_env(name: str, seed: int, actions: Sequence[int], **make_env_kwargs):
    """A fresh `make_env(name, ...)` brought to the exact state it had after `actions` in the
    episode reset with `seed`. Returns (env, obs)."""
    env = make_env(name, **make_env_kwargs)
    return env, replay_actions(env, seed, actions)
