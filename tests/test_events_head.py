"""rlts.heads.events: the log-normal mixture (densities against scipy and a direct float64
sum, normalisation, exact sampling, closed-form mean, tails), and EventModel (causality of
the shifted history, padding invariance, streaming == parallel for every backbone, fitting a
periodic process, event_loss / evaluate_events bookkeeping, input validation)."""
import math

import numpy as np
import pytest
import torch
from scipy import stats

from rlts.heads.events import (LOG_SCALE_MAX, LOG_SCALE_MIN, EventModel, LogNormalMixture, evaluate_events,
                               event_loss)

from _backbones import TINY_OPTIONS

F64 = torch.float64
OPTIONS = TINY_OPTIONS  # tiny blocks, d_model 16
BACKBONES = sorted(OPTIONS)


pytestmark = pytest.mark.usefixtures("one_thread")


def mixture(batch=(), K=3, seed=0, scale=(-1.0, 0.0)):
    g = torch.Generator().manual_seed(seed)
    shape = tuple(batch) + (K,)
    logits = torch.randn(shape, generator=g, dtype=F64)
    locs = torch.randn(shape, generator=g, dtype=F64)
    log_scales = scale[0] + (scale[1] - scale[0]) * torch.rand(shape, generator=g, dtype=F64)
    return LogNormalMixture(logits, locs, log_scales)


def direct_density(d, tau):
    """float64 sum over components of the closed-form log-normal density (one batch element)."""
    w = torch.softmax(d.logits, -1).tolist()
    total = 0.0
    for wk, mu, ls in zip(w, d.locs.tolist(), d.log_scales.tolist()):
        s = math.exp(ls)
        total += wk * math.exp(-(math.log(tau) - mu) ** 2 / (2 * s * s)) / (tau * s * math.sqrt(2 * math.pi))
    return total


def model(backbone="aaren", n_marks=3, **kw):
    kw = {"d_model": 16, "n_layers": 2, "n_components": 3, **OPTIONS[backbone], **kw}
    torch.manual_seed(0)
    return EventModel(n_marks, backbone, **kw).double().eval()


def random_batch(B=3, L=7, n_marks=3, lengths=None, seed=1):
    g = torch.Generator().manual_seed(seed)
    dt = torch.rand(B, L, generator=g, dtype=F64) * 2 + 0.01
    marks = torch.randint(0, n_marks, (B, L), generator=g)
    lengths = torch.full((B,), L) if lengths is None else torch.tensor(lengths)
    return {"dt": dt, "marks": marks, "lengths": lengths, "has_marks": n_marks > 1}


# ------------------------------------------------------------------------------- the mixture

def test_single_lognormal_matches_scipy():
    mu, ls = 0.3, -0.4
    d = LogNormalMixture(torch.zeros(1, dtype=F64), torch.tensor([mu], dtype=F64), torch.tensor([ls], dtype=F64))
    tau = torch.tensor([1e-3, 0.1, 0.7, 1.0, 2.5, 10.0, 50.0], dtype=F64)
    ref = stats.lognorm(s=math.exp(ls), scale=math.exp(mu))
    x = tau.numpy()
    np.testing.assert_allclose(d.log_prob(tau).numpy(), ref.logpdf(x), rtol=1e-10, atol=1e-10)
    np.testing.assert_allclose(d.log_cdf(tau).numpy(), ref.logcdf(x), rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(d.log_survival(tau).numpy(), ref.logsf(x), rtol=1e-9, atol=1e-12)
    assert float(d.mean()) == pytest.approx(ref.mean(), rel=1e-12)


def test_mixture_log_prob_matches_direct_sum_and_integrates_to_one():
    d = mixture(batch=(4,), K=3)
    tau = torch.tensor([0.05, 0.5, 1.3, 4.0], dtype=F64)
    lp = d.log_prob(tau)  # tau[b] under element b
    for b in range(4):
        one = LogNormalMixture(d.logits[b], d.locs[b], d.log_scales[b])
        assert float(lp[b]) == pytest.approx(math.log(direct_density(one, float(tau[b]))), rel=1e-12)
    # integral over tau = integral over u = log tau of p(e^u) e^u du, on a fine grid
    u = torch.linspace(-25, 25, 200001, dtype=F64)
    dens = d.log_prob(u.exp()[:, None]).exp() * u.exp()[:, None]     # (N, 4)
    total = torch.trapezoid(dens, u, dim=0)
    torch.testing.assert_close(total, torch.ones(4, dtype=F64), atol=1e-8, rtol=0)
    # not a density for tau <= 0
    assert torch.isneginf(d.log_prob(torch.zeros(4, dtype=F64))).all()
    assert torch.isneginf(d.log_prob(-torch.ones(4, dtype=F64))).all()


def test_sampling_matches_cdf_and_mean():
    d = mixture(K=3, seed=3, scale=(-1.5, -0.7))  # moderate tails: a well-estimated mean
    torch.manual_seed(0)
    x = d.sample((20000,))
    assert x.shape == (20000,) and bool((x > 0).all())
    cdf = lambda v: d.cdf(torch.as_tensor(v, dtype=F64)).numpy()  # noqa: E731
    assert stats.kstest(x.numpy(), cdf).pvalue > 0.01
    # a wrong distribution is rejected by the same test (so it can fail)
    shifted = LogNormalMixture(d.logits, d.locs + 0.05, d.log_scales)
    assert stats.kstest(x.numpy(), lambda v: shifted.cdf(torch.as_tensor(v, dtype=F64)).numpy()).pvalue < 1e-3
    se = float(x.std()) / math.sqrt(x.numel())
    assert abs(float(x.mean()) - float(d.mean())) < 4 * se
    # batch shapes: sample_shape + batch_shape, each element its own distribution
    db = mixture(batch=(2, 3), K=2, seed=4, scale=(-1.5, -1.0))
    s = db.sample((4000,))
    assert s.shape == (4000, 2, 3)
    rel = (s.mean(0) - db.mean()).abs() / db.mean()
    assert float(rel.max()) < 0.05


def test_mean_matches_monte_carlo_by_quadrature():
    d = mixture(batch=(3,), K=4, seed=5)
    u = torch.linspace(-30, 30, 200001, dtype=F64)
    t = u.exp()[:, None]
    mc = torch.trapezoid(d.log_prob(t).exp() * t * t, u, dim=0)        # integral tau p(tau) dtau
    torch.testing.assert_close(d.mean(), mc, rtol=1e-8, atol=0)


def test_survival_and_tails_are_finite():
    d = mixture(batch=(3,), K=3, seed=6)
    tau = torch.tensor([0.2, 1.0, 3.0], dtype=F64)
    torch.testing.assert_close(d.log_survival(tau), torch.log1p(-d.cdf(tau)), rtol=1e-10, atol=1e-12)
    # far right tail: 1 - cdf is 0 in float64, log_survival is not; compare with scipy's logsf
    one = LogNormalMixture(torch.zeros(1, dtype=F64), torch.tensor([0.0], dtype=F64), torch.tensor([0.0], dtype=F64))
    far = torch.tensor([math.exp(10.0), math.exp(30.0)], dtype=F64)
    assert float(one.cdf(far)[0]) == 1.0
    np.testing.assert_allclose(one.log_survival(far).numpy(), stats.lognorm(s=1.0).logsf(far.numpy()), rtol=1e-8)
    # float32, from the far left to the far right: finite log_prob, log_survival, log_intensity
    d32 = LogNormalMixture(*(p.float() for p in d))
    t32 = torch.logspace(-30, 30, 61)[:, None]
    for f in (d32.log_prob, d32.log_survival, d32.log_cdf, d32.log_intensity):
        v = f(t32)
        assert torch.isfinite(v).all(), f.__name__
    assert float(d32.log_survival(t32)[-1].max()) < -100   # truly small, not 0
    assert float(d32.log_cdf(t32)[0].max()) < -100
    # the hazard of a single log-normal is p / (1 - F)
    t = torch.tensor([0.5, 2.0], dtype=F64)
    ref = stats.lognorm(s=1.0)
    np.testing.assert_allclose(one.log_intensity(t).numpy(), ref.logpdf(t.numpy()) - ref.logsf(t.numpy()), rtol=1e-10)


def test_log_scales_are_clamped():
    d = LogNormalMixture(torch.zeros(2), torch.zeros(2), torch.tensor([-50.0, 50.0]))
    torch.testing.assert_close(d.clamped_log_scales(), torch.tensor([LOG_SCALE_MIN, LOG_SCALE_MAX]))
    assert torch.isfinite(d.mean()) and torch.isfinite(d.log_prob(torch.tensor(1.0)))


# ---------------------------------------------------------------------------------- the model

def test_shapes_and_decoder_bounds():
    m = model(n_marks=5)
    b = random_batch(n_marks=5)
    dist, logits = m(b)
    assert dist.locs.shape == dist.logits.shape == dist.log_scales.shape == (3, 7, 3)
    assert logits.shape == (3, 7, 5)
    assert dist.batch_shape == (3, 7)
    ls = dist.log_scales
    assert bool((ls > LOG_SCALE_MIN).all() and (ls < LOG_SCALE_MAX).all())
    dt_hat, mark_hat = m.predict_next(b)
    assert dt_hat.shape == mark_hat.shape == (3, 7) and bool((dt_hat > 0).all())
    # unmarked: no mark parameters, mark NLL 0
    m1 = model(n_marks=1)
    b1 = random_batch(n_marks=1)
    out = m1.nll(b1)
    assert float(out["mark_sum"]) == 0.0 and m1(b1)[1].shape == (3, 7, 1)
    assert not any("mark" in n for n, _ in m1.named_parameters())


@pytest.mark.parametrize("backbone", ["aaren", "mamba", "transformer"])
def test_predictions_are_causal(backbone):
    """Prediction i uses events 0..i-1 only: changing event j leaves predictions 0..j alone,
    and does change prediction j + 1 (the shift is by exactly one)."""
    m = model(backbone).requires_grad_(False)
    b = random_batch(B=1, L=8)
    dist, logits = m(b)
    j = 4
    b2 = {**b, "dt": b["dt"].clone(), "marks": b["marks"].clone()}
    b2["dt"][0, j] += 1.7
    b2["marks"][0, j] = (b2["marks"][0, j] + 1) % 3
    dist2, logits2 = m(b2)
    for p, p2 in zip(dist, dist2):
        torch.testing.assert_close(p[:, :j + 1], p2[:, :j + 1], rtol=0, atol=1e-12)
        assert float((p[:, j + 1] - p2[:, j + 1]).abs().max()) > 1e-6
    torch.testing.assert_close(logits[:, :j + 1], logits2[:, :j + 1], rtol=0, atol=1e-12)
    assert float((logits[:, j + 1] - logits2[:, j + 1]).abs().max()) > 1e-6


@pytest.mark.parametrize("backbone", ["aaren", "mamba2"])
def test_padding_invariance(backbone):
    """A padded batch (garbage, even NaN, in the padding) gives each sequence the NLL it gets alone."""
    m = model(backbone)
    lengths = [7, 3, 5]
    b = random_batch(B=3, L=7, lengths=lengths)
    b["dt"][1, 3:] = float("nan")
    b["dt"][2, 5:] = -4.0
    b["marks"][1, 3:] = 99
    out = m.nll(b)
    assert int(out["count"]) == sum(lengths)
    for i, n in enumerate(lengths):
        alone = {"dt": b["dt"][i:i + 1, :n], "marks": b["marks"][i:i + 1, :n], "lengths": torch.tensor([n])}
        ref = m.nll(alone)
        torch.testing.assert_close(out["time"][i].sum(), ref["time_sum"], rtol=1e-10, atol=1e-10)
        torch.testing.assert_close(out["mark"][i].sum(), ref["mark_sum"], rtol=1e-10, atol=1e-10)
        assert float(out["time"][i, n:].detach().abs().sum()) == 0.0
    loss, _ = event_loss(m.train(), b)
    loss.backward()
    assert all(torch.isfinite(p.grad).all() for p in m.parameters() if p.grad is not None)


@pytest.mark.parametrize("backbone,copy", [(b, False) for b in BACKBONES] + [("aaren", True), ("transformer", True)])
def test_step_equals_forward(backbone, copy):
    m = model(backbone, copy_marks=copy)
    if copy:
        _randomise_copy_path(m)
    b = random_batch(B=2, L=6)
    dist, logits = m(b)
    with torch.no_grad():
        d_t, l_t, state = m.start(2)
        for i in range(6):
            for p, p_t in zip(dist, d_t):
                torch.testing.assert_close(p[:, i], p_t, rtol=1e-9, atol=1e-9)
            torch.testing.assert_close(logits[:, i], l_t, rtol=1e-9, atol=1e-9)
            d_t, l_t, state = m.step(b["dt"][:, i], b["marks"][:, i], state)
    if backbone != "transformer":  # recurrent: the state does not grow
        def sizes(s):
            leaves = torch.utils._pytree.tree_leaves(s)
            return sum(t.numel() for t in leaves if isinstance(t, torch.Tensor))
        before = sizes(state)
        _, _, state = m.step(b["dt"][:, 0], b["marks"][:, 0], state)
        assert sizes(state) == before


def test_fits_a_periodic_process():
    """dt = 1 always, marks alternating 0, 1, 0, ...: both are predictable from the history,
    so the per-event NLL falls far below its value at initialisation (~1.2 + log 2)."""
    torch.manual_seed(0)
    m = EventModel(2, "aaren", d_model=16, n_layers=2, n_components=2)
    L, B = 16, 8
    b = {"dt": torch.ones(B, L), "marks": (torch.arange(L) % 2).repeat(B, 1), "lengths": torch.full((B,), L),
         "has_marks": True}
    b["marks"][::2] = 1 - b["marks"][::2]  # half the sequences start with mark 1
    m.set_time_scale(torch.rand(100) * 2)  # a data-like scale, not the exact answer
    opt = torch.optim.Adam(m.parameters(), lr=1e-2)
    first, _ = event_loss(m, b)
    for _ in range(150):
        loss, metrics = event_loss(m, b)
        opt.zero_grad()
        loss.backward()
        opt.step()
    m.eval()
    with torch.no_grad():
        final = m.nll(b)
    n = float(final["count"])
    time_nll, mark_nll = float(final["time_sum"]) / n, float(final["mark_sum"]) / n
    assert float(first.detach()) > 1.0
    print(f"loss at init {float(first.detach()):.3f}; after: time {time_nll:.3f}, mark {mark_nll:.3f}")
    assert time_nll < -1.5, time_nll          # a sharp density at dt = 1
    assert mark_nll < 0.1, mark_nll           # the first mark is a coin flip: log 2 / 16 ~ 0.04
    dt_hat, mark_hat = m.predict_next(b)
    assert float((dt_hat - 1).abs().max()) < 0.1
    assert bool((mark_hat[:, 1:] == b["marks"][:, 1:]).all())


def test_event_loss_and_evaluate_events_bookkeeping():
    m = model(n_marks=3).requires_grad_(False)
    b1 = random_batch(B=2, L=6, lengths=[6, 2], seed=1)
    b2 = random_batch(B=3, L=4, lengths=[1, 4, 3], seed=2)
    ev = evaluate_events(m, [b1, b2])
    sums = {"time": 0.0, "mark": 0.0, "sq": 0.0, "correct": 0, "n": 0}
    for b in (b1, b2):
        out = m.nll(b)
        dt_hat, mark_hat = m.predict_next(b)
        mask = out["scored"]
        sums["time"] += float(out["time"][mask].sum())
        sums["mark"] += float(out["mark"][mask].sum())
        sums["sq"] += float(((dt_hat - b["dt"])[mask] ** 2).sum())
        sums["correct"] += int((mark_hat == b["marks"])[mask].sum())
        sums["n"] += int(mask.sum())
        loss, metrics = event_loss(m, b)
        assert float(loss) == pytest.approx(float(out["time"][mask].mean() + out["mark"][mask].mean()))
        assert metrics["n_events"] == int(mask.sum())
        assert metrics["nll"] == pytest.approx(metrics["nll_time"] + metrics["nll_mark"])
    n = sums["n"]
    assert ev["n_events"] == n == 8 + 8
    assert ev["nll_time"] == pytest.approx(sums["time"] / n)
    assert ev["nll_mark"] == pytest.approx(sums["mark"] / n)
    assert ev["nll"] == pytest.approx((sums["time"] + sums["mark"]) / n)
    assert ev["rmse"] == pytest.approx(math.sqrt(sums["sq"] / n))
    assert ev["accuracy"] == pytest.approx(sums["correct"] / n)
    # predict_first=False: event 0 only starts the history
    out = m.nll({**b1, "predict_first": False})
    assert int(out["count"]) == 6 + 2 - 2 and float(out["time"][:, 0].abs().sum()) == 0.0


def test_set_time_scale():
    m = EventModel(1, "gru", d_model=8, n_layers=1)
    dt = torch.tensor([[1.0, 2.0, 4.0], [8.0, 100.0, -1.0]])
    m.set_time_scale({"dt": dt, "marks": torch.zeros(2, 3, dtype=torch.long), "lengths": torch.tensor([3, 1])})
    logs = torch.log(torch.tensor([1.0, 2.0, 4.0, 8.0]) + m.eps)
    assert float(m.log_dt_mean) == pytest.approx(float(logs.mean()), rel=1e-5)
    assert float(m.log_dt_std) == pytest.approx(float(logs.std(unbiased=False)), rel=1e-5)
    # predict_first=False (origin "first"): dt[:, 0] only starts the history and is not used
    m.set_time_scale({"dt": dt, "marks": torch.zeros(2, 3, dtype=torch.long), "lengths": torch.tensor([3, 2]),
                      "predict_first": False})
    logs = torch.log(torch.tensor([2.0, 4.0, 100.0]) + m.eps)
    assert float(m.log_dt_mean) == pytest.approx(float(logs.mean()), rel=1e-5)
    assert "log_dt_mean" in m.state_dict()


def test_bad_input_raises():
    m = model(n_marks=3)
    good = random_batch(B=2, L=5, lengths=[5, 3])
    m(good)

    def bad(match, **change):
        with pytest.raises(ValueError, match=match):
            m({**good, **change})

    bad(r"'dt'.*shape \(B, L\)", dt=good["dt"][0])
    bad(r"'dt'.*float", dt=good["dt"].long())
    bad(r"'marks'.*shape \(B, L\) = \(2, 5\)", marks=good["marks"][:, :4])
    bad(r"'marks'.*integer", marks=good["marks"].double())
    bad(r"'lengths'.*shape \(B,\)", lengths=torch.tensor([5]))
    bad(r"'lengths'\] must lie in \[1, L\] = \[1, 5\]", lengths=torch.tensor([6, 3]))
    bad(r"'lengths'\] must lie in \[1, L\]", lengths=torch.tensor([0, 3]))
    dt = good["dt"].clone()
    dt[1, 2] = -0.5
    bad(r"negative value -0.5 at batch index 1, event 2", dt=dt)
    dt = good["dt"].clone()
    dt[0, 1] = float("nan")
    bad(r"NaN value nan at batch index 0, event 1", dt=dt)
    dt = good["dt"].clone()
    dt[0, 4] = float("inf")
    bad(r"infinite value", dt=dt)
    marks = good["marks"].clone()
    marks[1, 0] = 3
    bad(r"mark 3 at batch index 1, event 0; marks must lie in \[0, n_marks\) = \[0, 3\)", marks=marks)
    marks[1, 0] = -1
    bad(r"mark -1", marks=marks)
    bad(r"has_marks=False.*n_marks = 3", has_marks=False)
    with pytest.raises(ValueError, match="no 'lengths'"):
        m({"dt": good["dt"], "marks": good["marks"]})
    with pytest.raises(ValueError, match="must be a dict"):
        m(good["dt"])
    # padding is not checked: a NaN after lengths is fine
    dt = good["dt"].clone()
    dt[1, 4] = float("nan")
    m({**good, "dt": dt})
    _, _, state = m.start(2)
    with pytest.raises(ValueError, match=r"dt_t must be a float tensor of shape \(B,\)"):
        m.step(good["dt"], good["marks"][:, 0], state)
    with pytest.raises(ValueError, match="mark_t is required"):
        m.step(good["dt"][:, 0], None, state)
    with pytest.raises(ValueError, match=r"negative"):
        m.step(-good["dt"][:, 0], good["marks"][:, 0], state)
    with pytest.raises(ValueError, match="n_marks must be an int >= 1"):
        EventModel(0)


@pytest.mark.parametrize("origin", ["first", "zero"])
def test_batches_from_collate_events(origin):
    """The data side's batches (rlts.data.events) are scored on exactly the predicted events:
    with origin "first" event 0 (dt 0) only starts the history."""
    events = pytest.importorskip("rlts.data.events")
    rng = np.random.default_rng(0)
    seqs = [events.EventSequence(np.cumsum(rng.exponential(1.0, n)), rng.integers(0, 3, n)) for n in (4, 9, 6)]
    data = events.EventDataset(seqs, scale=1.0, origin=origin)
    batches = [events.collate_events([data[0], data[1]]), events.collate_events([data[2]])]
    m = model(n_marks=3).requires_grad_(False)
    m.set_time_scale(batches[0])
    ev = evaluate_events(m, batches)
    assert ev["n_events"] == events.num_predicted_events(seqs, origin)
    mask = m.nll(batches[0])["scored"]
    torch.testing.assert_close(mask, events.predicted_mask(batches[0]["lengths"], mask.shape[1], origin))


def _randomise_copy_path(m, seed=3):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        m.copy_head.weight.copy_(torch.randn(m.copy_head.weight.shape, generator=g, dtype=F64))
        m.copy_head.bias.copy_(torch.tensor([0.7, -0.4], dtype=F64))
        m.copy_decay.fill_(0.3)


@pytest.mark.parametrize("L", [1, 9])
def test_copy_marks_against_a_direct_loop(L):
    """copy_marks against a direct float64 loop: logits[i] = the plain decoder's + a_i at the
    previous event's mark + b_i * sum_{j<i} gamma^(i-1-j) at each earlier mark (nothing at
    i = 0); zero-initialised, so a fresh model predicts exactly as without it; gradients reach
    the copy head and gamma; chunked scatter = one chunk."""
    b = random_batch(B=3, L=L, n_marks=5, lengths=[L, max(1, L - 4), L])
    m = model("aaren", n_marks=5, copy_marks=True)
    plain = model("aaren", n_marks=5)
    plain.load_state_dict({k: v for k, v in m.state_dict().items() if not k.startswith("copy_")})
    torch.testing.assert_close(m(b)[1], plain(b)[1], rtol=0, atol=0)     # no-op at initialisation

    _randomise_copy_path(m)
    hs = []
    hook = m.backbone.register_forward_hook(lambda mod, inp, out: hs.append(out[0].detach()))
    logits = m(b)[1]
    hook.remove()
    base, h = plain(b)[1].detach(), hs[0]
    gamma = 1 / (1 + math.exp(-0.3))
    W, bias = m.copy_head.weight.detach(), m.copy_head.bias.detach()
    for bi in range(3):
        marks = [int(v) for v in b["marks"][bi]]
        for i in range(L):
            expect = base[bi, i].clone()
            a_i = float(h[bi, i] @ W[0] + bias[0])
            b_i = float(h[bi, i] @ W[1] + bias[1])
            if i > 0:
                expect[marks[i - 1]] += a_i
            for j in range(i):
                expect[marks[j]] += b_i * gamma ** (i - 1 - j)
            if i < int(b["lengths"][bi]):  # padded entries are never scored
                torch.testing.assert_close(logits[bi, i], expect, rtol=1e-12, atol=1e-12)
    if L > 1:
        m.nll(b)["mark_sum"].backward()
        assert m.copy_head.weight.grad.abs().sum() > 0 and m.copy_decay.grad.abs() > 0
    assert model("aaren", n_marks=1, copy_marks=True).copy_head is None  # unmarked: nothing to copy


def test_copy_marks_chunks_long_sequences(monkeypatch):
    """The scatter runs in row chunks to bound memory: tiny chunks give the same logits."""
    m = model("gru", n_marks=4, copy_marks=True)
    _randomise_copy_path(m)
    b = random_batch(B=2, L=13, n_marks=4)
    whole = m(b)[1]
    import rlts.heads.events as ev
    monkeypatch.setattr(ev, "_COPY_SCATTER_ELEMENTS", 5)  # rows of 1 at B * L = 26
    torch.testing.assert_close(m(b)[1], whole, rtol=0, atol=0)
