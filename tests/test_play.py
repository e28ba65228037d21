"""`rlts play`: trained agents of `rlts rl`, `rlts atari` and `rlts offline` runs play greedy
episodes; the video has one frame per step (and each episode's first) at the size drawn; the
dream of vector observations is a plot, that of images sits beside the frames; bad input is one
message with exit code 2 and nothing written."""
import json
import shutil

import imageio.v3 as iio
import numpy as np
import pytest
import torch

from rlts.tasks.cli import main as rlts

pytestmark = pytest.mark.usefixtures("one_thread")


def _train(argv):
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        assert rlts(argv) == 0
    finally:
        torch.set_num_threads(n)


@pytest.fixture(scope="module")
def cartpole(tmp_path_factory):
    out = tmp_path_factory.mktemp("play") / "cartpole"
    _train(["rl", "--config", "debug", "--out", str(out)])
    return out


@pytest.fixture(scope="module")
def pong(tmp_path_factory):
    out = tmp_path_factory.mktemp("play") / "pong"
    _train(["atari", "--game", "Pong", "--config", "debug", "--steps", "60", "--random_steps", "40",
            "--max_episode_frames", "160", "--final_eval_episodes", "1", "--out", str(out)])
    return out


def test_cartpole_video_has_a_frame_per_step_and_the_dream_plot(cartpole, tmp_path, capsys):
    from rlts.tasks.rl.play import PlayConfig, play

    video = tmp_path / "cartpole.mp4"
    result = play(PlayConfig(run=str(cartpole), episodes=2, video=str(video), dream=True, seed=3))
    printed = capsys.readouterr().out
    assert "episode 1: return" in printed and "episode 2: return" in printed and "mean return" in printed
    frames = iio.imread(video)
    assert frames.shape[0] == sum(result["lengths"]) + 2                 # each step, and each episode's start
    assert frames.shape[1] % 16 == 0 and frames.shape[2] == 608          # CartPole's 600 x 400 render, captioned
    assert frames.shape[1] >= 400 + 14
    assert result["dream_plot"] == tmp_path / "cartpole.dream.png" and result["dream_plot"].stat().st_size > 0
    again = play(PlayConfig(run=str(cartpole), episodes=2, seed=3))      # the same seed plays the same games
    assert again["returns"] == result["returns"] and again["video"] is None


def test_gif_output(cartpole, tmp_path):
    from rlts.tasks.rl.play import PlayConfig, play

    result = play(PlayConfig(run=str(cartpole), episodes=1, video=str(tmp_path / "a.gif")))
    assert result["video"] == tmp_path / "a.gif"
    assert iio.imread(tmp_path / "a.gif").shape[0] == result["lengths"][0] + 1


def test_atari_dream_is_drawn_beside_the_real_frames(pong, tmp_path):
    from rlts.tasks.rl.play import ATARI_SCALE, PlayConfig, play

    video = tmp_path / "pong.mp4"
    result = play(PlayConfig(run=str(pong), video=str(video), dream=True, context=4, dream_steps=6))
    frames = iio.imread(video)
    assert frames.shape[0] == result["lengths"][0] + 1
    assert frames.shape[2] == 2 * 64 * ATARI_SCALE                        # real | world model
    left, right = frames[6, :64 * ATARI_SCALE, :64 * ATARI_SCALE], frames[6, :64 * ATARI_SCALE, 64 * ATARI_SCALE:]
    assert right.std() > 0 and not np.array_equal(left, right)
    assert frames[-1, :64 * ATARI_SCALE, 64 * ATARI_SCALE:].max() < 30     # after the dream: a dark panel


def test_offline_run_plays_with_a_target_return(tmp_path, capsys):
    from rlts.tasks.rl.record import record
    from rlts.tasks.rl.play import PlayConfig, play

    data = tmp_path / "d.npz"
    record("CartPole-v1", "random", episodes=10, seed=0, out=data, progress=False)
    _train(["offline", "--dataset", str(data), "--config", "debug", "--models", "aaren", "--out", str(tmp_path / "o")])
    result = play(PlayConfig(run=str(tmp_path / "o"), target_return=50, episodes=1, video=str(tmp_path / "o.mp4")))
    assert iio.imread(tmp_path / "o.mp4").shape[0] == result["lengths"][0] + 1
    assert "aaren of" in capsys.readouterr().out
    assert rlts(["play", "--run", str(tmp_path / "o"), "--dream", "--video", str(tmp_path / "d.mp4")]) == 2
    assert "--dream needs a world-model run" in capsys.readouterr().err
    assert rlts(["play", "--run", str(tmp_path / "o"), "--model", "gru"]) == 2
    assert "no finished model 'gru'" in capsys.readouterr().err


def test_bad_input_is_one_message_and_writes_nothing(cartpole, tmp_path, capsys):
    unfinished = tmp_path / "unfinished"
    shutil.copytree(cartpole, unfinished)
    state = json.loads((unfinished / "results.json").read_text())
    (unfinished / "results.json").write_text(json.dumps({**state, "finished": False}))
    forecast = tmp_path / "forecast"
    forecast.mkdir()
    (forecast / "results.json").write_text(json.dumps({"config": {}, "results": {}}))
    exists = tmp_path / "exists.mp4"
    exists.write_bytes(b"keep")
    (tmp_path / "file").write_text("")
    cases = [
        (["--run", str(tmp_path / "nowhere")], "is not a run folder"),
        (["--run", str(unfinished)], "has not finished training"),
        (["--run", str(forecast)], "holds no agent"),
        (["--run", str(cartpole), "--video", str(exists)], "already exists"),
        (["--run", str(cartpole), "--video", str(tmp_path / "file" / "v.mp4")], "does not exist"),
        (["--run", str(cartpole), "--video", str(tmp_path / "v.avi")], "give a file ending in .mp4 or .gif"),
        (["--run", str(cartpole), "--dream"], "--dream needs --video FILE"),
    ]
    for argv, message in cases:
        assert rlts(["play", *argv]) == 2
        err = capsys.readouterr().err
        assert message in err and err.count("\n") == 1, (argv, err)
    assert exists.read_bytes() == b"keep"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["exists.mp4", "file", "forecast", "unfinished"]
