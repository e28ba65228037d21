"""The one RL loop of rlts: a Drama world-model agent on any Gymnasium environment with discrete
actions (Atari through `rlts atari`, vector tasks such as CartPole through `rlts rl`).

    rlts rl --env CartPole-v1 --steps 20000 --out runs/cartpole
    rlts atari --game Pong --config atari100k --out runs/pong
    rlts atari --game Pong --config debug                # CI-sized smoke run
    rlts atari --game Pong --config wm_cpu --dataset pong.npz --minutes 60 --threads 1   # world model only

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

World-model-only training (`--train world_model --dataset FILE.npz`, e.g. a random policy's
frames from `rlts record`): the dataset is the replay buffer (RecordedReplay: every transition,
one stream), nothing is collected, and each step of the loop is one world-model update (steps
and every `*_every` then count updates); no actor-critic update and no evaluation. The same
checkpoints, resume, TensorBoard scalars and images; the run reports its losses. A dataset with
`train: agent` trains the whole agent offline on it, evaluated in the environment as usual.
`minutes` bounds any run's training time (summed over resumes).

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
reconstructions and imagined rollouts as images), losses.csv / losses.png (the learner's metrics
at every scalar log, the world model's losses plotted over updates), eval.csv / eval.md /
eval.png (the evaluation curve), and results.json with the final mean evaluation return as
`eval_return` (world-model runs: the first and last logged losses, seconds per update). Image
observations: open_loop.png, the open-loop strip (real frames over the world model's prediction
from `imagine_context` of them) of the buffer's middle window at the end, and one in open_loop/
at every image log.
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

from rlts.checkpoint import Checkpointer, set_rng_state, write_atomic
from rlts.config import check_ranges, missing_values, result_keys, save_yaml, to_dict
from rlts.data.trajectories import load_trajectories
from rlts.nn import count_parameters
from rlts.runtime import derive_seed, seed_everything, select_device
from rlts.tracking import RunLogger, write_table
from rlts.tasks.runner import Command
from rlts.tasks.runner import file_digests, load_results, output_folder, section_defaults, write_json_atomic
from rlts.tasks.rl.config import RLConfig
from rlts.tasks.rl.envs import EnvSpec, env_spec, is_atari, make_env, make_envs
from rlts.tasks.rl.games import find_game, game_key
from rlts.tasks.rl.episodes import EpisodeCollector, run_episodes
from rlts.world_models.actor_critic import ActorCritic
from rlts.world_models.agent import Agent
from rlts.world_models.learner import Learner, LearnerConfig
from rlts.world_models.replay import ReplayBuffer, ReplayFiles
from rlts.world_models.world_model import WorldModel

# Settings a resumed run must share with its checkpoint (`steps` may grow: training continues).

WM_LOSSES = ("wm/loss", "wm/reconstruction", "wm/reward", "wm/termination", "wm/kl_dynamics",
             "wm/kl_representation", "wm/kl")
"""The world model's losses and its KL before free bits (WorldModel.loss metrics), plotted in
losses.png and reported by world-model runs."""


# ---------------------------------------------------------------------------------------------
def check_config(cfg: RLConfig) -> None:
    check_ranges(cfg)
    if cfg.train == "world_model" and not cfg.dataset:
        raise ValueError("--train world_model needs --dataset FILE.npz: the world model alone learns from a "
                         "recorded dataset (`rlts record --env ENV --policy random --steps N --out FILE.npz`)")
    if cfg.dataset:
        if not Path(cfg.dataset).is_file():
            raise ValueError(f"--dataset {cfg.dataset}: no such file (record one with `rlts record --env {cfg.env} "
                             f"--policy random --steps 20000 --out {cfg.dataset}`)")
        return  # its length is checked when it is read (RecordedReplay)
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


class RecordedReplay:
    """A recorded dataset (rlts.data.trajectories, e.g. from `rlts record`) as the whole, fixed
    contents of the replay buffer: every transition in the file's order as one stream (episodes
    back to back, terminated = terminated or life lost, as the collector stores them), sampled
    as usual (DFS). It stands in for ReplayFiles in the loop's checkpoints: the transitions are
    the file's, so a checkpoint holds only the sampling counters and a resume refills the buffer
    from the file (the checkpoint's config holds its sha256: another file is refused).

    The constructor reads the file and checks it against the run (one ValueError naming it):
    its env, observation shape and dtype, discrete actions in range, and enough transitions for
    the batches."""

    def __init__(self, cfg: RLConfig, spec: EnvSpec):
        path = Path(cfg.dataset)
        data = load_trajectories(path)
        env = data.metadata.get("env")
        same_game = is_atari(cfg.env) and env is not None and is_atari(env) and game_key(env) == game_key(cfg.env)
        if env is not None and env != cfg.env and not same_game:
            raise ValueError(f"--dataset {path} was recorded on {env!r}, not {cfg.env!r}; pass --env {env}")
        obs_dtype = np.uint8 if spec.is_image else np.float32
        if data.obs_shape != spec.obs_shape or (spec.is_image and data.observations.dtype != np.uint8):
            size = f" (image_size {cfg.image_size})" if spec.is_image else ""
            raise ValueError(f"--dataset {path} holds observations of shape {data.obs_shape} "
                             f"{data.observations.dtype}, but the world model of {cfg.env!r}{size} reads "
                             f"{spec.obs_shape} {np.dtype(obs_dtype)}; record the dataset with the run's settings")
        if not data.discrete:
            raise ValueError(f"--dataset {path} holds continuous actions; the world model needs discrete ones")
        if data.actions.min() < 0 or data.actions.max() >= spec.n_actions:
            raise ValueError(f"--dataset {path}: actions range {data.actions.min()}..{data.actions.max()}, but "
                             f"{cfg.env!r} has {spec.n_actions} actions")
        need = [("batch_size", cfg.batch_size, "batch_length", cfg.batch_length)]
        if cfg.train == "agent":
            need.append(("imagine_batch", cfg.imagine_batch, "imagine_context", cfg.imagine_context))
        for batch_key, batch, length_key, length in need:
            if len(data) - length + 1 < batch:
                raise ValueError(f"--dataset {path} holds {len(data):,} transitions: too few for {batch_key} = {batch} "
                                 f"distinct windows of {length_key} = {length} steps")
        terminated = data.terminations if data.life_losses is None else data.terminations | data.life_losses
        n = len(data)
        # (1, N, ...): one stream, in ReplayBuffer.state_dict form
        self.state = {"num_envs": 1, "ring": n, "obs_shape": list(spec.obs_shape), "size": n, "steps": n,
                      "obs": torch.from_numpy(np.asarray(data.observations, obs_dtype))[None],
                      "action": torch.from_numpy(data.actions.astype(np.int32))[None],
                      "reward": torch.from_numpy(data.rewards.astype(np.float32))[None],
                      "terminated": torch.from_numpy(terminated.astype(bool))[None],
                      "n_wm": torch.zeros(1, n, dtype=torch.int64), "n_im": torch.zeros(1, n, dtype=torch.int64)}
        self.path, self.transitions, self.episodes = path, n, data.n_episodes

    def buffer(self, device: torch.device) -> ReplayBuffer:
        """The replay buffer holding the dataset (the file's arrays are dropped)."""
        obs_dtype = torch.uint8 if self.state["obs"].dtype == torch.uint8 else torch.float32
        buffer = ReplayBuffer(self.transitions, 1, tuple(self.state["obs_shape"]), obs_dtype, device=device)
        buffer.load_state_dict(self.state)
        self.state = None
        return buffer

    def write(self, buffer: ReplayBuffer) -> dict:
        """A checkpoint's buffer index: the sampling counters (1, N)."""
        return {"transitions": self.transitions, "n_wm": buffer.n_wm.clone(), "n_im": buffer.n_im.clone()}

    def commit(self, index: dict) -> None:
        """Nothing to do: no files beside the checkpoint."""

    def restore(self, buffer: ReplayBuffer, index: dict) -> None:
        """Set the sampling counters of a checkpoint's index."""
        if "n_wm" not in index or tuple(index["n_wm"].shape) != tuple(buffer.n_wm.shape):
            raise ValueError(f"the checkpoint's replay index does not belong to the {self.transitions:,} "
                             f"transitions of {self.path}")
        buffer.n_wm.copy_(index["n_wm"])
        buffer.n_im.copy_(index["n_im"])


def check_resumable(old: dict, cfg: RLConfig, path: Path, digests: Optional[Dict[str, str]] = None) -> None:
    """A checkpoint made with other settings cannot be continued: a clear error, not a shape
    mismatch deep inside load_state_dict. A key a nested section (agent, world_model) of the
    checkpoint's config lacks was run with its default, a key it lacks (from an older version)
    with its `missing_as` value. `digests` ({config key: sha256} of the input files, the
    dataset's): where the checkpoint recorded them too, the files are compared by contents
    rather than by the paths' spelling."""
    old = {**missing_values(RLConfig), **json.loads(json.dumps(old))}  # tuples as lists
    new = json.loads(json.dumps(to_dict(cfg)))
    for k, value in old.items():
        if isinstance(value, dict) and dataclasses.is_dataclass(getattr(cfg, k, None)):
            old[k] = {**section_defaults(getattr(cfg, k)), **value}
    old_digests, digests = old.get("data_sha256") or {}, digests or {}
    for k, sha in digests.items():
        if k in old_digests and old_digests[k] != sha:
            raise ValueError(f"{path} is a checkpoint of a run on another {k} file (sha256 {old_digests[k][:12]}..., "
                             f"{new[k]} has {sha[:12]}...); use another --out")
    by_contents = {k for k in digests if k in old_digests}
    changed = [k for k in result_keys(RLConfig) if k in old and k not in by_contents and old[k] != new[k]]
    if changed:
        diff = ", ".join(f"{k}: {old[k]!r} -> {new[k]!r}" for k in changed)
        raise ValueError(f"{path} is a checkpoint of a different setup ({diff}); use another --out")


# ---------------------------------------------------------------------------------------------
@torch.no_grad()
def evaluate(wm: WorldModel, ac: ActorCritic, cfg: RLConfig, episodes: int, round_: int,
             device: torch.device) -> List[float]:
    """Greedy returns of `episodes` full episodes run side by side (one batched acting state);
    its own environments and seeds, and a forked RNG (training's random streams stay untouched)."""
    envs = make_envs(cfg.env, episodes, **env_kwargs(cfg))   # Atari: stepped together in C++ threads
    agent = Agent(wm, ac, device, greedy=True)
    wm.eval(); ac.eval()
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(derive_seed(cfg.seed, 2, round_))
        result = run_episodes(envs, [derive_seed(cfg.seed, 1, round_, k) for k in range(episodes)],
                              lambda obs: agent.act(obs).tolist(), start=agent.start, keep=agent.keep)
    envs.close()
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


def write_open_loop(path: Path, learner: Learner, buffer: ReplayBuffer, seed: int) -> None:
    """The open-loop strip (`Learner.open_loop_image`: real frames over the world model's
    prediction) of a fixed window as a PNG: the middle steps of the buffer's first stream (a
    dataset's middle window). Its latents are drawn from derive_seed(seed, 3) on a forked RNG:
    training's random streams stay as they were, and the same weights draw the same strip."""
    from PIL import Image

    cfg, device = learner.cfg, learner.device
    steps = min(buffer.size, cfg.imagine_context + 2 * cfg.imagine_horizon)
    start = buffer.steps - buffer.size + (buffer.size - steps) // 2
    window = buffer.transitions(start, start + steps)             # obs (N, T, H, W, 3), action (N, T)
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(derive_seed(seed, 3))
        image = learner.open_loop_image(window["obs"][0], window["action"][0].long())   # (3, 2H, T*W)
    pixels = (image.permute(1, 2, 0).clamp(0, 1) * 255).round().to(torch.uint8).cpu().numpy()  # (2H, T*W, 3)
    write_atomic(path, lambda f: Image.fromarray(pixels).save(f, format="png"))


def plot_losses(rows: List[dict], path: Path, title: str) -> None:
    """The world model's losses (WM_LOSSES) over updates, one panel each: every logged value and
    a running mean over a twentieth of them."""
    from matplotlib.figure import Figure

    tags = [t for t in WM_LOSSES if t in rows[0]]
    fig = Figure(figsize=(12, 5.5))
    axes = fig.subplots(2, 4).ravel()
    updates = np.array([r["updates"] for r in rows])
    k = max(1, len(rows) // 20)
    for ax, tag in zip(axes, tags):
        values = np.array([r[tag] for r in rows], dtype=float)
        ax.plot(updates, values, alpha=0.35 if k > 1 else 1.0, lw=0.8)
        if k > 1:
            mean = np.convolve(values, np.ones(k) / k, mode="valid")
            ax.plot(updates[k - 1:], mean, lw=1.5)
        ax.set(title=tag.split("/", 1)[1], xlabel="updates")
        ax.grid(alpha=0.3)
    for ax in axes[len(tags):]:
        ax.set_visible(False)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=100)


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
    """Train (or resume) one agent, or with `train=world_model` its world model alone on a
    dataset; returns the results object also written to results.json."""
    check_config(cfg)
    out = output_folder(cfg.out, task, cfg.env.replace("/", "-"))
    results_path = out / "results.json"
    digests = file_digests(cfg, ("dataset",))  # the dataset is compared by contents, not by its path
    previous = load_results(results_path, cfg, digests=digests)
    if previous.get("finished") and previous.get("steps", 0) >= cfg.steps:
        print(f"rlts {task}: {out} already holds a finished run of {previous['steps']:,} steps "
              f"({outcome(previous)}); nothing to do (a larger --steps continues it)")
        return previous
    device = select_device(cfg.device)
    spec = env_spec(make_env(cfg.env, **env_kwargs(cfg)))  # before writing: a clear error for a bad env
    recorded = RecordedReplay(cfg, spec) if cfg.dataset else None  # ... or a bad dataset
    out.mkdir(parents=True, exist_ok=True)
    save_yaml(cfg, out / "config.yaml")
    seed_everything(cfg.seed)
    run_config = {**to_dict(cfg), "data_sha256": digests}
    agent = cfg.train == "agent"  # else the world model alone

    learner = Learner(spec.obs_shape, spec.n_actions, learner_config(cfg), device)
    ckpt = Checkpointer(out / "checkpoints")
    if recorded is None:  # environments fill a ring buffer, whose steps are checkpointed in checkpoints/replay/
        collector = Collector(cfg, learner, device)
        buffer = ReplayBuffer(cfg.buffer_size, cfg.num_envs, spec.obs_shape,
                              torch.uint8 if spec.is_image else torch.float32, device=device)
        replay = ReplayFiles(ckpt.dir / "replay")
    else:  # the dataset is the buffer; checkpoints hold its sampling counters
        collector, buffer, replay = None, recorded.buffer(device), recorded
    n_params = count_parameters(learner.wm)
    about = [f"world model {cfg.world_model.backbone}: {n_params:,} parameters",
             f"actor-critic {count_parameters(learner.ac):,}" if agent else "trained alone", f"device {device}"]
    if recorded is not None:
        about.append(f"dataset {cfg.dataset} ({recorded.transitions:,} transitions, {recorded.episodes:,} "
                     f"episode{'s' * (recorded.episodes != 1)})")
    print(f"rlts {task}: {cfg.env}, " + "; ".join(about) + f"; out {out}")

    step, curve, losses, wall = 0, [], [], 0.0
    state = ckpt.load_latest(map_location=device, restore_rng=False)
    if state is None:
        if collector is not None:
            collector.start()
    else:
        check_resumable(state.get("config", {}), cfg, ckpt.last_path, digests)
        learner.load_state_dict(state["learner"])
        replay.restore(buffer, state["buffer"])
        if collector is not None:
            collector.load_state_dict(state["collector"])
        step, curve, wall = int(state["step"]), list(state["curve"]), float(state["wall"])
        losses = list(state.get("losses", []))
        set_rng_state(state["rng"])
        print(f"rlts {task}: resumed at step {step:,} from {ckpt.last_path}")

    normalise = human_normaliser(cfg.env) if agent else None

    def hns(prefix: str, score: float) -> Dict[str, float]:
        """The human-normalised score of an Atari100k game as a scalar; none for other envs."""
        return {f"{prefix}/human_normalised_score": normalise(score)} if normalise else {}

    def save(final: Optional[dict] = None) -> None:
        index = replay.write(buffer)  # the new steps' chunk, on disk before last.pt lists it
        ckpt.save(step, {"config": run_config, "learner": learner.state_dict(), "buffer": index,
                         "collector": collector.state_dict() if collector is not None else None,
                         "curve": curve, "losses": losses, "wall": wall, "final": final})
        replay.commit(index)  # last.pt is saved: the chunks it does not list can go

    def run_eval(episodes: int) -> dict:
        returns = evaluate(learner.wm, learner.ac, cfg, episodes, len(curve), device)
        point = {"step": step, "mean": float(np.mean(returns)), "std": float(np.std(returns)),
                 "episodes": episodes}
        curve.append(point)
        spread = {"eval/return_std": point["std"], "eval/return_min": min(returns), "eval/return_max": max(returns)}
        log.scalars(step, {"eval/return": point["mean"], **spread, **hns("eval", point["mean"])})
        return {**point, "returns": returns}

    n = cfg.num_envs if collector is not None else 1  # steps per pass of the loop
    budget = cfg.minutes * 60.0
    t0, steps0, updates0 = time.time(), step, learner.updates
    out_of_time = budget > 0 and wall >= budget
    desc = f"{task} {cfg.env}" + ("" if agent else " world model")
    with RunLogger(out, total=cfg.steps, initial=step, desc=desc, progress=cfg.progress) as log:
        metrics: Dict[str, torch.Tensor] = {}
        while step < cfg.steps and not out_of_time:
            if collector is not None:  # act, store; train once past random_steps
                actions = collector.act(step < cfg.random_steps)
                for ret, length in collector.step(actions, buffer):
                    log.scalars(step, {"train/episode_return": ret, "train/episode_length": length,
                                       **hns("train", ret)})
                step += n
                due = int((step - cfg.random_steps + n) * cfg.updates_per_step) if step >= cfg.random_steps else 0
            else:  # a recorded dataset: one update per step
                step += 1
                due = step
            log.advance(n)
            while learner.updates < due:
                metrics = learner.update(buffer, actor_critic=agent)
            if step % cfg.log_every < n and metrics:
                losses.append({"step": step, "updates": learner.updates, **{k: float(v) for k, v in metrics.items()}})
                elapsed = max(time.time() - t0, 1e-9)
                log.scalars(step, {**metrics, "perf/env_steps_per_s": (step - steps0) / elapsed,
                                   "perf/updates_per_s": (learner.updates - updates0) / elapsed},
                            show=[k for k in ("wm/loss", "ac/return") if k in metrics])
            if cfg.image_every and step % cfg.image_every < n:
                log_images(log, step, learner)
                if spec.is_image:
                    write_open_loop(out / "open_loop" / f"step{step:09d}.png", learner, buffer, cfg.seed)
            if agent and cfg.eval_every and step % cfg.eval_every < n and step < cfg.steps:
                run_eval(cfg.eval_episodes)
            out_of_time = budget > 0 and wall + time.time() - t0 >= budget
            if step % cfg.checkpoint_every < n or step >= cfg.steps or out_of_time:
                wall += time.time() - t0
                t0, steps0, updates0 = time.time(), step, learner.updates
                save()
        final = None
        if agent:
            stored = state.get("final") if state is not None and int(state["step"]) == step else None
            if stored is not None and stored["episodes"] == cfg.final_eval_episodes:
                final = stored  # stopped after its final evaluation: not evaluated twice
            else:
                if stored is not None:
                    curve.pop()  # that final point had another final_eval_episodes: evaluated again
                final = run_eval(cfg.final_eval_episodes)
                save(final)  # the final point is kept: a later, longer run (--steps) continues from here
    wall += time.time() - t0
    title = f"{cfg.env}, world model {cfg.world_model.backbone}"
    if losses:
        write_table(losses, out / "losses.csv")
        plot_losses(losses, out / "losses.png", title)
    if spec.is_image and buffer.size:
        write_open_loop(out / "open_loop.png", learner, buffer, cfg.seed)
    results = {"config": run_config, "env": cfg.env, "backbone": cfg.world_model.backbone, "train": cfg.train}
    if agent:
        write_table(curve, out / "eval.csv", out / "eval.md")
        plot_curve(curve, out / "eval.png", title)
        results.update(eval_return=final["mean"], eval_std=final["std"], eval_episodes=final["episodes"],
                       eval_returns=final["returns"], curve=curve)
    else:
        wm_losses = lambda row: {k: row[k] for k in WM_LOSSES if k in row}  # noqa: E731
        results.update(dataset=cfg.dataset, dataset_transitions=recorded.transitions,
                       first_losses=wm_losses(losses[0]) if losses else {},
                       last_losses=wm_losses(losses[-1]) if losses else {})
    results.update(steps=step, updates=learner.updates, world_model_parameters=n_params,
                   actor_critic_parameters=count_parameters(learner.ac), train_wall_s=wall,
                   s_per_update=wall / learner.updates if learner.updates else None, device=str(device))
    if agent:
        results["protocol"] = ("greedy policy, full episodes, no life-loss signal"
                               + (f", {cfg.max_episode_frames}-frame cap, frame skip 4, sticky actions off, "
                                  f"noop_max {cfg.noop_max}" if spec.is_image else ""))
    results["finished"] = True
    write_json_atomic(results, results_path)
    stopped = f" (the {cfg.minutes:g}-minute budget is spent)" if step < cfg.steps else ""
    print(f"rlts {task}: {cfg.env} {outcome(results)} after {step:,} steps, {learner.updates:,} updates "
          f"({wall / 60:.1f} min){stopped}")
    return results


def outcome(results: dict) -> str:
    """What a finished run reached: its evaluation return, or a world-model run's losses."""
    if "eval_return" in results:
        return (f"eval_return {results['eval_return']:.2f} ± {results['eval_std']:.2f} over "
                f"{results['eval_episodes']} episodes")
    first, last = results.get("first_losses") or {}, results.get("last_losses") or {}
    if not last:
        return "world model: no loss logged"
    return (f"world-model loss {first['wm/loss']:.4g} -> {last['wm/loss']:.4g} (reconstruction "
            f"{first['wm/reconstruction']:.4g} -> {last['wm/reconstruction']:.4g}), "
            f"{results['s_per_update']:.3g} s per update")


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
