"""`rlts atari100k run` and `report` end to end: two games x one seed with the debug config in
parallel processes, a rerun that skips finished jobs, and the report of the (partial) result; the
command line of every job and the `--job.KEY value` overrides."""
import json
import sys
from pathlib import Path

import pytest

from rlts.tasks.atari100k.run import job_command, parse_games
from rlts.tasks.cli import commands, main


def test_game_names_are_checked():
    assert parse_games("pong, Breakout,PONG") == ["Pong", "Breakout"]
    assert len(parse_games("all")) == 26
    with pytest.raises(ValueError, match="did you mean Pong"):
        parse_games("Pongg")
    with pytest.raises(ValueError, match="not one of the 26"):
        parse_games("Tennis")


def test_two_games_one_seed_debug_run_then_report(tmp_path, capsys):
    out = tmp_path / "bench"
    argv = ["atari100k", "run", "--games", "Pong,Breakout", "--seeds", "1", "--config", "debug", "--jobs", "2",
            "--device", "cpu", "--out", str(out)]
    assert main(argv) == 0
    for game in ("Pong", "Breakout"):
        res = json.loads((out / game / "seed0" / "results.json").read_text())
        assert res["finished"] and res["env"] == game and res["config"]["seed"] == 0
        assert res["eval_episodes"] == 1 and "no life-loss signal" in res["protocol"]
        assert (out / game / "seed0" / "checkpoints" / "last.pt").is_file()
    manifest = json.loads((out / "atari100k.json").read_text())
    assert manifest["games"] == ["Pong", "Breakout"] and manifest["config"] == "debug"
    capsys.readouterr()
    # the same command again: both jobs are finished, nothing runs
    assert main(argv) == 0
    assert "2 finished, 0 to run" in capsys.readouterr().out
    # another backbone (or config) is refused: the finished jobs are not its runs; fewer games keep the manifest
    before = (out / "atari100k.json").read_text()
    assert main([*argv, "--backbone", "aaren"]) == 2
    assert "another setup (backbone: 'mamba2' -> 'aaren')" in capsys.readouterr().err
    assert main([*argv, "--job.eval_every", "0"]) == 2
    assert "another setup (overrides: [] -> ['--eval_every', '0'])" in capsys.readouterr().err
    assert (out / "atari100k.json").read_text() == before
    assert main([*argv[:3], "Pong", *argv[4:]]) == 0
    assert json.loads((out / "atari100k.json").read_text())["games"] == ["Pong", "Breakout"]
    # an unknown config overlay stops before any job starts
    assert main([*argv[:7], "nope", *argv[8:-1], str(tmp_path / "other")]) == 2
    assert "unknown config overlay `nope`" in capsys.readouterr().err and not (tmp_path / "other").exists()

    assert main(["atari100k", "report", str(out), "--reps", "200"]) == 0
    text = (out / "report.md").read_text()
    assert "Pong" in text and "Breakout" in text and "partial" in text.lower()
    assert (out / "scores.png").is_file() and (out / "profile.png").is_file()
    rep = json.loads((out / "report.json").read_text())
    assert rep["partial"] is True


def _job(argv, game="Pong", seed=3):
    """The command line of one job of `rlts atari100k run ARGV`, without the Python executable."""
    cfg = commands()["atari100k run"].parse(argv)
    cmd = job_command(game, seed, cfg, Path("o") / game / f"seed{seed}")
    assert cmd[0] == sys.executable
    return cmd[1:]


def test_job_command_lines():
    """Each job is `python -m rlts.tasks.cli atari ...`; `--job.KEY value` overrides follow the
    run's own keys in the order given, spelled as `rlts atari` takes them."""
    assert _job(["--games", "Pong", "--out", "o"]) == [
        "-m", "rlts.tasks.cli", "atari", "--config", "atari100k", "--game", "Pong", "--seed", "3",
        "--world_model.backbone", "mamba2", "--device", "auto", "--progress", "false", "--out", "o/Pong/seed3"]
    assert _job(["--games", "Pong", "--out", "o", "--steps", "300", "--backbone", "aaren", "--config", "debug",
                 "--device", "cpu", "--job.lr", "1e-4", "--job.world_model.channels", "4", "8",
                 "--job.eval_every", "0"]) == [
        "-m", "rlts.tasks.cli", "atari", "--config", "debug", "--game", "Pong", "--seed", "3", "--steps", "300",
        "--world_model.backbone", "aaren", "--device", "cpu", "--progress", "false", "--out", "o/Pong/seed3",
        "--lr", "1e-4", "--world_model.channels", "4", "8", "--eval_every", "0"]
    assert _job(["--config=debug", "--job.eval-every=5", "--job.world_model.d_model", "8"])[-4:] == [
        "--eval_every", "5", "--world_model.d_model", "8"]


def test_job_overrides_are_checked_before_any_job(tmp_path, capsys):
    out = tmp_path / "bench"
    base = ["atari100k", "run", "--games", "Pong", "--seeds", "1", "--config", "debug", "--out", str(out)]
    for extra, message in [
        (["--job.lr", "1e-4"], "the jobs' `rlts atari` settings (--config, --job.KEY): unknown config key `lr`"),
        (["--job.eval_every", "x"], "config key `eval_every` expects an integer, got 'x'"),
        (["--job.seed", "3"], "--job.seed: every job's seed is set by `rlts atari100k run`; use --seeds"),
        (["--job.world_model.backbone", "gru"], "--job.world_model.backbone: every job's world_model.backbone "
                                                 "is set by `rlts atari100k run`; use --backbone"),
        (["--job", "eval_every=5"], "--job takes `rlts atari` keys as --job.KEY value"),
        (["--eval_every", "5"], "unknown config key `eval_every`"),
        (["--seeds", "0"], "seeds must be at least 1, got 0"),
    ]:
        assert main([*base, *extra]) == 2
        err = capsys.readouterr().err
        assert err.startswith("rlts atari100k run: error: ") and message in err and err.count("\n") == 1, err
    assert main(["atari100k", "run", "--games", "Pong"]) == 2
    assert "give --out DIR" in capsys.readouterr().err
    assert not out.exists()


def test_failed_jobs_give_exit_code_1(tmp_path, capsys, monkeypatch):
    import rlts.tasks.atari100k.run as run

    monkeypatch.setattr(run, "job_command", lambda *args: [sys.executable, "-c", "raise SystemExit(3)"])
    out = tmp_path / "bench"
    assert main(["atari100k", "run", "--games", "Pong", "--seeds", "1", "--config", "debug", "--out", str(out)]) == 1
    captured = capsys.readouterr()
    assert "[FAILED (exit 3" in captured.out and "1 job(s) failed: Pong seed 0" in captured.err
    manifest = json.loads((out / "atari100k.json").read_text())
    assert manifest["config"] == "debug" and manifest["overrides"] == []
