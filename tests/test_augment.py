"""rlts.data.augment: the time transforms against np.interp loops in float64, padding, p, RNG,
and their use in classification_loss (training mode only)."""
import math
from functools import partial

import numpy as np
import pytest
import torch

from rlts.data.augment import (AUGMENTATIONS, augment_batch, check_augment, jitter, resample, scaling,
                               slice_times, warp_times)
from rlts.heads.classify import SequenceClassifier, classification_loss

LENGTHS = [1, 2, 3, 7, 24, 101]


def _padded(lengths, C=2, seed=0, pad=0.0):
    rng = np.random.default_rng(seed)
    L = max(lengths)
    x = np.full((len(lengths), L, C), pad)
    for b, n in enumerate(lengths):
        x[b, :n] = rng.normal(size=(n, C)) * 3 + np.linspace(0, 5, n)[:, None]
    return torch.tensor(x), torch.tensor(lengths)


def _slice_ref(x, n, u, ratio=0.9):
    """Window slicing of one series x (n, C): np.interp of the kept window on n even points."""
    w = max(math.ceil(ratio * n), 1)
    start = min(math.floor(u * (n - w + 1)), n - w)
    window = x[start:start + w]
    grid = np.linspace(0, w - 1, n) if n > 1 else np.zeros(1)
    return np.stack([np.interp(grid, np.arange(w), window[:, c]) for c in range(x.shape[1])], axis=1)


def _warp_ref(x, n, u, k, ratio=0.1):
    """Window warping of one series: the warped time of every original step (window of m steps
    from a played k times slower), then the series read at n even points of warped time."""
    m = min(math.ceil(ratio * n), n - 1)
    a = min(math.floor(u * (n - m)), n - 1 - m)
    s = np.arange(n, dtype=np.float64)
    warped = np.where(s <= a, s, np.where(s <= a + m, a + k * (s - a), s + (k - 1) * m))
    if n == 1:
        return x[:1].copy()
    grid = np.linspace(0, warped[-1], n)
    return np.stack([np.interp(grid, warped, x[:n, c]) for c in range(x.shape[1])], axis=1)


@pytest.mark.parametrize("ratio", [0.9, 0.5, 1.0])
def test_window_slice_matches_interp_loop(ratio):
    x, lengths = _padded(LENGTHS)
    u = torch.tensor([0.0, 0.999, 0.5, 0.31, 0.77, 0.123], dtype=torch.float64)
    out = resample(x, lengths, slice_times(lengths, x.shape[1], u, ratio))
    for b, n in enumerate(LENGTHS):
        ref = _slice_ref(x[b].numpy(), n, float(u[b]), ratio)
        np.testing.assert_allclose(out[b, :n].numpy(), ref, rtol=1e-12, atol=1e-12)
        np.testing.assert_array_equal(out[b, n:].numpy(), x[b, n:].numpy())   # padding untouched


@pytest.mark.parametrize("k", [0.5, 2.0, 1.0, 3.7])
def test_window_warp_matches_interp_loop(k):
    x, lengths = _padded(LENGTHS, seed=1)
    u = torch.tensor([0.2, 0.0, 0.999, 0.6, 0.45, 0.9], dtype=torch.float64)
    out = resample(x, lengths, warp_times(lengths, x.shape[1], u, torch.full((len(LENGTHS),), k, dtype=torch.float64)))
    for b, n in enumerate(LENGTHS):
        ref = _warp_ref(x[b].numpy(), n, float(u[b]), k)
        np.testing.assert_allclose(out[b, :n].numpy(), ref, rtol=1e-10, atol=1e-10)
        np.testing.assert_array_equal(out[b, n:].numpy(), x[b, n:].numpy())


def test_identity_settings_and_endpoints():
    x, lengths = _padded([9, 50], seed=2)
    u = torch.tensor([0.3, 0.8], dtype=torch.float64)
    same = resample(x, lengths, slice_times(lengths, x.shape[1], u, ratio=1.0))
    torch.testing.assert_close(same, x, rtol=0, atol=1e-12)
    same = resample(x, lengths, warp_times(lengths, x.shape[1], u, torch.ones(2)))
    torch.testing.assert_close(same, x, rtol=0, atol=1e-12)
    # a warp keeps both ends of every series
    out = resample(x, lengths, warp_times(lengths, x.shape[1], u, torch.tensor([2.0, 0.5])))
    for b, n in enumerate([9, 50]):
        torch.testing.assert_close(out[b, [0, n - 1]], x[b, [0, n - 1]], rtol=0, atol=1e-12)


def test_large_values_stay_finite_float32():
    x, lengths = _padded([300, 17], seed=3)
    x = (x * 1e30).float()
    g = torch.Generator().manual_seed(0)
    for name in AUGMENTATIONS:
        out = augment_batch(x, lengths, [name], p=1.0, generator=g)
        assert out.dtype == torch.float32 and torch.isfinite(out).all(), name
        # time transforms interpolate: never outside the series' own range
        if name.startswith("window"):
            for b, n in enumerate([300, 17]):
                assert out[b, :n].max() <= x[b, :n].max() and out[b, :n].min() >= x[b, :n].min()


def test_jitter_and_scaling_statistics():
    g = torch.Generator().manual_seed(0)
    x = torch.ones(400, 300, 3, dtype=torch.float64)
    lengths = torch.full((400,), 300)
    noise = jitter(x, lengths, g) - x
    assert abs(float(noise.mean())) < 1e-3 and abs(float(noise.std()) - 0.03) < 1e-3
    y = scaling(x, lengths, g)
    assert torch.allclose(y, y[:, :1].expand_as(y))          # one factor per series and channel
    factors = y[:, 0].flatten()
    assert abs(float(factors.mean()) - 1) < 0.02 and abs(float(factors.std()) - 0.1) < 0.01


def test_padding_nan_and_lengths_kept():
    x, lengths = _padded([5, 12, 3], pad=float("nan"))
    g = torch.Generator().manual_seed(1)
    out = augment_batch(x, lengths, list(AUGMENTATIONS), p=1.0, generator=g)
    for b, n in enumerate([5, 12, 3]):
        assert torch.isfinite(out[b, :n]).all() and torch.isnan(out[b, n:]).all()


def test_zero_padding_untouched_and_valid_steps_changed():
    x, lengths = _padded([5, 12, 3], seed=8)
    for name in AUGMENTATIONS:
        out = augment_batch(x, lengths, [name], p=1.0, generator=torch.Generator().manual_seed(2))
        for b, n in enumerate([5, 12, 3]):
            assert torch.equal(out[b, n:], x[b, n:]), name
        assert not torch.equal(out[1, :12], x[1, :12]), name


def test_p_chooses_series_and_generator_reproduces():
    x, lengths = _padded([40] * 2000, C=1, seed=4)
    g = torch.Generator().manual_seed(7)
    assert torch.equal(augment_batch(x, lengths, ["jitter"], p=0.0, generator=g), x)
    out = augment_batch(x, lengths, ["jitter"], p=0.5, generator=torch.Generator().manual_seed(7))
    changed = (out != x).any(dim=(1, 2)).double().mean()
    assert 0.45 < float(changed) < 0.55
    again = augment_batch(x, lengths, ["jitter"], p=0.5, generator=torch.Generator().manual_seed(7))
    assert torch.equal(out, again)
    assert (augment_batch(x, lengths, ["jitter"], p=1.0) != x).any(dim=(1, 2)).all()


def test_names_checked_and_split():
    assert check_augment(["window_warp,jitter", " scaling "]) == ("window_warp", "jitter", "scaling")
    assert check_augment([]) == () and check_augment(["none"]) == ()
    with pytest.raises(ValueError, match="augment must be a list of names, got 5"):
        check_augment(5)
    with pytest.raises(ValueError, match="unknown augmentation 'warp'.*window_warp"):
        check_augment(["warp"])
    with pytest.raises(ValueError, match="p must lie"):
        augment_batch(torch.zeros(2, 3, 1), None, ["jitter"], p=1.5)


def test_bad_lengths_are_named_before_augmenting():
    model = SequenceClassifier(1, 2, backbone="gru", d_model=4, n_layers=1).train()
    loss_fn = partial(classification_loss, augment=("window_warp",))
    with pytest.raises(ValueError, match="lengths must lie in \\[1, L\\] = \\[1, 5\\]"):
        loss_fn(model, (torch.zeros(2, 5, 1), torch.tensor([0, 5]), torch.tensor([0, 1])))


def test_classification_loss_augments_only_in_training():
    torch.manual_seed(0)
    model = SequenceClassifier(2, 3, backbone="gru", d_model=8, n_layers=1)
    x, lengths = _padded([30, 21, 30, 11], seed=5)
    batch = (x.float(), lengths, torch.tensor([0, 1, 2, 1]))
    loss_fn = partial(classification_loss, augment=("window_warp", "jitter"))
    model.eval()
    assert loss_fn(model, batch)[0].item() == classification_loss(model, batch)[0].item()
    model.train()
    torch.manual_seed(1)
    plain = classification_loss(model, batch)[0].item()
    losses = []
    for s in range(4):
        torch.manual_seed(s)
        losses.append(loss_fn(model, batch)[0].item())
    assert any(v != plain for v in losses)
    # (x, labels) batches with NaN padding: lengths are inferred before augmenting
    xn, ln = _padded([30, 21], seed=6, pad=float("nan"))
    assert math.isfinite(loss_fn(model, (xn.float(), torch.tensor([0, 2])))[0].item())


def test_the_classification_head_does_not_import_pandas():
    """rlts.data.augment lives in a package whose CSV loaders need pandas; they load lazily."""
    import subprocess
    import sys

    code = "import sys, rlts.heads; assert 'pandas' not in sys.modules, 'pandas imported'"
    subprocess.run([sys.executable, "-c", code], check=True)
