"""Statistics of Atari100k scores: human-normalised scores, the aggregate estimators of Agarwal
et al. 2021 ("Deep RL at the Edge of the Statistical Precipice", the definitions of their
`rliable` library), performance profiles and stratified-bootstrap confidence intervals.

    hns = human_normalized_score(score, random, human)       # (score - random) / (human - random)
    x = np.array(...)                                         # (n_runs, n_games) HNS
    iqm(x), optimality_gap(x)                                 # point estimates
    point, (low, high) = stratified_bootstrap_ci(x, iqm, reps=2000)

Estimators, on a score matrix `x` of shape (n_runs, n_games):
- mean: mean over games of the per-game mean over runs;
- median: median over games of the per-game mean over runs;
- IQM, interquartile mean: all n = n_runs * n_games scores pooled and sorted, k = floor(0.25 * n)
  removed at each end, the mean of the n - 2k left (scipy.stats.trim_mean(x.ravel(), 0.25)
  semantics: when 0.25 * n is not an integer, fewer than 25 % are cut on each side, no fractional
  weights);
- optimality gap: gamma - mean(min(x, gamma)) over all scores pooled, gamma = 1.
Games may also have different numbers of runs (a list of per-game 1-D arrays instead of a matrix):
the per-game means are then taken per game, and the pooled statistics (IQM, optimality gap,
performance profile) pool all scores, so games with more runs weigh more.

Confidence intervals: stratified bootstrap. Each of `reps` replicates draws, independently for
each game, as many runs as that game has, uniformly with replacement (strata = games), and
recomputes the statistic. The interval is the percentile interval: the alpha/2 and 1 - alpha/2
quantiles of the replicates, numpy.quantile's default linear interpolation (type 7). The point
estimate is the statistic of the observed scores, not a bootstrap average. With one run per game
a resample is the data itself: the interval collapses to the point.

Performance profile: for each threshold tau, the fraction of all scores (pooled over games)
strictly above tau.
"""
from __future__ import annotations

from typing import Callable, Dict, List, Sequence, Union

import numpy as np

GAMMA = 1.0
"""The optimality gap's target: the human score."""

Scores = Union[np.ndarray, Sequence[Sequence[float]]]
"""A (n_runs, n_games) matrix, or one sequence of scores per game (games may differ in runs)."""


def human_normalized_score(score, random: float, human: float):
    """HNS = (score - random) / (human - random): a float, or an array for an array."""
    if np.ndim(score):
        return (np.asarray(score, dtype=float) - random) / (human - random)
    return (float(score) - random) / (human - random)


def _columns(scores: Scores) -> List[np.ndarray]:
    """Per-game 1-D arrays of a (n_runs, n_games) matrix or of a list of per-game score lists."""
    if isinstance(scores, np.ndarray) and scores.ndim == 2:
        cols = [scores[:, j].astype(float) for j in range(scores.shape[1])]
    else:
        cols = [np.asarray(c, dtype=float).ravel() for c in scores]
    if not cols or any(c.size == 0 for c in cols):
        raise ValueError("scores need at least one game and at least one run per game")
    return cols


def _pooled(scores: Scores) -> np.ndarray:
    return np.concatenate(_columns(scores))


def trimmed_mean(x, proportion: float = 0.25) -> float:
    """Mean of the sorted values with k = floor(proportion * n) removed at each end
    (scipy.stats.trim_mean semantics)."""
    x = np.sort(np.asarray(x, dtype=float).ravel())
    n = x.size
    k = int(proportion * n)
    if 2 * k >= n:
        raise ValueError(f"trimming {k} of {n} values at each end leaves nothing")
    return float(x[k:n - k].mean())


def mean(scores: Scores) -> float:
    """Mean over games of the per-game mean over runs."""
    return float(np.mean([c.mean() for c in _columns(scores)]))


def median(scores: Scores) -> float:
    """Median over games of the per-game mean over runs."""
    return float(np.median([c.mean() for c in _columns(scores)]))


def iqm(scores: Scores) -> float:
    """Interquartile mean of all run x game scores pooled: trimmed_mean(pooled, 0.25)."""
    return trimmed_mean(_pooled(scores), 0.25)


def optimality_gap(scores: Scores, gamma: float = GAMMA) -> float:
    """gamma - mean(min(score, gamma)) over all run x game scores pooled."""
    return float(gamma - np.mean(np.minimum(_pooled(scores), gamma)))


AGGREGATES: Dict[str, Callable[[Scores], float]] = {
    "mean": mean, "median": median, "iqm": iqm, "optimality_gap": optimality_gap,
}
"""The aggregate estimators by name, in the order reports list them."""


def performance_profile(scores: Scores, taus) -> np.ndarray:
    """Fraction of all run x game scores (pooled) strictly above each tau."""
    pooled = _pooled(scores)
    return (pooled[None, :] > np.asarray(taus, dtype=float)[:, None]).mean(axis=1)


def stratified_bootstrap(scores: Scores, fn: Callable, reps: int = 2000, seed: int = 0) -> np.ndarray:
    """`reps` replicates of fn: each resamples, independently within each game, as many runs as the
    game has, with replacement. Returns an array (reps,) + shape of fn's value. A matrix input is
    resampled into matrices of its own shape, a list input into lists of the same lengths."""
    cols = _columns(scores)
    is_matrix = isinstance(scores, np.ndarray) and scores.ndim == 2
    rng = np.random.default_rng(seed)
    draws = [c[rng.integers(0, c.size, size=(reps, c.size))] for c in cols]   # per game: (reps, n_g)
    out = []
    for r in range(reps):
        sample = np.stack([d[r] for d in draws], axis=1) if is_matrix else [d[r] for d in draws]
        out.append(np.asarray(fn(sample), dtype=float))
    return np.stack(out)


def stratified_bootstrap_ci(scores: Scores, fn: Callable, reps: int = 2000, alpha: float = 0.05,
                            seed: int = 0):
    """(point, (low, high)): fn of the scores and its stratified-bootstrap percentile interval, the
    alpha/2 and 1 - alpha/2 quantiles (numpy linear interpolation) of `reps` replicates. With one
    run per game the interval is (point, point): resampling cannot vary the data."""
    point = fn(scores)
    if all(c.size == 1 for c in _columns(scores)):
        return point, (point, point)
    boot = stratified_bootstrap(scores, fn, reps=reps, seed=seed)
    low, high = np.quantile(boot, [alpha / 2, 1 - alpha / 2], axis=0)
    if np.ndim(point) == 0:
        return point, (float(low), float(high))
    return point, (low, high)
