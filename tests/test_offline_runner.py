"""`rlts offline`: the offline RL runner end to end on a tiny recorded CartPole dataset (debug
overlay: a smoke test of the pipeline, not of learning), resume, the data sampling and bad input."""
import json
import os

import numpy as np
import pytest

from rlts.data.trajectories import Trajectories, load_trajectories, returns_to_go, save_trajectories
from rlts.tasks.cli import main
from rlts.tasks.supervised.offline import (DecisionSequences, OfflineConfig, check_config, collate_decision, episode_spans,
                           parse_offline_config, run_offline, split_episodes, train_config)
from rlts.tasks.rl.record import record

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    path = tmp_path_factory.mktemp("data") / "d.npz"
    record("CartPole-v1", "random", episodes=20, seed=0, out=path, progress=False)
    return path


def _run(argv):
    return run_offline(parse_offline_config([*argv, "--device", "cpu"]), log=lambda *_: None)


def test_end_to_end_and_rerun_skips(dataset, tmp_path):
    out = tmp_path / "out"
    argv = ["--dataset", str(dataset), "--config", "debug", "--models", "aaren,transformer", "--out", str(out)]
    state = _run(argv)
    data = load_trajectories(dataset)
    rets = data.episode_returns()
    assert set(state) >= {"config", "dataset", "env", "settings", "reference", "results"}
    assert state["env"]["id"] == "CartPole-v1" and state["env"]["n_actions"] == 2
    assert state["dataset"]["episodes"] == 20 and state["dataset"]["train_episodes"] == 18
    assert state["settings"]["target_return"] == pytest.approx(rets.max())   # default: the best return
    assert state["settings"]["return_scale"] == pytest.approx(np.abs(rets).max())
    # a random-policy dataset is its own random reference
    assert state["reference"]["random"] == pytest.approx(rets.mean()) and "dataset" in state["reference"]["random_source"]
    for m in ("aaren", "transformer"):
        r = state["results"][m]
        assert len(r["returns"]) == 2 and len(r["lengths"]) == 2 and r["return_mean"] == pytest.approx(np.mean(r["returns"]))
        want = 100 * (r["return_mean"] - rets.mean()) / (rets.max() - rets.mean())
        assert r["normalised_score"] == pytest.approx(want)
        assert r["params"] > 0 and r["train_time_s"] >= 0 and r["act_ms_per_step"] > 0 and r["epochs"] == 1
        assert (out / m / "checkpoints" / "last.pt").exists() and any((out / m / "tb").iterdir())
    # aaren: a fixed state (m, u, w of one layer: 3 * (B=1, heads, ...)); transformer: a KV cache
    assert 0 < state["results"]["aaren"]["state_bytes"] < state["results"]["transformer"]["state_bytes"]
    assert state["results"]["aaren"]["train_sequences"] == 18             # one per training episode
    for f in ("results.json", "results.md", "results.csv", "returns.png"):
        assert (out / f).exists(), f
    assert "| transformer |" in (out / "results.md").read_text()
    assert json.loads((out / "results.json").read_text())["results"] == state["results"]
    # rerun: finished models are skipped, not retrained
    mtime = (out / "aaren" / "checkpoints" / "last.pt").stat().st_mtime_ns
    again = _run(argv)
    assert again["results"] == state["results"]
    assert (out / "aaren" / "checkpoints" / "last.pt").stat().st_mtime_ns == mtime
    # a changed setup is refused in the same folder
    with pytest.raises(ValueError, match="different setup"):
        _run([*argv, "--d_model", "8"])


def test_non_random_dataset_measures_a_random_reference(dataset, tmp_path):
    data = load_trajectories(dataset)
    data.metadata["policy"] = "some agent"
    path = tmp_path / "agent.npz"
    save_trajectories(data, path)
    state = _run(["--dataset", str(path), "--config", "debug", "--models", "gru", "--out", str(tmp_path / "o"),
                  "--target_return", "100", "--plots", "false"])
    ref = state["reference"]
    assert len(ref["random_returns"]) == 2 and ref["random"] == pytest.approx(np.mean(ref["random_returns"]))
    assert state["settings"]["target_return"] == 100.0 and list(state["results"]) == ["gru"]


def test_continuous_actions_end_to_end(tmp_path):
    path = tmp_path / "pendulum.npz"
    record("Pendulum-v1", "random", episodes=4, seed=0, out=path, progress=False)
    data = load_trajectories(path)
    assert not data.discrete and data.actions.shape == (800, 1) and np.abs(data.actions).max() <= 1.0
    state = _run(["--dataset", str(path), "--config", "debug", "--models", "aaren,transformer",
                  "--out", str(tmp_path / "o"), "--eval_episodes", "1", "--plots", "false"])
    assert state["env"]["act_dim"] == 1 and "n_actions" not in state["env"]
    for m in ("aaren", "transformer"):
        r = state["results"][m]
        assert r["lengths"] == [200] and np.isfinite(r["return_mean"]) and r["return_mean"] < 0  # Pendulum costs


def test_recurrent_backbones_get_their_own_batches_and_epochs():
    cfg = parse_offline_config(["--dataset", "x.npz", "--recurrent_batch_size", "5", "--train.epochs", "7"])
    assert (train_config(cfg, "aaren").batch_size, train_config(cfg, "aaren").epochs) == (5, 100)
    assert (train_config(cfg, "transformer").batch_size, train_config(cfg, "transformer").epochs) == (64, 7)
    cfg.recurrent_batch_size = cfg.recurrent_epochs = None
    assert (train_config(cfg, "gru").batch_size, train_config(cfg, "gru").epochs) == (64, 7)
    windowed = parse_offline_config(["--dataset", "x.npz", "--recurrent_window", "9", "--train.epochs", "7"])
    assert (train_config(windowed, "aaren").batch_size, train_config(windowed, "aaren").epochs) == (64, 7)
    with pytest.raises(ValueError, match="recurrent_window must be at least 1"):
        check_config(parse_offline_config(["--dataset", "x.npz", "--recurrent_window", "0"]))


def test_recurrent_window_end_to_end(dataset, tmp_path):
    """Aaren trained on windows still acts from the episode start with its fixed-size state."""
    state = _run(["--dataset", str(dataset), "--config", "debug", "--models", "aaren", "--recurrent_window", "4",
                  "--out", str(tmp_path / "w"), "--plots", "false"])
    r = state["results"]["aaren"]
    data = load_trajectories(dataset)
    n_train = sum((n + 1) // 2 for n in data.episode_lengths()[np.sort(split_episodes(20, 0.1, 0)[0])])
    assert r["train_sequences"] == n_train  # windows every window_stride (debug: 2) steps, not 18 episodes
    assert r["state_bytes_after_steps"] == max(r["lengths"]) and np.isfinite(r["return_mean"])


def test_aaren_decay_option(dataset):
    from rlts.tasks.supervised.offline import build_model

    data = load_trajectories(dataset)
    for flag in (False, True):
        cfg = parse_offline_config(["--dataset", str(dataset), "--aaren_decay", str(flag).lower()])
        m = build_model("aaren", cfg, data, {"n_actions": 2}, 500.0, 500)
        assert m.backbone.layers[0].attn.decay is flag
    dt = build_model("transformer", cfg, data, {"n_actions": 2}, 500.0, 500)  # the option is Aaren's only
    assert type(dt.backbone.layers[0]).__name__ == "CausalTransformerBlock"


def test_training_sequences(dataset):
    data = load_trajectories(dataset)
    rtg = returns_to_go(data.rewards, 1.0, data.episode_starts)
    eps = np.arange(data.n_episodes)
    cfg = OfflineConfig(context=5, window_stride=2, max_episode_len=7)
    lengths = data.episode_lengths()
    # recurrent: one sequence per episode, from its start, cut at max_episode_len
    rec = episode_spans(data, eps, "aaren", cfg)
    assert [a for a, _ in rec] == list(data.episode_starts) and [n for _, n in rec] == list(np.minimum(lengths, 7))
    # transformer: windows of `context` steps every `window_stride` steps, never across episodes
    win = episode_spans(data, eps, "transformer", cfg)
    assert len(win) == sum((n + 1) // 2 for n in lengths) and all(1 <= n <= 5 for _, n in win)
    ends = data.episode_ends()
    assert all(a + n <= ends[np.searchsorted(data.episode_starts, a, side="right") - 1] for a, n in win)
    batch = collate_decision([DecisionSequences(data, rtg, win)[i] for i in (0, 1, len(win) - 1)])
    assert batch["observations"].shape[:2] == batch["mask"].shape == batch["timesteps"].shape
    a = int(data.episode_starts[0])
    assert batch["timesteps"][1, :3].tolist() == [2, 3, 4]                  # index within the episode
    assert batch["returns_to_go"][0, 0].item() == pytest.approx(data.episode_returns()[0])
    assert batch["mask"][2].sum() == win[-1][1] and not batch["mask"][2, -1]  # the last window is short
    # recurrent_window: the recurrent backbones take windows as the transformer does, of their own length
    cfg.recurrent_window = 3
    rwin = episode_spans(data, eps, "aaren", cfg)
    assert [a for a, _ in rwin] == [a for a, _ in win] and all(1 <= n <= 3 for _, n in rwin)
    assert [n for _, n in rwin] == [min(3, n) for _, n in win]
    assert episode_spans(data, eps, "transformer", cfg) == win
    assert batch["actions"][0, :5].tolist() == data.actions[a:a + 5].tolist()
    tr, va = split_episodes(20, 0.1, 0)
    assert len(va) == 2 and sorted([*tr, *va]) == list(range(20))
    assert len(split_episodes(20, 0.0, 0)[1]) == 0 and len(split_episodes(1, 0.5, 0)[1]) == 0


def _cli_error(capsys, argv):
    assert main(["offline", *argv]) == 2
    err = capsys.readouterr().err
    assert err.startswith("rlts offline: error:") and err.count("\n") == 1, err
    return err


def test_bad_input_is_one_line_and_keeps_out(dataset, tmp_path, capsys):
    out = tmp_path / "out"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    base = ["--config", "debug", "--out", str(out), "--device", "cpu"]
    assert "--dataset" in _cli_error(capsys, base)
    assert "no_such.npz" in _cli_error(capsys, ["--dataset", str(tmp_path / "no_such.npz"), *base])
    assert "'lstm'" in _cli_error(capsys, ["--dataset", str(dataset), "--models", "lstm", *base])
    assert "val_fraction" in _cli_error(capsys, ["--dataset", str(dataset), "--val_fraction", "1.5", *base])
    data = load_trajectories(dataset)
    ep = lambda **kw: {"observations": data.observations[:3], "actions": data.actions[:3],  # noqa: E731
                       "rewards": data.rewards[:3], "terminations": np.array([0, 0, 1], bool),
                       "truncations": np.zeros(3, bool), **kw}
    no_env = tmp_path / "no_env.npz"
    save_trajectories(Trajectories.from_episodes([ep()], {"policy": "random"}), no_env)
    assert "--env" in _cli_error(capsys, ["--dataset", str(no_env), *base])
    cont = tmp_path / "cont.npz"
    save_trajectories(Trajectories.from_episodes([ep(actions=np.zeros((3, 2), np.float32))], {"env": "CartPole-v1"}),
                      cont)
    assert "actions are continuous, but 'CartPole-v1'" in _cli_error(capsys, ["--dataset", str(cont), *base])
    pend = tmp_path / "pend.npz"  # Pendulum's (3,) observations with discrete actions
    save_trajectories(Trajectories.from_episodes([ep(observations=np.zeros((3, 3), np.float32))], {"env": "Pendulum-v1"}),
                      pend)
    assert "actions are discrete, but 'Pendulum-v1'" in _cli_error(capsys, ["--dataset", str(pend), *base])
    wide = tmp_path / "wide.npz"
    save_trajectories(Trajectories.from_episodes(
        [ep(observations=np.zeros((3, 3), np.float32), actions=np.zeros((3, 2), np.float32))], {"env": "Pendulum-v1"}),
        wide)
    assert "width 2" in _cli_error(capsys, ["--dataset", str(wide), *base])
    big = tmp_path / "big.npz"
    save_trajectories(Trajectories.from_episodes(
        [ep(observations=np.zeros((3, 3), np.float32), actions=np.full((3, 1), 2.0, np.float32))],
        {"env": "Pendulum-v1"}), big)
    assert "[-1, 1]" in _cli_error(capsys, ["--dataset", str(big), *base])
    assert "do not match" in _cli_error(capsys, ["--dataset", str(dataset), "--env", "Acrobot-v1", *base])
    assert sorted(os.listdir(out)) == ["notes.txt"]


def test_another_env_with_the_same_spaces_is_named(dataset, tmp_path):
    log = []
    argv = ["--dataset", str(dataset), "--config", "debug", "--models", "gru", "--env", "CartPole-v0",
            "--eval_episodes", "1", "--out", str(tmp_path / "out"), "--device", "cpu"]
    state = run_offline(parse_offline_config(argv), log=log.append)
    assert state["env"]["id"] == "CartPole-v0"
    assert any(line.startswith("[note] evaluating in CartPole-v0, but d.npz was recorded in CartPole-v1")
               for line in log)
    log.clear()
    same = [a if a != "CartPole-v0" else "CartPole-v1" for a in argv]
    run_offline(parse_offline_config([*same[:-4], "--out", str(tmp_path / "same"), "--device", "cpu"]), log=log.append)
    assert not any(line.startswith("[note]") for line in log)


def test_seeds_runs_each_seed_and_resumes_after_a_kill(dataset, tmp_path, monkeypatch):
    """--seeds 2: two runs of the model on one split and one set of evaluation episodes; the
    first is the single-seed run, the second differs only in the model's seed; a run killed
    after its first seed keeps it and trains only the second."""
    base = ["--dataset", str(dataset), "--config", "debug", "--models", "aaren"]
    single = _run([*base, "--out", str(tmp_path / "one")])["results"]["aaren"]
    import rlts.tasks.supervised.offline as offline

    calls = []
    real = offline.Trainer

    class Killed(real):
        def fit(self, *a, **k):
            calls.append(self.cfg.seed)
            if len(calls) == 2:
                raise KeyboardInterrupt
            return super().fit(*a, **k)

    monkeypatch.setattr(offline, "Trainer", Killed)
    out = tmp_path / "two"
    with pytest.raises(KeyboardInterrupt):
        _run([*base, "--seeds", "2", "--out", str(out)])
    partial = json.loads((out / "results.json").read_text())["partial"]["aaren"]
    assert [r["seed"] for r in partial] == [0]
    monkeypatch.setattr(offline, "Trainer", real)
    state = _run([*base, "--seeds", "2", "--out", str(out)])
    entry = state["results"]["aaren"]
    assert [r["seed"] for r in entry["runs"]] == [0, 1] and state["partial"] == {}
    first = {k: v for k, v in entry["runs"][0].items() if k not in ("seed", "train_time_s", "act_ms_per_step")}
    assert first == {k: v for k, v in single.items() if k not in ("train_time_s", "act_ms_per_step")}
    returns = [r["return_mean"] for r in entry["runs"]]
    assert entry["return_mean"] == pytest.approx(np.mean(returns))
    assert entry["return_mean_std"] == pytest.approx(np.std(returns, ddof=1))
    assert len(entry["returns"]) == 2 * len(single["returns"])
    assert (out / "aaren" / "seed1" / "checkpoints" / "last.pt").exists()
    header = (out / "results.md").read_text().splitlines()[0]
    assert "| return_mean_std |" in header and "| seeds |" in header
