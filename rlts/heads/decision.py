"""Return-conditioned policies (DecisionAaren; the Decision Transformer as its baseline).

    model = DecisionModel((17,), act_dim=6, return_scale=1000.0)           # aaren backbone
    dt = DecisionModel((84, 84, 4), n_actions=18, backbone="transformer")  # the DT baseline
    pred = model(obs, actions, rtg, timesteps, mask)     # (B, T, n_actions) logits or (B, T, act_dim)
    loss, metrics = model.loss(obs, actions, rtg, timesteps, mask)

    state = model.start(n_envs)                          # acting, one env step at a time:
    pred, state = model.act(obs_t, rtg_t, t, state)      #   feeds R_t and o_t, predicts a_t
    state = model.observe_action(a_t, t, state)          #   feeds the action actually taken
    rtg_t = rtg_t - reward_t                             #   (the caller's bookkeeping)

Tokens. Step t gives three tokens, interleaved (R_1, o_1, a_1, R_2, o_2, a_2, ...) into one
causal sequence of 3T tokens for `rlts.nn.SequenceModel`; a_t is predicted from the output at
o_t, so it sees R_1..R_t, o_1..o_t and a_1..a_{t-1} only.
    R_t  return-to-go / return_scale -> Linear(1, d)   (DT divides by e.g. 1000 on MuJoCo)
    o_t  vectors (D,): MLP Linear-GELU-Linear; images (H, W, C), uint8 pixels: x / 255 ->
         3 convs (4x4, stride 2: 32, 64, 64 channels, ReLU) -> Linear(d); needs H, W >= 8
    a_t  discrete: Embedding(n_actions, d); continuous: Linear(act_dim, d)
A learned timestep embedding E[t] (t = the step's index in its episode, clamped to
[0, max_timestep - 1]) is added to all three tokens, as in the Decision Transformer.
Output: discrete -> logits, cross-entropy; continuous -> tanh(Linear), so actions are assumed
to lie in [-1, 1] (rescale the env's), mean squared error.

Memory while acting (per env, per layer): aaren O(1) (the scan state m, u, w), gru O(1) (h),
mamba / mamba2 O(1) (conv and SSM states). transformer: a KV cache of at most
max_cache = 3 * context - 2 tokens, a sliding window: each layer's o_t token attends to the
tokens of the last `context` steps (R, o, a of steps t-context+1..t-1, then R_t, o_t), the
window the DT acts with. `forward` applies the same window at every length (the backbone's
max_cache masks both paths), so acting token by token equals `forward` on the whole episode
for every backbone (up to rounding). Stacked windowed layers see further back than one window
(as in any sliding-window attention); RoPE positions are relative, so the window's absolute
offset does not matter.

Training: pad sequences on the right (mask True on a prefix): the backbones are causal, so
padded steps never influence real ones, and their inputs are zeroed (NaN padding is safe).
Train the recurrent backbones on sequences that start at episode starts (acting runs from
the start of the episode); the transformer can train on windows of `context` steps.
"""
from __future__ import annotations

import math
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from rlts.nn.model import SequenceModel


def _shape(x: Any) -> Any:
    return tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__


def _expect(where: str, name: str, x: Any, shape: Sequence[int], kind: str, text: str) -> None:
    """x must be a tensor of `shape` (-1: any size) and `kind` ("int", "float", "bool", "any")."""
    ok = isinstance(x, torch.Tensor) and x.dim() == len(shape) and all(
        s < 0 or s == n for s, n in zip(shape, x.shape))
    if ok and kind != "any":
        ok = {"int": not x.is_floating_point() and not x.is_complex() and x.dtype != torch.bool,
              "float": x.is_floating_point(), "bool": x.dtype == torch.bool}[kind]
    if not ok:
        raise ValueError(f"{where}: {name} must be {kind if kind != 'any' else 'a'} tensor of shape {text}, "
                         f"got {_shape(x)}{'' if not isinstance(x, torch.Tensor) else ' ' + str(x.dtype)}")


class DecisionModel(nn.Module):
    """A return-conditioned policy over (return-to-go, observation, action) tokens (see the
    module docstring for the token layout, the encoders and the memory of each backbone).

    Args:
        obs_shape: (D,) vector observations, or (H, W, C) images (uint8 pixels, scaled / 255).
        n_actions: number of discrete actions (actions int64 in [0, n_actions)); or
        act_dim: width of continuous actions (float, in [-1, 1]). Give exactly one.
        backbone: "aaren" (default, DecisionAaren), "transformer" (Decision Transformer),
            "mamba", "mamba2", "gru".
        d_model, n_layers: width and depth of the sequence model.
        max_timestep: size of the timestep embedding; later steps share the last entry.
        context: the transformer's window in env steps (max_cache = 3 * context - 2 tokens;
            pass max_cache=... to override, None for no window). Unused by other backbones.
        return_scale: returns-to-go are divided by it before embedding.
        dropout: dropout on the token embeddings (training mode only).
        **backbone_options: passed to every block (n_heads, decay, d_state, ...); a
            backbone's own dropout is spelled `backbone_dropout=p`.
    """

    def __init__(self, obs_shape: Sequence[int], n_actions: Optional[int] = None, act_dim: Optional[int] = None,
                 backbone: str = "aaren", d_model: int = 128, n_layers: int = 3, max_timestep: int = 4096,
                 context: int = 20, return_scale: float = 1.0, dropout: float = 0.1, **backbone_options):
        super().__init__()
        name = "DecisionModel"
        obs_shape = tuple(int(s) for s in obs_shape)
        if len(obs_shape) not in (1, 3) or min(obs_shape) < 1:
            raise ValueError(f"{name}: obs_shape must be (D,) or (H, W, C), got {obs_shape}")
        if len(obs_shape) == 3 and min(obs_shape[:2]) < 8:
            raise ValueError(f"{name}: images need H, W >= 8 (three stride-2 convs), got {obs_shape}")
        if (n_actions is None) == (act_dim is None):
            raise ValueError(f"{name}: give exactly one of n_actions (discrete) and act_dim (continuous)")
        size = n_actions if n_actions is not None else act_dim
        if isinstance(size, bool) or not isinstance(size, int) or size < 1:
            raise ValueError(f"{name}: n_actions / act_dim must be an int >= 1, got {size!r}")
        if max_timestep < 1 or context < 1 or d_model < 1:
            raise ValueError(f"{name}: max_timestep ({max_timestep}), context ({context}) and d_model "
                             f"({d_model}) must be >= 1")
        if not (return_scale > 0 and math.isfinite(return_scale)):
            raise ValueError(f"{name}: return_scale must be finite and > 0, got {return_scale}")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"{name}: dropout must lie in [0, 1), got {dropout}")
        if "backbone_dropout" in backbone_options:
            backbone_options["dropout"] = backbone_options.pop("backbone_dropout")
        if backbone == "transformer":
            backbone_options.setdefault("max_cache", 3 * context - 2)
        self.obs_shape, self.discrete, self.action_size = obs_shape, n_actions is not None, size
        self.max_timestep, self.context, self.return_scale = max_timestep, context, float(return_scale)
        self.image = len(obs_shape) == 3
        if self.image:
            H, W, C = obs_shape
            conv = nn.Sequential(nn.Conv2d(C, 32, 4, 2, 1), nn.ReLU(), nn.Conv2d(32, 64, 4, 2, 1), nn.ReLU(),
                                 nn.Conv2d(64, 64, 4, 2, 1), nn.ReLU(), nn.Flatten())
            self.obs_embed = nn.Sequential(conv, nn.Linear(64 * (H // 8) * (W // 8), d_model))
        else:
            self.obs_embed = nn.Sequential(nn.Linear(obs_shape[0], d_model), nn.GELU(), nn.Linear(d_model, d_model))
        self.rtg_embed = nn.Linear(1, d_model)
        self.action_embed = nn.Embedding(size, d_model) if self.discrete else nn.Linear(size, d_model)
        self.time_embed = nn.Embedding(max_timestep, d_model)
        self.drop = nn.Dropout(dropout)
        self.backbone = SequenceModel(backbone, d_model=d_model, n_layers=n_layers, **backbone_options)
        self.head = nn.Linear(d_model, size)

    # -- tokens ---------------------------------------------------------------------------------

    def _dtype(self) -> torch.dtype:
        return self.rtg_embed.weight.dtype

    def _action_text(self, lead: str) -> str:
        return f"({lead})" if self.discrete else f"({lead}, act_dim={self.action_size})"

    def _tokens(self, obs, actions, rtg, timesteps) -> Tuple[torch.Tensor, ...]:
        """Inputs with any leading shape (...) -> R, o, a tokens (..., d_model) each (a: None
        when actions is None), timestep embedding included."""
        dt = self._dtype()
        time = self.time_embed(timesteps.long().clamp(0, self.max_timestep - 1))       # (..., d)
        if self.image:
            lead = obs.shape[:-3]
            x = obs.reshape(-1, *self.obs_shape).permute(0, 3, 1, 2).to(dt) / 255.0  # (N, C, H, W)
            o = self.obs_embed(x).reshape(*lead, -1)
        else:
            o = self.obs_embed(obs.to(dt))
        r = self.rtg_embed(rtg.to(dt).unsqueeze(-1) / self.return_scale)
        a = None
        if actions is not None:
            a = self.action_embed(actions.long() if self.discrete else actions.to(dt)) + time
        return r + time, o + time, a

    def _predict(self, h: torch.Tensor) -> torch.Tensor:
        y = self.head(h)
        return y if self.discrete else torch.tanh(y)

    # -- training -------------------------------------------------------------------------------

    def check_inputs(self, obs, actions, rtg, timesteps, mask=None, where="DecisionModel") -> None:
        """Shapes and dtypes of a (B, T) batch; clear ValueErrors."""
        _expect(where, "obs", obs, (-1, -1, *self.obs_shape), "any", f"(B, T, {', '.join(map(str, self.obs_shape))})")
        B, T = obs.shape[:2]
        a_shape = (B, T) if self.discrete else (B, T, self.action_size)
        _expect(where, "actions", actions, a_shape, "int" if self.discrete else "float",
                self._action_text(f"B={B}, T={T}"))
        _expect(where, "rtg", rtg, (B, T), "float", f"(B={B}, T={T})")
        _expect(where, "timesteps", timesteps, (B, T), "int", f"(B={B}, T={T})")
        if mask is not None:
            _expect(where, "mask", mask, (B, T), "bool", f"(B={B}, T={T})")
            if bool((mask[:, 1:] & ~mask[:, :-1]).any()):
                raise ValueError(f"{where}: mask must be True on a prefix of each sequence (pad on the right)")

    def forward(self, obs: torch.Tensor, actions: torch.Tensor, rtg: torch.Tensor, timesteps: torch.Tensor,
                mask: Optional[torch.Tensor] = None) -> torch.Tensor:
        """obs (B, T, *obs_shape), actions (B, T) int or (B, T, act_dim) float, rtg (B, T) float
        (undivided returns-to-go), timesteps (B, T) int, mask (B, T) bool (True = real step,
        right padding) -> predictions of a_t (B, T, n_actions) logits or (B, T, act_dim) in
        [-1, 1]. Entry t depends on steps <= t, and not on a_t."""
        self.check_inputs(obs, actions, rtg, timesteps, mask)
        if mask is not None:  # zero the padding (it may hold anything, NaN included)
            m = mask.view(*mask.shape, *([1] * (obs.dim() - 2)))
            obs = torch.where(m, obs, torch.zeros((), dtype=obs.dtype, device=obs.device))
            actions = torch.where(mask if self.discrete else mask.unsqueeze(-1), actions, torch.zeros_like(actions))
            rtg, timesteps = rtg.masked_fill(~mask, 0), timesteps.masked_fill(~mask, 0)
        B, T = rtg.shape
        r, o, a = self._tokens(obs, actions, rtg, timesteps)                             # (B, T, d) each
        x = self.drop(torch.stack([r, o, a], dim=2).reshape(B, 3 * T, -1))              # (B, 3T, d)
        h, _ = self.backbone(x)
        return self._predict(h.view(B, T, 3, -1)[:, :, 1])                              # at the o_t tokens

    def score(self, pred: torch.Tensor, actions: torch.Tensor, mask: Optional[torch.Tensor] = None
              ) -> Tuple[torch.Tensor, Dict[str, float]]:
        """(mean loss over the real steps, metrics) from `forward`'s predictions."""
        if self.discrete:
            target = actions if mask is None else actions.masked_fill(~mask, 0)
            per = F.cross_entropy(pred.flatten(0, 1), target.flatten().long(), reduction="none").view(target.shape)
        else:
            target = actions if mask is None else torch.where(mask.unsqueeze(-1), actions, pred.detach())
            per = ((pred - target.to(pred.dtype)) ** 2).mean(-1)                          # (B, T)
        if mask is None:
            mask = torch.ones_like(per, dtype=torch.bool)
        per = per.masked_fill(~mask, 0)
        n = mask.sum()
        loss = per.sum() / n.clamp_min(1).to(per.dtype)
        metrics = {"loss": float(loss.detach()), "n_steps": float(n)}
        if self.discrete:
            correct = (pred.argmax(-1) == actions) & mask
            metrics["accuracy"] = float(correct.sum()) / max(float(n), 1.0)
        return loss, metrics

    def loss(self, obs, actions, rtg, timesteps, mask=None) -> Tuple[torch.Tensor, Dict[str, float]]:
        """Cross-entropy (discrete) or MSE (continuous) of a_t, averaged over the real steps."""
        return self.score(self(obs, actions, rtg, timesteps, mask), actions, mask)

    # -- acting ---------------------------------------------------------------------------------

    @torch.no_grad()
    def start(self, batch_size: int, device: Optional[torch.device] = None) -> List[Any]:
        """The empty state of `batch_size` episodes (one entry per layer)."""
        if batch_size < 1:
            raise ValueError(f"DecisionModel.start: batch_size must be >= 1, got {batch_size}")
        device = device if device is not None else self.rtg_embed.weight.device
        return self.backbone.init_state(batch_size, device, self._dtype())

    @torch.no_grad()
    def act(self, obs_t: torch.Tensor, rtg_t: torch.Tensor, timestep_t: torch.Tensor, state: List[Any]
            ) -> Tuple[torch.Tensor, List[Any]]:
        """Feed R_t and o_t (obs_t (B, *obs_shape), rtg_t (B,) float, timestep_t (B,) int) ->
        (prediction of a_t: (B, n_actions) logits or (B, act_dim), new state). Without
        gradients (the state never holds a graph); call `observe_action` before the next `act`."""
        where = "DecisionModel.act"
        _expect(where, "obs_t", obs_t, (-1, *self.obs_shape), "any", f"(B, {', '.join(map(str, self.obs_shape))})")
        B = obs_t.shape[0]
        _expect(where, "rtg_t", rtg_t, (B,), "float", f"(B={B},)")
        _expect(where, "timestep_t", timestep_t, (B,), "int", f"(B={B},)")
        r, o, _ = self._tokens(obs_t, None, rtg_t, timestep_t)                          # (B, d) each
        _, state = self.backbone.step(r, state)
        h, state = self.backbone.step(o, state)
        return self._predict(h), state

    @torch.no_grad()
    def observe_action(self, action_t: torch.Tensor, timestep_t: torch.Tensor, state: List[Any]) -> List[Any]:
        """Feed a_t, the action taken at step t (B,) int or (B, act_dim) float -> new state."""
        where = "DecisionModel.observe_action"
        _expect(where, "timestep_t", timestep_t, (-1,), "int", "(B,)")
        B = timestep_t.shape[0]
        _expect(where, "action_t", action_t, (B,) if self.discrete else (B, self.action_size),
                "int" if self.discrete else "float", self._action_text(f"B={B}"))
        a = self.action_embed(action_t.long() if self.discrete else action_t.to(self._dtype()))
        a = a + self.time_embed(timestep_t.long().clamp(0, self.max_timestep - 1))
        _, state = self.backbone.step(a, state)
        return state


def decision_loss(model: nn.Module, batch: Mapping) -> Tuple[torch.Tensor, Dict[str, float]]:
    """`Trainer` loss_fn for a batch dict with "observations", "actions", "returns_to_go",
    "timesteps" and optional "mask" (B, T) (see `DecisionModel.forward`)."""
    core = getattr(model, "module", model)  # DistributedDataParallel wraps the model
    if not isinstance(core, DecisionModel):
        raise ValueError(f"decision_loss: needs a DecisionModel, got {type(core).__name__}")
    mask = batch.get("mask")
    pred = model(batch["observations"], batch["actions"], batch["returns_to_go"], batch["timesteps"], mask)
    return core.score(pred, batch["actions"], mask)


DecisionAaren = DecisionModel
"""DecisionAaren is DecisionModel with its default backbone="aaren"; backbone="transformer" gives
the Decision Transformer baseline from the same code."""
