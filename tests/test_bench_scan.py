"""scripts/bench_scan.py: its baselines compute the ops exactly, and a tiny run gives sane tables.

The baselines (step loop, Blelloch scan) are what the kernels are measured against, so they are
checked here against direct definitions, on odd and power-of-two lengths, forward and backward.
"""
import math
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))
import bench_scan as bs  # noqa: E402

LENGTHS = [1, 2, 5, 8, 33, 64]
f64 = dict(dtype=torch.float64)


def naive_linear(a, b):
    """h_t = a_t h_{t-1} + b_t by indexing, (B, L, D)."""
    h, out = torch.zeros_like(b[:, 0]), []
    for t in range(b.shape[1]):
        h = a[:, t] * h + b[:, t]
        out.append(h)
    return torch.stack(out, 1)


def direct_softmax_scan(s, v):
    """o_t = softmax(s_{0..t}) . v_{0..t} from the definition, with a causal mask."""
    L = s.shape[-1]
    scores = s.unsqueeze(-2).expand(*s.shape[:-1], L, L)  # (B, H, t, i)
    mask = torch.ones(L, L, dtype=torch.bool).tril()
    w = torch.softmax(scores.masked_fill(~mask, float("-inf")), dim=-1)
    return w @ v


@pytest.mark.parametrize("L", LENGTHS)
@pytest.mark.parametrize("shared_decay", [False, True])
def test_linear_baselines(L, shared_decay):
    a = torch.rand(2, L, 1 if shared_decay else 3, **f64) * 1.5 - 0.5  # negative decays too
    b = torch.randn(2, L, 3, **f64)
    want = naive_linear(a, b)
    torch.testing.assert_close(bs.linear_loop(a, b, 1), want, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(bs.linear_blelloch(a, b, 1), want, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("L", LENGTHS)
def test_softmax_baselines(L):
    s = torch.randn(2, 3, L, **f64) * 30  # large scores: the running max must be right
    v = torch.randn(2, 3, L, 4, **f64)
    want = direct_softmax_scan(s, v)
    torch.testing.assert_close(bs.softmax_loop(s, v), want, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(bs.softmax_blelloch(s, v), want, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("L", [5, 33])
@pytest.mark.parametrize("method", ["loop", "blelloch"])
def test_backward_matches_definition(L, method):
    """Gradients through the baselines (what the fwd+bwd timings run) are the true ones,
    the identity padding of the Blelloch scan (L = 5, 33) included."""
    s = torch.randn(1, 2, L, **f64, requires_grad=True)
    v = torch.randn(1, 2, L, 3, **f64, requires_grad=True)
    g = torch.randn(1, 2, L, 3, **f64)
    got = torch.autograd.grad(getattr(bs.OPS["softmax"], method)(s, v), (s, v), g)
    want = torch.autograd.grad(direct_softmax_scan(s, v), (s, v), g)
    for x, y in zip(got, want):
        torch.testing.assert_close(x, y, rtol=1e-10, atol=1e-10)
    a = torch.rand(2, L, 3, **f64, requires_grad=True)
    b = torch.randn(2, L, 3, **f64, requires_grad=True)
    g = torch.randn(2, L, 3, **f64)
    got = torch.autograd.grad(getattr(bs.OPS["linear"], method)(a, b), (a, b), g)
    want = torch.autograd.grad(naive_linear(a, b), (a, b), g)
    for x, y in zip(got, want):
        torch.testing.assert_close(x, y, rtol=1e-10, atol=1e-10)


def naive_selective(u, delta, A, B, C, D, z, delta_bias):
    """mamba-ssm selective_scan_ref semantics, one step at a time by indexing."""
    delta = torch.nn.functional.softplus(delta + delta_bias[:, None])
    x = torch.zeros(u.shape[0], u.shape[1], A.shape[1], dtype=u.dtype)
    ys = []
    for t in range(u.shape[2]):
        dt = delta[:, :, t, None]  # (b, d, 1)
        x = torch.exp(dt * A) * x + dt * B[:, None, :, t] * u[:, :, t, None]
        ys.append((x * C[:, None, :, t]).sum(-1))
    y = torch.stack(ys, 2) + D[:, None] * u
    return y * torch.nn.functional.silu(z)


def naive_ssd(x, dt, A, B, C, D, dt_bias):
    """mamba_chunk_scan_combined semantics (D per head, dt softplus), by indexing."""
    b, L, h, p = x.shape
    rep = h // B.shape[2]
    dt = torch.nn.functional.softplus(dt + dt_bias)
    state = torch.zeros(b, h, p, B.shape[3], dtype=x.dtype)
    ys = []
    for t in range(L):
        Bt, Ct = B[:, t].repeat_interleave(rep, 1), C[:, t].repeat_interleave(rep, 1)  # (b, h, n)
        decay = torch.exp(dt[:, t] * A)[:, :, None, None]
        state = decay * state + (dt[:, t, :, None] * x[:, t])[..., None] * Bt[:, :, None, :]
        ys.append((state * Ct[:, :, None, :]).sum(-1) + D[:, None] * x[:, t])
    return torch.stack(ys, 1)


@pytest.mark.parametrize("L", [1, 7, 16, 33])
def test_selective_baselines(L):
    inputs = bs.make_selective(L, dtype=torch.float64)
    want = naive_selective(**inputs)
    op = bs.OPS["selective"]
    torch.testing.assert_close(op.loop(**inputs), want, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(op.blelloch(**inputs), want, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("L", [1, 7, 16, 33])
@pytest.mark.parametrize("heads_groups", [(1, 1), (4, 2)])
def test_ssd_baselines(L, heads_groups):
    h, g = heads_groups
    kw = dict(dtype=torch.float64)
    inputs = {"x": torch.randn(2, L, h, 3, **kw), "dt": torch.randn(2, L, h, **kw),
              "A": -torch.rand(h, **kw), "B": torch.randn(2, L, g, 4, **kw),
              "C": torch.randn(2, L, g, 4, **kw), "D": torch.randn(h, **kw), "dt_bias": torch.randn(h, **kw)}
    want = naive_ssd(**inputs)
    op = bs.OPS["ssd"]
    torch.testing.assert_close(op.loop(**inputs), want, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(op.blelloch(**inputs), want, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("key", list(bs.OPS))
def test_baselines_compute_what_the_kernel_computes(key):
    """The benchmark compares like with like: kernel output == loop output (float64)."""
    pytest.importorskip("kernels")
    op = bs.OPS[key]
    inputs = op.make(37, dtype=torch.float64)
    torch.testing.assert_close(op.kernel(**inputs), op.loop(**inputs), rtol=1e-8, atol=1e-8)


def _numbers(table, column_suffixes=(" ms", "/kernel", "/copy", "/scan")):
    """Leading numbers of the cells in columns whose name ends with one of the suffixes."""
    cols = [i for i, c in enumerate(table.columns) if c.endswith(column_suffixes)]
    assert cols, table.columns
    return [float(row[i].split()[0].rstrip("x*")) for row in table.rows for i in cols]


@pytest.mark.parametrize("key", list(bs.OPS))
def test_main_tiny_run(key, tmp_path, capsys):
    pytest.importorskip("kernels")
    out = tmp_path / "bench.md"
    argv = ["--ops", key, "--lengths", "16", "--budget", "0.001", "--device", "cpu", "--out", str(out)]
    argv += ["--sdpa-lengths", "16,32" if key == "softmax" else ""]
    tables = bs.main(argv)
    assert len(tables) == (2 if key == "softmax" else 1)
    assert [r[:2] for r in tables[0].rows] == [["16", "fwd"], ["16", "fwd+bwd"]]
    for table in tables:
        times = _numbers(table, (" ms",))
        ratios = _numbers(table, ("/kernel", "/copy", "/scan"))
        assert times and all(math.isfinite(x) and x > 0 for x in times), table
        # a ratio is printed with 2 decimals, so one slow sample can show as 0.00x
        assert ratios and all(math.isfinite(x) and x >= 0 for x in ratios), table
    assert "MISMATCH" not in str(tables[0])
    printed = capsys.readouterr().out
    assert "torch" in printed and "threads" in printed and bs.OPS[key].name in printed
    assert "|---:|" in out.read_text()


def test_options_are_checked():
    with pytest.raises(SystemExit):
        bs.parse_args(["--ops", "linear,nope"])
    args = bs.parse_args(["--preset", "small", "--lengths", "8,16"])
    cfg = bs.settings(args)
    assert list(cfg.lengths) == [8, 16] and list(cfg.sdpa_lengths) == [64, 1024]
