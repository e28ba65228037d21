"""Episodes in environments of `rlts.tasks.rl.envs.make_env`, each reset with its own seed: the
loop every command evaluates (or records) a policy with, and the collector that training runs
step.

    result = run_episodes([env], seeds, lambda obs: [policy(obs[0])])    # one episode after another
    result.returns, result.lengths                                       # per episode, in seed order
    result = run_episodes(envs, seeds, act, start=..., keep=...)         # len(envs) side by side
    result = run_episodes(make_envs("Pong", 100), seeds, act, ...)     # a vector env: the same, batched

    collector = EpisodeCollector("CartPole-v1", num_envs=2, seed=0)
    collector.start()                              # episode 0 of every env
    t = collector.step(actions)                    # one step of every env; finished episodes reset
    state = collector.state_dict()                 # ... and later, in a fresh collector:
    collector.load_state_dict(state)               # every env back in its exact state

`run_episodes` runs one episode per seed. With one env the episodes run one after another; with
several, in groups of len(envs) side by side, so that a batched policy (one recurrent state for
the group) acts on all of them at once: one policy call per step for all running episodes. The
policy sees only observations; rewards and flags reach it, where it needs them, through
`on_step`. Episode k is reset with seeds[k] whatever the number of envs, so with a policy whose
actions in an episode depend on that episode only (no random draws shared across the batch), the
returns do not depend on how many envs run side by side. The envs may also come as a vector env
(`rlts.tasks.rl.envs.make_envs`): a `SyncVectorEnv` runs as the list of its envs, an `AtariVector`
steps all its running envs in one call (in C++ threads), with the same episodes.

`EpisodeCollector` steps `num_envs` envs together; episode k of env i is reset with
`rlts.runtime.episode_seed(seed, i, k)`, and the actions of each env's running episode are kept.
Because the envs are deterministic given the reset seed and the actions (see rlts.tasks.rl.envs),
`load_state_dict` rebuilds every env exactly: reset with its episode's seed, step through the
actions, and check the observation reached against the stored one. A killed training run thus
continues as if it had never stopped.
"""
from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, List, NamedTuple, Optional, Sequence

import gymnasium as gym
import numpy as np
import torch

from rlts.runtime import episode_seed
from rlts.tasks.rl.envs import make_env, replay_actions


class Step(NamedTuple):
    """One transition of one episode, as `run_episodes` hands it to `on_step`."""

    episode: int
    """Index of the episode in the run (the position of its seed)."""
    obs: Any
    """The observation acted on."""
    action: Any
    """The action taken, as the policy returned it."""
    reward: Any
    """The env's reward."""
    terminated: bool
    """The env's terminated flag."""
    truncated: bool
    """The env's truncated flag."""
    info: dict
    """The env's info (`life_loss` included)."""
    next_obs: Any
    """The observation the step returned (the final observation if the episode ended here)."""
    cut: bool
    """True if the step budget (`max_steps`) ends the episode here, unfinished."""


@dataclass
class Episodes:
    """What `run_episodes` returns: per episode, in the order of the seeds."""

    seeds: List[int] = field(default_factory=list)
    """The reset seed of each episode."""
    returns: List[float] = field(default_factory=list)
    """Sum of the rewards."""
    lengths: List[int] = field(default_factory=list)
    """Steps taken."""
    cut: List[bool] = field(default_factory=list)
    """True where the step budget ended the episode before the env did."""


class _EnvList:
    """Envs stepped one by one, only those of running episodes."""

    def __init__(self, envs: Sequence[gym.Env]):
        if not len(envs):
            raise ValueError("run_episodes needs at least one env")
        self.envs, self.size = envs, len(envs)

    def reset(self, seeds: List[int]) -> list:
        return [self.envs[j].reset(seed=s)[0] for j, s in enumerate(seeds)]

    def step(self, slots: List[int], actions: Sequence) -> list:
        return [self.envs[j].step(actions[row]) for row, j in enumerate(slots)]


class _Vector:
    """A vector env stepped as a whole: the envs of finished episodes, and those a short last group
    leaves free (not reset again), take action 0 and their results are dropped."""

    def __init__(self, vec: gym.vector.VectorEnv):
        self.vec, self.size, self.started = vec, vec.num_envs, False

    def reset(self, seeds: List[int]) -> list:
        padded = seeds + [seeds[-1]] * (self.size - len(seeds))
        options = None
        if self.started and len(seeds) < self.size:
            options = {"reset_mask": np.arange(self.size) < len(seeds)}
        obs, _ = self.vec.reset(seed=padded, options=options)
        self.started = True
        return list(obs[:len(seeds)])

    def step(self, slots: List[int], actions: Sequence) -> list:
        actions = np.asarray(actions)
        full = np.zeros((self.size, *actions.shape[1:]), actions.dtype)
        full[slots] = actions
        obs, reward, terminated, truncated, info = self.vec.step(full)
        return [(obs[j], reward[j].item(), bool(terminated[j]), bool(truncated[j]),
                 {k: v[j].item() if isinstance(v, np.ndarray) else v for k, v in info.items()}) for j in slots]


def run_episodes(envs: Sequence[gym.Env] | gym.vector.VectorEnv, seeds: Iterable[int],
                 policy: Callable[[np.ndarray], Sequence], *, start: Optional[Callable[[int], None]] = None,
                 keep: Optional[Callable[[List[int]], None]] = None, on_step: Optional[Callable[[Step], None]] = None,
                 max_steps: Optional[int] = None) -> Episodes:
    """Run one episode per seed (a finite or endless iterable), len(envs) side by side: the seeds
    are taken in order, a group of len(envs) at a time, and episode j of a group runs in envs[j],
    reset with its seed. Then `start(n)` is called for the group's n episodes. `envs` may be a
    vector env (its `num_envs` side by side; see the module docstring).

    Per step, `policy` maps the observations of the group's running episodes, stacked
    (B, *obs_shape) in group order, to B actions (action b goes to the env of row b as it is);
    every env then steps, and `on_step` sees each transition. Finished episodes leave the batch:
    `keep(rows)` is told which rows of the last batch go on (not called when none do).

    `max_steps` bounds the steps of all episodes together: no group starts once it is reached,
    and the batch step that reaches it is the last one, the episodes it does not end being cut
    (`Step.cut`, `Episodes.cut`). Torch's RNG is not touched here: seed or fork it around the call.
    """
    if isinstance(envs, gym.vector.VectorEnv):
        batch = _EnvList(envs.envs) if hasattr(envs, "envs") else _Vector(envs)
    else:
        batch = _EnvList(envs)
    seeds = iter(seeds)
    out = Episodes()
    total = 0
    while max_steps is None or total < max_steps:
        group = [int(s) for s in itertools.islice(seeds, batch.size)]
        if not group:
            break
        first = len(out.seeds)
        obs = batch.reset(group)
        out.seeds += group
        out.returns += [0.0] * len(group)
        out.lengths += [0] * len(group)
        out.cut += [False] * len(group)
        if start is not None:
            start(len(group))
        running = list(range(len(group)))                # group positions of the running episodes
        while running:
            actions = policy(np.stack([obs[j] for j in running]))
            last = max_steps is not None and total + len(running) >= max_steps
            going = []                                   # rows of this batch that go on
            results = batch.step(running, actions)
            for row, j in enumerate(running):
                k = first + j
                nxt, reward, terminated, truncated, info = results[row]
                done = terminated or truncated
                out.returns[k] += float(reward)
                out.lengths[k] += 1
                out.cut[k] = last and not done
                if on_step is not None:
                    on_step(Step(k, obs[j], actions[row], reward, terminated, truncated, info, nxt, out.cut[k]))
                obs[j] = nxt
                if not done and not last:
                    going.append(row)
            total += len(running)
            if len(going) < len(running) and going and keep is not None:
                keep(going)
            running = [running[row] for row in going]
    return out


# ---------------------------------------------------------------------------------------------
@dataclass
class Transition:
    """One step of every env of an EpisodeCollector (N envs)."""

    obs: np.ndarray
    """(N, *obs_shape) the observations acted on."""
    next_obs: np.ndarray
    """(N, *obs_shape) the observations the step returned, before any reset."""
    reward: np.ndarray
    """(N,) float64."""
    terminated: np.ndarray
    """(N,) bool."""
    truncated: np.ndarray
    """(N,) bool."""
    life_loss: np.ndarray
    """(N,) bool: info["life_loss"]."""
    finished: List[tuple]
    """(env index, return, length) of each episode this step ended, by env index."""

    @property
    def done(self) -> np.ndarray:
        """(N,) bool: the episodes this step ended (their envs have been reset)."""
        return np.logical_or(self.terminated, self.truncated)


class EpisodeCollector:
    """`num_envs` envs `make_env(env, **make_env_kwargs)` stepped together, their current
    observations and running episodes (index, actions, return, length); episode k of env i is
    reset with episode_seed(seed, i, k)."""

    def __init__(self, env: str, num_envs: int, seed: int, **make_env_kwargs):
        if num_envs < 1:
            raise ValueError(f"num_envs must be >= 1, got {num_envs}")
        self.name, self.seed, self.n = env, seed, num_envs
        self.envs = [make_env(env, **make_env_kwargs) for _ in range(num_envs)]
        self.discrete = isinstance(self.envs[0].action_space, gym.spaces.Discrete)
        self.episode = [0] * num_envs                  # episodes started per env
        self.actions: List[list] = [[] for _ in range(num_envs)]
        self.ep_return = [0.0] * num_envs
        self.ep_length = [0] * num_envs
        self.obs: Optional[np.ndarray] = None          # (N, *obs_shape)

    def start(self) -> None:
        """Reset every env for its first episode."""
        self.obs = np.stack([env.reset(seed=episode_seed(self.seed, i, 0))[0] for i, env in enumerate(self.envs)])

    def step(self, actions: Sequence) -> Transition:
        """Step env i with actions[i] (N ints, or N (act_dim,) arrays), reset the envs whose
        episode ended with their next episode's seed."""
        results = [env.step(a) for env, a in zip(self.envs, actions, strict=True)]
        t = Transition(obs=self.obs, next_obs=np.stack([r[0] for r in results]),
                       reward=np.array([float(r[1]) for r in results], dtype=np.float64),
                       terminated=np.array([bool(r[2]) for r in results]),
                       truncated=np.array([bool(r[3]) for r in results]),
                       life_loss=np.array([bool(r[4].get("life_loss", False)) for r in results]), finished=[])
        obs = list(t.next_obs)
        for i, done in enumerate(t.done):
            self.actions[i].append(int(actions[i]) if self.discrete else np.array(actions[i]))
            self.ep_return[i] += float(t.reward[i])
            self.ep_length[i] += 1
            if done:
                t.finished.append((i, self.ep_return[i], self.ep_length[i]))
                self.episode[i] += 1
                self.actions[i], self.ep_return[i], self.ep_length[i] = [], 0.0, 0
        for i in np.flatnonzero(t.done):
            obs[i] = self.envs[i].reset(seed=episode_seed(self.seed, i, self.episode[i]))[0]
        self.obs = np.stack(obs)
        return t

    def state_dict(self) -> dict:
        """Episode indices, returns, lengths, the running episodes' actions ((T,) long or
        (T, act_dim) tensors) and the current observations (N, *obs_shape)."""
        return {"episode": list(self.episode), "ep_return": list(self.ep_return), "ep_length": list(self.ep_length),
                "actions": [self._actions_tensor(a) for a in self.actions], "obs": torch.as_tensor(self.obs)}

    def load_state_dict(self, d: dict) -> None:
        """Rebuild every env: reset with its episode's seed, replay the episode's actions."""
        self.episode, self.ep_return, self.ep_length = list(d["episode"]), list(d["ep_return"]), list(d["ep_length"])
        self.actions = [a.tolist() if self.discrete else list(a.numpy()) for a in d["actions"]]
        obs = np.stack([replay_actions(env, episode_seed(self.seed, i, self.episode[i]), self.actions[i])
                        for i, env in enumerate(self.envs)])
        if not np.array_equal(obs, d["obs"].numpy()):
            raise ValueError(f"cannot resume exactly: replaying the current episode of {self.name} did not "
                             "reproduce the stored observation (the environment is not deterministic given its "
                             "reset seed and actions)")
        self.obs = obs

    def close(self) -> None:
        for env in self.envs:
            env.close()

    def _actions_tensor(self, actions: list) -> torch.Tensor:
        if self.discrete:
            return torch.tensor(actions, dtype=torch.long)                          # (T,)
        space = self.envs[0].action_space
        if not actions:
            return torch.from_numpy(np.zeros((0, *space.shape), space.dtype))
        return torch.from_numpy(np.stack(actions))                                   # (T, act_dim)
