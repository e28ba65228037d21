"""Bytes the replay buffer's checkpoints write over one `rlts atari` run: the whole buffer in
every checkpoint against appending only the steps added since the previous one.

    python scripts/bench_checkpoint.py [--config atari100k|debug] [--game Pong] [--dir DIR] [--out FILE.md]

The run's settings come from tasks/configs/atari.yaml (`--config atari100k`: 100k steps, a
100k-transition buffer, a checkpoint every 2,000 steps, 64x64x3 uint8 frames, one env). A buffer
of the frame shape of `--game` is filled step by step (uint8 frames cycled from a pool of random
ones: the files are not compressed, so their content does not matter) and checkpointed on the
loop's cadence: whenever `step % checkpoint_every < num_envs`, then once more at the end, for the
final evaluation's checkpoint. No model is trained: the buffer's bytes do not depend on it.

Two schemes, on the same buffer:
* whole buffer: `ReplayBuffer.state_dict()` in every checkpoint (serialised into a byte counter,
  not to disk);
* incremental: `ReplayFiles` (rlts.world_models.replay), a chunk file of the new steps per
  checkpoint plus its index (pointers and sampling counters, stored in last.pt), written for
  real under `--dir` (a temporary folder, removed afterwards).

Reported per buffer capacity (the run's, and half of it, where the ring overwrites): checkpoints,
bytes written by the buffer's part of the checkpoints, the final buffer's size (its state_dict),
their ratio (target: at most 1.5x for the incremental scheme), the replay files on disk at the
end, and the incremental save's time. The rest of last.pt (models, optimisers, RNG states) is
the same in both schemes; its size is given below the table. `--config debug` is a 600-step
check that the script runs (seconds on a CPU).
"""
from __future__ import annotations

import argparse
import importlib.util
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

HERE = Path(__file__).resolve().parent
if str(HERE) not in sys.path:
    sys.path.insert(0, str(HERE))
if importlib.util.find_spec("tasks") is None:  # not installed: run from the checkout
    sys.path.insert(0, str(HERE.parent))

from _bench import Table, fmt_bytes, machine_info, write_report  # noqa: E402

from rlts.tasks.rl.config import parse_rl_config  # noqa: E402
from rlts.tasks.rl.envs import env_spec, make_env  # noqa: E402
from rlts.tasks.rl.loop import env_kwargs, learner_config  # noqa: E402
from rlts.world_models.learner import Learner  # noqa: E402
from rlts.world_models.replay import ReplayBuffer, ReplayFiles  # noqa: E402

CONFIGS = {"atari100k": [], "debug": ["--steps", "600", "--buffer_size", "600"]}
TARGET = 1.5


class ByteCounter:
    """A write-only file that counts the bytes torch.save writes into it."""

    def __init__(self):
        self.n = 0

    def write(self, b) -> int:
        self.n += len(b)
        return len(b)

    def flush(self) -> None:
        pass


def saved_bytes(obj) -> int:
    """Bytes of torch.save(obj)."""
    counter = ByteCounter()
    torch.save(obj, counter)
    return counter.n


def run(cfg, obs_shape: tuple, capacity: int, directory: Path) -> dict:
    """Fill a buffer of `capacity` for cfg.steps steps, checkpointing it both ways on the loop's
    cadence; bytes written, save times and what is left on disk."""
    n = cfg.num_envs
    buf = ReplayBuffer(capacity, n, obs_shape, torch.uint8)
    files = ReplayFiles(directory)
    pool = torch.randint(0, 256, (64, n, *obs_shape), dtype=torch.uint8)  # (P, N, *obs_shape)
    action, reward, flag = np.zeros(n, np.int64), np.zeros(n, np.float32), np.zeros(n, bool)
    whole = index_bytes = saves = 0
    times = []

    def save() -> None:
        nonlocal whole, index_bytes, saves
        whole += saved_bytes(buf.state_dict())
        t0 = time.perf_counter()
        index = files.write(buf)
        index_bytes_now = saved_bytes(index)  # the index is part of last.pt
        files.commit(index)  # in the loop: after last.pt is saved
        times.append(time.perf_counter() - t0)
        index_bytes += index_bytes_now
        saves += 1

    steps = 0
    while steps < cfg.steps:
        buf.add(pool[(steps // n) % len(pool)], action, reward, flag)
        steps += n
        if steps % cfg.checkpoint_every < n or steps >= cfg.steps:
            save()
    save()  # the final evaluation's checkpoint
    final = saved_bytes(buf.state_dict())
    on_disk = sum(p.stat().st_size for p in directory.iterdir()) + saved_bytes(files.write(buf))
    return {"saves": saves, "whole": whole, "incremental": files.bytes_written + index_bytes,
            "chunks": files.bytes_written, "final": final, "on_disk": on_disk, "times": np.array(times)}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--config", choices=sorted(CONFIGS), default="atari100k")
    parser.add_argument("--game", default="Pong")
    parser.add_argument("--dir", default=None, help="folder for the replay files (default: the system's temp)")
    parser.add_argument("--out", default=None, help="also write the table as Markdown to this file")
    args = parser.parse_args(argv)
    cfg = parse_rl_config(["--config", args.config, "--game", args.game, *CONFIGS[args.config]], "atari.yaml")
    env = make_env(cfg.env, **env_kwargs(cfg))
    spec = env_spec(env)
    env.close()
    learner = Learner(spec.obs_shape, spec.n_actions, learner_config(cfg), torch.device("cpu"))
    rest = saved_bytes(learner.state_dict())
    del learner

    title = (f"Replay checkpoints of one `rlts atari --config {args.config}` run: {cfg.steps:,} steps, "
             f"{cfg.num_envs} env(s), a checkpoint every {cfg.checkpoint_every:,} steps, frames "
             f"{'x'.join(map(str, spec.obs_shape))} uint8")
    table = Table(title, ["buffer capacity", "scheme", "checkpoints", "bytes written", "final buffer",
                          "written / final", "replay files at the end", "save s (mean / max)"])
    verdicts = []
    wall = time.perf_counter()
    for capacity in (cfg.buffer_size, cfg.buffer_size // 2):
        with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
            r = run(cfg, spec.obs_shape, capacity, Path(tmp) / "replay")
        label = f"{capacity:,}" + (" (ring wraps)" if capacity < cfg.steps else "")
        table.add(label, "whole buffer", r["saves"], fmt_bytes(r["whole"]), fmt_bytes(r["final"]),
                  f"{r['whole'] / r['final']:.2f}x", "-", "-")
        ratio = r["incremental"] / r["final"]
        table.add(label, "incremental", r["saves"], fmt_bytes(r["incremental"]), fmt_bytes(r["final"]),
                  f"{ratio:.2f}x", fmt_bytes(r["on_disk"]),
                  f"{r['times'].mean():.3f} / {r['times'].max():.3f}")
        if capacity >= cfg.steps:
            verdicts.append(f"incremental {ratio:.2f}x the final buffer ({'PASS' if ratio <= TARGET else 'FAIL'}: "
                            f"target <= {TARGET}x), whole buffer {r['whole'] / r['final']:.1f}x")
    table.notes.append("bytes written: the buffer's part of every checkpoint (incremental: the chunk files "
                       "and the index in last.pt); with the ring, steps overwritten before a checkpoint are "
                       "never written")
    table.notes.append(f"the rest of last.pt (models, optimisers) is {fmt_bytes(rest)} per checkpoint in both "
                       "schemes, not counted above")
    table.notes.append("at the run's capacity: " + "; ".join(verdicts))
    table.notes.append(f"whole benchmark {time.perf_counter() - wall:.0f} s")
    write_report(machine_info("cpu"), table, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
