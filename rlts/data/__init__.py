"""Datasets shared by the tasks: multivariate time series from CSV files (`timeseries`), panels
of unequal-length series (`panel`), the UCR/UEA archive and .ts files (`ucr`), augmentation of
panel batches (`augment`), event sequences (`events`) and offline RL trajectories
(`trajectories`).

The CSV names below are loaded on first use, so that importing a light submodule (such as
`rlts.data.augment`) does not import pandas.
"""
from typing import Any

__all__ = ["SeriesTable", "StandardScaler", "WindowDataset", "load_csv", "split_borders"]


def __getattr__(name: str) -> Any:
    if name in __all__:
        from rlts.data import timeseries
        return getattr(timeseries, name)
    raise AttributeError(f"module 'rlts.data' has no attribute {name!r}")
