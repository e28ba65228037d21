"""Datasets shared by the tasks: multivariate time series from CSV files (`timeseries`)."""
from rlts.data.timeseries import (SeriesTable, StandardScaler, WindowDataset, load_csv,
                                  split_borders)

__all__ = ["SeriesTable", "StandardScaler", "WindowDataset", "load_csv", "split_borders"]
