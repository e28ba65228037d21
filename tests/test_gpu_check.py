"""scripts/gpu_check.py --dry-run: every step runs from the source tree (a linked copy of the
package, not the installed one) on tiny sizes and the report lists them; nothing on that path
imports sktime, MuJoCo or stable-baselines3."""
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_dry_run_writes_the_report(tmp_path):
    out = tmp_path / "check"
    done = subprocess.run([sys.executable, str(ROOT / "scripts" / "gpu_check.py"), "--dry-run", "--out", str(out)],
                          capture_output=True, text=True, timeout=900)
    report = (out / "report.md").read_text()
    assert done.returncode == 0, done.stdout[-3000:] + report[-3000:]
    for title in ("Machine", "CUDA tests", "Scan kernels", "Sequence layers", "Drama agent speed",
                  "Pong, world-model losses", "World model alone on recorded Pong frames"):
        assert f"| {title} | passed" in report, title
    assert "wm/loss" in report and "tokens/s" in report
    # The linked tree is the package where rlts is not installed (here: without the editable
    # install's finder), and the GPU path imports none of sktime, MuJoCo, stable-baselines3.
    code = ("import sys; sys.meta_path[:] = [f for f in sys.meta_path if 'editable' not in repr(f)]; "
            "sys.path.insert(0, sys.argv[1]); import rlts.kernels, rlts.tasks.cli, rlts.tasks.rl.loop; "
            "print(rlts.kernels.__file__); "
            "print(sorted(m for m in ('sktime', 'mujoco', 'stable_baselines3') if m in sys.modules))")
    seen = subprocess.run([sys.executable, "-c", code, str(out / "src")], capture_output=True, text=True, timeout=300)
    lines = seen.stdout.strip().splitlines()
    assert lines[-2] == str(out / "src" / "rlts" / "kernels" / "__init__.py") and lines[-1] == "[]", seen.stderr
