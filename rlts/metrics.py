"""Forecast metrics in a series' own units and split-conformal intervals, on numpy arrays.

    m = point_metrics(y, y_hat, scale)           # MAE, RMSE, sMAPE (%), MASE over every element
    q = conformal_quantiles(abs_residuals, 0.8)  # (H, C): half-width per horizon step and channel
    coverage(y, y_hat - q, y_hat + q)            # share of elements inside

Arrays are (N, H, C): N forecast windows, H horizon steps, C channels. MASE divides each
channel's absolute errors by its `scale`, the mean absolute error of the seasonal naive
forecast on the training rows (`seasonal_scale`), so 1 means "as good as repeating the last
season".

A NaN in the truth marks an element that does not exist (a series that does not cover that
window): every sum, rank and share here leaves those elements out.
"""
from __future__ import annotations

import math
from typing import Dict, NamedTuple, Optional

import numpy as np


def seasonal_scale(train: np.ndarray, season: int) -> np.ndarray:
    """(C,): mean |y_t - y_{t-season}| of each column of `train` (T, C), the MASE denominator;
    a column without change (or too short) gets 1 so its MASE is its MAE."""
    train = np.asarray(train, dtype=np.float64)
    if season < 1:
        raise ValueError(f"season must be at least 1, got {season}")
    if train.shape[0] <= season:
        return np.ones(train.shape[1])
    diff = np.abs(train[season:] - train[:-season])
    count = np.isfinite(diff).sum(axis=0)
    scale = np.where(count > 0, np.nansum(diff, axis=0) / np.maximum(count, 1), 0.0)
    return np.where(scale > 0, scale, 1.0)


class MetricSums:
    """Running sums over batches of windows (float64), so that a whole test split never needs
    to be held at once: add(y, y_hat) per batch, then values()."""

    def __init__(self, scale: Optional[np.ndarray] = None):
        self.scale = None if scale is None else np.asarray(scale, dtype=np.float64)
        self.abs = self.sq = self.smape = self.scaled = 0.0
        self.n = 0

    def add(self, y: np.ndarray, y_hat: np.ndarray) -> None:
        y, y_hat = np.asarray(y, dtype=np.float64), np.asarray(y_hat, dtype=np.float64)
        if y.shape != y_hat.shape:
            raise ValueError(f"forecast shape {y_hat.shape} differs from the truth's {y.shape}")
        if np.isnan(y).any():
            keep = ~np.isnan(y)
            y, y_hat = np.where(keep, y, 0.0), np.where(keep, y_hat, 0.0)     # contribute 0, not counted
            n = int(keep.sum())
        else:
            n = y.size
        err = np.abs(y_hat - y)
        denom = np.abs(y) + np.abs(y_hat)
        self.abs += float(err.sum())
        self.sq += float((err * err).sum())
        self.smape += float(np.where(denom > 0, 2.0 * err / np.where(denom > 0, denom, 1.0), 0.0).sum())
        if self.scale is not None:
            self.scaled += float((err / self.scale).sum())
        self.n += n

    def values(self) -> Dict[str, Optional[float]]:
        if self.n == 0:
            raise ValueError("no forecast to score")
        return {"mae": self.abs / self.n, "rmse": math.sqrt(self.sq / self.n), "smape": 100.0 * self.smape / self.n,
                "mase": self.scaled / self.n if self.scale is not None else None}


def point_metrics(y: np.ndarray, y_hat: np.ndarray, scale: Optional[np.ndarray] = None) -> Dict[str, Optional[float]]:
    """MAE, RMSE, sMAPE (in %, 0 where truth and forecast are both 0) and MASE (with the
    per-channel `scale` of `seasonal_scale`; None without it) over every element."""
    sums = MetricSums(scale)
    sums.add(y, y_hat)
    return sums.values()


def _rank_at(ranked: np.ndarray, n: np.ndarray, level: float) -> np.ndarray:
    """The ceil((n + 1) * level)-th smallest of `ranked` (sorted along axis 0, NaN last), per
    step and channel, clipped to [1, n]; NaN where n = 0."""
    k = np.clip(np.ceil((n + 1) * level).astype(int), 1, np.maximum(n, 1))
    out = np.take_along_axis(ranked, (k - 1)[None], axis=0)[0]
    return np.where(n > 0, out, np.nan)


def conformal_quantiles(abs_residuals: np.ndarray, level: float) -> np.ndarray:
    """Split-conformal half-widths: for each horizon step and channel the
    ceil((n + 1) * level)-th smallest of the n calibration windows' absolute residuals
    (N, H, C) -> (H, C), so that a new window's error lies within it with probability at least
    `level` when windows are exchangeable. With too few windows for the level, the largest.
    NaN residuals (windows a series does not cover) are left out: n is counted per step and
    channel, and a step and channel without any residual gets NaN."""
    r = np.asarray(abs_residuals, dtype=np.float64)
    if r.ndim != 3 or r.shape[0] == 0:
        raise ValueError(f"expected absolute residuals of shape (N >= 1, H, C), got {r.shape}")
    if not 0.0 < level < 1.0:
        raise ValueError(f"interval level must lie in (0, 1), got {level}")
    return _rank_at(np.sort(r, axis=0), (~np.isnan(r)).sum(axis=0), level)    # NaN sort last


def coverage(y: np.ndarray, lower: np.ndarray, upper: np.ndarray) -> float:
    """Share of the elements of `y` within [lower, upper] (NaN elements left out)."""
    y = np.asarray(y)
    inside = (y >= lower) & (y <= upper)
    return float(inside[~np.isnan(y)].mean())


def interval_taus(levels) -> list:
    """The quantile levels of central intervals of `levels` (in %) and the median:
    [80, 95] -> [0.025, 0.1, 0.5, 0.9, 0.975]."""
    taus = {0.5}
    for level in levels:
        low = (1.0 - float(level) / 100.0) / 2.0
        taus |= {round(low, 10), round(1.0 - low, 10)}
    return sorted(taus)


class QuantileLossSums:
    """Running sums of the weighted quantile loss over batches: for each quantile level tau,
    wQL_tau = 2 * sum |(y - q_tau) * (1{y <= q_tau} - tau)| / sum |y| (GluonTS), and their mean
    over the levels; plus the share of y inside each central interval (tau, 1 - tau)."""

    def __init__(self, taus):
        self.taus = sorted(float(t) for t in taus)
        self.loss = {t: 0.0 for t in self.taus}
        self.inside = {t: 0 for t in self.taus if t < 0.5 and round(1 - t, 10) in self.taus}
        self.scale = 0.0
        self.n = 0

    def add(self, y: np.ndarray, quantiles: Dict[float, np.ndarray]) -> None:
        """y (N, H, C) and {tau: quantile forecast of y's shape}."""
        y = np.asarray(y, dtype=np.float64)
        keep = ~np.isnan(y)
        for t in self.taus:
            q = np.asarray(quantiles[t], dtype=np.float64)
            self.loss[t] += float(np.abs((y - q) * ((y <= q) - t))[keep].sum())
        for t in self.inside:
            lo, hi = quantiles[t], quantiles[round(1 - t, 10)]
            self.inside[t] += int(((y >= lo) & (y <= hi))[keep].sum())
        self.scale += float(np.abs(y)[keep].sum())
        self.n += int(keep.sum())

    def values(self) -> Dict[str, float]:
        """{"wql": mean over the levels, "coverage_<L>": share inside the interval of level L %}."""
        if self.n == 0 or self.scale == 0:
            raise ValueError("no forecast to score (or only zeros)")
        out = {"wql": float(np.mean([2 * self.loss[t] / self.scale for t in self.taus]))}
        out.update({f"coverage_{100 * (1 - 2 * t):g}": n / self.n for t, n in self.inside.items()})
        return out


class RollingIntervals(NamedTuple):
    """What `rolling_conformal` gives."""

    half: np.ndarray
    """(N, H, C) half-widths of the stream's windows."""
    next_level: float
    """The level of the next forecast, once every stream window's error is known (the nominal
    level without adaptation)."""


def rolling_conformal(known: np.ndarray, stream: np.ndarray, level: float, lag: int, size: int,
                      every: int = 1, gamma: float = 0.0) -> RollingIntervals:
    """Split-conformal half-widths that follow a stream of forecasts: for stream window i, the
    `conformal_quantiles` of the latest `size` absolute errors known when it is forecast: those
    of `known` (N0, H, C: windows before the stream), then those of stream windows 0 .. i - lag
    (a window's error is known once its last target is: lag = H for stride-1 windows). The
    errors are re-ranked every `every` windows (window i uses the ranking made at the last
    multiple of `every` at or before it).

    With `gamma` > 0 the level adapts as in adaptive conformal inference with delayed feedback
    (Gibbs & Candes 2021): the miscoverage target alpha_i starts at 1 - level, and once window
    j's error is known (at window j + lag), alpha += gamma * ((1 - level) - miss_j), where miss_j
    is the share of window j's elements outside its half-widths; window i's half-widths are
    the ranks at level 1 - alpha_i (clipped to [0, 1]: the smallest or the largest error).
    So a stream that has been missed more than it should widens its intervals, and one that
    has been covered more narrows them. `next_level` is the level after the feedback of every
    stream window."""
    known, stream = np.abs(np.asarray(known, dtype=np.float64)), np.abs(np.asarray(stream, dtype=np.float64))
    if known.ndim != 3 or stream.ndim != 3 or known.shape[1:] != stream.shape[1:]:
        raise ValueError(f"expected errors (N, H, C) of one shape, got {known.shape} and {stream.shape}")
    if size < 1 or lag < 1 or every < 1:
        raise ValueError(f"size, lag and every must be at least 1, got {size}, {lag}, {every}")
    if not 0.0 < level < 1.0:
        raise ValueError(f"interval level must lie in (0, 1), got {level}")
    if gamma < 0:
        raise ValueError(f"gamma must be at least 0, got {gamma}")
    pool = np.concatenate([known, stream])
    out = np.empty_like(stream)
    target = alpha = 1.0 - level
    miss = np.full(len(stream), np.nan)                         # share of window i outside its interval

    def feedback(j: int) -> float:
        return alpha + gamma * (target - miss[j]) if gamma > 0 and not np.isnan(miss[j]) else alpha

    for i in range(len(stream)):
        if i % every == 0:
            end = len(known) + max(0, i - lag + 1)              # errors known at window i
            if end == 0:
                raise ValueError("no error is known before the first window; give errors of earlier windows")
            recent = pool[max(0, end - size):end]
            ranked, n = np.sort(recent, axis=0), (~np.isnan(recent)).sum(axis=0)
        if i >= lag:
            alpha = feedback(i - lag)
        out[i] = _rank_at(ranked, n, min(max(1.0 - alpha, 0.0), 1.0))
        exists = ~np.isnan(stream[i])
        if exists.any():
            miss[i] = float((stream[i][exists] > out[i][exists]).mean())
    for j in range(max(0, len(stream) - lag), len(stream)):    # the feedback still to come
        alpha = feedback(j)
    return RollingIntervals(out, min(max(1.0 - alpha, 0.0), 1.0))
