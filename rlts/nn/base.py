"""The one interface every sequence layer in rlts follows, and the registry of backbones.

    y, state = layer(x, state=None)        x (B, L, D) -> y (B, L, D); parallel over L
    y_t, state = layer.step(x_t, state)    x_t (B, D) -> y_t (B, D); one token, recurrent
    state = layer.init_state(batch_size, device, dtype)

`state` is whatever the layer needs to continue a sequence (a tensor or a tuple of tensors;
None means "start of sequence"). Contract, checked for every backbone by the tests:
- running `step` token by token equals the parallel `forward`;
- `forward` on two pieces, passing the returned state, equals `forward` on the whole;
- outputs at t never depend on inputs after t.

A backbone is registered by name with `@register_backbone("name")` on a block class whose
constructor takes `(d_model, **options)`; `rlts.nn.SequenceModel(backbone="name", ...)`
stacks such blocks, so heads, world models and configs choose the backbone with one string.
"""
from __future__ import annotations

from typing import Any, Callable, Dict, Optional, Tuple

import torch
from torch import nn

State = Any  # a tensor, a tuple of tensors, or None


class SequenceLayer(nn.Module):
    """Base class: subclasses implement `forward`, `init_state` and (for O(1) inference) `step`."""

    def forward(self, x: torch.Tensor, state: State = None) -> Tuple[torch.Tensor, State]:  # (B, L, D)
        raise NotImplementedError

    def init_state(self, batch_size: int, device: Optional[torch.device] = None,
                   dtype: Optional[torch.dtype] = None) -> State:
        raise NotImplementedError

    def step(self, x_t: torch.Tensor, state: State) -> Tuple[torch.Tensor, State]:  # (B, D)
        """Fallback: a length-1 forward. Layers override it with a true O(1) step."""
        y, state = self.forward(x_t.unsqueeze(1), state)
        return y.squeeze(1), state


BACKBONES: Dict[str, Callable[..., SequenceLayer]] = {}


def register_backbone(name: str) -> Callable:
    def deco(cls):
        if name in BACKBONES:
            raise ValueError(f"backbone {name!r} is registered twice")
        BACKBONES[name] = cls
        return cls
    return deco


def check_input(layer: str, x: torch.Tensor, d_model: int, rank: int = 3) -> None:
    """Clear errors for the usual mistakes: wrong rank or width. (NaN checks belong to data
    loading: a check per layer call would synchronise the GPU.)"""
    shape = "(B, L, D)" if rank == 3 else "(B, D)"
    if not isinstance(x, torch.Tensor) or x.dim() != rank:
        got = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
        raise ValueError(f"{layer}: input must have shape {shape} with D = {d_model}, got {got}")
    if x.shape[-1] != d_model:
        raise ValueError(f"{layer}: input must have shape {shape} with D = {d_model}, got {tuple(x.shape)}")


class PreNormResidual(SequenceLayer):
    """x + mixer(RMSNorm(x)), around any SequenceLayer `mixer`; the state is the mixer's."""

    def __init__(self, d_model: int, mixer: SequenceLayer):
        super().__init__()
        self.d_model = d_model
        self.norm = nn.RMSNorm(d_model)
        self.mixer = mixer

    def forward(self, x: torch.Tensor, state: State = None) -> Tuple[torch.Tensor, State]:
        check_input(type(self).__name__, x, self.d_model)
        y, state = self.mixer(self.norm(x), state)  # (B, L, D)
        return x + y, state

    def step(self, x_t: torch.Tensor, state: State = None) -> Tuple[torch.Tensor, State]:
        check_input(f"{type(self).__name__}.step", x_t, self.d_model, rank=2)
        y, state = self.mixer.step(self.norm(x_t), state)  # (B, D)
        return x_t + y, state

    def init_state(self, batch_size: int, device: Optional[torch.device] = None,
                   dtype: Optional[torch.dtype] = None) -> State:
        return self.mixer.init_state(batch_size, device, dtype)


class MLP(nn.Module):
    """Linear(D, mlp_ratio * D) -> GELU -> Linear(mlp_ratio * D, D) -> dropout."""

    def __init__(self, d_model: int, mlp_ratio: float = 4, dropout: float = 0.0, bias: bool = False):
        super().__init__()
        hidden = int(mlp_ratio * d_model)
        self.fc = nn.Linear(d_model, hidden, bias=bias)
        self.proj = nn.Linear(hidden, d_model, bias=bias)
        self.drop = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (..., D)
        return self.drop(self.proj(nn.functional.gelu(self.fc(x))))
