"""rlts.world_models.functions and rlts.world_models.optim against independent references: float64
naive loops, numpy and hand-computed values (symlog, two-hot, unimix, straight-through
sampling, categorical KL with free bits, lambda-returns, the return scale, LaProp)."""
import io
import math

import numpy as np
import pytest
import torch

from rlts.world_models.functions import (ReturnScale, TwoHot, categorical_kl, kl_losses, lambda_returns,
                                    sample_straight_through, symexp, symlog, unimix)
from rlts.world_models.optim import LaProp

pytestmark = pytest.mark.usefixtures("one_thread")
F64 = torch.float64


# ---------------------------------------------------------------- symlog / symexp

def test_symlog_values_and_round_trip():
    x = torch.tensor([-1e6, -5.0, -1.0, -0.5, 0.0, 0.5, 1.0, 5.0, 1e6], dtype=F64)
    want = torch.tensor([math.copysign(math.log(1 + abs(v)), v) for v in x.tolist()], dtype=F64)
    torch.testing.assert_close(symlog(x), want)
    assert symlog(torch.tensor(0.0)).item() == 0.0
    torch.testing.assert_close(symexp(symlog(x)), x)
    x32 = torch.linspace(-1e4, 1e4, 1001)
    torch.testing.assert_close(symexp(symlog(x32)), x32, rtol=1e-5, atol=1e-5)


# ---------------------------------------------------------------- two-hot

def test_two_hot_bins_and_validation():
    th = TwoHot()
    assert th.bins.shape == (255,) and list(th.parameters()) == []
    assert th.bins[0].item() == -20.0 and th.bins[-1].item() == 20.0 and th.bins[127].item() == 0.0
    with pytest.raises(ValueError, match="n_bins"):
        TwoHot(n_bins=1)
    with pytest.raises(ValueError, match="low < high"):
        TwoHot(low=1.0, high=1.0)
    with pytest.raises(ValueError, match="logits"):
        th.decode(torch.zeros(3, 254))
    with pytest.raises(ValueError, match="target shape"):
        th.loss(torch.zeros(3, 255), torch.zeros(4))


def test_two_hot_encode_hand_values():
    # 5 bins at symlog -2, -1, 0, 1, 2
    th = TwoHot(n_bins=5, low=-2.0, high=2.0)
    e = math.e
    x = torch.tensor([0.0, e - 1, -(e - 1), symexp(torch.tensor(0.25)).item(),
                      symexp(torch.tensor(-1.5)).item(), 1e6, -1e6, symexp(torch.tensor(2.0)).item()])
    want = torch.tensor([[0, 0, 1, 0, 0],          # on a bin (0)
                         [0, 0, 0, 1, 0],          # on bin 1
                         [0, 1, 0, 0, 0],          # on bin -1
                         [0, 0, 0.75, 0.25, 0],    # a quarter of the way from 0 to 1
                         [0.5, 0.5, 0, 0, 0],      # half way between -2 and -1
                         [0, 0, 0, 0, 1],          # above the range: last bin
                         [1, 0, 0, 0, 0],          # below the range: first bin
                         [0, 0, 0, 0, 1]])         # exactly the top bin
    torch.testing.assert_close(th.encode(x), want, atol=1e-6, rtol=0)
    # batch shape preserved, rows sum to one
    enc = TwoHot().encode(torch.randn(3, 4) * 100)
    assert enc.shape == (3, 4, 255)
    torch.testing.assert_close(enc.sum(-1), torch.ones(3, 4))


def test_two_hot_round_trip_wide_range():
    th = TwoHot()
    vals = [0.0, 0.5, -0.5, 1.0, -1.0, 1000.0, -1000.0, 1e6, -1e6, 3.3, -77.7]
    x = torch.cat([torch.tensor(vals), torch.randn(500) * 10, symexp(torch.rand(500) * 28 - 14)])
    enc = th.encode(x)
    assert torch.isfinite(enc).all()
    dec = th.decode(torch.log(enc))  # log(0) = -inf: those bins get zero probability
    torch.testing.assert_close(dec, x, rtol=1e-4, atol=1e-5)
    assert dec[0].item() == 0.0
    # float64 is exact to far tighter tolerance
    x64 = x.double()
    torch.testing.assert_close(th.decode(torch.log(th.encode(x64))), x64, rtol=1e-9, atol=1e-9)


def test_two_hot_loss_equals_hand_cross_entropy():
    th = TwoHot(n_bins=5, low=-2.0, high=2.0)
    logits = torch.tensor([[0.1, -0.3, 2.0, 0.5, -1.0], [1.0, 1.0, 1.0, 1.0, 1.0]], dtype=F64,
                          requires_grad=True)
    target = torch.tensor([symexp(torch.tensor(0.25)).item(), 0.0], dtype=F64)
    loss = th.loss(logits, target)
    lse0 = math.log(sum(math.exp(v) for v in [0.1, -0.3, 2.0, 0.5, -1.0]))
    want0 = -(0.75 * (2.0 - lse0) + 0.25 * (0.5 - lse0))
    want1 = math.log(5.0)  # uniform logits: -log(1/5) whatever the target
    torch.testing.assert_close(loss, torch.tensor([want0, want1], dtype=F64))
    loss.sum().backward()
    # d CE / d logits = softmax - target weights
    w = torch.tensor([[0, 0, 0.75, 0.25, 0], [0, 0, 1.0, 0, 0]], dtype=F64)
    torch.testing.assert_close(logits.grad, torch.softmax(logits.detach(), -1) - w)
    # large targets stay finite in float32
    big = th.loss(torch.zeros(2, 5), torch.tensor([1e6, -1e6]))
    assert torch.isfinite(big).all()
    # bfloat16 logits / targets are upcast: float32 results matching the float32 computation
    th = TwoHot()
    lg, tg = torch.randn(4, 255), torch.tensor([0.0, 3.0, -1e3, 1e6])
    lb = lg.bfloat16()
    assert th.loss(lb, tg.bfloat16()).dtype == torch.float32
    torch.testing.assert_close(th.loss(lb, tg), th.loss(lb.float(), tg))
    torch.testing.assert_close(th.decode(lb), th.decode(lb.float()))
    assert torch.isfinite(th.encode(tg.bfloat16())).all()


# ---------------------------------------------------------------- unimix / sampling

def test_unimix_probabilities():
    logits = torch.tensor([[3.0, 0.0, -50.0, 1.0]], dtype=F64)
    p = torch.softmax(logits, -1)
    for mix in (0.0, 0.01, 0.3, 1.0):
        out = unimix(logits, mix)
        torch.testing.assert_close(out.exp(), (1 - mix) * p + mix / 4)
        torch.testing.assert_close(out.exp().sum(-1), torch.ones(1, dtype=F64))
    assert torch.isfinite(unimix(logits, 0.01)).all()
    # float32 with a very negative logit: the floor mix / K is kept
    assert unimix(torch.tensor([0.0, -1e4]), 0.01)[1].exp().item() == pytest.approx(0.005, rel=1e-5)
    with pytest.raises(ValueError, match="mix"):
        unimix(logits, 1.5)


def test_straight_through_forward_and_gradient():
    logits = torch.randn(6, 32, 32, dtype=F64, requires_grad=True)
    out = sample_straight_through(logits)
    assert out.shape == logits.shape
    assert ((out.detach() == 0) | (out.detach() == 1)).all()
    torch.testing.assert_close(out.detach().sum(-1), torch.ones(6, 32, dtype=F64))
    w = torch.randn_like(logits)
    (out * w).sum().backward()
    ref = logits.detach().clone().requires_grad_(True)
    (torch.softmax(ref, -1) * w).sum().backward()
    torch.testing.assert_close(logits.grad, ref.grad)


def test_straight_through_sampling_frequencies():
    torch.manual_seed(123)
    logits = torch.tensor([1.0, 0.0, -1.0, 2.0, 0.5])
    n = 40000
    samples = sample_straight_through(logits.expand(n, 5)).detach()  # (n, 5)
    freq = samples.mean(0).double()
    p = torch.softmax(logits.double(), -1)
    sd = torch.sqrt(p * (1 - p) / n)
    assert ((freq - p).abs() < 5 * sd).all(), (freq, p)


# ---------------------------------------------------------------- KL

def naive_kl(p_logits, q_logits):
    """KL summed over (variables, classes) with explicit loops, float64. Inputs (N, V, K)."""
    out = []
    for pl, ql in zip(p_logits.double(), q_logits.double()):
        tot = 0.0
        for pv, qv in zip(pl.tolist(), ql.tolist()):
            zp = sum(math.exp(a) for a in pv)
            zq = sum(math.exp(a) for a in qv)
            for a, b in zip(pv, qv):
                pa, qb = math.exp(a) / zp, math.exp(b) / zq
                tot += pa * math.log(pa / qb)
        out.append(tot)
    return torch.tensor(out, dtype=F64)


def test_categorical_kl_vs_naive_loop():
    p, q = torch.randn(2, 3, 4, 5, dtype=F64) * 2, torch.randn(2, 3, 4, 5, dtype=F64) * 2
    kl = categorical_kl(p, q)
    assert kl.shape == (2, 3)
    torch.testing.assert_close(kl.reshape(-1), naive_kl(p.reshape(6, 4, 5), q.reshape(6, 4, 5)))
    torch.testing.assert_close(categorical_kl(p, p), torch.zeros(2, 3, dtype=F64))
    with pytest.raises(ValueError, match="shapes differ"):
        categorical_kl(p, q[..., :4])
    with pytest.raises(ValueError, match="variables"):
        categorical_kl(torch.zeros(5), torch.zeros(5))


def test_kl_losses_free_bits_active():
    post = torch.randn(4, 2, 3, 3, dtype=F64) * 0.1
    prior = (post + 0.05 * torch.randn_like(post)).requires_grad_(True)
    post.requires_grad_(True)
    dyn, rep, kl = kl_losses(post, prior, free_bits=1.0)
    want = naive_kl(post.detach().reshape(8, 3, 3), prior.detach().reshape(8, 3, 3)).mean()
    assert want < 1.0
    assert dyn.item() == 1.0 and rep.item() == 1.0 and dyn.shape == () and rep.shape == ()
    torch.testing.assert_close(kl, want)
    assert not kl.requires_grad
    (dyn + rep).backward()
    assert post.grad is None or (post.grad == 0).all()
    assert prior.grad is None or (prior.grad == 0).all()


def test_kl_losses_free_bits_inactive_gradient_sides():
    post0, prior0 = torch.randn(3, 2, 4, dtype=F64) * 3, torch.randn(3, 2, 4, dtype=F64) * 3
    want = naive_kl(post0, prior0).mean()
    assert want > 0.5
    post, prior = post0.clone().requires_grad_(True), prior0.clone().requires_grad_(True)
    dyn, rep, kl = kl_losses(post, prior, free_bits=0.5)
    for v in (dyn, rep, kl):
        torch.testing.assert_close(v, want)
    # dyn: gradient only to the prior, equal to d mean KL / d prior
    dyn.backward()
    assert post.grad is None
    p2, q2 = post0.clone().requires_grad_(True), prior0.clone().requires_grad_(True)
    categorical_kl(p2, q2).mean().backward()
    torch.testing.assert_close(prior.grad, q2.grad)
    # rep: gradient only to the posterior
    post.grad, prior.grad = None, None
    _, rep, _ = kl_losses(post, prior, free_bits=0.5)
    rep.backward()
    assert prior.grad is None
    torch.testing.assert_close(post.grad, p2.grad)
    with pytest.raises(ValueError, match="free_bits"):
        kl_losses(post, prior, free_bits=-1.0)


# ---------------------------------------------------------------- lambda-returns

def naive_lambda_returns(r, c, v, gamma, lam):
    """n-step-return mixture: R_t = (1 - lam) sum_n lam^(n-1) G_t^(n) + lam^(H-t-1) G_t^(H-t),
    with G_t^(n) = sum_{k<n} (prod_{j<k} gamma c_{t+j}) r_{t+k} + (prod_{j<n} gamma c_{t+j}) V_{t+n}.
    A double loop over (t, n), float64."""
    r, c, v = r.double(), c.double(), v.double()
    b, h = r.shape
    out = torch.zeros(b, h, dtype=F64)
    for i in range(b):
        for t in range(h):
            tot = 0.0
            for n in range(1, h - t + 1):
                g, disc = 0.0, 1.0
                for k in range(n):
                    g += disc * r[i, t + k].item()
                    disc *= gamma * c[i, t + k].item()
                g += disc * v[i, t + n].item()
                weight = (1 - lam) * lam ** (n - 1) if n < h - t else lam ** (n - 1)
                tot += weight * g
            out[i, t] = tot
    return out


def test_lambda_returns_hand_example():
    r = torch.tensor([[1.0, 2.0, 3.0]], dtype=F64)
    c = torch.tensor([[1.0, 1.0, 1.0]], dtype=F64)
    v = torch.tensor([[10.0, 20.0, 30.0, 40.0]], dtype=F64)
    g, lam = 0.5, 0.5
    r2 = 3 + g * 40                                  # 23
    r1 = 2 + g * ((1 - lam) * 30 + lam * r2)         # 2 + 0.5 * (15 + 11.5) = 15.25
    r0 = 1 + g * ((1 - lam) * 20 + lam * r1)         # 1 + 0.5 * (10 + 7.625) = 9.8125
    torch.testing.assert_close(lambda_returns(r, c, v, g, lam), torch.tensor([[r0, r1, r2]], dtype=F64))
    assert (r0, r1, r2) == (9.8125, 15.25, 23.0)


@pytest.mark.parametrize("lam", [0.0, 0.95, 1.0])
def test_lambda_returns_vs_naive(lam):
    b, h, gamma = 3, 6, 0.97
    r, v = torch.randn(b, h, dtype=F64), torch.randn(b, h + 1, dtype=F64)
    c = torch.ones(b, h, dtype=F64)
    c[0, 2] = 0.0  # termination in the middle
    c[1, 4] = 0.3  # soft continue
    got = lambda_returns(r, c, v, gamma, lam)
    torch.testing.assert_close(got, naive_lambda_returns(r, c, v, gamma, lam))
    if lam == 0.0:  # one-step TD targets
        torch.testing.assert_close(got, r + gamma * c * v[:, 1:])
    # after the termination at t = 2 the return does not depend on later steps
    assert got[0, 2].item() == pytest.approx(r[0, 2].item())


def test_lambda_returns_validation():
    with pytest.raises(ValueError, match="values"):
        lambda_returns(torch.zeros(2, 3), torch.ones(2, 3), torch.zeros(2, 3), 0.99, 0.95)
    with pytest.raises(ValueError, match="continues"):
        lambda_returns(torch.zeros(2, 3), torch.ones(2, 4), torch.zeros(2, 4), 0.99, 0.95)
    with pytest.raises(ValueError, match="unknown bootstrap 'last'; use one of next, current"):
        lambda_returns(torch.zeros(2, 3), torch.ones(2, 3), torch.zeros(2, 4), 0.99, 0.95, "last")


def naive_current_bootstrap_returns(r, c, v, gamma, lam):
    """Drama's calc_lambda_return as a plain float64 loop: G_H = V_H, then backwards
    G_t = r_t + gamma c_t (1 - lam) V_t + gamma c_t lam G_{t+1}."""
    b, h = r.shape
    out = torch.zeros(b, h, dtype=F64)
    for i in range(b):
        g = v[i, h].item()
        for t in reversed(range(h)):
            ct = c[i, t].item()
            g = r[i, t].item() + gamma * ct * (1 - lam) * v[i, t].item() + gamma * ct * lam * g
            out[i, t] = g
    return out


@pytest.mark.parametrize("lam", [0.0, 0.95, 1.0])
def test_lambda_returns_current_bootstrap_vs_naive(lam):
    """bootstrap="current": the one-step bootstrap reads V_t, not V_{t+1}; R_H = V_H either way,
    and lam = 1 (no one-step bootstrap) gives the same returns as "next"."""
    b, h, gamma = 3, 6, 0.97
    torch.manual_seed(0)
    r, v = torch.randn(b, h, dtype=F64), torch.randn(b, h + 1, dtype=F64)
    c = torch.ones(b, h, dtype=F64)
    c[0, 2] = 0.0
    c[1, 4] = 0.3
    got = lambda_returns(r, c, v, gamma, lam, "current")
    torch.testing.assert_close(got, naive_current_bootstrap_returns(r, c, v, gamma, lam), rtol=1e-12, atol=1e-12)
    if lam == 0.0:
        torch.testing.assert_close(got, r + gamma * c * v[:, :-1])
    if lam == 1.0:
        torch.testing.assert_close(got, lambda_returns(r, c, v, gamma, lam, "next"))
    else:
        assert not torch.allclose(got, lambda_returns(r, c, v, gamma, lam, "next"))
    # hand example: r = (1, 2), V = (10, 20, 30), gamma = lam = 0.5, no termination
    r2 = torch.tensor([[1.0, 2.0]], dtype=F64)
    v2 = torch.tensor([[10.0, 20.0, 30.0]], dtype=F64)
    g1 = 2 + 0.5 * (0.5 * 20 + 0.5 * 30)            # 14.5
    g0 = 1 + 0.5 * (0.5 * 10 + 0.5 * g1)            # 7.125
    torch.testing.assert_close(lambda_returns(r2, torch.ones(1, 2, dtype=F64), v2, 0.5, 0.5, "current"),
                               torch.tensor([[g0, g1]], dtype=F64))


# ---------------------------------------------------------------- return scale

def test_return_scale_vs_numpy_and_state_round_trip():
    rs = ReturnScale()
    low = high = 0.0
    batches = [torch.randn(16, 15) * 50 + 3, torch.randn(16, 15) * 200, torch.rand(7, 5) * 900,
               torch.randn(33) * 0.1]
    for x in batches:
        q5, q95 = np.percentile(x.double().numpy(), [5, 95])
        low, high = 0.99 * low + 0.01 * q5, 0.99 * high + 0.01 * q95
        scale = rs.update(x)
        assert scale.shape == ()
        assert rs.low.item() == pytest.approx(low, rel=1e-5, abs=1e-5)
        assert rs.high.item() == pytest.approx(high, rel=1e-5, abs=1e-5)
        assert scale.item() == pytest.approx(max(1.0, high - low), rel=1e-5)
    assert scale.item() > 1.0  # the last scales are above the floor
    # the first update starts from 0 (DreamerV3): a small-spread batch keeps the floor 1
    assert ReturnScale().update(torch.randn(100)).item() == 1.0
    buf = io.BytesIO()
    torch.save(rs.state_dict(), buf)
    buf.seek(0)
    rs2 = ReturnScale()
    rs2.load_state_dict(torch.load(buf, weights_only=True))
    x = torch.randn(40) * 300
    assert rs2.update(x).item() == rs.update(x).item()
    assert rs2.low.item() == rs.low.item() and rs2.high.item() == rs.high.item()


# ---------------------------------------------------------------- LaProp

def laprop_reference(p0, grads, lr, b1, b2, eps, wd=0.0):
    """Plain-Python float64 LaProp on a list of scalars."""
    p = list(p0)
    m = [0.0] * len(p)
    v = [0.0] * len(p)
    for t, g in enumerate(grads, start=1):
        for i in range(len(p)):
            v[i] = b2 * v[i] + (1 - b2) * g[i] ** 2
            vhat = v[i] / (1 - b2 ** t)
            m[i] = b1 * m[i] + (1 - b1) * g[i] / (math.sqrt(vhat) + eps)
            mhat = m[i] / (1 - b1 ** t)
            p[i] = p[i] * (1 - lr * wd) - lr * mhat
    return p


@pytest.mark.parametrize("wd", [0.0, 0.1])
def test_laprop_matches_hand_reference(wd):
    p0 = [0.5, -1.0, 2.0, 0.0]
    grads = [[0.1, -2.0, 0.0, 3.0], [-0.4, 1.0, 0.0, 3.0], [0.2, 0.5, 1e-3, -1.0]]
    w = torch.tensor(p0, dtype=F64, requires_grad=True)
    frozen = torch.ones(2, dtype=F64, requires_grad=True)  # never gets a grad
    opt = LaProp([w, frozen], lr=0.01, betas=(0.9, 0.99), eps=1e-8, weight_decay=wd)
    for g in grads:
        w.grad = torch.tensor(g, dtype=F64)
        opt.step()
    want = laprop_reference(p0, grads, 0.01, 0.9, 0.99, 1e-8, wd)
    torch.testing.assert_close(w.detach(), torch.tensor(want, dtype=F64), rtol=1e-12, atol=1e-14)
    assert frozen.detach().eq(1).all() and len(opt.state[frozen]) == 0
    # first step by hand (no weight decay): v_hat = g^2, m_hat = g / |g| -> p - lr sign(g)
    w1 = torch.tensor([1.0, 1.0], dtype=F64, requires_grad=True)
    opt1 = LaProp([w1], lr=0.1)
    w1.grad = torch.tensor([3.0, -0.002], dtype=F64)
    opt1.step()
    torch.testing.assert_close(w1.detach(), torch.tensor([0.9, 1.1], dtype=F64))


def test_laprop_state_dict_resumes_identically():
    torch.manual_seed(1)
    model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Tanh(), torch.nn.Linear(8, 1))
    data = [(torch.randn(16, 4), torch.randn(16, 1)) for _ in range(6)]

    def train(m, opt, batches):
        for x, y in batches:
            opt.zero_grad()
            ((m(x) - y) ** 2).mean().backward()
            opt.step()

    opt = LaProp([{"params": model[0].parameters()}, {"params": model[2].parameters(), "lr": 3e-3}],
                 lr=1e-2, weight_decay=0.01)
    train(model, opt, data[:3])
    buf = io.BytesIO()
    torch.save({"model": model.state_dict(), "opt": opt.state_dict()}, buf)
    train(model, opt, data[3:])

    buf.seek(0)
    ckpt = torch.load(buf, weights_only=True)
    model2 = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Tanh(), torch.nn.Linear(8, 1))
    model2.load_state_dict(ckpt["model"])
    opt2 = LaProp([{"params": model2[0].parameters()}, {"params": model2[2].parameters(), "lr": 3e-3}],
                  lr=1e-2, weight_decay=0.01)
    opt2.load_state_dict(ckpt["opt"])
    assert opt2.state[next(model2.parameters())]["step"].item() == 3
    train(model2, opt2, data[3:])
    for a, b in zip(model.parameters(), model2.parameters()):
        assert torch.equal(a, b)


def laprop_lr_in_momentum_reference(p0, grads, lrs, b1, b2, eps):
    """The reference implementation's LaProp update (lr_in_momentum=True), a plain float64 loop
    over scalars with the learning rate `lrs[t]` at step t."""
    p = list(p0)
    m = [0.0] * len(p)
    v = [0.0] * len(p)
    lr_avg = [0.0] * len(p)
    for t, (g, lr) in enumerate(zip(grads, lrs), start=1):
        for i in range(len(p)):
            v[i] = b2 * v[i] + (1 - b2) * g[i] ** 2
            lr_avg[i] = b1 * lr_avg[i] + (1 - b1) * lr
            m[i] = b1 * m[i] + (1 - b1) * lr * g[i] / (math.sqrt(v[i] / (1 - b2 ** t)) + eps)
            p[i] -= m[i] / (lr_avg[i] / lr)
    return p


def test_laprop_lr_in_momentum_matches_its_reference_loop_under_a_warm_up():
    """lr_in_momentum=True follows the reference update step by step while the learning rate
    rises (a warm-up), where it differs from the default; under a constant learning rate the
    two updates agree."""
    torch.manual_seed(0)
    p0 = [0.5, -1.0, 2.0, 0.0]
    grads = torch.randn(6, 4, dtype=F64).tolist()
    lrs = [0.01 * min(1.0, (k + 1) / 4) for k in range(6)]

    def run(lr_in_momentum, schedule):
        w = torch.tensor(p0, dtype=F64, requires_grad=True)
        opt = LaProp([w], lr=schedule[0], betas=(0.9, 0.99), eps=1e-8, lr_in_momentum=lr_in_momentum)
        for g, lr in zip(grads, schedule):
            opt.param_groups[0]["lr"] = lr
            w.grad = torch.tensor(g, dtype=F64)
            opt.step()
        return w.detach(), opt

    got, opt = run(True, lrs)
    want = laprop_lr_in_momentum_reference(p0, grads, lrs, 0.9, 0.99, 1e-8)
    torch.testing.assert_close(got, torch.tensor(want, dtype=F64), rtol=1e-12, atol=1e-14)
    assert isinstance(next(iter(opt.state.values()))["exp_avg_lr"], float)
    assert not torch.allclose(got, run(False, lrs)[0], rtol=1e-6, atol=0)
    constant = [0.01] * 6
    torch.testing.assert_close(run(True, constant)[0], run(False, constant)[0], rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(run(True, constant)[0],
                               torch.tensor(laprop_reference(p0, grads, 0.01, 0.9, 0.99, 1e-8), dtype=F64),
                               rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("lr_in_momentum", [False, True])
def test_laprop_without_momentum_is_bias_corrected_rmsprop(lr_in_momentum):
    """beta1 = 0: p <- p - lr g / (sqrt(v_hat) + eps), RMSProp with DreamerV3's bias correction,
    which is also Adam with betas (0, beta2)."""
    torch.manual_seed(1)
    grads = torch.randn(5, 3, dtype=F64)
    w = torch.tensor([0.3, -0.2, 1.0], dtype=F64, requires_grad=True)
    a = w.detach().clone().requires_grad_(True)
    opt = LaProp([w], lr=0.02, betas=(0.0, 0.9), eps=1e-6, lr_in_momentum=lr_in_momentum)
    adam = torch.optim.Adam([a], lr=0.02, betas=(0.0, 0.9), eps=1e-6)
    p, v = w.detach().clone(), torch.zeros(3, dtype=F64)
    for t, g in enumerate(grads, start=1):
        w.grad, a.grad = g.clone(), g.clone()
        opt.step()
        adam.step()
        v = 0.9 * v + 0.1 * g ** 2
        p = p - 0.02 * g / ((v / (1 - 0.9 ** t)).sqrt() + 1e-6)
    torch.testing.assert_close(w.detach(), p, rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(w.detach(), a.detach(), rtol=1e-12, atol=1e-14)


def test_laprop_lr_in_momentum_state_dict_resumes_identically():
    torch.manual_seed(2)
    model = torch.nn.Linear(4, 2)
    data = [(torch.randn(8, 4), torch.randn(8, 2)) for _ in range(6)]

    def train(m, opt, batches, first):
        for k, (x, y) in enumerate(batches, start=first):
            opt.param_groups[0]["lr"] = 1e-2 * min(1.0, (k + 1) / 10)   # a warm-up
            opt.zero_grad()
            ((m(x) - y) ** 2).mean().backward()
            opt.step()

    opt = LaProp(model.parameters(), lr=1e-2, lr_in_momentum=True)
    train(model, opt, data[:3], 0)
    buf = io.BytesIO()
    torch.save({"model": model.state_dict(), "opt": opt.state_dict()}, buf)
    train(model, opt, data[3:], 3)
    buf.seek(0)
    ckpt = torch.load(buf, weights_only=True)
    model2 = torch.nn.Linear(4, 2)
    model2.load_state_dict(ckpt["model"])
    opt2 = LaProp(model2.parameters(), lr=1e-2, lr_in_momentum=True)
    opt2.load_state_dict(ckpt["opt"])
    train(model2, opt2, data[3:], 3)
    for a, b in zip(model.parameters(), model2.parameters()):
        assert torch.equal(a, b)


@pytest.mark.parametrize("kwargs, match", [({"lr": -1.0}, "lr"), ({"betas": (0.9, 1.0)}, "betas"),
                                           ({"betas": (-0.1, 0.9)}, "betas"), ({"eps": -1e-8}, "eps"),
                                           ({"weight_decay": -0.1}, "weight_decay"),
                                           ({"lr_in_momentum": 1}, "lr_in_momentum")])
def test_laprop_validation(kwargs, match):
    with pytest.raises(ValueError, match=match):
        LaProp([torch.zeros(2, requires_grad=True)], **kwargs)
