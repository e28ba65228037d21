"""The Drama learner: the world model, the actor-critic, their optimisers and one update of each.

    learner = Learner(obs_shape, n_actions, LearnerConfig(...), device)
    metrics = learner.update(buffer)      # one world-model update, then one actor-critic update
    metrics = learner.update(buffer, actor_critic=False)   # the world model alone

Per update (Drama's schedule):
1. world model: `batch_size` windows of `batch_length` steps from the replay buffer (DFS sampling
   or uniform), its loss, a LaProp step with linear learning-rate warm-up over `wm_warmup` updates
   and gradient clipping;
2. actor-critic: `imagine_batch` contexts of `imagine_context` real steps, rolled out for
   `imagine_horizon` imagined steps by the actor inside the world model; one step of the
   actor's and of the critic's optimiser (`agent.optimizer`: Adam, or LaProp as Drama; optional
   linear warm-up `agent.warmup`; gradient clipping of each or of both together,
   `agent.grad_clip_scope`), then the slow critic's EMA.

Metrics of an update (TensorBoard scalars in the RL loop): the losses' own, `wm/grad_norm` and
`wm/lr` (the world model's gradient norm before clipping and the learning rate of its step),
`ac/grad_norm` (the norm of the actor's and critic's gradients together, before clipping),
with separate clipping also `ac/actor_grad_norm` and `ac/critic_grad_norm`, and `ac/lr`.

With `autocast="bf16"` the forward passes of both losses run under bfloat16 autocast (see
`LearnerConfig.autocast`); parameters, gradients and optimiser states stay float32.

`state_dict` holds the models, the optimisers and the update count ("wm", "ac", "wm_opt",
"actor_opt", "critic_opt", "updates").
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Dict, Tuple

import torch

from rlts.config import param
from rlts.world_models.actor_critic import ActorCritic, ActorCriticConfig
from rlts.world_models.optim import LaProp
from rlts.world_models.replay import ReplayBuffer
from rlts.world_models.world_model import WorldModel, WorldModelConfig

AUTOCAST = ("none", "bf16")
"""The values of `LearnerConfig.autocast`."""


@dataclass
class LearnerConfig:
    """What the learner's updates read (defaults: Drama's Atari100k settings)."""

    world_model: WorldModelConfig = param(default_factory=WorldModelConfig, result=True)
    """The world model."""
    agent: ActorCriticConfig = param(default_factory=ActorCriticConfig, result=True)
    """The actor-critic: its optimiser (optimizer, lr, eps, warmup), gradient clipping, targets
    and losses, and how the agent acts."""
    batch_size: int = param(16, result=True, within="[1, inf)")
    """World-model batch: windows per update."""
    batch_length: int = param(128, result=True, within="[1, inf)")
    """World-model batch: steps per window (windows may cross episode ends)."""
    sampling: str = param("dfs", result=True, choices=("dfs", "uniform"))
    """Replay sampling: dfs (Drama's count-based sampling) or uniform."""
    wm_lr: float = param(4e-5, result=True)
    """World-model LaProp learning rate."""
    wm_eps: float = 1e-20
    """World-model LaProp epsilon."""
    wm_warmup: int = 1000
    """Updates of linear learning-rate warm-up for the world model."""
    wm_grad_clip: float = 1000.0
    """Largest world-model gradient norm."""
    laprop_lr_in_momentum: bool = param(False, result=True, missing_as=False)
    """LaProp (the world model's, and the actor-critic's with agent.optimizer=laprop) as its
    reference implementation, which Drama uses: the learning rate of each step enters the
    momentum and the bias correction is the EMA of the learning rates
    (rlts.world_models.optim.LaProp, lr_in_momentum). The same update as the default under a
    constant learning rate; they differ during the warm-ups."""
    imagine_batch: int = param(1024, result=True, within="[1, inf)")
    """Imagined rollouts per actor-critic update."""
    imagine_context: int = param(8, result=True, within="[1, inf)")
    """Real frames read by the world model before each rollout."""
    imagine_horizon: int = param(16, result=True, within="[1, inf)")
    """Imagined steps per rollout."""
    autocast: str = param("none", result=True, choices=AUTOCAST, missing_as="none")
    """Mixed precision of the updates: none (float32 throughout) or bf16: the world-model loss and
    the actor-critic losses are computed under torch.autocast(device type, dtype=bfloat16) on
    the learner's device (CPU or CUDA), so that matmuls and convolutions run in bfloat16, while
    the losses, two-hot, KL, lambda-returns and the return normaliser stay float32. Parameters,
    gradients and optimiser states stay float32; imagination rollouts, like acting, run in
    float32."""


class Learner:
    """The world model, the actor-critic, their optimisers and one update of each, for
    observations of shape `obs_shape` ((H, W, 3) uint8 frames or (D,) vectors) and `n_actions`
    discrete actions."""

    def __init__(self, obs_shape: Tuple[int, ...], n_actions: int, cfg: LearnerConfig, device: torch.device):
        if cfg.autocast not in AUTOCAST:
            raise ValueError(f"unknown autocast {cfg.autocast!r}; use one of {', '.join(AUTOCAST)}")
        self.cfg, self.device = cfg, device
        self.wm = WorldModel(obs_shape, n_actions, cfg.world_model).to(device)
        self.ac = ActorCritic(self.wm.d_feat, n_actions, cfg.agent).to(device)
        self.wm_opt = LaProp(self.wm.parameters(), lr=cfg.wm_lr, eps=cfg.wm_eps,
                             lr_in_momentum=cfg.laprop_lr_in_momentum)
        self.actor_opt = self._agent_optimizer(self.ac.actor.parameters())
        self.critic_opt = self._agent_optimizer(self.ac.critic.parameters())
        self.updates = 0

    def _agent_optimizer(self, params) -> torch.optim.Optimizer:
        """The actor's or the critic's optimiser (`agent.optimizer`). One optimiser over both, as
        Drama's code has, makes the same steps: each parameter's update reads its own state."""
        a = self.cfg.agent
        if a.optimizer == "laprop":
            return LaProp(params, lr=a.lr, eps=a.eps, lr_in_momentum=self.cfg.laprop_lr_in_momentum)
        return torch.optim.Adam(params, lr=a.lr, eps=a.eps)

    def update(self, buffer: ReplayBuffer, actor_critic: bool = True) -> Dict[str, torch.Tensor]:
        """One world-model update, then one actor-critic update (none with `actor_critic=False`:
        the world model is trained alone); their metrics. Counts one update either way."""
        metrics = self.update_world_model(buffer)
        if actor_critic:
            metrics.update(self.update_actor_critic(buffer))
        self.updates += 1
        return metrics

    def update_world_model(self, buffer: ReplayBuffer) -> Dict[str, torch.Tensor]:
        cfg = self.cfg
        batch = buffer.sample(cfg.batch_size, cfg.batch_length, "world_model" if cfg.sampling == "dfs" else "uniform")
        with self._autocast():
            loss, metrics = self.wm.loss(batch["obs"], batch["action"], batch["reward"], batch["terminated"])
        lr = warmed_up(cfg.wm_lr, cfg.wm_warmup, self.updates)
        for g in self.wm_opt.param_groups:
            g["lr"] = lr
        self.wm_opt.zero_grad(set_to_none=True)
        loss.backward()
        metrics["wm/grad_norm"] = torch.nn.utils.clip_grad_norm_(self.wm.parameters(), cfg.wm_grad_clip)
        metrics["wm/lr"] = torch.tensor(lr, dtype=torch.float32)
        self.wm_opt.step()
        self.last_batch = batch
        return metrics

    def update_actor_critic(self, buffer: ReplayBuffer) -> Dict[str, torch.Tensor]:
        cfg = self.cfg
        ctx = buffer.sample(cfg.imagine_batch, cfg.imagine_context, "imagination" if cfg.sampling == "dfs" else "uniform")
        rollout = self.wm.imagine(self.ac.policy, ctx["obs"], ctx["action"], cfg.imagine_horizon)
        with self._autocast():
            actor_loss, critic_loss, metrics = self.ac.loss(rollout)
        a = cfg.agent
        lr = warmed_up(a.lr, a.warmup, self.updates)
        for opt in (self.actor_opt, self.critic_opt):
            for g in opt.param_groups:
                g["lr"] = lr
        self.actor_opt.zero_grad(set_to_none=True)
        self.critic_opt.zero_grad(set_to_none=True)
        (actor_loss + critic_loss).backward()
        if a.grad_clip_scope == "joint":
            params = [*self.ac.actor.parameters(), *self.ac.critic.parameters()]
            metrics["ac/grad_norm"] = torch.nn.utils.clip_grad_norm_(params, a.grad_clip)
        else:
            actor_norm = torch.nn.utils.clip_grad_norm_(self.ac.actor.parameters(), a.grad_clip)
            critic_norm = torch.nn.utils.clip_grad_norm_(self.ac.critic.parameters(), a.grad_clip)
            metrics["ac/actor_grad_norm"], metrics["ac/critic_grad_norm"] = actor_norm, critic_norm
            metrics["ac/grad_norm"] = torch.hypot(actor_norm, critic_norm)
        metrics["ac/lr"] = torch.tensor(lr, dtype=torch.float32)
        self.actor_opt.step()
        self.critic_opt.step()
        self.ac.update_slow_critic()
        self.last_rollout = rollout
        return metrics

    def _autocast(self):
        """The context of the losses' forward passes: bfloat16 autocast on the learner's device
        with `autocast="bf16"`, else none."""
        if self.cfg.autocast == "bf16":
            return torch.autocast(torch.device(self.device).type, dtype=torch.bfloat16)
        return contextlib.nullcontext()

    @torch.no_grad()
    def images(self) -> Dict[str, torch.Tensor]:
        """(3, H, W) images in [0, 1] of the last updates, for image observations: real frames
        above their reconstructions (one training window), one imagined rollout decoded (after
        an actor-critic update), and the open-loop prediction of a training window
        (`open_loop_image`). {} before the first update or for vector observations. Samples
        latents (torch RNG)."""
        wm, batch = self.wm, getattr(self, "last_batch", None)
        if batch is None or not wm.is_image:
            return {}
        real = batch["obs"][0, :8].float() / 255.0                                   # (8, H, W, 3)
        with wm.running_norm_stats():
            recon = wm.decode(wm.sample(wm.encode(batch["obs"][0, :8])))
        images = {"wm/real_vs_reconstruction": torch.cat([torch.cat(list(real), 1),
                                                          torch.cat(list(recon), 1)], 0).permute(2, 0, 1)}
        rollout = getattr(self, "last_rollout", None)
        if rollout is not None:
            with wm.running_norm_stats():
                imagined = wm.decode(rollout["feat"][0, :, : wm.d_z])                  # (H+1, H, W, 3)
            images["wm/imagined_rollout"] = torch.cat(list(imagined), 1).permute(2, 0, 1)
        images["wm/open_loop"] = self.open_loop_image(batch["obs"][0], batch["action"][0])
        return images

    @torch.no_grad()
    def open_loop_image(self, obs: torch.Tensor, action: torch.Tensor) -> torch.Tensor:
        """The open-loop prediction of one window, obs (T, H, W, 3) uint8 and its actions (T,):
        its first `imagine_context + 2 * imagine_horizon` steps (at most T), real frames above
        the world model's, which reads `imagine_context` of them and then only the actions
        (`WorldModel.open_loop`; `open_loop_frames`, as `rlts play --dream` shows it).
        Returns (3, 2H, steps * W) in [0, 1]. Samples latents (torch RNG)."""
        steps = min(obs.shape[0], self.cfg.imagine_context + 2 * self.cfg.imagine_horizon)
        context = min(self.cfg.imagine_context, steps)
        obs, action = obs[:steps].to(self.device), action[:steps].to(self.device)
        dream = self.wm.open_loop(obs[None], action[None], context)["recon"][0]      # (steps, H, W, 3)
        return torch.cat(list(open_loop_frames(obs, dream)), 1).permute(2, 0, 1)

    def state_dict(self) -> dict:
        return {"wm": self.wm.state_dict(), "ac": self.ac.state_dict(), "wm_opt": self.wm_opt.state_dict(),
                "actor_opt": self.actor_opt.state_dict(), "critic_opt": self.critic_opt.state_dict(),
                "updates": self.updates}

    def load_state_dict(self, d: dict) -> None:
        self.wm.load_state_dict(d["wm"])
        self.ac.load_state_dict(d["ac"])
        self.wm_opt.load_state_dict(d["wm_opt"])
        self.actor_opt.load_state_dict(d["actor_opt"])
        self.critic_opt.load_state_dict(d["critic_opt"])
        self.updates = int(d["updates"])


def warmed_up(lr: float, warmup: int, update: int) -> float:
    """The learning rate of update `update` (from 0) under linear warm-up over `warmup` updates:
    lr * min(1, (update + 1) / warmup); lr itself for warmup 0 (as Drama's LinearWarmup)."""
    return lr * min(1.0, (update + 1) / max(1, warmup))


def open_loop_frames(real: torch.Tensor, predicted: torch.Tensor) -> torch.Tensor:
    """Real frames (T, H, W, 3) uint8 or in [0, 1] over the world model's (T, H, W, 3) in [0, 1]
    (`WorldModel.open_loop`'s recon): (T, 2H, W, 3) float in [0, 1], one frame per step."""
    real = real.float() / 255.0 if not real.is_floating_point() else real.float()
    return torch.cat([real, predicted.float().clamp(0.0, 1.0)], dim=1)
