"""A causal convolutional stem for padded batches of unequal-length series.

    stem = ConvStem(n_channels=3, d_out=64)
    h = stem(x, valid)                      # x (B, L, C), valid (B, L) bool -> h (B, L, d_out)

Three causal Conv1d layers with kernels 8, 5 and 3 and widths d_out, 2 d_out, d_out, each
followed by batch normalisation and ReLU: the layout of the fully convolutional network (FCN)
of Wang et al. 2017, "Time series classification from scratch with deep neural networks",
with causal (left) padding, so the output at step t depends on steps <= t only. It gives a
sequence model local shape features to work on (its effect on classification: docs/results.md).

Padding is exact: positions where `valid` is False are set to 0 before every convolution, and
`MaskedBatchNorm1d` takes its batch statistics over the valid positions only. In eval mode
(running statistics) each series of a padded batch therefore gets the output it gets alone;
in training mode the batch statistics couple the series of a batch, as batch norm always does.
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn


class MaskedBatchNorm1d(nn.BatchNorm1d):
    """BatchNorm1d over the valid positions of x (B, L, D) with a mask valid (B, L).

    Training: normalises with the mean and the biased variance of the valid positions, and
    updates the running statistics with the unbiased variance, as nn.BatchNorm1d does. Eval:
    normalises with the running statistics. Padding positions come out as they would from
    the same affine map; callers mask them afterwards."""

    def forward(self, x: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        if not self.training and self.track_running_stats:
            mean, var = self.running_mean, self.running_var
        else:
            w = valid.to(x.dtype)[..., None]                         # (B, L, 1)
            n = w.sum()
            if int(n) < 2:
                raise ValueError(f"MaskedBatchNorm1d needs at least 2 valid positions in a training batch, got {int(n)}")
            mean = (x * w).sum(dim=(0, 1)) / n                      # (D,)
            var = (((x - mean) ** 2) * w).sum(dim=(0, 1)) / n       # (D,) biased
            if self.track_running_stats:
                with torch.no_grad():
                    m = self.momentum if self.momentum is not None else 1.0 / float(self.num_batches_tracked + 1)
                    self.num_batches_tracked.add_(1)
                    self.running_mean.lerp_(mean.detach().to(self.running_mean.dtype), m)
                    unbiased = var.detach() * (n / (n - 1))
                    self.running_var.lerp_(unbiased.to(self.running_var.dtype), m)
        y = (x - mean) * torch.rsqrt(var + self.eps)
        if self.affine:
            y = y * self.weight + self.bias
        return y


class ConvStem(nn.Module):
    """Causal Conv1d + MaskedBatchNorm1d + ReLU layers: x (B, L, C), valid (B, L) -> (B, L, d_out).

    Args:
        n_channels: C, input channels.
        d_out: output width, the width of the last layer.
        kernels: kernel size of each layer (FCN: 8, 5, 3).
        hidden: width of each layer before the last, as a multiple of d_out (FCN's 128, 256
            before its last 128 is 1, 2); one fewer than `kernels`.
    """

    def __init__(self, n_channels: int, d_out: int, kernels: Sequence[int] = (8, 5, 3),
                 hidden: Sequence[int] = (1, 2)):
        super().__init__()
        if n_channels < 1 or d_out < 1:
            raise ValueError(f"ConvStem needs n_channels >= 1 and d_out >= 1, got {n_channels}, {d_out}")
        if len(kernels) != len(hidden) + 1 or min(kernels) < 1 or min(hidden, default=1) < 1:
            raise ValueError(f"ConvStem needs positive kernel sizes and one positive hidden width per kernel "
                             f"but the last, got kernels {tuple(kernels)} and hidden {tuple(hidden)}")
        sizes = [n_channels] + [w * d_out for w in hidden] + [d_out]
        self.convs = nn.ModuleList(nn.Conv1d(i, o, k) for i, o, k in zip(sizes[:-1], sizes[1:], kernels))
        self.norms = nn.ModuleList(MaskedBatchNorm1d(o) for o in sizes[1:])

    def forward(self, x: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        keep = valid[..., None]                                      # (B, L, 1)
        zero = torch.zeros((), dtype=x.dtype, device=x.device)
        for conv, norm in zip(self.convs, self.norms):
            h = torch.where(keep, x, zero).transpose(1, 2)           # (B, C_in, L)
            h = conv(F.pad(h, (conv.kernel_size[0] - 1, 0))).transpose(1, 2)   # (B, L, C_out), causal
            x = F.relu(norm(h, valid))
        return torch.where(keep, x, zero)
