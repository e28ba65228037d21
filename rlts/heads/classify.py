"""Time-series classification head: a sequence model with a pooled linear read-out.

    model = SequenceClassifier(n_channels=3, n_classes=5, backbone="mamba", d_model=64)
    logits = model(x, lengths)              # x (B, L, C), lengths (B,) -> logits (B, n_classes)

    loader = DataLoader(list_of_(x_i, label_i), batch_size=32, collate_fn=collate_unequal)
    trainer = Trainer(model, classification_loss, cfg, collate_fn=collate_unequal)
    proba = predict_proba(model, dataset, batch_size=256)   # (N, n_classes) float64, in dataset order

Architecture: optionally a causal convolutional stem (stem="conv": `rlts.nn.conv.ConvStem`, C ->
d_model features per step), a Linear embedding of each patch of `patch_len` time steps
(patch_len = 1: one token per step), `rlts.nn.SequenceModel` (any registered backbone), pooling
over the tokens ("last" or "mean"), dropout, Linear(d_model, n_classes). Patches end at each
series' last step, so the last token holds its final patch_len steps; the first one is
completed with zeros in front (a series of length L_i has ceil(L_i / patch_len) tokens).
With bidirectional=True a second SequenceModel reads each series' tokens in reverse order (its
own valid tokens reversed, the padding left at the end) and its pooled features are added to
the first's: "last" then adds the reverse model's output at the first token, so both have read
the whole series.
The head does not normalise its input: standardise each channel (e.g. with the training set's
per-channel mean and standard deviation) before calling it.

Unequal lengths are handled by right padding plus `lengths`, never by truncation:
- the padding positions of `x` are set to 0 before the model, so their content (garbage,
  NaN, inf) never matters, not even for gradients;
- "last" reads the output at index lengths[b] - 1 of each sequence; this is exact because every
  backbone is causal, so the padding after it cannot change it;
- "mean" averages the outputs over the valid positions 0 .. lengths[b] - 1 only.
So each sequence of a padded batch gets the logits it would get alone and unpadded. With
stem="conv" this holds in eval mode; in training mode its batch norm takes statistics over the
valid positions of the whole batch (padding never enters them).

NaN padding (sktime's convention for unequal-length panels): with `lengths=None`, trailing time
steps whose channels are all NaN are taken as padding and the lengths are inferred from them
(`nan_padded_lengths`). A NaN anywhere before that (a missing value inside a series) raises a
ValueError naming the batch index and time step: impute missing values before the head.

Checking `lengths` (their range) and inferring them from NaNs read values back to the host: on
a GPU, a synchronisation or two per call; for NaN-free input with lengths=None it is a single
`isnan(x).any()`.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset, Subset

from rlts.nn.conv import ConvStem
from rlts.nn.model import SequenceModel

POOLINGS = ("last", "mean")
STEMS = ("none", "conv")


@dataclass(frozen=True)
class ClassifierDefaults:
    """The default classifier of `rlts classify` and of the sktime estimator
    `rlts.sktime.SequenceClassifier`: both read their model settings from `CLASSIFIER` (this
    class's one instance), so the two build the same network unless told otherwise
    (docs/results.md, "Time-series classification", measures it). The head's own constructor
    defaults below (`SequenceClassifier`) are the plain, causal model and differ on purpose."""

    backbone: str = "mamba"
    d_model: int = 64
    n_layers: int = 2
    pooling: str = "mean"
    patch_len: int = 1
    stem: str = "conv"
    bidirectional: bool = True
    dropout: float = 0.0
    augment: Tuple[str, ...] = ("window_warp",)
    """Names of rlts.data.augment's transforms applied to the training series."""


@dataclass(frozen=True)
class ClassifierTrainDefaults:
    """How the default classifier is trained: the `train` section of `rlts classify`'s config
    (a `rlts.trainer.TrainConfig` built from `CLASSIFIER_TRAIN`; the other TrainConfig fields
    keep their own defaults) and the training of `rlts.sktime.SequenceClassifier`. No holdout:
    the weights kept are those of the epoch with the lowest mean training loss, the learning
    rate is halved after `plateau_patience` epochs without a lower one (down to `min_lr`), and
    `patience` 0 runs every epoch."""

    epochs: int = 200
    batch_size: int = 16
    lr: float = 1e-3
    weight_decay: float = 0.0
    ema: float = 0.0
    monitor: str = "train"
    plateau_patience: int = 10
    min_lr: float = 1e-4
    patience: int = 0


CLASSIFIER = ClassifierDefaults()
"""Model defaults of `rlts classify` and `rlts.sktime.SequenceClassifier` (ClassifierDefaults)."""
CLASSIFIER_TRAIN = ClassifierTrainDefaults()
"""Training defaults of `rlts classify` and `rlts.sktime.SequenceClassifier` (ClassifierTrainDefaults)."""


def _shape(x: Any) -> Any:
    return tuple(x.shape) if hasattr(x, "shape") else type(x).__name__


def nan_padded_lengths(x: torch.Tensor) -> torch.Tensor:
    """Lengths (B,) of a right-NaN-padded batch x (B, L, C): L minus the number of trailing
    time steps whose channels are all NaN. Raises ValueError for a NaN before that (naming the
    batch index and time step) and for a sequence that is all NaN."""
    if not isinstance(x, torch.Tensor) or x.dim() != 3:
        raise ValueError(f"nan_padded_lengths: x must have shape (B, L, C), got {_shape(x)}")
    B, L, _ = x.shape
    if not x.is_floating_point():
        return torch.full((B,), L, dtype=torch.long, device=x.device)
    nan = torch.isnan(x)                                   # (B, L, C)
    if not bool(nan.any()):                                # the usual case: no padding at all
        return torch.full((B,), L, dtype=torch.long, device=x.device)
    step_all = nan.all(dim=-1)                             # (B, L): the whole step is NaN
    # trailing all-NaN run: reverse cumulative product of the all-NaN flags
    trailing = step_all.flip(1).long().cumprod(dim=1).flip(1).bool()
    lengths = L - trailing.sum(dim=1)                      # (B,)
    bad = nan.any(dim=-1) & ~trailing                      # a NaN inside the valid part
    if bool(bad.any()):
        b, t = (int(i) for i in bad.nonzero()[0])
        raise ValueError(f"NaN inside a series at batch index {b}, time step {t} (length {int(lengths[b])}): "
                         "only trailing all-NaN time steps are read as padding; impute missing values first")
    if bool((lengths == 0).any()):
        b = int((lengths == 0).nonzero()[0, 0])
        raise ValueError(f"sequence at batch index {b} is empty (all NaN)")
    return lengths


def check_lengths(lengths: Any, batch: int, max_len: int) -> torch.Tensor:
    """lengths must be an integer tensor (B,) with 1 <= lengths <= L."""
    if not isinstance(lengths, torch.Tensor):
        lengths = torch.as_tensor(lengths)
    if lengths.shape != (batch,) or lengths.is_floating_point() or lengths.is_complex() or lengths.dtype == torch.bool:
        raise ValueError(f"lengths must be an integer tensor of shape (B,) = ({batch},), "
                         f"got {lengths.dtype} {tuple(lengths.shape)}")
    if batch and (int(lengths.min()) < 1 or int(lengths.max()) > max_len):
        raise ValueError(f"lengths must lie in [1, L] = [1, {max_len}], got min {int(lengths.min())}, "
                         f"max {int(lengths.max())}")
    return lengths.long()


class SequenceClassifier(nn.Module):
    """Classifies (possibly unequal-length) multivariate series: x (B, L, C) -> logits (B, n_classes).

    Args:
        n_channels: C, the number of input channels (variables) per time step.
        n_classes: number of classes (logits per sequence).
        backbone: a registered backbone name ("aaren", "mamba", "mamba2", "transformer", "gru").
        d_model, n_layers: width and depth of the SequenceModel.
        pooling: "last" (output at each sequence's last valid step) or "mean" (average over
            the valid steps).
        dropout: dropout on the pooled features, before the output layer.
        patch_len: time steps per backbone token (1: one token per step). Patches shorten the
            sequence the backbone runs over and give each token a local shape.
        stem: "none" (the patches go straight to the embedding) or "conv" (`rlts.nn.conv.ConvStem`:
            three causal convolutions with batch norm, widths d_model, 2 d_model, d_model, before
            the patches; features of local shape for the backbone).
        bidirectional: add a second backbone over the reversed tokens (twice the backbone's
            parameters and time); the classifier then no longer reads the series causally.
        **backbone_options: passed to every backbone block (d_state, n_heads, headdim, ...).

    Inputs are cast to the parameters' dtype. Standardising channels is the caller's job.
    """

    def __init__(self, n_channels: int, n_classes: int, backbone: str = "mamba", d_model: int = 64,
                 n_layers: int = 2, pooling: str = "last", dropout: float = 0.0, patch_len: int = 1,
                 stem: str = "none", bidirectional: bool = False, **backbone_options):
        super().__init__()
        if n_channels < 1 or n_classes < 1:
            raise ValueError(f"SequenceClassifier needs n_channels >= 1 and n_classes >= 1, got {n_channels}, {n_classes}")
        if pooling not in POOLINGS:
            raise ValueError(f"pooling must be one of {', '.join(POOLINGS)}, got {pooling!r}")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must lie in [0, 1), got {dropout}")
        if patch_len < 1:
            raise ValueError(f"patch_len must be >= 1, got {patch_len}")
        if stem not in STEMS:
            raise ValueError(f"stem must be one of {', '.join(STEMS)}, got {stem!r}")
        self.n_channels, self.n_classes, self.pooling, self.patch_len = n_channels, n_classes, pooling, patch_len
        self.stem = ConvStem(n_channels, d_model) if stem == "conv" else None
        self.embed = nn.Linear((d_model if self.stem is not None else n_channels) * patch_len, d_model)
        self.model = SequenceModel(backbone, d_model=d_model, n_layers=n_layers, **backbone_options)
        self.model_rev = (SequenceModel(backbone, d_model=d_model, n_layers=n_layers, **backbone_options)
                          if bidirectional else None)
        self.drop = nn.Dropout(dropout)
        self.out = nn.Linear(d_model, n_classes)

    def _check_x(self, x: Any) -> None:
        if not isinstance(x, torch.Tensor) or x.dim() != 3 or x.shape[-1] != self.n_channels or x.shape[1] == 0:
            raise ValueError(f"SequenceClassifier: x must have shape (B, L, C) with L >= 1 and "
                             f"C = n_channels = {self.n_channels}, got {_shape(x)}")

    def features(self, x: torch.Tensor, lengths: Optional[torch.Tensor] = None) -> torch.Tensor:
        """Pooled features (B, d_model), before dropout and the output layer."""
        self._check_x(x)
        B, L, _ = x.shape
        dtype = self.embed.weight.dtype
        if lengths is None:
            lengths = nan_padded_lengths(x)
        else:
            lengths = check_lengths(lengths, B, L).to(x.device)
        x = x.to(dtype)
        valid = torch.arange(L, device=x.device) < lengths[:, None]          # (B, L)
        x = torch.where(valid[..., None], x, torch.zeros((), dtype=dtype, device=x.device))
        if self.stem is not None:
            x = self.stem(x, valid)                                           # (B, L, d_model)
        p = self.patch_len
        if p > 1:  # (B, L, C) -> (B, T, p*C): each series' patches end at its last step
            tokens = torch.div(lengths + p - 1, p, rounding_mode="floor")     # (B,) T_b = ceil(L_b / p)
            T = int(tokens.max())
            shift = tokens * p - lengths                                      # (B,) zeros before step 0
            src = torch.arange(T * p, device=x.device)[None, :] - shift[:, None]   # (B, T*p) source step
            inside = (src >= 0) & (src < lengths[:, None])
            idx = src.clamp(0, L - 1)[..., None].expand(B, T * p, x.shape[-1])
            x = torch.where(inside[..., None], x.gather(1, idx), torch.zeros((), dtype=dtype, device=x.device))
            x = x.reshape(B, T, p * x.shape[-1])
            lengths = tokens
            valid = torch.arange(T, device=x.device) < lengths[:, None]      # (B, T)
        e = self.embed(x)                                                     # (B, T, d_model)
        y, _ = self.model(e)                                                  # (B, T, d_model)
        pooled = self._pool(y, lengths, valid)
        if self.model_rev is not None:  # token t of series b <-> token lengths[b] - 1 - t; padding stays
            t = torch.arange(e.shape[1], device=e.device)
            rev = torch.where(valid, lengths[:, None] - 1 - t, t)[..., None].expand_as(e)   # (B, T, d_model)
            y_rev, _ = self.model_rev(e.gather(1, rev))                       # (B, T, d_model), reversed order
            pooled = pooled + self._pool(y_rev, lengths, valid)
        return pooled

    def _pool(self, y: torch.Tensor, lengths: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        """y (B, T, D) -> (B, D): the output at each sequence's last valid token, or the mean over its valid tokens."""
        if self.pooling == "last":
            return y[torch.arange(y.shape[0], device=y.device), lengths - 1]
        y = torch.where(valid[..., None], y, torch.zeros((), dtype=y.dtype, device=y.device))
        return y.sum(dim=1) / lengths[:, None].to(y.dtype)

    def forward(self, x: torch.Tensor, lengths: Optional[torch.Tensor] = None) -> torch.Tensor:
        """x (B, L, C) right-padded (with anything, or with NaN and lengths=None); lengths (B,)
        integer in [1, L] or None -> logits (B, n_classes)."""
        return self.out(self.drop(self.features(x, lengths)))


def collate_unequal(batch: Sequence[Tuple[Any, Any]]) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """DataLoader collate_fn: a list of (x (L_i, C), label) -> (x (B, L_max, C) zero-padded on the
    right, lengths (B,) long, labels (B,)). x may be a tensor or an array; labels are stacked
    with torch.as_tensor (class indices give a long tensor)."""
    if len(batch) == 0:
        raise ValueError("collate_unequal: empty batch")
    xs: List[torch.Tensor] = []
    labels = []
    for i, item in enumerate(batch):
        if not isinstance(item, (tuple, list)) or len(item) != 2:
            raise ValueError(f"collate_unequal: item {i} must be a pair (x (L_i, C), label), got {type(item).__name__}")
        x = torch.as_tensor(item[0])
        if x.dim() != 2 or x.shape[0] < 1 or x.shape[1] != (xs[0].shape[1] if xs else x.shape[1]):
            want = "(L_i, C) with L_i >= 1" + (f" and C = {xs[0].shape[1]}" if xs else "")
            raise ValueError(f"collate_unequal: x of item {i} must have shape {want}, got {tuple(x.shape)}")
        xs.append(x)
        labels.append(torch.as_tensor(item[1]))
    lengths = torch.tensor([x.shape[0] for x in xs], dtype=torch.long)
    padded = torch.nn.utils.rnn.pad_sequence(xs, batch_first=True, padding_value=0.0)
    return padded, lengths, torch.stack(labels)


def classification_loss(model: nn.Module, batch: Any) -> Tuple[torch.Tensor, Dict[str, float]]:
    """A `loss_fn` for rlts.trainer.Trainer: batch = (x, lengths, labels) from collate_unequal, or
    (x, labels) for equal-length (or NaN-padded) series. Cross-entropy; metrics loss and accuracy.
    A pure function of the model and the batch: augmentation is the Trainer's `batch_transform`
    (rlts.data.augment.BatchAugment), applied to training batches before they get here."""
    if len(batch) == 3:
        x, lengths, labels = batch
    elif len(batch) == 2:
        (x, labels), lengths = batch, None
    else:
        raise ValueError(f"classification_loss: batch must be (x, lengths, labels) or (x, labels), got {len(batch)} items")
    device = next(model.parameters()).device
    x, labels = x.to(device), labels.to(device).long()
    logits = model(x, None if lengths is None else lengths.to(device))  # (B, n_classes)
    loss = F.cross_entropy(logits, labels)
    acc = (logits.argmax(dim=-1) == labels).float().mean()
    return loss, {"loss": float(loss.detach()), "accuracy": float(acc)}


@torch.no_grad()
def predict_proba(model: nn.Module, data: Dataset, batch_size: int, device: Optional[torch.device] = None,
                  by_length: bool = False) -> np.ndarray:
    """Class probabilities (N, n_classes), float64, of every series of `data` (items (x (L_i, C),
    label), such as rlts.data.panel.PanelDataset; the labels are not read), in the order of
    `data`: the softmax of the model's logits, in eval mode, on batches of `batch_size` series
    right-padded by collate_unequal. The prediction is their argmax.

    device: where the batches go (default: the device of the model's parameters).
    by_length: batch the series in order of their lengths (stable), so that each batch pads
    less; the rows still come back in the order of `data`."""
    if batch_size < 1:
        raise ValueError(f"predict_proba: batch_size must be at least 1, got {batch_size}")
    if len(data) == 0:
        raise ValueError("predict_proba: the dataset is empty")
    if device is None:
        device = next(model.parameters()).device
    model.eval()
    order = np.arange(len(data))                                          # (N,) the batching order
    if by_length:
        order = np.argsort([data[i][0].shape[0] for i in range(len(data))], kind="stable")
    loader = DataLoader(Subset(data, order.tolist()), batch_size=batch_size, shuffle=False, collate_fn=collate_unequal)
    out = []
    for x, lengths, _ in loader:                                          # x (B, L_max, C), lengths (B,)
        logits = model(x.to(device), lengths.to(device))                  # (B, n_classes)
        out.append(torch.softmax(logits.cpu().double(), dim=-1))          # float64 on the CPU (not on MPS)
    proba = torch.cat(out).numpy()                                        # (N, n_classes) in batching order
    return proba if not by_length else proba[np.argsort(order)]
