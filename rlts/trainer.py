"""The one supervised training loop of rlts (forecasting, classification, event models).

    trainer = Trainer(model, loss_fn, TrainConfig(epochs=20), run_dir="runs/x")
    summary = trainer.fit(train_set, val_set)     # early stopping on the validation loss
    # summary: epochs, best_val_loss, best_train_loss, early_stopped, train_time_s (summed over resumes)
    metrics = trainer.evaluate(test_set)          # mean of loss_fn's metrics over a dataset

`loss_fn(model, batch) -> (loss, metrics)` owns everything task-specific: it unpacks the
batch, runs the model and returns a scalar loss and a dict of per-batch metric values (means
over the batch; `evaluate` weights them by batch size, or, with `weight_key="n_steps"`, by that
metric: the right mean when the loss averages over units of unequal number per example, such
as the steps of episodes or the events of sequences of different lengths).
An optional `batch_transform(batch) -> batch` (such as data augmentation,
`rlts.data.augment.BatchAugment`) is applied to every training batch once it is on the device,
before `loss_fn`; never in `evaluate`, so validation and test batches are the data as they are.

What the loop guarantees:
- resume: a checkpoint (`run_dir/last.pt`, written atomically) after every epoch holds the
  model, optimiser, epoch, early-stopping state, best weights and RNG states; running `fit`
  again with the same run_dir continues from it, and the result equals an uninterrupted run
  (shuffles are seeded per epoch, so a kill mid-epoch repeats that epoch exactly);
- early stopping with `patience`, and the best weights restored at the end: best by the
  validation loss, or, with `monitor="train"`, by the epoch's mean training loss (for data too
  small to hold out a validation set); the same loss can halve the learning rate on a plateau;
- TensorBoard scalars (`train/loss`, `val/loss`, `val/<metric>`) and a tqdm bar;
- `torchrun --nproc_per_node N ...`: DistributedDataParallel (gloo on CPU, nccl on GPU), each
  process taking 1/N of every global batch of `batch_size * N`; only rank 0 logs and writes.
"""
from __future__ import annotations

import atexit
import math
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Dict, Optional, Tuple

import torch
import torch.distributed as dist
from torch import nn
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn
from torch.utils.data import DataLoader, Dataset, DistributedSampler

from rlts.config import check_ranges, param
from rlts.checkpoint import Checkpointer
from rlts.runtime import seed_everything, select_device
from rlts.tracking import RunLogger

LossFn = Callable[[nn.Module, object], Tuple[torch.Tensor, Dict[str, float]]]


@dataclass
class TrainConfig:
    """Settings of the supervised loop."""

    epochs: int = param(10, result=True, within="[1, inf)")
    """Most passes over the training set."""
    batch_size: int = param(32, result=True, within="[1, inf)")
    """Examples per step and per process (the global batch is batch_size * world size)."""
    lr: float = param(1e-3, result=True, within="[0, inf)")
    """AdamW learning rate."""
    weight_decay: float = param(0.0, result=True, within="[0, inf)")
    """AdamW weight decay."""
    lr_decay: float = param(1.0, result=True, within="(0, 1]")
    """Multiply the learning rate by this after every epoch (1: constant; Time-Series-Library's
    default schedule halves it: 0.5)."""
    monitor: str = param("val", result=True, choices=("val", "train"))
    """The loss that picks the weights returned, stops early and drives the plateau schedule:
    "val" (the validation loss; with no validation set the last epoch's weights are returned)
    or "train" (the epoch's mean training loss: the protocol of the FCN/ResNet time-series
    classification baselines, which train on the whole training set)."""
    plateau_patience: int = param(0, result=True, within="[0, inf)")
    """Epochs without a better monitored loss before the learning rate is multiplied by
    plateau_factor (torch's ReduceLROnPlateau); 0 turns it off."""
    plateau_factor: float = param(0.5, result=True, within="(0, 1)")
    """Factor of a plateau reduction of the learning rate."""
    min_lr: float = param(0.0, result=True, within="[0, inf)")
    """Floor of the plateau reductions."""
    grad_clip: float = param(1.0, result=True, within="[0, inf)")
    """Largest gradient norm; 0 turns clipping off."""
    patience: int = param(3, result=True, within="[0, inf)")
    """Epochs without a better validation loss before stopping; 0 turns early stopping off."""
    seed: int = param(0, result=True)
    """Seeds the initial RNG state and every epoch's shuffle."""
    device: str = "auto"
    """auto, cpu, cuda or cuda:N (under torchrun each process takes cuda:LOCAL_RANK)."""
    progress: bool = True
    """Show a tqdm progress bar."""
    ema: float = param(0.0, result=True, within="[0, 1)")
    """Decay per step of an exponential moving average of the weights (e.g. 0.99: an average
    over about the last 100 steps); 0 turns it off. When on, the average is what is
    validated, kept as the best weights and returned, and the raw weights only train."""


def check_train_config(cfg: TrainConfig, name: str = "TrainConfig") -> None:
    """A ValueError naming the first setting of `cfg` out of the range its field declares. The
    Trainer checks when it is made; the task runners call it with name="train" (their
    `--train.KEY` spelling) before they write anything."""
    check_ranges(cfg, prefix=f"{name}.")


def _dist_info() -> Tuple[int, int]:
    """(rank, world size), initialising the process group under torchrun."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return 0, 1
    if not dist.is_initialized():
        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
        # Without an explicit teardown, gloo's threads can outlive the interpreter and abort
        # the process at exit ("terminate called without an active exception").
        atexit.register(_destroy_process_group)
    return dist.get_rank(), dist.get_world_size()


def _destroy_process_group() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


class Trainer:
    def __init__(self, model: nn.Module, loss_fn: LossFn, cfg: Optional[TrainConfig] = None,
                 run_dir: str | Path = "runs/train", collate_fn: Optional[Callable] = None,
                 weight_key: Optional[str] = None, batch_transform: Optional[Callable] = None):
        self.cfg, self.loss_fn, self.collate_fn = cfg or TrainConfig(), loss_fn, collate_fn
        self.weight_key = weight_key
        if batch_transform is not None and not callable(batch_transform):
            raise ValueError(f"Trainer: batch_transform must be a callable batch -> batch, got "
                             f"{type(batch_transform).__name__}")
        self.batch_transform = batch_transform
        cfg = self.cfg
        check_train_config(cfg)
        self.rank, self.world = _dist_info()
        if self.world > 1 and torch.cuda.is_available():
            local = int(os.environ.get("LOCAL_RANK", "0"))
            self.device = torch.device(f"cuda:{local}")
        else:
            self.device = select_device(cfg.device)
        self.model = model.to(self.device)
        self.net = nn.parallel.DistributedDataParallel(self.model) if self.world > 1 else self.model
        self.opt = torch.optim.AdamW(self.model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
        self.run_dir = Path(run_dir)
        self.ckpt = Checkpointer(self.run_dir / "checkpoints")

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def _loader(self, data: Dataset, shuffle: bool, epoch: int = 0) -> DataLoader:
        # The same sampler with one or N processes: with N, each process takes every N-th
        # example of the one shuffled order, so N processes see the same global batches.
        sampler = DistributedSampler(data, num_replicas=self.world, rank=self.rank, shuffle=shuffle,
                                     seed=self.cfg.seed, drop_last=False)
        sampler.set_epoch(epoch)
        return DataLoader(data, batch_size=self.cfg.batch_size, sampler=sampler, collate_fn=self.collate_fn)

    def _state(self, epoch: int, best: float, bad_epochs: int, best_weights: dict, train_time: float,
               ema: Optional[AveragedModel], plateau, best_val: float) -> dict:
        return {"model": self.model.state_dict(), "opt": self.opt.state_dict(), "epoch": epoch,
                "best": best, "bad_epochs": bad_epochs, "best_model": best_weights, "train_time_s": train_time,
                "ema": ema.state_dict() if ema is not None else None,
                "plateau": plateau.state_dict() if plateau is not None else None, "best_val": best_val}

    def _global_mean(self, total: float, count: float) -> float:
        """total / count summed over all processes."""
        if self.world > 1:
            t = torch.tensor([total, count], dtype=torch.float64, device=self.device)
            dist.all_reduce(t)
            total, count = t.tolist()
        return total / count

    def fit(self, train: Dataset, val: Optional[Dataset] = None) -> Dict[str, float]:
        cfg = self.cfg
        if len(train) == 0:
            raise ValueError("Trainer.fit: the training set is empty")
        # The averaged copy (torch's AveragedModel, buffers averaged too) is what is validated.
        ema = (AveragedModel(self.model, multi_avg_fn=get_ema_multi_avg_fn(cfg.ema), use_buffers=True)
               if cfg.ema > 0 else None)
        judged = ema.module if ema is not None else self.model
        t_start = time.perf_counter()
        seed_everything(cfg.seed)
        plateau = (torch.optim.lr_scheduler.ReduceLROnPlateau(
            self.opt, factor=cfg.plateau_factor, patience=cfg.plateau_patience, min_lr=cfg.min_lr)
            if cfg.plateau_patience > 0 else None)
        start, best, bad, best_weights, earlier, best_val = 0, math.inf, 0, None, 0.0, math.inf
        state = self.ckpt.load_latest(map_location=self.device)
        if state is not None:
            self.model.load_state_dict(state["model"])
            self.opt.load_state_dict(state["opt"])
            start, best, bad, best_weights = state["epoch"], state["best"], state["bad_epochs"], state["best_model"]
            best_val = state.get("best_val", best)  # a checkpoint without it tracked the validation loss as `best`
            if plateau is not None and state.get("plateau") is not None:
                plateau.load_state_dict(state["plateau"])
            earlier = float(state.get("train_time_s", 0.0))  # time spent before an interruption
            if ema is not None:
                if state.get("ema") is None:
                    raise ValueError(f"Trainer: the checkpoint in {self.ckpt.dir} was written without "
                                     f"TrainConfig.ema; resume with ema = 0 or start a new run folder")
                ema.load_state_dict(state["ema"])
        steps_per_epoch = len(self._loader(train, True))
        step = start * steps_per_epoch
        logger = RunLogger(self.run_dir, total=cfg.epochs * steps_per_epoch, initial=step, desc="train",
                           progress=cfg.progress and self.is_main) if self.is_main else None
        stopped = cfg.patience > 0 and bad >= cfg.patience
        done = start  # epochs completed
        completed = False
        try:
            for epoch in range(start, cfg.epochs):
                if stopped:
                    break
                self.net.train()
                loss_sum, n_seen = 0.0, 0  # the epoch's training loss, for monitor="train"
                for batch in self._loader(train, True, epoch):
                    batch = self._to_device(batch)
                    if self.batch_transform is not None:  # training batches only, on the device
                        batch = self.batch_transform(batch)
                    loss, _ = self.loss_fn(self.net, batch)
                    if not torch.isfinite(loss):
                        raise FloatingPointError(f"training loss became {loss.item()} at step {step} "
                                                 f"(epoch {epoch}); lower the learning rate or check the data")
                    self.opt.zero_grad(set_to_none=True)
                    loss.backward()
                    if cfg.grad_clip > 0:
                        nn.utils.clip_grad_norm_(self.model.parameters(), cfg.grad_clip)
                    self.opt.step()
                    if ema is not None:
                        ema.update_parameters(self.model)
                    step += 1
                    if cfg.monitor == "train":
                        size = _batch_size(batch)
                        loss_sum, n_seen = loss_sum + loss.item() * size, n_seen + size
                    if logger:
                        logger.scalars(step, {"train/loss": loss.item()}, show=["train/loss"])
                        logger.advance()
                monitored = None
                if val is not None:
                    metrics = self.evaluate(val, judged)
                    if logger:
                        logger.scalars(step, {f"val/{k}": v for k, v in metrics.items()})
                    best_val = min(best_val, metrics["loss"])
                    monitored = metrics["loss"] if cfg.monitor == "val" else None
                if cfg.monitor == "train":
                    monitored = self._global_mean(loss_sum, n_seen)
                    if logger:
                        logger.scalars(step, {"train/epoch_loss": monitored})
                if monitored is not None:
                    if monitored < best:
                        best, bad = monitored, 0
                        best_weights = {k: v.detach().clone() for k, v in judged.state_dict().items()}
                    else:
                        bad += 1
                    stopped = cfg.patience > 0 and bad >= cfg.patience
                    if plateau is not None:
                        plateau.step(monitored)
                for group in self.opt.param_groups:  # saved with the optimiser: resumes exactly
                    group["lr"] *= cfg.lr_decay
                done = epoch + 1
                if self.is_main:
                    spent = earlier + time.perf_counter() - t_start
                    self.ckpt.save(done, self._state(done, best, bad, best_weights, spent, ema, plateau, best_val))
            if self.world > 1:  # no process leaves before rank 0 has written the last checkpoint
                dist.barrier()
            completed = True
        finally:
            if logger:
                logger.close(finished=completed)  # an early stop ends the bar at 100 %
        if best_weights is None and ema is not None:
            best_weights = ema.module.state_dict()  # no validation set: the final average
        if best_weights is not None:
            self.model.load_state_dict(best_weights)
        return {"epochs": done, "best_val_loss": best_val,
                "best_train_loss": best if cfg.monitor == "train" else math.inf, "early_stopped": bool(stopped),
                "train_time_s": earlier + time.perf_counter() - t_start}

    def _to_device(self, batch):
        if isinstance(batch, torch.Tensor):
            return batch.to(self.device, non_blocking=True)
        if isinstance(batch, (list, tuple)):
            return type(batch)(self._to_device(b) for b in batch)
        if isinstance(batch, dict):
            return {k: self._to_device(v) for k, v in batch.items()}
        return batch

    @torch.no_grad()
    def evaluate(self, data: Dataset, model: Optional[nn.Module] = None) -> Dict[str, float]:
        """Means of the loss and of loss_fn's metrics of `model` (default: the trained model)
        over `data` (all processes), each batch weighted by its number of examples, or by its
        metric `weight_key` (which is then reported as its total)."""
        model = self.model if model is None else model
        self.net.eval()
        model.eval()
        sums: Dict[str, float] = {}
        n = 0
        for batch in self._loader(data, False):
            batch = self._to_device(batch)
            loss, metrics = self.loss_fn(model, batch)
            if self.weight_key is not None and self.weight_key not in metrics:
                raise KeyError(f"Trainer: loss_fn returned no metric {self.weight_key!r} to weight batches by")
            size = float(metrics[self.weight_key]) if self.weight_key is not None else _batch_size(batch)
            for k, v in {"loss": float(loss), **metrics}.items():
                sums[k] = sums.get(k, 0.0) + (float(v) if k == self.weight_key else float(v) * size)
            n += size
        keys = sorted(sums)
        if self.world > 1:  # the padded examples of DistributedSampler count twice: negligible, documented
            t = torch.tensor([sums[k] for k in keys] + [n], dtype=torch.float64, device=self.device)
            dist.all_reduce(t)
            sums, n = dict(zip(keys, t[:-1].tolist())), t[-1].item()
        if n == 0:
            raise ValueError("Trainer.evaluate: the dataset is empty")
        return {k: sums[k] if k == self.weight_key else sums[k] / n for k in keys}


def _batch_size(batch) -> int:
    if isinstance(batch, torch.Tensor):
        return batch.shape[0]
    if isinstance(batch, (list, tuple)):
        return _batch_size(batch[0])
    if isinstance(batch, dict):
        return _batch_size(next(iter(batch.values())))
    raise TypeError(f"cannot tell the batch size of a {type(batch).__name__}")
