"""Event forecasting (neural temporal point processes): when does the next event happen, and
what is it?

    model = EventModel(n_marks=22, backbone="aaren", d_model=64, n_layers=2)
    model.set_time_scale(train_batch)                 # standardise log inter-event times
    dist, mark_logits = model(batch)                  # LogNormalMixture over (B, L), (B, L, M)
    loss, metrics = event_loss(model, batch)          # the Trainer's loss_fn
    dt_hat, mark_hat = model.predict_next(batch)      # (B, L) each: mixture mean, argmax mark
    metrics = evaluate_events(model, test_loader)     # exact per-event test metrics

    dist, logits, state = model.start(batch_size)     # streaming: prediction for event 0
    dist, logits, state = model.step(dt_t, mark_t, state)   # after one more event: O(1)
    dist, logits, state = model.read(dt, marks, copies=n)   # whole histories at once, then step

    dist.cdf(tau), dist.quantile(0.5), dist.mean()          # float64 quantiles by bisection
    tau = dist.sample((1000,), generator=torch.Generator().manual_seed(0))

The batch is a dict (as built by `rlts.data.events.collate_events`):
    "dt"       float (B, L): dt[b, i] = t_i - t_{i-1} (dt[b, 0]: origin to the first event),
               >= 0, in scaled units; padding anything (it is never read)
    "marks"    int64 (B, L): event types in [0, n_marks) (zeros when the data have none)
    "lengths"  int64 (B,): the number of real events, 1 <= lengths <= L
    "has_marks"      bool (optional, default True): False for unmarked data (needs n_marks = 1)
    "predict_first"  bool (optional, default True): False -> event 0 is not scored, it only
               starts the history

Model (the intensity-free approach of Shchur et al. 2020, with an rlts sequence model as
the history encoder): event i is predicted from events 0..i-1 only,

    p(tau_i, m_i | history) = p(tau_i | h_i) * p(m_i | h_i)      (independent given h_i)
    p(tau | h) = sum_k w_k LogNormal(tau; mu_k, sigma_k)            (LogNormalMixture)
    p(m | h)   = softmax(mark logits)

where h_i is the backbone output after reading [start, e_0, ..., e_{i-1}]: a learned start
token followed by the event embeddings, i.e. the inputs shifted right by one.

Time NLL is a density in the batch's (scaled) time units: -log p(tau) for times divided by
a factor c is the NLL in original units minus log(c) per event
(`rlts.data.events.TimeScale.nll_to_data` adds it back).
"""
from __future__ import annotations

import math
from typing import Any, Dict, Iterable, List, Mapping, NamedTuple, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from rlts.nn.model import SequenceModel

LOG_SCALE_MIN = -5.0
"""Smallest log sigma of a mixture component (sigma ~ 0.0067: a relative spread of ~0.7%)."""
LOG_SCALE_MAX = 2.0
"""Largest log sigma (sigma ~ 7.4); keeps exp(mu + sigma^2 / 2) (the mean) finite in float32."""
_HALF_LOG_2PI = 0.5 * math.log(2 * math.pi)


# --------------------------------------------------------------------------------------------
# The distribution


class LogNormalMixture(NamedTuple):
    """A mixture of K log-normal distributions over tau > 0, for every element of a batch shape.

        p(tau) = sum_k w_k / (tau sigma_k sqrt(2 pi)) exp(-(log tau - mu_k)^2 / (2 sigma_k^2))
        w = softmax(logits),  sigma_k = exp(log_scales_k)

    Fields (each (..., K), the same batch shape "..."):
        logits: unnormalised log mixture weights.
        locs: mu_k, the means of log tau.
        log_scales: log sigma_k. Clamped to [LOG_SCALE_MIN, LOG_SCALE_MAX] = [-5, 2] by every
            method (EventModel's decoder maps into that range smoothly, so the clamp never
            acts on its outputs; it only guards hand-made parameters).

    A NamedTuple (a pytree of tensors), so it can be returned from a module's forward under
    DistributedDataParallel. Every method is exact (no sampling approximations); the tails
    use log-space normal CDFs (`torch.special.log_ndtr`), so survival probabilities far
    out are tiny but finite in log space rather than log(0) = -inf.
    """

    logits: torch.Tensor
    locs: torch.Tensor
    log_scales: torch.Tensor

    # -- parameters --------------------------------------------------------------------------

    @property
    def batch_shape(self) -> torch.Size:
        return self.locs.shape[:-1]

    @property
    def n_components(self) -> int:
        return self.locs.shape[-1]

    def log_weights(self) -> torch.Tensor:  # (..., K)
        return torch.log_softmax(self.logits, dim=-1)

    def scales(self) -> torch.Tensor:  # (..., K)
        return self.clamped_log_scales().exp()

    def clamped_log_scales(self) -> torch.Tensor:  # (..., K)
        return self.log_scales.clamp(LOG_SCALE_MIN, LOG_SCALE_MAX)

    # -- densities ---------------------------------------------------------------------------

    def _standardise(self, tau: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """tau (broadcastable to the batch shape) -> (positive, safe log tau (..., 1), z (..., K)).
        z_k = (log tau - mu_k) / sigma_k; tau <= 0 is replaced by 1 (callers mask it)."""
        tau = torch.as_tensor(tau, dtype=self.locs.dtype, device=self.locs.device)
        positive = tau > 0
        log_tau = torch.log(torch.where(positive, tau, torch.ones_like(tau))).unsqueeze(-1)
        z = (log_tau - self.locs) / self.scales()
        return positive, log_tau, z

    def log_prob(self, tau: torch.Tensor) -> torch.Tensor:
        """log p(tau), tau broadcastable to the batch shape; -inf for tau <= 0."""
        positive, log_tau, z = self._standardise(tau)
        comp = -log_tau - self.clamped_log_scales() - _HALF_LOG_2PI - 0.5 * z * z  # (..., K)
        lp = torch.logsumexp(self.log_weights() + comp, dim=-1)
        return torch.where(positive, lp, torch.full_like(lp, -math.inf))

    def log_cdf(self, tau: torch.Tensor) -> torch.Tensor:
        """log P(T <= tau); -inf for tau <= 0."""
        positive, _, z = self._standardise(tau)
        lc = torch.logsumexp(self.log_weights() + torch.special.log_ndtr(z), dim=-1)
        return torch.where(positive, lc, torch.full_like(lc, -math.inf))

    def cdf(self, tau: torch.Tensor) -> torch.Tensor:
        """P(T <= tau)."""
        return self.log_cdf(tau).exp()

    def log_survival(self, tau: torch.Tensor) -> torch.Tensor:
        """log P(T > tau) = log(1 - cdf), computed as log sum_k w_k Phi(-z_k): accurate and
        finite far in the right tail (where 1 - cdf rounds to 0); 0 for tau <= 0."""
        positive, _, z = self._standardise(tau)
        ls = torch.logsumexp(self.log_weights() + torch.special.log_ndtr(-z), dim=-1)
        return torch.where(positive, ls, torch.zeros_like(ls))

    def log_intensity(self, tau: torch.Tensor) -> torch.Tensor:
        """log hazard log lambda(tau) = log p(tau) - log P(T > tau), the conditional intensity
        tau after the last event (for plots)."""
        return self.log_prob(tau) - self.log_survival(tau)

    # -- moments and sampling ----------------------------------------------------------------

    def mean(self) -> torch.Tensor:
        """E[tau] = sum_k w_k exp(mu_k + sigma_k^2 / 2), batch shape (computed in log space)."""
        sigma = self.scales()
        return torch.logsumexp(self.log_weights() + self.locs + 0.5 * sigma * sigma, dim=-1).exp()

    def sample(self, sample_shape: Tuple[int, ...] = (), generator: Optional[torch.Generator] = None
               ) -> torch.Tensor:
        """Exact samples, shape sample_shape + batch_shape: a component k ~ Categorical(w), then
        tau = exp(mu_k + sigma_k z) with z ~ N(0, 1). Not differentiable. `generator` (on the
        parameters' device) makes the draws reproducible; None uses torch's global generator."""
        with torch.no_grad():
            sample_shape = torch.Size(sample_shape)
            shape = sample_shape + self.batch_shape
            K = self.n_components
            probs = torch.distributions.Categorical(logits=self.logits).probs.reshape(-1, K)   # (prod batch, K)
            k = torch.multinomial(probs, sample_shape.numel(), True, generator=generator)
            k = k.T.reshape(shape)                                                   # as Categorical.sample
            locs = self.locs.expand(shape + (K,)).gather(-1, k.unsqueeze(-1)).squeeze(-1)
            sigma = self.scales().expand(shape + (K,)).gather(-1, k.unsqueeze(-1)).squeeze(-1)
            z = torch.randn(shape, generator=generator, dtype=locs.dtype, device=locs.device)
            return torch.exp(locs + sigma * z)

    def quantile(self, q, max_iter: int = 200) -> torch.Tensor:
        """tau_q with P(T <= tau_q) = q, for q in (0, 1) (a number or a tensor broadcastable to
        the batch shape); float64, shape broadcast(q, batch_shape). Not differentiable.

        The mixture CDF has no closed-form inverse: bisection in x = log tau, in float64. The
        bracket [min_k, max_k] of the components' own q-quantiles mu_k + sigma_k Phi^-1(q)
        always holds the answer (every component CDF is <= q at the lower end and >= q at the
        upper one), however unequal the weights, far apart the components or narrow the scales.
        Each step compares log P(T <= tau) with log q (q <= 0.5) or log P(T > tau) with
        log(1 - q) (q > 0.5), so both tails keep their relative accuracy; it stops when the
        bracket is a few ulps wide (about 60 halvings)."""
        with torch.no_grad():
            d = self.double()
            q = torch.as_tensor(q, dtype=torch.float64, device=d.locs.device)
            if not bool(((q > 0) & (q < 1)).all()):
                raise ValueError(f"LogNormalMixture.quantile: q must lie in (0, 1), got {q.tolist()}")
            shape = torch.broadcast_shapes(q.shape, d.batch_shape)
            q = q.expand(shape)
            log_w, locs, sigma = d.log_weights(), d.locs, d.scales()                       # (..., K)
            x_k = locs + sigma * torch.special.ndtri(q).unsqueeze(-1)                     # (..., K) broadcast
            lo, hi = x_k.min(dim=-1).values, x_k.max(dim=-1).values                      # shape
            lower = q <= 0.5
            target = torch.where(lower, torch.log(q), torch.log1p(-q))
            for _ in range(max_iter):
                mid = 0.5 * (lo + hi)
                z = (mid.unsqueeze(-1) - locs) / sigma
                below_cdf = torch.logsumexp(log_w + torch.special.log_ndtr(z), dim=-1) < target
                above_sf = torch.logsumexp(log_w + torch.special.log_ndtr(-z), dim=-1) > target
                below = torch.where(lower, below_cdf, above_sf)                           # F(mid) < q
                lo, hi = torch.where(below, mid, lo), torch.where(below, hi, mid)
                if not bool(((hi - lo) > 4 * torch.finfo(torch.float64).eps * torch.maximum(lo.abs(), hi.abs())
                             .clamp_min(1.0)).any()):
                    break
            return torch.exp(0.5 * (lo + hi))

    def double(self) -> "LogNormalMixture":
        """The same mixture with float64 parameters (for float64 quantiles, means, samples)."""
        return LogNormalMixture(*(t.double() for t in self))

    def repeat_interleave(self, n: int) -> "LogNormalMixture":
        """Each element of the leading batch dimension repeated n times in place (element b
        becomes elements b n .. b n + n - 1), as `StreamState.repeat_interleave`."""
        return LogNormalMixture(*(t.repeat_interleave(n, dim=0) for t in self))


# --------------------------------------------------------------------------------------------
# Batch checks


class EventBatch(NamedTuple):
    """A checked batch on the model's device: dt (B, L) float, marks (B, L) long, lengths (B,),
    valid (B, L) real events, scored (B, L) events whose NLL counts, has_marks."""
    dt: torch.Tensor
    marks: torch.Tensor
    lengths: torch.Tensor
    valid: torch.Tensor
    scored: torch.Tensor
    has_marks: bool


def _shape(x: Any) -> Any:
    return tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__


def _flag(batch: Mapping, key: str, default: bool) -> bool:
    v = batch.get(key, default)
    if isinstance(v, torch.Tensor):
        if v.numel() != 1:  # a per-sequence flag (collated): all must agree
            if not (bool(v.all()) or not bool(v.any())):
                raise ValueError(f"EventModel: batch[{key!r}] differs between the sequences of a batch")
            v = v.reshape(-1)[0]
    return bool(v)


def _is_int(t: torch.Tensor) -> bool:
    return not (t.is_floating_point() or t.is_complex() or t.dtype == torch.bool)


# --------------------------------------------------------------------------------------------
# The model


_COPY_SCATTER_ELEMENTS = 1 << 22
"""The copy path scatters at most about this many (batch, row, column) entries at a time."""


class EventModel(nn.Module):
    """Neural temporal point process: a sequence model over past events, a log-normal mixture
    for the next inter-event time and a softmax over the next mark.

        e_i = Linear([time features of dt_i, mark embedding of m_i]) (d_model)
        h   = SequenceModel([start, e_0, ..., e_{L-2}])          (B, L, d_model), causal
        h_i -> LogNormalMixture for dt_i,  mark logits for m_i

    Time features: z = (log(dt + eps) - log_dt_mean) / log_dt_std, clipped to [-10, 10],
    and sin/cos(w z) for w in (0.5, 1, 2, 4): 9 numbers (a Fourier code of log time, so the
    Linear sees both scale and fine position). `log_dt_mean`, `log_dt_std` are buffers (saved
    with the model): set them from training data with `set_time_scale`.

    Decoder (a Linear each from h_i):
        mixture logits (K); locs mu_k = log_dt_mean + log_dt_std * raw (standardised log
        time, so the initial mixture already sits on the data's scale); log sigma_k =
        lo + (hi - lo) sigmoid(raw + c), lo, hi = LOG_SCALE_MIN, LOG_SCALE_MAX (-5, 2) - a
        smooth bound with no dead gradients - with c chosen so that raw = 0 gives sigma =
        log_dt_std.
        marks: logits = Linear(d_model, mark_dim)(h) @ E^T / sqrt(mark_dim) + bias with E
        the (n_marks, mark_dim) input mark embedding (tied), so 8227 marks cost
        8227 * mark_dim weights once, not twice. With n_marks = 1 there is no mark embedding and the logits are 0
        (mark NLL 0).
        copy_marks: a copy path from the marks of earlier events, which a tied embedding
        cannot express for thousands of rare types: with (a_i, b_i) = Linear(d_model, 2)(h_i)
        (zero at initialisation) and a learned gamma = sigmoid(g) in (0, 1),
            logits_i[m] += a_i [m = m_{i-1}] + b_i c_i[m],
            c_i[m] = sum_{j < i, m_j = m} gamma^(i-1-j)     (decayed counts of each mark),
        i.e. "the same type as the last event" and "a type seen recently, often". Streaming
        keeps c (B, M) in the state: constant in the sequence length.

    Args:
        n_marks: number of event types M (1 for unmarked data).
        backbone: a registered backbone name ("aaren", "mamba", "mamba2", "transformer", "gru").
        d_model: width of the sequence model.
        n_layers: blocks in the sequence model.
        n_components: K, log-normal mixture components.
        mark_dim: width of the mark embedding; default min(32, d_model).
        copy_marks: add the copy path above (marked data only).
        dropout: dropout on the event embeddings and on h before the decoder.
        log_dt_mean, log_dt_std: initial time standardisation (see `set_time_scale`).
        eps: added to dt before the log in the time features; also the smallest dt scored
            (dt = 0, simultaneous events, is scored as dt = eps, since a log-normal has no
            mass at 0).
        **backbone_options: passed to every block (n_heads, d_state, headdim, ...). A
            backbone's own dropout is spelled `backbone_dropout=p`.
    """

    FREQS = (0.5, 1.0, 2.0, 4.0)

    def __init__(self, n_marks: int, backbone: str = "aaren", d_model: int = 64, n_layers: int = 2,
                 n_components: int = 8, mark_dim: Optional[int] = None, dropout: float = 0.0,
                 log_dt_mean: float = 0.0, log_dt_std: float = 1.0, eps: float = 1e-6,
                 copy_marks: bool = False, **backbone_options):
        super().__init__()
        name = "EventModel"
        if isinstance(n_marks, bool) or not isinstance(n_marks, int) or n_marks < 1:
            raise ValueError(f"{name}: n_marks must be an int >= 1, got {n_marks!r}")
        if n_components < 1 or d_model < 1:
            raise ValueError(f"{name}: n_components ({n_components}) and d_model ({d_model}) must be >= 1")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"{name}: dropout must lie in [0, 1), got {dropout}")
        if not (log_dt_std > 0 and math.isfinite(log_dt_std) and math.isfinite(log_dt_mean)):
            raise ValueError(f"{name}: log_dt_std must be > 0 and log_dt_mean finite, got {log_dt_mean}, {log_dt_std}")
        if not eps > 0:
            raise ValueError(f"{name}: eps must be > 0, got {eps}")
        if "backbone_dropout" in backbone_options:
            backbone_options["dropout"] = backbone_options.pop("backbone_dropout")
        self.n_marks, self.n_components, self.eps = n_marks, n_components, float(eps)
        self.mark_dim = 0 if n_marks == 1 else (mark_dim or min(32, d_model))
        if self.mark_dim < 0:
            raise ValueError(f"{name}: mark_dim must be >= 1, got {mark_dim}")
        self.register_buffer("log_dt_mean", torch.tensor(float(log_dt_mean)))
        self.register_buffer("log_dt_std", torch.tensor(float(log_dt_std)))
        n_time = 1 + 2 * len(self.FREQS)
        self.mark_embed = nn.Embedding(n_marks, self.mark_dim) if self.mark_dim else None
        self.embed = nn.Linear(n_time + self.mark_dim, d_model)
        self.start_token = nn.Parameter(0.5 * torch.randn(d_model))
        self.drop = nn.Dropout(dropout)
        self.backbone = SequenceModel(backbone, d_model=d_model, n_layers=n_layers, **backbone_options)
        self.time_head = nn.Linear(d_model, 3 * n_components)
        if self.mark_dim:
            self.mark_head = nn.Linear(d_model, self.mark_dim)
            self.mark_bias = nn.Parameter(torch.zeros(n_marks))
        self.copy_head = None
        if copy_marks and self.mark_dim:
            self.copy_head = nn.Linear(d_model, 2)
            nn.init.zeros_(self.copy_head.weight)
            nn.init.zeros_(self.copy_head.bias)
            self.copy_decay = nn.Parameter(torch.tensor(math.log(9.0)))        # gamma = 0.9

    # -- time scale ----------------------------------------------------------------------------

    @torch.no_grad()
    def set_time_scale(self, dt: Any, lengths: Optional[torch.Tensor] = None,
                       predict_first: bool = True) -> "EventModel":
        """Set log_dt_mean / log_dt_std to the mean and std of log(dt + eps) over the scored
        events (call it once on the training data, before training).

        dt: a batch dict (its "dt", "lengths" and optional "predict_first" are used), a (B, L)
            tensor with `lengths`, or a 1-D tensor of inter-event times (e.g. every training
            dt concatenated).
        predict_first: False -> dt[:, 0] is skipped (it only starts the history, e.g. the 0
            that origin "first" puts there); ignored for 1-D input and for a dict.
        """
        if isinstance(dt, Mapping):
            predict_first = _flag(dt, "predict_first", True)
            dt, lengths = dt["dt"], dt["lengths"]
        dt = torch.as_tensor(dt).detach().cpu().double()
        if lengths is not None:
            lengths = torch.as_tensor(lengths).cpu()
            pos = torch.arange(dt.shape[1])[None, :]
            dt = dt[(pos < lengths[:, None]) & (pos >= (0 if predict_first else 1))]
        dt = dt.reshape(-1)
        if dt.numel() < 1 or not bool(torch.isfinite(dt).all()) or bool((dt < 0).any()):
            raise ValueError("EventModel.set_time_scale: needs at least one finite, non-negative dt")
        logs = torch.log(dt + self.eps)
        self.log_dt_mean.fill_(float(logs.mean()))
        self.log_dt_std.fill_(max(float(logs.std(unbiased=False)) if logs.numel() > 1 else 1.0, 1e-3))
        return self

    # -- pieces ----------------------------------------------------------------------------------

    def _dtype(self) -> torch.dtype:
        return self.embed.weight.dtype

    def _device(self) -> torch.device:
        return self.embed.weight.device

    def _embed(self, dt: torch.Tensor, marks: Optional[torch.Tensor]) -> torch.Tensor:
        """dt (...) >= 0, marks (...) long -> event embeddings (..., d_model)."""
        z = (torch.log(dt + self.eps) - self.log_dt_mean) / self.log_dt_std
        z = z.clamp(-10.0, 10.0).unsqueeze(-1)                               # (..., 1)
        w = torch.tensor(self.FREQS, dtype=z.dtype, device=z.device)
        feats = [z, torch.sin(z * w), torch.cos(z * w)]                       # (..., 9) in all
        if self.mark_embed is not None:
            feats.append(self.mark_embed(marks))                              # (..., mark_dim)
        return self.drop(self.embed(torch.cat(feats, dim=-1)))

    def _decode(self, h: torch.Tensor) -> Tuple[LogNormalMixture, torch.Tensor]:
        """Backbone outputs h (..., d_model) -> (LogNormalMixture over (...), logits (..., M)),
        without the copy path."""
        h = self.drop(h)
        logits, raw_loc, raw_scale = self.time_head(h).chunk(3, dim=-1)     # (..., K) each
        locs = self.log_dt_mean + self.log_dt_std * raw_loc
        lo, hi = LOG_SCALE_MIN, LOG_SCALE_MAX
        target = torch.log(self.log_dt_std).clamp(lo + 0.1, hi - 0.1)       # raw = 0 -> sigma = std
        offset = torch.logit((target - lo) / (hi - lo))
        log_scales = lo + (hi - lo) * torch.sigmoid(raw_scale + offset)
        if self.mark_embed is None:
            mark_logits = h.new_zeros(h.shape[:-1] + (1,))
        else:
            q = self.mark_head(h) / math.sqrt(self.mark_dim)                   # (..., mark_dim)
            mark_logits = q @ self.mark_embed.weight.T + self.mark_bias        # (..., M)
        return LogNormalMixture(logits, locs, log_scales), mark_logits

    def _copy_history(self, logits: torch.Tensor, h: torch.Tensor, marks: torch.Tensor) -> torch.Tensor:
        """The copy path of `forward` (class docstring): logits (B, L, M), h (B, L, D), marks
        (B, L) of events 0..L-1 (entry i reads marks 0..i-1) -> logits with the copy terms."""
        B, L, M = logits.shape
        ab = self.copy_head(self.drop(h))                                        # (B, L, 2)
        a, b = ab[..., 0], ab[..., 1]                                            # (B, L) each
        lag = torch.arange(L, device=h.device)[:, None] - 1 - torch.arange(L, device=h.device)[None, :]
        log_gamma = F.logsigmoid(self.copy_decay).to(h.dtype)
        w = torch.where(lag >= 0, torch.exp(lag.clamp_min(0).to(h.dtype) * log_gamma), 0.0)  # (L, L): gamma^(i-1-j)
        rows = max(1, _COPY_SCATTER_ELEMENTS // (B * L))  # scatter (B, rows, L) at a time: bounded memory
        out = []
        for s in range(0, L, rows):
            e = min(L, s + rows)
            vals = b[:, s:e, None] * w[None, s:e]                                # (B, r, L)
            vals = vals + a[:, s:e, None] * (lag[None, s:e] == 0).to(h.dtype)   # the previous mark
            idx = marks[:, None, :].expand(B, e - s, L)                          # (B, r, L)
            out.append(logits[:, s:e].scatter_add(-1, idx, vals))
        return torch.cat(out, dim=1)

    def check_batch(self, batch: Any) -> EventBatch:
        """Validate a batch dict (see the module docstring) and move it to the model's device;
        padding is replaced by dt = 1, mark = 0 so that its content never matters.
        Raises ValueError naming the problem. Reads a few values back to the host (one sync
        or so on a GPU per call; forward and score each call it)."""
        name = "EventModel"
        if not isinstance(batch, Mapping):
            raise ValueError(f"{name}: batch must be a dict with 'dt', 'marks', 'lengths', got {type(batch).__name__}")
        for key in ("dt", "marks", "lengths"):
            if key not in batch:
                raise ValueError(f"{name}: batch has no {key!r} (keys: {', '.join(map(str, batch))})")
        dt, marks, lengths = batch["dt"], batch["marks"], batch["lengths"]
        if not isinstance(dt, torch.Tensor) or dt.dim() != 2 or not dt.is_floating_point() or dt.shape[1] < 1:
            raise ValueError(f"{name}: batch['dt'] must be a float tensor of shape (B, L) with L >= 1, "
                             f"got {getattr(dt, 'dtype', '')} {_shape(dt)}")
        B, L = dt.shape
        if not isinstance(marks, torch.Tensor) or marks.shape != dt.shape or not _is_int(marks):
            raise ValueError(f"{name}: batch['marks'] must be an integer tensor of shape (B, L) = {(B, L)} "
                             f"like dt, got {getattr(marks, 'dtype', '')} {_shape(marks)}")
        if not isinstance(lengths, torch.Tensor) or lengths.shape != (B,) or not _is_int(lengths):
            raise ValueError(f"{name}: batch['lengths'] must be an integer tensor of shape (B,) = ({B},), "
                             f"got {getattr(lengths, 'dtype', '')} {_shape(lengths)}")
        if B and (int(lengths.min()) < 1 or int(lengths.max()) > L):
            raise ValueError(f"{name}: batch['lengths'] must lie in [1, L] = [1, {L}], got min "
                             f"{int(lengths.min())}, max {int(lengths.max())}")
        has_marks = _flag(batch, "has_marks", True)
        predict_first = _flag(batch, "predict_first", True)
        if not has_marks and self.n_marks > 1:
            raise ValueError(f"{name}: the batch has no marks (has_marks=False) but the model has "
                             f"n_marks = {self.n_marks}; build it with n_marks=1 for unmarked data")
        device = self._device()
        dt = dt.to(device=device, dtype=self._dtype())
        marks, lengths = marks.to(device).long(), lengths.to(device).long()
        idx = torch.arange(L, device=device)
        valid = idx[None, :] < lengths[:, None]                                # (B, L)
        bad = valid & ~(torch.isfinite(dt) & (dt >= 0))
        if bool(bad.any()):
            b, i = (int(v) for v in bad.nonzero()[0])
            what = "NaN" if bool(torch.isnan(dt[b, i])) else ("infinite" if bool(torch.isinf(dt[b, i])) else "negative")
            raise ValueError(f"{name}: batch['dt'] has a {what} value {float(dt[b, i])} at batch index {b}, "
                             f"event {i}; inter-event times must be finite and >= 0")
        if not has_marks:
            marks = torch.zeros_like(marks)
        bad = valid & ((marks < 0) | (marks >= self.n_marks))
        if bool(bad.any()):
            b, i = (int(v) for v in bad.nonzero()[0])
            raise ValueError(f"{name}: batch['marks'] has mark {int(marks[b, i])} at batch index {b}, event {i}; "
                             f"marks must lie in [0, n_marks) = [0, {self.n_marks})")
        dt = torch.where(valid, dt, torch.ones_like(dt))
        marks = torch.where(valid, marks, torch.zeros_like(marks))
        scored = valid if predict_first else valid & (idx[None, :] >= 1)
        return EventBatch(dt, marks, lengths, valid, scored, has_marks)

    # -- the model -------------------------------------------------------------------------------

    def forward(self, batch: Mapping) -> Tuple[LogNormalMixture, torch.Tensor]:
        """batch dict -> (LogNormalMixture with batch shape (B, L), mark logits (B, L, M)).
        Entry i is the prediction of event i from events 0..i-1 (i = 0: the start token only)."""
        eb = self.check_batch(batch)
        B = eb.dt.shape[0]
        e = self._embed(eb.dt[:, :-1], eb.marks[:, :-1])                       # (B, L-1, D)
        start = self.start_token.to(e.dtype).expand(B, 1, -1)                  # (B, 1, D)
        h, _ = self.backbone(torch.cat([start, e], dim=1))                     # (B, L, D)
        dist, logits = self._decode(h)
        if self.copy_head is not None:
            logits = self._copy_history(logits, h, eb.marks)
        return dist, logits

    def score(self, dist: LogNormalMixture, mark_logits: torch.Tensor, batch: Mapping) -> Dict[str, torch.Tensor]:
        """Per-event NLL terms of `forward`'s outputs for `batch`:

            time (B, L)    -log p(dt_i | h_i), 0 where not scored
            mark (B, L)    -log p(m_i | h_i), 0 where not scored (0 for n_marks = 1)
            scored (B, L)  bool, the events that count (real, and i >= 1 with predict_first=False)
            time_sum, mark_sum, count, correct: sums over the scored events (scalars;
                correct = how many argmax marks are right)
        """
        eb = self.check_batch(batch)
        tau = eb.dt.clamp_min(self.eps)
        zero = torch.zeros((), dtype=tau.dtype, device=tau.device)
        time = torch.where(eb.scored, -dist.log_prob(tau), zero)                           # (B, L)
        mark_lp = torch.log_softmax(mark_logits, dim=-1).gather(-1, eb.marks.unsqueeze(-1)).squeeze(-1)
        mark = torch.where(eb.scored, -mark_lp, zero)                                      # (B, L)
        correct = (mark_logits.argmax(dim=-1) == eb.marks) & eb.scored
        return {"time": time, "mark": mark, "scored": eb.scored, "time_sum": time.sum(),
                "mark_sum": mark.sum(), "count": eb.scored.sum(), "correct": correct.sum()}

    def nll(self, batch: Mapping) -> Dict[str, torch.Tensor]:
        """`score(*self(batch), batch)`: per-event time and mark NLL (B, L), masked, and sums."""
        dist, logits = self(batch)
        return self.score(dist, logits, batch)

    @torch.no_grad()
    def predict_next(self, batch: Mapping) -> Tuple[torch.Tensor, torch.Tensor]:
        """(expected dt (B, L), most likely mark (B, L)): entry i predicts event i from events
        0..i-1 (the mixture mean and the argmax of the mark logits). For the prediction after
        the last event of a sequence, stream it (`start` / `step`)."""
        dist, logits = self(batch)
        return dist.mean(), logits.argmax(dim=-1)

    # -- streaming -------------------------------------------------------------------------------

    def start(self, batch_size: int) -> Tuple[LogNormalMixture, torch.Tensor, "StreamState"]:
        """Begin B streams: (prediction of event 0: LogNormalMixture over (B,), mark logits
        (B, M), state). The state holds the backbone's (one entry per layer): constant size for
        aaren / mamba / mamba2 / gru, a growing KV cache for the transformer; and with
        copy_marks the decayed mark counts c (B, M)."""
        if batch_size < 1:
            raise ValueError(f"EventModel.start: batch_size must be >= 1, got {batch_size}")
        x = self.start_token.expand(batch_size, -1)                            # (B, D)
        h, state = self.backbone.step(x, None)
        dist, logits = self._decode(h)
        counts = None
        if self.copy_head is not None:
            counts = logits.new_zeros(batch_size, self.n_marks)                # (B, M): nothing seen
        return dist, logits, StreamState(state, counts)

    def step(self, dt_t: torch.Tensor, mark_t: Optional[torch.Tensor], state: "StreamState"
             ) -> Tuple[LogNormalMixture, torch.Tensor, "StreamState"]:
        """Read one more event per stream: dt_t (B,) >= 0, mark_t (B,) long (None when
        n_marks = 1) -> (prediction of the following event: LogNormalMixture over (B,), mark
        logits (B, M), new state). Running `start` then `step` over events 0..L-2 reproduces
        `forward` entry by entry."""
        name = "EventModel.step"
        if not isinstance(dt_t, torch.Tensor) or dt_t.dim() != 1 or not dt_t.is_floating_point():
            raise ValueError(f"{name}: dt_t must be a float tensor of shape (B,), got {_shape(dt_t)}")
        B = dt_t.shape[0]
        if mark_t is None:
            if self.n_marks > 1:
                raise ValueError(f"{name}: mark_t is required when n_marks = {self.n_marks}")
            mark_t = torch.zeros(B, dtype=torch.long)
        if not isinstance(mark_t, torch.Tensor) or mark_t.shape != (B,) or not _is_int(mark_t):
            raise ValueError(f"{name}: mark_t must be an integer tensor of shape (B,) = ({B},), got {_shape(mark_t)}")
        batch = {"dt": dt_t[:, None], "marks": mark_t[:, None], "lengths": torch.ones(B, dtype=torch.long)}
        eb = self.check_batch(batch)
        if not isinstance(state, StreamState):
            raise ValueError(f"{name}: state must be the StreamState returned by start or step, got {type(state).__name__}")
        h, inner = self.backbone.step(self._embed(eb.dt[:, 0], eb.marks[:, 0]), state.backbone)
        dist, logits = self._decode(h)
        counts = None
        if self.copy_head is not None:
            last = F.one_hot(eb.marks[:, 0], self.n_marks).to(logits.dtype)    # (B, M)
            counts = torch.sigmoid(self.copy_decay).to(logits.dtype) * state.counts + last
            ab = self.copy_head(self.drop(h))                                  # (B, 2)
            logits = logits + ab[:, :1] * last + ab[:, 1:] * counts
        return dist, logits, StreamState(inner, counts)


    @torch.no_grad()
    def read(self, dt: torch.Tensor, marks: Optional[torch.Tensor] = None, copies: int = 1
             ) -> Tuple[LogNormalMixture, torch.Tensor, "StreamState"]:
        """Read B whole histories at once and continue from their ends: dt (B, L) >= 0 and marks
        (B, L) long (None when n_marks = 1), every entry a real event (no padding: histories of
        one length per call) -> (prediction of the event after each history's last one:
        LogNormalMixture over (B copies,), mark logits (B copies, M), the state after the
        history, for `step`). With copies = n each history becomes n identical streams (rows
        b n .. b n + n - 1), e.g. for n sampled continuations. The same numbers as `start`
        followed by a `step` per event, in one parallel pass of the backbone; eval-mode use
        (no gradients)."""
        name = "EventModel.read"
        if not isinstance(dt, torch.Tensor) or dt.dim() != 2 or not dt.is_floating_point() or dt.shape[1] < 1:
            raise ValueError(f"{name}: dt must be a float tensor of shape (B, L) with L >= 1, got {_shape(dt)}")
        if isinstance(copies, bool) or not isinstance(copies, int) or copies < 1:
            raise ValueError(f"{name}: copies must be an int >= 1, got {copies!r}")
        B, L = dt.shape
        if marks is None:
            if self.n_marks > 1:
                raise ValueError(f"{name}: marks are required when n_marks = {self.n_marks}")
            marks = torch.zeros(B, L, dtype=torch.long)
        eb = self.check_batch({"dt": dt, "marks": marks, "lengths": torch.full((B,), L, dtype=torch.long)})
        e = self._embed(eb.dt, eb.marks)                                       # (B, L, D)
        start = self.start_token.to(e.dtype).expand(B, 1, -1)                  # (B, 1, D)
        h, inner = self.backbone(torch.cat([start, e], dim=1))                 # (B, L+1, D)
        h = h[:, -1]                                                           # after event L-1
        dist, logits = self._decode(h)
        counts = None
        if self.copy_head is not None:
            log_gamma = F.logsigmoid(self.copy_decay).to(logits.dtype)
            lag = torch.arange(L - 1, -1, -1, device=h.device).to(logits.dtype)  # L-1-j
            counts = logits.new_zeros(B, self.n_marks).scatter_add(
                -1, eb.marks, torch.exp(lag * log_gamma).expand(B, L).contiguous())   # (B, M)
            last = F.one_hot(eb.marks[:, -1], self.n_marks).to(logits.dtype)  # (B, M)
            ab = self.copy_head(self.drop(h))                                  # (B, 2)
            logits = logits + ab[:, :1] * last + ab[:, 1:] * counts
        state = StreamState(inner, counts)
        if copies > 1:
            dist, logits, state = (dist.repeat_interleave(copies), logits.repeat_interleave(copies, dim=0),
                                   state.repeat_interleave(copies))
        return dist, logits, state


class StreamState(NamedTuple):
    """EventModel's streaming state: the backbone's (one entry per layer) and, with
    copy_marks, the decayed counts of each mark (B, M); None without."""

    backbone: List[Any]
    counts: Optional[torch.Tensor]

    def repeat_interleave(self, n: int) -> "StreamState":
        """Every stream repeated n times in place (stream b becomes streams b n .. b n + n - 1):
        each tensor of the state repeated along its first dimension, the batch dimension of
        every backbone's state."""
        def rep(x):
            if isinstance(x, torch.Tensor):
                return x.repeat_interleave(n, dim=0)
            if isinstance(x, tuple) and hasattr(x, "_fields"):            # a NamedTuple
                return type(x)(*(rep(v) for v in x))
            if isinstance(x, (list, tuple)):
                return type(x)(rep(v) for v in x)
            if isinstance(x, dict):
                return {k: rep(v) for k, v in x.items()}
            return x
        return StreamState(rep(self.backbone), None if self.counts is None else rep(self.counts))


# --------------------------------------------------------------------------------------------
# Trainer glue and exact evaluation


def _core(model: nn.Module) -> EventModel:
    inner = getattr(model, "module", model)  # DistributedDataParallel wraps the model
    if not isinstance(inner, EventModel):
        raise ValueError(f"event_loss: needs an EventModel, got {type(inner).__name__}")
    return inner


def event_loss(model: nn.Module, batch: Mapping) -> Tuple[torch.Tensor, Dict[str, float]]:
    """`Trainer` loss_fn: loss = (time NLL + mark NLL) summed over the batch's scored events,
    divided by their number (a per-event mean).

    Metrics (per-event means over this batch): nll, nll_time, nll_mark, accuracy (next mark;
    trivially 1 for n_marks = 1); and the batch's sums n_events, sum_nll_time, sum_nll_mark,
    n_correct. With `Trainer(..., weight_key="n_events")` Trainer.evaluate weights each batch by
    its events, giving the per-event means (as `rlts events` does for early stopping); without
    it, by its sequences. `evaluate_events` gives the exact test numbers either way."""
    core = _core(model)
    dist, logits = model(batch)   # through the wrapper (DDP) when there is one
    s = core.score(dist, logits, batch)
    n = s["count"].clamp_min(1).to(s["time_sum"].dtype)
    loss = (s["time_sum"] + s["mark_sum"]) / n
    n_f = float(n)
    metrics = {
        "nll": float(loss.detach()), "nll_time": float(s["time_sum"].detach()) / n_f,
        "nll_mark": float(s["mark_sum"].detach()) / n_f, "accuracy": float(s["correct"]) / n_f,
        "n_events": float(s["count"]), "sum_nll_time": float(s["time_sum"].detach()),
        "sum_nll_mark": float(s["mark_sum"].detach()), "n_correct": float(s["correct"]),
    }
    return loss, metrics


@torch.no_grad()
def evaluate_events(model: nn.Module, loader: Iterable[Mapping]) -> Dict[str, float]:
    """Exact per-event metrics over every scored event of `loader` (batch dicts):

        nll, nll_time, nll_mark   mean NLL per event (time NLL in the batches' time units)
        rmse                      sqrt(mean (E[dt_i | h_i] - dt_i)^2), the mixture mean
        accuracy                  fraction of events whose argmax mark is right
        n_events                  how many events were scored

    Runs in eval mode (restoring the model's mode after) without gradients."""
    core = _core(model)
    was_training = core.training
    core.eval()
    t = {"time": 0.0, "mark": 0.0, "sq": 0.0, "correct": 0.0, "n": 0}
    try:
        for batch in loader:
            dist, logits = core(batch)
            s = core.score(dist, logits, batch)
            dt = core.check_batch(batch).dt
            err = torch.where(s["scored"], dist.mean() - dt, torch.zeros_like(dt))
            t["time"] += float(s["time_sum"].double())
            t["mark"] += float(s["mark_sum"].double())
            t["sq"] += float((err.double() ** 2).sum())
            t["correct"] += int(s["correct"])
            t["n"] += int(s["count"])
    finally:
        core.train(was_training)
    n = t["n"]
    if n == 0:
        raise ValueError("evaluate_events: no events to score (empty loader?)")
    return {"nll": (t["time"] + t["mark"]) / n, "nll_time": t["time"] / n, "nll_mark": t["mark"] / n,
            "rmse": math.sqrt(t["sq"] / n), "accuracy": t["correct"] / n, "n_events": n}
