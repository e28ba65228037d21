"""Does the Drama world model learn from pixels? Record Atari frames of a random policy, train the
full-size (atari100k) world model alone on them for a wall-clock budget, and table its losses at
the start and at the end.

    python scripts/wm_pixels.py --minutes 60 --threads 1 --out runs/wm_pixels   # Pong and Breakout, 20k frames
    python scripts/wm_pixels.py --games Pong --frames 5000 --minutes 5 --threads 1 --out runs/wm_pong
    python scripts/wm_pixels.py --dry-run --out /tmp/wm_pixels                   # seconds: a check that it runs

Per game, two `rlts` commands:
1. `rlts record --env GAME --policy random --steps FRAMES --out OUT/GAME.npz` (64x64x3 uint8 frames, the
   world model's input); a file already there is reused;
2. `rlts atari --config wm_cpu --game GAME --dataset OUT/GAME.npz --minutes MINUTES --out OUT/GAME`: the
   world model alone on the recorded frames (tasks/configs/atari.yaml, `wm_cpu`: batches of 4 x 64
   steps), every update's losses in OUT/GAME/losses.csv and losses.png, the open-loop strip (real
   frames over the world model's prediction from 8 of them) in OUT/GAME/open_loop.png, TensorBoard in
   OUT/GAME/tb. Checkpoints resume it: a rerun continues up to the budget, a larger --minutes goes on.
OUT/summary.md (and .csv): per game the mean losses over the first and the last tenth of the logged
updates, the updates run and the seconds per update.

`--dry-run`: 100 frames per game and the debug overlay's tiny world model for 6 updates.
`--threads N`: torch's CPU threads (the budget's time per update depends on it).
"""
from __future__ import annotations

import argparse
import csv
import importlib.util
import json
import sys
from pathlib import Path
from typing import List, Optional

import torch

HERE = Path(__file__).resolve().parent
if importlib.util.find_spec("tasks") is None:  # not installed: run from the checkout
    sys.path.insert(0, str(HERE.parent))

from rlts.tasks.cli import main as rlts  # noqa: E402
from rlts.tracking import write_table  # noqa: E402

SUMMARY = ("wm/loss", "wm/reconstruction", "wm/reward", "wm/termination", "wm/kl")
"""The losses tabled at the start and the end."""
FULL = ["--config", "wm_cpu"]
"""The `rlts atari` options of the world-model run: the full-size world model, CPU-sized batches."""
DRY_RUN = ["--config", "debug", "--train", "world_model", "--steps", "6", "--log_every", "1", "--image_every", "3",
           "--checkpoint_every", "3"]
"""Those of --dry-run: the debug overlay's tiny world model, 6 updates."""


def parse_args(argv: Optional[List[str]]) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--games", default="Pong,Breakout", help="comma-separated Atari games (default: Pong,Breakout)")
    p.add_argument("--frames", type=int, default=20_000, help="frames recorded per game (default: 20000)")
    p.add_argument("--minutes", type=float, default=60.0, help="training budget per game in minutes (default: 60)")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    p.add_argument("--seed", type=int, default=0, help="seeds the recording and the training (default: 0)")
    p.add_argument("--device", default="cpu", help="cpu (default), cuda or auto")
    p.add_argument("--out", default="runs/wm_pixels", help="output folder (default: runs/wm_pixels)")
    p.add_argument("--dry-run", action="store_true", help="100 frames and a tiny world model: seconds")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    args = p.parse_args(argv)
    if args.frames < 1 or args.minutes < 0 or (args.threads is not None and args.threads < 1):
        p.error("--frames and --threads must be positive, --minutes at least 0")
    return args


def summary_row(game: str, run: Path) -> dict:
    """A game's row of the summary: mean losses over the first and the last tenth of its logged
    updates (losses.csv), updates and seconds per update (results.json)."""
    with open(run / "losses.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    res = json.loads((run / "results.json").read_text())
    k = max(1, len(rows) // 10)
    row = {"game": game, "frames": res["dataset_transitions"], "updates": res["updates"],
           "s_per_update": round(res["s_per_update"], 3), "minutes": round(res["train_wall_s"] / 60, 1)}
    for tag in SUMMARY:
        first = sum(float(r[tag]) for r in rows[:k]) / k
        last = sum(float(r[tag]) for r in rows[-k:]) / k
        row[tag.split("/", 1)[1]] = f"{first:.4g} -> {last:.4g}"
    return row


def main(argv: Optional[List[str]] = None) -> int:
    args = parse_args(argv)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    out = Path(args.out)
    frames = 100 if args.dry_run else args.frames
    progress = [] if not (args.no_progress or args.dry_run) else ["--progress", "false"]
    rows = []
    for game in [g.strip() for g in args.games.split(",") if g.strip()]:
        data = out / f"{game}.npz"
        if data.exists():
            print(f"wm_pixels: {game}: reusing {data}")
        elif rlts(["record", "--env", game, "--policy", "random", "--steps", str(frames), "--seed", str(args.seed),
                   "--out", str(data), *progress]) != 0:
            return 2
        train = ["atari", *(DRY_RUN if args.dry_run else FULL), "--game", game, "--dataset", str(data),
                 "--minutes", str(args.minutes), "--seed", str(args.seed), "--device", args.device,
                 "--out", str(out / game), *progress]
        if rlts(train) != 0:
            return 2
        rows.append(summary_row(game, out / game))
    if not rows:
        print("wm_pixels: no games given (--games)", file=sys.stderr)
        return 2
    md = write_table(rows, out / "summary.csv", out / "summary.md")
    print(f"\nwm_pixels: the world model's losses, mean of the first -> the last tenth of the logged updates "
          f"({'dry run' if args.dry_run else f'{args.minutes:g} min per game'}; {out / 'summary.md'})\n{md}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
