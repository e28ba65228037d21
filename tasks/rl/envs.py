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

Several episodes side by side: `make_envs(name, n)` gives `n` envs as one Gymnasium vector env, for
`rlts.tasks.rl.episodes.run_episodes`. For an Atari game without no-op starts that is an
`AtariVector`: ale_py's C++ vector env (`ale_py.vector_env.AtariVectorEnv`, which steps, max-pools
and resizes with OpenCV's INTER_AREA in its own threads), set up to give the frames, rewards, flags
and life losses of `make_env` bit for bit (checked on all 26 Atari100k games, episode ends and the
frame cap included; tests/test_envs.py keeps four of them checked). It cannot reproduce no-op
starts: ale_py draws their number from its own generator and range (0..noop_max-1 frames;
Gymnasium's AtariPreprocessing 1..noop_max from the env's np_random), so with noop_max > 0, for a
single env (faster without the threads) and for every other env, `make_envs` holds `make_env` envs
in a `gym.vector.SyncVectorEnv`.

Determinism and rebuilding. With sticky actions off, an ALE env is a deterministic function of
its reset seed and the actions taken (also with noop_max > 0); so are the classic-control and
MuJoCo envs. The commands seed every episode explicitly and record its actions
(rlts.tasks.rl.episodes); after a kill, `replay_actions` / `rebuild_env` bring an env back to the
exact state it had: reset with the episode's seed, then stepped through that episode's actions.
"""
from __future__ import annotations

import difflib
import functools
import os
from concurrent.futures import ThreadPoolExecutor
import warnings
from dataclasses import dataclass
from typing import List, Optional, Sequence

import gymnasium as gym
import numpy as np

import ale_py

from rlts.tasks.rl.games import ATARI_ACTION_SET, ATARI_STICKY_ACTIONS, close_games, find_game

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


class LifeLossInfo(gym.Wrapper, gym.utils.RecordConstructorArgs):
    """Adds `info["life_loss"]` (lives dropped this step and the episode did not terminate)
    and remembers the name the env was made from (`rlts_name`). Records its arguments, so that
    `env.spec.make()` rebuilds the whole env (as Gymnasium's env checker does)."""

    def __init__(self, env: gym.Env, name: str, atari: bool):
        gym.utils.RecordConstructorArgs.__init__(self, name=name, atari=atari)
        gym.Wrapper.__init__(self, env)
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


class Float32Observation(gym.ObservationWrapper, gym.utils.RecordConstructorArgs):
    """Observations cast to float32, and a float32 Box space whose bounds are cast too (Gymnasium's
    `DtypeObservation` keeps float64 bounds, and warns about the cast each time the env is built)."""

    def __init__(self, env: gym.Env):
        gym.utils.RecordConstructorArgs.__init__(self)
        gym.ObservationWrapper.__init__(self, env)
        space = env.observation_space
        self.observation_space = gym.spaces.Box(space.low.astype(np.float32), space.high.astype(np.float32),
                                                space.shape, np.float32)

    def observation(self, observation):
        return np.asarray(observation, dtype=np.float32)


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
        env = gym.make(f"ALE/{game}-v5", frameskip=1, repeat_action_probability=ATARI_STICKY_ACTIONS,
                       full_action_space=ATARI_ACTION_SET == "full", max_num_frames_per_episode=max_episode_frames,
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
        env = Float32Observation(env)
    return LifeLossInfo(env, name, atari=False)


class AtariVector(gym.vector.VectorEnv):
    """`num_envs` copies of the Atari game `make_env(name, image_size=..., max_episode_frames=...)`
    makes (no no-op starts), stepped together by ale_py's C++ vector env: frames (N, S, S, 3) uint8,
    rewards (N,) float64, terminated / truncated (N,) bool and `info["life_loss"]` (N,) bool, bit for
    bit those of `make_env` given the same actions (tests/test_envs.py).

    The envs run in groups of `envs_per_thread` (0: up to 4, fewer where that leaves CPUs idle),
    each group one ale_py vector env with its own thread; a step sends every group its actions
    before collecting any result, so the groups emulate in parallel.

    reset(seed=[s_0, ..., s_{N-1}]) resets every env, or with options={"reset_mask": mask} the
    masked ones (the seeds of the others are ignored; an int s stands for s, s+1, ...). As
    `make_env`'s reset with a seed, a reset with a seed reloads the ROM (the emulator seeded with
    s_i reduced to 31 bits), so the episode starts as the seed's episode of `make_env`, whatever
    the env went through before; a reset without a seed resets the game in place, which carries
    some emulator state over from the episodes before (as `make_env`'s does). The groups reset in
    parallel (a reload takes about 0.1 s).
    step(actions) steps the envs whose episode is running. An env whose episode ended stays at its
    end until it is reset (Gymnasium's AutoresetMode.DISABLED): its row repeats the final frame and
    flags, with reward 0. It costs nothing once every env of its group has ended (before, it steps
    along, unseen).
    """

    metadata = {"autoreset_mode": gym.vector.AutoresetMode.DISABLED}

    def __init__(self, name: str, num_envs: int, *, image_size: int = 64, max_episode_frames: int = 108_000,
                 envs_per_thread: int = 0):
        from ale_py import roms
        from ale_py.vector_env import AtariVectorEnv

        game = _atari_game(name)
        if game is None:
            raise ValueError(f"{name!r} is not an Atari game") if name in gym.registry else _unknown(name)
        if num_envs < 1:
            raise ValueError(f"num_envs must be >= 1, got {num_envs}")
        if envs_per_thread < 0:
            raise ValueError(f"envs_per_thread must be >= 0, got {envs_per_thread}")
        rom = find_game(game, roms.get_all_rom_ids())
        cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
        size = envs_per_thread or min(4, -(-num_envs // cpus))
        self._starts = list(range(0, num_envs, size))
        self._groups = [AtariVectorEnv(
            rom, min(size, num_envs - start), img_height=image_size, img_width=image_size, grayscale=False,
            stack_num=1, frameskip=4, maxpool=True, noop_max=0, use_fire_reset=False, episodic_life=False,
            life_loss_info=False, reward_clipping=False, repeat_action_probability=ATARI_STICKY_ACTIONS,
            full_action_space=ATARI_ACTION_SET == "full",
            max_num_frames_per_episode=max_episode_frames if max_episode_frames > 0 else 2**31 - 1,
            num_threads=1, autoreset_mode=gym.vector.AutoresetMode.NEXT_STEP) for start in self._starts]
        self.rlts_name = name
        self.num_envs = num_envs
        self.single_observation_space = gym.spaces.Box(0, 255, (image_size, image_size, 3), np.uint8)
        self.single_action_space = gym.spaces.Discrete(int(self._groups[0].single_action_space.n))
        self.observation_space = gym.vector.utils.batch_space(self.single_observation_space, num_envs)
        self.action_space = gym.vector.utils.batch_space(self.single_action_space, num_envs)
        self._obs = np.zeros((num_envs, image_size, image_size, 3), np.uint8)
        self._lives = np.zeros(num_envs, np.int64)
        self._terminated = np.zeros(num_envs, bool)
        self._truncated = np.zeros(num_envs, bool)
        self._idle = np.ones(num_envs, bool)          # ended, or never reset: not stepped
        for group in self._groups:                     # partial resets need a full one first
            group.reset()

    def _slices(self):
        return [(g, slice(s, s + g.num_envs)) for g, s in zip(self._groups, self._starts)]

    def reset(self, *, seed=None, options: Optional[dict] = None):
        mask = np.ones(self.num_envs, bool) if options is None or options.get("reset_mask") is None \
            else np.asarray(options["reset_mask"], bool)
        if mask.shape != (self.num_envs,):
            raise ValueError(f"reset_mask must have shape ({self.num_envs},), got {mask.shape}")
        if seed is not None:
            seed = int(seed) + np.arange(self.num_envs) if np.ndim(seed) == 0 else np.asarray(seed, np.int64)
            if seed.shape != (self.num_envs,):
                raise ValueError(f"reset needs one seed per env ({self.num_envs}), got {len(seed)}")
            seed = seed % 2**31

        def reset_group(group, rows):
            m = mask[rows]
            obs, info = group.reset(seed=None if seed is None else seed[rows][m],
                                    options=None if m.all() else {"reset_mask": m})
            self._obs[rows][m] = obs[m, 0]
            self._lives[rows][m] = info["lives"][m]

        todo = [(group, rows) for group, rows in self._slices() if mask[rows].any()]
        if todo:
            with ThreadPoolExecutor(len(todo)) as pool:   # ale_py releases the GIL while resetting
                list(pool.map(lambda job: reset_group(*job), todo))
        self._terminated[mask] = self._truncated[mask] = self._idle[mask] = False
        return self._obs.copy(), {"lives": self._lives.copy(), "life_loss": np.zeros(self.num_envs, bool)}

    def step(self, actions):
        actions = np.asarray(actions, dtype=np.int64).reshape(self.num_envs)
        running = ~self._idle
        active = [(group, rows) for group, rows in self._slices() if running[rows].any()]
        for group, rows in active:                     # all groups emulate at once
            group.send(np.where(running[rows], actions[rows], 0))
        reward, life_loss = np.zeros(self.num_envs), np.zeros(self.num_envs, bool)
        for group, rows in active:
            obs, r, terminated, truncated, info = group.recv()
            idx = rows.start + np.flatnonzero(running[rows])
            m = running[rows]
            lives = info["lives"][m].astype(np.int64)
            self._obs[idx], reward[idx] = obs[m, 0], r[m]
            life_loss[idx] = (lives < self._lives[idx]) & ~terminated[m]
            self._lives[idx], self._terminated[idx], self._truncated[idx] = lives, terminated[m], truncated[m]
            self._idle[idx] = terminated[m] | truncated[m]
        return (self._obs.copy(), reward, self._terminated.copy(), self._truncated.copy(),
                {"lives": self._lives.copy(), "life_loss": life_loss})

    def close_extras(self, **kwargs):
        self._groups = []


def make_envs(name: str, num_envs: int, **make_env_kwargs) -> gym.vector.VectorEnv:
    """`num_envs` envs `make_env(name, **make_env_kwargs)` as one vector env, for
    `rlts.tasks.rl.episodes.run_episodes`: an `AtariVector` for two or more envs of an Atari game
    without no-op starts or a render mode (its episodes are those of `make_env`, stepped in C++
    threads), else a `gym.vector.SyncVectorEnv` of `make_env` envs (autoreset off; one env alone
    steps faster there than through the threads). Same ValueErrors as `make_env`."""
    if num_envs < 1:
        raise ValueError(f"num_envs must be >= 1, got {num_envs}")
    unknown = set(make_env_kwargs) - {"image_size", "noop_max", "max_episode_frames", "render_mode"}
    if unknown:
        raise ValueError(f"unknown make_env setting(s): {', '.join(sorted(unknown))}")
    if (num_envs > 1 and is_atari(name) and not make_env_kwargs.get("noop_max", 0)
            and make_env_kwargs.get("render_mode") is None):
        return AtariVector(name, num_envs, image_size=make_env_kwargs.get("image_size", 64),
                           max_episode_frames=make_env_kwargs.get("max_episode_frames", 108_000))
    return gym.vector.SyncVectorEnv([functools.partial(make_env, name, **make_env_kwargs)] * num_envs,
                                    autoreset_mode=gym.vector.AutoresetMode.DISABLED)


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
    name = getattr(env, "rlts_name", None) or getattr(inner, "rlts_name", None)
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
