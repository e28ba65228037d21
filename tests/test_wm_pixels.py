"""World-model-only training on a recorded dataset (`rlts atari --train world_model --dataset FILE`,
the RL loop's dataset mode): a tiny world model (the `debug` overlay) trains on a short recorded
Pong dataset with finite losses, a killed run resumes to the same final weights, sampling
counters, losses and open-loop strip as an uninterrupted one, bad input is one clear error, and
scripts/wm_pixels.py runs end to end in its --dry-run mode."""
import csv
import json
import shutil

import numpy as np
import pytest
from _compare import assert_same
import torch
from _scripts import load_script
from rlts.tasks.cli import main
from rlts.tasks.rl import loop as rl
from rlts.tasks.rl.config import parse_rl_config
from rlts.tasks.rl.record import record
from rlts.world_models.learner import Learner

pytestmark = pytest.mark.usefixtures("one_thread")

STEPS = ["--steps", "12", "--log_every", "2", "--image_every", "6", "--checkpoint_every", "4"]
"""12 world-model updates, losses logged every 2, strips every 6, checkpoints every 4."""


class Killed(Exception):
    pass


@pytest.fixture(scope="module")
def pong(tmp_path_factory):
    """120 frames of Pong under a random policy, as `rlts record` writes them."""
    path = tmp_path_factory.mktemp("data") / "pong.npz"
    record("Pong", "random", steps=120, seed=0, out=path, progress=False)
    return path


def config(out, dataset, *argv):
    return parse_rl_config(["--config", "debug", "--train", "world_model", "--dataset", str(dataset),
                            "--out", str(out), *STEPS, *argv], "atari.yaml")


def last(out) -> dict:
    return torch.load(out / "checkpoints" / "last.pt", weights_only=True)



def losses(out) -> list:
    with open(out / "losses.csv", newline="") as f:
        return list(csv.DictReader(f))


def test_world_model_trains_on_a_recorded_dataset(tmp_path, pong):
    out = tmp_path / "run"
    res = rl.train(config(out, pong))
    assert res["finished"] and res["train"] == "world_model" and res["updates"] == res["steps"] == 12
    assert res["dataset_transitions"] == 120 and "eval_return" not in res and res["s_per_update"] > 0
    for key in ("wm/loss", "wm/reconstruction", "wm/reward", "wm/termination", "wm/kl_dynamics",
                "wm/kl_representation"):
        assert np.isfinite(res["first_losses"][key]) and np.isfinite(res["last_losses"][key]), key
    rows = losses(out)
    assert [int(r["updates"]) for r in rows] == [2, 4, 6, 8, 10, 12]
    assert all(np.isfinite(float(r["wm/loss"])) for r in rows)
    # the strip: real frames (64 px) over the prediction, context 8 + 2 x horizon 4 = 16 steps
    from PIL import Image

    for strip in (out / "open_loop.png", *(out / "open_loop" / f"step{k:09d}.png" for k in (6, 12))):
        image = Image.open(strip)
        assert image.mode == "RGB" and image.size == (16 * 64, 2 * 64), strip
    assert (out / "losses.png").is_file() and not (out / "eval.csv").exists()
    assert not (out / "checkpoints" / "replay").exists()  # the dataset is not copied into the checkpoints
    state = last(out)
    assert state["buffer"]["n_wm"].sum() == 12 * 2  # 12 updates of 2 windows each, counted by DFS
    assert state["learner"]["updates"] == 12 and state["collector"] is None


def test_a_killed_world_model_run_resumes_exactly(tmp_path, pong, monkeypatch):
    rl.train(config(tmp_path / "a", pong))
    original = Learner.update

    def update(self, buffer, **kwargs):
        if self.updates == 7:
            raise Killed
        return original(self, buffer, **kwargs)

    monkeypatch.setattr(Learner, "update", update)
    with pytest.raises(Killed):
        rl.train(config(tmp_path / "b", pong))
    assert last(tmp_path / "b")["step"] == 4
    monkeypatch.setattr(Learner, "update", original)
    rl.train(config(tmp_path / "b", pong))  # resumes from the checkpoint at update 4
    a, b = last(tmp_path / "a"), last(tmp_path / "b")
    assert_same(a["learner"], b["learner"], "learner")  # weights, optimiser states, update count
    assert_same(a["buffer"], b["buffer"], "buffer")      # the DFS sampling counters
    assert a["losses"] == b["losses"] and a["step"] == b["step"] == 12
    assert losses(tmp_path / "a") == losses(tmp_path / "b")
    assert (tmp_path / "a" / "open_loop.png").read_bytes() == (tmp_path / "b" / "open_loop.png").read_bytes()


def test_the_dataset_is_compared_by_contents_and_minutes_bound_the_run(tmp_path, pong):
    out = tmp_path / "run"
    rl.train(config(out, pong))
    copy = tmp_path / "copy.npz"
    shutil.copy(pong, copy)
    longer = rl.train(config(out, copy, "--steps", "14"))  # the same file elsewhere: the run continues
    assert longer["updates"] == 14
    other = tmp_path / "other.npz"
    record("Pong", "random", steps=120, seed=1, out=other, progress=False)
    with pytest.raises(ValueError, match="another dataset file"):
        rl.train(config(out, other, "--steps", "16"))
    # a budget of 0.3 s: the run stops after its first update, checkpointed, and a rerun adds nothing
    res = rl.train(config(tmp_path / "timed", pong, "--minutes", "0.005"))
    assert res["finished"] and 1 <= res["steps"] < 12 and last(tmp_path / "timed")["step"] == res["steps"]
    again = rl.train(config(tmp_path / "timed", pong, "--minutes", "0.005"))
    assert again["steps"] == res["steps"]


def test_an_agent_trains_offline_on_a_dataset(tmp_path, pong):
    """`--train agent` with a dataset: world model and actor-critic updates on the recorded
    frames, evaluated in the game as usual."""
    res = rl.train(parse_rl_config(["--config", "debug", "--dataset", str(pong), "--out", str(tmp_path / "ag"),
                                    "--steps", "4", "--max_episode_frames", "400"], "atari.yaml"))
    assert res["finished"] and res["train"] == "agent" and res["updates"] == 4
    assert isinstance(res["eval_return"], float) and (tmp_path / "ag" / "eval.csv").is_file()


def test_bad_input_is_one_clear_line(tmp_path, pong, capsys):
    small = tmp_path / "small.npz"
    record("Pong", "random", steps=20, out=small, progress=False, env_kwargs={"image_size": 32})
    base = ["atari", "--config", "debug", "--out", str(tmp_path / "x")]
    for argv, message in [
        (["--train", "world_model", "--dataset", str(tmp_path / "none.npz")], "none.npz: no such file"),
        (["--train", "world_model"], "--train world_model needs --dataset FILE.npz"),
        (["--train", "world_model", "--dataset", str(small)],
         ("holds observations of shape (32, 32, 3) uint8, but the world model of 'Pong' (image_size 64) reads "
          "(64, 64, 3) uint8")),
        (["--train", "world_model", "--dataset", str(pong), "--game", "Breakout"],
         "was recorded on 'Pong', not 'Breakout'; pass --env Pong"),
        (["--train", "world_model", "--dataset", str(pong), "--batch_length", "100", "--batch_size", "30"],
         "holds 120 transitions: too few for batch_size = 30 distinct windows of batch_length = 100 steps"),
        (["--train", "everything"], "unknown train 'everything'; use one of agent, world_model"),
    ]:
        assert main([*base, *argv]) == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith("rlts atari: error: ") and message in err and "\n" not in err, (argv, err)
    assert not (tmp_path / "x").exists()


def test_the_script_dry_run(tmp_path, capsys):
    script = load_script("wm_pixels")
    out = tmp_path / "wm"
    assert script.main(["--dry-run", "--games", "Pong", "--threads", "1", "--out", str(out)]) == 0
    md = (out / "summary.md").read_text()
    assert md.startswith("| game | frames | updates | s_per_update |") and "| Pong | 100 | 6 |" in md
    assert (out / "Pong.npz").is_file() and (out / "Pong" / "open_loop.png").is_file()
    assert json.loads((out / "Pong" / "results.json").read_text())["train"] == "world_model"
    assert "the world model's losses" in capsys.readouterr().out
