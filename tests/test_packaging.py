"""Packaging: one import root. The folders kernels/, world_models/ and tasks/ install as
rlts.kernels, rlts.world_models and rlts.tasks; a wheel adds `rlts` and nothing else to
site-packages, and no code imports the folders by their own names."""
import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
FOLDERS = ("kernels", "world_models", "tasks")


def _tracked_files():
    out = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True)
    if out.returncode != 0:
        pytest.skip("not a git checkout")
    return [ROOT / p for p in out.stdout.splitlines() if (ROOT / p).is_file()]


def test_no_import_of_a_top_level_folder_name():
    pattern = re.compile(rf"^\s*(from|import)\s+({'|'.join(FOLDERS)})\b", re.M)
    module_strings = re.compile(rf"""(["']|-m\s+)({'|'.join(FOLDERS)})\.[a-z_]+""")  # module paths in strings and after -m
    bad = []
    for path in _tracked_files():
        if path.suffix != ".py":
            continue
        text = path.read_text()
        bad += [f"{path.relative_to(ROOT)}: {m.group(0).strip()}" for m in pattern.finditer(text)]
        bad += [f"{path.relative_to(ROOT)}: {m.group(0).strip()}" for m in module_strings.finditer(text)]
    assert not bad, "imports of top-level kernels/world_models/tasks:\n" + "\n".join(bad)


def test_wheel_installs_one_top_level_package(tmp_path):
    src = tmp_path / "src"
    for path in _tracked_files():
        if path.parts[len(ROOT.parts)] in ("tests", "docs", "scripts", ".ci"):
            continue
        dest = src / path.relative_to(ROOT)
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(path, dest)
    out = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
                          "-w", str(tmp_path / "dist"), str(src)], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr[-2000:]
    (wheel,) = (tmp_path / "dist").glob("rlts-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    top = {n.split("/")[0] for n in names if not n.split("/")[0].endswith((".dist-info", ".data"))}
    assert top == {"rlts"}
    for needed in ("rlts/kernels/__init__.py", "rlts/world_models/__init__.py", "rlts/tasks/cli.py",
                   "rlts/tasks/configs/forecast.yaml", "rlts/tasks/data/ETTh1.csv"):
        assert needed in names, needed
    entry = zipfile.ZipFile(wheel).read(next(n for n in names if n.endswith("entry_points.txt"))).decode()
    assert "rlts = rlts.tasks.cli:main" in entry


def test_plots_never_touch_the_global_matplotlib_backend():
    """Plots draw on matplotlib.figure.Figure: no module calls matplotlib.use or pyplot, which
    would change the backend or the figures of the program that called rlts."""
    pattern = re.compile(r"matplotlib\.use\(|import matplotlib\.pyplot|from matplotlib import pyplot")
    bad = [str(p.relative_to(ROOT)) for p in _tracked_files()
           if p.suffix == ".py" and p.parts[len(ROOT.parts)] != "tests" and pattern.search(p.read_text())]
    assert not bad, bad
