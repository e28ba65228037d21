"""The offline-dataset format (rlts.data.trajectories): round trips, validation, returns to go."""
import json
import zipfile

import numpy as np
import pytest

from rlts.data.trajectories import (FORMAT, Trajectories, load_trajectories, returns_to_go,
                                    save_trajectories)

LENGTHS = (5, 1, 7)


def make(obs_shape=(4,), obs_dtype=np.float32, act_dim=None, lengths=LENGTHS, finals=True, life=True, seed=0):
    """Episodes of the given lengths: the first terminates, the others are truncated."""
    rng = np.random.default_rng(seed)
    eps = []
    for k, T in enumerate(lengths):
        if obs_dtype == np.uint8:
            obs = rng.integers(0, 256, (T + 1, *obs_shape), dtype=np.uint8)
        else:
            obs = rng.normal(size=(T + 1, *obs_shape)).astype(obs_dtype)
        act = rng.integers(0, 3, T) if act_dim is None else rng.normal(size=(T, act_dim)).astype(np.float32)
        term, trunc = np.zeros(T, bool), np.zeros(T, bool)
        (term if k == 0 else trunc)[-1] = True
        ep = {"observations": obs[:-1], "actions": act, "rewards": rng.normal(size=T).astype(np.float32),
              "terminations": term, "truncations": trunc}
        if finals:
            ep["final_observation"] = obs[-1]
        if life:
            ep["life_losses"] = rng.random(T) < 0.2
        eps.append(ep)
    return Trajectories.from_episodes(eps, {"env": "test", "policy": "noise"}), eps


def assert_same(a: Trajectories, b: Trajectories):
    for name, arr in a.arrays().items():
        other = getattr(b, name)
        assert other is not None and other.dtype == arr.dtype and other.shape == arr.shape, name
        np.testing.assert_array_equal(other, arr, err_msg=name)


@pytest.mark.parametrize("obs_shape,obs_dtype,act_dim", [
    ((4,), np.float32, None),            # vector obs, discrete actions
    ((8, 8, 3), np.uint8, None),         # image obs stay uint8
    ((3,), np.float32, 2),               # continuous actions
])
@pytest.mark.parametrize("compress", [True, False])
def test_round_trip(tmp_path, obs_shape, obs_dtype, act_dim, compress):
    data, _ = make(obs_shape, obs_dtype, act_dim)
    path = save_trajectories(data, tmp_path / "d.npz", compress=compress)
    assert path == tmp_path / "d.npz" and [p.name for p in tmp_path.iterdir()] == ["d.npz"]  # no temp left
    back = load_trajectories(path)
    assert_same(data, back)
    assert back.observations.dtype == obs_dtype and back.obs_shape == obs_shape
    assert back.discrete == (act_dim is None)
    assert back.actions.dtype == (np.int64 if act_dim is None else np.float32)
    meta = back.metadata
    assert meta["format"] == FORMAT and meta["env"] == "test" and meta["n_transitions"] == sum(LENGTHS)
    assert meta["n_episodes"] == 3 and meta["obs_dtype"] == np.dtype(obs_dtype).name
    assert "rlts_version" in meta and "created" in meta


def test_optional_fields_absent(tmp_path):
    data, _ = make(finals=False, life=False)
    assert data.final_observations is None and data.life_losses is None
    back = load_trajectories(save_trajectories(data, tmp_path / "d.npz"))
    assert back.final_observations is None and back.life_losses is None
    assert back.episode(0).final_observation is None


def test_episodes_boundaries():
    data, eps = make()
    assert len(data) == sum(LENGTHS) and data.n_episodes == 3
    np.testing.assert_array_equal(data.episode_starts, [0, 5, 6])
    np.testing.assert_array_equal(data.episode_lengths(), LENGTHS)
    np.testing.assert_array_equal(data.episode_index(), [0] * 5 + [1] + [2] * 7)
    got = list(data.episodes())
    assert [len(e) for e in got] == list(LENGTHS) and [e.index for e in got] == [0, 1, 2]
    for e, ref in zip(got, eps):
        for key in ("observations", "actions", "rewards", "terminations", "truncations", "life_losses"):
            np.testing.assert_array_equal(getattr(e, key), ref[key])
        np.testing.assert_array_equal(e.final_observation, ref["final_observation"])
        assert np.shares_memory(e.observations, data.observations)  # views, not copies
    assert got[0].terminated and not got[1].terminated
    np.testing.assert_allclose(data.episode_returns(), [ref["rewards"].sum() for ref in eps], rtol=1e-6)
    assert data.episode(-1).index == 2
    with pytest.raises(IndexError):
        data.episode(3)


def naive_rtg(rewards, gamma, starts):
    out = np.zeros(len(rewards))
    ends = list(starts[1:]) + [len(rewards)]
    for a, b in zip(starts, ends):
        for t in range(a, b):
            out[t] = sum(gamma ** (k - t) * float(rewards[k]) for k in range(t, b))
    return out


@pytest.mark.parametrize("gamma", [1.0, 0.9, 0.0])
def test_returns_to_go(gamma):
    rng = np.random.default_rng(1)
    rewards = rng.normal(size=40).astype(np.float32)
    starts = np.array([0, 3, 4, 20, 39])
    np.testing.assert_allclose(returns_to_go(rewards, gamma, starts), naive_rtg(rewards, gamma, starts), rtol=1e-10)
    np.testing.assert_allclose(returns_to_go(rewards, gamma), naive_rtg(rewards, gamma, [0]), rtol=1e-10)
    data, _ = make()
    np.testing.assert_allclose(data.returns_to_go(gamma), naive_rtg(data.rewards, gamma, data.episode_starts),
                               rtol=1e-10)
    assert returns_to_go(np.zeros(0, np.float32)).shape == (0,)


def corrupt(data, **changes):
    return Trajectories(**{**{k: getattr(data, k) for k in (
        "observations", "actions", "rewards", "terminations", "truncations", "episode_starts",
        "final_observations", "life_losses", "metadata")}, **changes})


@pytest.mark.parametrize("change,message", [
    (lambda d: {"rewards": np.where(np.arange(len(d)) == 4, np.nan, d.rewards).astype(np.float32)},
     "'rewards' has a non-finite value .* at step 4"),
    (lambda d: {"rewards": d.rewards.astype(np.float64)}, "'rewards' must be \\(N,\\) float32"),
    (lambda d: {"actions": d.actions[:-1]}, "'actions' has 12 steps but 'rewards' has 13"),
    (lambda d: {"observations": d.observations[:-2]}, "'observations' has 11 steps"),
    (lambda d: {"actions": d.actions.astype(np.int32)}, "'actions' must be \\(N,\\) int64"),
    (lambda d: {"terminations": d.terminations.astype(np.uint8)}, "'terminations' must be \\(N,\\) bool"),
    (lambda d: {"episode_starts": np.array([1, 5, 6])}, "must begin with 0"),
    (lambda d: {"episode_starts": np.array([0, 6, 5])}, "strictly increasing"),
    (lambda d: {"episode_starts": np.array([0, 5])}, "step 5 has .terminations. or .truncations. set but is not the last"),
    (lambda d: {"episode_starts": np.array([0, 2, 5, 6])}, "episode 0 ends at step 1 with neither"),
    (lambda d: {"episode_starts": np.array([0, 6])}, "step 4 has 'terminations' or 'truncations' set"),
    (lambda d: {"final_observations": d.final_observations[:2]}, "'final_observations' is"),
    (lambda d: {"observations": d.observations.astype(object)}, "'observations' has dtype object"),
    (lambda d: {"life_losses": [False] * len(d)}, "'life_losses' is list"),
])
def test_validate_errors(tmp_path, change, message):
    data, _ = make()
    bad = corrupt(data, **change(data))
    with pytest.raises(ValueError, match=message):
        bad.validate()
    with pytest.raises(ValueError, match=str(tmp_path / "bad.npz")):  # the file is named
        save_trajectories(bad, tmp_path / "bad.npz")
    assert not list(tmp_path.iterdir())  # nothing written


def write_npz(path, **arrays):
    with open(path, "wb") as f:
        np.savez(f, **arrays)


def test_load_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="no trajectories file"):
        load_trajectories(tmp_path / "missing.npz")
    (tmp_path / "text.npz").write_text("not a zip")
    with pytest.raises(ValueError, match="text.npz is not a trajectories file .*not a zip archive") as e:
        load_trajectories(tmp_path / "text.npz")
    assert "pickle" not in str(e.value)  # numpy's own message suggests allow_pickle=True
    np.save(tmp_path / "one.npy", np.zeros(3))
    with pytest.raises(ValueError, match="single array"):
        load_trajectories(tmp_path / "one.npy")

    data, _ = make()
    arrays = {**data.arrays(), "metadata": np.array(json.dumps({"format": FORMAT}))}
    write_npz(tmp_path / "no_rewards.npz", **{k: v for k, v in arrays.items() if k != "rewards"})
    with pytest.raises(ValueError, match="no_rewards.npz lacks the field\\(s\\) \\['rewards'\\]"):
        load_trajectories(tmp_path / "no_rewards.npz")
    write_npz(tmp_path / "short.npz", **{**arrays, "terminations": data.terminations[:-1]})
    with pytest.raises(ValueError, match="short.npz: field 'terminations' has 12 steps"):
        load_trajectories(tmp_path / "short.npz")
    nan = data.rewards.copy()
    nan[2] = np.nan
    write_npz(tmp_path / "nan.npz", **{**arrays, "rewards": nan})
    with pytest.raises(ValueError, match="nan.npz: field 'rewards' has a non-finite value"):
        load_trajectories(tmp_path / "nan.npz")
    write_npz(tmp_path / "fmt.npz", **{**arrays, "metadata": np.array(json.dumps({"format": "other"}))})
    with pytest.raises(ValueError, match="fmt.npz: metadata format is 'other'"):
        load_trajectories(tmp_path / "fmt.npz")
    # an object array would need unpickling: refused, not executed
    write_npz(tmp_path / "pickle.npz", **{**arrays, "actions": np.array([{"a": 1}] * len(data), dtype=object)})
    with pytest.raises(ValueError, match="pickle.npz: field 'actions' cannot be read without unpickling"):
        load_trajectories(tmp_path / "pickle.npz")
    assert zipfile.is_zipfile(tmp_path / "pickle.npz")


def test_from_episodes_errors():
    with pytest.raises(ValueError, match="no episodes"):
        Trajectories.from_episodes([])
    _, eps = make()
    with pytest.raises(ValueError, match="episode 1 lacks \\['rewards'\\]"):
        Trajectories.from_episodes([eps[0], {k: v for k, v in eps[1].items() if k != "rewards"}])
    eps[2] = {**eps[2], "truncations": np.zeros(7, bool)}
    with pytest.raises(ValueError, match="episode 2 ends at step 12 with neither"):
        Trajectories.from_episodes(eps)
