"""Baseline models that are not rlts networks: MiniRocket for time-series classification.

    variant = minirocket_variant(lengths, n_channels)          # the sktime transform these series need
    transform, classifier = fit_minirocket(train_x, train_y, variant, n_kernels=10_000, seed=0)
    scores = minirocket_scores(transform, classifier, test_x, variant, n_classes)   # (N, n_classes)
    torch.save(minirocket_state(transform, classifier, variant, classes, scaler), "model.pt")

MiniRocket (Dempster et al. 2021, sktime's implementation): `n_kernels` features (rounded down
to a multiple of 84, at least 84), then RidgeClassifierCV(alphas=logspace(-3, 3, 10)) on features scaled to
unit variance (sktime's RocketClassifier recipe); the ridge chooses its alpha by leave-one-out
CV itself. Series are (L_i, C) arrays, standardised by the caller. Equal lengths of at least 9
steps: MiniRocket (one channel) or MiniRocketMultivariate; otherwise
MiniRocketMultivariateVariable, which takes every series at its own length and right-pads only
the series shorter than 9 steps (its kernels' span) with 0.

The fitted model is saved as tensors and plain values (`minirocket_state`), so that it loads
with torch.load(..., weights_only=True). sktime, scikit-learn and pandas are imported only when
a function here needs them.
"""
from __future__ import annotations

import warnings
from typing import List, Optional

import numpy as np
import torch

MINIROCKET_MIN_LENGTH = 9
"""MiniRocket's kernels span 9 steps; shorter series are right-padded to this length with 0."""
MINIROCKET_ALPHAS = np.logspace(-3, 3, 10)
"""The ridge penalties RidgeClassifierCV chooses from."""


def minirocket_variant(lengths: List[int], n_channels: int) -> str:
    """The sktime transform for these series (lengths of train and test together)."""
    if len(set(lengths)) == 1 and lengths[0] >= MINIROCKET_MIN_LENGTH:
        return "MiniRocket" if n_channels == 1 else "MiniRocketMultivariate"
    return "MiniRocketMultivariateVariable"


def minirocket_input(series: List[np.ndarray], variant: str):
    """numpy3D (N, C, L) for the equal-length transforms, a list of (L_i, C) DataFrames otherwise."""
    import pandas as pd
    if variant == "MiniRocketMultivariateVariable":
        return [pd.DataFrame(x) for x in series]
    return np.stack([x.T for x in series])


def minirocket_transform(variant: str, n_kernels: int, seed: Optional[int]):
    """An unfitted sktime MiniRocket transform of `variant`; ValueError for an unknown one."""
    from sktime.transformations import rocket

    variants = ("MiniRocket", "MiniRocketMultivariate", "MiniRocketMultivariateVariable")
    if variant not in variants:
        raise ValueError(f"unknown MiniRocket variant {variant!r}; use one of {', '.join(variants)}")
    options = dict(num_kernels=n_kernels, random_state=seed, n_jobs=1)
    if variant == "MiniRocketMultivariateVariable":
        options["pad_value_short_series"] = 0.0
    return getattr(rocket, variant)(**options)


def fit_minirocket(train_x: List[np.ndarray], train_y: np.ndarray, variant: str, n_kernels: int = 10_000,
                   seed: Optional[int] = 0):
    """(fitted transform, fitted classifier) on standardised training series (L_i, C) and their
    integer labels (N,); `seed` draws the biases (None: sktime draws them unseeded)."""
    from sklearn.linear_model import RidgeClassifierCV
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    transform = minirocket_transform(variant, n_kernels, seed)
    classifier = make_pipeline(StandardScaler(with_mean=False), RidgeClassifierCV(alphas=MINIROCKET_ALPHAS))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        features = np.asarray(transform.fit_transform(minirocket_input(train_x, variant)))   # (N, features)
    classifier.fit(features, train_y)
    return transform, classifier


def warm_up_minirocket(series: List[np.ndarray], variant: str) -> None:
    """Run the `variant` transform once on two of `series` with its fewest kernels (84), so that
    numba compiles (or loads from its cache) the functions that fit_minirocket then calls."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        minirocket_transform(variant, 84, 0).fit_transform(minirocket_input(series[:2], variant))


def minirocket_scores(transform, classifier, series: List[np.ndarray], variant: str,
                      n_classes: int) -> np.ndarray:
    """The ridge classifier's decision values (N, n_classes), float64, whose argmax is its
    prediction (two classes: its one decision value d becomes the columns -d, d; a class absent
    from the training series scores -inf)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        features = np.asarray(transform.transform(minirocket_input(series, variant)))   # (N, features)
    d = np.asarray(classifier.decision_function(features), dtype=np.float64)
    d = np.stack([-d, d], axis=1) if d.ndim == 1 else d                   # (N, classes seen)
    scores = np.full((len(series), n_classes), -np.inf)
    scores[:, classifier[-1].classes_] = d
    return scores


def minirocket_state(transform, classifier, variant: str, classes: list, scaler) -> dict:
    """The fitted MiniRocket model as tensors and plain values (loads with
    torch.load(..., weights_only=True)): the transform's kernel parameters (dilations,
    features per dilation, biases, ...; sktime's `parameters` tuple, in its order), the
    feature scaling and the ridge classifier's weights. `scaler`: the input standardisation
    (rlts.data.timeseries.StandardScaler), stored as its to_dict()."""
    scale, ridge = classifier[0], classifier[-1]
    return {"variant": variant, "classes": classes, "scaler": scaler.to_dict(),
            "transform_parameters": [torch.as_tensor(np.asarray(p)) for p in transform.parameters],
            "feature_scale": torch.as_tensor(scale.scale_), "ridge_coef": torch.as_tensor(ridge.coef_),
            "ridge_intercept": torch.as_tensor(np.atleast_1d(ridge.intercept_)), "ridge_alpha": float(ridge.alpha_)}

