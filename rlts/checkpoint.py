"""Checkpoints that survive a kill and resume a run exactly.

- Written atomically: to a temporary file in the same folder, flushed to disk, then
  renamed over the target (`os.replace`), so a kill mid-write leaves the previous
  checkpoint intact and never a truncated one.
- Loaded with `torch.load(..., weights_only=True)`: tensors, numbers, strings, lists and
  dicts only; nothing is unpickled. Hence everything stored must be made of those: module
  and optimiser `state_dict()`s qualify, and the random-number-generator states are stored
  as tensors and lists by `rng_state()`.
- `rng_state()` / `set_rng_state()` capture Python's, NumPy's and torch's generators (CPU
  and CUDA), so that the steps after a resume draw the same numbers as an uninterrupted run.
"""
from __future__ import annotations

import os
import random
import tempfile
from pathlib import Path
from typing import Any, BinaryIO, Callable

import numpy as np
import torch


def rng_state() -> dict:
    """All global random generator states, as weights_only-loadable values."""
    py_version, py_state, py_gauss = random.getstate()
    np_name, np_keys, np_pos, np_has_gauss, np_gauss = np.random.get_state()
    state = {
        "python": {"version": py_version, "state": list(py_state), "gauss": py_gauss},
        "numpy": {
            "name": np_name,
            "keys": torch.from_numpy(np_keys.astype(np.int64)),
            "pos": int(np_pos),
            "has_gauss": int(np_has_gauss),
            "gauss": float(np_gauss),
        },
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    py = state["python"]
    random.setstate((py["version"], tuple(py["state"]), py["gauss"]))
    n = state["numpy"]
    np.random.set_state((n["name"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["gauss"]))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def write_atomic(path: str | Path, write: Callable[[BinaryIO], None]) -> Path:
    """Run write(f) on a temporary file beside `path`, flush it to disk, then rename it over
    `path`: a reader sees the old file or the new, never half of one."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.fchmod(fd, 0o666 & ~_umask())  # mkstemp makes 0600; give the mode open() would
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    try:  # make the rename itself durable
        dfd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)
    except OSError:  # pragma: no cover - some filesystems refuse directory fsync
        pass
    return path


def save_atomic(obj: Any, path: str | Path) -> Path:
    """torch.save `obj` to `path` atomically."""
    return write_atomic(path, lambda f: torch.save(obj, f))


def write_text_atomic(text: str, path: str | Path) -> Path:
    """Write a text file (results.json, a table) atomically."""
    return write_atomic(path, lambda f: f.write(text.encode("utf-8")))


def load(path: str | Path, map_location: str | torch.device = "cpu") -> Any:
    """Load a checkpoint safely (weights_only=True); a clear error if it is absent or broken."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no checkpoint at {path}")
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:
        raise ValueError(f"checkpoint {path} could not be loaded safely: {e}") from e


class Checkpointer:
    """Keeps `<dir>/last.pt` (every save) and optionally step-numbered copies.

        ckpt = Checkpointer(run_dir)
        start = 0
        if (state := ckpt.load_latest()) is not None:
            model.load_state_dict(state["model"]); start = state["step"]
        ...
        ckpt.save(step, {"model": model.state_dict(), ...})

    `save` stores the RNG states with the payload and `load_latest` restores them, so the
    run continues exactly as if it had never stopped.
    """

    def __init__(self, directory: str | Path, keep_every: int | None = None):
        self.dir = Path(directory)
        self.keep_every = keep_every

    @property
    def last_path(self) -> Path:
        return self.dir / "last.pt"

    def save(self, step: int, payload: dict) -> Path:
        obj = dict(payload, step=int(step), rng=rng_state())
        path = save_atomic(obj, self.last_path)
        if self.keep_every and step % self.keep_every == 0:
            save_atomic(obj, self.dir / f"step_{step:09d}.pt")
        return path

    def load_latest(self, map_location: str | torch.device = "cpu", restore_rng: bool = True) -> dict | None:
        if not self.last_path.exists():
            return None
        obj = load(self.last_path, map_location)
        if restore_rng and "rng" in obj:
            set_rng_state(obj["rng"])
        return obj
