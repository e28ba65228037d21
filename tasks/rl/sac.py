"""SAC policies (Stable-Baselines3) of `rlts behaviour`: the actor, acting with it, and the policy
snapshots a behaviour run writes (`policies/step<N>.pt`), loaded as a policy for `rlts record`
and for the run's own evaluation.

    policy = BehaviourPolicy("runs/hopper_sac")                         # its latest snapshot, sampling
    policy = BehaviourPolicy("runs/hopper_sac/policies/step40000.pt", greedy=True)
    action = policy(obs)                                                 # (obs_dim,) -> (act_dim,) in [-1, 1]

A snapshot holds the actor's weights and what rebuilding it needs: obs_dim, act_dim, net_arch,
the env and the training step.
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import List

import numpy as np
import torch

from rlts.checkpoint import load


def act(actor: torch.nn.Module, obs: np.ndarray, greedy: bool) -> np.ndarray:
    """One action (act_dim,) float32 in [-1, 1] of an SB3 SAC actor for obs (obs_dim,): its mean
    action if greedy, else a sample (torch RNG)."""
    with torch.no_grad():
        return actor(torch.as_tensor(obs[None]), deterministic=greedy)[0].numpy()   # (act_dim,)


def sac_actor(obs_dim: int, act_dim: int, net_arch: List[int]) -> torch.nn.Module:
    """An SB3 SAC actor for (obs_dim,) observations and (act_dim,) actions in [-1, 1], to load
    weights into; made on a forked torch RNG (its random init leaves the caller's stream alone)."""
    import gymnasium as gym
    from stable_baselines3.sac.policies import SACPolicy

    obs_space = gym.spaces.Box(-np.inf, np.inf, (obs_dim,), np.float32)
    act_space = gym.spaces.Box(-1.0, 1.0, (act_dim,), np.float32)
    with torch.random.fork_rng(devices=[]):
        return SACPolicy(obs_space, act_space, lambda _: 0.0, net_arch=list(net_arch)).actor.eval()


def is_behaviour_path(path: str | Path) -> bool:
    """True for a `rlts behaviour` run folder (it has policies/) or a policy snapshot (.pt file)."""
    path = Path(path)
    return (path.is_dir() and (path / "policies").is_dir()) or (path.is_file() and path.suffix == ".pt")


def latest_snapshot(run_dir: Path) -> Path:
    """The snapshot of the highest step in run_dir/policies; a ValueError if there is none."""
    snaps = [(int(m.group(1)), p) for p in (run_dir / "policies").glob("step*.pt")
             if (m := re.fullmatch(r"step(\d+)\.pt", p.name))]
    if not snaps:
        raise ValueError(f"{run_dir} has no policy snapshot in policies/")
    return max(snaps)[1]


class BehaviourPolicy:
    """A SAC policy snapshot of `rlts behaviour` as a policy: obs (obs_dim,) -> action (act_dim,)
    float32, sampled (torch RNG) or the mean if greedy. `path` is a run folder (its latest
    snapshot) or a policies/step<N>.pt file."""

    def __init__(self, path: str | Path, greedy: bool = False):
        path = Path(path)
        file = latest_snapshot(path) if path.is_dir() else path
        snap = load(file)
        missing = [k for k in ("actor", "obs_dim", "act_dim", "net_arch", "env", "step") if k not in snap]
        if missing:
            raise ValueError(f"{file} lacks {missing}: not a policy snapshot of `rlts behaviour`")
        self.actor = sac_actor(snap["obs_dim"], snap["act_dim"], snap["net_arch"])
        self.actor.load_state_dict(snap["actor"])
        self.env, self.step, self.greedy = snap["env"], int(snap["step"]), greedy
        self.description = (f"SAC policy {file} (step {self.step} of training on {self.env}, "
                            f"{'greedy' if greedy else 'sampling'})")

    def __call__(self, obs: np.ndarray) -> np.ndarray:
        return act(self.actor, np.asarray(obs, np.float32), self.greedy)
