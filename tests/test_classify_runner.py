"""End-to-end tests of `rlts classify` (tasks/supervised/classify.py): sktime's shipped datasets and .ts
files written here, with the debug overlay and small subsets so that the file runs in minutes."""
import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch

from rlts.checkpoint import load
from rlts.tasks.cli import main
from rlts.tasks.supervised.classify import ensemble_accuracy, parse_classify_config, plot_confusion, run_classify

LEVELS = (-1.5, 0.0, 1.5)  # the synthetic classes: easy to tell apart, chance is 1/3


def _run(argv, log=None):
    return run_classify(parse_classify_config(argv), log=log if log is not None else (lambda *_: None))


def _write_ts(path: Path, n: int = 60, lengths=(30, 30), channels: int = 2, classes=("a", "b", "c"),
              seed: int = 0, rows=None) -> Path:
    """A labelled .ts file: class k has level LEVELS[k] plus noise; channel 1 also a slow sine.
    `rows` (lines after @data) replaces the generated instances."""
    rng = np.random.default_rng(seed)
    lines = []
    for i in range(n):
        k = i % len(classes)
        L = int(rng.integers(lengths[0], lengths[1] + 1))
        t = np.arange(L)
        dims = [LEVELS[k % 3] + 0.3 * rng.standard_normal(L)]
        dims += [np.sin(2 * np.pi * t / 10 + c) + 0.3 * rng.standard_normal(L) for c in range(1, channels)]
        lines.append(":".join(",".join(f"{v:.4f}" for v in d) for d in dims) + f":{classes[k]}")
    equal = lengths[0] == lengths[1]
    header = ["@problemName toy", "@timeStamps false", "@missing false",
              f"@univariate {'true' if channels == 1 else 'false'}", f"@dimensions {channels}",
              f"@equalLength {'true' if equal else 'false'}"] + ([f"@seriesLength {lengths[0]}"] if equal else [])
    header += [f"@classLabel true {' '.join(classes)}", "@data"]
    path.write_text("\n".join(header + (rows if rows is not None else lines)) + "\n")
    return path


def _toy_pair(root: Path, lengths=(30, 30), channels: int = 2):
    return (_write_ts(root / "toy_TRAIN.ts", 60, lengths, channels, seed=0),
            _write_ts(root / "toy_TEST.ts", 45, lengths, channels, seed=1))


# ----------------------------------------------------------------------------- shipped datasets


@pytest.fixture(scope="module")
def italy(tmp_path_factory):
    out = tmp_path_factory.mktemp("classify") / "out"
    log = []
    # Lower-case on purpose: shipped names match case-insensitively.
    state = _run(["--dataset", "italypowerdemand", "--config", "debug", "--models", "backbone", "--val_fraction", "0.2",
                  "--out", str(out)], log=log.append)
    return out, state, log


def test_end_to_end_outputs(italy):
    out, state, _ = italy
    results = json.loads((out / "results.json").read_text())
    assert results == json.loads(json.dumps(state))
    assert results["config"]["dataset"] == "ItalyPowerDemand" and results["config"]["backbone"] == "mamba"
    data = results["dataset"]
    # ItalyPowerDemand: 67 training / 1029 test series of 24 steps, one channel, classes 1 and 2.
    assert (data["n_train"], data["n_train_available"], data["n_test_available"]) == (67, 67, 1029)
    assert data["n_test"] == 256 and sum(data["test_class_counts"]) == 256  # debug: max_test 256
    assert (data["n_channels"], data["min_length"], data["max_length"], data["equal_length"]) == (1, 24, 24, True)
    assert data["classes"] == ["1", "2"]
    assert results["protocol"]["n_val"] == 13 and results["protocol"]["n_fit"] == 54  # val_fraction 0.2
    r = results["results"]["mamba"]
    assert set(r) >= {"accuracy", "params", "train_time_s", "epochs", "best_val_loss", "confusion_matrix"}
    cm = np.array(r["confusion_matrix"])
    assert cm.shape == (2, 2) and cm.sum() == 256 and cm.sum(axis=1).tolist() == data["test_class_counts"]
    assert r["accuracy"] == pytest.approx(np.trace(cm) / 256)
    assert r["params"] > 0 and 1 <= r["epochs"] <= 10 and np.isfinite(r["best_val_loss"])
    for name in ("results.md", "results.csv", "confusion_matrix.png"):
        assert (out / name).stat().st_size > 0, name
    assert list((out / "mamba" / "tb").glob("events.out.tfevents.*"))
    assert list((out / "mamba" / "checkpoints").glob("*.pt"))
    table = (out / "results.csv").read_text().splitlines()
    assert table[0].split(",")[:2] == ["model", "accuracy"] and len(table) == 2


def test_rerun_skips_finished_models(italy):
    out, first, _ = italy
    ckpt = out / "mamba" / "checkpoints"
    mtimes = {p: p.stat().st_mtime_ns for p in ckpt.iterdir()}
    log = []
    second = _run(["--dataset", "ItalyPowerDemand", "--config", "debug", "--models", "mamba", "--val_fraction", "0.2",
                   "--out", str(out)],
                  log=log.append)
    assert any(line.startswith("[skip] mamba") for line in log)
    assert not any(line.startswith(("[train]", "[resume]")) for line in log)
    assert {p: p.stat().st_mtime_ns for p in ckpt.iterdir()} == mtimes
    assert second["results"] == first["results"]


def test_japanese_vowels_multivariate_unequal_with_minirocket(tmp_path):
    # MiniRocket's only test (numba compiles it on first use): 12 channels, lengths 7..29, 9 classes,
    # so the variable-length variant with padding of the series shorter than 9 steps.
    out = tmp_path / "out"
    state = _run(["--dataset", "JapaneseVowels", "--config", "debug", "--max_train", "90", "--max_test", "90",
                  "--epochs", "3", "--out", str(out)])
    data = state["dataset"]
    assert (data["n_channels"], data["equal_length"], len(data["classes"])) == (12, False, 9)
    assert data["min_length"] < 9 < data["max_length"]
    assert data["n_train"] == 90 and data["train_class_counts"] == [10] * 9  # stratified subset
    mr = state["results"]["minirocket"]
    assert mr["variant"] == "MiniRocketMultivariateVariable" and mr["features"] == 840 and mr["params"] is None
    assert mr["accuracy"] > 0.7  # chance is about 1/9
    assert np.array(mr["confusion_matrix"]).sum() == 90
    saved = torch.load(out / "minirocket" / "model.pt", weights_only=True)  # tensors, no pickled objects
    assert saved["classes"] == data["classes"] and saved["ridge_alpha"] == mr["ridge_alpha"]
    assert saved["ridge_coef"].shape == (9, 840) and saved["feature_scale"].shape == (840,)
    assert len(saved["transform_parameters"]) >= 3  # dilations, features per dilation, biases, ...
    assert np.isfinite(state["results"]["mamba"]["accuracy"])
    assert "| minirocket |" in (out / "results.md").read_text()


# ----------------------------------------------------------------------------- .ts files


@pytest.mark.parametrize("lengths,val_fraction,bidirectional", [((30, 30), "0", "false"), ((12, 40), "0.2", "true")],
                         ids=["equal", "unequal-bidirectional"])
def test_ts_files_learn_the_easy_task(tmp_path, lengths, val_fraction, bidirectional):
    train, test = _toy_pair(tmp_path, lengths)
    state = _run(["--train", str(train), "--test", str(test), "--config", "debug", "--models", "aaren",
                  "--train.epochs", "8", "--patience", "0", "--val_fraction", val_fraction, "--plots", "false",
                  "--bidirectional", bidirectional,
                  "--out", str(tmp_path / "out")])
    data = state["dataset"]
    assert data["train_file"] == str(train) and data["test_file"] == str(test)
    assert (data["n_train"], data["n_test"], data["n_channels"]) == (60, 45, 2)
    assert data["equal_length"] == (lengths[0] == lengths[1]) and data["classes"] == ["a", "b", "c"]
    assert lengths[0] <= data["min_length"] <= data["max_length"] <= lengths[1]
    r = state["results"]["aaren"]
    assert r["epochs"] == 8  # patience 0: no early stopping
    kept = load(tmp_path / "out" / "aaren" / "checkpoints" / "last.pt")  # the loss that picked the weights
    assert any(k.startswith("model_rev.") for k in kept["model"]) == (bidirectional == "true")
    if val_fraction == "0":  # no holdout: all 60 series train, no validation loss
        assert state["protocol"]["n_val"] == 0 and r["best_val_loss"] is None
        assert kept["best_val"] == float("inf") and 0 < kept["best"] < 10  # the default: training loss
        assert "lowest mean training loss kept" in state["protocol"]["description"]
        assert state["config"]["train"]["monitor"] == "train"
    else:  # the holdout decides, although the default config monitors the training loss
        assert state["protocol"]["n_val"] == 12 and r["best_val_loss"] > 0
        assert kept["best"] == kept["best_val"] == pytest.approx(r["best_val_loss"])
        assert "best validation weights kept" in state["protocol"]["description"]
        assert state["config"]["train"]["monitor"] == "val"  # what is recorded is what decided
    assert r["accuracy"] >= 0.8, r  # chance: 1/3


def test_interrupted_run_resumes_from_its_checkpoint(tmp_path, monkeypatch):
    import rlts.tasks.supervised.classify as classify

    train, test = _toy_pair(tmp_path, (12, 40))
    argv = ["--train", str(train), "--test", str(test), "--config", "debug", "--models", "transformer,aaren",
            "--epochs", "4", "--plots", "false"]
    real_loss = classify.classification_loss
    aaren_calls = []  # per epoch: 3 training batches (48 series), then 1 validation batch (12)

    def log(line):
        if line.startswith("[train] aaren"):
            aaren_calls.append("armed")

    def loss_killed_in_aarens_second_epoch(model, batch, **kw):
        if aaren_calls:
            aaren_calls.append(1)
            if len(aaren_calls) == 8:  # aaren's 7th batch: the last training batch of epoch 2
                raise KeyboardInterrupt
        return real_loss(model, batch, **kw)

    out = tmp_path / "out"
    monkeypatch.setattr(classify, "classification_loss", loss_killed_in_aarens_second_epoch)
    with pytest.raises(KeyboardInterrupt):
        _run([*argv, "--out", str(out)], log=log)
    assert set(json.loads((out / "results.json").read_text())["results"]) == {"transformer"}
    assert [p.name for p in (out / "aaren" / "checkpoints").glob("*.pt")]  # epoch 1 was saved

    resumed_calls = []

    def counted_loss(model, batch, **kw):
        resumed_calls.append(1)
        return real_loss(model, batch, **kw)

    monkeypatch.setattr(classify, "classification_loss", counted_loss)
    lines = []
    state = _run([*argv, "--out", str(out)], log=lines.append)
    steps = [line.split(" (")[0].split(":")[0] for line in lines
             if line.startswith(("[skip]", "[resume]", "[train]", "[done]"))]
    assert steps == ["[skip] transformer", "[resume] aaren", "[done] aaren"]
    assert len(resumed_calls) == 3 * 4  # epochs 2..4 only: epoch 1 came from the checkpoint
    monkeypatch.setattr(classify, "classification_loss", real_loss)
    # The resumed model is the one an uninterrupted run gives.
    fresh = _run([*argv, "--models", "aaren", "--out", str(tmp_path / "fresh")])
    for key in ("accuracy", "confusion_matrix", "epochs", "best_val_loss"):
        assert state["results"]["aaren"][key] == fresh["results"]["aaren"][key], key


def test_seeds_are_the_single_seed_runs_summarised(tmp_path):
    """--seeds 2 --seed 3 = the runs of --seed 3 and --seed 4 (the holdout seeded too), stored
    per run, with their mean, sample standard deviation and summed confusion counts."""
    train, test = _toy_pair(tmp_path, (12, 40))
    argv = ["--train", str(train), "--test", str(test), "--config", "debug", "--models", "gru,minirocket",
            "--epochs", "2", "--val_fraction", "0.2", "--plots", "false"]
    out = tmp_path / "seeds"
    state = _run([*argv, "--seeds", "2", "--seed", "3", "--out", str(out)])
    singles = [_run([*argv, "--seed", str(s), "--out", str(tmp_path / f"s{s}")])["results"] for s in (3, 4)]
    for name in ("gru", "minirocket"):
        r = state["results"][name]
        assert [run["seed"] for run in r["runs"]] == [3, 4]
        for run, single in zip(r["runs"], singles):
            assert {k: v for k, v in run.items() if k not in ("seed", "train_time_s")} == \
                   {k: v for k, v in single[name].items() if k != "train_time_s"}
        acc = [single[name]["accuracy"] for single in singles]
        assert r["accuracy"] == pytest.approx(np.mean(acc))
        assert r["accuracy_std"] == pytest.approx(np.std(acc, ddof=1))
        assert r["confusion_matrix"] == (np.array(singles[0][name]["confusion_matrix"])
                                         + np.array(singles[1][name]["confusion_matrix"])).tolist()
    assert singles[0]["gru"]["best_val_loss"] != singles[1]["gru"]["best_val_loss"]  # the seeds differ
    assert list((out / "gru" / "seed4" / "checkpoints").glob("*.pt")) and (out / "minirocket" / "seed3" / "model.pt").exists()
    assert state["partial"] == {}
    header = (out / "results.csv").read_text().splitlines()[0].split(",")
    assert header[:5] == ["model", "accuracy", "std", "seeds", "ensemble"]


def _naive_ensemble_accuracy(score_sets, truth):
    """Reference: per test series, add up the runs' scores class by class; the largest sum wins
    (the first class on a tie, as argmax)."""
    right = 0
    for i, label in enumerate(truth):
        totals = [sum(float(scores[i][k]) for scores in score_sets) for k in range(len(score_sets[0][i]))]
        right += int(max(range(len(totals)), key=lambda k: (totals[k], -k)) == label)
    return right / len(truth)


def test_seed_ensemble_averages_the_runs_class_scores(tmp_path):
    """Every run keeps its test scores; with several seeds, results.json adds the accuracy of
    their average (probabilities for a backbone, ridge decision values for MiniRocket), each
    run's argmax being that run's own predictions."""
    train, test = _toy_pair(tmp_path, (12, 40))
    out = tmp_path / "out"
    state = _run(["--train", str(train), "--test", str(test), "--config", "debug", "--models", "gru,minirocket",
                  "--epochs", "1", "--seeds", "3", "--plots", "false", "--out", str(out)])
    truth = [i % 3 for i in range(45)]  # _write_ts: series i has class i % 3; classes a, b, c -> 0, 1, 2
    for name in ("gru", "minirocket"):
        r = state["results"][name]
        score_sets = []
        for run in r["runs"]:
            saved = load(out / name / f"seed{run['seed']}" / "test_scores.pt")
            scores = saved["scores"]                                      # (45, 3), float64
            assert saved["classes"] == ["a", "b", "c"] and scores.shape == (45, 3) and scores.dtype == torch.float64
            pred = scores.argmax(dim=1).numpy()
            assert np.mean(pred == truth) == pytest.approx(run["accuracy"])
            cm = np.zeros((3, 3), dtype=int)
            np.add.at(cm, (truth, pred), 1)
            assert cm.tolist() == run["confusion_matrix"]
            if name == "gru":  # class probabilities
                assert torch.all(scores >= 0) and torch.allclose(scores.sum(dim=1), torch.ones(45, dtype=torch.float64))
            score_sets.append(scores.tolist())
        assert r["ensemble_accuracy"] == pytest.approx(_naive_ensemble_accuracy(score_sets, truth))
    # One epoch leaves the three GRUs far apart, so their average is a model of its own.
    assert len({run["accuracy"] for run in state["results"]["gru"]["runs"]}) > 1
    row = next(line for line in (out / "results.md").read_text().splitlines() if line.startswith("| gru |"))
    assert f"{state['results']['gru']['ensemble_accuracy']:.4g}" in row
    # A run without its scores file: no ensemble rather than a wrong one.
    files = [out / "gru" / f"seed{s}" / "test_scores.pt" for s in range(3)]
    files[1].unlink()
    assert ensemble_accuracy(files, np.array(truth)) is None


def test_ensemble_accuracy_averages_scores_not_votes(tmp_path):
    """Three runs, two series (true classes 0 and 1), a third class no run can pick (-inf). Each
    run is right once; a majority vote misses series 0, the largest single score misses series 1;
    the average gets both."""
    inf = float("inf")
    runs = [[[0.90, 0.10, -inf], [0.90, 0.10, -inf]],
            [[0.40, 0.60, -inf], [0.25, 0.75, -inf]],
            [[0.45, 0.55, -inf], [0.25, 0.75, -inf]]]
    files = []
    for k, scores in enumerate(runs):
        files.append(tmp_path / f"run{k}.pt")
        torch.save({"scores": torch.tensor(scores, dtype=torch.float64), "classes": ["a", "b", "c"]}, files[-1])
    truth = np.array([0, 1])
    assert ensemble_accuracy(files, truth) == _naive_ensemble_accuracy(runs, truth) == 1.0
    assert ensemble_accuracy(files[1:], truth) == 0.5  # two runs that agree: series 0 is lost


def test_interrupted_seeds_keep_the_finished_runs(tmp_path, monkeypatch):
    import rlts.tasks.supervised.classify as classify

    train, test = _toy_pair(tmp_path)
    argv = ["--train", str(train), "--test", str(test), "--config", "debug", "--models", "gru", "--epochs", "2",
            "--seeds", "3", "--plots", "false"]
    real_loss = classify.classification_loss
    started = []

    def log(line):
        if line.startswith("[train] gru"):
            started.append(line)

    def loss_killed_in_the_third_seed(model, batch, **kw):
        if len(started) == 3:
            raise KeyboardInterrupt
        return real_loss(model, batch, **kw)

    out = tmp_path / "out"
    monkeypatch.setattr(classify, "classification_loss", loss_killed_in_the_third_seed)
    with pytest.raises(KeyboardInterrupt):
        _run([*argv, "--out", str(out)], log=log)
    saved = json.loads((out / "results.json").read_text())
    assert saved["results"] == {} and [r["seed"] for r in saved["partial"]["gru"]] == [0, 1]
    monkeypatch.setattr(classify, "classification_loss", real_loss)
    lines = []
    state = _run([*argv, "--out", str(out)], log=lines.append)
    assert [line.split(" (")[0] for line in lines if line.startswith(("[train]", "[resume]"))] == ["[train] gru"]
    assert "seed 2" in next(line for line in lines if line.startswith("[train]"))
    fresh = _run([*argv, "--out", str(tmp_path / "fresh")])
    # The seeds finished before the interruption kept their scores: the ensemble is the full one.
    assert state["results"]["gru"]["ensemble_accuracy"] == fresh["results"]["gru"]["ensemble_accuracy"]
    strip = lambda runs: [{k: v for k, v in r.items() if k != "train_time_s"} for r in runs]  # noqa: E731
    assert strip(state["results"]["gru"]["runs"]) == strip(fresh["results"]["gru"]["runs"])
    assert state["partial"] == {}


# ----------------------------------------------------------------------------- bad input


def _cli_error(capsys, argv):
    code = main(["classify", *argv])
    err = capsys.readouterr().err.strip()
    assert code == 2
    assert len(err.splitlines()) == 1 and err.startswith("rlts classify: error: "), err
    assert "Traceback" not in err
    return err


def test_cli_errors_are_one_line_and_keep_out(tmp_path, capsys, monkeypatch):
    import sktime.datasets

    out = tmp_path / "out"
    out.mkdir()
    keep = out / "notes.txt"
    keep.write_text("mine")
    base = ["--config", "debug", "--out", str(out)]
    train, test = _toy_pair(tmp_path)

    def offline(name, *args, **kwargs):
        raise RuntimeError(f"could not download {name}")

    monkeypatch.setattr(sktime.datasets, "load_UCR_UEA_dataset", offline)
    err = _cli_error(capsys, ["--dataset", "NoSuchSet", *base])
    assert "'NoSuchSet'" in err and "ItalyPowerDemand" in err and "--train" in err
    monkeypatch.undo()

    err = _cli_error(capsys, ["--train", str(tmp_path / "absent.ts"), "--test", str(test), *base])
    assert "absent.ts" in err and "does not exist" in err

    garbage = tmp_path / "garbage.ts"
    garbage.write_text("this is not a ts file\n1,2,3:a\n")
    err = _cli_error(capsys, ["--train", str(train), "--test", str(garbage), *base])
    assert "garbage.ts" in err

    one_channel = _write_ts(tmp_path / "one_TEST.ts", 9, channels=1)
    err = _cli_error(capsys, ["--train", str(train), "--test", str(one_channel), *base])
    assert "one_TEST.ts" in err and "has 1 channel," in err and "toy_TRAIN.ts has 2" in err

    new_label = _write_ts(tmp_path / "new_TEST.ts", 9, classes=("a", "b", "zebra"))
    err = _cli_error(capsys, ["--train", str(train), "--test", str(new_label), *base])
    assert "new_TEST.ts" in err and "'zebra'" in err

    missing = _write_ts(tmp_path / "nan_TRAIN.ts", rows=["1,2,3,4:1,2,3,4:a", "1,2,?,4:1,2,3,4:b"],
                        lengths=(4, 4))
    err = _cli_error(capsys, ["--train", str(missing), "--test", str(test), *base])
    assert "nan_TRAIN.ts" in err and "instance 1" in err and "time step 2" in err and "missing" in err

    single = _write_ts(tmp_path / "single_TRAIN.ts", 6, classes=("a",))
    err = _cli_error(capsys, ["--train", str(single), "--test", str(single), *base])
    assert "single class" in err

    err = _cli_error(capsys, ["--train", str(train), *base])
    assert "--test" in err
    err = _cli_error(capsys, ["--dataset", "GunPoint", "--train", str(train), "--test", str(test), *base])
    assert "not both" in err
    err = _cli_error(capsys, ["--dataset", "GunPoint", "--models", "mamba,bogus", *base])
    assert "'bogus'" in err and "minirocket" in err
    err = _cli_error(capsys, ["--dataset", "GunPoint", "--models", "mamba2", *base])  # d_model 16: headdim 64
    assert "mamba2" in err and "d_model 16" in err
    err = _cli_error(capsys, ["--dataset", "GunPoint", "--pooling", "max", *base])
    assert "'max'" in err
    err = _cli_error(capsys, ["--dataset", "GunPoint", "--epochs", "0", *base])
    assert "train.epochs" in err
    err = _cli_error(capsys, ["--dataset", "GunPoint", "--seeds", "0", *base])
    assert "seeds must be at least 1, got 0" in err

    assert keep.read_text() == "mine" and sorted(os.listdir(out)) == ["notes.txt"]


@pytest.mark.parametrize("name,text,expect", [
    ("good.csv", "a,b,c\n1,2,3\n4,5,6\n", ["is not a .ts file", "no @data line", "'a,b,c'"]),
    ("letters_TRAIN.ts", None, ["not a readable labelled .ts file", "could not convert string to float"]),
    ("dims_TRAIN.ts", None, ["not a readable labelled .ts file", "inconsistent number of dimensions"]),
    ("zebra_TRAIN.ts", None, ["does not declare: 'zebra' (declared: 'a', 'b', 'c')"]),
], ids=["csv", "not-a-number", "missing-channel", "undeclared-label"])
def test_bad_train_file_is_one_line_error_naming_it(tmp_path, capsys, name, text, expect):
    """A CSV (sktime's parser fails on it with a TypeError), a .ts file sktime cannot parse, and
    one whose rows carry a label its @classLabel line lacks (sktime accepts that silently)."""
    _, test = _toy_pair(tmp_path)
    rows = {"letters_TRAIN.ts": ["1,2,3,4:1,2,3,4:a", "1,2,x,4:1,2,3,4:b"],
            "dims_TRAIN.ts": ["1,2,3,4:1,2,3,4:a", "1,2,3,4:b"],
            "zebra_TRAIN.ts": ["1,2,3,4:1,2,3,4:a", "1,2,3,4:1,2,3,4:b", "1,2,3,4:1,2,3,4:zebra"]}
    train = tmp_path / name
    if text is None:
        _write_ts(train, rows=rows[name], lengths=(4, 4))
    else:
        train.write_text(text)
    err = _cli_error(capsys, ["--train", str(train), "--test", str(test), "--config", "debug",
                              "--out", str(tmp_path / "out")])
    assert f"train file {train} " in err and "TypeError" not in err
    for part in expect:
        assert part in err, err
    assert not (tmp_path / "out").exists()


def test_confusion_text_is_dark_on_light_cells(tmp_path):
    """The text colour follows the cell's place in the colour scale (vmin..vmax), not max / 2:
    with 52 the smallest count, 52 and 56 sit on near-white cells."""
    state = {"dataset": {"classes": ["1", "2"], "dataset": "GunPoint", "n_test": 150, "n_test_available": 150},
             "results": {"mamba": {"accuracy": 0.64, "confusion_matrix": [[100, 52], [56, 92]]},
                         "aaren": {"accuracy": 0.81, "confusion_matrix": [[150, 1], [56, 93]]}}}
    fig = plot_confusion(tmp_path / "cm.png", state, ["mamba", "aaren"])
    colours = [{t.get_text(): t.get_color() for t in ax.texts} for ax in fig.axes]
    assert colours == [{"100": "white", "52": "black", "56": "black", "92": "white"},
                       {"150": "white", "1": "black", "56": "black", "93": "white"}]
    assert (tmp_path / "cm.png").stat().st_size > 0


def test_other_dataset_in_same_out_is_refused(tmp_path, capsys):
    train, test = _toy_pair(tmp_path)
    out = tmp_path / "out"
    argv = ["--config", "debug", "--models", "transformer", "--epochs", "1", "--plots", "false", "--out", str(out)]
    assert main(["classify", "--train", str(train), "--test", str(test), *argv]) == 0
    printed = capsys.readouterr().out
    assert "| transformer |" in printed  # the table
    before = (out / "results.json").read_text()
    err = _cli_error(capsys, ["--dataset", "GunPoint", *argv])
    assert "different setup" in err and "GunPoint" in err
    assert (out / "results.json").read_text() == before


def test_ts_files_are_compared_by_content_not_by_path(tmp_path, monkeypatch, capsys):
    train, test = _toy_pair(tmp_path)
    out = tmp_path / "out"
    argv = ["--config", "debug", "--models", "minirocket", "--plots", "false", "--out", str(out)]
    assert main(["classify", "--train", str(train), "--test", str(test), *argv]) == 0
    digests = json.loads((out / "results.json").read_text())["config"]["data_sha256"]
    assert set(digests) == {"train_file", "test_file"}
    monkeypatch.chdir(tmp_path)
    assert main(["classify", "--train", "./toy_TRAIN.ts", "--test", "toy_TEST.ts", *argv]) == 0  # same files
    assert "[skip] minirocket" in capsys.readouterr().out
    before = (out / "results.json").read_text()
    _write_ts(test, 45, seed=7)  # other series under the same name
    err = _cli_error(capsys, ["--train", str(train), "--test", str(test), *argv])
    assert "another test_file file" in err
    assert (out / "results.json").read_text() == before


def test_short_options_map_to_their_keys():
    cfg = parse_classify_config(["--train", "a.ts", "--test=b.ts", "--train.epochs", "7", "--lr", "0.01",
                                 "--model", "gru,minirocket", "aaren"])
    assert (cfg.train_file, cfg.test_file, cfg.train.epochs, cfg.train.lr) == ("a.ts", "b.ts", 7, 0.01)
    assert cfg.models == ["gru", "minirocket", "aaren"]
    assert parse_classify_config([]).models == ["backbone", "minirocket"]


def test_folder_without_the_stem_key_counts_as_no_stem(tmp_path):
    """A results.json whose config has no `stem` holds models run without a stem: resumed under
    --stem none, refused under --stem conv (its numbers would be reported for the wrong model)."""
    train, test = _toy_pair(tmp_path)
    out = tmp_path / "out"
    argv = ["--train", str(train), "--test", str(test), "--config", "debug", "--models", "gru", "--epochs", "1",
            "--plots", "false", "--out", str(out)]
    _run([*argv, "--stem", "none"])
    results = json.loads((out / "results.json").read_text())
    del results["config"]["stem"]
    (out / "results.json").write_text(json.dumps(results))
    log = []
    _run([*argv, "--stem", "none"], log=log.append)
    assert any("[skip] gru" in line for line in log)
    with pytest.raises(ValueError, match="different setup \\(stem: 'none' -> 'conv'\\)"):
        _run([*argv, "--stem", "conv"])


def test_augment_is_stored_checked_and_part_of_the_setup(tmp_path, capsys):
    train, test = _toy_pair(tmp_path)
    out = tmp_path / "out"
    argv = ["--train", str(train), "--test", str(test), "--config", "debug", "--models", "gru", "--epochs", "2",
            "--plots", "false", "--out", str(out)]
    err = _cli_error(capsys, [*argv, "--augment", "window_warp,warp"])
    assert "unknown augmentation 'warp'" in err and "window_slice" in err and not out.exists()
    results = _run([*argv, "--augment", "window_warp,jitter"])
    assert results["config"]["augment"] == ["window_warp", "jitter"]
    description = results["protocol"]["description"]
    assert "each training series augmented (window_warp, jitter) with probability 1/2" in description
    assert json.loads((out / "results.json").read_text())["config"]["augment"] == ["window_warp", "jitter"]
    log = []
    _run([*argv, "--augment", "window_warp", "jitter"], log=log.append)    # the same list, spelt otherwise
    assert any("[skip] gru" in line for line in log)
    with pytest.raises(ValueError, match="different setup \\(augment"):
        _run([*argv, "--augment", "window_slice"])
    # a folder whose config has no augment key: no augmentation
    old = json.loads((out / "results.json").read_text())
    del old["config"]["augment"]
    (tmp_path / "old").mkdir()
    (tmp_path / "old" / "results.json").write_text(json.dumps({**old, "config": {**old["config"], "out": str(tmp_path / "old")}}))
    with pytest.raises(ValueError, match="different setup \\(augment"):
        _run([*argv[:-1], str(tmp_path / "old"), "--augment", "jitter"])
    with pytest.raises(ValueError, match="different setup \\(augment: \\[\\] -> \\['window_warp'\\]\\)"):
        _run([*argv[:-1], str(tmp_path / "old")])               # the default warps
    log = []
    none = _run([*argv[:-1], str(tmp_path / "old"), "--augment", "none"], log=log.append)  # same setup: no run
    assert any("[skip] gru" in line for line in log)
    assert "augmented" not in none["protocol"]["description"]
    assert parse_classify_config([]).augment == ["window_warp"]
