"""rlts.kernels.softmax_scan (Aaren): both backends against the naive loop and against masked
causal softmax attention with one query (forward and grads), huge scores, a 65,536-token
sequence, chaining through `state`, the one-token step, and input validation. The Triton
backend runs in the interpreter (TRITON_INTERPRET=1, set by conftest.py): small shapes."""
import pytest
import torch

from rlts.kernels import interpret_mode, triton_available
from rlts.kernels.softmax import softmax_scan, softmax_scan_ref, softmax_scan_step

needs_triton = pytest.mark.skipif(not triton_available(), reason="triton not installed")
CASES = [("torch", 1), ("torch", 7), ("torch", 127), ("torch", 1000),
         pytest.param("triton", 1, marks=needs_triton), pytest.param("triton", 7, marks=needs_triton),
         pytest.param("triton", 127, marks=needs_triton), pytest.param("triton", 150, marks=needs_triton)]
# low-precision runs: one short and one long (several Triton blocks) length per backend
LP_CASES = [("torch", 7), ("torch", 1000),
            pytest.param("triton", 7, marks=needs_triton), pytest.param("triton", 150, marks=needs_triton)]
BACKENDS = ["torch", pytest.param("triton", marks=needs_triton)]
F64 = torch.float64


def attention(s, v):
    """Masked causal softmax attention of a single query: weights softmax(s_{<=t})."""
    L = s.shape[-1]
    scores = s.unsqueeze(-2).expand(*s.shape[:-1], L, L)  # (B, H, L, L): row t = query at t
    causal = torch.ones(L, L, dtype=torch.bool, device=s.device).tril()
    return torch.softmax(scores.masked_fill(~causal, -float("inf")), dim=-1) @ v  # (B, H, L, E)


def make(B, H, L, E, scale=3.0, dtype=F64, grad=False):
    s = torch.randn(B, H, L, dtype=F64) * scale
    v = torch.randn(B, H, L, E, dtype=F64)
    return [x.to(dtype).requires_grad_(grad) for x in (s, v)]


def rel_err(x, ref):
    return ((x.double() - ref.double()).abs().max() / ref.double().abs().max().clamp_min(1.0)).item()


def invariant(o, state):
    """A scalar that uses the state only through representation-free quantities (w / u and the
    log-normaliser m + log u), with random weights."""
    m, u, w = state
    g = torch.Generator().manual_seed(1)
    r = [torch.randn(x.shape, dtype=F64, generator=g).to(x.dtype) for x in (o, w, u)]
    return (o * r[0]).sum() + (w / u.unsqueeze(-1) * r[1]).sum() + ((m + u.log()) * r[2]).sum()


@pytest.mark.parametrize("backend,L", CASES)
def test_matches_attention_and_ref_float64(backend, L):
    B, E = (1, 3) if backend == "triton" else (2, 5)
    s, v = make(B, 2, L, E, grad=True)
    o, state = softmax_scan(s, v, return_state=True, backend=backend)
    o_ref, state_ref = softmax_scan_ref(s, v, return_state=True)
    o_att = attention(s, v)
    assert o.dtype == F64 and o.shape == v.shape
    assert rel_err(o, o_att) < 1e-12 and rel_err(o, o_ref) < 1e-12
    for x, y in zip(state, state_ref):
        assert rel_err(x, y) < 1e-12
    assert not state[0].requires_grad  # m: non-differentiable stabiliser
    # gradients against attention (o) and the naive loop (o and the state's invariants)
    do = torch.randn_like(o)
    g = torch.autograd.grad((o * do).sum(), (s, v), retain_graph=True)
    g_att = torch.autograd.grad((o_att * do).sum(), (s, v))
    for name, x, y in zip("sv", g, g_att):
        assert rel_err(x, y) < 1e-11, name
    g = torch.autograd.grad(invariant(o, state), (s, v))
    g_ref = torch.autograd.grad(invariant(o_ref, state_ref), (s, v))
    for name, x, y in zip("sv", g, g_ref):
        assert rel_err(x, y) < 1e-11, name


@pytest.mark.parametrize("backend,L", [("torch", 1), ("torch", 6), ("torch", 45),
                                       pytest.param("triton", 5, marks=needs_triton)])
def test_gradcheck_with_state(backend, L):
    s, v = make(1, 2, L, 3, grad=True)
    _, (m0, u0, w0) = softmax_scan_ref(*make(1, 2, 4, 3), return_state=True)
    state0 = [x.detach().requires_grad_() for x in (m0, u0, w0)]

    def fn(s, v, m0, u0, w0):
        o, (m, u, w) = softmax_scan(s, v, (m0, u0, w0), return_state=True, backend=backend)
        return o, w / u.unsqueeze(-1), m + u.log()

    assert torch.autograd.gradcheck(fn, (s, v, *state0), fast_mode=L > 8 or backend == "triton")


@pytest.mark.parametrize("backend,L", LP_CASES)
@pytest.mark.parametrize("dtype,tol", [(torch.float32, 2e-6), (torch.bfloat16, 1.5e-2), (torch.float16, 2e-3)])
def test_low_precision_against_float64(backend, L, dtype, tol):
    """Accumulation is fp32 whatever the input dtype: errors stay at the rounding level."""
    if backend == "triton" and dtype == torch.bfloat16 and interpret_mode():
        tol *= 2  # the interpreter truncates fp32 -> bf16 stores (a GPU rounds to nearest)
    B, E = (1, 3) if backend == "triton" else (2, 5)
    s, v = make(B, 2, L, E, dtype=dtype, grad=True)
    o, state = softmax_scan(s, v, return_state=True, backend=backend)
    assert o.dtype == dtype and state[1].dtype == torch.float32  # the state stays fp32
    s64, v64 = [x.detach().double().requires_grad_() for x in (s, v)]  # same rounded inputs
    o_ref, state_ref = softmax_scan_ref(s64, v64, return_state=True)
    assert rel_err(o, o_ref) < tol
    do = torch.randn(o.shape, dtype=F64).to(dtype)
    g = torch.autograd.grad((o * do).sum(), (s, v))
    g_ref = torch.autograd.grad((o_ref * do.double()).sum(), (s64, v64))
    for name, x, y in zip("sv", g, g_ref):
        assert x.dtype == dtype
        assert rel_err(x, y) < 2 * tol, name


@pytest.mark.parametrize("backend", BACKENDS)
def test_huge_scores_do_not_overflow(backend):
    """Scores of +-1e4 (a float32 exp overflows past 88): still finite and exact, including a
    huge score arriving late, after a long run of hugely negative ones."""
    L = 600 if backend == "torch" else 80
    s, v = make(2, 2, L, 3)
    s = torch.where(torch.rand_like(s) < 0.5, 1e4, -1e4) + s  # mix of huge +/- values
    s[0, 0, : L - 10] = -1e4 + torch.randn(L - 10, dtype=F64)  # hugely negative for a long time...
    s[0, 0, L - 10] = 2e4  # ...then one far larger late
    s[1, 1] = torch.linspace(-1e4, 1e4, L, dtype=F64)  # the max changes at every step
    o_att = attention(s, v)
    for dtype in (F64, torch.float32):
        sd, vd = s.to(dtype).requires_grad_(), v.to(dtype).requires_grad_()
        o = softmax_scan(sd, vd, backend=backend)
        assert torch.isfinite(o).all()
        assert rel_err(o, attention(sd.detach().double(), vd.detach().double())) < (1e-12 if dtype == F64 else 1e-6)
        ds, dv = torch.autograd.grad(o.sum(), (sd, vd))
        assert torch.isfinite(ds).all() and torch.isfinite(dv).all()
        if dtype == F64:
            assert rel_err(o, o_att) < 1e-12
    # after the late 2e4 every earlier token has weight exp(-1e4) = 0: o is that token's value
    torch.testing.assert_close(o[0, 0, L - 10:].double(), v[0, 0, L - 10].expand(10, 3), rtol=0, atol=1e-6)


def test_long_sequence_65536_cpu():
    """L = 65,536 on the CPU path in float32 against an independent float64 computation
    (cumulative sums shifted by the global max: fine in float64 for scores of this range)."""
    B, H, L, E = 1, 2, 65536, 4
    s = torch.randn(B, H, L, dtype=F64) * 4 + torch.linspace(-30, 30, L, dtype=F64)  # drifting max
    v = torch.randn(B, H, L, E, dtype=F64)
    o, (m, u, w) = softmax_scan(s.float(), v.float(), return_state=True, backend="torch")
    e = torch.exp(s - s.amax(-1, keepdim=True))
    o64 = torch.cumsum(e.unsqueeze(-1) * v, 2) / torch.cumsum(e, -1).unsqueeze(-1)
    assert torch.isfinite(o).all()
    assert rel_err(o, o64) < 2e-5
    torch.testing.assert_close(m, s.float().amax(-1), rtol=0, atol=0)
    torch.testing.assert_close(w.double() / u.double().unsqueeze(-1), o64[:, :, -1], rtol=0, atol=2e-5)


@pytest.mark.parametrize("backend", BACKENDS)
def test_pieces_with_state_equal_whole(backend):
    """Scanning [0, k), then [k, L) from the returned state, equals one scan: outputs, final
    state and the gradients with respect to s and v (through the chained state)."""
    L, k = (1000, 413) if backend == "torch" else (90, 37)
    s, v = make(2 if backend == "torch" else 1, 2, L, 3, grad=True)
    o, state = softmax_scan(s, v, return_state=True, backend=backend)
    o1, st1 = softmax_scan(s[..., :k], v[..., :k, :], return_state=True, backend=backend)
    o2, st2 = softmax_scan(s[..., k:], v[..., k:, :], st1, return_state=True, backend=backend)
    o_cat = torch.cat([o1, o2], dim=2)
    torch.testing.assert_close(o_cat, o, rtol=1e-12, atol=1e-12)
    for x, y in zip(st2, state):
        torch.testing.assert_close(x, y, rtol=1e-12, atol=1e-12)
    g = torch.autograd.grad(invariant(o, state), (s, v))
    g_cat = torch.autograd.grad(invariant(o_cat, st2), (s, v))
    for x, y in zip(g_cat, g):
        torch.testing.assert_close(x, y, rtol=1e-11, atol=1e-11)


@pytest.mark.parametrize("backend", BACKENDS)
def test_explicit_empty_state_equals_none(backend):
    s, v = make(1, 2, 20, 3, grad=True)
    empty = (torch.full((1, 2), -float("inf"), dtype=F64, requires_grad=True),
             torch.zeros(1, 2, dtype=F64, requires_grad=True), torch.zeros(1, 2, 3, dtype=F64, requires_grad=True))
    o = softmax_scan(s, v, backend=backend)
    o_e = softmax_scan(s, v, empty, backend=backend)
    torch.testing.assert_close(o_e, o, rtol=0, atol=0)
    grads = torch.autograd.grad(o_e.sum(), (s, v, *empty))
    assert all(torch.isfinite(g).all() for g in grads)
    assert (grads[2] == 0).all() and (grads[3] == 0).all() and (grads[4] == 0).all()  # -inf state: no weight


@pytest.mark.parametrize("backend", BACKENDS)
def test_step_token_by_token_equals_scan(backend):
    L = 60
    s, v = make(2, 3 if backend == "torch" else 1, L, 4, grad=True)
    s.data[..., 30] = 1e4  # a huge score mid-way
    o, state = softmax_scan(s, v, return_state=True, backend=backend)
    st, outs = None, []
    for t in range(L):
        o_t, st = softmax_scan_step(s[..., t], v[..., t, :], st, backend=backend)
        outs.append(o_t)
    o_step = torch.stack(outs, dim=2)
    torch.testing.assert_close(o_step, o, rtol=1e-12, atol=1e-12)
    for x, y in zip(st, state):
        torch.testing.assert_close(x, y, rtol=1e-12, atol=1e-12)
    do = torch.randn_like(o)
    for x, y in zip(torch.autograd.grad((o_step * do).sum() + invariant(o_step, st), (s, v)),
                    torch.autograd.grad((o * do).sum() + invariant(o, state), (s, v))):
        torch.testing.assert_close(x, y, rtol=1e-10, atol=1e-10)


def test_logsumexp_gradient_through_state():
    """m + log u is the log-normaliser; its gradient (through u only, m is a constant) must
    equal that of torch.logsumexp."""
    s, v = make(2, 2, 300, 2, scale=20.0, grad=True)
    _, (m, u, _) = softmax_scan(s, v, return_state=True)
    lse = m + u.log()
    ref = torch.logsumexp(s, dim=-1)
    torch.testing.assert_close(lse, ref, rtol=1e-12, atol=1e-12)
    r = torch.randn_like(ref)
    torch.testing.assert_close(torch.autograd.grad((lse * r).sum(), s)[0], torch.autograd.grad((ref * r).sum(), s)[0],
                               rtol=1e-12, atol=1e-12)


@needs_triton
def test_triton_several_value_blocks():
    """E = 70 > BLOCK_E = 32: value channels split across 3 programs, ds summed across them."""
    s, v = make(1, 1, 6, 70, grad=True)
    o = softmax_scan(s, v, backend="triton")
    o_att = attention(s, v)
    torch.testing.assert_close(o, o_att, rtol=1e-12, atol=1e-12)
    do = torch.randn_like(o)
    for x, y in zip(torch.autograd.grad((o * do).sum(), (s, v)), torch.autograd.grad((o_att * do).sum(), (s, v))):
        torch.testing.assert_close(x, y, rtol=1e-11, atol=1e-11)


# --------------------------------------------------------------------------- validation
def _bad_cases():
    s, v = torch.randn(2, 3, 5), torch.randn(2, 3, 5, 4)
    m, u, w = torch.randn(2, 3), torch.rand(2, 3), torch.randn(2, 3, 4)
    return [
        (dict(s=s[0], v=v), r"`s` must have shape \(B, H, L\)"),
        (dict(s=s, v=v[..., 0]), r"`v` must have shape \(B, H, L, E\)"),
        (dict(s=s, v=v[:, :, :4]), r"`v` must have shape \(B, H, L, E\) = \(2, 3, 5, '\*'\), got \(2, 3, 4, 4\)"),
        (dict(s=s.double(), v=v), r"`v` has dtype torch.float32 but `s` has dtype torch.float64"),
        (dict(s=s.long(), v=v), r"`s` must be a floating-point tensor"),
        (dict(s="scores", v=v), r"`s` must be a torch.Tensor of shape \(B, H, L\)"),
        (dict(s=s, v=v, state=(m, u)), r"`state` must be None or a tuple \(m, u, w\)"),
        (dict(s=s, v=v, state=m), r"`state` must be None or a tuple \(m, u, w\)"),
        (dict(s=s, v=v, state=(m[:1], u, w)), r"`state\[0\] \(m\)` must have shape \(B, H\)"),
        (dict(s=s, v=v, state=(m, u[..., None], w)), r"`state\[1\] \(u\)` must have shape \(B, H\)"),
        (dict(s=s, v=v, state=(m, u, w[..., :3])), r"`state\[2\] \(w\)` must have shape \(B, H, E\)"),
        (dict(s=s[..., :0], v=v[..., :0, :]), r"`s` must have shape \(B, H, L\) with L >= 1"),
        (dict(s=s, v=v, backend="gpu"), r"`backend` must be one of"),
    ]


@pytest.mark.parametrize("kwargs,match", _bad_cases())
def test_bad_input_raises_value_error(kwargs, match):
    with pytest.raises(ValueError, match=r"softmax_scan: " + match):
        softmax_scan(**kwargs)


def test_bad_step_input_raises_value_error():
    s, v = torch.randn(2, 3), torch.randn(2, 3, 4)
    with pytest.raises(ValueError, match=r"softmax_scan_step: `s_t` must have shape \(B, H\)"):
        softmax_scan_step(s[..., None], v)
    with pytest.raises(ValueError, match=r"softmax_scan_step: `v_t` must have shape \(B, H, E\)"):
        softmax_scan_step(s, v[:1])
    with pytest.raises(ValueError, match=r"softmax_scan_step: `state\[2\] \(w\)` must have shape \(B, H, E\)"):
        softmax_scan_step(s, v, (s, s, v[..., :2]))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_mixed_devices_raise_value_error():
    s, v = torch.randn(2, 3, 5), torch.randn(2, 3, 5, 4, device="cuda")
    with pytest.raises(ValueError, match=r"softmax_scan: `v` is on cuda:0 but `s` is on cpu"):
        softmax_scan(s, v)


@pytest.mark.skipif(not torch.cuda.is_available() or not triton_available(), reason="needs CUDA and triton")
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_cuda_matches_cpu(dtype):
    s, v = make(2, 4, 3000, 64, dtype=dtype)
    o_gpu = softmax_scan(s.cuda(), v.cuda())
    o_cpu = softmax_scan(s, v)
    assert rel_err(o_gpu.cpu(), o_cpu) < (1e-5 if dtype == torch.float32 else 2e-2)
