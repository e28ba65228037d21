"""End-to-end tests of `rlts forecast` (tasks/supervised/forecast.py) on tiny synthetic series."""
import json
import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from _intervals import adaptive_conformal_loop

from rlts.tasks.cli import main
from rlts.tasks.supervised.forecast import parse_forecast_config, run_forecast

N_ROWS, WINDOW, HORIZON = 600, 48, 24  # the debug overlay: window 48, horizon 24
ETTH1 = Path(__file__).resolve().parents[2] / "shared" / "data" / "ett" / "ETTh1.csv"


def _write_series(path: Path, n: int = N_ROWS, nan_at=None) -> Path:
    t = np.arange(n)
    rng = np.random.default_rng(0)
    frame = pd.DataFrame({
        "date": pd.date_range("2021-01-01", periods=n, freq="h"),
        "a": np.sin(2 * np.pi * t / 24) + 0.1 * rng.standard_normal(n),
        "b": np.cos(2 * np.pi * t / 12) + 0.1 * rng.standard_normal(n),
        "OT": np.sin(2 * np.pi * t / 24 + 1) + 0.5 * np.sin(2 * np.pi * t / 8) + 0.1 * rng.standard_normal(n),
    })
    if nan_at is not None:
        frame.loc[nan_at, "b"] = np.nan
    frame.to_csv(path, index=False)
    return path


def _run(argv, log=None):
    return run_forecast(parse_forecast_config(argv), log=log if log is not None else (lambda *_: None))


@pytest.fixture(scope="module")
def e2e(tmp_path_factory):
    root = tmp_path_factory.mktemp("forecast")
    csv = _write_series(root / "sines.csv")
    out = root / "out"
    state = _run(["--csv", str(csv), "--config", "debug", "--models", "aaren,linear,naive",
                  "--epochs", "2", "--max_train_windows", "128", "--out", str(out)])
    return out, state


def test_end_to_end_outputs(e2e):
    out, state = e2e
    results = json.loads((out / "results.json").read_text())
    assert results == json.loads(json.dumps(state))
    for model in ("aaren", "linear", "naive"):
        r = results["results"][model][str(HORIZON)]
        assert np.isfinite(r["mse"]) and np.isfinite(r["mae"]) and r["mse"] > 0
    for name in ("results.md", "results.csv", "predictions.png"):
        assert (out / name).stat().st_size > 0, name
    for model in ("aaren", "linear"):
        assert list((out / f"{model}-h{HORIZON}" / "tb").glob("events.out.tfevents.*"))
        assert list((out / f"{model}-h{HORIZON}" / "checkpoints").glob("*.pt"))
    table = (out / "results.csv").read_text().splitlines()
    assert table[0].split(",")[:4] == ["model", "horizon", "mse", "mae"] and len(table) == 4
    assert results["config"]["window"] == WINDOW and results["protocol"]["name"] == "ratio"


def test_trained_models_beat_naive(e2e):
    res = e2e[1]["results"]
    naive = res["naive"][str(HORIZON)]["mse"]
    assert res["linear"][str(HORIZON)]["mse"] < 0.8 * naive
    assert res["aaren"][str(HORIZON)]["mse"] < naive


def test_test_window_count_follows_the_split(e2e):
    state = e2e[1]
    n_train, n_test = int(N_ROWS * 0.7), int(N_ROWS * 0.2)  # TSLib ratio split, computed here
    n_val = N_ROWS - n_train - n_test
    assert state["protocol"]["rows"] == {"train": n_train, "val": n_val, "test": n_test}
    # The test range starts WINDOW rows early: (n_test + WINDOW) rows, stride-1 windows of WINDOW + HORIZON.
    expected = (n_test + WINDOW) - (WINDOW + HORIZON) + 1
    for model in ("aaren", "linear", "naive"):
        assert state["results"][model][str(HORIZON)]["n_test_windows"] == expected == 97


def test_resume_skips_finished_pairs(tmp_path):
    csv = _write_series(tmp_path / "sines.csv")
    out = tmp_path / "out"
    argv = ["--csv", str(csv), "--config", "debug", "--models", "linear,naive", "--horizon", "12", "24",
            "--max_train_windows", "64", "--plots", "false", "--out", str(out)]
    first = _run(argv)
    ckpt = {h: out / f"linear-h{h}" / "checkpoints" for h in (12, 24)}
    mtimes = {h: {p: p.stat().st_mtime_ns for p in ckpt[h].iterdir()} for h in ckpt}
    # Lose the naive/24 and linear/12 entries (as if the run was killed before writing them).
    data = json.loads((out / "results.json").read_text())
    del data["results"]["naive"]["24"], data["results"]["linear"]["12"]
    (out / "results.json").write_text(json.dumps(data))
    log = []
    second = _run(argv, log=log.append)
    assert any(line.startswith("[skip] linear h=24") for line in log)
    assert any(line.startswith("[skip] naive h=12") for line in log)
    assert any(line.startswith("[resume] linear h=12") for line in log)  # from its checkpoint
    # Nothing was retrained: linear's checkpoints are untouched (its training had finished).
    assert {h: {p: p.stat().st_mtime_ns for p in ckpt[h].iterdir()} for h in ckpt} == mtimes
    for model in ("linear", "naive"):
        for h in ("12", "24"):
            assert second["results"][model][h]["mse"] == pytest.approx(first["results"][model][h]["mse"])
    assert len((out / "results.csv").read_text().splitlines()) == 5


def test_rerun_refuses_changed_model_settings_but_not_new_models(tmp_path):
    """Results made with other model or training settings are never reported as if made with
    the new ones; adding models or horizons, or toggling the progress bar, is fine."""
    csv = _write_series(tmp_path / "sines.csv")
    out = tmp_path / "out"
    argv = ["--csv", str(csv), "--config", "debug", "--models", "naive", "--horizon", "12", "--plots", "false",
            "--out", str(out)]
    _run(argv)
    for change in (["--d_model", "32"], ["--patch_len", "8"], ["--train.lr", "0.01"], ["--seed", "1"]):
        with pytest.raises(ValueError, match="different setup"):
            _run(argv + change)
    state = _run(argv + ["--train.progress", "true"])
    assert set(state["results"]) == {"naive"}
    state = _run([*argv[:5], "naive,linear", *argv[6:]])
    assert set(state["results"]) == {"naive", "linear"}


def test_rerun_refuses_a_folder_without_a_training_setting(tmp_path):
    """A results folder whose config has no `train.ema` was made without weight averaging; the
    forecast default is 0.99, so such a folder is not resumed as if made with it."""
    csv = _write_series(tmp_path / "sines.csv")
    out = tmp_path / "out"
    argv = ["--csv", str(csv), "--config", "debug", "--models", "naive", "--horizon", "12", "--plots", "false",
            "--out", str(out)]
    _run(argv + ["--train.ema", "0"])
    data = json.loads((out / "results.json").read_text())
    del data["config"]["train"]["ema"]  # a config that does not record the key
    (out / "results.json").write_text(json.dumps(data))
    with pytest.raises(ValueError, match=r"different setup \(train\.ema: 0\.0 -> 0\.99\)"):
        _run(argv + ["--train.ema", "0.99"])  # the defaults' averaging (the debug overlay has none)
    assert set(_run(argv + ["--train.ema", "0"])["results"]) == {"naive"}


def _cli_error(capsys, argv):
    code = main(["forecast", *argv])
    err = capsys.readouterr().err.strip()
    assert code == 2
    assert len(err.splitlines()) == 1 and err.startswith("rlts forecast: error: ")
    assert "Traceback" not in err
    return err


def test_rerun_compares_the_csv_by_content_not_by_its_path(tmp_path, monkeypatch):
    """Another file under the same name is refused (its results would be mixed with the old
    ones in one table); the same file spelled another way resumes."""
    csv = _write_series(tmp_path / "sines.csv")
    out = tmp_path / "out"
    argv = ["--config", "debug", "--models", "naive", "--horizon", "12", "--plots", "false", "--out", str(out)]
    _run(["--csv", str(csv), *argv])
    assert len(json.loads((out / "results.json").read_text())["config"]["data_sha256"]["csv"]) == 64
    monkeypatch.chdir(tmp_path)
    log = []
    _run(["--csv", "./sines.csv", *argv], log=log.append)  # relative spelling: the same file
    assert any(line.startswith("[skip] naive h=12") for line in log)
    written = (out / "results.json").read_text()
    _write_series(csv, n=N_ROWS - 50)  # other contents, same path
    with pytest.raises(ValueError, match=r"holds results made on another csv file \('.*sines.csv': sha256"):
        _run(["--csv", str(csv), *argv])
    assert (out / "results.json").read_text() == written


def test_out_folder_with_files_but_no_results_is_refused(tmp_path):
    csv = _write_series(tmp_path / "sines.csv")
    out = tmp_path / "mine"
    out.mkdir()
    (out / "results.md").write_text("my own table")
    with pytest.raises(ValueError, match=r"already holds results.md but no results.json .* would be overwritten"):
        _run(["--csv", str(csv), "--config", "debug", "--models", "naive", "--horizon", "12", "--out", str(out)])
    assert sorted(os.listdir(out)) == ["results.md"] and (out / "results.md").read_text() == "my own table"
    # hidden files do not count: a killed run's half-written .results.json.*.tmp, .DS_Store
    hidden = tmp_path / "hidden"
    hidden.mkdir()
    (hidden / ".results.json.k3j2.tmp").write_text("{")
    (hidden / ".DS_Store").write_text("")
    state = _run(["--csv", str(csv), "--config", "debug", "--models", "naive", "--horizon", "12", "--plots", "false",
                  "--out", str(hidden)])
    assert "naive" in state["results"]


def test_added_models_keep_the_earlier_models_in_the_plot(tmp_path, monkeypatch):
    import rlts.tasks.supervised.forecast as forecast

    plotted = []
    monkeypatch.setattr(forecast, "plot_predictions", lambda path, *a: plotted.append(sorted(a[-1])))
    csv = _write_series(tmp_path / "sines.csv")
    argv = ["--csv", str(csv), "--config", "debug", "--horizon", "12", "--out", str(tmp_path / "out")]
    _run([*argv, "--models", "naive"])
    _run([*argv, "--models", "linear"])
    assert plotted == [["naive"], ["linear", "naive"]]


def test_day_first_dates_need_and_take_date_format(tmp_path, capsys):
    csv = _write_series(tmp_path / "sines.csv")
    frame = pd.read_csv(csv)
    frame["date"] = pd.to_datetime(frame["date"]).dt.strftime("%d/%m/%Y %H:%M")  # 13/01/2021 ...
    frame.to_csv(csv, index=False)
    argv = ["--csv", str(csv), "--config", "debug", "--models", "naive", "--horizon", "12", "--plots", "false"]
    err = _cli_error(capsys, [*argv, "--out", str(tmp_path / "a")])
    assert "not increasing" in err and "--date_format %d/%m/%Y" in err
    state = _run([*argv, "--date_format", "%d/%m/%Y %H:%M", "--out", str(tmp_path / "b")])
    assert np.isfinite(state["results"]["naive"]["12"]["mse"])


def test_cli_errors_are_one_line_and_keep_out(tmp_path, capsys):
    out = tmp_path / "out"
    out.mkdir()
    keep = out / "notes.txt"
    keep.write_text("mine")
    csv = _write_series(tmp_path / "sines.csv")
    base = ["--config", "debug", "--out", str(out)]

    err = _cli_error(capsys, ["--csv", str(csv), "--target", "missing_col", *base])
    assert "'missing_col'" in err

    nan_csv = _write_series(tmp_path / "nan.csv", nan_at=[5, 6])
    err = _cli_error(capsys, ["--csv", str(nan_csv), *base])
    assert "'b'" in err and "NaN" in err

    err = _cli_error(capsys, ["--csv", str(csv), "--models", "linear,bogus", *base])
    assert "'bogus'" in err and "naive" in err and "aaren" in err

    short = _write_series(tmp_path / "short.csv", n=60)
    err = _cli_error(capsys, ["--csv", str(short), *base])
    assert "too short" in err

    err = _cli_error(capsys, ["--csv", str(csv), "--no_such_key", "1", *base])
    assert "no_such_key" in err

    err = _cli_error(capsys, ["--csv", str(csv), "--patch_len", "49", *base])  # debug window: 48
    assert "patch_len must lie in [1, window] = [1, 48], got 49" in err

    err = _cli_error(capsys, ["--csv", str(csv), "--epochs", "0", *base])
    assert "train.epochs must be at least 1, got 0" in err

    assert keep.read_text() == "mine" and sorted(os.listdir(out)) == ["notes.txt"]


def test_cli_runs_with_overrides(tmp_path, capsys):
    csv = _write_series(tmp_path / "sines.csv")
    out = tmp_path / "out"
    assert main(["forecast", "--csv", str(csv), "--config", "debug", "--models", "naive", "--plots", "false",
                 "--out", str(out)]) == 0
    assert "| naive | 24 |" in capsys.readouterr().out
    assert "naive" in json.loads((out / "results.json").read_text())["results"]


@pytest.mark.skipif(not ETTH1.is_file(), reason=f"{ETTH1} not present")
def test_etth1_debug_window_count(tmp_path):
    state = _run(["--csv", str(ETTH1), "--config", "debug", "--models", "naive,linear", "--window", "96",
                  "--horizon", "96", "--epochs", "1", "--max_train_windows", "64", "--max_val_windows", "64",
                  "--plots", "false", "--out", str(tmp_path / "out")])
    assert state["protocol"]["name"] == "ett-hour"
    assert state["protocol"]["rows"] == {"train": 8640, "val": 2880, "test": 2880}
    for model in ("naive", "linear"):
        r = state["results"][model]["96"]
        assert r["n_test_windows"] == 2785 and np.isfinite(r["mse"])


def _killed_at_evaluation(monkeypatch, argv, n: int):
    """Run argv with a KeyboardInterrupt at the n-th test evaluation; returns the real evaluate_windows."""
    import rlts.tasks.supervised.forecast as forecast

    real = forecast.evaluate_windows
    calls = []

    def killed(*args, **kwargs):
        calls.append(1)
        if len(calls) == n:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(forecast, "evaluate_windows", killed)
    with pytest.raises(KeyboardInterrupt):
        _run(argv)
    return real


def test_interrupted_run_keeps_written_pairs_and_resumes(tmp_path, monkeypatch):
    import rlts.tasks.supervised.forecast as forecast

    csv = _write_series(tmp_path / "sines.csv")
    out = tmp_path / "out"
    argv = ["--csv", str(csv), "--config", "debug", "--models", "linear,naive", "--horizon", "12", "24",
            "--epochs", "2", "--max_train_windows", "64", "--plots", "false", "--out", str(out)]
    real = _killed_at_evaluation(monkeypatch, argv, 3)  # order: linear/12, naive/12, linear/24 <- killed here
    written = json.loads((out / "results.json").read_text())["results"]
    assert set(written["linear"]) == {"12"} and set(written["naive"]) == {"12"}
    assert list((out / "linear-h24" / "checkpoints").glob("*.pt"))  # its training was saved

    monkeypatch.setattr(forecast, "evaluate_windows", real)
    log = []
    state = _run(argv, log=log.append)
    assert [line.split(":")[0] for line in log if line.startswith(("[skip]", "[resume]", "[train]", "[done]"))] == [
        "[skip] linear h=12", "[skip] naive h=12", "[resume] linear h=24 (2352 parameters)",
        "[done] linear h=24", "[done] naive h=24"]
    assert all(set(state["results"][m]) == {"12", "24"} for m in ("linear", "naive"))


def test_forecast_defaults_average_the_weights():
    from rlts.tasks.supervised.forecast import parse_forecast_config
    cfg = parse_forecast_config(["--csv", "x.csv"])
    assert cfg.train.ema == 0.99 and parse_forecast_config(["--csv", "x.csv", "--train.ema", "0"]).train.ema == 0.0


def test_seeds_are_the_single_seed_runs_summarised(tmp_path):
    csv = _write_series(tmp_path / "sines.csv")
    base = ["--csv", str(csv), "--config", "debug", "--models", "linear,naive", "--epochs", "2",
            "--max_train_windows", "64", "--plots", "false"]
    single = {s: _run([*base, "--seed", str(s), "--out", str(tmp_path / f"s{s}")])["results"] for s in (3, 4, 5)}
    out = tmp_path / "three"
    state = _run([*base, "--seed", "3", "--seeds", "3", "--out", str(out)])
    r = state["results"]["linear"][str(HORIZON)]
    mse = [single[s]["linear"][str(HORIZON)]["mse"] for s in (3, 4, 5)]
    assert [run["seed"] for run in r["runs"]] == [3, 4, 5]
    assert [run["mse"] for run in r["runs"]] == mse                  # each run is its --seed S run
    assert len(set(mse)) == 3                                        # and the seeds do differ
    assert r["mse"] == pytest.approx(np.mean(mse), rel=1e-12)
    assert r["mse_std"] == pytest.approx(np.std(mse, ddof=1), rel=1e-9)
    assert r["train_time_s"] == pytest.approx(sum(run["train_time_s"] for run in r["runs"]), abs=1e-3)
    assert state["results"]["naive"][str(HORIZON)]["mse_std"] == 0.0
    for s in (3, 4, 5):
        assert list((out / f"linear-h{HORIZON}" / f"seed{s}" / "checkpoints").glob("*.pt"))
    header = (out / "results.csv").read_text().splitlines()[0].split(",")
    assert header[:6] == ["model", "horizon", "mse", "mse_std", "mae", "mae_std"] and "seeds" in header
    assert state["partial"] == {}
    with pytest.raises(ValueError, match="different setup \\(seeds: 3 -> 2\\)"):
        _run([*base, "--seed", "3", "--seeds", "2", "--out", str(out)])
    with pytest.raises(ValueError, match="seeds must be at least 1, got 0"):
        _run([*base, "--seeds", "0", "--out", str(tmp_path / "zero")])


def test_interrupted_seeds_keep_the_finished_runs(tmp_path, monkeypatch):
    import rlts.tasks.supervised.forecast as forecast

    csv = _write_series(tmp_path / "sines.csv")
    out = tmp_path / "out"
    argv = ["--csv", str(csv), "--config", "debug", "--models", "linear", "--seeds", "3", "--epochs", "2",
            "--max_train_windows", "64", "--plots", "false", "--out", str(out)]
    real = _killed_at_evaluation(monkeypatch, argv, 2)  # the second seed's
    written = json.loads((out / "results.json").read_text())
    assert written["results"] == {} and [r["seed"] for r in written["partial"]["linear"][str(HORIZON)]] == [0]
    monkeypatch.setattr(forecast, "evaluate_windows", real)
    log = []
    state = _run(argv, log=log.append)
    assert [line.split(" (")[0] for line in log if line.startswith(("[resume]", "[train]"))] == [
        f"[resume] linear h={HORIZON}", f"[train] linear h={HORIZON}"]
    assert [r["seed"] for r in state["results"]["linear"][str(HORIZON)]["runs"]] == [0, 1, 2]
    assert state["partial"] == {}
    fresh = _run([*argv[:-1], str(tmp_path / "fresh")])
    mses = [[r["mse"] for r in st["results"]["linear"][str(HORIZON)]["runs"]] for st in (fresh, state)]
    assert mses[0] == mses[1]                     # the interrupted run ends where an uninterrupted one does


def test_future_forecast_intervals_and_file_unit_metrics_of_the_naive_model(tmp_path):
    """forecast.csv and the metrics in the file's units, checked on the naive model (its
    forecast is the last value) against loops in float64: dates continue daily, the forecast
    repeats the file's last row, its interval half-widths are the conformal rank of the absolute
    errors of the file's latest windows (as many as there are validation windows), and MAE /
    sMAPE / MASE / coverage (of the validation-calibrated intervals) over the test windows."""
    import math

    import pandas as pd

    from rlts.data.timeseries import split_borders

    rng = np.random.default_rng(0)
    n, window, horizon = 300, 24, 8
    dates = pd.date_range("2021-03-01", periods=n, freq="D")
    vals = np.stack([10 + np.sin(np.arange(n) / 5) * 3 + rng.normal(size=n),
                     100 + np.cumsum(rng.normal(size=n))], axis=1)
    path = tmp_path / "daily.csv"
    pd.DataFrame({"date": dates.strftime("%Y-%m-%d"), "a": vals[:, 0], "b": vals[:, 1]}).to_csv(path, index=False)
    out = tmp_path / "out"
    state = run_forecast(parse_forecast_config([
        "--csv", str(path), "--models", "naive", "--window", str(window), "--horizon", str(horizon),
        "--out", str(out), "--device", "cpu", "--plots", "false"]), log=lambda *_: None)
    table = pd.read_csv(out / "forecast.csv")
    assert list(table["unique_id"]) == ["a"] * horizon + ["b"] * horizon
    after = [(dates[-1] + pd.Timedelta(days=k)).strftime("%Y-%m-%d") for k in (1, 2)]
    assert list(table["ds"][:2]) == after                               # the days after the last row
    x = vals.astype(np.float32).astype(np.float64)                      # the file's values as loaded
    for c, name in enumerate("ab"):
        rows = table[table["unique_id"] == name]
        assert np.allclose(rows["naive"], x[-1, c], rtol=1e-6)
    b = split_borders(n, window, "auto", path=path, horizon=horizon)
    lo_val, hi_val = b["val"]
    res = []                                                            # (N, H, C) validation errors
    for s in range(lo_val, hi_val - window - horizon + 1):
        res.append([[abs(x[s + window + h, c] - x[s + window - 1, c]) for c in range(2)] for h in range(horizon)])
    res = np.asarray(res)
    tail = []                                                           # the file's last 3 len(res) windows
    for s in range(max(0, n - window - horizon + 1 - 3 * len(res)), n - window - horizon + 1):
        tail.append([[abs(x[s + window + h, c] - x[s + window - 1, c]) for c in range(2)] for h in range(horizon)])
    tail = np.asarray(tail)
    latest = tail[-len(res):]
    assert not np.allclose(np.sort(latest, axis=0), np.sort(res, axis=0))
    start = max(1, len(tail) - 2 * len(res))
    for level in (80, 95):
        # the level adapted over the 2 len(res) windows before the end (step 0.002, the default)
        _, adapted = adaptive_conformal_loop(tail[:start], tail[start:], level / 100, horizon, len(res), 24, 0.002)
        k = min(len(latest), max(1, math.ceil((len(latest) + 1) * adapted)))
        half = np.sort(latest, axis=0)[k - 1]                           # (H, C), file units
        for c, name in enumerate("ab"):
            rows = table[table["unique_id"] == name]
            assert np.allclose(rows[f"naive-hi-{level}"] - rows["naive"], half[:, c], rtol=1e-4, atol=1e-4)
            assert np.allclose(rows["naive"] - rows[f"naive-lo-{level}"], half[:, c], rtol=1e-4, atol=1e-4)
    lo_test, hi_test = b["test"]
    train = x[b["train"][0]:b["train"][1]]
    scale = np.abs(train[7:] - train[:-7]).mean(axis=0)                 # daily data: a weekly season
    err, sm, ms, inside, count = 0.0, 0.0, 0.0, {80: 0, 95: 0}, 0
    halves = {lv: np.sort(res, axis=0)[min(len(res), math.ceil((len(res) + 1) * lv / 100)) - 1] for lv in (80, 95)}
    for s in range(lo_test, hi_test - window - horizon + 1):
        for h in range(horizon):
            for c in range(2):
                y, f = x[s + window + h, c], x[s + window - 1, c]
                err += abs(y - f)
                sm += 2 * abs(y - f) / (abs(y) + abs(f))
                ms += abs(y - f) / scale[c]
                for lv in (80, 95):
                    inside[lv] += abs(y - f) <= halves[lv][h, c] + 1e-9
                count += 1
    r = state["results"]["naive"][str(horizon)]
    assert r["mae_units"] == pytest.approx(err / count, rel=1e-5)
    assert r["smape"] == pytest.approx(100 * sm / count, rel=1e-5)
    assert r["mase"] == pytest.approx(ms / count, rel=1e-5)
    for lv in (80, 95):
        assert r[f"coverage_{lv}"] == pytest.approx(inside[lv] / count, abs=2 / count)
    # weighted quantile loss of the three interval methods, from the signed validation errors
    from statistics import NormalDist

    def windows(lo, hi):
        starts = range(lo, hi - window - horizon + 1)
        truth = np.array([x[s + window:s + window + horizon] for s in starts])        # (N, H, C)
        last = np.array([np.repeat(x[s + window - 1][None], horizon, 0) for s in starts])
        return truth, last

    vy, vf = windows(lo_val, hi_val)
    ty, tf = windows(lo_test, hi_test)
    e = vy - vf
    taus = [0.025, 0.1, 0.5, 0.9, 0.975]
    rms = np.sqrt((e ** 2).mean(axis=0))
    absolute = np.sort(np.abs(e), axis=0)
    conf = {t: 0 if t == 0.5 else np.sign(t - 0.5) * absolute[min(len(e), math.ceil((len(e) + 1) * abs(2 * t - 1))) - 1]
            for t in taus}
    methods = {"wql": conf, "wql_gaussian": {t: NormalDist().inv_cdf(t) * rms for t in taus},
               "wql_empirical": {t: np.quantile(e, t, axis=0) for t in taus}}
    for key, offsets in methods.items():
        losses = [2 * np.sum(np.maximum(t * (ty - tf - offsets[t]), (t - 1) * (ty - tf - offsets[t]))) / np.abs(ty).sum()
                  for t in taus]
        assert r[key] == pytest.approx(np.mean(losses), rel=1e-4), key
    # recent-error intervals: each test window's half-widths from the latest len(e) errors known at its
    # origin, re-ranked every 24 windows, at a level adapted with step 0.002 (the defaults)
    half = {lv: adaptive_conformal_loop(e, ty - tf, lv / 100, horizon, len(e), 24, 0.002)[0] for lv in (80, 95)}
    recent = {0.5: 0 * tf, 0.1: -half[80], 0.9: half[80], 0.025: -half[95], 0.975: half[95]}
    losses = [2 * np.sum(np.maximum(t * (ty - tf - recent[t]), (t - 1) * (ty - tf - recent[t]))) / np.abs(ty).sum()
              for t in taus]
    assert r["wql_recent"] == pytest.approx(np.mean(losses), rel=1e-4)
    for lv in (80, 95):
        assert r[f"coverage_{lv}_recent"] == pytest.approx(np.mean(np.abs(ty - tf) <= half[lv] + 1e-9), abs=2 / count)


def test_benchmark_false_trains_the_same_models_and_skips_the_test_split(tmp_path):
    import pandas as pd

    t = np.arange(400)
    path = tmp_path / "s.csv"
    pd.DataFrame({"a": np.sin(t / 7), "b": np.cos(t / 11)}).to_csv(path, index=False)
    common = ["--csv", str(path), "--config", "debug", "--models", "linear,naive", "--window", "24", "--horizon", "8",
              "--device", "cpu", "--plots", "false"]
    scored = run_forecast(parse_forecast_config([*common, "--out", str(tmp_path / "a")]), log=lambda *_: None)
    only = run_forecast(parse_forecast_config([*common, "--out", str(tmp_path / "b"), "--benchmark", "false"]),
                        log=lambda *_: None)
    assert scored["results"]["linear"]["8"]["mse"] > 0 and scored["results"]["linear"]["8"]["mase"] > 0
    assert only["results"]["linear"]["8"]["mse"] is None and only["results"]["linear"]["8"]["coverage_95"] is None
    a, b = pd.read_csv(tmp_path / "a" / "forecast.csv"), pd.read_csv(tmp_path / "b" / "forecast.csv")
    pd.testing.assert_frame_equal(a, b)
    assert "| linear | 8 | - | - |" in (tmp_path / "b" / "results.md").read_text()


def test_a_long_table_gives_the_wide_files_results(tmp_path):
    """unique_id, ds, y: one column per series, one model across them; the same numbers as the
    wide file in channel-independent mode, and forecast.csv with one id per series."""
    import pandas as pd

    wide = _write_series(tmp_path / "wide.csv")
    frame = pd.read_csv(wide)
    long = frame.melt(id_vars="date", var_name="unique_id", value_name="y").rename(columns={"date": "ds"})
    long.sample(frac=1.0, random_state=0)[["unique_id", "ds", "y"]].to_csv(tmp_path / "long.csv", index=False)
    common = ["--config", "debug", "--models", "aaren,linear", "--device", "cpu", "--plots", "false"]
    a = run_forecast(parse_forecast_config(["--csv", str(wide), "--out", str(tmp_path / "a"), *common]),
                     log=lambda *_: None)
    b = run_forecast(parse_forecast_config(["--csv", str(tmp_path / "long.csv"), "--out", str(tmp_path / "b"),
                                            *common]), log=lambda *_: None)
    for m in ("aaren", "linear"):
        assert a["results"][m][str(HORIZON)]["mse"] == b["results"][m][str(HORIZON)]["mse"]
    assert b["protocol"]["columns"] == ["a", "b", "OT"]
    assert sorted(set(pd.read_csv(tmp_path / "b" / "forecast.csv")["unique_id"])) == ["OT", "a", "b"]
    assert main(["forecast", "predict", "--run", str(tmp_path / "b"), "--csv", str(tmp_path / "long.csv"),
                 "--out", str(tmp_path / "again.csv")]) == 0       # a run on a long table predicts from one
    again, first = pd.read_csv(tmp_path / "again.csv"), pd.read_csv(tmp_path / "b" / "forecast.csv")
    assert np.allclose(again["aaren"], first["aaren"], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("edit, message", [
    (lambda f: pd.concat([f, f.iloc[:1]]), "series 'a' has the time '2021-01-01 00:00:00' twice"),
    (lambda f: f.drop(index=f.index[(f.unique_id == "b")][3]), "series 'b' has no value at"),
    (lambda f: f[(f.unique_id != "b") | (f.index % 2 == 0)], "have different time steps"),
    (lambda f: f.rename(columns={"y": "value"}).assign(extra=0), "no value column 'y'"),
])
def test_bad_long_tables_are_one_message(tmp_path, edit, message):
    import pandas as pd

    frame = pd.read_csv(_write_series(tmp_path / "wide.csv"))
    long = frame.melt(id_vars="date", var_name="unique_id", value_name="y").rename(columns={"date": "ds"})
    edit(long[["unique_id", "ds", "y"]].reset_index(drop=True)).to_csv(tmp_path / "long.csv", index=False)
    argv = ["--csv", str(tmp_path / "long.csv"), "--config", "debug", "--out", str(tmp_path / "o")]
    if "value" in message:
        argv += ["--id_column", "unique_id"]
    with pytest.raises(ValueError, match=message):
        run_forecast(parse_forecast_config(argv), log=lambda *_: None)
    assert not (tmp_path / "o").exists()


def _ragged_long(tmp_path, b_from=100, ot_to=560):
    """The test series as a long table whose series cover different times: a all rows, b from
    row `b_from`, OT until row `ot_to`."""
    frame = pd.read_csv(_write_series(tmp_path / "wide.csv"))
    long = frame.melt(id_vars="date", var_name="unique_id", value_name="y").rename(columns={"date": "ds"})
    row = long.groupby("unique_id").cumcount()
    keep = ~(((long.unique_id == "b") & (row < b_from)) | ((long.unique_id == "OT") & (row >= ot_to)))
    path = tmp_path / "ragged.csv"
    long[keep][["unique_id", "ds", "y"]].to_csv(path, index=False)
    return path, frame


def test_a_long_table_of_series_over_different_times(tmp_path):
    """Each series is scored on the windows it covers and forecast after its own last time: the
    naive model's test MSE is that of a loop over the (window, series) pairs that exist, scaled
    with each series' own training rows; forecast.csv continues each series from its last row."""
    path, frame = _ragged_long(tmp_path)
    state = run_forecast(parse_forecast_config(["--csv", str(path), "--config", "debug", "--models", "naive,linear",
                                                "--device", "cpu", "--plots", "false", "--out", str(tmp_path / "o")]),
                         log=lambda *_: None)
    x = frame[["a", "b", "OT"]].to_numpy(np.float32).astype(np.float64)
    x[:100, 1] = np.nan
    x[560:, 2] = np.nan
    train = x[:420]
    mean, std = np.nanmean(train, axis=0), np.nanstd(train, axis=0)
    z = ((x.astype(np.float32) - mean.astype(np.float32)) / std.astype(np.float32)).astype(np.float64)
    sq, n = 0.0, 0
    for s in range(432, 600 - WINDOW - HORIZON + 1):
        for c in range(3):
            seg = z[s:s + WINDOW + HORIZON, c]
            if np.isnan(seg).any():
                continue
            sq += ((seg[WINDOW:] - seg[WINDOW - 1]) ** 2).sum()
            n += HORIZON
    assert state["results"]["naive"][str(HORIZON)]["mse"] == pytest.approx(sq / n, rel=1e-5)
    assert state["results"]["linear"][str(HORIZON)]["mse"] > 0
    table = pd.read_csv(tmp_path / "o" / "forecast.csv")
    ot = table[table.unique_id == "OT"]
    assert ot["ds"].iloc[0] == str(pd.Timestamp(frame["date"][559]) + pd.Timedelta(hours=1))
    assert np.allclose(ot["naive"], x[559, 2], rtol=1e-5)                  # its own last value
    a = table[table.unique_id == "a"]
    assert a["ds"].iloc[0] == str(pd.Timestamp(frame["date"][599]) + pd.Timedelta(hours=1))
    assert np.isfinite(table.drop(columns=["unique_id", "ds"]).to_numpy()).all()
    out = tmp_path / "again.csv"
    assert main(["forecast", "predict", "--run", str(tmp_path / "o"), "--csv", str(path), "--out", str(out)]) == 0
    again = pd.read_csv(out)
    assert list(again["ds"]) == list(table["ds"])
    assert np.allclose(again["linear"], table["linear"], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("b_from, ot_to, extra, message", [
    (560, 600, [], "series 'b' has 40 time steps .*window \\+ horizon = 72"),
    (450, 600, [], "series 'b' .* has no window of window \\+ horizon = 72 steps in the train rows"),
    (100, 560, ["--streaming", "true"], "--streaming needs series that cover the same times"),
])
def test_series_too_short_or_outside_a_split_are_one_message(tmp_path, b_from, ot_to, extra, message):
    path, _ = _ragged_long(tmp_path, b_from, ot_to)
    with pytest.raises(ValueError, match=message):
        run_forecast(parse_forecast_config(["--csv", str(path), "--config", "debug", "--models", "naive",
                                            "--out", str(tmp_path / "o"), *extra]), log=lambda *_: None)
    assert not (tmp_path / "o").exists()


def test_a_long_table_with_named_columns(tmp_path):
    """--id_column / --time_column / --value_column name a long table's columns."""
    path, _ = _ragged_long(tmp_path)
    named = tmp_path / "named.csv"
    pd.read_csv(path).rename(columns={"unique_id": "store", "ds": "when", "y": "sales"}).to_csv(named, index=False)
    common = ["--config", "debug", "--models", "naive", "--device", "cpu", "--plots", "false"]
    cfg = parse_forecast_config(["--csv", str(named), "--id_column", "store", "--time_column", "when",
                                 "--value_column", "sales", "--out", str(tmp_path / "a"), *common])
    assert cfg.date_column == "when"
    a = run_forecast(cfg, log=lambda *_: None)
    b = run_forecast(parse_forecast_config(["--csv", str(path), "--out", str(tmp_path / "b"), *common]),
                     log=lambda *_: None)
    assert a["results"]["naive"][str(HORIZON)]["mse"] == b["results"]["naive"][str(HORIZON)]["mse"]
    assert a["protocol"]["columns"] == ["a", "b", "OT"]
