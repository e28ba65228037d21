"""rlts.world_models.replay: contiguous windows, ring wrap-around, DFS probabilities, state dicts,
and checkpoints as append-only chunk files that survive a kill at any point."""
import io

import numpy as np
import pytest
import torch

from rlts.checkpoint import load, save_atomic
from rlts.world_models.replay import ReplayBuffer, ReplayFiles, chunk_name, replay_nbytes


def _filled(capacity=20, num_envs=2, steps=13, obs_shape=(3,), dtype=torch.float32):
    """A buffer where env e's step t has obs.flatten() = [t, e, 0...], action t,
    reward t + e / 10 and terminated when t % 5 == 4."""
    buf = ReplayBuffer(capacity, num_envs, obs_shape, dtype)
    for t in range(steps):
        obs = torch.zeros((num_envs, *obs_shape), dtype=dtype)
        flat = obs.view(num_envs, -1)  # (N, prod(obs_shape))
        flat[:, 0] = t
        flat[:, 1] = torch.arange(num_envs)
        buf.add(obs.numpy(), np.full(num_envs, t), [t + e / 10 for e in range(num_envs)],
                np.full(num_envs, t % 5 == 4))
    return buf


def _check_windows(batch, length):
    """Every window is contiguous, of one env, and matches what was added."""
    obs = batch["obs"]
    t0 = obs[:, 0, 0].long()  # (B,)
    env = obs[:, 0, 1]
    steps = t0[:, None] + torch.arange(length)  # (B, L)
    assert torch.equal(obs[..., 0].long(), steps)
    assert torch.equal(obs[..., 1], env[:, None].expand(-1, length))
    assert torch.equal(batch["action"], steps)
    assert torch.allclose(batch["reward"], steps.float() + env[:, None] / 10)
    assert torch.equal(batch["terminated"], (steps % 5 == 4).float())
    return t0


def test_add_sample_shapes_and_dtypes():
    buf = _filled(obs_shape=(4, 4, 3), dtype=torch.uint8)
    assert len(buf) == 20
    for mode in ("uniform", "world_model", "imagination"):
        b = buf.sample(3, 4, mode)
        assert b["obs"].shape == (3, 4, 4, 4, 3) and b["obs"].dtype == torch.uint8
        assert b["action"].shape == (3, 4) and b["action"].dtype == torch.long
        assert b["reward"].dtype == torch.float32 and b["terminated"].dtype == torch.float32


def test_windows_contiguous_and_cross_episode_boundaries():
    buf = _filled(capacity=40, steps=13)
    b = buf.sample(20, 6, "uniform")  # 2 envs x 8 starts = 16 < 20: with replacement
    _check_windows(b, 6)
    # all starts at once: every window includes a termination flag (steps 4, 9) mid-window
    b = buf.sample(16, 6, "world_model")
    t0 = _check_windows(b, 6)
    assert sorted(t0.tolist()) == sorted(list(range(8)) * 2)
    assert (b["terminated"].sum(1) >= 1).all()


def test_ring_wraparound_and_counter_reset():
    buf = _filled(capacity=10, num_envs=2, steps=12)  # ring of 5: keeps steps 7..11
    assert len(buf) == 10 and buf.size == 5
    b = buf.sample(8, 2, "world_model")  # 2 envs x 4 starts: all of them
    t0 = _check_windows(b, 2)
    assert sorted(t0.tolist()) == [7, 7, 8, 8, 9, 9, 10, 10]
    with pytest.raises(ValueError, match="exceeds the 5 steps"):
        buf.sample(1, 6)
    assert buf.n_wm.sum() == 8
    slot = buf.pos  # the oldest step (7) lives here and is overwritten next
    assert (buf.n_wm[:, slot] == 1).all()
    buf.add(np.zeros((2, 3), np.float32), [0, 0], [0, 0], [0, 0])
    assert (buf.n_wm[:, slot] == 0).all() and (buf.n_im[:, slot] == 0).all()
    assert buf.n_wm.sum() == 6


def test_counters_updated_per_draw_and_no_duplicates():
    buf = _filled(capacity=20, num_envs=1, steps=20)  # 17 starts of length 4
    b = buf.sample(17, 4, "world_model")
    t0 = _check_windows(b, 4)
    assert sorted(t0.tolist()) == list(range(17))  # without replacement: each start once
    assert torch.equal(buf.n_wm[0, :17], torch.ones(17, dtype=torch.int64))
    b = buf.sample(5, 4, "world_model")
    assert len(set(_check_windows(b, 4).tolist())) == 5
    assert buf.n_wm.sum() == 22 and buf.n_im.sum() == 0
    b = buf.sample(10, 4, "imagination")
    assert len(set(_check_windows(b, 4).tolist())) == 10
    assert buf.n_im.sum() == 10 and buf.n_wm.sum() == 22
    buf.sample(50, 4, "uniform")  # uniform touches no counter
    assert buf.n_im.sum() == 10 and buf.n_wm.sum() == 22
    with pytest.raises(ValueError, match="without replacement: batch 18 > 17 valid starts"):
        buf.sample(18, 4, "world_model")


def _empirical(buf, mode, n_wm, n_im, draws):
    """Start frequencies of `draws` batch-1 draws with the counters reset to n_wm, n_im."""
    counts = torch.zeros(n_wm.numel())
    for _ in range(draws):
        buf.n_wm[0] = n_wm
        buf.n_im[0] = n_im
        t0 = int(buf.sample(1, 1, mode)["action"][0, 0])
        counts[t0] += 1
    return counts


def _chi2_ok(counts, p):
    """Chi-square goodness of fit below the 0.999 quantile (df = 7: 24.32)."""
    expected = counts.sum() * p
    return float(((counts - expected) ** 2 / expected).sum()) < 24.32


def test_world_model_dfs_probabilities():
    buf = _filled(capacity=8, num_envs=1, steps=8)
    n_wm = torch.tensor([0, 1, 3, 5, 8, 12, 20, 30])
    counts = _empirical(buf, "world_model", n_wm, torch.zeros(8, dtype=torch.int64), 4000)
    p = torch.exp(-n_wm / 10.0)
    p = p / p.sum()
    assert _chi2_ok(counts, p)
    # the uniform law is clearly rejected
    assert not _chi2_ok(counts, torch.full((8,), 1 / 8))


def test_imagination_probabilities():
    buf = _filled(capacity=8, num_envs=1, steps=8)
    n_wm = torch.tensor([0, 2, 4, 6, 8, 10, 30, 5])
    n_im = torch.tensor([0, 0, 64 * 4, 64 * 10, 64 * 20, 64 * 40, 64 * 60, 64])
    counts = _empirical(buf, "imagination", n_wm, n_im, 4000)
    score = torch.clamp(n_wm - n_im / 64.0, max=0.0)  # [0, 0, 0, -4, -12, -30, -30, 0]
    p = torch.softmax(score / 10.0, dim=0)
    assert _chi2_ok(counts, p)
    assert not _chi2_ok(counts, torch.full((8,), 1 / 8))


def test_state_dict_round_trip_reproduces_sampling():
    buf = _filled(capacity=10, num_envs=2, steps=12)  # wrapped: pos != 0
    buf.sample(4, 2, "world_model")
    buf.sample(6, 2, "imagination")
    f = io.BytesIO()
    torch.save(buf.state_dict(), f)
    f.seek(0)
    state = torch.load(f, weights_only=True)
    other = ReplayBuffer(10, 2, (3,), torch.float32)
    other.load_state_dict(state)
    assert len(other) == len(buf) and other.steps == buf.steps
    for mode in ("world_model", "imagination", "uniform", "world_model"):
        torch.manual_seed(3)
        a = buf.sample(3, 3, mode)
        torch.manual_seed(3)
        b = other.sample(3, 3, mode)
        for k in a:
            assert torch.equal(a[k], b[k]), (mode, k)
    # both keep adding identically
    for x in (buf, other):
        x.add(np.ones((2, 3), np.float32), [1, 1], [1, 1], [0, 1])
    torch.manual_seed(4)
    a = buf.sample(4, 3, "world_model")
    torch.manual_seed(4)
    b = other.sample(4, 3, "world_model")
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_state_dict_stores_only_filled_part():
    buf = _filled(capacity=100, num_envs=2, steps=7, obs_shape=(8, 8, 3), dtype=torch.uint8)
    state = buf.state_dict()
    assert state["obs"].shape == (2, 7, 8, 8, 3) and state["obs"].dtype == torch.uint8
    assert all(isinstance(v, (torch.Tensor, int, float, list)) for v in state.values())


def test_load_state_dict_mismatch_errors():
    state = _filled().state_dict()
    with pytest.raises(ValueError, match="obs_shape"):
        ReplayBuffer(20, 2, (4,), torch.float32).load_state_dict(state)
    with pytest.raises(ValueError, match="num_envs"):
        ReplayBuffer(20, 4, (3,), torch.float32).load_state_dict(state)
    with pytest.raises(ValueError, match="'obs' is .* expected"):
        ReplayBuffer(20, 2, (3,), torch.uint8).load_state_dict(state)
    del state["n_im"]
    with pytest.raises(ValueError, match="lacks"):
        ReplayBuffer(20, 2, (3,), torch.float32).load_state_dict(state)


def test_add_and_sample_errors():
    buf = ReplayBuffer(20, 2, (4, 4, 3), torch.uint8)
    with pytest.raises(ValueError, match=r"obs has shape \(4, 4, 3\), expected \(2, 4, 4, 3\)"):
        buf.add(np.zeros((4, 4, 3), np.uint8), [0, 0], [0, 0], [0, 0])
    with pytest.raises(ValueError, match="obs is torch.float32 but the buffer stores"):
        buf.add(np.zeros((2, 4, 4, 3), np.float32), [0, 0], [0, 0], [0, 0])
    with pytest.raises(ValueError, match="action has shape"):
        buf.add(np.zeros((2, 4, 4, 3), np.uint8), [0], [0, 0], [0, 0])
    with pytest.raises(ValueError, match="exceeds the 0 steps"):
        buf.sample(1, 1)
    buf.add(np.zeros((2, 4, 4, 3), np.uint8), [0, 0], [0, 0], [0, 0])
    with pytest.raises(ValueError, match="unknown sampling mode 'dfs'"):
        buf.sample(1, 1, "dfs")
    with pytest.raises(ValueError, match="capacity >= num_envs"):
        ReplayBuffer(1, 2, (3,), torch.float32)


def test_memory_estimate():
    assert replay_nbytes(100_000, (64, 64, 3), torch.uint8) == 100_000 * (64 * 64 * 3 + 25)
    buf = ReplayBuffer(1000, 4, (64, 64, 3), torch.uint8)
    assert buf.nbytes == replay_nbytes(1000, (64, 64, 3), torch.uint8)



def _add(buf, t):
    """Add step t of the `_filled` pattern (obs (3,) per env)."""
    n = buf.num_envs
    obs = np.zeros((n, 3), np.float32)
    obs[:, 0], obs[:, 1] = t, np.arange(n)
    buf.add(obs, np.full(n, t), [t + e / 10 for e in range(n)], np.full(n, t % 5 == 4))


def _step(buf, t):
    """Add step t, then draw DFS batches (which change the counters), seeded by t."""
    _add(buf, t)
    torch.manual_seed(t)
    if buf.size >= 2:
        buf.sample(2, 2, "world_model")
        buf.sample(2, 2, "imagination")


def _run(buf, files, last, start, end, every, written=None):
    """Steps [start, end) (`_step`); a checkpoint (chunk, last.pt, commit) every `every` steps.
    Returns the buffer's state at each checkpoint, by step; the chunks written go to `written`."""
    states = {}
    for t in range(start, end):
        _step(buf, t)
        if (t + 1) % every == 0:
            index = files.write(buf)
            save_atomic({"buffer": index}, last)
            files.commit(index)
            states[buf.steps] = buf.state_dict()
            if written is not None:
                written.append(tuple(index["chunks"][-1]))
    return states


def _restored(path, last):
    buf = ReplayBuffer(10, 2, (3,), torch.float32)
    files = ReplayFiles(path)
    files.restore(buf, load(last)["buffer"])
    return buf, files


def _same(a, b):
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]) if isinstance(a[k], torch.Tensor) else a[k] == b[k], k


def _names(path):
    return sorted(p.name for p in path.iterdir())


@pytest.mark.parametrize("every", [3, 7])  # more often than the ring of 5 wraps, and less often
def test_files_restore_the_buffer_and_write_each_step_once(tmp_path, every):
    buf = ReplayBuffer(10, 2, (3,), torch.float32)  # a ring of 5 per env, 42 steps: overwrites
    files, last, written = ReplayFiles(tmp_path / "replay"), tmp_path / "last.pt", []
    states = _run(buf, files, last, 0, 42, every, written)
    # each checkpoint wrote the steps added since the previous one that are still in the ring
    assert written == [(max(s - every, s - 5), s) for s in states]
    index = load(last)["buffer"]
    assert _names(tmp_path / "replay") == [chunk_name(a, b) for a, b in index["chunks"]]
    assert index["chunks"][0][0] <= index["steps"] - 5 < index["chunks"][0][1]  # nothing older left
    other, _ = _restored(tmp_path / "replay", last)
    _same(other.state_dict(), states[max(states)])
    for mode in ("world_model", "imagination", "uniform"):  # the same draws as the original
        torch.manual_seed(5)
        a = buf.sample(4, 3, mode)
        torch.manual_seed(5)
        b = other.sample(4, 3, mode)
        assert all(torch.equal(a[k], b[k]) for k in a), mode


def test_a_kill_while_checkpointing_leaves_the_last_checkpoint_whole(tmp_path):
    """Killed after a chunk is written but before last.pt lists it, or after last.pt is saved
    but before the chunks it no longer lists are deleted (and a temporary file of a write cut
    short): a restore gives the buffer of the last complete checkpoint, and carrying on from
    there ends as an uninterrupted run does, without leftover files."""
    straight = _run(ReplayBuffer(10, 2, (3,), torch.float32), ReplayFiles(tmp_path / "a"), tmp_path / "a.pt",
                    0, 30, 3)
    path, last = tmp_path / "b", tmp_path / "b.pt"
    buf, files = ReplayBuffer(10, 2, (3,), torch.float32), ReplayFiles(path)
    _run(buf, files, last, 0, 12, 3)
    for t in range(12, 15):
        _step(buf, t)
    files.write(buf)  # killed here: the chunk of steps [12, 15) is on disk, last.pt still says 12
    (path / f".{chunk_name(15, 18)}.x1y2.tmp").write_bytes(b"cut short")
    assert chunk_name(12, 15) in _names(path)
    buf, files = _restored(path, last)
    assert buf.steps == 12
    _same(buf.state_dict(), straight[12])
    _run(buf, files, last, 12, 21, 3)
    assert not [n for n in _names(path) if n.endswith(".tmp")]
    _same(buf.state_dict(), straight[21])

    for t in range(21, 24):
        _step(buf, t)
    index = files.write(buf)
    save_atomic({"buffer": index}, last)  # killed here: last.pt says 24, stale chunks are left
    assert chunk_name(15, 18) in _names(path) and [15, 18] not in index["chunks"]
    buf, files = _restored(path, last)
    _same(buf.state_dict(), straight[24])
    _run(buf, files, last, 24, 30, 3)
    _same(buf.state_dict(), straight[30])
    assert _names(path) == _names(tmp_path / "a")


def test_files_errors_and_full_states(tmp_path):
    buf = ReplayBuffer(10, 2, (3,), torch.float32)
    files, last = ReplayFiles(tmp_path / "replay"), tmp_path / "last.pt"
    _run(buf, files, last, 0, 8, 4)
    index = load(last)["buffer"]
    with pytest.raises(ValueError, match="do not hold the stored steps"):
        ReplayFiles(tmp_path / "replay").read({**index, "chunks": index["chunks"][1:]})
    with pytest.raises(ValueError, match="lacks"):
        ReplayFiles(tmp_path / "replay").read({k: v for k, v in index.items() if k != "n_wm"})
    with pytest.raises(ValueError, match="replay chunk .* is missing"):
        ReplayFiles(tmp_path / "elsewhere").read(index)
    with pytest.raises(ValueError, match="expected"):  # a buffer of other obs
        ReplayFiles(tmp_path / "replay").read({**index, "obs_shape": [4]})
    with pytest.raises(ValueError, match="not restored from this folder"):
        files.write(ReplayBuffer(10, 2, (3,), torch.float32))  # 0 steps, the files hold 8
    # a checkpoint holding the whole buffer (state_dict) restores too; the next write stores
    # every step the buffer holds
    other, files = ReplayBuffer(10, 2, (3,), torch.float32), ReplayFiles(tmp_path / "new")
    files.restore(other, buf.state_dict())
    _same(other.state_dict(), buf.state_dict())
    assert files.write(other)["chunks"] == [[3, 8]]
