"""`rlts atari100k run` and `report` end to end: two games x one seed with the debug config in
parallel processes, a rerun that skips finished jobs, and the report of the (partial) result."""
import json

import pytest

from rlts.tasks.atari100k.run import parse_games
from rlts.tasks.cli import main


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
