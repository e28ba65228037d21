"""Benchmark of the scan kernels (linear_scan, softmax_scan, selective_scan, ssd_scan).

    python scripts/bench_scan.py [--preset small|full] [--ops linear,softmax,selective,ssd]
                                 [--threads N] [--device auto|cpu|cuda] [--out FILE.md]

CPU (PyTorch path of each op), timed side by side in one run, forward and forward+backward:
  * loop:     the step-by-step recurrence, over `tensor.unbind(time)` and `torch.stack`;
  * Blelloch: a work-efficient parallel scan (up-sweep / down-sweep) over the op's
              associative operator, written here in PyTorch; backward of both by autograd;
  * copy:     the memory bound, `dst.copy_(src)` moving as many bytes as the op must read and
              write (inputs + outputs once; forward+backward: 3 x inputs + 2 x outputs).
  Targets: never slower than the loop, >= 2x faster than it from L = 1024 on, within 3x of
  the copy. Then softmax_scan against causal scaled_dot_product_attention: time, peak memory.
GPU (Triton kernels, when CUDA is there): achieved bandwidth against the device's peak.

Times are medians (see scripts/_bench.py); a * marks a single timed run (a slow baseline).
"""
from __future__ import annotations

import argparse
import importlib.util
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F

HERE = Path(__file__).resolve().parent
if str(HERE) not in sys.path:
    sys.path.insert(0, str(HERE))
if importlib.util.find_spec("kernels") is None:  # not installed: run from the checkout
    sys.path.insert(0, str(HERE.parent))

from _bench import (  # noqa: E402
    Table, Timing, copy_time, fmt_bytes, fmt_ms, machine_info, measure, peak_cpu_bytes,
    peak_cuda_bytes, verdict,
)

Tensors = Tuple[torch.Tensor, ...]


# =========================================================================== associative operators
class LinearOp:
    """Elements (a, b) of the recurrence h_t = a_t * h_{t-1} + b_t; a may broadcast against b.
    (a1, b1) then (a2, b2) composes to (a1 a2, a2 b1 + b2); the identity is (1, 0)."""

    @staticmethod
    def combine(x: Tensors, y: Tensors) -> Tensors:
        (a1, b1), (a2, b2) = x, y
        return a1 * a2, torch.addcmul(b2, a2, b1)

    @staticmethod
    def identity(like: Tensors) -> Tensors:
        return torch.ones_like(like[0]), torch.zeros_like(like[1])


class SoftmaxOp:
    """Elements (m, u, w) of a running softmax: max score m (...), denominator u = sum e^(s-m)
    (...) and numerator w = sum e^(s-m) v (..., E). A leaf is (s_t, 1, v_t); the identity has
    m = the dtype's lowest finite value (not -inf, whose differences would be NaN), u = w = 0."""

    @staticmethod
    def combine(x: Tensors, y: Tensors) -> Tensors:
        (m1, u1, w1), (m2, u2, w2) = x, y
        m = torch.maximum(m1, m2)
        c1, c2 = torch.exp(m1 - m), torch.exp(m2 - m)
        u = torch.addcmul(u1 * c1, u2, c2)
        w = torch.addcmul(w1 * c1.unsqueeze(-1), w2, c2.unsqueeze(-1))
        return m, u, w

    @staticmethod
    def identity(like: Tensors) -> Tensors:
        m, u, w = like
        return torch.full_like(m, torch.finfo(m.dtype).min), torch.zeros_like(u), torch.zeros_like(w)


# =========================================================================== Blelloch scan
def _pairs(elems: Tensors, dim: int) -> Tuple[Tensors, Tensors]:
    """Split every tensor into its even and odd positions along dim (the length is even)."""
    split = [t.unflatten(dim, (-1, 2)) for t in elems]
    return tuple(t.select(dim + 1, 0) for t in split), tuple(t.select(dim + 1, 1) for t in split)


def _interleave(even: Tensors, odd: Tensors, dim: int) -> Tensors:
    """Inverse of `_pairs`: even[0], odd[0], even[1], odd[1], ... along dim."""
    return tuple(torch.stack([e, o], dim + 1).flatten(dim, dim + 1) for e, o in zip(even, odd))


def _pad(op, elems: Tensors, count: int, dim: int) -> Tensors:
    """Append `count` identity elements along dim."""
    if count == 0:
        return elems
    ident = op.identity(tuple(t.narrow(dim, 0, 1) for t in elems))
    grow = lambda t: t.expand(*t.shape[:dim], count, *t.shape[dim + 1:])  # noqa: E731
    return tuple(torch.cat([t, grow(i)], dim) for t, i in zip(elems, ident))


def blelloch_scan(op, elems: Tensors, dim: int) -> Tensors:
    """Inclusive scan of `elems` along `dim` under op.combine (associative, earlier element
    first), by Blelloch's work-efficient algorithm, written without in-place updates so that
    autograd can differentiate it.

    The length is padded with identities to a power of two n. Up-sweep: level k+1 holds the
    combination of each pair of level k (the sums of blocks of 2^(k+1) elements), n - 1
    combines in all. Down-sweep: from the root, whose exclusive prefix is the identity, a left
    child inherits its parent's exclusive prefix and a right child gets parent (+) left sum;
    n - 1 combines again. The inclusive scan is the exclusive one shifted by one, with the total
    at the end. Every level is one batch of vectorised torch ops: O(log n) sequential steps.
    """
    length = elems[0].shape[dim]
    size = 1 << max(0, length - 1).bit_length()
    tree = [_pad(op, tuple(elems), size - length, dim)]
    while tree[-1][0].shape[dim] > 1:  # up-sweep
        tree.append(op.combine(*_pairs(tree[-1], dim)))
    root = tree[-1]
    excl = op.identity(root)
    for level in reversed(tree[:-1]):  # down-sweep
        left, _ = _pairs(level, dim)
        excl = _interleave(excl, op.combine(excl, left), dim)
    return tuple(torch.cat([e, r], dim).narrow(dim, 1, length) for e, r in zip(excl, root))


# =========================================================================== step-by-step loops
def linear_loop(a: torch.Tensor, b: torch.Tensor, dim: int) -> torch.Tensor:
    """h_t = a_t * h_{t-1} + b_t (h_{-1} = 0) along dim, one fused addcmul per step."""
    h = torch.zeros_like(b.select(dim, 0))
    a_steps = a.unbind(dim)
    hs = []
    for t, b_t in enumerate(b.unbind(dim)):
        h = torch.addcmul(b_t, a_steps[t], h)
        hs.append(h)
    return torch.stack(hs, dim)


def softmax_loop(s: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """o_t = sum_{i<=t} e^{s_i} v_i / sum_{i<=t} e^{s_i} for s (B, H, L), v (B, H, L, E), step by
    step with a running max (the online softmax); the division is done once at the end."""
    s_steps, v_steps = s.unbind(2), v.unbind(2)
    m, u, w = s_steps[0], torch.ones_like(s_steps[0]), v_steps[0]
    us, ws = [u], [w]
    for s_t, v_t in zip(s_steps[1:], v_steps[1:]):
        m_new = torch.maximum(m, s_t)
        c, p = torch.exp(m - m_new), torch.exp(s_t - m_new)
        u = torch.addcmul(p, u, c)
        w = torch.addcmul(p.unsqueeze(-1) * v_t, w, c.unsqueeze(-1))
        m = m_new
        us.append(u)
        ws.append(w)
    return torch.stack(ws, 2) / torch.stack(us, 2).unsqueeze(-1)


def softmax_blelloch(s: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """softmax_scan by `blelloch_scan` over (m, u, w) leaves (s_t, 1, v_t)."""
    _, u, w = blelloch_scan(SoftmaxOp, (s, torch.ones_like(s), v), dim=2)
    return w / u.unsqueeze(-1)


# =========================================================================== selective / SSD
def selective_pairs(u, delta, A, B, delta_bias) -> Tensors:
    """(a, b) of the expanded selective-scan state, each (b, d, L, N):
    a = exp(delta A), b = delta u B with delta = softplus(delta + delta_bias)."""
    delta = F.softplus(delta + delta_bias.unsqueeze(-1))  # (b, d, L)
    dA = torch.exp(delta.unsqueeze(-1) * A.unsqueeze(1))  # (b, d, L, N)
    dBu = (delta * u).unsqueeze(-1) * B.transpose(1, 2).unsqueeze(1)  # (b, d, L, N)
    return dA, dBu


def selective_readout(h, u, C, D, z) -> torch.Tensor:
    """out = (sum_n h C + D u) * silu(z), h (b, d, L, N) -> (b, d, L)."""
    y = torch.einsum("bdln,bnl->bdl", h, C)
    return (y + D.unsqueeze(-1) * u) * F.silu(z)


def selective_baseline(scan: Callable, u, delta, A, B, C, D, z, delta_bias) -> torch.Tensor:
    """selective_scan (B, C of shape (b, N, L), softplus on) with `scan(a, b, dim)` over the
    expanded state."""
    dA, dBu = selective_pairs(u, delta, A, B, delta_bias)
    return selective_readout(scan(dA, dBu, 2), u, C, D, z)


def ssd_pairs(x, dt, A, B, dt_bias) -> Tensors:
    """(a, b) of the SSD state: a = exp(dt A) (b, L, h, 1, 1), b = dt x (x) B (b, L, h, p, n),
    with dt = softplus(dt + dt_bias); head i reads B group i // (h / g)."""
    h, g = x.shape[2], B.shape[2]
    dt = F.softplus(dt + dt_bias)  # (b, L, h)
    dA = torch.exp(dt * A)[..., None, None]  # (b, L, h, 1, 1)
    Bh = B.repeat_interleave(h // g, dim=2)  # (b, L, h, n)
    dBx = (dt.unsqueeze(-1) * x).unsqueeze(-1) * Bh.unsqueeze(-2)  # (b, L, h, p, n)
    return dA, dBx


def ssd_readout(states, x, C, D) -> torch.Tensor:
    """y = states . C + D x, states (b, L, h, p, n) -> (b, L, h, p)."""
    Ch = C.repeat_interleave(x.shape[2] // C.shape[2], dim=2)  # (b, L, h, n)
    return torch.einsum("blhpn,blhn->blhp", states, Ch) + D.unsqueeze(-1) * x


def ssd_baseline(scan: Callable, x, dt, A, B, C, D, dt_bias) -> torch.Tensor:
    """ssd_scan (D (h,), softplus on) with `scan(a, b, dim)` over the expanded state."""
    dA, dBx = ssd_pairs(x, dt, A, B, dt_bias)
    return ssd_readout(scan(dA, dBx, 1), x, C, D)


def linear_blelloch(a: torch.Tensor, b: torch.Tensor, dim: int) -> torch.Tensor:
    """h of the linear recurrence by `blelloch_scan` over (a, b) pairs."""
    return blelloch_scan(LinearOp, (a, b), dim)[1]


# =========================================================================== the ops
def _kernel(name: str) -> Callable:
    import rlts.kernels

    return getattr(rlts.kernels, name)


@dataclass
class ScanOp:
    """One op to benchmark: how to make inputs of length L and three ways to compute it."""

    key: str  # name in --ops
    name: str  # public function in kernels
    shape: str  # CPU sizes, printed
    gpu_shape: str  # GPU sizes (make(..., big=True)), printed
    make: Callable[..., Dict[str, torch.Tensor]]  # make(L, device, dtype, big) -> inputs
    kernel: Callable[..., torch.Tensor]  # f(**inputs) through kernels
    loop: Callable[..., torch.Tensor]
    blelloch: Callable[..., torch.Tensor]


def _rand(*shape, device, dtype):
    return torch.randn(*shape, device=device, dtype=dtype)


def make_linear(L, device="cpu", dtype=torch.float32, big=False):
    """Inputs of length L (big: the GPU sizes): a in (0.5, 1) (sigmoid), b normal, (B, L, D)."""
    Bn, D = (8, 1024) if big else (1, 64)
    return {"a": torch.sigmoid(_rand(Bn, L, D, device=device, dtype=dtype) + 2),
            "b": _rand(Bn, L, D, device=device, dtype=dtype)}


def make_softmax(L, device="cpu", dtype=torch.float32, big=False):
    """Inputs of length L (big: the GPU sizes): scores s (B, H, L) and values v (B, H, L, E), normal."""
    Bn, H, E = (8, 16, 64) if big else (1, 8, 64)
    return {"s": _rand(Bn, H, L, device=device, dtype=dtype),
            "v": _rand(Bn, H, L, E, device=device, dtype=dtype)}


def make_selective(L, device="cpu", dtype=torch.float32, big=False):
    """Inputs of length L (big: the GPU sizes): u, delta (b, d, L), A (d, N), B, C (b, N, L),
    D (d,), z (b, d, L), delta_bias (d,)."""
    b, d, N = (8, 1024, 16) if big else (1, 64, 16)
    kw = dict(device=device, dtype=dtype)
    A = -torch.arange(1, N + 1, **kw).repeat(d, 1)  # (d, N), Mamba's S4D-real init
    return {"u": _rand(b, d, L, **kw), "delta": _rand(b, d, L, **kw) * 0.5 - 2.0, "A": A,
            "B": _rand(b, N, L, **kw), "C": _rand(b, N, L, **kw), "D": _rand(d, **kw),
            "z": _rand(b, d, L, **kw), "delta_bias": _rand(d, **kw) * 0.1}


def make_ssd(L, device="cpu", dtype=torch.float32, big=False):
    """Inputs of length L (big: the GPU sizes): x (b, L, h, p), dt (b, L, h), A (h,) < 0,
    B, C (b, L, g, n), D (h,), dt_bias (h,)."""
    b, h, p, g, n = (8, 16, 64, 1, 64) if big else (1, 1, 64, 1, 16)
    kw = dict(device=device, dtype=dtype)
    return {"x": _rand(b, L, h, p, **kw), "dt": _rand(b, L, h, **kw) * 0.5 - 2.0,
            "A": -torch.rand(h, **kw) - 0.5, "B": _rand(b, L, g, n, **kw), "C": _rand(b, L, g, n, **kw),
            "D": _rand(h, **kw), "dt_bias": _rand(h, **kw) * 0.1}


SSD_CHUNK = {"cpu": 64, "cuda": 256}

OPS: Dict[str, ScanOp] = {
    "linear": ScanOp(
        "linear", "linear_scan", "B1 D64", "B8 D1024", make_linear,
        kernel=lambda a, b: _kernel("linear_scan")(a, b),
        loop=lambda a, b: linear_loop(a, b, 1),
        blelloch=lambda a, b: linear_blelloch(a, b, 1)),
    "softmax": ScanOp(
        "softmax", "softmax_scan", "B1 H8 E64", "B8 H16 E64", make_softmax,
        kernel=lambda s, v: _kernel("softmax_scan")(s, v),
        loop=softmax_loop, blelloch=softmax_blelloch),
    "selective": ScanOp(
        "selective", "selective_scan",
        "b1 d64 N16, with D, z, delta_bias, softplus", "b8 d1024 N16", make_selective,
        kernel=lambda u, delta, A, B, C, D, z, delta_bias: _kernel("selective_scan")(
            u, delta, A, B, C, D=D, z=z, delta_bias=delta_bias, delta_softplus=True),
        loop=lambda **kw: selective_baseline(linear_loop, **kw),
        blelloch=lambda **kw: selective_baseline(linear_blelloch, **kw)),
    "ssd": ScanOp(
        "ssd", "ssd_scan",
        "b1 h1 p64 g1 n16, chunk 64, with D, dt_bias, softplus", "b8 h16 p64 g1 n64, chunk 256",
        make_ssd,
        kernel=lambda x, dt, A, B, C, D, dt_bias: _kernel("ssd_scan")(
            x, dt, A, B, C, SSD_CHUNK[x.device.type], D=D, dt_bias=dt_bias, dt_softplus=True),
        loop=lambda **kw: ssd_baseline(linear_loop, **kw),
        blelloch=lambda **kw: ssd_baseline(linear_blelloch, **kw)),
}


# =========================================================================== CPU tables
@dataclass
class Settings:
    """How long to measure: `budget` seconds per timing, a single run above `once_above`."""

    lengths: Sequence[int]
    sdpa_lengths: Sequence[int]
    budget: float
    once_above: float
    min_repeats: int

    def measure(self, fn, device="cpu") -> Timing:
        return measure(fn, device, budget=self.budget, once_above=self.once_above,
                       min_repeats=self.min_repeats)


PRESETS = {
    "small": Settings([64, 1024], [64, 1024], budget=0.1, once_above=0.3, min_repeats=2),
    "full": Settings([64, 1024, 16384], [1024, 4096, 16384], budget=0.4, once_above=0.6, min_repeats=3),
}


def traffic(inputs: Dict[str, torch.Tensor], out: torch.Tensor, backward: bool) -> int:
    """Bytes the op must move at least: read every input and write the output once; with the
    backward also read inputs and output gradient again and write the input gradients."""
    n_in = sum(t.nbytes for t in inputs.values())
    return 3 * n_in + 2 * out.nbytes if backward else n_in + out.nbytes


def timed_call(f: Callable, inputs: Dict[str, torch.Tensor], backward: bool) -> Callable[[], object]:
    """A no-argument function running f forward (no_grad), or forward and backward (autograd
    gradients of every input for a fixed random output gradient)."""
    if not backward:
        def fwd():
            with torch.no_grad():
                return f(**inputs)
        return fwd
    leaves = {k: t.detach().requires_grad_() for k, t in inputs.items()}
    with torch.no_grad():
        grad_out = torch.randn_like(f(**inputs))

    def fwd_bwd():
        return torch.autograd.grad(f(**leaves), list(leaves.values()), grad_out)
    return fwd_bwd


def warm_up(ops: Sequence[ScanOp], longest: int) -> None:
    """Run every method of every op once, forward and backward, at two short lengths (up to
    100, or `longest` if shorter), so that one-off costs (the autograd engine's start, lazy
    imports: close to a second for the first backward of a process) stay out of the timings."""
    for op in ops:
        for L in sorted({min(8, longest), min(100, longest)}):
            inputs = op.make(L)
            for method in ("kernel", "loop", "blelloch"):
                for backward in (False, True):
                    timed_call(getattr(op, method), inputs, backward)()


def check_op(op: ScanOp, length: int = 37) -> str:
    """Max relative difference of kernel and Blelloch against the loop, float64, length L."""
    inputs = op.make(length, dtype=torch.float64)
    with torch.no_grad():
        ref = op.loop(**inputs)
        err = lambda y: ((y - ref).abs().max() / ref.abs().max()).item()  # noqa: E731
        e_k, e_b = err(op.kernel(**inputs)), err(op.blelloch(**inputs))
    flag = "" if max(e_k, e_b) < 1e-8 else "  MISMATCH: the comparison is not like for like"
    return (f"check (float64, L={length}): max rel. diff. to the loop: kernel {e_k:.1e}, "
            f"Blelloch {e_b:.1e}{flag}")


def _speedup(slow: Timing, fast: Timing) -> float:
    return slow.seconds / fast.seconds


def bench_cpu_op(op: ScanOp, cfg: Settings) -> Table:
    """One table: kernel vs loop vs Blelloch vs copy, for each length, fwd and fwd+bwd."""
    table = Table(
        f"{op.name} (CPU), {op.shape}",
        ["L", "mode", "kernel ms", "loop ms", "Blelloch ms", "copy ms", "bytes",
         "loop/kernel", "Blelloch/kernel", "kernel/copy"])
    table.notes.append(check_op(op))
    for L in cfg.lengths:
        inputs = op.make(L)
        with torch.no_grad():
            out = op.kernel(**inputs)
        for backward in (False, True):
            t = {k: cfg.measure(timed_call(getattr(op, k), inputs, backward))
                 for k in ("kernel", "loop", "blelloch")}
            nbytes = traffic(inputs, out, backward)
            copy = copy_time(nbytes, budget=cfg.budget, min_repeats=cfg.min_repeats)
            need = 2.0 if L >= 1024 else 1.0
            vs_loop, vs_copy = _speedup(t["loop"], t["kernel"]), _speedup(t["kernel"], copy)
            table.add(L, "fwd+bwd" if backward else "fwd", fmt_ms(t["kernel"]), fmt_ms(t["loop"]),
                      fmt_ms(t["blelloch"]), fmt_ms(copy), fmt_bytes(nbytes),
                      f"{vs_loop:.2f}x {verdict(vs_loop >= need)} (>={need:g}x)",
                      f"{_speedup(t['blelloch'], t['kernel']):.2f}x",
                      f"{vs_copy:.2f}x {verdict(vs_copy <= 3)} (<=3x)")
    table.notes.append("loop/kernel and Blelloch/kernel: speed-up of the kernel; kernel/copy: "
                       "times the memory bound. * = one timed run (over the time limit).")
    if op.key == "selective":
        table.notes.append("Reference figures for this shape (L16k, fwd, 2 threads): loop 204 ms, "
                           "a public Blelloch pscan 103 ms.")
    return table


def sdpa_inputs(L: int) -> Tuple[Dict[str, torch.Tensor], Dict[str, torch.Tensor]]:
    """softmax_scan inputs s (1, 8, L), v (1, 8, L, 64) and SDPA's random q, k, v (1, 8, L, 64)."""
    scan = make_softmax(L)
    attn = {k: torch.randn(1, 8, L, 64) for k in ("query", "key", "value")}
    return scan, attn


def bench_sdpa(cfg: Settings) -> Table:
    """softmax_scan against causal scaled_dot_product_attention, forward (inference)."""
    table = Table("softmax_scan vs causal scaled_dot_product_attention (CPU, forward), B1 H8 E64",
                  ["L", "scan ms", "SDPA ms", "SDPA/scan", "target", "scan peak", "SDPA peak",
                   "scan mem growth", "SDPA mem growth"])
    scan_fn, prev = _kernel("softmax_scan"), None
    for L in cfg.sdpa_lengths:
        scan_in, attn_in = sdpa_inputs(L)
        run_scan = lambda: scan_fn(**scan_in)  # noqa: E731
        run_sdpa = lambda: F.scaled_dot_product_attention(**attn_in, is_causal=True)  # noqa: E731
        with torch.no_grad():
            t_scan, t_sdpa = cfg.measure(run_scan), cfg.measure(run_sdpa)
            mem = (peak_cpu_bytes(run_scan), peak_cpu_bytes(run_sdpa))
        speed = _speedup(t_sdpa, t_scan)
        growth = ["-", "-"]
        if prev is not None:
            ratio = L / prev[0]
            growth = [f"{m / pm:.2f} for {ratio:g}x L {verdict(m <= 1.25 * ratio * pm)}"
                      for m, pm in zip(mem, prev[1])]
        table.add(L, fmt_ms(t_scan), fmt_ms(t_sdpa), f"{speed:.2f}x", _sdpa_target(L, speed),
                  fmt_bytes(mem[0]), fmt_bytes(mem[1]), *growth)
        prev = (L, mem)
    table.notes += [
        "peak = most bytes live in torch's CPU allocator during one call (torch.profiler memory "
        "events), output included, inputs not; mem growth = peak(L) / peak(previous L), PASS "
        "when at most 1.25 x the growth of L (linear in L).",
        "softmax_scan gets scores s (1, 8, L) and values (1, 8, L, 64); SDPA random q, k, v "
        "(1, 8, L, 64), is_causal=True.",
    ]
    return table


def _sdpa_target(L: int, speed: float) -> str:
    """softmax_scan must beat SDPA from L = 1024 on, by 10x at L >= 16384."""
    if L >= 16384:
        return f"{verdict(speed >= 10)} (>=10x)"
    if L >= 1024:
        return f"{verdict(speed > 1)} (>1x)"
    return "-"


# =========================================================================== GPU
# Peak DRAM bandwidth, bytes/s, by a substring of torch.cuda.get_device_name (first match wins).
PEAK_BANDWIDTH = [
    ("GH200", 4.0e12), ("H200", 4.8e12), ("H100 NVL", 3.9e12), ("H100 PCIe", 2.0e12),
    ("H100", 3.35e12), ("H800", 3.35e12), ("A100-SXM4-80GB", 2.039e12), ("A100 80GB PCIe", 1.935e12),
    ("A100", 1.555e12), ("L40", 0.864e12), ("L4", 0.3e12), ("A10G", 0.6e12), ("RTX 4090", 1.008e12),
    ("RTX 3090", 0.936e12), ("V100", 0.9e12), ("T4", 0.32e12),
]

GPU_LENGTHS = {"small": [16384], "full": [4096, 16384, 65536]}


def gpu_peak_bandwidth(device) -> Tuple[float, str]:
    """(bytes/s, where it came from): the table above, else a measured device-to-device copy."""
    name = torch.cuda.get_device_name(device)
    for key, bw in PEAK_BANDWIDTH:
        if key in name:
            return bw, f"spec sheet for {key}"
    nbytes = 2 * 2**30
    t = copy_time(nbytes, device)
    return nbytes / t.seconds, "measured copy (device not in the table)"


def bench_gpu(ops: Sequence[ScanOp], preset: str, device) -> Table:
    """Achieved bandwidth of each Triton kernel: bytes read + written / time, as % of peak."""
    peak, source = gpu_peak_bandwidth(device)
    copy_bw = (2 * 2**30) / copy_time(2 * 2**30, device).seconds
    table = Table(f"Triton kernels ({torch.cuda.get_device_name(device)}), fp32",
                  ["op", "sizes", "L", "mode", "ms", "bytes", "GB/s", "% of peak", "target", "peak mem"])
    for op in ops:
        for L in GPU_LENGTHS[preset]:
            inputs = op.make(L, device=device, big=True)
            with torch.no_grad():
                out = op.kernel(**inputs)
            for backward in (False, True):
                fn = timed_call(op.kernel, inputs, backward)
                t = measure(fn, device, budget=0.5, warmup=3)
                nbytes = traffic(inputs, out, backward)
                frac = nbytes / t.seconds / peak
                table.add(op.name, op.gpu_shape, L, "fwd+bwd" if backward else "fwd", fmt_ms(t),
                          fmt_bytes(nbytes), f"{nbytes / t.seconds / 1e9:.0f}", f"{100 * frac:.0f}%",
                          _gpu_target(op.key, L, backward, frac), fmt_bytes(peak_cuda_bytes(fn, device)))
            del inputs, out
            torch.cuda.empty_cache()
    table.notes += [f"peak {peak / 1e9:.0f} GB/s ({source}); measured device copy {copy_bw / 1e9:.0f} GB/s.",
                    "bytes: inputs + output once (fwd+bwd: 3 x inputs + 2 x output)."]
    return table


def _gpu_target(key: str, L: int, backward: bool, frac: float) -> str:
    """linear/softmax: >= 70% of peak at L >= 16k; selective: time <= 1.5x one pass over its bytes."""
    if backward or L < 16384:
        return "-"
    if key in ("linear", "softmax"):
        return f"{verdict(frac >= 0.7)} (>=70%)"
    if key == "selective":
        return f"{1 / frac:.2f}x of one pass {verdict(1 / frac <= 1.5)} (<=1.5x)"
    return "-"


# =========================================================================== main
def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", choices=sorted(PRESETS), default="full")
    p.add_argument("--ops", default=",".join(OPS), help="comma-separated subset of " + ",".join(OPS))
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto",
                   help="cpu: CPU tables only; cuda: GPU table only; auto: CPU, and GPU if present")
    p.add_argument("--out", type=Path, default=None, help="also write the tables as Markdown here")
    p.add_argument("--lengths", default=None, help="override the preset's L list, e.g. 64,1024")
    p.add_argument("--sdpa-lengths", default=None, help="override the SDPA L list ('' to skip)")
    p.add_argument("--budget", type=float, default=None,
                   help="seconds per timing (default: the preset's); one run above 3x it")
    args = p.parse_args(argv)
    args.ops = [o.strip() for o in args.ops.split(",") if o.strip()]
    unknown = set(args.ops) - set(OPS)
    if unknown:
        p.error(f"unknown op(s) {sorted(unknown)}; choose from {list(OPS)}")
    return args


def settings(args: argparse.Namespace) -> Settings:
    """The preset, with --lengths / --sdpa-lengths / --budget applied."""
    cfg = PRESETS[args.preset]
    ints = lambda s: [int(x) for x in s.split(",") if x.strip()]  # noqa: E731
    return Settings(ints(args.lengths) if args.lengths is not None else cfg.lengths,
                    ints(args.sdpa_lengths) if args.sdpa_lengths is not None else cfg.sdpa_lengths,
                    args.budget if args.budget is not None else cfg.budget,
                    cfg.once_above if args.budget is None else 3 * args.budget,
                    cfg.min_repeats if args.budget is None else 1)


def main(argv: Optional[Sequence[str]] = None) -> List[Table]:
    """Run the benchmark, print the tables (and write them as Markdown with --out); returns them."""
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    cfg = settings(args)
    use_cuda = args.device == "cuda" or (args.device == "auto" and torch.cuda.is_available())
    if args.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: CUDA is not available on this machine")
    header = machine_info("cuda" if use_cuda else "cpu")
    header.append(f"preset {args.preset}: L = {list(cfg.lengths)}, SDPA L = {list(cfg.sdpa_lengths)}, "
                  f"~{cfg.budget:g} s per timing, one run above {cfg.once_above:g} s")
    print("\n".join(header), "\n", flush=True)
    ops = [OPS[k] for k in args.ops]
    tables: List[Table] = []
    if args.device in ("auto", "cpu"):
        warm_up(ops, max(cfg.lengths, default=100))
        for op in ops:
            tables.append(_emit(bench_cpu_op(op, cfg)))
        if "softmax" in args.ops and cfg.sdpa_lengths:
            tables.append(_emit(bench_sdpa(cfg)))
    if use_cuda:
        tables.append(_emit(bench_gpu(ops, args.preset, torch.device("cuda"))))
    if args.out:
        args.out.write_text("\n".join(["```"] + header + ["```", ""] + [t.markdown() for t in tables]))
        print(f"wrote {args.out}")
    return tables


def _emit(table: Table) -> Table:
    print(table, "\n", flush=True)
    return table


if __name__ == "__main__":
    main()
