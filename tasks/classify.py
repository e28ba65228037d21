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
import warnings
from dataclasses import dataclass, field, replace
from functools import partial
from pathlib import Path
from typing import List, Optional, Tuple

import numpy as np
import torch
from torch.utils.data import DataLoader

from rlts.checkpoint import load as load_checkpoint
from rlts.checkpoint import save_atomic
from rlts.config import to_dict
from rlts.data.augment import check_augment
from rlts.data.panel import PanelDataset, as_series_list, encode_labels, fit_panel_scaler
from rlts.heads.classify import POOLINGS, STEMS, SequenceClassifier, classification_loss, collate_unequal
from rlts.nn import BACKBONES, count_parameters
from rlts.runtime import seed_everything, select_device
from rlts.tracking import write_table
from rlts.trainer import Trainer, TrainConfig, check_train_config
from tasks._runner import (TRAIN_ALIASES, cli_main, json_float, open_run, parse_task_config,
                           split_names, table_order, write_json_atomic)
from tasks._runner import resolve_models as _resolve_models
from tasks._runner import run_seeds
from tasks._runner import summarise_runs as _summarise_runs

CONFIG_PATH = Path(__file__).parent / "configs" / "classify.yaml"
BASELINES = ("minirocket",)
"""Model names besides the rlts.nn backbones: minirocket = MiniRocket features + ridge classifier."""
MINIROCKET_MIN_LENGTH = 9
"""MiniRocket's kernels span 9 steps; shorter series are right-padded to this length with 0."""
SUBSET_SEED = 0
"""Seed of the max_train / max_test subsets: the same instances whatever the training seed."""
SCORES_FILE = "test_scores.pt"
"""Per run, in its model folder: the test set's class scores (N_test, n_classes), for the ensemble."""
# Config keys whose change makes earlier results in the same `out` incomparable.
_DATA_KEYS = ("dataset", "train_file", "test_file", "max_train", "max_test", "d_model", "n_layers",
              "pooling", "patch_len", "dropout", "val_fraction", "train", "minirocket_kernels", "seed", "stem",
              "seeds", "bidirectional", "augment")
_LEGACY = {"stem": "none", "seeds": 1, "bidirectional": False, "augment": []}
"""Values of config keys added later, for result folders written before them."""


@dataclass
class ClassifyConfig:
    """Settings of `rlts classify`."""

    dataset: str = ""
    """UCR/UEA archive name (ArrowHead, BasicMotions, GunPoint, ItalyPowerDemand, JapaneseVowels,
    OSULeaf, ... ship with sktime; other names are downloaded if possible). Or give train_file and test_file."""
    train_file: str = ""
    """Training split as a .ts file (--train FILE); needs test_file, excludes dataset."""
    test_file: str = ""
    """Test split as a .ts file (--test FILE)."""
    models: List[str] = field(default_factory=lambda: ["backbone", "minirocket"])
    """Models to run: any rlts.nn backbone name (aaren, mamba, mamba2, transformer, gru),
    minirocket, or `backbone` (= the `backbone` key). Commas split."""
    backbone: str = "mamba"
    """The backbone the model name `backbone` stands for."""
    d_model: int = 64
    """Width of the sequence model (backbone models)."""
    n_layers: int = 2
    """Blocks in the sequence model (backbone models)."""
    pooling: str = "mean"
    """How the backbone's outputs become one vector per series: last (the output at the last
    valid step, which has seen the whole series) or mean (over the valid steps)."""
    dropout: float = 0.0
    """Dropout on the pooled features, before the read-out (backbone models)."""
    augment: List[str] = field(default_factory=lambda: ["window_warp"])
    """Data augmentation of the training series (backbone models; rlts.data.augment): any of
    jitter, scaling, window_slice, window_warp, with the settings of Iwana & Uchida's survey;
    each series of a batch goes through all of them with probability 1/2. Commas split.
    none: no augmentation (better for aaren on the six datasets of docs/results.md; window
    warping helped mamba). The training loss that train.monitor: train judges is the loss on
    the augmented batches."""
    patch_len: int = 1
    """Time steps per backbone token (backbone models; patches end at each series' last step;
    1 = one token per step)."""
    stem: str = "conv"
    """Before the patches (backbone models): none, or conv (three causal convolutions with batch
    norm, kernels 8, 5, 3: local shape features for the backbone; rlts.nn.conv.ConvStem)."""
    bidirectional: bool = True
    """Backbone models: a second backbone reads each series backwards and its pooled features
    are added to the first's (twice the backbone's parameters and time; rlts.heads.classify)."""
    val_fraction: float = 0.0
    """Share of the training set held out (stratified, seeded) to judge the backbone models: with a
    holdout, its loss picks the weights kept whatever train.monitor says (results.json then
    records train.monitor: val), and with train.patience > 0 stops training early. 0 (default): no holdout;
    the backbone trains on the whole training set and train.monitor (default: train, the epoch's
    mean training loss) picks the weights (the UCR/UEA training sets are small: 36-270 series;
    early stopping on a few held-out series stopped runs far too early). MiniRocket always fits
    on the whole set."""
    train: TrainConfig = field(default_factory=TrainConfig)
    """Trainer settings (train.epochs, train.lr, train.patience, ...); train.seed and
    train.device are replaced by the top-level seed and device."""
    eval_batch_size: int = 256
    """Series per batch when predicting the test set."""
    minirocket_kernels: int = 10_000
    """Number of MiniRocket features (rounded down to a multiple of 84)."""
    max_train: Optional[int] = None
    """Use at most this many training series (a stratified subset, the same for every seed; for
    quick runs); None: all."""
    max_test: Optional[int] = None
    """Score at most this many test series (stratified subset; for quick runs only, the published
    protocol scores all); None: all."""
    out: Optional[str] = None
    """Output folder; default runs/classify-<dataset or train file stem>-<timestamp>. Reuse it to resume."""
    seed: int = 0
    """Seeds model initialisation, training, the validation holdout and MiniRocket."""
    seeds: int = 1
    """Runs per model, with seeds seed, seed + 1, ..., seed + seeds - 1 (each run is exactly
    what `--seed S` alone gives); the table reports their mean accuracy and standard
    deviation and the accuracy of their averaged class scores (the seed ensemble),
    results.json every run. On the small UCR/UEA training sets one run can move by
    15 points or more (docs/results.md)."""
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
    if cfg.pooling not in POOLINGS:
        raise ValueError(f"unknown pooling {cfg.pooling!r}; use one of {', '.join(POOLINGS)}")
    if cfg.stem not in STEMS:
        raise ValueError(f"unknown stem {cfg.stem!r}; use one of {', '.join(STEMS)}")
    if not 0.0 <= cfg.val_fraction < 1.0:
        raise ValueError(f"val_fraction must lie in [0, 1), got {cfg.val_fraction}")
    if not 0.0 <= cfg.dropout < 1.0:
        raise ValueError(f"dropout must lie in [0, 1), got {cfg.dropout}")
    check_augment(cfg.augment)
    for key in ("max_train", "max_test"):
        v = getattr(cfg, key)
        if v is not None and v < 1:
            raise ValueError(f"{key} must be at least 1 or none, got {v}")
    check_train_config(cfg.train, "train")
    for key in ("d_model", "n_layers", "patch_len", "eval_batch_size", "minirocket_kernels", "seeds"):
        v = getattr(cfg, key)
        if v < 1:
            raise ValueError(f"{key} must be at least 1, got {v}")
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


# ----------------------------------------------------------------------------- data


def _has_regression_target(path: Path) -> bool:
    """True if a .ts file's header declares a real-valued target (@targetLabel true), not classes."""
    with open(path, errors="replace") as f:
        for line in f:
            words = line.strip().lower().split()
            if words[:1] == ["@data"]:
                break
            if words[:2] == ["@targetlabel", "true"]:
                return True
    return False


def _sktime_data_root() -> Path:
    import sktime.datasets
    return Path(sktime.datasets.__file__).parent / "data"


def shipped_datasets() -> List[str]:
    """Classification datasets inside sktime's wheel (NAME/NAME_TRAIN.ts and NAME_TEST.ts, class labels)."""
    return sorted(d.name for d in _sktime_data_root().iterdir()
                  if (d / f"{d.name}_TRAIN.ts").is_file() and (d / f"{d.name}_TEST.ts").is_file()
                  and not _has_regression_target(d / f"{d.name}_TRAIN.ts"))


def _panel_to_series(X, what: str) -> List[np.ndarray]:
    """An sktime panel -> list of (L_i, C) float arrays (ValueError naming `what` on NaN/inf)."""
    from sktime.datatypes import convert_to
    return as_series_list(convert_to(X, to_type="df-list"), name=what)


def load_named(name: str) -> Tuple[str, tuple, tuple]:
    """(canonical name, (X_train, y_train), (X_test, y_test)) of an archive dataset, as sktime panels."""
    from sktime.datasets import load_UCR_UEA_dataset
    shipped = shipped_datasets()
    on_disk = [d.name for d in _sktime_data_root().iterdir() if (d / f"{d.name}_TRAIN.ts").is_file()]
    canonical = {n.lower(): n for n in on_disk}.get(name.lower(), name)
    own = _sktime_data_root() / canonical / f"{canonical}_TRAIN.ts"
    if canonical not in shipped and own.is_file():
        raise ValueError(f"dataset {name!r} is a regression problem (@targetLabel), not classification; "
                         f"classification datasets shipped with sktime: {', '.join(shipped)}")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            train = load_UCR_UEA_dataset(canonical, split="train", return_X_y=True)
            test = load_UCR_UEA_dataset(canonical, split="test", return_X_y=True)
    except Exception as e:  # sktime raises RuntimeError/OSError/... when the download fails
        reason = " ".join(str(e).split())[:200]
        raise ValueError(f"dataset {name!r} is not shipped with sktime and could not be downloaded ({reason}); "
                         f"shipped: {', '.join(shipped)}; or pass --train FILE.ts --test FILE.ts") from None
    return canonical, train, test


def _ts_header(path: Path, role: str) -> List[List[str]]:
    """The words of each line before a .ts file's @data line; ValueError naming the file when it
    has no @data line (then it is no .ts file, and sktime's parser would fail obscurely)."""
    header: List[List[str]] = []
    with open(path, errors="replace") as f:
        for line in f:
            words = line.split()
            if words[:1] and words[0].lower() == "@data":
                return header
            header.append(words)
    first = next((" ".join(w) for w in header if w), "")
    raise ValueError(f"{role} file {path} is not a .ts file: it has no @data line (sktime's .ts format: header lines "
                     "starting with @, such as @problemName and @classLabel true A B, then @data and one series a "
                     "line)" + (f"; its first line reads {first[:60]!r}" if first else "; it is empty"))


def load_ts(path: str, role: str) -> tuple:
    """(X, y) of a labelled .ts file; ValueError naming the file when it is missing, is no .ts
    file, does not parse or has labels that its @classLabel line does not declare."""
    from sktime.datasets import load_from_tsfile
    p = Path(path)
    if not p.is_file():
        raise ValueError(f"{role} file {path} does not exist")
    header = _ts_header(p, role)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            X, y = load_from_tsfile(str(p), return_data_type="nested_univ")
    except Exception as e:
        reason = " ".join(str(e).split())[:200]
        raise ValueError(f"{role} file {path} is not a readable labelled .ts file "
                         f"({type(e).__name__}: {reason})") from None
    if _has_regression_target(p):
        raise ValueError(f"{role} file {path} holds a regression target (@targetLabel), not class labels")
    if y is None or len(y) != len(X):
        raise ValueError(f"{role} file {path} has no class labels (@classLabel true ... is needed)")
    # sktime checks the labels against @classLabel only in files with time stamps; it reads them in lower case.
    declared = next(([w.lower() for w in words[2:]] for words in header
                     if [w.lower() for w in words[:2]] == ["@classlabel", "true"]), None)
    undeclared = [] if declared is None else sorted(set(map(str, y)) - set(declared))
    if undeclared:
        raise ValueError(f"{role} file {path} has class labels that its @classLabel line does not declare: "
                         f"{', '.join(map(repr, undeclared))} (declared: {', '.join(map(repr, declared))})")
    return X, y


@dataclass
class Panels:
    """Both splits as (L_i, C) arrays with integer labels."""

    source: dict
    train_x: List[np.ndarray]
    train_y: np.ndarray
    test_x: List[np.ndarray]
    test_y: np.ndarray
    classes: np.ndarray


def load_panels(cfg: ClassifyConfig) -> Panels:
    """Read and check both splits; every problem is a ValueError naming the file or dataset."""
    if cfg.dataset:
        name, (X_tr, y_tr), (X_te, y_te) = load_named(cfg.dataset)
        source = {"dataset": name}
        what = {"train": f"dataset {name} (train split)", "test": f"dataset {name} (test split)"}
    else:
        (X_tr, y_tr), (X_te, y_te) = load_ts(cfg.train_file, "train"), load_ts(cfg.test_file, "test")
        source = {"train_file": str(cfg.train_file), "test_file": str(cfg.test_file)}
        what = {"train": f"train file {cfg.train_file}", "test": f"test file {cfg.test_file}"}
    train_x, test_x = _panel_to_series(X_tr, what["train"]), _panel_to_series(X_te, what["test"])
    if train_x[0].shape[1] != test_x[0].shape[1]:
        n_test, n_train = test_x[0].shape[1], train_x[0].shape[1]
        raise ValueError(f"{what['test']} has {n_test} channel{'s' * (n_test != 1)}, {what['train']} has {n_train}")
    train_y, classes = encode_labels(np.asarray(y_tr).astype(str), name=f"{what['train']} labels")
    test_y, _ = encode_labels(np.asarray(y_te).astype(str), classes, name=f"{what['test']} labels")
    if len(classes) < 2:
        raise ValueError(f"{what['train']} has a single class ({str(classes[0])!r}); classification needs two or more")
    return Panels(source, train_x, train_y, test_x, test_y, classes)


def stratified_order(labels: np.ndarray, seed: int) -> np.ndarray:
    """A permutation of range(len(labels)) whose every prefix holds the classes in (about) their
    overall proportions: member j of n_c shuffled members of a class sits at (j + 0.5) / n_c,
    ties broken at random. Its first k entries are a stratified sample of size k."""
    rng = np.random.default_rng(seed)
    position = np.empty(len(labels))
    for c in np.unique(labels):
        idx = rng.permutation(np.flatnonzero(labels == c))
        position[idx] = (np.arange(len(idx)) + 0.5) / len(idx)
    return np.lexsort((rng.random(len(labels)), position))


def _subset(x: List[np.ndarray], y: np.ndarray, limit: Optional[int]) -> Tuple[List[np.ndarray], np.ndarray]:
    if limit is None or len(y) <= limit:
        return x, y
    keep = np.sort(stratified_order(y, SUBSET_SEED)[:limit])
    return [x[i] for i in keep], y[keep]


# ----------------------------------------------------------------------------- models


@torch.no_grad()
def predict_scores(model: torch.nn.Module, data: PanelDataset, batch_size: int, device: torch.device) -> np.ndarray:
    """Class probabilities (N, n_classes), float64, of every series of `data`, in order; the
    prediction is their argmax."""
    model.eval()
    out = []
    for x, lengths, _ in DataLoader(data, batch_size=batch_size, shuffle=False, collate_fn=collate_unequal):
        logits = model(x.to(device), lengths.to(device))                 # (B, n_classes)
        out.append(torch.softmax(logits.cpu().double(), dim=-1))        # float64 on the CPU (not on MPS)
    return torch.cat(out).numpy()


def minirocket_variant(lengths: List[int], n_channels: int) -> str:
    """The sktime transform for these series (lengths of train and test together)."""
    if len(set(lengths)) == 1 and lengths[0] >= MINIROCKET_MIN_LENGTH:
        return "MiniRocket" if n_channels == 1 else "MiniRocketMultivariate"
    return "MiniRocketMultivariateVariable"


def _minirocket_input(series: List[np.ndarray], variant: str):
    """numpy3D (N, C, L) for the equal-length transforms, a list of (L_i, C) DataFrames otherwise."""
    import pandas as pd
    if variant == "MiniRocketMultivariateVariable":
        return [pd.DataFrame(x) for x in series]
    return np.stack([x.T for x in series])


def fit_minirocket(train_x: List[np.ndarray], train_y: np.ndarray, variant: str, cfg: ClassifyConfig,
                   seed: Optional[int] = None):
    """(fitted transform, fitted classifier) on standardised training series; `seed` (default
    cfg.seed) draws the biases."""
    from sklearn.linear_model import RidgeClassifierCV
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler
    from sktime.transformations import rocket

    common = dict(num_kernels=cfg.minirocket_kernels, random_state=cfg.seed if seed is None else seed, n_jobs=1)
    if variant == "MiniRocketMultivariateVariable":
        common["pad_value_short_series"] = 0.0
    transform = getattr(rocket, variant)(**common)
    classifier = make_pipeline(StandardScaler(with_mean=False), RidgeClassifierCV(alphas=np.logspace(-3, 3, 10)))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        features = np.asarray(transform.fit_transform(_minirocket_input(train_x, variant)))
    classifier.fit(features, train_y)
    return transform, classifier


def warm_up_minirocket(series: List[np.ndarray], variant: str) -> None:
    """Run the `variant` transform once on two of `series` with its fewest kernels (84), so that
    numba compiles (or loads from its cache) the functions that fit_minirocket then calls."""
    from sktime.transformations import rocket

    extra = {"pad_value_short_series": 0.0} if variant == "MiniRocketMultivariateVariable" else {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        getattr(rocket, variant)(num_kernels=84, random_state=0, n_jobs=1, **extra).fit_transform(
            _minirocket_input(series[:2], variant))


def minirocket_state(transform, classifier, variant: str, classes: list, scaler) -> dict:
    """The fitted MiniRocket model as tensors and plain values (loads with
    torch.load(..., weights_only=True)): the transform's kernel parameters (dilations,
    features per dilation, biases, ...; sktime's `parameters` tuple, in its order), the
    feature scaling and the ridge classifier's weights."""
    scale, ridge = classifier[0], classifier[-1]
    return {"variant": variant, "classes": classes, "scaler": scaler.to_dict(),
            "transform_parameters": [torch.as_tensor(np.asarray(p)) for p in transform.parameters],
            "feature_scale": torch.as_tensor(scale.scale_), "ridge_coef": torch.as_tensor(ridge.coef_),
            "ridge_intercept": torch.as_tensor(np.atleast_1d(ridge.intercept_)), "ridge_alpha": float(ridge.alpha_)}


def minirocket_scores(transform, classifier, series: List[np.ndarray], variant: str,
                      n_classes: int) -> np.ndarray:
    """The ridge classifier's decision values (N, n_classes), float64, whose argmax is its
    prediction (two classes: its one decision value d becomes the columns -d, d; a class absent
    from the training series scores -inf)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        features = np.asarray(transform.transform(_minirocket_input(series, variant)))
    d = np.asarray(classifier.decision_function(features), dtype=np.float64)
    d = np.stack([-d, d], axis=1) if d.ndim == 1 else d                   # (N, classes seen)
    scores = np.full((len(series), n_classes), -np.inf)
    scores[:, classifier[-1].classes_] = d
    return scores


def ensemble_accuracy(score_files: List[Path], truth: np.ndarray) -> Optional[float]:
    """Accuracy of the argmax of the runs' class scores averaged (InceptionTime's ensemble of
    seeds: probabilities for the backbones, decision values for MiniRocket); None when a run
    has no scores file (it was run before rlts wrote one)."""
    if not all(f.is_file() for f in score_files):
        return None
    mean = np.mean([load_checkpoint(f)["scores"].numpy() for f in score_files], axis=0)  # (N, n_classes)
    return float((mean.argmax(axis=1) == truth).mean())


def confusion(truth: np.ndarray, pred: np.ndarray, n_classes: int) -> np.ndarray:
    """Counts (n_classes, n_classes): row = true class, column = predicted class."""
    m = np.zeros((n_classes, n_classes), dtype=np.int64)
    np.add.at(m, (truth, pred), 1)
    return m


def summarise_runs(runs: List[dict]) -> dict:
    """A model's results entry from its runs (`tasks._runner.summarise_runs`: mean accuracy and its
    sample standard deviation, ...), with the confusion counts summed over every run's predictions."""
    entry = _summarise_runs(runs, ("accuracy",))
    if len(runs) > 1:
        entry["confusion_matrix"] = np.sum([r["confusion_matrix"] for r in runs], axis=0).tolist()
    return entry


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
    data = load_panels(cfg)
    if cfg.dataset:
        cfg = replace(cfg, dataset=data.source["dataset"])  # the canonical spelling of a shipped name
    n_train_all, n_test_all = len(data.train_y), len(data.test_y)
    train_x, train_y = _subset(data.train_x, data.train_y, cfg.max_train)
    test_x, test_y = _subset(data.test_x, data.test_y, cfg.max_test)
    n_val = int(round(cfg.val_fraction * len(train_y))) if cfg.val_fraction > 0 else 0
    if cfg.val_fraction > 0:
        n_val = max(n_val, 1)
        if n_val >= len(train_y):
            raise ValueError(f"val_fraction {cfg.val_fraction} leaves no training series out of {len(train_y)}; "
                             "lower it or set it to 0")

    if n_val and cfg.train.monitor != "val":  # the holdout decides; record the loss that really does
        cfg = replace(cfg, train=replace(cfg.train, monitor="val"))

    stem = cfg.dataset or Path(cfg.train_file).stem
    out, previous, cfg_dict = open_run(cfg, "classify", stem, _DATA_KEYS, _LEGACY,
                                       file_keys=("train_file", "test_file"))
    log(f"[out] {out}")
    results_path = out / "results.json"

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
    state = {
        "config": cfg_dict,
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
        "results": previous.get("results", {}),
        "partial": previous.get("partial", {}),
    }

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
            transform, classifier = fit_minirocket(std_train, train_y, variant, cfg, seed)
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
            loss_fn = partial(classification_loss, augment=tuple(cfg.augment)) if cfg.augment else classification_loss
            trainer = Trainer(model, loss_fn, train_cfg, run_dir=model_dir, collate_fn=collate_unequal)
            fit = trainer.fit(fit_ds, val_ds)
            train_time = fit["train_time_s"]  # summed over interrupted runs
            scores = predict_scores(trainer.model, test_ds, cfg.eval_batch_size, device)
            extra = {"params": n_params, "epochs": fit["epochs"],
                     "best_val_loss": json_float(fit["best_val_loss"]) if val_ds is not None else None,
                     "early_stopped": fit["early_stopped"]}
        save_atomic({"scores": torch.from_numpy(scores), "classes": classes}, model_dir / SCORES_FILE)
        pred = scores.argmax(axis=1)                                      # (N_test,)
        accuracy = float((pred == test_y).mean())
        log(f"[done] {name}: accuracy {accuracy:.4f} ({train_time:.1f} s)")
        return {"accuracy": accuracy, **extra, "train_time_s": round(train_time, 3),
                "confusion_matrix": confusion(test_y, pred, len(classes)).tolist()}

    seeds = [cfg.seed + k for k in range(cfg.seeds)]
    for name in models:
        if name in state["results"]:
            log(f"[skip] {name}: already in {results_path}")
            continue

        def one_run(seed: int) -> dict:
            # One run: the folder of a single-seed run; several: a folder per seed inside it.
            return fit_and_score(name, seed, out / name if cfg.seeds == 1 else out / name / f"seed{seed}")

        def save_partial(runs: List[dict]) -> None:
            state["partial"][name] = runs
            write_json_atomic(state, results_path)

        runs = run_seeds(seeds, state["partial"].get(name, []), one_run, save_partial)
        state["partial"].pop(name, None)
        state["results"][name] = summarise_runs(runs)
        if len(runs) > 1:
            r = state["results"][name]
            files = [out / name / f"seed{seed}" / SCORES_FILE for seed in seeds]
            r["ensemble_accuracy"] = ensemble = ensemble_accuracy(files, test_y)
            if ensemble is None:
                missing = ", ".join(str(f.relative_to(out)) for f in files if not f.is_file())
                log(f"[note] {name}: no seed ensemble, these runs predate rlts keeping test scores: {missing}")
            log(f"[done] {name}: mean accuracy {r['accuracy']:.4f} ± {r['accuracy_std']:.4f} over seeds "
                f"{seeds[0]}..{seeds[-1]}" + (f"; their ensemble {ensemble:.4f}" if ensemble is not None else ""))
        write_json_atomic(state, results_path)

    write_json_atomic(state, results_path)
    md = write_table(_table_rows(state["results"], table_order(models, state["results"])),
                     out / "results.csv", out / "results.md")
    if cfg.plots:
        plot_confusion(out / "confusion_matrix.png", state, models)
    log(md)
    return state


def plot_confusion(path: Path, state: dict, models: List[str]) -> Optional["matplotlib.figure.Figure"]:
    """One panel per model: test-set counts, row = true class, column = predicted class (summed
    over the seeds of a model run with several). Returns the (closed) figure, None without models."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    done = [m for m in models if m in state["results"]]
    if not done:
        return None
    classes = state["dataset"]["classes"]
    k = len(classes)
    size = min(2.0 + 0.35 * k, 9.0)
    fig, axes = plt.subplots(1, len(done), figsize=(size * len(done), size), squeeze=False)
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
    plt.close(fig)
    return fig


# ----------------------------------------------------------------------------- CLI

ALIASES = {"--train": "--train_file", "--test": "--test_file", "--model": "--models", **TRAIN_ALIASES}
"""Short spellings accepted by `rlts classify` for the config keys (--train.epochs stays a Trainer key)."""


def parse_classify_config(argv: List[str]) -> ClassifyConfig:
    cfg = parse_task_config(ClassifyConfig, argv, CONFIG_PATH, ALIASES)
    cfg.models = split_names(cfg.models)
    return cfg


def cli_run(args) -> int:
    return cli_main("classify", lambda: run_classify(parse_classify_config(list(args.overrides))))
