"""`rlts classify predict`: a finished `rlts classify` run labels new series, without training.

    rlts classify --train FordA_TRAIN.ts --test FordA_TEST.ts --seeds 3 --out runs/forda     # train once
    rlts classify predict --run runs/forda --ts new.ts --out predictions.csv
    rlts classify predict --run runs/forda --csv new.csv --models minirocket --out mr.csv

The run folder holds everything needed: results.json (the config, the class labels, the
number of channels, and the per-channel mean and std of the training time steps that every
model standardises its input with) and, per model (and per seed, `<model>/seed<S>`, for a run
made with `--seeds N`), the trained model: a backbone's kept weights (`<model>/checkpoints/last.pt`,
the weights the run scored its test set with) and MiniRocket's kernels, feature scaling and
ridge weights (`minirocket/model.pt`), both loaded with torch.load(..., weights_only=True).

Input, one of:
- `--ts FILE.ts`: sktime's .ts format, labelled (`@classLabel true A B ...`, each line ending in
  its label) or not (`@classLabel false`, as sktime writes series without labels); series ids
  0, 1, ... in file order.
- `--csv FILE.csv`: one row per series and time step: an id column named `id` or `series_id`,
  numeric channel columns (every other column except `label`, in file order: channel 0, 1, ...)
  and optionally a `label` column (the same on every row of a series). A series' rows are its
  time steps in order; the series come in the order of their first rows; trailing rows of a
  series whose channel cells are all empty are padding.
- `--npy FILE.npy`: one numeric array (n, channels, length) saved with np.save (sktime's
  numpy3D layout), series shorter than `length` right-padded with NaN (the trailing time steps
  whose channels are all NaN are padding); series ids 0 .. n-1, no labels.
Every series is standardised with the run's scaler and read at its own length, as in training:
backbone models pad each batch on the right and mask the padding (rlts.heads.classify); a
MiniRocket fitted on unequal lengths (MiniRocketMultivariateVariable) takes every series at its
own length, right-padding those shorter than 9 steps with 0. A MiniRocket fitted on series of
one length (MiniRocket, MiniRocketMultivariate) reads series of that length only; another
length is refused (its kernels' dilations were chosen for that length).

Output (`--out`, default predictions.csv; an existing file is never overwritten): one row per
series: `id`, the file's `label` when it has labels, then per model its predicted class and one
column per class of the run (in the run's class order):
- backbone models: `p_<class>`, the class probabilities (softmax of the logits); for a run with
  several seeds, the mean of the seeds' probabilities (the seed ensemble whose accuracy the run
  reports as `ensemble_accuracy`);
- minirocket: `score_<class>`, the ridge classifier's decision values (with several seeds their
  mean, as the run's seed ensemble averages them). They are not probabilities: they neither lie
  in [0, 1] nor sum to 1, and they are not calibrated; the larger, the likelier, and the
  prediction is the class with the largest score (a class absent from the training series
  scores -inf).
With one model the columns are `prediction` and `p_<class>` (or `score_<class>`); with several,
`<model>` and `<model>:p_<class>` (or `<model>:score_<class>`) per model, in --models order.
The default is every finished model of the run.

A labelled input is also scored: per model the accuracy and the confusion matrix (row = true
class, column = predicted class) are printed and written to `<out stem>_metrics.json` beside
`--out` (never over an existing file either).

Bad input (a folder that is no finished `rlts classify` run, a model it has not finished, a
missing or unreadable file, series with another number of channels than the run's, an empty
series, a missing value, a label outside the run's classes, an existing output file) is one
ValueError naming the run, file, model or series (`rlts classify predict: error: ...`, exit
code 2), raised before anything is written.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional

import numpy as np
import torch

from rlts.baselines import minirocket_transform
from rlts.baselines import minirocket_input
from rlts.checkpoint import Checkpointer, write_text_atomic
from rlts.checkpoint import load as load_checkpoint
from rlts.config import param
from rlts.data.panel import PanelDataset, SeriesFile, encode_labels, read_panel_csv, read_panel_npy
from rlts.data.timeseries import StandardScaler
from rlts.data.ucr import read_ts_series
from rlts.heads.classify import predict_proba
from rlts.nn import BACKBONES
from rlts.runtime import select_device
from rlts.tasks.runner import Command, read_finished_run
from rlts.tasks.supervised.classify import BASELINES, ClassifyConfig, build_model, confusion

VARIABLE = "MiniRocketMultivariateVariable"
"""The MiniRocket variant that takes every series at its own length."""
NEEDED = (("dataset", "classes"), ("dataset", "n_channels"), ("protocol", "scaler"))
"""What a run's results.json holds for prediction (besides its config): the class labels, the
number of channels and the per-channel mean and std of the training time steps."""


@dataclass
class PredictConfig:
    """Settings of `rlts classify predict`."""

    run: str = ""
    """The folder of a finished `rlts classify` run."""
    ts: str = ""
    """The series to label as a .ts file (sktime's format), labelled (@classLabel true A B ...)
    or not (@classLabel false); series ids 0, 1, ... in file order."""
    csv: str = ""
    """The series to label as a CSV file, one row per series and time step: an id column (id or
    series_id), numeric channel columns (every other column except label, in file order), and
    optionally a label column; a series' rows in time order; trailing rows of a series with
    every channel cell empty are padding."""
    npy: str = ""
    """The series to label as a .npy file: one array (n, channels, length) (np.save), series
    shorter than length right-padded with NaN; series ids 0 .. n-1, no labels."""
    models: List[str] = param(default_factory=list)
    """Models of the run to predict with (commas split; `backbone` = the run's `backbone` setting);
    default: every finished model of the run."""
    out: str = "predictions.csv"
    """The predictions table to write (never over an existing file): per series its id, its
    label if the file has labels, and per model the predicted class and p_<class> (backbones:
    probabilities) or score_<class> (minirocket: ridge decision values) columns. A labelled file
    also writes <out stem>_metrics.json beside it: accuracy and confusion matrix per model."""
    device: str = "cpu"
    """cpu, cuda or cuda:N (for the backbone models; MiniRocket runs on the CPU)."""


def _run_state(run: Path) -> tuple[dict, ClassifyConfig]:
    """results.json of a classify run and its config; a ValueError when it is none."""
    state, rcfg = read_finished_run(run, "classify", ClassifyConfig)
    try:
        lacking = [f"{section}.{key}" for section, key in NEEDED if key not in state[section]]
    except (KeyError, TypeError) as e:
        raise ValueError(f"{run / 'results.json'} is not the results of an `rlts classify` run ({e})") from None
    if lacking:
        raise ValueError(f"{run / 'results.json'} lacks {', '.join(lacking)}, which predicting needs")
    return state, rcfg


def _runs(job: Path, entry: dict) -> List[Path]:
    """The run folders of a finished model: the job folder, or its seed<S> folders."""
    return [job / f"seed{r['seed']}" for r in entry["runs"]] if "runs" in entry else [job]


def load_backbone(folder: Path, name: str, rcfg: ClassifyConfig, n_channels: int,
                  n_classes: int) -> torch.nn.Module:
    """The backbone model of one run, with the weights the run scored with: the kept (best)
    weights, else (an averaged model without them) the final average, else the last weights."""
    try:
        ckpt = Checkpointer(folder / "checkpoints").load_latest(map_location="cpu", restore_rng=False)
    except (OSError, ValueError) as e:
        reason = " ".join(str(e).split())[:200]
        raise ValueError(f"{folder} holds no readable checkpoint of {name} ({reason})") from None
    if ckpt is None:
        raise ValueError(f"{folder} holds no checkpoint of {name}")
    weights = ckpt.get("best_model")
    if weights is None and ckpt.get("ema") is not None:  # the Trainer's final average (torch's AveragedModel)
        weights = {k[len("module."):]: v for k, v in ckpt["ema"].items() if k.startswith("module.")}
    model = build_model(name, rcfg, n_channels, n_classes)
    try:
        model.load_state_dict(weights if weights is not None else ckpt["model"])
    except (KeyError, RuntimeError) as e:
        raise ValueError(f"the checkpoint in {folder} does not fit the run's {name} model "
                         f"({' '.join(str(e).split())[:200]})") from None
    return model.eval()


class MiniRocketModel:
    """A fitted MiniRocket of a run, rebuilt from its model.pt (rlts.baselines.minirocket_state):
    the sktime transform with the stored kernel parameters, then the feature scaling and the
    ridge classifier's decision values, computed as scikit-learn computes them."""

    def __init__(self, path: Path, seen: List[int], n_classes: int):
        try:
            state = load_checkpoint(path)
            self.variant = state["variant"]
            parameters = tuple(p.numpy() for p in state["transform_parameters"])
            self.scale = state["feature_scale"].numpy()                          # (F,)
            self.coef = state["ridge_coef"].numpy()                              # (classes seen or 1, F)
            self.intercept = state["ridge_intercept"].numpy()
        except (OSError, KeyError, TypeError, AttributeError, ValueError) as e:
            raise ValueError(f"{path} is not a readable MiniRocket model ({' '.join(str(e).split())[:200]})") from None
        if self.coef.shape[0] != (len(seen) if len(seen) > 2 else 1) or self.coef.shape[1] != len(self.scale):
            raise ValueError(f"{path} does not fit its run: ridge weights {tuple(self.coef.shape)} for "
                             f"{len(seen)} training classes and {len(self.scale)} features")
        self.seen, self.n_classes = seen, n_classes
        self.transform = minirocket_transform(self.variant, len(self.scale), None)
        self.transform.parameters = parameters
        self.transform.num_kernels_ = len(self.scale)
        self.transform._is_fitted = True  # fitted by the run: its parameters are set above

    def scores(self, series: List[np.ndarray]) -> np.ndarray:
        """Decision values (N, n_classes), float64, of standardised series (L_i, C), as the run's
        test_scores.pt holds them (rlts.baselines.minirocket_scores)."""
        import warnings

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            features = np.asarray(self.transform.transform(minirocket_input(series, self.variant)))   # (N, F)
        x = np.array(features, order="K")                   # scikit-learn's copy: same layout, same sums
        x /= self.scale.astype(x.dtype)
        d = np.asarray(x @ self.coef.T + self.intercept, dtype=np.float64)   # (N, classes seen or 1)
        d = np.concatenate([-d, d], axis=1) if d.shape[1] == 1 else d
        scores = np.full((len(series), self.n_classes), -np.inf)
        scores[:, self.seen] = d
        return scores


@dataclass
class Loaded:
    """A finished classify run ready to predict: its config, classes, scaler and models."""

    rcfg: ClassifyConfig
    classes: List[str]
    n_channels: int
    length: Optional[int]
    """The one series length of a run fitted on equal lengths, else None."""
    scaler: StandardScaler
    models: Dict[str, list]
    """{name: [model per seed]}: SequenceClassifier (backbones) or MiniRocketModel."""
    device: torch.device

    def seed_scores(self, series: List[np.ndarray]) -> Dict[str, List[np.ndarray]]:
        """{name: [(N, n_classes) per seed]} of raw series (L_i, C): backbone probabilities or
        MiniRocket decision values."""
        std = [self.scaler.transform(x) for x in series]
        data = PanelDataset(series, None, self.scaler)
        out: Dict[str, List[np.ndarray]] = {}
        for name, runs in self.models.items():
            if name in BASELINES:
                out[name] = [model.scores(std) for model in runs]
            else:
                out[name] = [predict_proba(model, data, self.rcfg.eval_batch_size, self.device) for model in runs]
        return out

    def scores(self, series: List[np.ndarray]) -> Dict[str, np.ndarray]:
        """{name: (N, n_classes)}: the mean over the run's seeds (its seed ensemble)."""
        return {name: np.mean(runs, axis=0) for name, runs in self.seed_scores(series).items()}


def load_run(run_dir: str, names: List[str], device: str) -> Loaded:
    """Read a finished run and its models `names` (default: every finished model); every
    problem is one ValueError naming the run, a folder or a model."""
    if not run_dir:
        raise ValueError("give --run DIR (a finished `rlts classify` run)")
    run = Path(run_dir)
    state, rcfg = _run_state(run)
    done = list(state.get("results", {}))
    if not done:
        raise ValueError(f"--run {run} holds no finished model yet; finish it with the same `rlts classify` command")
    names = list(dict.fromkeys(rcfg.backbone if n == "backbone" else n for n in names)) or done
    missing = [m for m in names if m not in done]
    if missing:
        raise ValueError(f"--run {run} has no finished model {', '.join(missing)}; it has {', '.join(done)}")
    data = state["dataset"]
    classes, n_channels = [str(c) for c in data["classes"]], int(data["n_channels"])
    seen = [k for k, n in enumerate(data.get("train_class_counts", [1] * len(classes))) if n > 0]
    scaler = StandardScaler(**{k: state["protocol"]["scaler"][k] for k in ("mean", "std")})
    dev = select_device(device)
    models: Dict[str, list] = {}
    for name in names:
        if name not in BACKBONES and name not in BASELINES:
            raise ValueError(f"--run {run}: model {name!r} is no rlts backbone nor minirocket")
        folders = _runs(run / name, state["results"][name])
        if name in BASELINES:
            for folder in folders:
                if not (folder / "model.pt").is_file():
                    raise ValueError(f"{folder} holds no model.pt of minirocket")
            models[name] = [MiniRocketModel(folder / "model.pt", seen, len(classes)) for folder in folders]
        else:
            models[name] = [load_backbone(folder, name, rcfg, n_channels, len(classes)).to(dev) for folder in folders]
    length = int(data["min_length"]) if data.get("equal_length") and "min_length" in data else None
    return Loaded(rcfg, classes, n_channels, length, scaler, models, dev)


def read_series(cfg: PredictConfig) -> SeriesFile:
    """The series of the one input file given (--ts, --csv or --npy)."""
    given = [(key, getattr(cfg, key)) for key in ("ts", "csv", "npy") if getattr(cfg, key)]
    if len(given) != 1:
        raise ValueError("give one input file: --ts FILE.ts, --csv FILE.csv or --npy FILE.npy"
                         + (f" (got {', '.join('--' + k for k, _ in given)})" if given else ""))
    key, path = given[0]
    read = {"ts": read_ts_series, "csv": read_panel_csv, "npy": read_panel_npy}[key]
    return read(path, role=f"--{key}")


def check_series(loaded: Loaded, data: SeriesFile) -> Optional[np.ndarray]:
    """ValueErrors for series the run's models cannot read; the labels' class codes (N,), or None."""
    what = f"{data.path}"
    c = data.series[0].shape[1]
    if c != loaded.n_channels:
        cols = f" (columns {', '.join(data.channels)})" if data.channels else ""
        raise ValueError(f"{what}: series {data.ids[0]} has {c} channel{'s' * (c != 1)}{cols}; the run's models read "
                         f"{loaded.n_channels}")
    for name, runs in loaded.models.items():
        if name in BASELINES and runs[0].variant != VARIABLE:
            wrong = next((i for i, x in enumerate(data.series) if x.shape[0] != loaded.length), None)
            if wrong is not None:
                others = [m for m in loaded.models if m not in BASELINES]
                raise ValueError(f"{what}: series {data.ids[wrong]} has {data.series[wrong].shape[0]} time steps; the "
                                 f"run's minirocket ({runs[0].variant}) was fitted on series of {loaded.length} steps "
                                 "and reads no other length"
                                 + (f"; predict with --models {','.join(others)}" if others else ""))
    if data.labels is None:
        return None
    codes, _ = encode_labels(data.labels, np.asarray(loaded.classes), name=f"{what} labels")
    return codes


def _columns(name: str, scores: np.ndarray, classes: List[str], several: bool) -> Dict[str, object]:
    """The predicted class and the per-class columns of one model."""
    kind = "score" if name in BASELINES else "p"
    prefix = f"{name}:" if several else ""
    cols: Dict[str, object] = {name if several else "prediction": [classes[k] for k in scores.argmax(axis=1)]}
    for k, label in enumerate(classes):
        cols[f"{prefix}{kind}_{label}"] = scores[:, k]
    return cols


def predict(cfg: PredictConfig) -> Path:
    """Write the predictions table (and, for a labelled file, its metrics); returns its path."""
    import pandas as pd

    out = Path(cfg.out)
    if out.exists():
        raise ValueError(f"--out {out} already exists; choose a new file")
    loaded = load_run(cfg.run, cfg.models, cfg.device)
    data = read_series(cfg)
    truth = check_series(loaded, data)
    metrics_path = out.with_name(f"{out.stem}_metrics.json")
    if truth is not None and metrics_path.exists():
        raise ValueError(f"{metrics_path} already exists (the metrics of a labelled file go there); "
                         "choose another --out")
    scores = loaded.scores(data.series)
    several = len(scores) > 1
    table: Dict[str, object] = {"id": data.ids}
    if data.labels is not None:
        table["label"] = list(data.labels)
    for name, s in scores.items():
        table.update(_columns(name, s, loaded.classes, several))
    write_text_atomic(pd.DataFrame(table).to_csv(index=False), out)
    print(f"rlts classify predict: {len(data.ids)} series of {data.path} labelled by {', '.join(scores)} -> {out}")
    if truth is not None:
        report = {"input": data.path, "run": str(cfg.run), "n_series": len(truth), "classes": loaded.classes,
                  "models": {}}
        for name, s in scores.items():
            pred = s.argmax(axis=1)
            matrix = confusion(truth, pred, len(loaded.classes))
            right = int((pred == truth).sum())
            report["models"][name] = {"accuracy": right / len(truth), "correct": right,
                                      "seeds": len(loaded.models[name]), "confusion_matrix": matrix.tolist()}
            print(f"{name}: accuracy {right / len(truth):.4f} ({right} of {len(truth)}"
                  + (f"; the ensemble of {len(loaded.models[name])} seeds" if len(loaded.models[name]) > 1 else "")
                  + "); confusion matrix (row = true class, column = predicted):")
            width = max(len(str(v)) for v in [*loaded.classes, *matrix.ravel()])
            print("  " + " " * width + " " + " ".join(f"{c:>{width}}" for c in loaded.classes))
            for label, row in zip(loaded.classes, matrix):
                print(f"  {label:>{width}} " + " ".join(f"{v:>{width}}" for v in row))
        write_text_atomic(json.dumps(report, indent=2), metrics_path)
        print(f"rlts classify predict: metrics -> {metrics_path}")
    return out


COMMANDS = (
    Command("classify predict", PredictConfig, None, predict, trains=False, lists=("models",),
            aliases={"--model": "--models"},
            help="label new series (.ts, CSV or .npy) with a finished `rlts classify` run (no training)",
            usage="rlts classify predict --run DIR (--ts FILE.ts | --csv FILE.csv | --npy FILE.npy) "
                  "[--models NAME] [--out predictions.csv] [--device cpu]"),
)
