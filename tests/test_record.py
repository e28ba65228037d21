"""Recording offline datasets (rlts.tasks.rl.record): random and trained-agent policies, replay export."""
import numpy as np
import pytest
import torch

from rlts.checkpoint import load, save_atomic
from rlts.data.trajectories import load_trajectories
from rlts.runtime import episode_seed
from rlts.tasks.cli import main as rlts
from rlts.tasks.rl.envs import make_env
from rlts.tasks.rl.record import export_replay, record
from rlts.world_models.replay import ReplayFiles

pytestmark = pytest.mark.usefixtures("one_thread")


def main(argv) -> int:
    """`rlts record ARGV`."""
    return rlts(["record", *argv])


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    """A tiny trained CartPole run (the `debug` overlay of rl.yaml: 300 steps, ~10 s)."""
    from rlts.tasks.rl.config import parse_rl_config
    from rlts.tasks.rl.loop import train

    out = tmp_path_factory.mktemp("rl") / "run"
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        train(parse_rl_config(["--config", "debug", "--out", str(out)]))
    finally:
        torch.set_num_threads(n)
    return out


def replay_checkpoint(run_dir):
    """last.pt of a run with its replay buffer read back from checkpoints/replay/."""
    payload = load(run_dir / "checkpoints" / "last.pt")
    return {**payload, "buffer": ReplayFiles(run_dir / "checkpoints" / "replay").read(payload["buffer"])}


def rerun(data):
    """Replay every recorded episode in a fresh env with its seed and actions: per-episode
    returns, and a check that observations and flags match."""
    env = make_env(data.metadata["env"], **data.metadata["env_kwargs"])
    returns = []
    for ep, seed in zip(data.episodes(), data.metadata["episode_seeds"]):
        obs, _ = env.reset(seed=seed)
        total = 0.0
        for t, a in enumerate(ep.actions):
            np.testing.assert_array_equal(obs, ep.observations[t])
            obs, r, term, trunc, _ = env.step(int(a))
            total += r
            assert term == ep.terminations[t]
        np.testing.assert_array_equal(obs, ep.final_observation)
        returns.append(total)
    return np.array(returns)


def test_record_random_reproducible(tmp_path):
    a = record("CartPole-v1", "random", episodes=3, seed=7, out=tmp_path / "a.npz", progress=False)
    b = load_trajectories(tmp_path / "a.npz")
    c = record("CartPole-v1", "random", episodes=3, seed=7, progress=False)
    d = record("CartPole-v1", "random", episodes=3, seed=8, progress=False)
    assert a.n_episodes == 3 and a.final_observations.shape == (3, 4) and a.life_losses is not None
    for name, arr in a.arrays().items():
        np.testing.assert_array_equal(getattr(b, name), arr)
        np.testing.assert_array_equal(getattr(c, name), arr)
    assert len(d) != len(a) or not np.array_equal(d.actions, a.actions)
    assert all(ep.terminations[-1] or ep.truncations[-1] for ep in a.episodes())
    assert b.metadata["policy"] == "uniform random" and b.metadata["source"] == "record"
    np.testing.assert_allclose(rerun(b), b.episode_returns())
    assert len(set(b.metadata["episode_seeds"])) == 3


def test_record_steps_cuts_last_episode():
    data = record("CartPole-v1", "random", steps=50, seed=0, progress=False)
    assert len(data) == 50 and data.truncations[-1] and not data.terminations[-1]
    assert data.metadata["last_episode_cut"]


def test_record_callable_policy_and_atari_frames():
    class AlwaysOne:
        description = "always 1"

        def __init__(self):
            self.resets = 0

        def reset(self):
            self.resets += 1

        def __call__(self, obs):
            return 1

    pol = AlwaysOne()
    data = record("CartPole-v1", pol, episodes=2, progress=False)
    assert pol.resets == 2 and np.all(data.actions == 1) and data.metadata["policy"] == "always 1"
    pong = record("Pong", "random", steps=20, progress=False, env_kwargs={"image_size": 32})
    assert pong.observations.shape == (20, 32, 32, 3) and pong.observations.dtype == np.uint8
    assert pong.final_observations.dtype == np.uint8 and pong.life_losses.shape == (20,)


def test_rlts_record_atari_writes_the_world_models_frames(tmp_path):
    """`rlts record --env Pong --policy random --steps N` writes the frames `rlts atari` trains
    on (`--dataset`): image_size x image_size x 3 uint8 of the atari config, with life losses."""
    from rlts.tasks.rl.config import parse_rl_config

    out = tmp_path / "pong.npz"
    assert main(["--env", "Pong", "--policy", "random", "--steps", "30", "--out", str(out), "--no-progress"]) == 0
    data = load_trajectories(out)
    size = parse_rl_config([], "atari.yaml").image_size
    assert data.observations.shape == (30, size, size, 3) == (30, 64, 64, 3) and data.observations.dtype == np.uint8
    assert data.metadata["env"] == "Pong" and data.life_losses.shape == (30,) and data.truncations[-1]


def test_record_errors(tmp_path):
    with pytest.raises(ValueError, match="exactly one of episodes and steps"):
        record("CartPole-v1", "random")
    with pytest.raises(ValueError, match="episodes must be >= 1"):
        record("CartPole-v1", "random", episodes=0)
    with pytest.raises(ValueError, match="not a run folder"):
        record(None, tmp_path / "nope", episodes=1)
    with pytest.raises(ValueError, match="unknown"):
        record("NoSuchEnv-v9", "random", episodes=1)


def test_record_trained_agent(run_dir, tmp_path):
    out = tmp_path / "agent.npz"
    data = record(None, run_dir, episodes=2, seed=1, out=out, progress=False)
    again = record("CartPole-v1", str(run_dir), episodes=2, seed=1, progress=False)
    np.testing.assert_array_equal(again.actions, data.actions)
    back = load_trajectories(out)
    assert back.n_episodes == 2 and back.metadata["env"] == "CartPole-v1"
    assert "Drama agent" in back.metadata["policy"] and "sampling" in back.metadata["policy"]
    np.testing.assert_allclose(rerun(back), back.episode_returns())
    greedy = record(None, run_dir, episodes=2, greedy=True, progress=False)
    assert "greedy" in greedy.metadata["policy"]
    with pytest.raises(ValueError, match="trained on 'CartPole-v1', not 'Acrobot-v1'"):
        record("Acrobot-v1", run_dir, episodes=1, progress=False)


def check_replay(data, buf):
    n_envs, size = buf["action"].shape
    assert len(data) == n_envs * size == int(buf["size"]) * int(buf["num_envs"])
    np.testing.assert_array_equal(data.rewards, buf["reward"].numpy().reshape(-1))
    np.testing.assert_array_equal(data.actions, buf["action"].numpy().reshape(-1).astype(np.int64))
    np.testing.assert_array_equal(data.observations, buf["obs"].numpy().reshape(len(data), -1))
    flags = buf["terminated"].numpy().reshape(-1)
    # episodes split exactly after the set flags (CartPole: no life losses, and a 300-step debug
    # run reaches no 500-step time limit), and each stream's last episode is cut
    ends = data.episode_ends() - 1
    expect = np.sort(np.unique(np.concatenate([np.flatnonzero(flags), np.arange(1, n_envs + 1) * size - 1])))
    np.testing.assert_array_equal(ends, expect)
    np.testing.assert_array_equal(data.terminations, flags)


def test_export_replay(run_dir, tmp_path):
    buf = replay_checkpoint(run_dir)["buffer"]
    data = export_replay(run_dir, tmp_path / "replay.npz", progress=False)
    back = load_trajectories(tmp_path / "replay.npz")
    check_replay(back, buf)
    assert back.metadata["source"] == "replay" and back.metadata["reconstructed"]
    assert back.final_observations is not None and back.truncations[-1]
    assert data.n_episodes == back.n_episodes > 3
    # one env stream: episode k was reset with the run's episode_seed(seed, 0, k); replaying it
    # gives the buffer's observations and the reconstructed flags and final observations
    env = make_env("CartPole-v1")
    for k, ep in enumerate(back.episodes()):
        obs, _ = env.reset(seed=episode_seed(0, 0, k))
        for t, a in enumerate(ep.actions):
            np.testing.assert_array_equal(obs, ep.observations[t])
            obs, _, term, trunc, _ = env.step(int(a))
            cut = t == len(ep) - 1 and not (term or trunc)  # the episode running at the checkpoint
            assert term == ep.terminations[t] and (trunc or cut) == ep.truncations[t]
        np.testing.assert_array_equal(obs, ep.final_observation)
    env.close()

    flags = export_replay(run_dir, progress=False, reconstruct="never")
    check_replay(flags, buf)
    assert not flags.metadata["reconstructed"] and flags.final_observations is None
    np.testing.assert_array_equal(flags.episode_starts, back.episode_starts)


def test_export_replay_fallbacks(run_dir, tmp_path):
    payload = replay_checkpoint(run_dir)  # the whole buffer in last.pt: a checkpoint export_replay reads too
    # a buffer that wrapped around: the beginnings are gone, only the flags can be used
    wrapped = tmp_path / "wrapped"
    save_atomic({**payload, "buffer": {**payload["buffer"], "steps": payload["buffer"]["steps"] + 10}},
                wrapped / "checkpoints" / "last.pt")
    data = export_replay(wrapped, progress=False)
    assert not data.metadata["reconstructed"] and "wrapped" in data.metadata["not_reconstructed_because"]
    check_replay(data, payload["buffer"])
    with pytest.raises(ValueError, match="cannot reconstruct the episodes: the buffer wrapped"):
        export_replay(wrapped, progress=False, reconstruct="always")
    # a buffer that does not match the env (here: a tampered reward) is not reconstructed
    buf = dict(payload["buffer"])
    buf["reward"] = buf["reward"].clone()
    buf["reward"][0, 5] += 1.0
    tampered = tmp_path / "tampered"
    save_atomic({**payload, "buffer": buf}, tampered / "checkpoints" / "last.pt")
    data = export_replay(tampered, progress=False)
    assert "step 5" in data.metadata["not_reconstructed_because"]
    with pytest.raises(ValueError, match="stream 0, step 5"):
        export_replay(tampered, progress=False, reconstruct="always")


def test_main(run_dir, tmp_path, capsys):
    out = tmp_path / "r.npz"
    assert main(["--env", "CartPole-v1", "--episodes", "2", "--seed", "3", "--out", str(out), "--no-progress"]) == 0
    assert "2 episodes" in capsys.readouterr().out and load_trajectories(out).n_episodes == 2
    assert main(["--from-replay", str(run_dir), "--out", str(tmp_path / "b.npz"), "--no-progress"]) == 0
    assert main(["--policy", str(run_dir), "--steps", "30", "--greedy", "--out", str(tmp_path / "c.npz"),
                 "--no-progress"]) == 0
    assert len(load_trajectories(tmp_path / "c.npz")) == 30
    capsys.readouterr()
    new = tmp_path / "new.npz"
    for argv, message in [
        (["--env", "CartPole-v1", "--out", str(new)], "give --episodes N or --steps N"),
        (["--episodes", "1", "--out", str(new)], "--env is required"),
        (["--from-replay", str(tmp_path / "none"), "--out", str(new)], "is not a run folder"),
        (["--from-replay", str(run_dir), "--episodes", "2", "--out", str(new)], "--from-replay takes no"),
        (["--env", "Nope-v0", "--episodes", "1", "--out", str(new)], "unknown environment id 'Nope-v0'"),
    ]:
        assert main(argv) == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith("rlts record: error: ") and message in err and "\n" not in err
    assert not new.exists()
    assert main(["--episodes", "x", "--out", str(new)]) == 2
    assert "config key `episodes` expects an integer, got 'x'" in capsys.readouterr().err
    assert main(["--env", "CartPole-v1", "--episodes", "1"]) == 2
    assert "give --out FILE.npz" in capsys.readouterr().err
    assert main(["--env", "CartPole-v1", "--episodes", "1", "--out", str(new), "--bogus", "1"]) == 2
    assert "unknown config key `bogus`" in capsys.readouterr().err and not new.exists()


def one_line_error(capsys) -> str:
    """The single stderr line of a failed `main`, without its prefix."""
    captured = capsys.readouterr()
    err = captured.err.strip()
    assert err.startswith("rlts record: error: ") and "\n" not in err and not captured.out, err
    return err[len("rlts record: error: "):]


def test_main_checks_out_before_recording(tmp_path, capsys, monkeypatch):
    """--out must be a new .npz file in a folder that exists or can be made: checked before the
    env is made, and nothing already there is changed."""
    import rlts.tasks.rl.record

    folder = tmp_path / "folder"
    folder.mkdir()
    existing = tmp_path / "old.npz"
    existing.write_bytes(b"earlier dataset")
    blocker = tmp_path / "blocker"
    blocker.write_bytes(b"a file")
    before = sorted(tmp_path.rglob("*"))

    def no_env(*args, **kwargs):
        raise AssertionError("recording started")

    monkeypatch.setattr(rlts.tasks.rl.record, "make_env", no_env)
    for out, message in [
        (folder, f"--out {folder} is a folder; give a file path ending in .npz"),
        (existing, f"{existing} already exists; choose another --out or remove it"),
        (tmp_path / "data.csv", "a dataset file must end in .npz"),
        (tmp_path / "data", "a dataset file must end in .npz"),
        (blocker / "sub" / "x.npz", f"cannot write {blocker / 'sub' / 'x.npz'}: {blocker} is a file, not a folder"),
    ]:
        assert main(["--env", "CartPole-v1", "--episodes", "2", "--out", str(out), "--no-progress"]) == 2
        assert message in one_line_error(capsys)
    assert main(["--from-replay", str(tmp_path / "none"), "--out", str(existing)]) == 2
    assert "already exists" in one_line_error(capsys)
    with pytest.raises(ValueError, match="already exists"):
        record("CartPole-v1", "random", episodes=1, out=existing, progress=False)
    with pytest.raises(ValueError, match="already exists"):
        export_replay(tmp_path / "none", existing, progress=False)
    assert sorted(tmp_path.rglob("*")) == before and existing.read_bytes() == b"earlier dataset"
    assert list(folder.iterdir()) == []
    monkeypatch.undo()
    # a missing parent folder is made
    out = tmp_path / "a" / "b" / "x.npz"
    assert main(["--env", "CartPole-v1", "--episodes", "1", "--out", str(out), "--no-progress"]) == 0
    assert load_trajectories(out).n_episodes == 1


def test_main_from_replay_refuses_recording_options(run_dir, tmp_path, capsys):
    """--from-replay names every option it would ignore (even one given its default value);
    --reconstruct without --from-replay is refused too; nothing is written."""
    out = tmp_path / "replay.npz"
    replay = ["--from-replay", str(run_dir), "--out", str(out), "--no-progress"]
    for extra, named in [
        (["--env", "Acrobot-v1"], "--env"),
        (["--env", "CartPole-v1", "--seed", "0", "--greedy"], "--env, --seed, --greedy"),
        (["--policy", "random", "--episodes", "2", "--steps", "5", "--device", "cpu"],
         "--policy, --episodes, --steps, --device"),
    ]:
        assert main([*replay, *extra]) == 2
        assert one_line_error(capsys).startswith(f"--from-replay takes no {named}:")
    assert main(["--env", "CartPole-v1", "--episodes", "1", "--reconstruct", "never", "--out", str(out)]) == 2
    assert one_line_error(capsys) == "--reconstruct applies only to --from-replay"
    assert not out.exists()
    assert main([*replay, "--reconstruct", "never"]) == 0
    assert not load_trajectories(out).metadata["reconstructed"]


def test_rlts_record_help_lists_the_options(tmp_path, capsys):
    """`rlts record --help` lists every key of RecordConfig with its docstring; the spellings of
    the usage line (--from-replay, --no-progress) run."""
    with pytest.raises(SystemExit) as exit_:
        rlts(["record", "--help"])
    assert exit_.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith("usage: rlts record --env ENV") and "rlts record --from-replay RUN_DIR" in out
    for key in ("env", "policy", "episodes", "steps", "seed", "greedy", "from_replay", "reconstruct", "out",
                "device", "progress"):
        assert f"\n  --{key} " in out, key
    assert "Seeds the episode resets" in out and "recovers the true episode flags" in out
    assert "--no-progress = --progress=false" in out
    path = tmp_path / "d.npz"
    assert rlts(["record", "--env", "CartPole-v1", "--steps", "10", "--seed", "1", "--out", str(path),
                 "--no-progress"]) == 0
    assert len(load_trajectories(path)) == 10
    assert rlts(["record", "--env", "CartPole-v1", "--steps", "10", "--out", str(path), "--no-progress"]) == 2
    assert "already exists" in capsys.readouterr().err and len(load_trajectories(path)) == 10


def test_main_behaviour_policy(tmp_path, capsys):
    """`--policy` with an `rlts behaviour` run folder or snapshot records its SAC policy."""
    from rlts.tasks.rl.behaviour import parse_behaviour_config, train

    run = tmp_path / "sac"
    train(parse_behaviour_config(["--env", "Pendulum-v1", "--steps", "120", "--learning_starts", "100",
                                  "--batch_size", "16", "--net_arch", "16", "--save_every", "120",
                                  "--eval_episodes", "1", "--out", str(run), "--progress", "false"]))
    out = tmp_path / "medium.npz"
    assert main(["--policy", str(run / "policies" / "step120.pt"), "--steps", "50", "--out", str(out),
                 "--no-progress"]) == 0
    data = load_trajectories(out)
    assert data.actions.shape == (50, 1) and data.actions.dtype == np.float32
    assert data.metadata["env"] == "Pendulum-v1" and "SAC policy" in data.metadata["policy"]
    capsys.readouterr()
    for argv, message in [
        (["--env", "CartPole-v1", "--policy", str(run)], "trained on 'Pendulum-v1', not 'CartPole-v1'"),
        (["--policy", str(run / "checkpoints" / "last.pt")], "not a policy snapshot of `rlts behaviour`"),
    ]:
        assert main([*argv, "--steps", "5", "--out", str(tmp_path / "x.npz")]) == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith("rlts record: error: ") and message in err and "\n" not in err
