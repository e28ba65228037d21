"""The ETTh1 file shipped for `make run` is the benchmark file, unchanged (its licence, CC BY-ND
4.0, allows redistribution only unchanged), and loads with the TSLib split."""
from pathlib import Path

import pytest

from rlts.data import load_csv, split_borders

ROOT = Path(__file__).resolve().parents[1]
SHIPPED = ROOT / "tasks" / "data" / "ETTh1.csv"
SHARED = ROOT.parent / "shared" / "data" / "ett" / "ETTh1.csv"


def test_shipped_etth1_loads_with_attribution():
    table = load_csv(SHIPPED)
    assert table.values.shape == (17420, 7) and table.target == "OT"
    borders = split_borders(len(table), 96, path=SHIPPED, horizon=96)
    assert borders["train"] == (0, 8640) and borders["test"] == (11520 - 96, 14400)
    readme = (SHIPPED.parent / "README.md").read_text()
    assert "CC BY-ND 4.0" in readme and "Informer" in readme


@pytest.mark.skipif(not SHARED.exists(), reason=f"reference copy not found at {SHARED} (../shared)")
def test_shipped_etth1_is_unchanged():
    assert SHIPPED.read_bytes() == SHARED.read_bytes()
