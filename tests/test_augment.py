"""rlts.data.augment: the time transforms against np.interp loops in float64, padding, p, RNG,
and BatchAugment, the Trainer's batch transform (the same draws as augmenting inside a loss)."""
import math

import numpy as np
import pytest
import torch

from rlts.data.augment import (AUGMENTATIONS, BatchAugment, augment_batch, check_augment, jitter, resample,
                               scaling, slice_times, warp_times)
from rlts.heads.classify import SequenceClassifier, classification_loss, collate_unequal
from rlts.trainer import TrainConfig, Trainer

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


def test_batch_augment_is_augment_batch_on_x():
    x, lengths = _padded([30, 21, 30, 11], seed=5)
    labels = torch.tensor([0, 1, 2, 1])
    names = ("window_warp", "jitter")
    want = augment_batch(x, lengths, names, generator=torch.Generator().manual_seed(3))
    out = BatchAugment(names, generator=torch.Generator().manual_seed(3))((x, lengths, labels))
    assert isinstance(out, tuple) and out[1] is lengths and out[2] is labels
    assert torch.equal(out[0], want) and not torch.equal(out[0], x)
    as_list = BatchAugment(names, p=1.0, generator=torch.Generator().manual_seed(3))([x, lengths, labels])
    assert isinstance(as_list, list) and torch.equal(as_list[0], augment_batch(
        x, lengths, names, p=1.0, generator=torch.Generator().manual_seed(3)))
    batch = (x, lengths, labels)
    assert BatchAugment([])(batch) is batch and BatchAugment(["none"])(batch) is batch


def test_batch_augment_reads_nan_padding_as_lengths():
    """(x, labels) batches: the lengths are L minus each series' trailing all-NaN steps."""
    x, lengths = _padded([30, 21, 7], seed=6, pad=float("nan"))
    labels = torch.tensor([0, 2, 1])
    out, same = BatchAugment(["window_warp", "jitter"], p=1.0, generator=torch.Generator().manual_seed(4))((x, labels))
    want = augment_batch(x, lengths, ["window_warp", "jitter"], p=1.0, generator=torch.Generator().manual_seed(4))
    assert same is labels and torch.equal(out.isnan(), x.isnan())
    torch.testing.assert_close(out, want, rtol=0, atol=0, equal_nan=True)
    equal = _padded([9, 9], seed=7)[0]  # no NaN: every step is valid
    torch.testing.assert_close(BatchAugment(["jitter"], p=1.0, generator=torch.Generator().manual_seed(5))(
        (equal, labels[:2]))[0], augment_batch(equal, None, ["jitter"], p=1.0, generator=torch.Generator().manual_seed(5)))
    x[1, 3, 0] = float("nan")
    with pytest.raises(ValueError, match="NaN inside a series at batch index 1, time step 3"):
        BatchAugment(["jitter"])((x, labels))
    with pytest.raises(ValueError, match="the series at batch index 0 is all NaN"):
        BatchAugment(["jitter"])((torch.full((2, 4, 1), float("nan")), labels[:2]))


def test_batch_augment_names_bad_input():
    augment = BatchAugment(["window_warp"])
    with pytest.raises(ValueError, match="lengths must lie in \\[1, L\\] = \\[1, 5\\], got min 0, max 5"):
        augment((torch.zeros(2, 5, 1), torch.tensor([0, 5]), torch.tensor([0, 1])))
    with pytest.raises(ValueError, match="lengths must be an integer tensor of shape \\(B,\\) = \\(2,\\)"):
        augment((torch.zeros(2, 5, 1), torch.tensor([5.0, 5.0]), torch.tensor([0, 1])))
    with pytest.raises(ValueError, match="x must have shape \\(B, L, C\\), got \\(2, 5\\)"):
        augment((torch.zeros(2, 5), torch.tensor([0, 1])))
    with pytest.raises(ValueError, match="a batch must be \\(x, lengths, labels\\) or \\(x, labels\\), got 4 items"):
        augment((torch.zeros(2, 5, 1),) * 4)
    with pytest.raises(ValueError, match="p must lie in \\[0, 1\\], got -0.1"):
        BatchAugment(["jitter"], p=-0.1)
    with pytest.raises(ValueError, match="unknown augmentation 'warp'"):
        BatchAugment(["warp"])


def _augmenting_loss(names):
    """Augmentation inside the loss, in training mode only, with the global generator: the draws
    the Trainer's batch_transform must reproduce."""
    def loss(model, batch):
        if model.training:
            x, lengths, labels = batch
            batch = (augment_batch(x, lengths, names), lengths, labels)
        return classification_loss(model, batch)
    return loss


def test_trainer_transform_draws_what_augmenting_in_the_loss_drew(tmp_path):
    """Same global-generator draws in the same order (augmentation, then the model's dropout):
    the trained weights are bitwise equal."""
    x, lengths = _padded([30, 21, 30, 11, 17, 25, 8, 30, 12], C=2, seed=9)
    data = [(x[b, :n].float(), b % 3) for b, n in enumerate(lengths.tolist())]
    names = ("window_warp", "jitter")
    cfg = TrainConfig(epochs=3, batch_size=4, monitor="train", patience=0, progress=False, device="cpu")
    weights = []
    for k, (loss_fn, transform) in enumerate([(_augmenting_loss(names), None),
                                              (classification_loss, BatchAugment(names))]):
        torch.manual_seed(0)
        model = SequenceClassifier(2, 3, backbone="gru", d_model=8, n_layers=1, dropout=0.3)
        Trainer(model, loss_fn, cfg, tmp_path / str(k), collate_fn=collate_unequal, batch_transform=transform).fit(data)
        weights.append(model.state_dict())
    assert all(torch.equal(weights[0][key], weights[1][key]) for key in weights[0])
    torch.manual_seed(0)
    plain = SequenceClassifier(2, 3, backbone="gru", d_model=8, n_layers=1, dropout=0.3)
    Trainer(plain, classification_loss, cfg, tmp_path / "plain", collate_fn=collate_unequal).fit(data)
    assert not torch.equal(plain.out.weight, weights[1]["out.weight"])  # the augmentation did change training
