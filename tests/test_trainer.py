import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch
from torch import nn
from torch.utils.data import TensorDataset

from rlts.checkpoint import load
from rlts.trainer import TrainConfig, Trainer, check_train_config

ROOT = Path(__file__).resolve().parents[1]


def _data(n=64, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 3, generator=g, dtype=torch.float64)
    y = x @ torch.tensor([[1.0], [-2.0], [0.5]], dtype=torch.float64) + 0.1 * torch.randn(n, 1, generator=g,
                                                                                             dtype=torch.float64)
    return TensorDataset(x, y)


def mse(model, batch):
    x, y = batch
    err = model(x) - y
    return err.pow(2).mean(), {"mae": err.abs().mean().item()}


def _model(dropout=0.0):
    torch.manual_seed(1)
    return nn.Sequential(nn.Linear(3, 16), nn.Dropout(dropout), nn.Tanh(), nn.Linear(16, 1)).double()


def _params(model):
    return torch.cat([p.detach().flatten() for p in model.parameters()])


def test_fit_learns_and_reports_metrics(tmp_path):
    tr = Trainer(_model(), mse, TrainConfig(epochs=30, batch_size=8, lr=3e-2, progress=False), tmp_path)
    before = tr.evaluate(_data(32, seed=1))
    out = tr.fit(_data(), _data(32, seed=1))
    after = tr.evaluate(_data(32, seed=1))
    assert after["loss"] < 0.2 * before["loss"] and set(after) == {"loss", "mae"}
    assert out["best_val_loss"] == pytest.approx(after["loss"])  # best weights restored
    assert (tmp_path / "checkpoints" / "last.pt").exists() and any((tmp_path / "tb").iterdir())


def test_early_stopping_stops_after_patience(tmp_path):
    cfg = TrainConfig(epochs=50, batch_size=8, lr=0.0, patience=2, progress=False)  # nothing improves
    out = Trainer(_model(), mse, cfg, tmp_path).fit(_data(), _data(32, seed=1))
    assert out["early_stopped"] and out["epochs"] == 3  # epoch 1 sets the best, 2 and 3 do not improve


class _Kill(Exception):
    pass


def test_lr_decays_per_epoch(tmp_path):
    cfg = TrainConfig(epochs=3, batch_size=8, lr=1e-2, lr_decay=0.5, patience=0, progress=False)
    tr = Trainer(_model(), mse, cfg, tmp_path)
    tr.fit(_data(), _data(16, seed=1))
    assert tr.opt.param_groups[0]["lr"] == pytest.approx(1e-2 * 0.5 ** 3)
    with pytest.raises(ValueError, match=r"lr_decay must lie in \(0, 1\], got 0"):
        Trainer(_model(), mse, TrainConfig(lr_decay=0.0, progress=False), tmp_path / "z").fit(_data())


def _recorded_epochs(cfg: TrainConfig, run_dir, n_epochs: int):
    """Fit with a loss function that records every step: (the trainer, each epoch's mean
    training loss by a plain loop, the weights at the end of each epoch, the lr of each epoch)."""
    losses, starts, lrs = [], [], []
    trainer = None

    def recording(model, batch):
        if model.training:
            starts.append(_params(model).clone())  # the weights before this step
            lrs.append(trainer.opt.param_groups[0]["lr"])
        loss, metrics = mse(model, batch)
        if model.training:
            losses.append(loss.item())
        return loss, metrics

    trainer = Trainer(_model(), recording, cfg, run_dir)
    trainer.fit(_data())
    per_epoch = len(losses) // n_epochs  # 64 examples in batches of 8: equal batches, a plain mean
    means = [sum(losses[e * per_epoch:(e + 1) * per_epoch]) / per_epoch for e in range(n_epochs)]
    ends = [starts[(e + 1) * per_epoch] for e in range(n_epochs - 1)] + [None]
    return trainer, means, ends, lrs[::per_epoch]


def test_monitor_train_returns_the_weights_of_the_epoch_with_the_lowest_training_loss(tmp_path):
    base = dict(epochs=8, batch_size=8, lr=1.0, patience=0, progress=False)  # a large lr: the loss jumps
    _, means, ends, _ = _recorded_epochs(TrainConfig(**base), tmp_path / "plain", 8)
    best = min(range(8), key=means.__getitem__)
    assert best < 7, "the test needs a run whose last epoch is not its best"
    tr = Trainer(_model(), mse, TrainConfig(**base, monitor="train"), tmp_path / "train")
    out = tr.fit(_data())
    assert out["best_train_loss"] == pytest.approx(means[best], rel=1e-12)
    assert torch.equal(_params(tr.model), ends[best])  # selection does not change training
    assert out["best_val_loss"] == float("inf") and out["epochs"] == 8


def test_plateau_cuts_the_lr_after_patience_epochs_without_a_better_loss(tmp_path):
    """Reference: the plateau rule as documented for torch's ReduceLROnPlateau (mode min,
    relative threshold 1e-4), run by a plain loop over the epoch losses of the same run."""
    patience, factor, floor, lr = 1, 0.5, 0.05, 0.3
    cfg = TrainConfig(epochs=10, batch_size=8, lr=lr, patience=0, progress=False, monitor="train",
                      plateau_patience=patience, plateau_factor=factor, min_lr=floor)
    _, means, _, lrs = _recorded_epochs(cfg, tmp_path, 10)
    expected, best, bad = [lr], float("inf"), 0
    for m in means[:-1]:
        if m < best * (1 - 1e-4):
            best, bad = m, 0
        else:
            bad += 1
        if bad > patience:
            lr, bad = max(lr * factor, floor), 0
        expected.append(lr)
    assert lrs == pytest.approx(expected, rel=1e-12)
    assert expected[-1] < expected[0]  # the run did hit a plateau
    with pytest.raises(ValueError, match="unknown TrainConfig.monitor 'test'; use one of val, train"):
        Trainer(_model(), mse, TrainConfig(monitor="test", progress=False), tmp_path / "z").fit(_data())
    with pytest.raises(ValueError, match="plateau_factor must lie in \\(0, 1\\), got 1.5"):
        Trainer(_model(), mse, TrainConfig(plateau_patience=2, plateau_factor=1.5, progress=False),
                tmp_path / "y").fit(_data())


@pytest.mark.parametrize("extra", [dict(ema=0.0), dict(ema=0.9),
                                   dict(lr=1.0, monitor="train", plateau_patience=1)])
def test_resume_after_kill_mid_epoch_equals_uninterrupted(tmp_path, extra):
    cfg = TrainConfig(**{**dict(epochs=4, batch_size=8, lr=1e-2, lr_decay=0.7, patience=0, progress=False), **extra})
    whole = Trainer(_model(dropout=0.3), mse, cfg, tmp_path / "a")
    whole.fit(_data(), _data(16, seed=1))

    calls = {"n": 0}

    def dying(model, batch):
        calls["n"] += 1
        if calls["n"] == 10 * 2 + 3:  # 8 train + 2 validation calls an epoch: dies in the 3rd epoch
            raise _Kill
        return mse(model, batch)

    with pytest.raises(_Kill):
        Trainer(_model(dropout=0.3), dying, cfg, tmp_path / "b").fit(_data(), _data(16, seed=1))
    killed = load(tmp_path / "b" / "checkpoints" / "last.pt")
    assert killed["epoch"] == 2 and killed["train_time_s"] > 0
    torch.manual_seed(99)  # a new process: other RNG state, fresh model
    resumed = Trainer(_model(dropout=0.3), mse, cfg, tmp_path / "b")
    t0 = time.perf_counter()
    summary = resumed.fit(_data(), _data(16, seed=1))
    outside = time.perf_counter() - t0
    assert torch.equal(_params(whole.model), _params(resumed.model))
    assert whole.opt.param_groups[0]["lr"] == resumed.opt.param_groups[0]["lr"]
    if cfg.plateau_patience:
        assert whole.opt.param_groups[0]["lr"] < cfg.lr * cfg.lr_decay ** 4  # the plateau state mattered
    # the reported train time includes the epochs before the kill: more than this call took
    assert summary["train_time_s"] > outside and summary["train_time_s"] <= killed["train_time_s"] + outside


def test_ema_returns_the_moving_average_of_the_trained_weights(tmp_path):
    """Reference: the raw weights after every step of an EMA-less run with the same seed (the
    average must not change training), averaged by a plain loop: e_1 = w_1,
    e_k = d e_(k-1) + (1 - d) w_k."""
    seen = []

    def recording(model, batch):
        seen.append(_params(model).clone())  # the weights after the previous step
        return mse(model, batch)

    d = 0.8
    base = dict(epochs=3, batch_size=8, lr=1e-2, patience=0, progress=False)
    raw = Trainer(_model(), recording, TrainConfig(**base), tmp_path / "raw")
    raw.fit(_data())
    trajectory = seen[1:] + [_params(raw.model)]  # w_1 .. w_K
    ema = trajectory[0]
    for w in trajectory[1:]:
        ema = d * ema + (1 - d) * w
    averaged = Trainer(_model(), mse, TrainConfig(**base, ema=d), tmp_path / "ema")
    averaged.fit(_data())  # no validation set: the final average is returned
    assert len(trajectory) == 3 * 8
    torch.testing.assert_close(_params(averaged.model), ema, rtol=1e-12, atol=1e-12)
    assert not torch.allclose(ema, trajectory[-1])  # the test can tell the two apart


def test_ema_is_what_validation_judges_and_keeps(tmp_path):
    cfg = TrainConfig(epochs=6, batch_size=8, lr=3e-2, patience=0, progress=False, ema=0.9)
    tr = Trainer(_model(), mse, cfg, tmp_path)
    out = tr.fit(_data(), _data(32, seed=1))
    assert out["best_val_loss"] == pytest.approx(tr.evaluate(_data(32, seed=1))["loss"])
    saved = load(tmp_path / "checkpoints" / "last.pt")
    assert saved["ema"] is not None and not torch.equal(saved["ema"]["module.0.weight"], saved["model"]["0.weight"])
    with pytest.raises(ValueError, match=r"ema must lie in \[0, 1\), got 1.0"):
        Trainer(_model(), mse, TrainConfig(ema=1.0, progress=False), tmp_path / "z").fit(_data())
    plain = TrainConfig(epochs=1, batch_size=8, progress=False)
    Trainer(_model(), mse, plain, tmp_path / "p").fit(_data())
    with pytest.raises(ValueError, match="written without TrainConfig.ema"):
        Trainer(_model(), mse, TrainConfig(epochs=2, batch_size=8, progress=False, ema=0.9),
                tmp_path / "p").fit(_data())


def test_bad_input_and_divergence_are_named(tmp_path):
    with pytest.raises(ValueError, match="training set is empty"):
        Trainer(_model(), mse, TrainConfig(progress=False), tmp_path).fit(_data(0))

    def nan_loss(model, batch):
        return mse(model, batch)[0] * float("nan"), {}

    with pytest.raises(FloatingPointError, match="training loss became nan at step 0"):
        Trainer(_model(), nan_loss, TrainConfig(progress=False), tmp_path / "n").fit(_data())


def test_batch_transform_changes_training_batches_only(tmp_path):
    """The transform sees every training batch once, on the device, before loss_fn; evaluate
    (validation included) never calls it; the loss training sees is the transformed batch's."""
    seen = {"train": [], "eval": []}

    def loss_fn(model, batch):
        seen["train" if model.training else "eval"].append(batch[1].clone())
        return mse(model, batch)

    def shift(batch):  # a transform that changes the targets: a different loss
        x, y = batch
        assert x.device == torch.device("cpu")
        return x, y + 10.0

    cfg = TrainConfig(epochs=2, batch_size=16, lr=0.0, patience=0, monitor="train", progress=False, device="cpu")
    shifted = Trainer(_model(), loss_fn, cfg, tmp_path / "t", batch_transform=shift)
    out = shifted.fit(_data(), _data(32, seed=1))
    ordered = lambda ys: torch.sort(torch.cat(ys).flatten())[0]  # noqa: E731  (the batches' targets, sorted)
    assert len(seen["train"]) == 2 * 4 and len(seen["eval"]) == 2 * 2      # 64 and 32 examples, batches of 16
    assert torch.equal(ordered(seen["train"][:4]), ordered([_data().tensors[1] + 10.0]))
    assert torch.equal(ordered(seen["eval"][:2]), ordered([_data(32, seed=1).tensors[1]]))
    plain = Trainer(_model(), mse, cfg, tmp_path / "p").fit(_data(), _data(32, seed=1))
    assert out["best_train_loss"] > 10 * plain["best_train_loss"]           # lr 0: only the batches differ
    assert out["best_val_loss"] == plain["best_val_loss"]                   # validation: the data as they are
    seen["eval"].clear()
    metrics = shifted.evaluate(_data(32, seed=1))
    assert torch.equal(ordered(seen["eval"]), ordered([_data(32, seed=1).tensors[1]]))
    assert metrics == Trainer(_model(), mse, cfg, tmp_path / "e").evaluate(_data(32, seed=1))
    with pytest.raises(ValueError, match="batch_transform must be a callable batch -> batch, got int"):
        Trainer(_model(), mse, cfg, tmp_path / "b", batch_transform=3)


DDP_SCRIPT = textwrap.dedent("""
    import sys, torch
    sys.path.insert(0, {tests!r})
    from test_trainer import _data, _model, mse
    from rlts.trainer import TrainConfig, Trainer
    cfg = TrainConfig(epochs=2, batch_size={batch}, lr=1e-2, patience=0, progress=False, ema=0.9,
                      monitor="train", plateau_patience=1)
    Trainer(_model(), mse, cfg, {out!r}).fit(_data(), _data(16, seed=1))
""")


@pytest.mark.skipif(sys.platform != "linux", reason="torchrun with gloo on loopback")
def test_ddp_two_processes_match_one_process_on_the_same_global_batch(tmp_path):
    def run(nproc, batch, out):
        script = tmp_path / f"ddp_{nproc}.py"
        script.write_text(DDP_SCRIPT.format(tests=str(ROOT / "tests"), batch=batch, out=str(out)))
        env = dict(os.environ, OMP_NUM_THREADS="1", MASTER_ADDR="127.0.0.1")
        cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(nproc),
               "--master_addr", "127.0.0.1", "--master_port", str(29500 + nproc + os.getpid() % 1000), str(script)]
        res = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=240, cwd=ROOT)
        assert res.returncode == 0, res.stderr[-3000:]
        state = load(out / "checkpoints" / "last.pt")
        return {**state["model"], **state["ema"]}  # the trained weights and their average

    one = run(1, 8, tmp_path / "one")
    two = run(2, 4, tmp_path / "two")
    assert "module.0.weight" in one and "0.weight" in one
    for k in one:
        torch.testing.assert_close(two[k], one[k], rtol=1e-10, atol=1e-12)
    assert not torch.equal(one["0.weight"], _model()[0].weight.detach())  # training did move the weights


def test_evaluate_weights_batches_by_a_metric(tmp_path):
    """With weight_key, a batch's mean counts by the units it averages over (e.g. the real steps
    of padded episodes), not by its number of examples."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(10, 3, generator=g, dtype=torch.float64)
    units = torch.tensor([1, 7, 2, 9, 1, 3, 8, 1, 1, 5])     # units per example

    def loss_fn(model, batch):
        xb, nb = batch
        per = model(xb).squeeze(-1).pow(2) * nb                # the sum over each example's units
        return per.sum() / nb.sum(), {"n_units": float(nb.sum())}

    model = _model()
    data = TensorDataset(x, units.double())
    with torch.no_grad():
        per_unit = model(x).squeeze(-1).pow(2)
    weighted = Trainer(model, loss_fn, TrainConfig(batch_size=3, device="cpu"), tmp_path / "a",
                       weight_key="n_units").evaluate(data)
    assert weighted["loss"] == pytest.approx(float((per_unit * units).sum() / units.sum()))
    assert weighted["n_units"] == float(units.sum())
    plain = Trainer(model, loss_fn, TrainConfig(batch_size=3, device="cpu"), tmp_path / "b").evaluate(data)
    assert plain["loss"] != pytest.approx(weighted["loss"])
    with pytest.raises(KeyError, match="no metric 'steps'"):
        Trainer(model, loss_fn, TrainConfig(batch_size=3, device="cpu"), tmp_path / "c", weight_key="steps").evaluate(data)


@pytest.mark.parametrize("key, value, match", [
    ("epochs", 0, "epochs must be at least 1, got 0"),
    ("batch_size", 0, "batch_size must be at least 1, got 0"),
    ("patience", -1, "patience must be at least 0, got -1"),
    ("plateau_patience", -2, "plateau_patience must be at least 0, got -2"),
    ("lr", -1e-3, "lr must be at least 0, got -0.001"),
    ("lr", float("nan"), "lr must be at least 0, got nan"),
    ("weight_decay", -1e-4, "weight_decay must be at least 0, got -0.0001"),
    ("grad_clip", float("inf"), "grad_clip must be finite, got inf"),
    ("plateau_factor", 1.0, r"plateau_factor must lie in \(0, 1\), got 1.0"),
])
def test_check_train_config_names_the_setting(tmp_path, key, value, match):
    cfg = TrainConfig(progress=False, **{key: value})
    with pytest.raises(ValueError, match=rf"^train\.{match}"):
        check_train_config(cfg, "train")
    with pytest.raises(ValueError, match=rf"^TrainConfig\.{match}"):  # the Trainer checks before anything
        Trainer(_model(), mse, cfg, tmp_path).fit(_data())
    assert not (tmp_path / "checkpoints").exists() or not any((tmp_path / "checkpoints").iterdir())
    check_train_config(TrainConfig())  # the defaults pass
