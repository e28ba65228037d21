"""SequenceModel: a stack of blocks of one registered backbone, with a final norm.

    model = SequenceModel("mamba2", d_model=512, n_layers=2, d_input=1056, d_state=16)
    y, state = model(x)                     # x (B, L, d_input or d_model) -> y (B, L, d_model)
    y_t, state = model.step(x_t, state)     # one token, O(1) for the recurrent backbones

Backbone options (d_state, n_heads, ...) are passed through to every block.
"""
from __future__ import annotations

from typing import List, Optional, Tuple

import torch
from torch import nn

from rlts.nn.base import BACKBONES, SequenceLayer, State, check_input


class SequenceModel(SequenceLayer):
    def __init__(self, backbone: str = "aaren", d_model: int = 256, n_layers: int = 4,
                 d_input: Optional[int] = None, **options):
        super().__init__()
        if backbone not in BACKBONES:
            raise ValueError(f"unknown backbone {backbone!r}; choose one of {', '.join(sorted(BACKBONES))}")
        if n_layers < 1 or d_model < 1:
            raise ValueError(f"SequenceModel needs n_layers >= 1 and d_model >= 1, got {n_layers}, {d_model}")
        self.backbone, self.d_model, self.d_input = backbone, d_model, d_input or d_model
        self.in_proj = nn.Linear(d_input, d_model) if d_input else nn.Identity()
        self.layers = nn.ModuleList(BACKBONES[backbone](d_model, **options) for _ in range(n_layers))
        self.norm = nn.RMSNorm(d_model)

    def forward(self, x: torch.Tensor, state: Optional[List[State]] = None) -> Tuple[torch.Tensor, List[State]]:
        check_input(f"SequenceModel({self.backbone})", x, self.d_input)
        h = self.in_proj(x)  # (B, L, D)
        states = state if state is not None else [None] * len(self.layers)
        new = []
        for layer, s in zip(self.layers, states):
            h, s = layer(h, s)
            new.append(s)
        return self.norm(h), new

    def step(self, x_t: torch.Tensor, state: Optional[List[State]] = None) -> Tuple[torch.Tensor, List[State]]:
        check_input(f"SequenceModel({self.backbone}).step", x_t, self.d_input, rank=2)
        h = self.in_proj(x_t)  # (B, D)
        if state is None:
            state = self.init_state(x_t.shape[0], x_t.device, x_t.dtype)
        new = []
        for layer, s in zip(self.layers, state):
            h, s = layer.step(h, s)
            new.append(s)
        return self.norm(h), new

    def init_state(self, batch_size: int, device: Optional[torch.device] = None,
                   dtype: Optional[torch.dtype] = None) -> List[State]:
        return [layer.init_state(batch_size, device, dtype) for layer in self.layers]


def count_parameters(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters() if p.requires_grad)


def state_nbytes(state) -> int:
    """Bytes of every tensor in a (nested tuple / list / dict) recurrent state: the memory a
    model holds between steps (the Transformer's KV cache, the others' fixed states)."""
    if isinstance(state, torch.Tensor):
        return state.numel() * state.element_size()
    if isinstance(state, (list, tuple)):
        return sum(state_nbytes(s) for s in state)
    if isinstance(state, dict):
        return sum(state_nbytes(s) for s in state.values())
    return 0
