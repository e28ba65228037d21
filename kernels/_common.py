"""Shared plumbing for the scan kernels: input checks and backend dispatch.

Every public op validates its arguments here first, so that bad input stops with a
`ValueError` naming the argument and the shape it expected, never with an error from
deep inside Triton or an einsum.
"""
from __future__ import annotations

import os
from typing import Optional, Sequence, Union

import torch

Dim = Union[int, None]  # None: any size

BACKENDS = ("auto", "torch", "triton")


def fail(op: str, msg: str) -> None:
    raise ValueError(f"{op}: {msg}")


def check_tensor(
    op: str,
    name: str,
    x: object,
    shape: Sequence[Dim],
    names: str,
    *,
    floating: bool = True,
) -> torch.Tensor:
    """Check that `x` is a tensor of rank len(shape) whose sizes match `shape`.

    `names` spells the expected layout for the message, e.g. "(B, L, D)".
    Entries of `shape` that are None accept any size.
    """
    if not isinstance(x, torch.Tensor):
        fail(op, f"`{name}` must be a torch.Tensor of shape {names}, got {type(x).__name__}")
    if x.dim() != len(shape):
        fail(op, f"`{name}` must have shape {names} (rank {len(shape)}), got shape {tuple(x.shape)}")
    want = tuple("*" if s is None else s for s in shape)
    for got, exp in zip(x.shape, shape):
        if exp is not None and got != exp:
            fail(op, f"`{name}` must have shape {names} = {want}, got {tuple(x.shape)}")
    if floating and not x.is_floating_point():
        fail(op, f"`{name}` must be a floating-point tensor, got dtype {x.dtype}")
    return x


def check_same(op: str, tensors: dict, *, dtype: bool = True) -> None:
    """All given (non-None) tensors share one device (and dtype, if asked)."""
    items = [(k, v) for k, v in tensors.items() if v is not None]
    if not items:
        return
    k0, v0 = items[0]
    for k, v in items[1:]:
        if v.device != v0.device:
            fail(op, f"`{k}` is on {v.device} but `{k0}` is on {v0.device}; put all inputs on one device")
        if dtype and v.dtype != v0.dtype:
            fail(op, f"`{k}` has dtype {v.dtype} but `{k0}` has dtype {v0.dtype}; use one dtype")


def compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """Accumulation dtype of every scan: float64 stays float64; fp32, bf16 and fp16 run in fp32."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def triton_available() -> bool:
    try:
        import triton  # noqa: F401
    except Exception:  # pragma: no cover - depends on platform
        return False
    return True


def interpret_mode() -> bool:
    """True when TRITON_INTERPRET=1, i.e. Triton kernels may run on CPU tensors."""
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def check_backend(op: str, backend: Optional[str]) -> str:
    """`backend` is None or one of BACKENDS; returns it with None read as "auto"."""
    if backend not in (None,) + BACKENDS:
        fail(op, f"`backend` must be one of {BACKENDS}, got {backend!r}")
    return backend or "auto"


def use_triton(op: str, x: torch.Tensor, backend: Optional[str]) -> bool:
    """Pick the implementation: CUDA tensors use Triton, CPU tensors the PyTorch path.

    backend="triton" forces the Triton kernel (on CPU tensors this needs TRITON_INTERPRET=1,
    which is how the tests run it); backend="torch" forces the PyTorch path.
    """
    backend = check_backend(op, backend)
    if backend == "torch":
        return False
    if backend == "triton":
        if not triton_available():
            fail(op, "backend='triton' was asked for but triton is not installed")
        if not x.is_cuda and not interpret_mode():
            fail(op, "backend='triton' on CPU tensors needs TRITON_INTERPRET=1 set before import")
        return True
    return x.is_cuda and triton_available()
