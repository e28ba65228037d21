"""Parallel-scan kernels shared by every model in rlts.

Each op comes as a Triton kernel (GPU, forward and backward), a PyTorch path (CPU), an
`autograd.Function` choosing between them by device, a naive `*_ref` loop (tests only) and a
one-token step function. `kernels` knows nothing of models.

    module              op               step                     used by
    rlts.kernels.linear      linear_scan      linear_scan_step         gated recurrences
    rlts.kernels.softmax     softmax_scan     softmax_scan_step        Aaren
    rlts.kernels.selective   selective_scan   selective_state_update   Mamba-1
    rlts.kernels.ssd         ssd_scan         ssd_state_update         Mamba-2
"""
from rlts.kernels._common import compute_dtype, interpret_mode, triton_available
from rlts.kernels.linear import linear_scan, linear_scan_ref, linear_scan_step
from rlts.kernels.selective import selective_scan, selective_scan_ref, selective_state_update
from rlts.kernels.softmax import softmax_scan, softmax_scan_ref, softmax_scan_step
from rlts.kernels.ssd import ssd_scan, ssd_scan_ref, ssd_state_update

__all__ = [
    "linear_scan", "linear_scan_ref", "linear_scan_step",
    "softmax_scan", "softmax_scan_ref", "softmax_scan_step",
    "selective_scan", "selective_scan_ref", "selective_state_update",
    "ssd_scan", "ssd_scan_ref", "ssd_state_update",
    "compute_dtype", "interpret_mode", "triton_available",
]
