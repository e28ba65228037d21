"""`rlts atari100k`: the Atari100k benchmark as independent, resumable jobs, and its report.

    rlts atari100k run --games all --seeds 5 --out runs/a100k                 # 26 games x 5 seeds
    rlts atari100k run --games Pong,Breakout --seeds 1 --config debug --out runs/a100k-debug --jobs 2
    rlts atari100k report runs/a100k

`run` makes one job per (game, seed): an `rlts atari` run in `OUT/<Game>/seed<k>/` with its own
config, checkpoints (replay buffer included), TensorBoard log, `log.txt` and, once finished,
`results.json`. Each job is a separate process (`python -m rlts.tasks.cli atari ...`), up to `--jobs`
at a time, each with an equal share of the CPU threads. Jobs already finished are skipped, and
a job that was stopped resumes from its last checkpoint, so running the same command again
completes a benchmark on machines lent for short periods. A job's final score is the mean return of
`final_eval_episodes` (100 by default) greedy evaluation episodes after its last training step
(no life-loss signal, 108k-frame cap); `results.json` records the protocol and the episode count.

`report` aggregates whatever has finished (rlts.tasks.atari100k.report): per-game tables against the
random, human and published agents' scores, human-normalised aggregates with stratified
bootstrap confidence intervals, and plots; partial benchmarks are labelled as such.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import List, Optional, Sequence

from rlts.tasks.runner import Command
from rlts.tasks.runner import write_json_atomic
from rlts.tasks.rl.games import ATARI100K_GAMES, close_games, find_game


def parse_games(games: str) -> List[str]:
    """"all" or a comma-separated list, checked against the 26 Atari100k games (any spelling of
    rlts.tasks.rl.games.find_game: "Pong", "pong", "ms_pacman", "ALE/Pong-v5")."""
    if games.strip().lower() == "all":
        return list(ATARI100K_GAMES)
    out = []
    for name in (g.strip() for g in games.split(",") if g.strip()):
        game = find_game(name, ATARI100K_GAMES)
        if game is None:
            from rlts.tasks.rl.envs import is_atari

            near = close_games(name, ATARI100K_GAMES)
            extra = " (an Atari game, but not one of the 26 Atari100k games: run it with `rlts atari`)" \
                if is_atari(name) else ""
            hint = f"; did you mean {', '.join(near)}?" if near else f"; the 26 games: {', '.join(ATARI100K_GAMES)}"
            raise ValueError(f"unknown Atari100k game {name!r}{extra}{hint}")
        if game not in out:
            out.append(game)
    if not out:
        raise ValueError("--games is empty; give `all` or names such as Pong,Breakout")
    return out


def job_dir(out: Path, game: str, seed: int) -> Path:
    return out / game / f"seed{seed}"


def job_finished(folder: Path, steps: Optional[int]) -> bool:
    """True if the job folder holds a finished run (of at least `steps` steps, when given)."""
    path = folder / "results.json"
    if not path.is_file():
        return False
    try:
        res = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError):
        return False
    return bool(res.get("finished")) and (steps is None or int(res.get("steps", 0)) >= steps)


SETUP_KEYS = ("backbone", "config", "overrides")
"""Manifest keys every job of one folder shares: finished jobs are reused only under the same."""


def merge_manifest(out: Path, new: dict) -> dict:
    """The manifest of `out` after this command: a ValueError if the folder's jobs were run with
    another backbone, config or overrides (finished ones would otherwise be reported as runs of
    the new setup); games and seeds add up, so the manifest describes every job in the folder."""
    path = out / "atari100k.json"
    if not path.is_file():
        return new
    try:
        old = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"{path} exists but is not valid JSON ({e}); move it away or choose another --out") from None
    changed = [f"{k}: {old[k]!r} -> {new[k]!r}" for k in SETUP_KEYS if k in old and old[k] != new[k]]
    if changed:
        raise ValueError(f"{out} holds Atari100k jobs of another setup ({', '.join(changed)}); use another --out")
    games = list(old.get("games", [])) + [g for g in new["games"] if g not in old.get("games", [])]
    return {**new, "games": games, "seeds": max(int(old.get("seeds", 0)), new["seeds"])}


def job_command(game: str, seed: int, args: argparse.Namespace, folder: Path) -> List[str]:
    steps = ["--steps", str(args.steps)] if args.steps is not None else []
    return [sys.executable, "-m", "rlts.tasks.cli", "atari", "--config", args.config, "--game", game,
            "--seed", str(seed), *steps, "--world_model.backbone", args.backbone,
            "--device", args.device, "--progress", "false", "--out", str(folder), *args.overrides]


def run_jobs(args: argparse.Namespace) -> int:
    """Start every unfinished job, at most `jobs` at a time; 0 if all finished, else 1."""
    games = parse_games(args.games)
    if args.seeds < 1 or args.jobs < 1 or (args.steps is not None and args.steps < 1):
        raise ValueError(f"--seeds, --jobs and --steps must be >= 1, got {args.seeds}, {args.jobs}, {args.steps}")
    out = Path(args.out)
    from rlts.tasks.rl.loop import parse_rl_config  # a bad --config or override stops here, not inside every job
    parse_rl_config(["--config", args.config, *args.overrides], "atari.yaml")
    manifest = merge_manifest(out, {"games": games, "seeds": args.seeds, "steps": args.steps,
                                    "backbone": args.backbone, "config": args.config,
                                    "overrides": list(args.overrides)})
    out.mkdir(parents=True, exist_ok=True)
    write_json_atomic(manifest, out / "atari100k.json")
    todo = [(g, s) for g in games for s in range(args.seeds) if not job_finished(job_dir(out, g, s), args.steps)]
    done = len(games) * args.seeds - len(todo)
    print(f"rlts atari100k: {len(games)} games x {args.seeds} seeds = {len(games) * args.seeds} jobs; "
          f"{done} finished, {len(todo)} to run, {args.jobs} at a time -> {out}")
    threads = max(1, (os.cpu_count() or 1) // args.jobs)
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
    running: List[tuple] = []
    failed: List[str] = []

    def reap(block: bool) -> None:
        while running and (block or any(p.poll() is not None for p, *_ in running)):
            for item in list(running):
                proc, name, folder, start, log = item
                if proc.poll() is None:
                    continue
                running.remove(item)
                log.close()
                status = "done" if proc.returncode == 0 else f"FAILED (exit {proc.returncode}, see {folder / 'log.txt'})"
                if proc.returncode != 0:
                    failed.append(name)
                print(f"[{status}] {name} in {(time.time() - start) / 60:.1f} min")
            if block and running:
                time.sleep(1)

    for game, seed in todo:
        while len(running) >= args.jobs:
            reap(block=False)
            time.sleep(1)
        folder = job_dir(out, game, seed)
        folder.mkdir(parents=True, exist_ok=True)
        log = open(folder / "log.txt", "a")
        proc = subprocess.Popen(job_command(game, seed, args, folder), stdout=log, stderr=subprocess.STDOUT, env=env)
        running.append((proc, f"{game} seed {seed}", folder, time.time(), log))
        print(f"[start] {game} seed {seed}")
    reap(block=True)
    if failed:
        print(f"rlts atari100k: {len(failed)} job(s) failed: {', '.join(failed)}; run the same command again "
              "to retry them (finished jobs are skipped)", file=sys.stderr)
        return 1
    return 0


def add_arguments(p: argparse.ArgumentParser) -> None:
    sub = p.add_subparsers(dest="action", metavar="ACTION")
    r = sub.add_parser("run", help="run (or resume) one job per game and seed",
                       description="Run or resume the Atari100k jobs; extra `--key value` arguments go to every "
                                   "`rlts atari` job (keys of rlts.tasks.rl.loop.RLConfig).")
    r.add_argument("--games", default="all", help="all, or comma-separated game names (default: all)")
    r.add_argument("--seeds", type=int, default=5, help="seeds per game (default: 5)")
    r.add_argument("--steps", type=int, default=None,
                   help="agent steps per run (default: the config's: 100000 for atari100k, 200 for debug)")
    r.add_argument("--backbone", default="mamba2", help="world-model backbone (default: mamba2)")
    r.add_argument("--config", default="atari100k", help="atari100k (default) or debug")
    r.add_argument("--jobs", type=int, default=1, help="jobs run in parallel processes (default: 1)")
    r.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    r.add_argument("--out", required=True, help="the benchmark folder")
    rep = sub.add_parser("report", help="aggregate finished jobs into tables and plots")
    rep.add_argument("out", help="the benchmark folder")
    rep.add_argument("--reps", type=int, default=2000, help="bootstrap resamples (default: 2000)")
    rep.add_argument("--backbone", default=None,
                     help="only runs of this backbone (a folder put together from several runs may hold several)")
    rep.add_argument("--steps", type=int, default=None, help="only runs of this step budget")


def main(args: argparse.Namespace, overrides: Sequence[str] = ()) -> int:
    from rlts.tasks.runner import cli_main

    if args.action == "run":
        args.overrides = list(overrides)
        code = {"rc": 0}

        def go():
            code["rc"] = run_jobs(args)
        rc = cli_main("atari100k", go)
        return rc or code["rc"]
    if args.action == "report":
        if overrides:
            print(f"rlts atari100k report: error: unrecognized arguments: {' '.join(overrides)}", file=sys.stderr)
            return 2
        from rlts.tasks.atari100k.report import run_report

        return cli_main("atari100k", lambda: run_report(args.out, reps=args.reps, backbone=args.backbone,
                                                         steps=args.steps))
    print("rlts atari100k: give an action: run or report (see rlts atari100k --help)", file=sys.stderr)
    return 2


def _run_cli(argv: List[str]) -> int:
    p = argparse.ArgumentParser(prog="rlts atari100k run")
    add_arguments(p)
    args, overrides = p.parse_known_args(["run", *argv])
    return main(args, overrides)


COMMANDS = (Command("atari100k run", None, None, _run_cli,
                    help="run (or resume) the 26-game Atari100k benchmark as one job per game and seed"),)
