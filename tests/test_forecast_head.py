"""rlts.heads.forecast: RevIN (exact inverse, per-instance statistics), SequenceForecaster on
every backbone (shapes in M / MS / mixing modes, channel independence as equivariance, outputs
independent of batch composition, fitting a sine far better than the naive forecast),
streaming (update == forward over the grown context with frozen statistics, constant state
size), the Naive and DLinear baselines, and input validation."""
import math

import pytest
import torch

from rlts.data.timeseries import WindowDataset
from rlts.heads import DLinear, NaiveForecaster, RevIN, SequenceForecaster, forecast_loss
from rlts.heads.forecast import RevINStats, moving_average

from _backbones import TINY_OPTIONS

F64 = torch.float64
C, L, H = 3, 20, 6
OPTIONS = TINY_OPTIONS  # tiny blocks, d_model 16
BACKBONES = sorted(OPTIONS)
RECURRENT = ["aaren", "gru", "mamba", "mamba2"]


pytestmark = pytest.mark.usefixtures("one_thread")


def forecaster(backbone, **kw):
    kw = {"d_model": 16, "n_layers": 1, **OPTIONS[backbone], **kw}
    return SequenceForecaster(C, H, backbone, **kw).double().eval()


def randomise_revin(model):
    with torch.no_grad():
        model.revin.weight.uniform_(0.5, 2.0)
        model.revin.bias.normal_()


# ---------------------------------------------------------------------------------- RevIN

def test_revin_roundtrip_is_identity_and_normalises():
    rev = RevIN(4).double()
    with torch.no_grad():
        rev.weight.uniform_(0.3, 3.0)
        rev.bias.normal_()
    x = torch.randn(5, 30, 4, dtype=F64) * torch.tensor([1.0, 10.0, 0.1, 3.0], dtype=F64) + 7.0
    xn, stats = rev.normalise(x)
    assert stats.mean.shape == stats.std.shape == (5, 1, 4)
    undone = (xn - rev.bias) / rev.weight  # without the affine part: mean 0, var ~1 per (b, c)
    torch.testing.assert_close(undone.mean(1), torch.zeros(5, 4, dtype=F64), atol=1e-12, rtol=0)
    var = x.var(1, unbiased=False)
    torch.testing.assert_close(undone.var(1, unbiased=False), var / (var + rev.eps), atol=1e-12, rtol=0)
    torch.testing.assert_close(rev.denormalise(xn, stats), x, atol=1e-12, rtol=1e-12)
    # one channel (MS): its own statistics and affine parameters
    torch.testing.assert_close(rev.denormalise(xn[..., 2:3], stats, channel=2), x[..., 2:3],
                               atol=1e-12, rtol=1e-12)
    # a constant channel does not divide by zero
    xc, _ = rev.normalise(torch.ones(2, 10, 4, dtype=F64))
    assert torch.isfinite(xc).all()


def test_revin_statistics_are_per_instance():
    rev = RevIN(3).double()
    x = torch.randn(4, 16, 3, dtype=F64)
    y = torch.randn(4, 5, 3, dtype=F64)
    xn, stats = rev.normalise(x)
    out = rev.denormalise(y, stats)
    x2 = x.clone()
    x2[1] = x2[1] * 100 + 50  # change one instance only
    xn2, stats2 = rev.normalise(x2)
    out2 = rev.denormalise(y, stats2)
    keep = [0, 2, 3]
    torch.testing.assert_close(xn2[keep], xn[keep], atol=0, rtol=0)
    torch.testing.assert_close(out2[keep], out[keep], atol=0, rtol=0)
    assert not torch.allclose(out2[1], out[1])
    assert not hasattr(rev, "mean") and not hasattr(rev, "stdev")  # nothing stored on the module


# ------------------------------------------------------------------------- SequenceForecaster

@pytest.mark.parametrize("backbone", BACKBONES)
def test_shapes_in_every_mode(backbone):
    x = torch.randn(2, L, C, dtype=F64)
    assert forecaster(backbone)(x).shape == (2, H, C)
    assert forecaster(backbone, channel_mode="mixing")(x).shape == (2, H, C)
    assert forecaster(backbone, target_index=1)(x).shape == (2, H, 1)
    assert forecaster(backbone, channel_mode="mixing", target_index=-1)(x).shape == (2, H, 1)
    m = forecaster(backbone, channel_mode="mixing", revin=False, out_channels=5)
    assert m(x).shape == (2, H, 5)
    assert forecaster(backbone)(x[:, :7]).shape == (2, H, C)  # any window length


@pytest.mark.parametrize("backbone", BACKBONES)
def test_independent_mode_is_channel_equivariant(backbone):
    m = forecaster(backbone)
    x = torch.randn(3, L, C, dtype=F64)
    y = m(x)
    perm = torch.tensor([2, 0, 1])
    torch.testing.assert_close(m(x[..., perm]), y[..., perm], atol=1e-12, rtol=1e-10)
    # changing channel 1 leaves channels 0 and 2 untouched
    x2 = x.clone()
    x2[..., 1] = torch.randn(3, L, dtype=F64) * 5
    y2 = m(x2)
    torch.testing.assert_close(y2[..., [0, 2]], y[..., [0, 2]], atol=1e-12, rtol=1e-10)
    assert not torch.allclose(y2[..., 1], y[..., 1])
    # the same check catches a model that mixes channels
    mix = forecaster(backbone, channel_mode="mixing")
    assert not torch.allclose(mix(x2)[..., 0], mix(x)[..., 0])


@pytest.mark.parametrize("backbone", BACKBONES)
@pytest.mark.parametrize("mode", ["independent", "mixing"])
def test_forecast_depends_only_on_its_window(backbone, mode):
    m = forecaster(backbone, channel_mode=mode)
    randomise_revin(m)
    x = torch.randn(4, L, C, dtype=F64)
    alone = m(x[2:3])
    torch.testing.assert_close(m(x)[2:3], alone, atol=1e-12, rtol=1e-10)
    other = torch.cat([torch.randn(2, L, C, dtype=F64) * 9, x[2:3]])
    torch.testing.assert_close(m(other)[2:3], alone, atol=1e-12, rtol=1e-10)


def test_ms_independent_equals_target_channel_of_m():
    m = forecaster("aaren")
    randomise_revin(m)
    ms = forecaster("aaren", target_index=2)
    ms.load_state_dict(m.state_dict())
    x = torch.randn(3, L, C, dtype=F64)
    torch.testing.assert_close(ms(x), m(x)[..., 2:3], atol=1e-12, rtol=1e-10)


def _sine_batch(series, n, window, horizon, gen):
    s = torch.randint(0, series.shape[0] - window - horizon, (n,), generator=gen)
    seg = series[s[:, None] + torch.arange(window + horizon)]
    return seg[:, :window], seg[:, window:]


def test_fits_a_sine_far_better_than_naive():
    """3 sines (period 16, phases 0, 1, 2.5), window 32, horizon 8, 120 Adam steps of
    batch 32 with a 1-layer d_model-16 GRU forecaster: observed MSE ratio naive / model
    ~1e4 (2-layer aaren, 200 steps: ~4e4; a 1-layer aaren stalls near 4.5, since its only
    token mixer is an order-blind softmax mean: it cannot tell a rising from a falling
    sine). Asserted: 100."""
    window, horizon = 32, 8
    t = torch.arange(400, dtype=torch.float32)
    series = torch.stack([torch.sin(2 * math.pi * t / 16 + ph) for ph in (0.0, 1.0, 2.5)], -1)
    gen = torch.Generator().manual_seed(0)
    m = SequenceForecaster(3, horizon, "gru", d_model=16, n_layers=1)
    opt = torch.optim.Adam(m.parameters(), lr=1e-2)
    for _ in range(120):
        loss, _ = forecast_loss(m, _sine_batch(series, 32, window, horizon, gen))
        opt.zero_grad()
        loss.backward()
        opt.step()
    x, y = _sine_batch(series, 256, window, horizon, gen)
    with torch.no_grad():
        mse = ((m(x) - y) ** 2).mean()
    naive = ((NaiveForecaster(horizon)(x) - y) ** 2).mean()
    assert naive / mse > 100, (naive.item(), mse.item())


# ---------------------------------------------------------------------------------- streaming

PATCHED = dict(patch_len=3, skip_window=8)  # L = 20 is not a multiple of 3: a trimmed first patch


@pytest.mark.parametrize("backbone", BACKBONES)
@pytest.mark.parametrize("mode,target", [("independent", None), ("mixing", None), ("independent", 1)])
@pytest.mark.parametrize("patched", [False, True], ids=["step-tokens", "patches+skip"])
def test_stream_equals_forward_over_grown_context_with_frozen_stats(backbone, mode, target, patched):
    m = forecaster(backbone, channel_mode=mode, target_index=target, **(PATCHED if patched else {}))
    randomise_revin(m)
    window = torch.randn(2, L, C, dtype=F64)
    news = [torch.randn(2, k, C, dtype=F64) * 2 + 1 for k in (1, 3, 1, 2, 4)]
    stream = m.start_stream(window)
    torch.testing.assert_close(stream.forecast, m(window), atol=1e-12, rtol=1e-10)
    frozen = RevINStats(*m.revin.statistics(window))
    history = window
    for new in news:
        y, stream = m.update(stream, new)
        history = torch.cat([history, new], dim=1)
        with torch.no_grad():
            ref = m(history, stats=frozen)
        torch.testing.assert_close(y, ref, atol=1e-10, rtol=1e-8)
        assert stream.n_seen == history.shape[1]
    # ... and therefore not what forward on the latest sliding window gives
    with torch.no_grad():
        assert not torch.allclose(y, m(history[:, -L:]), atol=1e-6)


def _state_bytes(obj):
    if isinstance(obj, torch.Tensor):
        return obj.numel() * obj.element_size()
    if isinstance(obj, (list, tuple)):
        return sum(_state_bytes(o) for o in obj)
    return 0


@pytest.mark.parametrize("backbone", RECURRENT + ["transformer"])
@pytest.mark.parametrize("extra", [{}, PATCHED], ids=["step-tokens", "patches+skip"])
def test_stream_state_size_is_constant_for_recurrent_backbones(backbone, extra):
    m = forecaster(backbone, **extra)
    stream = m.start_stream(torch.randn(2, L, C, dtype=F64))
    sizes = []
    for _ in range(50):
        _, stream = m.update(stream, torch.randn(2, 1, C, dtype=F64))
        sizes.append(_state_bytes(stream))
    if backbone == "transformer":  # the KV cache: grows by one token per update
        assert sizes[-1] > sizes[0]
    else:
        assert len(set(sizes)) == 1 and sizes[0] == _state_bytes(m.start_stream(torch.randn(2, 9, C, dtype=F64)))


def test_patches_are_the_backbone_tokens_and_the_skip_is_linear():
    """patch_len p: the backbone reads L // p tokens, each Linear(p) of one patch ending at the
    last step (the oldest L mod p steps are dropped); with a zero read-out the forecast is the
    linear path alone: Linear(W -> H) of the last W normalised steps, denormalised."""
    m = forecaster("gru", **PATCHED)
    randomise_revin(m)
    x = torch.randn(2, L, C, dtype=F64)
    seen = []
    m.backbone.register_forward_hook(lambda mod, inp, out: seen.append(inp[0].shape))
    m(x)
    assert seen[-1] == (2 * C, L // 3, 16)
    # dropping the L mod p oldest steps: the first 2 steps (20 = 6 * 3 + 2) do not matter ...
    with torch.no_grad():
        m.proj.weight.zero_(), m.proj.bias.zero_()
        stats = m.revin.statistics(x)
        y = m(x, stats=stats)
        xn = m.revin.apply(x, stats)
        ref = torch.einsum("hw,bwc->bhc", m.skip.weight, xn[:, -8:]) + m.skip.bias[:, None]
        torch.testing.assert_close(y, m.revin.denormalise(ref, stats), atol=1e-12, rtol=1e-10)
    m2 = forecaster("gru", **PATCHED)
    x2 = x.clone()
    x2[:, :2] = 100.0
    stats = m2.revin.statistics(x)
    with torch.no_grad():
        torch.testing.assert_close(m2(x2, stats=stats), m2(x, stats=stats), atol=1e-12, rtol=1e-10)
        x2[:, 2] = 100.0  # ... the third does
        assert not torch.allclose(m2(x2, stats=stats), m2(x, stats=stats))
    with pytest.raises(ValueError, match=r"7 time steps; this model needs at least 8 \(patch_len 3, skip_window 8\)"):
        m2(x[:, :7])


# ---------------------------------------------------------------------------------- baselines

def test_naive_forecaster_repeats_last_value():
    x = torch.randn(3, 10, 4)
    y = NaiveForecaster(5)(x)
    assert y.shape == (3, 5, 4)
    assert torch.equal(y, x[:, -1:].repeat(1, 5, 1))
    assert torch.equal(NaiveForecaster(5, target_index=2)(x), x[:, -1:, 2:3].repeat(1, 5, 1))


@pytest.mark.parametrize("kernel", [1, 4, 5, 25])
def test_moving_average_matches_direct_computation(kernel):
    x = torch.randn(2, 12, 3, dtype=F64)
    front = (kernel - 1) // 2
    ref = torch.empty_like(x)
    for t in range(12):
        idx = [min(max(t - front + j, 0), 11) for j in range(kernel)]  # edge padding = clamping
        ref[:, t] = x[:, idx].mean(1)
    torch.testing.assert_close(moving_average(x, kernel), ref, atol=1e-12, rtol=0)


def test_dlinear_reductions():
    window = horizon = 12
    x = torch.randn(2, window, 3, dtype=F64)
    m = DLinear(window, horizon, 3, kernel=5).double()
    eye = torch.eye(window, dtype=F64)
    with torch.no_grad():
        m.weight_trend.copy_(eye)
        m.weight_seasonal.zero_()
    torch.testing.assert_close(m(x), moving_average(x, 5), atol=1e-12, rtol=0)  # the trend alone
    with torch.no_grad():
        m.weight_seasonal.copy_(eye)
        m.bias_trend.fill_(0.5)
    torch.testing.assert_close(m(x), x + 0.5, atol=1e-12, rtol=0)  # trend + seasonal = x
    # default init: each forecast step is the window mean
    d = DLinear(window, 4, 3).double()
    torch.testing.assert_close(d(x), x.mean(1, keepdim=True).expand(-1, 4, -1), atol=1e-6, rtol=0)  # 1/12 in fp32


def test_dlinear_individual_and_target():
    window, horizon = 8, 8
    x = torch.randn(2, window, 3, dtype=F64)
    m = DLinear(window, horizon, 3, individual=True, kernel=3).double()
    assert m.weight_trend.shape == (3, horizon, window)
    eye = torch.eye(window, dtype=F64)
    with torch.no_grad():
        for c in range(3):  # channel c: (c + 1) * x
            m.weight_trend[c] = eye * (c + 1)
            m.weight_seasonal[c] = eye * (c + 1)
    scale = torch.tensor([1.0, 2.0, 3.0], dtype=F64)
    torch.testing.assert_close(m(x), x * scale, atol=1e-12, rtol=0)
    ms = DLinear(window, horizon, 3, individual=True, kernel=3, target_index=1).double()
    ms.load_state_dict(m.state_dict())
    torch.testing.assert_close(ms(x), 2 * x[..., 1:2], atol=1e-12, rtol=0)


# ------------------------------------------------------------------------- validation, glue

def test_bad_shapes_raise_with_expected_shape():
    m = forecaster("gru")
    with pytest.raises(ValueError, match=r"\(B, L, C\) with C = 3.*got \(2, 20\)"):
        m(torch.randn(2, L, dtype=F64))
    with pytest.raises(ValueError, match=r"\(B, L, C\) with C = 3.*got \(2, 20, 4\)"):
        m(torch.randn(2, L, 4, dtype=F64))
    with pytest.raises(ValueError, match=r"\(B, L, C\) with L = 8, C = 3.*got \(1, 9, 3\)"):
        DLinear(8, 4, 3)(torch.randn(1, 9, 3))
    with pytest.raises(ValueError, match=r"\(B, L, C\).*got \(5,\)"):
        NaiveForecaster(2)(torch.randn(5))
    stream = m.start_stream(torch.randn(2, L, C, dtype=F64))
    with pytest.raises(ValueError, match=r"\(B, k, C\) with B = 2, C = 3.*got \(3, 1, 3\)"):
        m.update(stream, torch.randn(3, 1, C, dtype=F64))
    with pytest.raises(ValueError, match="channel_mode"):
        SequenceForecaster(3, 4, channel_mode="both")
    with pytest.raises(ValueError, match="out_channels"):
        SequenceForecaster(3, 4, out_channels=2)
    with pytest.raises(ValueError, match="target_index"):
        SequenceForecaster(3, 4, target_index=3)


def test_forecast_loss_on_window_dataset_batch():
    values = torch.randn(60, 3)
    data = WindowDataset(values, 16, 4, target_columns=[1])
    x, y = torch.stack([data[i][0] for i in range(5)]), torch.stack([data[i][1] for i in range(5)])
    m = SequenceForecaster(3, 4, "gru", d_model=16, n_layers=1, target_index=1)
    loss, metrics = forecast_loss(m, (x, y))
    assert loss.dim() == 0 and set(metrics) == {"mse", "mae"}
    loss.backward()
    with pytest.raises(ValueError, match="forecast_loss"):
        forecast_loss(SequenceForecaster(3, 4, "gru", d_model=16, n_layers=1), (x, y))


def test_seasonal_naive_repeats_the_last_season():
    from rlts.heads.forecast import SeasonalNaiveForecaster

    x = torch.randn(2, 10, 3, dtype=torch.float64)
    for season in (1, 4, 10):
        y = SeasonalNaiveForecaster(7, season)(x)
        want = torch.stack([x[:, 10 - season + (h % season)] for h in range(7)], dim=1)
        assert torch.equal(y, want)
    assert torch.equal(SeasonalNaiveForecaster(3, 2, target_index=1)(x), x[:, [8, 9, 8], 1:2])
    with pytest.raises(ValueError, match=r"season \(11 steps\) is longer than the window \(10 steps\)"):
        SeasonalNaiveForecaster(3, 11)(x)


# ---------------------------------------------------------------------------------- running statistics

def _ewm_loop(x, span, eps):
    """float64 loop: at each t the weighted mean and std of rows 0..t, weights beta^(t - i)."""
    beta = 1.0 - 2.0 / (span + 1.0)
    B, T, Cx = x.shape
    mean, std = torch.empty_like(x), torch.empty_like(x)
    for t in range(T):
        w = beta ** torch.arange(t, -1, -1, dtype=F64)                      # (t+1,)
        w = (w / w.sum()).view(1, -1, 1)
        m = (w * x[:, :t + 1]).sum(1)
        v = (w * (x[:, :t + 1] - m.unsqueeze(1)) ** 2).sum(1)
        mean[:, t], std[:, t] = m, torch.sqrt(v + eps)
    return mean, std


@pytest.mark.parametrize("span", [1, 2, 7, 96])
def test_running_statistics_match_a_weighted_loop_and_continue_from_their_sums(span):
    from rlts.heads.forecast import running_statistics
    gen = torch.Generator().manual_seed(span)
    x = torch.randn(3, 37, 4, dtype=F64, generator=gen) * torch.tensor([1.0, 1e-3, 50.0, 1.0], dtype=F64)
    x[..., 3] = 1e3 + 1e-2 * x[..., 3]          # a large level with small variation
    x[1, :, 0] = 2.5                             # a constant channel: std = sqrt(eps)
    stats, sums = running_statistics(x, span, eps=1e-5)
    mean, std = _ewm_loop(x, span, 1e-5)
    torch.testing.assert_close(stats.mean, mean, atol=1e-9, rtol=1e-10)
    torch.testing.assert_close(stats.std, std, atol=1e-7, rtol=1e-7)
    torch.testing.assert_close(stats.std[1, :, 0], torch.full((37,), math.sqrt(1e-5), dtype=F64), atol=0, rtol=1e-6)
    first, s1 = running_statistics(x[:, :11], span)
    rest, s2 = running_statistics(x[:, 11:], span, sums=s1)
    torch.testing.assert_close(torch.cat([first.mean, rest.mean], 1), stats.mean, atol=1e-12, rtol=1e-12)
    torch.testing.assert_close(s2, sums, atol=1e-9, rtol=1e-12)
    if span > 1:  # float32 input: statistics in float32, computed in float64
        s32, _ = running_statistics(x.float(), span)
        assert s32.mean.dtype == torch.float32
        torch.testing.assert_close(s32.mean.double(), mean, atol=1e-3, rtol=1e-5)


def streaming_forecaster(backbone, **kw):
    extra = {"decay": True} if backbone == "aaren" else {}
    return forecaster(backbone, running_span=5, **{**extra, **kw})


@pytest.mark.parametrize("backbone", BACKBONES)
@pytest.mark.parametrize("mode,target", [("independent", None), ("mixing", None), ("independent", 1)])
@pytest.mark.parametrize("patched", [False, True], ids=["step-tokens", "patches+skip"])
def test_running_model_forecasts_agree_by_prefix_by_sequence_and_by_stream(backbone, mode, target, patched):
    """Running statistics: the forecast after row t is forward(x[:, :t+1]), whether from one
    parallel pass over the sequence or from a stream started on a window and updated row by row."""
    m = streaming_forecaster(backbone, channel_mode=mode, target_index=target, **(PATCHED if patched else {}))
    randomise_revin(m)
    T = 31
    x = torch.randn(2, T, C, dtype=F64).cumsum(1) + 3.0
    positions = list(range(m.min_window - 1, T))
    with torch.no_grad():
        seq = m.forecast_sequence(x, positions)
        by_prefix = torch.stack([m(x[:, :t + 1]) for t in positions], 1)
    torch.testing.assert_close(seq, by_prefix, atol=1e-11, rtol=1e-9)
    start = 13
    stream = m.start_stream(x[:, :start])
    got = [stream.forecast]
    t = start
    for k in (1, 3, 1, 2, 5, 1, 4, 1):
        y, stream = m.update(stream, x[:, t:t + k])
        got.append(y)
        t += k
        assert stream.n_seen == t
    want = seq[:, [positions.index(s - 1) for s in [start, start + 1, start + 4, start + 5, start + 7, start + 12,
                                                     start + 13, start + 17, start + 18]]]
    torch.testing.assert_close(torch.stack(got, 1), want, atol=1e-10, rtol=1e-8)


@pytest.mark.parametrize("backbone", BACKBONES)
def test_running_model_forecasts_ignore_later_rows(backbone):
    m = streaming_forecaster(backbone, **PATCHED)
    x = torch.randn(1, 30, C, dtype=F64)
    x2 = x.clone()
    x2[:, 20:] += 100.0
    with torch.no_grad():
        a, b = m.forecast_sequence(x, list(range(7, 30))), m.forecast_sequence(x2, list(range(7, 30)))
    torch.testing.assert_close(a[:, :13], b[:, :13], atol=1e-12, rtol=0)
    assert not torch.allclose(a[:, 13:], b[:, 13:])


@pytest.mark.parametrize("backbone", RECURRENT)
def test_running_stream_state_size_is_constant(backbone):
    m = streaming_forecaster(backbone, **PATCHED)
    stream = m.start_stream(torch.randn(2, L, C, dtype=F64))
    sizes = []
    for _ in range(40):
        _, stream = m.update(stream, torch.randn(2, 1, C, dtype=F64) * 5)
        sizes.append(_state_bytes(stream))
    assert len(set(sizes)) == 1 and sizes[0] == _state_bytes(m.start_stream(torch.randn(2, 9, C, dtype=F64)))


@pytest.mark.parametrize("patched", [False, True], ids=["step-tokens", "patches+skip"])
def test_sequence_forecast_loss_is_the_mean_over_patch_ends_and_its_gradient_matches(patched):
    """The loss equals, and differentiates as, the MSE of forward on each prefix that ends at a
    patch end past the burn-in against the next H rows, computed one prefix at a time."""
    from rlts.heads.forecast import sequence_forecast_loss
    m = streaming_forecaster("gru", target_index=2 if patched else None, **(PATCHED if patched else {}))
    p = m.patch_len
    T, burn = 29, 10
    x = torch.randn(3, T, C, dtype=F64)
    y = torch.randn(3, H, 1 if patched else C, dtype=F64)
    loss, metrics = sequence_forecast_loss(m, (x, y), burn_in=burn)
    full = torch.cat([x[..., 2:3] if patched else x, y], 1)
    ends = [t for t in range(T - 1, burn - 2, -p)]
    ref = torch.stack([((m(x[:, :t + 1]) - full[:, t + 1:t + 1 + H]) ** 2).mean() for t in ends]).mean()
    torch.testing.assert_close(loss, ref, atol=1e-12, rtol=1e-10)
    assert metrics["mse"] == pytest.approx(ref.item())
    g = torch.autograd.grad(loss, list(m.parameters()), allow_unused=True)
    g_ref = torch.autograd.grad(ref, list(m.parameters()), allow_unused=True)
    for a, b in zip(g, g_ref):
        if a is None or b is None:
            assert a is None and b is None
        else:
            torch.testing.assert_close(a, b, atol=1e-11, rtol=1e-8)
    with pytest.raises(ValueError, match="no forecast after the burn-in of 40 rows"):
        sequence_forecast_loss(m, (x, y), burn_in=40)


def test_running_model_bad_input_messages():
    with pytest.raises(ValueError, match="running_span .* needs revin=True"):
        SequenceForecaster(C, H, "gru", d_model=16, revin=False, running_span=5)
    with pytest.raises(ValueError, match="needs a model made with running_span"):
        forecaster("gru").forecast_sequence(torch.randn(1, 10, C, dtype=F64))
    m = streaming_forecaster("gru", **PATCHED)
    with pytest.raises(ValueError, match=r"position 3 is outside \[7, 19\]"):
        m.forecast_sequence(torch.randn(1, 20, C, dtype=F64), [3, 9])
    with pytest.raises(ValueError, match="takes no `stats`"):
        m(torch.randn(1, 20, C, dtype=F64), stats=RevINStats(torch.zeros(1, 1, C), torch.ones(1, 1, C)))


def test_forecast_loss_leaves_missing_targets_out_with_finite_gradients():
    """NaN targets (a series that does not cover the window) add nothing to the loss or its
    gradient: the same as the loss over the other elements alone."""
    m = forecaster("gru")
    x = torch.randn(4, L, C, dtype=F64)
    y = torch.randn(4, H, C, dtype=F64)
    y_nan = y.clone()
    y_nan[:2, :, 1] = float("nan")
    loss, metrics = forecast_loss(m, (x, y_nan))
    keep = ~torch.isnan(y_nan)
    ref = ((m(x) - y)[keep] ** 2).mean()
    torch.testing.assert_close(loss, ref, atol=1e-12, rtol=1e-10)
    g = torch.autograd.grad(loss, list(m.parameters()), allow_unused=True)
    g_ref = torch.autograd.grad(ref, list(m.parameters()), allow_unused=True)
    for a, b in zip(g, g_ref):
        if a is not None:
            assert torch.isfinite(a).all()
            torch.testing.assert_close(a, b, atol=1e-12, rtol=1e-9)
    assert metrics["mae"] == pytest.approx((m(x) - y)[keep].abs().mean().item())
