"""Data augmentation for time-series classification, on padded batches of unequal lengths.

    x = augment_batch(x, lengths, ["window_warp"])   # x (B, L, C), lengths (B,) -> x: same shape
    Trainer(..., batch_transform=BatchAugment(["window_warp"]))   # every training batch, not evaluation

Four standard transforms, with the settings of Iwana & Uchida's survey of augmentation for
time-series classification with neural networks (PLoS ONE 2021; 12 methods on the 128 UCR
datasets):
- `jitter`: add Gaussian noise, sigma 0.03 (Um et al. 2017);
- `scaling`: multiply each channel of a series by a factor drawn from N(1, 0.1^2) (Um et al. 2017);
- `window_slice`: keep a random window of ceil(0.9 L) steps and stretch it back to L steps
  (Le Guennec et al. 2016);
- `window_warp`: speed up or slow down (factor 2 or 1/2) a random window of ceil(0.1 L) steps
  and resample the whole series back to L steps (Le Guennec et al. 2016).

Each series keeps its length (L_i steps of a padded batch, the padding untouched), so
`lengths` and the padding masks stay valid. Inside a batch, each series is transformed with
probability `p` (default 1/2: half the series a model sees are the originals, as when the
survey adds one augmented copy of the training set to it), by every transform named, in the
order given. Random draws come from torch's CPU generator (the global one unless a CPU
`generator` is given) and are moved to x's device, so a seeded training run stays reproducible
and resumable, on a GPU too.

The time transforms are written as a source time per output step (`slice_times`,
`warp_times`) and one linear interpolation (`resample`); tests compare them with np.interp
loops in float64.
"""
from __future__ import annotations

from typing import Callable, Dict, Optional, Sequence, Tuple

import torch

JITTER_SIGMA = 0.03
SCALING_SIGMA = 0.1
SLICE_RATIO = 0.9
WARP_RATIO = 0.1
WARP_SCALES = (0.5, 2.0)


def _valid(x: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    return (torch.arange(x.shape[1], device=x.device)[None, :] < lengths[:, None])[..., None]   # (B, L, 1)


def resample(x: torch.Tensor, lengths: torch.Tensor, src: torch.Tensor) -> torch.Tensor:
    """Linear interpolation of each series at fractional source times.

    x (B, L, C); lengths (B,); src (B, L) source times, clamped to [0, lengths - 1] -> (B, L, C):
    step t of series b is x[b] read at time src[b, t]; steps t >= lengths[b] are copied from x."""
    B, L, C = x.shape
    last = (lengths - 1).to(src.dtype)[:, None]                       # (B, 1)
    s = torch.minimum(src.clamp(min=0), last)                          # (B, L)
    lo = s.floor().long()
    hi = torch.minimum(lo + 1, (lengths - 1)[:, None])                 # (B, L)
    frac = (s - lo.to(s.dtype)).to(x.dtype)[..., None]                 # (B, L, 1)
    x_lo = x.gather(1, lo[..., None].expand(B, L, C))
    x_hi = x.gather(1, hi[..., None].expand(B, L, C))
    return torch.where(_valid(x, lengths), x_lo + frac * (x_hi - x_lo), x)


def _steps(lengths: torch.Tensor, L: int) -> Tuple[torch.Tensor, torch.Tensor]:
    """Output times t (1, L) and each series' last time L_b - 1 (B, 1), in float64."""
    t = torch.arange(L, dtype=torch.float64, device=lengths.device)[None, :]
    return t, (lengths - 1).to(torch.float64)[:, None]


def slice_times(lengths: torch.Tensor, L: int, u: torch.Tensor, ratio: float = SLICE_RATIO) -> torch.Tensor:
    """Source times (B, L) of window slicing: a window of w_b = ceil(ratio L_b) steps starting at
    step floor(u_b (L_b - w_b + 1)) (u (B,) uniform in [0, 1)), stretched over the L_b steps."""
    n = lengths.to(torch.float64)
    w = torch.ceil(ratio * n).clamp(min=1)                             # (B,) window length
    start = torch.floor(u.to(torch.float64) * (n - w + 1)).clamp(max=n - w)   # (B,)
    t, last = _steps(lengths, L)
    step = (w[:, None] - 1) / last.clamp(min=1)                        # (B, 1) source steps per output step
    return start[:, None] + t * step


def warp_times(lengths: torch.Tensor, L: int, u: torch.Tensor, scale: torch.Tensor,
               ratio: float = WARP_RATIO) -> torch.Tensor:
    """Source times (B, L) of window warping: the window of n_b = ceil(ratio L_b) steps from step
    a_b = floor(u_b (L_b - n_b)) to a_b + n_b is played `scale` (B,) times slower (its duration
    becomes scale n_b), then the warped series is resampled to L_b evenly spaced steps.

    The warp maps original time s to w(s) = s before a, a + scale (s - a) inside the window and
    s + (scale - 1) n after it; output step t sits at warped time t D / (L_b - 1), where
    D = L_b - 1 + (scale - 1) n is the warped duration, and reads the original at w^-1 of that."""
    n_len = lengths.to(torch.float64)
    n = torch.ceil(ratio * n_len).clamp(max=(n_len - 1).clamp(min=0))  # (B,) window length (0 if L_b = 1)
    a = torch.floor(u.to(torch.float64) * (n_len - n)).clamp(max=n_len - 1 - n)   # (B,) window start
    k = scale.to(torch.float64)                                        # (B,)
    t, last = _steps(lengths, L)
    D = last + ((k - 1) * n)[:, None]                                  # (B, 1) warped duration
    tw = t * D / last.clamp(min=1)                                     # (B, L) warped time of each step
    a, n, k = a[:, None], n[:, None], k[:, None]
    return torch.where(tw <= a, tw, torch.where(tw <= a + k * n, a + (tw - a) / k, tw - (k - 1) * n))


def _uniform(n: int, generator: Optional[torch.Generator]) -> torch.Tensor:
    return torch.rand(n, generator=generator, dtype=torch.float64)


def jitter(x, lengths, generator=None, sigma: float = JITTER_SIGMA):
    """x + sigma N(0, 1) on the valid steps."""
    noise = torch.randn(x.shape, generator=generator, dtype=torch.float64).to(x.device, x.dtype)
    return torch.where(_valid(x, lengths), x + sigma * noise, x)


def scaling(x, lengths, generator=None, sigma: float = SCALING_SIGMA):
    """Each channel of each series times a factor from N(1, sigma^2)."""
    factor = 1 + sigma * torch.randn((x.shape[0], 1, x.shape[2]), generator=generator, dtype=torch.float64)
    return torch.where(_valid(x, lengths), x * factor.to(x.device, x.dtype), x)


def window_slice(x, lengths, generator=None, ratio: float = SLICE_RATIO):
    """A random window of ceil(ratio L_b) steps, stretched back to L_b steps."""
    u = _uniform(x.shape[0], generator).to(x.device)
    return resample(x, lengths, slice_times(lengths, x.shape[1], u, ratio))


def window_warp(x, lengths, generator=None, ratio: float = WARP_RATIO, scales: Sequence[float] = WARP_SCALES):
    """A random window of ceil(ratio L_b) steps slowed down or sped up by a factor drawn from
    `scales`, the series resampled back to L_b steps."""
    B = x.shape[0]
    u = _uniform(B, generator).to(x.device)
    pick = torch.randint(len(scales), (B,), generator=generator)
    scale = torch.tensor(scales, dtype=torch.float64)[pick].to(x.device)
    return resample(x, lengths, warp_times(lengths, x.shape[1], u, scale, ratio))


AUGMENTATIONS: Dict[str, Callable] = {"jitter": jitter, "scaling": scaling, "window_slice": window_slice,
                                      "window_warp": window_warp}


def check_augment(names: Sequence[str], what: str = "augment") -> Tuple[str, ...]:
    """The names as a tuple ("a,b" items split at commas; "none" alone: no augmentation);
    ValueError naming an unknown one."""
    if isinstance(names, str):
        names = [names]
    if not isinstance(names, (list, tuple)):
        raise ValueError(f"{what} must be a list of names, got {names!r}")
    names = [n.strip() for item in names for n in str(item).split(",") if n.strip()]
    if names == ["none"]:
        return ()
    for name in names:
        if name not in AUGMENTATIONS:
            raise ValueError(f"{what}: unknown augmentation {name!r}; choose from {', '.join(AUGMENTATIONS)}")
    return tuple(names)


def augment_batch(x: torch.Tensor, lengths: Optional[torch.Tensor], names: Sequence[str], p: float = 0.5,
                  generator: Optional[torch.Generator] = None) -> torch.Tensor:
    """x (B, L, C) right-padded, lengths (B,) (None: all L) -> x augmented (B, L, C): each series,
    with probability p, goes through every transform in `names`, in order."""
    names = check_augment(names)
    if not names or x.shape[0] == 0:
        return x
    if not 0.0 <= p <= 1.0:
        raise ValueError(f"augment_batch: p must lie in [0, 1], got {p}")
    B, L, _ = x.shape
    if lengths is None:
        lengths = torch.full((B,), L, dtype=torch.long, device=x.device)
    lengths = lengths.to(x.device).long()
    chosen = (torch.rand(B, generator=generator, dtype=torch.float64) < p).to(x.device)   # (B,)
    out = x
    for name in names:
        out = AUGMENTATIONS[name](out, lengths, generator)
    return torch.where(chosen[:, None, None], out, x)



def _nan_padded_lengths(x: torch.Tensor) -> torch.Tensor:
    """Lengths (B,) of a right-NaN-padded batch x (B, L, C): L minus each series' trailing time
    steps whose channels are all NaN; ValueError for a NaN before them or an all-NaN series."""
    B, L, _ = x.shape
    if not x.is_floating_point() or not bool(torch.isnan(x).any()):
        return torch.full((B,), L, dtype=torch.long, device=x.device)
    nan = torch.isnan(x)                                                 # (B, L, C)
    trailing = nan.all(dim=-1).flip(1).long().cumprod(dim=1).flip(1).bool()   # (B, L) trailing all-NaN steps
    lengths = L - trailing.sum(dim=1)                                    # (B,)
    inside = nan.any(dim=-1) & ~trailing
    if bool(inside.any()):
        b, t = (int(i) for i in inside.nonzero()[0])
        raise ValueError(f"augment: NaN inside a series at batch index {b}, time step {t}: only trailing all-NaN "
                         "time steps are read as padding; impute missing values first")
    if bool((lengths == 0).any()):
        raise ValueError(f"augment: the series at batch index {int((lengths == 0).nonzero()[0, 0])} is all NaN")
    return lengths


class BatchAugment:
    """Augmentation as a batch transform of rlts.trainer.Trainer (`batch_transform=`), which
    applies it to each training batch after moving it to the device, never in `evaluate`:

        trainer = Trainer(model, classification_loss, cfg, collate_fn=collate_unequal,
                          batch_transform=BatchAugment(["window_warp"]))

    A batch is (x (B, L, C), lengths (B,), labels), right-padded (rlts.heads.classify.
    collate_unequal), or (x (B, L, C), labels) of equal-length series or of series right-padded
    with all-NaN time steps (their lengths: L minus the trailing all-NaN steps). The transform
    returns the same batch with x augmented (`augment_batch` with `names`, `p`, `generator`;
    same shape), every other item unchanged. No names: the batch is returned as it is."""

    def __init__(self, names: Sequence[str], p: float = 0.5, generator: Optional[torch.Generator] = None):
        self.names = check_augment(names)
        if not 0.0 <= p <= 1.0:
            raise ValueError(f"BatchAugment: p must lie in [0, 1], got {p}")
        self.p, self.generator = p, generator

    def __repr__(self) -> str:
        return f"BatchAugment({list(self.names)}, p={self.p})"

    def __call__(self, batch):
        if not isinstance(batch, (tuple, list)) or len(batch) not in (2, 3):
            got = f"{len(batch)} items" if isinstance(batch, (tuple, list)) else f"a {type(batch).__name__}"
            raise ValueError(f"BatchAugment: a batch must be (x, lengths, labels) or (x, labels), got {got}")
        x = batch[0]
        if not isinstance(x, torch.Tensor) or x.dim() != 3:
            shape = tuple(x.shape) if hasattr(x, "shape") else type(x).__name__
            raise ValueError(f"BatchAugment: x must have shape (B, L, C), got {shape}")
        if not self.names:
            return batch
        B, L, _ = x.shape
        if len(batch) == 3:
            lengths = torch.as_tensor(batch[1])
            integer = not (lengths.is_floating_point() or lengths.is_complex() or lengths.dtype == torch.bool)
            if lengths.shape != (B,) or not integer:
                raise ValueError(f"BatchAugment: lengths must be an integer tensor of shape (B,) = ({B},), "
                                 f"got {lengths.dtype} {tuple(lengths.shape)}")
            if B and (int(lengths.min()) < 1 or int(lengths.max()) > L):
                raise ValueError(f"BatchAugment: lengths must lie in [1, L] = [1, {L}], got min {int(lengths.min())}, "
                                 f"max {int(lengths.max())}")
        else:
            lengths = _nan_padded_lengths(x)
        out = augment_batch(x, lengths.to(x.device), self.names, self.p, self.generator)   # (B, L, C)
        return type(batch)((out, *batch[1:]))
