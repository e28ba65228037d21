"""The Drama agent acting on a batch of episodes, in one of two ways (`ActorCriticConfig.acting`):

recurrent (the default): per step, the world model reads the observation (s_t = [z_t, h_{t-1}],
z_t sampled from the posterior), the actor picks a_t, and the sequence model takes one
recurrent step on (z_t, a_t) (constant time and memory per step).

drama (as Drama's train.py and eval.py act): the agent keeps a window of the last
`acting_context` observations and actions of each episode; per step the world model reads the
window afresh (parallel forward from an empty state), s_t = [z ~ prior(h), h] with h its output
after the last step (WorldModel.predict_features), the actor picks a_t, and (o_t, a_t) join the
window. The current observation o_t itself is not read before a_t; an episode's first action
(empty window) is uniformly random.

    agent = Agent(wm, ac, device, greedy=True)
    agent.start(n)                   # n episodes side by side: a fresh acting state
    actions = agent.act(obs)         # obs (n, *obs_shape) -> actions (n,)
    agent.keep(rows)                 # only these rows' episodes go on

`state` is the acting state of the batch, plain tensors so that it can be checkpointed:
recurrent, (h_{t-1}, sequence state) as `WorldModel.initial_state` makes it; drama, the window
(observations (n, k, *obs_shape), actions (n, k) long), k <= acting_context.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
from torch.utils._pytree import tree_map

from rlts.world_models.actor_critic import ActorCritic
from rlts.world_models.world_model import WorldModel


class Agent:
    """The world model and the actor acting on a batch of episodes, as `ac.cfg.acting` says;
    `greedy` takes the most likely action, else samples one (torch RNG, as do the latents and
    the random first actions of acting="drama")."""

    def __init__(self, wm: WorldModel, ac: ActorCritic, device: torch.device, greedy: bool = False):
        self.wm, self.ac, self.device, self.greedy = wm, ac, device, greedy
        self.acting, self.context = ac.cfg.acting, ac.cfg.acting_context
        self.state: tuple = ()

    def start(self, n: int) -> None:
        """A fresh acting state for `n` episodes starting side by side."""
        if self.acting == "drama":
            dtype = torch.uint8 if self.wm.is_image else next(self.wm.parameters()).dtype
            self.state = (torch.zeros(n, 0, *self.wm.obs_shape, dtype=dtype, device=self.device),
                          torch.zeros(n, 0, dtype=torch.long, device=self.device))
        else:
            self.state = self.wm.initial_state(n, self.device)

    @torch.no_grad()
    def act(self, obs: np.ndarray) -> torch.Tensor:
        """Actions (N,) for observations (N, *obs_shape); advances the acting state."""
        obs = torch.as_tensor(obs, device=self.device)
        if self.acting == "drama":
            return self._act_on_window(obs)
        h, seq_state = self.state
        feat = self.wm.observe(obs, h)                                          # (N, d_feat)
        action = self.ac.policy(feat, greedy=self.greedy)                       # (N,)
        self.state = self.wm.advance(feat, action, seq_state)
        return action

    def _act_on_window(self, obs: torch.Tensor) -> torch.Tensor:
        window_obs, window_action = self.state                                  # (N, k, *obs_shape), (N, k)
        n = window_action.shape[0]
        if obs.shape[0] != n:
            raise ValueError(f"Agent.act: {obs.shape[0]} observations for {n} episodes")
        if window_action.shape[1] == 0:                                         # an episode's first step
            action = torch.randint(self.wm.n_actions, (n,), device=self.device)
        else:
            feat = self.wm.predict_features(window_obs, window_action)          # (N, d_feat)
            action = self.ac.policy(feat, greedy=self.greedy)                   # (N,)
        self.state = (torch.cat([window_obs, obs.to(window_obs.dtype).unsqueeze(1)], 1)[:, -self.context:],
                      torch.cat([window_action, action.long().unsqueeze(1)], 1)[:, -self.context:])
        return action

    def keep(self, rows: Sequence[int]) -> None:
        """Keep the acting state of these batch rows only (the episodes still running)."""
        idx = torch.tensor(rows, dtype=torch.long, device=self.device)
        self.state = tree_map(lambda t: t[idx], self.state)
