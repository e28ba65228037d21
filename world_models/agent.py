"""The Drama agent acting: per step, the world model reads the observation (s_t = [z_t, h_{t-1}],
z_t sampled from the posterior), the actor picks a_t, and the sequence model takes one
recurrent step on (z_t, a_t) (constant memory per step).

    agent = Agent(wm, ac, device, greedy=True)
    agent.start(n)                   # n episodes side by side: h_{-1} = 0, empty sequence state
    actions = agent.act(obs)         # obs (n, *obs_shape) -> actions (n,)
    agent.keep(rows)                 # only these rows' episodes go on

`state` is the recurrent acting state (h_{t-1}, sequence state) of the batch, as
`WorldModel.initial_state` makes it: plain tensors, so it can be checkpointed.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
from torch.utils._pytree import tree_map

from rlts.world_models.actor_critic import ActorCritic
from rlts.world_models.world_model import WorldModel


class Agent:
    """The world model and the actor acting on a batch of episodes; `greedy` takes the most
    likely action, else samples one (torch RNG, as does the posterior latent)."""

    def __init__(self, wm: WorldModel, ac: ActorCritic, device: torch.device, greedy: bool = False):
        self.wm, self.ac, self.device, self.greedy = wm, ac, device, greedy
        self.state: tuple = ()

    def start(self, n: int) -> None:
        """A fresh acting state for `n` episodes starting side by side."""
        self.state = self.wm.initial_state(n, self.device)

    @torch.no_grad()
    def act(self, obs: np.ndarray) -> torch.Tensor:
        """Actions (N,) for observations (N, *obs_shape); advances the acting state."""
        h, seq_state = self.state
        feat = self.wm.observe(torch.as_tensor(obs, device=self.device), h)     # (N, d_feat)
        action = self.ac.policy(feat, greedy=self.greedy)                       # (N,)
        self.state = self.wm.advance(feat, action, seq_state)
        return action

    def keep(self, rows: Sequence[int]) -> None:
        """Keep the acting state of these batch rows only (the episodes still running)."""
        idx = torch.tensor(rows, dtype=torch.long, device=self.device)
        h, seq_state = self.state
        self.state = (h[idx], tree_map(lambda t: t[idx], seq_state))
