"""`rlts events`: the event-forecasting runner end to end on simulated Hawkes data (known
generating process), marked data, resume, and bad input."""
import json
import os

import numpy as np
import pytest

from rlts.data.events import EventSequence, save_events, simulate_hawkes
from rlts.tasks.cli import main
from rlts.tasks.supervised.events import parse_events_config, run_events

TRUE = (0.5, 0.6, 2.0)


pytestmark = pytest.mark.usefixtures("one_thread")


def _hawkes_file(path, n_seq=15, n_events=150, marks=False, seed=0):
    rng = np.random.default_rng(seed)
    seqs = []
    for _ in range(n_seq):
        times = simulate_hawkes(*TRUE, n_events=n_events, rng=rng)
        m = (np.arange(len(times)) % 3).astype(np.int64) if marks else None  # marks cycle 0, 1, 2
        seqs.append(EventSequence(np.asarray(times, dtype=np.float64), m))
    save_events(seqs, path)
    return path


def _run(argv):
    return run_events(parse_events_config(argv), log=lambda *_: None)


def test_end_to_end_on_simulated_hawkes(tmp_path):
    data = _hawkes_file(tmp_path / "h.jsonl")
    out = tmp_path / "out"
    state = _run(["--data", str(data), "--config", "debug", "--true_hawkes", *map(str, TRUE),
                  "--epochs", "12", "--train.lr", "1e-2", "--out", str(out), "--time_unit", "s"])
    r = state["results"]
    assert {"aaren", "poisson", "hawkes", "true-hawkes"} <= set(r)
    for key in ("nll", "nll_time", "nll_mark", "rmse", "accuracy"):
        assert key in r["aaren"]
    assert state["protocol"]["time_unit"] == "s" and state["data"]["sequences"] == {"train": 9, "val": 3, "test": 3}
    assert state["data"]["predicted_events"]["test"] == 3 * 149  # origin "first": event 0 only starts
    # the fitted Hawkes is close to the truth, and both beat the Poisson process clearly
    assert abs(r["hawkes"]["nll"] - r["true-hawkes"]["nll"]) < 0.05
    assert r["true-hawkes"]["nll"] < r["poisson"]["nll"] - 0.1
    # a tiny model trained briefly already beats Poisson (it learns the self-excitation)
    assert r["aaren"]["nll"] < r["poisson"]["nll"], (r["aaren"]["nll"], r["poisson"]["nll"])
    assert np.isfinite(r["aaren"]["rmse"]) and r["aaren"]["accuracy"] is None  # unmarked data
    for f in ("results.json", "results.md", "results.csv", "intensity.png"):
        assert (out / f).exists(), f
    assert (out / "aaren" / "checkpoints" / "last.pt").exists() and any((out / "aaren" / "tb").iterdir())
    assert "| true-hawkes |" in (out / "results.md").read_text()


def test_marks_rerun_skips_and_time_unit_shift(tmp_path):
    data = _hawkes_file(tmp_path / "m.jsonl", n_seq=10, n_events=60, marks=True)
    out = tmp_path / "out"
    state = _run(["--data", str(data), "--config", "debug", "--out", str(out), "--plots", "false"])
    r = state["results"]
    assert r["repeat-mark"]["accuracy"] == 0.0  # marks cycle, so the previous mark is never right
    assert r["poisson"]["nll_mark"] == pytest.approx(np.log(3), abs=0.05)  # frequencies ~uniform
    assert 0.0 <= r["aaren"]["accuracy"] <= 1.0 and r["aaren"]["nll_mark"] > 0
    # the time NLL is reported in data units: rescaling every time by 10 shifts it by log(10)
    seqs = [json.loads(line) for line in data.read_text().splitlines()]
    slow = tmp_path / "slow.jsonl"
    slow.write_text("\n".join(json.dumps({"times": [10 * t for t in s["times"]], "marks": s["marks"]}) for s in seqs))
    r10 = _run(["--data", str(slow), "--config", "debug", "--out", str(tmp_path / "o10"), "--plots", "false"])["results"]
    for m in ("poisson", "hawkes", "aaren"):
        assert r10[m]["nll_time"] == pytest.approx(r[m]["nll_time"] + np.log(10), abs=2e-3 if m != "hawkes" else 1e-2), m
    # rerun: the trained model is skipped, not retrained
    mtime = (out / "aaren" / "checkpoints" / "last.pt").stat().st_mtime_ns
    again = _run(["--data", str(data), "--config", "debug", "--out", str(out), "--plots", "false"])
    assert again["results"]["aaren"] == r["aaren"]
    assert (out / "aaren" / "checkpoints" / "last.pt").stat().st_mtime_ns == mtime
    # a results folder whose config has no copy_marks was run without it: a rerun with the
    # default (on) is refused, one with it off continues it
    res = json.loads((out / "results.json").read_text())
    assert res["config"].pop("copy_marks") is True and r["aaren"]["params"] > 0
    (out / "results.json").write_text(json.dumps(res))
    with pytest.raises(ValueError, match="copy_marks: False -> True"):
        _run(["--data", str(data), "--config", "debug", "--out", str(out), "--plots", "false"])
    off = _run(["--data", str(data), "--config", "debug", "--out", str(out), "--plots", "false",
                "--copy_marks", "false"])
    assert off["results"]["aaren"] == r["aaren"]
    # another model into the same folder: the table lists both, this run's first
    _run(["--data", str(data), "--config", "debug", "--out", str(out), "--plots", "false",
          "--copy_marks", "false", "--models", "gru"])
    rows = [line.split("|")[1].strip() for line in (out / "results.md").read_text().splitlines()[2:]]
    assert rows == ["gru", "aaren", "poisson", "hawkes", "repeat-mark"]


def test_rerun_with_fewer_models_plots_every_model(tmp_path, monkeypatch):
    import rlts.tasks.supervised.events as ev

    data = _hawkes_file(tmp_path / "h.jsonl", n_seq=6, n_events=40)
    out = tmp_path / "out"
    drawn, real = [], ev.plot_intensity

    def spy(*args, **kwargs):
        drawn.append(real(*args, **kwargs))
        return drawn[-1]

    monkeypatch.setattr(ev, "plot_intensity", spy)
    lines = []
    base = ["--data", str(data), "--config", "debug", "--out", str(out)]
    run_events(parse_events_config([*base, "--models", "aaren,transformer"]), log=lines.append)
    assert lines[0] == f"[out] {out}"  # where results go, right after the folder is opened
    (out / "intensity.png").unlink()
    lines.clear()
    run_events(parse_events_config([*base, "--models", "transformer"]), log=lines.append)
    assert drawn == [["aaren", "transformer"], ["transformer", "aaren"]]  # the earlier run's model too
    assert (out / "intensity.png").exists() and not any(x.startswith("[plot]") for x in lines)
    # a model whose checkpoint is gone is left out of the plot, with a note
    (out / "aaren" / "checkpoints" / "last.pt").unlink()
    _run([*base, "--models", "transformer"])
    assert drawn[-1] == ["transformer"]
    lines.clear()
    run_events(parse_events_config([*base, "--models", "transformer"]), log=lines.append)
    assert any(x.startswith("[plot] aaren: no checkpoint") for x in lines), lines


def test_table_order():
    from rlts.tasks.runner import table_order

    assert table_order(["b", "a"], ["a", "c", "b", "d"]) == ["b", "a", "c", "d"]
    assert table_order([96], [96, 192]) == [96, 192] and table_order([], []) == []


def _cli_error(capsys, argv):
    assert main(["events", *argv]) == 2
    err = capsys.readouterr().err
    assert err.startswith("rlts events: error:") and err.count("\n") == 1, err
    return err


def test_bad_input_is_one_line_and_keeps_out(tmp_path, capsys):
    out = tmp_path / "out"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    base = ["--config", "debug", "--out", str(out)]
    data = _hawkes_file(tmp_path / "h.jsonl", n_seq=6, n_events=30)

    assert "no_such.jsonl" in _cli_error(capsys, ["--data", str(tmp_path / "no_such.jsonl"), *base])
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"times": [0, 1, 2]}\n{"times": [3, 2, 5]}\n')
    err = _cli_error(capsys, ["--data", str(bad), *base])
    assert "bad.jsonl" in err and "line 2" in err
    assert "split" in _cli_error(capsys, ["--data", str(data), "--split", "0.5", "0.5", "0.5", *base])
    assert "'lstm'" in _cli_error(capsys, ["--data", str(data), "--models", "lstm", *base])
    assert "true_hawkes" in _cli_error(capsys, ["--data", str(data), "--true_hawkes", "1", "2", *base])
    one = tmp_path / "one.jsonl"
    one.write_text('{"times": [0, 1, 2]}\n')
    err = _cli_error(capsys, ["--data", str(one), *base])
    assert "one.jsonl" in err and "needs more sequences" in err
    single = tmp_path / "single.jsonl"  # five sequences of one event: with origin first, nothing to predict
    single.write_text("".join('{"times": [%d]}\n' % i for i in range(5)))
    assert "no event to predict" in _cli_error(capsys, ["--data", str(single), *base])
    huge = tmp_path / "huge.jsonl"  # a raw id as a mark: 10**12 types, refused before any allocation
    huge.write_text("".join('{"times": [1, 2, 3], "marks": [0, 1, %d]}\n' % (10 ** 12 if i == 3 else 1)
                            for i in range(6)))
    err = _cli_error(capsys, ["--data", str(huge), *base])
    assert "huge.jsonl, line 4" in err and "marks[2] = 1000000000000 is too large" in err and "2**20" in err
    assert sorted(os.listdir(out)) == ["notes.txt"]


def test_aaren_models_use_the_learned_clock_unless_switched_off():
    from rlts.tasks.supervised.events import EventsConfig, build_model

    on = build_model("aaren", EventsConfig(d_model=16, n_layers=1), n_marks=1)
    off = build_model("aaren", EventsConfig(d_model=16, n_layers=1, aaren_decay=False), n_marks=1)
    blocks = lambda m: [b for b in m.modules() if type(b).__name__ == "Aaren"]  # noqa: E731
    assert blocks(on) and all(b.decay for b in blocks(on))
    assert blocks(off) and not any(b.decay for b in blocks(off))
    build_model("transformer", EventsConfig(d_model=16, n_layers=1), n_marks=1)  # the option is Aaren's only


def test_marked_models_get_the_copy_path_unless_switched_off():
    from rlts.tasks.supervised.events import EventsConfig, build_model

    for name in ("aaren", "transformer"):
        assert build_model(name, EventsConfig(d_model=16, n_layers=1), n_marks=5).copy_head is not None
        assert build_model(name, EventsConfig(d_model=16, n_layers=1, copy_marks=False), n_marks=5).copy_head is None


def test_few_sequences_overlay_sets_small_batches_and_weight_averaging():
    base = parse_events_config(["--data", "x.jsonl"])
    few = parse_events_config(["--data", "x.jsonl", "--config", "few_sequences"])
    assert (base.train.batch_size, base.train.ema) == (16, 0.0)
    assert (few.train.batch_size, few.train.ema) == (4, 0.97)
    assert few.d_model == base.d_model and few.train.epochs == base.train.epochs  # nothing else changes


def test_seeds_are_the_single_seed_runs_summarised_and_resume_after_a_kill(tmp_path, capsys, monkeypatch):
    import rlts.tasks.supervised.events as ev

    data = _hawkes_file(tmp_path / "m.jsonl", n_seq=8, n_events=40, marks=True)
    base = ["--data", str(data), "--config", "debug", "--models", "gru", "--epochs", "3"]
    singles = [_run([*base, "--seed", str(s), "--plots", "false", "--out", str(tmp_path / f"s{s}")])["results"]["gru"]
               for s in (3, 4, 5)]
    out = tmp_path / "out"
    argv = [*base, "--seed", "3", "--seeds", "3", "--out", str(out)]
    started, real_loss = [], ev.event_loss

    def loss_killed_in_the_third_seed(model, batch, **kw):
        if len(started) == 3:
            raise KeyboardInterrupt
        return real_loss(model, batch, **kw)

    monkeypatch.setattr(ev, "event_loss", loss_killed_in_the_third_seed)
    with pytest.raises(KeyboardInterrupt):
        run_events(parse_events_config(argv),
                   log=lambda line: started.append(line) if line.startswith("[train]") else None)
    saved = json.loads((out / "results.json").read_text())
    assert "gru" not in saved["results"] and [r["seed"] for r in saved["partial"]["gru"]] == [3, 4]
    assert "poisson" in saved["results"]                      # the baselines were written before any training
    monkeypatch.setattr(ev, "event_loss", real_loss)
    lines = []
    state = run_events(parse_events_config(argv), log=lines.append)
    assert [line for line in lines if line.startswith("[train]")] == [started[2]]  # seeds 3 and 4 were kept
    assert "seed 5)" in started[2] and state["partial"] == {}
    entry = state["results"]["gru"]
    strip = lambda r: {k: v for k, v in r.items() if k not in ("seed", "train_time_s")}  # noqa: E731
    assert [strip(r) for r in entry["runs"]] == [strip(r) for r in singles]   # each run is its --seed S run
    for metric in ("nll", "nll_time", "nll_mark", "rmse", "accuracy"):
        values = [r[metric] for r in singles]
        assert entry[metric] == pytest.approx(np.mean(values), rel=1e-12)
        assert entry[f"{metric}_std"] == pytest.approx(np.std(values, ddof=1), rel=1e-9, abs=1e-15)
    assert entry["nll_std"] > 0
    header = (out / "results.md").read_text().splitlines()[0]
    assert "nll_std" in header and "seeds" in header and "| gru | " in (out / "results.md").read_text()
    assert (out / "intensity.png").exists() and (out / "gru" / "seed3" / "checkpoints" / "last.pt").exists()
    assert not (out / "gru" / "checkpoints").exists()
    assert not any(line.startswith("[plot]") for line in lines), lines   # gru was drawn, from seed3/
    single_header = (tmp_path / "s3" / "results.md").read_text().splitlines()[0]
    assert "| nll |" in single_header and "nll_std" not in single_header and "seeds" not in single_header
    # a folder whose config has no "seeds" key holds one seed per model
    old = json.loads((tmp_path / "s3" / "results.json").read_text())
    del old["config"]["seeds"]
    (tmp_path / "s3" / "results.json").write_text(json.dumps(old))
    with pytest.raises(ValueError, match="different setup \\(seeds: 1 -> 2\\)"):
        _run([*base, "--seed", "3", "--seeds", "2", "--plots", "false", "--out", str(tmp_path / "s3")])
    again = _run([*base, "--seed", "3", "--plots", "false", "--out", str(tmp_path / "s3")])  # one seed: nothing to run
    assert again["results"]["gru"] == singles[0]
    # another number of seeds in the same folder is another setup; --seeds 0 is refused before anything is written
    with pytest.raises(ValueError, match="different setup \\(seeds: 3 -> 2\\)"):
        _run([*base, "--seed", "3", "--seeds", "2", "--out", str(out)])
    assert main(["events", *base, "--seeds", "0", "--out", str(tmp_path / "zero")]) == 2
    assert "seeds must be at least 1, got 0" in capsys.readouterr().err and not (tmp_path / "zero").exists()


def test_summarise_runs_leaves_a_metric_a_run_lacks_empty():
    from rlts.tasks.runner import summarise_runs

    runs = [{"seed": s, "nll": v, "accuracy": None, "params": 7, "train_time_s": 1.5} for s, v in ((0, 1.0), (1, 2.0))]
    entry = summarise_runs(runs, ("nll", "accuracy"))
    assert (entry["nll"], entry["nll_std"]) == (1.5, pytest.approx(np.sqrt(0.5)))
    assert entry["accuracy"] is None and entry["accuracy_std"] is None
    assert (entry["params"], entry["train_time_s"], entry["runs"]) == (7, 3.0, runs)
    assert summarise_runs(runs[:1], ("nll",)) == {"nll": 1.0, "accuracy": None, "params": 7, "train_time_s": 1.5}
