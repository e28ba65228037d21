"""`rlts classify predict`: a finished `rlts classify` run labels new series without training. On
the run's own test file it reproduces the run's test scores and ensemble accuracy; .ts, CSV and
.npy files of the same series give the same predictions, at unequal lengths too; bad input is
one message and writes nothing."""
import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from rlts.checkpoint import load
from rlts.data.ucr import read_ts_series
from rlts.tasks.cli import main
from rlts.tasks.supervised.classify_predict import load_run

pytestmark = pytest.mark.usefixtures("one_thread")

LEVELS = (-1.5, 0.0, 1.5)   # class k: level LEVELS[k] plus noise on channel 0, enough that models err
NOISE = 2.5
CLASSES = ["a", "b", "c"]


def _write_ts(path: Path, n: int, lengths, channels: int = 2, seed: int = 0, labelled: bool = True,
              rows=None) -> Path:
    """A .ts file of n series (series i has class i % 3) of lengths drawn from `lengths`; `rows`
    (lines after @data) replaces the generated ones."""
    rng = np.random.default_rng(seed)
    lines = []
    for i in range(n):
        k = i % 3
        L = int(rng.integers(lengths[0], lengths[1] + 1))
        dims = [LEVELS[k] + NOISE * rng.standard_normal(L)]
        dims += [np.sin(2 * np.pi * np.arange(L) / 10 + c) + 0.3 * rng.standard_normal(L) for c in range(1, channels)]
        lines.append(":".join(",".join(f"{v:.4f}" for v in d) for d in dims) + (f":{CLASSES[k]}" if labelled else ""))
    equal = lengths[0] == lengths[1]
    header = ["@problemName toy", "@timeStamps false", "@missing false",
              f"@univariate {'true' if channels == 1 else 'false'}", f"@dimensions {channels}",
              f"@equalLength {'true' if equal else 'false'}"] + ([f"@seriesLength {lengths[0]}"] if equal else [])
    header += ["@classLabel true " + " ".join(CLASSES) if labelled else "@classLabel false", "@data"]
    path.write_text("\n".join(header + (rows if rows is not None else lines)) + "\n")
    return path


def _train(root: Path, lengths, models: str, seeds: int) -> tuple:
    train = _write_ts(root / "toy_TRAIN.ts", 60, lengths, seed=0)
    test = _write_ts(root / "toy_TEST.ts", 45, lengths, seed=1)
    out = root / "run"
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        assert main(["classify", "--train", str(train), "--test", str(test), "--config", "debug", "--models", models,
                     "--epochs", "2", "--seeds", str(seeds), "--plots", "false", "--device", "cpu",
                     "--out", str(out)]) == 0
    finally:
        torch.set_num_threads(threads)
    return out, test, json.loads((out / "results.json").read_text())


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """Unequal lengths (6..30 steps, some below MiniRocket's 9), two channels, two seeds."""
    return _train(tmp_path_factory.mktemp("classify_predict"), (6, 30), "gru,minirocket", 2)


def _predict(run, *args) -> int:
    return main(["classify", "predict", "--run", str(run), *args])


def _read(path: Path) -> pd.DataFrame:
    return pd.read_csv(path, dtype={"id": str, "label": str, "prediction": str, "gru": str, "minirocket": str})


def test_the_runs_test_file_reproduces_its_scores_and_ensemble(trained, tmp_path, capsys):
    run, test, state = trained
    out = tmp_path / "pred.csv"
    assert _predict(run, "--ts", str(test), "--out", str(out)) == 0
    printed = capsys.readouterr().out
    table = _read(out)
    assert list(table.columns) == (["id", "label", "gru"] + [f"gru:p_{c}" for c in CLASSES]
                                   + ["minirocket"] + [f"minirocket:score_{c}" for c in CLASSES])
    assert table["id"].tolist() == [str(i) for i in range(45)]
    truth = np.arange(45) % 3
    assert table["label"].tolist() == [CLASSES[k] for k in truth]
    metrics = json.loads((tmp_path / "pred_metrics.json").read_text())
    loaded = load_run(str(run), [], "cpu")
    per_seed = loaded.seed_scores(read_ts_series(str(test)).series)
    for name, kind in (("gru", "p"), ("minirocket", "score")):
        entry = state["results"][name]
        # the seeds' test scores, saved by the run itself
        saved = [load(run / name / f"seed{r['seed']}" / "test_scores.pt")["scores"].numpy() for r in entry["runs"]]
        for mine, theirs in zip(per_seed[name], saved):
            np.testing.assert_allclose(mine, theirs, rtol=1e-6, atol=1e-9)
            assert np.array_equal(mine.argmax(axis=1), theirs.argmax(axis=1))
        mean = np.mean(saved, axis=0)                                          # the seed ensemble
        written = table[[f"{name}:{kind}_{c}" for c in CLASSES]].to_numpy()
        np.testing.assert_allclose(written, mean, rtol=1e-6, atol=1e-9)
        assert table[name].tolist() == [CLASSES[k] for k in mean.argmax(axis=1)]
        accuracy = float(np.mean(mean.argmax(axis=1) == truth))
        assert accuracy == entry["ensemble_accuracy"] == metrics["models"][name]["accuracy"]
        cm = np.zeros((3, 3), dtype=int)
        np.add.at(cm, (truth, mean.argmax(axis=1)), 1)
        assert metrics["models"][name]["confusion_matrix"] == cm.tolist() and metrics["models"][name]["seeds"] == 2
        assert f"{name}: accuracy {accuracy:.4f}" in printed
    probabilities = table[[f"gru:p_{c}" for c in CLASSES]].to_numpy()
    assert np.all(probabilities >= 0) and np.allclose(probabilities.sum(axis=1), 1.0)


def test_one_model_has_plain_columns(trained, tmp_path):
    run, test, _ = trained
    out = tmp_path / "one.csv"
    assert _predict(run, "--ts", str(test), "--models", "gru", "--out", str(out)) == 0
    assert list(_read(out).columns) == ["id", "label", "prediction"] + [f"p_{c}" for c in CLASSES]
    out = tmp_path / "mr.csv"
    assert _predict(run, "--ts", str(test), "--model", "minirocket", "--out", str(out)) == 0
    assert list(_read(out).columns) == ["id", "label", "prediction"] + [f"score_{c}" for c in CLASSES]


def test_unlabelled_ts_csv_and_npy_give_the_labelled_files_predictions(trained, tmp_path):
    run, test, _ = trained
    data = read_ts_series(str(test))
    lengths = [x.shape[0] for x in data.series]
    assert min(lengths) < 9 < max(lengths)                                  # unequal, some below MiniRocket's 9
    labelled = tmp_path / "labelled.csv"
    assert _predict(run, "--ts", str(test), "--out", str(labelled)) == 0
    want = _read(labelled).drop(columns=["id", "label"])

    unlabelled = tmp_path / "unlabelled.ts"
    rows = [line.rsplit(":", 1)[0] for line in test.read_text().split("@data\n")[1].splitlines()]
    header = test.read_text().split("@data\n")[0].replace("@classLabel true a b c", "@classLabel false")
    unlabelled.write_text(header + "@data\n" + "\n".join(rows) + "\n")
    long = pd.DataFrame([{"series_id": f"s{i}", "x0": x[t, 0], "x1": x[t, 1], "label": data.labels[i]}
                         for i, x in enumerate(data.series) for t in range(len(x))])
    long.to_csv(tmp_path / "long.csv", index=False)
    long.drop(columns=["label"]).rename(columns={"series_id": "id"}).to_csv(tmp_path / "nolabel.csv", index=False)
    padded = np.full((len(data.series), 2, max(lengths)), np.nan)
    for i, x in enumerate(data.series):
        padded[i, :, :len(x)] = x.T
    np.save(tmp_path / "padded.npy", padded)

    inputs = [("--ts", unlabelled, False), ("--csv", tmp_path / "long.csv", True),
              ("--csv", tmp_path / "nolabel.csv", False), ("--npy", tmp_path / "padded.npy", False)]
    for k, (option, path, has_labels) in enumerate(inputs):
        out = tmp_path / f"out{k}.csv"
        assert _predict(run, option, str(path), "--out", str(out)) == 0, path
        got = _read(out)
        assert got["id"].tolist() == [f"{'s' * (option == '--csv')}{i}" for i in range(45)]
        assert ("label" in got.columns) == has_labels
        got = got.drop(columns=[c for c in ("id", "label") if c in got.columns])
        assert list(got.columns) == list(want.columns)
        for c in want.columns:
            if not pd.api.types.is_numeric_dtype(want[c]):
                assert got[c].tolist() == want[c].tolist(), (path, c)
            else:
                np.testing.assert_allclose(got[c], want[c], rtol=1e-9, atol=1e-12, err_msg=f"{path} {c}")
        assert (tmp_path / f"out{k}_metrics.json").exists() == has_labels


def test_minirocket_of_equal_lengths_reads_that_length_only(tmp_path, capsys):
    run, test, state = _train(tmp_path, (20, 20), "minirocket", 1)
    assert state["protocol"]["minirocket_variant"] == "MiniRocketMultivariate"
    out = tmp_path / "p.csv"
    assert _predict(run, "--ts", str(test), "--out", str(out)) == 0
    saved = load(run / "minirocket" / "test_scores.pt")["scores"].numpy()
    np.testing.assert_allclose(_read(out)[[f"score_{c}" for c in CLASSES]].to_numpy(), saved, rtol=1e-6, atol=1e-9)
    other = _write_ts(tmp_path / "other.ts", 6, (20, 25), seed=3, labelled=False)
    capsys.readouterr()
    assert _predict(run, "--ts", str(other), "--out", str(tmp_path / "q.csv")) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "fitted on series of 20 steps" in err and "series 0 has" in err
    assert not (tmp_path / "q.csv").exists()


def test_bad_input_is_one_line_and_writes_nothing(trained, tmp_path, capsys):
    run, test, state = trained
    kept = tmp_path / "kept.csv"
    kept.write_text("keep me\n")
    (tmp_path / "labelled_metrics.json").write_text("mine\n")

    forecast_like = tmp_path / "forecast_run"
    forecast_like.mkdir()
    (forecast_like / "results.json").write_text(json.dumps({"config": {"csv": "x.csv", "horizons": [24]},
                                                            "results": {}}))
    unfinished = tmp_path / "unfinished"
    unfinished.mkdir()
    (unfinished / "results.json").write_text(json.dumps({**state, "results": {}}))
    broken = tmp_path / "broken"
    shutil.copytree(run, broken)
    (broken / "minirocket" / "seed1" / "model.pt").unlink()
    shutil.rmtree(broken / "gru" / "seed0" / "checkpoints")
    one_channel = _write_ts(tmp_path / "one.ts", 4, (10, 12), channels=1, labelled=False)
    empty_ts = _write_ts(tmp_path / "empty.ts", 0, (10, 12), labelled=False, rows=["1,2,3:4,5,6", ":"])
    empty_npy = np.zeros((3, 2, 10))
    empty_npy[2] = np.nan
    np.save(tmp_path / "empty.npy", empty_npy)
    (tmp_path / "empty.csv").write_text("id,x0,x1\na,1,2\na,3,4\nb,,\nb,,\n")
    (tmp_path / "word.csv").write_text("id,x0,x1\na,1,2\na,3,four\n")
    (tmp_path / "text.npy").write_text("not an array\n")
    (tmp_path / "binary.csv").write_bytes(b"\xff\xfe\x00\x81\x00garbage")
    (tmp_path / "garbage.ts").write_text("this is not a ts file\n")
    zebra = _write_ts(tmp_path / "zebra.ts", 0, (10, 12), rows=["1,2,3:4,5,6:a", "1,2,3:4,5,6:zebra"])
    zebra.write_text(zebra.read_text().replace("@classLabel true a b c", "@classLabel true a zebra"))

    fresh = str(tmp_path / "never.csv")
    cases = [
        (["--run", str(tmp_path / "nothing"), "--ts", str(test), "--out", fresh], "has no results.json"),
        (["--run", str(forecast_like), "--ts", str(test), "--out", fresh], "is not the results of an `rlts classify`"),
        (["--run", str(unfinished), "--ts", str(test), "--out", fresh], "holds no finished model"),
        (["--run", str(run), "--ts", str(test), "--models", "mamba", "--out", fresh], "no finished model mamba"),
        (["--run", str(broken), "--ts", str(test), "--out", fresh], "seed0 holds no checkpoint of gru"),
        (["--run", str(broken), "--ts", str(test), "--models", "minirocket", "--out", fresh], "seed1 holds no model.pt"),
        (["--run", str(run), "--ts", str(one_channel), "--out", fresh], "series 0 has 1 channel; the run's models"),
        (["--run", str(run), "--ts", str(empty_ts), "--out", fresh], "series 1 is empty"),
        (["--run", str(run), "--npy", str(tmp_path / "empty.npy"), "--out", fresh], "series 2 is empty"),
        (["--run", str(run), "--csv", str(tmp_path / "empty.csv"), "--out", fresh], "series b is empty"),
        (["--run", str(run), "--csv", str(tmp_path / "word.csv"), "--out", fresh], "column x1 holds 'four'"),
        (["--run", str(run), "--csv", str(tmp_path / "absent.csv"), "--out", fresh], "absent.csv does not exist"),
        (["--run", str(run), "--npy", str(tmp_path / "text.npy"), "--out", fresh], "is not a .npy file: it has no"),
        (["--run", str(run), "--csv", str(tmp_path / "binary.csv"), "--out", fresh], "not a readable CSV file"),
        (["--run", str(run), "--ts", str(tmp_path / "garbage.ts"), "--out", fresh], "is not a .ts file"),
        (["--run", str(run), "--ts", str(zebra), "--out", fresh], "'zebra' is not one of the training classes"),
        (["--run", str(run), "--out", fresh], "give one input file"),
        (["--run", str(run), "--ts", str(test), "--csv", "x.csv", "--out", fresh], "(got --ts, --csv)"),
        (["--run", str(run), "--ts", str(test), "--out", str(kept)], "already exists"),
        (["--run", str(run), "--ts", str(test), "--out", str(tmp_path / "labelled.csv")], "labelled_metrics.json"),
    ]
    for argv, message in cases:
        assert main(["classify", "predict", *argv]) == 2, argv
        err = capsys.readouterr().err
        assert err.startswith("rlts classify predict: error: ") and err.count("\n") == 1, err
        assert message in err, (message, err)
        assert "Traceback" not in err
    assert kept.read_text() == "keep me\n" and (tmp_path / "labelled_metrics.json").read_text() == "mine\n"
    assert not (tmp_path / "never.csv").exists() and not (tmp_path / "labelled.csv").exists()
    assert not list(tmp_path.glob("never*")) and not list(tmp_path.glob(".*.tmp"))


def test_help_documents_the_input_layouts(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["classify", "predict", "--help"])
    assert exit_.value.code == 0
    text = capsys.readouterr().out
    assert text.startswith("usage: rlts classify predict --run DIR (--ts FILE.ts | --csv FILE.csv | --npy FILE.npy)")
    for part in ("--csv", "series_id", "(n, channels, length)", "@classLabel false", "score_<class>"):
        assert part in " ".join(text.split()), part
