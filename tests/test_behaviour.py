"""SAC behaviour policies (rlts.tasks.rl.behaviour): exact resume, the replay dataset, recording with a
snapshot, and the command-line errors. Tiny Pendulum-v1 runs (the `debug` overlay: 400 steps,
random for 100, snapshots every 150 steps, 32x32 networks)."""
import json

import numpy as np
import pytest
from _compare import assert_same
import torch

from rlts.checkpoint import load
from rlts.data.trajectories import load_trajectories
from rlts.tasks.rl.behaviour import parse_behaviour_config, train
from rlts.tasks.cli import main as rlts_main
from rlts.tasks.rl.envs import make_env
from rlts.tasks.rl.record import record

pytestmark = pytest.mark.usefixtures("one_thread")


def run(out, *extra):
    return train(parse_behaviour_config(["--config", "debug", "--out", str(out), "--progress", "false", *extra]))


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    """An uninterrupted 400-step run."""
    out = tmp_path_factory.mktemp("behaviour") / "run"
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        run(out)
    finally:
        torch.set_num_threads(n)
    return out



def assert_same_run(a, b) -> None:
    """Two run folders hold bit-for-bit the same final checkpoint, snapshots, results and replay."""
    x, y = load(a / "checkpoints" / "last.pt"), load(b / "checkpoints" / "last.pt")
    for key in ("step", "sac", "collector", "snapshots", "rng"):
        assert_same(x[key], y[key], key)
    for snap in (a / "policies").glob("step*.pt"):
        assert_same(load(snap), load(b / "policies" / snap.name), snap.name)
    x, y = json.loads((a / "results.json").read_text()), json.loads((b / "results.json").read_text())
    for key in ("steps", "snapshots", "episode_returns", "episode_lengths", "finished"):
        assert x[key] == y[key], key
    x, y = load_trajectories(a / "replay.npz"), load_trajectories(b / "replay.npz")
    for name, arr in x.arrays().items():
        np.testing.assert_array_equal(getattr(y, name), arr)


def test_resume_is_exact(run_dir, tmp_path, capsys):
    out = tmp_path / "resumed"
    run(out, "--steps", "300")                          # a shorter run, then continued to 400
    mid = load(out / "checkpoints" / "last.pt")
    assert mid["step"] == 300 and len(mid["collector"]["actions"]) == 100  # mid-episode: replayed on resume
    resumed = run(out)
    assert [s["step"] for s in resumed["snapshots"]] == [150, 300, 400]
    assert_same_run(run_dir, out)
    mtime = (out / "checkpoints" / "last.pt").stat().st_mtime_ns      # a finished run is skipped
    capsys.readouterr()
    assert run(out) == resumed and (out / "checkpoints" / "last.pt").stat().st_mtime_ns == mtime
    assert "already holds a finished run of 400 steps" in capsys.readouterr().out
    (out / "results.json").unlink()                    # the checkpoint itself refuses other settings
    with pytest.raises(ValueError, match="different setup .*batch_size: 32 -> 16"):
        run(out, "--batch_size", "16")


def test_killed_run_resumes_exactly(run_dir, tmp_path, monkeypatch):
    import rlts.tasks.rl.behaviour as behaviour

    out, step, calls = tmp_path / "killed", behaviour.Collector.step, []

    def dying(self, action, buffer):
        calls.append(1)
        if len(calls) > 340:                            # killed at step 341, after the checkpoint at 300
            raise KeyboardInterrupt
        return step(self, action, buffer)

    monkeypatch.setattr(behaviour.Collector, "step", dying)
    with pytest.raises(KeyboardInterrupt):
        run(out)
    monkeypatch.undo()
    assert load(out / "checkpoints" / "last.pt")["step"] == 300 and not (out / "replay.npz").exists()
    run(out)
    assert_same_run(run_dir, out)


def test_replay_dataset(run_dir):
    data = load_trajectories(run_dir / "replay.npz")
    logged = json.loads((run_dir / "results.json").read_text())["episode_returns"]
    assert len(data) == 400 and data.actions.shape == (400, 1) and data.actions.dtype == np.float32
    assert np.all(np.abs(data.actions) <= 1.0)
    assert data.n_episodes == 2 and len(logged) == 2                   # Pendulum: 200-step time limit
    assert data.truncations[[199, 399]].all() and not data.terminations.any()
    np.testing.assert_allclose(data.episode_returns(), logged, rtol=1e-5)
    meta = data.metadata
    assert meta["source"] == "behaviour-replay" and meta["env"] == "Pendulum-v1" and meta["seed"] == 0
    assert "uniform random for the first 100 steps" in meta["policy"]
    env = make_env("Pendulum-v1")                       # the episodes replay in the env with their seeds
    for ep, seed in zip(data.episodes(), meta["episode_seeds"]):
        obs, _ = env.reset(seed=seed)
        for t, a in enumerate(ep.actions):
            np.testing.assert_array_equal(obs, ep.observations[t])
            obs, r, *_ = env.step(a)
            assert np.float32(r) == ep.rewards[t]
        np.testing.assert_array_equal(obs, ep.final_observation)


def test_record_with_snapshot(run_dir):
    a = record("Pendulum-v1", policy=run_dir, steps=300, seed=0, progress=False)
    b = record(None, policy=run_dir / "policies" / "step400.pt", steps=300, seed=0, progress=False)
    greedy = record("Pendulum-v1", policy=run_dir, steps=300, seed=0, greedy=True, progress=False)
    assert len(a) == 300 and a.actions.shape == (300, 1) and np.all(np.abs(a.actions) <= 1.0)
    for name, arr in a.arrays().items():
        np.testing.assert_array_equal(getattr(b, name), arr)
    assert not np.array_equal(a.actions, greedy.actions)
    assert "SAC policy" in a.metadata["policy"] and "step400" in a.metadata["policy"]
    with pytest.raises(ValueError, match="trained on 'Pendulum-v1'"):
        record("MountainCarContinuous-v0", policy=run_dir, steps=10, progress=False)


@pytest.mark.parametrize("args, message", [
    (["--env", "CartPole-v1"], "SAC needs continuous (Box) actions"),
    (["--env", "NoSuchEnv-v0"], "unknown environment id 'NoSuchEnv-v0'"),
    (["--env", "Pendulum-v1", "--steps", "0"], "steps must be at least 1, got 0"),
    (["--env", "Pendulum-v1", "--steps", "ten"], "`steps` expects an integer"),
])
def test_errors(tmp_path, capsys, args, message):
    out = tmp_path / "out"
    assert rlts_main(["behaviour", *args, "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("rlts behaviour: error:") and message in err and "\n" not in err
    assert not out.exists()
