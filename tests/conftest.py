"""Test set-up. TRITON_INTERPRET must be set before any @triton.jit function is imported,
so that the Triton kernels run on the CPU (slowly: test them on small shapes)."""
import os

os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402
import torch  # noqa: E402

torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
    yield
