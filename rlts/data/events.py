"""Event sequences for temporal point processes: loading, splits, time units, batches and
classical baselines (homogeneous Poisson, exponential-kernel Hawkes) with exact likelihoods.

    seqs = load_events("../shared/data/tpp/hawkes1.jsonl")        # list[EventSequence]
    train, val, test = split_sequences(seqs)                      # 60/20/20 %, file order
    scale = TimeScale.fit(train, origin="first")                  # mean inter-event time
    loader = DataLoader(EventDataset(train, scale=scale.scale), batch_size=16,
                        collate_fn=collate_events)
    batch = next(iter(loader))   # {"dt": (B, L) f32, "marks": (B, L) i64, "lengths": (B,),
                                 #  "has_marks": bool, "predict_first": bool}

    params = fit_hawkes(train)                                     # HawkesParams(mu, alpha, beta)
    nll = hawkes_nll_per_event(test, *params)                      # nats per event, data units
    nll_scaled = scale.nll_to_scaled(nll)                          # same number in scaled units
    poisson = poisson_nll_per_event(test, fit_poisson_rate(train))

File format: JSON lines, one sequence per line, `{"times": [...], "marks": [...]}`; times are
non-decreasing real numbers, marks (optional, all lines or none) category indices 0..M-1 with
M <= MAX_MARKS (models have one embedding row and one output logit per mark).

Conventions (shared with the neural model head, `rlts.heads.events`):

- Origin. `origin="first"` (the default): the first event of a sequence only starts the history;
  events 1..n-1 are predicted, event i from events < i, and the first interval is not scored.
  `origin="zero"`: the process starts, with an empty history, at time 0; events 0..n-1 are
  predicted and the first interval is t_0 - 0. "first" is the default because it is valid for
  every data set: in wikipedia.jsonl the sequences start at arbitrary points of a shared clock
  (one at 0.0, the median at ~2e5 s), so t_0 - 0 is not an inter-event time of the process.
  hawkes1.jsonl is simulated from an empty history at time 0, so "zero" is also exact there.
- NLL per event: -(1/N) sum_i log p(tau_i | history) over the N predicted events, pooled over
  all events of all sequences (not a mean of per-sequence means), where
  log p(tau_i | H) = log lambda(t_i) - integral_{t_{i-1}}^{t_i} lambda(t) dt
  (t_{-1} = 0 for origin "zero"). No survival term after the last event. It is in nats per
  event, in the unit the times are given in.
- Time unit. A density over times in unit u, rescaled to u' = u / s, satisfies
  -log p_u(tau) = -log p_u'(tau / s) + log s: the time NLL per event shifts by +log(s) when
  converting from scaled units back to data units (`TimeScale.nll_to_data`). Mark NLLs and
  accuracies do not depend on the unit.
- Ties (equal consecutive times, dt = 0) are allowed; decreasing times are an error. The
  history of event i is the events before it in index order, so a tied earlier event counts
  (as it does for a sequential model that reads events < i).

Hawkes parametrisation: lambda(t) = mu + alpha * beta * sum_{t_i < t} exp(-beta (t - t_i)),
so alpha is the branching ratio (expected children per event; stationary iff alpha < 1, with
mean rate mu / (1 - alpha)) and beta the decay rate (1 / time unit).
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, NamedTuple, Optional, Sequence, Tuple, Union

import numpy as np
import torch
from torch.utils.data import Dataset

from rlts.checkpoint import write_text_atomic

ORIGINS = ("first", "zero")
"""How the first event is treated; see the module docstring."""
DEFAULT_ORIGIN = "first"
MAX_MARKS = 2 ** 20
"""Most mark types a file may imply (max mark + 1). The largest real data set used, Wikipedia,
has 8,227; a larger index is taken as a data error (raw ids or timestamps as marks), caught
before a model allocates one embedding row and one logit per mark."""

# ----------------------------------------------------------------------------- sequences


@dataclass
class EventSequence:
    """One sequence of events."""

    times: np.ndarray
    """float64, shape (n,), non-decreasing."""
    marks: Optional[np.ndarray] = None
    """int64, shape (n,), non-negative; None when the data have no marks."""

    def __post_init__(self):
        self.times = np.asarray(self.times, dtype=np.float64)
        if self.marks is not None:
            self.marks = np.asarray(self.marks, dtype=np.int64)

    def __len__(self) -> int:
        return int(self.times.shape[0])


def _check_origin(origin: str) -> str:
    if origin not in ORIGINS:
        raise ValueError(f"origin must be one of {ORIGINS}, got {origin!r}")
    return origin


def _parse_line(obj, where: str) -> EventSequence:
    if not isinstance(obj, dict):
        raise ValueError(f"{where}: expected a JSON object with 'times', got {type(obj).__name__}")
    if "times" not in obj:
        raise ValueError(f"{where}: missing 'times'")
    times = obj["times"]
    if not isinstance(times, list):
        raise ValueError(f"{where}: 'times' must be a list of numbers")
    if len(times) == 0:
        raise ValueError(f"{where}: empty sequence (no events)")
    for j, t in enumerate(times):
        # bool is an int subclass in Python; a time of `true` is a data error
        if isinstance(t, bool) or not isinstance(t, (int, float)):
            raise ValueError(f"{where}: times[{j}] = {t!r} is not a number")
        if not math.isfinite(t):
            raise ValueError(f"{where}: times[{j}] = {t!r} is not finite")
    t = np.asarray(times, dtype=np.float64)
    bad = np.flatnonzero(np.diff(t) < 0)
    if bad.size:
        j = int(bad[0]) + 1
        raise ValueError(f"{where}: times decrease at index {j} ({float(t[j - 1])!r} -> {float(t[j])!r})")
    marks = obj.get("marks")
    if marks is None:
        return EventSequence(t, None)
    if not isinstance(marks, list) or len(marks) != len(times):
        n = len(marks) if isinstance(marks, list) else type(marks).__name__
        raise ValueError(f"{where}: 'marks' has length {n} but 'times' has {len(times)}")
    for j, m in enumerate(marks):
        is_int = isinstance(m, int) or (isinstance(m, float) and m.is_integer())
        if isinstance(m, bool) or not is_int or m < 0:
            raise ValueError(f"{where}: marks[{j}] = {m!r} is not a non-negative integer")
        if m >= MAX_MARKS:
            raise ValueError(f"{where}: marks[{j}] = {m!r} is too large: marks are category indices "
                             f"0..M-1 with at most M = 2**20 = {MAX_MARKS} types (one embedding row and "
                             "one logit each); renumber the mark types to 0..M-1")
    return EventSequence(t, np.asarray(marks, dtype=np.int64))


def load_events(path: Union[str, Path]) -> List[EventSequence]:
    """Read event sequences from a JSON-lines file (blank lines are skipped).

    Every bad input raises ValueError naming the file and the 1-based line number: a missing
    file, bad JSON, a missing/empty/non-numeric/non-finite/decreasing "times", "marks" of the
    wrong length, not non-negative integers or >= MAX_MARKS (2**20: marks are category indices
    0..M-1, so a larger one implies over a million types, a data error), or marks present on
    some lines only.
    """
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"event file not found: {path} (the TPP data live in ../shared/data/tpp/)")
    seqs: List[EventSequence] = []
    first_marked: Optional[Tuple[int, bool]] = None  # (line, has marks) of the first sequence
    with open(path, "r", encoding="utf-8") as f:
        for lineno, line in enumerate(f, start=1):
            if not line.strip():
                continue
            where = f"{path}, line {lineno}"
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as e:
                raise ValueError(f"{where}: bad JSON ({e.msg} at column {e.colno})") from e
            seq = _parse_line(obj, where)
            marked = seq.marks is not None
            if first_marked is None:
                first_marked = (lineno, marked)
            elif marked != first_marked[1]:
                has = "has" if first_marked[1] else "has no"
                raise ValueError(f"{where}: marks presence differs from line {first_marked[0]}, "
                                 f"which {has} 'marks' (all lines or none must have them)")
            seqs.append(seq)
    if not seqs:
        raise ValueError(f"{path}: no sequences")
    return seqs


def save_events(seqs: Sequence[EventSequence], path: Union[str, Path]) -> Path:
    """Write sequences as JSON lines (atomically); `load_events` reads them back exactly
    (floats are written with `repr` precision)."""
    lines = []
    for s in seqs:
        obj: Dict[str, list] = {"times": [float(t) for t in s.times]}
        if s.marks is not None:
            obj["marks"] = [int(m) for m in s.marks]
        lines.append(json.dumps(obj))
    return write_text_atomic("\n".join(lines) + "\n", path)


# ----------------------------------------------------------------------------- splits


def split_sequences(seqs: Sequence[EventSequence], fractions: Sequence[float] = (0.6, 0.2, 0.2),
                    seed: int = 0, shuffle: bool = False) -> Tuple[List[EventSequence], ...]:
    """Split whole sequences into (train, val, test) lists.

    Boundaries are round(cumsum(fractions) * n); by default in file order, so the test set is
    the last ~20 % of the sequences (for 64 sequences: 38 / 13 / 13; for 1000: 600/200/200).
    With `shuffle=True` the order is a permutation drawn from `numpy.random.default_rng(seed)`.
    Deterministic either way. Any number of fractions is accepted (they must sum to 1); a
    positive fraction that rounds to zero sequences is an error.
    """
    fr = np.asarray(fractions, dtype=np.float64)
    if fr.ndim != 1 or fr.size == 0 or np.any(fr < 0) or abs(fr.sum() - 1.0) > 1e-6:
        raise ValueError(f"fractions must be non-negative and sum to 1, got {fr.tolist()}")
    n = len(seqs)
    order = np.random.default_rng(seed).permutation(n) if shuffle else np.arange(n)
    bounds = np.rint(np.cumsum(fr) * n).astype(int)
    bounds[-1] = n
    starts = np.concatenate([[0], bounds[:-1]])
    out = []
    for k, (a, b) in enumerate(zip(starts, bounds)):
        if fr[k] > 0 and b <= a:
            raise ValueError(f"split {k} (fraction {float(fr[k])}) is empty with {n} sequences")
        out.append([seqs[i] for i in order[a:b]])
    return tuple(out)


# ----------------------------------------------------------------------------- time units


def predicted_intervals(times: np.ndarray, origin: str) -> np.ndarray:
    """The predicted inter-event times of one sequence (float64): (n-1,) for "first", (n,) for
    "zero" (whose first interval is t_0 - 0)."""
    if origin == "zero":
        if times[0] < 0:
            raise ValueError(f"origin 'zero' needs times >= 0, got t_0 = {float(times[0])}")
        return np.diff(times, prepend=0.0)
    return np.diff(times)


def num_predicted_events(seqs: Sequence[EventSequence], origin: str = DEFAULT_ORIGIN) -> int:
    """N, the number of scored events: sum(n - 1) for "first", sum(n) for "zero"."""
    _check_origin(origin)
    return int(sum(len(s) - (origin == "first") for s in seqs))


@dataclass(frozen=True)
class TimeScale:
    """Times in model units = times in data units / `scale` (the origin is not moved: only
    intervals are fed to the model, and with origin "zero" the first one is t_0 - 0)."""

    scale: float
    origin: str = DEFAULT_ORIGIN

    @classmethod
    def fit(cls, train: Sequence[EventSequence], origin: str = DEFAULT_ORIGIN) -> "TimeScale":
        """Scale = mean predicted inter-event time of the training sequences (pooled), so that
        the mean interval is 1 in model units."""
        _check_origin(origin)
        dts = [predicted_intervals(s.times, origin) for s in train]
        total = float(sum(d.sum() for d in dts))
        count = sum(d.size for d in dts)
        if count == 0 or not total > 0:
            raise ValueError("cannot fit a time scale: no positive inter-event time in the training set")
        return cls(total / count, origin)

    def to_scaled(self, dt):
        """Intervals (or times) in data units -> model units."""
        return dt / self.scale

    def to_data(self, dt):
        """Intervals in model units -> data units."""
        return dt * self.scale

    def nll_to_data(self, nll_per_event_scaled: float) -> float:
        """Time NLL per event in model units -> data units: + log(scale)."""
        return nll_per_event_scaled + math.log(self.scale)

    def nll_to_scaled(self, nll_per_event_data: float) -> float:
        """Time NLL per event in data units -> model units: - log(scale)."""
        return nll_per_event_data - math.log(self.scale)


# ----------------------------------------------------------------------------- batches


class EventDataset(Dataset):
    """Items for `collate_events`: dicts with "dt" float32 (n,) and "marks" int64 (n,).

    dt[0] = (t_0 - 0) / scale for origin "zero", 0 for origin "first" (the first event only
    starts the history; its interval is not predicted); dt[i] = (t_i - t_{i-1}) / scale.
    Differences are taken in float64 before the cast. Marks are zeros when the data have none.

    Args:
        seqs: the sequences (all with marks or all without).
        scale: data units per model unit (a float, or a `TimeScale`, whose origin must match).
        origin: "first" (default) or "zero"; see the module docstring.
    """

    def __init__(self, seqs: Sequence[EventSequence], scale: Union[float, TimeScale] = 1.0,
                 origin: str = DEFAULT_ORIGIN):
        self.origin = _check_origin(origin)
        if isinstance(scale, TimeScale):
            if scale.origin != origin:
                raise ValueError(f"TimeScale fitted with origin {scale.origin!r}, dataset uses {origin!r}")
            scale = scale.scale
        self.scale = float(scale)
        if not (self.scale > 0 and math.isfinite(self.scale)):
            raise ValueError(f"scale must be a positive finite number, got {scale}")
        self.seqs = list(seqs)
        marked = {s.marks is not None for s in self.seqs}
        if len(marked) > 1:
            raise ValueError("some sequences have marks and some do not")
        self.has_marks = marked == {True}

    def __len__(self) -> int:
        return len(self.seqs)

    def __getitem__(self, i: int) -> dict:
        s = self.seqs[i]
        dt = np.empty(len(s), dtype=np.float64)
        dt[0] = s.times[0] if self.origin == "zero" else 0.0
        if self.origin == "zero" and s.times[0] < 0:
            raise ValueError(f"sequence {i}: origin 'zero' needs times >= 0, got t_0 = {float(s.times[0])}")
        dt[1:] = np.diff(s.times)
        marks = s.marks if s.marks is not None else np.zeros(len(s), dtype=np.int64)
        return {"dt": torch.from_numpy(dt / self.scale).to(torch.float32),
                "marks": torch.from_numpy(np.asarray(marks, dtype=np.int64)),
                "has_marks": self.has_marks,
                "predict_first": self.origin == "zero"}


def collate_events(items: Sequence[dict]) -> dict:
    """Right-pad a list of `EventDataset` items into a batch.

    Returns:
        "dt": float32 (B, L) scaled inter-event times, 0 after each sequence's end;
        "marks": int64 (B, L), 0 after the end (and everywhere when the data have no marks);
        "lengths": int64 (B,) number of real events per sequence (L = lengths.max());
        "has_marks": bool;
        "predict_first": bool, True for origin "zero" (event 0 is scored), False for "first"
            (event 0 only starts the history). `rlts.heads.events` reads this optional key
            (default True), so a batch from origin "first" is scored correctly as it is.
    The predicted positions are i in [1, lengths) for origin "first" and [0, lengths) for
    "zero" (see `predicted_mask`).
    """
    if not items:
        raise ValueError("collate_events got an empty list")
    lengths = torch.tensor([it["dt"].shape[0] for it in items], dtype=torch.int64)  # (B,)
    L = int(lengths.max())
    dt = torch.zeros(len(items), L, dtype=torch.float32)  # (B, L)
    marks = torch.zeros(len(items), L, dtype=torch.int64)  # (B, L)
    for b, it in enumerate(items):
        n = it["dt"].shape[0]
        dt[b, :n] = it["dt"]
        marks[b, :n] = it["marks"]
    has = {bool(it.get("has_marks", True)) for it in items}
    first = {bool(it.get("predict_first", False)) for it in items}
    if len(has) > 1 or len(first) > 1:
        raise ValueError("collate_events: items disagree on has_marks or predict_first (origin)")
    return {"dt": dt, "marks": marks, "lengths": lengths, "has_marks": has.pop(),
            "predict_first": first.pop()}


def predicted_mask(lengths: torch.Tensor, max_len: int, origin: str = DEFAULT_ORIGIN) -> torch.Tensor:
    """bool (B, max_len): True at the positions whose event is predicted (scored)."""
    _check_origin(origin)
    pos = torch.arange(max_len, device=lengths.device)[None, :]  # (1, L)
    mask = pos < lengths[:, None]  # (B, L)
    if origin == "first":
        mask = mask & (pos >= 1)
    return mask


# ----------------------------------------------------------------------------- Poisson


def fit_poisson_rate(train: Sequence[EventSequence], origin: str = DEFAULT_ORIGIN) -> float:
    """MLE of a homogeneous Poisson rate under the NLL convention: N / (total predicted time),
    i.e. 1 / mean predicted inter-event time (data units)."""
    return 1.0 / TimeScale.fit(train, origin).scale


def poisson_nll_per_event(seqs: Sequence[EventSequence], rate: float,
                          origin: str = DEFAULT_ORIGIN) -> float:
    """Per-event NLL of a homogeneous Poisson process (exponential intervals):
    -(1/N) sum_i [log rate - rate * tau_i] over the predicted intervals tau_i, pooled."""
    _check_origin(origin)
    if not rate > 0:
        raise ValueError(f"rate must be positive, got {float(rate)}")
    dts = [predicted_intervals(s.times, origin) for s in seqs]
    n = sum(d.size for d in dts)
    if n == 0:
        raise ValueError("no predicted events")
    total = sum(float(d.sum()) for d in dts)
    return -(n * math.log(rate) - rate * total) / n


# ----------------------------------------------------------------------------- Hawkes


class HawkesParams(NamedTuple):
    """lambda(t) = mu + alpha * beta * sum_{t_i < t} exp(-beta (t - t_i))."""

    mu: float
    alpha: float
    beta: float


def _pad_times(seqs_times: Sequence[np.ndarray]) -> Tuple[np.ndarray, np.ndarray]:
    """(B, L) float64 times right-padded with each row's last time (so padded dt = 0), and
    (B,) lengths."""
    lengths = np.array([len(t) for t in seqs_times], dtype=np.int64)
    L = int(lengths.max())
    T = np.empty((len(seqs_times), L), dtype=np.float64)
    for b, t in enumerate(seqs_times):
        T[b, :len(t)] = t
        T[b, len(t):] = t[-1]
    return T, lengths


def _hawkes_terms(T: np.ndarray, lengths: np.ndarray, mu: float, alpha: float, beta: float,
                  origin: str, grad: bool = False):
    """Per-event terms of the exponential Hawkes likelihood on padded times, O(B L).

    With D_i = t_i - t_{i-1}, e_i = exp(-beta D_i), the excitation at event i is
    A_i = sum_{j<i} exp(-beta (t_i - t_j)) = e_i (1 + A_{i-1}), A_0 = 0, so that
        lambda(t_i) = mu + alpha beta A_i,
        Lambda_i = int_{t_{i-1}}^{t_i} lambda = mu D_i + alpha (1 + A_{i-1}) (1 - e_i).
    For origin "zero" event 0 is scored too, with lambda = mu and Lambda_0 = mu t_0.

    Returns (log_lambda (B, L), Lambda (B, L), mask (B, L)) and, if grad, the gradient of the
    total log-likelihood with respect to (mu, alpha, beta).
    """
    B, L = T.shape
    D = np.zeros_like(T)  # (B, L)
    D[:, 1:] = np.diff(T, axis=1)
    E = np.exp(-beta * D)  # (B, L)
    G = -np.expm1(-beta * D)  # (B, L), 1 - e_i without cancellation
    A = np.zeros_like(T)  # (B, L)
    dA = np.zeros_like(T)  # (B, L), d A / d beta
    for i in range(1, L):
        A[:, i] = E[:, i] * (1.0 + A[:, i - 1])
        if grad:
            dA[:, i] = E[:, i] * (dA[:, i - 1] - D[:, i] * (1.0 + A[:, i - 1]))
    A_prev = np.zeros_like(T)  # (B, L), A_{i-1}
    A_prev[:, 1:] = A[:, :-1]
    dA_prev = np.zeros_like(T)
    dA_prev[:, 1:] = dA[:, :-1]
    lam = mu + alpha * beta * A  # (B, L)
    Lam = mu * D + alpha * (1.0 + A_prev) * G  # (B, L)
    pos = np.arange(L)[None, :]
    mask = pos < lengths[:, None]  # (B, L)
    if origin == "first":
        mask &= pos >= 1
    else:  # event 0: no history, interval t_0 - 0
        Lam[:, 0] = mu * T[:, 0]
    log_lam = np.log(lam)
    if not grad:
        return log_lam, Lam, mask
    m = mask.astype(np.float64)
    inv = m / lam
    Dfull = D.copy()
    if origin == "zero":
        Dfull[:, 0] = T[:, 0]
    g_mu = inv.sum() - (m * Dfull).sum()
    g_alpha = (inv * beta * A).sum() - (m * (1.0 + A_prev) * G).sum()
    g_beta = (inv * alpha * (A + beta * dA)).sum() \
        - alpha * (m * (dA_prev * G + (1.0 + A_prev) * D * E)).sum()
    return log_lam, Lam, mask, np.array([g_mu, g_alpha, g_beta])


def _times_list(seqs) -> List[np.ndarray]:
    if isinstance(seqs, (np.ndarray, EventSequence)) or (len(seqs) and np.isscalar(seqs[0])):
        seqs = [seqs]
    out = [np.asarray(s.times if isinstance(s, EventSequence) else s, dtype=np.float64) for s in seqs]
    for t in out:
        if t.ndim != 1 or t.size == 0 or np.any(np.diff(t) < 0):
            raise ValueError("times must be non-empty, 1-D and non-decreasing")
    return out


def _check_params(mu, alpha, beta):
    if not (mu > 0 and alpha >= 0 and beta > 0):
        raise ValueError(f"need mu > 0, alpha >= 0, beta > 0; got {float(mu)}, {float(alpha)}, {float(beta)}")


def hawkes_log_densities(times, mu: float, alpha: float, beta: float,
                         origin: str = DEFAULT_ORIGIN) -> np.ndarray:
    """log p(tau_i | history) = log lambda(t_i) - int_{t_{i-1}}^{t_i} lambda, float64, for the
    predicted events of one sequence: shape (n-1,) for "first", (n,) for "zero". O(n)."""
    _check_origin(origin)
    _check_params(mu, alpha, beta)
    T, lengths = _pad_times(_times_list(times))
    log_lam, Lam, mask = _hawkes_terms(T, lengths, mu, alpha, beta, origin)
    return (log_lam - Lam)[mask]


def hawkes_log_likelihood(times, mu: float, alpha: float, beta: float,
                          origin: str = DEFAULT_ORIGIN) -> float:
    """Sum of `hawkes_log_densities` of one sequence (times: array (n,) or EventSequence)
    or of several (a list of them): sum_i log lambda(t_i) - int_{first}^{t_last} lambda,
    with no survival term after the last event. O(total events)."""
    _check_origin(origin)
    _check_params(mu, alpha, beta)
    T, lengths = _pad_times(_times_list(times))
    log_lam, Lam, mask = _hawkes_terms(T, lengths, mu, alpha, beta, origin)
    return float((log_lam - Lam)[mask].sum())


def hawkes_nll_per_event(seqs, mu: float, alpha: float, beta: float,
                         origin: str = DEFAULT_ORIGIN) -> float:
    """-log-likelihood / N over all predicted events of all sequences (nats, data units)."""
    n = num_predicted_events([EventSequence(t) for t in _times_list(seqs)], origin)
    if n == 0:
        raise ValueError("no predicted events")
    return -hawkes_log_likelihood(seqs, mu, alpha, beta, origin) / n


def hawkes_compensator(times, mu: float, alpha: float, beta: float,
                       origin: str = DEFAULT_ORIGIN) -> np.ndarray:
    """Compensator increments int_{t_{i-1}}^{t_i} lambda for the predicted events of one
    sequence. Under the true model they are i.i.d. Exp(1) (time-rescaling theorem)."""
    _check_origin(origin)
    _check_params(mu, alpha, beta)
    T, lengths = _pad_times(_times_list(times))
    _, Lam, mask = _hawkes_terms(T, lengths, mu, alpha, beta, origin)
    return Lam[mask]


def hawkes_intensity(t_grid, times, mu: float, alpha: float, beta: float) -> np.ndarray:
    """lambda(t) on a grid (for plots), counting only events strictly before each t.
    O(len(t_grid) + n) when t_grid is sorted; any order is accepted."""
    _check_params(mu, alpha, beta)
    t_grid = np.asarray(t_grid, dtype=np.float64)
    shape = t_grid.shape
    t_grid = t_grid.reshape(-1)
    times = np.sort(np.asarray(times, dtype=np.float64).reshape(-1))
    out = np.full(t_grid.shape, float(mu))
    if times.size == 0:
        return out.reshape(shape)
    order = np.argsort(t_grid, kind="stable")
    g = t_grid[order]
    k = np.searchsorted(times, g, side="left")  # events strictly before each grid point
    # excitation just after each event: S_j = sum_{i<=j} exp(-beta (t_j - t_i))
    S = np.empty(times.size)
    s = 0.0
    for j in range(times.size):
        s = (s * math.exp(-beta * (times[j] - times[j - 1])) if j else 0.0) + 1.0
        S[j] = s
    has = k > 0
    last = k[has] - 1
    vals = np.full(g.shape, float(mu))
    vals[has] += alpha * beta * S[last] * np.exp(-beta * (g[has] - times[last]))
    out[order] = vals
    return out.reshape(shape)


def simulate_hawkes(mu: float, alpha: float, beta: float, n_events: Optional[int] = None,
                    t_end: Optional[float] = None, rng: Optional[np.random.Generator] = None,
                    ) -> np.ndarray:
    """Simulate from an empty history at time 0 by Ogata's thinning; float64 times (n,).

    Stops after `n_events` events or at `t_end`, whichever comes first (at least one must be
    given; with alpha >= 1 the process may explode, so `n_events` is then required).
    Between events the intensity only decays, so lambda just after the current time bounds it
    until the next event: propose t + Exp(bound), accept with probability lambda(t') / bound.
    """
    _check_params(mu, alpha, beta)
    if n_events is None and t_end is None:
        raise ValueError("give n_events or t_end")
    if alpha >= 1 and n_events is None:
        raise ValueError(f"alpha = {float(alpha)} >= 1 (non-stationary): give n_events")
    rng = np.random.default_rng() if rng is None else rng
    n_max = n_events if n_events is not None else np.inf
    t_stop = t_end if t_end is not None else np.inf
    out: List[float] = []
    t = 0.0
    s = 0.0  # sum_{t_i <= t} exp(-beta (t - t_i)), the excitation at the current time
    ab = alpha * beta
    while len(out) < n_max:
        bound = mu + ab * s
        w = rng.exponential(1.0 / bound)
        s *= math.exp(-beta * w)
        t += w
        if t > t_stop:
            break
        if rng.random() * bound <= mu + ab * s:
            out.append(t)
            s += 1.0
    return np.asarray(out, dtype=np.float64)


def fit_hawkes(seqs, origin: str = DEFAULT_ORIGIN, init: Optional[HawkesParams] = None,
               max_iter: int = 500) -> HawkesParams:
    """Maximum-likelihood (mu, alpha, beta) over all sequences (pooled), by L-BFGS-B on the
    log-parameters with the analytic O(N) gradient. Starts from `init` or from a few decay
    rates around 1 / (mean interval), keeping the best. alpha < 1 is not enforced; check
    `params.alpha < 1` for stationarity.
    """
    from scipy.optimize import minimize

    _check_origin(origin)
    times = _times_list(seqs)
    T, lengths = _pad_times(times)
    n = num_predicted_events([EventSequence(t) for t in times], origin)
    if n == 0:
        raise ValueError("no predicted events to fit")
    mean_dt = TimeScale.fit([EventSequence(t) for t in times], origin).scale

    def objective(x):
        mu, alpha, beta = np.exp(x)
        log_lam, Lam, mask, g = _hawkes_terms(T, lengths, mu, alpha, beta, origin, grad=True)
        ll = (log_lam - Lam)[mask].sum()
        return -ll / n, -g * np.exp(x) / n

    if init is not None:
        _check_params(*init)
        starts = [np.log(np.maximum(np.asarray(init, dtype=np.float64), 1e-8))]
    else:
        starts = [np.log([0.5 / mean_dt, 0.5, b / mean_dt]) for b in (0.3, 1.0, 3.0)]
    best = None
    for x0 in starts:
        res = minimize(objective, x0, jac=True, method="L-BFGS-B",
                       bounds=[(-30, 30)] * 3, options={"maxiter": max_iter})
        if best is None or res.fun < best.fun:
            best = res
    return HawkesParams(*(float(v) for v in np.exp(best.x)))


# ----------------------------------------------------------------------------- marks


def repeat_mark_accuracy(seqs: Sequence[EventSequence]) -> float:
    """Accuracy of predicting each mark as the previous one, over events i >= 1 of all
    sequences (pooled). Events with i >= 1 are exactly the scored ones for origin "first"."""
    hits = total = 0
    for s in seqs:
        if s.marks is None:
            raise ValueError("repeat_mark_accuracy needs marked sequences")
        hits += int((s.marks[1:] == s.marks[:-1]).sum())
        total += len(s) - 1
    if total == 0:
        raise ValueError("no events with a previous event")
    return hits / total
