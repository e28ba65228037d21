"""rlts.data.events: loading and its errors, splits, time scale, batches, Poisson and Hawkes
baselines (likelihood against a naive loop with quadrature, simulation, fitting)."""
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from scipy import integrate, stats

from rlts.data.events import (EventDataset, EventSequence, HawkesParams, TimeScale,
                              collate_events, fit_hawkes, fit_poisson_rate, hawkes_compensator,
                              hawkes_intensity, hawkes_log_densities, hawkes_log_likelihood,
                              hawkes_nll_per_event, load_events, num_predicted_events,
                              poisson_nll_per_event, predicted_mask, repeat_mark_accuracy,
                              save_events, simulate_hawkes, split_sequences)
from rlts.data.events import _hawkes_terms, _pad_times

TPP = Path(__file__).resolve().parents[2] / "shared" / "data" / "tpp"
needs_hawkes1 = pytest.mark.skipif(not (TPP / "hawkes1.jsonl").is_file(),
                                   reason=f"TPP data not found at {TPP} (../shared beside the checkout)")
TRUE = HawkesParams(0.2, 0.8, 1.0)


def write(tmp_path, lines, name="ev.jsonl"):
    path = tmp_path / name
    path.write_text("\n".join(lines) + "\n")
    return path


# ----------------------------------------------------------------------------- loading


def test_round_trip_with_and_without_marks(tmp_path):
    rng = np.random.default_rng(0)
    seqs = [EventSequence(np.cumsum(rng.exponential(size=n)), rng.integers(0, 5, size=n))
            for n in (1, 3, 7)]
    path = save_events(seqs, tmp_path / "sub" / "m.jsonl")
    back = load_events(path)
    assert len(back) == 3
    for a, b in zip(seqs, back):
        assert b.times.dtype == np.float64 and b.marks.dtype == np.int64
        np.testing.assert_array_equal(a.times, b.times)  # exact, repr precision
        np.testing.assert_array_equal(a.marks, b.marks)
    plain = [EventSequence(s.times) for s in seqs]
    back = load_events(save_events(plain, tmp_path / "p.jsonl"))
    assert all(b.marks is None for b in back)
    np.testing.assert_array_equal(back[2].times, plain[2].times)
    # ties and blank lines are fine
    s = load_events(write(tmp_path, ['{"times": [0, 1, 1, 2]}', "", '{"times": [5]}']))
    assert [len(x) for x in s] == [4, 1]


@pytest.mark.parametrize("line, message", [
    ("{not json", "bad JSON"),
    ('{"marks": [1]}', "missing 'times'"),
    ('[1, 2]', "expected a JSON object"),
    ('{"times": []}', "empty sequence"),
    ('{"times": [0, "a"]}', "times[1] = 'a' is not a number"),
    ('{"times": [0, true]}', "is not a number"),
    ('{"times": [0, NaN]}', "times[1] = nan is not finite"),
    ('{"times": [0, Infinity]}', "is not finite"),
    ('{"times": [0, 2, 1]}', "times decrease at index 2 (2.0 -> 1.0)"),
    ('{"times": [0, 1.0663, 0.9]}', "times decrease at index 2 (1.0663 -> 0.9)"),  # plain floats
    ('{"times": [0, 1], "marks": [1]}', "'marks' has length 1 but 'times' has 2"),
    ('{"times": [0, 1], "marks": [1, -1]}', "marks[1] = -1 is not a non-negative integer"),
    ('{"times": [0, 1], "marks": [1, 1.5]}', "marks[1] = 1.5"),
    ('{"times": [0, 1], "marks": [1, "x"]}', "marks[1] = 'x'"),
    # marks are indices 0..M-1 with M <= 2**20: a raw id is refused before anything is allocated
    ('{"times": [1, 2, 3], "marks": [0, 1, 1000000000000]}', "marks[2] = 1000000000000 is too large"),
    ('{"times": [1, 2], "marks": [0, 1048576]}', "at most M = 2**20 = 1048576 types"),
    ('{"times": [1, 2], "marks": [0, 1e300]}', "marks[1] = 1e+300 is too large"),
    ('{"times": [1, 2], "marks": [0, 100000000000000000000000]}', "is too large"),  # beyond int64
])
def test_bad_lines_name_file_and_line(tmp_path, line, message):
    path = write(tmp_path, ['{"times": [0.5, 1.0]}', line], name="bad.jsonl")
    if "marks" in line and "times" in line:  # keep marks presence consistent across lines
        path = write(tmp_path, ['{"times": [0.5, 1.0], "marks": [0, 0]}', line], name="bad.jsonl")
    with pytest.raises(ValueError) as e:
        load_events(path)
    assert "bad.jsonl, line 2" in str(e.value) and message in str(e.value), str(e.value)
    assert "np." not in str(e.value), str(e.value)  # numbers as plain floats, not np.float64(...)


def test_largest_allowed_mark_loads(tmp_path):
    from rlts.data.events import MAX_MARKS

    seqs = load_events(write(tmp_path, ['{"times": [1, 2], "marks": [0, %d]}' % (MAX_MARKS - 1)]))
    assert MAX_MARKS == 2 ** 20 and int(seqs[0].marks[1]) == MAX_MARKS - 1


def test_other_messages_print_plain_floats():
    msgs = []
    for call in (lambda: split_sequences(list(range(3)), np.array([0.5, 0.5, 0.5])),
                 lambda: split_sequences(list(range(2)), np.array([0.9, 0.05, 0.05])),
                 lambda: EventDataset([EventSequence(np.array([-1.5, 0.0]))], origin="zero")[0],
                 lambda: poisson_nll_per_event([EventSequence(np.array([0.0, 1.0]))], np.float64(-2.0)),
                 lambda: hawkes_log_likelihood(np.array([0.0, 1.0]), np.float64(-1.0), 0.5, 1.0),
                 lambda: simulate_hawkes(1.0, np.float64(1.5), 1.0, t_end=5.0)):
        with pytest.raises(ValueError) as e:
            call()
        msgs.append(str(e.value))
    assert all("np." not in m for m in msgs), msgs
    assert "[0.5, 0.5, 0.5]" in msgs[0] and "fraction 0.05)" in msgs[1] and "t_0 = -1.5" in msgs[2]
    assert "got -2.0" in msgs[3] and "got -1.0, 0.5, 1.0" in msgs[4] and "alpha = 1.5 >= 1" in msgs[5]


def test_missing_file_and_inconsistent_marks(tmp_path):
    with pytest.raises(ValueError, match="not found.*nope.jsonl"):
        load_events(tmp_path / "nope.jsonl")
    path = write(tmp_path, ['{"times": [0], "marks": [3]}', '{"times": [1]}'], name="mix.jsonl")
    with pytest.raises(ValueError, match=r"mix.jsonl, line 2: marks presence differs from line 1"):
        load_events(path)
    with pytest.raises(ValueError, match="no sequences"):
        load_events(write(tmp_path, ["", ""], name="blank.jsonl"))


# ----------------------------------------------------------------------------- splits, scale


def test_split_sequences():
    seqs = [EventSequence([float(i)]) for i in range(64)]
    train, val, test = split_sequences(seqs)
    assert (len(train), len(val), len(test)) == (38, 13, 13)
    assert [s.times[0] for s in test] == list(range(51, 64))  # file order: the last 20 %
    a = split_sequences(seqs, shuffle=True, seed=3)
    b = split_sequences(seqs, shuffle=True, seed=3)
    firsts = [s.times[0] for part in a for s in part]
    assert firsts == [s.times[0] for part in b for s in part]
    assert sorted(firsts) == list(range(64)) and firsts != list(range(64))
    assert [len(p) for p in split_sequences(seqs, (0.8, 0.0, 0.2))] == [51, 0, 13]
    with pytest.raises(ValueError, match="sum to 1"):
        split_sequences(seqs, (0.5, 0.2, 0.2))
    with pytest.raises(ValueError, match="empty"):
        split_sequences(seqs[:3], (0.9, 0.05, 0.05))


def test_time_scale_and_nll_shift():
    seqs = [EventSequence([1.0, 3.0, 4.0]), EventSequence([2.0, 8.0])]
    first = TimeScale.fit(seqs, "first")
    assert first.scale == pytest.approx((2 + 1 + 6) / 3)
    zero = TimeScale.fit(seqs, "zero")
    assert zero.scale == pytest.approx((4 + 8) / 5)
    # the Poisson NLL in scaled units + log(scale) is the NLL in data units
    scaled = [EventSequence(first.to_scaled(s.times)) for s in seqs]
    rate = fit_poisson_rate(seqs)
    nll_data = poisson_nll_per_event(seqs, rate)
    nll_scaled = poisson_nll_per_event(scaled, rate * first.scale)
    assert first.nll_to_data(nll_scaled) == pytest.approx(nll_data, abs=1e-12)
    assert first.nll_to_scaled(nll_data) == pytest.approx(nll_scaled, abs=1e-12)
    assert nll_scaled == pytest.approx(1.0)  # rate 1 per unit, mean interval 1: -log 1 + 1
    with pytest.raises(ValueError, match="no positive inter-event time"):
        TimeScale.fit([EventSequence([1.0])])


# ----------------------------------------------------------------------------- batches


def test_collate_shapes_padding_and_origin():
    seqs = [EventSequence([1.0, 3.0, 3.5], [2, 0, 7]), EventSequence([4.0], [5])]
    batch = collate_events([EventDataset(seqs, scale=2.0, origin="first")[i] for i in range(2)])
    assert set(batch) == {"dt", "marks", "lengths", "has_marks", "predict_first"}
    assert batch["predict_first"] is False  # origin "first": event 0 is not scored
    assert batch["dt"].dtype == torch.float32 and batch["dt"].shape == (2, 3)
    assert batch["marks"].dtype == torch.int64 and batch["lengths"].dtype == torch.int64
    torch.testing.assert_close(batch["dt"], torch.tensor([[0.0, 1.0, 0.25], [0.0, 0.0, 0.0]]))
    torch.testing.assert_close(batch["marks"], torch.tensor([[2, 0, 7], [5, 0, 0]]))
    assert batch["lengths"].tolist() == [3, 1] and batch["has_marks"] is True
    assert predicted_mask(batch["lengths"], 3, "first").tolist() == [[False, True, True],
                                                                     [False, False, False]]

    zero = EventDataset(seqs, scale=2.0, origin="zero")
    batch = collate_events([zero[1], zero[0]])
    torch.testing.assert_close(batch["dt"], torch.tensor([[2.0, 0.0, 0.0], [0.5, 1.0, 0.25]]))
    assert batch["predict_first"] is True
    assert predicted_mask(batch["lengths"], 3, "zero").tolist() == [[True, False, False],
                                                                    [True, True, True]]
    # unmarked data: zero marks, has_marks False; a TimeScale is accepted as the scale
    plain = [EventSequence(s.times) for s in seqs]
    ds = EventDataset(plain, scale=TimeScale(4.0, "first"))
    batch = collate_events([ds[0], ds[1]])
    assert batch["has_marks"] is False and batch["marks"].abs().sum() == 0
    torch.testing.assert_close(batch["dt"][0], torch.tensor([0.0, 0.5, 0.125]))
    with pytest.raises(ValueError, match="origin"):
        EventDataset(plain, scale=TimeScale(4.0, "zero"), origin="first")
    with pytest.raises(ValueError, match="times >= 0"):
        EventDataset([EventSequence([-1.0, 0.0])], origin="zero")[0]


def test_dt_differences_taken_in_float64():
    t0 = 1.0e7  # seconds; float32 spacing here is 1
    ds = EventDataset([EventSequence([t0, t0 + 0.25, t0 + 0.5])], origin="first")
    torch.testing.assert_close(ds[0]["dt"], torch.tensor([0.0, 0.25, 0.25]))


# ----------------------------------------------------------------------------- Poisson, marks


def test_poisson_closed_form_by_hand():
    seqs = [EventSequence([0.0, 1.0, 3.0]), EventSequence([10.0, 11.0])]
    # origin "first": intervals 1, 2, 1 -> rate 3/4; NLL/event = -log(3/4) + (3/4) * 4/3
    rate = fit_poisson_rate(seqs)
    assert rate == pytest.approx(0.75)
    assert poisson_nll_per_event(seqs, rate) == pytest.approx(-math.log(0.75) + 1.0)
    assert poisson_nll_per_event(seqs, 2.0) == pytest.approx(-math.log(2.0) + 2.0 * 4 / 3)
    # origin "zero": intervals 0, 1, 2, 10, 1 -> rate 5/14
    assert fit_poisson_rate(seqs, "zero") == pytest.approx(5 / 14)
    assert poisson_nll_per_event(seqs, 0.5, "zero") == pytest.approx(-math.log(0.5) + 0.5 * 14 / 5)
    assert num_predicted_events(seqs, "first") == 3 and num_predicted_events(seqs, "zero") == 5


def test_repeat_mark_accuracy():
    seqs = [EventSequence([0, 1, 2, 3], [1, 1, 2, 2]), EventSequence([0, 1], [4, 5])]
    assert repeat_mark_accuracy(seqs) == pytest.approx(2 / 4)
    with pytest.raises(ValueError, match="marked"):
        repeat_mark_accuracy([EventSequence([0.0, 1.0])])


# ----------------------------------------------------------------------------- Hawkes likelihood


def naive_intensity(t, times, mu, alpha, beta):
    past = times[times < t]
    return mu + alpha * beta * np.exp(-beta * (t - past)).sum()


def naive_log_likelihood(times, mu, alpha, beta, origin):
    """O(n^2) float64 loop; the integrals by adaptive quadrature between events."""
    ll = 0.0
    start = 0 if origin == "zero" else 1
    for i in range(start, len(times)):
        lo = 0.0 if i == 0 else times[i - 1]
        # between events the intensity is smooth; quad integrates over (lo, t_i)
        integral, _ = integrate.quad(naive_intensity, lo, times[i], args=(times, mu, alpha, beta),
                                     epsabs=1e-13, epsrel=1e-12, limit=200)
        # the history of event i is the events before it in index order (a tied one counts)
        past = times[:i]
        lam = mu + alpha * beta * np.exp(-beta * (times[i] - past)).sum()
        ll += math.log(lam) - integral
    return ll


@pytest.mark.parametrize("origin", ["first", "zero"])
def test_hawkes_log_likelihood_matches_naive_loop(origin):
    rng = np.random.default_rng(1)
    times = np.sort(rng.uniform(0.1, 20.0, size=40))
    times[7] = times[6]  # a tie
    for mu, alpha, beta in [(0.3, 0.5, 1.5), (1.0, 1.2, 0.2), (0.05, 0.9, 8.0)]:
        fast = hawkes_log_likelihood(times, mu, alpha, beta, origin)
        slow = naive_log_likelihood(times, mu, alpha, beta, origin)
        assert fast == pytest.approx(slow, rel=1e-9, abs=1e-9), (mu, alpha, beta)
        dens = hawkes_log_densities(times, mu, alpha, beta, origin)
        assert dens.shape == (len(times) - (origin == "first"),)
        assert dens.sum() == pytest.approx(fast, rel=1e-12)
    # several sequences at once = sum of each (padding contributes nothing)
    other = np.sort(rng.uniform(0.0, 5.0, size=9))
    both = hawkes_log_likelihood([times, other], 0.3, 0.5, 1.5, origin)
    assert both == pytest.approx(hawkes_log_likelihood(times, 0.3, 0.5, 1.5, origin)
                                 + hawkes_log_likelihood(other, 0.3, 0.5, 1.5, origin), rel=1e-12)
    n = num_predicted_events([EventSequence(times), EventSequence(other)], origin)
    assert hawkes_nll_per_event([times, other], 0.3, 0.5, 1.5, origin) == pytest.approx(-both / n)


@pytest.mark.parametrize("origin", ["first", "zero"])
def test_hawkes_gradient_matches_finite_differences(origin):
    rng = np.random.default_rng(2)
    T, lengths = _pad_times([np.sort(rng.uniform(0, 30, size=n)) for n in (25, 11)])
    theta = np.array([0.4, 0.7, 1.3])

    def ll(p):
        log_lam, Lam, mask = _hawkes_terms(T, lengths, *p, origin)
        return (log_lam - Lam)[mask].sum()

    *_, grad = _hawkes_terms(T, lengths, *theta, origin, grad=True)
    h = 1e-6
    numeric = [(ll(theta + h * e) - ll(theta - h * e)) / (2 * h) for e in np.eye(3)]
    np.testing.assert_allclose(grad, numeric, rtol=1e-6, atol=1e-6)


def test_hawkes_intensity_matches_naive():
    times = np.array([0.5, 1.0, 1.0, 2.5, 4.0])
    grid = np.array([3.0, 0.0, 0.5, 0.7, 1.0, 1.01, 10.0, 4.0])  # unsorted, on events too
    got = hawkes_intensity(grid, times, 0.2, 0.8, 1.3)
    want = [naive_intensity(t, times, 0.2, 0.8, 1.3) for t in grid]
    np.testing.assert_allclose(got, want, rtol=1e-12)
    assert hawkes_intensity(grid.reshape(2, 4), times, 0.2, 0.8, 1.3).shape == (2, 4)


# ----------------------------------------------------------------------------- simulation, fitting


def test_simulated_rate_and_time_rescaling():
    mu, alpha, beta = TRUE
    times = simulate_hawkes(mu, alpha, beta, t_end=20_000.0, rng=np.random.default_rng(0))
    rate = len(times) / 20_000.0
    # stationary mean rate mu / (1 - alpha) = 1; the count's sd is ~3.5 % here
    assert rate == pytest.approx(mu / (1 - alpha), rel=0.12), rate
    assert np.all(np.diff(times) >= 0) and times[-1] <= 20_000.0
    # time-rescaling theorem: compensator increments are i.i.d. Exp(1) under the true model
    z = hawkes_compensator(times, mu, alpha, beta, origin="zero")
    assert z.shape == times.shape
    p = stats.kstest(z, "expon").pvalue
    assert p > 0.01, p
    # ... and not under a wrong one (the test has power)
    assert stats.kstest(hawkes_compensator(times, 1.0, 0.0, 1.0, "zero"), "expon").pvalue < 1e-6
    n = simulate_hawkes(0.5, 1.5, 1.0, n_events=300, rng=np.random.default_rng(1))
    assert n.shape == (300,)
    with pytest.raises(ValueError, match="n_events"):
        simulate_hawkes(0.5, 1.5, 1.0, t_end=10.0)


def test_fit_hawkes_recovers_parameters_and_beats_poisson():
    rng = np.random.default_rng(0)
    true = HawkesParams(0.5, 0.6, 2.0)
    seqs = [EventSequence(simulate_hawkes(*true, n_events=1000, rng=rng)) for _ in range(24)]
    train, test = seqs[:20], seqs[20:]
    fit = fit_hawkes(train)
    # ~20k events: standard errors are a few % (mu, beta) and ~0.01 (alpha)
    assert fit.mu == pytest.approx(true.mu, rel=0.15), fit
    assert fit.alpha == pytest.approx(true.alpha, abs=0.06), fit
    assert fit.beta == pytest.approx(true.beta, rel=0.15), fit
    # the MLE is at least as likely as the truth on its own training data
    assert hawkes_nll_per_event(train, *fit) <= hawkes_nll_per_event(train, *true) + 1e-9
    hawkes = hawkes_nll_per_event(test, *fit)
    poisson = poisson_nll_per_event(test, fit_poisson_rate(train))
    assert hawkes < poisson - 0.05, (hawkes, poisson)


@needs_hawkes1
def test_hawkes1_true_nll_and_fit():
    seqs = load_events(TPP / "hawkes1.jsonl")
    assert len(seqs) == 64 and all(len(s) == 1024 and s.marks is None for s in seqs)
    train, _, test = split_sequences(seqs)
    nll_all = hawkes_nll_per_event(seqs, *TRUE)
    nll_test = hawkes_nll_per_event(test, *TRUE)
    poisson_test = poisson_nll_per_event(test, fit_poisson_rate(train))
    msg = (f"hawkes1 true-parameter NLL/event (origin 'first'): all {nll_all:.4f}, "
           f"last 20 % {nll_test:.4f}; Poisson on last 20 % {poisson_test:.4f}")
    assert 0.3 < nll_all < 0.7 and 0.3 < nll_test < 0.7 and nll_test < poisson_test - 0.3, msg
    fit = fit_hawkes(train)
    assert abs(fit.mu - 0.2) < 0.03 and abs(fit.alpha - 0.8) < 0.04 and abs(fit.beta - 1.0) < 0.1, \
        (fit, msg)
    assert hawkes_nll_per_event(train, *fit) <= hawkes_nll_per_event(train, *TRUE) + 1e-9, msg


@pytest.mark.skipif(not (TPP / "wikipedia.jsonl").is_file(), reason=f"TPP data not found at {TPP}")
def test_wikipedia_loads_with_marks():
    seqs = load_events(TPP / "wikipedia.jsonl")
    assert len(seqs) == 1000 and all(s.marks is not None for s in seqs)
    lengths = [len(s) for s in seqs]
    assert min(lengths) == 84 and max(lengths) == 1936
    assert min(int(s.marks.min()) for s in seqs) >= 0 and max(int(s.marks.max()) for s in seqs) <= 8226
    train, _, test = split_sequences(seqs)
    acc = repeat_mark_accuracy(test)
    assert 0.0 < acc < 1.0, acc
    ds = EventDataset(test[:2], scale=TimeScale.fit(train))
    batch = collate_events([ds[0], ds[1]])
    assert batch["has_marks"] is True and batch["dt"][:, 0].abs().sum() == 0
