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

Drama's code as published differs in choices that are options here: the lambda-return's
bootstrap (`return_bootstrap`), the slow critic's target (`slow_target`), the loss weights
(`loss_weighting`), the optimiser and its clipping (`optimizer`, `warmup`, `grad_clip_scope`,
applied by rlts.world_models.learner) and how the agent acts (`acting`, rlts.world_models.agent).
"""
from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Dict

import torch
from torch import nn

from rlts.config import check_ranges, param
from rlts.world_models.functions import RETURN_BOOTSTRAPS, ReturnScale, TwoHot, at_least_float32, lambda_returns
from rlts.world_models.world_model import mlp


OPTIMIZERS = ("adam", "laprop")
"""The values of `ActorCriticConfig.optimizer`."""
GRAD_CLIP_SCOPES = ("separate", "joint")
"""The values of `ActorCriticConfig.grad_clip_scope`."""
SLOW_TARGETS = ("value", "return")
"""The values of `ActorCriticConfig.slow_target`."""
LOSS_WEIGHTINGS = ("continuation", "none")
"""The values of `ActorCriticConfig.loss_weighting`."""
ACTING = ("recurrent", "drama")
"""The values of `ActorCriticConfig.acting`."""


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
    return_bootstrap: str = param("next", choices=RETURN_BOOTSTRAPS, missing_as="next")
    """One-step bootstrap of the lambda-returns (rlts.world_models.functions.lambda_returns):
    next, R_t = r_t + gamma c_t ((1 - lambda) V(s_{t+1}) + lambda R_{t+1}) (TD(lambda), DreamerV3),
    or current, the same with V(s_t) in place of V(s_{t+1}) (Drama's calc_lambda_return);
    both end with R_H = V(s_H)."""
    slow_target: str = param("value", choices=SLOW_TARGETS, missing_as="value")
    """The critic's second target: value, the slow critic's V_slow(s_t) (DreamerV3), or return,
    the lambda-return computed with the slow critic's values (Drama's slow_lambda_return)."""
    loss_weighting: str = param("continuation", choices=LOSS_WEIGHTINGS, missing_as="continuation")
    """Weights of the steps in the actor and critic losses: continuation, the cumulative
    product of the predicted continuation flags before each step (DreamerV3), or none, a plain
    mean over all imagined steps (Drama)."""
    optimizer: str = param("adam", choices=OPTIMIZERS, missing_as="adam")
    """Optimiser of the actor and of the critic: adam (STORM's) or laprop (Drama's,
    rlts.world_models.optim.LaProp, betas 0.9, 0.999)."""
    lr: float = param(3e-5, within="(0, inf)")
    """Learning rate (actor and critic)."""
    eps: float = param(1e-5, within="[0, inf)")
    """Optimiser epsilon."""
    warmup: int = param(0, within="[0, inf)", missing_as=0)
    """Updates of linear learning-rate warm-up: update k (from 0) uses lr * min(1, (k + 1) /
    warmup), as the world model's warm-up (0: none)."""
    grad_clip: float = 100.0
    """Largest gradient norm (see `grad_clip_scope`)."""
    grad_clip_scope: str = param("separate", choices=GRAD_CLIP_SCOPES, missing_as="separate")
    """What `grad_clip` bounds: separate, the norm of the actor's and of the critic's gradients
    each, or joint, the norm of both together (Drama: one clip over all the agent's
    parameters)."""
    acting: str = param("recurrent", choices=ACTING, missing_as="recurrent")
    """How the agent acts (rlts.world_models.agent.Agent). recurrent: on s_t = [z_t, h_{t-1}]
    with z_t sampled from the posterior of the current frame and the sequence model's state
    carried from the episode start, one recurrent step per action (constant time and memory per
    step). drama (Drama's train.py and eval.py): from a window of the last `acting_context`
    frames before the current one and their actions, read afresh by the sequence model's
    parallel forward at every step; s_t = [z, h], with h the output after the window's last
    step and z a sample of the prior from h (the current frame itself is not read: it enters
    the window after its action is chosen); the first action of an episode, with the window
    still empty, is uniformly random (greedy or not)."""
    acting_context: int = param(16, within="[1, inf)", missing_as=16)
    """acting="drama": the frames of the window (Drama's RealityContextLength)."""


class ActorCritic(nn.Module):
    def __init__(self, d_feat: int, n_actions: int, cfg: ActorCriticConfig | None = None):
        super().__init__()
        cfg = cfg or ActorCriticConfig()
        check_ranges(cfg)
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
            returns = lambda_returns(reward, cont, value, cfg.gamma, cfg.lam, cfg.return_bootstrap)  # (B, H)
            if cfg.slow_target == "return":
                slow_target = lambda_returns(reward, cont, slow_value, cfg.gamma, cfg.lam, cfg.return_bootstrap)
            else:
                slow_target = slow_value[:, :-1]                            # (B, H)
            if cfg.loss_weighting == "continuation":
                # step t counts if no termination was predicted before it
                weight = torch.cumprod(torch.cat([torch.ones_like(cont[:, :1]), cont[:, :-1]], 1), 1)
            else:
                weight = torch.ones_like(returns)                           # (B, H)
            scale = self.return_scale.update(returns)
            advantage = (returns - value[:, :-1]) / scale

        # log-probabilities and entropy in float32 also under bfloat16 autocast
        dist = torch.distributions.Categorical(logits=at_least_float32(self.actor(feat[:, :-1])))
        entropy = dist.entropy()                                            # (B, H)
        actor_loss = (weight * (-dist.log_prob(action) * advantage - cfg.entropy * entropy)).mean()
        value_logits = critic_logits[:, :-1]
        critic_loss = (weight * (self.twohot.loss(value_logits, returns)
                                 + self.twohot.loss(value_logits, slow_target))).mean()
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
