"""The streaming benchmark runs end to end (tiny preset): one row per backbone, patch and
look-back, and the recurrent state it reports is the same at the first and the last row."""
from _scripts import load_script


def test_tiny_run_writes_the_table(tmp_path):
    bench = load_script("bench_stream")
    out = tmp_path / "stream.md"
    assert bench.main(["--preset", "tiny", "--backbones", "aaren,gru", "--out", str(out)]) == 0
    md = out.read_text()
    rows = [line for line in md.splitlines() if line.startswith("| aaren |") or line.startswith("| gru |")]
    assert len(rows) == 2 * 2 * 2
    for row in rows:
        first, last = row.split("|")[7].split("/")
        assert first.strip() == last.strip()
    assert "the update against recomputing: aaren patch 4" in md
