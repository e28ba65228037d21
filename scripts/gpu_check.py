"""One-shot check of rlts on a GPU machine: the CUDA tests, the benchmarks on CUDA and a short
Pong run, written to one folder as a Markdown report.

    python3 scripts/gpu_check.py --out gpu-report [--wheels WHEELS_DIR] [--pong-steps 5000]
    python3 scripts/gpu_check.py --dry-run --out /tmp/check        # tiny sizes on the CPU (CI)

It runs from the source tree, on a Python that need not have rlts installed: it builds
`<out>/src/rlts`, a tree of links to rlts/, kernels/, world_models/ and tasks/ laid out as the
installed package (`rlts.kernels`, `rlts.world_models`, `rlts.tasks`), and puts it first on
PYTHONPATH. Packages the machine lacks come as wheels downloaded beforehand into a folder
(`--wheels`) and are installed with `pip install --no-index --no-deps --target <out>/site`;
for a Python 3.12 machine with PyTorch, Triton, NumPy, OpenCV, TensorBoard, matplotlib,
pandas, PyYAML, tqdm and pytest, Pong needs three:

    pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
        --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 -d wheels \
        gymnasium==1.4.0 farama-notifications==0.0.6 ale-py==0.12.1

Nothing here imports sktime, MuJoCo or stable-baselines3.

Steps, each a subprocess with its own time limit, its output kept in `<out>/<step>.log`:
  env         versions, the GPU, its memory
  tests       pytest on the CUDA tests and the scan kernels' tests (compiled kernels on a GPU)
  scan        scripts/bench_scan.py: GB/s of each op and its share of the copy bandwidth
  layers      scripts/bench_layers.py: streaming step and training throughput per backbone
  drama       scripts/bench_drama.py: env steps/s and the projected time of a 100k-step run
  pong        `rlts atari --game Pong` for --pong-steps steps; its world-model loss must fall
              (the mean of the last fifth of the logged wm/loss below that of the first fifth;
              a dry run only reads them)
  pixels      scripts/wm_pixels.py: the full-size world model alone on 20k recorded Pong frames
              for 2 minutes; its losses at the start and the end
report.md lists every step: its command, exit code, wall time and result, with the benchmark
tables. The exit code is 0 when every step passed. `--dry-run` runs the same steps on tiny sizes
(no wheels, the CPU if there is no GPU): a check that the script still works, not a result.
"""
from __future__ import annotations

import argparse
import os
import shlex
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import List, Optional

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = {"kernels": "kernels", "world_models": "world_models", "tasks": "tasks"}
"""Folders of the checkout installed inside rlts (as pyproject.toml's package-dir maps them)."""


@dataclass
class Step:
    name: str
    title: str
    argv: List[str]
    limit_s: int
    tables: List[Path] = field(default_factory=list)
    """Markdown files the step writes, copied into the report."""
    code: Optional[int] = None
    seconds: float = 0.0
    verdict: str = ""


def source_tree(out: Path) -> Path:
    """<out>/src holding `rlts` as installed: links to rlts/*, and kernels/, world_models/,
    tasks/ as rlts.kernels, rlts.world_models, rlts.tasks. Returns <out>/src."""
    src = out / "src"
    pkg = src / "rlts"
    pkg.mkdir(parents=True, exist_ok=True)
    for entry in (ROOT / "rlts").iterdir():
        if entry.name != "__pycache__":
            _link(pkg / entry.name, entry)
    for name, folder in PACKAGE.items():
        _link(pkg / name, ROOT / folder)
    return src


def _link(at: Path, to: Path) -> None:
    if at.is_symlink() or at.exists():
        at.unlink()
    at.symlink_to(to)


def install_wheels(wheels: Path, out: Path) -> Path:
    """pip install --no-index --no-deps every wheel of `wheels` into <out>/site."""
    site = out / "site"
    found = sorted(wheels.glob("*.whl"))
    if not found:
        raise SystemExit(f"--wheels {wheels}: no .whl file there")
    cmd = [sys.executable, "-m", "pip", "install", "-q", "--no-index", "--no-deps", "--no-compile",
           "--no-cache-dir", "--upgrade", "--target", str(site), *map(str, found)]
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"installing the wheels of {wheels} failed:\n{done.stderr[-2000:]}")
    return site


def steps(out: Path, dry: bool, pong_steps: int) -> List[Step]:
    py = sys.executable
    scripts = ROOT / "scripts"
    tests = ["tests/test_cuda.py", "tests/test_linear_scan.py", "tests/test_softmax_scan.py",
             "tests/test_selective_scan.py", "tests/test_ssd_scan.py"]
    env_code = ("import torch, triton, platform; print('python', platform.python_version()); "
                "print('torch', torch.__version__, 'cuda', torch.version.cuda); print('triton', triton.__version__); "
                "print('gpu', torch.cuda.get_device_name(0) if torch.cuda.is_available() else 'none'); "
                "print('memory GiB', round(torch.cuda.get_device_properties(0).total_memory / 2**30, 1) "
                "if torch.cuda.is_available() else '-'); import rlts.kernels as k; print('rlts.kernels', k.__file__)")
    device = "auto"
    run = [
        Step("env", "Machine", [py, "-c", env_code], 120),
        Step("tests", "CUDA tests", [py, "-m", "pytest", "-q", "-rs", "-p", "no:cacheprovider",
                                     *(["tests/test_cuda.py"] if dry else tests)], 300 if dry else 900),
        Step("scan", "Scan kernels", [py, str(scripts / "bench_scan.py"), "--device", device,
                                      "--preset", "small" if dry else "full", "--out", str(out / "scan.md"),
                                      *(["--ops", "linear", "--lengths", "64", "--sdpa-lengths", "", "--budget",
                                         "0.05"] if dry else [])], 300 if dry else 600, [out / "scan.md"]),
        Step("layers", "Sequence layers", [py, str(scripts / "bench_layers.py"), "--device", device,
                                           "--preset", "tiny" if dry else "small",
                                           *(["--backbones", "gru", "--d-model", "32"] if dry else []),
                                           "--out", str(out / "layers.md")], 300 if dry else 600,
             [out / "layers.md"]),
        Step("drama", "Drama agent speed", [py, str(scripts / "bench_drama.py"), "--device", device,
                                            *(["--config", "debug", "--backbones", "mamba2", "--repeats", "1"]
                                              if dry else ["--backbones", "mamba2,aaren"]),
                                            "--out", str(out / "drama.md")], 300 if dry else 600,
             [out / "drama.md"]),
        Step("pong", "Pong, world-model losses", [py, "-m", "rlts.tasks.cli", "atari", "--game", "Pong",
                                                  "--config", "debug" if dry else "atari100k",
                                                  "--steps", str(pong_steps), "--device", device,
                                                  "--eval_every", "0", "--final_eval_episodes", "1",
                                                  *(["--random_steps", "20", "--log_every", "2"] if dry
                                                    else ["--log_every", "100"]),
                                                  "--out", str(out / "pong")], 600 if dry else 1800),
        Step("pixels", "World model alone on recorded Pong frames", [
            py, str(scripts / "wm_pixels.py"), "--games", "Pong", "--device", device, "--no-progress",
            *(["--dry-run"] if dry else ["--frames", "20000", "--minutes", "2"]), "--out", str(out / "pixels")],
            300 if dry else 600, [out / "pixels" / "summary.md"]),
    ]
    return run


def pong_losses(run: Path) -> tuple[bool, str]:
    """Did the world-model loss fall: the mean wm/loss of the last fifth of its logged points
    against the first fifth (TensorBoard event files of the run)."""
    try:
        from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    except ImportError:
        return False, "tensorboard is not installed: cannot read the run's losses"
    files = sorted(run.rglob("events.out.tfevents.*"))
    values: List[float] = []
    for f in files:
        acc = EventAccumulator(str(f), size_guidance={"scalars": 0})
        acc.Reload()
        if "wm/loss" in acc.Tags().get("scalars", []):
            values += [e.value for e in acc.Scalars("wm/loss")]
    if len(values) < 5:
        return False, f"only {len(values)} logged wm/loss values"
    k = max(1, len(values) // 5)
    first, last = sum(values[:k]) / k, sum(values[-k:]) / k
    return last < first, f"wm/loss {first:.4g} (first fifth of {len(values)} points) -> {last:.4g} (last fifth)"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", type=Path, required=True, help="the report folder (report.md, logs, tables)")
    p.add_argument("--wheels", type=Path, default=None, help="a folder of .whl files to install first")
    p.add_argument("--pong-steps", type=int, default=5000)
    p.add_argument("--dry-run", action="store_true", help="tiny sizes, no wheels: a check of the script (CI)")
    p.add_argument("--only", default="", help="comma-separated steps to run (default: all)")
    args = p.parse_args(argv)
    out = args.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    path = [str(source_tree(out))]
    if args.wheels and not args.dry_run:
        path.append(str(install_wheels(args.wheels, out)))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(path + [os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep),
           "PYTHONUNBUFFERED": "1", "MPLBACKEND": "Agg"}
    pong_steps = 40 if args.dry_run else args.pong_steps
    wanted = {s.strip() for s in args.only.split(",") if s.strip()}
    todo = [s for s in steps(out, args.dry_run, pong_steps) if not wanted or s.name in wanted]
    for step in todo:
        print(f"[{step.name}] {' '.join(shlex.quote(a) for a in step.argv)}", flush=True)
        t0 = time.perf_counter()
        with open(out / f"{step.name}.log", "w") as log:
            try:
                step.code = subprocess.run(step.argv, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT,
                                           timeout=step.limit_s).returncode
            except subprocess.TimeoutExpired:
                step.code = 124
        step.seconds = time.perf_counter() - t0
        ok = step.code == 0
        if step.name == "pong" and ok:
            falling, step.verdict = pong_losses(out / "pong")
            ok = falling or (args.dry_run and "->" in step.verdict)   # a few tiny updates need not lower it
        step.verdict = ("passed" if ok else "FAILED" if step.code != 124 else f"timed out after {step.limit_s} s") \
            + (f": {step.verdict}" if step.verdict else "")
        print(f"[{step.name}] {step.verdict} ({step.seconds:.0f} s)", flush=True)
    write_report(out, todo, args.dry_run)
    print(f"report: {out / 'report.md'}")
    return 0 if all(s.verdict.startswith("passed") for s in todo) else 1


def write_report(out: Path, done: List[Step], dry: bool) -> None:
    lines = ["# rlts GPU check" + (" (dry run: tiny sizes, not a result)" if dry else ""), "",
             "| step | result | wall time | log |", "|---|---|---|---|"]
    lines += [f"| {s.title} | {s.verdict} | {s.seconds:.0f} s | {s.name}.log |" for s in done]
    for s in done:
        lines += ["", f"## {s.title}", "", "```", " ".join(shlex.quote(a) for a in s.argv), "```", ""]
        log = (out / f"{s.name}.log").read_text(errors="replace").splitlines()
        if s.name in ("env", "tests") or s.code != 0:
            lines += ["```", *log[-40:], "```"]
        for table in s.tables:
            if table.exists():
                lines += [table.read_text()]
    (out / "report.md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    sys.exit(main())
