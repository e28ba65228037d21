"""Benchmark of streaming forecasts: the recurrent update against recomputing the window.

    python scripts/bench_stream.py [--preset tiny|full] [--backbones aaren,mamba2,gru]
                                   [--threads N] [--out FILE.md]

A forecaster with `rlts forecast`'s default shape (d_model 64, 2 layers, channel-independent,
horizon 96, a linear path over the whole look-back) follows the ETTh1 file (7 channels, scaled)
one row at a time, after a first window of L rows, L = 96 and 720, with patches of 16 rows (the
runner's default) and of 1 row:

* recurrent update: a model made for streaming (`running_span` = L) reads the first window
  with `start_stream`, then `update`s its state by one row for each of `--rows` rows (every
  row is timed);
* recompute: the same backbone with per-window RevIN re-reads the latest L rows for each new
  row (`forward`), what `rlts forecast stream` does for models not made for streaming; its
  cost does not depend on the position, so `--recompute-rows` rows spread over the same range
  are timed.

Reported per row: median and 99th-percentile milliseconds, and the bytes each keeps between
rows: the stream's state (`ForecastStream`: backbone states, the last patch and the linear
path's rows, the running sums), at the first and the last row (constant for recurrent
backbones), or the L-row window. Target: the recurrent update at least 5x faster than
recomputing at L = 720, its state constant. Random weights: the cost of a step does not depend
on them (the forecasts' accuracy is `rlts forecast --streaming true`'s business).
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _bench import Table, fmt_bytes, machine_info, write_report  # noqa: E402

from rlts.data.timeseries import StandardScaler, load_csv  # noqa: E402
from rlts.heads.forecast import SequenceForecaster  # noqa: E402

DATA = Path(__file__).resolve().parents[1] / "tasks" / "data" / "ETTh1.csv"
PRESETS = {
    "tiny": dict(lookbacks=[24, 48], patches=[4, 1], rows=40, recompute_rows=10, d_model=16),   # for the tests
    "full": dict(lookbacks=[96, 720], patches=[16, 1], rows=10_000, recompute_rows=500, d_model=64),
}
OPTIONS = {"aaren": {}, "mamba2": dict(headdim=16, d_state=16), "gru": {}, "mamba": dict(d_state=16)}
HORIZON = 96


def nbytes(obj) -> int:
    """Bytes of every tensor in a (nested) stream state."""
    if isinstance(obj, torch.Tensor):
        return obj.numel() * obj.element_size()
    if isinstance(obj, (list, tuple)):
        return sum(nbytes(o) for o in obj)
    return 0


def build(backbone: str, n_channels: int, lookback: int, patch: int, d_model: int, streaming: bool):
    extra = {"running_span": lookback, **({"decay": True} if backbone == "aaren" else {})} if streaming else {}
    return SequenceForecaster(n_channels, HORIZON, backbone, d_model=d_model, n_layers=2, patch_len=patch,
                              skip_window=lookback, **OPTIONS[backbone], **extra).eval()


@torch.no_grad()
def time_update(model, series: torch.Tensor, lookback: int, rows: int):
    """Per-row seconds of `update` over `rows` rows after the first window, and the state bytes
    at the first and the last row."""
    stream = model.start_stream(series[:, :lookback])
    first = nbytes(stream)
    times = np.empty(rows)
    for i in range(rows):
        row = series[:, lookback + i:lookback + i + 1]
        t0 = time.perf_counter()
        _, stream = model.update(stream, row)
        times[i] = time.perf_counter() - t0
    return times, first, nbytes(stream)


@torch.no_grad()
def time_recompute(model, series: torch.Tensor, lookback: int, rows: int, timed: int):
    """Per-row seconds of `forward` on the latest window, at `timed` rows spread over `rows`."""
    at = np.unique(np.linspace(0, rows - 1, timed).round().astype(int))
    model(series[:, :lookback])                                            # warm-up
    times = np.empty(len(at))
    for k, i in enumerate(at):
        window = series[:, i + 1:lookback + i + 1]
        t0 = time.perf_counter()
        model(window)
        times[k] = time.perf_counter() - t0
    return times


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--preset", choices=sorted(PRESETS), default="full")
    parser.add_argument("--backbones", default="aaren,mamba2,gru")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default 1: a per-row latency)")
    parser.add_argument("--out", default=None, help="also write the table as Markdown to this file")
    args = parser.parse_args(argv)
    preset = PRESETS[args.preset]
    torch.set_num_threads(args.threads)
    backbones = [b.strip() for b in args.backbones.split(",") if b.strip()]
    unknown = [b for b in backbones if b not in OPTIONS]
    if unknown:
        parser.error(f"unknown backbone {unknown[0]}; choose from {', '.join(OPTIONS)}")
    table = load_csv(DATA)
    values = StandardScaler().fit(table.values).transform(table.values).astype(np.float32)
    series = torch.from_numpy(values).unsqueeze(0)                                     # (1, T, 7)
    rows = min(preset["rows"], series.shape[1] - max(preset["lookbacks"]) - 1)

    title = (f"Streaming forecasts: {rows} rows of ETTh1 (7 channels, horizon {HORIZON}), one row at a time, "
             f"{args.threads} thread(s)")
    out = Table(title, ["backbone", "patch", "look-back", "update ms (median / p99)", "recompute ms (median / p99)",
                 "speed-up", "stream state (first / last row)", "window kept"])
    verdicts = []
    for lookback in preset["lookbacks"]:
        for patch in preset["patches"]:
            for backbone in backbones:
                torch.manual_seed(0)
                streaming = build(backbone, series.shape[2], lookback, patch, preset["d_model"], True)
                windowed = build(backbone, series.shape[2], lookback, patch, preset["d_model"], False)
                upd, first, last = time_update(streaming, series, lookback, rows)
                rec = time_recompute(windowed, series, lookback, rows, preset["recompute_rows"])
                speed = np.median(rec) / np.median(upd)
                out.add(backbone, patch, lookback, f"{1e3 * np.median(upd):.3f} / {1e3 * np.percentile(upd, 99):.3f}",
                        f"{1e3 * np.median(rec):.3f} / {1e3 * np.percentile(rec, 99):.3f}", f"{speed:.1f}x",
                        f"{fmt_bytes(first)} / {fmt_bytes(last)}", fmt_bytes(lookback * series.shape[2] * 4))
                if lookback == max(preset["lookbacks"]):
                    verdicts.append((backbone, patch, speed, first == last))
    out.notes.append(f"at look-back {max(preset['lookbacks'])}, the update against recomputing: " + ", ".join(
        f"{b} patch {p} {s:.1f}x{'' if const else ' (its state grew)'}" for b, p, s, const in verdicts))
    write_report(machine_info("cpu"), out, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
