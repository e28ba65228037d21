"""`rlts events predict`: the mixture's quantiles, mean and seeded samples against float64
references on adversarial mixtures; `EventModel.read` against streaming; sampled next intervals
of a trained model against its own density; the shared `simulate` loop driven by the true
Hawkes process (known rate, exact compensator); the command end to end and its bad input."""
import json
import math
import shutil

import numpy as np
import pytest
import torch
from scipy import integrate, stats

from rlts.data.events import EventSequence, hawkes_compensator, load_events, save_events
from rlts.heads.events import LOG_SCALE_MAX, LOG_SCALE_MIN, EventModel, LogNormalMixture
from rlts.tasks.cli import main
from rlts.tasks.supervised.events import parse_events_config, run_events
from rlts.tasks.supervised.events_predict import load_run, simulate

from _backbones import TINY_OPTIONS

F64 = torch.float64
HAWKES = "/work/shared/data/tpp/hawkes1.jsonl"
TRUE = (0.2, 0.8, 1.0)
"""mu, alpha, beta of hawkes1.jsonl: lambda(t) = mu + alpha beta sum exp(-beta (t - t_i)) (the
data module's parametrisation; with beta = 1 it is also mu + alpha sum exp(-(t - t_i))), whose
stationary rate is mu / (1 - alpha) = 1.0."""
TOL = {torch.float32: 5e-5, torch.float64: 1e-10}
"""|cdf(quantile(q)) - q| allowed, by the dtype the cdf is evaluated in."""

pytestmark = pytest.mark.usefixtures("one_thread")


# ------------------------------------------------------------------------------- float64 references


def adversarial(dtype=F64):
    """Batch of 4 mixtures of 3: very unequal weights, far-apart components, scales at and below
    the clamp (log sigma -8 acts as LOG_SCALE_MIN), very wide ones, and a plain one."""
    logits = [[0.0, -12.0, 3.0], [0.0, 0.0, -25.0], [5.0, 0.0, 0.0], [0.3, -0.2, 0.1]]
    locs = [[-20.0, 0.0, 25.0], [-3.0, 3.0, 40.0], [0.0, 0.01, -0.01], [0.0, 1.0, -1.0]]
    log_scales = [[-8.0, 2.0, -5.0], [-5.0, -5.0, 0.0], [-5.0, -4.0, 1.5], [-1.0, 0.0, -0.5]]
    return LogNormalMixture(*(torch.tensor(v, dtype=dtype) for v in (logits, locs, log_scales)))


def reference(d):
    """(weights, mu, sigma) as float64 numpy arrays (B, K), with sigma clamped as the mixture does."""
    w = torch.softmax(d.logits.double(), -1).numpy()
    return w, d.locs.double().numpy(), np.exp(np.clip(d.log_scales.double().numpy(), LOG_SCALE_MIN, LOG_SCALE_MAX))


def ref_cdf(d, b, tau):
    w, mu, s = reference(d)
    return float((w[b] * stats.norm.cdf((math.log(tau) - mu[b]) / s[b])).sum())


def ref_sf(d, b, tau):
    w, mu, s = reference(d)
    return float((w[b] * stats.norm.sf((math.log(tau) - mu[b]) / s[b])).sum())


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_quantile_brackets_the_reference_cdf_on_adversarial_mixtures(dtype):
    d = adversarial(dtype)
    qs = [1e-9, 1e-3, 0.1, 0.5, 0.9, 0.999, 1 - 1e-9]
    x = d.quantile(torch.tensor(qs, dtype=F64)[:, None])                     # (Q, B), float64
    assert x.dtype == F64 and x.shape == (len(qs), 4) and bool((x > 0).all())
    assert bool((x.diff(dim=0) >= 0).all())                                  # monotone in q
    rel = 1e-10
    for i, q in enumerate(qs):
        for b in range(4):
            t = float(x[i, b])
            if q <= 0.5:   # the reference CDF crosses q within a relative 1e-10 of the answer
                assert ref_cdf(d, b, t * (1 - rel)) <= q * (1 + 1e-9) and ref_cdf(d, b, t * (1 + rel)) >= q * (1 - 1e-9)
            else:          # right tail: in survival form, 1 - q keeps its digits
                p = 1 - q
                assert ref_sf(d, b, t * (1 - rel)) >= p * (1 - 1e-9) and ref_sf(d, b, t * (1 + rel)) <= p * (1 + 1e-9)
    # the mixture's own cdf, in its own dtype, agrees at its dtype's precision
    for q in (0.1, 0.5, 0.9):
        c = d.cdf(d.quantile(q).to(dtype)).double()
        assert float((c - q).abs().max()) < TOL[dtype], (q, c)
    # a single log-normal: the closed form exp(mu + sigma Phi^-1(q))
    one = LogNormalMixture(*(torch.tensor([v], dtype=dtype) for v in (0.0, 0.7, -0.3)))
    for q in (1e-6, 0.25, 0.9):
        exact = stats.lognorm(s=math.exp(float(torch.tensor(-0.3, dtype=dtype))),
                              scale=math.exp(float(torch.tensor(0.7, dtype=dtype)))).ppf(q)
        assert float(one.quantile(q)) == pytest.approx(exact, rel=1e-12)
    with pytest.raises(ValueError, match=r"q must lie in \(0, 1\)"):
        d.quantile(1.0)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_mean_closed_form_against_integrated_survival(dtype):
    d = adversarial(dtype)
    w, mu, s = reference(d)
    mean = d.mean()
    assert mean.dtype == dtype
    for b in range(4):
        # E[T] = int_0^inf P(T > t) dt = int P(T > e^x) e^x dx, piecewise around every component
        sf = lambda x, b=b: math.exp(x) * float((w[b] * stats.norm.sf((x - mu[b]) / s[b])).sum())  # noqa: E731
        lo = float(mu[b].min()) - 60
        hi = float((mu[b] + s[b] ** 2 + 15 * s[b]).max())
        marks = np.concatenate([mu[b] + k * s[b] for k in (-8, 0, 8)] + [mu[b] + s[b] ** 2])  # where sf turns
        points = sorted({lo, hi, *np.clip(marks, lo, hi).tolist()})
        expected = sum(integrate.quad(sf, a, c, epsabs=0, epsrel=1e-12, limit=400)[0]
                       for a, c in zip(points, points[1:]))
        rtol = 1e-9 if dtype == F64 else 1e-5
        assert float(mean[b]) == pytest.approx(expected, rel=rtol), b
        assert float(d.double().mean()[b]) == pytest.approx(expected, rel=1e-9), b


def test_seeded_samples_follow_the_reference_cdf():
    d = adversarial()
    g = torch.Generator().manual_seed(3)
    x = d.sample((20000,), generator=g)                                      # (N, 4)
    again = d.sample((20000,), generator=torch.Generator().manual_seed(3))
    assert x.shape == (20000, 4) and torch.equal(x, again)
    for b in (0, 2, 3):     # b = 1 puts 1e-11 on its third component: no test sees it
        cdf = np.vectorize(lambda t, b=b: ref_cdf(d, b, t))
        assert stats.kstest(x[:2000, b].numpy(), cdf).pvalue > 0.01, b
        wrong = np.vectorize(lambda t, b=b: ref_cdf(d, b, t / 1.1))             # times 10 % longer
        assert stats.kstest(x[:, b].numpy(), wrong).pvalue < 1e-3, b


# ------------------------------------------------------------------------------- EventModel.read


@pytest.mark.parametrize("backbone, options", [*((b, o) for b, o in sorted(TINY_OPTIONS.items())),
                                               ("aaren", {"decay": True, "mass": True})])
def test_read_matches_start_and_step(backbone, options):
    torch.manual_seed(0)
    m = EventModel(5, backbone, d_model=16, n_layers=2, n_components=3, copy_marks=True, **options).double().eval()
    g = torch.Generator().manual_seed(1)
    B, L, n = 2, 11, 3
    dt, marks = torch.rand(B, L, generator=g, dtype=F64) * 2, torch.randint(0, 5, (B, L), generator=g)
    dist, logits, state = m.read(dt, marks, copies=n)
    with torch.no_grad():
        d, lg, s = m.start(B)
        for i in range(L):
            d, lg, s = m.step(dt[:, i], marks[:, i], s)
    for a, b in zip(d, dist):
        torch.testing.assert_close(a.repeat_interleave(n, 0), b, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(lg.repeat_interleave(n, 0), logits, rtol=1e-10, atol=1e-10)
    # the state read goes on like the streamed one, once per copy
    x, y = torch.rand(B, generator=g, dtype=F64), torch.randint(0, 5, (B,), generator=g)
    with torch.no_grad():
        d2, l2, _ = m.step(x, y, s)
        d3, l3, _ = m.step(x.repeat_interleave(n), y.repeat_interleave(n), state)
    for a, b in zip(d2, d3):
        torch.testing.assert_close(a.repeat_interleave(n, 0), b, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(l2.repeat_interleave(n, 0), l3, rtol=1e-10, atol=1e-10)


# ------------------------------------------------------------------------------- the true Hawkes process


class HawkesNext:
    """The next interval of an exponential-kernel Hawkes process given its excitation
    A = sum_j exp(-beta (t - t_j)) just after the last event (one per stream): compensator
    Lambda(tau) = mu tau + alpha A (1 - exp(-beta tau)), the sum of a baseline and an excitation
    part, each sampled exactly by inverting its own compensator; the next event is the earlier."""

    def __init__(self, mu, alpha, beta, excitation):
        self.mu, self.alpha, self.beta, self.a = mu, alpha, beta, excitation

    def sample(self, sample_shape=(), generator=None):
        shape = torch.Size(sample_shape) + self.a.shape
        e1 = torch.empty(shape, dtype=F64).exponential_(generator=generator)
        e2 = torch.empty(shape, dtype=F64).exponential_(generator=generator)
        mass = self.alpha * self.a                                             # the excitation's total
        ok = e2 < mass
        excite = torch.where(ok, -torch.log1p(-torch.where(ok, e2 / mass, 0.0)) / self.beta, math.inf)
        return torch.minimum(e1 / self.mu, excite)

    def cdf(self, tau):
        tau = np.asarray(tau, dtype=np.float64)
        a = self.a.numpy()
        return -np.expm1(-(self.mu * tau + self.alpha * a * -np.expm1(-self.beta * tau)))


class TrueHawkes:
    """The true process behind hawkes1.jsonl with EventModel's reading interface (`simulate`)."""

    def __init__(self, mu, alpha, beta):
        self.mu, self.alpha, self.beta = mu, alpha, beta

    def _next(self, a):
        return HawkesNext(self.mu, self.alpha, self.beta, a), torch.zeros(a.shape[0], 1, dtype=F64), a

    def read(self, dt, marks=None, copies=1):
        t = torch.cumsum(dt[0].double(), 0)                                    # only differences matter
        a = torch.exp(-self.beta * (t[-1] - t)).sum()
        return self._next(a.repeat(copies))

    def step(self, dt_t, mark_t, a):
        return self._next(a * torch.exp(-self.beta * dt_t.double()) + 1.0)


def _hawkes_history(n_events=200):
    s = load_events(HAWKES)[0]
    return EventSequence(s.times[:n_events])


def _dt(seq):
    return torch.from_numpy(np.diff(seq.times, prepend=seq.times[0]))


def test_true_hawkes_next_interval_matches_its_compensator():
    hist = _hawkes_history()
    dist, _, _ = TrueHawkes(*TRUE).read(_dt(hist)[None], copies=1)
    x = dist.sample((5000,), generator=torch.Generator().manual_seed(0))[:, 0].numpy()
    assert np.isfinite(x).all()     # mu > 0: a next event always comes
    assert stats.kstest(x, dist.cdf).pvalue > 0.01                     # a (1,): broadcasts
    wrong = HawkesNext(TRUE[0], 0.5, TRUE[2], dist.a)
    assert stats.kstest(x, wrong.cdf).pvalue < 1e-3


def test_simulated_true_hawkes_has_the_known_rate():
    """Long continuations drawn by `simulate` from the true process: the mean count has the
    process's exact expectation given the history (within a 4 sigma interval of the draws'
    spread), the long-run rate is mu / (1 - alpha) = 1, every continuation's compensator
    increments are Exp(1) (time-rescaling theorem), and a wrong process is rejected."""
    mu, alpha, beta = TRUE
    hist = _hawkes_history()
    n, T = 20, 4000.0
    draws = simulate(TrueHawkes(*TRUE), _dt(hist), None, n, T, torch.Generator().manual_seed(1), max_events=50_000)
    counts = np.array([len(t) for t, _, _ in draws], dtype=np.float64)
    assert not any(cut for _, _, cut in draws)
    # E N(T) given the history: the rate relaxes from r0 to m = mu / (1 - alpha) at kappa = beta (1 - alpha)
    m, kappa = mu / (1 - alpha), beta * (1 - alpha)
    a0 = float(np.exp(-beta * (hist.times[-1] - hist.times)).sum())
    r0 = mu + alpha * beta * a0
    expected = m * T + (r0 - m) * (1 - math.exp(-kappa * T)) / kappa
    half = 4 * counts.std(ddof=1) / math.sqrt(n)
    assert abs(counts.mean() - expected) < half, (counts.mean(), expected, half)
    assert abs(counts.sum() / (n * T) - 1.0) < 0.1
    for t, marks, _ in draws[:5]:
        assert marks is None and np.all(np.diff(t) >= 0) and t[0] > 0 and t[-1] <= T
        full = np.concatenate([hist.times, hist.times[-1] + t])
        inc = hawkes_compensator(full, mu, alpha, beta)[len(hist) - 1:]       # the simulated events
        assert stats.kstest(inc, "expon").pvalue > 0.001
    # the same check rejects another process (alpha 0.6: rate 0.5)
    other = simulate(TrueHawkes(mu, 0.6, beta), _dt(hist), None, n, T, torch.Generator().manual_seed(1))
    other_counts = np.array([len(t) for t, _, _ in other], dtype=np.float64)
    assert abs(other_counts.mean() - expected) > 4 * other_counts.std(ddof=1) / math.sqrt(n)


# ------------------------------------------------------------------------------- trained runs


def _subset(path, n_seq, n_events, marks, unit=1.0):
    seqs = []
    for s in load_events(HAWKES)[:n_seq]:
        t = s.times[:n_events] * unit
        seqs.append(EventSequence(t, (np.arange(len(t)) * 3 % 7).astype(np.int64) if marks else None))
    save_events(seqs, path)
    return path


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Debug runs on a few short hawkes1 sequences: unmarked, with 7 cycling marks, and unmarked
    in a time unit 1000 times smaller (every time multiplied by 1000)."""
    tmp = tmp_path_factory.mktemp("events_predict")
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        out = {}
        for kind, marks, unit in (("plain", False, 1.0), ("marked", True, 1.0), ("slow", False, 1000.0)):
            data = _subset(tmp / f"{kind}.jsonl", 10, 120, marks, unit)
            run = tmp / f"run-{kind}"
            run_events(parse_events_config(["--data", str(data), "--config", "debug", "--out", str(run),
                                            "--plots", "false", "--device", "cpu"]), log=lambda *_: None)
            out[kind] = (data, run)
        return out
    finally:
        torch.set_num_threads(n)


def _lines(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_sampled_next_intervals_follow_the_models_density(runs):
    data, run = runs["plain"]
    loaded = load_run(str(run), [], "cpu")
    model = loaded.models["aaren"]
    seq = load_events(data)[0]
    dt, marks = loaded.history(seq)
    s = loaded.scale.scale
    # one simulated event per draw (max_events 1, horizon far away): the first interval
    draws = simulate(model, dt, marks, 4000, 1e12, torch.Generator().manual_seed(0), scale=s, max_events=1)
    x = np.array([t[0] for t, _, cut in draws])
    assert all(cut and len(t) == 1 for t, _, cut in draws)
    dist = model.read(dt[None], None)[0].double()
    cdf = lambda t: dist.cdf(torch.as_tensor(t / s, dtype=F64)[:, None])[:, 0].numpy()  # noqa: E731
    assert stats.kstest(x, cdf).pvalue > 0.01
    wrong = LogNormalMixture(dist.logits, dist.locs + 0.2, dist.log_scales)  # times 22 % longer
    assert stats.kstest(x, lambda t: wrong.cdf(torch.as_tensor(t / s, dtype=F64)[:, None])[:, 0].numpy()).pvalue < 1e-3


def test_predict_writes_the_next_event_distribution(runs, tmp_path):
    data, run = runs["plain"]
    out = tmp_path / "next.jsonl"
    assert main(["events", "predict", "--run", str(run), "--data", str(data), "--out", str(out)]) == 0
    lines, seqs = _lines(out), load_events(data)
    assert len(lines) == len(seqs)
    loaded = load_run(str(run), [], "cpu")
    model, s = loaded.models["aaren"], loaded.scale.scale
    # the model's own distributions, read as the command reads them (one batch: one length)
    every = model.read(torch.stack([loaded.history(seq)[0] for seq in seqs]))[0].double()
    for i, (line, seq) in enumerate(zip(lines, seqs)):
        assert line["sequence"] == i and line["line"] == i + 1 and line["events"] == len(seq)
        assert line["last_time"] == float(seq.times[-1]) and list(line["models"]) == ["aaren"]
        p = line["models"]["aaren"]
        assert set(p) == {"mean", "median", "q10", "q90"}
        assert 0 < p["q10"] < p["median"] < p["q90"]
        # the model's own CDF in the file's time unit: cdf(t / scale)
        dist = LogNormalMixture(*(v[i] for v in every))
        for key, q in (("q10", 0.1), ("median", 0.5), ("q90", 0.9)):
            assert float(dist.cdf(torch.tensor(p[key] / s, dtype=F64))) == pytest.approx(q, abs=1e-9), key
        assert p["mean"] == pytest.approx(float(dist.mean()) * s, rel=1e-12)
        # the same prediction by the forward pass (float32: another order of sums), alone, over
        # the history and one more event, whose last entry reads the whole history
        dt = loaded.history(seq)[0]
        dt1 = torch.cat([dt, torch.ones(1)])[None]
        with torch.no_grad():
            fwd, _ = model({"dt": dt1, "marks": torch.zeros_like(dt1, dtype=torch.long),
                            "lengths": torch.tensor([len(seq) + 1]), "has_marks": False})
        assert p["mean"] == pytest.approx(float(fwd.double().mean()[0, -1]) * s, rel=1e-4)


def test_predictions_are_in_the_files_time_unit(runs, tmp_path):
    """The same events in a unit 1000 times smaller train the same model (it runs on times /
    mean interval), so every predicted time is 1000 times larger."""
    got = {}
    for kind in ("plain", "slow"):
        data, run = runs[kind]
        out = tmp_path / f"{kind}.jsonl"
        assert main(["events", "predict", "--run", str(run), "--data", str(data), "--out", str(out)]) == 0
        got[kind] = [line["models"]["aaren"] for line in _lines(out)]
    for plain, slow in zip(got["plain"], got["slow"]):
        for key in ("mean", "median", "q10", "q90"):
            assert slow[key] == pytest.approx(1000 * plain[key], rel=1e-4), key


def test_predict_marked_gives_the_five_likeliest_marks(runs, tmp_path):
    data, run = runs["marked"]
    out = tmp_path / "next.jsonl"
    assert main(["events", "predict", "--run", str(run), "--data", str(data), "--out", str(out),
                 "--model", "aaren"]) == 0
    loaded = load_run(str(run), [], "cpu")
    for line, seq in zip(_lines(out), load_events(data)):
        marks = line["models"]["aaren"]["marks"]
        dt, mk = loaded.history(seq)
        probs = torch.softmax(loaded.models["aaren"].read(dt[None], mk[None])[1][0].double(), -1)
        top = probs.argsort(descending=True)[:5].tolist()
        assert [m["mark"] for m in marks] == top
        np.testing.assert_allclose([m["p"] for m in marks], probs[top].numpy(), rtol=1e-5)  # float32, batch of 1


@pytest.mark.parametrize("kind", ["plain", "marked"])
def test_simulate_writes_parseable_seeded_continuations(runs, tmp_path, kind):
    data, run = runs[kind]
    n, T = 3, 4.0
    argv = ["events", "predict", "--run", str(run), "--data", str(data), "--simulate", str(n), "--horizon", str(T)]
    assert main([*argv, "--seed", "7", "--out", str(tmp_path / "a.jsonl")]) == 0
    assert main([*argv, "--seed", "7", "--out", str(tmp_path / "b.jsonl")]) == 0
    assert main([*argv, "--seed", "8", "--out", str(tmp_path / "c.jsonl")]) == 0
    a = (tmp_path / "a.jsonl").read_text()
    assert a == (tmp_path / "b.jsonl").read_text() and a != (tmp_path / "c.jsonl").read_text()
    seqs, parsed, lines = load_events(data), load_events(tmp_path / "a.jsonl"), _lines(tmp_path / "a.jsonl")
    assert len(parsed) == len(lines) == n * len(seqs)
    simulated = 0
    for i, seq in enumerate(seqs):
        mine = [(line, p) for line, p in zip(lines, parsed) if line["sequence"] == i]
        assert [line["draw"] for line, _ in mine] == list(range(n))
        for line, p in mine:
            h = line["history"]
            assert h == len(seq) and line["model"] == "aaren" and line["truncated"] is False
            np.testing.assert_array_equal(p.times[:h], seq.times)
            new = p.times[h:]
            simulated += len(new)
            assert np.all(np.diff(p.times[h - 1:]) >= 0) and np.all(new <= seq.times[-1] + T)
            if kind == "marked":
                np.testing.assert_array_equal(p.marks[:h], seq.marks)
                assert np.all((p.marks[h:] >= 0) & (p.marks[h:] < 7))
            else:
                assert p.marks is None
    assert simulated > 0


# ------------------------------------------------------------------------------- bad input


def test_bad_input_is_one_message_and_writes_nothing(runs, tmp_path, capsys):
    data, run = runs["plain"]
    mdata, mrun = runs["marked"]
    exists = tmp_path / "exists.jsonl"
    exists.write_text("keep me\n")
    unseen = tmp_path / "unseen.jsonl"
    rows = [json.loads(line) for line in mdata.read_text().splitlines()][:3]
    rows[2]["marks"][5] = 9
    unseen.write_text("\n".join(json.dumps(r) for r in rows[:2]) + "\n\n" + json.dumps(rows[2]) + "\n")  # line 4
    not_events = tmp_path / "forecast-run"
    not_events.mkdir()
    (not_events / "results.json").write_text(json.dumps({"config": {"csv": "x.csv", "horizons": [4]}, "results": {}}))
    baselines_only = tmp_path / "baselines-only"
    shutil.copytree(run, baselines_only)
    state = json.loads((run / "results.json").read_text())
    state["results"].pop("aaren")
    (baselines_only / "results.json").write_text(json.dumps(state))
    no_ckpt = tmp_path / "no-checkpoint"
    shutil.copytree(run, no_ckpt)
    (no_ckpt / "aaren" / "checkpoints" / "last.pt").unlink()
    out = tmp_path / "o.jsonl"
    cases = [
        (["--run", str(tmp_path), "--data", str(data)], "has no results.json"),
        (["--run", str(not_events), "--data", str(data)], "is not the results of an `rlts events` run"),
        (["--run", str(baselines_only), "--data", str(data)], "holds no finished neural model"),
        (["--run", str(no_ckpt), "--data", str(data)], "holds no checkpoint of aaren"),
        (["--run", str(run), "--data", str(data), "--models", "gru"], "has no finished model gru"),
        (["--run", str(run), "--data", str(tmp_path / "nothing.jsonl")], "event file not found"),
        (["--run", str(run), "--data", str(exists)], "bad JSON"),
        (["--run", str(mrun), "--data", str(unseen)], "line 4: mark 9 (marks[5]) is not a mark of the run"),
        (["--run", str(run), "--data", str(mdata)], "has 'marks' but the run was trained on unmarked events"),
        (["--run", str(mrun), "--data", str(data)], "has no 'marks' but the run was trained on marked events"),
        (["--run", str(run), "--data", str(data), "--out", str(exists)], "already exists"),
        (["--run", str(run), "--data", str(data), "--simulate", "5"], "needs --horizon"),
        (["--run", str(run), "--data", str(data), "--horizon", "5"], "give --simulate N too"),
        (["--run", str(run), "--data", str(data), "--simulate", "0", "--horizon", "5"], "simulate must"),
        (["--run", str(run), "--data", str(data), "--simulate", "2", "--horizon", "0"], "horizon must"),
        (["--run", str(run), "--data", str(data), "--simulate", "2", "--horizon", "-1"], "horizon must"),
        (["--run", str(run), "--data", str(data), "--simulate", "2", "--horizon", "1", "--max_events", "0"],
         "max_events must"),
    ]
    for argv, message in cases:
        target = argv[argv.index("--out") + 1] if "--out" in argv else str(out)
        argv = argv if "--out" in argv else [*argv, "--out", str(out)]
        assert main(["events", "predict", *argv]) == 2, argv
        err = capsys.readouterr().err
        assert err.startswith("rlts events predict: error:") and message in err and err.count("\n") == 1, (argv, err)
        assert not out.exists(), argv
        assert target == str(out) or exists.read_text() == "keep me\n"
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []   # no temporary file left
