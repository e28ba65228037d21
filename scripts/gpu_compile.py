"""Compile every Triton kernel specialisation of the scan ops for real GPUs (no GPU needed).

    python scripts/gpu_compile.py [--targets sm_80,sm_86,sm_90] [--cases NAME,...] [--dtypes fp32,bf16,fp16]
                                  [--lengths 37,4096] [--jobs N] [--fail-on-spills] [--out FILE.md]

For each case of rlts.kernels.compile_check.CASES (the sizes the library's layers, heads and
the Drama world model run the ops at), each dtype, length and direction (forward, backward,
step), the kernels the op launches are compiled with Triton's bundled ptxas for each target.
One row per kernel specialisation: registers per thread, spill bytes per thread (local
memory: spill stack), shared memory per block, each as sm_80 / sm_86 / sm_90, and a verdict:
FAIL when a compile fails or a target could not launch the kernel (shared memory above its
per-block limit, or registers x threads above 64K), "spills" when it runs with spills, else ok.
Exit code 1 on any FAIL (and on any spill with --fail-on-spills).

Compiled kernels are cached by Triton (TRITON_CACHE_DIR, default ~/.triton/cache): a second run
takes seconds.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _bench import Table, machine_info  # noqa: E402

from rlts.kernels import compile_check as cc  # noqa: E402


def _split(text: str | None):
    return None if text is None else [t.strip() for t in text.split(",") if t.strip()]


def table(rows, targets) -> Table:
    """One line per kernel specialisation; per-target values joined by "/" in target order."""
    groups = {}
    for r in rows:
        groups.setdefault((r.case, r.direction, r.kernel, r.dtype, r.shape), {})[r.target] = r
    joined = "/".join(t.removeprefix("sm_") for t in targets)
    t = Table(f"Triton kernels compiled for {', '.join(targets)} (compile only)",
              ["op", "case", "dir", "kernel", "dtype", "shape", "warps", f"regs {joined}",
               f"spill B {joined}", f"smem KB {joined}", "verdict"])
    n_fail = n_spill = 0
    for per in groups.values():
        rs = [per[tg] for tg in targets]
        r0 = rs[0]
        cell = lambda f: "/".join("-" if r.error else f(r) for r in rs)  # noqa: E731
        fails = [f"{r.verdict} ({r.target})" for r in rs if r.failed]
        spills = [r.target for r in rs if not r.failed and r.spill]
        if fails:
            verdict = "; ".join(fails)
            n_fail += 1
        elif spills:
            verdict = "spills" if len(spills) == len(rs) else f"spills ({', '.join(spills)})"
            n_spill += 1
        else:
            verdict = "ok"
        t.add(r0.op, r0.case, r0.direction, r0.kernel.strip("_"), r0.dtype, r0.shape,
              "/".join(sorted({str(r.num_warps) for r in rs})), cell(lambda r: str(r.regs)),
              cell(lambda r: str(r.spill)), cell(lambda r: f"{r.shared / 1024:.1f}"), verdict)
    limits = ", ".join(f"{tg} {cc.TARGETS[tg].smem_limit / 1024:.0f} KB" for tg in targets)
    t.notes.append(f"{len(groups)} specialisations x {len(targets)} targets: {n_fail} FAIL, "
                   f"{n_spill} with spills, {len(groups) - n_fail - n_spill} ok. "
                   f"Shared memory limits per block: {limits}.")
    for r in rows:
        if r.error:
            t.notes.append(f"compile error, {r.case} {r.direction} {r.kernel} {r.dtype} {r.shape} {r.target}: "
                           f"{r.error}")
    return t


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--targets", default=",".join(cc.TARGETS), help=f"of {', '.join(cc.TARGETS)}")
    p.add_argument("--cases", default=None, help="case names (default all): " + ", ".join(c.name for c in cc.CASES))
    p.add_argument("--dtypes", default=None, help="keep only these dtypes (fp32, bf16, fp16, fp64)")
    p.add_argument("--lengths", default=None, help="keep only these sequence lengths (default: 37,4096)")
    p.add_argument("--jobs", type=int, default=None, help="compile processes (default: the available cores)")
    p.add_argument("--fail-on-spills", action="store_true", help="exit 1 when any kernel spills")
    p.add_argument("--out", type=Path, default=None, help="also write the table as Markdown here")
    args = p.parse_args(argv)

    targets = _split(args.targets)
    bad = [t for t in targets if t not in cc.TARGETS]
    if bad:
        p.error(f"--targets: unknown {', '.join(bad)}; choose from {', '.join(cc.TARGETS)}")
    try:
        cases = cc.CASES if args.cases is None else [cc.case_named(n) for n in _split(args.cases)]
    except KeyError as e:
        p.error(f"--cases: {e.args[0]}")
    dtypes = _split(args.dtypes)
    if dtypes and set(dtypes) - set(cc.DTYPES):
        unknown = ", ".join(sorted(set(dtypes) - set(cc.DTYPES)))
        p.error(f"--dtypes: unknown {unknown}; choose from {', '.join(cc.DTYPES)}")
    try:
        lengths = None if args.lengths is None else [int(x) for x in _split(args.lengths)]
    except ValueError:
        p.error(f"--lengths: integers separated by commas, got {args.lengths!r}")
    tools = cc.tools()
    if None in tools.values():
        print(f"cannot compile: {', '.join(k for k, v in tools.items() if v is None)} not found "
              "(Triton's NVIDIA tools; set TRITON_PTXAS_PATH / TRITON_CUOBJDUMP_PATH)", file=sys.stderr)
        return 2

    header = machine_info("cpu") + [f"compile only (no GPU): ptxas {tools['ptxas']}"]
    print("\n".join(header))
    todo = cc.units(cases, dtypes, lengths)
    print(f"{len(todo)} op calls x {len(targets)} targets ...", flush=True)
    t0 = time.perf_counter()
    done = []

    def progress(unit_rows):  # one dot per op call compiled
        done.append(unit_rows)
        print("." if len(done) % 50 else f". {len(done)}/{len(todo)}", end="" if len(done) % 50 else "\n",
              flush=True)

    rows = cc.compile_rows(cases, targets, dtypes, lengths, jobs=args.jobs, progress=progress)
    seconds = time.perf_counter() - t0
    print()
    tab = table(rows, targets)
    tab.notes.append(f"Wall time {seconds:.0f} s (compiles come from Triton's cache when present).")
    print(f"\n{tab}")
    if args.out:
        args.out.write_text("\n".join(["```", *header, "```", "", tab.markdown()]))
        print(f"wrote {args.out}")
    failed = any(r.failed for r in rows)
    spilled = any(r.spill for r in rows)
    return 1 if failed or (args.fail_on_spills and spilled) else 0


if __name__ == "__main__":
    sys.exit(main())
