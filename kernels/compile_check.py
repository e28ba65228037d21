"""Compile the scan kernels' Triton specialisations for real GPUs, on a machine without one.

    rows = compile_rows()                         every case of CASES for every target of TARGETS
    rows = compile_rows(cases=[...], targets=["sm_86"], dtypes=["bf16"], lengths=[4096], jobs=2)
    launches(case, "bf16", "backward", 4096)      the kernel launches of one op call, not compiled

On the CPU the kernels only ever run in Triton's interpreter, which knows nothing of registers
or shared memory. Triton's wheel ships `ptxas` and `cuobjdump`, so each specialisation can be
built into a real cubin for an NVIDIA target and measured: registers per thread, spill stack
and local memory per thread (cuobjdump --dump-resource-usage) and shared memory per block
(Triton's metadata). A row fails when the compile fails, when the shared memory exceeds the
target's per-block limit, or when registers x threads exceed the 64K registers of a block:
each of these stops the kernel from launching on that GPU. Spills only cost speed.

Where the specialisations come from: a case (one row of CASES) names an op, the sizes a
layer of rlts uses and the layout of the tensors that layer passes. `launches` builds those
tensors on the "meta" device (shapes, strides, dtypes and offsets, no data) and calls the
op's own host code in kernels/_*_triton.py, with each kernel swapped for a recorder in a
private copy of the module. Block sizes, num_warps and constexprs are therefore chosen by the
launch code itself, and Triton's own binder turns the recorded arguments into the signature,
the integer and pointer specialisations (value 1, divisibility by 16) and the options a launch
on a GPU would compile.

Compiles use Triton's on-disk cache (TRITON_CACHE_DIR, default ~/.triton/cache), so a
second run only reads cubins back. A process that imported Triton with TRITON_INTERPRET=1
(the test suite) cannot compile: its triton.language helpers are interpreter functions.
Compiles then run in worker processes started without it; `jobs` workers run in parallel.
"""
from __future__ import annotations

import importlib.util
import json
import os
import queue
import re
import subprocess
import sys
import tempfile
import threading
import traceback
from dataclasses import asdict, dataclass
from typing import Callable, Dict, Iterable, List, Optional, Sequence, Tuple

import torch

# --------------------------------------------------------------------------- targets
@dataclass(frozen=True)
class Target:
    """An NVIDIA GPU generation: compute capability and the largest shared memory one block may
    use (the opt-in limit, cudaDevAttrMaxSharedMemoryPerBlockOptin)."""

    name: str
    capability: int
    smem_limit: int  # bytes
    regs_per_block: int = 65536
    warp_size: int = 32


TARGETS: Dict[str, Target] = {
    "sm_80": Target("sm_80", 80, 166_912),  # A100: 163 KB
    "sm_86": Target("sm_86", 86, 101_376),  # RTX 30xx, A10, A40: 99 KB
    "sm_90": Target("sm_90", 90, 232_448),  # H100: 227 KB
}

# dtype label -> (activations, parameters). A model cast with .to(dtype) has both in that dtype;
# "bf16-amp" is a float32 model under torch.autocast(dtype=torch.bfloat16): activations in
# bfloat16, parameters (A, D, dt bias) in float32. Recurrent states are float32 (float64 for fp64).
DTYPES = {
    "fp32": (torch.float32, torch.float32),
    "bf16": (torch.bfloat16, torch.bfloat16),
    "fp16": (torch.float16, torch.float16),
    "bf16-amp": (torch.bfloat16, torch.float32),
    "fp64": (torch.float64, torch.float64),
}
DIRECTIONS = ("forward", "backward", "step")

# --------------------------------------------------------------------------- the cases
BATCH = 16  # batch of every case: the batch only sets the grid and, through B * H, one integer


@dataclass(frozen=True)
class Case:
    """One use of an op by the library: its sizes, the dtypes, lengths and directions checked.

    sizes, per op:
      linear:    D channels; shared_decay: a is (B, L, 1) instead of (B, L, D).
      softmax:   H heads of E channels (Aaren: n_heads, head_dim).
      selective: d_inner channels, state size N, dt_rank (Mamba-1, laid out as rlts.nn.mamba does).
      ssd:       H heads of P channels, state size N, chunk_size (Mamba-2, as rlts.nn.mamba2 does).
    "step" (one token, for acting) exists for selective and ssd only: linear_scan_step and
    softmax_scan_step are plain PyTorch. A step does not depend on L.
    """

    name: str
    op: str
    sizes: Dict[str, object]
    used_by: str
    dtypes: Tuple[str, ...] = ("fp32", "bf16", "fp16")
    lengths: Tuple[int, ...] = (37, 4096)
    directions: Tuple[str, ...] = ("forward", "backward")
    representative: bool = False  # the op's case for a short check (see representative_cases)

    def shape(self, length: Optional[int], direction: str = "forward") -> str:
        """Short key of the sizes, e.g. "B16 L4096 H16 P64 N16 Q256"."""
        s = self.sizes
        if self.op == "linear":
            dims = f"D{s['D']}" + (" a(B,L,1)" if s.get("shared_decay") else "")
        elif self.op == "softmax":
            dims = f"H{s['H']} E{s['E']}"
        elif self.op == "selective":
            dims = f"d{s['d_inner']} N{s['N']} r{s['dt_rank']}"
        else:
            dims = f"H{s['H']} P{s['P']} N{s['N']} Q{s['chunk']}"
        time = "step" if direction == "step" else f"L{length}"
        return f"B{BATCH} {time} {dims}"


# The sizes the library runs the kernels at. Drama: WorldModelConfig's defaults (the paper's
# Atari100k model, tasks/configs/atari.yaml); rl.yaml: the world model of `rlts rl`; the heads
# (forecast, events, classify) default to d_model 64; Mamba2 without options has d_state 64 and
# headdim 64 (its chunk_size 256 everywhere: the world model does not set it). Lengths: a short, unaligned one (37)
# and a long one (4096). Every case runs in fp32, bf16 and fp16 (see DTYPES); the Mamba-1
# cases also under bf16 autocast, the only op whose kernels take the parameters as they are
# (ssd_scan converts A, D and dt_bias to fp32 on the host, Aaren casts its scores to v's dtype).
_AMP = ("fp32", "bf16", "fp16", "bf16-amp")
CASES: Tuple[Case, ...] = (
    Case("linear d64", "linear", dict(D=64, shared_decay=False),
         "linear_scan over d_model = 64 channels, one decay per channel (a gated recurrence)",
         representative=True),
    Case("revin c7", "linear", dict(D=21, shared_decay=True),
         "heads/forecast.py running_statistics: 3 sums x the 7 channels of ETTh1, one shared decay, "
         "fp64, no gradient", dtypes=("fp64",), directions=("forward",), representative=True),
    Case("aaren d64", "softmax", dict(H=4, E=16),
         "Aaren defaults (n_heads 4, head_dim d_model / 4) at d_model 64: the forecast and events "
         "heads' default backbone; rl.yaml world model with backbone aaren"),
    Case("aaren drama", "softmax", dict(H=8, E=64),
         "Drama world model with backbone aaren: d_model 512, n_heads 8", representative=True),
    Case("mamba d64", "selective", dict(d_inner=128, N=16, dt_rank=4),
         "Mamba defaults (d_state 16, expand 2, dt_rank d_model / 16) at d_model 64: classify head",
         dtypes=_AMP, directions=DIRECTIONS),
    Case("mamba drama", "selective", dict(d_inner=1024, N=16, dt_rank=32),
         "Drama world model with backbone mamba: d_model 512, d_state 16, expand 2",
         dtypes=_AMP, directions=DIRECTIONS, representative=True),
    Case("mamba2 d64", "ssd", dict(H=2, P=64, N=64, chunk=256),
         "Mamba2 defaults (d_state 64, headdim 64, expand 2, chunk_size 256) at d_model 64",
         directions=DIRECTIONS),
    Case("mamba2 rl", "ssd", dict(H=8, P=16, N=16, chunk=256),
         "rl.yaml world model: mamba2, d_model 64, headdim 16, d_state 16 (also the forecast "
         "head's documented example)", directions=DIRECTIONS),
    Case("mamba2 drama", "ssd", dict(H=16, P=64, N=16, chunk=256),
         "Drama world model: mamba2, d_model 512, expand 2, headdim 64, d_state 16",
         directions=DIRECTIONS, representative=True),
)


def representative_cases(cases: Sequence[Case] = CASES) -> List[Case]:
    """One case per op and dtype (those marked `representative`: the largest sizes, the Drama
    world model's where it uses the op) at its longest length only: about a quarter of the
    compiles of all of CASES."""
    from dataclasses import replace

    return [replace(c, lengths=(max(c.lengths),)) for c in cases if c.representative]


def case_named(name: str, cases: Sequence[Case] = CASES) -> Case:
    for c in cases:
        if c.name == name:
            return c
    raise KeyError(f"no case named {name!r}; cases: {', '.join(c.name for c in cases)}")


@dataclass(frozen=True)
class Unit:
    """One op call: a case at one dtype, length and direction (length None for a step)."""

    case: str
    dtype: str
    length: Optional[int]
    direction: str


def units(cases: Sequence[Case] = CASES, dtypes: Optional[Iterable[str]] = None,
          lengths: Optional[Iterable[int]] = None) -> List[Unit]:
    """Every (case, dtype, length, direction) to compile, in table order. `dtypes` and
    `lengths` filter the cases' own (a case keeps its dtypes and lengths when they are None)."""
    want_dt = None if dtypes is None else set(dtypes)
    want_len = None if lengths is None else set(lengths)
    out = []
    for c in cases:
        for direction in c.directions:
            for dt in c.dtypes:
                if want_dt is not None and dt not in want_dt:
                    continue
                if direction == "step":
                    out.append(Unit(c.name, dt, None, direction))
                    continue
                for L in c.lengths:
                    if want_len is None or L in want_len:
                        out.append(Unit(c.name, dt, L, direction))
    return out


# --------------------------------------------------------------------------- recording launches
# The kernels each module launches (helpers they call, e.g. _affine_combine, stay as they are).
# Every JIT function of a module named *_kernel must be listed (checked when the module loads).
_KERNELS = {
    "_linear_triton": ("_linear_scan_kernel",),
    "_softmax_triton": ("_softmax_scan_fwd_kernel", "_softmax_scan_bwd_kernel"),
    "_selective_triton": ("_selective_scan_fwd_kernel", "_selective_scan_bwd_kernel", "_state_update_kernel"),
    "_ssd_triton": ("_ssd_fwd_kernel", "_ssd_bwd_state_kernel", "_ssd_bwd_chunk_kernel", "_ssd_step_kernel"),
}


@dataclass
class Launch:
    """One recorded kernel launch: the JIT function and the arguments the host code passed."""

    kernel: object  # triton.runtime.jit.JITFunction
    args: tuple
    kwargs: dict

    @property
    def name(self) -> str:
        return self.kernel.fn.__name__


class _Recorder:
    """Stands in for a JIT kernel: `kernel[grid](*args, **kwargs)` appends a Launch."""

    def __init__(self, kernel, log: List[Launch]):
        self.kernel, self.log = kernel, log

    def __getitem__(self, grid):
        return lambda *args, **kwargs: self.log.append(Launch(self.kernel, args, kwargs))


_modules: Dict[str, object] = {}
_log: List[Launch] = []


def _module(name: str):
    """A private copy of rlts.kernels.<name> whose launched kernels are recorders."""
    if name not in _modules:
        from triton.runtime.jit import JITFunction

        spec = importlib.util.find_spec(f"rlts.kernels.{name}")
        mod = importlib.util.module_from_spec(spec)
        # @triton.jit makes interpreter functions under TRITON_INTERPRET=1: not for this copy
        saved = os.environ.get("TRITON_INTERPRET")
        os.environ["TRITON_INTERPRET"] = "0"
        try:
            spec.loader.exec_module(mod)
        finally:
            if saved is None:
                del os.environ["TRITON_INTERPRET"]
            else:
                os.environ["TRITON_INTERPRET"] = saved
        unlisted = sorted(k for k, v in vars(mod).items()
                          if isinstance(v, JITFunction) and k.endswith("_kernel") and k not in _KERNELS[name])
        if unlisted:
            raise RuntimeError(f"rlts.kernels.{name} has kernels that compile_check._KERNELS does not list: "
                               f"{', '.join(unlisted)}")
        for kname in _KERNELS[name]:
            kernel = getattr(mod, kname)
            if not isinstance(kernel, JITFunction):
                raise RuntimeError(f"rlts.kernels.{name}.{kname} is {type(kernel).__name__}, not a JITFunction")
            setattr(mod, kname, _Recorder(kernel, _log))
        _modules[name] = mod
    return _modules[name]


def _record(fn: Callable[[], object]) -> List[Launch]:
    """The launches made while fn() runs."""
    del _log[:]
    fn()
    out = list(_log)
    del _log[:]
    return out


def _meta(*shape, dtype):
    return torch.empty(*shape, device="meta", dtype=dtype)


def _linear(case: Case, dt, pdt, L: int, direction: str) -> List[Launch]:
    """linear_scan as kernels/linear.py's autograd Function calls it: contiguous a, b; no h0;
    the backward gets dh and the materialised grad of the last state (zeros when unused)."""
    tri = _module("_linear_triton")
    B, D = BATCH, case.sizes["D"]
    a = _meta(B, L, 1 if case.sizes.get("shared_decay") else D, dtype=dt)
    b = _meta(B, L, D, dtype=dt)
    if direction == "forward":
        return _record(lambda: tri.linear_scan_fwd_triton(a, b, None, False))
    h, dh, dlast = _meta(B, L, D, dtype=dt), _meta(B, L, D, dtype=dt), _meta(B, D, dtype=dt)
    return _record(lambda: tri.linear_scan_bwd_triton(a, h, None, dh, dlast, False, True))


def _softmax(case: Case, dt, pdt, L: int, direction: str) -> List[Launch]:
    """softmax_scan as rlts.nn.aaren.Aaren.forward calls it for training: no state; scores and
    values made contiguous by softmax_scan; the scan's m, u and the grads of w, u in fp32."""
    tri = _module("_softmax_triton")
    B, H, E = BATCH, case.sizes["H"], case.sizes["E"]
    acc = torch.float64 if dt == torch.float64 else torch.float32
    s, v = _meta(B, H, L, dtype=dt), _meta(B, H, L, E, dtype=dt)
    if direction == "forward":
        return _record(lambda: tri.softmax_scan_fwd_triton(s, v, None, None, None))
    o, do = _meta(B, H, L, E, dtype=dt), _meta(B, H, L, E, dtype=dt)
    m, u = _meta(B, H, L, dtype=acc), _meta(B, H, L, dtype=acc)
    dw, du = _meta(B, H, E, dtype=acc), _meta(B, H, dtype=acc)
    return _record(lambda: tri.softmax_scan_bwd_triton(s, v, o, m, u, do, dw, du))


def _selective(case: Case, dt, pdt, L: Optional[int], direction: str) -> List[Launch]:
    """selective_scan / selective_state_update with the views rlts.nn.mamba.Mamba passes:
    x (B, d_inner, L) from the conv; z, dt, B, C transposed views of the in_proj / dt_proj /
    x_proj outputs (B, L, .); D, dt_bias and A in the parameters' dtype; the initial state
    (always given: init_state) in fp32; the backward's dout a transposed (B, L, d_inner) gradient."""
    tri = _module("_selective_triton")
    Bt, di, N, R = BATCH, case.sizes["d_inner"], case.sizes["N"], case.sizes["dt_rank"]
    cd = torch.float64 if dt == torch.float64 else torch.float32
    A, D, bias = _meta(di, N, dtype=pdt), _meta(di, dtype=pdt), _meta(di, dtype=pdt)
    if direction == "step":  # Mamba.step: (batch, dim, N) state as (batch, dim, 1, N)
        z = _meta(Bt, 2 * di, dtype=dt).chunk(2, dim=-1)[1]
        x, dtv = _meta(Bt, di, dtype=dt), _meta(Bt, di, dtype=dt)
        _, Bv, Cv = _meta(Bt, R + 2 * N, dtype=dt).split([R, N, N], dim=-1)
        state = _meta(Bt, di, N, dtype=cd)
        col = lambda t: t.unsqueeze(-1)  # noqa: E731
        return _record(lambda: tri.selective_state_update(
            state.unsqueeze(2), col(x), col(dtv), A.unsqueeze(1), Bv.unsqueeze(1), Cv.unsqueeze(1),
            col(D), col(z), col(bias), True, cd))
    z = _meta(Bt, L, 2 * di, dtype=dt).chunk(2, dim=-1)[1].transpose(1, 2)
    u = _meta(Bt, di, L, dtype=dt)
    delta = _meta(Bt, L, di, dtype=dt).transpose(1, 2)
    _, Bm, Cm = _meta(Bt, L, R + 2 * N, dtype=dt).split([R, N, N], dim=-1)
    B4, C4 = Bm.transpose(1, 2).unsqueeze(1), Cm.transpose(1, 2).unsqueeze(1)
    init = _meta(Bt, di, N, dtype=cd)
    fwd = lambda: tri.selective_scan_fwd(u, delta, A, B4, C4, D, z, bias, init, True, cd)  # noqa: E731
    if direction == "forward":
        return _record(fwd)
    res = []
    _record(lambda: res.extend(fwd()))
    _, _, states, block_l = res
    dout = _meta(Bt, L, di, dtype=dt).transpose(1, 2)
    dlast = _meta(Bt, di, N, dtype=cd)
    return _record(lambda: tri.selective_scan_bwd(u, delta, A, B4, C4, D, z, bias, True, states, block_l,
                                                  dout, dlast, True, cd))


def _ssd(case: Case, dt, pdt, L: Optional[int], direction: str) -> List[Launch]:
    """ssd_scan / ssd_state_update as rlts.nn.mamba2.Mamba2 calls them: D and dt_bias per head,
    no z (the gate is in the norm), softplus, the initial state (always given) in fp32; the
    backward without a final-state gradient (the layer's state output is not in the loss)."""
    tri = _module("_ssd_triton")
    Bt, H, P, N, Q = BATCH, case.sizes["H"], case.sizes["P"], case.sizes["N"], case.sizes["chunk"]
    cd = torch.float64 if dt == torch.float64 else torch.float32
    A, D, bias = _meta(H, dtype=pdt), _meta(H, dtype=pdt), _meta(H, dtype=pdt)
    if direction == "step":
        state = _meta(Bt, H, P, N, dtype=cd)
        x, dtv = _meta(Bt, H, P, dtype=dt), _meta(Bt, H, dtype=dt)
        Bv, Cv = _meta(Bt, 1, N, dtype=dt), _meta(Bt, 1, N, dtype=dt)
        return _record(lambda: tri.ssd_step(state, x, dtv, A, Bv, Cv, D, None, bias, True))
    x, dtv = _meta(Bt, L, H, P, dtype=dt), _meta(Bt, L, H, dtype=dt)
    Bm, Cm = _meta(Bt, L, 1, N, dtype=dt), _meta(Bt, L, 1, N, dtype=dt)
    init = _meta(Bt, H, P, N, dtype=cd)
    fwd = lambda: tri.ssd_fwd(x, dtv, A, Bm, Cm, Q, D, None, bias, init, True)  # noqa: E731
    if direction == "forward":
        return _record(fwd)
    res = []
    _record(lambda: res.extend(fwd()))
    starts = res[2]
    dout = _meta(Bt, L, H, P, dtype=dt)
    return _record(lambda: tri.ssd_bwd(dout, None, x, dtv, A, Bm, Cm, Q, D, None, bias, init, True, starts))


_BUILDERS = {"linear": _linear, "softmax": _softmax, "selective": _selective, "ssd": _ssd}


def launches(case: Case, dtype: str, direction: str, length: Optional[int] = None) -> List[Launch]:
    """The kernel launches of one op call of `case` (nothing is compiled or run)."""
    if case.op not in _BUILDERS:
        raise ValueError(f"case {case.name!r}: unknown op {case.op!r}; ops: {', '.join(_BUILDERS)}")
    if direction not in case.directions:
        raise ValueError(f"case {case.name!r} has no {direction!r} direction; it has {case.directions}")
    if dtype not in DTYPES:
        raise ValueError(f"unknown dtype {dtype!r}; dtypes: {', '.join(DTYPES)}")
    if direction != "step" and (not isinstance(length, int) or length < 1):
        raise ValueError(f"case {case.name!r}, {direction}: `length` must be an int >= 1, got {length!r}")
    return _BUILDERS[case.op](case, *DTYPES[dtype], length, direction)


# --------------------------------------------------------------------------- compiling
@dataclass
class Row:
    """One kernel specialisation compiled for one target."""

    op: str
    case: str
    direction: str
    kernel: str
    dtype: str
    shape: str
    target: str
    num_warps: int = 0
    regs: Optional[int] = None  # registers per thread
    stack: Optional[int] = None  # spill stack bytes per thread
    local: Optional[int] = None  # local memory bytes per thread
    shared: Optional[int] = None  # shared memory bytes per block (dynamic + static)
    smem_limit: int = 0
    error: Optional[str] = None

    @property
    def spill(self) -> int:
        """Bytes per thread in local memory (spill stack and local arrays); 0 when none."""
        return max(self.stack or 0, self.local or 0)

    @property
    def smem_over(self) -> bool:
        return self.shared is not None and self.shared > self.smem_limit

    @property
    def regs_over(self) -> bool:
        t = TARGETS.get(self.target, Target(self.target, 0, 0))
        return self.regs is not None and self.regs * t.warp_size * self.num_warps > t.regs_per_block

    @property
    def failed(self) -> bool:
        """True when this kernel cannot run on the target: no cubin, or too many resources."""
        return self.error is not None or self.smem_over or self.regs_over

    @property
    def verdict(self) -> str:
        if self.error is not None:
            return "FAIL compile"
        if self.smem_over:
            return f"FAIL smem > {self.smem_limit / 1024:.0f} KB"
        if self.regs_over:
            return "FAIL regs x threads > 64K"
        return "spills" if self.spill else "ok"


def tools() -> Dict[str, Optional[str]]:
    """Paths of the ptxas and cuobjdump Triton uses (TRITON_PTXAS_PATH / TRITON_CUOBJDUMP_PATH or
    the ones bundled with the wheel); None for a tool that is missing or does not run."""
    try:
        from triton import knobs
    except Exception:  # pragma: no cover - triton missing
        return {"ptxas": None, "cuobjdump": None}
    out = {}
    for name in ("ptxas", "cuobjdump"):
        try:
            tool = getattr(knobs.nvidia, name)
        except Exception:
            tool = None
        out[name] = tool.path if tool is not None else None
    return out


_RESOURCE = re.compile(r"Function\s+(\S+):\s*\n\s*REG:(\d+)\s+STACK:(\d+)\s+SHARED:(\d+)\s+LOCAL:(\d+)")


def resource_usage(cubin: bytes, cuobjdump: Optional[str] = None) -> Dict[str, Dict[str, int]]:
    """cuobjdump --dump-resource-usage of a cubin: {function: {REG, STACK, SHARED, LOCAL}}."""
    cuobjdump = cuobjdump or tools()["cuobjdump"]
    if cuobjdump is None:
        raise RuntimeError("cuobjdump not found (set TRITON_CUOBJDUMP_PATH or install Triton's CUDA wheel)")
    with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
        f.write(cubin)
        f.flush()
        res = subprocess.run([cuobjdump, "--dump-resource-usage", f.name], capture_output=True, text=True)
    if res.returncode:
        raise RuntimeError(f"cuobjdump failed ({res.returncode}): {res.stderr.strip()}")
    return {m[1]: dict(REG=int(m[2]), STACK=int(m[3]), SHARED=int(m[4]), LOCAL=int(m[5]))
            for m in _RESOURCE.finditer(res.stdout)}


def compile_launch(launch: Launch, target: Target):
    """Compile one recorded launch for `target` as JITFunction.run would on that GPU; returns
    Triton's CompiledKernel (read from the on-disk cache when it is there)."""
    import triton
    from triton import knobs
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource, make_backend
    from triton.runtime.jit import create_function_from_signature

    kernel = launch.kernel
    gpu = GPUTarget("cuda", target.capability, target.warp_size)
    backend = make_backend(gpu)
    binder = create_function_from_signature(kernel.signature, kernel.params, backend)
    kwargs = dict(launch.kwargs)
    kwargs["debug"] = kwargs.get("debug", kernel.debug) or knobs.runtime.debug
    kwargs["instrumentation_mode"] = knobs.compilation.instrumentation_mode
    bound, specialization, options = binder(*launch.args, **kwargs)
    options, signature, constexprs, attrs = kernel._pack_args(backend, kwargs, bound, specialization, options)
    src = ASTSource(kernel, signature, constexprs, attrs)
    return triton.compile(src, target=gpu, options=options.__dict__)


def _rows_of_unit(unit: Unit, targets: Sequence[str], cases: Dict[str, Case]) -> List[Row]:
    case = cases[unit.case]
    cuobjdump = tools()["cuobjdump"]
    rows = []
    for launch in launches(case, unit.dtype, unit.direction, unit.length):
        for tname in targets:
            t = TARGETS[tname]
            row = Row(case.op, case.name, unit.direction, launch.name, unit.dtype,
                      case.shape(unit.length, unit.direction), tname,
                      num_warps=int(launch.kwargs.get("num_warps", 4)), smem_limit=t.smem_limit)
            try:
                ck = compile_launch(launch, t)
                usage = resource_usage(ck.asm["cubin"], cuobjdump).get(ck.metadata.name)
                if usage is None:
                    raise RuntimeError(f"cuobjdump lists no function {ck.metadata.name}")
                row.num_warps = ck.metadata.num_warps
                row.regs, row.stack, row.local = usage["REG"], usage["STACK"], usage["LOCAL"]
                row.shared = ck.metadata.shared + usage["SHARED"]
            except Exception as e:  # a failed compile is a result, reported in the row
                row.error = f"{type(e).__name__}: {str(e).strip().splitlines()[0] if str(e).strip() else ''}"
            rows.append(row)
    return rows


def can_compile_here() -> bool:
    """True when this process can compile Triton kernels: Triton imported without the interpreter."""
    try:
        import triton.language.standard as std
        from triton.runtime.jit import JITFunction
    except Exception:  # pragma: no cover - triton missing
        return False
    return isinstance(std.sum, JITFunction) and os.environ.get("TRITON_INTERPRET", "0") != "1"


def _serve() -> None:  # pragma: no cover - runs in the worker processes
    """Worker loop: one JSON request per stdin line ({"unit", "targets", "cases"}), one JSON
    reply per line on the original stdout. Anything printed (by Triton or ptxas) goes to stderr."""
    out = os.fdopen(os.dup(1), "w")
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    for line in sys.stdin:
        req = json.loads(line)
        try:
            cases = {c["name"]: Case(**{**c, "dtypes": tuple(c["dtypes"]), "lengths": tuple(c["lengths"]),
                                        "directions": tuple(c["directions"])}) for c in req["cases"]}
            rows = _rows_of_unit(Unit(**req["unit"]), req["targets"], cases)
            reply = {"rows": [asdict(r) for r in rows]}
        except Exception:
            reply = {"error": traceback.format_exc()}
        out.write(json.dumps(reply) + "\n")
        out.flush()


def _worker_env() -> dict:
    env = dict(os.environ)
    env["TRITON_INTERPRET"] = "0"
    return env


def _run_workers(todo: List[Unit], targets: Sequence[str], cases: Sequence[Case], jobs: int,
                 progress: Optional[Callable[[List[Row]], None]]) -> List[List[Row]]:
    """Compile the units in `jobs` worker processes; returns their rows in unit order."""
    results: List[Optional[List[Row]]] = [None] * len(todo)
    pending: "queue.Queue[int]" = queue.Queue()
    for i in range(len(todo)):
        pending.put(i)
    case_json = [asdict(c) for c in cases]
    errors: List[str] = []
    lock = threading.Lock()

    def work():
        with tempfile.TemporaryFile(mode="w+") as err:
            proc = subprocess.Popen([sys.executable, "-c", "from rlts.kernels.compile_check import _serve; _serve()"],
                                    stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=err, text=True,
                                    env=_worker_env())
            try:
                while not errors:
                    try:
                        i = pending.get_nowait()
                    except queue.Empty:
                        break
                    req = {"unit": asdict(todo[i]), "targets": list(targets), "cases": case_json}
                    proc.stdin.write(json.dumps(req) + "\n")
                    proc.stdin.flush()
                    line = proc.stdout.readline()
                    if not line:
                        err.seek(0)
                        raise RuntimeError(f"compile worker exited ({proc.poll()}):\n{err.read()[-4000:]}")
                    reply = json.loads(line)
                    if "error" in reply:
                        raise RuntimeError(f"compile worker failed on {todo[i]}:\n{reply['error']}")
                    rows = [Row(**r) for r in reply["rows"]]
                    results[i] = rows
                    if progress is not None:
                        with lock:
                            progress(rows)
            except Exception as e:
                errors.append(str(e))
            finally:
                proc.stdin.close()
                proc.wait()

    threads = [threading.Thread(target=work, daemon=True) for _ in range(max(1, min(jobs, len(todo))))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise RuntimeError(errors[0])
    return [r for r in results]


def compile_rows(
    cases: Sequence[Case] = CASES,
    targets: Sequence[str] = tuple(TARGETS),
    dtypes: Optional[Iterable[str]] = None,
    lengths: Optional[Iterable[int]] = None,
    jobs: Optional[int] = None,
    progress: Optional[Callable[[List[Row]], None]] = None,
) -> List[Row]:
    """Compile every specialisation the cases launch, for every target; one Row per
    (specialisation, target), in case order. A failed compile is a row with `error` set, not
    an exception; a missing ptxas / cuobjdump raises RuntimeError.

    jobs: worker processes (default: the cores this process may use). With jobs=1 in a process
    that can compile (see `can_compile_here`), everything runs in this process.
    progress: called with the rows of each op call as they complete.
    """
    for t in targets:
        if t not in TARGETS:
            raise ValueError(f"unknown target {t!r}; targets: {', '.join(TARGETS)}")
    missing = [k for k, v in tools().items() if v is None]
    if missing:
        raise RuntimeError(f"{' and '.join(missing)} not found: Triton's NVIDIA tools are needed to compile "
                           "(set TRITON_PTXAS_PATH / TRITON_CUOBJDUMP_PATH)")
    names = [c.name for c in cases]
    if len(set(names)) != len(names):
        raise ValueError(f"case names must be unique, got {names}")
    todo = units(cases, dtypes, lengths)
    if not todo:
        return []
    if jobs is None:
        try:
            jobs = len(os.sched_getaffinity(0))
        except AttributeError:  # pragma: no cover - not Linux
            jobs = os.cpu_count() or 1
    if jobs <= 1 and can_compile_here():
        by_name = {c.name: c for c in cases}
        out = []
        for u in todo:
            rows = _rows_of_unit(u, targets, by_name)
            if progress is not None:
                progress(rows)
            out.extend(rows)
        return out
    return [r for rows in _run_workers(todo, targets, cases, jobs, progress) for r in rows]
