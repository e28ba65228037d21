"""`rlts atari100k run`: the Atari100k benchmark as independent, resumable jobs.

    rlts atari100k run --games all --seeds 5 --out runs/a100k                 # 26 games x 5 seeds
    rlts atari100k run --games Pong,Breakout --seeds 1 --config debug --out runs/a100k-debug --jobs 2
    rlts atari100k run --games Pong --out runs/a100k-ev --job.eval_every 5000 --job.world_model.d_model 256
    rlts atari100k run --games all --out runs/a100k --gpus 0,1,2,3 --jobs_per_gpu 2   # 8 at a time
    rlts atari100k run --games all --out runs/a100k --launcher slurm --slurm.partition gpu --slurm.time 720
    rlts atari100k run --games all --out runs/a100k --launcher ray --ray.address auto --jobs_per_gpu 2
    rlts atari100k report runs/a100k

`run` makes one job per (game, seed): an `rlts atari` run in `OUT/<Game>/seed<k>/` with its own
config, checkpoints (replay buffer included), TensorBoard log, `log.txt` and, once finished,
`results.json`. Each job is a separate process (`python -m rlts.tasks.cli atari ...`), the same
command line wherever it runs; `--launcher` chooses where (rlts.tasks.atari100k.launch):

- local (the default): on this machine, `--jobs_per_gpu` jobs on each GPU of `--gpus` (every
  visible GPU by default; each job sees only its own, through CUDA_VISIBLE_DEVICES), or, without
  a GPU, `--jobs` at a time on the CPU; the CPU cores are shared out equally as threads;
- slurm: one Slurm job per job through submitit (pip install 'rlts[slurm]'), `--slurm.KEY value`
  for the partition, time limit, GPUs, CPUs and array parallelism; a preempted or timed-out job
  is requeued and resumes from its checkpoint;
- ray: one task per job on a Ray cluster (pip install 'rlts[ray]'; `--ray.address`, or a Ray
  started here), each with 1/jobs_per_gpu of a GPU where the cluster has GPUs; a job whose
  worker died is retried and resumes from its checkpoint.

`--config NAME` is the overlay of tasks/configs/atari.yaml every job runs with, and `--job.KEY
value` any other `rlts atari` key (rlts.tasks.rl.config.RLConfig) for every job. Jobs already
finished are skipped, and a job that was stopped resumes from its last checkpoint, so running the
same command again completes a benchmark on machines lent for short periods (not while jobs of an
earlier submission still run: two processes would write to one job folder). A job's final score
is the mean return of `final_eval_episodes` (100 by default) greedy evaluation episodes after its
last training step (no life-loss signal, 108k-frame cap); `results.json` records the protocol and
the episode count.

`report` aggregates whatever has finished (rlts.tasks.atari100k.report): per-game tables against the
random, human and published agents' scores, human-normalised aggregates with stratified
bootstrap confidence intervals, and plots; partial benchmarks are labelled as such.
"""
from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Tuple

from rlts.config import check_ranges, param
from rlts.tasks.atari100k import launch
from rlts.tasks.atari100k.launch import LAUNCHERS, Job, RayConfig, SlurmConfig
from rlts.tasks.runner import Command, write_json_atomic
from rlts.tasks.rl.config import parse_rl_config
from rlts.tasks.rl.games import ATARI100K_GAMES, close_games, find_game


@dataclass
class Atari100kRunConfig:
    """Settings of `rlts atari100k run`."""

    games: List[str] = param(default_factory=lambda: ["all"])
    """all, or Atari100k game names (Pong,Breakout; any spelling `rlts atari --game` takes). Commas
    split."""
    seeds: int = param(5, within="[1, inf)")
    """Seeds per game: jobs seed0 .. seed<N-1> of each game."""
    steps: Optional[int] = param(None, within="[1, inf)")
    """Agent steps per job (none: the overlay's: 100000 for atari100k, 200 for debug)."""
    backbone: str = "mamba2"
    """World-model backbone of every job (`rlts atari --world_model.backbone`)."""
    overlay: str = "atari100k"
    """The overlay of tasks/configs/atari.yaml every job runs with (`rlts atari --config NAME`):
    atari100k (Drama's protocol) or debug (CI-sized); spelled --config NAME."""
    job: Dict[str, Any] = param(default_factory=dict)
    """Other `rlts atari` keys (rlts.tasks.rl.config.RLConfig) for every job, each as --job.KEY
    value, nested ones as --job.SECTION.KEY value: --job.eval_every 5000 --job.world_model.d_model
    256 gives every job --eval_every 5000 --world_model.d_model 256. Checked before any job starts.
    The keys this command sets for each job are refused here (env, seed, out, progress), as are
    those it has a key for (config, steps, device, world_model.backbone: --config, --steps,
    --device, --backbone)."""
    launcher: str = param("local", choices=LAUNCHERS)
    """Where the jobs run: local (processes on this machine), slurm (one Slurm job each, through
    submitit: pip install 'rlts[slurm]') or ray (one Ray task each: pip install 'rlts[ray]')."""
    jobs: int = param(1, within="[1, inf)")
    """Local jobs on the CPU: jobs run at a time, each a process with an equal share of the CPU
    cores (with GPUs: --gpus and --jobs_per_gpu)."""
    gpus: Optional[List[int]] = param(None, within="[0, inf)")
    """Local jobs on GPUs: the GPUs they run on, as indices of the visible GPUs (0,1,2,3; those of
    an already-set CUDA_VISIBLE_DEVICES); none: every visible GPU. Each job sees only its own GPU."""
    jobs_per_gpu: int = param(1, within="[1, inf)")
    """Jobs sharing one GPU at a time (local and ray)."""
    device: str = "auto"
    """Device of every job: auto (a GPU where the job is given one, else the CPU), cpu or cuda.
    Each job sees only the GPU it is given, as cuda:0."""
    slurm: SlurmConfig = param(default_factory=SlurmConfig)
    """--launcher slurm: where and how long each Slurm job runs."""
    ray: RayConfig = param(default_factory=RayConfig)
    """--launcher ray: the cluster and each task's share of it."""
    out: Optional[str] = None
    """The benchmark folder (required): <Game>/seed<k>/ per job and atari100k.json; running the
    same command again resumes it."""


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


def job_args(job: Dict[str, Any], prefix: str = "") -> List[str]:
    """The `--job.KEY value` overrides as `rlts atari` arguments, in the order given:
    {"lr": "1e-4", "world_model": {"channels": ["4", "8"]}} -> --lr 1e-4 --world_model.channels 4 8."""
    args: List[str] = []
    for key, value in job.items():
        if isinstance(value, dict):
            args += job_args(value, f"{prefix}{key}.")
        else:
            values = value if isinstance(value, (list, tuple)) else [value]
            args += [f"--{prefix}{key}", *(_show(v) for v in values)]
    return args


OWN_KEYS = {"env": "--games", "game": "--games", "seed": "--seeds", "out": "--out", "progress": None,
            "config": "--config", "steps": "--steps", "device": "--device", "world_model.backbone": "--backbone"}
"""The `rlts atari` keys every job gets from this command (refused under --job), and the key of
this command that sets them."""


def _flat_keys(job: Dict[str, Any], prefix: str = "") -> List[str]:
    """The dotted keys of the `job` overrides: {"world_model": {"d_model": 8}} -> ["world_model.d_model"]."""
    keys: List[str] = []
    for key, value in job.items():
        keys += _flat_keys(value, f"{prefix}{key}.") if isinstance(value, dict) else [prefix + key]
    return keys


def _show(value: Any) -> str:
    """A value as the command line spells it (a YAML true as true, not True)."""
    return str(value).lower() if isinstance(value, bool) or value is None else str(value)


def job_command(game: str, seed: int, cfg: Atari100kRunConfig, folder: Path) -> List[str]:
    """The command line of one job: `python -m rlts.tasks.cli atari ...` with the overlay, game,
    seed, steps, backbone and device of `cfg`, then its `job` overrides."""
    steps = ["--steps", str(cfg.steps)] if cfg.steps is not None else []
    return [sys.executable, "-m", "rlts.tasks.cli", "atari", "--config", cfg.overlay, "--game", game,
            "--seed", str(seed), *steps, "--world_model.backbone", cfg.backbone,
            "--device", cfg.device, "--progress", "false", "--out", str(folder), *job_args(cfg.job)]


def run_jobs(cfg: Atari100kRunConfig) -> int:
    """Run every unfinished job through the launcher of `cfg`; 0 if all finished, else 1."""
    if not cfg.out:
        raise ValueError("give --out DIR: the benchmark folder (running the same command again resumes it)")
    if not isinstance(cfg.job, dict):
        raise ValueError(f"--job takes `rlts atari` keys as --job.KEY value (e.g. --job.eval_every 5000), "
                         f"got --job {cfg.job!r}")
    for key in _flat_keys(cfg.job):
        if key in OWN_KEYS:
            raise ValueError(f"--job.{key}: every job's {key} is set by `rlts atari100k run`"
                             + (f"; use {OWN_KEYS[key]}" if OWN_KEYS[key] else ""))
    games = parse_games(",".join(cfg.games))
    out = Path(cfg.out)
    try:  # a bad overlay or job key stops here, not inside every job
        check_ranges(parse_rl_config(job_command(games[0], 0, cfg, job_dir(out, games[0], 0))[4:], "atari.yaml"))
    except ValueError as e:
        raise ValueError(f"the jobs' `rlts atari` settings (--config, --job.KEY): {e}") from e
    where, start = plan_launch(cfg, out)
    overrides = job_args(cfg.job)
    manifest = merge_manifest(out, {"games": games, "seeds": cfg.seeds, "steps": cfg.steps,
                                    "backbone": cfg.backbone, "config": cfg.overlay, "overrides": overrides})
    out.mkdir(parents=True, exist_ok=True)
    write_json_atomic(manifest, out / "atari100k.json")
    todo = [(g, s) for g in games for s in range(cfg.seeds) if not job_finished(job_dir(out, g, s), cfg.steps)]
    done = len(games) * cfg.seeds - len(todo)
    print(f"rlts atari100k: {len(games)} games x {cfg.seeds} seeds = {len(games) * cfg.seeds} jobs; "
          f"{done} finished, {len(todo)} to run, {where} -> {out}")
    root = out.resolve()  # absolute folders: a job runs the same from whichever folder a node starts it in
    jobs = [Job(f"{game} seed {seed}", job_dir(root, game, seed),
                tuple(job_command(game, seed, cfg, job_dir(root, game, seed)))) for game, seed in todo]
    failed = start(jobs) if jobs else []
    if failed:
        print(f"rlts atari100k: {len(failed)} job(s) failed: {', '.join(failed)}; run the same command again "
              "to retry them (finished jobs are skipped)", file=sys.stderr)
        return 1
    return 0


def plan_launch(cfg: Atari100kRunConfig, out: Path) -> Tuple[str, Callable[[List[Job]], List[str]]]:
    """Where the jobs of `cfg` run, checked before anything is written: (the words that say so,
    the function that runs a list of jobs there and returns the names of the failed ones)."""
    if cfg.device not in ("auto", "cpu", "cuda"):
        hint = f"; choose the GPU with --gpus {cfg.device[5:]}" if cfg.device.startswith("cuda:") else ""
        raise ValueError(f"--device {cfg.device}: give auto, cpu or cuda (each job sees only the GPU it is "
                         f"given, as cuda:0){hint}")
    if cfg.launcher != "local":
        if cfg.gpus is not None:
            raise ValueError(f"--gpus places local jobs; with --launcher {cfg.launcher} the cluster gives each job "
                             + ("its GPUs (--slurm.gpus)" if cfg.launcher == "slurm" else
                                "a share of a GPU (--jobs_per_gpu)"))
        launch.import_engine(cfg.launcher)
    if cfg.launcher == "slurm":
        gpus = 0 if cfg.device == "cpu" else cfg.slurm.gpus
        return (f"as Slurm jobs ({gpus} GPU(s), {cfg.slurm.cpus} CPUs each)",
                lambda jobs: launch.run_slurm(jobs, cfg.slurm, out.resolve() / "slurm", gpus))
    if cfg.launcher == "ray":
        return (f"as Ray tasks ({cfg.ray.address or 'a Ray started here'})",
                lambda jobs: launch.run_ray(jobs, cfg.ray, cfg.jobs_per_gpu, cfg.device))
    gpus = launch.local_gpus(cfg.gpus, cfg.device)
    if gpus:
        return (f"{cfg.jobs_per_gpu} at a time on each GPU ({','.join(gpus)})",
                lambda jobs: launch.run_local(jobs, gpus, cfg.jobs_per_gpu))
    return f"{cfg.jobs} at a time", lambda jobs: launch.run_local(jobs, [], cfg.jobs)


COMMANDS = (Command("atari100k run", Atari100kRunConfig, None, run_jobs,
                    aliases={"--config": "--overlay", "--address": "--ray.address"},
                    lists=("games",), trains=False,
                    help="run (or resume) the 26-game Atari100k benchmark as one job per game and seed",
                    usage="rlts atari100k run --out DIR [--games G1,G2] [--seeds N] [--config NAME] "
                          "[--job.KEY value ...] [--gpus 0,1 --jobs_per_gpu K] [--launcher NAME]"),)
