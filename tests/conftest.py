"""Test set-up.

Triton mode, fixed here before any @triton.jit function is imported (Triton reads
TRITON_INTERPRET when a kernel is decorated, so one pytest process runs one mode):

* no CUDA device: TRITON_INTERPRET=1, the Triton kernels run in Triton's interpreter on CPU
  tensors (slowly: the kernel test files run them with backend="triton" on small shapes);
* a CUDA device: the compiled kernels run (tests/test_cuda.py checks them on the GPU against
  the CPU path). Tests that force backend="triton" on CPU tensors need the interpreter and are
  skipped, with that reason;
* RLTS_TRITON_INTERPRET=1 asks for the interpreter even with a CUDA device (tests/test_cuda.py
  is then skipped), RLTS_TRITON_INTERPRET=0 for the compiled kernels.

TRITON_INTERPRET itself is set from this choice (a value already in the environment is replaced).

    RLTS_TRITON_INTERPRET=1 pytest tests/test_ssd_scan.py    # interpreter on a GPU machine
"""
import os

import torch

_ASKED = os.environ.get("RLTS_TRITON_INTERPRET", "").strip()
if _ASKED not in ("", "0", "1"):
    raise RuntimeError(f"RLTS_TRITON_INTERPRET must be 0 or 1, got {_ASKED!r}")
INTERPRET = _ASKED == "1" if _ASKED else not torch.cuda.is_available()
os.environ["TRITON_INTERPRET"] = "1" if INTERPRET else "0"

import pytest  # noqa: E402

torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))

# What Triton raises for CPU tensors when its kernels are compiled: use_triton's refusal of
# backend="triton" without the interpreter, and the CUDA launcher's check of every pointer.
_NEEDS_INTERPRETER = ("needs TRITON_INTERPRET=1", "cannot be accessed from Triton (cpu tensor?)")
_SKIP_REASON = ("Triton kernels on CPU tensors need the interpreter (RLTS_TRITON_INTERPRET=1); "
                "the compiled kernels are checked by tests/test_cuda.py")


def pytest_collection_modifyitems(config, items):
    """With compiled kernels, skip the cases that run Triton on CPU tensors: parametrised
    backend="triton" outside tests/test_cuda.py."""
    if INTERPRET:
        return
    skip = pytest.mark.skip(reason=_SKIP_REASON)
    for item in items:
        params = getattr(getattr(item, "callspec", None), "params", {})
        if params.get("backend") == "triton" and item.path.name != "test_cuda.py":
            item.add_marker(skip)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    """With compiled kernels, a test that forces the Triton kernels on CPU tensors without a
    `backend` parameter (it fails with one of `_NEEDS_INTERPRETER`) is reported as skipped."""
    outcome = yield
    report = outcome.get_result()
    if INTERPRET or call.when != "call" or call.excinfo is None or not report.failed:
        return
    if call.excinfo.errisinstance(ValueError) and any(s in str(call.excinfo.value) for s in _NEEDS_INTERPRETER):
        report.outcome = "skipped"
        report.longrepr = (str(item.path), item.location[1] or 0, f"Skipped: {_SKIP_REASON}")


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
    yield


@pytest.fixture
def one_thread():
    """Tiny models: one intra-op thread is faster than two, and far steadier on a busy machine
    (two threads can make a small fit many times slower there). Use with
    `pytestmark = pytest.mark.usefixtures("one_thread")`."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
