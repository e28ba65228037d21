"""The scan kernels compile for real GPUs (sm_80, sm_86, sm_90) and fit each one's limits.

Compile only, with Triton's bundled ptxas: no GPU needed (rlts.kernels.compile_check). A
compile error, or shared memory / registers above what a target can launch, fails. Register
spills are reported (printed, and summed up in a warning) but fail only with
RLTS_FAIL_ON_SPILLS=1, for the fp32, bf16 and fp16 kernels (bf16 autocast included; not fp64).

The full table of cases takes minutes to compile on two cores with an empty Triton cache, so
this checks the representative cases (one per op and dtype, at the long length; about a
quarter of the compiles); RLTS_GPU_COMPILE_ALL=1 checks every case. Compiles are cached
by Triton (TRITON_CACHE_DIR): a second run takes seconds.
"""
import os
import warnings

import pytest

from _scripts import load_script

cc = pytest.importorskip("rlts.kernels.compile_check")
pytest.importorskip("triton")

_missing = [k for k, v in cc.tools().items() if v is None]
needs_tools = pytest.mark.skipif(bool(_missing), reason=f"{' and '.join(_missing)} not found: Triton's NVIDIA "
                                                        "tools are needed to compile for GPUs")


@pytest.fixture(scope="module")
def rows():
    cases = cc.CASES if os.environ.get("RLTS_GPU_COMPILE_ALL") == "1" else cc.representative_cases()
    return cc.compile_rows(cases, targets=list(cc.TARGETS))


@needs_tools
def test_every_specialisation_compiles_within_the_targets_limits(rows):
    assert {r.target for r in rows} == set(cc.TARGETS)
    assert {r.op for r in rows} == {"linear", "softmax", "selective", "ssd"}
    spills = [r for r in rows if r.spill]
    for r in spills:
        print(f"spill: {r.target} {r.case} {r.direction} {r.kernel} {r.dtype} {r.shape}: {r.regs} regs, "
              f"{r.spill} B per thread")
    if spills:
        worst = max(spills, key=lambda r: r.spill)
        warnings.warn(f"{len(spills)} of {len(rows)} compiled kernels spill registers; most: {worst.spill} B per "
                      f"thread, {worst.kernel} {worst.dtype} {worst.shape} on {worst.target}")
    failed = [f"{r.target} {r.case} {r.direction} {r.kernel} {r.dtype} {r.shape}: {r.verdict}"
              f"{' ' + r.error if r.error else ''} (smem {r.shared} B, limit {r.smem_limit} B, "
              f"{r.regs} regs x {r.num_warps} warps)" for r in rows if r.failed]
    assert not failed, "kernels that cannot run on a target:\n" + "\n".join(failed)
    for r in rows:  # a row that compiled has its numbers
        assert r.regs and r.regs <= 255 and r.shared is not None and r.num_warps in (1, 2, 4, 8, 16)
    if os.environ.get("RLTS_FAIL_ON_SPILLS") == "1":
        bad = [f"{r.target} {r.kernel} {r.dtype} {r.shape}: {r.spill} B" for r in spills
               if r.dtype in ("fp32", "bf16", "fp16", "bf16-amp")]
        assert not bad, "register spills (RLTS_FAIL_ON_SPILLS=1):\n" + "\n".join(bad)


@needs_tools
def test_compiled_kernels_keep_the_launch_settings(rows):
    # one row per (kernel launch of an op call, target), each checked against its own target's limit
    cases = cc.CASES if os.environ.get("RLTS_GPU_COMPILE_ALL") == "1" else cc.representative_cases()
    by_name = {c.name: c for c in cases}
    n_launches = sum(len(cc.launches(by_name[u.case], u.dtype, u.direction, u.length)) for u in cc.units(cases))
    assert len(rows) == n_launches * len(cc.TARGETS)
    assert all(r.smem_limit == cc.TARGETS[r.target].smem_limit for r in rows)
    # the launch code's num_warps reaches the compiled kernel (the SSD backward's chunk kernel uses 8 warps)
    ssd = [r for r in rows if r.kernel == "_ssd_bwd_chunk_kernel" and r.case == "mamba2 drama"]
    assert ssd and all(r.num_warps == 8 for r in ssd)


def test_launches_follow_the_ops_launch_code():
    """The recorded launches carry the block sizes the host code picks from the shapes."""
    drama = cc.case_named("mamba2 drama")
    (fwd,) = cc.launches(drama, "bf16", "forward", 4096)
    assert fwd.name == "_ssd_fwd_kernel"
    kw = fwd.kwargs
    assert (kw["BLOCK_Q"], kw["BLOCK_P"], kw["BLOCK_N"], kw["num_warps"]) == (64, 32, 16, 8)
    (fwd,) = cc.launches(cc.case_named("mamba2 d64"), "fp32", "forward", 4096)
    assert (fwd.kwargs["BLOCK_Q"], fwd.kwargs["BLOCK_N"], fwd.kwargs["num_warps"]) == (32, 64, 4)  # N > 32: Q <= 32
    (bwd,) = cc.launches(cc.case_named("mamba drama"), "fp16", "backward", 37)
    assert bwd.name == "_selective_scan_bwd_kernel"
    assert (bwd.kwargs["BLOCK_L"], bwd.kwargs["BLOCK_D"], bwd.kwargs["BLOCK_N"]) == (16, 16, 16)
    assert bwd.kwargs["HAS_INIT"] and bwd.kwargs["HAS_DLAST"] and bwd.kwargs["SOFTPLUS"]
    (step,) = cc.launches(cc.case_named("mamba d64"), "bf16", "step")
    assert step.name == "_state_update_kernel" and step.kwargs["BLOCK_P"] == 1
    (amp,) = cc.launches(cc.case_named("mamba d64"), "bf16-amp", "forward", 37)  # A fp32, u bf16
    assert amp.args[2].dtype == cc.torch.float32 and amp.args[0].dtype == cc.torch.bfloat16
    (lin,) = cc.launches(cc.case_named("linear d64"), "fp32", "backward", 37)
    kw = lin.kwargs
    assert kw["A_SHIFT"] == 1 and kw["COMPUTE_DA"] and (kw["BLOCK_L"], kw["BLOCK_D"]) == (64, 32)
    state, chunk = cc.launches(drama, "fp32", "backward", 4096)  # the SSD backward: two kernels
    assert (state.name, chunk.name) == ("_ssd_bwd_state_kernel", "_ssd_bwd_chunk_kernel")
    assert (state.kwargs["BLOCK_P"], state.kwargs["num_warps"], state.kwargs["num_stages"]) == (32, 4, 2)
    assert (chunk.kwargs["BLOCK_Q"], chunk.kwargs["BLOCK_P"], chunk.kwargs["num_warps"]) == (64, 16, 8)
    for case in cc.CASES:  # every (case, direction) launches one kernel, the SSD backward two
        for d in case.directions:
            n = 2 if (case.op, d) == ("ssd", "backward") else 1
            assert len(cc.launches(case, case.dtypes[0], d, None if d == "step" else case.lengths[0])) == n, (case, d)
    assert len(cc.units()) == sum(len(c.dtypes) * sum(1 if d == "step" else len(c.lengths) for d in c.directions)
                                  for c in cc.CASES)
    with pytest.raises(ValueError, match="no 'step' direction"):
        cc.launches(cc.case_named("aaren d64"), "fp32", "step")


def test_verdicts():
    base = dict(op="ssd", case="c", direction="forward", kernel="k", dtype="bf16", shape="s", target="sm_86",
                num_warps=8, regs=128, stack=0, local=0, shared=1000, smem_limit=cc.TARGETS["sm_86"].smem_limit)
    assert cc.Row(**base).verdict == "ok" and not cc.Row(**base).failed
    spill = cc.Row(**{**base, "stack": 64})
    assert spill.spill == 64 and spill.verdict == "spills" and not spill.failed
    smem = cc.Row(**{**base, "shared": 101_377})
    assert smem.failed and smem.verdict.startswith("FAIL smem")
    assert not cc.Row(**{**base, "shared": 101_376}).failed
    regs = cc.Row(**{**base, "regs": 255, "num_warps": 16})  # 255 x 512 threads > 65536
    assert regs.failed and "regs" in regs.verdict
    err = cc.Row(**{**base, "regs": None, "shared": None, "error": "PTXASError: boom"})
    assert err.failed and err.verdict == "FAIL compile"


@needs_tools
def test_script_writes_the_table(tmp_path, capsys):
    script = load_script("gpu_compile")
    out = tmp_path / "gpu.md"
    assert script.main(["--cases", "mamba2 rl", "--dtypes", "bf16", "--lengths", "37", "--targets", "sm_86",
                        "--jobs", "1", "--out", str(out)]) == 0
    md = out.read_text()
    assert "| ssd | mamba2 rl | forward | ssd_fwd_kernel | bf16 | B16 L37 H8 P16 N16 Q256 |" in md
    assert "| ssd | mamba2 rl | backward | ssd_bwd_chunk_kernel | bf16 | B16 L37 H8 P16 N16 Q256 |" in md
    assert "| ssd | mamba2 rl | step | ssd_step_kernel | bf16 |" in md
    assert "4 specialisations x 1 targets" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        script.main(["--targets", "sm_75"])
