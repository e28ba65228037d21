"""Pieces every task runner shares: the command declaration the `rlts` command is built from,
config parsing with short aliases, the output folder, the resumable results.json, and turning
a ValueError into one clear command-line message.

    COMMAND = Command("forecast", ForecastConfig, "forecast.yaml", run_forecast, aliases=ALIASES)
    cfg = COMMAND.parse(argv)                                       # YAML + overlays + --key value, checked
    out, previous, cfg_dict = open_run(cfg, "forecast", "ETTh1")    # refuses another setup's folder
    write_json_atomic(state, out / "results.json")                  # after every finished job
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import math
from datetime import datetime
from pathlib import Path
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, Iterable, List, Optional, Sequence

from rlts.checkpoint import write_text_atomic
from rlts.config import apply_dict, check_ranges, missing_values, parse_config, result_keys, to_dict

TASKS_DIR = Path(__file__).resolve().parent
CONFIG_DIR = TASKS_DIR / "configs"
"""The YAML defaults and overlays of every command."""
DATA_DIR = TASKS_DIR / "data"
"""Files shipped with rlts: the ETTh1 series of `make run`, the Atari100k reference scores."""

# Short spellings every runner accepts for the Trainer's keys.
TRAIN_ALIASES = {"--epochs": "--train.epochs", "--lr": "--train.lr", "--batch-size": "--train.batch_size",
                 "--batch_size": "--train.batch_size", "--patience": "--train.patience"}


@dataclass(frozen=True)
class Command:
    """One `rlts` subcommand, declared by its task module in `COMMANDS` (tasks/cli.py lists the
    modules)."""

    name: str
    """The subcommand: `rlts <name> --key value ...`."""
    config: type
    """The config dataclass: every field is an option; its docstrings are the --help."""
    yaml: Optional[str]
    """Its YAML defaults and overlays in tasks/configs/ (None: the dataclass defaults only)."""
    run: Callable[[Any], Any]
    """run(cfg) does the work; a ValueError is a user error (one line, exit code 2). An int it
    returns is the exit code (`rlts atari100k run`: 1 when jobs failed); anything else means 0."""
    help: str = ""
    """One line for `rlts --help`."""
    usage: str = ""
    """The usage line of --help (default: `rlts <name> [--key value ...] [--config NAME]`)."""
    stem: Optional[Callable[[Any], str]] = None
    """The name of the run folder made when `--out` is not given: runs/<name>-<stem(cfg)>-<time>
    (None: the command has no run folder, or names it itself)."""
    aliases: Dict[str, str] = field(default_factory=dict)
    """Short spellings of keys, e.g. {"--horizon": "--horizons"}."""
    positional: Optional[str] = None
    """A key a bare first argument stands for (`rlts atari100k report DIR` = `--dir DIR`)."""
    lists: Sequence[str] = ()
    """List keys whose items may also be comma-separated (models)."""
    trains: bool = True
    """Whether it trains models (it then takes --threads N)."""

    @property
    def yaml_path(self) -> Optional[Path]:
        return CONFIG_DIR / self.yaml if self.yaml else None

    def overlays(self) -> List[str]:
        """The names of the YAML file's overlays (--config NAME)."""
        if not self.yaml:
            return []
        from rlts.config import load_yaml
        return [k for k in load_yaml(self.yaml_path) if k != "defaults"]

    def out_folder(self, cfg) -> Optional[Path]:
        """The run folder `cfg` writes to (None if the command has none): `--out`, or a new
        runs/<name>-<stem>-<time>, set on `cfg` so that the run uses it."""
        if self.stem is None:
            return None
        if not cfg.out:
            cfg.out = str(output_folder(None, self.name.replace(" ", "-"), self.stem(cfg)))
        return Path(cfg.out)

    def parse(self, argv: Sequence[str]):
        """The config: dataclass defaults, the YAML defaults, overlays, then `--key value`; every
        key's range checked. A ValueError names the first bad key."""
        argv = list(argv)
        if self.positional and argv and not argv[0].startswith("--"):
            argv = [f"--{self.positional}", argv[0], *argv[1:]]
        cfg = parse_task_config(self.config, argv, self.yaml_path, self.aliases)
        for key in self.lists:
            setattr(cfg, key, split_names(getattr(cfg, key)))
        check_ranges(cfg)
        return cfg


def split_names(items: Sequence[str]) -> List[str]:
    """["a,b", "c"] -> ["a", "b", "c"] (comma- or space-separated lists on the command line)."""
    return [n.strip() for item in items for n in str(item).split(",") if n.strip()]


def resolve_models(models: Sequence[str], backbone: str, baselines: Sequence[str]) -> List[str]:
    """Model names to run: `backbone` replaced by the chosen backbone, duplicates dropped; a
    ValueError names an unknown backbone or model and lists the choices."""
    from rlts.nn import BACKBONES

    choices = sorted(BACKBONES) + list(baselines)
    if backbone not in BACKBONES:
        raise ValueError(f"unknown backbone {backbone!r}; choose one of {', '.join(sorted(BACKBONES))}")
    names: List[str] = []
    for name in split_names(models):
        name = backbone if name == "backbone" else name
        if name not in choices:
            raise ValueError(f"unknown model {name!r}; choose from {', '.join(choices)} (or `backbone`)")
        if name not in names:
            names.append(name)
    if not names:
        raise ValueError(f"no models given; choose from {', '.join(choices)}")
    return names


def run_seeds(seeds: Sequence[int], done: List[dict], run_one: Callable[[int], dict],
              save_partial: Callable[[List[dict]], None]) -> List[dict]:
    """The runs of one model over `seeds` (`--seeds N`): the finished ones of an interrupted
    attempt (`done`, kept under results.json's "partial"), then `run_one(seed)` for each seed
    left, each returned as {"seed": seed, **result}. After every run but the last,
    `save_partial(runs)` writes the runs so far, so a killed job resumes at the next seed."""
    runs = list(done)
    for seed in seeds[len(runs):]:
        runs.append({"seed": seed, **run_one(seed)})
        if len(runs) < len(seeds):
            save_partial(runs)
    return runs


def summarise_runs(runs: List[dict], metrics: Sequence[str]) -> dict:
    """A results entry from the runs of one model with several seeds (dicts with "seed"). One run
    is the entry itself. Several: for each of `metrics` the mean and its sample standard
    deviation (`<metric>_std`; both None where a run has no value, e.g. the mark accuracy of
    unmarked events), the parameters, the training time summed over runs, and the runs
    themselves."""
    if len(runs) == 1:
        return {k: v for k, v in runs[0].items() if k != "seed"}
    entry: dict = {}
    for m in metrics:
        if any(r.get(m) is None for r in runs):  # no value (unmarked events), or a run made before the metric
            entry[m] = entry[f"{m}_std"] = None
            continue
        values = [float(r[m]) for r in runs]
        mean = sum(values) / len(values)
        entry[m] = mean
        entry[f"{m}_std"] = math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1))
    entry.update(params=runs[0]["params"], train_time_s=round(sum(r["train_time_s"] for r in runs), 3), runs=runs)
    return entry


def parse_task_config(cls, argv: Sequence[str], yaml_path: Path, aliases: Dict[str, str]):
    """parse_config with `--alias value` / `--alias=value` spellings mapped to their keys."""
    def alias(tok: str) -> str:
        key, eq, value = tok.partition("=")
        return aliases[key] + eq + value if key in aliases else tok

    return parse_config(cls, [alias(a) for a in argv], yaml_path=yaml_path)


def output_folder(out: Optional[str], task: str, stem: str) -> Path:
    """`out`, or runs/<task>-<stem>-<timestamp>; a ValueError if it exists and is a file."""
    path = Path(out) if out else Path("runs") / f"{task}-{stem}-{datetime.now().strftime('%Y%m%d-%H%M%S')}"
    if path.exists() and not path.is_dir():
        raise ValueError(f"--out {path} exists and is not a folder")
    return path


def file_digests(cfg, file_keys: Sequence[str]) -> Dict[str, str]:
    """{key: sha256 of the file cfg.<key> names} for the keys that name an existing file."""
    digests = {}
    for key in file_keys:
        name = getattr(cfg, key, None)
        if name and Path(name).is_file():
            sha = hashlib.sha256()
            with open(name, "rb") as f:
                for chunk in iter(lambda: f.read(1 << 20), b""):  # (hashlib.file_digest needs Python 3.11)
                    sha.update(chunk)
            digests[key] = sha.hexdigest()
    return digests


def open_run(cfg, task: str, stem: str, file_keys: Sequence[str] = ()):
    """The output folder of a run, created: (out, previous results object or {}, the config as
    a dict with the resolved `out` and `data_sha256`, the digests of the input files named by
    `file_keys`). Refuses (ValueError), before anything is written, a folder holding another
    setup's results (the config's `result` keys; for `file_keys`, other file contents, whatever
    the path's spelling), or files but no results.json: not a run of this command, whose files
    would be overwritten."""
    out = output_folder(cfg.out, task, stem)
    digests = file_digests(cfg, file_keys)
    previous = load_results(out / "results.json", cfg, digests=digests)
    if out.is_dir() and not (out / "results.json").exists():
        # hidden files (.DS_Store, a half-written .results.json.*.tmp of a killed run) and the log
        # of a run killed before its first result do not count
        files = sorted(p.name for p in out.iterdir()
                       if not p.is_dir() and not p.name.startswith(".") and p.name != "log.txt")
        if files:
            raise ValueError(f"--out {out} already holds {', '.join(files[:5])}{' ...' if len(files) > 5 else ''} "
                             f"but no results.json of an `rlts {task}` run, so they would be overwritten; "
                             "choose a new or empty folder")
    out.mkdir(parents=True, exist_ok=True)
    cfg_dict = to_dict(cfg)
    cfg_dict["out"] = str(out)
    cfg_dict["data_sha256"] = digests
    return out, previous, cfg_dict


def table_order(first: Sequence, stored: Iterable) -> list:
    """`first` in its order, then every other name in `stored` in its order: a results table
    lists what this run asked for first, then what earlier runs into the same folder added (a
    rerun with other models or horizons still tables all of them)."""
    return [*first, *(n for n in stored if n not in first)]


def write_json_atomic(obj: dict, path: Path) -> None:
    write_text_atomic(json.dumps(obj, indent=2), path)


def json_float(v: Optional[float]) -> Optional[float]:
    """JSON has no inf/NaN: those (and None) become null."""
    return float(v) if v is not None and math.isfinite(v) else None


def section_defaults(section) -> dict:
    """The field defaults of a nested config dataclass as plain data ({} if it has no
    argument-free constructor)."""
    try:
        return json.loads(json.dumps(to_dict(type(section)())))
    except TypeError:
        return {}


def load_results(path: Path, cfg, data_keys: Optional[Sequence[str]] = None, legacy: Optional[dict] = None,
                 digests: Optional[Dict[str, str]] = None) -> dict:
    """The results object of an earlier run in the same folder ({} if none). A ValueError if the
    file is not a results object, or if it was made with different `data_keys` settings (default:
    the config's `result` keys; data or model settings: its numbers would not be comparable with
    the new ones, or would be reported for settings they were not made with). A key missing from
    the old config is taken to have been run with its value in `legacy` (default: the keys'
    `missing_as`), or, when not there, the new value. A key missing from an old nested config
    (train) is taken to have been run with its dataclass default.
    `digests` ({config key: sha256} of the input files): where the old config recorded them too,
    those files are compared by their contents instead of by the paths' spelling."""
    if not path.exists():
        return {}
    try:
        data = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"{path} exists but is not valid JSON ({e}); move it away or choose another --out") from None
    if not isinstance(data, dict):
        raise ValueError(f"{path} does not hold a results object; move it away or choose another --out")
    data_keys = result_keys(type(cfg)) if data_keys is None else data_keys
    legacy = missing_values(type(cfg)) if legacy is None else legacy
    old, new = data.get("config", {}), json.loads(json.dumps(to_dict(cfg)))  # tuples as JSON lists
    old = {**(legacy or {}), **old}
    for k, value in old.items():
        section = getattr(cfg, k, None)
        if isinstance(value, dict) and dataclasses.is_dataclass(section):
            old[k] = {**section_defaults(section), **value}

    def compared(k: str, a: dict, b: dict) -> List[str]:
        """The keys of nested section `k` (train) that define a result, of those both have."""
        keys = set(result_keys(type(getattr(cfg, k)), section=True))
        return sorted(n for n in a.keys() & b.keys() if n in keys)

    def differs(k: str, a, b) -> bool:
        if isinstance(a, dict) and isinstance(b, dict):
            return any(a[n] != b[n] for n in compared(k, a, b))
        return a != b

    old_digests, digests = old.get("data_sha256"), digests or {}
    if isinstance(old_digests, dict):
        for k in digests:
            if k in old_digests and old_digests[k] != digests[k]:
                raise ValueError(f"{path} holds results made on another {k} file ({old.get(k)!r}: sha256 "
                                 f"{old_digests[k][:12]}..., now {new[k]!r}: {digests[k][:12]}...); "
                                 "use another --out")
        data_keys = [k for k in data_keys if k not in digests or k not in old_digests]
    changed = [k for k in data_keys if k in old and differs(k, old[k], new[k])]
    if changed:
        def show(k: str) -> str:
            a, b = old[k], new[k]
            if isinstance(a, dict) and isinstance(b, dict):  # only the nested keys that differ
                return ", ".join(f"{k}.{n}: {a[n]!r} -> {b[n]!r}" for n in compared(k, a, b) if a[n] != b[n])
            return f"{k}: {a!r} -> {b!r}"

        diff = ", ".join(show(k) for k in changed)
        raise ValueError(f"{path} holds results of a different setup ({diff}); use another --out")
    return data


def read_finished_run(run: Path, task: str, config_cls) -> tuple:
    """(results.json, its config as a `config_cls`) of the folder of an `rlts <task>` run, for
    the commands that apply a finished run; one ValueError naming the folder or the file when
    it is none."""
    path = Path(run) / "results.json"
    if not path.is_file():
        raise ValueError(f"--run {run} is not a finished `rlts {task}` run: it has no results.json")
    try:
        state = json.loads(path.read_text())
        stored = {k: v for k, v in state["config"].items() if k not in ("out", "data_sha256")}
        return state, apply_dict(config_cls(), stored)
    except (KeyError, TypeError, AttributeError, json.JSONDecodeError, UnicodeDecodeError, ValueError) as e:
        reason = " ".join(str(e).split())[:160]
        raise ValueError(f"{path} is not the results of an `rlts {task}` run ({reason})") from None
