"""Speed of the Drama agent at the full Atari100k settings: environment steps per second and the
projected wall time of one 100k-step run, per world-model backbone, side by side in one run.

    python scripts/bench_drama.py [--device auto|cpu|cuda] [--backbones mamba2,mamba,aaren,transformer,gru]
                                  [--game Pong] [--repeats 3] [--threads N] [--out FILE.md]
                                  [--config atari100k|debug]

One training step of `rlts atari --config atari100k` is: act (encode the frame, one recurrent
step of the sequence model, sample an action), step the emulator, one world-model update
(16 x 128 frames, DFS sampling) and one actor-critic update (1024 imagined rollouts x 16 steps
from 8 real frames). Each part is timed on its own (medians over `repeats` calls after a
warm-up) on a replay buffer filled with real frames of `game`; a run is 1032 random steps
(emulator only) plus 98,968 training steps, the periodic and final evaluations excluded.
`--config debug` measures the tiny debug overlay instead (a check that the benchmark runs, in
seconds on a CPU; its figures say nothing about the real settings).
"""
from __future__ import annotations

import argparse
import importlib.util
import sys
from pathlib import Path

import numpy as np
import torch

HERE = Path(__file__).resolve().parent
if str(HERE) not in sys.path:
    sys.path.insert(0, str(HERE))
if importlib.util.find_spec("tasks") is None:  # not installed: run from the checkout
    sys.path.insert(0, str(HERE.parent))

from _bench import Table, bench_device, machine_info, measure, sync  # noqa: E402

from rlts.nn import count_parameters  # noqa: E402
from rlts.tasks.rl.envs import env_spec, make_env  # noqa: E402
from rlts.tasks.rl.config import parse_rl_config  # noqa: E402
from rlts.tasks.rl.loop import learner_config  # noqa: E402
from rlts.world_models.learner import Learner  # noqa: E402
from rlts.world_models.replay import ReplayBuffer  # noqa: E402


def fill_buffer(cfg, spec, device, game: str) -> ReplayBuffer:
    """A buffer with `random_steps` real frames of `game` under random actions."""
    env = make_env(game)
    buf = ReplayBuffer(cfg.buffer_size, 1, spec.obs_shape, torch.uint8, device=device)
    obs, _ = env.reset(seed=0)
    rng = np.random.default_rng(0)
    for _ in range(cfg.random_steps):
        a = int(rng.integers(spec.n_actions))
        nxt, r, term, trunc, info = env.step(a)
        buf.add(obs[None], [a], [r], [term or info["life_loss"]])
        obs = env.reset()[0] if term or trunc else nxt
    return buf


def bench_backbone(backbone: str, args, device) -> dict:
    cfg = parse_rl_config(["--config", args.config, "--env", args.game, "--world_model.backbone", backbone],
                          "atari.yaml")
    env = make_env(args.game)
    spec = env_spec(env)
    torch.manual_seed(0)
    learner = Learner(spec.obs_shape, spec.n_actions, learner_config(cfg), device)
    buf = fill_buffer(cfg, spec, device, args.game)
    wm, ac = learner.wm, learner.ac
    obs, _ = env.reset(seed=0)
    frame = torch.as_tensor(obs[None], device=device)
    state = wm.initial_state(1, device)

    def act():
        nonlocal state
        feat = wm.observe(frame, state[0])
        a = ac.policy(feat)
        state = wm.advance(feat, a, state[1])
        sync(device)

    def env_step():
        o, r, term, trunc, _ = env.step(int(np.random.randint(spec.n_actions)))
        if term or trunc:
            env.reset()

    def wm_update():
        learner.update_world_model(buf)
        sync(device)

    def ac_update():
        learner.update_actor_critic(buf)
        sync(device)

    kw = dict(budget=0.0, min_repeats=args.repeats, max_repeats=args.repeats, min_sample=0.0)
    t = {"act": measure(act, device, **kw).seconds, "env": measure(env_step, "cpu", budget=0.5).seconds,
         "wm": measure(wm_update, device, **kw).seconds, "ac": measure(ac_update, device, **kw).seconds}
    step = sum(t.values())
    run_s = cfg.random_steps * t["env"] + (100_000 - cfg.random_steps) * step
    return {"backbone": backbone, "params": count_parameters(wm), **t, "step": step, "fps": 1.0 / step,
            "run_h": run_s / 3600}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=" ".join(__doc__.split("\n\n")[0].split()))
    p.add_argument("--device", default="auto")
    p.add_argument("--backbones", default="mamba2,mamba,aaren,transformer,gru")
    p.add_argument("--game", default="Pong")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    p.add_argument("--out", default=None, help="also write the table as Markdown here")
    p.add_argument("--config", default="atari100k",
                   help="overlay of tasks/configs/atari.yaml to measure (debug: tiny, a seconds-long check)")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = bench_device(args.device)
    header = machine_info(device)
    print("\n".join(header))
    rows = [bench_backbone(b.strip(), args, device) for b in args.backbones.split(",") if b.strip()]
    base = rows[0]
    table = Table(f"Drama, --config {args.config}, {args.game}, {device.type}", ["backbone", "WM params", "act ms", "env ms", "WM update ms", "AC update ms", "step ms",
                   "env steps/s", f"vs {base['backbone']}", "100k run (h)"])
    for r in rows:
        table.add(r["backbone"], f"{r['params']:,}", f"{r['act'] * 1e3:.1f}", f"{r['env'] * 1e3:.2f}",
                  f"{r['wm'] * 1e3:.0f}", f"{r['ac'] * 1e3:.0f}", f"{r['step'] * 1e3:.0f}", f"{r['fps']:.2f}",
                  f"{base['step'] / r['step']:.2f}x", f"{r['run_h']:.1f}")
    print(table)
    if args.out:
        Path(args.out).write_text("\n".join(f"- {h}" for h in header) + "\n\n" + table.markdown())
    return 0


if __name__ == "__main__":
    sys.exit(main())
