"""Exact comparison of nested checkpoint-like structures in tests."""
import torch


def assert_same(a, b, where: str = "", skip=()) -> None:
    """Bit-for-bit equality of nested dicts / lists / tuples of tensors (same dtype) and plain
    values; dict keys in `skip` (wall-clock times, folders) are not compared."""
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and a.dtype == b.dtype and torch.equal(a, b), where
    elif isinstance(a, dict):
        assert a.keys() == b.keys(), where
        for k in a:
            if k not in skip:
                assert_same(a[k], b[k], f"{where}.{k}", skip)
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            assert_same(x, y, f"{where}[{i}]", skip)
    else:
        assert a == b, where
