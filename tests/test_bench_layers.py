"""The layer benchmark runs end to end (tiny preset) and reports what it claims to measure."""
import torch

from _scripts import load_script


def _load():
    return load_script("bench_layers")


def test_tiny_run_writes_tables(tmp_path):
    bench = _load()
    out = tmp_path / "layers.md"
    assert bench.main(["--preset", "tiny", "--d-model", "32", "--out", str(out)]) == 0
    md = out.read_text()
    assert "Streaming inference" in md and "Training throughput" in md
    for bb in ("aaren", "mamba", "mamba2", "transformer", "gru"):
        assert f"| {bb} |" in md


def test_state_bytes_recurrent_constant_transformer_grows():
    bench = _load()
    torch.manual_seed(0)
    for bb in ("aaren", "mamba", "mamba2"):
        model = bench.build(bb, 32)
        sizes = {bench.state_nbytes(bench.context_state(model, bb, L, piece=16)) for L in (8, 40)}
        assert len(sizes) == 1, bb
    model = bench.build("transformer", 32)
    small, big = (bench.context_state(model, "transformer", L) for L in (8, 40))
    kv = lambda st: sum(bench.state_nbytes((k, v)) for k, v, _pos in st)  # noqa: E731
    assert kv(big) == 5 * kv(small) and bench.state_nbytes(big) > bench.state_nbytes(small)


def test_width_for_matches_parameter_target():
    bench = _load()
    for bb in ("aaren", "transformer"):
        d = bench.width_for(bb, 200_000)
        n = bench.count_parameters(bench.build(bb, d))
        others = [bench.count_parameters(bench.build(bb, w)) for w in (d - 16, d + 16) if w >= 32]
        assert all(abs(n - 200_000) <= abs(o - 200_000) for o in others)
