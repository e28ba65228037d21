"""`rlts forecast predict`: a finished run forecasts from the end of a new file without training;
on the training file itself it reproduces the run's forecast.csv, seeds are averaged, and bad
input (columns, rows, models, an existing output) is one message."""
import numpy as np
import pandas as pd
import pytest

from rlts.tasks.cli import main

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("predict")
    n = 360
    t = np.arange(n)
    frame = pd.DataFrame({"date": pd.date_range("2022-01-01", periods=n, freq="h").strftime("%Y-%m-%d %H:%M"),
                          "load": 5 + np.sin(t / 6) + 0.1 * np.cos(t / 2), "temp": 20 + np.cos(t / 24)})
    path = tmp / "series.csv"
    frame.to_csv(path, index=False)
    out = tmp / "run"
    args = ["forecast", "--csv", str(path), "--config", "debug", "--models", "aaren,linear,naive", "--window", "24",
            "--horizon", "6", "--seeds", "2", "--device", "cpu", "--plots", "false", "--out", str(out)]
    assert main(args) == 0
    return path, out, frame


def test_predict_on_the_training_file_reproduces_the_runs_forecast(trained, tmp_path):
    path, run, _ = trained
    out = tmp_path / "again.csv"
    assert main(["forecast", "predict", "--run", str(run), "--csv", str(path), "--out", str(out)]) == 0
    mine, theirs = pd.read_csv(out), pd.read_csv(run / "forecast.csv")
    assert list(mine.columns) == list(theirs.columns) and "aaren-std" in mine.columns    # two seeds: their spread
    assert list(mine["ds"]) == list(theirs["ds"])
    for col in mine.columns[2:]:
        assert np.allclose(mine[col], theirs[col], rtol=1e-5, atol=1e-6), col


def test_predict_starts_after_the_new_files_last_row(trained, tmp_path):
    path, run, frame = trained
    short = tmp_path / "short.csv"
    frame.iloc[:200].to_csv(short, index=False)
    out = tmp_path / "f.csv"
    assert main(["forecast", "predict", "--run", str(run), "--csv", str(short), "--models", "naive",
                 "--out", str(out)]) == 0
    table = pd.read_csv(out)
    assert table["ds"][0] == (pd.Timestamp(frame["date"][199]) + pd.Timedelta(hours=1)).strftime("%Y-%m-%d %H:%M:%S")
    load = table[table["unique_id"] == "load"]
    assert np.allclose(load["naive"], frame["load"][199], rtol=1e-6)                  # the last value repeated
    assert (load["naive-lo-95"] <= load["naive-lo-80"]).all() and (load["naive-hi-80"] <= load["naive-hi-95"]).all()


@pytest.mark.parametrize("change, message", [
    (lambda f: f.drop(columns=["temp"]), "lacks column temp"),
    (lambda f: f.assign(extra=1.0), "has column extra that the run did not train on"),
    (lambda f: f[["date", "temp", "load"]], "has the columns in another order"),
    (lambda f: f.iloc[:10], "has 10 rows; the run's models read the last 24"),
])
def test_bad_files_are_one_message(trained, tmp_path, capsys, change, message):
    path, run, frame = trained
    bad = tmp_path / "bad.csv"
    change(frame).to_csv(bad, index=False)
    assert main(["forecast", "predict", "--run", str(run), "--csv", str(bad), "--out", str(tmp_path / "o.csv")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("rlts forecast predict: error:") and message in err and err.count("\n") == 1
    assert not (tmp_path / "o.csv").exists()


def test_bad_runs_models_and_outputs(trained, tmp_path, capsys):
    path, run, _ = trained
    exists = tmp_path / "exists.csv"
    exists.write_text("keep me\n")
    cases = [
        (["--run", str(tmp_path), "--csv", str(path)], "has no results.json"),
        (["--run", str(run), "--csv", str(path), "--models", "mamba"], "no finished model mamba"),
        (["--run", str(run), "--csv", str(path), "--horizon", "12"], "no model for horizon 12"),
        (["--run", str(run), "--csv", str(path), "--out", str(exists)], "already exists"),
    ]
    for argv, message in cases:
        assert main(["forecast", "predict", *argv]) == 2
        assert message in capsys.readouterr().err
    assert exists.read_text() == "keep me\n"


def test_stream_gives_after_each_row_the_forecast_predict_gives_on_the_file_so_far(trained, tmp_path, capsys):
    import io
    import json

    from rlts.tasks.supervised.forecast_predict import StreamConfig, stream

    path, run, frame = trained
    history = tmp_path / "history.csv"
    frame.iloc[:200].to_csv(history, index=False)
    rows = frame.iloc[200:203].to_csv(index=False, header=False).splitlines()
    lines = [rows[0], "2022-01-09 09:00,abc,3", "1,2", rows[1], rows[1], rows[2]]     # bad, short, repeated
    out = io.StringIO()
    stream(StreamConfig(run=str(run), csv=str(history), models=["aaren", "naive"]), lines, out)
    records = [json.loads(x) for x in out.getvalue().splitlines()]
    assert len(records) == 3
    err = capsys.readouterr().err.splitlines()
    assert "line 2 skipped: column load holds 'abc', not a number" in err[0]
    assert "line 3 skipped: 2 fields" in err[1] and "line 5 skipped: its time" in err[2]
    so_far = tmp_path / "so_far.csv"
    frame.iloc[:203].to_csv(so_far, index=False)
    assert main(["forecast", "predict", "--run", str(run), "--csv", str(so_far), "--models", "aaren,naive",
                 "--out", str(tmp_path / "p.csv")]) == 0
    table = pd.read_csv(tmp_path / "p.csv")
    last = records[-1]["forecasts"]
    for name in ("aaren", "naive", "aaren-hi-95"):
        for col in ("load", "temp"):
            assert np.allclose(last[name][col], table[table["unique_id"] == col][name], rtol=1e-5, atol=1e-5)
    assert records[-1]["time"] == str(pd.Timestamp(frame["date"][202]))


# ---------------------------------------------------------------------------------- models made for streaming

@pytest.fixture(scope="module")
def streaming(tmp_path_factory, trained):
    path, _, frame = trained
    out = tmp_path_factory.mktemp("streaming") / "run"
    args = ["forecast", "--csv", str(path), "--config", "debug", "--models", "aaren,gru,linear", "--window", "24",
            "--horizon", "6", "--streaming", "true", "--stream_length", "32", "--patch_len", "4", "--device", "cpu",
            "--plots", "false", "--out", str(out)]
    assert main(args) == 0
    return path, out, frame


def test_a_streaming_run_is_scored_on_forecasts_from_the_files_first_row(streaming):
    """Its test MSE is that of forward on each test window's whole prefix of the file (one
    forecast at a time, no parallel pass), its forecast.csv that of forward on the whole file."""
    import json

    import torch

    from rlts.tasks.supervised.forecast_predict import load_run

    path, run, frame = streaming
    state = json.loads((run / "results.json").read_text())
    loaded = load_run(str(run), str(path), ["aaren", "gru"], None, "cpu")
    x = loaded.inputs(frame[["load", "temp"]].to_numpy())                               # (1, T, C), scaled
    start, end = state["protocol"]["ranges"]["test"]
    for name in ("aaren", "gru"):
        model = loaded.models[name][0][0]
        assert model.running_span == 24
        sq = []
        with torch.no_grad():
            for t in range(start + 24 - 1, end - 6):
                sq.append(((model(x[:, :t + 1]) - x[:, t + 1:t + 7]) ** 2).mean().item())
            future = loaded.units(model(x))
        assert state["results"][name]["6"]["mse"] == pytest.approx(np.mean(sq), rel=1e-5)
        table = pd.read_csv(run / "forecast.csv")
        assert np.allclose(table[table["unique_id"] == "load"][name], future[:, 0], rtol=1e-5, atol=1e-5)


def test_a_streaming_runs_stream_updates_its_state_and_matches_predict(streaming, tmp_path, monkeypatch):
    import io
    import json

    from rlts.heads.forecast import SequenceForecaster
    from rlts.tasks.supervised.forecast_predict import StreamConfig, stream

    path, run, frame = streaming
    history = tmp_path / "history.csv"
    frame.iloc[:150].to_csv(history, index=False)
    lines = frame.iloc[150:190].to_csv(index=False, header=False).splitlines()
    calls = {"update": 0, "forward": 0}
    for method in ("update", "forward"):
        original = getattr(SequenceForecaster, method)
        def counted(self, *a, _original=original, _name=method, **k):
            calls[_name] += 1
            return _original(self, *a, **k)
        monkeypatch.setattr(SequenceForecaster, method, counted)
    out = io.StringIO()
    stream(StreamConfig(run=str(run), csv=str(history), models=["aaren", "gru", "linear"]), lines, out)
    assert calls == {"update": 80, "forward": 0}           # two streaming models, 40 rows: one step each
    records = [json.loads(r) for r in out.getvalue().splitlines()]
    assert len(records) == 40
    so_far = tmp_path / "so_far.csv"
    frame.iloc[:190].to_csv(so_far, index=False)
    assert main(["forecast", "predict", "--run", str(run), "--csv", str(so_far), "--out", str(tmp_path / "p.csv")]) == 0
    table = pd.read_csv(tmp_path / "p.csv")
    for name in ("aaren", "gru", "linear", "gru-lo-80"):
        for col in ("load", "temp"):
            assert np.allclose(records[-1]["forecasts"][name][col], table[table["unique_id"] == col][name],
                               rtol=1e-4, atol=1e-5), (name, col)
