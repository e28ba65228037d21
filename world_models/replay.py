"""Replay buffer for the world-model agent, with Drama's DFS ("don't forget samples") sampling.

One transition per env step: (obs_t, action_t, reward_t, terminated_t), where obs_t is the
observation the action was taken on and reward_t / terminated_t result from action_t.
`terminated` is what the world model learns to predict: the episode terminated OR a life was
lost (a truncation is not a termination). Training windows are `length` contiguous steps of one
env stream; they may cross episode boundaries (the flags come with them) but never the ring's
write point, so every step of a window is a valid, consecutive step.

Layout: `num_envs` parallel streams, each a ring of `capacity // num_envs` slots. `add` writes
one step of every env at the same slot, so one write pointer and one fill count serve all
streams. Data lives on `device` (uint8 frames stay uint8); sampling counters live on the CPU.

Sampling modes (window starts are drawn without replacement, with torch's global CPU RNG, so a
checkpointed RNG state makes sampling reproducible):
- "uniform": uniform over the valid starts (with replacement only if batch > #starts);
- "world_model": p(start) ∝ exp(-n_wm / wm_tau), n_wm = how often the start was drawn for a
  world-model batch; n_wm[starts] += 1 after each draw. Fresh data is favoured, old data is
  still revisited;
- "imagination": score = min(0, n_wm - n_im / imagine_scale), p = softmax(score / imagine_tau);
  n_im[starts] += 1. imagine_scale = imagination batch / world-model batch (1024 / 16 = 64), so
  starts the world model has seen often but imagination has not yet used are preferred.
A slot's counters reset to 0 when it is overwritten.

Candidate starts are enumerated in logical order (env, then age from oldest to newest), not by
ring slot, so `state_dict` can store the filled part in logical order and a loaded buffer draws
exactly the same windows. Memory for capacity 100k of 64x64x3 uint8 frames: 1.2288 GB of frames
plus 2.3 MB of actions, rewards, flags and counters (see `nbytes`).

Checkpoints on disk (`ReplayFiles`): a transition never changes once added, so a checkpoint only
appends the steps added since the previous one, as one chunk file in a folder of its own
(`steps_<start>_<end>.pt`: steps [start, end) of every env stream, counted from the first `add`).
The small, changing part (pointers, DFS counters, the list of chunks that hold the stored steps)
is the index, which the caller stores in its checkpoint file. Writing a checkpoint is
1. `index = files.write(buffer)`: the new chunk, written atomically and flushed to disk;
2. the caller saves the index in its checkpoint, atomically: the commit point;
3. `files.commit(index)`: chunk files the index does not list (steps overwritten in the ring,
   leftovers of an interrupted save) are deleted.
A listed chunk is never rewritten or deleted before a newer index is committed, so a kill at any
point leaves the last committed checkpoint whole. A run of S steps writes each step once: S
transitions in all (plus the counters in every index), instead of the whole buffer per checkpoint.
"""
from __future__ import annotations

import math
import os
import re
from pathlib import Path

import numpy as np
import torch

from rlts.checkpoint import load as load_checkpoint
from rlts.checkpoint import save_atomic

MODES = ("uniform", "world_model", "imagination")
STEP_KEYS = ("obs", "action", "reward", "terminated")
"""What a transition holds; the rest of a buffer's state (counters, pointers) changes over time."""


def _as_tensor(x, name: str, shape: tuple, dtype: torch.dtype, device) -> torch.Tensor:
    """`x` (numpy, torch or list) as a tensor of `dtype` on `device`, checking its shape."""
    t = torch.as_tensor(np.asarray(x) if not isinstance(x, torch.Tensor) else x)
    if tuple(t.shape) != shape:
        raise ValueError(f"{name} has shape {tuple(t.shape)}, expected {shape}")
    if t.is_floating_point() and not (dtype.is_floating_point or dtype == torch.bool):
        raise ValueError(f"{name} is {t.dtype} but the buffer stores {dtype}")
    return t.to(device=device, dtype=dtype)


class ReplayBuffer:
    """Ring buffer of `num_envs` parallel env streams with uniform and DFS window sampling."""

    def __init__(self, capacity: int, num_envs: int, obs_shape: tuple, obs_dtype: torch.dtype,
                 device="cpu", wm_tau: float = 10.0, imagine_tau: float = 10.0,
                 imagine_scale: float = 64.0):
        if num_envs < 1 or capacity < num_envs:
            raise ValueError(f"need capacity >= num_envs >= 1, got capacity={capacity}, "
                             f"num_envs={num_envs}")
        self.num_envs = int(num_envs)
        self.ring = int(capacity) // self.num_envs  # slots per env stream
        self.obs_shape = tuple(int(s) for s in obs_shape)
        self.obs_dtype = obs_dtype
        self.device = torch.device(device)
        self.wm_tau, self.imagine_tau, self.imagine_scale = wm_tau, imagine_tau, imagine_scale
        n, c = self.num_envs, self.ring
        self.obs = torch.zeros((n, c, *self.obs_shape), dtype=obs_dtype, device=self.device)
        self.action = torch.zeros((n, c), dtype=torch.int32, device=self.device)
        self.reward = torch.zeros((n, c), dtype=torch.float32, device=self.device)
        self.terminated = torch.zeros((n, c), dtype=torch.bool, device=self.device)
        self.n_wm = torch.zeros((n, c), dtype=torch.int64)  # per start slot, CPU
        self.n_im = torch.zeros((n, c), dtype=torch.int64)
        self.pos = 0  # next slot to write
        self.size = 0  # filled slots per env
        self.steps = 0  # env steps added in total (per env)

    def __len__(self) -> int:
        """Transitions stored (all envs)."""
        return self.size * self.num_envs

    @property
    def nbytes(self) -> int:
        """Bytes held by the storage and counters."""
        ts = (self.obs, self.action, self.reward, self.terminated, self.n_wm, self.n_im)
        return sum(t.numel() * t.element_size() for t in ts)

    def add(self, obs, action, reward, terminated) -> None:
        """Append one step of every env: obs (N, *obs_shape), action (N,), reward (N,),
        terminated (N,) (terminated or life lost). Numpy or torch."""
        n = self.num_envs
        self.obs[:, self.pos] = _as_tensor(obs, "obs", (n, *self.obs_shape), self.obs_dtype,
                                           self.device)
        self.action[:, self.pos] = _as_tensor(action, "action", (n,), torch.int32, self.device)
        self.reward[:, self.pos] = _as_tensor(reward, "reward", (n,), torch.float32, self.device)
        self.terminated[:, self.pos] = _as_tensor(terminated, "terminated", (n,), torch.bool,
                                                  self.device)
        self.n_wm[:, self.pos] = 0  # a new transition in this slot: fresh counters
        self.n_im[:, self.pos] = 0
        self.pos = (self.pos + 1) % self.ring
        self.size = min(self.size + 1, self.ring)
        self.steps += 1

    def _starts(self, length: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Valid window starts in logical order: (env index, ring slot), each (S,) on the CPU."""
        if length < 1:
            raise ValueError(f"length must be >= 1, got {length}")
        if length > self.size:
            raise ValueError(f"window length {length} exceeds the {self.size} steps stored per env")
        oldest = (self.pos - self.size) % self.ring
        per_env = self.size - length + 1
        slots = (oldest + torch.arange(per_env)) % self.ring  # (S_env,)
        env = torch.arange(self.num_envs).repeat_interleave(per_env)  # (S,)
        return env, slots.repeat(self.num_envs)

    def sample(self, batch: int, length: int, mode: str = "uniform") -> dict[str, torch.Tensor]:
        """`batch` windows of `length` contiguous steps: obs (B, L, *obs_shape) in the stored
        dtype, action (B, L) long, reward (B, L) float32, terminated (B, L) float32."""
        if mode not in MODES:
            raise ValueError(f"unknown sampling mode {mode!r}; expected one of {MODES}")
        if batch < 1:
            raise ValueError(f"batch must be >= 1, got {batch}")
        env, slot = self._starts(length)  # (S,), (S,)
        num = env.numel()
        if mode == "uniform":
            weights = torch.ones(num, dtype=torch.float64)
            replacement = batch > num
        else:
            if batch > num:
                raise ValueError(f"{mode} sampling draws without replacement: batch {batch} > "
                                 f"{num} valid starts for length {length}")
            n_wm = self.n_wm[env, slot].double()
            if mode == "world_model":
                logits = -n_wm / self.wm_tau
            else:
                n_im = self.n_im[env, slot].double()
                logits = torch.clamp(n_wm - n_im / self.imagine_scale, max=0.0) / self.imagine_tau
            weights = torch.softmax(logits, dim=0)  # exp(logits) / Z, computed stably
            replacement = False
        pick = torch.multinomial(weights, batch, replacement=replacement)  # (B,)
        env, slot = env[pick], slot[pick]
        if mode == "world_model":
            self.n_wm[env, slot] += 1
        elif mode == "imagination":
            self.n_im[env, slot] += 1
        idx = (slot[:, None] + torch.arange(length)) % self.ring  # (B, L)
        env_d, idx_d = env[:, None].to(self.device), idx.to(self.device)
        return {
            "obs": self.obs[env_d, idx_d],  # (B, L, *obs_shape)
            "action": self.action[env_d, idx_d].long(),  # (B, L)
            "reward": self.reward[env_d, idx_d],  # (B, L)
            "terminated": self.terminated[env_d, idx_d].float(),  # (B, L)
        }

    def _logical(self) -> torch.Tensor:
        """Ring slots of the filled part, oldest first: (size,)."""
        return (self.pos - self.size + torch.arange(self.size)) % self.ring

    def transitions(self, start: int, end: int) -> dict[str, torch.Tensor]:
        """Steps [start, end) of every env stream, counted from the first `add`, oldest first and
        on the CPU: obs (N, end - start, *obs_shape), action, reward, terminated (N, end - start).
        The steps must still be stored: [steps - size, steps)."""
        oldest = self.steps - self.size
        if not oldest <= start <= end <= self.steps:
            raise ValueError(f"steps [{start}, {end}) are not all stored: the buffer holds "
                             f"[{oldest}, {self.steps})")
        slots = (self.pos - (self.steps - start) + torch.arange(end - start)) % self.ring
        slots_d = slots.to(self.device)
        return {name: getattr(self, name)[:, slots_d].cpu() for name in STEP_KEYS}  # copies

    state_dict_keys = ("num_envs", "ring", "obs_shape", "size", "steps", "obs", "action",
                       "reward", "terminated", "n_wm", "n_im")

    def state_dict(self) -> dict:
        """The filled part of every ring in logical order (oldest first), counters and
        pointers; only tensors and ints, so `torch.load(weights_only=True)` reads it."""
        order = self._logical()
        return {
            "num_envs": self.num_envs, "ring": self.ring, "obs_shape": list(self.obs_shape),
            "size": self.size, "steps": self.steps,
            **self.transitions(self.steps - self.size, self.steps),
            "n_wm": self.n_wm[:, order].clone(), "n_im": self.n_im[:, order].clone(),
        }

    def load_state_dict(self, d: dict) -> None:
        """Restore from `state_dict()`; the buffer must have been built with the same capacity,
        num_envs, obs_shape and obs_dtype."""
        missing = [k for k in self.state_dict_keys if k not in d]
        if missing:
            raise ValueError(f"replay state lacks {missing}")
        for key, mine in (("num_envs", self.num_envs), ("ring", self.ring),
                          ("obs_shape", list(self.obs_shape))):
            theirs = list(d[key]) if key == "obs_shape" else d[key]
            if theirs != mine:
                raise ValueError(f"replay state has {key}={theirs}, this buffer has {mine}")
        size = int(d["size"])
        if not 0 <= size <= self.ring:
            raise ValueError(f"replay state has size {size} outside [0, {self.ring}]")
        expect = {
            "obs": ((self.num_envs, size, *self.obs_shape), self.obs_dtype),
            "action": ((self.num_envs, size), torch.int32),
            "reward": ((self.num_envs, size), torch.float32),
            "terminated": ((self.num_envs, size), torch.bool),
            "n_wm": ((self.num_envs, size), torch.int64),
            "n_im": ((self.num_envs, size), torch.int64),
        }
        for key, (shape, dtype) in expect.items():
            t = d[key]
            if tuple(t.shape) != shape or t.dtype != dtype:
                raise ValueError(f"replay state {key!r} is {tuple(t.shape)} {t.dtype}, "
                                 f"expected {shape} {dtype}")
        for name in ("obs", "action", "reward", "terminated"):
            getattr(self, name)[:, :size] = d[name].to(self.device)
        self.n_wm.zero_()
        self.n_im.zero_()
        self.n_wm[:, :size] = d["n_wm"]
        self.n_im[:, :size] = d["n_im"]
        self.size, self.pos, self.steps = size, size % self.ring, int(d["steps"])


def replay_nbytes(capacity: int, obs_shape: tuple, obs_dtype: torch.dtype) -> int:
    """Bytes a ReplayBuffer of `capacity` transitions holds (frames, actions, rewards, flags,
    counters), without allocating it."""
    frame = math.prod(obs_shape) * torch.empty((), dtype=obs_dtype).element_size()
    return capacity * (frame + 4 + 4 + 1 + 8 + 8)


# ---------------------------------------------------------------------------------------------
_CHUNK = re.compile(r"steps_(\d{12})_(\d{12})\.pt")
_INDEX_KEYS = ("num_envs", "ring", "obs_shape", "obs_dtype", "size", "steps", "chunks", "n_wm", "n_im")


def chunk_name(start: int, end: int) -> str:
    """File name of the chunk holding steps [start, end)."""
    return f"steps_{start:012d}_{end:012d}.pt"


class ReplayFiles:
    """A ReplayBuffer's checkpoint as append-only chunk files in `directory` plus a small index
    (see the module docstring):

        files = ReplayFiles(run / "checkpoints" / "replay")
        files.restore(buffer, state["buffer"])          # on resume: the index a checkpoint holds
        index = files.write(buffer)                     # the steps added since the last commit
        save_atomic({..., "buffer": index}, run / "checkpoints" / "last.pt")
        files.commit(index)                             # drop the chunks the index does not list

    The folder belongs to one checkpoint file: `commit` deletes every chunk its index does not
    list, so copies of older checkpoint files do not keep their chunks. Chunks and index hold
    only tensors, ints and lists, read with `torch.load(weights_only=True)`.
    """

    def __init__(self, directory: str | Path):
        self.dir = Path(directory)
        self.chunks: list[tuple[int, int]] = []  # listed by the last committed index
        self.bytes_written = 0  # chunk bytes written by this object

    def write(self, buffer: ReplayBuffer) -> dict:
        """Write the steps added since the committed index as one chunk file (atomic, flushed
        to disk) and return the new index; nothing the committed index lists is touched."""
        oldest = buffer.steps - buffer.size
        done = self.chunks[-1][1] if self.chunks else 0
        if done > buffer.steps:
            raise ValueError(f"{self.dir} holds steps up to {done}, but the buffer has only "
                             f"{buffer.steps}: it was not restored from this folder's index")
        chunks = [(a, b) for a, b in self.chunks if b > oldest]  # still (partly) in the ring
        start = max(done, oldest)
        if start < buffer.steps:
            path = save_atomic({"start": start, "end": buffer.steps,
                                **buffer.transitions(start, buffer.steps)},
                               self.dir / chunk_name(start, buffer.steps))
            self.bytes_written += path.stat().st_size
            chunks.append((start, buffer.steps))
        order = buffer._logical()
        return {"num_envs": buffer.num_envs, "ring": buffer.ring, "obs_shape": list(buffer.obs_shape),
                "obs_dtype": buffer.obs_dtype, "size": buffer.size, "steps": buffer.steps,
                "chunks": [list(c) for c in chunks],
                "n_wm": buffer.n_wm[:, order].clone(), "n_im": buffer.n_im[:, order].clone()}

    def commit(self, index: dict) -> None:
        """Call once the checkpoint holding `index` is saved: the index becomes the one `write`
        appends to, and chunk files it does not list (and temporary files of an interrupted
        write) are deleted."""
        self.chunks = self._check(index)
        keep = {chunk_name(a, b) for a, b in self.chunks}
        if not self.dir.is_dir():
            return
        for path in self.dir.iterdir():
            stale = _CHUNK.fullmatch(path.name) and path.name not in keep
            partial = path.name.startswith(".steps_") and path.name.endswith(".tmp")
            if stale or partial:
                os.unlink(path)

    def restore(self, buffer: ReplayBuffer, index: dict) -> None:
        """Load the buffer from a committed `index` and its chunks; `write` then appends to it.
        A full `ReplayBuffer.state_dict()` is accepted too (its steps are written anew)."""
        if "chunks" not in index:
            buffer.load_state_dict(index)
            self.chunks = []
            return
        buffer.load_state_dict(self.read(index))
        self.chunks = self._check(index)

    def read(self, index: dict) -> dict:
        """The buffer state an index and its chunks describe, in `ReplayBuffer.state_dict()`
        form (the filled part of every stream, oldest first, on the CPU)."""
        chunks = self._check(index)
        n, size, steps = int(index["num_envs"]), int(index["size"]), int(index["steps"])
        obs_shape, dtype = tuple(int(s) for s in index["obs_shape"]), index["obs_dtype"]
        if not isinstance(dtype, torch.dtype):
            raise ValueError(f"replay index has obs_dtype {dtype!r}, not a torch dtype")
        out = {"obs": torch.empty((n, size, *obs_shape), dtype=dtype),
               "action": torch.empty((n, size), dtype=torch.int32),
               "reward": torch.empty((n, size), dtype=torch.float32),
               "terminated": torch.empty((n, size), dtype=torch.bool)}
        oldest = steps - size
        for a, b in chunks:
            chunk = self._load_chunk(a, b)
            lo = max(a, oldest)  # the chunk's steps before `oldest` were overwritten in the ring
            for key, t in out.items():
                part = chunk[key]
                expect = (n, b - a, *t.shape[2:])
                if tuple(part.shape) != expect or part.dtype != t.dtype:
                    raise ValueError(f"replay chunk {self.dir / chunk_name(a, b)}: {key!r} is "
                                     f"{tuple(part.shape)} {part.dtype}, expected {expect} {t.dtype}")
                t[:, lo - oldest : b - oldest] = part[:, lo - a :]
        return {"num_envs": n, "ring": int(index["ring"]), "obs_shape": list(obs_shape), "size": size,
                "steps": steps, **out, "n_wm": index["n_wm"], "n_im": index["n_im"]}

    def _load_chunk(self, start: int, end: int) -> dict:
        path = self.dir / chunk_name(start, end)
        if not path.is_file():
            raise ValueError(f"replay chunk {path} is missing: a checkpoint needs the replay folder "
                             "beside it")
        chunk = load_checkpoint(path)
        missing = [k for k in ("start", "end", *STEP_KEYS) if k not in chunk]
        if missing or (chunk["start"], chunk["end"]) != (start, end):
            raise ValueError(f"replay chunk {path} is not the chunk of steps [{start}, {end})")
        return chunk

    def _check(self, index: dict) -> list[tuple[int, int]]:
        """The chunks of an index as (start, end) pairs; a ValueError unless they cover the
        stored steps [steps - size, steps) back to back."""
        missing = [k for k in _INDEX_KEYS if k not in index]
        if missing:
            raise ValueError(f"replay index lacks {missing}")
        chunks = [(int(a), int(b)) for a, b in index["chunks"]]
        size, steps = int(index["size"]), int(index["steps"])
        ok = 0 <= size <= steps and all(a < b for a, b in chunks)
        ok = ok and all(b == a2 for (_, b), (a2, _) in zip(chunks, chunks[1:]))
        if size:
            ok = ok and bool(chunks) and chunks[0][0] <= steps - size < chunks[0][1] and chunks[-1][1] == steps
        if not ok:
            raise ValueError(f"replay index lists chunks {chunks}, which do not hold the stored steps "
                             f"[{steps - size}, {steps}) back to back")
        return chunks
