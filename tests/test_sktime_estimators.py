"""rlts.sktime: sktime's estimator checks, pipelines, evaluation, learning and bad input.

The networks here are tiny, and torch runs them on one thread (`_one_torch_thread`): for
models of a few hundred parameters, a second intra-op thread only adds synchronisation, and on
a shared 2-core machine it can make each training step several times slower.
"""
import random
import time

import numpy as np
import pandas as pd
import pytest
import torch
from sktime.classification.ensemble import WeightedEnsembleClassifier
from sktime.datasets import load_airline, load_UCR_UEA_dataset
from sktime.forecasting.compose import ForecastingPipeline, TransformedTargetForecaster
from sktime.forecasting.model_evaluation import evaluate
from sktime.split import ExpandingWindowSplitter
from sktime.transformations.detrend import Detrender
from sktime.transformations.exponent import ExponentTransformer
from sktime.transformations.padder import PaddingTransformer
from sktime.utils.estimator_checks import check_estimator

from rlts.data.panel import encode_labels
from rlts.heads.classify import CLASSIFIER_TRAIN
from rlts.sktime import SequenceClassifier, SequenceForecaster

BACKBONE_NAMES = "aaren, gru, mamba, mamba2, transformer"


@pytest.fixture(autouse=True, scope="module")
def _one_torch_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


# --------------------------------------------------------------------------------------------
# data


def periodic(n: int = 120, start: int = 0) -> pd.Series:
    """A noiseless series of period 12 with a harmonic, away from zero (for MAPE)."""
    t = np.arange(start, start + n)
    return pd.Series(np.sin(2 * np.pi * t / 12) + 0.5 * np.sin(2 * np.pi * t / 6 + 1) + 3.0,
                     index=pd.RangeIndex(start, start + n), name="y")


def rising_falling(n: int, seed: int):
    """n two-channel series of 15..40 steps: channel "a" rises or falls (the label) from a random
    level with a random slope plus a little noise; channel "b" is noise. A list of (L_i, 2)
    frames (sktime's df-list) and the labels."""
    rng = np.random.default_rng(seed)
    X, y = [], []
    for i in range(n):
        length = int(rng.integers(15, 41))
        label = ("falling", "rising")[i % 2]
        slope = rng.uniform(0.5, 2.0) * (1 if label == "rising" else -1)
        a = slope * np.linspace(0, 1, length) + rng.uniform(-3, 3) + 0.1 * rng.standard_normal(length)
        X.append(pd.DataFrame({"a": a, "b": rng.standard_normal(length)}))
        y.append(label)
    return X, np.array(y)


def small_forecaster(**kw) -> SequenceForecaster:
    params = dict(backbone="gru", d_model=8, n_layers=1, window=12, epochs=2, random_state=0)
    return SequenceForecaster(**{**params, **kw})


def small_classifier(**kw) -> SequenceClassifier:
    params = dict(backbone="gru", d_model=8, n_layers=1, epochs=2, random_state=0)
    return SequenceClassifier(**{**params, **kw})


# --------------------------------------------------------------------------------------------
# sktime's conformance suite


@pytest.mark.parametrize("cls", [SequenceForecaster, SequenceClassifier], ids=lambda c: c.__name__)
def test_check_estimator(cls):
    start = time.perf_counter()
    check_estimator(cls, raise_exceptions=True, verbose=False)
    print(f"check_estimator({cls.__name__}): {time.perf_counter() - start:.1f} s")


def test_test_params_are_tiny_and_varied():
    for cls in (SequenceForecaster, SequenceClassifier):
        params = cls.get_test_params()
        assert len(params) >= 2
        assert len({p["backbone"] for p in params}) == len(params)
        assert all(p["d_model"] <= 8 and p["epochs"] <= 2 for p in params)
    # check_estimator covers the classifier both ways, whatever the default
    assert {p.get("bidirectional", SequenceClassifier().bidirectional)
            for p in SequenceClassifier.get_test_params()} == {False, True}


# --------------------------------------------------------------------------------------------
# forecaster


def test_forecaster_in_target_pipeline():
    t = np.arange(100)
    y = pd.Series(0.05 * t + np.sin(2 * np.pi * t / 12) + 10,
                  index=pd.period_range("2000-01", periods=100, freq="M"))
    pipe = Detrender() * small_forecaster()
    assert isinstance(pipe, TransformedTargetForecaster)
    y_pred = pipe.fit(y, fh=[1, 2, 3]).predict()
    assert isinstance(y_pred, pd.Series)
    assert list(y_pred.index) == list(pd.period_range("2008-05", periods=3, freq="M"))
    assert np.isfinite(y_pred.to_numpy()).all()
    # the trend is added back: forecasts sit at the trend's level (about 15), not at 0
    assert abs(y_pred.mean() - (0.05 * 101 + 10)) < 2


def test_forecaster_in_exogenous_pipeline_ignores_x():
    y = periodic(100)
    X = pd.DataFrame({"x": np.linspace(1, 2, 106)}, index=pd.RangeIndex(0, 106))
    pipe = ForecastingPipeline([("square", ExponentTransformer()), ("model", small_forecaster())])
    y_pred = pipe.fit(y, X=X.iloc[:100], fh=[1, 2]).predict(X=X.iloc[100:])
    assert list(y_pred.index) == [100, 101]
    # X is ignored: the same forecast without it
    alone = small_forecaster().fit(y, fh=[1, 2]).predict()
    np.testing.assert_allclose(y_pred.to_numpy(), alone.to_numpy())


@pytest.mark.parametrize("strategy", ["refit", "update"])
def test_forecaster_in_evaluate(strategy):
    y = periodic(100)
    cv = ExpandingWindowSplitter(initial_window=60, step_length=10, fh=[1, 2, 3])
    results = evaluate(forecaster=small_forecaster(), y=y, cv=cv, strategy=strategy)
    assert len(results) == 4  # cutoffs 59, 69, 79, 89
    assert list(results["len_train_window"]) == [60, 70, 80, 90]
    errors = results["test_MeanAbsolutePercentageError"].to_numpy()
    assert np.isfinite(errors).all() and (errors < 1).all()


@pytest.mark.parametrize("channel_mode, revin", [("independent", True), ("mixing", False)])
def test_forecaster_multivariate(channel_mode, revin):
    t = np.arange(80)
    y = pd.DataFrame({"a": np.sin(2 * np.pi * t / 12), "b": 5 + 2 * np.cos(2 * np.pi * t / 8)},
                     index=pd.date_range("2021-01-01", periods=80, freq="D"))
    f = small_forecaster(channel_mode=channel_mode, revin=revin, epochs=5).fit(y, fh=[1, 2, 3, 4])
    np.testing.assert_allclose(f.scaler_.mean, y.mean().to_numpy())  # fitted on the training data
    y_pred = f.predict()
    assert isinstance(y_pred, pd.DataFrame)
    assert list(y_pred.columns) == ["a", "b"]
    assert list(y_pred.index) == list(pd.date_range("2021-03-22", periods=4, freq="D"))
    assert np.isfinite(y_pred.to_numpy()).all()
    # inverse scaling: each column's forecast is on its own scale
    assert abs(y_pred["b"].mean() - 5) < abs(y_pred["b"].mean() - y_pred["a"].mean())


def test_forecaster_sparse_fh_selects_steps():
    y = periodic(100)
    full = small_forecaster().fit(y, fh=[1, 2, 3, 4, 5]).predict()
    sparse = small_forecaster().fit(y, fh=[2, 5]).predict()
    assert list(sparse.index) == [101, 104]
    assert sparse.shape == (2,) and np.isfinite(sparse.to_numpy()).all()
    # the same network (same random_state, same horizon 5) -> the same values at those steps
    np.testing.assert_allclose(sparse.to_numpy(), full.loc[[101, 104]].to_numpy(), rtol=1e-6)


def test_forecaster_update_reads_new_data_without_refitting():
    y = periodic(100)
    f = small_forecaster(window=12).fit(y.iloc[:80], fh=[1, 2, 3])
    before = f.predict()
    weights = {k: v.clone() for k, v in f.network_.state_dict().items()}

    f.update(y.iloc[80:90])
    assert f.cutoff[0] == 89
    after = f.predict()
    assert list(after.index) == [90, 91, 92]
    assert not np.allclose(before.to_numpy(), after.to_numpy())
    for k, v in f.network_.state_dict().items():  # no retraining
        assert torch.equal(v, weights[k]), k

    # the forecast is the network applied to the last `window` observations, inverse-scaled
    x = f.scaler_.transform(y.to_numpy()[78:90, None]).astype(np.float32)  # (window, 1)
    with torch.no_grad():
        y_hat = f.network_(torch.from_numpy(x)[None])[0].double().numpy()  # (horizon, 1)
    np.testing.assert_allclose(after.to_numpy(), f.scaler_.inverse_transform(y_hat)[:, 0], rtol=1e-5)


def test_forecaster_deterministic_and_leaves_global_rng_alone():
    y = periodic(80)

    def draws():
        return random.random(), float(np.random.rand()), float(torch.rand(1))

    random.seed(7), np.random.seed(7), torch.manual_seed(7)
    expected = draws()
    random.seed(7), np.random.seed(7), torch.manual_seed(7)
    a = small_forecaster(random_state=3).fit(y, fh=[1, 2]).predict()
    assert draws() == expected
    torch.manual_seed(99)  # another global state: the fit must not depend on it
    b = small_forecaster(random_state=3).fit(y, fh=[1, 2]).predict()
    np.testing.assert_array_equal(a.to_numpy(), b.to_numpy())
    c = small_forecaster(random_state=4).fit(y, fh=[1, 2]).predict()
    assert not np.allclose(a.to_numpy(), c.to_numpy())


@pytest.mark.parametrize("revin", [True, False])
def test_forecaster_learns_a_periodic_series(revin):
    """Far below the naive forecast's error, on a level (1000) and scale (10) that only train
    well through the standardisation (without RevIN, the global scaler alone provides it)."""
    y = periodic(240) * 10 + 1000
    train, test = y.iloc[:-12], y.iloc[-12:]
    f = SequenceForecaster(backbone="aaren", d_model=16, n_layers=2, window=24, epochs=10, lr=1e-2,
                           revin=revin, backbone_kwargs={"n_heads": 2}, random_state=0)
    y_pred = f.fit(train, fh=range(1, 13)).predict()
    mse = float(np.mean((y_pred.to_numpy() - test.to_numpy()) ** 2))
    naive = float(np.mean((train.iloc[-1] - test.to_numpy()) ** 2))  # repeat the last value
    assert mse < 0.2 * naive, (mse, naive)


# --------------------------------------------------------------------------------------------
# classifier


def test_classifier_learns_unequal_length_multivariate():
    # 120 training series: with 60, this GRU's accuracy over seeds comes too close to the bar.
    X_train, y_train = rising_falling(120, seed=0)
    X_test, y_test = rising_falling(40, seed=1)
    assert len({len(x) for x in X_train}) > 1
    clf = SequenceClassifier(backbone="gru", d_model=16, n_layers=1, epochs=40, lr=1e-2, random_state=0)
    clf.fit(X_train, y_train)
    assert list(clf.classes_) == ["falling", "rising"]
    assert clf.score(X_test, y_test) >= 0.8  # chance: 0.5


def test_classifier_probabilities_and_mtypes_agree():
    rng = np.random.default_rng(0)
    X = rng.standard_normal((12, 3, 20))  # numpy3D (N, C, L)
    X[::2, 0] += np.linspace(0, 2, 20)
    y = np.array(["up", "flat"] * 6)
    clf = small_classifier(pooling="mean").fit(X, y)
    proba = clf.predict_proba(X)
    assert proba.shape == (12, 2)
    np.testing.assert_allclose(proba.sum(axis=1), 1.0)
    np.testing.assert_array_equal(clf.predict(X), clf.classes_[proba.argmax(axis=1)])
    # the same panel as a list of (L, C) frames gives the same probabilities
    as_list = [pd.DataFrame(x.T) for x in X]
    np.testing.assert_allclose(clf.predict_proba(as_list), proba, rtol=1e-6)
    # and a fit on the list form gives the same network
    np.testing.assert_allclose(small_classifier(pooling="mean").fit(as_list, y).predict_proba(X), proba,
                               rtol=1e-5)


def test_classifier_deterministic_and_leaves_global_rng_alone():
    X, y = rising_falling(20, seed=2)
    random.seed(5), np.random.seed(5), torch.manual_seed(5)
    expected = (random.random(), float(np.random.rand()), float(torch.rand(1)))
    random.seed(5), np.random.seed(5), torch.manual_seed(5)
    a = small_classifier(random_state=1).fit(X, y).predict_proba(X)
    assert (random.random(), float(np.random.rand()), float(torch.rand(1))) == expected
    torch.manual_seed(99)  # another global state: the fit must not depend on it
    b = small_classifier(random_state=1).fit(X, y).predict_proba(X)
    np.testing.assert_array_equal(a, b)


def test_classifier_in_pipeline_with_panel_transformer():
    X, y = rising_falling(30, seed=3)
    pipe = PaddingTransformer() * small_classifier()
    assert type(pipe).__name__ == "ClassifierPipeline"
    pipe.fit(X, y)
    y_pred = pipe.predict(X)
    assert y_pred.shape == (30,) and set(y_pred) <= {"falling", "rising"}
    assert pipe.predict_proba(X).shape == (30, 2)


@pytest.mark.filterwarnings("ignore:Data seen by WeightedEnsembleClassifier.*unequal length")
def test_classifier_seed_ensemble_is_sktimes_weighted_ensemble():
    """`rlts classify --seeds N`'s ensemble, inside sktime: WeightedEnsembleClassifier with no
    weights averages its members' probabilities, here networks that differ only by their seed.
    (sktime warns that the ensemble itself is not tagged for unequal lengths; its members are.)"""
    X, y = rising_falling(24, seed=4)
    X_test, _ = rising_falling(16, seed=5)
    members = [small_classifier(random_state=s, epochs=3) for s in (0, 1, 2)]
    ensemble = WeightedEnsembleClassifier(members).fit(X, y)
    alone = [m.clone().fit(X, y).predict_proba(X_test) for m in members]  # (N, 2) each
    assert not np.allclose(alone[0], alone[1])  # the seeds give different networks
    np.testing.assert_allclose(ensemble.predict_proba(X_test), np.mean(alone, axis=0), rtol=1e-6, atol=1e-9)
    np.testing.assert_array_equal(ensemble.predict(X_test), np.array(sorted(set(y)))[np.mean(alone, axis=0).argmax(1)])


def test_classifier_on_japanese_vowels():
    """UEA JapaneseVowels (shipped with sktime): 12 channels, lengths 7..26, 9 speakers."""
    X, y = load_UCR_UEA_dataset("JapaneseVowels", split="train", return_X_y=True)
    X_test, y_test = load_UCR_UEA_dataset("JapaneseVowels", split="test", return_X_y=True)
    X, y = X.iloc[::3], y[::3]                       # 90 series, 10 per class
    X_test, y_test = X_test.iloc[::6], y_test[::6]   # 62 series
    assert len({len(X.iloc[i, 0]) for i in range(len(X))}) > 1  # unequal lengths
    clf = SequenceClassifier(backbone="gru", d_model=16, n_layers=1, epochs=10, lr=1e-2, random_state=0)
    clf.fit(X, y)
    assert clf.n_channels_ == 12 and len(clf.classes_) == 9
    proba = clf.predict_proba(X_test)
    assert proba.shape == (62, 9)
    assert clf.score(X_test, y_test) > 0.6  # chance: 1/9


# --------------------------------------------------------------------------------------------
# bad input


def test_forecaster_series_too_short():
    with pytest.raises(ValueError, match=r"has 40 observations.*window \+ horizon = 30 \+ 12 = 42"):
        SequenceForecaster(window=30).fit(periodic(40), fh=range(1, 13))


def test_forecaster_patch_longer_than_window():
    with pytest.raises(ValueError, match=r"patch_len \(16\) must not exceed window \(12\)"):
        small_forecaster(patch_len=16).fit(periodic(60), fh=1)


@pytest.mark.parametrize("fh", [[-1, 1], 0])
def test_forecaster_in_sample_fh(fh):
    # sktime stops it (capability:insample is False) before the estimator's own ValueError
    with pytest.raises((NotImplementedError, ValueError), match="in-sample"):
        small_forecaster().fit(periodic(60), fh=fh)


def test_forecaster_missing_values():
    y = periodic(60)
    y.iloc[30] = np.nan
    with pytest.raises(ValueError, match="missing"):
        small_forecaster().fit(y, fh=1)


@pytest.mark.parametrize("make, data", [
    (lambda: SequenceForecaster(backbone="lstm"), lambda: (periodic(60), None)),
    (lambda: SequenceClassifier(backbone="lstm"), lambda: rising_falling(6, seed=0)),
], ids=["forecaster", "classifier"])
def test_unknown_backbone(make, data):
    est, (a, b) = make(), data()
    fit = (lambda: est.fit(a, fh=1)) if b is None else (lambda: est.fit(a, b))
    with pytest.raises(ValueError, match=f"unknown backbone 'lstm'; choose one of {BACKBONE_NAMES}"):
        fit()


def test_classifier_unknown_pooling():
    X, y = rising_falling(6, seed=0)
    with pytest.raises(ValueError, match="unknown pooling 'max'; choose one of last, mean"):
        small_classifier(pooling="max").fit(X, y)


def test_classifier_bidirectional_must_be_a_bool():
    X, y = rising_falling(8, seed=0)
    with pytest.raises(ValueError, match="SequenceClassifier: bidirectional must be True or False, got 'yes'"):
        small_classifier(bidirectional="yes").fit(X, y)
    clf = small_classifier(bidirectional=True).fit(X, y)
    assert clf.network_.model_rev is not None and clf.predict(X).shape == (len(y),)


def test_classifier_augment_is_used_and_checked():
    X, y = rising_falling(16, seed=3)
    with pytest.raises(ValueError, match="SequenceClassifier: augment: unknown augmentation 'warp'"):
        small_classifier(augment=["warp"]).fit(X, y)
    plain = small_classifier(random_state=2, augment=None).fit(X, y).predict_proba(X)
    np.testing.assert_array_equal(plain, small_classifier(random_state=2, augment=()).fit(X, y).predict_proba(X))
    warped = [small_classifier(random_state=2, augment=("window_warp", "jitter")).fit(X, y).predict_proba(X)
              for _ in range(2)]
    np.testing.assert_array_equal(warped[0], warped[1])        # seeded: the same draws every fit
    assert not np.allclose(plain, warped[0])                   # and they did change the training


def test_classifier_unknown_stem():
    X, y = rising_falling(6, seed=0)
    with pytest.raises(ValueError, match="unknown stem 'fcn'; choose one of conv, none"):
        small_classifier(stem="fcn").fit(X, y)


def test_classifier_nan_in_x():
    X = np.random.default_rng(0).standard_normal((8, 2, 20))
    X[3, 1, 5] = np.nan
    with pytest.raises(ValueError, match="missing values"):
        small_classifier().fit(X, np.array(["a", "b"] * 4))


def test_classifier_wrong_channels_at_predict():
    X = np.random.default_rng(0).standard_normal((8, 2, 20))
    clf = small_classifier().fit(X, np.array(["a", "b"] * 4))
    with pytest.raises(ValueError, match="X has 3 channels, the classifier was fitted on 2"):
        clf.predict(np.zeros((3, 3, 20)))


def test_unknown_label_against_fitted_classes():
    """Labels are encoded with rlts.data.panel.encode_labels (in fit, against np.unique(y));
    encoding new labels against the fitted classes_ names a label never seen in training."""
    X, y = rising_falling(8, seed=0)
    clf = small_classifier().fit(X, y)
    codes, _ = encode_labels(["rising", "falling"], clf.classes_)
    assert codes.tolist() == [1, 0]
    with pytest.raises(ValueError, match=r"label 'sideways' is not one of the training classes \['falling', 'rising'\]"):
        encode_labels(["rising", "sideways"], clf.classes_)


def test_ema_is_passed_to_the_trainer_and_checked():
    """The averaged weights become the fitted model (the average itself is tested against a
    loop in tests/test_trainer.py): with averaging the forecasts change, and bad values are named."""
    y = periodic(80)
    plain = small_forecaster(random_state=3).fit(y, fh=[1, 2]).predict()
    averaged = small_forecaster(random_state=3, ema=0.5).fit(y, fh=[1, 2]).predict()
    assert not np.allclose(plain.to_numpy(), averaged.to_numpy())
    with pytest.raises(ValueError, match=r"SequenceForecaster: ema must lie in \[0, 1\), got 1.0"):
        small_forecaster(ema=1.0).fit(y, fh=1)
    X, labels = rising_falling(8, seed=0)
    with pytest.raises(ValueError, match=r"SequenceClassifier: ema must lie in \[0, 1\), got -0.1"):
        small_classifier(ema=-0.1).fit(X, labels)


def test_classifier_defaults_are_rlts_classify_defaults():
    """`SequenceClassifier()` is the model docs/results.md measures with `rlts classify`."""
    from rlts.tasks.supervised.classify import parse_classify_config

    cfg = parse_classify_config(["--dataset", "GunPoint"])
    params = SequenceClassifier().get_params()
    for key in ("backbone", "d_model", "n_layers", "pooling", "patch_len", "stem", "bidirectional", "dropout"):
        assert params[key] == getattr(cfg, key), key
    for key in ("epochs", "batch_size", "lr", "weight_decay", "ema", "plateau_patience", "patience"):
        assert params[key] == getattr(cfg.train, key), key
    assert (cfg.val_fraction, cfg.train.monitor, cfg.train.min_lr) == (0.0, "train", 1e-4)  # fixed in _fit
    assert (cfg.train.monitor, cfg.train.min_lr) == (CLASSIFIER_TRAIN.monitor, CLASSIFIER_TRAIN.min_lr)
    assert list(params["augment"]) == cfg.augment == ["window_warp"]


def test_classifier_monitors_the_training_loss():
    X, y = rising_falling(20, seed=4)
    clf = small_classifier(epochs=6, lr=0.5, plateau_patience=1, patience=0).fit(X, y)  # lr: the loss jumps
    assert clf.train_summary_["epochs"] == 6 and np.isfinite(clf.train_summary_["best_train_loss"])
    with pytest.raises(ValueError, match="plateau_patience must be a non-negative int, got -1"):
        small_classifier(plateau_patience=-1).fit(X, y)


def test_forecaster_intervals_are_split_conformal_on_the_latest_windows():
    """The latest `calibration` share of windows is held out of training; its absolute errors
    (checked against windows cut by hand) give half-widths per step and column; quantiles
    are symmetric around the point forecast and nested; calibration 0 gives no intervals."""
    import math

    y = load_airline()
    window, H = 12, 6
    f = SequenceForecaster(backbone="gru", d_model=8, n_layers=1, window=window, patch_len=4, epochs=2,
                           random_state=0).fit(y, fh=range(1, H + 1))
    n_windows = len(y) - window - H + 1
    n_cal = round(0.2 * n_windows)
    assert f.residuals_.shape == (n_cal, H, 1)
    v = (y.to_numpy(dtype=np.float64) - f.scaler_.mean[0]) / f.scaler_.std[0]
    for k, start in enumerate(range(n_windows - n_cal, n_windows)):
        x = torch.tensor(v[start:start + window], dtype=torch.float32)[None, :, None]
        with torch.no_grad():
            pred = f.network_(x)[0, :, 0].double().numpy()
        assert np.allclose(f.residuals_[k, :, 0], np.abs(pred - v[start + window:start + window + H]), atol=1e-5)
    point = f.predict()
    q = f.predict_quantiles(alpha=[0.025, 0.1, 0.5, 0.9, 0.975])
    name = q.columns.get_level_values(0)[0]
    assert np.allclose(q[(name, 0.5)], point)
    for lo, hi, level in ((0.1, 0.9, 0.8), (0.025, 0.975, 0.95)):
        rank = min(n_cal, math.ceil((n_cal + 1) * level))
        half = np.sort(f.residuals_[:, :, 0], axis=0)[rank - 1] * f.scaler_.std[0]
        assert np.allclose(q[(name, hi)] - point, half) and np.allclose(point - q[(name, lo)], half)
    assert (q[(name, 0.025)] <= q[(name, 0.1)]).all() and (q[(name, 0.9)] <= q[(name, 0.975)]).all()
    interval = f.predict_interval(coverage=0.8)
    assert np.allclose(interval[(name, 0.8, "lower")], q[(name, 0.1)])
    none = SequenceForecaster(backbone="gru", d_model=4, n_layers=1, window=window, patch_len=4, epochs=1,
                              random_state=0, calibration=0.0).fit(y, fh=range(1, H + 1))
    with pytest.raises(ValueError, match="intervals need calibration windows"):
        none.predict_interval(coverage=0.8)
    with pytest.raises(ValueError, match=r"calibration must be a share in \[0, 1\), got 1.0"):
        SequenceForecaster(calibration=1.0, window=window).fit(y, fh=range(1, H + 1))
