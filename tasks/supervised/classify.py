"""Time-series classification runner: rlts sequence models and MiniRocket on one train/test split.

    rlts classify --dataset JapaneseVowels --models mamba,minirocket --out runs/jv
    rlts classify --train FordA_TRAIN.ts --test FordA_TEST.ts --backbone aaren --config debug

Data: a UCR/UEA archive name (`--dataset`; the ones shipped inside sktime's wheel load offline,
any other name is downloaded by sktime if the machine can) or a pair of .ts files (`--train`,
`--test`). Each instance becomes an array (L_i, C); lengths may differ, channels may not.

Protocol, the same for every model:
- the archive's own train/test split; the test set is used once, for the reported accuracy;
- every channel standardised with the mean and std of all training time steps (the test set
  never enters the statistics); every model sees the same standardised series;
- backbone models (any rlts.nn backbone: SequenceClassifier = a causal convolutional stem
  (`stem`), embedding, sequence model (with `bidirectional`, the default, a second one reading
  each series backwards), mean or last pooling, linear read-out): trained on the whole
  training set for train.epochs (`train.patience: 0`: no early stop), keeping the weights of
  the epoch with the lowest mean training loss and halving the learning rate on its plateaus (the defaults,
  `train.monitor: train`, `train.plateau_patience`), or, with `val_fraction` > 0, those with the
  lowest loss on a stratified, seeded holdout of it (with `train.patience` > 0, also stopping
  early on it); each training series is, with probability 1/2, window-warped in each batch
  (`augment`: a 10 % window played at half or double speed; rlts.data.augment);
  unequal lengths are right-padded per batch and masked, never truncated;
- minirocket (Dempster et al. 2021, sktime's implementation): `minirocket_kernels` (10 000)
  features, then RidgeClassifierCV(alphas=logspace(-3, 3, 10)) on features scaled to unit
  variance (sktime's RocketClassifier recipe), fitted on the whole training set (ridge chooses
  its alpha by leave-one-out CV itself). Equal lengths: MiniRocket (one channel) or MiniRocketMultivariate;
  unequal lengths (or series shorter than 9 steps): MiniRocketMultivariateVariable, which takes
  every series at its own length; only series shorter than 9 steps are right-padded to 9 with 0
  (the training mean after standardisation).
Every model therefore accepts unequal lengths; none is refused for them.

Bad input (unknown dataset, missing, unparseable or non-.ts file, a class label its file's
@classLabel line does not declare, channel-count mismatch, test labels outside the training
classes, missing values, a single class) stops with one message naming
the file, dataset or value (`rlts classify: error: ...`, exit code 2) before anything is
written to `out`.

Outputs in `out`: results.json (config, dataset summary, protocol, and per model: test
accuracy, confusion matrix, parameters, training time, epochs, best validation loss; rewritten
atomically after each model), results.csv / results.md (the table), one folder per model
(backbones: Trainer checkpoints and TensorBoard logs; minirocket: model.pt, its kernel
parameters, feature scaling and ridge weights as tensors, torch.load(..., weights_only=True);
every model: test_scores.pt, its class scores on the test set) and confusion_matrix.png (one
panel per model).

Seeds: `--seeds N` runs every model N times, with seeds seed .. seed + N - 1, each run exactly
what `--seed S` alone gives (folders `out/<model>/seed<S>`). results.json then holds each
model's mean accuracy, its sample standard deviation (`accuracy_std`), every run (`runs`)
and `ensemble_accuracy`: the accuracy of the runs' test scores averaged (probabilities for a
backbone, ridge decision values for MiniRocket; InceptionTime's ensemble of seeds). A model
whose runs are not all done keeps the finished ones under `partial`.

Running the same command with the same `out` again skips the models (and seeds) already in
results.json and resumes an interrupted one from its last checkpoint; a different dataset or
setup in the same `out` is refused.
"""
from __future__ import annotations

import time
from dataclasses import asdict, dataclass, replace
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, List, Optional

import numpy as np
import torch

from rlts.baselines import (MINIROCKET_MIN_LENGTH, fit_minirocket, minirocket_scores, minirocket_state,
                            minirocket_variant, warm_up_minirocket)
from rlts.checkpoint import load as load_checkpoint
from rlts.checkpoint import save_atomic
from rlts.config import check_ranges, param, to_dict
from rlts.data.augment import BatchAugment, check_augment
from rlts.data.panel import PanelDataset, fit_panel_scaler, stratified_order, stratified_subset
from rlts.data.ucr import load_panels
from rlts.heads.classify import (CLASSIFIER, CLASSIFIER_TRAIN, POOLINGS, STEMS, SequenceClassifier, classification_loss,
                                  collate_unequal, predict_proba)
from rlts.nn import BACKBONES, count_parameters
from rlts.runtime import seed_everything, select_device
from rlts.trainer import Trainer, TrainConfig, check_train_config
from rlts.tasks.runner import Command
from rlts.tasks.runner import TRAIN_ALIASES, json_float, table_order
from rlts.tasks.runner import resolve_models as _resolve_models
from rlts.tasks.supervised.grid import GridRun

if TYPE_CHECKING:
    from matplotlib.figure import Figure

BASELINES = ("minirocket",)
"""Model names besides the rlts.nn backbones: minirocket = MiniRocket features + ridge classifier."""
SUBSET_SEED = 0
"""Seed of the max_train / max_test subsets: the same instances whatever the training seed."""
SCORES_FILE = "test_scores.pt"
"""Per run, in its model folder: the test set's class scores (N_test, n_classes), for the ensemble."""


@dataclass
class ClassifyConfig:
    """Settings of `rlts classify`. The backbone models' defaults (model and `train`) are
    rlts.heads.classify's CLASSIFIER and CLASSIFIER_TRAIN, which rlts.sktime.SequenceClassifier
    uses too."""

    dataset: str = param("", result=True)
    """UCR/UEA archive name (ArrowHead, BasicMotions, GunPoint, ItalyPowerDemand, JapaneseVowels,
    OSULeaf, ... ship with sktime; other names are downloaded if possible). Or give train_file and test_file."""
    train_file: str = param("", result=True)
    """Training split as a .ts file (--train FILE); needs test_file, excludes dataset."""
    test_file: str = param("", result=True)
    """Test split as a .ts file (--test FILE)."""
    models: List[str] = param(default_factory=lambda: ["backbone", "minirocket"])
    """Models to run: any rlts.nn backbone name (aaren, mamba, mamba2, transformer, gru),
    minirocket, or `backbone` (= the `backbone` key). Commas split."""
    backbone: str = CLASSIFIER.backbone
    """The backbone the model name `backbone` stands for."""
    d_model: int = param(CLASSIFIER.d_model, result=True, within="[1, inf)")
    """Width of the sequence model (backbone models)."""
    n_layers: int = param(CLASSIFIER.n_layers, result=True, within="[1, inf)")
    """Blocks in the sequence model (backbone models)."""
    pooling: str = param(CLASSIFIER.pooling, result=True, choices=POOLINGS)
    """How the backbone's outputs become one vector per series: last (the output at the last
    valid step, which has seen the whole series) or mean (over the valid steps)."""
    dropout: float = param(CLASSIFIER.dropout, result=True, within="[0, 1)")
    """Dropout on the pooled features, before the read-out (backbone models)."""
    augment: List[str] = param(default_factory=lambda: list(CLASSIFIER.augment), result=True, missing_as=[])
    """Data augmentation of the training series (backbone models; rlts.data.augment): any of
    jitter, scaling, window_slice, window_warp, with the settings of Iwana & Uchida's survey;
    each series of a batch goes through all of them with probability 1/2. Commas split.
    none: no augmentation (docs/results.md compares both per backbone). The training loss that
    train.monitor: train judges is the loss on the augmented batches."""
    patch_len: int = param(CLASSIFIER.patch_len, result=True, within="[1, inf)")
    """Time steps per backbone token (backbone models; patches end at each series' last step;
    1 = one token per step)."""
    stem: str = param(CLASSIFIER.stem, result=True, choices=STEMS, missing_as="none")
    """Before the patches (backbone models): none, or conv (three causal convolutions with batch
    norm, kernels 8, 5, 3: local shape features for the backbone; rlts.nn.conv.ConvStem)."""
    bidirectional: bool = param(CLASSIFIER.bidirectional, result=True, missing_as=False)
    """Backbone models: a second backbone reads each series backwards and its pooled features
    are added to the first's (twice the backbone's parameters and time; rlts.heads.classify)."""
    val_fraction: float = param(0.0, result=True, within="[0, 1)")
    """Share of the training set held out (stratified, seeded) to judge the backbone models: with a
    holdout, its loss picks the weights kept whatever train.monitor says (results.json then
    records train.monitor: val), and with train.patience > 0 stops training early. 0 (default): no holdout;
    the backbone trains on the whole training set and train.monitor (default: train, the epoch's
    mean training loss) picks the weights (the UCR/UEA training sets are small: 36-270 series;
    early stopping on a few held-out series stops runs far too early). MiniRocket always fits
    on the whole set."""
    train: TrainConfig = param(default_factory=lambda: TrainConfig(**asdict(CLASSIFIER_TRAIN)), result=True)
    """Trainer settings (train.epochs, train.lr, train.patience, ...); train.seed and
    train.device are replaced by the top-level seed and device. Defaults: rlts.heads.classify's
    CLASSIFIER_TRAIN (monitor train, the lr halved on plateaus of the training loss, patience
    0: every epoch runs), the other keys TrainConfig's."""
    eval_batch_size: int = param(256, within="[1, inf)")
    """Series per batch when predicting the test set."""
    minirocket_kernels: int = param(10_000, result=True, within="[1, inf)")
    """Number of MiniRocket features (rounded down to a multiple of 84)."""
    max_train: Optional[int] = param(None, result=True, within="[1, inf)")
    """Use at most this many training series (a stratified subset, the same for every seed; for
    quick runs); None: all."""
    max_test: Optional[int] = param(None, result=True, within="[1, inf)")
    """Score at most this many test series (stratified subset; for quick runs only, the published
    protocol scores all); None: all."""
    out: Optional[str] = None
    """Output folder; default runs/classify-<dataset or train file stem>-<timestamp>. Reuse it to resume."""
    seed: int = param(0, result=True)
    """Seeds model initialisation, training, the validation holdout and MiniRocket."""
    seeds: int = param(1, result=True, within="[1, inf)", missing_as=1)
    """Runs per model, with seeds seed, seed + 1, ..., seed + seeds - 1 (each run is exactly
    what `--seed S` alone gives); the table reports their mean accuracy and standard
    deviation and the accuracy of their averaged class scores (the seed ensemble),
    results.json every run. On the small UCR/UEA training sets one run moves with the seed by
    several points (docs/results.md, "Time-series classification")."""
    device: str = "auto"
    """auto, cpu, cuda or cuda:N."""
    plots: bool = True
    """Write confusion_matrix.png (one panel per model)."""


# ----------------------------------------------------------------------------- config checks


def resolve_models(cfg) -> List[str]:
    """The model names to run, `backbone` replaced, duplicates dropped; ValueError on unknown ones."""
    return _resolve_models(cfg.models, cfg.backbone, BASELINES)


def check_config(cfg: ClassifyConfig) -> None:
    """ValueErrors for settings that cannot work, before anything is read or written."""
    if cfg.dataset and (cfg.train_file or cfg.test_file):
        raise ValueError("give either --dataset NAME or --train FILE.ts --test FILE.ts, not both")
    if not cfg.dataset and not (cfg.train_file and cfg.test_file):
        if cfg.train_file or cfg.test_file:
            have, need = ("--train", "--test") if cfg.train_file else ("--test", "--train")
            raise ValueError(f"{have} given without {need} FILE.ts")
        raise ValueError("no data given; pass --dataset NAME or --train FILE.ts --test FILE.ts")
    check_ranges(cfg)
    check_augment(cfg.augment)
    check_train_config(cfg.train, "train")
    for name in resolve_models(cfg):
        if name in BACKBONES:  # a width the backbone refuses (e.g. mamba2's headdim) stops here, not mid-run
            try:
                build_model(name, cfg, n_channels=1, n_classes=2)
            except ValueError as e:
                raise ValueError(f"model {name!r} cannot be built with d_model {cfg.d_model}: {e}") from None
    select_device(cfg.device)


def build_model(name: str, cfg: ClassifyConfig, n_channels: int, n_classes: int) -> SequenceClassifier:
    return SequenceClassifier(n_channels, n_classes, backbone=name, d_model=cfg.d_model, n_layers=cfg.n_layers,
                              pooling=cfg.pooling, dropout=cfg.dropout, patch_len=cfg.patch_len, stem=cfg.stem,
                              bidirectional=cfg.bidirectional)


# ----------------------------------------------------------------------------- models


def ensemble_accuracy(score_files: List[Path], truth: np.ndarray) -> Optional[float]:
    """Accuracy of the argmax of the runs' class scores averaged (InceptionTime's ensemble of
    seeds: probabilities for the backbones, decision values for MiniRocket); None when a run
    has no scores file (a results folder without test_scores.pt)."""
    if not all(f.is_file() for f in score_files):
        return None
    mean = np.mean([load_checkpoint(f)["scores"].numpy() for f in score_files], axis=0)  # (N, n_classes)
    return float((mean.argmax(axis=1) == truth).mean())


def confusion(truth: np.ndarray, pred: np.ndarray, n_classes: int) -> np.ndarray:
    """Counts (n_classes, n_classes): row = true class, column = predicted class."""
    m = np.zeros((n_classes, n_classes), dtype=np.int64)
    np.add.at(m, (truth, pred), 1)
    return m


def _table_rows(results: dict, models: List[str]) -> List[dict]:
    several = any("runs" in results[m] for m in models if m in results)
    rows = []
    for m in models:
        r = results.get(m)
        if r is None:
            continue
        runs = r.get("runs", [r])
        epochs = sorted({e["epochs"] for e in runs if e["epochs"] is not None})
        row = {"model": m, "accuracy": r["accuracy"]}
        if several:
            ensemble = r.get("ensemble_accuracy")
            row.update({"std": r.get("accuracy_std", "-"), "seeds": len(runs),
                        "ensemble": "-" if ensemble is None else ensemble})
        row.update({"params": "-" if r["params"] is None else r["params"],
                    "epochs": "-" if not epochs else f"{epochs[0]}" if len(epochs) == 1 else f"{epochs[0]}-{epochs[-1]}",
                    "train_time_s": r["train_time_s"]})
        rows.append(row)
    return rows


# ----------------------------------------------------------------------------- the run


def run_classify(cfg: ClassifyConfig, log=print) -> dict:
    """Run every model not yet in `out`/results.json; return the results dict."""
    check_config(cfg)
    models = resolve_models(cfg)
    cfg = replace(cfg, augment=list(check_augment(cfg.augment)))  # "a,b" -> [a, b], as results.json keeps it
    data = load_panels(cfg.dataset, cfg.train_file, cfg.test_file)
    if cfg.dataset:
        cfg = replace(cfg, dataset=data.source["dataset"])  # the canonical spelling of a shipped name
    n_train_all, n_test_all = len(data.train_y), len(data.test_y)
    train_x, train_y = stratified_subset(data.train_x, data.train_y, cfg.max_train, SUBSET_SEED)
    test_x, test_y = stratified_subset(data.test_x, data.test_y, cfg.max_test, SUBSET_SEED)
    n_val = int(round(cfg.val_fraction * len(train_y))) if cfg.val_fraction > 0 else 0
    if cfg.val_fraction > 0:
        n_val = max(n_val, 1)
        if n_val >= len(train_y):
            raise ValueError(f"val_fraction {cfg.val_fraction} leaves no training series out of {len(train_y)}; "
                             "lower it or set it to 0")

    if n_val and cfg.train.monitor != "val":  # the holdout decides; record the loss that really does
        cfg = replace(cfg, train=replace(cfg.train, monitor="val"))

    scaler = fit_panel_scaler(train_x)
    test_ds = PanelDataset(test_x, test_y, scaler)
    std_train = [scaler.transform(x) for x in train_x]  # MiniRocket sees the same standardised series
    std_test = [scaler.transform(x) for x in test_x]
    device = select_device(cfg.device)

    lengths = [x.shape[0] for x in train_x + test_x]
    classes = data.classes.tolist()
    n_channels = int(train_x[0].shape[1])
    variant = minirocket_variant(lengths, n_channels)
    padded = variant == "MiniRocketMultivariateVariable" and min(lengths) < MINIROCKET_MIN_LENGTH
    header = {
        "dataset": {
            **data.source,
            "n_train": len(train_y), "n_test": len(test_y),
            "n_train_available": n_train_all, "n_test_available": n_test_all,
            "n_channels": n_channels,
            "min_length": int(min(lengths)), "max_length": int(max(lengths)),
            "equal_length": len(set(lengths)) == 1,
            "classes": classes,
            "train_class_counts": np.bincount(train_y, minlength=len(classes)).tolist(),
            "test_class_counts": np.bincount(test_y, minlength=len(classes)).tolist(),
        },
        "protocol": {
            "description": (
                "the dataset's own train/test split; channels standardised with the training set's "
                "per-channel mean/std (every model sees the same series); backbone models: "
                + (f"judged on a stratified, seeded holdout of {n_val} training series"
                   + (f", stopped after {cfg.train.patience} epochs without a lower validation loss"
                      if cfg.train.patience > 0 else ", all epochs")
                   + " (best validation weights kept)" if n_val else
                   "trained on the whole training set, "
                   + ("the weights of the epoch with the lowest mean training loss kept"
                      if cfg.train.monitor == "train" else "the last epoch's weights kept"))
                + (", unequal lengths padded per batch and masked" if len(set(lengths)) > 1 else "")
                + (f", each training series augmented ({', '.join(cfg.augment)}) with probability 1/2 in "
                   "every batch" if cfg.augment else "")
                + f"; minirocket: {variant} features + RidgeClassifierCV(alphas=logspace(-3,3,10)) on "
                "unit-variance features, fitted on the whole training set"
                + (", each series at its own length" if variant == "MiniRocketMultivariateVariable" else "")
                + (f", series shorter than {MINIROCKET_MIN_LENGTH} steps right-padded to {MINIROCKET_MIN_LENGTH} "
                   "with 0" if padded else "")
                + "; metric: accuracy on the test set"
                + (f" (a stratified subset of {len(test_y)} of {n_test_all})" if len(test_y) < n_test_all else "")),
            "n_fit": len(train_y) - n_val, "n_val": n_val,
            "minirocket_variant": variant,
            "scaler": scaler.to_dict(),
        },
    }
    run = GridRun(cfg, "classify", cfg.dataset or Path(cfg.train_file).stem, file_keys=("train_file", "test_file"),
                  header=header, log=log)
    out = run.out

    warmed: List[bool] = []  # MiniRocket warmed up in this process (once, whatever the seeds)

    def fit_and_score(name: str, seed: int, model_dir: Path) -> dict:
        """One run of model `name` with `seed`: train, predict the test set, return its entry."""
        if name == "minirocket" and not warmed:  # numba compiles MiniRocket on its first use: not training time
            warm_up_minirocket(std_train, variant)
            warmed.append(True)
        seed_everything(seed)
        t0 = time.perf_counter()
        if name == "minirocket":
            log(f"[train] minirocket ({cfg.minirocket_kernels} kernels, seed {seed})")
            transform, classifier = fit_minirocket(std_train, train_y, variant, cfg.minirocket_kernels, seed)
            train_time = time.perf_counter() - t0
            save_atomic(minirocket_state(transform, classifier, variant, classes, scaler), model_dir / "model.pt")
            scores = minirocket_scores(transform, classifier, std_test, variant, len(classes))
            extra = {"params": None, "epochs": None, "best_val_loss": None, "early_stopped": False, "variant": variant,
                     "features": int(classifier[0].n_features_in_), "ridge_alpha": float(classifier[-1].alpha_)}
        else:
            order = stratified_order(train_y, seed)  # the holdout, seeded like everything else
            val_idx, fit_idx = np.sort(order[:n_val]), np.sort(order[n_val:])
            fit_ds = PanelDataset([train_x[i] for i in fit_idx], train_y[fit_idx], scaler)
            val_ds = PanelDataset([train_x[i] for i in val_idx], train_y[val_idx], scaler) if n_val else None
            model = build_model(name, cfg, n_channels, len(classes))
            n_params = count_parameters(model)
            ckpt = model_dir / "checkpoints"
            resumed = ckpt.exists() and any(ckpt.iterdir())
            log(f"[{'resume' if resumed else 'train'}] {name} ({n_params} parameters, seed {seed})")
            train_cfg = TrainConfig(**{**to_dict(cfg.train), "seed": seed, "device": cfg.device})
            augment = BatchAugment(cfg.augment) if cfg.augment else None
            trainer = Trainer(model, classification_loss, train_cfg, run_dir=model_dir, collate_fn=collate_unequal,
                              batch_transform=augment)
            fit = trainer.fit(fit_ds, val_ds)
            train_time = fit["train_time_s"]  # summed over interrupted runs
            scores = predict_proba(trainer.model, test_ds, cfg.eval_batch_size, device)
            extra = {"params": n_params, "epochs": fit["epochs"],
                     "best_val_loss": json_float(fit["best_val_loss"]) if val_ds is not None else None,
                     "early_stopped": fit["early_stopped"]}
        save_atomic({"scores": torch.from_numpy(scores), "classes": classes}, model_dir / SCORES_FILE)
        pred = scores.argmax(axis=1)                                      # (N_test,)
        accuracy = float((pred == test_y).mean())
        log(f"[done] {name}: accuracy {accuracy:.4f} ({train_time:.1f} s)")
        return {"accuracy": accuracy, **extra, "train_time_s": round(train_time, 3),
                "confusion_matrix": confusion(test_y, pred, len(classes)).tolist()}

    def add_ensemble(name: str, entry: dict, runs: List[dict]) -> None:
        """Several seeds: the confusion counts summed over every run's predictions, and the
        accuracy of the runs' averaged test scores (the seed ensemble)."""
        entry["confusion_matrix"] = np.sum([r["confusion_matrix"] for r in runs], axis=0).tolist()
        files = [run.seed_folder(name, r["seed"]) / SCORES_FILE for r in runs]
        entry["ensemble_accuracy"] = ensemble = ensemble_accuracy(files, test_y)
        if ensemble is None:
            missing = ", ".join(str(f.relative_to(out)) for f in files if not f.is_file())
            log(f"[note] {name}: no seed ensemble, the test scores of these runs are missing: {missing}")
        else:
            log(f"[done] {name}: the ensemble of seeds {run.seeds[0]}..{run.seeds[-1]}: accuracy {ensemble:.4f}")

    for name in models:
        run.job(name, None, name, folder=name, run_one=partial(fit_and_score, name), metrics=("accuracy",),
                extend=partial(add_ensemble, name))

    md = run.finish(_table_rows(run.results, table_order(models, run.results)))
    if cfg.plots:
        plot_confusion(out / "confusion_matrix.png", run.state, models)
    log(md)
    return run.state


def plot_confusion(path: Path, state: dict, models: List[str]) -> Optional["Figure"]:
    """One panel per model: test-set counts, row = true class, column = predicted class (summed
    over the seeds of a model run with several). Returns the figure, None without models."""
    from matplotlib.figure import Figure

    done = [m for m in models if m in state["results"]]
    if not done:
        return None
    classes = state["dataset"]["classes"]
    k = len(classes)
    size = min(2.0 + 0.35 * k, 9.0)
    fig = Figure(figsize=(size * len(done), size))
    axes = fig.subplots(1, len(done), squeeze=False)
    for ax, m in zip(axes[0], done):
        counts = np.asarray(state["results"][m]["confusion_matrix"])
        image = ax.imshow(counts, cmap="Blues")
        if k <= 20:
            for i in range(k):
                for j in range(k):  # light text on the darker half of the colour scale (vmin..vmax), dark on the rest
                    ax.text(j, i, str(counts[i, j]), ha="center", va="center", fontsize=7,
                            color="white" if image.norm(counts[i, j]) > 0.5 else "black")
        ticks = np.arange(k) if k <= 30 else np.linspace(0, k - 1, 10).round().astype(int)
        ax.set_xticks(ticks, [classes[t] for t in ticks], fontsize=7, rotation=90 if k > 10 else 0)
        ax.set_yticks(ticks, [classes[t] for t in ticks], fontsize=7)
        ax.set_xlabel("predicted")
        ax.set_ylabel("true")
        r = state["results"][m]
        ax.set_title(f"{m}: accuracy {r['accuracy']:.3f}" if "runs" not in r else
                     f"{m}: accuracy {r['accuracy']:.3f} ± {r['accuracy_std']:.3f}\n"
                     f"(counts of {len(r['runs'])} seeds)", fontsize=9)
    data = state["dataset"]
    src = data.get("dataset") or Path(data["test_file"]).name
    fig.suptitle(f"{src}: confusion matrices on {data['n_test']} of {data['n_test_available']} test series",
                 fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    return fig


# ----------------------------------------------------------------------------- CLI

ALIASES = {"--train": "--train_file", "--test": "--test_file", "--model": "--models", **TRAIN_ALIASES}
"""Short spellings accepted by `rlts classify` for the config keys (--train.epochs stays a Trainer key)."""


COMMANDS = (Command("classify", ClassifyConfig, "classify.yaml", run_classify, aliases=ALIASES, lists=("models",),
                    help="train and evaluate time-series classifiers (UCR/UEA datasets or .ts files) "
                         "against MiniRocket",
                    usage="rlts classify --dataset NAME | --train FILE.ts --test FILE.ts [--key value ...]",
                    stem=lambda cfg: cfg.dataset or Path(cfg.train_file).stem),)


def parse_classify_config(argv: List[str]) -> ClassifyConfig:
    return COMMANDS[0].parse(argv)
