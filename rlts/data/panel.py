"""Panels: collections of (possibly unequal-length, multivariate) series with one label each.

    series = as_series_list(X)                    # X (N, C, L) array, or list of (L_i, C)
    codes, classes = encode_labels(y)             # y: any labels -> int64 codes 0..K-1
    scaler = fit_panel_scaler(series)             # per-channel mean/std over every time step
    data = PanelDataset(series, codes, scaler)    # items (x (L_i, C) float32, label) for
    loader = DataLoader(data, collate_fn=collate_unequal)   # rlts.heads.classify
    order = stratified_order(codes, seed)         # its first k entries: a stratified sample of k
    series, codes = stratified_subset(series, codes, limit=100, seed=0)

The classification runner (`rlts classify`) and the sktime estimator `rlts.sktime.SequenceClassifier`
both go through these functions, so they standardise and batch alike. No sktime import here:
sktime's "numpy3D" (N, C, L) and "df-list" (list of (L_i, C) DataFrames) panels are accepted as
plain arrays.
"""
from __future__ import annotations

from typing import Any, List, Optional, Sequence, Tuple

import numpy as np
import torch
from torch.utils.data import Dataset

from rlts.data.timeseries import StandardScaler


def as_series_list(X: Any, name: str = "X") -> List[np.ndarray]:
    """A panel -> list of float64 arrays (L_i, C), one per instance.

    Accepts a 3D array (N, C, L) (sktime's numpy3D layout: channels before time) or a sequence
    of 2D arrays / DataFrames (L_i, C) (time first). Every instance needs >= 1 time step and
    the same C. NaN or inf values raise a ValueError naming the instance and time step."""
    if isinstance(X, np.ndarray) or torch.is_tensor(X):
        arr = np.asarray(X.detach().cpu() if torch.is_tensor(X) else X)
        if arr.ndim != 3:
            raise ValueError(f"{name}: a panel array must have shape (N, C, L), got {arr.shape}")
        items = [a.T for a in arr]
    elif isinstance(X, (list, tuple)):
        items = [np.asarray(getattr(x, "values", x)) for x in X]
    else:
        raise ValueError(f"{name}: expected an array (N, C, L) or a list of (L_i, C) arrays, got {type(X).__name__}")
    if not items:
        raise ValueError(f"{name}: the panel is empty")
    out: List[np.ndarray] = []
    for i, x in enumerate(items):
        if x.ndim == 1:
            x = x[:, None]
        if x.ndim != 2 or x.shape[0] < 1:
            raise ValueError(f"{name}: instance {i} must have shape (L_i, C) with L_i >= 1, got {x.shape}")
        if x.shape[1] != (out[0].shape[1] if out else x.shape[1]):
            raise ValueError(f"{name}: instance {i} has {x.shape[1]} channels, instance 0 has {out[0].shape[1]}")
        try:
            x = x.astype(np.float64)
        except (TypeError, ValueError):
            raise ValueError(f"{name}: instance {i} holds non-numeric values") from None
        bad = ~np.isfinite(x)
        if bad.any():
            t, c = (int(v) for v in np.argwhere(bad)[0])
            raise ValueError(f"{name}: instance {i} has a missing or infinite value at time step {t}, "
                             f"channel {c}; impute missing values first")
        out.append(x)
    return out


def encode_labels(y: Any, classes: Optional[Sequence[Any]] = None, name: str = "y") -> Tuple[np.ndarray, np.ndarray]:
    """Labels -> (int64 codes (N,), classes (K,) sorted). With `classes` given (from training),
    a label outside them raises a ValueError naming it."""
    y = np.asarray(y)
    if y.ndim != 1:
        raise ValueError(f"{name}: labels must be one-dimensional, got shape {y.shape}")
    if classes is None:
        classes = np.unique(y)
    classes = np.asarray(classes)
    codes = np.searchsorted(classes, y)
    codes = np.clip(codes, 0, len(classes) - 1)
    unknown = classes[codes] != y
    if unknown.any():
        raise ValueError(f"{name}: label {y[np.argmax(unknown)].item()!r} is not one of the training classes "
                         f"{classes.tolist()}")
    return codes.astype(np.int64), classes


def stratified_order(labels: np.ndarray, seed: int) -> np.ndarray:
    """A permutation of range(len(labels)) whose every prefix holds the classes in (about) their
    overall proportions: member j of n_c shuffled members of a class sits at (j + 0.5) / n_c,
    ties broken at random. Its first k entries are a stratified sample of size k."""
    rng = np.random.default_rng(seed)
    position = np.empty(len(labels))
    for c in np.unique(labels):
        idx = rng.permutation(np.flatnonzero(labels == c))
        position[idx] = (np.arange(len(idx)) + 0.5) / len(idx)
    return np.lexsort((rng.random(len(labels)), position))


def stratified_subset(series: Sequence[np.ndarray], labels: np.ndarray, limit: Optional[int],
                      seed: int) -> Tuple[List[np.ndarray], np.ndarray]:
    """At most `limit` of the series and their labels (N,): the first `limit` entries of
    `stratified_order(labels, seed)`, kept in their original order; all of them when `limit` is
    None or not below N."""
    if limit is None or len(labels) <= limit:
        return list(series), labels
    if limit < 1:
        raise ValueError(f"stratified_subset: limit must be at least 1 or None, got {limit}")
    keep = np.sort(stratified_order(labels, seed)[:limit])
    return [series[i] for i in keep], labels[keep]


def fit_panel_scaler(series: Sequence[np.ndarray]) -> StandardScaler:
    """Per-channel mean and std over every time step of every instance (fit on training data)."""
    return StandardScaler().fit(np.concatenate(list(series), axis=0))


class PanelDataset(Dataset):
    """Items (x (L_i, C) float32 tensor, label int64 tensor), standardised by `scaler` if given;
    labels None gives label -1 (for prediction). Batch with rlts.heads.classify.collate_unequal."""

    def __init__(self, series: Sequence[np.ndarray], labels: Optional[np.ndarray] = None,
                 scaler: Optional[StandardScaler] = None):
        if labels is not None and len(labels) != len(series):
            raise ValueError(f"PanelDataset: {len(series)} series but {len(labels)} labels")
        self.x = [torch.from_numpy(np.asarray(scaler.transform(s) if scaler else s, np.float32)) for s in series]
        self.y = torch.as_tensor(np.full(len(series), -1) if labels is None else labels, dtype=torch.long)

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, i: int):
        return self.x[i], self.y[i]

    @property
    def lengths(self) -> List[int]:
        return [x.shape[0] for x in self.x]
