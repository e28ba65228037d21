"""Every scan accepts non-contiguous inputs and non-contiguous upstream gradients (as they
arrive through transposes in the layers), and gives the same results as with contiguous ones."""
import pytest
import torch

from rlts.kernels import linear_scan, selective_scan, softmax_scan, ssd_scan

F64 = torch.float64


def _noncontig(t):
    """The same values in a transposed memory layout."""
    return t.transpose(0, -1).contiguous().transpose(0, -1)


def _inputs(op):
    g = torch.Generator().manual_seed(0)
    r = lambda *s: torch.randn(*s, generator=g, dtype=F64)  # noqa: E731
    if op == "linear":
        return (torch.rand(2, 9, 3, generator=g, dtype=F64), r(2, 9, 3)), {}
    if op == "softmax":
        return (r(2, 3, 9), r(2, 3, 9, 4)), {}
    if op == "selective":
        return (r(2, 4, 9), r(2, 4, 9).abs(), -torch.rand(4, 3, generator=g, dtype=F64), r(2, 3, 9), r(2, 3, 9)), {}
    return (r(2, 9, 2, 4), r(2, 9, 2).abs(), -torch.rand(2, generator=g, dtype=F64), r(2, 9, 1, 3), r(2, 9, 1, 3)), \
        {"chunk_size": 4}


OPS = {"linear": linear_scan, "softmax": softmax_scan, "selective": selective_scan, "ssd": ssd_scan}


@pytest.mark.parametrize("backend", ["torch", "triton"])
@pytest.mark.parametrize("op", list(OPS))
def test_noncontiguous_inputs_and_grads(op, backend):
    args, kw = _inputs(op)
    fn = OPS[op]

    def run(make):
        xs = [make(a).requires_grad_() for a in args]
        out = fn(*xs, **kw, backend=backend)
        gout = make(torch.linspace(-1, 1, out.numel(), dtype=F64).view(out.shape))
        assert make is not _noncontig or not gout.is_contiguous()
        out.backward(gout)
        return out.detach(), [x.grad for x in xs]

    out_c, grads_c = run(lambda t: t.clone())
    out_n, grads_n = run(_noncontig)
    torch.testing.assert_close(out_n, out_c, rtol=1e-12, atol=1e-12)
    for gn, gc in zip(grads_n, grads_c):
        torch.testing.assert_close(gn, gc, rtol=1e-10, atol=1e-12)
