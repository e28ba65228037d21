import csv

import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from rlts.runtime import seed_everything, select_device
from rlts.tracking import RunLogger, write_table


def test_scalars_and_images_reach_tensorboard(tmp_path):
    with RunLogger(tmp_path, total=3, progress=False) as log:
        for step in range(3):
            log.scalars(step, {"loss/total": 1.0 / (step + 1), "loss/nan": float("nan")}, show=["loss/total"])
            log.advance()
        log.image(2, "frames/real", torch.rand(3, 8, 8))
    acc = EventAccumulator(str(tmp_path / "tb"))
    acc.Reload()
    values = [e.value for e in acc.Scalars("loss/total")]
    assert values == pytest.approx([1.0, 0.5, 1 / 3])
    assert "loss/nan" not in acc.Tags()["scalars"]  # non-finite values are skipped, not plotted
    assert acc.Tags()["images"] == ["frames/real"]


def test_write_table_csv_and_markdown(tmp_path):
    rows = [{"model": "aaren", "mse": 0.3812345}, {"model": "mamba", "mse": 0.4}]
    md = write_table(rows, tmp_path / "t.csv", tmp_path / "t.md")
    assert md.splitlines()[0] == "| model | mse |"
    assert "| aaren | 0.3812 |" in md and (tmp_path / "t.md").read_text() == md
    with open(tmp_path / "t.csv") as f:
        back = list(csv.DictReader(f))
    assert [r["model"] for r in back] == ["aaren", "mamba"] and float(back[0]["mse"]) == rows[0]["mse"]
    with pytest.raises(ValueError, match="no rows"):
        write_table([], tmp_path / "e.csv")


def test_seed_everything_repeats_draws():
    seed_everything(7)
    a = torch.randn(5)
    seed_everything(7)
    assert torch.equal(a, torch.randn(5))
    with pytest.raises(ValueError, match="seed must be a non-negative integer"):
        seed_everything(-1)


def test_select_device():
    assert select_device("cpu").type == "cpu"
    assert select_device("auto").type in ("cpu", "cuda")
    with pytest.raises(ValueError, match="unknown device 'gpu0'"):
        select_device("gpu0")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="CUDA is not available"):
            select_device("cuda")
