"""Offline RL datasets: recorded trajectories of any environment and policy, in one `.npz` file.

    data = load_trajectories("pong.npz")
    for ep in data.episodes():                  # per-episode views, no copies
        ep.observations                         # (T, *obs_shape)
    rtg = returns_to_go(data.rewards, 1.0, data.episode_starts)   # (N,) float64

Why not Minari. Minari (0.5.4, the version on PyPI) writes datasets only through its
`DataCollector` / `create_dataset_from_buffers`, which need `jax` (`minari[create]`: jax + jaxlib)
and `h5py` besides pydantic/typer/rich; it stores environments by their registered spec (our
wrapped envs from `rlts.tasks.rl.envs.make_env` are not registered ids), and every Minari episode needs
T + 1 observations, which a replay buffer cannot supply (it does not keep the observation after
an episode's last step). So the format here is a plain NumPy archive that `numpy` alone reads,
with nothing pickled (load with `allow_pickle=False`).

Layout of the file (N transitions in E episodes, stored back to back, episode by episode):

    observations        (N, *obs_shape)  obs_t, the observation action_t was taken on (images
                                          stay uint8, vectors float32)
    actions             (N,) int64       discrete actions, or (N, act_dim) float32 continuous ones
    rewards             (N,) float32     reward_t, the result of action_t (finite)
    terminations        (N,) bool        the MDP ended with step t (set only on an episode's last step)
    truncations         (N,) bool        the episode was cut with step t: a time limit, or the end of
                                          recording (set only on an episode's last step)
    episode_starts      (E,) int64       index of each episode's first step; episode e is
                                          [episode_starts[e], episode_starts[e+1]) (the last one ends at N);
                                          starts[0] = 0, strictly increasing: no empty episodes
    final_observations  (E, *obs_shape)  optional: obs_T, the observation after each episode's last
                                          step (the "one more observation than actions")
    life_losses         (N,) bool        optional: a life was lost with step t and the episode went
                                          on (Atari; see rlts.tasks.rl.envs)
    metadata            () str           a JSON object: `format` ("rlts.trajectories/1"), env id,
                                          policy description, rlts version, dtypes, creation time,
                                          and whatever the producer adds (seeds, provenance)

Conventions. The observation convention is "obs_t with the step" (as in a replay buffer); the
successor of step t is observations[t + 1] inside an episode and final_observations[e] after its
last step. Every episode's last step has termination or truncation set (both may be set, as in
Gymnasium), and no other step has either; an episode cut by the end of recording is marked as
truncated. `episode_returns()` and `returns_to_go` (for return-conditioned agents such as the
Decision Transformer) are computed per episode.

Writes are atomic (a temporary file in the same folder, then `os.replace`): a kill never leaves a
half-written dataset. Compressed by default (`np.savez_compressed`): Atari frames shrink several
fold.
"""
from __future__ import annotations

import json
import time
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, Optional, Sequence

import numpy as np

from rlts.checkpoint import write_atomic

FORMAT = "rlts.trajectories/1"
REQUIRED = ("observations", "actions", "rewards", "terminations", "truncations", "episode_starts")
OPTIONAL = ("final_observations", "life_losses")


@dataclass
class Episode:
    """One episode: views into a Trajectories' arrays (T steps)."""

    index: int
    observations: np.ndarray                 # (T, *obs_shape)
    actions: np.ndarray                      # (T,) or (T, act_dim)
    rewards: np.ndarray                      # (T,)
    terminations: np.ndarray                 # (T,)
    truncations: np.ndarray                  # (T,)
    final_observation: Optional[np.ndarray]  # (*obs_shape) or None
    life_losses: Optional[np.ndarray]        # (T,) or None

    def __len__(self) -> int:
        return len(self.rewards)

    @property
    def terminated(self) -> bool:
        """True if the episode ended in a terminal state (not cut)."""
        return bool(self.terminations[-1])

    @property
    def episode_return(self) -> float:
        return float(np.sum(self.rewards, dtype=np.float64))


@dataclass
class Trajectories:
    """Transitions of E episodes stored back to back (see the module docstring for the layout)."""

    observations: np.ndarray                        # (N, *obs_shape)
    actions: np.ndarray                             # (N,) int64 or (N, act_dim) float32
    rewards: np.ndarray                             # (N,) float32
    terminations: np.ndarray                        # (N,) bool
    truncations: np.ndarray                         # (N,) bool
    episode_starts: np.ndarray                      # (E,) int64
    final_observations: Optional[np.ndarray] = None  # (E, *obs_shape)
    life_losses: Optional[np.ndarray] = None        # (N,) bool
    metadata: dict = field(default_factory=dict)

    # -- construction ------------------------------------------------------------------------
    @classmethod
    def from_episodes(cls, episodes: Sequence[dict], metadata: Optional[dict] = None) -> "Trajectories":
        """Concatenate per-episode dicts with keys observations (T, *obs), actions, rewards,
        terminations, truncations and optionally final_observation (*obs) and life_losses (T,).
        Optional fields are kept only if every episode has them. Dtypes are normalised (discrete
        actions int64, continuous float32, rewards float32, flags bool); the result is validated."""
        if not episodes:
            raise ValueError("no episodes to store")
        for k, ep in enumerate(episodes):
            missing = [f for f in ("observations", "actions", "rewards", "terminations", "truncations")
                       if f not in ep]
            if missing:
                raise ValueError(f"episode {k} lacks {missing}")
            if len(ep["rewards"]) == 0:
                raise ValueError(f"episode {k} is empty")
        lengths = np.array([len(ep["rewards"]) for ep in episodes], dtype=np.int64)
        cat = lambda key: np.concatenate([np.asarray(ep[key]) for ep in episodes])  # noqa: E731
        finals = life = None
        if all(ep.get("final_observation") is not None for ep in episodes):
            finals = np.stack([np.asarray(ep["final_observation"]) for ep in episodes])
        if all(ep.get("life_losses") is not None for ep in episodes):
            life = cat("life_losses").astype(bool)
        data = cls(observations=cat("observations"), actions=_norm_actions(cat("actions")),
                   rewards=cat("rewards").astype(np.float32), terminations=cat("terminations").astype(bool),
                   truncations=cat("truncations").astype(bool),
                   episode_starts=np.concatenate([[0], np.cumsum(lengths)[:-1]]).astype(np.int64),
                   final_observations=finals, life_losses=life, metadata=dict(metadata or {}))
        data.validate()
        return data

    # -- shape queries -----------------------------------------------------------------------
    def __len__(self) -> int:
        """N, the number of transitions."""
        return len(self.rewards)

    @property
    def n_episodes(self) -> int:
        return len(self.episode_starts)

    @property
    def obs_shape(self) -> tuple:
        return tuple(self.observations.shape[1:])

    @property
    def discrete(self) -> bool:
        """True for integer (N,) actions, False for continuous (N, act_dim) ones."""
        return self.actions.ndim == 1

    def episode_ends(self) -> np.ndarray:
        """(E,) int64: one past each episode's last step."""
        return np.append(self.episode_starts[1:], len(self)).astype(np.int64)

    def episode_lengths(self) -> np.ndarray:
        """(E,) int64."""
        return self.episode_ends() - self.episode_starts

    def episode_index(self) -> np.ndarray:
        """(N,) int64: the episode of every step."""
        return np.repeat(np.arange(self.n_episodes), self.episode_lengths())

    def episode_returns(self) -> np.ndarray:
        """(E,) float64: the undiscounted return of every episode."""
        if len(self) == 0:
            return np.zeros(0)
        return np.add.reduceat(self.rewards.astype(np.float64), self.episode_starts)

    def episode(self, e: int) -> Episode:
        """Episode `e` as views (negative indices count from the end)."""
        if not -self.n_episodes <= e < self.n_episodes:
            raise IndexError(f"episode {e} out of range for {self.n_episodes} episodes")
        e %= self.n_episodes
        a, b = int(self.episode_starts[e]), int(self.episode_ends()[e])
        return Episode(index=e, observations=self.observations[a:b], actions=self.actions[a:b],
                       rewards=self.rewards[a:b], terminations=self.terminations[a:b],
                       truncations=self.truncations[a:b],
                       final_observation=None if self.final_observations is None else self.final_observations[e],
                       life_losses=None if self.life_losses is None else self.life_losses[a:b])

    def episodes(self) -> Iterator[Episode]:
        """Every episode in order, as views (no copies)."""
        for e in range(self.n_episodes):
            yield self.episode(e)

    def returns_to_go(self, gamma: float = 1.0) -> np.ndarray:
        """(N,) float64: the (discounted) return from every step to its episode's end."""
        return returns_to_go(self.rewards, gamma, self.episode_starts)

    # -- checks ------------------------------------------------------------------------------
    def arrays(self) -> dict:
        """The arrays as they are stored (optional ones only if present), plus `metadata`."""
        out = {name: getattr(self, name) for name in REQUIRED}
        out.update({name: getattr(self, name) for name in OPTIONAL if getattr(self, name) is not None})
        return out

    def validate(self, source: str = "trajectories") -> None:
        """Raise a ValueError naming `source` and the field if anything is inconsistent:
        types, dtypes, lengths, episode boundaries, flags, non-finite rewards."""
        where = source
        for name in REQUIRED + OPTIONAL:
            arr = getattr(self, name)
            if arr is None and name in OPTIONAL:
                continue
            if not isinstance(arr, np.ndarray):
                raise ValueError(f"{where}: field {name!r} is {type(arr).__name__}, expected a numpy array")
            if arr.dtype == object or arr.dtype.kind not in "biuf":
                raise ValueError(f"{where}: field {name!r} has dtype {arr.dtype}; only numeric arrays are stored")
            if arr.ndim == 0:
                raise ValueError(f"{where}: field {name!r} is a scalar, expected an array")
        n = len(self.rewards)
        for name in ("observations", "actions", "rewards", "terminations", "truncations", "life_losses"):
            arr = getattr(self, name)
            if arr is not None and len(arr) != n:
                raise ValueError(f"{where}: field {name!r} has {len(arr)} steps but 'rewards' has {n}")
        if self.rewards.ndim != 1 or self.rewards.dtype != np.float32:
            raise ValueError(f"{where}: field 'rewards' must be (N,) float32, got "
                             f"{self.rewards.shape} {self.rewards.dtype}")
        if not np.all(np.isfinite(self.rewards)):
            bad = int(np.flatnonzero(~np.isfinite(self.rewards))[0])
            raise ValueError(f"{where}: field 'rewards' has a non-finite value ({self.rewards[bad]}) at step {bad}")
        for name in ("terminations", "truncations", "life_losses"):
            arr = getattr(self, name)
            if arr is not None and (arr.ndim != 1 or arr.dtype != bool):
                raise ValueError(f"{where}: field {name!r} must be (N,) bool, got {arr.shape} {arr.dtype}")
        a = self.actions
        if not ((a.ndim == 1 and a.dtype == np.int64) or (a.ndim == 2 and a.dtype == np.float32)):
            raise ValueError(f"{where}: field 'actions' must be (N,) int64 (discrete) or (N, act_dim) float32 "
                             f"(continuous), got {a.shape} {a.dtype}")
        if a.dtype == np.float32 and not np.all(np.isfinite(a)):
            raise ValueError(f"{where}: field 'actions' has non-finite values")
        if self.observations.ndim < 2:
            raise ValueError(f"{where}: field 'observations' must be (N, *obs_shape), got {self.observations.shape}")
        s = self.episode_starts
        if s.ndim != 1 or s.dtype.kind not in "iu":
            raise ValueError(f"{where}: field 'episode_starts' must be (E,) integers, got {s.shape} {s.dtype}")
        if n == 0:
            if len(s):
                raise ValueError(f"{where}: field 'episode_starts' lists {len(s)} episodes but there are no steps")
        else:
            if len(s) == 0 or s[0] != 0:
                raise ValueError(f"{where}: field 'episode_starts' must begin with 0")
            if np.any(np.diff(s) <= 0) or s[-1] >= n:
                raise ValueError(f"{where}: field 'episode_starts' must be strictly increasing and < {n} "
                                 "(no empty episodes)")
        if n:
            last = np.zeros(n, dtype=bool)
            last[self.episode_ends() - 1] = True
            done = self.terminations | self.truncations
            if not np.all(done[last]):
                e = int(np.flatnonzero(~done[last])[0])
                raise ValueError(f"{where}: episode {e} ends at step {int(self.episode_ends()[e]) - 1} with neither "
                                 "'terminations' nor 'truncations' set")
            if np.any(done[~last]):
                t = int(np.flatnonzero(done & ~last)[0])
                raise ValueError(f"{where}: step {t} has 'terminations' or 'truncations' set but is not the last "
                                 "step of its episode (check 'episode_starts')")
        if self.final_observations is not None:
            f = self.final_observations
            if f.shape != (len(s), *self.obs_shape) or f.dtype != self.observations.dtype:
                raise ValueError(f"{where}: field 'final_observations' is {f.shape} {f.dtype}, expected "
                                 f"{(len(s), *self.obs_shape)} {self.observations.dtype}")
        if not isinstance(self.metadata, dict):
            raise ValueError(f"{where}: metadata must be a dict, got {type(self.metadata).__name__}")


def _norm_actions(a: np.ndarray) -> np.ndarray:
    """Discrete actions as (N,) int64, continuous ones as (N, act_dim) float32."""
    a = np.asarray(a)
    if a.dtype.kind in "biu":
        return a.astype(np.int64).reshape(len(a)) if a.ndim <= 2 and a.size == len(a) else a
    if a.dtype.kind == "f":
        return a.astype(np.float32).reshape(len(a), -1)
    return a


# ---------------------------------------------------------------------------------------------
def returns_to_go(rewards: np.ndarray, gamma: float = 1.0,
                  episode_starts: Optional[np.ndarray] = None) -> np.ndarray:
    """Per-episode (discounted) returns to go: rtg_t = sum_{k>=t in t's episode} gamma^(k-t) r_k.

    rewards (N,); episode_starts (E,) as in Trajectories (None: one episode). Returns (N,)
    float64. Vectorised over episodes: one NumPy step per time offset from the episodes' ends.
    """
    r = np.asarray(rewards, dtype=np.float64)
    if r.ndim != 1:
        raise ValueError(f"rewards must be (N,), got {r.shape}")
    n = len(r)
    starts = np.zeros(1 if n else 0, dtype=np.int64) if episode_starts is None else np.asarray(episode_starts, np.int64)
    ends = np.append(starts[1:], n)
    lengths = ends - starts                                        # (E,)
    if np.any(lengths <= 0):
        raise ValueError("episode_starts must be strictly increasing and < len(rewards)")
    rtg = np.zeros(n, dtype=np.float64)                            # (N,)
    live = np.arange(len(starts))
    for k in range(int(lengths.max()) if len(lengths) else 0):    # k: steps before the end
        live = live[lengths[live] > k]
        idx = ends[live] - 1 - k
        rtg[idx] = r[idx] + (gamma * rtg[idx + 1] if k else 0.0)
    return rtg


# ---------------------------------------------------------------------------------------------
def default_metadata(**extra) -> dict:
    """The metadata every file gets (format, rlts version, creation time), plus `extra`."""
    import rlts

    return {"format": FORMAT, "rlts_version": rlts.__version__,
            "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"), **extra}


def save_trajectories(data: Trajectories, path: str | Path, compress: bool = True) -> Path:
    """Validate `data` and write it to `path` (exactly that name) atomically. Metadata gains
    `format`, the observation/action dtypes and shapes, N and E."""
    path = Path(path)
    data.validate(str(path))
    meta = {**default_metadata(), **data.metadata, "format": FORMAT,
            "n_transitions": len(data), "n_episodes": data.n_episodes,
            "obs_shape": list(data.obs_shape), "obs_dtype": str(data.observations.dtype),
            "action_dtype": str(data.actions.dtype),
            "action_shape": list(data.actions.shape[1:])}
    try:
        text = json.dumps(meta)
    except TypeError as e:
        raise ValueError(f"{path}: metadata is not JSON-serialisable: {e}") from e
    arrays = {**data.arrays(), "metadata": np.array(text)}
    saver = np.savez_compressed if compress else np.savez
    return write_atomic(path, lambda f: saver(f, **arrays))


def load_trajectories(path: str | Path) -> Trajectories:
    """Read a file written by `save_trajectories`, without unpickling anything; clear errors
    (FileNotFoundError, or ValueError naming the file and field) for a missing file, a file that
    is not such an archive, missing fields and inconsistent contents."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no trajectories file at {path}")
    with open(path, "rb") as f:
        magic = f.read(6)
    if not zipfile.is_zipfile(path) and magic != b"\x93NUMPY":  # numpy's own error would suggest unpickling
        raise ValueError(f"{path} is not a trajectories file (.npz): it is not a zip archive (write one with "
                         "`rlts record`)")
    try:
        npz = np.load(path, allow_pickle=False)
    except (ValueError, OSError, zipfile.BadZipFile, EOFError) as e:
        raise ValueError(f"{path} is not a trajectories file (.npz): {e}") from e
    if not isinstance(npz, np.lib.npyio.NpzFile):
        raise ValueError(f"{path} holds a single array, not a trajectories archive (.npz)")
    with npz:
        missing = [k for k in REQUIRED + ("metadata",) if k not in npz.files]
        if missing:
            raise ValueError(f"{path} lacks the field(s) {missing}; it has {sorted(npz.files)}")
        fields = {}
        for key in REQUIRED + OPTIONAL + ("metadata",):
            if key not in npz.files:
                continue
            try:
                fields[key] = npz[key]
            except (ValueError, OSError, zipfile.BadZipFile, EOFError) as e:
                raise ValueError(f"{path}: field {key!r} cannot be read without unpickling ({e})") from e
    try:
        meta = json.loads(str(fields.pop("metadata")))
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: field 'metadata' is not a JSON string: {e}") from e
    if not isinstance(meta, dict):
        raise ValueError(f"{path}: field 'metadata' is not a JSON object")
    if meta.get("format") != FORMAT:
        raise ValueError(f"{path}: metadata format is {meta.get('format')!r}, expected {FORMAT!r}")
    data = Trajectories(**fields, metadata=meta)
    data.validate(str(path))
    return data
