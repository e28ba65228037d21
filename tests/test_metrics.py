"""rlts.metrics against naive loops in float64: MAE, RMSE, sMAPE, MASE, seasonal scale,
split-conformal quantiles (finite-sample rank) and coverage, on adversarial values."""
import math

import numpy as np
import pytest

from rlts.metrics import MetricSums, conformal_quantiles, coverage, point_metrics, seasonal_scale


def _loops(y, f, scale):
    n = mae = sq = sm = ms = 0.0
    N, H, C = y.shape
    for i in range(N):
        for h in range(H):
            for c in range(C):
                e = abs(float(f[i, h, c]) - float(y[i, h, c]))
                d = abs(float(y[i, h, c])) + abs(float(f[i, h, c]))
                mae += e
                sq += e * e
                sm += 0.0 if d == 0 else 2 * e / d
                ms += e / scale[c]
                n += 1
    return mae / n, math.sqrt(sq / n), 100 * sm / n, ms / n


def test_point_metrics_match_loops_and_batches_add_up():
    rng = np.random.default_rng(0)
    y = rng.normal(size=(7, 5, 3)) * np.array([1.0, 1e3, 1e-3])
    f = y + rng.normal(size=y.shape)
    y[0, 0, 0] = f[0, 0, 0] = 0.0                       # 0/0 in sMAPE counts as 0
    scale = np.array([0.5, 2.0, 3.0])
    want = _loops(y, f, scale)
    got = point_metrics(y, f, scale)
    assert [got[k] for k in ("mae", "rmse", "smape", "mase")] == pytest.approx(want, rel=1e-12)
    sums = MetricSums(scale)
    for part in np.array_split(np.arange(7), 3):
        sums.add(y[part], f[part])
    assert sums.values() == pytest.approx(got, rel=1e-12)
    assert point_metrics(y, f)["mase"] is None
    with pytest.raises(ValueError, match="differs from the truth"):
        point_metrics(y, f[:, :4])


def test_seasonal_scale_is_the_seasonal_naive_mae():
    t = np.arange(50, dtype=float)
    train = np.stack([np.sin(t), np.full(50, 3.0), t], axis=1)
    for m in (1, 7):
        want = [np.mean([abs(train[i, c] - train[i - m, c]) for i in range(m, 50)]) for c in range(3)]
        want[1] = 1.0                                    # a constant column: MASE = MAE
        assert seasonal_scale(train, m) == pytest.approx(want)
    assert seasonal_scale(train[:5], 7).tolist() == [1.0, 1.0, 1.0]


def test_conformal_quantile_is_the_finite_sample_rank():
    rng = np.random.default_rng(1)
    r = np.abs(rng.standard_cauchy(size=(19, 4, 2)))
    for level in (0.5, 0.8, 0.95):
        k = math.ceil(20 * level)
        want = np.array([[sorted(r[:, h, c])[min(k, 19) - 1] for c in range(2)] for h in range(4)])
        assert np.array_equal(conformal_quantiles(r, level), want)
    with pytest.raises(ValueError, match="level must lie in"):
        conformal_quantiles(r, 1.0)


def test_conformal_intervals_cover_exchangeable_errors():
    """Calibrated on one sample of errors, the intervals cover about `level` of a new one."""
    rng = np.random.default_rng(2)
    calib = rng.standard_t(3, size=(2000, 3, 2))
    test = rng.standard_t(3, size=(20000, 3, 2))
    for level in (0.8, 0.95):
        q = conformal_quantiles(np.abs(calib), level)
        assert abs(coverage(test, -q, q) - level) < 0.02
    assert coverage(np.array([0.0, 1.0, 2.0]), np.array([0.0, 1.5, 0.0]), np.array([1.0, 2.0, 1.0])) == pytest.approx(1 / 3)


def test_weighted_quantile_loss_matches_a_loop():
    from rlts.metrics import QuantileLossSums, interval_taus

    assert interval_taus([80, 95]) == [0.025, 0.1, 0.5, 0.9, 0.975]
    rng = np.random.default_rng(3)
    y = rng.normal(size=(6, 4, 2)) + 5
    f = y + rng.normal(size=y.shape)
    taus = interval_taus([80])
    qs = {t: f + (t - 0.5) * 3 for t in taus}
    sums = QuantileLossSums(taus)
    for part in np.array_split(np.arange(6), 2):
        sums.add(y[part], {t: q[part] for t, q in qs.items()})
    want = []
    for t in taus:
        tot = 0.0
        for v, q in zip(y.ravel(), qs[t].ravel()):
            tot += (v - q) * (t - (1.0 if v <= q else 0.0))          # the pinball loss, >= 0
        want.append(2 * tot / np.abs(y).sum())
    got = sums.values()
    assert got["wql"] == pytest.approx(np.mean(want), rel=1e-12)
    inside = np.mean((y >= qs[0.1]) & (y <= qs[0.9]))
    assert got["coverage_80"] == pytest.approx(inside)


def test_rolling_conformal_uses_only_errors_known_at_each_origin():
    from rlts.metrics import rolling_conformal

    rng = np.random.default_rng(4)
    known, stream = rng.normal(size=(9, 3, 2)), rng.normal(size=(11, 3, 2)) * 3
    for lag, size, every in ((3, 5, 1), (1, 20, 1), (3, 4, 4)):
        got = rolling_conformal(known, stream, 0.8, lag, size, every)
        for i in range(11):
            at = i - i % every                                   # the last recomputation
            pool = list(np.abs(known)) + [np.abs(stream[k]) for k in range(0, max(0, at - lag + 1))]
            pool = np.array(pool[-size:])
            rank = min(len(pool), math.ceil((len(pool) + 1) * 0.8))
            assert np.array_equal(got.half[i], np.sort(pool, axis=0)[rank - 1]), (lag, size, every, i)
        assert got.next_level == 0.8                             # no adaptation without gamma
    with pytest.raises(ValueError, match="no error is known"):
        rolling_conformal(known[:0], stream, 0.8, 3, 5)


@pytest.mark.parametrize("lag, size, every, gamma", [(3, 5, 1, 0.05), (1, 30, 1, 0.2), (4, 6, 3, 0.02), (2, 8, 2, 1.0)])
def test_adaptive_rolling_conformal_matches_a_loop(lag, size, every, gamma):
    """Adaptive levels (delayed feedback of each window's miss share) against an element-wise
    loop, on a stream whose errors grow fourfold midway, so the level must rise; gamma 1 drives
    the level past 0 and 1 (the smallest and the largest error)."""
    from _intervals import adaptive_conformal_loop

    from rlts.metrics import rolling_conformal

    rng = np.random.default_rng(5)
    known = rng.normal(size=(7, 3, 2))
    stream = rng.normal(size=(41, 3, 2)) * np.where(np.arange(41) < 20, 1.0, 4.0)[:, None, None]
    for level in (0.8, 0.95):
        got = rolling_conformal(known, stream, level, lag, size, every, gamma)
        want, want_next = adaptive_conformal_loop(known, stream, level, lag, size, every, gamma)
        np.testing.assert_array_equal(got.half, want)
        assert got.next_level == pytest.approx(want_next, abs=1e-12)
    # with every error kept, a fixed level under-covers after the jump; the adapted one less so
    fixed = rolling_conformal(known, stream, 0.8, lag, 100, every)
    adapted = rolling_conformal(known, stream, 0.8, lag, 100, every, gamma)
    late = slice(30, None)
    assert (np.abs(stream[late]) <= adapted.half[late]).mean() > (np.abs(stream[late]) <= fixed.half[late]).mean()
    assert adapted.next_level > 0.8


def test_adaptive_rolling_conformal_skips_windows_without_truth_and_checks_its_arguments():
    from rlts.metrics import rolling_conformal

    rng = np.random.default_rng(6)
    known, stream = rng.normal(size=(5, 2, 2)), rng.normal(size=(9, 2, 2))
    holed = stream.copy()
    holed[3] = np.nan                                            # a window no series covers: no feedback
    holed[5, :, 1] = np.nan                                      # a window one series covers: its share
    got = rolling_conformal(known, holed, 0.8, 1, 20, 1, 0.1)
    dense = rolling_conformal(known, np.delete(holed, 3, axis=0), 0.8, 1, 20, 1, 0.1)
    assert got.next_level == pytest.approx(dense.next_level, abs=1e-12) and np.isfinite(got.half).all()
    for bad, match in (({"gamma": -0.1}, "gamma"), ({"level": 1.0}, "level")):
        kw = {"level": 0.8, "gamma": 0.0, **bad}
        with pytest.raises(ValueError, match=match):
            rolling_conformal(known, stream, kw["level"], 1, 5, 1, kw["gamma"])


def test_missing_truth_is_left_out_of_every_metric_rank_and_share():
    """NaN truth (a series that does not cover a window): the metrics, conformal ranks,
    coverage and quantile losses equal those computed by loops over the elements that exist."""
    from rlts.metrics import QuantileLossSums

    rng = np.random.default_rng(3)
    y = rng.normal(size=(11, 4, 3)) * 5
    f = y + rng.normal(size=y.shape)
    y[:4, :, 1] = np.nan                      # channel 1 lacks the first 4 windows
    y[7:, :, 2] = np.nan                      # channel 2 the last 4
    y[:, :, 0][rng.random((11, 4)) < 0.2] = np.nan
    scale = np.array([1.0, 2.0, 0.5])
    keep = ~np.isnan(y)
    m = point_metrics(y, f, scale)
    e = np.abs(f - y)[keep]
    assert m["mae"] == pytest.approx(e.mean(), rel=1e-12)
    assert m["rmse"] == pytest.approx(math.sqrt((e ** 2).mean()), rel=1e-12)
    assert m["mase"] == pytest.approx((np.abs(f - y) / scale)[keep].mean(), rel=1e-12)
    r = np.abs(f - y)
    for level in (0.5, 0.8, 0.95):
        q = conformal_quantiles(r, level)
        for h in range(4):
            for c in range(3):
                vals = sorted(v for v in r[:, h, c] if not np.isnan(v))
                k = min(len(vals), math.ceil((len(vals) + 1) * level))
                assert q[h, c] == vals[k - 1]
    assert np.isnan(conformal_quantiles(np.full((3, 2, 1), np.nan), 0.8)).all()
    lo, hi = f - 1.0, f + 1.0
    assert coverage(y, lo, hi) == pytest.approx(((y >= lo) & (y <= hi))[keep].mean())
    sums = QuantileLossSums([0.1, 0.5, 0.9])
    sums.add(y, {0.1: lo, 0.5: f, 0.9: hi})
    ref = QuantileLossSums([0.1, 0.5, 0.9])
    ref.add(y[keep], {0.1: lo[keep], 0.5: f[keep], 0.9: hi[keep]})
    assert sums.values() == pytest.approx(ref.values(), rel=1e-12)
    train = rng.normal(size=(30, 2))
    train[:9, 1] = np.nan
    s = seasonal_scale(train, 3)
    assert s[1] == pytest.approx(np.abs(train[12:, 1] - train[9:-3, 1]).mean(), rel=1e-12)
