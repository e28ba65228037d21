"""Event forecasting runner: neural temporal point processes against classical baselines.

    rlts events --data ../shared/data/tpp/hawkes1.jsonl --true_hawkes 0.2 0.8 1.0 --out runs/hawkes
    rlts events --data my_events.jsonl --models aaren,transformer --config debug

Data: JSON lines, one sequence per line, {"times": [...], "marks": [...]} (marks optional),
read by `rlts.data.events.load_events` (clear errors naming the file and line).

Protocol, the same for every model:
- split by sequence in file order: the first 60 % train, the next 20 % validation, the last
  20 % test (`split`, `shuffle`);
- origin "first" (default): the first event of each sequence only starts the history; every
  later event is predicted from the events before it. Origin "zero": the process starts at
  time 0 and the first event is predicted too;
- NLL per event = -(1/N) sum_i [log p(tau_i | history) + log p(m_i | history)], pooled over the
  N predicted events of the test sequences, no survival term after the last event. Time NLL is
  reported in the data's own time unit (`time_unit`): the models run on times divided by the
  mean training inter-event time `scale`, and their time NLL is converted with + log(scale);
- rmse: root mean squared error of the predicted next inter-event time (the mean of the
  predicted distribution), in data units; accuracy: next-mark accuracy.

Models: rlts.heads.events.EventModel on any rlts.nn backbone (early stopping on the validation
NLL), and the baselines: a homogeneous Poisson process and an exponential-kernel Hawkes process,
both fitted by maximum likelihood on the training sequences (their marks: the training mark
frequencies), "repeat-mark" (the previous event's mark) and, with `true_hawkes` given, the true
generating Hawkes process (the best achievable time NLL).

With `seeds` N > 1 every neural model is trained N times (seeds seed .. seed + N - 1, one
split) and reported as the mean and sample standard deviation of each metric, every run kept.

Outputs in `out`: results.json (config, data summary, protocol, scale, per model metrics;
rewritten atomically after each run, a rerun skips finished models and seeds and resumes an
interrupted run), results.md / results.csv, one folder per neural model (per run with `seeds`:
<model>/seed<S>; Trainer checkpoints, TensorBoard) and intensity.png: the predicted intensity of
every model (its first seed's run) against the events of a test sequence.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Dict, List, Optional

import numpy as np
import torch
from torch.utils.data import DataLoader

from rlts.config import check_ranges, param, to_dict
from rlts.data.events import (ORIGINS, EventDataset, HawkesParams, TimeScale, collate_events, fit_hawkes,
                              fit_poisson_rate, hawkes_intensity, hawkes_nll_per_event, load_events,
                              num_predicted_events, poisson_nll_per_event, predicted_intervals,
                              repeat_mark_accuracy,
                              split_sequences)
from rlts.heads.events import EventModel, evaluate_events, event_loss
from rlts.nn import count_parameters
from rlts.runtime import seed_everything, select_device
from rlts.trainer import Trainer, TrainConfig, check_train_config
from rlts.tasks.runner import TRAIN_ALIASES, Command, json_float, table_order
from rlts.tasks.runner import resolve_models as _resolve_models
from rlts.tasks.supervised.grid import GridRun
BASELINES = ("poisson", "hawkes", "repeat-mark", "true-hawkes")
"""Rows computed without training (always run; true-hawkes only with `true_hawkes`)."""
PLOT_EVENTS = 40
"""Events of the first test sequence shown in intensity.png."""
METRICS = ("nll", "nll_time", "nll_mark", "rmse", "accuracy")
"""Test metrics of every model; with `seeds` > 1 each gets its mean and sample std over the runs."""


@dataclass
class EventsConfig:
    """Settings of `rlts events`."""

    data: str = param("", result=True)
    """Event sequences as JSON lines ({"times": [...], "marks": [...]} per line)."""
    time_unit: str = "time unit of the file"
    """Name of the data's time unit (e.g. s, days), written next to every time-based number."""
    origin: str = param("first", result=True, choices=ORIGINS)
    """first: the first event of a sequence only starts the history; zero: the process starts
    at time 0 and the first event is predicted too."""
    split: List[float] = param(default_factory=lambda: [0.6, 0.2, 0.2], result=True, within="(0, 1)")
    """Train / validation / test fractions of the sequences."""
    shuffle: bool = param(False, result=True)
    """Shuffle the sequences (with `seed`) before splitting; default: file order."""
    models: List[str] = param(default_factory=lambda: ["backbone", "transformer"])
    """Neural models: any rlts.nn backbone name (aaren, mamba, mamba2, transformer, gru) or
    `backbone` (= the `backbone` key). The baselines always run."""
    backbone: str = "aaren"
    """The backbone the model name `backbone` stands for."""
    d_model: int = param(64, result=True, within="[1, inf)")
    """Width of the sequence model."""
    n_layers: int = param(2, result=True, within="[1, inf)")
    """Blocks in the sequence model."""
    n_components: int = param(8, result=True, within="[1, inf)")
    """Log-normal mixture components of the next-time distribution."""
    mark_dim: Optional[int] = param(None, result=True, within="[1, inf)")
    """Mark embedding width; default min(32, d_model)."""
    dropout: float = param(0.0, result=True, within="[0, 1)")
    """Dropout on event embeddings and before the decoder."""
    aaren_decay: bool = param(True, result=True)
    """Aaren models: a learned per-head clock in the scores, so that older events weigh less
    (rlts.nn.aaren.Aaren, option decay); false: the paper's content-only attention."""
    aaren_mass: bool = param(False, result=True)
    """Aaren models: each head also outputs its log attention mass (option mass), so the model
    sees how much recent activity there is, not only its weighted mean."""
    copy_marks: bool = param(True, result=True, missing_as=False)
    """Marked data: a copy path in the mark decoder, learned logits for "the same type as the
    last event" and "a type seen recently, often" (EventModel option copy_marks)."""
    true_hawkes: Optional[List[float]] = param(None, result=True, within="(0, inf)")
    """[mu, alpha, beta] of the process that generated the data, if known (synthetic data):
    adds the true process's NLL, the best achievable, to the table."""
    train: TrainConfig = param(default_factory=TrainConfig, result=True)
    """Trainer settings (train.epochs, train.lr, train.patience, ...); train.seed and
    train.device are replaced by the top-level seed and device."""
    eval_batch_size: int = param(16, within="[1, inf)")
    """Sequences per batch when scoring the test set."""
    out: Optional[str] = None
    """Output folder; default runs/events-<data stem>-<timestamp>. Reuse it to resume."""
    seed: int = param(0, result=True)
    """Seeds model initialisation, training and the shuffle."""
    seeds: int = param(1, result=True, within="[1, inf)", missing_as=1)
    """Runs per neural model, with seeds seed, seed + 1, ..., seed + seeds - 1, all on the same
    split (with shuffle, the one drawn with `seed`; without, each run is exactly what `--seed S`
    alone gives); the table reports the mean NLL with its sample standard deviation,
    results.json every run. The baselines do not depend on the seed and run once."""
    device: str = "auto"
    """auto, cpu, cuda or cuda:N."""
    plots: bool = True
    """Write intensity.png."""


def resolve_models(cfg: EventsConfig) -> List[str]:
    """The neural model names to run; ValueError on unknown ones."""
    return _resolve_models(cfg.models, cfg.backbone, ())


def check_config(cfg: EventsConfig) -> None:
    """ValueErrors for settings that cannot work, before anything is read or written."""
    check_ranges(cfg)
    check_train_config(cfg.train, "train")
    if not cfg.data:
        raise ValueError("no event file given; pass --data FILE.jsonl")
    if len(cfg.split) != 3 or abs(sum(cfg.split) - 1.0) > 1e-6:
        raise ValueError(f"split must be three positive fractions summing to 1, got {cfg.split}")
    if cfg.true_hawkes is not None and len(cfg.true_hawkes) != 3:
        raise ValueError(f"true_hawkes must be three positive numbers mu alpha beta, got {cfg.true_hawkes}")
    resolve_models(cfg)
    select_device(cfg.device)


# ----------------------------------------------------------------------------- baselines


def _intervals(seqs, origin: str) -> np.ndarray:
    """Every predicted inter-event time of `seqs` (data units), concatenated."""
    return np.concatenate([predicted_intervals(s.times, origin) for s in seqs])


def _predicted_marks(seqs, origin: str) -> np.ndarray:
    start = 0 if origin == "zero" else 1
    return np.concatenate([s.marks[start:] for s in seqs])


def mark_frequencies(train, origin: str, n_marks: int) -> np.ndarray:
    """Training mark frequencies with add-one smoothing (every mark keeps a probability)."""
    counts = np.bincount(_predicted_marks(train, origin), minlength=n_marks).astype(np.float64) + 1.0
    return counts / counts.sum()


def baseline_results(train, test, cfg: EventsConfig, n_marks: int, has_marks: bool) -> Dict[str, dict]:
    """Rows of the classical models, in data units. Hawkes has no closed-form expected next
    time, so its rmse is not reported; repeat-mark predicts marks only."""
    origin, rows = cfg.origin, {}
    tau = _intervals(test, origin)
    nll_mark, accuracy = 0.0, None
    if has_marks:
        freq = mark_frequencies(train, origin, n_marks)
        marks = _predicted_marks(test, origin)
        nll_mark = float(-np.log(freq[marks]).mean())
        accuracy = float((marks == int(np.argmax(freq))).mean())
    rate = fit_poisson_rate(train, origin)
    t0 = time.perf_counter()
    hawkes = fit_hawkes(train, origin=origin)
    hawkes_time = time.perf_counter() - t0
    nll_p = poisson_nll_per_event(test, rate, origin)
    nll_h = hawkes_nll_per_event(test, *hawkes, origin=origin)
    rows["poisson"] = {"nll": nll_p + nll_mark, "nll_time": nll_p, "nll_mark": nll_mark,
                       "rmse": float(np.sqrt(np.mean((1.0 / rate - tau) ** 2))), "accuracy": accuracy,
                       "params": 1 + (n_marks - 1 if has_marks else 0), "train_time_s": 0.0, "rate": rate}
    rows["hawkes"] = {"nll": nll_h + nll_mark, "nll_time": nll_h, "nll_mark": nll_mark, "rmse": None,
                      "accuracy": accuracy, "params": 3 + (n_marks - 1 if has_marks else 0),
                      "train_time_s": round(hawkes_time, 3), "fitted": hawkes._asdict()}
    if has_marks:
        rows["repeat-mark"] = {"nll": None, "nll_time": None, "nll_mark": None, "rmse": None,
                               "accuracy": repeat_mark_accuracy(test) if origin == "first" else None,
                               "params": 0, "train_time_s": 0.0}
    if cfg.true_hawkes is not None:
        nll_t = hawkes_nll_per_event(test, *cfg.true_hawkes, origin=origin)
        rows["true-hawkes"] = {"nll": nll_t + nll_mark, "nll_time": nll_t, "nll_mark": nll_mark, "rmse": None,
                               "accuracy": accuracy, "params": 0, "train_time_s": 0.0,
                               "params_true": dict(zip(("mu", "alpha", "beta"), cfg.true_hawkes))}
    return rows


# ----------------------------------------------------------------------------- the run


def build_model(name: str, cfg: EventsConfig, n_marks: int) -> EventModel:
    options = {"decay": cfg.aaren_decay, "mass": cfg.aaren_mass} if name == "aaren" else {}
    return EventModel(n_marks, backbone=name, d_model=cfg.d_model, n_layers=cfg.n_layers,
                      n_components=cfg.n_components, mark_dim=cfg.mark_dim, dropout=cfg.dropout,
                      copy_marks=cfg.copy_marks, **options)


def model_folder(out: Path, name: str, cfg: EventsConfig, seed: int) -> Path:
    """A neural model's folder (checkpoints, TensorBoard): out/<name> for a single run, and
    out/<name>/seed<S> for each of several (`seeds` > 1)."""
    return out / name if cfg.seeds == 1 else out / name / f"seed{seed}"


def _table_rows(results: dict, order: List[str]) -> List[dict]:
    def fmt(v):
        return "-" if v is None else v

    models = [m for m in order if m in results]
    several = any("runs" in results[m] for m in models)  # --seeds: a std and a count column
    keys = ["nll", *(["nll_std"] if several else []), "nll_time", "nll_mark", "rmse", "accuracy",
            *(["seeds"] if several else []), "params", "train_time_s"]
    rows = []
    for m in models:
        r = {**results[m], "seeds": len(results[m].get("runs", [None]))}  # a baseline or one seed: 1
        rows.append({"model": m, **{k: fmt(r.get(k)) for k in keys}})
    return rows


def run_events(cfg: EventsConfig, log=print) -> dict:
    """Fit the baselines and train every neural model not yet in `out`/results.json."""
    check_config(cfg)
    models = resolve_models(cfg)
    seqs = load_events(cfg.data)
    try:
        train, val, test = split_sequences(seqs, cfg.split, seed=cfg.seed, shuffle=cfg.shuffle)
    except ValueError as e:
        raise ValueError(f"{cfg.data}: {e}; the file needs more sequences") from None
    for part, name in ((train, "train"), (val, "validation"), (test, "test")):
        if num_predicted_events(part, cfg.origin) == 0:
            raise ValueError(f"{cfg.data}: the {name} split ({len(part)} sequences) has no event to predict; "
                             "the file needs more sequences (or longer ones)")
    has_marks = seqs[0].marks is not None
    n_marks = int(max(int(s.marks.max()) for s in seqs)) + 1 if has_marks else 1
    scale = TimeScale.fit(train, cfg.origin)

    log_scale = math.log(scale.scale)
    header = {
        "data": {"file": str(cfg.data), "sequences": {"train": len(train), "val": len(val), "test": len(test)},
                 "predicted_events": {"train": num_predicted_events(train, cfg.origin),
                                      "val": num_predicted_events(val, cfg.origin),
                                      "test": num_predicted_events(test, cfg.origin)},
                 "n_marks": n_marks, "has_marks": has_marks},
        "protocol": {
            "description": (
                f"sequences split {cfg.split} in {'shuffled' if cfg.shuffle else 'file'} order; origin "
                f"{cfg.origin!r}; NLL per predicted test event (time + mark), pooled over events, no survival "
                "term after the last event; time NLL and rmse in the data's time unit "
                f"({cfg.time_unit}); neural models run on times / scale and are converted with + log(scale)"),
            "time_unit": cfg.time_unit, "scale": scale.scale, "log_scale": log_scale,
        },
    }
    run = GridRun(cfg, "events", Path(cfg.data).stem, file_keys=("data",), header=header, log=log)
    out = run.out
    run.results.update(baseline_results(train, test, cfg, n_marks, has_marks))
    run.save()

    device = select_device(cfg.device)
    train_ds, val_ds, test_ds = (EventDataset(part, scale, cfg.origin) for part in (train, val, test))
    def train_and_test(name: str, seed: int, run_dir: Path) -> dict:
        """One neural model trained (or resumed) with one seed and scored on the test sequences."""
        seed_everything(seed)
        model = build_model(name, cfg, n_marks)
        model.set_time_scale(collate_events([train_ds[i] for i in range(len(train_ds))]))
        n_params = count_parameters(model)
        log(f"[train] {name} ({n_params} parameters" + run.seed_note(seed) + ")")
        train_cfg = TrainConfig(**{**to_dict(cfg.train), "seed": seed, "device": cfg.device})
        trainer = Trainer(model, event_loss, train_cfg, run_dir=run_dir,
                          collate_fn=collate_events, weight_key="n_events")  # early stopping on the per-event val NLL
        fit = trainer.fit(train_ds, val_ds)
        train_time = fit["train_time_s"]  # summed over interrupted runs
        m = evaluate_events(trainer.model.to(device),  # EventModel moves each batch to its device
                            DataLoader(test_ds, batch_size=cfg.eval_batch_size, collate_fn=collate_events))
        log(f"[done] {name}: nll {m['nll'] + log_scale:.4f} ({train_time:.1f} s" + run.seed_note(seed) + ")")
        return {"nll": m["nll"] + log_scale, "nll_time": m["nll_time"] + log_scale, "nll_mark": m["nll_mark"],
                "rmse": m["rmse"] * scale.scale, "accuracy": m["accuracy"] if has_marks else None,
                "params": n_params, "train_time_s": round(train_time, 3), "epochs": fit["epochs"],
                "best_val_loss": json_float(fit["best_val_loss"]), "n_events": m["n_events"]}

    for name in models:
        run.job(name, None, name, folder=name, run_one=partial(train_and_test, name), metrics=METRICS)

    neural = table_order(models, [m for m in run.results if m not in BASELINES])
    md = run.finish(_table_rows(run.results, [*neural, *BASELINES]))
    if cfg.plots:  # every neural model in results.json, this run's and earlier runs' into `out`
        plotted = plot_intensity(out / "intensity.png", test[0], cfg, scale, run.state, neural, out, n_marks, device)
        for name in neural:
            if name not in plotted:
                log(f"[plot] {name}: no checkpoint in {model_folder(out, name, cfg, cfg.seed) / 'checkpoints'}, "
                    "left out of intensity.png")
    log(f"time unit: {cfg.time_unit}; scale {scale.scale:.6g}")
    log(md)
    return run.state


@torch.no_grad()
def plot_intensity(path: Path, seq, cfg: EventsConfig, scale: TimeScale, state: dict, models: List[str],
                   out: Path, n_marks: int, device: torch.device) -> List[str]:
    """The conditional intensity lambda(t) (data units) of each of `models` between the first
    PLOT_EVENTS events of a test sequence, with the events as ticks. Each model is loaded from
    the checkpoint in its folder (`model_folder`, the first seed's with `seeds`; so models of
    earlier runs into `out` are drawn too); returns the names drawn (a model without a
    checkpoint is left out)."""
    from matplotlib.figure import Figure

    from rlts.checkpoint import Checkpointer

    n = min(len(seq), PLOT_EVENTS)
    times = seq.times[:n]
    start = 0 if cfg.origin == "zero" else 1
    fig = Figure(figsize=(10, 3.5))
    ax = fig.subplots()
    grid_per = 30
    item = EventDataset([type(seq)(times, None if seq.marks is None else seq.marks[:n])], scale, cfg.origin)[0]
    batch = collate_events([item])
    plotted = []
    for name in models:
        ckpt = Checkpointer(model_folder(out, name, cfg, cfg.seed) / "checkpoints").load_latest(
            map_location="cpu", restore_rng=False)
        if ckpt is None:
            continue
        plotted.append(name)
        model = build_model(name, cfg, n_marks)
        model.load_state_dict(ckpt["best_model"] or ckpt["model"])
        model.eval()
        dist, _ = model(batch)                                   # over (1, n)
        ts, lam = [], []
        for i in range(start, n):
            prev = times[i - 1] if i > 0 else 0.0
            tau = np.linspace(0, times[i] - prev, grid_per + 1)[1:]                     # data units
            li = dist.log_intensity(torch.as_tensor(tau / scale.scale)[:, None, None].float())  # (G, 1, n)
            ts.append(prev + tau)
            lam.append(li[:, 0, i].exp().numpy() / scale.scale)
        ax.plot(np.concatenate(ts), np.concatenate(lam), lw=1.2, label=name)
    t_lo = times[start - 1] if start > 0 else 0.0
    grid = np.linspace(t_lo, times[-1], 800)
    fitted = state["results"].get("hawkes", {}).get("fitted")
    if fitted:
        ax.plot(grid, hawkes_intensity(grid, times, *HawkesParams(**fitted)), lw=1, ls="--", color="0.3",
                label="hawkes (fitted)")
    if cfg.true_hawkes:
        ax.plot(grid, hawkes_intensity(grid, times, *cfg.true_hawkes), lw=1, ls=":", color="k",
                label="hawkes (true)")
    rate = state["results"].get("poisson", {}).get("rate")
    if rate:
        ax.axhline(rate, lw=0.8, color="0.6", label="poisson")
    for t in times[start:]:
        ax.axvline(t, ymin=0, ymax=0.04, color="k", lw=0.8)
    ax.set_xlabel(f"time ({cfg.time_unit})")
    ax.set_ylabel("intensity (events per unit)")
    ax.set_yscale("log")
    ax.set_title(f"{Path(cfg.data).name}: first test sequence, {n} events", fontsize=10)
    ax.legend(fontsize=8, ncol=3)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    return plotted


# ----------------------------------------------------------------------------- CLI

ALIASES = {"--model": "--models", **TRAIN_ALIASES}
"""Short spellings accepted by `rlts events` for the config keys."""


COMMANDS = (Command("events", EventsConfig, "events.yaml", run_events, aliases=ALIASES, lists=("models",),
                    help="train and evaluate event-time models (neural TPPs vs Poisson and Hawkes) on "
                         "JSON-lines sequences",
                    usage="rlts events --data FILE.jsonl [--key value ...] [--config NAME]",
                    stem=lambda cfg: Path(cfg.data).stem),)


def parse_events_config(argv: List[str]) -> EventsConfig:
    return COMMANDS[0].parse(argv)
