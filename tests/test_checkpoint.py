import os
import signal
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest
import torch

from rlts.checkpoint import Checkpointer, load, save_atomic


def _train(ckpt_dir, steps, stop_at=None, seed=0):
    """A tiny noisy training run: dropout, random batches, numpy noise and Adam state, so
    that an inexact resume (lost RNG or optimiser state) changes the result."""
    torch.manual_seed(seed)
    np.random.seed(seed)
    model = torch.nn.Sequential(torch.nn.Linear(4, 16), torch.nn.Dropout(0.3), torch.nn.Linear(16, 1))
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    ckpt = Checkpointer(ckpt_dir)
    start = 0
    state = ckpt.load_latest()
    if state is not None:
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["opt"])
        start = state["step"]
    for step in range(start, steps):
        x = torch.randn(8, 4) + float(np.random.randn())
        loss = (model(x) - x.sum(1, keepdim=True)).pow(2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        ckpt.save(step + 1, {"model": model.state_dict(), "opt": opt.state_dict()})
        if stop_at is not None and step + 1 == stop_at:
            return None
    return torch.cat([p.detach().flatten() for p in model.parameters()])


def test_resume_reproduces_uninterrupted_run_bit_for_bit(tmp_path):
    whole = _train(tmp_path / "a", steps=20)
    assert _train(tmp_path / "b", steps=20, stop_at=7) is None
    torch.manual_seed(123)  # a new process would start with other generator states
    np.random.seed(123)
    resumed = _train(tmp_path / "b", steps=20, seed=999)
    assert torch.equal(whole, resumed)


def test_resume_is_not_trivially_equal(tmp_path):
    """Guard for the test above: without the RNG restore the runs differ."""
    whole = _train(tmp_path / "a", steps=20)
    _train(tmp_path / "b", steps=20, stop_at=7)
    state = load(tmp_path / "b" / "last.pt")
    state.pop("rng")
    save_atomic(state, tmp_path / "b" / "last.pt")
    torch.manual_seed(123)
    resumed = _train(tmp_path / "b", steps=20, seed=999)
    assert not torch.equal(whole, resumed)


def test_kill_during_saves_leaves_a_loadable_checkpoint(tmp_path):
    script = textwrap.dedent(f"""
        import torch, sys
        sys.path.insert(0, {os.getcwd()!r})
        from rlts.checkpoint import save_atomic
        big = torch.arange(2_000_000, dtype=torch.float64)
        i = 0
        while True:
            save_atomic({{"step": i, "w": big + i}}, {str(tmp_path / 'last.pt')!r})
            i += 1
            print(i, flush=True)
    """)
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    try:
        for _ in range(3):  # wait until a few saves completed, then kill mid-write
            proc.stdout.readline()
        time.sleep(0.05)
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.wait(timeout=30)
    obj = load(tmp_path / "last.pt")
    # the payload is whole and consistent with its step: w = arange + step
    assert obj["step"] >= 2
    assert torch.equal(obj["w"], torch.arange(2_000_000, dtype=torch.float64) + obj["step"])
    leftovers = [p.name for p in tmp_path.iterdir() if p.name != "last.pt"]
    assert all(n.endswith(".tmp") for n in leftovers)  # at most the interrupted temp file


def test_load_refuses_pickled_objects(tmp_path):
    class Evil:
        def __reduce__(self):
            return (os.system, ("echo pwned",))

    torch.save({"x": Evil()}, tmp_path / "evil.pt")
    with pytest.raises(ValueError, match="could not be loaded safely"):
        load(tmp_path / "evil.pt")


def test_missing_checkpoint_is_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="no checkpoint at .*nope.pt"):
        load(tmp_path / "nope.pt")
    assert Checkpointer(tmp_path).load_latest() is None


def test_write_text_atomic_replaces_whole_file(tmp_path):
    from rlts.checkpoint import write_text_atomic

    target = tmp_path / "sub" / "results.json"
    write_text_atomic('{"a": 1}', target)
    write_text_atomic('{"b": 2}', target)
    assert target.read_text() == '{"b": 2}'
    assert [p.name for p in target.parent.iterdir()] == ["results.json"]  # no temp file left


@pytest.mark.skipif(sys.platform == "win32", reason="POSIX file modes")
def test_atomic_files_get_the_mode_a_plain_open_would(tmp_path):
    """mkstemp creates 0600 files; results and checkpoints should be as readable as any file
    the user writes (0666 minus the umask), like a plain open() gives."""
    from rlts.checkpoint import write_text_atomic

    old = os.umask(0o027)
    try:
        write_text_atomic("x", tmp_path / "r.json")
        save_atomic({"a": torch.zeros(1)}, tmp_path / "c.pt")
        (tmp_path / "plain.txt").write_text("x")
    finally:
        os.umask(old)
    for name in ("r.json", "c.pt", "plain.txt"):
        assert (tmp_path / name).stat().st_mode & 0o777 == 0o640, name
