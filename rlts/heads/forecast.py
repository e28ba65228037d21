"""Forecasting heads: a sequence-model forecaster with RevIN and streaming, and two baselines.

    model = SequenceForecaster(n_channels=7, horizon=96, backbone="mamba2", d_model=64,
                               headdim=16, d_state=16)
    y_hat = model(x)                          # x (B, L, C) -> (B, horizon, C_out)
    loss, metrics = forecast_loss(model, (x, y))   # the Trainer's loss_fn

    stream = model.start_stream(x_window)     # after fitting: read the window once
    y_hat, stream = model.update(stream, x_new)    # x_new (B, k, C): O(k) work, O(1) memory

    streaming = SequenceForecaster(7, 96, running_span=96, skip_window=96, patch_len=16)
    y_all = streaming.forecast_sequence(x_long, positions)   # (B, P, H, C_out): after each row t
    loss, metrics = sequence_forecast_loss(streaming, (x_long, y), burn_in=96)

Every model here maps a window x (B, L, C) (the `WindowDataset` input, already scaled) to a
forecast (B, H, C_out): C_out = C ("M" mode), or 1 with `target_index` ("MS" mode: all
channels in, one out; "S" mode is simply C = 1).

    RevIN               reversible instance normalisation (per window, per channel)
    running_statistics  its streaming form: exponentially weighted mean and std at every step
    SequenceForecaster  RevIN -> embedding -> SequenceModel -> last-step summary -> Linear
    NaiveForecaster     repeats the last observed value
    DLinear             moving-average decomposition + two Linear(window, horizon)

Written for rlts; Time-Series-Library's RevIN and DLinear were semantic references only.
"""
from __future__ import annotations

from typing import Any, List, NamedTuple, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from rlts.nn.model import SequenceModel

CHANNEL_MODES = ("independent", "mixing")


def _check_window(name: str, x: Any, n_channels: Optional[int] = None, length: Optional[int] = None,
                  what: str = "input") -> None:
    """ValueError naming the expected shape (B, L, C) with the known numbers."""
    known = [f"{k} = {v}" for k, v in (("L", length), ("C", n_channels)) if v is not None]
    expect = "(B, L, C)" + (f" with {', '.join(known)}" if known else "")
    if not isinstance(x, torch.Tensor):
        raise ValueError(f"{name}: {what} must be a tensor of shape {expect}, got {type(x).__name__}")
    if (x.dim() != 3 or (n_channels is not None and x.shape[2] != n_channels)
            or (length is not None and x.shape[1] != length) or x.shape[1] < 1):
        raise ValueError(f"{name}: {what} must have shape {expect} (L >= 1), got {tuple(x.shape)}")


def _check_target(target_index: Optional[int], n_channels: int, name: str) -> Optional[int]:
    if target_index is None:
        return None
    if isinstance(target_index, bool) or not isinstance(target_index, int):
        raise ValueError(f"{name}: target_index must be an int or None, got {target_index!r}")
    if not -n_channels <= target_index < n_channels:
        raise ValueError(f"{name}: target_index {target_index} is out of range for {n_channels} channels")
    return target_index % n_channels


# --------------------------------------------------------------------------------------------
# RevIN


class RevINStats(NamedTuple):
    """Per-window statistics from `RevIN.normalise`: mean and std, each (B, 1, C)."""
    mean: torch.Tensor
    std: torch.Tensor


class RevIN(nn.Module):
    """Reversible instance normalisation (Kim et al. 2022).

    normalise:    x_n = (x - mean) / std * weight + bias        mean, std over time, per
                                                                (instance, channel)
    denormalise:  y   = (y_n - bias) / weight * std + mean       the exact inverse

    std = sqrt(var + eps) with the biased variance, so a constant channel gives x_n = bias
    rather than a division by zero. The statistics are returned, never stored on the module:
    the module is stateless between calls (safe for concurrent use, for streams, and for
    batches where every instance has its own statistics).

    Args:
        n_channels: C, the number of channels (one affine weight and bias each).
        affine: learn a per-channel weight (init 1) and bias (init 0) applied after
            normalising and inverted before denormalising. The inverse divides by the weight
            exactly (no epsilon), so normalise -> denormalise is the identity; a weight trained
            to exactly 0 would make the inverse undefined, as it should.
        eps: added to the variance.
    """

    def __init__(self, n_channels: int, affine: bool = True, eps: float = 1e-5):
        super().__init__()
        if n_channels < 1:
            raise ValueError(f"RevIN: n_channels must be >= 1, got {n_channels}")
        self.n_channels, self.affine, self.eps = n_channels, affine, eps
        if affine:
            self.weight = nn.Parameter(torch.ones(n_channels))
            self.bias = nn.Parameter(torch.zeros(n_channels))

    def statistics(self, x: torch.Tensor) -> RevINStats:
        """Mean and std over time of x (B, L, C), each (B, 1, C)."""
        _check_window("RevIN", x, self.n_channels)
        mean = x.mean(dim=1, keepdim=True)
        var = x.var(dim=1, keepdim=True, unbiased=False)
        return RevINStats(mean, torch.sqrt(var + self.eps))

    def apply(self, x: torch.Tensor, stats: RevINStats) -> torch.Tensor:
        """Normalise x (B, L, C) with given statistics (e.g. frozen ones from an earlier window)."""
        _check_window("RevIN", x, self.n_channels)
        x = (x - stats.mean) / stats.std
        return x * self.weight + self.bias if self.affine else x

    def normalise(self, x: torch.Tensor) -> Tuple[torch.Tensor, RevINStats]:
        """x (B, L, C) -> (x_norm (B, L, C), stats), stats from x itself."""
        stats = self.statistics(x)
        return self.apply(x, stats), stats

    def denormalise(self, y: torch.Tensor, stats: RevINStats, channel: Optional[int] = None) -> torch.Tensor:
        """y (B, H, C) -> y in the input's units. With `channel` (an int), y is (B, H, 1) and
        holds that channel only (the MS target): its statistics and affine parameters are used."""
        mean, std = stats
        weight = self.weight if self.affine else None
        bias = self.bias if self.affine else None
        c = self.n_channels
        if channel is not None:
            sl = slice(channel, channel + 1)
            mean, std, c = mean[..., sl], std[..., sl], 1
            if self.affine:
                weight, bias = weight[sl], bias[sl]
        _check_window("RevIN.denormalise", y, c)
        if self.affine:
            y = (y - bias) / weight
        return y * std + mean


def running_statistics(x: torch.Tensor, span: int, eps: float = 1e-5,
                       sums: Optional[torch.Tensor] = None) -> Tuple[RevINStats, torch.Tensor]:
    """RevIN's statistics for a stream: at every step t of x (B, T, C), the exponentially
    weighted mean and std of the rows so far,

        w_i = beta^(t - i),  beta = 1 - 2 / (span + 1)   (pandas' ewm(span=span, adjust=True))
        mean_t = sum_i w_i x_i / sum_i w_i,   std_t = sqrt(sum_i w_i x_i^2 / sum_i w_i - mean_t^2 + eps)

    so that a row's statistics depend on the rows before it only, and about the last `span`
    rows carry most of the weight, as RevIN's window would. The three sums run as one linear
    recurrence S_t = beta * S_{t-1} + (1, x_t, x_t^2) in float64 (`rlts.kernels.linear_scan`).

    Args:
        x: (B, T, C).
        span: the weights' span in steps (>= 1; 1 gives the latest row alone).
        eps: added to the variance, as in RevIN.
        sums: (B, 3, C) float64, the sums after the rows before x (a stream's), or None.

    Returns:
        (RevINStats with mean and std (B, T, C) in x's dtype, the sums after x's last row).
    """
    from rlts.kernels.linear import linear_scan

    B, T, C = x.shape
    beta = 1.0 - 2.0 / (span + 1.0)
    xd = x.detach().double()
    terms = torch.stack([torch.ones_like(xd), xd, xd * xd], dim=2).reshape(B, T, 3 * C)
    a = torch.full((B, T, 1), beta, dtype=torch.float64, device=x.device)
    h0 = None if sums is None else sums.reshape(B, 3 * C)
    s = linear_scan(a, terms, h0).view(B, T, 3, C)
    mean = s[:, :, 1] / s[:, :, 0]
    var = (s[:, :, 2] / s[:, :, 0] - mean * mean).clamp_min(0.0)
    return RevINStats(mean.to(x.dtype), torch.sqrt(var + eps).to(x.dtype)), s[:, -1]


# --------------------------------------------------------------------------------------------
# SequenceForecaster


class ForecastStream(NamedTuple):
    """State of a streaming forecast (see `SequenceForecaster.start_stream`).

    stats: RevIN statistics frozen at `start_stream` (None without RevIN); with running
        statistics, those of the latest observation, (B, 1, C) each.
    state: one backbone state (a list, one entry per layer) per patch phase: state[j] has read
        the patches that end j steps before the latest observation (patch_len entries; one
        for patch_len = 1). Each entry has constant size for aaren/mamba/mamba2/gru and grows
        with the observations for the transformer (its KV cache).
    recent: (B, K, C) the latest K normalised observations: the next patch and, with frozen
        statistics, the linear path's input. K = max(patch_len, skip_window), or patch_len with
        running statistics.
    forecast: (B, H, C_out), the forecast made after the last observation.
    n_seen: number of time steps read so far (window + updates).
    sums: running statistics only: their sums (B, 3, C) float64 (see `running_statistics`).
    raw: running statistics with a linear path only: the latest skip_window observations as
        given, (B, W, C), normalised at each step with that step's statistics.
    """
    stats: Optional[RevINStats]
    state: List[Any]
    recent: torch.Tensor
    forecast: torch.Tensor
    n_seen: int
    sums: Optional[torch.Tensor] = None
    raw: Optional[torch.Tensor] = None


class SequenceForecaster(nn.Module):
    """Window -> multi-horizon forecast with a linear-time sequence model.

        x (B, L, C) -> RevIN -> patches -> embed -> SequenceModel -> output at the last patch
          -> Linear (+ linear path from the last `skip_window` steps) -> (B, H, C_out)
          -> RevIN inverse

    Channel modes:
      "independent" (PatchTST/DLinear-style channel independence): each channel is its own
          univariate sequence; the B*C sequences share the embedding, the backbone and the
          read-out. The only per-channel parameters are RevIN's affine weight and bias.
          Output channels = input channels (or the target alone).
      "mixing": one token embeds every channel of its time steps, one sequence per window;
          Linear(d_model, horizon * C_out) reads every output channel off it.

    Patches (`patch_len` = p): the backbone reads one token per p time steps (non-overlapping
    patches ending at the window's last step; the oldest L mod p steps are dropped), embedded
    by Linear(p -> d_model) (p*C in mixing mode). The backbone runs L/p steps instead of L
    (docs/results.md, "Long-term forecasting", compares patches with one token per step).

    Linear path (`skip_window` = W): adds Linear(W -> H), shared by the channels, applied to the
    last W normalised steps of each channel (RLinear-style). The sequence model then learns
    what a linear map of the recent past misses.

    The backbone is causal, so its output at the last token summarises the whole window; the
    head reads the forecast from that one vector (no flattening over L: any window length
    >= max(p, W) works, and streaming is possible).

    MS mode (`target_index` set): the output is (B, H, 1), that channel only. In
    "independent" mode only the target channel's sequence is run (the others cannot
    influence it, so this equals computing all channels and selecting one, at 1/C of the
    cost); in "mixing" mode every channel is read and one channel is predicted.

    Streaming (`start_stream`, `update`): see those methods. With per-window RevIN, streaming
    forecasts are NOT the same as re-running `forward` on a sliding window: they condition on
    the whole growing context since `start_stream` and normalise with RevIN statistics frozen
    at `start_stream`; they equal `forward(concatenated history, stats=frozen stats)`.

    A model made for streaming (`running_span` = N) normalises every row with the running
    statistics of the rows up to it (`running_statistics`: an exponentially weighted mean and
    std of span N) and reads each forecast out with the statistics of its last row, so a
    forecast depends on the rows before it only, however long the sequence. The forecast after
    row t is then one thing whether computed by `forward(x[:, :t+1])`, by
    `forecast_sequence(x, [t])` (every position of a long sequence in one parallel pass: how
    it trains, with `sequence_forecast_loss`, and how it is scored) or by a stream's `update`
    (O(1) per row).

    Args:
        n_channels: C, the input channels of a window.
        horizon: H, the number of future steps predicted.
        backbone: a registered backbone name ("aaren", "mamba", "mamba2", "transformer", "gru").
        d_model: width of the sequence model.
        n_layers: blocks in the sequence model. With "aaren" use >= 2: a single Aaren block's
            last-step output sees the window only through a content-weighted mean, which is
            blind to order (it cannot tell a rising from a falling sine); stacking restores it.
        channel_mode: "independent" or "mixing", see above.
        revin: normalise each window by its own mean/std (affine RevIN) and invert on output.
        out_channels: output channels; default n_channels, 1 with target_index. In
            "independent" mode it must equal that default. In "mixing" mode other values are
            allowed only with revin=False and no skip_window (both act per input channel).
        target_index: None, or the input channel to forecast alone (MS mode).
        dropout: dropout on the embedded inputs and on the summary vector before the output
            Linear (the head's own).
        patch_len: p, time steps per backbone token (1: one token per step).
        skip_window: W, or None for no linear path.
        running_span: None (RevIN over each window), or N: running statistics of span N steps
            (needs revin; see "A model made for streaming" above).
        **backbone_options: passed to every block (n_heads, d_state, headdim, chunk_size, ...).
            A backbone's own dropout (aaren, transformer and gru take one) is spelled
            `backbone_dropout=p`, since `dropout` is this head's argument.
    """

    def __init__(self, n_channels: int, horizon: int, backbone: str = "aaren", d_model: int = 64,
                 n_layers: int = 2, channel_mode: str = "independent", revin: bool = True,
                 out_channels: Optional[int] = None, target_index: Optional[int] = None,
                 dropout: float = 0.0, patch_len: int = 1, skip_window: Optional[int] = None,
                 running_span: Optional[int] = None, **backbone_options):
        super().__init__()
        name = "SequenceForecaster"
        if n_channels < 1 or horizon < 1:
            raise ValueError(f"{name}: n_channels ({n_channels}) and horizon ({horizon}) must be >= 1")
        if channel_mode not in CHANNEL_MODES:
            raise ValueError(f"{name}: channel_mode must be one of {CHANNEL_MODES}, got {channel_mode!r}")
        if patch_len < 1 or (skip_window is not None and skip_window < 1):
            raise ValueError(f"{name}: patch_len ({patch_len}) and skip_window ({skip_window}) must be >= 1")
        if running_span is not None and (not revin or running_span < 1):
            raise ValueError(f"{name}: running_span ({running_span}) must be >= 1 and needs revin=True")
        target_index = _check_target(target_index, n_channels, name)
        default_out = n_channels if target_index is None else 1
        out_channels = default_out if out_channels is None else out_channels
        if out_channels != default_out and (channel_mode == "independent" or revin or skip_window):
            raise ValueError(f"{name}: out_channels = {out_channels} needs channel_mode='mixing', "
                             f"revin=False and no skip_window (expected {default_out} here)")
        if out_channels < 1:
            raise ValueError(f"{name}: out_channels must be >= 1, got {out_channels}")
        if "backbone_dropout" in backbone_options:
            backbone_options["dropout"] = backbone_options.pop("backbone_dropout")
        self.n_channels, self.horizon, self.out_channels = n_channels, horizon, out_channels
        self.channel_mode, self.target_index = channel_mode, target_index
        self.patch_len, self.skip_window, self.running_span = patch_len, skip_window, running_span
        self.revin = RevIN(n_channels) if revin else None
        self.embed = nn.Linear(patch_len * (1 if channel_mode == "independent" else n_channels), d_model)
        self.drop = nn.Dropout(dropout)
        self.backbone = SequenceModel(backbone, d_model=d_model, n_layers=n_layers, **backbone_options)
        per_seq = horizon if channel_mode == "independent" else horizon * out_channels
        self.proj = nn.Linear(d_model, per_seq)
        self.skip = nn.Linear(skip_window, horizon) if skip_window else None

    @property
    def min_window(self) -> int:
        """The shortest window `forward` accepts: max(patch_len, skip_window)."""
        return max(self.patch_len, self.skip_window or 1)

    # -- pieces shared by forward and streaming ----------------------------------------------

    def _normalise(self, x: torch.Tensor, stats: Optional[RevINStats]) -> Tuple[torch.Tensor, Optional[RevINStats]]:
        if self.revin is None:
            return x, None
        if stats is None:
            stats = self.revin.statistics(x)
        return self.revin.apply(x, stats), stats

    def _read_out_running(self, summary: torch.Tensor, x: torch.Tensor, stats: RevINStats,
                          ends: List[int]) -> torch.Tensor:
        """Running statistics: backbone outputs after rows `ends` of x (B, T, C), summary
        (B*C' or B, P, d_model), and x's statistics (B, T, C) -> forecasts (B, P, H, C_out),
        each read out with the statistics of its row (its linear path: the last W rows
        normalised with them)."""
        B, P = x.shape[0], len(ends)
        idx = torch.as_tensor(ends, device=x.device)
        if self.channel_mode == "independent":
            summary = summary.view(B, -1, P, summary.shape[-1]).transpose(1, 2)       # (B, P, C', d)
        at = RevINStats(stats.mean[:, idx].reshape(B * P, 1, -1), stats.std[:, idx].reshape(B * P, 1, -1))
        if self.skip is not None:
            W = self.skip_window
            rows = idx.view(P, 1) + torch.arange(1 - W, 1, device=x.device)          # (P, W)
            recent = self.revin.apply(x[:, rows].reshape(B * P, W, -1), at)           # (B*P, W, C)
        else:
            recent = x.new_zeros(B * P, 1, x.shape[2])
        y = self._read_out(summary.reshape(-1, summary.shape[-1]), recent, at)        # (B*P, H, C_out)
        return y.view(B, P, self.horizon, -1)

    def forecast_sequence(self, x: torch.Tensor, positions: Optional[List[int]] = None) -> torch.Tensor:
        """A model with running statistics: x (B, T, C) -> the forecasts (B, P, H, C_out) made
        after each row t of `positions` (default: every row from min_window - 1 on), each the
        one `forward(x[:, :t+1])` gives, in one parallel pass per patch phase in use (the
        forecasts after rows t with the same (t + 1) mod patch_len read the same patches).
        Differentiable: `sequence_forecast_loss` trains with it."""
        if self.running_span is None:
            raise ValueError("SequenceForecaster.forecast_sequence needs a model made with running_span")
        _check_window("SequenceForecaster", x, self.n_channels)
        self._check_length(x, "x")
        T, p = x.shape[1], self.patch_len
        positions = list(range(self.min_window - 1, T)) if positions is None else [int(t) for t in positions]
        bad = [t for t in positions if not self.min_window - 1 <= t < T]
        if bad:
            raise ValueError(f"SequenceForecaster.forecast_sequence: position {bad[0]} is outside "
                             f"[{self.min_window - 1}, {T - 1}] (rows of x after which a forecast can be made)")
        stats, _ = running_statistics(x, self.running_span, self.revin.eps)
        xn = self.revin.apply(x, stats)
        out = x.new_empty(x.shape[0], len(positions), self.horizon, self.out_channels)
        by_phase: dict = {}
        for i, t in enumerate(positions):
            by_phase.setdefault((t + 1) % p, []).append(i)
        for q, which in by_phase.items():
            n_tok = (T - q) // p
            h, _ = self.backbone(self._tokens(xn[:, q:q + n_tok * p]))                 # (B', n_tok, d)
            ends = [positions[i] for i in which]
            tok = torch.as_tensor([(t + 1 - q) // p - 1 for t in ends], device=x.device)
            out[:, which] = self._read_out_running(h[:, tok], x, stats, ends)
        return out

    def _channels(self, xn: torch.Tensor) -> torch.Tensor:
        """The channels forecast, (B, L, C'): all, or the target alone (MS)."""
        t = self.target_index
        return xn if t is None else xn[..., t:t + 1]

    def _tokens(self, xn: torch.Tensor) -> torch.Tensor:
        """Normalised x (B, L, C), L >= patch_len -> backbone input (B*C' or B, L // p, d_model):
        the patches ending at the last step, the oldest L mod p steps dropped."""
        p = self.patch_len
        n_tok = xn.shape[1] // p
        if self.channel_mode == "independent":
            x = self._channels(xn)
            B, L, C = x.shape
            x = x.transpose(1, 2).reshape(B * C, L)  # channel c of instance b -> row b*C + c
            z = x[:, L - n_tok * p:].reshape(B * C, n_tok, p)
        else:
            B, L, C = xn.shape
            z = xn[:, L - n_tok * p:].reshape(B, n_tok, p * C)
        return self.drop(self.embed(z))

    def _read_out(self, summary: torch.Tensor, xn: torch.Tensor, stats: Optional[RevINStats]) -> torch.Tensor:
        """Backbone output at the last token (B*C' or B, d_model) and the normalised inputs
        (B, >= skip_window, C) -> forecast (B, H, C_out)."""
        batch = xn.shape[0]
        y = self.proj(self.drop(summary))
        if self.channel_mode == "independent":
            y = y.view(batch, -1, self.horizon).transpose(1, 2)  # (B, H, C')
        else:
            y = y.view(batch, self.horizon, self.out_channels)
        if self.skip is not None:
            recent = self._channels(xn)[:, -self.skip_window:]        # (B, W, C')
            y = y + self.skip(recent.transpose(1, 2)).transpose(1, 2)  # (B, H, C')
        if self.revin is not None:
            y = self.revin.denormalise(y, stats, channel=self.target_index)
        return y

    # -- the model -----------------------------------------------------------------------------

    def forward(self, x: torch.Tensor, stats: Optional[RevINStats] = None) -> torch.Tensor:
        """x (B, L, C) with L >= min_window -> forecast (B, H, C_out) of the H steps after x.

        stats: RevIN statistics to use instead of x's own (for streaming equivalence checks
            and for normalising with frozen statistics); ignored without RevIN.
        """
        _check_window("SequenceForecaster", x, self.n_channels)
        self._check_length(x, "x")
        if self.running_span is not None:
            if stats is not None:
                raise ValueError("SequenceForecaster: a model with running statistics takes no `stats`")
            return self.forecast_sequence(x, [x.shape[1] - 1])[:, 0]
        xn, stats = self._normalise(x, stats)
        h, _ = self.backbone(self._tokens(xn))
        return self._read_out(h[:, -1], xn, stats)

    def _check_length(self, x: torch.Tensor, what: str) -> None:
        if x.shape[1] < self.min_window:
            raise ValueError(f"SequenceForecaster: {what} has {x.shape[1]} time steps; this model needs at least "
                             f"{self.min_window} (patch_len {self.patch_len}, skip_window {self.skip_window})")

    # -- streaming -----------------------------------------------------------------------------

    @torch.no_grad()
    def start_stream(self, x_window: torch.Tensor) -> ForecastStream:
        """Read a window (B, L, C) once and return a stream state whose `.forecast` equals
        `forward(x_window)`. RevIN statistics are taken from this window and FROZEN: every
        later observation fed to `update` is normalised with them (call `start_stream` again
        to refresh them, e.g. after a level shift). Runs without gradients; use eval mode.

        With patches of p steps it keeps p backbone states, one per phase: state j reads the
        window without its last j steps (p passes of L/p tokens, L tokens in all), so that
        every later observation completes a patch of exactly one phase."""
        _check_window("SequenceForecaster.start_stream", x_window, self.n_channels, what="x_window")
        self._check_length(x_window, "x_window")
        sums = None
        if self.running_span is not None:
            stats, sums = running_statistics(x_window, self.running_span, self.revin.eps)
            xn = self.revin.apply(x_window, stats)
        else:
            xn, stats = self._normalise(x_window, None)
        L, p = xn.shape[1], self.patch_len
        states, forecast = [], None
        for j in range(p):
            if L - j < p:  # no whole patch yet in this phase: its first token comes with updates
                states.append(None)
                continue
            h, state = self.backbone(self._tokens(xn[:, :L - j]))
            states.append(state)
            if j == 0:
                if sums is None:
                    forecast = self._read_out(h[:, -1], xn, stats)
                else:
                    forecast = self._read_out_running(h[:, -1:], x_window, stats, [L - 1])[:, 0]
        if sums is None:
            keep = max(p, self.skip_window or 1)
            return ForecastStream(stats, states, xn[:, L - keep:], forecast, L)
        last = RevINStats(stats.mean[:, -1:], stats.std[:, -1:])
        raw = x_window[:, L - self.skip_window:] if self.skip is not None else None
        return ForecastStream(last, states, xn[:, L - p:], forecast, L, sums, raw)

    @torch.no_grad()
    def update(self, stream: ForecastStream, x_new: torch.Tensor) -> Tuple[torch.Tensor, ForecastStream]:
        """Advance the stream by new observations x_new (B, k, C) -> (forecast (B, H, C_out)
        of the H steps after x_new, new stream). Each observation completes the patch of one
        phase, whose backbone state takes one `step`; the window is never re-read: O(k) work
        and, for recurrent backbones, a state of constant size however long the stream runs
        (p backbone states and the last max(p, W) observations).

        The forecast equals `forward(cat([window, all updates so far]), stats=stream.stats)`:
        a growing context normalised with the statistics frozen at `start_stream`, which is
        why it differs from `forward` on the latest sliding window of length L."""
        if not isinstance(stream, ForecastStream):
            raise ValueError(f"SequenceForecaster.update: stream must come from start_stream, "
                             f"got {type(stream).__name__}")
        B = stream.forecast.shape[0]
        _check_window("SequenceForecaster.update", x_new, self.n_channels, what="x_new")
        if x_new.shape[0] != B:
            raise ValueError(f"SequenceForecaster.update: x_new must have shape (B, k, C) with B = {B}, "
                             f"C = {self.n_channels}, got {tuple(x_new.shape)}")
        if stream.sums is not None:
            return self._update_running(stream, x_new)
        xn, _ = self._normalise(x_new, stream.stats)
        p, keep = self.patch_len, stream.recent.shape[1]
        states, recent, forecast = list(stream.state), stream.recent, stream.forecast
        for t in range(xn.shape[1]):
            recent = torch.cat([recent, xn[:, t:t + 1]], dim=1)[:, -keep:]      # (B, K, C)
            token = self._tokens(recent[:, -p:])[:, 0]                          # (B', d_model)
            summary, state = self.backbone.step(token, states[-1])              # the phase p-1 steps old
            states = [state] + states[:-1]
            forecast = self._read_out(summary, recent, stream.stats)
        return forecast, ForecastStream(stream.stats, states, recent, forecast, stream.n_seen + x_new.shape[1])

    def _update_running(self, stream: ForecastStream, x_new: torch.Tensor) -> Tuple[torch.Tensor, ForecastStream]:
        """`update` with running statistics: per row, the sums take one step, the row is
        normalised with its statistics, its patch phase's state one backbone step, and the
        forecast is read out with the row's statistics."""
        beta = 1.0 - 2.0 / (self.running_span + 1.0)
        p, eps = self.patch_len, self.revin.eps
        states, recent, raw, sums = list(stream.state), stream.recent, stream.raw, stream.sums
        stats, forecast = stream.stats, stream.forecast
        for t in range(x_new.shape[1]):
            row = x_new[:, t:t + 1]                                             # (B, 1, C)
            xd = row[:, 0].double()
            sums = beta * sums + torch.stack([torch.ones_like(xd), xd, xd * xd], dim=1)
            mean = sums[:, 1] / sums[:, 0]
            var = (sums[:, 2] / sums[:, 0] - mean * mean).clamp_min(0.0)
            stats = RevINStats(mean.unsqueeze(1).to(row.dtype), torch.sqrt(var + eps).unsqueeze(1).to(row.dtype))
            recent = torch.cat([recent, self.revin.apply(row, stats)], dim=1)[:, -p:]   # (B, p, C)
            token = self._tokens(recent)[:, 0]                                  # (B', d_model)
            summary, state = self.backbone.step(token, states[-1])              # the phase p-1 steps old
            states = [state] + states[:-1]
            if raw is not None:
                raw = torch.cat([raw, row], dim=1)[:, -self.skip_window:]       # (B, W, C)
                window = self.revin.apply(raw, stats)
            else:
                window = row.new_zeros(row.shape)
            forecast = self._read_out(summary, window, stats)
        return forecast, ForecastStream(stats, states, recent, forecast, stream.n_seen + x_new.shape[1], sums, raw)


# --------------------------------------------------------------------------------------------
# Baselines


class NaiveForecaster(nn.Module):
    """Repeats the last observed value: y[:, h] = x[:, -1] for every h (no parameters).

    Args:
        horizon: H.
        target_index: None (forecast every channel) or the one channel to forecast (MS).
    """

    def __init__(self, horizon: int, target_index: Optional[int] = None):
        super().__init__()
        if horizon < 1:
            raise ValueError(f"NaiveForecaster: horizon must be >= 1, got {horizon}")
        self.horizon, self.target_index = horizon, target_index

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        _check_window("NaiveForecaster", x)
        last = x[:, -1:]  # (B, 1, C)
        if self.target_index is not None:
            t = _check_target(self.target_index, x.shape[2], "NaiveForecaster")
            last = last[..., t:t + 1]
        return last.expand(-1, self.horizon, -1).clone()


class SeasonalNaiveForecaster(nn.Module):
    """Repeats the last season: y[:, h] = x[:, L - m + (h mod m)] for steps h = 0 .. H-1 and
    season m <= L (no parameters); m = 1 is NaiveForecaster.

    Args:
        horizon: H.
        season: m, the seasonal period in steps.
        target_index: None (forecast every channel) or the one channel to forecast (MS).
    """

    def __init__(self, horizon: int, season: int, target_index: Optional[int] = None):
        super().__init__()
        if horizon < 1 or season < 1:
            raise ValueError(f"SeasonalNaiveForecaster: horizon and season must be >= 1, got {horizon}, {season}")
        self.horizon, self.season, self.target_index = horizon, season, target_index

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        _check_window("SeasonalNaiveForecaster", x)
        L = x.shape[1]
        if self.season > L:
            raise ValueError(f"SeasonalNaiveForecaster: the season ({self.season} steps) is longer than the "
                             f"window ({L} steps)")
        if self.target_index is not None:
            t = _check_target(self.target_index, x.shape[2], "SeasonalNaiveForecaster")
            x = x[..., t:t + 1]
        idx = L - self.season + torch.arange(self.horizon, device=x.device) % self.season      # (H,)
        return x[:, idx].clone()                                                             # (B, H, C)


def moving_average(x: torch.Tensor, kernel: int) -> torch.Tensor:
    """Moving average over time of x (B, L, C), same length, edge-padded as in DLinear: the
    first value repeated (kernel - 1) // 2 times in front, the last value repeated
    kernel - 1 - (kernel - 1) // 2 times after (equal for odd kernels), then a mean over each
    `kernel` consecutive steps. Output t averages padded steps t .. t + kernel - 1."""
    if kernel < 1:
        raise ValueError(f"moving_average: kernel must be >= 1, got {kernel}")
    front, back = (kernel - 1) // 2, kernel - 1 - (kernel - 1) // 2
    xp = torch.cat([x[:, :1].expand(-1, front, -1), x, x[:, -1:].expand(-1, back, -1)], dim=1)
    return F.avg_pool1d(xp.transpose(1, 2), kernel_size=kernel, stride=1).transpose(1, 2)


class DLinear(nn.Module):
    """DLinear (Zeng et al. 2023): x = trend + seasonal with trend = moving_average(x, kernel);
    forecast = Linear_trend(trend) + Linear_seasonal(seasonal), each Linear(window, horizon)
    mapping a channel's past to its future (over time, not over channels).

    Args:
        window: L, the input length (fixed: the Linear layers read the whole window).
        horizon: H.
        n_channels: C.
        individual: one pair of Linear layers per channel instead of one shared pair.
        kernel: moving-average length (default 25, as in DLinear).
        target_index: None, or the one channel to forecast (MS); only it is computed.

    Weights start at 1 / window (each forecast step begins as the mean of the window's
    component), biases at 0; the weights are `weight_trend`/`weight_seasonal` of shape
    (H, L) shared or (C, H, L) individual, with biases (H,) or (C, H).
    """

    def __init__(self, window: int, horizon: int, n_channels: int, individual: bool = False,
                 kernel: int = 25, target_index: Optional[int] = None):
        super().__init__()
        if min(window, horizon, n_channels, kernel) < 1:
            raise ValueError(f"DLinear: window ({window}), horizon ({horizon}), n_channels ({n_channels}) and "
                             f"kernel ({kernel}) must be >= 1")
        self.window, self.horizon, self.n_channels = window, horizon, n_channels
        self.individual, self.kernel = individual, kernel
        self.target_index = _check_target(target_index, n_channels, "DLinear")
        lead = (n_channels,) if individual else ()
        self.weight_trend = nn.Parameter(torch.full(lead + (horizon, window), 1.0 / window))
        self.weight_seasonal = nn.Parameter(torch.full(lead + (horizon, window), 1.0 / window))
        self.bias_trend = nn.Parameter(torch.zeros(lead + (horizon,)))
        self.bias_seasonal = nn.Parameter(torch.zeros(lead + (horizon,)))

    def _linear(self, part: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
        """part (B, L, C') -> (B, H, C'): each channel's L steps mapped to H steps."""
        if self.individual:
            if self.target_index is not None:
                weight = weight[self.target_index:self.target_index + 1]
                bias = bias[self.target_index:self.target_index + 1]
            return torch.einsum("blc,chl->bhc", part, weight) + bias.t()
        return torch.einsum("blc,hl->bhc", part, weight) + bias[:, None]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        _check_window("DLinear", x, self.n_channels, self.window)
        if self.target_index is not None:
            x = x[..., self.target_index:self.target_index + 1]
        trend = moving_average(x, self.kernel)
        seasonal = x - trend
        return (self._linear(trend, self.weight_trend, self.bias_trend)
                + self._linear(seasonal, self.weight_seasonal, self.bias_seasonal))


# --------------------------------------------------------------------------------------------
# Trainer glue


def sequence_forecast_loss(model: SequenceForecaster, batch, burn_in: int) -> Tuple[torch.Tensor, dict]:
    """`Trainer` loss_fn that trains a model made for streaming (running statistics) on long
    sequences: for (x (B, T, C), y (B, H, C_out)) batches, the forecasts after every patch end
    of x (rows T-1, T-1-p, ...) from row `burn_in` - 1 on, each against the H rows after it
    (from x's forecast channels, then y). MSE loss; metrics mse/mae over all those forecasts."""
    x, y = batch[0], batch[1]
    T, H, p = x.shape[1], y.shape[1], model.patch_len
    if H != model.horizon:
        raise ValueError(f"sequence_forecast_loss: the target y has {H} steps, the model forecasts {model.horizon}")
    first = max(burn_in, model.min_window) - 1
    positions = list(range(T - 1, first - 1, -p))[::-1]
    if not positions:
        raise ValueError(f"sequence_forecast_loss: sequences of {T} rows hold no forecast after the burn-in "
                         f"of {burn_in} rows")
    future = torch.cat([model._channels(x), y], dim=1)                           # (B, T+H, C_out)
    idx = torch.as_tensor(positions, device=x.device).view(-1, 1) + torch.arange(1, H + 1, device=x.device)
    target = future[:, idx]                                                       # (B, P, H, C_out)
    y_hat = model.forecast_sequence(x, positions)
    mse = F.mse_loss(y_hat, target)
    return mse, {"mse": mse.item(), "mae": (y_hat - target).abs().mean().item()}


def forecast_loss(model: nn.Module, batch) -> Tuple[torch.Tensor, dict]:
    """`Trainer` loss_fn for (x (B, L, C), y (B, H, C_out)) batches: MSE loss, metrics mse/mae
    (on the scaled values, as Time-Series-Library reports them). NaN targets (a series that
    does not cover the window, see `WindowDataset`) are left out of the loss and the metrics."""
    x, y = batch[0], batch[1]
    y_hat = model(x)
    if y_hat.shape != y.shape:
        raise ValueError(f"forecast_loss: the model's forecast has shape {tuple(y_hat.shape)} but the "
                         f"target y has shape {tuple(y.shape)} (B, H, C_out)")
    known = ~torch.isnan(y)
    if not bool(known.all()):
        err = torch.where(known, y_hat - torch.nan_to_num(y), torch.zeros_like(y_hat))
        n = known.sum().clamp_min(1)
        mse = (err * err).sum() / n
        return mse, {"mse": mse.item(), "mae": (err.abs().sum() / n).item()}
    mse = F.mse_loss(y_hat, y)
    return mse, {"mse": mse.item(), "mae": (y_hat - y).abs().mean().item()}
