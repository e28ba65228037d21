"""Seeding (the global generators, and seeds derived for independent streams) and device selection."""
from __future__ import annotations

import os
import random

import numpy as np
import torch


def seed_everything(seed: int, deterministic: bool = False) -> None:
    """Seed Python, NumPy and torch (all devices). `deterministic` also asks torch for
    deterministic algorithms (slower on the GPU; CPU results are already repeatable)."""
    if not isinstance(seed, int) or seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    if deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True)


def derive_seed(*keys: int) -> int:
    """A 32-bit seed derived from non-negative integers (numpy's SeedSequence): independent
    streams for training episodes (seed, 0, env, episode), evaluation episodes
    (seed, 1, round, episode) and evaluation's torch RNG (seed, 2, round)."""
    return int(np.random.SeedSequence(list(keys)).generate_state(1)[0])


def episode_seed(seed: int, env_index: int, episode: int) -> int:
    """The reset seed of training episode `episode` of environment `env_index`."""
    return derive_seed(seed, 0, env_index, episode)


def select_device(name: str = "auto") -> torch.device:
    """"auto" picks CUDA when present, else the CPU; "cpu", "cuda", "cuda:1" are taken as given
    after checking that they exist."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ValueError(f"unknown device {name!r}; use auto, cpu, cuda or cuda:N") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"device {name!r} asked for but CUDA is not available on this machine")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise ValueError(f"device {name!r} asked for but only {torch.cuda.device_count()} GPU(s) exist")
    return device
