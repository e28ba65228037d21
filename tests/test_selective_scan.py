"""Tests for rlts.kernels.selective_scan: both backends against the naive float64 loop.

The Triton kernels run under TRITON_INTERPRET=1 (set in conftest.py), which costs ~0.1 ms
per scanned element, so their cases use batch <= 2, dim <= 8, N <= 4, L <= 127.
"""
import importlib
import subprocess
import sys

import pytest
import torch

from rlts.kernels.selective import selective_scan, selective_scan_ref, selective_state_update

# the module itself, for its private knobs (_CHUNK_ELEMS, _tri)
ss = importlib.import_module("rlts.kernels.selective")

NAMES = ("u", "delta", "A", "B", "C", "D", "z", "delta_bias")


def make_inputs(batch=2, dim=4, N=4, L=7, G=None, dtype=torch.float64, param_dtype=None,
                D=True, z=True, bias=True, delta_scale=1.0, A_scale=1.0):
    """Random inputs in the layout of selective_scan (B, C grouped when G is given)."""
    param_dtype = param_dtype or dtype
    bc = (batch, N, L) if G is None else (batch, G, N, L)
    x = {
        "u": torch.randn(batch, dim, L),
        "delta": torch.randn(batch, dim, L) * delta_scale,
        "A": -torch.rand(dim, N).add(0.2) * A_scale,
        "B": torch.randn(bc),
        "C": torch.randn(bc),
        "D": torch.randn(dim) if D else None,
        "z": torch.randn(batch, dim, L) if z else None,
        "delta_bias": torch.randn(dim) * 0.5 if bias else None,
    }
    params = ("A", "D", "delta_bias")
    return {k: None if v is None else v.to(param_dtype if k in params else dtype) for k, v in x.items()}


def leaves(x):
    return {k: v.detach().clone().requires_grad_(True) for k, v in x.items() if v is not None}


def run(fn, x, softplus, **kw):
    """out, last state and the gradients of a random loss through both (all in float64)."""
    x = leaves(x)
    out, last = fn(**x, delta_softplus=softplus, return_last_state=True, **kw)
    g = torch.Generator().manual_seed(1)
    w_out = torch.randn(out.shape, generator=g, dtype=torch.float64).to(out.dtype)
    w_last = torch.randn(last.shape, generator=g, dtype=torch.float64).to(last.dtype)
    loss = (out.double() * w_out.double()).sum() + (last.double() * w_last.double()).sum()
    grads = torch.autograd.grad(loss, list(x.values()))
    return out, last, dict(zip(x.keys(), grads))


def rel_err(a, b):
    a, b = a.double(), b.double()
    return ((a - b).abs().max() / b.abs().max().clamp_min(1e-12)).item()


def assert_matches_ref(x, softplus, backend, tol=None, ref_x=None):
    """Compare one backend against the float64 ref (on `ref_x`, default x cast to float64)."""
    ref_x = ref_x or {k: None if v is None else v.double() for k, v in x.items()}
    out, last, grads = run(selective_scan, x, softplus, backend=backend)
    r_out, r_last, r_grads = run(selective_scan_ref, ref_x, softplus)
    assert out.dtype == x["u"].dtype and out.shape == x["u"].shape
    assert last.shape == r_last.shape
    if tol is None:  # float64: must agree to rounding
        torch.testing.assert_close(out, r_out, rtol=1e-9, atol=1e-10)
        torch.testing.assert_close(last, r_last, rtol=1e-9, atol=1e-10)
        for k in grads:
            torch.testing.assert_close(grads[k], r_grads[k], rtol=1e-8, atol=1e-9, msg=f"d{k}")
        return
    assert rel_err(out, r_out) < tol, "out"
    assert rel_err(last, r_last) < tol, "last state"
    for k in grads:
        assert grads[k].dtype == x[k].dtype, k
        assert rel_err(grads[k], r_grads[k]) < tol, f"d{k}: {rel_err(grads[k], r_grads[k])}"


# --------------------------------------------------------------------------- float64 vs ref
TORCH_CASES = [  # (L, G, D, z, bias, softplus)
    (1, None, True, True, True, True),
    (7, None, False, False, False, False),
    (127, 2, True, True, True, True),
    (127, None, True, False, False, True),
    (1000, 2, True, True, False, True),
]
TRITON_CASES = [
    (1, None, True, True, True, True),
    (7, None, False, False, False, False),
    (7, 2, True, False, True, False),
    (127, 2, True, True, True, True),
]


@pytest.mark.parametrize("L,G,D,z,bias,softplus", TORCH_CASES)
def test_torch_matches_ref_float64(L, G, D, z, bias, softplus):
    x = make_inputs(dim=8, L=L, G=G, D=D, z=z, bias=bias)
    assert_matches_ref(x, softplus, "torch")


@pytest.mark.parametrize("L,G,D,z,bias,softplus", TRITON_CASES)
def test_triton_matches_ref_float64(L, G, D, z, bias, softplus):
    # dim 6 with G = 2: 3 channels per group, not a power of two (masked channel block)
    x = make_inputs(dim=6 if G else 4, N=3 if L == 7 else 4, L=L, G=G, D=D, z=z, bias=bias)
    assert_matches_ref(x, softplus, "triton")


def test_torch_chunk_boundaries(monkeypatch):
    """The CPU path carries the state (and, backward, the adjoint) across L-chunks."""
    monkeypatch.setattr(ss, "_CHUNK_MIN", 1)
    monkeypatch.setattr(ss, "_CHUNK_ELEMS", 2 * 8 * 4 * 13)  # 13 steps per chunk: 300 = 23*13 + 1
    x = make_inputs(dim=8, L=300, G=2)
    assert_matches_ref(x, True, "torch")


@pytest.mark.parametrize("backend", ["torch", "triton"])
def test_strided_and_expanded_inputs(backend):
    """Transposed activations and stride-0 expanded parameters need no copy and give the same result."""
    x = make_inputs(dim=4, L=20, G=2)
    x["u"] = x["u"].transpose(1, 2).contiguous().transpose(1, 2)      # (batch, dim, L), stride(-1) != 1
    x["A"] = x["A"][:, :1].expand(4, 4)                               # stride 0 over N
    x["D"] = x["D"][:1].expand(4)
    assert x["u"].stride(-1) != 1 and x["A"].stride(1) == 0
    assert_matches_ref(x, True, backend)


# --------------------------------------------------------------------------- initial state
INIT_CASES = [  # (backend, L, G, softplus)
    ("torch", 1, None, True),
    ("torch", 40, 2, True),
    ("torch", 9, None, False),
    ("triton", 1, None, True),
    ("triton", 21, 2, True),   # two L-blocks, masked channel block (3 channels per group)
]


@pytest.mark.parametrize("backend,L,G,softplus", INIT_CASES)
def test_initial_state_matches_ref(backend, L, G, softplus):
    """out, last state and every gradient (d initial_state included) against the float64 ref."""
    dim = 6 if G else 4
    x = make_inputs(dim=dim, N=4, L=L, G=G)
    x["initial_state"] = torch.randn(2, dim, 4, dtype=torch.float64)
    assert_matches_ref(x, softplus, backend)
    # the initial state matters: a different one changes the output
    out0 = selective_scan(**{**x, "initial_state": None}, delta_softplus=softplus, backend=backend)
    assert not torch.allclose(out0, selective_scan(**x, delta_softplus=softplus, backend=backend))


def _piece(x, l0, l1):
    return {k: v[..., l0:l1] if k in ("u", "delta", "z", "B", "C") and v is not None else v
            for k, v in x.items()}


@pytest.mark.parametrize("backend,L,cut", [("torch", 30, 11), ("torch", 5, 1), ("triton", 23, 17)])
def test_initial_state_chains_pieces(backend, L, cut):
    """Two pieces chained through return_last_state / initial_state equal one scan over the
    whole: outputs, last state, and the gradients of a loss on both (through the chained
    state) equal those of the float64 ref run on the whole sequence, d initial_state included."""
    x = make_inputs(dim=6, N=3, L=L, G=2)
    x["initial_state"] = torch.randn(2, 6, 3, dtype=torch.float64)
    lx = leaves(x)
    p1, p2 = _piece(lx, 0, cut), _piece(lx, cut, L)
    out1, mid = selective_scan(**p1, delta_softplus=True, return_last_state=True, backend=backend)
    out2, last = selective_scan(**{**p2, "initial_state": mid}, delta_softplus=True,
                                return_last_state=True, backend=backend)
    out = torch.cat([out1, out2], dim=-1)

    rx = leaves(x)
    r_out, r_last = selective_scan_ref(**rx, delta_softplus=True, return_last_state=True)
    torch.testing.assert_close(out, r_out, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(last, r_last, rtol=1e-10, atol=1e-10)

    w_out, w_last = torch.randn_like(r_out), torch.randn_like(r_last)
    g = torch.autograd.grad((out * w_out).sum() + (last * w_last).sum(), list(lx.values()))
    r_g = torch.autograd.grad((r_out * w_out).sum() + (r_last * w_last).sum(), list(rx.values()))
    for k, a, b in zip(lx, g, r_g):
        torch.testing.assert_close(a, b, rtol=1e-8, atol=1e-9, msg=f"d{k}")


def test_initial_state_chunk_boundaries(monkeypatch):
    """CPU path with several L-chunks: d initial_state is the adjoint carried out of chunk 0."""
    monkeypatch.setattr(ss, "_CHUNK_MIN", 1)
    monkeypatch.setattr(ss, "_CHUNK_ELEMS", 2 * 8 * 4 * 7)  # 7 steps per chunk: 50 = 7*7 + 1
    x = make_inputs(dim=8, L=50, G=2)
    x["initial_state"] = torch.randn(2, 8, 4, dtype=torch.float64)
    assert len(ss._chunks(50, 2 * 8 * 4)) == 8
    assert_matches_ref(x, True, "torch")


def test_initial_state_low_precision_dtypes():
    """float32 initial state next to bf16 activations: its gradient comes back in float32."""
    x = make_inputs(dim=4, L=9, dtype=torch.bfloat16, param_dtype=torch.float32)
    x["initial_state"] = torch.randn(2, 4, 4)
    lx = leaves(x)
    out, last = selective_scan(**lx, return_last_state=True)
    (out.float().sum() + last.sum()).backward()
    assert lx["initial_state"].grad.dtype == torch.float32
    ref_x = {k: None if v is None else v.double() for k, v in x.items()}
    assert_matches_ref(x, False, "torch", tol=2e-2, ref_x=ref_x)


# --------------------------------------------------------------------------- low precision
@pytest.mark.parametrize("backend,L", [("torch", 127), ("triton", 37)])
@pytest.mark.parametrize("dtype,tol", [(torch.float32, 2e-5), (torch.bfloat16, 2e-2)])
def test_low_precision_vs_float64_ref(backend, L, dtype, tol):
    # activations in `dtype`, parameters (A, D, delta_bias) in float32 as in a real model
    x = make_inputs(dim=8 if backend == "torch" else 4, L=L, G=2, dtype=dtype, param_dtype=torch.float32)
    ref_x = {k: None if v is None else v.double() for k, v in x.items()}  # same (rounded) values
    assert_matches_ref(x, True, backend, tol=tol, ref_x=ref_x)


def test_half_precision_torch_path():
    x = make_inputs(dim=8, L=50, dtype=torch.float16, param_dtype=torch.float32)
    ref_x = {k: None if v is None else v.double() for k, v in x.items()}
    assert_matches_ref(x, True, "torch", tol=2e-2, ref_x=ref_x)


# --------------------------------------------------------------------------- adversarial values
@pytest.mark.parametrize("backend,L", [("torch", 1000), ("triton", 40)])
def test_strong_decay(backend, L):
    """Large delta * |A| drives exp(delta A) to (or below) float32's smallest normal: no NaN/inf,
    and float32 still matches the float64 ref."""
    x = make_inputs(dim=4, L=L, dtype=torch.float32, delta_scale=20.0, A_scale=10.0)
    x["delta"] = x["delta"].abs()  # delta up to ~80, delta * A down to ~-800
    out, last, grads = run(selective_scan, x, False, backend=backend)
    assert torch.isfinite(out).all() and torch.isfinite(last).all()
    assert all(torch.isfinite(g).all() for g in grads.values())
    ref_x = {k: None if v is None else v.double() for k, v in x.items()}
    assert_matches_ref(x, False, backend, tol=1e-4, ref_x=ref_x)


def test_long_sequence_torch_float32():
    """L = 4096, dim * N = 1024 in float32 (4 CPU chunks): no drift against float64."""
    x = make_inputs(batch=1, dim=64, N=16, L=4096, dtype=torch.float32, D=False, z=False, bias=False)
    x["delta"] = torch.rand_like(x["delta"]) * 0.1
    out, last = selective_scan(**x, return_last_state=True, backend="torch")
    assert len(ss._chunks(4096, 64 * 16)) == 4
    r_out, r_last = selective_scan(**{k: v.double() for k, v in x.items() if v is not None},
                                   return_last_state=True, backend="torch")
    assert rel_err(out, r_out) < 1e-4 and rel_err(last, r_last) < 1e-4


def test_long_sequence_torch_vs_ref():
    """A long sequence through several chunks at the default chunk budget (dim * N = 4096)."""
    x = make_inputs(batch=1, dim=256, N=16, L=600, dtype=torch.float32, G=4)
    x["delta"] = x["delta"] * 0.3
    ref_x = {k: None if v is None else v.double() for k, v in x.items()}
    assert len(ss._chunks(600, 256 * 16)) > 1
    assert_matches_ref(x, True, "torch", tol=1e-4, ref_x=ref_x)


# --------------------------------------------------------------------------- step / chaining
@pytest.mark.parametrize("backend,G", [("torch", None), ("torch", 2), ("triton", 2)])
def test_state_update_continues_scan(backend, G):
    """Scan a prefix with return_last_state, then step token by token: same outputs and final
    state as one scan over the whole sequence."""
    x = make_inputs(dim=6, L=12, G=G)
    full, full_last = selective_scan(**x, delta_softplus=True, return_last_state=True, backend=backend)
    k = 5
    pre = {n: v[..., :k] if v is not None and v.dim() >= 3 else v for n, v in x.items()}
    out_pre, state = selective_scan(**pre, delta_softplus=True, return_last_state=True, backend=backend)
    torch.testing.assert_close(out_pre, full[..., :k], rtol=1e-10, atol=1e-10)
    state = state.clone()
    for t in range(k, 12):
        y = selective_state_update(state, x["u"][..., t], x["delta"][..., t], x["A"], x["B"][..., t],
                                   x["C"][..., t], D=x["D"], z=x["z"][..., t], dt_bias=x["delta_bias"],
                                   dt_softplus=True, backend=backend)
        torch.testing.assert_close(y, full[..., t], rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(state, full_last, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("backend,state_dtype", [("torch", torch.float64), ("torch", torch.float32),
                                                 ("triton", torch.float64), ("triton", torch.float32)])
def test_state_update_multihead(backend, state_dtype):
    """Mamba-2 form: per-head A, dt, dt_bias, D broadcast over headdim with stride-0 expands;
    equals selective_scan on the flattened (nheads * headdim) channels."""
    batch, H, P, N, G, L = 2, 4, 3, 5, 2, 6
    dim = H * P
    A_h = -torch.rand(H, dtype=torch.float64) - 0.5
    A = A_h[:, None, None].expand(H, P, N)                           # (nheads, headdim, N), stride 0
    dt_h = torch.randn(batch, L, H, dtype=torch.float64)
    dt = dt_h[..., None].expand(batch, L, H, P)
    dt_bias = torch.randn(H, dtype=torch.float64)[:, None].expand(H, P)
    D = torch.randn(H, dtype=torch.float64)[:, None].expand(H, P)
    xs = torch.randn(batch, L, H, P, dtype=torch.float64)
    zs = torch.randn(batch, L, H, P, dtype=torch.float64)
    Bs = torch.randn(batch, L, G, N, dtype=torch.float64)
    Cs = torch.randn(batch, L, G, N, dtype=torch.float64)
    assert A.stride(1) == 0 and dt.stride(-1) == 0

    flat = lambda t: t.reshape(batch, L, dim).transpose(1, 2)        # (batch, dim, L)  # noqa: E731
    ref, ref_last = selective_scan(flat(xs), flat(dt), A.reshape(dim, N), Bs.permute(0, 2, 3, 1),
                                   Cs.permute(0, 2, 3, 1), D=D.reshape(dim), z=flat(zs),
                                   delta_bias=dt_bias.reshape(dim), delta_softplus=True,
                                   return_last_state=True, backend="torch")
    state = torch.zeros(batch, H, P, N, dtype=state_dtype)
    for t in range(L):
        y = selective_state_update(state, xs[:, t], dt[:, t], A, Bs[:, t], Cs[:, t], D=D, z=zs[:, t],
                                   dt_bias=dt_bias, dt_softplus=True, backend=backend)
        assert y.shape == (batch, H, P) and y.dtype == xs.dtype
        tol = 1e-10 if state_dtype == torch.float64 else 1e-5
        torch.testing.assert_close(y.reshape(batch, dim), ref[..., t], rtol=tol, atol=tol)
    torch.testing.assert_close(state.double().reshape(batch, dim, N), ref_last, rtol=1e-5, atol=1e-5)


def test_state_update_backends_agree_low_precision():
    """bf16 activations with a float32 state, (batch, dim, N) form: Triton step == PyTorch step."""
    batch, dim, N, G = 3, 8, 4, 2
    args = dict(x=torch.randn(batch, dim).bfloat16(), dt=torch.randn(batch, dim).bfloat16(),
                A=-torch.rand(dim, N), B=torch.randn(batch, G, N).bfloat16(), C=torch.randn(batch, G, N).bfloat16(),
                D=torch.randn(dim), z=torch.randn(batch, dim).bfloat16(), dt_bias=torch.randn(dim), dt_softplus=True)
    state0 = torch.randn(batch, dim, N)
    s_torch, s_triton = state0.clone(), state0.clone()
    y_torch = selective_state_update(s_torch, **args, backend="torch")
    y_triton = selective_state_update(s_triton, **args, backend="triton")
    assert y_triton.dtype == torch.bfloat16 and not torch.equal(s_torch, state0)
    torch.testing.assert_close(s_triton, s_torch, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(y_triton, y_torch, rtol=1e-2, atol=1e-2)


def test_dtypes_and_auto_backend():
    x = leaves(make_inputs(L=9, dtype=torch.bfloat16, param_dtype=torch.float32))
    out, last = selective_scan(**x, return_last_state=True)          # CPU + auto -> PyTorch path
    assert type(out.grad_fn).__name__.startswith("_SelectiveScanTorch")
    assert out.dtype == torch.bfloat16 and last.dtype == torch.float32
    out.float().sum().backward()
    assert x["u"].grad.dtype == torch.bfloat16 and x["A"].grad.dtype == torch.float32
    assert selective_scan(**make_inputs(L=9), return_last_state=True)[1].dtype == torch.float64


# --------------------------------------------------------------------------- bad input
def _base():
    return make_inputs(batch=2, dim=4, N=3, L=5)


BAD_SCAN = [
    ({"u": torch.zeros(2, 4)}, r"`u` must have shape \(batch, dim, L\)"),
    ({"u": [[0.0]]}, r"`u` must be a torch.Tensor"),
    ({"u": torch.zeros(2, 4, 0, dtype=torch.float64)}, r"`u` must have shape \(batch, dim, L\) with L >= 1"),
    ({"delta": torch.zeros(2, 4, 6, dtype=torch.float64)}, r"`delta` must have shape \(batch, dim, L\)"),
    ({"A": torch.zeros(5, 3, dtype=torch.float64)}, r"`A` must have shape \(dim, N\)"),
    ({"A": torch.zeros(4, 3, dtype=torch.complex64)}, r"`A` must be a floating-point"),
    ({"B": torch.zeros(2, 2, 5, dtype=torch.float64)}, r"`B` must have shape \(batch, N, L\) or \(batch, G, N, L\)"),
    ({"B": torch.zeros(2, 3, 3, 5, dtype=torch.float64)}, r"`B` has G = 3 groups, which must divide dim = 4"),
    ({"C": torch.zeros(2, 2, 3, 5, dtype=torch.float64)}, r"`C` must have the same groups as `B`"),
    ({"D": torch.zeros(3, dtype=torch.float64)}, r"`D` must have shape \(dim,\)"),
    ({"z": torch.zeros(2, 4, 4, dtype=torch.float64)}, r"`z` must have shape \(batch, dim, L\)"),
    ({"delta_bias": torch.zeros(4, 1, dtype=torch.float64)}, r"`delta_bias` must have shape \(dim,\)"),
    ({"initial_state": torch.zeros(2, 4, 4, dtype=torch.float64)},
     r"`initial_state` must have shape \(batch, dim, N\) = \(2, 4, 3\)"),
    ({"initial_state": torch.zeros(4, 3, dtype=torch.float64)}, r"`initial_state` must have shape \(batch, dim, N\)"),
    ({"initial_state": torch.zeros(2, 4, 3, device="meta")}, r"`initial_state` is on meta"),
    ({"delta": torch.zeros(2, 4, 5, dtype=torch.float32)}, r"`delta` has dtype torch.float32"),
    ({"C": torch.zeros(2, 3, 5, dtype=torch.float32)}, r"`C` has dtype torch.float32"),
    ({"D": torch.zeros(4, device="meta")}, r"`D` is on meta"),
    ({"backend": "cuda"}, r"`backend` must be one of"),
]


@pytest.mark.parametrize("change,match", BAD_SCAN)
def test_bad_input_scan(change, match):
    x = _base()
    x.update(change)
    with pytest.raises(ValueError, match=match):
        selective_scan(**x)


def _step_base(heads=False):
    f = dict(dtype=torch.float32)
    if heads:
        return dict(state=torch.zeros(2, 4, 3, 5, **f), x=torch.zeros(2, 4, 3, **f), dt=torch.zeros(2, 4, 3, **f),
                    A=torch.zeros(4, 3, 5, **f), B=torch.zeros(2, 2, 5, **f), C=torch.zeros(2, 2, 5, **f),
                    D=torch.zeros(4, 3, **f), dt_bias=torch.zeros(4, 3, **f))
    return dict(state=torch.zeros(2, 4, 5, **f), x=torch.zeros(2, 4, **f), dt=torch.zeros(2, 4, **f),
                A=torch.zeros(4, 5, **f), B=torch.zeros(2, 5, **f), C=torch.zeros(2, 5, **f),
                D=torch.zeros(4, **f), dt_bias=torch.zeros(4, **f))


BAD_STEP = [
    (False, {"state": torch.zeros(2, 4)}, r"`state` must have shape \(batch, dim, N\) or \(batch, nheads, headdim, N\)"),
    (False, {"state": "s"}, r"`state` must be a torch.Tensor"),
    (False, {"x": torch.zeros(2, 5)}, r"`x` must have shape \(batch, dim\)"),
    (False, {"dt": torch.zeros(2, 4, 1)}, r"`dt` must have shape \(batch, dim\)"),
    (False, {"A": torch.zeros(4, 6)}, r"`A` must have shape \(dim, N\)"),
    (False, {"B": torch.zeros(2, 3, 5)}, r"`B` has G = 3 groups, which must divide dim = 4"),
    (False, {"C": torch.zeros(2, 4)}, r"`C` must have shape \(batch, N\) or \(batch, G, N\)"),
    (False, {"D": torch.zeros(5)}, r"`D` must have shape \(dim,\)"),
    (False, {"dt": torch.zeros(2, 4, dtype=torch.float64)}, r"`dt` has dtype torch.float64"),
    (True, {"x": torch.zeros(2, 4, 2)}, r"`x` must have shape \(batch, nheads, headdim\)"),
    (True, {"A": torch.zeros(4, 5)}, r"`A` must have shape \(nheads, headdim, N\)"),
    (True, {"B": torch.zeros(2, 5)}, r"`B` must have shape \(batch, G, N\)"),
    (True, {"dt_bias": torch.zeros(4)}, r"`dt_bias` must have shape \(nheads, headdim\)"),
    (True, {"z": torch.zeros(2, 4, 3, device="meta")}, r"`z` is on meta"),
    (True, {"backend": "gpu"}, r"`backend` must be one of"),
]


@pytest.mark.parametrize("heads,change,match", BAD_STEP)
def test_bad_input_state_update(heads, change, match):
    x = _step_base(heads)
    x.update(change)
    with pytest.raises(ValueError, match=match):
        selective_state_update(**x)


def test_import_without_triton():
    """`rlts.kernels.selective_scan` imports and runs its PyTorch path when triton is missing."""
    code = (
        "import sys; sys.modules['triton'] = None\n"
        "import torch\n"
        "import importlib; ss = importlib.import_module('rlts.kernels.selective')\n"
        "assert ss._tri is None\n"
        "u = torch.randn(1, 2, 3); A = -torch.rand(2, 4); B = torch.randn(1, 4, 3)\n"
        "print(ss.selective_scan(u, u.abs(), A, B, B).shape)\n"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "torch.Size([1, 2, 3])" in r.stdout


@pytest.mark.parametrize("loop_min_width", [0, 1 << 30])  # 0: per-step loop; huge: two-level scan
def test_both_in_chunk_scans_match_ref(monkeypatch, loop_min_width):
    """The CPU path scans a chunk step by step when a step is wide and with the two-level
    linear scan when it is narrow; force each and compare with the float64 ref, with chunks
    that split the sequence (carries between chunks, forward and backward)."""
    monkeypatch.setattr(ss, "_LOOP_MIN_WIDTH", loop_min_width)
    monkeypatch.setattr(ss, "_CHUNK_ELEMS", 2 * 3 * 4 * 40)  # 40-step chunks over L = 130
    x = make_inputs(batch=2, dim=3, N=4, L=130)
    out, last, grads = run(lambda **kw: selective_scan(**kw, backend="torch"), x, True)
    r_out, r_last, r_grads = run(selective_scan_ref, x, True)
    assert rel_err(out, r_out) < 1e-12 and rel_err(last, r_last) < 1e-12
    for k in r_grads:
        assert rel_err(grads[k], r_grads[k]) < 1e-10, k
