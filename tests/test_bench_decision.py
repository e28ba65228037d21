"""The acting benchmark of return-conditioned policies runs end to end (tiny sizes) and reports
what it claims: per-step time at each checkpoint, constant Aaren state, a growing KV cache."""
from _scripts import load_script


def _load():
    return load_script("bench_decision")


def test_tiny_run_writes_table(tmp_path):
    bench = _load()
    out = tmp_path / "decision.md"
    argv = ["--steps", "3,8", "--context", "4", "--d-model", "16", "--n-layers", "1", "--repeats", "2",
            "--recompute-max", "8", "--backbones", "aaren,gru,transformer", "--out", str(out)]
    assert bench.main(argv) == 0
    md = out.read_text()
    for name in ("aaren", "gru", "transformer", "transformer (recompute)"):
        assert f"| {name} | 3 |" in md and f"| {name} | 8 |" in md, name
    assert "aaren state constant over the episode: PASS" in md


def test_state_sizes():
    bench = _load()
    sizes = {}
    for bb in ("aaren", "transformer"):
        model = bench.build(bb, 16, 1, context=4, max_timestep=20, device="cpu")
        res = bench.act_episode(model, [2, 3, 10], repeats=1, device="cpu")
        sizes[bb] = [res[c][1] for c in (2, 3, 10)]
    assert len(set(sizes["aaren"])) == 1
    kv = sizes["transformer"]  # the cache grows by 3 tokens a step up to 3 * context - 2 = 10 tokens
    assert kv[0] < kv[1] < kv[2] and (kv[1] - kv[0]) % 3 == 0
