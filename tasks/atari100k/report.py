"""Atari100k report: per-game scores, human-normalised aggregates with stratified-bootstrap
confidence intervals, and performance profiles, for a folder written by `rlts atari100k run`.

    rlts atari100k report runs/atari100k           # prints the tables, writes the files below
    rlts atari100k report runs/atari100k --backbone aaren --steps 100000 --reps 5000
    run_report("runs/atari100k")                   # the same from Python

Input: `DIR/<Game>/seed<k>/results.json`, one `rlts atari` run folder per (game, seed) job. A job
counts as finished when its results.json exists and holds `"finished": true`; every other job is
listed as unfinished and never enters a number.

Outputs in DIR: report.md (the report), report.csv (per game), aggregates.csv, report.json (the
dict returned by `report`), scores.png (per-game HNS against the published agents) and
profile.png (performance profiles).

Scores. The score of a run is the mean return of its final evaluation (`eval_return`), human
normalised: HNS = (score - random) / (human - random), with the random and human scores of
`tasks/data/atari100k_reference_scores.csv` (sources: tasks/data/ATARI100K_SOURCES.md).

Protocols. Published scores come from different evaluation protocols: report.md (and
`protocol_table` in report.json) lists, for rlts's runs and every published agent, the sticky-action
probability, the most no-op actions at a reset, the action set (minimal or full) and the number of
evaluation episodes per seed. The published agents' come from `tasks/data/atari100k_protocols.csv`
("unknown" where their code and papers leave it open); rlts's from its runs' results.json
(`config.noop_max`, `eval_episodes`) and the fixed settings of its Atari envs (sticky actions off,
minimal action set: rlts.tasks.rl.games).

Aggregates: mean, median, IQM and optimality gap of the runs' HNS, each with a 95 % stratified
bootstrap percentile interval (strata = games), and performance profiles with 95 % bands: the
definitions of Agarwal et al. 2021 (`rliable`), computed by rlts.tasks.atari100k.stats. Games
with different numbers of runs make the report partial. With one run per game the intervals
collapse to the point estimates, which says nothing about uncertainty (the report says so). The
published agents come as one per-game mean each (no per-seed scores in the reference file):
their aggregates are point values over per-game means, and their profiles are fractions of
games, not of runs. Their IQM is therefore an IQM of per-game means, not the run-level IQM of
their papers.

Partial results are reported as such: report.md opens with the reasons, and `partial` with
`reasons` is in the returned dict and report.json, whenever fewer than 26 games have a finished
run, games have different numbers of finished seeds, jobs are unfinished, runs trained fewer than
100k steps, runs were evaluated on fewer than 100 final episodes, runs of other configurations
were left out, or runs of one configuration differ in their evaluation protocol. Aggregates over
a subset of games are labelled "over N of 26 games", and the published agents are then
aggregated over the same N games (and, separately, over all 26).

Configurations: runs of different world-model backbones or step budgets (`config.steps`) are
never averaged together. If a folder holds several (backbone, steps) configurations, `report`
raises a ValueError naming them, unless one is chosen with `backbone=` / `steps=`; the runs of the
other configurations are then listed as excluded and the report is flagged partial.
"""
from __future__ import annotations

import json
import math
import re
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Tuple, Union

import numpy as np
import pandas as pd

from rlts.config import param
from rlts.tasks.atari100k.stats import (AGGREGATES, human_normalized_score, performance_profile,
                                        stratified_bootstrap_ci)
from rlts.tasks.rl.games import ATARI_ACTION_SET, ATARI_STICKY_ACTIONS, close_games, find_game
from rlts.tasks.runner import DATA_DIR, Command

REFERENCE_CSV = DATA_DIR / "atari100k_reference_scores.csv"
PROTOCOL_CSV = DATA_DIR / "atari100k_protocols.csv"
PROTOCOL_COLUMNS = ["sticky_actions", "noop_max", "action_set", "eval_episodes", "seeds"]
PROTOCOL_LABELS = {"sticky_actions": "sticky actions", "noop_max": "no-op starts (max)", "action_set": "action set",
                   "eval_episodes": "evaluation episodes", "seeds": "seeds"}
UNKNOWN = "unknown"
N_GAMES = 26
FULL_STEPS = 100_000
FULL_EVAL_EPISODES = 100
AGENT = "ours"
PUBLISHED_NAMES = {"dreamerv3": "DreamerV3", "storm": "STORM", "iris": "IRIS", "diamond": "DIAMOND", "twm": "TWM"}
# Published aggregates over the 26 games (mean, median HNS); see tasks/data/ATARI100K_SOURCES.md.
PUBLISHED_AGGREGATES = {"dreamerv3": (1.25, 0.49), "storm": (1.22, 0.43), "iris": (1.05, 0.29),
                        "diamond": (1.46, 0.37), "twm": (0.96, 0.51)}
RUN_COLUMNS = ["game", "seed", "finished", "eval_return", "eval_episodes", "steps", "backbone", "train_wall_s",
               "device", "budget", "protocol", "noop_max", "path", "problem"]
AGGREGATE_LABELS = {"mean": "Mean", "median": "Median", "iqm": "IQM", "optimality_gap": "Optimality gap"}


# ----------------------------------------------------------------------------------------------
# Reference scores, game names, HNS

def load_reference(path: Optional[Union[str, Path]] = None) -> pd.DataFrame:
    """The reference table indexed by game: random, human and the published agents' per-game means."""
    path = Path(path) if path is not None else REFERENCE_CSV
    if not path.exists():
        raise ValueError(f"reference scores not found: {path}")
    ref = pd.read_csv(path).set_index("game")
    missing = {"random", "human"} - set(ref.columns)
    if missing:
        raise ValueError(f"reference scores {path} lack the column(s) {', '.join(sorted(missing))}")
    return ref.astype(float)


def load_protocols(path: Optional[Union[str, Path]] = None) -> pd.DataFrame:
    """The published agents' evaluation protocols, indexed by agent (the score columns of the
    reference table): PROTOCOL_COLUMNS, `source` and `notes`, all as text ("unknown" where not
    documented)."""
    path = Path(path) if path is not None else PROTOCOL_CSV
    if not path.exists():
        raise ValueError(f"agent protocols not found: {path}")
    table = pd.read_csv(path, dtype=str, keep_default_na=False).set_index("agent")
    missing = set(PROTOCOL_COLUMNS) - set(table.columns)
    if missing:
        raise ValueError(f"agent protocols {path} lack the column(s) {', '.join(sorted(missing))}")
    return table


def resolve_game(name: str, ref: pd.DataFrame) -> str:
    """The reference table's name of a game given as "Pong", "pong", "ms_pacman", "ALE/Pong-v5" or
    "PongNoFrameskip-v4" (rlts.tasks.rl.games.find_game); ValueError for a game not in the table."""
    game = find_game(name, ref.index)
    if game is not None:
        return game
    close = close_games(name, ref.index)
    hint = f" (did you mean {', '.join(close)}?)" if close else ""
    raise ValueError(f"unknown Atari100k game {name!r}{hint}; the reference scores list: {', '.join(ref.index)}")


def human_normalized(score, game: str, ref: Optional[pd.DataFrame] = None):
    """HNS = (score - random) / (human - random) of `game` (a float, or an array for an array)."""
    ref = load_reference() if ref is None else ref
    row = ref.loc[resolve_game(game, ref)]
    return human_normalized_score(score, row["random"], row["human"])


# ----------------------------------------------------------------------------------------------
# Collecting runs

def collect_runs(out_dir: Union[str, Path], ref: Optional[pd.DataFrame] = None) -> pd.DataFrame:
    """One row per job folder `out_dir/<Game>/seed<k>/`, finished or not (RUN_COLUMNS)."""
    out = Path(out_dir)
    if not out.is_dir():
        raise ValueError(f"run folder not found: {out}")
    ref = load_reference() if ref is None else ref
    rows = []
    for game_dir in sorted(p for p in out.iterdir() if p.is_dir()):
        seed_dirs = sorted((p for p in game_dir.iterdir() if p.is_dir() and re.fullmatch(r"seed\d+", p.name)),
                           key=lambda p: int(p.name[4:]))
        if not seed_dirs:
            continue
        folder_game = resolve_game(game_dir.name, ref)
        for job in seed_dirs:
            rows.append(_job_row(job, folder_game, ref))
    if not rows:
        raise ValueError(f"no runs found under {out} (expected {out}/<Game>/seed<k>/results.json)")
    runs = pd.DataFrame(rows, columns=RUN_COLUMNS)
    dup = runs[runs.duplicated(["game", "seed"], keep=False)]
    if len(dup):
        raise ValueError("several job folders hold the same (game, seed): "
                         + ", ".join(dup["path"].astype(str)))
    return runs.sort_values(["game", "seed"]).reset_index(drop=True)


def _job_row(job: Path, folder_game: str, ref: pd.DataFrame) -> dict:
    row = {c: None for c in RUN_COLUMNS}
    row.update(game=folder_game, seed=int(job.name[4:]), finished=False, path=str(job))
    path = job / "results.json"
    if not path.exists():
        row["problem"] = "no results.json"
        return row
    try:
        res = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        row["problem"] = f"unreadable results.json ({e})"
        return row
    cfg = res.get("config") or {}
    if res.get("env") is not None:
        game = resolve_game(res["env"], ref)
        if game != folder_game:
            raise ValueError(f"{path} is a {game} run filed under the {folder_game} folder")
    wm = cfg.get("world_model") or {}
    row.update(seed=int(cfg.get("seed", row["seed"])),
               backbone=str(res.get("backbone") or wm.get("backbone") or "unknown"),
               budget=int(cfg.get("steps") or res.get("steps") or 0), protocol=res.get("protocol"), device=res.get("device"),
               train_wall_s=res.get("train_wall_s"), steps=res.get("steps"),
               noop_max=int(cfg["noop_max"]) if cfg.get("noop_max") is not None else UNKNOWN)
    if not res.get("finished"):
        row["problem"] = "results.json without finished: true"
        return row
    if res.get("eval_return") is None:
        row["problem"] = "finished results.json without eval_return"
        return row
    row.update(finished=True, eval_return=float(res["eval_return"]),
               eval_episodes=int(res.get("eval_episodes") or len(res.get("eval_returns") or [])))
    return row


def _config_groups(finished: pd.DataFrame) -> Dict[Tuple[str, int], int]:
    keys = finished[["backbone", "budget"]].astype(object).itertuples(index=False, name=None)
    groups: Dict[Tuple[str, int], int] = {}
    for k in keys:
        groups[k] = groups.get(k, 0) + 1
    return groups


def _describe(key) -> str:
    backbone, budget = key
    budget = f"{int(budget):,}" if budget is not None and not pd.isna(budget) else "unknown"
    return f"backbone {backbone!r} with {budget} steps"


# ----------------------------------------------------------------------------------------------
# Report

def _fmt(x, digits: int = 3) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return ""
    return f"{x:.{digits}f}"


def _fmt_ci(a: dict) -> str:
    return f"{a['estimate']:.3f} [{a['ci_low']:.3f}, {a['ci_high']:.3f}]"


def _number(x) -> str:
    """A protocol value as text: 0.25, 30, 100; other text as it is."""
    if isinstance(x, (int, float, np.integer, np.floating)) and not isinstance(x, bool):
        return f"{float(x):g}"
    return str(x)


def protocol_table(finished: pd.DataFrame, published: List[str], protocols: pd.DataFrame) -> List[dict]:
    """One row per evaluation protocol: rlts's (one per distinct protocol among the finished runs
    used, with its number of runs) and then each published agent's (all "unknown" if the
    protocol file has no row for it)."""
    rows = []
    if len(finished):
        seeds = finished.groupby("game")["seed"].count()
        seed_text = _number(seeds.iloc[0]) if seeds.nunique() == 1 else f"{seeds.min()}-{seeds.max()} per game"
        counts = Counter(zip(finished["noop_max"], finished["eval_episodes"]))
        for (noop, episodes), n in sorted(counts.items(), key=str):
            rows.append({"agent": AGENT, "runs": n, "sticky_actions": _number(ATARI_STICKY_ACTIONS),
                         "noop_max": _number(noop), "action_set": ATARI_ACTION_SET,
                         "eval_episodes": _number(episodes), "seeds": seed_text, "source": "results.json",
                         "notes": ""})
    for a in published:
        row = protocols.loc[a] if a in protocols.index else None
        rows.append({"agent": PUBLISHED_NAMES.get(a, a), "runs": None,
                     **{c: UNKNOWN if row is None or not str(row[c]).strip() else str(row[c]).strip()
                        for c in PROTOCOL_COLUMNS},
                     "source": "" if row is None else str(row.get("source", "")),
                     "notes": "" if row is None else str(row.get("notes", ""))})
    return rows


def report(out_dir: Union[str, Path], reps: int = 2000, backbone: Optional[str] = None,
           steps: Optional[int] = None, seed: int = 0, ref: Optional[pd.DataFrame] = None,
           protocols: Optional[pd.DataFrame] = None) -> dict:
    """Write report.md, report.csv, aggregates.csv, report.json, scores.png and profile.png into
    `out_dir`; return the report as a dict (see the module docstring). `ref` and `protocols`
    default to the shipped tables (`load_reference`, `load_protocols`)."""
    if reps < 1:
        raise ValueError(f"--reps (bootstrap resamples) must be at least 1, got {reps}")
    out = Path(out_dir)
    ref = load_reference() if ref is None else ref
    protocols = load_protocols() if protocols is None else protocols
    runs = collect_runs(out, ref)
    published = [c for c in ref.columns if c not in ("random", "human")]
    finished_all = runs[runs["finished"]]
    unfinished = runs[~runs["finished"]]

    # one configuration only: never average different backbones or step budgets
    groups = _config_groups(finished_all)
    chosen = [k for k in groups if (backbone is None or k[0] == backbone)
              and (steps is None or (k[1] is not None and int(k[1]) == int(steps)))]
    if not groups:
        chosen_key = None
    elif not chosen:
        raise ValueError(f"no finished runs in {out} with backbone={backbone!r}, steps={steps!r}; found: "
                         + "; ".join(f"{_describe(k)} ({n} runs)" for k, n in groups.items()))
    elif len(chosen) > 1:
        raise ValueError(f"the runs in {out} mix configurations that must not be averaged together: "
                         + "; ".join(f"{_describe(k)} ({groups[k]} runs)" for k in chosen)
                         + ". Report one at a time with backbone=... and steps=... .")
    else:
        chosen_key = chosen[0]
    if chosen_key is not None:
        in_group = (finished_all["backbone"].astype(object) == chosen_key[0]) & \
                   (finished_all["budget"].astype(object) == chosen_key[1])
    else:
        in_group = pd.Series(False, index=finished_all.index)
    finished = finished_all[in_group].copy()
    excluded = finished_all[~in_group]
    finished["hns"] = [human_normalized(s, g, ref) for s, g in zip(finished["eval_return"], finished["game"])]

    games = sorted(finished["game"].unique(), key=list(ref.index).index)
    n = len(games)
    over = f"over {n} of {N_GAMES} games"

    # partial?
    reasons: List[str] = []
    notes: List[str] = []
    if n < N_GAMES:
        missing = [g for g in ref.index if g not in games]
        reasons.append(f"{n} of {N_GAMES} games have a finished run; missing: {', '.join(missing)}")
    seeds_per_game = finished.groupby("game")["seed"].count().reindex(games)
    if n and seeds_per_game.nunique() > 1:
        by_count = {}
        for g, k in seeds_per_game.items():
            by_count.setdefault(int(k), []).append(g)
        reasons.append("games have different numbers of finished seeds: " + "; ".join(
            f"{k} seed(s): " + (", ".join(gs) if len(gs) <= 6 else f"{len(gs)} games")
            for k, gs in sorted(by_count.items())))
    if len(unfinished):
        reasons.append(f"{len(unfinished)} unfinished job(s), listed and left out of every number: "
                       + ", ".join(f"{g}/seed{s}" for g, s in zip(unfinished["game"], unfinished["seed"])))
    short = finished[finished["steps"].astype(float) < FULL_STEPS]
    if len(short):
        reasons.append(f"{len(short)} run(s) trained fewer than {FULL_STEPS:,} steps: "
                       + ", ".join(f"{g}/seed{s} ({int(k):,})" for g, s, k in
                                   zip(short["game"], short["seed"], short["steps"])))
    few = finished[finished["eval_episodes"].astype(float) < FULL_EVAL_EPISODES]
    if len(few):
        reasons.append(f"{len(few)} run(s) evaluated on fewer than {FULL_EVAL_EPISODES} final episodes: "
                       + ", ".join(f"{g}/seed{s} ({int(k)})" for g, s, k in
                                   zip(few["game"], few["seed"], few["eval_episodes"])))
    if len(excluded):
        reasons.append(f"{len(excluded)} finished run(s) of other configurations left out: "
                       + "; ".join(f"{_describe(k)} ({c} runs)" for k, c in groups.items() if k != chosen_key))
    run_protocols = sorted({p for p in finished["protocol"] if p is not None})
    if len(run_protocols) > 1:
        reasons.append("runs differ in their evaluation protocol: " + " | ".join(run_protocols))
    if n and int(seeds_per_game.max()) == 1:
        notes.append("one finished seed per game: the bootstrap intervals collapse to the point estimates "
                     "and say nothing about uncertainty")
    partial = bool(reasons)

    # per-game table
    per_game = []
    for g in games:
        sub = finished[finished["game"] == g]
        row = {"game": g, "seeds_finished": len(sub), "jobs": int((runs["game"] == g).sum()),
               "mean": float(sub["eval_return"].mean()),
               "std": float(sub["eval_return"].std(ddof=1)) if len(sub) > 1 else float("nan"),
               "hns": float(sub["hns"].mean()),
               "random": float(ref.at[g, "random"]), "human": float(ref.at[g, "human"])}
        for a in published:
            row[a] = float(ref.at[g, a])
        for a in published:
            row[f"{a}_hns"] = float(human_normalized(ref.at[g, a], g, ref))
        per_game.append(row)
    per_game_df = pd.DataFrame(per_game)

    # aggregates
    ours = [finished.loc[finished["game"] == g, "hns"].to_numpy() for g in games]
    aggregates = []
    if n:
        for name, fn in AGGREGATES.items():
            point, (low, high) = stratified_bootstrap_ci(ours, fn, reps=reps, seed=seed)
            aggregates.append({"agent": AGENT, "over": over, "n_games": n, "runs": int(len(finished)),
                               "metric": name, "estimate": point, "ci_low": low, "ci_high": high,
                               "published": float("nan")})
    pub_hns = {a: np.array([human_normalized(ref.at[g, a], g, ref) for g in ref.index]) for a in published}
    subsets = [(over, [list(ref.index).index(g) for g in games])] if n else []
    if n < N_GAMES:
        subsets.append((f"over all {N_GAMES} games", list(range(len(ref.index)))))
    for label, idx in subsets:
        for a in published:
            x = pub_hns[a][idx][None, :]          # one "run" (the published per-game mean) per game
            for name, fn in AGGREGATES.items():
                pub = float("nan")
                if len(idx) == N_GAMES and a in PUBLISHED_AGGREGATES and name in ("mean", "median"):
                    pub = PUBLISHED_AGGREGATES[a][0 if name == "mean" else 1]
                v = fn(x)
                aggregates.append({"agent": PUBLISHED_NAMES.get(a, a), "over": label, "n_games": len(idx),
                                   "runs": len(idx), "metric": name, "estimate": v, "ci_low": float("nan"),
                                   "ci_high": float("nan"), "published": pub})
    agg_df = pd.DataFrame(aggregates, columns=["agent", "over", "n_games", "runs", "metric", "estimate",
                                               "ci_low", "ci_high", "published"])

    # files
    files = {"report_md": out / "report.md", "report_csv": out / "report.csv",
             "aggregates_csv": out / "aggregates.csv", "report_json": out / "report.json",
             "scores_png": out / "scores.png", "profile_png": out / "profile.png"}
    per_game_df.to_csv(files["report_csv"], index=False)
    agg_df.to_csv(files["aggregates_csv"], index=False)
    taus = np.linspace(0.0, 8.0, 161)
    profile = None
    if n:
        point, (low, high) = stratified_bootstrap_ci(ours, lambda s: performance_profile(s, taus), reps=reps,
                                                     seed=seed)
        profile = {"tau": taus.tolist(), "fraction": np.asarray(point).tolist(),
                   "low": np.asarray(low).tolist(), "high": np.asarray(high).tolist()}
    _plot_scores(files["scores_png"], per_game_df, published, games, finished)
    _plot_profile(files["profile_png"], taus, profile, pub_hns, games, ref, over)

    result = {
        "out_dir": str(out), "partial": partial, "reasons": reasons, "notes": notes,
        "configuration": None if chosen_key is None else
        {"backbone": chosen_key[0], "steps": None if chosen_key[1] is None else int(chosen_key[1])},
        "games": games, "n_games": n, "n_games_total": N_GAMES, "over": over,
        "runs_used": int(len(finished)),
        "seeds_per_game": {g: int(k) for g, k in seeds_per_game.items()},
        "unfinished": [{"game": g, "seed": int(s), "path": p, "problem": q} for g, s, p, q in
                       zip(unfinished["game"], unfinished["seed"], unfinished["path"], unfinished["problem"])],
        "excluded": [{"game": g, "seed": int(s), "backbone": b, "steps": None if k is None else int(k), "path": p}
                     for g, s, b, k, p in zip(excluded["game"], excluded["seed"], excluded["backbone"],
                                              excluded["budget"], excluded["path"])],
        "protocols": run_protocols,
        "protocol_table": protocol_table(finished, published, protocols),
        "devices": sorted({str(d) for d in finished["device"] if d is not None}),
        "train_wall_s_total": float(finished["train_wall_s"].astype(float).sum()) if n else 0.0,
        "aggregates": _jsonable(agg_df.to_dict(orient="records")),
        "per_game": _jsonable(per_game_df.to_dict(orient="records")),
        "profile": profile,
        "bootstrap": {"reps": reps, "alpha": 0.05, "seed": seed, "method": "stratified by game, percentile"},
        "files": {k: str(v) for k, v in files.items()},
    }
    md = _markdown(result, per_game_df, agg_df, published, runs, excluded)
    result["markdown"] = md
    files["report_md"].write_text(md)
    files["report_json"].write_text(json.dumps(_jsonable({k: v for k, v in result.items() if k != "markdown"}),
                                               indent=2))
    return result


def _jsonable(obj):
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, (np.integer,)):
        return int(obj)
    if isinstance(obj, (float, np.floating)):
        return None if math.isnan(float(obj)) else float(obj)
    if isinstance(obj, np.bool_):
        return bool(obj)
    return obj


def _table(header: List[str], rows: List[List[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return "\n".join(lines + ["| " + " | ".join(r) + " |" for r in rows])


def _markdown(result: dict, per_game: pd.DataFrame, agg: pd.DataFrame, published: List[str],
              runs: pd.DataFrame, excluded: pd.DataFrame) -> str:
    conf = result["configuration"] or {}
    lines = [f"# Atari100k report: {result['out_dir']}", ""]
    if result["partial"]:
        lines += ["**PARTIAL RESULTS.** These numbers are not a full Atari100k result:", ""]
        lines += [f"- {r}" for r in result["reasons"]]
    else:
        lines += [f"**Complete:** all {N_GAMES} games, {next(iter(result['seeds_per_game'].values()))} finished "
                  f"seeds each, no unfinished jobs, {FULL_STEPS:,}+ steps and {FULL_EVAL_EPISODES}+ final "
                  "evaluation episodes per run."]
    lines += [f"- note: {t}" for t in result["notes"]]
    lines += ["", f"Configuration: world-model backbone `{conf.get('backbone')}`, "
              f"{conf.get('steps') or 0:,} steps; {result['runs_used']} finished runs used; "
              f"devices {', '.join(result['devices']) or '-'}; total training time "
              f"{result['train_wall_s_total'] / 3600:.1f} h."]
    if result["protocols"]:
        lines += ["Evaluation protocol: " + " | ".join(result["protocols"])]
    ours = agg[agg["agent"] == AGENT]
    lines += ["", f"## Aggregate human-normalised scores, {result['over']}", ""]
    rows = []
    if len(ours):
        rows.append([f"ours ({result['runs_used']} runs)"]
                    + [_fmt_ci(ours[ours["metric"] == m].iloc[0]) for m in AGGREGATES])
    for label in agg.loc[agg["agent"] != AGENT, "over"].unique():
        sub = agg[(agg["agent"] != AGENT) & (agg["over"] == label)]
        for a in sub["agent"].unique():
            s = sub[sub["agent"] == a].set_index("metric")
            cells = []
            for m in AGGREGATES:
                cell = _fmt(s.at[m, "estimate"])
                if not pd.isna(s.at[m, "published"]):
                    cell += f" (published {s.at[m, 'published']:.2f})"
                cells.append(cell)
            rows.append([f"{a}, per-game means {label}"] + cells)
    lines += [_table(["agent"] + [AGGREGATE_LABELS[m] for m in AGGREGATES], rows), ""]
    lines += ["Ours: point estimate [95 % stratified-bootstrap percentile interval, "
              f"{result['bootstrap']['reps']} replicates]. Optimality gap: lower is better (gamma = 1). "
              "Published agents: point aggregates of their published per-game means (no per-seed scores, no "
              "intervals; their IQM here is over per-game means, not runs)."]
    lines += ["", "## Evaluation protocols", ""]
    rows = []
    for p in result["protocol_table"]:
        name = f"ours ({p['runs']} runs)" if p["agent"] == AGENT else p["agent"]
        rows.append([name] + [p[c] for c in PROTOCOL_COLUMNS])
    lines += [_table(["agent"] + [PROTOCOL_LABELS[c] for c in PROTOCOL_COLUMNS], rows), ""]
    lines += ["Sticky actions: the probability that the emulator repeats the previous action; no-op starts: "
              "the most no-op actions at a reset (0: none); evaluation episodes: per seed. Scores of different "
              "protocols are not strictly comparable. Sources: tasks/data/atari100k_protocols.csv and "
              "tasks/data/ATARI100K_SOURCES.md.", ""]
    lines += [f"- {p['agent']}: {p['notes']}" for p in result["protocol_table"]
              if p["agent"] != AGENT and p["notes"]]
    lines += ["", "## Per game", ""]
    header = ["game", "seeds", "mean ± std", "HNS", "random", "human"] + [PUBLISHED_NAMES.get(a, a) for a in published]
    rows = []
    for r in per_game.to_dict(orient="records"):
        std = "" if math.isnan(r["std"]) else f" ± {r['std']:.1f}"
        rows.append([r["game"], f"{r['seeds_finished']}/{r['jobs']}", f"{r['mean']:.1f}{std}", f"{r['hns']:.3f}",
                     f"{r['random']:g}", f"{r['human']:g}"] + [f"{r[a]:g}" for a in published])
    lines += [_table(header, rows), "", "seeds: finished / job folders; std over seeds (ddof 1); "
              "HNS of the mean over seeds."]
    if result["unfinished"]:
        lines += ["", "## Unfinished jobs (not used in any number)", ""]
        lines += [f"- {u['game']}/seed{u['seed']}: {u['problem']} ({u['path']})" for u in result["unfinished"]]
    if len(excluded):
        lines += ["", "## Finished runs of other configurations (not used)", ""]
        lines += [f"- {e['game']}/seed{e['seed']}: backbone {e['backbone']!r}, {e['steps']} steps"
                  for e in result["excluded"]]
    lines += ["", "## Statistics", "",
              "HNS = (score - random) / (human - random); a run's score is its final evaluation's mean return. "
              "Mean and median: over games of the per-game mean over seeds. IQM: mean of all run x game scores "
              "pooled after removing floor(n/4) at each end (scipy.stats.trim_mean). Optimality gap: "
              "1 - mean(min(HNS, 1)) over all run x game scores. Intervals: stratified bootstrap (runs resampled "
              "with replacement within each game), 2.5 % and 97.5 % quantiles of the replicates "
              "(Agarwal et al. 2021). Files: report.csv, aggregates.csv, report.json, scores.png, profile.png.",
              ""]
    return "\n".join(lines)


def _figure(width: float, height: float):
    from matplotlib.figure import Figure
    return Figure(figsize=(width, height))


_HNS_TICKS = (-10, -5, -2, -1, -0.5, 0, 0.25, 0.5, 1, 2, 5, 10, 20, 50, 100)


def _plot_scores(path: Path, per_game: pd.DataFrame, published: List[str], games: List[str],
                 finished: pd.DataFrame):
    """scores.png: per game, the published agents' HNS and ours (mean and seeds); returns the figure."""
    fig = _figure(max(6.0, 0.45 * len(games) + 3) + 1.5, 4.5)
    ax = fig.add_subplot(1, 1, 1)
    x = np.arange(len(games))
    width = 0.8 / (len(published) + 1)
    for i, a in enumerate(published):
        ax.scatter(x + (i - len(published) / 2) * width, per_game[f"{a}_hns"] if len(games) else [],
                   s=14, marker="s", label=PUBLISHED_NAMES.get(a, a), alpha=0.7)
    if len(games):
        for j, g in enumerate(games):
            h = finished.loc[finished["game"] == g, "hns"].to_numpy()
            ax.scatter(np.full(h.size, j + len(published) / 2 * width), h, s=10, color="black", alpha=0.4)
        ax.scatter(x + len(published) / 2 * width, per_game["hns"], s=40, color="black", marker="*",
                   label="ours (mean; dots: seeds)")
    ax.axhline(0, color="grey", lw=0.5)
    ax.axhline(1, color="grey", lw=0.5, ls="--")
    ax.set_yscale("symlog", linthresh=1.0)
    lo, hi = ax.get_ylim()
    # headroom: the highest point sits below the next round value, never on the frame
    shown = [per_game[f"{a}_hns"] for a in published] + ([per_game["hns"], finished["hns"]] if len(games) else [])
    values = np.concatenate([np.asarray(v, dtype=float) for v in shown]) if shown else np.zeros(0)
    values = values[np.isfinite(values)]
    top = max(1.0, float(values.max()) if values.size else 1.0) * 1.25
    hi = min((t for t in _HNS_TICKS if t >= top), default=top)
    ax.set_ylim(lo, hi)
    ticks = [t for t in _HNS_TICKS if lo <= t <= hi]
    ax.set_yticks(ticks)
    ax.set_yticklabels([f"{t:g}" for t in ticks])
    ax.set_xticks(x)
    ax.set_xticklabels(games, rotation=60, ha="right", fontsize=8)
    ax.set_ylabel("human-normalised score (symlog)")
    ax.set_title("Atari100k per-game HNS")
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))  # beside the axes, off the points
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    return fig


def _plot_profile(path: Path, taus: np.ndarray, profile: Optional[dict], pub_hns: Dict[str, np.ndarray],
                  games: List[str], ref: pd.DataFrame, over: str) -> None:
    fig = _figure(6.5, 4.5)
    ax = fig.add_subplot(1, 1, 1)
    idx = [list(ref.index).index(g) for g in games]
    for a, h in pub_hns.items():
        ax.plot(taus, performance_profile(h[idx][None, :] if idx else h[None, :], taus), lw=1, alpha=0.8,
                label=f"{PUBLISHED_NAMES.get(a, a)} (per-game means)")
    if profile is not None:
        ax.plot(taus, profile["fraction"], color="black", lw=2, label="ours (runs)")
        ax.fill_between(taus, profile["low"], profile["high"], color="black", alpha=0.2, label="ours 95 % CI")
    ax.set_xlabel("human-normalised score tau")
    ax.set_ylabel("fraction with HNS > tau")
    ax.set_title(f"Performance profile, {over}" if idx else "Performance profile (published agents, 26 games)")
    ax.set_ylim(0, 1)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


@dataclass
class ReportConfig:
    """Settings of `rlts atari100k report`."""

    dir: str = ""
    """The benchmark folder written by `rlts atari100k run` (also the first argument:
    `rlts atari100k report DIR`); the report files are written into it."""
    reps: int = param(2000, within="[1, inf)")
    """Bootstrap resamples of the confidence intervals."""
    backbone: Optional[str] = None
    """Only runs of this world-model backbone (a folder put together from several runs may hold
    several; none: the folder must hold one)."""
    steps: Optional[int] = param(None, within="[1, inf)")
    """Only runs of this step budget (none: the folder must hold one)."""


def run_report(out_dir: str, reps: int = 2000, backbone: Optional[str] = None, steps: Optional[int] = None) -> dict:
    """`report` that also prints the Markdown report; returns the report dict."""
    result = report(out_dir, reps=reps, backbone=backbone, steps=steps)
    print(result["markdown"])
    return result


def report_command(cfg: ReportConfig) -> dict:
    """`rlts atari100k report DIR`."""
    if not cfg.dir:
        raise ValueError("give the benchmark folder: rlts atari100k report DIR")
    return run_report(cfg.dir, reps=cfg.reps, backbone=cfg.backbone, steps=cfg.steps)


COMMANDS = (Command("atari100k report", ReportConfig, None, report_command, positional="dir", trains=False,
                    help="human-normalised aggregates of an Atari100k run folder, with bootstrap CIs",
                    usage="rlts atari100k report DIR [--reps N] [--backbone NAME] [--steps N]"),)
