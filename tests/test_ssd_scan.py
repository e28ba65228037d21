"""Tests for rlts.kernels.ssd_scan (Mamba-2 SSD scan).

Everything is checked against `ssd_scan_ref` (a step-by-step loop, run in float64), which is
itself checked against the quadratic "attention" form of the SSD. The Triton kernels run
through the Triton interpreter (TRITON_INTERPRET=1, set in conftest.py) on small shapes.
"""
import pytest
import torch
import torch.nn.functional as F

from rlts.kernels.ssd import ssd_scan, ssd_scan_ref, ssd_state_update

NAMES = ("x", "dt", "A", "B", "C", "D", "z", "dt_bias", "initial_states")
ACTIVATIONS = ("x", "dt", "B", "C", "z")
# max |error| allowed, relative to max |reference|
TOL = {torch.float64: 1e-10, torch.float32: 2e-4, torch.bfloat16: 2.5e-2}


def make_inputs(b, L, h, p, g, n, dtype=torch.float64, *, D="hp", z=True, dt_bias=True,
                init=True, decay=1.0):
    """Random inputs; activations in `dtype`, parameters A, D, dt_bias and states in fp32
    (fp64 when dtype is fp64). `decay` scales A (large: strong decay)."""
    pdt = torch.float64 if dtype == torch.float64 else torch.float32
    t = {
        "x": torch.randn(b, L, h, p),
        "dt": torch.randn(b, L, h) * 0.5 - 1.0,        # raw: softplus(dt + dt_bias) ~ 0.1 - 1
        "A": -torch.exp(torch.randn(h) * 0.5) * decay,
        "B": torch.randn(b, L, g, n),
        "C": torch.randn(b, L, g, n),
        "D": {"hp": torch.randn(h, p), "h": torch.randn(h), None: None}[D],
        "z": torch.randn(b, L, h, p) if z else None,
        "dt_bias": torch.randn(h) * 0.5 if dt_bias else None,
        "initial_states": torch.randn(b, h, p, n) * 0.5 if init else None,
    }
    return {k: None if v is None else v.to(dtype if k in ACTIVATIONS else pdt) for k, v in t.items()}


def as_f64(inputs):
    return {k: None if v is None else v.detach().double() for k, v in inputs.items()}


def run(fn, inputs, gy, gf, **kw):
    """y, final states and the gradients of sum(y * gy) + sum(final * gf) w.r.t. all inputs."""
    leaves = {k: v.detach().clone().requires_grad_() for k, v in inputs.items() if v is not None}
    y, final = fn(**leaves, dt_softplus=True, return_final_states=True, **kw)
    loss = (y.double() * gy).sum() + (final.double() * gf).sum()
    grads = torch.autograd.grad(loss, list(leaves.values()))
    return y, final, dict(zip(leaves, grads))


def scan(backend, chunk_size):
    return lambda **kw: ssd_scan(chunk_size=chunk_size, backend=backend, **kw)


def assert_close(got, want, tol, what):
    got, want = got.detach().double(), want.detach().double()
    assert got.shape == want.shape, what
    assert torch.isfinite(got).all(), f"{what}: non-finite values"
    err = (got - want).abs().max().item()
    scale = want.abs().max().item() + 1e-6
    assert err <= tol * scale, f"{what}: max error {err:.3g} > {tol:g} * {scale:.3g}"


def check_against_ref(inputs, backend, chunk_size, tol=None):
    """ssd_scan (forward and all gradients) against the float64 reference."""
    dtype = inputs["x"].dtype
    tol = TOL[dtype] if tol is None else tol
    b, L, h, p = inputs["x"].shape
    n = inputs["B"].shape[-1]
    gy, gf = torch.randn(b, L, h, p, dtype=torch.float64), torch.randn(b, h, p, n, dtype=torch.float64)
    y_ref, f_ref, g_ref = run(ssd_scan_ref, as_f64(inputs), gy, gf)
    y, f, grads = run(scan(backend, chunk_size), inputs, gy, gf)
    assert y.dtype == dtype and f.dtype == (torch.float64 if dtype == torch.float64 else torch.float32)
    assert_close(y, y_ref, tol, "y")
    assert_close(f, f_ref, tol, "final_states")
    for k, g in grads.items():
        assert g.dtype == inputs[k].dtype, k
        assert_close(g, g_ref[k], tol, f"grad {k}")


# ------------------------------------------------------------------------------------------
# the reference itself
# ------------------------------------------------------------------------------------------


def test_ref_equals_quadratic_form():
    """y_t = sum_{s<=t} (C_t . B_s) exp(dA_{s+1} + ... + dA_t) dt_s x_s + D x_t, per head."""
    b, L, h, p, g, n = 2, 9, 4, 3, 2, 5
    inp = make_inputs(b, L, h, p, g, n, z=False, dt_bias=False, init=False, D="h")
    dt = F.softplus(inp["dt"])
    y = ssd_scan_ref(**{k: v for k, v in inp.items() if v is not None}, dt_softplus=True)
    want = torch.zeros_like(y)
    for bi in range(b):
        for hi in range(h):
            gi = hi // (h // g)
            dA = dt[bi, :, hi] * inp["A"][hi]
            for t in range(L):
                for s in range(t + 1):
                    w = (inp["C"][bi, t, gi] @ inp["B"][bi, s, gi]) * torch.exp(dA[s + 1:t + 1].sum())
                    want[bi, t, hi] += w * dt[bi, s, hi] * inp["x"][bi, s, hi]
                want[bi, t, hi] += inp["D"][hi] * inp["x"][bi, t, hi]
    assert_close(y, want, 1e-12, "ref")


# ------------------------------------------------------------------------------------------
# PyTorch chunked path
# ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("L,chunk_size,g", [
    (1, 16, 1), (7, 4, 2), (7, 64, 1), (127, 16, 1), (127, 16, 2), (128, 32, 2),
    (1000, 64, 1), (1000, 8, 2),      # 1000 % 64 != 0, 1000 % 8 == 0
])
def test_torch_matches_ref_fp64(L, chunk_size, g):
    check_against_ref(make_inputs(2, L, 4, 3, g, 5, D="hp" if g == 1 else "h"), "torch", chunk_size)


@pytest.mark.parametrize("opts", [dict(D=None, z=False, dt_bias=False, init=False),
                                  dict(D="h", z=True, dt_bias=False, init=True)])
def test_torch_matches_ref_optional_inputs(opts):
    check_against_ref(make_inputs(2, 45, 2, 3, 1, 4, **opts), "torch", 16)


@pytest.mark.parametrize("backend", ["torch", "triton"])
def test_gradcheck(backend):
    inp = make_inputs(1, 6, 2, 2, 1, 3)
    leaves = tuple(inp[k].clone().requires_grad_() for k in NAMES)

    def f(*args):
        y, final = ssd_scan(*args[:5], 4, D=args[5], z=args[6], dt_bias=args[7], initial_states=args[8],
                            dt_softplus=True, return_final_states=True, backend=backend)
        return y, final

    assert torch.autograd.gradcheck(f, leaves, fast_mode=True)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_torch_low_precision(dtype):
    check_against_ref(make_inputs(2, 127, 4, 8, 2, 8, dtype), "torch", 32)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_torch_strong_decay(dtype):
    """dt * |A| up to ~500 per step: exp underflows to 0, nothing may turn into inf / NaN."""
    inp = make_inputs(2, 200, 4, 3, 2, 4, dtype, decay=30.0)
    inp["dt"] = inp["dt"] * 4 + 4  # raw dt in ~[-4, 12]: softplus from ~0 to ~12
    check_against_ref(inp, "torch", 64, tol=max(TOL[dtype], 1e-5))


def test_torch_long_sequence_fp32():
    """fp32 over 4k steps (64 chunks carried) stays at fp32 accuracy against the fp64 loop."""
    check_against_ref(make_inputs(1, 4096, 2, 4, 1, 4, torch.float32), "torch", 64, tol=5e-4)


# ------------------------------------------------------------------------------------------
# Triton kernels (interpreter: small shapes)
# ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("b,L,h,p,g,n,chunk_size,opts", [
    (2, 1, 2, 4, 1, 4, 16, dict()),
    (2, 7, 2, 4, 2, 8, 4, dict(D="h")),                         # 7 % 4 != 0, two groups
    (2, 70, 2, 8, 1, 16, 16, dict()),                           # 70 % 16 != 0
    (1, 70, 2, 4, 1, 40, 64, dict()),                           # N > 32: kernel cuts chunks to 32
    (1, 127, 2, 4, 2, 8, 32, dict()),                           # 127 % 32 != 0
    (2, 48, 4, 6, 2, 5, 16, dict(D=None, z=False, dt_bias=False, init=False)),   # 48 % 16 == 0
    (1, 20, 1, 40, 1, 4, 16, dict()),                           # P = 40: two P-blocks of 32
])
def test_triton_matches_ref_fp64(b, L, h, p, g, n, chunk_size, opts):
    check_against_ref(make_inputs(b, L, h, p, g, n, **opts), "triton", chunk_size)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_triton_low_precision(dtype):
    check_against_ref(make_inputs(2, 37, 2, 8, 2, 8, dtype), "triton", 16)


def test_triton_strong_decay():
    """The kernel takes exp(cs_t - cs_s) of in-chunk cumsums (as mamba-ssm's kernels do): with
    |cs| in the thousands, fp32 cancellation costs a few 1e-5 here; no inf / NaN."""
    inp = make_inputs(2, 40, 2, 4, 1, 4, torch.float32, decay=30.0)
    inp["dt"] = inp["dt"] * 4 + 4
    check_against_ref(inp, "triton", 16, tol=1e-4)


def test_triton_without_final_state_grad():
    """No gradient flows into the final states (only y is used)."""
    inp = make_inputs(2, 30, 2, 4, 2, 4)
    gy = torch.randn_like(inp["x"])
    outs = {}
    for backend in ("torch", "triton"):
        leaves = {k: v.clone().requires_grad_() for k, v in inp.items()}
        y = ssd_scan(**leaves, chunk_size=16, dt_softplus=True, backend=backend)
        outs[backend] = (y, torch.autograd.grad((y * gy).sum(), list(leaves.values())))
    assert_close(outs["triton"][0], outs["torch"][0], 1e-10, "y")
    for k, ga, gb in zip(inp, outs["triton"][1], outs["torch"][1]):
        assert_close(ga, gb, 1e-10, f"grad {k}")


# ------------------------------------------------------------------------------------------
# chaining, one-token steps, Mamba-1 agreement
# ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("backend,L,L1,chunk_size", [("torch", 200, 77, 32), ("triton", 40, 19, 16)])
def test_chain_two_pieces(backend, L, L1, chunk_size):
    """scan(first) -> final states -> initial_states of scan(second) == scan(whole), with grads."""
    inp = make_inputs(2, L, 2, 4, 2, 4)
    gy, gf = torch.randn(2, L, 2, 4, dtype=torch.float64), torch.randn(2, 2, 4, 4, dtype=torch.float64)
    y_all, f_all, g_all = run(scan(backend, chunk_size), inp, gy, gf)

    leaves = {k: v.clone().requires_grad_() for k, v in inp.items()}
    seq = ("x", "dt", "B", "C", "z")
    first = {k: (leaves[k][:, :L1] if k in seq else leaves[k]) for k in leaves}
    y1, f1 = ssd_scan(**first, chunk_size=chunk_size, dt_softplus=True, return_final_states=True, backend=backend)
    second = {k: (leaves[k][:, L1:] if k in seq else leaves[k]) for k in leaves}
    second["initial_states"] = f1
    y2, f2 = ssd_scan(**second, chunk_size=chunk_size, dt_softplus=True, return_final_states=True, backend=backend)
    y = torch.cat([y1, y2], dim=1)
    grads = torch.autograd.grad((y * gy).sum() + (f2 * gf).sum(), list(leaves.values()))

    assert_close(y, y_all, 1e-10, "y")
    assert_close(f2, f_all, 1e-10, "final_states")
    for k, g in zip(leaves, grads):
        assert_close(g, g_all[k], 1e-10, f"grad {k}")


@pytest.mark.parametrize("backend", ["torch", "triton"])
@pytest.mark.parametrize("dtype", [torch.float64, torch.bfloat16])
def test_state_update_matches_scan(backend, dtype):
    b, L, h, p, g, n = 2, 9, 4, 6, 2, 5
    inp = make_inputs(b, L, h, p, g, n, dtype, D="h")
    y_scan, f_scan = ssd_scan(**inp, chunk_size=4, dt_softplus=True, return_final_states=True, backend=backend)
    state = inp["initial_states"].clone()
    ys = []
    for t in range(L):
        ys.append(ssd_state_update(
            state, inp["x"][:, t], inp["dt"][:, t], inp["A"], inp["B"][:, t], inp["C"][:, t],
            D=inp["D"], z=inp["z"][:, t], dt_bias=inp["dt_bias"], dt_softplus=True, backend=backend))
        assert ys[-1].dtype == dtype and state.dtype == f_scan.dtype
    tol = TOL[dtype] if dtype == torch.float64 else 1e-2
    assert_close(torch.stack(ys, dim=1), y_scan, tol, "y")
    assert_close(state, f_scan, 1e-5 if dtype != torch.float64 else tol, "state (in place)")


@pytest.mark.parametrize("backend", ["torch", "triton"])
def test_agrees_with_selective_scan(backend):
    """SSD with a scalar A per head is Mamba-1's selective scan with A, dt shared over the
    head's P channels: u = x as (B, H*P, L), delta = dt repeated over P, A repeated to (H*P, N)."""
    from rlts.kernels.selective import selective_scan

    b, L, h, p, g, n = 2, 33, 4, 3, 2, 4
    inp = make_inputs(b, L, h, p, g, n, torch.float32, init=False)
    leaves = {k: v.clone().requires_grad_() for k, v in inp.items() if v is not None}
    x, dt, A, B, C, D, z, dt_bias = (leaves[k] for k in ("x", "dt", "A", "B", "C", "D", "z", "dt_bias"))

    y_ssd, f_ssd = ssd_scan(x, dt, A, B, C, 16, D=D, z=z, dt_bias=dt_bias, dt_softplus=True,
                            return_final_states=True, backend=backend)
    y_sel, last = selective_scan(
        x.permute(0, 2, 3, 1).reshape(b, h * p, L),                          # u (B, H*P, L)
        dt.permute(0, 2, 1)[:, :, None, :].expand(b, h, p, L).reshape(b, h * p, L),
        A[:, None, None].expand(h, p, n).reshape(h * p, n),
        B.permute(0, 2, 3, 1), C.permute(0, 2, 3, 1),                        # (B, G, N, L)
        D=D.reshape(h * p), z=z.permute(0, 2, 3, 1).reshape(b, h * p, L),
        delta_bias=dt_bias[:, None].expand(h, p).reshape(h * p), delta_softplus=True,
        return_last_state=True)
    y_sel = y_sel.reshape(b, h, p, L).permute(0, 3, 1, 2)
    assert_close(y_ssd, y_sel, 1e-4, "y")
    assert_close(f_ssd, last.reshape(b, h, p, n), 1e-4, "final states")

    gy = torch.randn_like(y_ssd)
    g_ssd = torch.autograd.grad((y_ssd * gy).sum(), list(leaves.values()))
    g_sel = torch.autograd.grad((y_sel * gy).sum(), list(leaves.values()))
    for k, ga, gb in zip(leaves, g_ssd, g_sel):
        assert_close(ga, gb, 1e-4, f"grad {k}")


# ------------------------------------------------------------------------------------------
# input checks
# ------------------------------------------------------------------------------------------


def _scan_cases():
    x = torch.randn(2, 10, 4, 3)
    return {
        "x rank": (dict(x=x[0]), r"`x`.*\(B, L, H, P\)"),
        "x not a tensor": (dict(x=x.tolist()), r"`x`.*torch.Tensor"),
        "x empty L": (dict(x=x[:, :0]), r"`x`.*at least one"),
        "dt shape": (dict(dt=torch.randn(2, 10, 3)), r"`dt`.*\(B, L, H\)"),
        "dt dtype": (dict(dt=torch.randn(2, 10, 4, dtype=torch.float64)), r"`dt`.*dtype"),
        "dt integer": (dict(dt=torch.ones(2, 10, 4, dtype=torch.long)), r"`dt`.*floating"),
        "dt device": (dict(dt=torch.randn(2, 10, 4, device="meta")), r"`dt`.*device"),
        "A shape": (dict(A=torch.randn(4, 1)), r"`A`.*\(H,\)"),
        "A device": (dict(A=torch.randn(4, device="meta")), r"`A`.*device"),
        "B length": (dict(B=torch.randn(2, 9, 2, 5)), r"`B`.*\(B, L, G, N\)"),
        "B groups": (dict(B=torch.randn(2, 10, 3, 5), C=torch.randn(2, 10, 3, 5)), r"`B`.*G dividing H"),
        "C state size": (dict(C=torch.randn(2, 10, 2, 6)), r"`C`.*\(B, L, G, N\)"),
        "C dtype": (dict(C=torch.randn(2, 10, 2, 5, dtype=torch.float16)), r"`C`.*dtype"),
        "chunk zero": (dict(chunk_size=0), r"`chunk_size`.*positive int"),
        "chunk negative": (dict(chunk_size=-16), r"`chunk_size`"),
        "chunk float": (dict(chunk_size=16.0), r"`chunk_size`"),
        "chunk bool": (dict(chunk_size=True), r"`chunk_size`"),
        "D shape": (dict(D=torch.randn(4, 2)), r"`D`.*\(H, P\) or \(H,\)"),
        "D rank": (dict(D=torch.randn(4, 3, 1)), r"`D`.*\(H, P\) or \(H,\)"),
        "z shape": (dict(z=torch.randn(2, 10, 4, 2)), r"`z`.*\(B, L, H, P\)"),
        "dt_bias shape": (dict(dt_bias=torch.randn(3)), r"`dt_bias`.*\(H,\)"),
        "initial_states shape": (dict(initial_states=torch.randn(2, 4, 3, 4)), r"`initial_states`.*\(B, H, P, N\)"),
        "initial_states type": (dict(initial_states=1.0), r"`initial_states`.*torch.Tensor"),
        "backend": (dict(backend="cuda"), r"`backend`"),
    }


@pytest.mark.parametrize("case", list(_scan_cases()))
def test_scan_bad_input(case):
    change, match = _scan_cases()[case]
    args = dict(x=torch.randn(2, 10, 4, 3), dt=torch.rand(2, 10, 4), A=-torch.rand(4),
                B=torch.randn(2, 10, 2, 5), C=torch.randn(2, 10, 2, 5), chunk_size=4)
    ssd_scan(**args)  # the unchanged arguments are fine
    with pytest.raises(ValueError, match=match):
        ssd_scan(**{**args, **change})


@pytest.mark.parametrize("change,match", [
    (dict(state=torch.randn(2, 4, 3)), r"`state`.*\(B, H, P, N\)"),
    (dict(state=torch.randn(2, 4, 3, 6)), r"`state`.*\(B, H, P, N\)"),
    (dict(x=torch.randn(2, 4)), r"`x`.*\(B, H, P\)"),
    (dict(dt=torch.randn(2, 10, 4)), r"`dt`.*\(B, H\)"),
    (dict(B=torch.randn(2, 3, 5), C=torch.randn(2, 3, 5)), r"`B`.*G dividing H"),
    (dict(C=torch.randn(2, 2, 4)), r"`C`.*\(B, G, N\)"),
    (dict(A=torch.randn(3)), r"`A`.*\(H,\)"),
    (dict(z=torch.randn(2, 4, 2)), r"`z`.*\(B, H, P\)"),
    (dict(B=torch.randn(2, 2, 5, dtype=torch.float64)), r"`B`.*dtype"),
    (dict(state=torch.randn(2, 4, 3, 5, device="meta")), r"`state`.*device"),
])
def test_state_update_bad_input(change, match):
    args = dict(state=torch.zeros(2, 4, 3, 5), x=torch.randn(2, 4, 3), dt=torch.rand(2, 4),
                A=-torch.rand(4), B=torch.randn(2, 2, 5), C=torch.randn(2, 2, 5))
    ssd_state_update(**args)
    with pytest.raises(ValueError, match=match):
        ssd_state_update(**{**args, **change})
