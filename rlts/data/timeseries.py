"""Multivariate time series from CSV files: loading, split borders, scaling and windows.

    table = load_csv("ETTh1.csv", target="OT", features="MS")
    borders = split_borders(len(table), window=96, horizon=96, path=table.path)
    scaler = StandardScaler().fit(table.values[slice(*borders["train"])])
    values = torch.from_numpy(scaler.transform(table.values))
    test = WindowDataset(values, 96, 96, *borders["test"],
                         input_columns=table.input_columns, target_columns=table.target_columns)

The protocol is the Time-Series-Library one for long-term forecasting: fixed 12/4/4-month
splits for ETT (ETTh: 8640/2880/2880 rows, ETTm: x4) and 70/10/20 % for other files; the
validation and test ranges start `window` rows before their split point, so their first
window's input reaches back into the previous split; the scaler is fitted on the train rows
only; every stride-1 window inside a range is one example.

Every bad input stops with a ValueError that names the file and the column or value at fault.
"""
from __future__ import annotations

import fnmatch
import re
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
import pandas as pd
import torch
from torch.utils.data import Dataset

FEATURE_MODES = ("M", "S", "MS")
"""M: all columns in, all out; S: the target in and out; MS: all columns in, the target out."""
DATE_NAMES = ("date", "time", "timestamp", "datetime")
"""Column names (case-insensitive) taken for the date column when none is named."""
PROTOCOLS = ("auto", "ett-hour", "ett-minute", "ratio")
ETT_HOUR_ROWS = (8640, 2880, 2880)
"""Train / validation / test rows of the ETTh protocol (12 / 4 / 4 months of 30 days)."""
STD_FLOOR = 1e-8
UNNAMED = re.compile(r"(Unnamed: \d+(\.\d+)?)?")
"""Header pandas gives a column with an empty name ("Unnamed: 3"; "Unnamed: 0.1" for a repeat)."""

ArrayLike = Union[np.ndarray, torch.Tensor]


@dataclass
class SeriesTable:
    """The selected columns of a CSV file, in file order."""

    values: np.ndarray
    """float32, shape (T, C)."""
    columns: List[str]
    """Names of the C columns of `values`."""
    dates: Optional[pd.DatetimeIndex]
    """One strictly increasing timestamp per row, or None when the file has no date column."""
    target_index: int
    """Index in `columns` of the column to predict."""
    path: Path
    features: str = "M"
    """The feature mode the table was loaded with (M, S or MS)."""
    spans: Optional[List[Tuple[int, int]]] = None
    """A long table whose series cover different times: per column, the rows [first, end) it
    has values for (NaN outside); None when every column has every row."""

    def __len__(self) -> int:
        return self.values.shape[0]

    @property
    def target(self) -> str:
        return self.columns[self.target_index]

    @property
    def input_columns(self) -> List[int]:
        """Column indices a model reads: all of them (in S mode the table holds only the target)."""
        return list(range(len(self.columns)))

    @property
    def target_columns(self) -> List[int]:
        """Column indices a model predicts: all of them in M mode, the target in S and MS."""
        return self.input_columns if self.features == "M" else [self.target_index]


# ----------------------------------------------------------------------------- loading


def _row(i: int) -> str:
    """Human-readable position of data row i (0-based): row number and file line (header = 1)."""
    return f"row {i + 1} (line {i + 2})"


def _parse_dates(values: pd.Series, name: str, path: Path, strict: bool,
                 date_format: Optional[str] = None) -> Optional[pd.DatetimeIndex]:
    """Timestamps of a column, or None (strict=False) / a ValueError (strict=True) if any fails.
    date_format: pandas.to_datetime's `format` (e.g. "%d/%m/%Y"); None infers it."""
    text = values.astype("string")
    missing = text.isna() | (text.str.strip() == "")
    if missing.any():
        if not strict:
            return None
        i = int(np.flatnonzero(missing.to_numpy())[0])
        raise ValueError(f"{path}: date column {name!r} has no value at {_row(i)}")
    if date_format is not None:
        try:
            parsed = pd.to_datetime(text, format=date_format, errors="coerce")
        except ValueError as e:
            raise ValueError(f"{path}: date_format {date_format!r} is not a valid format: {e}") from None
        if not parsed.isna().any():
            return pd.DatetimeIndex(parsed)
        if not strict:
            return None
        i = int(np.flatnonzero(parsed.isna().to_numpy())[0])
        raise ValueError(f"{path}: date column {name!r} holds {text.iloc[i]!r} at {_row(i)}, "
                         f"which does not match date_format {date_format!r}")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:  # one format inferred from the first value: fast
            return pd.DatetimeIndex(pd.to_datetime(text, errors="raise"))
        except (ValueError, TypeError, OverflowError):
            pass
        try:  # formats that differ from row to row, parsed one by one
            parsed = pd.to_datetime(text, format="mixed", errors="coerce")
        except (ValueError, TypeError, OverflowError):
            parsed = None
    if parsed is not None and not parsed.isna().any():
        return pd.DatetimeIndex(parsed)
    if not strict:
        return None
    i = int(np.flatnonzero(parsed.isna().to_numpy())[0]) if parsed is not None else 0
    raise ValueError(f"{path}: date column {name!r} holds {text.iloc[i]!r} at {_row(i)}, "
                     "which does not parse as a date")


def _find_date_column(frame: pd.DataFrame, path: Path,
                      date_format: Optional[str] = None) -> Tuple[Optional[str], Optional[pd.DatetimeIndex]]:
    """A non-numeric column named date/time/timestamp/datetime, else the first non-numeric
    column whose values all parse as dates, else none. Numeric columns are never taken (epoch
    numbers and plain features cannot be told apart)."""
    text_columns = [c for c in frame.columns if not pd.api.types.is_numeric_dtype(frame[c])]
    for c in text_columns:
        if str(c).strip().lower() in DATE_NAMES:
            return c, _parse_dates(frame[c], c, path, strict=True, date_format=date_format)
    for c in text_columns:
        dates = _parse_dates(frame[c], c, path, strict=False, date_format=date_format)
        if dates is not None:
            return c, dates
    return None, None


def _check_separator(frame: pd.DataFrame, path: Path) -> None:
    """A ValueError for a file read as one column whose header holds ';' or tabs."""
    if len(frame.columns) != 1:
        return
    header = str(frame.columns[0])
    counts = {";": header.count(";"), "\t": header.count("\t")}
    sep = max(counts, key=counts.get)
    if counts[sep]:
        what = "';' (semicolons)" if sep == ";" else "tabs"
        raise ValueError(f"{path}: the file reads as one column {header!r}; it looks separated by {what}, "
                         f"and rlts reads comma-separated files: save it with commas, e.g. "
                         f"pandas.read_csv(path, sep={sep!r}).to_csv(new_path, index=False)")


def _first_row_number(column: pd.Series) -> Optional[int]:
    """0 or 1 when a column holds exactly the row numbers 0..n-1 or 1..n, else None."""
    if not pd.api.types.is_numeric_dtype(column) or pd.api.types.is_bool_dtype(column):
        return None
    values = column.to_numpy(dtype=np.float64, na_value=np.nan)
    for first in (0, 1):
        if np.array_equal(values, np.arange(first, first + len(values))):
            return first
    return None


def _drop_saved_index(frame: pd.DataFrame, path: Path) -> pd.DataFrame:
    """Drop leading columns without a header (pandas' "Unnamed: N") that hold the row numbers,
    an index saved by pandas' to_csv, with a warning. A leading one that is not numeric (a saved
    date index) stays, for the date detection; a ValueError for any other such column."""
    keep = []
    for k, c in enumerate(frame.columns):
        if not UNNAMED.fullmatch(str(c).strip()) or (not keep and not pd.api.types.is_numeric_dtype(frame[c])):
            keep.append(c)
            continue
        first = None if keep else _first_row_number(frame[c])  # pandas writes the index first
        if first is None:
            raise ValueError(f"{path}: column {k + 1} has no header (pandas reads it as {str(c)!r}); "
                             "give it a name in the header row, or remove it (a pandas index: "
                             "to_csv(..., index=False))")
        warnings.warn(f"{path}: dropped column {k + 1} (no header, values {first}..{first + len(frame) - 1}): "
                      "a row index saved by pandas (to_csv without index=False)", stacklevel=3)
    return frame[keep] if len(keep) < len(frame.columns) else frame


def _numeric(frame: pd.DataFrame, name: str, path: Path) -> np.ndarray:
    """A column as float64; a ValueError naming the first value that is not a number."""
    column = frame[name]
    if pd.api.types.is_numeric_dtype(column):
        return column.to_numpy(dtype=np.float64, na_value=np.nan)
    parsed = pd.to_numeric(column, errors="coerce")
    bad = parsed.isna() & column.notna()
    if bad.any():
        i = int(np.flatnonzero(bad.to_numpy())[0])
        raise ValueError(f"{path}: column {name!r} is not numeric: {_row(i)} holds "
                         f"{column.iloc[i]!r}")
    return parsed.to_numpy(dtype=np.float64, na_value=np.nan)


def _fill(data: np.ndarray, dates: Optional[pd.DatetimeIndex]) -> np.ndarray:
    """Linear interpolation of NaNs in time (by row where there are no dates), then the
    first/last known value carried to the ends."""
    frame = pd.DataFrame(data, index=dates)
    method = "time" if dates is not None else "linear"
    frame = frame.interpolate(method=method, limit_area="inside").ffill().bfill()
    return frame.to_numpy(dtype=np.float64)


LONG_COLUMNS = ("unique_id", "ds", "y")
"""The columns of a long table (id, time, value) that are recognised without being named."""


def _long_to_wide(frame: pd.DataFrame, path: Path, id_column: str, time_column: str, value_column: str,
                  date_format: Optional[str], fill: bool) -> pd.DataFrame:
    """A long table (one row per series and time) as a wide one: the time column, then one column
    per series id (in order of first appearance), one row per time of any series; a series
    that starts later or ends earlier than others is NaN outside its own times. ValueErrors
    name a missing column, a time repeated within an id, ids with different time steps, and
    (without `fill`) an id that lacks a time between its own first and last ones which other
    series have."""
    for role, name in (("id", id_column), ("time", time_column), ("value", value_column)):
        if name not in frame.columns:
            raise ValueError(f"{path}: no {role} column {name!r} for a long table; columns: "
                             f"{', '.join(map(str, frame.columns))} (name it with --{role}_column)")
    frame = frame[[id_column, time_column, value_column]].copy()
    frame[id_column] = frame[id_column].astype(str)
    dup = frame.duplicated([id_column, time_column])
    if dup.any():
        row = frame[dup].iloc[0]
        raise ValueError(f"{path}: series {row[id_column]!r} has the time {row[time_column]!r} twice; one row per "
                         "series and time is needed")
    times = pd.to_datetime(frame[time_column].astype("string"), format=date_format, errors="coerce")
    key = times if not times.isna().any() else pd.to_numeric(frame[time_column], errors="coerce")
    if not key.isna().any():
        steps = {i: pd.Series(g.sort_values().to_numpy()).diff().dropna().median()
                 for i, g in key.groupby(frame[id_column], sort=False) if len(g) > 1}
        first = next(iter(steps.items()), None)
        other = next(((i, st) for i, st in steps.items() if st != first[1]), None) if first else None
        if other is not None:
            raise ValueError(f"{path}: series {first[0]!r} and {other[0]!r} have different time steps ({first[1]} and "
                             f"{other[1]}); one model needs series of one frequency")
        frame["_order"] = key
    ids = list(dict.fromkeys(frame[id_column]))
    wide = frame.pivot(index=time_column, columns=id_column, values=value_column)[ids]
    if "_order" in frame:
        wide = wide.loc[frame.drop_duplicates(time_column).set_index(time_column)["_order"].sort_values().index]
    known = wide.notna().to_numpy()
    inside = (np.cumsum(known, axis=0) > 0) & (np.cumsum(known[::-1], axis=0)[::-1] > 0)   # within each span
    missing = inside & ~known
    if missing.any() and not fill and not frame[value_column].isna().any():
        i, c = np.argwhere(missing)[0]
        raise ValueError(f"{path}: series {wide.columns[c]!r} has no value at {wide.index[i]!r}, between its first "
                         "and last times, which other series have; give it that time, or pass --fill true to "
                         "interpolate")
    wide.columns = [str(c) for c in wide.columns]
    return wide.reset_index().rename(columns={"index": time_column})


def load_csv(path: Union[str, Path], target: Optional[str] = None, date_column: Optional[str] = None,
             features: str = "M", fill: bool = False, date_format: Optional[str] = None,
             id_column: Optional[str] = None, value_column: Optional[str] = None) -> SeriesTable:
    """Read a comma-separated file with a header row into a SeriesTable.

    A long table (one row per series and time: `id_column`, `date_column` as the time and
    `value_column`; a file whose columns are exactly unique_id, ds, y is one) becomes one column
    per series, in order of first appearance: one model then learns across all of them.

    date_column: named, or detected (see `_find_date_column`); a file without one is allowed.
    date_format: the dates' format for pandas.to_datetime (e.g. "%d/%m/%Y" for day-first
    dates); None infers it. A leading column without a header holding the row numbers (an
    index saved by pandas) is dropped with a warning. Every other column is a feature and
    must be numeric. target: the column to predict (default: the last feature column).
    features: "M" all features in and out, "S" the target only, "MS" all in and the target
    out. fill: interpolate missing values (linearly in time, the ends carried) instead of
    stopping on them.
    """
    path = Path(path)
    if features not in FEATURE_MODES:
        raise ValueError(f"{path}: unknown features mode {features!r}; use one of "
                         f"{', '.join(FEATURE_MODES)}")
    if not path.is_file():
        raise ValueError(f"{path}: file not found" if not path.exists() else f"{path}: not a file")
    try:
        frame = pd.read_csv(path, skipinitialspace=True)
    except pd.errors.EmptyDataError:
        raise ValueError(f"{path}: the file is empty") from None
    except (pd.errors.ParserError, UnicodeDecodeError) as e:
        raise ValueError(f"{path}: cannot be read as CSV: {e}") from None
    if len(frame) == 0:
        raise ValueError(f"{path}: the file has a header ({', '.join(map(str, frame.columns))}) "
                         "but no data rows")
    _check_separator(frame, path)
    frame = _drop_saved_index(frame, path)
    if id_column is None and value_column is None and sorted(map(str, frame.columns)) == sorted(LONG_COLUMNS):
        id_column = LONG_COLUMNS[0]
    if id_column is not None or value_column is not None:
        date_column = date_column or LONG_COLUMNS[1]
        frame = _long_to_wide(frame, path, id_column or LONG_COLUMNS[0], date_column, value_column or LONG_COLUMNS[2],
                              date_format, fill)
    available = ", ".join(map(str, frame.columns))

    if date_column is not None:
        if date_column not in frame.columns:
            raise ValueError(f"{path}: no date column {date_column!r}; columns: {available}")
        dates = _parse_dates(frame[date_column], date_column, path, strict=True, date_format=date_format)
    else:
        date_column, dates = _find_date_column(frame, path, date_format)
        if dates is None and date_format is not None:
            raise ValueError(f"{path}: no column matches date_format {date_format!r}; columns: {available} "
                             "(name the date column with date_column)")
    if dates is not None:
        step = np.diff(dates.asi8)
        if len(step) and (step < 0).all():
            raise ValueError(f"{path}: dates in column {date_column!r} run backwards ({dates[0]} first, {dates[-1]} "
                             "last); sort the file oldest first")
        if (step == 0).any():
            i = int(np.flatnonzero(step == 0)[0]) + 1
            raise ValueError(f"{path}: date column {date_column!r} holds {dates[i]} twice, at {_row(i - 1)} and "
                             f"{_row(i)}; one row per time step is needed (aggregate the duplicates first; a "
                             "table of several series needs one column per series)")
        if (step <= 0).any():
            i = int(np.flatnonzero(step <= 0)[0]) + 1
            hint = ("" if date_format is not None else
                    "; day-first dates (e.g. 13/01/2020) need date_format, e.g. date_format='%d/%m/%Y' "
                    "(--date_format %d/%m/%Y on the command line)")
            raise ValueError(f"{path}: dates in column {date_column!r} are not increasing: {_row(i)} "
                             f"({dates[i]}) does not come after {_row(i - 1)} ({dates[i - 1]}){hint}")
        deltas = dates[1:] - dates[:-1]                       # TimedeltaIndex, whatever the dates' unit
        usual = deltas.median() if len(deltas) else None
        gaps = np.flatnonzero(np.asarray(deltas > 1.5 * usual)) if usual is not None else []
        if len(gaps):
            i = int(gaps[0]) + 1
            warnings.warn(f"{path}: dates in column {date_column!r} have {len(gaps)} gap{'s' * (len(gaps) > 1)}; the "
                          f"first between {_row(i - 1)} ({dates[i - 1]}) and {_row(i)} ({dates[i]}), where the usual "
                          f"step is {usual}; windows run across them", stacklevel=2)

    candidates = [str(c) for c in frame.columns if c != date_column]
    if not candidates:
        raise ValueError(f"{path}: no value columns besides the date column {date_column!r}")
    if target is None:
        target = candidates[-1]
    elif target not in candidates:
        what = "is the date column" if target == date_column else "does not exist"
        raise ValueError(f"{path}: target column {target!r} {what}; columns: "
                         f"{', '.join(candidates)}")
    columns = [target] if features == "S" else candidates

    data = np.stack([_numeric(frame, c, path) for c in columns], axis=1)
    bad = ~np.isfinite(data) & ~np.isnan(data)
    if bad.any():
        i, j = map(int, np.argwhere(bad)[0])
        raise ValueError(f"{path}: column {columns[j]!r} holds {data[i, j]} at {_row(i)}")
    spans = None
    if id_column is not None:      # a long table: each series' own span; NaN outside it is no gap
        known = ~np.isnan(data)
        spans = [(int(np.argmax(k)), len(k) - int(np.argmax(k[::-1]))) if k.any() else (0, 0) for k in known.T]
        if all(span == (0, len(data)) for span in spans):
            spans = None
        else:
            data = data.copy()
            for j, (a, b) in enumerate(spans):
                if b > a and fill and np.isnan(data[a:b, j]).any():
                    data[a:b, j] = _fill(data[a:b, j:j + 1], dates[a:b] if dates is not None else None)[:, 0]
            inside = np.zeros_like(known)
            for j, (a, b) in enumerate(spans):
                inside[a:b, j] = True
            data[~inside] = 0.0                 # checked below as values, then NaN again
    nans = np.isnan(data).sum(axis=0)
    if nans.any():
        empty = [c for c, n in zip(columns, nans) if n == len(data)]
        if empty:
            raise ValueError(f"{path}: column(s) {', '.join(map(repr, empty))} hold no values")
        if not fill:
            counts = ", ".join(f"{c!r}: {n}" for c, n in zip(columns, nans) if n)
            raise ValueError(f"{path}: missing values (NaN) in columns {counts}; "
                             "pass fill=True (--fill on the command line) to interpolate them")
        data = _fill(data, dates)
    if spans is not None:
        for j, (a, b) in enumerate(spans):
            data[:a, j] = data[b:, j] = np.nan
    return SeriesTable(values=data.astype(np.float32), columns=columns, dates=dates,
                       target_index=columns.index(target), path=path, features=features, spans=spans)


# ----------------------------------------------------------------------------- splits


def protocol_for(path: Optional[Union[str, Path]]) -> str:
    name = Path(path).name if path is not None else ""
    if fnmatch.fnmatchcase(name, "ETTh*.csv"):
        return "ett-hour"
    if fnmatch.fnmatchcase(name, "ETTm*.csv"):
        return "ett-minute"
    return "ratio"


def split_borders(n_rows: int, window: int, protocol: str = "auto",
                  path: Optional[Union[str, Path]] = None, *, horizon: int,
                  ratios: Sequence[float] = (0.7, 0.1, 0.2)) -> Dict[str, Tuple[int, int]]:
    """Row ranges [start, end) of the train, val and test splits.

    protocol: "ett-hour" (8640 / 2880 / 2880 rows; rows after the first 14400 unused),
    "ett-minute" (x4), "ratio" (`ratios` of the rows, in order: by default the first 70 % train,
    the last 20 % test, val between; the train and test sizes are truncated as in
    Time-Series-Library, val takes the rest), or "auto" (ett-hour for ETTh*.csv, ett-minute for
    ETTm*.csv, else ratio; from `path`). The val and test ranges start `window` rows before
    their split point. Each range must hold at least one window of `window + horizon` rows.
    """
    where = f"{path}: " if path is not None else ""
    if window < 1 or horizon < 1:
        raise ValueError(f"{where}window ({window}) and horizon ({horizon}) must be at least 1")
    if protocol not in PROTOCOLS:
        raise ValueError(f"{where}unknown split protocol {protocol!r}; use one of {', '.join(PROTOCOLS)}")
    if protocol == "auto":
        protocol = protocol_for(path)
    if protocol == "ratio":
        if len(ratios) != 3 or min(ratios) <= 0 or abs(sum(ratios) - 1.0) > 1e-6:
            raise ValueError(f"{where}split ratios must be three positive fractions summing to 1, got {list(ratios)}")
        n_train, n_test = int(n_rows * ratios[0]), int(n_rows * ratios[2])
        n_val = n_rows - n_train - n_test
    else:
        n_train, n_val, n_test = (r * (4 if protocol == "ett-minute" else 1) for r in ETT_HOUR_ROWS)
        needed = n_train + n_val + n_test
        if n_rows < needed:
            raise ValueError(f"{where}the {protocol} protocol needs {needed} rows "
                             f"({n_train} / {n_val} / {n_test}), the series has {n_rows}")
    val_at, test_at = n_train, n_train + n_val
    borders = {"train": (0, n_train),
               "val": (val_at - window, test_at),
               "test": (test_at - window, test_at + n_test)}
    for name, (start, end) in borders.items():
        if start < 0 or end - start < window + horizon:
            raise ValueError(
                f"{where}the {name} split is too short for one window: it has {end - start} rows "
                f"[{start}, {end}) of {n_rows} ({protocol} protocol), one window needs "
                f"window + horizon = {window} + {horizon} = {window + horizon}"
                + (f" and the split must start {window} rows before row {val_at if name == 'val' else test_at}"
                   if start < 0 else ""))
    return borders


# ----------------------------------------------------------------------------- scaling


def date_step(dates: pd.DatetimeIndex) -> Optional[Union[str, pd.Timedelta]]:
    """The frequency of a date column: pandas' inferred frequency string (e.g. "h", "MS") of its
    last 100 dates, or else the most common step between consecutive dates; None for fewer than
    two dates."""
    if len(dates) < 2:
        return None
    tail = dates[-100:]
    if len(tail) >= 3:
        freq = pd.infer_freq(tail)
        if freq is not None:
            return freq
    return pd.Series(tail).diff().dropna().mode().iloc[0]


def future_index(dates: Optional[pd.DatetimeIndex], n_rows: int, horizon: int) -> list:
    """The `horizon` time stamps after the last row: the dates continued at their frequency
    (`date_step`), or the row numbers n_rows, n_rows + 1, ... when the file has no dates."""
    step = None if dates is None else date_step(dates)
    if step is None:
        return list(range(n_rows, n_rows + horizon))
    if isinstance(step, str):
        return list(pd.date_range(dates[-1], periods=horizon + 1, freq=step)[1:])
    return [dates[-1] + step * (k + 1) for k in range(horizon)]


def season_length(dates: Optional[pd.DatetimeIndex]) -> int:
    """The seasonal period of the seasonal naive forecast (MASE's scale) from the dates'
    frequency: a day of sub-daily steps (hourly: 24, 15 minutes: 96), a week of days (7), a year
    of weeks (52), months (12) or quarters (4); 1 without dates or for other steps."""
    if dates is None or len(dates) < 2:
        return 1
    step_td = pd.Series(dates[-100:]).diff().dropna().mode().iloc[0]   # months: 28-31 days
    day = pd.Timedelta(days=1)
    if step_td < day and day % step_td == pd.Timedelta(0):
        return int(day // step_td)
    if step_td == day:
        return 7
    if step_td == 7 * day:
        return 52
    if pd.Timedelta(days=28) <= step_td <= pd.Timedelta(days=31):
        return 12
    if pd.Timedelta(days=89) <= step_td <= pd.Timedelta(days=92):
        return 4
    return 1


class StandardScaler:
    """Per-column standardisation (x - mean) / std with the population std (as scikit-learn),
    floored at 1e-8. Fit it on the train rows only."""

    def __init__(self, mean: Optional[Sequence[float]] = None, std: Optional[Sequence[float]] = None):
        self.mean = None if mean is None else np.asarray(mean, dtype=np.float64)
        self.std = None if std is None else np.maximum(np.asarray(std, dtype=np.float64), STD_FLOOR)

    def fit(self, values: ArrayLike) -> "StandardScaler":
        """Fit on the rows of `values` (T, C), e.g. `table.values[train_start:train_end]`."""
        data = values.detach().cpu().double().numpy() if torch.is_tensor(values) else np.asarray(values, np.float64)
        if data.ndim != 2 or data.shape[0] < 1:
            raise ValueError(f"StandardScaler.fit: expected a (rows, columns) array with rows, got shape {data.shape}")
        if np.isnan(data).any():   # series that do not cover every row: the rows they have
            if np.isnan(data).all(axis=0).any():
                raise ValueError("StandardScaler.fit: a column has no value in these rows")
            self.mean, std = np.nanmean(data, axis=0), np.nanstd(data, axis=0)
        else:
            self.mean, std = data.mean(axis=0), data.std(axis=0)
        self.std = np.maximum(std, STD_FLOOR)
        return self

    def _stats(self, like: ArrayLike, columns: Optional[Sequence[int]]):
        if self.mean is None:
            raise ValueError("StandardScaler: not fitted (call fit or from_dict first)")
        mean, std = self.mean, self.std
        if columns is not None:
            mean, std = mean[list(columns)], std[list(columns)]
        if like.shape[-1] != mean.shape[0]:
            raise ValueError(f"StandardScaler: the data has {like.shape[-1]} columns, the scaler "
                             f"{mean.shape[0]}" + (" (pass columns= to select some)" if columns is None else ""))
        if torch.is_tensor(like):
            dtype = like.dtype if like.is_floating_point() else torch.float32
            return (torch.as_tensor(mean, dtype=dtype, device=like.device),
                    torch.as_tensor(std, dtype=dtype, device=like.device))
        dtype = like.dtype if np.issubdtype(like.dtype, np.floating) else np.float32
        return mean.astype(dtype), std.astype(dtype)

    def transform(self, values: ArrayLike, columns: Optional[Sequence[int]] = None) -> ArrayLike:
        """Standardise (..., C) values (numpy or torch, dtype kept for floats). columns: the
        scaler columns the last axis holds, e.g. `[table.target_index]` for MS predictions."""
        values = values if torch.is_tensor(values) else np.asarray(values)
        mean, std = self._stats(values, columns)
        return (values - mean) / std

    def inverse_transform(self, values: ArrayLike, columns: Optional[Sequence[int]] = None) -> ArrayLike:
        """Undo `transform` (same arguments)."""
        values = values if torch.is_tensor(values) else np.asarray(values)
        mean, std = self._stats(values, columns)
        return values * std + mean

    def to_dict(self) -> Dict[str, List[float]]:
        """Plain lists, loadable by torch.load(weights_only=True)."""
        if self.mean is None:
            raise ValueError("StandardScaler: not fitted (call fit first)")
        return {"mean": self.mean.tolist(), "std": self.std.tolist()}

    @classmethod
    def from_dict(cls, state: Dict[str, Sequence[float]]) -> "StandardScaler":
        return cls(state["mean"], state["std"])


# ----------------------------------------------------------------------------- windows


def _column_view(values: torch.Tensor, columns: Optional[Sequence[int]], what: str) -> torch.Tensor:
    """values[:, columns]: a view when the columns are evenly spaced and increasing (all of
    them, one, a range), otherwise one copy of the selected columns, shared by every window."""
    n = values.shape[1]
    if columns is None:
        return values
    cols = [int(c) for c in columns]
    if not cols:
        raise ValueError(f"WindowDataset: {what} selects no columns")
    bad = [c for c in cols if not -n <= c < n]
    if bad:
        raise ValueError(f"WindowDataset: {what} {bad} out of range for {n} columns")
    cols = [c % n for c in cols]
    step = cols[1] - cols[0] if len(cols) > 1 else 1
    if step > 0 and cols == list(range(cols[0], cols[-1] + 1, step)):
        return values[:, cols[0]:cols[-1] + 1:step]
    return values[:, cols]


class WindowDataset(Dataset):
    """Every stride-1 window inside rows [start, end) of a (T, C) series.

    Item i is (x, y) with x = values[s : s+window, input_columns] (window, C_in) and
    y = values[s+window : s+window+horizon, target_columns] (horizon, C_out), s = start + i,
    both float32 views of one tensor (no copy per item).

    Series that do not cover every row (NaN where a series has no value: a long table's
    series of different spans): a window is kept when at least one target column has every
    one of its window + horizon rows; in its y the other target columns are NaN (the losses
    and metrics leave NaN targets out) and in its x missing values are 0. `starts` holds the
    kept windows' first rows.
    """

    def __init__(self, values: ArrayLike, window: int, horizon: int, start: int = 0,
                 end: Optional[int] = None, input_columns: Optional[Sequence[int]] = None,
                 target_columns: Optional[Sequence[int]] = None):
        data = torch.as_tensor(values, dtype=torch.float32)  # no copy for float32 input
        if data.ndim != 2:
            raise ValueError(f"WindowDataset: values must be (rows, columns), got shape {tuple(data.shape)}")
        n_rows = data.shape[0]
        end = n_rows if end is None else end
        if window < 1 or horizon < 1:
            raise ValueError(f"WindowDataset: window ({window}) and horizon ({horizon}) must be at least 1")
        if not 0 <= start <= end <= n_rows:
            raise ValueError(f"WindowDataset: rows [{start}, {end}) are not inside the series' {n_rows} rows")
        self.window, self.horizon, self.start, self.end = window, horizon, start, end
        self.n = end - start - window - horizon + 1
        if self.n < 1:
            raise ValueError(f"WindowDataset: rows [{start}, {end}) ({end - start} rows) hold no window of "
                             f"window + horizon = {window} + {horizon} = {window + horizon} rows")
        self.values = data
        self.inputs = _column_view(data, input_columns, "input_columns")
        self.targets = _column_view(data, target_columns, "target_columns")
        self.starts = np.arange(start, start + self.n)
        self.complete = None                     # (n, C_out) bool: target columns whose rows all exist
        if torch.isnan(data[start:end]).any():
            cols = list(range(data.shape[1])) if target_columns is None else list(target_columns)
            missing = torch.cat([torch.zeros(1, len(cols)), torch.isnan(data[:, cols]).double().cumsum(0)])
            span = window + horizon
            s = torch.arange(start, start + self.n)
            complete = (missing[s + span] - missing[s]) == 0                  # (n, C_out)
            keep = complete.any(1)
            self.starts, self.complete = s[keep].numpy(), complete[keep]
            self.n = len(self.starts)
            if self.n < 1:
                raise ValueError(f"WindowDataset: rows [{start}, {end}) hold no window of window + horizon = "
                                 f"{window} + {horizon} = {span} rows of any one series")

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> Tuple[torch.Tensor, torch.Tensor]:
        i = int(i)
        if i < 0:
            i += self.n
        if not 0 <= i < self.n:
            raise IndexError(f"WindowDataset: index {i} out of range for {self.n} windows")
        s = int(self.starts[i])
        x, y = self.inputs[s:s + self.window], self.targets[s + self.window:s + self.window + self.horizon]
        if self.complete is not None:
            x = torch.nan_to_num(x, nan=0.0)
            y = torch.where(self.complete[i], y, torch.full_like(y, float("nan")))
        return x, y
