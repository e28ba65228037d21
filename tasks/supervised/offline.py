"""Offline RL runner: return-conditioned policies (DecisionAaren vs the Decision Transformer)
trained on a recorded dataset, then evaluated in the environment.

    rlts record --env CartPole-v1 --policy random --episodes 200 --out cartpole_random.npz
    rlts offline --dataset cartpole_random.npz --out runs/offline-cartpole
    rlts offline --dataset pong.npz --models aaren,mamba,transformer --target_return 20 --config debug

Data: one `rlts.data.trajectories` file (`rlts record`). Its metadata names the environment
(`env`, made with the recorded `env_kwargs` by `rlts.tasks.rl.envs.make_env`; `--env` overrides) and
the policy that produced it. Discrete actions (cross-entropy, argmax when acting) and
continuous ones in [-1, 1] (make_env rescales every Box action space to it; mean squared
error, the predicted action when acting), e.g. the MuJoCo datasets of `rlts behaviour` +
`rlts record`.

Training examples (`DecisionModel` docstring: pad on the right, mask True on a prefix,
timesteps = the step's index in its episode, rtg = `returns_to_go` of the whole episode, so a
cut sequence still carries the rewards after the cut in its returns-to-go):
- recurrent backbones (aaren, gru, mamba, mamba2) act from the episode start with a state that
  has seen every earlier step, so they train on sequences that START at episode starts: one
  example per episode, its first `max_episode_len` steps (default: the whole episode). Steps
  after the cut are not trained on (there is no state to start a later chunk from without
  replaying the episode's beginning); raise `max_episode_len` to cover them. One example per
  episode makes few, long examples, so these backbones take `recurrent_batch_size` episodes
  per batch for `recurrent_epochs` epochs (defaults 2 and 100) instead of train.batch_size /
  train.epochs. With `recurrent_window` W they train on windows of W steps instead, as the
  transformer below does (each window from a fresh state, timesteps still the index in the
  episode), and still act from the episode start.
- the transformer acts with a sliding window of `context` steps, and trains on windows of
  `context` steps as the Decision Transformer does: the DT samples a window start uniformly
  over the dataset's steps; here every `window_stride`-th step of every episode starts one
  window (a deterministic enumeration the Trainer shuffles: exact resume). Windows that run past
  their episode's end are shorter (right-padded).
The episodes are split once (seeded) into training and validation episodes (`val_fraction`);
the Trainer stops early on the validation loss and restores the best weights.

Evaluation, per model: `eval_episodes` episodes, episode k reset with the seed
`rlts.runtime.derive_seed(seed, 4, k)` (the same episodes for every model), acting one step at a
time (`start` / `act` / `observe_action`, batch 1) with the argmax action; the return-to-go
starts at `target_return` (default: the dataset's best episode return) and each reward is
subtracted from it. Reported: mean / std / per-episode returns and lengths, the normalised
score 100 * (return - random) / (best - random), with best = the dataset's best episode return
and random = the dataset's mean episode return if its policy was uniform random (metadata
policy "random" / "uniform random"), else the mean return of `eval_episodes` uniform-random
episodes on the same seeds (actions seeded with derive_seed(seed, 5)); the training time, the
acting time per env step (ms, act + observe_action, batch 1) and the acting memory: bytes of
the recurrent state (every tensor of every layer: the transformer's KV cache, the others' fixed
states) after the last step of the longest evaluation episode.

Outputs in `out`: results.json (config, dataset summary, reference returns, per model metrics;
rewritten atomically after each model, a rerun skips finished models and resumes an interrupted
one from its Trainer checkpoint), results.md / results.csv, one folder per model (Trainer
checkpoints, TensorBoard) and returns.png: each model's evaluation return (mean +- std, with
the episodes as dots) next to the dataset's episode returns.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Dict, List, Optional, Sequence

import numpy as np
import torch
from torch.utils.data import Dataset

from rlts.config import check_ranges, param, to_dict
from rlts.data.trajectories import Trajectories, load_trajectories, returns_to_go
from rlts.heads.decision import DecisionModel, decision_loss
from rlts.nn import count_parameters, state_nbytes
from rlts.runtime import derive_seed, seed_everything, select_device
from rlts.trainer import Trainer, TrainConfig, check_train_config
from rlts.tasks.runner import TRAIN_ALIASES, Command, json_float, table_order
from rlts.tasks.runner import resolve_models as _resolve_models
from rlts.tasks.supervised.grid import GridRun

WINDOWED = ("transformer",)
"""Backbones that train on windows of `context` steps; all others train from episode starts."""
RANDOM_POLICIES = ("random", "uniform random")
"""Metadata `policy` values that mark a uniform-random dataset (its mean return is the random reference)."""
# Config keys whose change makes earlier results in the same `out` incomparable.


@dataclass
class OfflineConfig:
    """Settings of `rlts offline`."""

    dataset: str = param("", result=True)
    """The trajectories file (.npz, `rlts record`)."""
    env: Optional[str] = param(None, result=True)
    """Environment to evaluate in; default the dataset's metadata `env` (made with its recorded
    env_kwargs)."""
    models: List[str] = field(default_factory=lambda: ["backbone", "transformer"])
    """Models to train: any rlts.nn backbone name (aaren, mamba, mamba2, transformer, gru) or
    `backbone` (= the `backbone` key). transformer is the Decision Transformer."""
    backbone: str = "aaren"
    """The backbone the model name `backbone` stands for (aaren: DecisionAaren)."""
    d_model: int = param(64, result=True, within="[1, inf)")
    """Width of the sequence model."""
    n_layers: int = param(3, result=True, within="[1, inf)")
    """Blocks in the sequence model."""
    aaren_decay: bool = param(False, result=True)
    """Aaren models: a learned per-head clock in the scores, so that older tokens weigh less
    (rlts.nn.aaren.Aaren, option decay); false: the paper's content-only attention."""
    context: int = param(20, result=True, within="[1, inf)")
    """The transformer's window in env steps, for training windows and acting (KV cache of
    3 * context - 2 tokens). Unused by the recurrent backbones."""
    dropout: float = param(0.1, result=True, within="[0, 1)")
    """Dropout on the token embeddings."""
    return_scale: Optional[float] = param(None, result=True, within="(0, inf)")
    """Returns-to-go are divided by it before embedding; default the dataset's largest
    |episode return| (1 if that is 0)."""
    max_timestep: Optional[int] = param(None, result=True, within="[1, inf)")
    """Size of the timestep embedding (later steps share the last entry); default the
    dataset's longest episode."""
    target_return: Optional[float] = param(None, result=True, within="(-inf, inf)")
    """Return-to-go the policy is conditioned on at the first step; default the dataset's best
    episode return."""
    eval_episodes: int = param(10, result=True, within="[1, inf)")
    """Evaluation episodes per model (seeds derive_seed(seed, 4, k))."""
    max_episode_len: Optional[int] = param(None, result=True, within="[1, inf)")
    """Recurrent backbones train on the first max_episode_len steps of every episode; default
    whole episodes."""
    window_stride: int = param(1, result=True, within="[1, inf)")
    """The transformer's training windows start at every window_stride-th step of each episode."""
    recurrent_batch_size: Optional[int] = param(2, result=True, within="[1, inf)")
    """Batch size (episodes) of the recurrent backbones, which train on one whole episode per
    example: far fewer and longer examples than the transformer's windows, so small batches to
    take enough gradient steps (docs/results.md, offline RL, compares batch 2 and 8). None:
    train.batch_size."""
    recurrent_epochs: Optional[int] = param(100, result=True, within="[1, inf)")
    """Epochs of the recurrent backbones (early stopping still applies). None: train.epochs."""
    recurrent_window: Optional[int] = param(None, result=True, within="[1, inf)")
    """Recurrent backbones train on windows of this many steps, as the transformer does (every
    window_stride-th start, train.batch_size, train.epochs), each window seen from a fresh
    state; they still act from the episode start with their whole state. None: whole episodes.
    Which is better depends on the dataset (docs/results.md, offline RL: the training-settings
    table)."""
    val_fraction: float = param(0.1, result=True, within="[0, 1)")
    """Fraction of the episodes (seeded choice, at least one when there are two or more) held
    out for early stopping; 0: no validation, no early stopping."""
    train: TrainConfig = param(default_factory=TrainConfig, result=True)
    """Trainer settings (train.epochs, train.lr, train.patience, ...); train.seed and
    train.device are replaced by the top-level seed and device."""
    out: Optional[str] = None
    """Output folder; default runs/offline-<dataset stem>-<timestamp>. Reuse it to resume."""
    seed: int = param(0, result=True)
    """Seeds the validation split, model initialisation, training and evaluation episodes."""
    seeds: int = param(1, result=True, within="[1, inf)", missing_as=1)
    """Runs per model, with seeds seed, seed + 1, ..., seed + seeds - 1 for the model's
    initialisation and training, all on the validation split and evaluation episodes of `seed`
    (the first run is exactly what `--seed` alone gives; the others differ only in the model's
    seed); the table reports the mean return and normalised score with their sample standard
    deviations over runs, results.json every run."""
    device: str = "auto"
    """auto, cpu, cuda or cuda:N."""
    plots: bool = True
    """Write returns.png."""


def resolve_models(cfg: OfflineConfig) -> List[str]:
    """The model names to run; ValueError on unknown ones."""
    return _resolve_models(cfg.models, cfg.backbone, ())


def check_config(cfg: OfflineConfig) -> None:
    """ValueErrors for settings that cannot work, before anything is read or written."""
    check_ranges(cfg)
    check_train_config(cfg.train, "train")
    if not cfg.dataset:
        raise ValueError("no dataset given; pass --dataset FILE.npz (record one with `rlts record`)")
    resolve_models(cfg)
    select_device(cfg.device)


# ----------------------------------------------------------------------------- data


class DecisionSequences(Dataset):
    """Training examples of a DecisionModel: spans (start, length) of the flat dataset arrays,
    each inside one episode, with per-step timesteps (index in the episode) and returns-to-go
    (of the whole episode). Items are dicts of tensors; `collate_decision` pads them."""

    def __init__(self, data: Trajectories, rtg: np.ndarray, spans: Sequence[tuple]):
        self.data, self.rtg = data, rtg
        self.step_in_episode = np.arange(len(data)) - np.repeat(data.episode_starts, data.episode_lengths())
        self.spans = [(int(a), int(n)) for a, n in spans]

    def __len__(self) -> int:
        return len(self.spans)

    def __getitem__(self, i: int) -> Dict[str, torch.Tensor]:
        a, n = self.spans[i]
        s = slice(a, a + n)
        return {"observations": torch.as_tensor(self.data.observations[s]),
                "actions": torch.as_tensor(self.data.actions[s]),
                "returns_to_go": torch.as_tensor(self.rtg[s], dtype=torch.float32),
                "timesteps": torch.as_tensor(self.step_in_episode[s], dtype=torch.long)}


def collate_decision(items: List[Dict[str, torch.Tensor]]) -> Dict[str, torch.Tensor]:
    """Right-pad a list of sequences to the longest; mask (B, T) is True on the real steps."""
    T = max(len(it["timesteps"]) for it in items)
    out: Dict[str, torch.Tensor] = {}
    for key in items[0]:
        first = items[0][key]
        buf = torch.zeros(len(items), T, *first.shape[1:], dtype=first.dtype)
        for b, it in enumerate(items):
            buf[b, :len(it[key])] = it[key]
        out[key] = buf
    out["mask"] = torch.arange(T)[None, :] < torch.tensor([len(it["timesteps"]) for it in items])[:, None]
    return out


def split_episodes(n_episodes: int, val_fraction: float, seed: int) -> tuple:
    """(train episode indices, validation episode indices), both sorted; a seeded choice."""
    n_val = 0
    if val_fraction > 0 and n_episodes >= 2:
        n_val = min(n_episodes - 1, max(1, int(round(val_fraction * n_episodes))))
    perm = np.random.default_rng(derive_seed(seed, 6)).permutation(n_episodes)
    return np.sort(perm[n_val:]), np.sort(perm[:n_val])


def episode_spans(data: Trajectories, episodes: np.ndarray, backbone: str, cfg: OfflineConfig) -> List[tuple]:
    """(start, length) of the training sequences of `episodes` for `backbone` (module docstring)."""
    starts, lengths = data.episode_starts[episodes], data.episode_lengths()[episodes]
    window = train_window(cfg, backbone)
    if window is None:
        cap = cfg.max_episode_len or int(lengths.max())
        return [(a, min(n, cap)) for a, n in zip(starts, lengths)]
    return [(a + o, min(window, n - o)) for a, n in zip(starts, lengths) for o in range(0, n, cfg.window_stride)]


def train_window(cfg: OfflineConfig, backbone: str) -> Optional[int]:
    """Steps per training window of `backbone`; None: it trains on whole episodes."""
    return cfg.context if backbone in WINDOWED else cfg.recurrent_window


def dataset_summary(data: Trajectories, path: str) -> dict:
    rets, lens = data.episode_returns(), data.episode_lengths()
    meta = data.metadata
    return {"file": str(path), "env": meta.get("env"), "policy": meta.get("policy"),
            "episodes": int(data.n_episodes), "transitions": int(len(data)),
            "obs_shape": list(data.obs_shape), "discrete": bool(data.discrete),
            "return_mean": float(rets.mean()), "return_std": float(rets.std()),
            "return_min": float(rets.min()), "return_max": float(rets.max()),
            "length_mean": float(lens.mean()), "length_max": int(lens.max()),
            "episode_returns": [float(r) for r in rets]}


# ----------------------------------------------------------------------------- environment


def make_eval_env(cfg: OfflineConfig, data: Trajectories):
    """(env name, env kwargs, an env) for evaluation; ValueErrors for a missing env id, or a
    dataset that does not fit the env's spaces (observation shape, discrete vs continuous
    actions, number of actions or action width)."""
    from rlts.tasks.rl.envs import make_env

    meta = data.metadata
    name = cfg.env or meta.get("env")
    if not name:
        raise ValueError(f"{cfg.dataset}: its metadata names no environment; pass --env ID")
    kwargs = dict(meta.get("env_kwargs") or {}) if name == meta.get("env") else {}
    try:
        env = make_env(name, **kwargs)
    except ValueError as e:
        raise ValueError(f"cannot evaluate in {name!r}: {e}") from None
    obs_shape, space = tuple(env.observation_space.shape), env.action_space
    problem = None
    if obs_shape != data.obs_shape:
        problem = f"observations {data.obs_shape} do not match {name!r}'s {obs_shape}"
    elif data.discrete != hasattr(space, "n"):
        problem = (f"the dataset's actions are {'discrete' if data.discrete else 'continuous'}, but {name!r} "
                   f"has action space {space}")
    elif data.discrete and (int(data.actions.max()) >= space.n or int(data.actions.min()) < 0):
        problem = (f"actions range {int(data.actions.min())}..{int(data.actions.max())}, but {name!r} has "
                   f"{space.n} actions")
    elif not data.discrete and data.actions.shape[1] != space.shape[0]:
        problem = f"actions have width {data.actions.shape[1]}, but {name!r} takes {space.shape[0]}"
    elif not data.discrete and np.abs(data.actions).max() > 1.0 + 1e-6:
        problem = ("continuous actions must lie in [-1, 1] (make_env rescales the env's actions to that box), "
                   f"got a largest |action| of {np.abs(data.actions).max():g}")
    if problem:
        env.close()
        raise ValueError(f"{cfg.dataset}: {problem}")
    return name, kwargs, env


def action_size(env) -> dict:
    """DecisionModel keyword for the env's actions: {"n_actions": n} or {"act_dim": d}."""
    space = env.action_space
    return {"n_actions": int(space.n)} if hasattr(space, "n") else {"act_dim": int(space.shape[0])}


def random_returns(env, episodes: int, seed: int) -> List[float]:
    """Returns of a uniform random policy on the evaluation episodes' seeds."""
    from rlts.tasks.rl.episodes import run_episodes

    env.action_space.seed(derive_seed(seed, 5))
    seeds = [derive_seed(seed, 4, k) for k in range(episodes)]
    return run_episodes([env], seeds, lambda obs: [env.action_space.sample()]).returns


class DecisionPolicy:
    """A DecisionModel acting for `run_episodes`, one env step at a time (batch 1): greedily
    (argmax; continuous: the predicted action), the return-to-go starting at `target_return`
    and decreased by every reward. Times its act + observe_action calls and keeps the bytes of
    its state after the longest episode."""

    def __init__(self, model: DecisionModel, target_return: float, device: torch.device):
        self.model, self.target_return, self.device = model, float(target_return), device
        self.sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
        self.act_time, self.longest, self.state_bytes = 0.0, -1, 0

    def start(self, n: int) -> None:
        self.state = self.model.start(n, self.device)
        self.rtg, self.t = self.target_return, 0

    def __call__(self, obs: np.ndarray) -> list:
        """obs (1, *obs_shape) -> [the env's action]."""
        self.sync()
        t0 = time.perf_counter()
        ts = torch.tensor([self.t], dtype=torch.long, device=self.device)
        pred, self.state = self.model.act(torch.as_tensor(obs, device=self.device),
                                          torch.tensor([self.rtg], dtype=torch.float32, device=self.device), ts,
                                          self.state)
        action = pred.argmax(-1) if self.model.discrete else pred   # (1,) or (1, act_dim) in [-1, 1]
        self.state = self.model.observe_action(action, ts, self.state)
        self.sync()
        self.act_time += time.perf_counter() - t0
        return [int(action[0]) if self.model.discrete else action[0].float().cpu().numpy()]

    def observe(self, step) -> None:
        """The reward of a step (a run_episodes Step) lowers the return-to-go."""
        self.rtg, self.t = self.rtg - float(step.reward), self.t + 1
        if (step.terminated or step.truncated) and self.t > self.longest:
            self.longest, self.state_bytes = self.t, state_nbytes(self.state)


@torch.no_grad()
def evaluate_policy(model: DecisionModel, env, episodes: int, seed: int, target_return: float,
                    device: torch.device) -> dict:
    """Act greedily (argmax; continuous: the predicted action) for `episodes` episodes, batch 1, the return-to-go starting at
    `target_return` and decreased by every reward. Returns, lengths, ms per step, state bytes."""
    from rlts.tasks.rl.episodes import run_episodes

    model.eval()
    policy = DecisionPolicy(model, target_return, device)
    result = run_episodes([env], [derive_seed(seed, 4, k) for k in range(episodes)], policy, start=policy.start,
                          on_step=policy.observe)
    return {"returns": result.returns, "lengths": result.lengths,
            "act_ms_per_step": 1000.0 * policy.act_time / max(sum(result.lengths), 1),
            "state_bytes": policy.state_bytes, "state_bytes_after_steps": policy.longest}


# ----------------------------------------------------------------------------- the run


def build_model(name: str, cfg: OfflineConfig, data: Trajectories, actions: dict, return_scale: float,
                max_timestep: int) -> DecisionModel:
    """actions: `action_size(env)`."""
    options = {"decay": cfg.aaren_decay} if name == "aaren" else {}
    return DecisionModel(data.obs_shape, **actions, backbone=name, d_model=cfg.d_model,
                         n_layers=cfg.n_layers, max_timestep=max_timestep, context=cfg.context,
                         return_scale=return_scale, dropout=cfg.dropout, **options)


def train_config(cfg: OfflineConfig, backbone: str, seed: Optional[int] = None) -> TrainConfig:
    """cfg.train with the run's seed (default cfg.seed) and device; backbones that train on
    whole episodes get their own batch size and epochs (recurrent_batch_size, recurrent_epochs)
    when set."""
    kw = {**to_dict(cfg.train), "seed": cfg.seed if seed is None else seed, "device": cfg.device}
    if train_window(cfg, backbone) is None:
        kw["batch_size"] = cfg.recurrent_batch_size or kw["batch_size"]
        kw["epochs"] = cfg.recurrent_epochs or kw["epochs"]
    return TrainConfig(**kw)


def normalised(ret: float, random: float, best: float) -> Optional[float]:
    return 100.0 * (ret - random) / (best - random) if best != random else None


METRICS = ("return_mean", "normalised_score", "act_ms_per_step")
"""Metrics of a run; with `seeds` > 1 each gets its mean and sample std over the runs."""


def _table_rows(results: dict, order: List[str]) -> List[dict]:
    entries = [(m, results[m]) for m in order if m in results]
    several = any("runs" in r for _, r in entries)
    keys = (("return_mean", "return_mean_std", "normalised_score", "normalised_score_std", "seeds") if several
            else ("return_mean", "return_std", "normalised_score"))
    keys += ("params", "train_time_s", "epochs", "act_ms_per_step", "state_bytes")
    rows = []
    for m, r in entries:
        r = {**r, "seeds": len(r.get("runs", [r]))}
        rows.append({"model": m, **{k: "-" if r.get(k) is None else r[k] for k in keys}})
    return rows


def run_offline(cfg: OfflineConfig, log=print) -> dict:
    """Train every model not yet in `out`/results.json on the dataset and evaluate it in the env."""
    check_config(cfg)
    models = resolve_models(cfg)
    try:
        data = load_trajectories(cfg.dataset)
    except FileNotFoundError as e:
        raise ValueError(str(e)) from None
    name, env_kwargs, env = make_eval_env(cfg, data)
    try:
        return _run(cfg, models, data, name, env_kwargs, env, log)
    finally:
        env.close()


def _run(cfg: OfflineConfig, models: List[str], data: Trajectories, env_name: str, env_kwargs: dict, env,
         log) -> dict:
    rets = data.episode_returns()
    best = float(rets.max())
    return_scale = cfg.return_scale or (float(np.abs(rets).max()) or 1.0)
    target = float(cfg.target_return) if cfg.target_return is not None else best
    max_timestep = cfg.max_timestep or int(data.episode_lengths().max())
    actions = action_size(env)
    train_eps, val_eps = split_episodes(data.n_episodes, cfg.val_fraction, cfg.seed)

    header = {
        "dataset": {**dataset_summary(data, cfg.dataset), "train_episodes": int(len(train_eps)),
                    "val_episodes": int(len(val_eps))},
        "env": {"id": env_name, "kwargs": env_kwargs, **actions},
        "settings": {"return_scale": return_scale, "target_return": target, "max_timestep": max_timestep,
                     "eval_seeds": [derive_seed(cfg.seed, 4, k) for k in range(cfg.eval_episodes)]},
    }
    run = GridRun(cfg, "offline", Path(cfg.dataset).stem, file_keys=("dataset",), header=header, log=log)
    out = run.out
    reference = run.previous.get("reference")
    if reference is None:  # computed once per folder
        policy = str(data.metadata.get("policy", "")).strip().lower()
        if policy in RANDOM_POLICIES:
            reference = {"random": float(rets.mean()), "random_source": "dataset mean return (random policy)"}
        else:
            rr = random_returns(env, cfg.eval_episodes, cfg.seed)
            reference = {"random": float(np.mean(rr)), "random_returns": rr,
                         "random_source": f"{cfg.eval_episodes} uniform-random episodes on the evaluation seeds"}
        reference["best"] = best
    run.state["reference"] = reference
    recorded = data.metadata.get("env")
    if recorded and env_name != recorded:
        log(f"[note] evaluating in {env_name}, but {Path(cfg.dataset).name} was recorded in {recorded}: the "
            f"normalised score still compares with that dataset's returns")
    run.save()

    device = select_device(cfg.device)
    rtg = returns_to_go(data.rewards, 1.0, data.episode_starts)

    def train_and_evaluate(name: str, seed: int, run_dir: Path) -> dict:
        """One model trained (or resumed) with one seed and evaluated on the evaluation episodes."""
        train_ds = DecisionSequences(data, rtg, episode_spans(data, train_eps, name, cfg))
        val_ds = DecisionSequences(data, rtg, episode_spans(data, val_eps, name, cfg)) if len(val_eps) else None
        seed_everything(seed)
        model = build_model(name, cfg, data, actions, return_scale, max_timestep)
        n_params = count_parameters(model)
        log(f"[train] {name} ({n_params} parameters, {len(train_ds)} training sequences{run.seed_note(seed)})")
        trainer = Trainer(model, decision_loss, train_config(cfg, name, seed), run_dir=run_dir,
                          collate_fn=collate_decision, weight_key="n_steps")  # per-step validation loss
        fit = trainer.fit(train_ds, val_ds)
        train_time = fit["train_time_s"]  # summed over interrupted runs
        ev = evaluate_policy(trainer.model, env, cfg.eval_episodes, cfg.seed, target, device)
        mean = float(np.mean(ev["returns"]))
        log(f"[done] {name}: return {mean:.2f} +- {np.std(ev['returns']):.2f} ({train_time:.1f} s training"
            f"{run.seed_note(seed)})")
        return {"return_mean": mean, "return_std": float(np.std(ev["returns"])),
                "normalised_score": json_float(normalised(mean, reference["random"], best)),
                "returns": ev["returns"], "lengths": ev["lengths"],
                "params": n_params, "train_time_s": round(train_time, 3), "epochs": fit["epochs"],
                "early_stopped": fit["early_stopped"], "best_val_loss": json_float(fit["best_val_loss"]),
                "train_sequences": len(train_ds), "act_ms_per_step": round(ev["act_ms_per_step"], 4),
                "state_bytes": ev["state_bytes"], "state_bytes_after_steps": ev["state_bytes_after_steps"]}

    def pool_episodes(entry: dict, runs: List[dict]) -> None:
        """Several seeds: every run's evaluation returns together (returns.png), and the acting
        memory (the same for every run of a model)."""
        entry["returns"] = [x for r in runs for x in r["returns"]]
        entry["state_bytes"] = runs[0]["state_bytes"]
        entry["epochs"] = runs[0]["epochs"]

    for name in models:
        run.job(name, None, name, folder=name, run_one=partial(train_and_evaluate, name), metrics=METRICS,
                extend=pool_episodes)

    md = run.finish(_table_rows(run.results, table_order(models, run.results)))
    if cfg.plots:
        plot_returns(out / "returns.png", run.state, models)
    log(f"target return {target:g}; random reference {reference['random']:g}; dataset best {best:g}")
    log(md)
    return run.state


def plot_returns(path: Path, state: dict, models: List[str]) -> None:
    """Bars: each model's mean evaluation return +- std (episodes as dots); the dataset's
    episode returns as dots, with the random reference and the target return as lines."""
    from matplotlib.figure import Figure

    rng = np.random.default_rng(0)
    names = [m for m in models if m in state["results"]]
    fig = Figure(figsize=(1.6 * (len(names) + 1) + 2, 3.5))
    ax = fig.subplots()
    ds = np.asarray(state["dataset"]["episode_returns"])
    ax.scatter(rng.uniform(-0.25, 0.25, len(ds)), ds, s=6, color="0.4", alpha=0.6, zorder=3)
    ax.bar([0], [ds.mean()], yerr=[ds.std()], color="0.85", capsize=4)
    for i, m in enumerate(names, start=1):
        r = np.asarray(state["results"][m]["returns"])
        ax.bar([i], [r.mean()], yerr=[r.std()], capsize=4, color=f"C{i - 1}", alpha=0.8)
        ax.scatter(i + rng.uniform(-0.2, 0.2, len(r)), r, s=10, color="k", zorder=3)
    ax.axhline(state["reference"]["random"], ls=":", color="k", lw=1, label="random")
    ax.axhline(state["settings"]["target_return"], ls="--", color="C3", lw=1, label="target return")
    ax.set_xticks(range(len(names) + 1), ["dataset", *names])
    ax.set_ylabel("episode return")
    ax.set_title(f"{Path(state['dataset']['file']).name} on {state['env']['id']}", fontsize=10)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=90)


# ----------------------------------------------------------------------------- CLI

ALIASES = {"--model": "--models", "--data": "--dataset", **TRAIN_ALIASES}
"""Short spellings accepted by `rlts offline` for the config keys."""


COMMANDS = (Command("offline", OfflineConfig, "offline.yaml", run_offline, aliases=ALIASES, lists=("models",),
                    help="train return-conditioned policies (DecisionAaren vs Decision Transformer) on an "
                         "offline dataset",
                    stem=lambda cfg: Path(cfg.dataset).stem),)


def parse_offline_config(argv: List[str]) -> OfflineConfig:
    return COMMANDS[0].parse(argv)
