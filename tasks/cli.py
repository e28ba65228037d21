"""The `rlts` command: one subcommand per task.

Each subcommand registers itself in SUBCOMMANDS as (help, add_arguments, run). Later tasks
(forecast, classify, events, rl, atari, atari100k, offline) add theirs here.
"""
from __future__ import annotations

import argparse
import platform
import sys
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


SUBCOMMANDS: dict[str, tuple[str, Callable, Callable]] = {
    "info": ("show versions, devices and which kernel backend runs", _info_args, _info),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="rlts",
        description="rlts: RL and time-series models on linear-time sequence layers (Aaren, Mamba).",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (help_, add_args, _) in SUBCOMMANDS.items():
        add_args(sub.add_parser(name, help=help_, description=help_))
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 0
    return SUBCOMMANDS[args.command][2](args)


if __name__ == "__main__":
    sys.exit(main())
