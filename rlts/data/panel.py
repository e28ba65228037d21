"""Panels: collections of (possibly unequal-length, multivariate) series with one label each.

    series = as_series_list(X)                    # X (N, C, L) array, or list of (L_i, C)
    codes, classes = encode_labels(y)             # y: any labels -> int64 codes 0..K-1
    scaler = fit_panel_scaler(series)             # per-channel mean/std over every time step
    data = PanelDataset(series, codes, scaler)    # items (x (L_i, C) float32, label) for
    loader = DataLoader(data, collate_fn=collate_unequal)   # rlts.heads.classify
    order = stratified_order(codes, seed)         # its first k entries: a stratified sample of k
    series, codes = stratified_subset(series, codes, limit=100, seed=0)
    new = read_panel_csv("new.csv")                # or read_panel_npy("new.npy"): a SeriesFile to label

The classification runner (`rlts classify`) and the sktime estimator `rlts.sktime.SequenceClassifier`
both go through these functions, so they standardise and batch alike. No sktime import here:
sktime's "numpy3D" (N, C, L) and "df-list" (list of (L_i, C) DataFrames) panels are accepted as
plain arrays.

Series files to label (`rlts classify predict`): a CSV file in the long layout (one row per
series and time step: an `id` or `series_id` column, numeric channel columns, optionally a
`label` column; `read_panel_csv`) or a .npy array (n, C, L) right-padded with NaN
(`read_panel_npy`); rlts.data.ucr.read_ts_series reads .ts files into the same `SeriesFile`.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
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
    return checked_series(items, [str(i) for i in range(len(items))], name, noun="instance")


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


# ----------------------------------------------------------------------------- series files to label

ID_COLUMNS = ("id", "series_id")
"""The id column of a series CSV file (read_panel_csv): one of these names."""
LABEL_COLUMN = "label"
"""The optional class-label column of a series CSV file."""


@dataclass
class SeriesFile:
    """The series of one file, read for prediction: ids, (L_i, C) float64 arrays and, if the
    file has them, their class labels."""

    path: str
    ids: List[str]
    """One per series: the CSV's id values; 0, 1, ... in file order for .ts and .npy files."""
    series: List[np.ndarray]
    labels: Optional[np.ndarray]
    """The class labels as strings (N,), or None for an unlabelled file."""
    channels: Optional[List[str]] = None
    """The channel columns' names (CSV files), else None."""


def checked_series(items: Sequence[np.ndarray], ids: Sequence[str], what: str,
                   noun: str = "series") -> List[np.ndarray]:
    """Arrays (L_i, C) (or (L_i,)) -> float64 arrays (L_i, C); a ValueError starting with
    `what` (the file or argument) and naming the series (`noun` and its id) for one that is not
    (L_i, C), an empty one, non-numeric or missing or infinite values, or a channel count other
    than the first series'."""
    out: List[np.ndarray] = []
    for x, name in zip(items, ids):
        x = np.asarray(x)
        if x.ndim == 1:
            x = x[:, None]
        if x.ndim != 2:
            raise ValueError(f"{what}: {noun} {name} must have shape (L_i, C), got {x.shape}")
        if x.shape[0] == 0:
            raise ValueError(f"{what}: {noun} {name} is empty (no time steps)")
        if out and x.shape[1] != out[0].shape[1]:
            raise ValueError(f"{what}: {noun} {name} has {x.shape[1]} channels, {noun} {ids[0]} has "
                             f"{out[0].shape[1]}")
        try:
            x = x.astype(np.float64)
        except (TypeError, ValueError):
            raise ValueError(f"{what}: {noun} {name} holds non-numeric values") from None
        bad = ~np.isfinite(x)
        if bad.any():
            t, c = (int(v) for v in np.argwhere(bad)[0])
            raise ValueError(f"{what}: {noun} {name} has a missing or infinite value at time step {t}, channel {c}; "
                             "impute missing values first")
        out.append(x)
    if not out:
        raise ValueError(f"{what} holds no series")
    return out


def _trailing_padding(x: np.ndarray) -> int:
    """The number of trailing time steps of x (L, C) whose channels are all NaN."""
    empty = np.isnan(x).all(axis=1)                                      # (L,)
    return int(np.argmin(empty[::-1])) if not empty.all() else len(empty)


def read_panel_csv(path: str, role: str = "input") -> SeriesFile:
    """The series of a CSV file in the long layout: one row per series and time step, an id
    column (`id` or `series_id`), numeric channel columns (every other column except `label`,
    in file order: channel 0, 1, ...) and optionally a `label` column (the same on every row of
    a series). A series' rows are its time steps in order; the series come in the order of their
    first rows. A series' trailing rows whose channel cells are all empty are padding and are
    dropped. Every problem is a ValueError naming the file, a column or a series."""
    import pandas as pd

    what = f"{role} file {path}"
    if not Path(path).is_file():
        raise ValueError(f"{what} does not exist")
    try:
        raw = list(pd.read_csv(path, nrows=0).columns)
        text = {c: str for c in raw if str(c).strip() in (*ID_COLUMNS, LABEL_COLUMN)}  # ids and labels stay text
        frame = pd.read_csv(path, dtype=text)
    except (ValueError, OSError) as e:  # pandas' ParserError, EmptyDataError and UnicodeDecodeError are ValueErrors
        raise ValueError(f"{what} is not a readable CSV file ({' '.join(str(e).split())[:200]})") from None
    header = [str(c).strip() for c in raw]
    frame.columns = header
    found = [c for c in ID_COLUMNS if c in header]
    if len(found) != 1:
        raise ValueError(f"{what} needs one id column, named {' or '.join(ID_COLUMNS)}; "
                         + ("it has both" if found else f"its columns: {', '.join(header)}"))
    id_column = found[0]
    labelled = LABEL_COLUMN in header
    channels = [c for c in header if c not in (id_column, LABEL_COLUMN)]
    if not channels:
        raise ValueError(f"{what} has no channel columns (numeric columns besides {id_column}"
                         f"{' and ' + LABEL_COLUMN if labelled else ''})")
    if len(frame) == 0:
        raise ValueError(f"{what} holds no series (no rows below its header)")
    values = np.empty((len(frame), len(channels)))
    for j, c in enumerate(channels):
        numbers = pd.to_numeric(frame[c], errors="coerce")
        wrong = numbers.isna() & frame[c].notna()
        if wrong.any():
            row = int(np.flatnonzero(wrong.to_numpy())[0])
            raise ValueError(f"{what}: column {c} holds {str(frame[c].iloc[row])!r} (row {row + 2}), not a number")
        values[:, j] = numbers.to_numpy(dtype=np.float64)
    if frame[id_column].isna().any():
        row = int(np.flatnonzero(frame[id_column].isna().to_numpy())[0])
        raise ValueError(f"{what}: row {row + 2} has no {id_column}")
    keys = frame[id_column].str.strip().to_numpy()
    ids = list(dict.fromkeys(keys))                                       # first-appearance order
    rows = {name: [] for name in ids}
    for i, name in enumerate(keys):
        rows[name].append(i)
    series, labels = [], []
    for name in ids:
        x = values[rows[name]]
        x = x[:len(x) - _trailing_padding(x)]
        if len(x) == 0:
            raise ValueError(f"{what}: series {name} is empty (its rows hold no values)")
        series.append(x)
        if labelled:
            found_labels = sorted({v.strip() for v in frame[LABEL_COLUMN].iloc[rows[name]].dropna() if v.strip()})
            if len(found_labels) != 1:
                raise ValueError(f"{what}: series {name} has " + (f"several labels ({', '.join(found_labels)})"
                                                                   if found_labels else f"no {LABEL_COLUMN}"))
            labels.append(found_labels[0])
    return SeriesFile(str(path), ids, checked_series(series, ids, what),
                      np.asarray(labels, dtype=str) if labelled else None, channels)


def read_panel_npy(path: str, role: str = "input") -> SeriesFile:
    """The series of a .npy file (np.save) holding one numeric array (n, C, L) (sktime's
    numpy3D layout: channels before time), series shorter than L right-padded with NaN: the
    trailing time steps whose channels are all NaN are padding. Ids 0 .. n-1; no labels. Every
    problem is a ValueError naming the file or a series."""
    what = f"{role} file {path}"
    if not Path(path).is_file():
        raise ValueError(f"{what} does not exist")
    with open(path, "rb") as f:
        magic = f.read(6)
    if magic != b"\x93NUMPY":
        raise ValueError(f"{what} is not a .npy file: " + ("it is an .npz archive" if magic[:2] == b"PK" else
                                                           "it has no NumPy header")
                         + "; save one array (n, channels, length) with np.save")
    try:
        arr = np.load(path, allow_pickle=False)
    except Exception as e:  # pickled objects, truncated data: numpy raises ValueError, OSError, EOFError, ...
        raise ValueError(f"{what} is not a readable .npy file ({type(e).__name__}: "
                         f"{' '.join(str(e).split())[:200]})") from None
    if arr.ndim != 3:
        raise ValueError(f"{what} holds an array of shape {arr.shape}; expected (n, channels, length)"
                         + (" (one channel: x[:, None, :])" if arr.ndim == 2 else ""))
    if not (np.issubdtype(arr.dtype, np.floating) or np.issubdtype(arr.dtype, np.integer)):
        raise ValueError(f"{what} holds {arr.dtype} values; expected numbers")
    ids = [str(i) for i in range(arr.shape[0])]
    series = []
    for i, a in enumerate(arr.astype(np.float64)):
        x = a.T                                                           # (L, C)
        x = x[:len(x) - _trailing_padding(x)] if x.size else x
        series.append(x)
    return SeriesFile(str(path), ids, checked_series(series, ids, what), None)
