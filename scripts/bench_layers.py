"""Benchmark of the sequence layers (rlts.nn backbones), side by side in one run.

    python scripts/bench_layers.py [--preset small|full] [--backbones aaren,mamba,mamba2,transformer,gru]
                                   [--threads N] [--device cpu|cuda] [--out FILE.md]

1. Streaming inference, one token at a time, after a context of 1k, 8k and 64k tokens: time
   per token (median over `--steps` steps) and the bytes held by the state. Recurrent
   backbones reach the context by their parallel forward, in pieces of 8k tokens passing the
   state (the pieces contract); the Transformer's KV cache of the same length is filled
   with random keys and values (its step cost and memory do not depend on their values, and
   a 64k causal prefill would take minutes on a CPU). Target: Aaren and Mamba state memory
   independent of the context, per-token time flat.
2. Training throughput (tokens/s, forward + backward of a mean-square loss) at equal parameter
   count: each backbone's d_model is chosen so SequenceModel(n_layers=4) has as close as
   possible to `--params` parameters; L = 256 and 4096 at the same tokens per batch.
   Target: Aaren and Mamba at least 2x the Transformer's tokens/s at L = 4096 on the CPU.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _bench import Table, bench_device, fmt_bytes, machine_info, measure, verdict  # noqa: E402


from rlts.nn import SequenceModel, count_parameters, state_nbytes  # noqa: E402

RECURRENT = ("aaren", "mamba", "mamba2", "gru")
PRESETS = {
    "tiny": dict(contexts=[16, 64], steps=2, train_lengths=[16], tokens=64, params=60_000),  # for the tests
    "small": dict(contexts=[1024, 8192], steps=16, train_lengths=[256, 1024], tokens=4096, params=400_000),
    "full": dict(contexts=[1024, 8192, 65536], steps=32, train_lengths=[256, 4096], tokens=8192,
                 params=1_500_000),
}
# backbone options used throughout (kept small enough for CPU runs)
OPTIONS = {"aaren": dict(n_heads=4), "transformer": dict(n_heads=4), "mamba": dict(d_state=16),
           "mamba2": dict(d_state=16, headdim=32, chunk_size=64), "gru": {}}
WIDTHS = range(32, 1025, 16)  # candidate d_model: multiples of 16 suit every backbone (4 heads of even
# width; Mamba-2 d_inner = 2 d_model divisible by headdim 32)


def build(backbone: str, d_model: int, n_layers: int = 4, device: torch.device | str = "cpu") -> SequenceModel:
    return SequenceModel(backbone, d_model=d_model, n_layers=n_layers, **OPTIONS[backbone]).to(device).eval()


def width_for(backbone: str, params: int) -> int:
    """The d_model whose 4-layer model has the parameter count closest to `params`."""
    return min(WIDTHS, key=lambda d: abs(count_parameters(build(backbone, d)) - params))


@torch.no_grad()
def context_state(model: SequenceModel, backbone: str, L: int, piece: int = 8192):
    """State after L tokens (see the module docstring for the Transformer's cache), on the
    model's device."""
    device = next(model.parameters()).device
    if backbone == "transformer":
        states = []
        for layer in model.layers:
            H, Dh = layer.n_heads, layer.head_dim
            k, v = torch.randn(1, H, L, Dh, device=device), torch.randn(1, H, L, Dh, device=device)
            states.append((k, v, torch.full((1,), L, dtype=torch.long, device=device)))
        return states
    state = None
    for start in range(0, L, piece):
        _, state = model(torch.randn(1, min(piece, L - start), model.d_model, device=device), state)
    return state


@torch.no_grad()
def streaming(backbones, contexts, steps, d_model, device: torch.device) -> Table:
    table = Table(f"Streaming inference, one token at a time (d_model {d_model}, 4 layers, batch 1)",
                  ["backbone", "context", "ms / token", "state bytes", "time vs first", "state vs first"])
    for bb in backbones:
        torch.manual_seed(0)
        model = build(bb, d_model, device=device)
        first = None
        for L in contexts:
            state = context_state(model, bb, L)
            x = torch.randn(1, d_model, device=device)

            def one_step():
                model.step(x, state)  # the same state each time: per-token cost at context L

            t = measure(one_step, device, budget=0.3, max_repeats=steps)
            nbytes = state_nbytes(state)
            first = first or (t.ms, nbytes)
            flat = "" if bb not in ("aaren", "mamba", "mamba2") or L == contexts[0] else \
                " " + verdict(nbytes == first[1] and t.ms <= 1.5 * first[0])
            table.add(bb, L, f"{t.ms:.3f}", fmt_bytes(nbytes), f"{t.ms / first[0]:.2f}x" + flat,
                      f"{nbytes / first[1]:.2f}x")
    return table


def training(backbones, lengths, tokens, params, device: torch.device) -> tuple[Table, dict]:
    table = Table(f"Training throughput, forward + backward, ~{params:,} parameters each",
                  ["backbone", "d_model", "params", "L", "batch", "ms / step", "tokens/s"])
    rates = {}
    for bb in backbones:
        torch.manual_seed(0)
        d = width_for(bb, params)
        model = build(bb, d, device=device).train()
        for L in lengths:
            B = max(1, tokens // L)
            x = torch.randn(B, L, d, device=device)

            def train_step():
                y, _ = model(x)
                y.pow(2).mean().backward()

            t = measure(train_step, device, budget=1.0, min_repeats=2, max_repeats=10)
            rates[bb, L] = B * L / (t.ms / 1e3)
            table.add(bb, d, count_parameters(model), L, B, f"{t.ms:.1f}", f"{rates[bb, L]:,.0f}")
    return table, rates


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", choices=sorted(PRESETS), default="full")
    p.add_argument("--backbones", default="aaren,mamba,mamba2,transformer,gru")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--d-model", type=int, default=256, help="width for the streaming benchmark")
    p.add_argument("--device", default="cpu", help="cpu, cuda or auto (cuda when there is one)")
    p.add_argument("--out", type=Path, default=None, help="also write the tables as Markdown here")
    args = p.parse_args(argv)
    device = bench_device(args.device)
    cfg = PRESETS[args.preset]
    backbones = [b.strip() for b in args.backbones.split(",") if b.strip()]
    if args.threads:
        torch.set_num_threads(args.threads)

    header = machine_info(device) + [f"preset {args.preset}: {cfg}"]
    print("\n".join(header))
    stream = streaming(backbones, cfg["contexts"], cfg["steps"], args.d_model, device)
    print(f"\n{stream}")
    train, rates = training(backbones, cfg["train_lengths"], cfg["tokens"], cfg["params"], device)
    L = cfg["train_lengths"][-1]
    if "transformer" in backbones:
        for bb in ("aaren", "mamba", "mamba2"):
            if bb in backbones:
                r = rates[bb, L] / rates["transformer", L]
                train.notes.append(f"{bb} / transformer tokens/s at L={L}: {r:.2f}x {verdict(r >= 2)} (>=2x)")
    print(f"\n{train}")
    if args.out:
        args.out.write_text("\n".join(["```", *header, "```", "", stream.markdown(), train.markdown()]))
        print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
