"""Acting cost of return-conditioned policies: DecisionAaren against the Decision Transformer.

    python scripts/bench_decision.py [--steps 100,1000,3000] [--context 1000] [--threads N]
                                     [--device cpu|cuda] [--out FILE.md]

One episode is acted step by step (batch 1, HalfCheetah-sized: 17-d observations, 6-d
continuous actions; d_model 128, 3 layers, the Decision Transformer paper's size) with random
observations and rewards, and at each step in `--steps` we report the time of one env step
(act + observe_action: three tokens) as the median over `--repeats` steps ending there, and the
bytes of the acting state. Models, side by side in one run:

- aaren: DecisionAaren, a recurrent state of fixed size (the point of Aaren).
- mamba2, gru: the other recurrent backbones, for reference.
- transformer: the Decision Transformer with a KV cache over a sliding window of `--context`
  steps (3 * context - 2 tokens): our DT, and the strongest Transformer baseline there is.
- transformer (recompute): the DT as published acts by re-running the model over its last
  `--context` steps at every step (no cache): O(context^2) attention per step.
  Only measured up to `--recompute-max` steps (it is slow by design).

Targets: the acting state constant in the episode length, and per-step acting time
at least 3x lower than the Transformer's at 1000 steps of context.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _bench import Table, bench_device, fmt_bytes, machine_info, sync, verdict  # noqa: E402

from rlts.heads.decision import DecisionModel  # noqa: E402
from rlts.nn import state_nbytes  # noqa: E402

OBS_DIM, ACT_DIM = 17, 6  # HalfCheetah-v5


def build(backbone: str, d_model: int, n_layers: int, context: int, max_timestep: int, device) -> DecisionModel:
    torch.manual_seed(0)
    return DecisionModel((OBS_DIM,), act_dim=ACT_DIM, backbone=backbone, d_model=d_model, n_layers=n_layers,
                         context=context, max_timestep=max_timestep, dropout=0.0).to(device).eval()


@torch.no_grad()
def act_episode(model: DecisionModel, checkpoints, repeats: int, device, recompute: bool = False) -> dict:
    """Act until the last checkpoint; {step: (median ms per env step over the `repeats` steps
    ending there, state bytes there)}. recompute: re-run `forward` over the last `context`
    steps at every step (the published DT), instead of the recurrent step."""
    last = max(checkpoints)
    g = torch.Generator().manual_seed(0)
    obs = torch.randn(last, OBS_DIM, generator=g).to(device)          # (T, obs_dim)
    rewards = torch.rand(last, generator=g).to(device)                # (T,)
    acts = torch.zeros(last, ACT_DIM, device=device)                  # (T, act_dim)
    rtg = torch.zeros(last, device=device)                            # (T,)
    steps = torch.arange(last, device=device)                         # (T,)
    state, r, times, out = model.start(1, device), torch.tensor([100.0], device=device), [], {}
    K = model.context
    for t in range(last):
        rtg[t] = r[0]
        sync(device)
        t0 = time.perf_counter()
        if recompute:
            s = slice(max(0, t + 1 - K), t + 1)
            a = model(obs[None, s], acts[None, s], rtg[None, s], steps[None, s])[:, -1]   # (1, act_dim)
        else:
            a, state = model.act(obs[t:t + 1], r, steps[t:t + 1], state)                # (1, act_dim)
            state = model.observe_action(a, steps[t:t + 1], state)
        sync(device)
        times.append(time.perf_counter() - t0)
        acts[t] = a[0]
        r = r - rewards[t]
        if t + 1 in checkpoints:
            out[t + 1] = (1e3 * statistics.median(times[-repeats:]), 0 if recompute else state_nbytes(state))
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", default="100,1000,3000", help="episode steps at which to report")
    p.add_argument("--context", type=int, default=1000, help="the transformer's window in env steps")
    p.add_argument("--backbones", default="aaren,mamba2,gru,transformer")
    p.add_argument("--recompute-max", type=int, default=1000,
                   help="measure the recomputing DT up to this step (0: not at all)")
    p.add_argument("--repeats", type=int, default=50, help="steps per median")
    p.add_argument("--d-model", type=int, default=128)
    p.add_argument("--n-layers", type=int, default=3)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--device", default="cpu")
    p.add_argument("--out", type=Path, default=None, help="also write the table as Markdown here")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = bench_device(args.device)
    checkpoints = sorted({int(s) for s in args.steps.split(",")})
    backbones = [b.strip() for b in args.backbones.split(",") if b.strip()]
    header = machine_info(device) + [f"d_model {args.d_model}, {args.n_layers} layers, batch 1, "
                                     f"obs {OBS_DIM}, act {ACT_DIM}; transformer context {args.context} steps"]
    print("\n".join(header))

    rows = {}
    for bb in backbones:
        model = build(bb, args.d_model, args.n_layers, args.context, max(checkpoints), device)
        rows[bb] = act_episode(model, checkpoints, args.repeats, device)
        print(f"{bb}: {rows[bb]}", flush=True)
    if "transformer" in backbones and args.recompute_max > 0:
        model = build("transformer", args.d_model, args.n_layers, args.context, max(checkpoints), device)
        cps = [c for c in checkpoints if c <= args.recompute_max]
        if cps:
            rows["transformer (recompute)"] = act_episode(model, cps, args.repeats, device, recompute=True)
            print(f"transformer (recompute): {rows['transformer (recompute)']}", flush=True)

    table = Table(f"Acting one env step (act + observe_action), batch 1, {device.type}",
                  ["model", "episode step", "ms / step", "state bytes", "transformer ms / this ms"])
    for name, res in rows.items():
        for step, (ms, nbytes) in sorted(res.items()):
            ratio = ""
            if "transformer" in rows and step in rows["transformer"]:
                ratio = f"{rows['transformer'][step][0] / ms:.2f}x"
            table.add(name, step, f"{ms:.3f}", fmt_bytes(nbytes) if nbytes else "-", ratio)
    if "aaren" in rows:
        sizes = {b for _, b in rows["aaren"].values()}
        table.notes.append(f"aaren state constant over the episode: {verdict(len(sizes) == 1)}")
        for ref in ("transformer", "transformer (recompute)"):
            at = [c for c in rows.get(ref, {}) if c >= 1000]
            if at:
                c = min(at)
                r = rows[ref][c][0] / rows["aaren"][c][0]
                table.notes.append(f"{ref} / aaren ms per step at step {c}: {r:.2f}x {verdict(r >= 3)} (>= 3x)")
    print(f"\n{table}")
    if args.out:
        args.out.write_text("\n".join(["```", *header, "```", "", table.markdown()]))
        print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
