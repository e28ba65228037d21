"""The replay-checkpoint benchmark runs end to end on the debug overlay: the incremental scheme
writes about the final buffer once, the whole-buffer scheme once per checkpoint."""
from _scripts import load_script


def test_debug_config_tables_both_schemes(tmp_path):
    bench = load_script("bench_checkpoint")
    out = tmp_path / "checkpoint.md"
    assert bench.main(["--config", "debug", "--dir", str(tmp_path), "--out", str(out)]) == 0
    md = out.read_text()
    rows = {tuple(c.strip() for c in line.split("|")[1:3]): line.split("|")[6].strip()
            for line in md.splitlines() if "| whole buffer |" in line or "| incremental |" in line}
    assert set(rows) == {("600", "whole buffer"), ("600", "incremental"),
                         ("300 (ring wraps)", "whole buffer"), ("300 (ring wraps)", "incremental")}
    ratio = {k: float(v.rstrip("x")) for k, v in rows.items()}
    assert ratio[("600", "incremental")] <= 1.5 < ratio[("600", "whole buffer")]
    assert ratio[("300 (ring wraps)", "incremental")] <= 2.1  # the run is twice the ring: each step once
    assert "PASS: target <= 1.5x" in md
    assert [p.name for p in tmp_path.iterdir()] == ["checkpoint.md"]  # the replay files are removed
