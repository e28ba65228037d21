"""`rlts forecast predict`: a finished `rlts forecast` run forecasts from the end of a CSV file,
without training.

    rlts forecast --csv sales.csv --target y --horizon 30 --out runs/sales      # train once
    rlts forecast predict --run runs/sales --csv sales_tomorrow.csv --out next30.csv

The run folder holds everything needed: results.json (the config, the file's columns in order,
the scaler fitted on the training rows) and, per model and horizon, the trained weights
(`<model>-h<H>/checkpoints/last.pt`, the kept weights, loaded with weights_only=True) and the
conformal half-widths of its intervals (future.json). The new file must have the run's columns
in the run's order (extra rows are the point: the forecast starts after its last row); it is
read with the run's date and target settings, scaled with the run's scaler, and its last
`window` rows feed every model (a model made for streaming, `--streaming true`, reads the whole
file as one stream, as it was scored). A run made with `--seeds N` forecasts with every seed; the
table holds their mean and spread (<model>-std). The output has forecast.csv's layout.
"""
from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, Iterable, List, Optional, TextIO

import numpy as np
import torch

from rlts.checkpoint import Checkpointer
from rlts.config import param
from rlts.data.timeseries import LONG_COLUMNS, StandardScaler, load_csv, season_length
from rlts.runtime import select_device
from rlts.tasks.runner import Command, read_finished_run
from rlts.tasks.supervised.forecast import (FUTURE_FILE, PARAMETER_FREE, ForecastConfig, build_model, future_dates,
                                            future_forecast, is_streaming, series_ends, write_future)


@dataclass
class PredictConfig:
    """Settings of `rlts forecast predict`."""

    run: str = ""
    """The folder of a finished `rlts forecast` run."""
    csv: str = ""
    """The CSV file to forecast from: the run's columns in the run's order; the forecast starts
    after its last row."""
    models: List[str] = param(default_factory=list)
    """Models of the run to forecast with (commas split); default: every model of the run."""
    horizon: Optional[int] = param(None, within="[1, inf)")
    """Which of the run's horizons; default: its first."""
    out: str = "forecast.csv"
    """The forecast table to write (never over an existing file)."""
    device: str = "cpu"
    """cpu, cuda or cuda:N."""


def _run_config(run: Path) -> tuple[dict, ForecastConfig]:
    return read_finished_run(run, "forecast", ForecastConfig)


def _runs(job: Path) -> List[Path]:
    """The run folders of a job: the job itself, or its seed<S> folders."""
    return [job] if (job / "checkpoints").exists() or (job / FUTURE_FILE).exists() else sorted(job.glob("seed*"))


@dataclass
class Loaded:
    """A finished run ready to forecast: its config, scaler and models, and the series read."""

    rcfg: ForecastConfig
    table: Any
    """The SeriesTable of the file read (the run's columns, in the run's order)."""
    scaler: StandardScaler
    horizon: int
    models: Dict[str, List[tuple]]
    """{name: [(model, half-widths {level: (H, C_out) list}) per seed]}."""
    device: torch.device

    def inputs(self, values: np.ndarray) -> torch.Tensor:
        """Rows (T, C) in the file's units -> the models' input (1, T, C_in), scaled."""
        x = torch.from_numpy(self.scaler.transform(values).astype(np.float32))
        return x[:, self.table.input_columns].unsqueeze(0).to(self.device)

    def units(self, y: torch.Tensor) -> np.ndarray:
        """A forecast (1, H, C_out), scaled -> (H, C_out) in the file's units."""
        cols = self.table.target_columns
        return y[0].double().cpu().numpy() * self.scaler.std[cols] + self.scaler.mean[cols]

    def forecast(self, values: np.ndarray, ends: Optional[List[int]] = None) -> Dict[str, List[dict]]:
        """{name: [{"forecast": (H, C_out), "half_widths": ...} per seed]} after the last row of
        `values` (T, C) (or each forecast column's `ends[j]` - 1), in the file's units: from the
        `window` rows before it, or, by a model made for streaming, from all of them."""
        x = self.inputs(values)[0]
        ends = ends or [len(values)] * len(self.table.target_columns)
        cols = self.table.target_columns
        mean, std = self.scaler.mean[cols], self.scaler.std[cols]
        return {name: [{"forecast": future_forecast(model, x, self.rcfg.window, ends, self.device) * std + mean,
                        "half_widths": half} for model, half in runs]
                for name, runs in self.models.items()}


class LiveForecast:
    """The forecasts of a loaded run kept up to date row by row: a model made for streaming
    reads the history once and then advances its state by one step per row (O(1) time and
    memory, `SequenceForecaster.update`); the others recompute their window from the latest
    `window` rows."""

    def __init__(self, loaded: Loaded, history: np.ndarray):
        self.loaded = loaded
        self.recent = list(history[-loaded.rcfg.window:].astype(np.float64))       # file units
        x = loaded.inputs(history)
        self.streams = {name: [model.start_stream(x) if is_streaming(model) else None for model, _ in runs]
                        for name, runs in loaded.models.items()}

    def add(self, row: np.ndarray) -> Dict[str, List[dict]]:
        """One new row (C,) in the file's units -> the forecasts after it, as `Loaded.forecast`."""
        self.recent = self.recent[1:] + [np.asarray(row, dtype=np.float64)]
        window = self.loaded.inputs(np.stack(self.recent))
        out: Dict[str, List[dict]] = {}
        with torch.no_grad():
            for name, runs in self.loaded.models.items():
                out[name] = []
                for k, (model, half) in enumerate(runs):
                    state = self.streams[name][k]
                    if state is None:
                        y = model(window)
                    else:
                        y, self.streams[name][k] = model.update(state, window[:, -1:])
                    out[name].append({"forecast": self.loaded.units(y), "half_widths": half})
        return out


def load_run(run_dir: str, csv: str, names: List[str], horizon: Optional[int], device: str) -> Loaded:
    """Read a finished run and the file `csv` it forecasts from; every problem is one ValueError
    naming the run, the file, a column, a model or a horizon."""
    if not run_dir or not csv:
        raise ValueError("give --run DIR (an `rlts forecast` run) and --csv FILE (the series to forecast from)")
    run = Path(run_dir)
    state, rcfg = _run_config(run)
    protocol = state.get("protocol", {})
    horizons = sorted({int(h) for r in state.get("results", {}).values() for h in r})
    if not horizons:
        raise ValueError(f"--run {run} holds no finished model yet; finish it with the same `rlts forecast` command")
    if horizon is None:
        horizon = rcfg.horizons[0] if rcfg.horizons[0] in horizons else horizons[0]
    if horizon not in horizons:
        raise ValueError(f"--run {run} has no model for horizon {horizon}; its horizons: {', '.join(map(str, horizons))}")
    done = [m for m, r in state["results"].items() if str(horizon) in r]
    names = list(names) or done
    missing = [m for m in names if m not in done]
    if missing:
        raise ValueError(f"--run {run} has no finished model {', '.join(missing)} at horizon {horizon}; "
                         f"it has {', '.join(done)}")

    want = protocol.get("columns")
    if want is not None and Path(csv).is_file() and rcfg.id_column is None:  # named before the target check
        import pandas as pd
        try:
            header = [str(c).strip() for c in pd.read_csv(csv, nrows=0).columns]
        except (ValueError, UnicodeDecodeError):
            header = None                              # load_csv names the problem
        if header is not None and sorted(header) == sorted(LONG_COLUMNS):
            header = None                              # a long table: its series are checked once read
        gone = [c for c in want if header is not None and c not in header]
        if gone:
            raise ValueError(f"{csv} lacks column{'s' * (len(gone) > 1)} {', '.join(gone)} of the run")
    table = load_csv(csv, target=protocol.get("target", rcfg.target), date_column=rcfg.date_column,
                     features=rcfg.features, fill=rcfg.fill, date_format=rcfg.date_format,
                     id_column=rcfg.id_column, value_column=rcfg.value_column)
    if want is not None and table.columns != want:
        gone = [c for c in want if c not in table.columns]
        extra = [c for c in table.columns if c not in want]
        what = (f"lacks column{'s' * (len(gone) > 1)} {', '.join(gone)}" if gone else
                f"has column{'s' * (len(extra) > 1)} {', '.join(extra)} that the run did not train on" if extra else
                f"has the columns in another order ({', '.join(table.columns)}; the run: {', '.join(want)})")
        raise ValueError(f"{csv} {what}")
    if len(table) < rcfg.window:
        raise ValueError(f"{csv} has {len(table)} rows; the run's models read the last {rcfg.window} (window)")
    for c in table.target_columns if table.spans else []:
        first, end = table.spans[c]
        if end - first < rcfg.window:
            raise ValueError(f"{csv}: series {table.columns[c]!r} has {end - first} time steps; the run's models read "
                             f"the last {rcfg.window} (window)")
    scaler = StandardScaler(**{k: protocol["scaler"][k] for k in ("mean", "std")})
    dev = select_device(device)
    target_index = table.target_index if rcfg.features == "MS" else None
    models: Dict[str, List[tuple]] = {}
    for name in names:
        runs = _runs(run / f"{name}-h{horizon}")
        if not runs:
            raise ValueError(f"{run / f'{name}-h{horizon}'} holds no trained model")
        models[name] = []
        for folder in runs:
            model = build_model(name, rcfg, len(table.input_columns), horizon, target_index,
                                rcfg.season or season_length(table.dates))
            if name not in PARAMETER_FREE:
                ckpt = Checkpointer(folder / "checkpoints").load_latest(map_location="cpu", restore_rng=False)
                if ckpt is None:
                    raise ValueError(f"{folder} holds no checkpoint of {name}")
                model.load_state_dict(ckpt["best_model"] or ckpt["model"])
            half = json.loads((folder / FUTURE_FILE).read_text())["half_widths"] if (folder / FUTURE_FILE).exists() else {}
            models[name].append((model.to(dev).eval(), half))
    return Loaded(rcfg, table, scaler, horizon, models, dev)


def _levels(futures: Dict[str, List[dict]]) -> List[float]:
    return sorted({float(k) for runs in futures.values() for r in runs for k in r["half_widths"]})


def predict(cfg: PredictConfig) -> Path:
    """Write the forecast table; returns its path."""
    out = Path(cfg.out)
    if out.exists():
        raise ValueError(f"--out {out} already exists; choose a new file")
    loaded = load_run(cfg.run, cfg.csv, cfg.models, cfg.horizon, cfg.device)
    table = loaded.table
    futures = loaded.forecast(table.values, series_ends(table, len(table)))
    write_future(out, [table.columns[c] for c in table.target_columns], future_dates(table, loaded.horizon),
                 _levels(futures), futures)
    print(f"rlts forecast predict: the next {loaded.horizon} steps after row {len(table)} of {cfg.csv} by "
          f"{', '.join(loaded.models)} -> {out}")
    return out


@dataclass
class StreamConfig:
    """Settings of `rlts forecast stream`."""

    run: str = ""
    """The folder of a finished `rlts forecast` run."""
    csv: str = ""
    """The history the stream starts from (at least the run's window of rows; its header gives
    the fields of every streamed line)."""
    models: List[str] = param(default_factory=list)
    """Models of the run to forecast with (commas split); default: every model of the run."""
    horizon: Optional[int] = param(None, within="[1, inf)")
    """Which of the run's horizons; default: its first."""
    device: str = "cpu"
    """cpu, cuda or cuda:N."""


def stream(cfg: StreamConfig, lines: Optional[Iterable[str]] = None, out: Optional[TextIO] = None) -> None:
    """Read new rows (CSV lines with the history file's fields, no header) from `lines`
    (default: standard input); after each, write the updated forecast as one JSON line to `out`
    (default: standard output) and flush. A model made for streaming advances its state by one
    step per row; the others recompute their window from the latest `window` rows (constant
    time per row either way; `LiveForecast`). A malformed line is reported with
    its line number on standard error, changes nothing, and the stream goes on."""
    import csv as csv_module

    loaded = load_run(cfg.run, cfg.csv, cfg.models, cfg.horizon, cfg.device)
    if loaded.rcfg.id_column is not None or sorted(loaded.table.columns) == sorted(LONG_COLUMNS):
        raise ValueError("a stream reads rows of a wide table (one column per series); this run was made on a long "
                         "table")
    table = loaded.table
    with open(cfg.csv, newline="") as f:
        header = [h.strip() for h in next(csv_module.reader(f))]
    value_at = [header.index(c) for c in table.columns]
    date_at = header.index(str(table.dates.name)) if table.dates is not None and table.dates.name in header else None
    live = LiveForecast(loaded, table.values)
    last_time = table.dates[-1] if table.dates is not None else len(table) - 1
    names = [table.columns[c] for c in table.target_columns]
    lines = sys.stdin if lines is None else lines
    out = sys.stdout if out is None else out
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        fields = next(csv_module.reader([line]))
        try:
            if len(fields) != len(header):
                raise ValueError(f"{len(fields)} fields, the history's header has {len(header)} "
                                 f"({', '.join(header)})")
            row = []
            for i in value_at:
                try:
                    v = float(fields[i])
                except ValueError:
                    raise ValueError(f"column {header[i]} holds {fields[i].strip()!r}, not a number") from None
                if not np.isfinite(v):
                    raise ValueError(f"column {header[i]} holds {fields[i].strip()!r}")
                row.append(v)
            if date_at is not None:
                import pandas as pd
                try:
                    when = pd.Timestamp(fields[date_at].strip())
                except ValueError:
                    raise ValueError(f"column {header[date_at]} holds {fields[date_at].strip()!r}, not a date") from None
                if when <= last_time:
                    raise ValueError(f"its time {when} does not come after {last_time}")
            else:
                when = last_time + 1
        except ValueError as e:
            print(f"rlts forecast stream: line {number} skipped: {e}", file=sys.stderr, flush=True)
            continue
        last_time = when
        futures = live.add(np.asarray(row))
        record: Dict[str, Any] = {"time": str(last_time), "forecasts": {}}
        for name, runs in futures.items():
            f = np.mean([r["forecast"] for r in runs], axis=0)                      # (H, C_out)
            record["forecasts"][name] = {c: f[:, j].tolist() for j, c in enumerate(names)}
            for level in _levels({name: runs}):
                half = np.mean([np.asarray(r["half_widths"][f"{level:g}"]) for r in runs], axis=0)
                record["forecasts"][f"{name}-lo-{level:g}"] = {c: (f[:, j] - half[:, j]).tolist()
                                                              for j, c in enumerate(names)}
                record["forecasts"][f"{name}-hi-{level:g}"] = {c: (f[:, j] + half[:, j]).tolist()
                                                              for j, c in enumerate(names)}
        out.write(json.dumps(record) + "\n")
        out.flush()


COMMANDS = (
    Command("forecast predict", PredictConfig, None, predict, trains=False, lists=("models",),
            aliases={"--model": "--models"},
            help="forecast from the end of a CSV file with a finished `rlts forecast` run (no training)",
            usage="rlts forecast predict --run DIR --csv FILE [--models NAME] [--out forecast.csv]"),
    Command("forecast stream", StreamConfig, None, stream, trains=False, lists=("models",),
            aliases={"--model": "--models"},
            help="read new rows on standard input and write the updated forecast after each, as JSON lines",
            usage="rlts forecast stream --run DIR --csv HISTORY.csv [--models NAME] < new_rows.csv"),
)
