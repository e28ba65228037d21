"""Record offline datasets (rlts.data.trajectories format) from environments and trained agents.

    rlts record --env CartPole-v1 --policy random --episodes 100 --out cartpole_random.npz
    rlts record --policy runs/cartpole --episodes 20 --greedy --out cartpole_expert.npz
    rlts record --from-replay runs/pong --out pong_replay.npz     # the DQN-replay-like setting

Two sources:

1. `record`: run a policy in `rlts.tasks.rl.envs.make_env(env)`: "random" (uniform, seeded), any
   callable `obs -> action` (with an optional `reset()` called at every episode start), or the
   folder of a finished `rlts rl` / `rlts atari` run, whose Drama agent (world model + actor from
   `checkpoints/last.pt`) acts, sampling from its policy or greedily (`--greedy`). Episode k is
   reset with the seed `derive_seed(seed, 3, k)` (listed in the metadata as `episode_seeds`), the
   random policy and the agent's sampling are seeded from `seed` too: the same arguments give the
   same file. Every step's `info["life_loss"]` is kept as `life_losses`; episodes are whole games.
   With `steps`, the episode running when the budget is spent is cut and marked truncated
   (metadata `last_episode_cut`). The episodes run in `rlts.tasks.rl.episodes.run_episodes`.

2. `export_replay`: the replay buffer of a trained world-model run, i.e. every transition the
   agent collected while learning (random actions first, then the improving policy), as in the
   DQN-replay datasets of the Decision Transformer paper. What a buffer knows: per env stream, in
   order, (obs_t, action_t, reward_t, terminated_t or life lost). What it does not: truncations
   (a time-limit reset leaves no flag), life loss versus game over (one merged flag), and the
   observation after an episode's last step. Hence two modes:
   - reconstructed (the default when possible): each env stream is replayed through the
     environment from its first episode, with the run's own episode seeds
     (`rlts.runtime.episode_seed`) and the stored actions; the envs are deterministic given both
     (see rlts.tasks.rl.envs), and every observation, reward and flag is checked against the buffer. This
     recovers the true terminations, truncations, life losses and final observations. It needs a
     buffer that still holds every stream from its first step (it never wrapped around, as in
     Atari100k where buffer size = steps).
   - flags only (otherwise, or with `reconstruct="never"`): episodes are split after every set
     flag, so `terminations` means "terminated or lost a life" (an Atari "episode" is then one
     life), hidden truncations stay hidden (a time-limit reset inside an "episode"), there are no
     final observations, and the oldest episode of a wrapped stream may start mid-episode.
   In both modes each stream's last, unfinished episode is cut (marked truncated), the number of
   transitions equals the buffer's, and the metadata says which mode was used and why.
"""
from __future__ import annotations

import itertools
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, List, Optional, Union

import numpy as np
import torch

from rlts.checkpoint import load as load_checkpoint
from rlts.config import apply_dict, param
from rlts.data.trajectories import Trajectories, default_metadata, save_trajectories
from rlts.runtime import derive_seed, episode_seed
from rlts.tasks.runner import Command
from rlts.tasks.rl.envs import env_spec, make_env
from rlts.tasks.rl.episodes import Step, run_episodes
from rlts.tasks.rl.sac import BehaviourPolicy, is_behaviour_path
from rlts.world_models.actor_critic import ActorCriticConfig
from rlts.world_models.agent import Agent
from rlts.world_models.learner import Learner, LearnerConfig
from rlts.world_models.replay import ReplayFiles
from rlts.world_models.world_model import WorldModelConfig

Policy = Union[str, Path, Callable]
RECONSTRUCT = ("auto", "always", "never")
"""How `export_replay` rebuilds the episodes (see the module docstring)."""
RUN_ENV_KEYS = ("image_size", "noop_max", "max_episode_frames")
"""The keys of an rl run's config that `make_env` takes (its Atari settings)."""


def _progress(total: int, desc: str, unit: str, enabled: bool):
    """A tqdm bar on stderr (nothing if not `enabled`)."""
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, unit=unit, disable=not enabled, dynamic_ncols=True, leave=False)


def check_out(out: str | Path) -> Path:
    """`out` as a Path if a new dataset can be written there, else a ValueError: it must end in
    .npz, not exist yet (nothing already written is overwritten) and be in a folder that exists or
    can be created. Writes nothing."""
    path = Path(out)
    if path.is_dir():
        raise ValueError(f"--out {path} is a folder; give a file path ending in .npz, e.g. {path / 'data.npz'}")
    if path.exists() or path.is_symlink():
        raise ValueError(f"{path} already exists; choose another --out or remove it")
    if path.suffix.lower() != ".npz":
        raise ValueError(f"--out {path}: a dataset file must end in .npz")
    parent = path.parent
    existing = next(p for p in (parent, *parent.parents) if p.exists())  # "." or "/" at worst
    if not existing.is_dir():
        raise ValueError(f"cannot write {path}: {existing} is a file, not a folder")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise ValueError(f"cannot write {path}: the folder {existing} is not writable")
    return path


# ---------------------------------------------------------------------------------------------
def load_run(run_dir: str | Path, device: str | torch.device = "cpu"):
    """(config, checkpoint payload) of a finished or running `rlts rl` / `rlts atari` run folder;
    the config as the checkpoint holds it, a dict of the run's settings."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise ValueError(f"{run_dir} is not a run folder (expected the --out folder of `rlts rl` / `rlts atari`)")
    path = run_dir / "checkpoints" / "last.pt"
    if not path.is_file():
        raise ValueError(f"{run_dir} has no checkpoint {path.relative_to(run_dir)}: not a finished rl run")
    payload = load_checkpoint(path, map_location=device)
    for key in ("config", "learner"):
        if key not in payload:
            raise ValueError(f"{path} lacks {key!r}: not a checkpoint of `rlts rl` / `rlts atari`")
    missing = [k for k in ("env", "seed", "world_model", "agent") if k not in payload["config"]]
    if missing:
        raise ValueError(f"{path}: its config lacks {missing}: not a checkpoint of `rlts rl` / `rlts atari`")
    return payload["config"], payload


def run_env_kwargs(cfg: dict) -> dict:
    """The `make_env` keywords of an rl run's config."""
    return {k: cfg[k] for k in RUN_ENV_KEYS if k in cfg}


class AgentPolicy:
    """The Drama agent of a run folder as a policy: obs (*obs_shape) -> int action, one recurrent
    step per call; `reset()` at every episode start."""

    def __init__(self, run_dir: str | Path, greedy: bool = False, device: str | torch.device = "cpu"):
        self.device = torch.device(device)
        self.cfg, payload = load_run(run_dir, self.device)
        spec = env_spec(make_env(self.env, **self.env_kwargs))
        models = LearnerConfig(world_model=apply_dict(WorldModelConfig(), self.cfg["world_model"]),
                               agent=apply_dict(ActorCriticConfig(), self.cfg["agent"]))
        learner = Learner(spec.obs_shape, spec.n_actions, models, self.device)
        try:
            learner.wm.load_state_dict(payload["learner"]["wm"])
            learner.ac.load_state_dict(payload["learner"]["ac"])
        except (KeyError, RuntimeError) as e:
            raise ValueError(f"{run_dir}: the checkpoint's models do not match its config: {e}") from e
        self.agent = Agent(learner.wm.eval(), learner.ac.eval(), self.device, greedy)
        self.greedy = greedy
        self.description = f"Drama agent of {run_dir} (step {payload.get('step')}, {'greedy' if greedy else 'sampling'})"
        self.reset()

    @property
    def env(self) -> str:
        """The run's environment."""
        return self.cfg["env"]

    @property
    def env_kwargs(self) -> dict:
        return run_env_kwargs(self.cfg)

    def reset(self) -> None:
        self.agent.start(1)

    def __call__(self, obs: np.ndarray) -> int:
        return int(self.agent.act(np.asarray(obs)[None])[0])


def record(env_name: Optional[str], policy: Policy = "random", episodes: Optional[int] = None,
           steps: Optional[int] = None, seed: int = 0, out: Optional[str | Path] = None, *,
           greedy: bool = False, device: str = "cpu", progress: bool = True,
           env_kwargs: Optional[dict] = None) -> Trajectories:
    """Record `episodes` whole episodes, or `steps` transitions (the last episode cut), of
    `policy` in `make_env(env_name)`; write them to `out` if given; return the Trajectories.

    policy: "random", a callable obs -> action (an optional `reset()` is called at each episode
    start), the path of an rl run folder (its agent acts; `greedy` picks the most likely action
    instead of sampling), or of an `rlts behaviour` run folder or snapshot (its SAC policy acts,
    `greedy`: the mean action). With a run folder `env_name` may be None (the run's env is used) and
    the env is made with the run's settings (image size, no-ops, frame cap).
    """
    if (episodes is None) == (steps is None):
        raise ValueError("give exactly one of episodes and steps")
    budget = episodes if episodes is not None else steps
    if budget < 1:
        raise ValueError(f"{'episodes' if episodes is not None else 'steps'} must be >= 1, got {budget}")
    if out is not None:
        check_out(out)
    kwargs = dict(env_kwargs or {})
    if isinstance(policy, str) and policy == "random":
        act, description = None, "uniform random"
    elif isinstance(policy, (str, Path)):
        if is_behaviour_path(policy):  # a `rlts behaviour` run folder or policy snapshot
            act = BehaviourPolicy(policy, greedy=greedy)
        else:
            act = AgentPolicy(policy, greedy=greedy, device=device)
            kwargs = {**act.env_kwargs, **kwargs}
        run_env = act.env
        description = act.description
        if env_name is not None and env_name != run_env:
            raise ValueError(f"the agent in {policy} was trained on {run_env!r}, not {env_name!r}")
        env_name = run_env
    elif callable(policy):
        act, description = policy, getattr(policy, "description", repr(policy))
    else:
        raise ValueError(f"policy must be 'random', a run folder or a callable, got {policy!r}")
    if env_name is None:
        raise ValueError("no environment given (--env)")

    env = make_env(env_name, **kwargs)
    env.action_space.seed(derive_seed(seed, 4))
    if act is None:
        def act(obs):  # uniform random, from the seeded action space
            return env.action_space.sample()
    eps: List[dict] = []
    o, a, r, te, tr, ll = [], [], [], [], [], []
    bar = _progress(budget, f"record {env_name}", "episode" if episodes is not None else "step", progress)

    def on_step(step: Step) -> None:
        o.append(step.obs); a.append(np.asarray(step.action)); r.append(step.reward)
        te.append(bool(step.terminated)); tr.append(bool(step.truncated or step.cut))
        ll.append(bool(step.info.get("life_loss", False)))
        if steps is not None:
            bar.update(1)
        if step.terminated or step.truncated or step.cut:
            eps.append({"observations": np.stack(o), "actions": np.stack(a), "rewards": np.asarray(r, np.float32),
                        "terminations": np.asarray(te), "truncations": np.asarray(tr),
                        "life_losses": np.asarray(ll), "final_observation": step.next_obs})
            for column in (o, a, r, te, tr, ll):
                column.clear()
            if episodes is not None:
                bar.update(1)

    seeds = (derive_seed(seed, 3, k) for k in (range(episodes) if episodes is not None else itertools.count()))
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(derive_seed(seed, 5))
        result = run_episodes([env], seeds, lambda obs: [act(obs[0])], on_step=on_step, max_steps=steps,
                              start=(lambda n: act.reset()) if hasattr(act, "reset") else None)
    bar.close()
    env.close()
    seeds, cut = result.seeds, any(result.cut)
    meta = default_metadata(
        source="record", env=env_name, env_kwargs=kwargs, policy=description, greedy=bool(greedy), seed=int(seed),
        episode_seeds=seeds, last_episode_cut=cut,
        flags=("terminations: the env's terminated; truncations: the env's truncated, or the episode was cut "
               "by the step budget (last_episode_cut); life_losses: info['life_loss']"))
    data = Trajectories.from_episodes(eps, meta)
    if out is not None:
        save_trajectories(data, check_out(out))  # again: a file may have appeared meanwhile
    return data


# ---------------------------------------------------------------------------------------------
def _flag_split(term: np.ndarray) -> dict:
    """One buffer stream split after every set flag; the last piece is cut (truncated).
    Returns the stream's flags (size,) and episode starts (E_i,)."""
    trunc = np.zeros_like(term)
    if not term[-1]:
        trunc[-1] = True
    ends = np.flatnonzero(term | trunc) + 1
    starts = np.concatenate([[0], ends[:-1]])
    return {"terminations": term.copy(), "truncations": trunc, "starts": starts}


def _reconstruct(cfg, stream: int, obs, act, rew, term, progress) -> dict:
    """Replay one buffer stream through the env with the run's episode seeds; ValueError at the
    first step that does not match the buffer. Returns the stream's true flags and life losses
    (size,), episode starts (E_i,) and final observations (E_i, *obs_shape)."""
    env = make_env(cfg["env"], **run_env_kwargs(cfg))
    n = len(rew)
    terminations, truncations, life = np.zeros(n, bool), np.zeros(n, bool), np.zeros(n, bool)
    starts, finals = [0], []
    k = 0
    cur, _ = env.reset(seed=episode_seed(cfg["seed"], stream, k))
    try:
        for t in range(n):
            if not np.array_equal(np.asarray(cur, dtype=obs.dtype), obs[t]):
                raise ValueError(f"stream {stream}, step {t}: the replayed observation differs from the buffer's")
            cur, r, te, tr, info = env.step(int(act[t]))
            ll = bool(info.get("life_loss", False))
            if np.float32(r) != rew[t] or bool(te or ll) != bool(term[t]):
                raise ValueError(f"stream {stream}, step {t}: replayed reward/flag ({r}, {te or ll}) differ from the "
                                 f"buffer's ({rew[t]}, {bool(term[t])})")
            terminations[t], truncations[t], life[t] = te, tr, ll
            progress.update(1)
            if te or tr:
                finals.append(np.asarray(cur, dtype=obs.dtype))
                k += 1
                cur, _ = env.reset(seed=episode_seed(cfg["seed"], stream, k))
                if t + 1 < n:
                    starts.append(t + 1)
        if len(finals) < len(starts):  # the episode running at the checkpoint: cut
            truncations[-1] = True
            finals.append(np.asarray(cur, dtype=obs.dtype))
    finally:
        env.close()
    return {"terminations": terminations, "truncations": truncations, "life_losses": life,
            "finals": np.stack(finals), "starts": np.array(starts)}


def export_replay(run_dir: str | Path, out: Optional[str | Path] = None, reconstruct: str = "auto",
                  progress: bool = True) -> Trajectories:
    """The replay buffer of an rl run folder as Trajectories (see the module docstring); written
    to `out` if given. reconstruct: "auto" (replay through the env when the buffer allows it,
    else split by flags), "always" (a ValueError if it cannot) or "never" (flags only)."""
    if reconstruct not in RECONSTRUCT:
        raise ValueError(f"reconstruct must be auto, always or never, got {reconstruct!r}")
    if out is not None:
        check_out(out)
    cfg, payload = load_run(run_dir)
    buf = payload.get("buffer")
    if isinstance(buf, dict) and "chunks" in buf:  # the index of the run's files in checkpoints/replay/
        buf = ReplayFiles(Path(run_dir) / "checkpoints" / "replay").read(buf)
    if not isinstance(buf, dict) or any(k not in buf for k in ("obs", "action", "reward", "terminated", "size", "steps")):
        raise ValueError(f"{run_dir}: the checkpoint has no replay buffer state")
    obs = buf["obs"].numpy()                                # (N_envs, size, *obs_shape)
    act = buf["action"].numpy().astype(np.int64)            # (N_envs, size)
    rew = buf["reward"].numpy().astype(np.float32)          # (N_envs, size)
    term = buf["terminated"].numpy().astype(bool)           # (N_envs, size)
    n_envs, size = int(buf["num_envs"]), int(buf["size"])
    if size == 0:
        raise ValueError(f"{run_dir}: the replay buffer is empty")
    wrapped = int(buf["steps"]) > size
    why = None
    if reconstruct == "never":
        why = "not asked for (reconstruct=never)"
    elif wrapped:
        why = (f"the buffer wrapped around ({int(buf['steps'])} steps per env, {size} kept): "
               "the first episodes' beginnings are gone")
        if reconstruct == "always":
            raise ValueError(f"{run_dir}: cannot reconstruct the episodes: {why}")
    streams = None
    if why is None:
        bar = _progress(n_envs * size, "reconstructing the replay episodes", "step", progress)
        try:
            streams = [_reconstruct(cfg, i, obs[i], act[i], rew[i], term[i], bar) for i in range(n_envs)]
        except ValueError as e:
            if reconstruct == "always":
                raise ValueError(f"{run_dir}: cannot reconstruct the episodes: {e}") from e
            why, streams = f"replaying the env did not match the buffer ({e})", None
        finally:
            bar.close()
    if streams is None:
        streams = [_flag_split(term[i]) for i in range(n_envs)]

    # The streams back to back, without copying the frames (a 100k-frame Atari buffer is 1.2 GB).
    offsets = np.arange(n_envs) * size                                       # (N_envs,)
    starts = np.concatenate([s["starts"] + o for s, o in zip(streams, offsets)]).astype(np.int64)  # (E,)
    stream_of = np.concatenate([np.full(len(s["starts"]), i) for i, s in enumerate(streams)]).tolist()
    reconstructed = why is None
    meta = default_metadata(
        source="replay", run_dir=str(run_dir), checkpoint_step=payload.get("step"), env=cfg["env"],
        env_kwargs=run_env_kwargs(cfg),
        policy=(f"behaviour policy of the training run: uniform random for the first {cfg.get('random_steps')} "
                "steps, then the learning Drama agent (sampling)"),
        seed=cfg["seed"], num_envs=n_envs, buffer_steps_per_env=int(buf["steps"]), buffer_size_per_env=size,
        buffer_wrapped=wrapped, reconstructed=reconstructed, not_reconstructed_because=why,
        episode_streams=stream_of,
        flags=("reconstructed by replaying the env: terminations, truncations and life_losses are the env's; "
               "each stream's last episode is cut (truncated) at the checkpoint" if reconstructed else
               "split by the buffer's flags: terminations = terminated OR life lost (an Atari episode is one "
               "life); truncations are unknown except that each stream's last episode is cut (truncated); a "
               "time-limit reset inside an episode is invisible; no final observations"
               + ("; the first episode of each stream may start mid-episode" if wrapped else "")))
    cat = lambda key: np.concatenate([s[key] for s in streams])  # noqa: E731
    data = Trajectories(
        observations=obs.reshape(n_envs * size, *obs.shape[2:]),          # (N, *obs_shape)
        actions=act.reshape(-1), rewards=rew.reshape(-1),                 # (N,)
        terminations=cat("terminations"), truncations=cat("truncations"),  # (N,)
        episode_starts=starts, final_observations=cat("finals") if reconstructed else None,
        life_losses=cat("life_losses") if reconstructed else None, metadata=meta)
    data.validate(f"replay buffer of {run_dir}")
    if out is not None:
        save_trajectories(data, check_out(out))  # again: a file may have appeared meanwhile
    return data


# ---------------------------------------------------------------------------------------------
@dataclass
class RecordConfig:
    """Settings of `rlts record`. The keys that only recording a policy uses default to none, so
    that `--from-replay`, which refuses them, can tell which were given."""

    env: Optional[str] = None
    """Gymnasium id or Atari game (none, with a run folder as --policy: the run's env)."""
    policy: Optional[str] = None
    """random (none: random), the folder of an `rlts rl` / `rlts atari` run (its Drama agent acts),
    or of an `rlts behaviour` run (its latest snapshot) or one of its policies/step<N>.pt."""
    episodes: Optional[int] = None
    """Whole episodes to record (give this or steps)."""
    steps: Optional[int] = None
    """Transitions to record; the episode running when they are spent is cut (marked truncated)."""
    seed: Optional[int] = None
    """Seeds the episode resets and the policy's sampling (none: 0)."""
    greedy: Optional[bool] = None
    """A run's agent takes its most likely action, a behaviour policy its mean action, instead of
    sampling (none: false)."""
    from_replay: Optional[str] = None
    """Export the replay buffer of this `rlts rl` / `rlts atari` run folder instead of running a
    policy (--from-replay DIR); it fixes the env, policy, length and seeds, so env, policy,
    episodes, steps, seed, greedy and device are refused with it."""
    reconstruct: Optional[str] = param(None, choices=RECONSTRUCT)
    """With from_replay: auto (none: auto) recovers the true episode flags by replaying the env
    when the buffer allows it, always stops if it cannot, never splits the buffer by its flags."""
    out: Optional[str] = None
    """The dataset file to write (required): one .npz in the rlts.data.trajectories format
    (observations, actions, rewards, terminations, truncations, episode starts, JSON metadata); it
    must not exist yet, nothing is overwritten."""
    device: Optional[str] = None
    """Device of a run's agent: cpu (none: cpu), cuda or cuda:N."""
    progress: bool = True
    """Show a progress bar on stderr (--no-progress: false)."""


_POLICY_ONLY = ("env", "policy", "episodes", "steps", "seed", "greedy", "device")
"""The keys that only recording a policy uses; --from-replay refuses them."""


def run_record(cfg: RecordConfig) -> Trajectories:
    """`rlts record`: check the keys (one ValueError naming the first problem), then record or
    export, and print what was written."""
    if not cfg.out:
        raise ValueError("give --out FILE.npz: the dataset file to write")
    try:
        if cfg.from_replay:
            extra = [f"--{key.replace('_', '-')}" for key in _POLICY_ONLY if getattr(cfg, key) is not None]
            if extra:
                raise ValueError(f"--from-replay takes no {', '.join(extra)}: the run's replay buffer fixes the "
                                 "environment, policy, length and seeds")
            data = export_replay(cfg.from_replay, cfg.out, cfg.reconstruct or "auto", progress=cfg.progress)
        else:
            if cfg.reconstruct is not None:
                raise ValueError("--reconstruct applies only to --from-replay")
            if cfg.episodes is None and cfg.steps is None:
                raise ValueError("give --episodes N or --steps N")
            policy = cfg.policy or "random"
            if policy == "random" and not cfg.env:
                raise ValueError("--env is required with --policy random")
            data = record(cfg.env, policy, cfg.episodes, cfg.steps, 0 if cfg.seed is None else cfg.seed, cfg.out,
                          greedy=bool(cfg.greedy), device=cfg.device or "cpu", progress=cfg.progress)
    except FileNotFoundError as e:
        raise ValueError(str(e)) from e
    returns = data.episode_returns()
    episodes = f"{data.n_episodes} episode{'s' * (data.n_episodes != 1)}"
    print(f"rlts record: wrote {len(data):,} transitions in {episodes} (mean return {returns.mean():.2f}) to {cfg.out}")
    return data


COMMANDS = (Command("record", RecordConfig, None, run_record, aliases={"--no-progress": "--progress=false"},
                    help="record an offline RL dataset from a policy or a trained agent's replay buffer",
                    usage=("rlts record --env ENV --policy random|RUN_DIR (--episodes N | --steps N) [--seed S] "
                           "[--greedy] --out FILE.npz\n       rlts record --from-replay RUN_DIR "
                           "[--reconstruct auto|always|never] --out FILE.npz")),)
