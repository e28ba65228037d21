"""Time-series classification data of the UCR/UEA archive and of sktime's .ts files.

    names = shipped_datasets()                         # classification datasets inside sktime's wheel
    data = load_panels(dataset="JapaneseVowels")       # or load_panels(train_file=..., test_file=...)
    data.train_x[i]                                    # (L_i, C) float64, one array per series
    data.train_y, data.classes                         # int64 codes 0..K-1 (N_train,), sorted labels (K,)
    new = read_ts_series("new.ts")                     # series to label, with their labels if the file has them

A dataset name is matched case-insensitively against the datasets shipped with sktime (read
offline); any other name is downloaded by sktime if the machine can. A pair of .ts files is
read with sktime's parser after checks of its own: the file exists, has a @data line, holds
class labels (not a regression target) and only labels that its @classLabel line declares.
`read_ts_series` also reads unlabelled .ts files (`@classLabel false`, as sktime writes series
without labels), for prediction.

Every problem (unknown dataset, a missing, unparseable or non-.ts file, a label outside the
declared or the training classes, a channel-count mismatch between the splits, missing
values, a single class) is a ValueError naming the file, dataset or value, raised before the
caller writes anything. sktime is imported only when a function here needs it.
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import List, Tuple

import numpy as np

from rlts.data.panel import SeriesFile, as_series_list, checked_series, encode_labels


def _has_regression_target(path: Path) -> bool:
    """True if a .ts file's header declares a real-valued target (@targetLabel true), not classes."""
    with open(path, errors="replace") as f:
        for line in f:
            words = line.strip().lower().split()
            if words[:1] == ["@data"]:
                break
            if words[:2] == ["@targetlabel", "true"]:
                return True
    return False


def _sktime_data_root() -> Path:
    import sktime.datasets
    return Path(sktime.datasets.__file__).parent / "data"


def shipped_datasets() -> List[str]:
    """Classification datasets inside sktime's wheel (NAME/NAME_TRAIN.ts and NAME_TEST.ts, class labels)."""
    return sorted(d.name for d in _sktime_data_root().iterdir()
                  if (d / f"{d.name}_TRAIN.ts").is_file() and (d / f"{d.name}_TEST.ts").is_file()
                  and not _has_regression_target(d / f"{d.name}_TRAIN.ts"))


def _panel_to_series(X, what: str) -> List[np.ndarray]:
    """An sktime panel -> list of (L_i, C) float arrays (ValueError naming `what` on NaN/inf)."""
    from sktime.datatypes import convert_to
    return as_series_list(convert_to(X, to_type="df-list"), name=what)


def load_named(name: str) -> Tuple[str, tuple, tuple]:
    """(canonical name, (X_train, y_train), (X_test, y_test)) of an archive dataset, as sktime panels."""
    from sktime.datasets import load_UCR_UEA_dataset
    shipped = shipped_datasets()
    on_disk = [d.name for d in _sktime_data_root().iterdir() if (d / f"{d.name}_TRAIN.ts").is_file()]
    canonical = {n.lower(): n for n in on_disk}.get(name.lower(), name)
    own = _sktime_data_root() / canonical / f"{canonical}_TRAIN.ts"
    if canonical not in shipped and own.is_file():
        raise ValueError(f"dataset {name!r} is a regression problem (@targetLabel), not classification; "
                         f"classification datasets shipped with sktime: {', '.join(shipped)}")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            train = load_UCR_UEA_dataset(canonical, split="train", return_X_y=True)
            test = load_UCR_UEA_dataset(canonical, split="test", return_X_y=True)
    except Exception as e:  # sktime raises RuntimeError/OSError/... when the download fails
        reason = " ".join(str(e).split())[:200]
        raise ValueError(f"dataset {name!r} is not shipped with sktime and could not be downloaded ({reason}); "
                         f"shipped: {', '.join(shipped)}; or pass --train FILE.ts --test FILE.ts") from None
    return canonical, train, test


def _ts_header(path: Path, role: str) -> List[List[str]]:
    """The words of each line before a .ts file's @data line; ValueError naming the file when it
    has no @data line (then it is no .ts file, and sktime's parser would fail obscurely)."""
    header: List[List[str]] = []
    with open(path, errors="replace") as f:
        for line in f:
            words = line.split()
            if words[:1] and words[0].lower() == "@data":
                return header
            header.append(words)
    first = next((" ".join(w) for w in header if w), "")
    raise ValueError(f"{role} file {path} is not a .ts file: it has no @data line (sktime's .ts format: header lines "
                     "starting with @, such as @problemName and @classLabel true A B, then @data and one series a "
                     "line)" + (f"; its first line reads {first[:60]!r}" if first else "; it is empty"))


def load_ts(path: str, role: str) -> tuple:
    """(X, y) of a labelled .ts file; ValueError naming the file when it is missing, is no .ts
    file, does not parse or has labels that its @classLabel line does not declare. `role`
    (train, test) names the file in the messages."""
    from sktime.datasets import load_from_tsfile
    p = Path(path)
    if not p.is_file():
        raise ValueError(f"{role} file {path} does not exist")
    header = _ts_header(p, role)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            X, y = load_from_tsfile(str(p), return_data_type="nested_univ")
    except Exception as e:
        reason = " ".join(str(e).split())[:200]
        raise ValueError(f"{role} file {path} is not a readable labelled .ts file "
                         f"({type(e).__name__}: {reason})") from None
    if _has_regression_target(p):
        raise ValueError(f"{role} file {path} holds a regression target (@targetLabel), not class labels")
    if y is None or len(y) != len(X):
        raise ValueError(f"{role} file {path} has no class labels (@classLabel true ... is needed)")
    # sktime checks the labels against @classLabel only in files with time stamps; it reads them in lower case.
    declared = next(([w.lower() for w in words[2:]] for words in header
                     if [w.lower() for w in words[:2]] == ["@classlabel", "true"]), None)
    undeclared = [] if declared is None else sorted(set(map(str, y)) - set(declared))
    if undeclared:
        raise ValueError(f"{role} file {path} has class labels that its @classLabel line does not declare: "
                         f"{', '.join(map(repr, undeclared))} (declared: {', '.join(map(repr, declared))})")
    return X, y


@dataclass
class Panels:
    """Both splits as (L_i, C) arrays with integer labels."""

    source: dict
    """{"dataset": canonical name} or {"train_file": path, "test_file": path}."""
    train_x: List[np.ndarray]
    train_y: np.ndarray
    test_x: List[np.ndarray]
    test_y: np.ndarray
    classes: np.ndarray
    """The training labels, sorted, as strings; codes index them."""


def load_panels(dataset: str = "", train_file: str = "", test_file: str = "") -> Panels:
    """Read and check both splits of an archive `dataset`, or of the .ts files `train_file` and
    `test_file`; every problem is a ValueError naming the file or dataset."""
    if dataset and (train_file or test_file):
        raise ValueError("load_panels: give either a dataset name or train_file and test_file, not both")
    if not dataset and not (train_file and test_file):
        raise ValueError("load_panels: give a dataset name, or both train_file and test_file")
    if dataset:
        name, (X_tr, y_tr), (X_te, y_te) = load_named(dataset)
        source = {"dataset": name}
        what = {"train": f"dataset {name} (train split)", "test": f"dataset {name} (test split)"}
    else:
        (X_tr, y_tr), (X_te, y_te) = load_ts(train_file, "train"), load_ts(test_file, "test")
        source = {"train_file": str(train_file), "test_file": str(test_file)}
        what = {"train": f"train file {train_file}", "test": f"test file {test_file}"}
    train_x, test_x = _panel_to_series(X_tr, what["train"]), _panel_to_series(X_te, what["test"])
    if train_x[0].shape[1] != test_x[0].shape[1]:
        n_test, n_train = test_x[0].shape[1], train_x[0].shape[1]
        raise ValueError(f"{what['test']} has {n_test} channel{'s' * (n_test != 1)}, {what['train']} has {n_train}")
    train_y, classes = encode_labels(np.asarray(y_tr).astype(str), name=f"{what['train']} labels")
    test_y, _ = encode_labels(np.asarray(y_te).astype(str), classes, name=f"{what['test']} labels")
    if len(classes) < 2:
        raise ValueError(f"{what['train']} has a single class ({str(classes[0])!r}); classification needs two or more")
    return Panels(source, train_x, train_y, test_x, test_y, classes)


def read_ts_series(path: str, role: str = "input") -> SeriesFile:
    """The series of a .ts file, labelled (`@classLabel true A B ...`, read and checked as
    `load_ts` does) or not (`@classLabel false`), as (L_i, C) arrays with ids 0, 1, ... in
    file order; a ValueError naming the file (and the series) for a missing, unparseable or
    regression file, an empty series, channels of unequal length within a series, or missing
    values."""
    p = Path(path)
    if not p.is_file():
        raise ValueError(f"{role} file {path} does not exist")
    header = _ts_header(p, role)
    declared = next(([w.lower() for w in words[1:2]] for words in header
                     if words[:1] and words[0].lower() == "@classlabel"), None)
    if declared == ["true"]:
        X, y = load_ts(path, role)
        labels = np.asarray(y).astype(str)
    else:
        if _has_regression_target(p):
            raise ValueError(f"{role} file {path} holds a regression target (@targetLabel), not class labels")
        # load_from_tsfile fails on unlabelled files (it unpacks the columns as (X, y)); its reader does not
        from sktime.datasets import load_from_tsfile_to_dataframe
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                X = load_from_tsfile_to_dataframe(str(p), return_separate_X_and_y=True)
        except Exception as e:
            reason = " ".join(str(e).split())[:200]
            raise ValueError(f"{role} file {path} is not a readable .ts file ({type(e).__name__}: {reason})") from None
        labels = None
    ids = [str(i) for i in range(len(X))]
    items = []
    for i in range(len(X)):
        dims = [np.asarray(X.iloc[i, j], dtype=np.float64) for j in range(X.shape[1])]
        if len({len(d) for d in dims}) > 1:
            raise ValueError(f"{role} file {path}: series {i} has channels of different lengths "
                             f"({', '.join(str(len(d)) for d in dims)} steps)")
        items.append(np.stack(dims, axis=1))                               # (L_i, C)
    return SeriesFile(str(path), ids, checked_series(items, ids, f"{role} file {path}"), labels)
