"""Run logging: TensorBoard scalars and images, a tqdm progress bar, and result tables.

    with RunLogger(run_dir, total=steps, initial=start, desc="train") as log:
        for step in range(start, steps):
            ...
            log.scalars(step, {"loss/total": loss})
            log.advance()
"""
from __future__ import annotations

import csv
import math
from pathlib import Path
from typing import Mapping, Sequence

import torch
from torch.utils.tensorboard import SummaryWriter
from tqdm.auto import tqdm


class RunLogger:
    def __init__(self, run_dir: str | Path, total: int | None = None, initial: int = 0,
                 desc: str = "", progress: bool = True):
        self.dir = Path(run_dir)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.writer = SummaryWriter(log_dir=str(self.dir / "tb"), purge_step=initial or None)
        self.bar = tqdm(total=total, initial=initial, desc=desc, dynamic_ncols=True, disable=not progress)

    def scalars(self, step: int, values: Mapping[str, float], show: Sequence[str] = ()) -> None:
        """Log each value under its tag; the tags in `show` also appear on the progress bar."""
        for tag, v in values.items():
            v = float(v.detach()) if isinstance(v, torch.Tensor) else float(v)
            if math.isfinite(v):
                self.writer.add_scalar(tag, v, step)
        if show:
            self.bar.set_postfix({k.split("/")[-1]: f"{float(values[k]):.4g}" for k in show}, refresh=False)

    def image(self, step: int, tag: str, img: torch.Tensor) -> None:
        """img: (3, H, W) or (H, W) with values in [0, 1]."""
        self.writer.add_image(tag, img.clamp(0, 1), step, dataformats="CHW" if img.dim() == 3 else "HW")

    def advance(self, n: int = 1) -> None:
        self.bar.update(n)

    def close(self, finished: bool = False) -> None:
        """Close the bar and the TensorBoard writer; `finished`: the work is done even if fewer
        steps ran than planned (early stopping), so the bar ends at 100 %."""
        if finished and self.bar.total is not None and self.bar.n < self.bar.total:
            self.bar.total = self.bar.n
            self.bar.refresh()
        self.bar.close()
        self.writer.close()

    def __enter__(self) -> "RunLogger":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def write_table(rows: Sequence[Mapping[str, object]], csv_path: str | Path, md_path: str | Path | None = None,
                floatfmt: str = ".4g") -> str:
    """Write rows (dicts with the same keys) as CSV and, if asked, Markdown; return the Markdown."""
    if not rows:
        raise ValueError("write_table: no rows to write")
    cols = list(rows[0].keys())
    with open(csv_path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=cols)
        w.writeheader()
        w.writerows(rows)

    def fmt(v: object) -> str:
        return format(v, floatfmt) if isinstance(v, float) else str(v)

    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    lines += ["| " + " | ".join(fmt(r[c]) for c in cols) + " |" for r in rows]
    md = "\n".join(lines) + "\n"
    if md_path is not None:
        Path(md_path).write_text(md)
    return md
