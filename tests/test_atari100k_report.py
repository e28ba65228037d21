"""Atari100k statistics and report: the rliable estimators (Agarwal et al. 2021) against
hand-computed cases, the stratified bootstrap (rlts.tasks.atari100k.stats), HNS on the shipped
reference rows, and `report` on a synthetic run folder (rlts.tasks.atari100k.report)."""
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from rlts.tasks.atari100k import report as ar
from rlts.tasks.atari100k import stats as st

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data" / "atari100k" / "reference_scores.csv"

# 4 runs x 3 games; per-game means 1.5, 6, 1
X = np.array([[0.0, 4.0, 1.0],
              [1.0, 4.0, 1.0],
              [2.0, 8.0, 1.0],
              [3.0, 8.0, 1.0]])


# ---------------------------------------------------------------- estimators

def test_mean_and_median_are_over_per_game_means():
    assert st.mean(X) == pytest.approx((1.5 + 6 + 1) / 3)
    assert st.median(X) == pytest.approx(1.5)
    assert st.mean(X[:, :2]) == pytest.approx(3.75) and st.median(X[:, :2]) == pytest.approx(3.75)


def test_iqm_pools_all_scores_and_trims_a_quarter_each_side():
    # pooled sorted: 0 1 1 1 1 1 2 3 4 4 8 8; n = 12, 3 cut at each end -> mean(1 1 1 2 3 4) = 2
    assert st.iqm(X) == pytest.approx(2.0)


def test_iqm_non_integer_trimming_floors_the_cut():
    x = np.array([[1, 2, 3, 4, 5], [6, 7, 8, 9, 100]], dtype=float)   # n = 10: 0.25 n = 2.5 -> cut 2
    assert st.iqm(x) == pytest.approx(np.mean([3, 4, 5, 6, 7, 8]))
    assert st.trimmed_mean([5, 1, 3], 0.25) == pytest.approx(3.0)   # n = 3: cut 0, plain mean
    scipy_stats = pytest.importorskip("scipy.stats")
    rng = np.random.default_rng(1)
    for n_runs, n_games in [(5, 2), (3, 3), (7, 1), (5, 26), (1, 26)]:
        x = rng.normal(size=(n_runs, n_games)) ** 3
        assert st.iqm(x) == pytest.approx(scipy_stats.trim_mean(x.ravel(), 0.25), abs=1e-12)


def test_optimality_gap():
    x = np.array([[0.5, 2.0], [0.0, 1.0]])   # min(x, 1) = 0.5 1 0 1 -> mean 0.625
    assert st.optimality_gap(x) == pytest.approx(0.375)
    assert st.optimality_gap(np.full((3, 4), 5.0)) == 0.0
    assert st.optimality_gap(X) == pytest.approx(1 / 12)   # one score (0) below 1, by 1


def test_ragged_scores_per_game_means_and_pooled_statistics():
    ragged = [[0.0, 2.0], [4.0], [1.0, 1.0, 1.0, 5.0]]   # per-game means 1, 4, 2
    assert st.mean(ragged) == pytest.approx(7 / 3) and st.median(ragged) == pytest.approx(2.0)
    # pooled 0 1 1 1 2 4 5: n = 7, cut 1 -> mean(1 1 1 2 4) = 1.8
    assert st.iqm(ragged) == pytest.approx(1.8)
    assert st.optimality_gap(ragged) == pytest.approx(1 / 7)


def test_performance_profile_strictly_above_tau():
    x = np.array([[0.0, 1.0], [2.0, 3.0]])
    assert st.performance_profile(x, [-1, 0, 1, 2.5, 3]).tolist() == [1.0, 0.75, 0.5, 0.25, 0.0]


# ---------------------------------------------------------------- bootstrap

def test_bootstrap_identical_runs_collapse_to_the_point():
    x = np.tile(np.array([[0.2, 1.5, 3.0, -0.1]]), (5, 1))
    for fn in st.AGGREGATES.values():
        point, (low, high) = st.stratified_bootstrap_ci(x, fn, reps=200)
        assert low == pytest.approx(point) and high == pytest.approx(point)


def test_bootstrap_is_stratified_by_game():
    seen = []

    def record(sample):
        seen.append([len(c) for c in sample])
        return sample[1][0] + np.mean(sample[0])   # game 1 holds one run: always 7.0

    scores = [[0.0, 1.0, 2.0], [7.0], [5.0] * 5]
    boot = st.stratified_bootstrap(scores, record, reps=300, seed=3)
    assert all(s == [3, 1, 5] for s in seen)
    assert boot.min() >= 7.0 and boot.max() <= 9.0
    # a game whose runs are all equal contributes a fixed value to every replicate
    boot = st.stratified_bootstrap(scores, lambda s: np.mean(s[2]), reps=100)
    assert np.all(boot == 5.0)
    # a matrix is resampled within columns: each replicate's column j holds values of column j only
    shapes, cols_ok = [], []

    def check(sample):
        shapes.append(sample.shape)
        cols_ok.append(set(sample[:, 0]) <= {0, 1, 2, 3} and set(sample[:, 1]) <= {4, 8})
        return 0.0

    st.stratified_bootstrap(X, check, reps=100)
    assert set(shapes) == {X.shape} and all(cols_ok)


def test_bootstrap_ci_contains_point_and_is_reproducible():
    rng = np.random.default_rng(0)
    x = rng.gamma(2.0, 0.5, size=(5, 26))
    for fn in st.AGGREGATES.values():
        point, (low, high) = st.stratified_bootstrap_ci(x, fn, reps=300, seed=7)
        assert low <= point <= high and low < high
        assert st.stratified_bootstrap_ci(x, fn, reps=300, seed=7) == (point, (low, high))
    a = st.stratified_bootstrap_ci(x, st.mean, reps=300, seed=1)
    b = st.stratified_bootstrap_ci(x, st.mean, reps=300, seed=2)
    assert a[1] != b[1]


def test_bootstrap_percentile_interval_is_numpy_quantile_of_replicates():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(4, 3))
    boot = st.stratified_bootstrap(x, st.iqm, reps=250, seed=5)
    _, (low, high) = st.stratified_bootstrap_ci(x, st.iqm, reps=250, seed=5)
    assert (low, high) == pytest.approx(tuple(np.quantile(boot, [0.025, 0.975])))


def test_bootstrap_one_run_per_game():
    x = np.array([[0.1, 0.9, 2.0]])
    point, (low, high) = st.stratified_bootstrap_ci(x, st.iqm, reps=50)
    assert point == low == high == pytest.approx(st.iqm(x))


def test_bootstrap_vector_statistic_gives_bands():
    taus = np.linspace(0, 3, 7)
    point, (low, high) = st.stratified_bootstrap_ci(X, lambda s: st.performance_profile(s, taus), reps=100)
    assert point.shape == low.shape == high.shape == (7,)
    assert np.all(low <= point + 1e-12) and np.all(point <= high + 1e-12)


# ---------------------------------------------------------------- reference and HNS

def test_reference_table_and_hns():
    ref = ar.load_reference()
    assert len(ref) == 26 and {"random", "human", "dreamerv3", "storm", "iris", "diamond", "twm"} <= set(ref.columns)
    pong = ref.loc["Pong"]
    assert (pong["random"], pong["human"]) == (-20.7, 14.6)
    assert ar.human_normalized(pong["human"], "Pong", ref) == pytest.approx(1.0)
    assert ar.human_normalized(pong["random"], "ALE/Pong-v5", ref) == pytest.approx(0.0)
    assert ar.human_normalized(0.0, "pong", ref) == pytest.approx(20.7 / 35.3)
    assert np.allclose(ar.human_normalized([-20.7, 14.6], "PongNoFrameskip-v4", ref), [0, 1])
    assert ar.resolve_game("ms_pacman", ref) == "MsPacman"
    with pytest.raises(ValueError, match="unknown Atari100k game 'Pongg'.*Pong"):
        ar.human_normalized(1.0, "Pongg", ref)
    # the per-game means reproduce the published aggregates (mean / median HNS over 26 games)
    for agent, (m, med) in ar.PUBLISHED_AGGREGATES.items():
        hns = np.array([ar.human_normalized(ref.at[g, agent], g, ref) for g in ref.index])
        assert st.mean(hns[None, :]) == pytest.approx(m, abs=0.005)
        assert st.median(hns[None, :]) == pytest.approx(med, abs=0.006)
    assert "DreamerV3" in (ROOT / "tasks" / "data" / "ATARI100K_SOURCES.md").read_text()


@pytest.mark.skipif(not SHARED.exists(), reason=f"reference copy not found at {SHARED} (../shared)")
def test_reference_table_is_the_shared_file_unchanged():
    assert ar.REFERENCE_CSV.read_bytes() == SHARED.read_bytes()


def test_shipped_protocols_cover_every_published_agent():
    protocols, ref = ar.load_protocols(), ar.load_reference()
    published = [c for c in ref.columns if c not in ("random", "human")]
    assert sorted(protocols.index) == sorted(published)
    raw = pd.read_csv(ar.PROTOCOL_CSV)                      # plain pandas reads it too
    assert list(raw.columns[:6]) == ["agent", *ar.PROTOCOL_COLUMNS]
    for agent, row in protocols.iterrows():
        assert row["sticky_actions"] == "unknown" or 0.0 <= float(row["sticky_actions"]) <= 1.0, agent
        assert row["noop_max"] == "unknown" or int(row["noop_max"]) >= 0, agent
        assert row["action_set"] in ("minimal", "full", "unknown"), agent
        assert row["eval_episodes"] == "unknown" or int(row["eval_episodes"]) >= 1, agent
        assert row["source"].startswith("github.com/"), agent
    assert protocols.at["storm", "sticky_actions"] == "0.25" and protocols.at["storm", "eval_episodes"] == "20"
    assert protocols.at["dreamerv3", "noop_max"] == "unknown"   # its versions disagree: not guessed
    assert "atari100k_protocols.csv" in (ROOT / "tasks" / "data" / "ATARI100K_SOURCES.md").read_text()


def test_load_protocols_errors(tmp_path):
    with pytest.raises(ValueError, match="agent protocols not found"):
        ar.load_protocols(tmp_path / "nope.csv")
    (tmp_path / "p.csv").write_text("agent,sticky_actions,noop_max\nstorm,0.25,0\n")
    with pytest.raises(ValueError, match="lack the column.*action_set"):
        ar.load_protocols(tmp_path / "p.csv")


# ---------------------------------------------------------------- report on a synthetic tree

def _job(root, game, seed, ret=None, steps=100_000, episodes=100, backbone="mamba2", budget=None, env=None,
         noop_max=0):
    d = root / game / f"seed{seed}"
    d.mkdir(parents=True)
    if ret is None:
        return d
    res = {"env": env or game, "backbone": backbone,
           "config": {"seed": seed, "steps": budget or steps, "final_eval_episodes": episodes,
                      "world_model": {"backbone": backbone}, **({} if noop_max is None else {"noop_max": noop_max})},
           "eval_return": ret, "eval_episodes": episodes, "eval_returns": [ret] * episodes, "steps": steps,
           "train_wall_s": 3600.0, "device": "cuda", "protocol": "greedy policy, full episodes", "finished": True}
    (d / "results.json").write_text(json.dumps(res))
    return d


@pytest.fixture
def tree(tmp_path):
    _job(tmp_path, "Pong", 0, 0.0)
    _job(tmp_path, "Pong", 1, 10.0)
    _job(tmp_path, "Breakout", 0, 30.5)
    _job(tmp_path, "Breakout", 1, 1.7)
    _job(tmp_path, "Pong", 2)                      # unfinished: no results.json
    return tmp_path


def test_collect_runs(tree):
    runs = ar.collect_runs(tree)
    assert len(runs) == 5 and runs["finished"].sum() == 4
    assert {"game", "seed", "finished", "eval_return", "eval_episodes", "steps", "backbone", "train_wall_s",
            "device"} <= set(runs.columns)
    row = runs[(runs["game"] == "Pong") & (runs["seed"] == 2)].iloc[0]
    assert not row["finished"] and pd.isna(row["eval_return"])


def test_report_partial_with_unfinished_job(tree):
    res = ar.report(tree, reps=200)
    for name in ("report.md", "report.csv", "aggregates.csv", "report.json", "scores.png", "profile.png"):
        assert (tree / name).stat().st_size > 0
    assert res["partial"] is True and res["n_games"] == 2 and res["runs_used"] == 4
    text = " ".join(res["reasons"])
    assert "2 of 26 games" in text and "unfinished" in text and "Pong/seed2" in text
    assert [(u["game"], u["seed"]) for u in res["unfinished"]] == [("Pong", 2)]
    saved = json.loads((tree / "report.json").read_text())
    assert saved["partial"] is True and saved["reasons"] == res["reasons"]
    md = (tree / "report.md").read_text()
    assert md.splitlines()[2].startswith("**PARTIAL RESULTS.**") and "over 2 of 26 games" in md
    assert "Pong/seed2" in md.split("## Unfinished jobs")[1]
    per_game = pd.read_csv(tree / "report.csv").set_index("game")
    assert per_game.at["Pong", "seeds_finished"] == 2 and per_game.at["Pong", "jobs"] == 3
    assert per_game.at["Pong", "mean"] == pytest.approx(5.0)                # the unfinished job is not used
    assert per_game.at["Pong", "std"] == pytest.approx(np.std([0.0, 10.0], ddof=1))
    assert per_game.at["Breakout", "hns"] == pytest.approx(0.5)             # mean 16.1 = halfway random-human
    assert per_game.at["Pong", "random"] == -20.7 and "dreamerv3" in per_game.columns
    agg = pd.read_csv(tree / "aggregates.csv")
    ours = agg[agg["agent"] == "ours"].set_index("metric")
    hns = np.array([[ar.human_normalized(0.0, "Pong"), ar.human_normalized(30.5, "Breakout")],
                    [ar.human_normalized(10.0, "Pong"), ar.human_normalized(1.7, "Breakout")]])
    assert ours.at["mean", "estimate"] == pytest.approx(st.mean(hns))
    assert ours.at["iqm", "estimate"] == pytest.approx(st.iqm(hns))
    assert ours.at["mean", "ci_low"] <= ours.at["mean", "estimate"] <= ours.at["mean", "ci_high"]
    assert set(ours["over"]) == {"over 2 of 26 games"}
    dv3 = agg[agg["agent"] == "DreamerV3"]
    assert set(dv3["over"]) == {"over 2 of 26 games", "over all 26 games"}
    full = dv3[dv3["over"] == "over all 26 games"].set_index("metric")
    assert full.at["mean", "published"] == 1.25


def test_report_mixed_configurations_refused_or_selected(tree):
    _job(tree, "Breakout", 2, 5.0, steps=50_000, episodes=10)
    with pytest.raises(ValueError, match=r"mix configurations.*100,000 steps.*50,000 steps"):
        ar.report(tree, reps=50)
    res = ar.report(tree, reps=50, steps=100_000)
    assert res["runs_used"] == 4 and [e["seed"] for e in res["excluded"]] == [2]
    assert any("other configurations" in r for r in res["reasons"])
    short = ar.report(tree, reps=50, backbone="mamba2", steps=50_000)
    text = " ".join(short["reasons"])
    assert short["runs_used"] == 1 and "fewer than 100,000 steps" in text and "fewer than 100 final" in text
    assert any("collapse" in n for n in short["notes"])
    _job(tree, "Boxing", 0, 5.0, backbone="aaren")
    with pytest.raises(ValueError, match="'aaren'"):
        ar.report(tree, reps=50)


def test_report_unequal_seeds_flagged(tree):
    _job(tree, "Boxing", 0, 6.1)
    res = ar.report(tree, reps=50)
    assert any("different numbers of finished seeds" in r for r in res["reasons"])


def test_report_errors(tmp_path):
    with pytest.raises(ValueError, match="not found"):
        ar.report(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="no runs found"):
        ar.report(tmp_path / "empty")
    _job(tmp_path / "bad", "NotAGame", 0, 1.0)
    with pytest.raises(ValueError, match="unknown Atari100k game 'NotAGame'"):
        ar.report(tmp_path / "bad")
    _job(tmp_path / "misfiled", "Pong", 0, 1.0, env="Breakout")
    with pytest.raises(ValueError, match="Breakout run filed under the Pong"):
        ar.collect_runs(tmp_path / "misfiled")
    with pytest.raises(ValueError, match="--reps .* must be at least 1, got 0"):
        ar.report(tmp_path / "misfiled", reps=0)


def test_run_report_prints_markdown(tree, capsys):
    res = ar.run_report(str(tree), reps=50)
    out = capsys.readouterr().out
    assert "PARTIAL RESULTS" in out and "| Pong |" in out and res["partial"]


def test_rlts_atari100k_report_command(tree, tmp_path, capsys):
    """`rlts atari100k report DIR` (the folder as first argument or as --dir) with its keys; one
    error line for a missing folder or a bad key."""
    from rlts.tasks.cli import main

    assert main(["atari100k", "report", str(tree), "--reps", "50", "--backbone", "mamba2"]) == 0
    assert "| Pong |" in capsys.readouterr().out and json.loads((tree / "report.json").read_text())["partial"]
    (tree / "report.json").unlink()
    assert main(["atari100k", "report", "--dir", str(tree), "--reps", "50"]) == 0
    assert (tree / "report.json").is_file()
    capsys.readouterr()
    for argv, message in [
        ([], "give the benchmark folder: rlts atari100k report DIR"),
        ([str(tmp_path / "nope")], "run folder not found"),
        ([str(tree), "--reps", "0"], "reps must be at least 1, got 0"),
        ([str(tree), "--steps", "300"], "no finished runs"),
        ([str(tree), "extra"], "'extra']"),  # two values for the folder
    ]:
        assert main(["atari100k", "report", *argv]) == 2
        err = capsys.readouterr().err
        assert err.startswith("rlts atari100k report: error: ") and message in err and err.count("\n") == 1, err


def test_report_complete_run_not_partial(tmp_path):
    ref = ar.load_reference()
    for g in ref.index:                            # 26 games, one seed each at the human score
        _job(tmp_path, g, 0, float(ref.at[g, "human"]))
    res = ar.report(tmp_path, reps=20)
    assert res["partial"] is False and res["reasons"] == [] and res["n_games"] == 26
    assert any("collapse" in n for n in res["notes"])        # one seed: intervals are the points
    ours = {a["metric"]: a for a in res["aggregates"] if a["agent"] == "ours"}
    assert ours["mean"]["estimate"] == pytest.approx(1.0) and ours["optimality_gap"]["estimate"] == pytest.approx(0)
    assert ours["iqm"]["ci_low"] == ours["iqm"]["ci_high"] == pytest.approx(1.0)
    assert (tmp_path / "report.md").read_text().splitlines()[2].startswith("**Complete:**")


def test_scores_plot_keeps_the_highest_point_inside(tmp_path):
    """The highest point (DIAMOND's Breakout, HNS 4.54) stays inside the frame, clear of the legend."""
    from rlts.tasks.atari100k.report import _plot_scores

    games = ["Breakout", "Pong"]
    per_game = pd.DataFrame({"diamond_hns": [4.54, 1.0], "storm_hns": [0.3, 0.9], "hns": [0.1, 0.2]})
    finished = pd.DataFrame({"game": games, "hns": [0.1, 0.2]})
    fig = _plot_scores(tmp_path / "scores.png", per_game, ["diamond", "storm"], games, finished)
    ax = fig.axes[0]
    low, high = ax.get_ylim()
    assert high >= 4.54 * 1.25 and low <= 0 and (tmp_path / "scores.png").stat().st_size > 0
    assert ax.get_legend().get_bbox_to_anchor().x0 >= ax.get_window_extent().x1  # the legend is beside the axes


def test_report_lists_every_protocol_beside_ours(tree):
    """report.md's protocol table: ours from the runs' results.json (one row per protocol, with its
    runs), the published agents from the shipped table, "unknown" for an agent without a row."""
    _job(tree, "Boxing", 0, 6.1, noop_max=30, episodes=100)
    _job(tree, "Boxing", 1, 6.1, noop_max=None, episodes=100)         # an older results.json: no noop_max
    res = ar.report(tree, reps=20)
    table = {(p["agent"], p["noop_max"]): p for p in res["protocol_table"]}
    assert table[("ours", "0")]["runs"] == 4 and table[("ours", "30")]["runs"] == 1
    assert table[("ours", "unknown")]["runs"] == 1
    ours = table[("ours", "0")]
    assert (ours["sticky_actions"], ours["action_set"], ours["eval_episodes"], ours["seeds"]) == \
        ("0", "minimal", "100", "2")
    storm = table[("STORM", "0")]
    assert (storm["sticky_actions"], storm["eval_episodes"]) == ("0.25", "20")
    assert json.loads((tree / "report.json").read_text())["protocol_table"] == res["protocol_table"]
    md = (tree / "report.md").read_text().split("## Evaluation protocols")[1].split("## Per game")[0]
    assert "| agent | sticky actions | no-op starts (max) | action set | evaluation episodes | seeds |" in md
    assert "| ours (4 runs) | 0 | 0 | minimal | 100 | 2 |" in md
    assert "| STORM | 0.25 | 0 | minimal | 20 | 5 |" in md
    assert "| DreamerV3 | 0 | unknown | unknown | unknown | 5 |" in md
    partial = ar.report(tree, reps=20, protocols=ar.load_protocols().drop(index="twm"))
    twm = [p for p in partial["protocol_table"] if p["agent"] == "TWM"][0]
    assert all(twm[c] == "unknown" for c in ar.PROTOCOL_COLUMNS)
