"""The one RL loop of rlts: a Drama world-model agent on any Gymnasium environment with discrete
actions (Atari through `rlts atari`, vector tasks such as CartPole through `rlts rl`).

    rlts rl --env CartPole-v1 --steps 20000 --out runs/cartpole
    rlts atari --game Pong --config atari100k --out runs/pong
    rlts atari --game Pong --config debug                # CI-sized smoke run

Read top to bottom, per environment step (Drama's schedule):
1. act: the first `random_steps` steps uniformly at random, then the actor on s_t = [z_t, h_{t-1}]
   (posterior latent of the frame, the sequence model's recurrent state): one `step` of the
   sequence model per action, constant memory per step (rlts.world_models.agent.Agent, one
   acting state per environment; `agent.acting: drama` reads a window of recent frames instead);
2. store (obs_t, a_t, r_t, terminated_t or life lost) in the replay buffer; finished episodes are
   reset with their own seed (episode k of env i: rlts.runtime.episode_seed(seed, i, k), the
   environments of a rlts.tasks.rl.episodes.EpisodeCollector);
3. train, once past `random_steps`, `updates_per_step` times per step (rlts.world_models.learner):
   one world-model update on `batch_size` windows of `batch_length` steps (DFS sampling), then
   one actor-critic update on `imagine_batch` rollouts of `imagine_horizon` steps from
   `imagine_context` real frames;
4. every `eval_every` steps: greedy evaluation on full episodes (no life-loss signal), run side by
   side with one batched acting state (rlts.tasks.rl.episodes.run_episodes);
   every `checkpoint_every` steps: an atomic checkpoint of everything, the replay buffer included
   (its steps added since the previous checkpoint appended as one file: rlts.world_models.replay.ReplayFiles).

Exact resume: a checkpoint holds the models, optimisers, buffer, counters, RNG states, the
recurrent acting states, and for every environment its current episode's seed and actions. The
buffer's transitions live in checkpoints/replay/, one chunk file per checkpoint, and last.pt
holds its index (pointers, sampling counters, the chunks it needs); a chunk is on disk before
last.pt lists it, and chunks last.pt no longer lists are deleted only after it is saved, so a
kill at any point leaves the last checkpoint whole. On resume each environment is reset with
that seed and the actions are replayed, which rebuilds its state exactly (checked against the
stored observation), so a killed run continues as if it had never stopped. Evaluation runs on a
forked RNG and does not disturb training.

Outputs in `out`: config.yaml, checkpoints/last.pt and checkpoints/replay/, tb/ (losses; returns,
with the evaluation's spread (std, min, max) and, for Atari100k games, human-normalised scores
(tasks/data/atari100k_reference_scores.csv); environment steps and learner updates per second;
reconstructions and imagined rollouts as images), eval.csv / eval.md / eval.png (the evaluation
curve), and results.json with the final mean evaluation return as `eval_return`.
"""
from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path
from typing import Callable, Dict, List, Optional

import numpy as np
import torch
from torch.utils._pytree import tree_map

from rlts.checkpoint import Checkpointer, set_rng_state
from rlts.config import check_ranges, result_keys, save_yaml, to_dict
from rlts.nn import count_parameters
from rlts.runtime import derive_seed, seed_everything, select_device
from rlts.tracking import RunLogger, write_table
from rlts.tasks.runner import Command
from rlts.tasks.runner import load_results, output_folder, section_defaults, write_json_atomic
from rlts.tasks.rl.config import RLConfig
from rlts.tasks.rl.envs import env_spec, is_atari, make_env
from rlts.tasks.rl.games import find_game
from rlts.tasks.rl.episodes import EpisodeCollector, run_episodes
from rlts.world_models.actor_critic import ActorCritic
from rlts.world_models.agent import Agent
from rlts.world_models.learner import Learner, LearnerConfig
from rlts.world_models.replay import ReplayBuffer, ReplayFiles
from rlts.world_models.world_model import WorldModel

# Settings a resumed run must share with its checkpoint (`steps` may grow: training continues).


# ---------------------------------------------------------------------------------------------
def check_config(cfg: RLConfig) -> None:
    check_ranges(cfg)
    per_env = cfg.buffer_size // cfg.num_envs
    need = max(cfg.batch_length, cfg.imagine_context)
    if per_env < need or cfg.random_steps // cfg.num_envs < need:
        raise ValueError(f"random_steps ({cfg.random_steps}) and buffer_size ({cfg.buffer_size}) must give every "
                         f"environment at least batch_length = {cfg.batch_length} steps before training")


def env_kwargs(cfg: RLConfig) -> dict:
    return dict(image_size=cfg.image_size, noop_max=cfg.noop_max, max_episode_frames=cfg.max_episode_frames)


def learner_config(cfg: RLConfig) -> LearnerConfig:
    """The learner's settings of a run: its models and update schedule."""
    return LearnerConfig(**{f.name: getattr(cfg, f.name) for f in dataclasses.fields(LearnerConfig)})


class Collector:
    """The environments (an EpisodeCollector), their current observations and episodes, and the
    agent acting in each: a separate recurrent acting state per environment (episodes end at
    different steps)."""

    def __init__(self, cfg: RLConfig, learner: Learner, device: torch.device):
        self.envs = EpisodeCollector(cfg.env, cfg.num_envs, cfg.seed, **env_kwargs(cfg))
        self.n_actions, self.device = learner.wm.n_actions, device
        self.agents = [Agent(learner.wm, learner.ac, device) for _ in range(cfg.num_envs)]
        for agent in self.agents:
            agent.start(1)

    def start(self) -> None:
        self.envs.start()

    def act(self, random: bool) -> np.ndarray:
        """Actions (N,) for the current observations; advances each env's acting state."""
        if random:
            return torch.randint(self.n_actions, (len(self.agents),)).numpy()
        obs = self.envs.obs                                                       # (N, *obs_shape)
        return np.array([int(agent.act(obs[i : i + 1])) for i, agent in enumerate(self.agents)], dtype=np.int64)

    def step(self, actions: np.ndarray, buffer: ReplayBuffer) -> List[tuple]:
        """Step every env, store the transitions, reset finished episodes. Returns the finished
        episodes as (return, length)."""
        t = self.envs.step(actions)
        buffer.add(t.obs, actions, t.reward, np.logical_or(t.terminated, t.life_loss))
        for i in np.flatnonzero(t.done):
            self.agents[i].start(1)
        return [(ret, length) for _, ret, length in t.finished]

    def state_dict(self) -> dict:
        return {**self.envs.state_dict(), "acting": [agent.state for agent in self.agents]}

    def load_state_dict(self, d: dict) -> None:
        """Rebuild every env (reset with its episode's seed, replay the episode's actions) and
        restore the acting states."""
        self.envs.load_state_dict(d)
        for agent, state in zip(self.agents, d["acting"]):
            agent.state = tree_map(lambda t: t.to(self.device), state)


def check_resumable(old: dict, cfg: RLConfig, path: Path) -> None:
    """A checkpoint made with other settings cannot be continued: a clear error, not a shape
    mismatch deep inside load_state_dict. A key a nested section (agent, world_model) of the
    checkpoint's config lacks was run with its default."""
    old, new = json.loads(json.dumps(old)), json.loads(json.dumps(to_dict(cfg)))  # tuples as lists
    for k, value in old.items():
        if isinstance(value, dict) and dataclasses.is_dataclass(getattr(cfg, k, None)):
            old[k] = {**section_defaults(getattr(cfg, k)), **value}
    changed = [k for k in result_keys(RLConfig) if k in old and old[k] != new[k]]
    if changed:
        diff = ", ".join(f"{k}: {old[k]!r} -> {new[k]!r}" for k in changed)
        raise ValueError(f"{path} is a checkpoint of a different setup ({diff}); use another --out")


# ---------------------------------------------------------------------------------------------
@torch.no_grad()
def evaluate(wm: WorldModel, ac: ActorCritic, cfg: RLConfig, episodes: int, round_: int,
             device: torch.device) -> List[float]:
    """Greedy returns of `episodes` full episodes run side by side (one batched acting state);
    its own environments and seeds, and a forked RNG (training's random streams stay untouched)."""
    envs = [make_env(cfg.env, **env_kwargs(cfg)) for _ in range(episodes)]
    agent = Agent(wm, ac, device, greedy=True)
    wm.eval(); ac.eval()
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(derive_seed(cfg.seed, 2, round_))
        result = run_episodes(envs, [derive_seed(cfg.seed, 1, round_, k) for k in range(episodes)],
                              lambda obs: agent.act(obs).tolist(), start=agent.start, keep=agent.keep)
    for env in envs:
        env.close()
    wm.train(); ac.train()
    return result.returns


def human_normaliser(env: str) -> Optional[Callable[[float], float]]:
    """score -> (score - random) / (human - random) for an Atari100k game, with the random and
    human scores of tasks/data/atari100k_reference_scores.csv; None for other environments."""
    if not is_atari(env):
        return None
    from rlts.tasks.atari100k.report import load_reference  # pandas: imported for Atari runs only
    from rlts.tasks.atari100k.stats import human_normalized_score

    ref = load_reference()
    game = find_game(env, ref.index)
    if game is None:
        return None
    random, human = float(ref.loc[game, "random"]), float(ref.loc[game, "human"])
    return lambda score: human_normalized_score(score, random, human)


def log_images(log: RunLogger, step: int, learner: Learner) -> None:
    """Real vs reconstructed frames of one training window, one imagined rollout decoded, and
    the open-loop prediction of a window (`Learner.images`), drawn with a forked RNG: logging
    images leaves training's random streams as they were."""
    device = learner.device
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        images = learner.images()
    for tag, image in images.items():
        log.image(step, tag, image)


def plot_curve(curve: List[dict], path: Path, title: str) -> None:
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6, 3.5))
    ax = fig.subplots()
    steps = [c["step"] for c in curve]
    mean = np.array([c["mean"] for c in curve])
    std = np.array([c["std"] for c in curve])
    ax.plot(steps, mean, marker="o")
    ax.fill_between(steps, mean - std, mean + std, alpha=0.2)
    ax.set(xlabel="environment steps", ylabel="evaluation return", title=title)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


# ---------------------------------------------------------------------------------------------
def train(cfg: RLConfig, task: str = "rl") -> dict:
    """Train (or resume) one agent; returns the results object also written to results.json."""
    check_config(cfg)
    out = output_folder(cfg.out, task, cfg.env.replace("/", "-"))
    results_path = out / "results.json"
    previous = load_results(results_path, cfg)
    if previous.get("finished") and previous.get("steps", 0) >= cfg.steps:
        print(f"rlts {task}: {out} already holds a finished run of {previous['steps']:,} steps (eval_return "
              f"{previous['eval_return']:.2f}); nothing to do (a larger --steps continues it)")
        return previous
    device = select_device(cfg.device)
    spec = env_spec(make_env(cfg.env, **env_kwargs(cfg)))  # before writing: a clear error for a bad env
    out.mkdir(parents=True, exist_ok=True)
    save_yaml(cfg, out / "config.yaml")
    seed_everything(cfg.seed)

    learner = Learner(spec.obs_shape, spec.n_actions, learner_config(cfg), device)
    collector = Collector(cfg, learner, device)
    buffer = ReplayBuffer(cfg.buffer_size, cfg.num_envs, spec.obs_shape,
                          torch.uint8 if spec.is_image else torch.float32, device=device)
    n_params = count_parameters(learner.wm)
    print(f"rlts {task}: {cfg.env}, world model {cfg.world_model.backbone}: {n_params:,} parameters; "
          f"actor-critic {count_parameters(learner.ac):,}; device {device}; out {out}")

    ckpt = Checkpointer(out / "checkpoints")
    replay_files = ReplayFiles(ckpt.dir / "replay")
    env_steps, curve, wall = 0, [], 0.0
    state = ckpt.load_latest(map_location=device, restore_rng=False)
    if state is None:
        collector.start()
    else:
        check_resumable(state.get("config", {}), cfg, ckpt.last_path)
        learner.load_state_dict(state["learner"])
        replay_files.restore(buffer, state["buffer"])
        collector.load_state_dict(state["collector"])
        env_steps, curve, wall = int(state["step"]), list(state["curve"]), float(state["wall"])
        set_rng_state(state["rng"])
        print(f"rlts {task}: resumed at step {env_steps:,} from {ckpt.last_path}")

    normalise = human_normaliser(cfg.env)

    def hns(prefix: str, score: float) -> Dict[str, float]:
        """The human-normalised score of an Atari100k game as a scalar; none for other envs."""
        return {f"{prefix}/human_normalised_score": normalise(score)} if normalise else {}

    def save(final: Optional[dict] = None) -> None:
        index = replay_files.write(buffer)  # the new steps' chunk, on disk before last.pt lists it
        ckpt.save(env_steps, {"config": to_dict(cfg), "learner": learner.state_dict(), "buffer": index,
                              "collector": collector.state_dict(), "curve": curve, "wall": wall, "final": final})
        replay_files.commit(index)  # last.pt is saved: the chunks it does not list can go

    def run_eval(episodes: int) -> dict:
        returns = evaluate(learner.wm, learner.ac, cfg, episodes, len(curve), device)
        point = {"step": env_steps, "mean": float(np.mean(returns)), "std": float(np.std(returns)),
                 "episodes": episodes}
        curve.append(point)
        spread = {"eval/return_std": point["std"], "eval/return_min": min(returns), "eval/return_max": max(returns)}
        log.scalars(env_steps, {"eval/return": point["mean"], **spread, **hns("eval", point["mean"])})
        return {**point, "returns": returns}

    n = cfg.num_envs
    t0, steps0, updates0 = time.time(), env_steps, learner.updates
    with RunLogger(out, total=cfg.steps, initial=env_steps, desc=f"{task} {cfg.env}", progress=cfg.progress) as log:
        metrics: Dict[str, torch.Tensor] = {}
        while env_steps < cfg.steps:
            actions = collector.act(env_steps < cfg.random_steps)
            for ret, length in collector.step(actions, buffer):
                log.scalars(env_steps, {"train/episode_return": ret, "train/episode_length": length,
                                        **hns("train", ret)})
            env_steps += n
            log.advance(n)
            if env_steps >= cfg.random_steps:
                due = int((env_steps - cfg.random_steps + n) * cfg.updates_per_step)
                while learner.updates < due:
                    metrics = learner.update(buffer)
            if env_steps % cfg.log_every < n and metrics:
                elapsed = max(time.time() - t0, 1e-9)
                log.scalars(env_steps, {**metrics, "perf/env_steps_per_s": (env_steps - steps0) / elapsed,
                                        "perf/updates_per_s": (learner.updates - updates0) / elapsed},
                            show=("wm/loss", "ac/return"))
            if cfg.image_every and env_steps % cfg.image_every < n:
                log_images(log, env_steps, learner)
            if cfg.eval_every and env_steps % cfg.eval_every < n and env_steps < cfg.steps:
                run_eval(cfg.eval_episodes)
            if env_steps % cfg.checkpoint_every < n or env_steps >= cfg.steps:
                wall += time.time() - t0
                t0, steps0, updates0 = time.time(), env_steps, learner.updates
                save()
        stored = state.get("final") if state is not None and int(state["step"]) == env_steps else None
        if stored is not None and stored["episodes"] == cfg.final_eval_episodes:
            final = stored  # stopped after its final evaluation: not evaluated twice
        else:
            if stored is not None:
                curve.pop()  # that final point had another final_eval_episodes: evaluated again
            final = run_eval(cfg.final_eval_episodes)
            save(final)  # the final point is kept: a later, longer run (--steps) continues from here
    wall += time.time() - t0
    write_table(curve, out / "eval.csv", out / "eval.md")
    plot_curve(curve, out / "eval.png", f"{cfg.env}, world model {cfg.world_model.backbone}")
    results = {"config": to_dict(cfg), "env": cfg.env, "backbone": cfg.world_model.backbone,
               "eval_return": final["mean"], "eval_std": final["std"], "eval_episodes": final["episodes"],
               "eval_returns": final["returns"], "curve": curve, "steps": env_steps, "updates": learner.updates,
               "world_model_parameters": n_params, "actor_critic_parameters": count_parameters(learner.ac),
               "train_wall_s": wall, "device": str(device),
               "protocol": ("greedy policy, full episodes, no life-loss signal"
                            + (f", {cfg.max_episode_frames}-frame cap, frame skip 4, sticky actions off, "
                               f"noop_max {cfg.noop_max}" if spec.is_image else "")),
               "finished": True}
    write_json_atomic(results, results_path)
    print(f"rlts {task}: {cfg.env} eval_return {final['mean']:.2f} ± {final['std']:.2f} over "
          f"{final['episodes']} episodes after {env_steps:,} steps ({wall / 60:.1f} min)")
    return results


COMMANDS = (
    Command("rl", RLConfig, "rl.yaml", lambda cfg: train(cfg, "rl"), aliases={"--game": "--env"},
            help="train a Drama world-model agent on a Gymnasium environment (e.g. CartPole-v1)",
            usage="rlts rl --env CartPole-v1 [--steps N] [--config NAME] [--out DIR] [--key value ...]",
            stem=lambda cfg: cfg.env.replace("/", "-")),
    Command("atari", RLConfig, "atari.yaml", lambda cfg: train(cfg, "atari"), aliases={"--game": "--env"},
            help="train a Drama world-model agent on an Atari game (Atari100k protocol)",
            usage="rlts atari --game Pong [--steps 100000] [--config NAME] [--out DIR] [--key value ...]",
            stem=lambda cfg: cfg.env.replace("/", "-")),
)
