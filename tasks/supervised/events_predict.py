"""`rlts events predict`: a finished `rlts events` run forecasts the next event of new event
sequences, or simulates their continuations, without training.

    rlts events --data hawkes1.jsonl --out runs/hawkes                                # train once
    rlts events predict --run runs/hawkes --data recent.jsonl --out next.jsonl
    rlts events predict --run runs/hawkes --data recent.jsonl --simulate 100 --horizon 50 --seed 1

The run folder holds everything needed: results.json (the config, the time scale the models
run on, the number of mark types) and, per neural model, the trained weights
(`<model>/checkpoints/last.pt`, the kept weights, loaded with weights_only=True). The new file has
the run's format (`rlts.data.events.load_events`: {"times": [...], "marks": [...]} per line,
marks present exactly when the run's data had them, each one a mark type of the run). Each
sequence is read whole by every model (`EventModel.read`), in the run's time scale and origin.

Output, JSON lines in the order of the file's sequences:
- default: one object per sequence, the distribution of the time from its last event to the
  next one, in the file's time unit, per model: mean, median, q10 and q90 (10 % and 90 %
  quantiles, float64 bisection of the mixture CDF, `LogNormalMixture.quantile`), and for marked
  data the five most likely next marks with their probabilities:
      {"sequence": 0, "line": 1, "events": 200, "last_time": 187.3,
       "models": {"aaren": {"mean": .., "median": .., "q10": .., "q90": ..,
                            "marks": [{"mark": 3, "p": 0.41}, ...]}}}
- with `simulate` N and `horizon` T: N sampled continuations of each sequence per model, each
  up to T time units after its last event, drawn recurrently (`simulate`): the next interval
  from the log-normal mixture (a component by its weight, then exp(normal)), the mark from its
  softmax, the event fed back through the model's `step`, until an event falls past T (that one
  is dropped). Each line is a sequence in the input format, the history followed by the
  simulated events (so every line is a valid sequence, also a draw with no event before T), with
  where it comes from:
      {"sequence": 0, "line": 1, "draw": 0, "model": "aaren", "history": 200,
       "truncated": false, "times": [... 200 given, then the simulated ...], "marks": [...]}
  `history` is the number of given events (the simulated ones are times[history:]);
  `truncated` marks a continuation cut at `max_events` before reaching T.

A run made with `--seeds N` is applied with its first seed's model (the one `rlts events` draws
in intensity.png), so that every prediction and every continuation comes from one model.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

import numpy as np
import torch

from rlts.checkpoint import Checkpointer
from rlts.config import param
from rlts.data.events import EventDataset, EventSequence, TimeScale, load_events
from rlts.heads.events import EventModel
from rlts.runtime import select_device
from rlts.tasks.runner import Command, read_finished_run
from rlts.tasks.supervised.events import BASELINES, EventsConfig, build_model, model_folder

QUANTILES = {"q10": 0.1, "median": 0.5, "q90": 0.9}
"""The quantiles of the time to the next event written for every sequence."""
TOP_MARKS = 5
"""The most likely next marks written for every sequence of marked data."""
READ_BATCH = 64
"""Sequences of one length read by a model together."""


@dataclass
class PredictConfig:
    """Settings of `rlts events predict`."""

    run: str = ""
    """The folder of a finished `rlts events` run."""
    data: str = ""
    """The event sequences to forecast from (the run's JSON-lines format); every sequence is
    continued after its last event."""
    models: List[str] = param(default_factory=list)
    """Neural models of the run to apply (commas split); default: every neural model of the run."""
    out: str = ""
    """The JSON-lines file to write (never over an existing file); default next.jsonl, or
    simulated.jsonl with `simulate`."""
    simulate: Optional[int] = param(None, within="[1, inf)")
    """Write this many sampled continuations of every sequence (per model) instead of the
    next-event distribution; needs `horizon`."""
    horizon: Optional[float] = param(None, within="(0, inf)")
    """How far past its last event each continuation runs, in the file's time unit."""
    max_events: int = param(10_000, within="[1, inf)")
    """Simulated events per continuation at most; one that reaches it stops there (written with
    truncated: true)."""
    seed: int = 0
    """Seeds the simulation: the same run, file, options, seed and device give the same
    continuations."""
    device: str = "cpu"
    """cpu, cuda or cuda:N."""


def _run_config(run: Path) -> tuple[dict, EventsConfig]:
    state, rcfg = read_finished_run(run, "events", EventsConfig)
    try:
        scale, n_marks = float(state["protocol"]["scale"]), int(state["data"]["n_marks"])
        if not (scale > 0 and np.isfinite(scale) and n_marks >= 1 and isinstance(state["data"]["has_marks"], bool)):
            raise ValueError(f"time scale {scale}, n_marks {n_marks}")
    except (KeyError, TypeError, ValueError) as e:
        raise ValueError(f"{run / 'results.json'} is not the results of an `rlts events` run ({e})") from None
    return state, rcfg


@dataclass
class Loaded:
    """A finished run ready to forecast: its config, time scale, marks and models."""

    rcfg: EventsConfig
    scale: TimeScale
    """Model time = data time / scale.scale (the run's mean training inter-event time)."""
    n_marks: int
    has_marks: bool
    models: Dict[str, EventModel]
    """{name: the first seed's trained model, in eval mode}."""
    device: torch.device

    def history(self, seq: EventSequence) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
        """One sequence -> what a model reads: scaled inter-event times (L,) as in the run
        (`EventDataset`, the run's origin) and marks (L,) (None for unmarked data)."""
        item = EventDataset([seq], self.scale.scale, self.rcfg.origin)[0]
        return item["dt"].to(self.device), item["marks"].to(self.device) if self.has_marks else None


def load_run(run_dir: str, names: List[str], device: str) -> Loaded:
    """Read a finished run's models; every problem is one ValueError naming the run or a model."""
    if not run_dir:
        raise ValueError("give --run DIR (an `rlts events` run) and --data FILE.jsonl (the sequences to forecast from)")
    run = Path(run_dir)
    state, rcfg = _run_config(run)
    done = [m for m in state.get("results", {}) if m not in BASELINES]
    if not done:
        raise ValueError(f"--run {run} holds no finished neural model yet; finish it with the same `rlts events` "
                         "command")
    names = list(names) or done
    missing = [m for m in names if m not in done]
    if missing:
        raise ValueError(f"--run {run} has no finished model {', '.join(missing)}; it has {', '.join(done)}")
    n_marks, has_marks = int(state["data"]["n_marks"]), bool(state["data"]["has_marks"])
    dev = select_device(device)
    models: Dict[str, EventModel] = {}
    for name in names:
        folder = model_folder(run, name, rcfg, rcfg.seed)
        ckpt = Checkpointer(folder / "checkpoints").load_latest(map_location="cpu", restore_rng=False)
        if ckpt is None:
            raise ValueError(f"{folder} holds no checkpoint of {name}")
        model = build_model(name, rcfg, n_marks)
        try:
            model.load_state_dict(ckpt["best_model"] or ckpt["model"])
        except (KeyError, RuntimeError) as e:
            raise ValueError(f"{folder}: the checkpoint does not fit the run's {name} model ({e})") from None
        models[name] = model.to(dev).eval()
    scale = TimeScale(float(state["protocol"]["scale"]), rcfg.origin)
    return Loaded(rcfg, scale, n_marks, has_marks, models, dev)


def _line_numbers(path: Path) -> List[int]:
    """The 1-based line of every sequence of a JSON-lines file (`load_events` skips blank lines)."""
    with open(path, "r", encoding="utf-8") as f:
        return [number for number, line in enumerate(f, start=1) if line.strip()]


def read_sequences(path: str, loaded: Loaded) -> Tuple[List[EventSequence], List[int]]:
    """The sequences of `path` and their line numbers, checked against the run: marks present
    exactly when the run's data had them, each one a mark type of the run, times the run's
    origin can read. A ValueError names the file, the line and the problem."""
    if not path:
        raise ValueError("give --data FILE.jsonl: the event sequences to forecast from")
    seqs = load_events(path)
    lines = _line_numbers(Path(path))
    for seq, line in zip(seqs, lines):
        where = f"{path}, line {line}"
        if (seq.marks is not None) != loaded.has_marks:
            raise ValueError(f"{where}: the sequence {'has' if seq.marks is not None else 'has no'} 'marks' but the "
                             f"run was trained on {'marked' if loaded.has_marks else 'unmarked'} events")
        if seq.marks is not None and int(seq.marks.max()) >= loaded.n_marks:
            j = int(np.argmax(seq.marks >= loaded.n_marks))
            raise ValueError(f"{where}: mark {int(seq.marks[j])} (marks[{j}]) is not a mark of the run, which knows "
                             f"marks 0..{loaded.n_marks - 1}")
        if loaded.rcfg.origin == "zero" and seq.times[0] < 0:
            raise ValueError(f"{where}: the run's origin 'zero' needs times >= 0, got times[0] = {float(seq.times[0])}")
    return seqs, lines


# ----------------------------------------------------------------------------- the next event


@torch.no_grad()
def next_event(model: EventModel, loaded: Loaded, seqs: List[EventSequence]) -> List[dict]:
    """Per sequence, the distribution of the time from its last event to the next one, in data
    units: {"mean", "median", "q10", "q90"} and, for marked data, "marks": the TOP_MARKS most
    likely next marks [{"mark", "p"}]. Sequences of one length are read together."""
    out: List[Optional[dict]] = [None] * len(seqs)
    by_length: Dict[int, List[int]] = {}
    for i, s in enumerate(seqs):
        by_length.setdefault(len(s), []).append(i)
    s = loaded.scale.scale
    qs = torch.tensor(list(QUANTILES.values()), dtype=torch.float64)[:, None]   # (Q, 1)
    for idx in by_length.values():
        for a in range(0, len(idx), READ_BATCH):
            group = idx[a:a + READ_BATCH]
            hist = [loaded.history(seqs[i]) for i in group]
            dt = torch.stack([h[0] for h in hist])                              # (B, L)
            marks = torch.stack([h[1] for h in hist]) if loaded.has_marks else None
            dist, logits, _ = model.read(dt, marks)
            dist = dist.double()
            mean = (dist.mean() * s).cpu().tolist()                             # (B,)
            quant = (dist.quantile(qs.to(dist.locs.device)) * s).cpu()          # (Q, B)
            if loaded.has_marks:
                p, m = torch.softmax(logits.double(), dim=-1).topk(min(TOP_MARKS, loaded.n_marks), dim=-1)
            for b, i in enumerate(group):
                entry = {"mean": mean[b], **{k: float(quant[j, b]) for j, k in enumerate(QUANTILES)}}
                if loaded.has_marks:
                    entry["marks"] = [{"mark": int(mm), "p": float(pp)} for mm, pp in zip(m[b].tolist(), p[b].tolist())]
                out[i] = entry
    return out  # type: ignore[return-value]


# ----------------------------------------------------------------------------- simulation


@torch.no_grad()
def simulate(process: Any, dt: torch.Tensor, marks: Optional[torch.Tensor], n: int, horizon: float,
             generator: torch.Generator, scale: float = 1.0, max_events: int = 10_000
             ) -> List[Tuple[np.ndarray, Optional[np.ndarray], bool]]:
    """n sampled continuations of one history, each up to `horizon` after its last event.

    `process` is anything with an EventModel's reading interface, in its own time units:
        read(dt (1, L), marks (1, L) or None, copies=n) -> (dist, mark logits (n, M), state)
        step(dt_t (n,), mark_t (n,) or None, state) -> (dist, mark logits (n, M), state)
    where dist (batch shape (n,)) is the distribution of the next interval of each stream and
    has sample(sample_shape, generator=...). dt, marks: the history as the process reads it
    (marks None for unmarked events); `scale`: data units per process unit; `horizon` in data
    units; `generator` on the process's device.

    Each round draws every stream's next interval from its dist and its mark from
    softmax(logits) (unmarked: none), and feeds the event back with `step`; a stream stops at
    its first event past the horizon (dropped) or after `max_events` events. Returns per stream
    (times after the last history event, float64 (k,), non-decreasing, each in (0, horizon];
    marks int64 (k,) or None; whether max_events cut it)."""
    dist, logits, state = process.read(dt[None], None if marks is None else marks[None], copies=n)
    elapsed = torch.zeros(n, dtype=torch.float64)
    alive = torch.ones(n, dtype=torch.bool)
    steps_t, steps_m, steps_alive = [], [], []
    for _ in range(max_events):
        tau = dist.sample((), generator=generator)                             # (n,) process units
        mark = None
        if marks is not None:
            probs = torch.softmax(logits.double(), dim=-1)
            mark = torch.multinomial(probs, 1, generator=generator).squeeze(-1)  # (n,)
        t = elapsed + tau.detach().cpu().double() * scale                      # data units
        alive = alive & (t <= horizon)
        if not bool(alive.any()):
            break
        steps_t.append(t)
        steps_m.append(mark.cpu() if mark is not None else None)
        steps_alive.append(alive)
        elapsed = torch.where(alive, t, elapsed)
        if len(steps_t) == max_events:
            break
        dist, logits, state = process.step(tau, mark, state)
    if not steps_t:
        return [(np.zeros(0), None if marks is None else np.zeros(0, dtype=np.int64), False) for _ in range(n)]
    times = torch.stack(steps_t, dim=1).numpy()                                # (n, S)
    kept = torch.stack(steps_alive, dim=1).sum(dim=1).tolist()                 # a prefix of each row
    mk = torch.stack(steps_m, dim=1).numpy() if marks is not None else None
    cut = bool(len(steps_t) == max_events)
    return [(times[b, :k].copy(), None if mk is None else mk[b, :k].astype(np.int64), cut and k == max_events)
            for b, k in enumerate(kept)]


# ----------------------------------------------------------------------------- the command


def _write_lines(out: Path, lines) -> None:
    """Write JSON lines to `out` through a temporary file beside it, never over an existing file:
    `out` appears complete or not at all."""
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "w", encoding="utf-8") as f:
            for obj in lines:
                f.write(json.dumps(obj) + "\n")
        if out.exists():
            raise ValueError(f"--out {out} appeared while predicting; nothing written")
        os.replace(tmp, out)
    finally:
        if tmp.exists():
            tmp.unlink()


def check_predict_config(cfg: PredictConfig) -> None:
    """ValueErrors for settings that cannot work, before anything is read."""
    if cfg.simulate is not None and cfg.horizon is None:
        raise ValueError("--simulate N needs --horizon T: how far past each sequence's last event to simulate")
    if cfg.horizon is not None and cfg.simulate is None:
        raise ValueError("--horizon applies to simulations only; give --simulate N too")


def predict(cfg: PredictConfig) -> Path:
    """Write the next-event distributions (or, with `simulate`, the continuations) of every
    sequence of `cfg.data`; returns the file written."""
    check_predict_config(cfg)
    out = Path(cfg.out or ("simulated.jsonl" if cfg.simulate else "next.jsonl"))
    if out.exists():
        raise ValueError(f"--out {out} already exists; choose a new file")
    loaded = load_run(cfg.run, cfg.models, cfg.device)
    seqs, line_numbers = read_sequences(cfg.data, loaded)
    unit = loaded.rcfg.time_unit
    if cfg.simulate is None:
        per_model = {name: next_event(model, loaded, seqs) for name, model in loaded.models.items()}
        lines = ({"sequence": i, "line": line_numbers[i], "events": len(s), "last_time": float(s.times[-1]),
                  "models": {name: per_model[name][i] for name in loaded.models}} for i, s in enumerate(seqs))
        _write_lines(out, lines)
        print(f"rlts events predict: the next event after each of the {len(seqs)} sequences of {cfg.data} by "
              f"{', '.join(loaded.models)} (times in {unit}) -> {out}")
        return out

    generator = torch.Generator(device=loaded.device).manual_seed(cfg.seed)

    def continuations():
        for i, s in enumerate(seqs):
            dt, marks = loaded.history(s)
            for name, model in loaded.models.items():
                draws = simulate(model, dt, marks, cfg.simulate, cfg.horizon, generator, scale=loaded.scale.scale,
                                 max_events=cfg.max_events)
                for j, (offsets, sim_marks, cut) in enumerate(draws):
                    line = {"sequence": i, "line": line_numbers[i], "draw": j, "model": name, "history": len(s),
                            "truncated": cut, "times": s.times.tolist() + (s.times[-1] + offsets).tolist()}
                    if s.marks is not None:
                        line["marks"] = s.marks.tolist() + sim_marks.tolist()
                    yield line

    _write_lines(out, continuations())
    print(f"rlts events predict: {cfg.simulate} continuations of each of the {len(seqs)} sequences of {cfg.data}, up "
          f"to {cfg.horizon:g} after its last event (time unit: {unit}), by {', '.join(loaded.models)} (seed "
          f"{cfg.seed}) -> {out}")
    return out


COMMANDS = (
    Command("events predict", PredictConfig, None, predict, trains=False, lists=("models",),
            aliases={"--model": "--models"},
            help="forecast the next event of JSON-lines sequences, or simulate their continuations, with a "
                 "finished `rlts events` run (no training)",
            usage="rlts events predict --run DIR --data FILE.jsonl [--out next.jsonl] [--simulate N --horizon T] "
                  "[--seed S] [--models NAME]"),
)
