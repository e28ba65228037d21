"""Loss and target functions of a Drama-style world-model agent (DreamerV3 / STORM family).

- `symlog` / `symexp`: the squashing transform of rewards and values and its inverse.
- `TwoHot`: discrete regression of scalars on bins equally spaced in symlog space.
- `unimix`, `sample_straight_through`: the 32x32 categorical latent (1% uniform mix,
  straight-through one-hot samples).
- `categorical_kl`, `kl_losses`: dynamics / representation KL losses with free bits.
- `lambda_returns`, `ReturnScale`: the actor-critic targets and the percentile return
  normaliser of DreamerV3.
"""
import math

import torch
import torch.nn as nn
import torch.nn.functional as F


def at_least_float32(x: torch.Tensor) -> torch.Tensor:
    """x in float64 if it is float64, else float32 (half / bfloat16 / integer inputs upcast)."""
    return x if x.dtype == torch.float64 else x.float()


def symlog(x: torch.Tensor) -> torch.Tensor:
    """sign(x) * log(1 + |x|), elementwise."""
    return torch.sign(x) * torch.log1p(torch.abs(x))


def symexp(x: torch.Tensor) -> torch.Tensor:
    """sign(x) * (exp(|x|) - 1), elementwise: the inverse of `symlog`."""
    return torch.sign(x) * torch.expm1(torch.abs(x))


class TwoHot(nn.Module):
    """Two-hot discrete regression, DreamerV3 convention.

    The `n_bins` bins are equally spaced in symlog space over [low, high] (buffer `bins`,
    in symlog units). A scalar x is encoded as symlog(x) spread linearly over its two
    neighbouring bins (clipped to the end bins outside [low, high]); logits are decoded as
    symexp of the softmax-weighted mean of the bins. With the default range +-20, targets
    up to symexp(20) ~ 4.85e8 in magnitude are represented; +-1e6 is symlog 13.8.
    Half-precision inputs are upcast: encode, decode and loss compute (and return) float32,
    or float64 for float64 inputs.
    """

    def __init__(self, n_bins: int = 255, low: float = -20.0, high: float = 20.0):
        super().__init__()
        if n_bins < 2:
            raise ValueError(f"TwoHot needs n_bins >= 2, got {n_bins}")
        if not low < high:
            raise ValueError(f"TwoHot needs low < high, got low={low}, high={high}")
        self.n_bins, self.low, self.high = int(n_bins), float(low), float(high)
        # (low (n-1-i) + high i) / (n-1) in float64: exact ends, and an exact 0 for a symmetric range
        i = torch.arange(n_bins, dtype=torch.float64)
        bins = (self.low * (n_bins - 1 - i) + self.high * i) / (n_bins - 1)  # (n_bins,)
        self.register_buffer("bins", bins.float(), persistent=False)

    def _check(self, logits: torch.Tensor) -> None:
        if logits.shape[-1] != self.n_bins:
            raise ValueError(f"TwoHot expects logits (..., {self.n_bins}), got {tuple(logits.shape)}")

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """Two-hot weights (..., n_bins) of symlog(x) (...); each row sums to 1."""
        x = at_least_float32(x)  # bins of a bfloat16 grid would collide
        bins = self.bins.to(x.dtype)
        y = symlog(x).clamp(self.low, self.high)  # (...)
        pos = (y - self.low) / (self.high - self.low) * (self.n_bins - 1)
        below = pos.floor().long().clamp(0, self.n_bins - 2)  # (...)
        above = below + 1
        # weights from the stored bins so that decode(encode) is consistent with `bins`
        w_above = ((y - bins[below]) / (bins[above] - bins[below])).clamp(0.0, 1.0)  # (...)
        out = torch.zeros(*y.shape, self.n_bins, dtype=y.dtype, device=y.device)
        out.scatter_(-1, below.unsqueeze(-1), (1.0 - w_above).unsqueeze(-1))
        out.scatter_add_(-1, above.unsqueeze(-1), w_above.unsqueeze(-1))
        return out  # (..., n_bins)

    def decode(self, logits: torch.Tensor) -> torch.Tensor:
        """Expected value symexp(sum softmax(logits) * bins): (..., n_bins) -> (...)."""
        self._check(logits)
        probs = torch.softmax(at_least_float32(logits), dim=-1)  # (..., n_bins)
        return symexp((probs * self.bins.to(probs.dtype)).sum(-1))

    def loss(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Cross-entropy -sum encode(target) * log_softmax(logits): (..., n_bins), (...) -> (...).

        The target is detached (it is a regression target, not a function to train)."""
        self._check(logits)
        if target.shape != logits.shape[:-1]:
            raise ValueError(f"TwoHot.loss: target shape {tuple(target.shape)} does not match "
                             f"logits {tuple(logits.shape)} without the bin dim")
        logp = torch.log_softmax(at_least_float32(logits), dim=-1)  # (..., n_bins)
        weights = self.encode(target.detach()).to(logp.dtype)  # (..., n_bins)
        return -(weights * logp).sum(-1)


def unimix(logits: torch.Tensor, mix: float = 0.01) -> torch.Tensor:
    """Log-probabilities of (1 - mix) * softmax(logits) + mix / K over the last dim (K classes),
    in float32 at least (half-precision logits, e.g. under autocast, are upcast)."""
    if not 0.0 <= mix <= 1.0:
        raise ValueError(f"unimix: mix must lie in [0, 1], got {mix}")
    logp = torch.log_softmax(at_least_float32(logits), dim=-1)
    if mix == 0.0:
        return logp
    k = logits.shape[-1]
    uniform = torch.full_like(logp, math.log(mix / k))  # (..., K)
    if mix == 1.0:
        return uniform
    # log((1 - mix) p + mix / K), stable for tiny p
    return torch.logaddexp(logp + math.log1p(-mix), uniform)


def sample_straight_through(logits: torch.Tensor) -> torch.Tensor:
    """One-hot sample per row of the last dim from softmax(logits), with straight-through
    gradients: returns one_hot + (probs - probs.detach()) (same shape as logits), exactly
    one-hot in the forward pass. Uses the
    global torch RNG."""
    if logits.dim() < 1 or logits.shape[-1] < 1:
        raise ValueError(f"sample_straight_through: need a non-empty class dim, got {tuple(logits.shape)}")
    probs = torch.softmax(logits, dim=-1)  # (..., K)
    k = probs.shape[-1]
    idx = torch.multinomial(at_least_float32(probs.detach()).reshape(-1, k), 1)  # (N, 1)
    one_hot = F.one_hot(idx.squeeze(-1), k).reshape(probs.shape).to(probs.dtype)  # (..., K)
    return one_hot + (probs - probs.detach())  # forward exactly one-hot, gradient through probs


def categorical_kl(p_logits: torch.Tensor, q_logits: torch.Tensor) -> torch.Tensor:
    """KL(p || q) of factorised categoricals, summed over the classes (last dim) and the
    variables (second to last): (..., V, K), (..., V, K) -> (...), in float32 at least."""
    if p_logits.shape != q_logits.shape:
        raise ValueError(f"categorical_kl: shapes differ, {tuple(p_logits.shape)} vs {tuple(q_logits.shape)}")
    if p_logits.dim() < 2:
        raise ValueError(f"categorical_kl: need (..., variables, classes), got {tuple(p_logits.shape)}")
    logp = torch.log_softmax(at_least_float32(p_logits), dim=-1)  # (..., V, K)
    logq = torch.log_softmax(at_least_float32(q_logits), dim=-1)
    return (logp.exp() * (logp - logq)).sum((-2, -1))


def kl_losses(post_logits: torch.Tensor, prior_logits: torch.Tensor, free_bits: float = 1.0):
    """Dynamics and representation losses, Drama / STORM convention.

    post_logits, prior_logits: (..., V, K). Returns scalars (dyn, rep, kl):
      dyn = max(free_bits, mean KL(sg(post) || prior))  -> gradient only to the prior,
      rep = max(free_bits, mean KL(post || sg(prior)))  -> gradient only to the posterior,
      kl  = mean KL(post || prior), detached, for logging.
    The mean runs over all leading dims of the KL summed over the variables; the free-bits
    clip acts on that batch mean, and a clipped loss has zero gradient.
    """
    if free_bits < 0:
        raise ValueError(f"kl_losses: free_bits must be >= 0, got {free_bits}")
    dyn = categorical_kl(post_logits.detach(), prior_logits).mean()
    rep = categorical_kl(post_logits, prior_logits.detach()).mean()
    kl = dyn.detach()  # same value as KL(post || prior)
    return dyn.clamp(min=free_bits), rep.clamp(min=free_bits), kl


RETURN_BOOTSTRAPS = ("next", "current")
"""The values of `lambda_returns`' `bootstrap`."""


def lambda_returns(rewards: torch.Tensor, continues: torch.Tensor, values: torch.Tensor,
                   gamma: float, lam: float, bootstrap: str = "next") -> torch.Tensor:
    """TD(lambda) returns of an imagined rollout.

    rewards, continues: (B, H); values: (B, H + 1). Returns R: (B, H), accumulated in float32
    at least (half-precision inputs are upcast), with R_H = V_H and, by `bootstrap`,
      next:    R_t = r_t + gamma c_t ((1 - lam) V_{t+1} + lam R_{t+1})   (TD(lambda), DreamerV3)
      current: R_t = r_t + gamma c_t ((1 - lam) V_t + lam R_{t+1})       (Drama's and STORM's
               calc_lambda_return: the one-step bootstrap reads the value of step t itself).
    """
    if rewards.dim() != 2 or continues.shape != rewards.shape:
        raise ValueError(f"lambda_returns: rewards and continues must both be (B, H), got "
                         f"{tuple(rewards.shape)} and {tuple(continues.shape)}")
    b, h = rewards.shape
    if values.shape != (b, h + 1):
        raise ValueError(f"lambda_returns: values must be (B, H + 1) = ({b}, {h + 1}), "
                         f"got {tuple(values.shape)}")
    if not 0.0 <= lam <= 1.0:
        raise ValueError(f"lambda_returns: lam must lie in [0, 1], got {lam}")
    if bootstrap not in RETURN_BOOTSTRAPS:
        raise ValueError(f"lambda_returns: unknown bootstrap {bootstrap!r}; use one of {', '.join(RETURN_BOOTSTRAPS)}")
    rewards, continues, values = at_least_float32(rewards), at_least_float32(continues), at_least_float32(values)
    disc = gamma * continues  # (B, H)
    # (1 - lam) V + r_t part does not depend on R_{t+1}: compute it for all t at once
    boot = values[:, 1:] if bootstrap == "next" else values[:, :-1]  # (B, H)
    base = rewards + disc * (1.0 - lam) * boot  # (B, H)
    ret = values[:, -1]  # (B,) R_H
    out = []
    for t in reversed(range(h)):
        ret = base[:, t] + disc[:, t] * lam * ret  # (B,)
        out.append(ret)
    return torch.stack(out[::-1], dim=1)  # (B, H)


class ReturnScale(nn.Module):
    """DreamerV3 return normaliser (a module with buffers, no parameters).

    Keeps EMAs (decay 0.99) of the 5th and 95th percentiles of each batch of lambda-returns.
    As in DreamerV3 the EMAs start from 0 and have no bias correction: after the first
    update they equal 0.01 * the batch percentiles, so the scale stays at its floor 1 until
    the percentile range has grown. `update(returns)` returns
    scale = max(1, P95_ema - P5_ema); divide advantages by it. `low` is the P5 EMA.
    State: the buffers `low` and `high` (float32 scalars), saved in `state_dict()`.
    """

    def __init__(self, decay: float = 0.99, low_q: float = 0.05, high_q: float = 0.95,
                 min_scale: float = 1.0):
        super().__init__()
        if not 0.0 <= decay < 1.0:
            raise ValueError(f"ReturnScale: decay must lie in [0, 1), got {decay}")
        if not 0.0 <= low_q < high_q <= 1.0:
            raise ValueError(f"ReturnScale: need 0 <= low_q < high_q <= 1, got {low_q}, {high_q}")
        self.decay, self.low_q, self.high_q, self.min_scale = decay, low_q, high_q, min_scale
        self.register_buffer("low", torch.zeros(()))
        self.register_buffer("high", torch.zeros(()))

    @property
    def scale(self) -> torch.Tensor:
        """Current scale max(min_scale, high - low), a 0-d tensor."""
        return torch.clamp(self.high - self.low, min=self.min_scale)

    @torch.no_grad()
    def update(self, returns: torch.Tensor) -> torch.Tensor:
        """Fold in the percentiles of a batch of returns (any shape) and return the new scale."""
        if returns.numel() == 0:
            raise ValueError("ReturnScale.update: empty returns")
        x = returns.detach().reshape(-1).to(self.low.device, torch.float32)
        q = torch.quantile(x, torch.tensor([self.low_q, self.high_q], device=x.device))  # (2,)
        self.low.mul_(self.decay).add_((1.0 - self.decay) * q[0])
        self.high.mul_(self.decay).add_((1.0 - self.decay) * q[1])
        return self.scale
