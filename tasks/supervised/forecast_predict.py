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
`window` rows feed every model. A run made with `--seeds N` forecasts with every seed; the
table holds their mean and spread (<model>-std). The output has forecast.csv's layout.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional

import numpy as np
import torch

from rlts.checkpoint import Checkpointer
from rlts.config import apply_dict, param
from rlts.data.timeseries import LONG_COLUMNS, StandardScaler, future_index, load_csv, season_length
from rlts.runtime import select_device
from rlts.tasks.runner import Command
from rlts.tasks.supervised.forecast import FUTURE_FILE, PARAMETER_FREE, ForecastConfig, build_model, write_future


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
    path = run / "results.json"
    if not path.is_file():
        raise ValueError(f"--run {run} is not a finished `rlts forecast` run: it has no results.json")
    try:
        state = json.loads(path.read_text())
        stored = {k: v for k, v in state["config"].items() if k not in ("out", "data_sha256")}
        return state, apply_dict(ForecastConfig(), stored)
    except (KeyError, TypeError, json.JSONDecodeError, ValueError) as e:
        raise ValueError(f"{path} is not the results of an `rlts forecast` run ({e})") from None


def _runs(job: Path) -> List[Path]:
    """The run folders of a job: the job itself, or its seed<S> folders."""
    return [job] if (job / "checkpoints").exists() or (job / FUTURE_FILE).exists() else sorted(job.glob("seed*"))


def predict(cfg: PredictConfig) -> Path:
    """Write the forecast table; returns its path."""
    if not cfg.run or not cfg.csv:
        raise ValueError("give --run DIR (an `rlts forecast` run) and --csv FILE (the series to forecast from)")
    run, out = Path(cfg.run), Path(cfg.out)
    if out.exists():
        raise ValueError(f"--out {out} already exists; choose a new file")
    state, rcfg = _run_config(run)
    protocol = state.get("protocol", {})
    horizons = sorted({int(h) for r in state.get("results", {}).values() for h in r})
    if not horizons:
        raise ValueError(f"--run {run} holds no finished model yet; finish it with the same `rlts forecast` command")
    horizon = cfg.horizon if cfg.horizon is not None else (rcfg.horizons[0] if rcfg.horizons[0] in horizons
                                                           else horizons[0])
    if horizon not in horizons:
        raise ValueError(f"--run {run} has no model for horizon {horizon}; its horizons: {', '.join(map(str, horizons))}")
    done = [m for m, r in state["results"].items() if str(horizon) in r]
    models = cfg.models or done
    missing = [m for m in models if m not in done]
    if missing:
        raise ValueError(f"--run {run} has no finished model {', '.join(missing)} at horizon {horizon}; "
                         f"it has {', '.join(done)}")

    want = protocol.get("columns")
    if want is not None and Path(cfg.csv).is_file() and rcfg.id_column is None:  # named before the target check
        import pandas as pd
        try:
            header = [str(c).strip() for c in pd.read_csv(cfg.csv, nrows=0).columns]
        except (ValueError, UnicodeDecodeError):
            header = None                              # load_csv names the problem
        if header is not None and sorted(header) == sorted(LONG_COLUMNS):
            header = None                              # a long table: its series are checked once read
        gone = [c for c in want if header is not None and c not in header]
        if gone:
            raise ValueError(f"{cfg.csv} lacks column{'s' * (len(gone) > 1)} {', '.join(gone)} of the run")
    table = load_csv(cfg.csv, target=protocol.get("target", rcfg.target), date_column=rcfg.date_column,
                     features=rcfg.features, fill=rcfg.fill, date_format=rcfg.date_format,
                     id_column=rcfg.id_column, value_column=rcfg.value_column)
    if want is not None and table.columns != want:
        gone = [c for c in want if c not in table.columns]
        extra = [c for c in table.columns if c not in want]
        what = (f"lacks column{'s' * (len(gone) > 1)} {', '.join(gone)}" if gone else
                f"has column{'s' * (len(extra) > 1)} {', '.join(extra)} that the run did not train on" if extra else
                f"has the columns in another order ({', '.join(table.columns)}; the run: {', '.join(want)})")
        raise ValueError(f"{cfg.csv} {what}")
    if len(table) < rcfg.window:
        raise ValueError(f"{cfg.csv} has {len(table)} rows; the run's models read the last {rcfg.window} (window)")
    scaler = StandardScaler(**{k: protocol["scaler"][k] for k in ("mean", "std")})
    device = select_device(cfg.device)
    x = torch.from_numpy(scaler.transform(table.values[-rcfg.window:]).astype(np.float32))[:, table.input_columns]
    out_cols = table.target_columns
    mean, std = scaler.mean[out_cols], scaler.std[out_cols]
    target_index = table.target_index if rcfg.features == "MS" else None

    futures: Dict[str, List[dict]] = {}
    for name in models:
        runs = _runs(run / f"{name}-h{horizon}")
        if not runs:
            raise ValueError(f"{run / f'{name}-h{horizon}'} holds no trained model")
        futures[name] = []
        for folder in runs:
            model = build_model(name, rcfg, len(table.input_columns), horizon, target_index,
                                rcfg.season or season_length(table.dates))
            if name not in PARAMETER_FREE:
                ckpt = Checkpointer(folder / "checkpoints").load_latest(map_location="cpu", restore_rng=False)
                if ckpt is None:
                    raise ValueError(f"{folder} holds no checkpoint of {name}")
                model.load_state_dict(ckpt["best_model"] or ckpt["model"])
            model = model.to(device).eval()
            with torch.no_grad():
                f = model(x.unsqueeze(0).to(device))[0].double().cpu().numpy() * std + mean      # (H, C_out)
            half = json.loads((folder / FUTURE_FILE).read_text())["half_widths"] if (folder / FUTURE_FILE).exists() else {}
            futures[name].append({"forecast": f.tolist(), "half_widths": half})
    levels = sorted({float(k) for r in futures.values() for run_ in r for k in run_["half_widths"]})
    write_future(out, [table.columns[c] for c in out_cols], future_index(table.dates, len(table), horizon), levels,
                 futures)
    print(f"rlts forecast predict: the next {horizon} steps after row {len(table)} of {cfg.csv} by "
          f"{', '.join(models)} -> {out}")
    return out


COMMANDS = (Command("forecast predict", PredictConfig, None, predict, trains=False, lists=("models",),
                    aliases={"--model": "--models"},
                    help="forecast from the end of a CSV file with a finished `rlts forecast` run (no training)",
                    usage="rlts forecast predict --run DIR --csv FILE [--models NAME] [--out forecast.csv]"),)
