"""The `rlts` command: one subcommand per task.

Each subcommand registers itself in SUBCOMMANDS as (help, add_arguments, run). Later tasks
(forecast, classify, events, rl, atari, atari100k, record, behaviour, offline) add theirs here.
"""
from __future__ import annotations

import argparse
import platform
import sys
import textwrap
from pathlib import Path
from typing import Callable, Sequence


def _info_args(p: argparse.ArgumentParser) -> None:
    pass


def _info(args: argparse.Namespace) -> int:
    """Print versions and which scan backend each device would use."""
    import torch

    import kernels
    import rlts
    from kernels._common import interpret_mode, triton_available

    try:
        import triton
        triton_version = triton.__version__
    except Exception:
        triton_version = "not installed"
    cuda = torch.cuda.is_available()
    print(f"rlts      {rlts.__version__}")
    print(f"python    {platform.python_version()} ({platform.machine()})")
    print(f"torch     {torch.__version__} (threads: {torch.get_num_threads()})")
    print(f"triton    {triton_version}{' (interpreter mode)' if interpret_mode() else ''}")
    print(f"cuda      {torch.cuda.get_device_name(0) if cuda else 'not available'}")
    backend = "Triton" if cuda and triton_available() else "PyTorch CPU path"
    print(f"scans     linear_scan, softmax_scan, selective_scan, ssd_scan -> {backend}")
    return 0


def _forecast_args(p: argparse.ArgumentParser) -> None:
    p.usage = "rlts forecast --csv FILE [--key value ...] [--config debug]"
    p.epilog = ("Every key of tasks.forecast.ForecastConfig is an option, e.g. --csv FILE --target OT "
                "--features M|S|MS --window 96 --horizon 96 192 336 720 --models aaren,linear,naive "
                "--backbone aaren --d_model 64 --n_layers 2 --train.epochs 10 (or --epochs) --train.lr 1e-3 "
                "--max_train_windows N --out DIR --device auto --plots false. --config debug applies the "
                "overlay of tasks/configs/forecast.yaml. Reusing --out resumes.")
    p.set_defaults(overrides=[])


def _forecast(args: argparse.Namespace) -> int:
    """Train and evaluate forecasters on a CSV series (TSLib protocol)."""
    from tasks.forecast import cli_run
    return cli_run(args)


def _classify_args(p: argparse.ArgumentParser) -> None:
    p.usage = "rlts classify --dataset NAME | --train FILE.ts --test FILE.ts [--key value ...] [--config debug]"
    p.epilog = ("Every key of tasks.classify.ClassifyConfig is an option, e.g. --dataset JapaneseVowels "
                "(sktime ships ArrowHead, BasicMotions, GunPoint, ItalyPowerDemand, JapaneseVowels, OSULeaf, ...) "
                "or --train A_TRAIN.ts --test A_TEST.ts, --models mamba,minirocket --backbone mamba --d_model 64 "
                "--n_layers 2 --pooling mean|last --val_fraction 0.2 --train.epochs 100 (or --epochs) --train.lr 1e-3 "
                "--max_train N --max_test N --out DIR --device auto --plots false. --config debug applies the "
                "overlay of tasks/configs/classify.yaml. Reusing --out resumes.")
    p.set_defaults(overrides=[])


def _classify(args: argparse.Namespace) -> int:
    """Train and evaluate classifiers on a UCR/UEA dataset or .ts files."""
    from tasks.classify import cli_run
    return cli_run(args)


def _events_args(p: argparse.ArgumentParser) -> None:
    p.usage = "rlts events --data FILE.jsonl [--key value ...] [--config debug]"
    p.epilog = ("Every key of tasks.events.EventsConfig is an option, e.g. --data events.jsonl --time_unit s "
                "--models aaren,transformer --backbone aaren --origin first|zero --split 0.6 0.2 0.2 "
                "--true_hawkes MU ALPHA BETA --d_model 64 --train.epochs 50 (or --epochs) --out DIR --device auto. "
                "--config debug applies the overlay of tasks/configs/events.yaml. Reusing --out resumes.")
    p.set_defaults(overrides=[])


def _events(args: argparse.Namespace) -> int:
    """Train and evaluate neural temporal point processes on event sequences."""
    from tasks.events import cli_run
    return cli_run(args)


def _rl_args(p: argparse.ArgumentParser) -> None:
    p.usage = "rlts rl --env CartPole-v1 [--steps N] [--config default|debug] [--out DIR] [--key value ...]"
    p.epilog = ("Every key of tasks.rl.RLConfig is an option, e.g. --env CartPole-v1 --steps 20000 --num_envs 1 "
                "--seed 0 --world_model.backbone mamba2|mamba|aaren|transformer|gru --world_model.d_model 128 "
                "--updates_per_step 0.5 --sampling dfs|uniform --eval_every 2000 --out DIR --device auto. "
                "--config debug applies the overlay of tasks/configs/rl.yaml. Reusing --out resumes.")
    p.set_defaults(overrides=[])


def _rl(args: argparse.Namespace) -> int:
    """Train a Drama world-model agent on a Gymnasium environment."""
    from tasks.rl import cli_run
    return cli_run(args)


def _atari_args(p: argparse.ArgumentParser) -> None:
    p.usage = "rlts atari --game Pong [--steps 100000] [--config atari100k|debug] [--out DIR] [--key value ...]"
    p.epilog = ("Every key of tasks.rl.RLConfig is an option (--game is --env), e.g. --game Breakout --steps 100000 "
                "--world_model.backbone mamba2 --seed 1 --final_eval_episodes 100 --out DIR --device cuda. "
                "--config atari100k (the default) is Drama's protocol; --config debug is a CI-sized smoke run. "
                "Reusing --out resumes.")
    p.set_defaults(overrides=[])


def _atari(args: argparse.Namespace) -> int:
    """Train a Drama world-model agent on an Atari game (Atari100k protocol)."""
    from tasks.rl import cli_run_atari
    return cli_run_atari(args)


def _atari100k_args(p: argparse.ArgumentParser) -> None:
    from tasks.atari100k import add_arguments

    add_arguments(p)  # first: its subcommands' usage lines start from the plain `rlts atari100k`
    p.usage = ("rlts atari100k run --games all|Pong,Breakout,... --seeds 5 [--steps 100000] [--backbone mamba2] "
               "[--config atari100k|debug] [--jobs N] --out DIR | rlts atari100k report DIR")
    p.set_defaults(overrides=[])


def _atari100k(args: argparse.Namespace) -> int:
    """Run the Atari100k benchmark as resumable jobs, or report on it."""
    from tasks.atari100k import main as atari100k_main
    return atari100k_main(args, args.overrides)


def _record_args(p: argparse.ArgumentParser) -> None:
    # tasks.record parses the arguments itself (they arrive as overrides); --help shows its parser,
    # imported only then (it imports torch).
    def record_help() -> str:
        from tasks.record import build_parser
        return build_parser().format_help()

    p.format_help = record_help
    p.set_defaults(overrides=[])


def _record(args: argparse.Namespace) -> int:
    """Record an offline dataset from a policy, or export a trained agent's replay buffer."""
    from tasks.record import main as record_main
    return record_main(list(args.overrides))


def _behaviour_args(p: argparse.ArgumentParser) -> None:
    p.usage = ("rlts behaviour --env Hopper-v5 --steps 100000 --out DIR [--seed 0] [--save_every 10000] "
               "[--learning_starts 10000] [--eval_episodes 10] [--key value ...] [--config debug]")
    p.epilog = ("Every key of tasks.behaviour.BehaviourConfig is an option, e.g. --env HalfCheetah-v5|Hopper-v5|"
                "Pendulum-v1 --batch_size 256 --net_arch 256 256 --progress false. Writes policies/step<N>.pt "
                "snapshots (record a 'medium' dataset with `rlts record --policy DIR/policies/stepN.pt`), "
                "results.json and, at the end, replay.npz (the 'medium-replay' dataset). --config debug applies "
                "the overlay of tasks/configs/behaviour.yaml. Reusing --out resumes.")
    p.set_defaults(overrides=[])


def _behaviour(args: argparse.Namespace) -> int:
    """Train a SAC behaviour policy (Stable-Baselines3) for D4RL-style offline datasets."""
    from tasks.behaviour import cli_run
    return cli_run(args)


def _offline_args(p: argparse.ArgumentParser) -> None:
    p.usage = "rlts offline --dataset FILE.npz [--backbone aaren] [--target_return R] [--key value ...] [--config debug]"
    p.epilog = ("Every key of tasks.offline.OfflineConfig is an option, e.g. --dataset cartpole.npz --models aaren,transformer "
                "--env CartPole-v1 --target_return 500 --context 20 --d_model 64 --eval_episodes 10 --epochs 20 --out DIR. "
                "Datasets come from `rlts record`. Reusing --out resumes.")
    p.set_defaults(overrides=[])


def _offline(args: argparse.Namespace) -> int:
    """Train return-conditioned policies (DecisionAaren vs Decision Transformer) on an offline dataset."""
    from tasks.offline import cli_run
    return cli_run(args)


# A subcommand that sets the default `overrides` (p.set_defaults(overrides=[])) receives the
# arguments argparse does not know as args.overrides: `--key value` config overrides.
SUBCOMMANDS: dict[str, tuple[str, Callable, Callable]] = {
    "info": ("show versions, devices and which kernel backend runs", _info_args, _info),
    "forecast": ("train and evaluate forecasters on a CSV series (TSLib long-term protocol)",
                 _forecast_args, _forecast),
    "classify": ("train and evaluate time-series classifiers (UCR/UEA datasets or .ts files) against MiniRocket",
                 _classify_args, _classify),
    "events": ("train and evaluate event-time models (neural TPPs vs Poisson and Hawkes) on JSON-lines sequences",
               _events_args, _events),
    "rl": ("train a Drama world-model agent on a Gymnasium environment (e.g. CartPole-v1)", _rl_args, _rl),
    "atari": ("train a Drama world-model agent on an Atari game (Atari100k protocol)", _atari_args, _atari),
    "atari100k": ("run the 26-game Atari100k benchmark as resumable jobs, and report on it",
                  _atari100k_args, _atari100k),
    "record": ("record an offline RL dataset from a policy or a trained agent's replay buffer",
               _record_args, _record),
    "behaviour": ("train a SAC behaviour policy (Stable-Baselines3) for D4RL-style medium / medium-replay datasets",
                  _behaviour_args, _behaviour),
    "offline": ("train return-conditioned policies (DecisionAaren vs Decision Transformer) on an offline dataset",
                _offline_args, _offline),
}


def _config(module: str, cls: str, yaml_name: str) -> Callable[[], object]:
    """A function giving the config a command starts from: the dataclass with its YAML file's
    defaults applied. Imported only when --help asks for it."""
    def make():
        import importlib

        from rlts.config import parse_config
        klass = getattr(importlib.import_module(module), cls)
        return parse_config(klass, [], yaml_path=Path(__file__).parent / "configs" / yaml_name)
    return make


CONFIGS: dict[str, Callable[[], object]] = {
    "forecast": _config("tasks.forecast", "ForecastConfig", "forecast.yaml"),
    "classify": _config("tasks.classify", "ClassifyConfig", "classify.yaml"),
    "events": _config("tasks.events", "EventsConfig", "events.yaml"),
    "rl": _config("tasks.rl", "RLConfig", "rl.yaml"),
    "atari": _config("tasks.rl", "RLConfig", "atari.yaml"),
    "behaviour": _config("tasks.behaviour", "BehaviourConfig", "behaviour.yaml"),
    "offline": _config("tasks.offline", "OfflineConfig", "offline.yaml"),
}
"""The commands whose --help lists every config key with its default and docstring."""


class _HelpWithOptions(argparse.Action):
    """-h/--help that adds every config key of the command, with its default and docstring."""

    def __init__(self, option_strings, dest, make_config: Callable[[], object], **kwargs):
        super().__init__(option_strings, dest, nargs=0, default=argparse.SUPPRESS, help="show this help and exit")
        self.make_config = make_config

    def __call__(self, parser, namespace, values, option_string=None):
        from rlts.config import describe_config

        summary = textwrap.fill(parser.epilog or "", 100, break_on_hyphens=False)
        parser.epilog = (f"{summary}\n\nOptions (--key value; the defaults shown are those of the YAML file, "
                         f"before any --config overlay):\n{describe_config(self.make_config())}")
        parser.formatter_class = argparse.RawDescriptionHelpFormatter
        parser.print_help()
        parser.exit()


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="rlts",
        description="rlts: RL and time-series models on linear-time sequence layers (Aaren, Mamba).",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (help_, add_args, _) in SUBCOMMANDS.items():
        p = sub.add_parser(name, help=help_, description=help_, add_help=name not in CONFIGS)
        if name in CONFIGS:
            p.add_argument("-h", "--help", action=_HelpWithOptions, make_config=CONFIGS[name])
        add_args(p)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if args.command is None and not extra:
        parser.print_help()
        return 0
    if extra:
        if not hasattr(args, "overrides"):
            parser.error(f"unrecognized arguments: {' '.join(extra)}")
        args.overrides = extra
    return SUBCOMMANDS[args.command][2](args)


if __name__ == "__main__":
    sys.exit(main())
