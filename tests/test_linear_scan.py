"""rlts.kernels.linear_scan: both backends against the naive float64 loop (forward and grads),
reverse, chaining through h0 / return_last, zeros and negative decays, the one-token step,
and input validation. The Triton backend runs in the interpreter (TRITON_INTERPRET=1, set
by conftest.py), so its cases use small shapes."""
import pytest
import torch

from rlts.kernels import triton_available
from rlts.kernels.linear import linear_scan, linear_scan_ref, linear_scan_step

needs_triton = pytest.mark.skipif(not triton_available(), reason="triton not installed")

# (backend, L): the PyTorch path at full length, Triton on short ones (BLOCK_L = 64, so
# 127 and 200 span several blocks).
CASES = [("torch", 1), ("torch", 7), ("torch", 127), ("torch", 1000),
         pytest.param("triton", 1, marks=needs_triton), pytest.param("triton", 7, marks=needs_triton),
         pytest.param("triton", 127, marks=needs_triton), pytest.param("triton", 200, marks=needs_triton)]
# low-precision runs: one short and one long (several Triton blocks) length per backend
LP_CASES = [("torch", 7), ("torch", 1000),
            pytest.param("triton", 7, marks=needs_triton), pytest.param("triton", 200, marks=needs_triton)]
BACKENDS = ["torch", pytest.param("triton", marks=needs_triton)]

F64 = torch.float64


def make(B, L, D, Da=None, dtype=F64, grad=False):
    """Decays in (-1.1, 1.1) with exact zeros sprinkled in, inputs ~ N(0, 1), h0 ~ N(0, 1)."""
    Da = D if Da is None else Da
    a = torch.empty(B, L, Da, dtype=F64).uniform_(-1.1, 1.1)
    a[torch.rand(B, L, Da) < 0.05] = 0.0
    b = torch.randn(B, L, D, dtype=F64)
    h0 = torch.randn(B, D, dtype=F64)
    return [x.to(dtype).requires_grad_(grad) for x in (a, b, h0)]


def rel_err(x, ref):
    """Max abs error over the max magnitude of the reference (at least 1)."""
    return ((x.double() - ref.double()).abs().max() / ref.double().abs().max().clamp_min(1.0)).item()


@pytest.mark.parametrize("backend,L", CASES)
@pytest.mark.parametrize("reverse", [False, True])
@pytest.mark.parametrize("shared", [False, True])
def test_forward_and_grads_match_ref_float64(backend, L, reverse, shared):
    D = 4 if backend == "triton" else 6
    a, b, h0 = make(2, L, D, Da=1 if shared else D, grad=True)
    h, last = linear_scan(a, b, h0, reverse=reverse, return_last=True, backend=backend)
    h_ref, last_ref = linear_scan_ref(a, b, h0, reverse=reverse, return_last=True)
    assert h.dtype == F64 and h.shape == b.shape and last.shape == h0.shape
    assert rel_err(h, h_ref) < 1e-12
    assert rel_err(last, last_ref) < 1e-12
    dh, dlast = torch.randn_like(h), torch.randn_like(last)
    grads = torch.autograd.grad((h * dh).sum() + (last * dlast).sum(), (a, b, h0))
    grads_ref = torch.autograd.grad((h_ref * dh).sum() + (last_ref * dlast).sum(), (a, b, h0))
    for name, g, g_ref in zip("a b h0".split(), grads, grads_ref):
        assert g.shape == g_ref.shape, name
        assert rel_err(g, g_ref) < 1e-11, name


@pytest.mark.parametrize("backend,L", LP_CASES)
@pytest.mark.parametrize("dtype,tol", [(torch.float32, 1e-6), (torch.bfloat16, 1e-2), (torch.float16, 2e-3)])
def test_low_precision_against_float64(backend, L, dtype, tol):
    """Accumulation is fp32: errors stay at the input rounding level even over long L."""
    D = 4 if backend == "triton" else 6
    a64, b64, h064 = make(2, L, D)
    a64 = a64.clamp(-0.95, 0.95)  # keep |h| bounded so the tolerance is meaningful at L = 1000
    a, b, h0 = [x.to(dtype).requires_grad_() for x in (a64, b64, h064)]
    h, last = linear_scan(a, b, h0, return_last=True, backend=backend)
    assert h.dtype == dtype and last.dtype == dtype
    # reference from the same rounded inputs, so only the scan's own error is measured
    ar, br, h0r = [x.detach().double().requires_grad_() for x in (a, b, h0)]
    h_ref, last_ref = linear_scan_ref(ar, br, h0r, return_last=True)
    assert rel_err(h, h_ref) < tol
    assert rel_err(last, last_ref) < tol
    dh = torch.randn(h.shape, dtype=F64)
    grads = torch.autograd.grad((h * dh.to(dtype)).sum(), (a, b, h0))
    grads_ref = torch.autograd.grad((h_ref * dh.to(dtype).double()).sum(), (ar, br, h0r))
    for name, g, g_ref in zip("a b h0".split(), grads, grads_ref):
        assert g.dtype == dtype, name
        assert rel_err(g, g_ref) < 2 * tol, name


@pytest.mark.parametrize("backend,L", [("torch", 1), ("torch", 7), ("torch", 40),
                                       pytest.param("triton", 5, marks=needs_triton)])
@pytest.mark.parametrize("reverse", [False, True])
@pytest.mark.parametrize("shared", [False, True])
def test_gradcheck(backend, L, reverse, shared):
    a, b, h0 = make(2, L, 3, Da=1 if shared else 3, grad=True)
    fn = lambda a, b, h0: linear_scan(a, b, h0, reverse=reverse, return_last=True, backend=backend)  # noqa: E731
    assert torch.autograd.gradcheck(fn, (a, b, h0), fast_mode=L > 8 or backend == "triton")


@pytest.mark.parametrize("backend", BACKENDS)
def test_reverse_equals_flipped_forward(backend):
    L = 1000 if backend == "torch" else 70
    a, b, h0 = make(2, L, 5)
    h_rev = linear_scan(a, b, h0, reverse=True, backend=backend)
    h_flip = linear_scan(a.flip(1), b.flip(1), h0, backend=backend).flip(1)
    torch.testing.assert_close(h_rev, h_flip, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("reverse", [False, True])
def test_pieces_chain_through_h0_and_last(backend, reverse):
    """Scanning [0, k) then [k, L) from the first piece's last state equals one scan,
    and the gradients flow back through the chained state."""
    L, k = (1000, 377) if backend == "torch" else (90, 37)
    a, b, h0 = make(2, L, 4, grad=True)
    h_all, last_all = linear_scan(a, b, h0, reverse=reverse, return_last=True, backend=backend)
    first, second = (slice(k, None), slice(0, k)) if reverse else (slice(0, k), slice(k, None))
    h1, mid = linear_scan(a[:, first], b[:, first], h0, reverse=reverse, return_last=True, backend=backend)
    h2, last = linear_scan(a[:, second], b[:, second], mid, reverse=reverse, return_last=True, backend=backend)
    h_cat = torch.cat([h2, h1] if reverse else [h1, h2], dim=1)
    torch.testing.assert_close(h_cat, h_all, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(last, last_all, rtol=1e-12, atol=1e-12)
    dh, dl = torch.randn_like(h_all), torch.randn_like(last_all)
    g_all = torch.autograd.grad((h_all * dh).sum() + (last_all * dl).sum(), (a, b, h0))
    g_cat = torch.autograd.grad((h_cat * dh).sum() + (last * dl).sum(), (a, b, h0))
    for x, y in zip(g_cat, g_all):
        torch.testing.assert_close(x, y, rtol=1e-11, atol=1e-11)


@pytest.mark.parametrize("backend", BACKENDS)
def test_zero_and_negative_decays(backend):
    """a = 0 cuts the recurrence (h_t = b_t exactly); a < 0 flips signs; no division anywhere."""
    L = 300 if backend == "torch" else 70
    a, b, h0 = make(1, L, 3)
    a[:, ::7] = 0.0
    a[:, 3::7] = -a[:, 3::7].abs() - 0.5
    h = linear_scan(a, b, h0, backend=backend)
    torch.testing.assert_close(h[:, ::7], b[:, ::7], rtol=0, atol=0)
    torch.testing.assert_close(h, linear_scan_ref(a, b, h0), rtol=1e-12, atol=1e-12)
    a_zero = torch.zeros_like(a)  # everything cut: h = b
    torch.testing.assert_close(linear_scan(a_zero, b, h0, backend=backend), b, rtol=0, atol=0)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("shared", [False, True])
def test_step_equals_scan(backend, shared):
    L = 50
    a, b, h0 = make(2, L, 4, Da=1 if shared else 4)
    h_scan = linear_scan(a, b, h0, backend=backend)
    h = h0
    for t in range(L):
        h = linear_scan_step(a[:, t], b[:, t], h, backend=backend)
        torch.testing.assert_close(h, h_scan[:, t], rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(linear_scan_step(a[:, 0], b[:, 0]), b[:, 0], rtol=0, atol=0)  # h = None: zero state


def test_cpu_path_on_non_contiguous_and_no_h0():
    a, b, _ = make(3, 500, 6)
    a_t = a.transpose(0, 1).contiguous().transpose(0, 1)  # same values, other strides
    b_t = b.transpose(0, 1).contiguous().transpose(0, 1)
    assert not a_t.is_contiguous()
    torch.testing.assert_close(linear_scan(a_t, b_t), linear_scan_ref(a, b), rtol=1e-12, atol=1e-12)


@needs_triton
def test_triton_several_channel_blocks():
    """D = 40 > BLOCK_D = 32: channels are split across programs."""
    a, b, h0 = make(2, 9, 40, grad=True)
    h = linear_scan(a, b, h0, backend="triton")
    h_ref = linear_scan_ref(a, b, h0)
    torch.testing.assert_close(h, h_ref, rtol=1e-12, atol=1e-12)
    dh = torch.randn_like(h)
    for g, g_ref in zip(torch.autograd.grad((h * dh).sum(), (a, b, h0)),
                        torch.autograd.grad((h_ref * dh).sum(), (a, b, h0))):
        torch.testing.assert_close(g, g_ref, rtol=1e-11, atol=1e-11)


# --------------------------------------------------------------------------- validation
def _bad_cases():
    a, b, h0 = torch.randn(2, 5, 3), torch.randn(2, 5, 3), torch.randn(2, 3)
    return [
        (dict(a=a, b=b[0]), r"`b` must have shape \(B, L, D\)"),
        (dict(a=a[:, :4], b=b), r"`a` must have shape \(B, L, D\) or \(B, L, 1\)"),
        (dict(a=torch.randn(2, 5, 2), b=b), r"`a` must have shape \(B, L, D\) = \(2, 5, 3\) or \(B, L, 1\)"),
        (dict(a=a, b=b, h0=h0[:, :2]), r"`h0` must have shape \(B, D\)"),
        (dict(a=a, b=b, h0=h0[0]), r"`h0` must have shape \(B, D\)"),
        (dict(a=a.double(), b=b), r"`a` has dtype torch.float64 but `b` has dtype torch.float32"),
        (dict(a=a, b=b.int()), r"`b` must be a floating-point tensor"),
        (dict(a=a.tolist(), b=b), r"`a` must be a torch.Tensor of shape \(B, L, D\) or \(B, L, 1\)"),
        (dict(a=a, b=None), r"`b` must be a torch.Tensor of shape \(B, L, D\)"),
        (dict(a=a[:, :0], b=b[:, :0]), r"`b` must have shape \(B, L, D\) with L >= 1"),
        (dict(a=a, b=b, backend="cuda"), r"`backend` must be one of"),
    ]


@pytest.mark.parametrize("kwargs,match", _bad_cases())
def test_bad_input_raises_value_error(kwargs, match):
    with pytest.raises(ValueError, match=r"linear_scan: " + match):
        linear_scan(**kwargs)


def test_bad_step_input_raises_value_error():
    a, b, h = torch.randn(2, 3), torch.randn(2, 3), torch.randn(2, 3)
    with pytest.raises(ValueError, match=r"linear_scan_step: `h` must have shape \(B, D\)"):
        linear_scan_step(a, b, h[:1])
    with pytest.raises(ValueError, match=r"linear_scan_step: `a_t` must have shape \(B, D\) = \(2, 3\) or \(B, 1\)"):
        linear_scan_step(a[:, :2], b, h)
    with pytest.raises(ValueError, match=r"linear_scan_step: `b_t` must have shape \(B, D\)"):
        linear_scan_step(a, b[None], h)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_mixed_devices_raise_value_error():
    a, b = torch.randn(2, 5, 3), torch.randn(2, 5, 3, device="cuda")
    with pytest.raises(ValueError, match=r"linear_scan: `a` is on cpu but `b` is on cuda"):
        linear_scan(a, b)


@pytest.mark.skipif(not torch.cuda.is_available() or not triton_available(), reason="needs CUDA and triton")
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_cuda_matches_cpu(dtype):
    a, b, h0 = [x.to(dtype) for x in make(2, 3000, 64)]
    a = a.clamp(-0.95, 0.95)
    h_gpu = linear_scan(a.cuda(), b.cuda(), h0.cuda())
    h_cpu = linear_scan(a, b, h0)
    assert rel_err(h_gpu.cpu(), h_cpu) < (1e-5 if dtype == torch.float32 else 2e-2)
