"""The run skeleton every supervised runner shares: a results folder holding a grid of jobs
(model x variant, e.g. model x horizon), each run with one or several seeds.

    run = GridRun(cfg, "forecast", Path(cfg.csv).stem, file_keys=("csv",), header={"protocol": ...})
    for h in horizons:
        for name in models:
            run.job(name, str(h), f"{name} h={h}", folder=f"{name}-h{h}",
                    run_one=lambda seed, run_dir: {...metrics...}, metrics=("mse", "mae"))
    run.finish(rows, plots=...)     # results.json, results.csv, results.md

What it guarantees, the same for every runner:
- the folder is opened or resumed by `open_run`: a rerun with other result-defining settings
  or other input files is refused before anything is written;
- a finished job (in results.json's "results") is skipped; with `--seeds N` the finished seeds
  of an unfinished job are kept under "partial", so a killed run resumes at the next seed
  (and inside a seed at the Trainer's last checkpoint);
- a job's runs become one results entry (`summarise_runs`: mean and sample std over seeds);
- results.json is rewritten atomically after every job.
Folders: out/<folder> for a single seed, out/<folder>/seed<S> for each of several.
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence

from rlts.tracking import write_table
from rlts.tasks.runner import open_run, run_seeds, summarise_runs, write_json_atomic


class GridRun:
    """One supervised command's results folder and its jobs."""

    def __init__(self, cfg, command: str, stem: str, file_keys: Sequence[str] = (), header: Optional[dict] = None,
                 log: Callable[[str], None] = print):
        self.out, previous, cfg_dict = open_run(cfg, command, stem, file_keys=file_keys)
        self.previous: dict = previous
        """The results object an earlier run left in the folder ({} if none)."""
        self.path = self.out / "results.json"
        self.seeds: List[int] = [cfg.seed + k for k in range(cfg.seeds)]
        self.log = log
        self.state: dict = {"config": cfg_dict, **(header or {}),
                            "results": previous.get("results", {}), "partial": previous.get("partial", {})}
        log(f"[out] {self.out}")

    @property
    def results(self) -> dict:
        return self.state["results"]

    def seed_folder(self, folder: str, seed: int) -> Path:
        """Where one run of a job writes (checkpoints, TensorBoard)."""
        return self.out / folder if len(self.seeds) == 1 else self.out / folder / f"seed{seed}"

    def seed_note(self, seed: int) -> str:
        """", seed S" when runs have several seeds, else nothing: the end of a run's log lines."""
        return f", seed {seed}" if len(self.seeds) > 1 else ""

    def done(self, model: str, variant: Optional[str] = None) -> bool:
        entry = self.results.get(model)
        return entry is not None and (variant is None or variant in entry)

    def save(self) -> None:
        write_json_atomic(self.state, self.path)

    def job(self, model: str, variant: Optional[str], label: str, folder: str,
            run_one: Callable[[int, Path], dict], metrics: Sequence[str],
            extend: Optional[Callable[[dict, List[dict]], None]] = None) -> Optional[dict]:
        """Run job (model, variant) over the seeds unless results.json holds it; returns its entry
        (None when skipped). `run_one(seed, run_dir)` trains and scores one run and returns its
        metrics; `metrics` are those averaged over seeds; `extend(entry, runs)` adds what else a
        task keeps of several runs (e.g. the accuracy of their ensemble) before it is saved."""
        if self.done(model, variant):
            self.log(f"[skip] {label}: already in {self.path}")
            return None
        partial = self.state["partial"]

        def stored() -> list:
            entry = partial.get(model, [] if variant is None else {})
            return entry if variant is None else entry.get(variant, [])

        def save_partial(runs: List[dict]) -> None:
            if variant is None:
                partial[model] = runs
            else:
                partial.setdefault(model, {})[variant] = runs
            self.save()

        runs = run_seeds(self.seeds, stored(), lambda seed: run_one(seed, self.seed_folder(folder, seed)), save_partial)
        if variant is None:
            partial.pop(model, None)
        else:
            partial.get(model, {}).pop(variant, None)
            if not partial.get(model):  # no unfinished variant left for this model
                partial.pop(model, None)
        entry = summarise_runs(runs, metrics)
        if extend is not None and len(runs) > 1:
            extend(entry, runs)
        if variant is None:
            self.results[model] = entry
        else:
            self.results.setdefault(model, {})[variant] = entry
        self.save()
        if len(runs) > 1:
            shown = ", ".join(f"{m} {entry[m]:.4f} ± {entry[f'{m}_std']:.4f}" for m in metrics[:2]
                              if entry.get(m) is not None)
            self.log(f"[done] {label}: mean {shown} over seeds {self.seeds[0]}..{self.seeds[-1]}")
        return entry

    def finish(self, rows: List[Dict[str, object]]) -> str:
        """results.json, and the table `rows` as results.csv and results.md; returns the Markdown."""
        self.save()
        return write_table(rows, self.out / "results.csv", self.out / "results.md")
