"""sktime estimators around rlts's forecasting and classification heads.

    from sktime.datasets import load_airline
    from rlts.sktime import SequenceForecaster, SequenceClassifier

    y = load_airline()
    f = SequenceForecaster(backbone="aaren", window=24, epochs=20, random_state=0)
    f.fit(y, fh=range(1, 13))           # trains on every stride-1 window of the scaled series
    y_pred = f.predict()                # the 12 months after the end of y
    f.update(y_new)                     # new observations enter the input window, no refit
    y_pred = f.predict()                # the 12 months after the end of y_new

    clf = SequenceClassifier(backbone="mamba", pooling="mean", epochs=30, random_state=0)
    clf.fit(X_train, y_train)           # any sktime Panel: multivariate, unequal lengths
    proba = clf.predict_proba(X_test)   # (N, n_classes), columns in the order of clf.classes_

`SequenceForecaster` wraps `rlts.heads.forecast.SequenceForecaster` (RevIN, channel
independence or mixing, a multi-horizon linear read-out) and `SequenceClassifier` wraps
`rlts.heads.classify.SequenceClassifier` (padding + lengths, last or mean pooling). Both train
through rlts's one supervised loop, `rlts.trainer.Trainer`, in a temporary run directory that
is deleted when fit returns, and standardise their data with rlts's own helpers
(`rlts.data.timeseries.StandardScaler` / `WindowDataset`, `rlts.data.panel`), so they scale
and batch exactly like the `rlts forecast` / `rlts classify` runners.

Randomness: the result is a function of `random_state` (an int gives identical fits). The
global Python, NumPy and torch random states are saved before fit / predict and restored
afterwards, so using an estimator does not change what the caller's own random draws give.
With `random_state=None` a fresh seed is drawn from the operating system each fit.
"""
from __future__ import annotations

import numbers
import random
import tempfile
from contextlib import contextmanager
from typing import Any, Dict, Iterator, List, Optional, Sequence

import numpy as np
import pandas as pd
import torch
from torch.utils.data import Subset
from sktime.classification.base import BaseClassifier
from sktime.forecasting.base import BaseForecaster

from rlts.data.augment import BatchAugment, check_augment
from rlts.data.panel import PanelDataset, as_series_list, encode_labels, fit_panel_scaler
from rlts.data.timeseries import StandardScaler, WindowDataset
from rlts.heads.classify import CLASSIFIER, CLASSIFIER_TRAIN, POOLINGS, STEMS, SequenceClassifier as _ClassifierHead
from rlts.heads.classify import classification_loss, collate_unequal, predict_proba
from rlts.heads.forecast import CHANNEL_MODES, SequenceForecaster as _ForecasterHead
from rlts.heads.forecast import forecast_loss
from rlts.metrics import conformal_quantiles
from rlts.nn import BACKBONES
from rlts.runtime import seed_everything, select_device
from rlts.trainer import TrainConfig, Trainer

__all__ = ["SequenceForecaster", "SequenceClassifier"]

_AUTHORS = ["rlts"]


# --------------------------------------------------------------------------------------------
# shared helpers


@contextmanager
def _global_rng_preserved() -> Iterator[None]:
    """Save the global Python, NumPy and torch RNG states and put them back on exit.

    `Trainer.fit` reseeds all of them (`rlts.runtime.seed_everything`); this keeps that from
    leaking into the caller's program. CUDA generators are saved only if CUDA is already in
    use (saving them would otherwise initialise CUDA)."""
    py_state, np_state, torch_state = random.getstate(), np.random.get_state(), torch.get_rng_state()
    cuda_states = torch.cuda.get_rng_state_all() if torch.cuda.is_initialized() else None
    try:
        yield
    finally:
        random.setstate(py_state)
        np.random.set_state(np_state)
        torch.set_rng_state(torch_state)
        if cuda_states is not None:
            torch.cuda.set_rng_state_all(cuda_states)


def _seed_from(random_state: Any, name: str) -> int:
    """random_state -> a seed for `TrainConfig.seed` (a non-negative int).

    None: fresh entropy from the OS (a different fit each time; the global RNGs are not
    touched); an int: itself; a numpy RandomState or Generator: one draw from it."""
    if random_state is None:
        return int(np.random.SeedSequence().generate_state(1)[0] & 0x7FFFFFFF)
    if isinstance(random_state, (bool, np.bool_)):
        raise ValueError(f"{name}: random_state must be None, an int or a numpy random generator, "
                         f"got {random_state!r}")
    if isinstance(random_state, (int, np.integer)):
        if random_state < 0:
            raise ValueError(f"{name}: random_state must be a non-negative int, got {random_state}")
        return int(random_state)
    if isinstance(random_state, np.random.RandomState):
        return int(random_state.randint(0, 2**31 - 1))
    if isinstance(random_state, np.random.Generator):
        return int(random_state.integers(0, 2**31 - 1))
    raise ValueError(f"{name}: random_state must be None, an int or a numpy random generator, "
                     f"got {type(random_state).__name__}")


def _check_choice(name: str, param: str, value: Any, choices) -> None:
    if value not in choices:
        raise ValueError(f"{name}: unknown {param} {value!r}; choose one of {', '.join(sorted(choices))}")


def _check_int(name: str, param: str, value: Any, low: int = 1) -> None:
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)) or value < low:
        raise ValueError(f"{name}: {param} must be {'a positive' if low == 1 else 'a non-negative'} int, "
                         f"got {value!r}")


def _check_training_params(est: Any, name: str) -> None:
    """Checks shared by both estimators (hyper-parameters only, no data)."""
    _check_choice(name, "backbone", est.backbone, BACKBONES)
    for param in ("d_model", "n_layers", "epochs", "batch_size"):
        _check_int(name, param, getattr(est, param))
    for param, low in (("lr", None), ("weight_decay", 0.0)):
        value = getattr(est, param)
        if not isinstance(value, numbers.Real) or (value <= 0 if low is None else value < low):
            raise ValueError(f"{name}: {param} must be a {'positive' if low is None else 'non-negative'} "
                             f"number, got {value!r}")
    for param in ("dropout", "ema"):
        value = getattr(est, param)
        if isinstance(value, (bool, np.bool_)) or not (isinstance(value, numbers.Real) and 0 <= value < 1):
            raise ValueError(f"{name}: {param} must lie in [0, 1), got {value!r}")
    if est.backbone_kwargs is not None and not isinstance(est.backbone_kwargs, dict):
        raise ValueError(f"{name}: backbone_kwargs must be a dict or None, got "
                         f"{type(est.backbone_kwargs).__name__}")
    select_device(est.device)  # ValueError for an unknown or unavailable device


def _calibration_windows(name: str, share: Any, n_windows: int) -> int:
    """How many of the latest of `n_windows` training windows calibrate the intervals: `share`
    of them, at least one when share > 0, and never all (0 when there is a single window)."""
    if isinstance(share, bool) or not isinstance(share, (int, float)) or not 0.0 <= share < 1.0:
        raise ValueError(f"{name}: calibration must be a share in [0, 1), got {share!r}")
    if share == 0 or n_windows < 2:
        return 0
    return min(n_windows - 1, max(1, int(round(share * n_windows))))


def _train(est: Any, model: torch.nn.Module, loss_fn, data, seed: int, collate_fn=None, batch_transform=None,
           **options) -> Dict[str, float]:
    """Run `rlts.trainer.Trainer` on `data` (no validation set; by default a fixed number of
    epochs, the last one's weights kept; `batch_transform`: applied to every training batch;
    `options`: other TrainConfig fields) in a temporary run directory that is removed
    afterwards. Returns the Trainer's summary."""
    cfg = TrainConfig(**{**dict(epochs=int(est.epochs), batch_size=int(est.batch_size), lr=float(est.lr),
                                weight_decay=float(est.weight_decay), ema=float(est.ema), patience=0, seed=seed,
                                device=est.device, progress=False), **options})
    with tempfile.TemporaryDirectory(prefix="rlts-sktime-") as run_dir:
        summary = Trainer(model, loss_fn, cfg, run_dir=run_dir, collate_fn=collate_fn,
                          batch_transform=batch_transform).fit(data)
    model.eval()
    return summary


# --------------------------------------------------------------------------------------------
# forecaster


class SequenceForecaster(BaseForecaster):
    """Direct multi-horizon forecaster on a linear-time sequence model (Aaren, Mamba, ...).

    fit: the series is standardised per column (`StandardScaler`, fitted on the series given
    to fit), cut into every stride-1 window of `window` inputs and `max(fh)` targets
    (`WindowDataset`), and `rlts.heads.forecast.SequenceForecaster` is trained on them with
    the MSE (`forecast_loss`) by `rlts.trainer.Trainer`.

    predict: one forward pass over the last `window` observations seen so far gives the
    forecast for steps 1 .. max(fh) after the cutoff; the steps in fh are returned,
    inverse-scaled, with the absolute index of fh.

    update: the new observations are appended to the data the next forecast reads (the input
    window slides to the new cutoff); the network's weights and the scaler are NOT retrained,
    whatever `update_params` says. So `update(y_new)` followed by `predict()` forecasts from
    the new data at the cost of one forward pass. Refit (or wrap in sktime's
    `UpdateRefitsEvery`) to retrain on the new data.

    y may be univariate or multivariate (pd.Series / pd.DataFrame or any sktime Series;
    panels and hierarchies are fitted series by series). X is ignored. Missing values are not
    supported. Forecasts are out-of-sample only (every fh step must lie after the cutoff), and
    the horizon is fixed in fit (`requires-fh-in-fit`).

    Parameters
    ----------
    backbone : str, default="aaren"
        Sequence layer, any name in `rlts.nn.BACKBONES`: "aaren", "mamba", "mamba2",
        "transformer", "gru".
    d_model : int, default=32
        Width of the sequence model.
    n_layers : int, default=2
        Number of backbone blocks (use >= 2 with "aaren", see the head's docstring).
    window : int, default=32
        Number of past observations the network reads per forecast. Fit needs a series of at
        least `window + max(fh)` observations.
    channel_mode : str, default="independent"
        "independent": every column is forecast from its own past by one shared network;
        "mixing": all columns of a time step are embedded together.
    revin : bool, default=True
        Reversible instance normalisation of every window (on top of the global scaling).
    patch_len : int, default=8
        Time steps per backbone token (non-overlapping patches ending at the last
        observation; 1 = one token per step). At most `window`.
    skip : bool, default=True
        Add a linear path from the whole (normalised) window to the forecast; the sequence
        model learns what it misses. `rlts forecast` uses patches of 16 and the skip
        (docs/results.md, "Long-term forecasting").
    dropout : float, default=0.0
        Dropout of the head (embedded inputs and the summary vector).
    backbone_kwargs : dict or None, default=None
        Extra options for every backbone block, e.g. {"headdim": 16, "d_state": 16} for mamba2
        (whose headdim must divide 2 * d_model) or {"n_heads": 2} for aaren / transformer.
    epochs : int, default=10
        Passes over the training windows.
    batch_size : int, default=32
        Windows per optimisation step.
    lr : float, default=1e-3
        AdamW learning rate.
    weight_decay : float, default=0.0
        AdamW weight decay.
    ema : float, default=0.0
        Decay per step of a moving average of the weights, which becomes the fitted model
        (e.g. 0.99 averages about the last 100 steps; use it only when a fit has many more
        steps than that). 0 turns it off.
    random_state : int, numpy RandomState / Generator or None, default=None
        Seeds the weight initialisation and the shuffling: an int gives identical fits.
        None draws a fresh seed each fit.
    device : str, default="cpu"
        "cpu", "cuda", "cuda:N" or "auto" (CUDA when available).
    calibration : float, default=0.2
        Share of the latest training windows held out of training to calibrate the prediction
        intervals (split-conformal: per horizon step and column, the finite-sample quantile of
        their absolute errors, `rlts.metrics.conformal_quantiles`); 0 trains on every window and
        leaves `predict_interval` / `predict_quantiles` unavailable.

    The defaults are deliberately smaller than those of `rlts forecast` (a shorter window and
    patches, a narrower model, fewer epochs): sktime series are often short (load_airline has
    144 observations), and fit needs `window + max(fh)` of them. Pass the runner's settings
    (`rlts.tasks.supervised.forecast.ForecastConfig`) to train its model.

    Attributes
    ----------
    network_ : rlts.heads.forecast.SequenceForecaster
        The trained network (eval mode).
    scaler_ : rlts.data.timeseries.StandardScaler
        Per-column mean and std of the series seen in fit.
    horizon_ : int
        Steps the network forecasts, max(fh) of fit.
    n_columns_ : int
        Number of columns of y.
    train_summary_ : dict
        The Trainer's summary of fit (epochs run, ...).

    Examples
    --------
    >>> import numpy as np, pandas as pd
    >>> from rlts.sktime import SequenceForecaster
    >>> y = pd.Series(np.sin(np.arange(120) * 2 * np.pi / 12))
    >>> f = SequenceForecaster(window=24, d_model=8, epochs=2, random_state=0)
    >>> y_pred = f.fit(y, fh=[1, 2, 3]).predict()
    >>> list(y_pred.index)
    [120, 121, 122]
    """

    _tags = {
        # packaging
        "authors": _AUTHORS,
        "maintainers": _AUTHORS,
        "python_dependencies": "torch",
        # estimator type and capabilities
        "capability:multivariate": True,      # y univariate or multivariate
        "capability:exogenous": False,        # X is accepted and ignored
        "capability:insample": False,         # fh must lie after the cutoff
        "capability:pred_int": True,          # split-conformal, from the `calibration` windows
        "capability:missing_values": False,
        "capability:update": True,            # _update: new data enter the input window
        "capability:random_state": True,
        "property:randomness": "derandomized",
        "requires-fh-in-fit": True,           # the horizon is the network's output size
        "X-y-must-have-same-index": True,
        "fit_is_empty": False,
        # inner data types: univariate y arrives as a one-column frame
        "y_inner_mtype": "pd.DataFrame",
        "X_inner_mtype": "pd.DataFrame",
    }

    def __init__(self, backbone: str = "aaren", d_model: int = 32, n_layers: int = 2, window: int = 32,
                 channel_mode: str = "independent", revin: bool = True, patch_len: int = 8, skip: bool = True,
                 dropout: float = 0.0, backbone_kwargs: Optional[dict] = None, epochs: int = 10, batch_size: int = 32,
                 lr: float = 1e-3, weight_decay: float = 0.0, ema: float = 0.0, random_state=None,
                 device: str = "cpu", calibration: float = 0.2):
        self.backbone = backbone
        self.d_model = d_model
        self.n_layers = n_layers
        self.window = window
        self.calibration = calibration
        self.channel_mode = channel_mode
        self.revin = revin
        self.patch_len = patch_len
        self.skip = skip
        self.dropout = dropout
        self.backbone_kwargs = backbone_kwargs
        self.epochs = epochs
        self.batch_size = batch_size
        self.lr = lr
        self.weight_decay = weight_decay
        self.ema = ema
        self.random_state = random_state
        self.device = device
        super().__init__()

    # -- checks ----------------------------------------------------------------------------

    def _steps(self, fh) -> np.ndarray:
        """fh -> its steps after the cutoff (1-based ints); ValueError for an in-sample step."""
        steps = np.asarray(fh.to_relative(self.cutoff), dtype=np.int64)
        if steps.size == 0 or steps.min() < 1:
            raise ValueError(f"SequenceForecaster forecasts out-of-sample only: every step of fh must lie "
                             f"after the cutoff ({self.cutoff[0]}), got relative steps {steps.tolist()}")
        return steps

    @staticmethod
    def _values(y: pd.DataFrame, what: str) -> np.ndarray:
        """y -> float64 (T, C); ValueError naming the column for missing or infinite values."""
        values = y.to_numpy(dtype=np.float64)  # (T, C)
        bad = ~np.isfinite(values)
        if bad.any():
            t, c = (int(i) for i in np.argwhere(bad)[0])
            raise ValueError(f"SequenceForecaster: {what} has missing or infinite values (first at "
                             f"{y.index[t]!r}, column {y.columns[c]!r}); impute them first")
        return values

    # -- sktime interface -----------------------------------------------------------------------

    def _fit(self, y: pd.DataFrame, X=None, fh=None):
        """Fit the network to every stride-1 window of y (T, C); X is ignored."""
        name = "SequenceForecaster"
        _check_training_params(self, name)
        _check_int(name, "window", self.window)
        _check_choice(name, "channel_mode", self.channel_mode, CHANNEL_MODES)
        _check_int(name, "patch_len", self.patch_len)
        if self.patch_len > self.window:
            raise ValueError(f"{name}: patch_len ({self.patch_len}) must not exceed window ({self.window})")
        horizon = int(self._steps(fh).max())
        values = self._values(y, "y")                                    # (T, C)
        n_rows, n_columns = values.shape
        if n_rows < self.window + horizon:
            raise ValueError(f"{name}: the series has {n_rows} observations, fewer than window + horizon "
                             f"= {self.window} + {horizon} = {self.window + horizon} (horizon = max(fh)); "
                             f"pass a longer series, a smaller window or a shorter fh")
        seed = _seed_from(self.random_state, name)
        with _global_rng_preserved():
            seed_everything(seed)  # the weight initialisation below
            self.scaler_ = StandardScaler().fit(values)
            scaled = torch.from_numpy(self.scaler_.transform(values).astype(np.float32))  # (T, C)
            data = WindowDataset(scaled, self.window, horizon)           # items (window, C), (horizon, C)
            n_cal = _calibration_windows(name, self.calibration, len(data))
            fit_part = Subset(data, range(len(data) - n_cal)) if n_cal else data
            self.network_ = _ForecasterHead(
                n_channels=n_columns, horizon=horizon, backbone=self.backbone, d_model=self.d_model,
                n_layers=self.n_layers, channel_mode=self.channel_mode, revin=self.revin,
                patch_len=self.patch_len, skip_window=self.window if self.skip else None,
                dropout=self.dropout, **(self.backbone_kwargs or {}))
            self.train_summary_ = _train(self, self.network_, forecast_loss, fit_part, seed)
            self.residuals_ = None                                       # (n_cal, horizon, C), scaled
            if n_cal:
                device = next(self.network_.parameters()).device
                with torch.no_grad():
                    xs, ys = (torch.stack(t) for t in zip(*(data[i] for i in range(len(data) - n_cal, len(data)))))
                    self.residuals_ = (self.network_(xs.to(device)) - ys.to(device)).abs().double().cpu().numpy()
        self.horizon_ = horizon
        self.n_columns_ = n_columns
        self._columns = y.columns
        self._recent = y.iloc[-self.window:].copy()  # the next forecast's input window
        return self

    def _update(self, y: pd.DataFrame, X=None, update_params: bool = True):
        """Append the new observations y to the input window (no retraining, see the class
        docstring); observations at an index already seen replace the old ones."""
        self._values(y, "y in update")
        recent = pd.concat([self._recent, y[self._recent.columns]])
        recent = recent[~recent.index.duplicated(keep="last")].sort_index()
        self._recent = recent.iloc[-self.window:]
        return self

    def _predict(self, fh, X=None) -> pd.DataFrame:
        """Forecast the steps of fh after the cutoff from the last `window` observations."""
        steps = self._steps(fh)
        if steps.max() > self.horizon_:  # cannot happen through sktime (fh is fixed in fit)
            raise ValueError(f"SequenceForecaster: fh reaches step {steps.max()}, the network was fitted "
                             f"for {self.horizon_} steps; refit with the longer fh")
        scaled = self.scaler_.transform(self._recent.to_numpy(dtype=np.float64)).astype(np.float32)
        device = next(self.network_.parameters()).device
        x = torch.from_numpy(scaled)[None].to(device)                    # (1, window, C)
        with _global_rng_preserved(), torch.no_grad():
            y_hat = self.network_(x)[0].cpu().double().numpy()           # (horizon, C)
        y_hat = self.scaler_.inverse_transform(y_hat)[steps - 1]         # (len(fh), C)
        index = fh.to_absolute_index(self.cutoff)
        return pd.DataFrame(y_hat, index=index, columns=self._columns)

    def _predict_quantiles(self, fh, X, alpha) -> pd.DataFrame:
        """Quantile forecasts: the point forecast plus or minus the split-conformal half-width
        of the central interval of level |2 alpha - 1| (so the alpha and 1 - alpha quantiles
        bound that interval); alpha = 0.5 is the point forecast."""
        if self.residuals_ is None:
            raise ValueError("SequenceForecaster: intervals need calibration windows; fit with calibration > 0 "
                             "(the default 0.2) on a series of at least window + max(fh) + 1 observations")
        point = self._predict(fh, X)
        steps = self._steps(fh)
        half = {level: conformal_quantiles(self.residuals_, level)[steps - 1] * self.scaler_.std   # (len(fh), C)
                for level in {abs(2 * float(a) - 1) for a in alpha} if level > 0}
        columns, values = [], []
        for j, var in enumerate(self._get_varnames()):
            for a in alpha:
                level = abs(2 * float(a) - 1)
                columns.append((var, a))
                values.append(point.iloc[:, j].to_numpy() + (np.sign(a - 0.5) * half[level][:, j] if level > 0 else 0))
        return pd.DataFrame(np.stack(values, axis=1), index=point.index, columns=pd.MultiIndex.from_tuples(columns))

    @classmethod
    def get_test_params(cls, parameter_set: str = "default") -> List[Dict[str, Any]]:
        """Fast settings for sktime's estimator checks: tiny networks, one or two epochs.

        Parameters
        ----------
        parameter_set : str, default="default"
            Name of the set of test parameters; there is only the default set.

        Returns
        -------
        params : list of dict
            Parameters of two test instances (different backbones and channel modes).
        """
        return [
            {"backbone": "gru", "d_model": 4, "n_layers": 1, "window": 4, "patch_len": 2, "epochs": 1,
             "batch_size": 64, "random_state": 0},
            {"backbone": "aaren", "d_model": 4, "n_layers": 2, "window": 3, "patch_len": 1, "skip": False,
             "epochs": 2, "batch_size": 64, "channel_mode": "mixing", "revin": False, "ema": 0.5,
             "backbone_kwargs": {"n_heads": 1}, "random_state": 1},
        ]


# --------------------------------------------------------------------------------------------
# classifier


class SequenceClassifier(BaseClassifier):
    """Time-series classifier on a linear-time sequence model (Aaren, Mamba, ...).

    fit: the series are standardised per channel with the mean and std over every time step
    of the training panel (`rlts.data.panel.fit_panel_scaler`), the labels are encoded as
    0 .. K-1 in the order of `classes_` (`encode_labels`), and
    `rlts.heads.classify.SequenceClassifier` is trained with the cross-entropy by
    `rlts.trainer.Trainer`, on batches of right-padded series with their lengths
    (`collate_unequal`): series of unequal length are neither truncated nor resampled. With
    `augment` (default: window warping) each training series is, with probability 1/2 in every
    batch, transformed at its own length (`rlts.data.augment`); predictions never are.

    predict_proba: the softmax of the network's logits; predict: the most probable class.

    X may be any sktime Panel: multivariate, and of unequal length. Missing values are not
    supported.

    Parameters
    ----------
    backbone : str, default="mamba"
        Sequence layer, any name in `rlts.nn.BACKBONES`: "aaren", "mamba", "mamba2",
        "transformer", "gru".
    d_model : int, default=64
        Width of the sequence model.
    n_layers : int, default=2
        Number of backbone blocks.
    pooling : str, default="mean"
        How a series' outputs become one vector: "last" (the output at its last time step)
        or "mean" (the average over its time steps).
    patch_len : int, default=1
        Time steps per backbone token (patches end at each series' last step, the first one
        completed with zeros in front; 1 = one token per step).
    stem : str, default="conv"
        "none", or "conv": three causal convolutions with batch norm (kernels 8, 5, 3) before
        the patches, which give the backbone features of local shape
        (`rlts.nn.conv.ConvStem`).
    bidirectional : bool, default=True
        Add a second backbone that reads each series backwards; its pooled features are added
        to the first's (twice the backbone's parameters and time).
    dropout : float, default=0.0
        Dropout on the pooled vector.
    augment : sequence of str or None, default=("window_warp",)
        Data augmentation of the training series (`rlts.data.augment`): any of "jitter",
        "scaling", "window_slice", "window_warp"; each series of a batch goes through all of them
        with probability 1/2. None or (): none. The weights kept are those of the epoch with the
        lowest mean loss on the augmented batches. Whether it helps depends on the backbone
        (docs/results.md, "Time-series classification").
    backbone_kwargs : dict or None, default=None
        Extra options for every backbone block, e.g. {"headdim": 16, "d_state": 16} for mamba2
        (whose headdim must divide 2 * d_model) or {"n_heads": 2} for aaren / transformer.
    epochs : int, default=200
        Most passes over the training series. The fitted network has the weights of the
        epoch with the lowest mean training loss (there is no validation set).
    batch_size : int, default=16
        Series per optimisation step.
    lr : float, default=1e-3
        AdamW learning rate.
    weight_decay : float, default=0.0
        AdamW weight decay.
    ema : float, default=0.0
        Decay per step of a moving average of the weights, which becomes the fitted model
        (e.g. 0.99 averages about the last 100 steps; use it only when a fit has many more
        steps than that). 0 turns it off.
    plateau_patience : int, default=10
        Epochs without a lower mean training loss before the learning rate is halved (not
        below 1e-4); 0 keeps it constant.
    patience : int, default=0
        Epochs without a lower mean training loss before training stops; 0: all epochs.
    random_state : int, numpy RandomState / Generator or None, default=None
        Seeds the weight initialisation and the shuffling: an int gives identical fits.
        None draws a fresh seed each fit.
    device : str, default="cpu"
        "cpu", "cuda", "cuda:N" or "auto" (CUDA when available).

    The defaults are those of `rlts classify`: both read them from `rlts.heads.classify`
    (`CLASSIFIER`, `CLASSIFIER_TRAIN`); docs/results.md measures them.

    Attributes
    ----------
    classes_ : np.ndarray
        The class labels seen in fit, sorted; predict_proba's columns follow this order.
    n_classes_ : int
        Number of classes.
    network_ : rlts.heads.classify.SequenceClassifier
        The trained network (eval mode).
    scaler_ : rlts.data.timeseries.StandardScaler
        Per-channel mean and std of the training panel.
    n_channels_ : int
        Number of channels (variables) of the series.
    train_summary_ : dict
        The Trainer's summary of fit (epochs run, ...).

    Examples
    --------
    >>> from sktime.datasets import load_unit_test
    >>> from rlts.sktime import SequenceClassifier
    >>> X, y = load_unit_test(split="train", return_X_y=True)
    >>> clf = SequenceClassifier(backbone="gru", d_model=8, epochs=2, random_state=0).fit(X, y)
    >>> clf.predict_proba(X).shape
    (20, 2)
    """

    _tags = {
        # packaging
        "authors": _AUTHORS,
        "maintainers": _AUTHORS,
        "python_dependencies": "torch",
        # capabilities
        "capability:multivariate": True,
        "capability:unequal_length": True,    # padding + lengths in the head
        "capability:missing_values": False,
        "capability:predict_proba": True,     # softmax of the logits
        "capability:multioutput": False,
        "capability:random_state": True,
        "property:randomness": "derandomized",
        # inner data types: equal-length numpy3D (N, C, L) stays as it is; every other panel,
        # unequal-length ones included, arrives as a list of (L_i, C) frames
        "X_inner_mtype": ["df-list", "numpy3D"],
        "y_inner_mtype": "numpy1D",
    }

    def __init__(self, backbone: str = CLASSIFIER.backbone, d_model: int = CLASSIFIER.d_model,
                 n_layers: int = CLASSIFIER.n_layers, pooling: str = CLASSIFIER.pooling,
                 patch_len: int = CLASSIFIER.patch_len, stem: str = CLASSIFIER.stem,
                 bidirectional: bool = CLASSIFIER.bidirectional, dropout: float = CLASSIFIER.dropout,
                 augment: Optional[Sequence[str]] = CLASSIFIER.augment, backbone_kwargs: Optional[dict] = None,
                 epochs: int = CLASSIFIER_TRAIN.epochs, batch_size: int = CLASSIFIER_TRAIN.batch_size,
                 lr: float = CLASSIFIER_TRAIN.lr, weight_decay: float = CLASSIFIER_TRAIN.weight_decay,
                 ema: float = CLASSIFIER_TRAIN.ema, plateau_patience: int = CLASSIFIER_TRAIN.plateau_patience,
                 patience: int = CLASSIFIER_TRAIN.patience, random_state=None, device: str = "cpu"):
        self.backbone = backbone
        self.d_model = d_model
        self.n_layers = n_layers
        self.pooling = pooling
        self.patch_len = patch_len
        self.stem = stem
        self.bidirectional = bidirectional
        self.dropout = dropout
        self.augment = augment
        self.backbone_kwargs = backbone_kwargs
        self.epochs = epochs
        self.batch_size = batch_size
        self.lr = lr
        self.weight_decay = weight_decay
        self.ema = ema
        self.plateau_patience = plateau_patience
        self.patience = patience
        self.random_state = random_state
        self.device = device
        super().__init__()

    def _fit(self, X, y: np.ndarray):
        """Fit to a panel X (numpy3D (N, C, L) or a list of (L_i, C) frames) and labels y (N,)."""
        name = "SequenceClassifier"
        _check_training_params(self, name)
        _check_choice(name, "pooling", self.pooling, POOLINGS)
        _check_int(name, "patch_len", self.patch_len)
        _check_choice(name, "stem", self.stem, STEMS)
        if not isinstance(self.bidirectional, (bool, np.bool_)):
            raise ValueError(f"{name}: bidirectional must be True or False, got {self.bidirectional!r}")
        _check_int(name, "plateau_patience", self.plateau_patience, low=0)
        _check_int(name, "patience", self.patience, low=0)
        augment = check_augment(self.augment or (), f"{name}: augment")
        series = as_series_list(X, "X")                                   # N arrays (L_i, C)
        codes, classes = encode_labels(y, name="y")                       # (N,) in 0 .. K-1
        if not np.array_equal(classes, self.classes_):  # both np.unique(y): a guard, not a branch
            raise ValueError(f"{name}: label encoding {classes.tolist()} differs from classes_ "
                             f"{list(self.classes_)}")
        seed = _seed_from(self.random_state, name)
        with _global_rng_preserved():
            seed_everything(seed)  # the weight initialisation below
            self.scaler_ = fit_panel_scaler(series)
            data = PanelDataset(series, codes, self.scaler_)             # items (L_i, C), label
            self.network_ = _ClassifierHead(
                n_channels=series[0].shape[1], n_classes=len(classes), backbone=self.backbone,
                d_model=self.d_model, n_layers=self.n_layers, pooling=self.pooling,
                patch_len=self.patch_len, stem=self.stem, bidirectional=bool(self.bidirectional),
                dropout=self.dropout, **(self.backbone_kwargs or {}))
            self.train_summary_ = _train(self, self.network_, classification_loss, data, seed,
                                         collate_fn=collate_unequal,
                                         batch_transform=BatchAugment(augment) if augment else None,
                                         monitor=CLASSIFIER_TRAIN.monitor, min_lr=CLASSIFIER_TRAIN.min_lr,
                                         plateau_patience=int(self.plateau_patience),
                                         patience=int(self.patience))
        self.n_channels_ = series[0].shape[1]
        return self

    def _predict_proba(self, X) -> np.ndarray:
        """Class probabilities (N, n_classes_), columns in the order of classes_."""
        series = as_series_list(X, "X")
        if series[0].shape[1] != self.n_channels_:
            raise ValueError(f"SequenceClassifier: X has {series[0].shape[1]} channels, the classifier "
                             f"was fitted on {self.n_channels_}")
        data = PanelDataset(series, None, self.scaler_)
        with _global_rng_preserved():  # batches of similar lengths pad less; rows in the order of X
            return predict_proba(self.network_, data, int(self.batch_size), by_length=True)   # (N, n_classes_)

    @classmethod
    def get_test_params(cls, parameter_set: str = "default") -> List[Dict[str, Any]]:
        """Fast settings for sktime's estimator checks: tiny networks, one or two epochs.

        Parameters
        ----------
        parameter_set : str, default="default"
            Name of the set of test parameters; there is only the default set.

        Returns
        -------
        params : list of dict
            Parameters of two test instances (different backbones, poolings and stems; one
            causal, one bidirectional).
        """
        return [
            {"backbone": "gru", "d_model": 4, "n_layers": 1, "epochs": 1, "batch_size": 64, "pooling": "last",
             "patch_len": 4, "stem": "none", "plateau_patience": 0, "bidirectional": False, "random_state": 0},
            {"backbone": "mamba", "d_model": 4, "n_layers": 1, "pooling": "mean", "stem": "conv", "epochs": 2,
             "batch_size": 64, "ema": 0.5, "backbone_kwargs": {"d_state": 4}, "bidirectional": True,
             "augment": ("window_warp", "jitter"), "random_state": 1},
        ]
