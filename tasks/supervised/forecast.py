"""Long-term forecasting runner: every (model, horizon) pair on one CSV series, TSLib protocol,
and the forecast of the file's future with intervals.

    rlts forecast --csv tasks/data/ETTh1.csv --target OT --features M --window 96 --horizon 96 192 \
        --models aaren,linear,naive --out runs/etth1 --config debug --train.epochs 3

Per (model, horizon): load_csv -> split_borders (ETTh*/ETTm* files: 12/4/4-month TSLib split,
others the `split` ratios, 70/10/20 %) -> StandardScaler fitted on the train rows only ->
stride-1 WindowDatasets (val/test start `window` rows early) -> model -> Trainer.fit(train, val)
with early stopping (naive, snaive: no training) -> the validation windows' errors calibrate
the intervals (split-conformal per horizon step and column; rlts.metrics) -> on every stride-1
test window: MSE and MAE on the scaled values (the published protocol), MAE, RMSE, sMAPE and
MASE in the file's units, the intervals' coverage and weighted quantile loss (against a normal
and the empirical quantiles of the same errors) -> the forecast of the `horizon` steps after
the file's last row (from its last `window` rows) with its intervals, in the file's units.

Outputs in `out`: results.json (metrics, config, protocol, split sizes, test-window counts;
rewritten atomically after each pair), results.csv / results.md (the table), forecast.csv (the
first horizon's future, every model), one folder per pair (`<model>-h<H>`: Trainer checkpoints,
TensorBoard logs, future.json) and predictions.png. `rlts forecast predict` applies a finished
run to a new file (tasks/supervised/forecast_predict.py).

Running the same command with the same `out` again skips the pairs already in results.json
and resumes an interrupted one from its last checkpoint.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from statistics import NormalDist
from functools import partial
from pathlib import Path
from typing import Dict, List, NamedTuple, Optional

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Subset

from rlts.config import check_ranges, param, to_dict
from rlts.data.timeseries import (FEATURE_MODES, PROTOCOLS, StandardScaler, WindowDataset, future_index,
                                  load_csv, protocol_for, season_length, split_borders)
from rlts.heads.forecast import (CHANNEL_MODES, DLinear, NaiveForecaster, SeasonalNaiveForecaster, SequenceForecaster,
                                 forecast_loss, sequence_forecast_loss)
from rlts.metrics import (MetricSums, QuantileLossSums, conformal_quantiles, interval_taus, rolling_conformal,
                          seasonal_scale)
from rlts.nn import count_parameters
from rlts.runtime import seed_everything, select_device
from rlts.trainer import Trainer, TrainConfig, check_train_config
from rlts.tasks.runner import TRAIN_ALIASES, Command, json_float, table_order, write_json_atomic
from rlts.tasks.runner import resolve_models as _resolve_models
from rlts.tasks.supervised.grid import GridRun

BASELINES = ("linear", "naive", "snaive")
"""Model names besides the rlts.nn backbones: linear = DLinear, naive = last value repeated,
snaive = last season repeated (the season of MASE: `season`, or from the dates)."""
PARAMETER_FREE = ("naive", "snaive")
"""Models with nothing to train."""
PLOT_WINDOWS = 3
STREAM_BATCH = 4096
"""Windows per batch when a model made for streaming is scored (one stream pass per batch)."""
FUTURE_FILE = "future.json"
"""In each run's folder: the forecast after the file's last row and its intervals' conformal
half-widths per horizon step and channel, in the file's units (`future_half_widths`: from the
errors of the file's latest windows at an adapted level); forecast.csv gathers them."""


@dataclass
class ForecastConfig:
    """Settings of `rlts forecast`."""

    csv: str = param("", result=True)
    """Path of the CSV series (header row; an optional date column; numeric value columns)."""
    target: Optional[str] = param(None, result=True)
    """Column to predict (S/MS modes, and the plotted channel); default: the last value column."""
    date_column: Optional[str] = param(None, result=True)
    """Name of the date column (--time_column is the same key: a long table's time column);
    default: detected (date/time/timestamp/datetime, or parseable), ds in a long table."""
    features: str = param("M", result=True, choices=FEATURE_MODES)
    """M: all columns in and out; S: the target only; MS: all columns in, the target out."""
    id_column: Optional[str] = param(None, result=True, missing_as=None)
    """A long table: the column naming each row's series (its times in date_column, default ds;
    its values in value_column, default y). Every series becomes a column and one model learns
    across them (channel_mode independent: shared weights); forecast.csv has one id per series.
    Series may start and end at different times: each is trained and scored on the windows it
    covers (the split is by time over all of them) and forecast after its own last time. A file
    whose columns are exactly unique_id, ds, y is read so without it."""
    value_column: Optional[str] = param(None, result=True, missing_as=None)
    """A long table: the column of the values (default y)."""
    fill: bool = param(False, result=True)
    """Interpolate missing values instead of stopping on them."""
    date_format: Optional[str] = param(None, result=True, missing_as=None)
    """Format of the dates for pandas.to_datetime, e.g. %d/%m/%Y for day-first dates; default:
    inferred."""
    protocol: str = param("auto", result=True, choices=PROTOCOLS)
    """Split protocol: auto (ETTh*/ETTm* files: TSLib 12/4/4 months, else the `split` ratios),
    ett-hour, ett-minute or ratio."""
    split: List[float] = param(default_factory=lambda: [0.7, 0.1, 0.2], result=True, within="(0, 1)",
                               missing_as=[0.7, 0.1, 0.2])
    """Train / validation / test fractions of the rows under the ratio protocol (in time order)."""
    window: int = param(96, result=True, within="[1, inf)")
    """Input length L (look-back window)."""
    horizons: List[int] = param(default_factory=lambda: [96, 192, 336, 720], within="[1, inf)")
    """Forecast lengths H; one run per model and horizon. The plot uses the first."""
    models: List[str] = param(default_factory=lambda: ["backbone", "linear", "naive"])
    """Models to run: any rlts.nn backbone name (aaren, mamba, mamba2, transformer, gru), linear
    (DLinear), naive (last value repeated), snaive (last season repeated), or `backbone` (= the
    `backbone` key). Commas split."""
    backbone: str = "aaren"
    """The backbone the model name `backbone` stands for."""
    d_model: int = param(64, result=True, within="[1, inf)")
    """Width of the sequence model (backbone models)."""
    n_layers: int = param(2, result=True, within="[1, inf)")
    """Blocks in the sequence model (backbone models)."""
    channel_mode: str = param("independent", result=True, choices=CHANNEL_MODES)
    """Backbone models: independent (one sequence per channel) or mixing (channels embedded together)."""
    patch_len: int = param(16, result=True, within="[1, inf)")
    """Backbone models: time steps per backbone token (non-overlapping patches; 1 = one per step)."""
    skip: bool = param(True, result=True)
    """Backbone models: add a linear path from the whole normalised window to the forecast."""
    dropout: float = param(0.0, result=True, within="[0, 1)")
    """Dropout of the SequenceForecaster head."""
    streaming: bool = param(False, result=True, missing_as=False)
    """Backbone models made for streaming: running statistics over the last ~`window` rows
    instead of RevIN per window, trained on forecasts at every patch end of
    `stream_length`-row sequences (aaren with its learned decay), and scored as one stream over
    the whole file (every validation and test forecast made after the rows before it, from the
    file's first row on). `rlts forecast stream` then advances them by one step per row."""
    stream_length: int = param(256, result=True, within="[2, inf)", missing_as=256)
    """Streaming models: rows per training sequence; the forecasts after its first `window`
    rows are trained."""
    train: TrainConfig = param(default_factory=TrainConfig, result=True)
    """Trainer settings (train.epochs, train.lr, train.patience, ...); train.seed and
    train.device are replaced by the top-level seed and device."""
    levels: List[float] = param(default_factory=lambda: [80.0, 95.0], within="(0, 100)")
    """Central intervals, in %, around every forecast: split-conformal, per horizon step and
    channel, from the absolute errors on the validation windows (at most max_val_windows); their
    coverage of the test values is reported and forecast.csv holds their bounds."""
    benchmark: bool = param(True, result=True, missing_as=True)
    """Score every test window (the TSLib protocol: MSE and MAE on the scaled values, and MAE,
    RMSE, sMAPE, MASE and the intervals' coverage in the file's units); false: only train and
    write forecast.csv, for users who want the forecast alone."""
    recalibrate_every: int = param(24, within="[1, inf)")
    """The test scores of recent-error intervals (wql_recent, coverage_<L>_recent: conformal
    half-widths from the latest errors known at each forecast) re-rank those errors every this
    many test windows."""
    aci_gamma: float = param(0.002, within="[0, inf)")
    """Step of the adaptive level of recent-error intervals (adaptive conformal inference,
    `rlts.metrics.rolling_conformal`): after each window whose truth is known, the level moves
    by gamma times the gap between its miss rate and the nominal one. Scored as wql_recent and
    coverage_<L>_recent, and used for forecast.csv's intervals; 0: a fixed level."""
    season: Optional[int] = param(None, within="[1, inf)")
    """Seasonal period of MASE's seasonal naive scale; default from the dates' frequency
    (hourly: 24, 15 minutes: 96, daily: 7, weekly: 52, monthly: 12), 1 without dates."""
    eval_batch_size: int = param(256, within="[1, inf)")
    """Windows per batch when computing the test metrics."""
    max_train_windows: Optional[int] = param(None, result=True, within="[1, inf)")
    """Use at most this many training windows (evenly spaced; for quick runs); None: all."""
    max_val_windows: Optional[int] = param(None, result=True, within="[1, inf)")
    """Use at most this many validation windows (evenly spaced); None: all. Test: always all."""
    out: Optional[str] = None
    """Output folder; default runs/forecast-<csv stem>-<timestamp>. Reuse it to resume."""
    seed: int = param(0, result=True)
    """Seeds model initialisation and training."""
    seeds: int = param(1, result=True, within="[1, inf)", missing_as=1)
    """Runs per model and horizon, with seeds seed, seed + 1, ..., seed + seeds - 1 (each run is
    exactly what `--seed S` alone gives); the table reports their mean MSE and MAE with the
    sample standard deviations, results.json every run."""
    device: str = "auto"
    """auto, cpu, cuda or cuda:N."""
    plots: bool = True
    """Write predictions.png (a few test windows, truth vs forecast, one panel per model)."""


# ----------------------------------------------------------------------------- helpers


def resolve_models(cfg) -> List[str]:
    """The model names to run, `backbone` replaced, duplicates dropped; ValueError on unknown ones."""
    return _resolve_models(cfg.models, cfg.backbone, BASELINES)


def check_config(cfg: ForecastConfig) -> None:
    """ValueErrors for settings that cannot work, before anything is read or written."""
    check_ranges(cfg)
    check_train_config(cfg.train, "train")
    if not cfg.csv:
        raise ValueError("no CSV file given; pass --csv FILE")
    if cfg.patch_len > cfg.window:
        raise ValueError(f"patch_len must lie in [1, window] = [1, {cfg.window}], got {cfg.patch_len}")
    if cfg.streaming and cfg.stream_length < cfg.window:
        raise ValueError(f"stream_length ({cfg.stream_length}) must be at least the window ({cfg.window}): the "
                         "forecasts after a sequence's first `window` rows are trained")
    if not cfg.horizons:
        raise ValueError("horizons must be a non-empty list of positive integers")
    resolve_models(cfg)
    select_device(cfg.device)


def _subsample(data: WindowDataset, limit: Optional[int]):
    if limit is None or len(data) <= limit:
        return data
    idx = np.unique(np.linspace(0, len(data) - 1, limit).round().astype(int))
    return Subset(data, idx.tolist())


def build_model(name: str, cfg: ForecastConfig, n_channels: int, horizon: int,
                target_index: Optional[int], season: int = 1) -> nn.Module:
    if name == "naive":
        return NaiveForecaster(horizon, target_index=target_index)
    if name == "snaive":
        return SeasonalNaiveForecaster(horizon, season, target_index=target_index)
    if name == "linear":
        return DLinear(cfg.window, horizon, n_channels, target_index=target_index)
    stream = {"running_span": cfg.window, **({"decay": True} if name == "aaren" else {})} if cfg.streaming else {}
    return SequenceForecaster(n_channels, horizon, backbone=name, d_model=cfg.d_model, n_layers=cfg.n_layers,
                              channel_mode=cfg.channel_mode, target_index=target_index, dropout=cfg.dropout,
                              patch_len=cfg.patch_len, skip_window=cfg.window if cfg.skip else None, **stream)


def is_streaming(model: nn.Module) -> bool:
    """A model made for streaming (running statistics): its forecasts come from one stream."""
    return getattr(model, "running_span", None) is not None


def window_rows(data) -> np.ndarray:
    """The last row of every window of `data` (a WindowDataset or a Subset of one), in order."""
    base, idx = (data.dataset, np.asarray(data.indices)) if isinstance(data, Subset) else (data, np.arange(len(data)))
    return base.starts[idx] + base.window - 1


@torch.no_grad()
def streamed(model: nn.Module, inputs: torch.Tensor, rows: np.ndarray, device: torch.device) -> torch.Tensor:
    """Forecasts (N, H, C_out) of a model made for streaming after each of `rows` (N >= 1), from
    one stream over `inputs` (T, C_in) (all rows from the file's first on): one parallel pass
    per patch phase over the rows up to the last of `rows`."""
    model.eval()
    x = inputs[:int(rows.max()) + 1].unsqueeze(0).to(device)
    return model.forecast_sequence(x, rows.tolist())[0]


def forecast_batches(model: nn.Module, data, batch_size: int, device: torch.device,
                     inputs: Optional[torch.Tensor] = None):
    """(forecast, truth) batches over every window of `data`, in order, on `device`: the model
    on each window, or, for a model made for streaming, its forecasts after each window's last
    row from one stream over `inputs` (T, C_in), the file's rows from the first (in batches of
    at least STREAM_BATCH windows: each batch runs the stream over the rows up to its last)."""
    model.eval()
    rows = window_rows(data) if is_streaming(model) else None
    if rows is not None:
        batch_size = max(batch_size, STREAM_BATCH)
    offset = 0
    for x, y in DataLoader(data, batch_size=batch_size, shuffle=False):
        y = y.to(device)
        if rows is None:
            with torch.no_grad():
                y_hat = model(x.to(device))
        else:
            y_hat = streamed(model, inputs, rows[offset:offset + len(y)], device)
        offset += len(y)
        yield y_hat, y


class Units(NamedTuple):
    """The forecast channels' scaler statistics and MASE scales: scaled values -> file units."""

    mean: np.ndarray
    """(C,) mean of each forecast channel on the train rows."""
    std: np.ndarray
    """(C,) standard deviation of each forecast channel on the train rows."""
    mase_scale: np.ndarray
    """(C,) mean absolute error of the seasonal naive forecast on the train rows (file units)."""

    def __call__(self, y: np.ndarray) -> np.ndarray:
        return y * self.std + self.mean


@torch.no_grad()
def evaluate_windows(model: nn.Module, data: WindowDataset, batch_size: int, device: torch.device,
                     keep: Optional[List[int]] = None, units: Optional[Units] = None,
                     quantiles: Optional[Dict[str, Dict[float, np.ndarray]]] = None, collect: bool = False,
                     inputs: Optional[torch.Tensor] = None):
    """MSE and MAE over every element of every window of `data` (float64 sums, scaled values),
    the forecasts of the windows listed in `keep`, and a dict of what else is asked (needs
    `units`): MAE, RMSE, sMAPE and MASE in the file's units ("units"), and for each method of
    `quantiles` ({method: {tau: (H, C) offset from the forecast, scaled}}) its weighted
    quantile loss and the coverage of its central intervals in the file's units ("quantiles");
    with `collect`, every window's forecast and truth, (N, H, C) float32 scaled ("windows").
    A model made for streaming forecasts from one stream over `inputs` (`forecast_batches`)."""
    sq = ab = 0.0
    count = 0
    kept: Dict[int, np.ndarray] = {}
    keep_set = set(keep or [])
    offset = 0
    in_units = MetricSums(units.mase_scale) if units is not None else None
    qsums = {m: QuantileLossSums(q) for m, q in (quantiles or {}).items()} if units is not None else {}
    collected: List[tuple] = []
    for y_hat, y in forecast_batches(model, data, batch_size, device, inputs):
        if y_hat.shape != y.shape:
            raise ValueError(f"the model's forecast has shape {tuple(y_hat.shape)}, the target {tuple(y.shape)}")
        err = (y_hat - y).double()
        known = ~torch.isnan(err)                   # NaN truth: a series that does not cover the window
        err = torch.where(known, err, torch.zeros_like(err))
        sq += float((err * err).sum())
        ab += float(err.abs().sum())
        count += int(known.sum())
        if in_units is not None:
            y_np, f_np = y.double().cpu().numpy(), y_hat.double().cpu().numpy()   # (B, H, C), scaled
            in_units.add(units(y_np), units(f_np))
            for method, sums in qsums.items():
                sums.add(units(y_np), {t: units(f_np + off) for t, off in quantiles[method].items()})
        if collect:
            collected.append((y_hat.float().cpu().numpy(), y.float().cpu().numpy()))
        for i in range(y.shape[0]):
            if offset + i in keep_set:
                kept[offset + i] = y_hat[i].cpu().numpy()
        offset += y.shape[0]
    extra: dict = {}
    if in_units is not None:
        extra["units"] = in_units.values()
        extra["quantiles"] = {m: sums.values() for m, sums in qsums.items()}
    if collect:
        extra["windows"] = tuple(np.concatenate(part) for part in zip(*collected))
    return sq / count, ab / count, kept, extra


def symmetric_offsets(half: Dict[float, np.ndarray]) -> Dict[float, np.ndarray]:
    """{tau: offset from the forecast} of central intervals with half-widths {level in %: array}:
    -half at (1 - level) / 2, +half at (1 + level) / 2, and 0 at the median."""
    out = {0.5: np.zeros_like(next(iter(half.values())))}
    for level, h in half.items():
        low = round((1.0 - float(level) / 100.0) / 2.0, 10)
        out[low], out[round(1.0 - low, 10)] = -h, h
    return out


def recent_interval_scores(err_known: np.ndarray, forecast: np.ndarray, truth: np.ndarray, units: Units,
                           levels: List[float], lag: int, every: int, gamma: float) -> Dict[str, float]:
    """Coverage and weighted quantile loss of conformal intervals that follow the test stream
    (`forecast`, `truth`: (N, H, C) scaled, in time order): each test window's half-widths come
    from the latest len(err_known) absolute errors known at its origin (the validation
    windows', then the test windows' whose targets it has seen), ranked at a level that adapts
    to the misses seen so far with step `gamma` (`rlts.metrics.rolling_conformal`, re-ranked
    every `every` windows), as a forecaster that recalibrates on its recent errors would have
    them. Keys: wql_recent, coverage_<L>_recent."""
    half = {lv: rolling_conformal(err_known, truth - forecast, lv / 100, lag, len(err_known), every, gamma).half
            for lv in levels}
    sums = QuantileLossSums(interval_taus(levels))
    for part in np.array_split(np.arange(len(forecast)), max(1, len(forecast) // 512)):
        f = forecast[part].astype(np.float64)
        offsets = symmetric_offsets({lv: h[part] for lv, h in half.items()})
        sums.add(units(truth[part].astype(np.float64)), {t: units(f + off) for t, off in offsets.items()})
    return {f"{k}_recent": v for k, v in sums.values().items()}


def future_half_widths(model: nn.Module, values: torch.Tensor, inputs: torch.Tensor, table, n_rows: int, size: int,
                       h: int, cfg: ForecastConfig, device: torch.device,
                       fallback: Dict[float, np.ndarray]) -> Dict[float, np.ndarray]:
    """The half-widths (H, C_out), scaled, of the intervals of the forecast after the file's
    end: the conformal rank of the file's latest `size` window errors whose truth is known, at
    the level the adaptive intervals reach after a stream of the 2 * `size` windows before the
    end (`rolling_conformal`, step cfg.aci_gamma; the `size` windows before that calibrate its
    start). A series that ends before these windows keeps its `fallback` half-widths."""
    latest = WindowDataset(values, cfg.window, h, max(0, n_rows - (3 * size + cfg.window + h - 1)), n_rows,
                           input_columns=table.input_columns, target_columns=table.target_columns)
    err = errors(model, latest, cfg.eval_batch_size, device, inputs)
    start = max(1, len(err) - 2 * size)
    out = {}
    for level in cfg.levels:
        adapted = rolling_conformal(err[:start], err[start:], level / 100, h, size, cfg.recalibrate_every,
                                    cfg.aci_gamma).next_level
        q = conformal_quantiles(np.abs(err[-size:]), min(max(adapted, 1e-9), 1 - 1e-9))
        out[level] = np.where(np.isnan(q), fallback[level], q)
    return out


def errors(model: nn.Module, data, batch_size: int, device: torch.device,
           inputs: Optional[torch.Tensor] = None) -> np.ndarray:
    """truth - forecast of every window of `data`, (N, H, C) float64, scaled values: the
    calibration sample of the intervals (`forecast_batches` makes the forecasts)."""
    return np.concatenate([(y - y_hat).double().cpu().numpy()
                           for y_hat, y in forecast_batches(model, data, batch_size, device, inputs)])


def quantile_offsets(err: np.ndarray, half: Dict[float, np.ndarray]) -> Dict[str, Dict[float, np.ndarray]]:
    """Offsets from the forecast (scaled) of the quantiles of the central intervals of the
    levels of `half` and the median, from calibration errors `err` (N, H, C), by three methods:
    conformal (`half`, the split-conformal half-widths of |err|: what forecast.csv uses),
    gaussian (a normal with the errors' root mean square per step and column) and empirical
    (the errors' own quantiles, as a seasonal naive forecaster with empirical residual
    quantiles has)."""
    taus = interval_taus(list(half))
    rms = np.sqrt(np.nanmean(err ** 2, axis=0))                              # (H, C); NaN: no window
    return {
        "conformal": symmetric_offsets(half),
        "gaussian": {t: NormalDist().inv_cdf(t) * rms for t in taus},
        "empirical": {t: np.nanquantile(err, t, axis=0) for t in taus},
    }


@torch.no_grad()
def future_forecast(model: nn.Module, inputs: torch.Tensor, window: int, ends: List[int],
                    device: torch.device) -> np.ndarray:
    """The forecast (H, C_out), scaled, of each forecast column after its own last row
    `ends[j]` - 1: from the `window` rows before it (missing values of other series 0), or,
    for a model made for streaming, from one stream over every row of `inputs` (T, C_in)."""
    model.eval()
    if is_streaming(model):
        return streamed(model, inputs, np.array([ends[0] - 1]), device)[0].double().cpu().numpy()
    out = None
    for end in sorted(set(ends)):
        x = torch.nan_to_num(inputs[end - window:end], nan=0.0).unsqueeze(0).to(device)   # (1, L, C_in)
        y = model(x)[0].double().cpu().numpy()                                           # (H, C_out)
        out = np.empty_like(y) if out is None else out
        cols = [j for j, e in enumerate(ends) if e == end]
        out[:, cols] = y[:, cols]
    return out


def series_ends(table, n_rows: int) -> List[int]:
    """One past the last row of each forecast column: its own end in a long table whose series
    cover different times, else the file's."""
    return [table.spans[c][1] if table.spans else n_rows for c in table.target_columns]


def check_spans(table, cfg: ForecastConfig, borders: Dict[int, dict]) -> None:
    """A long table whose series cover different times: every series long enough, with a window
    in the training and validation rows, and no streaming model; one ValueError naming the
    series otherwise."""
    if not table.spans:
        return
    if cfg.streaming:
        raise ValueError(f"{table.path}: its series cover different times; --streaming needs series that cover "
                         "the same times")
    when = (lambda i: str(table.dates[i])) if table.dates is not None else (lambda i: f"row {i + 1}")
    for h, b in borders.items():
        need = cfg.window + h
        for c in table.target_columns:
            first, end = table.spans[c]
            name = table.columns[c]
            if end - first < need:
                raise ValueError(f"{table.path}: series {name!r} has {end - first} time steps ({when(first)} to "
                                 f"{when(end - 1)}); a window and its horizon need window + horizon = {need}")
            for part in ("train", "val"):
                lo, hi = b[part]
                if min(hi, end) - max(lo, first) < need:
                    raise ValueError(f"{table.path}: series {name!r} ({when(first)} to {when(end - 1)}) has no window "
                                     f"of window + horizon = {need} steps in the {part} rows ({when(lo)} to "
                                     f"{when(hi - 1)}); the split is by time over all series")


def _table_rows(results: dict, models: List[str], horizons: List[int], levels: List[str]) -> List[dict]:
    entries = [(m, h, results.get(m, {}).get(str(h))) for m in models for h in horizons]
    entries = [(m, h, r) for m, h, r in entries if r is not None]
    several = any("runs" in r for _, _, r in entries)
    rows = []
    for m, h, r in entries:
        row = {"model": m, "horizon": h, "mse": "-" if r.get("mse") is None else r["mse"]}
        if several:
            row["mse_std"] = r.get("mse_std", "-")
        row["mae"] = "-" if r.get("mae") is None else r["mae"]
        if several:
            row.update(mae_std=r.get("mae_std", "-"), seeds=len(r.get("runs", [r])))
        row.update({k: "-" if r.get(k) is None else r[k] for k in ("mase", "smape")})
        row.update({k: "-" if r.get(k) is None else r[k]
                    for k in (*levels, "wql", "wql_gaussian", "wql_empirical", *(f"{c}_recent" for c in levels),
                              "wql_recent")})
        row.update(params=r["params"], train_time_s=r["train_time_s"])
        rows.append(row)
    return rows


# ----------------------------------------------------------------------------- the run


def run_forecast(cfg: ForecastConfig, log=print) -> dict:
    """Run every (model, horizon) pair not yet in `out`/results.json; return the results dict."""
    check_config(cfg)
    models = resolve_models(cfg)
    horizons = list(dict.fromkeys(cfg.horizons))
    table = load_csv(cfg.csv, target=cfg.target, date_column=cfg.date_column, features=cfg.features,
                     fill=cfg.fill, date_format=cfg.date_format, id_column=cfg.id_column, value_column=cfg.value_column)
    n_rows, n_channels = table.values.shape
    # Validate every horizon's splits before writing anything.
    all_borders = {h: split_borders(n_rows, cfg.window, cfg.protocol, path=table.path, horizon=h, ratios=cfg.split)
                   for h in horizons}
    borders = all_borders[horizons[0]]  # the ranges do not depend on the horizon
    protocol = protocol_for(table.path) if cfg.protocol == "auto" else cfg.protocol

    check_spans(table, cfg, all_borders)
    if cfg.streaming:
        for h, b in all_borders.items():
            for part in ("train", "val"):
                have = b[part][1] - b[part][0]
                if have < cfg.stream_length + h:
                    raise ValueError(f"--stream_length {cfg.stream_length}: the {part} rows ({have}) hold no training "
                                     f"sequence of stream_length + horizon = {cfg.stream_length + h} rows; lower it")
    scaler = StandardScaler().fit(table.values[slice(*borders["train"])])
    values = torch.from_numpy(scaler.transform(table.values).astype(np.float32))
    inputs = values[:, table.input_columns]                                           # (T, C_in), scaled
    target_index = table.target_index if cfg.features == "MS" else None
    # Index of the target within a forecast's channels (M: all columns; S/MS: one).
    target_out = table.target_index if cfg.features == "M" else 0
    device = select_device(cfg.device)
    out_cols = table.target_columns
    season = cfg.season or season_length(table.dates)
    if "snaive" in models and season > cfg.window:
        raise ValueError(f"snaive repeats the last season ({season} steps), longer than the window ({cfg.window}); "
                         "raise --window or set --season")
    units = Units(scaler.mean[out_cols], scaler.std[out_cols],
                  seasonal_scale(table.values[slice(*borders["train"])][:, out_cols], season))

    rows = {"train": borders["train"][1] - borders["train"][0],
            "val": borders["val"][1] - borders["val"][0] - cfg.window,
            "test": borders["test"][1] - borders["test"][0] - cfg.window}
    protocol_entry = {
        "name": protocol,
        "description": (
            "Time-Series-Library long-term forecasting protocol: chronological "
            + ("12/4/4-month split (ETT)" if protocol.startswith("ett")
               else "/".join(f"{100 * r:g}" for r in cfg.split) + " % split")
            + f"; val and test ranges start window={cfg.window} rows before their split point; "
            "StandardScaler fitted on the train rows only; every stride-1 window is one example; "
            "MSE and MAE on the scaled values, averaged over every element of every test window"),
        "features": cfg.features,
        "columns": table.columns,
        "target": table.target,
        "n_rows": n_rows,
        "rows": rows,
        "ranges": {k: list(v) for k, v in borders.items()},
        "scaler": scaler.to_dict(),
    }
    run = GridRun(cfg, "forecast", Path(cfg.csv).stem, file_keys=("csv",), header={"protocol": protocol_entry},
                  log=log)
    out = run.out

    metrics = ("mse", "mae", "mae_units", "rmse_units", "smape", "mase", *(f"coverage_{x:g}" for x in cfg.levels),
               "wql", "wql_gaussian", "wql_empirical", "wql_recent",
               *(f"coverage_{x:g}_{m}" for m in ("gaussian", "empirical", "recent") for x in cfg.levels))

    def train_and_test(name: str, h: int, data: tuple, plot_idx: List[int], seed: int, run_dir: Path) -> dict:
        """One model trained (resumed) with one seed and scored on every test window; at the
        first horizon, the first seed's forecasts of the plotted windows go to the job's
        samples.json (for predictions.png)."""
        train_ds, val_ds, test_ds, seq_data = data
        samples_dir = out / f"{name}-h{h}" if h == horizons[0] and seed == run.seeds[0] else None
        seed_everything(seed)
        model = build_model(name, cfg, n_channels, h, target_index, season)
        n_params = count_parameters(model)
        stream = is_streaming(model)
        fit = {"epochs": 0, "best_val_loss": None, "early_stopped": False, "train_time_s": 0.0}
        if name not in PARAMETER_FREE:
            resumed = (run_dir / "checkpoints").exists() and any((run_dir / "checkpoints").iterdir())
            log(f"[{'resume' if resumed else 'train'}] {name} h={h} ({n_params} parameters" + run.seed_note(seed) + ")")
            train_cfg = TrainConfig(**{**to_dict(cfg.train), "seed": seed, "device": cfg.device})
            if stream:   # sequences of stream_length rows, a forecast after each patch end past the burn-in
                trainer = Trainer(model, partial(sequence_forecast_loss, burn_in=cfg.window), train_cfg,
                                  run_dir=run_dir)
                fit = trainer.fit(_subsample(seq_data[0], cfg.max_train_windows),
                                  _subsample(seq_data[1], cfg.max_val_windows))
            else:
                trainer = Trainer(model, forecast_loss, train_cfg, run_dir=run_dir)
                fit = trainer.fit(_subsample(train_ds, cfg.max_train_windows), _subsample(val_ds, cfg.max_val_windows))
            model = trainer.model
        else:
            model = model.to(device)
        train_time = fit["train_time_s"]  # summed over interrupted runs
        err = errors(model, _subsample(val_ds, cfg.max_val_windows), cfg.eval_batch_size, device, inputs)
        half = {level: conformal_quantiles(np.abs(err), level / 100) for level in cfg.levels}   # scaled
        offsets = quantile_offsets(err, half)
        scores: dict = {}
        if cfg.benchmark:
            mse, mae, kept, extra = evaluate_windows(model, test_ds, cfg.eval_batch_size, device, plot_idx, units,
                                                     offsets, collect=True, inputs=inputs)
            if samples_dir is not None:
                samples_dir.mkdir(parents=True, exist_ok=True)
                samples = {"windows": plot_idx, "forecast": [kept[i][:, target_out].tolist() for i in plot_idx]}
                (samples_dir / "samples.json").write_text(json.dumps(samples))
            recent = recent_interval_scores(err, *extra["windows"], units, cfg.levels, lag=h,
                                            every=cfg.recalibrate_every, gamma=cfg.aci_gamma)
            u, q = extra["units"], extra["quantiles"]
            cov = {k[len("coverage_"):]: v for k, v in q["conformal"].items() if k.startswith("coverage_")}
            scores = {"mse": mse, "mae": mae, "mae_units": u["mae"], "rmse_units": u["rmse"], "smape": u["smape"],
                      "mase": u["mase"], **{f"coverage_{k}": c for k, c in cov.items()}, "wql": q["conformal"]["wql"],
                      **{f"{key}_{m}": v for m in ("gaussian", "empirical") for key, v in q[m].items()}, **recent}
            log(f"[done] {name} h={h}: mse {mse:.4f} mae {mae:.4f}, in the file's units mae {u['mae']:.4g} mase "
                f"{u['mase']:.3f}" + "".join(f", {k} % interval covers {100 * c:.1f} %" for k, c in cov.items())
                + f" ({train_time:.1f} s" + run.seed_note(seed) + ")")
        else:
            log(f"[done] {name} h={h}: trained, test split not scored ({train_time:.1f} s" + run.seed_note(seed) + ")")
        run_dir.mkdir(parents=True, exist_ok=True)
        future = future_forecast(model, inputs, cfg.window, series_ends(table, n_rows), device)   # (H, C_out)
        half_future = future_half_widths(model, values, inputs, table, n_rows, len(err), h, cfg, device, half)
        write_json_atomic({"forecast": units(future).tolist(),
                           "half_widths": {f"{k:g}": (v * units.std).tolist() for k, v in half_future.items()}},
                          run_dir / FUTURE_FILE)
        return {**{m: None for m in metrics}, **scores,
                "params": n_params, "train_time_s": round(train_time, 3),
                "epochs": fit["epochs"],
                "best_val_loss": json_float(fit["best_val_loss"]) if fit["best_val_loss"] is not None else None,
                "early_stopped": fit["early_stopped"], "n_train_windows": len(train_ds),
                "n_train_windows_used": min(len(train_ds), cfg.max_train_windows or len(train_ds)),
                "n_val_windows": len(val_ds), "n_test_windows": len(test_ds)}

    for h in horizons:
        b = all_borders[h]
        cols = dict(input_columns=table.input_columns, target_columns=table.target_columns)
        train_ds = WindowDataset(values, cfg.window, h, *b["train"], **cols)
        val_ds = WindowDataset(values, cfg.window, h, *b["val"], **cols)
        test_ds = WindowDataset(values, cfg.window, h, *b["test"], **cols)
        seq_data = tuple(WindowDataset(values, cfg.stream_length, h, *b[part], **cols)
                         for part in ("train", "val")) if cfg.streaming else None
        plot_idx = np.unique(np.linspace(0, len(test_ds) - 1, PLOT_WINDOWS).round().astype(int)).tolist()
        for name in models:
            run.job(name, str(h), f"{name} h={h}", folder=f"{name}-h{h}", metrics=metrics,
                    run_one=partial(train_and_test, name, h, (train_ds, val_ds, test_ds, seq_data), plot_idx))

    stored_horizons = sorted({int(h) for r in run.results.values() for h in r})
    md = run.finish(_table_rows(run.results, table_order(models, run.results), table_order(horizons, stored_horizons),
                                [f"coverage_{level:g}" for level in cfg.levels]))
    futures = {m: job_futures(out, m, horizons[0]) for m in table_order(models, run.results)}
    futures = {m: f for m, f in futures.items() if f}      # a job folder without future.json is left out
    if futures:
        write_future(out / "forecast.csv", [table.columns[c] for c in table.target_columns],
                     future_dates(table, horizons[0]), cfg.levels, futures)
        log(f"[forecast] the next {horizons[0]} steps after the file's last row: {out / 'forecast.csv'}")
    if cfg.plots:
        plot_predictions(out / "predictions.png", table, scaler, cfg.window, horizons[0], all_borders[horizons[0]],
                         {m: out / f"{m}-h{horizons[0]}" / "samples.json"  # earlier runs' models too
                          for m in table_order(models, run.results)})
    log(md)
    return run.state


def future_dates(table, horizon: int) -> List[list]:
    """Per forecast column, the dates (or row numbers) of the `horizon` steps after its last row."""
    ends = series_ends(table, len(table))
    return [future_index(table.dates[:e] if table.dates is not None else None, e, horizon) for e in ends]


def write_future(path: Path, columns: List[str], ds: List[list], levels: List[float],
                 futures: Dict[str, List[dict]]) -> None:
    """A forecast table: one row per forecast column and step (unique_id = the column, ds = its
    date or row number, `ds[j]` for column j), a column per model with its forecast (the mean over its seeds; with
    several, <model>-std is their spread) and, per interval level L, <model>-lo-L and
    <model>-hi-L (the seeds' mean half-width around it); all in the file's units."""
    import pandas as pd

    from rlts.checkpoint import write_text_atomic

    horizon = len(ds[0])
    frame = pd.DataFrame({"unique_id": np.repeat(columns, horizon), "ds": [d for column in ds for d in column]})
    for model, runs in futures.items():
        f = np.mean([np.asarray(r["forecast"]) for r in runs], axis=0)           # (H, C_out)
        frame[model] = f.T.reshape(-1)
        if len(runs) > 1:
            frame[f"{model}-std"] = np.std([np.asarray(r["forecast"]) for r in runs], axis=0, ddof=1).T.reshape(-1)
        half = {lv: np.mean([np.asarray(r["half_widths"][f"{lv:g}"]) for r in runs], axis=0)
                for lv in levels if all(f"{lv:g}" in r["half_widths"] for r in runs)}
        for lv in sorted(half, reverse=True):
            frame[f"{model}-lo-{lv:g}"] = (f - half[lv]).T.reshape(-1)
        for lv in sorted(half):
            frame[f"{model}-hi-{lv:g}"] = (f + half[lv]).T.reshape(-1)
    write_text_atomic(frame.to_csv(index=False, float_format="%.7g"), path)


def job_futures(out: Path, model: str, horizon: int) -> List[dict]:
    """The future.json of every run of a job (one per seed), [] when it has none."""
    job = out / f"{model}-h{horizon}"
    files = [job / FUTURE_FILE] if (job / FUTURE_FILE).exists() else sorted(job.glob(f"seed*/{FUTURE_FILE}"))
    return [json.loads(p.read_text()) for p in files]


def plot_predictions(path: Path, table, scaler: StandardScaler, window: int, horizon: int, borders: dict,
                     samples: Dict[str, Path]) -> None:
    """One row of panels per model, one column per sampled test window: the input's last
    part, the true future and the forecast of the target column, in the file's units, against
    the file's dates (row numbers without dates)."""
    from matplotlib.figure import Figure

    loaded = {m: json.loads(p.read_text()) for m, p in samples.items() if p.exists()}
    if not loaded:
        return
    windows = next(iter(loaded.values()))["windows"]
    fig = Figure(figsize=(4 * len(windows), 2.6 * len(loaded)))
    axes = fig.subplots(len(loaded), len(windows), squeeze=False)
    t = table.target_index
    series = table.values[:, t]
    when = np.asarray(table.dates) if table.dates is not None else np.arange(len(table))
    start = borders["test"][0]
    context = min(window, 2 * horizon)
    for r, (model, data) in enumerate(loaded.items()):
        for c, (w, forecast) in enumerate(zip(data["windows"], data["forecast"])):
            ax = axes[r][c]
            s = start + w
            past, future = slice(s + window - context, s + window), slice(s + window, s + window + horizon)
            ax.plot(when[past], series[past], color="0.5", lw=1, label="input")
            ax.plot(when[future], series[future], color="k", lw=1.2, label="truth")
            if not np.isnan(series[past.start:future.stop]).any():   # a series that covers the window
                ax.plot(when[future], np.asarray(forecast) * scaler.std[t] + scaler.mean[t], color="tab:red", lw=1.2,
                        label="forecast")
            ax.set_title(f"{model} | test window {w}", fontsize=9)
            ax.tick_params(axis="x", labelsize=7, labelrotation=30)
            if c == 0:
                ax.set_ylabel(table.target)
    axes[0][0].legend(fontsize=8, loc="best")
    fig.suptitle(f"{table.path.name}: horizon {horizon}, window {window}", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=90)


# ----------------------------------------------------------------------------- CLI

ALIASES = {"--horizon": "--horizons", "--model": "--models", "--time_column": "--date_column", **TRAIN_ALIASES}
"""Short spellings accepted by `rlts forecast` for the config keys."""

COMMANDS = (Command("forecast", ForecastConfig, "forecast.yaml", run_forecast, aliases=ALIASES, lists=("models",),
                    help="train and evaluate forecasters on a CSV series (TSLib long-term protocol)",
                    usage="rlts forecast --csv FILE [--key value ...] [--config NAME]",
                    stem=lambda cfg: Path(cfg.csv).stem),)


def parse_forecast_config(argv: List[str]) -> ForecastConfig:
    return COMMANDS[0].parse(argv)
