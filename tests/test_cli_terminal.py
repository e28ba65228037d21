"""What a person meets at the terminal, the same for every command: log.txt in the run folder,
the closing list of what was written, --threads, one line for Ctrl-C and for bad input."""
import numpy as np
import pytest
import torch

from rlts.tasks import cli


@pytest.fixture
def series(tmp_path):
    t = np.arange(400)
    path = tmp_path / "s.csv"
    path.write_text("a,b\n" + "\n".join(f"{np.sin(i / 7):.5f},{np.cos(i / 11):.5f}" for i in t) + "\n")
    return path


def _forecast(series, out, *extra):
    return cli.main(["forecast", "--csv", str(series), "--config", "debug", "--models", "linear,naive",
                     "--window", "24", "--horizon", "8", "--device", "cpu", "--out", str(out), *extra])


def test_run_folder_keeps_a_log_and_the_run_lists_its_files(series, tmp_path, capsys):
    out = tmp_path / "run"
    assert _forecast(series, out) == 0
    printed = capsys.readouterr().out
    log = (out / "log.txt").read_text()
    assert "[out]" in log and "| linear |" in log       # what was printed, from before the folder existed
    assert f"rlts forecast: wrote {out}" in printed
    assert "results.csv" in printed and "predictions.png" in printed and f"tensorboard --logdir {out}" in printed
    assert _forecast(series, out) == 0                   # a rerun appends to the same log
    assert (out / "log.txt").read_text().count("[out]") == 2


def test_threads_sets_torch_threads_and_is_checked(series, tmp_path, capsys):
    before = torch.get_num_threads()
    try:
        assert _forecast(series, tmp_path / "t", "--threads", "1") == 0
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)
    assert _forecast(series, tmp_path / "u", "--threads", "0") == 2
    assert "--threads expects a positive integer, got '0'" in capsys.readouterr().err
    assert not (tmp_path / "u").exists()


def test_bad_input_is_one_line_and_writes_nothing(tmp_path, capsys):
    out = tmp_path / "bad"
    assert cli.main(["forecast", "--csv", str(tmp_path / "missing.csv"), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("rlts forecast: error:") and err.count("\n") == 1
    assert not out.exists()
    assert cli.main(["forecast", "--csv", "x.csv", "--window", "0"]) == 2
    assert "window must be at least 1, got 0" in capsys.readouterr().err


def test_ctrl_c_is_one_line_and_the_rerun_resumes(series, tmp_path, capsys, monkeypatch):
    import rlts.tasks.supervised.forecast as forecast

    real = forecast.evaluate_windows

    def interrupted(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(forecast, "evaluate_windows", interrupted)
    out = tmp_path / "c"
    assert _forecast(series, out) == 130
    err = capsys.readouterr().err  # after the progress bars: one line, no traceback
    assert err.rstrip().splitlines()[-1] == "rlts forecast: interrupted; run the same command to resume"
    assert "Traceback" not in err
    monkeypatch.setattr(forecast, "evaluate_windows", real)
    assert _forecast(series, out) == 0
    assert "[resume] linear" in capsys.readouterr().out
