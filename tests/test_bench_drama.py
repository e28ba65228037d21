"""The Drama speed benchmark runs end to end on the debug overlay and tables every backbone."""
from _scripts import load_script


def test_debug_config_writes_a_row_per_backbone(tmp_path):
    bench = load_script("bench_drama")
    out = tmp_path / "drama.md"
    assert bench.main(["--config", "debug", "--device", "cpu", "--backbones", "aaren,gru", "--repeats", "1",
                       "--out", str(out)]) == 0
    md = out.read_text()
    assert "--config debug" in md
    rows = [line for line in md.splitlines() if line.startswith("| aaren |") or line.startswith("| gru |")]
    assert len(rows) == 2 and "| 1.00x |" in rows[0]
