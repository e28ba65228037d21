"""rlts.nn.conv: MaskedBatchNorm1d and ConvStem against naive float64 references.

The reference convolves each series alone with an explicit loop over time steps and kernel
taps, and takes the batch-norm statistics over the valid steps of all series; it shares no
code with the module (no Conv1d, no padding masks). Forward and backward, unequal and odd
lengths, padding filled with huge values, inputs with a large offset."""
import pytest
import torch

from rlts.nn.conv import ConvStem, MaskedBatchNorm1d

F64 = torch.float64
LENGTHS = [11, 1, 7, 4]

pytestmark = pytest.mark.usefixtures("one_thread")


def padded(seqs, fill=1e30):
    x = torch.full((len(seqs), max(s.shape[0] for s in seqs), seqs[0].shape[1]), fill, dtype=F64)
    for i, s in enumerate(seqs):
        x[i, :s.shape[0]] = s
    return x


def valid_mask(lengths, L):
    return torch.arange(L)[None, :] < torch.tensor(lengths)[:, None]


def ref_conv(s, weight, bias):
    """s (L, C_in), weight (C_out, C_in, K): causal convolution, one step at a time."""
    L, K = s.shape[0], weight.shape[-1]
    rows = []
    for t in range(L):
        acc = bias.clone()
        for k in range(K):
            j = t - (K - 1) + k          # tap k reads step j; steps before 0 are zeros
            if j >= 0:
                acc = acc + weight[:, :, k] @ s[j]
        rows.append(acc)
    return torch.stack(rows)             # (L, C_out)


def ref_norm(hs, norm, training):
    """hs: list of (L_i, D); statistics over all rows of all series in training mode."""
    if training:
        rows = torch.cat(hs)
        mean, var = rows.mean(dim=0), rows.var(dim=0, unbiased=False)
    else:
        mean, var = norm.running_mean, norm.running_var
    return [(h - mean) / torch.sqrt(var + norm.eps) * norm.weight + norm.bias for h in hs]


def ref_stem(stem, seqs, training):
    hs = list(seqs)
    for conv, norm in zip(stem.convs, stem.norms):
        hs = [ref_conv(h, conv.weight, conv.bias) for h in hs]
        hs = [torch.relu(h) for h in ref_norm(hs, norm, training)]
    return hs


def randomise(stem):
    with torch.no_grad():
        for norm in stem.norms:
            norm.weight.uniform_(0.5, 2.0)
            norm.bias.normal_()
            norm.running_mean.normal_()
            norm.running_var.uniform_(0.5, 2.0)
    return stem


@pytest.mark.parametrize("training", [True, False])
@pytest.mark.parametrize("offset", [0.0, 1e4])
def test_conv_stem_matches_a_naive_loop_forward_and_backward(training, offset):
    torch.manual_seed(0)
    stem = randomise(ConvStem(3, 4, kernels=(4, 3, 2), hidden=(2, 3)).double()).train(training)
    seqs = [offset + torch.randn(n, 3, dtype=F64) for n in LENGTHS]
    x = padded(seqs).requires_grad_(True)
    out = stem(x, valid_mask(LENGTHS, x.shape[1]))
    leaves = [s.clone().requires_grad_(True) for s in seqs]
    want = ref_stem(stem, leaves, training)
    assert out.shape == (4, max(LENGTHS), 4) and out.dtype == F64
    for i, n in enumerate(LENGTHS):
        torch.testing.assert_close(out[i, :n], want[i], rtol=1e-10, atol=1e-10)
        assert (out[i, n:] == 0).all()           # padding comes out as zeros
    weights = torch.randn(out.shape, dtype=F64)
    params = list(stem.parameters())
    got = torch.autograd.grad((out * weights).sum(), [x] + params)
    ref = torch.autograd.grad(sum((weights[i, :n] * h).sum() for i, (n, h) in enumerate(zip(LENGTHS, want))),
                              leaves + params)
    for i, n in enumerate(LENGTHS):
        torch.testing.assert_close(got[0][i, :n], ref[i], rtol=1e-8, atol=1e-8)
        assert (got[0][i, n:] == 0).all()         # nothing flows into the padding
    for g, r in zip(got[1:], ref[len(LENGTHS):]):
        torch.testing.assert_close(g, r, rtol=1e-8, atol=1e-8)


def test_masked_batch_norm_running_statistics_match_batch_norm():
    """Training updates the running statistics as nn.BatchNorm1d does on the valid rows alone."""
    torch.manual_seed(1)
    ours, theirs = MaskedBatchNorm1d(5).double(), torch.nn.BatchNorm1d(5).double()
    for _ in range(3):
        seqs = [3.0 + 2.0 * torch.randn(n, 5, dtype=F64) for n in LENGTHS]
        y = ours(padded(seqs), valid_mask(LENGTHS, max(LENGTHS)))
        rows = torch.cat(seqs)
        z = theirs(rows)
        torch.testing.assert_close(torch.cat([y[i, :n] for i, n in enumerate(LENGTHS)]), z, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(ours.running_mean, theirs.running_mean, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(ours.running_var, theirs.running_var, rtol=1e-12, atol=1e-12)
    assert int(ours.num_batches_tracked) == 3
    ours.eval(), theirs.eval()
    rows = torch.randn(6, 5, dtype=F64)
    torch.testing.assert_close(ours(rows[None], torch.ones(1, 6, dtype=torch.bool))[0], theirs(rows), rtol=1e-12, atol=1e-12)


def test_conv_stem_is_causal_and_padding_independent_in_eval_mode():
    torch.manual_seed(2)
    stem = randomise(ConvStem(2, 3).double()).eval()
    s = torch.randn(20, 2, dtype=F64)
    with torch.no_grad():
        full = stem(s[None], torch.ones(1, 20, dtype=torch.bool))[0]
        changed = s.clone()
        changed[12:] = 1e6 * torch.randn(8, 2, dtype=F64)
        later = stem(changed[None], torch.ones(1, 20, dtype=torch.bool))[0]
        prefix = stem(s[None, :12], torch.ones(1, 12, dtype=torch.bool))[0]
    torch.testing.assert_close(later[:12], full[:12], rtol=0, atol=1e-12)
    torch.testing.assert_close(prefix, full[:12], rtol=0, atol=1e-12)
    assert (later[12:] - full[12:]).abs().max() > 1.0


def test_bad_settings_are_named():
    with pytest.raises(ValueError, match="one positive hidden width per kernel but the last"):
        ConvStem(2, 4, kernels=(8, 5), hidden=(1, 2))
    with pytest.raises(ValueError, match="n_channels >= 1 and d_out >= 1"):
        ConvStem(0, 4)
    with pytest.raises(ValueError, match="at least 2 valid positions"):
        MaskedBatchNorm1d(3).train()(torch.randn(1, 4, 3), torch.tensor([[True, False, False, False]]))
