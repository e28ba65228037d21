"""Behaviour policies for D4RL-style offline datasets: train SAC (Stable-Baselines3) on a
continuous-control task, keep policy snapshots and the whole training replay.

    rlts behaviour --env Hopper-v5 --steps 100000 --out runs/hopper_sac
    rlts record --policy runs/hopper_sac/policies/step40000.pt --steps 100000 --out hopper_medium.npz
    runs/hopper_sac/replay.npz                                  # every transition of training

The D4RL recipe (Fu et al. 2020): train SAC, stop (or pick a snapshot) when its return is roughly a
third to a half of an expert's; "medium" = that snapshot policy rolled out (sampling from it),
"medium-replay" = the training replay buffer up to that snapshot. Here every `save_every` steps a
snapshot `policies/step<N>.pt` is written and evaluated (results.json: step, eval mean/std), so
pick the snapshot whose return fits and record it with `rlts record --policy`; train with
`--steps N` equal to that snapshot's step to get the matching replay.npz.

Procedure, per environment step (SB3's SAC defaults: lr 3e-4, batch 256, tau 0.005, gamma 0.99,
one gradient step per environment step, automatic entropy tuning; buffer size = steps, so the
buffer never wraps):
1. act: uniform random (the env's action space, seeded from the run seed) for the first
   `learning_starts` steps, then a sample of the SAC actor (torch RNG);
2. step the env (`rlts.tasks.rl.envs.make_env`: actions in [-1, 1]); add the transition to the SB3
   replay buffer with `infos["TimeLimit.truncated"]`, so that a time-limit cut is not a terminal
   for the critic (SB3 masks `dones` with `timeouts`); episode k is reset with
   `rlts.runtime.episode_seed(seed, 0, k)` (`rlts.tasks.rl.episodes.EpisodeCollector`);
3. once past `learning_starts` steps, one `model.train` gradient step (SB3's own update).

SB3's `model.learn` is not used: its collection loop cannot be resumed exactly. Our own loop can:
`checkpoints/last.pt` holds (as tensors and plain data only, loadable with weights_only) the
networks, the three optimisers, log(alpha), the buffer arrays, the counters, the torch / NumPy /
Python and action-space RNG states, and the running episode's index and actions; on resume the
env is reset with that episode's seed and the actions are replayed (checked against the stored
observation). A killed run thus continues bit for bit as if it had never stopped.

Each snapshot is evaluated on `eval_episodes` greedy episodes (`rlts.tasks.rl.episodes.run_episodes`),
episode k reset with derive_seed(seed, 1, k), the same episodes for every snapshot.

Outputs in `out`: checkpoints/last.pt, policies/step<N>.pt (actor weights, obs/act dims, net_arch,
env), results.json (snapshots with their evaluation, training episode returns), tb/ (episode
returns and SAC losses) and, at the end, replay.npz (rlts.data.trajectories format, source
"behaviour-replay"; the episode running at the end is cut and marked truncated).
"""
from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, List, Optional

import numpy as np
import torch

from rlts.checkpoint import load, rng_state, save_atomic, set_rng_state
from rlts.config import check_ranges, param, result_keys, to_dict
from rlts.data.trajectories import Trajectories, default_metadata, save_trajectories
from rlts.runtime import derive_seed, episode_seed
from rlts.tasks.runner import Command
from rlts.tasks.runner import load_results, output_folder, write_json_atomic
from rlts.tasks.rl.envs import make_env
from rlts.tasks.rl.episodes import EpisodeCollector, run_episodes
from rlts.tasks.rl.sac import BehaviourPolicy, act

# Settings a resumed run must share with its checkpoint (`steps` may grow: training continues).
_BUFFER_ARRAYS = ("observations", "next_observations", "actions", "rewards", "dones", "timeouts")


@dataclass
class BehaviourConfig:
    """Settings of `rlts behaviour` (SB3's SAC defaults unless said otherwise)."""

    env: str = param("Hopper-v5", result=True)
    """Gymnasium id with 1-D Box actions (HalfCheetah-v5, Hopper-v5, Pendulum-v1, ...)."""
    steps: int = param(100_000, within="[1, inf)")
    """Environment steps in all; also the replay buffer's size (nothing is overwritten)."""
    seed: int = param(0, result=True)
    """Seeds SAC's networks, the buffer sampling, the random actions and every episode's reset."""
    learning_starts: int = param(10_000, result=True, within="[0, inf)")
    """Steps of uniformly random actions before SAC acts and trains."""
    batch_size: int = param(256, result=True, within="[1, inf)")
    """Transitions per gradient step."""
    net_arch: List[int] = param(default_factory=lambda: [256, 256], result=True, within="[1, inf)")
    """Hidden layer widths of the actor and of each critic."""
    save_every: int = param(10_000, within="[1, inf)")
    """Steps between checkpoints and policy snapshots (one more at the end)."""
    eval_episodes: int = param(10, within="[1, inf)")
    """Greedy evaluation episodes of every snapshot (fixed seeds, the same for every snapshot)."""
    out: Optional[str] = None
    """Output folder (default: runs/behaviour-<env>-<time>); reusing it resumes the run."""
    progress: bool = True
    """Show a progress bar with ETA."""


def check_config(cfg: BehaviourConfig) -> None:
    check_ranges(cfg)
    if not cfg.net_arch:
        raise ValueError("config key `net_arch` must list positive layer widths, got none")


def check_env(name: str) -> tuple:
    """(obs_dim, act_dim) of `make_env(name)`; a ValueError for an unknown env or non-Box actions."""
    import gymnasium as gym

    env = make_env(name)
    try:
        if not isinstance(env.action_space, gym.spaces.Box):
            raise ValueError(f"{name!r} has action space {env.action_space}; SAC needs continuous (Box) actions")
        return int(env.observation_space.shape[0]), int(env.action_space.shape[0])
    finally:
        env.close()


# ---------------------------------------------------------------------------------------------
def evaluate(policy: Callable, env_name: str, seed: int, episodes: int) -> List[float]:
    """Returns of `episodes` full episodes of `policy` (obs -> action), episode k reset with
    derive_seed(seed, 1, k); on a forked torch RNG (training's streams stay untouched)."""
    env = make_env(env_name)
    with torch.random.fork_rng(devices=[]):
        result = run_episodes([env], [derive_seed(seed, 1, k) for k in range(episodes)],
                              lambda obs: [policy(obs[0])])
    env.close()
    return result.returns


class Collector:
    """The training env (one env of an EpisodeCollector: episode k reset with
    episode_seed(seed, 0, k)), its uniform random actions (the env's action space, seeded with
    derive_seed(seed, 4)) and the finished episodes' returns and lengths."""

    def __init__(self, cfg: BehaviourConfig):
        self.episodes = EpisodeCollector(cfg.env, 1, cfg.seed)
        self.action_space = self.episodes.envs[0].action_space
        self.action_space.seed(derive_seed(cfg.seed, 4))
        self.returns: List[float] = []
        self.lengths: List[int] = []

    def start(self) -> None:
        """Reset the env for the first episode."""
        self.episodes.start()

    def act(self, actor: torch.nn.Module, random: bool) -> np.ndarray:
        """(act_dim,) float32 in [-1, 1]."""
        return self.action_space.sample() if random else act(actor, self.episodes.obs[0], greedy=False)

    def step(self, action: np.ndarray, buffer) -> Optional[tuple]:
        """Step the env, add the transition to the SB3 buffer, reset a finished episode with its
        seed. Returns (return, length) of a finished episode, else None."""
        t = self.episodes.step([action])
        buffer.add(t.obs, t.next_obs, action[None], t.reward.astype(np.float32), t.done,
                   [{"TimeLimit.truncated": bool(t.truncated[0] and not t.terminated[0])}])
        if not t.finished:
            return None
        _, ret, length = t.finished[0]
        self.returns.append(ret)
        self.lengths.append(length)
        return ret, length

    def state_dict(self) -> dict:
        """The running episode (index, actions (T, act_dim), return), the observation (obs_dim,),
        the finished episodes' returns and lengths, and the action space's RNG state."""
        d = self.episodes.state_dict()
        return {"episode": d["episode"][0], "actions": d["actions"][0], "ep_return": d["ep_return"][0],
                "obs": d["obs"][0].clone(), "returns": list(self.returns), "lengths": list(self.lengths),
                "action_space_rng": self.action_space.np_random.bit_generator.state}

    def load_state_dict(self, d: dict) -> None:
        """Rebuild the env: reset with the running episode's seed, replay its actions."""
        self.episodes.load_state_dict({"episode": [int(d["episode"])], "ep_return": [float(d["ep_return"])],
                                       "ep_length": [len(d["actions"])], "actions": [d["actions"]],
                                       "obs": d["obs"][None]})
        self.returns, self.lengths = list(d["returns"]), list(d["lengths"])
        self.action_space.np_random.bit_generator.state = d["action_space_rng"]


# ---------------------------------------------------------------------------------------------
def make_sac(cfg: BehaviourConfig, tb_dir: Path):
    """SB3 SAC with its defaults, buffer_size = steps, on CPU; logging to TensorBoard. Its env
    only supplies the spaces: our Collector steps its own."""
    from stable_baselines3 import SAC
    from stable_baselines3.common.logger import configure

    model = SAC("MlpPolicy", make_env(cfg.env), buffer_size=cfg.steps, learning_starts=cfg.learning_starts,
                batch_size=cfg.batch_size, policy_kwargs={"net_arch": list(cfg.net_arch)}, seed=cfg.seed,
                device="cpu")
    model.set_logger(configure(str(tb_dir), ["tensorboard"]))
    return model


def sac_state(model, n: int) -> dict:
    """Networks, optimisers, log(alpha), update count and the first n buffer entries, as tensors."""
    buf = model.replay_buffer
    return {"policy": model.policy.state_dict(), "actor_opt": model.actor.optimizer.state_dict(),
            "critic_opt": model.critic.optimizer.state_dict(), "log_ent_coef": model.log_ent_coef.detach().clone(),
            "ent_coef_opt": model.ent_coef_optimizer.state_dict(), "n_updates": model._n_updates,
            "buffer": {k: torch.from_numpy(getattr(buf, k)[:n].copy()) for k in _BUFFER_ARRAYS}}


def load_sac_state(model, d: dict, n: int) -> None:
    model.policy.load_state_dict(d["policy"])
    model.actor.optimizer.load_state_dict(d["actor_opt"])
    model.critic.optimizer.load_state_dict(d["critic_opt"])
    with torch.no_grad():
        model.log_ent_coef.copy_(d["log_ent_coef"])
    model.ent_coef_optimizer.load_state_dict(d["ent_coef_opt"])
    model._n_updates = int(d["n_updates"])
    buf = model.replay_buffer
    for k in _BUFFER_ARRAYS:
        getattr(buf, k)[:n] = d["buffer"][k].numpy()
    buf.pos, buf.full = n % buf.buffer_size, n >= buf.buffer_size


def replay_trajectories(model, n: int, cfg: BehaviourConfig) -> Trajectories:
    """The first n buffer entries as episodes: boundaries and flags from the buffer's dones and
    timeouts (termination = done and not a time-limit cut), the last episode cut (truncated)."""
    buf = model.replay_buffer
    obs, nxt = buf.observations[:n, 0], buf.next_observations[:n, 0]        # (n, obs_dim)
    done, timeout = buf.dones[:n, 0] > 0, buf.timeouts[:n, 0] > 0           # (n,)
    term, trunc = done & ~timeout, timeout.copy()
    cut = not done[-1]
    trunc[-1] |= cut
    ends = np.flatnonzero(term | trunc) + 1                                   # (E,)
    starts = np.concatenate([[0], ends[:-1]])
    episodes = [{"observations": obs[a:b], "actions": buf.actions[a:b, 0], "rewards": buf.rewards[a:b, 0],
                 "terminations": term[a:b], "truncations": trunc[a:b], "final_observation": nxt[b - 1]}
                for a, b in zip(starts, ends)]
    meta = default_metadata(
        source="behaviour-replay", env=cfg.env, env_kwargs={}, seed=cfg.seed, steps=n,
        learning_starts=cfg.learning_starts,
        policy=(f"SAC training run: uniform random for the first {cfg.learning_starts} steps, then the "
                "learning SAC policy (sampling)"),
        episode_seeds=[episode_seed(cfg.seed, 0, k) for k in range(len(episodes))], last_episode_cut=cut,
        flags=("terminations: the env's terminated; truncations: a time-limit cut (an episode both terminated "
               "and cut counts as terminated, as in SB3), or the end of training (last_episode_cut)"))
    return Trajectories.from_episodes(episodes, meta)


def check_resumable(state: dict, cfg: BehaviourConfig, path: Path) -> None:
    """A checkpoint of other settings, or beyond `steps`, cannot be continued: a clear error."""
    old, new = state["config"], json.loads(json.dumps(to_dict(cfg)))
    changed = [k for k in result_keys(BehaviourConfig) if old.get(k) != new[k]]
    if changed:
        diff = ", ".join(f"{k}: {old.get(k)!r} -> {new[k]!r}" for k in changed)
        raise ValueError(f"{path} is a checkpoint of a different setup ({diff}); use another --out")
    if int(state["step"]) > cfg.steps:
        raise ValueError(f"{path} is at step {int(state['step'])}, beyond --steps {cfg.steps}")


# ---------------------------------------------------------------------------------------------
def train(cfg: BehaviourConfig) -> dict:
    """Train (or resume) SAC; returns the results object also written to results.json."""
    check_config(cfg)
    obs_dim, act_dim = check_env(cfg.env)
    out = output_folder(cfg.out, "behaviour", cfg.env)
    results_path, ckpt_path = out / "results.json", out / "checkpoints" / "last.pt"
    previous = load_results(results_path, cfg)
    if previous.get("finished") and previous.get("steps", 0) >= cfg.steps:
        print(f"rlts behaviour: {out} already holds a finished run of {previous['steps']:,} steps; nothing to do "
              "(a larger --steps continues it)")
        return previous
    state = load(ckpt_path) if ckpt_path.exists() else None
    if state is not None:
        check_resumable(state, cfg, ckpt_path)
    out.mkdir(parents=True, exist_ok=True)
    print(f"rlts behaviour: {cfg.env}, out {out}")

    model = make_sac(cfg, out / "tb")
    collector = Collector(cfg)
    step, snapshots, wall = 0, [], 0.0
    if state is None:
        collector.start()
    else:
        step, snapshots, wall = int(state["step"]), list(state["snapshots"]), float(state["wall"])
        load_sac_state(model, state["sac"], step)
        collector.load_state_dict(state["collector"])
        set_rng_state(state["rng"])
        print(f"rlts behaviour: resumed at step {step:,} from {ckpt_path}")

    def results(finished: bool) -> dict:
        return {"config": to_dict(cfg), "env": cfg.env, "steps": step, "snapshots": snapshots,
                "episode_returns": collector.returns, "episode_lengths": collector.lengths,
                "train_wall_s": wall, "steps_per_s": step / max(wall, 1e-9), "finished": finished,
                "replay": "replay.npz" if finished else None}

    def save() -> None:
        path = save_atomic({"actor": model.actor.state_dict(), "obs_dim": obs_dim, "act_dim": act_dim,
                            "net_arch": list(cfg.net_arch), "env": cfg.env, "step": step, "seed": cfg.seed},
                           out / "policies" / f"step{step}.pt")
        returns = evaluate(BehaviourPolicy(path, greedy=True), cfg.env, cfg.seed, cfg.eval_episodes)
        snapshots.append({"step": step, "policy": str(path.relative_to(out)), "eval_mean": float(np.mean(returns)),
                          "eval_std": float(np.std(returns)), "eval_returns": returns})
        model.logger.record("eval/return", snapshots[-1]["eval_mean"])
        save_atomic({"config": to_dict(cfg), "step": step, "sac": sac_state(model, step),
                     "collector": collector.state_dict(), "snapshots": snapshots, "wall": wall,
                     "rng": rng_state()}, ckpt_path)
        write_json_atomic(results(finished=False), results_path)

    from tqdm.auto import tqdm

    bar = tqdm(total=cfg.steps, initial=step, desc=f"behaviour {cfg.env}", unit="step", dynamic_ncols=True,
               disable=not cfg.progress, leave=False)
    t0 = time.time()
    while step < cfg.steps:
        action = collector.act(model.actor, random=step < cfg.learning_starts)       # (act_dim,)
        finished = collector.step(action, model.replay_buffer)
        step += 1
        if step > cfg.learning_starts:
            model._update_current_progress_remaining(step, cfg.steps)
            model.train(gradient_steps=1, batch_size=cfg.batch_size)
        if finished is not None:
            model.logger.record("rollout/ep_return", finished[0])
            model.logger.record("rollout/ep_length", finished[1])
            model.logger.dump(step)
            bar.set_postfix(ret=f"{finished[0]:.1f}")
        bar.update(1)
        if step % cfg.save_every == 0 or step == cfg.steps:
            wall, t0 = wall + time.time() - t0, time.time()
            save()
    bar.close()
    save_trajectories(replay_trajectories(model, step, cfg), out / "replay.npz")
    final = results(finished=True)
    write_json_atomic(final, results_path)
    model.logger.close()
    last = snapshots[-1]
    print(f"rlts behaviour: {cfg.env} step {step:,}: eval return {last['eval_mean']:.1f} ± {last['eval_std']:.1f} "
          f"({cfg.eval_episodes} greedy episodes); {step / max(wall, 1e-9):.0f} steps/s; wrote {out}")
    return final


COMMANDS = (Command("behaviour", BehaviourConfig, "behaviour.yaml", train,
                    help="train a SAC behaviour policy (Stable-Baselines3) for D4RL-style datasets",
                    stem=lambda cfg: cfg.env),)


def parse_behaviour_config(argv: List[str]) -> BehaviourConfig:
    """BehaviourConfig from tasks/configs/behaviour.yaml and `--key value` args."""
    return COMMANDS[0].parse(argv)
