"""Drama's actor-critic (as STORM and DreamerV3), trained on imagined rollouts only.

    features s = [z, h]                        (from WorldModel.imagine)
    actor   : MLP 3 x 256 -> categorical over the actions
    critic  : MLP 3 x 512 -> 255-bin symlog two-hot value; a slow copy (EMA 0.98) regularises it
    R_t     = r_t + gamma c_t ((1 - lambda) V(s_{t+1}) + lambda R_{t+1}),  R_H = V(s_H)
    S       = max(1, P95 - P5 of R)            EMAs with decay 0.99 (DreamerV3's return scale)
    actor   : REINFORCE, - log pi(a_t | s_t) * sg((R_t - V(s_t)) / S) - eta * entropy, eta = 3e-4
    critic  : two-hot CE to sg(R_t) + two-hot CE to the slow critic's sg(V_slow(s_t))

Steps after a predicted termination carry no weight (weights are the cumulative product of
the predicted continuation flags), as in DreamerV3.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Dict

import torch
from torch import nn

from rlts.world_models.functions import ReturnScale, TwoHot, at_least_float32, lambda_returns
from rlts.world_models.world_model import mlp


@dataclass
class ActorCriticConfig:
    """Drama's actor-critic settings."""

    actor_layers: int = 3
    """Hidden layers of the actor MLP."""
    actor_units: int = 256
    """Hidden width of the actor MLP."""
    critic_layers: int = 3
    """Hidden layers of the critic MLP."""
    critic_units: int = 512
    """Hidden width of the critic MLP."""
    value_bins: int = 255
    """Bins of the symlog two-hot critic."""
    gamma: float = 0.985
    """Discount."""
    lam: float = 0.95
    """lambda of the lambda-returns."""
    entropy: float = 3e-4
    """Entropy bonus weight."""
    slow_critic_decay: float = 0.98
    """EMA decay of the slow critic (a regulariser target)."""
    return_scale_decay: float = 0.99
    """EMA decay of the return percentiles P5 and P95."""
    lr: float = 3e-5
    """Adam learning rate (actor and critic)."""
    eps: float = 1e-5
    """Adam epsilon."""
    grad_clip: float = 100.0
    """Largest gradient norm of the actor and of the critic."""


class ActorCritic(nn.Module):
    def __init__(self, d_feat: int, n_actions: int, cfg: ActorCriticConfig | None = None):
        super().__init__()
        cfg = cfg or ActorCriticConfig()
        self.cfg, self.n_actions = cfg, n_actions
        self.actor = mlp(d_feat, cfg.actor_units, n_actions, cfg.actor_layers)
        self.critic = mlp(d_feat, cfg.critic_units, cfg.value_bins, cfg.critic_layers)
        self.slow_critic = copy.deepcopy(self.critic).requires_grad_(False)
        self.twohot = TwoHot(cfg.value_bins, -20.0, 20.0)
        self.return_scale = ReturnScale(decay=cfg.return_scale_decay)

    def policy(self, feat: torch.Tensor, greedy: bool = False) -> torch.Tensor:
        """feat (N, d_feat) -> actions (N,): sampled, or the most likely one if `greedy`."""
        logits = self.actor(feat)
        if greedy:
            return logits.argmax(-1)
        return torch.distributions.Categorical(logits=logits).sample()

    def loss(self, rollout: Dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor, Dict[str, torch.Tensor]]:
        """rollout from WorldModel.imagine (no gradients into the world model) ->
        (actor loss, critic loss, metrics)."""
        feat, action = rollout["feat"].detach(), rollout["action"]          # (B, H+1, F), (B, H)
        reward, cont = rollout["reward"], rollout["cont"]                    # (B, H) each
        cfg = self.cfg
        critic_logits = self.critic(feat)                                   # (B, H+1, bins)
        with torch.no_grad():
            value = self.twohot.decode(critic_logits)                       # (B, H+1)
            slow_value = self.twohot.decode(self.slow_critic(feat))         # (B, H+1)
            returns = lambda_returns(reward, cont, value, cfg.gamma, cfg.lam)  # (B, H)
            # step t counts if no termination was predicted before it
            weight = torch.cumprod(torch.cat([torch.ones_like(cont[:, :1]), cont[:, :-1]], 1), 1)
            scale = self.return_scale.update(returns)
            advantage = (returns - value[:, :-1]) / scale

        # log-probabilities and entropy in float32 also under bfloat16 autocast
        dist = torch.distributions.Categorical(logits=at_least_float32(self.actor(feat[:, :-1])))
        entropy = dist.entropy()                                            # (B, H)
        actor_loss = (weight * (-dist.log_prob(action) * advantage - cfg.entropy * entropy)).mean()
        value_logits = critic_logits[:, :-1]
        critic_loss = (weight * (self.twohot.loss(value_logits, returns)
                                 + self.twohot.loss(value_logits, slow_value[:, :-1]))).mean()
        metrics = {"ac/actor_loss": actor_loss.detach(), "ac/critic_loss": critic_loss.detach(),
                   "ac/entropy": entropy.mean().detach(), "ac/return": returns.mean(),
                   "ac/value": value.mean(), "ac/return_scale": scale,
                   "ac/imagined_reward": reward.mean()}
        return actor_loss, critic_loss, metrics

    @torch.no_grad()
    def update_slow_critic(self) -> None:
        d = self.cfg.slow_critic_decay
        for slow, fast in zip(self.slow_critic.parameters(), self.critic.parameters()):
            slow.mul_(d).add_(fast, alpha=1 - d)
