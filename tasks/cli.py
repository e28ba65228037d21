"""The `rlts` command, built from the commands its task modules declare.

Every module in MODULES declares `COMMANDS` (tasks.runner.Command: name, config dataclass,
YAML file, run function); this file loops over them. Every subcommand takes its options in one
style, `--key value` for each key of its config dataclass (nested keys as `--train.lr 1e-3`),
`--config NAME` for an overlay of its YAML file, and `--threads N` when it trains; `--help`
lists every key with its default and docstring, and the overlays.

What a person meets at the terminal, the same for every command: a bad option or input is one
line (`rlts <command>: error: ...`, exit code 2); Ctrl-C is one line too, and running the same
command again resumes; a finished run lists the files it wrote and how to open TensorBoard; the
run folder keeps log.txt, a copy of what the command printed.
"""
from __future__ import annotations

import argparse
import importlib
import platform
import sys
import textwrap
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Sequence

from rlts.tasks.runner import Command

MODULES = (
    "rlts.tasks.supervised.forecast",
    "rlts.tasks.supervised.forecast_predict",
    "rlts.tasks.supervised.classify",
    "rlts.tasks.supervised.classify_predict",
    "rlts.tasks.supervised.events",
    "rlts.tasks.supervised.events_predict",
    "rlts.tasks.rl.loop",
    "rlts.tasks.atari100k.run",
    "rlts.tasks.atari100k.report",
    "rlts.tasks.rl.record",
    "rlts.tasks.rl.play",
    "rlts.tasks.rl.behaviour",
    "rlts.tasks.supervised.offline",
)
"""The task modules, in the order `rlts --help` lists their commands."""


# ----------------------------------------------------------------------------- rlts info


@dataclass
class InfoConfig:
    """`rlts info` takes no options."""


def show_info(cfg: InfoConfig) -> None:
    """Print versions and which scan backend each device would use."""
    import torch

    import rlts
    from rlts.kernels import interpret_mode, triton_available

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


INFO = Command("info", InfoConfig, None, show_info, help="show versions, devices and which kernel backend runs",
               trains=False)


def commands() -> Dict[str, Command]:
    """{name: Command} of every subcommand, in --help order."""
    found = {INFO.name: INFO}
    for module in MODULES:
        for cmd in importlib.import_module(module).COMMANDS:
            found[cmd.name] = cmd
    return found


# ----------------------------------------------------------------------------- --help


class _HelpWithOptions(argparse.Action):
    """-h/--help that adds every config key of the command, with its default and docstring."""

    def __init__(self, option_strings, dest, command: Command, **kwargs):
        super().__init__(option_strings, dest, nargs=0, default=argparse.SUPPRESS, help="show this help and exit")
        self.command = command

    def __call__(self, parser, namespace, values, option_string=None):
        from rlts.config import describe_config

        cmd = self.command
        overlays = cmd.overlays()
        lines = [textwrap.fill(cmd.help, 100)]
        if overlays:
            lines.append(f"Overlays (--config NAME, of tasks/configs/{cmd.yaml}): {', '.join(overlays)}.")
        if cmd.trains:
            lines.append("--threads N: CPU threads for PyTorch (default: its own choice, every core); on a "
                         "machine shared with other jobs, --threads 1 avoids oversubscription.")
        if cmd.aliases:
            lines.append("Short spellings: " + ", ".join(f"{a} = {k}" for a, k in cmd.aliases.items()) + ".")
        lines = [textwrap.fill(line, 100, break_on_hyphens=False) for line in lines]
        options = describe_config(cmd.parse([]))
        if options:
            lines.append("Options (--key value; the defaults shown are those of the YAML file, before any "
                         f"--config overlay):\n{options}")
        parser.epilog = "\n\n".join(lines)
        parser.formatter_class = argparse.RawDescriptionHelpFormatter
        parser.print_help()
        parser.exit()


def build_parser(found: Optional[Dict[str, Command]] = None) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="rlts",
        description="rlts: RL and time-series models on linear-time sequence layers (Aaren, Mamba).",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, cmd in (found or commands()).items():
        p = sub.add_parser(name, help=cmd.help, description=None, add_help=False)
        p.add_argument("-h", "--help", action=_HelpWithOptions, command=cmd)
        p.usage = cmd.usage or f"rlts {name} [--key value ...]" + (" [--config NAME]" if cmd.yaml else "")
    return parser


# ----------------------------------------------------------------------------- running


def _pop_threads(argv: List[str]) -> tuple[Optional[int], List[str]]:
    """(--threads N or None, argv without it); a ValueError for a bad N."""
    rest, threads, i = [], None, 0
    while i < len(argv):
        key, eq, inline = argv[i].partition("=")
        if key == "--threads":
            value = inline if eq else (argv[i + 1] if i + 1 < len(argv) else "")
            i += 1 if eq else 2
            try:
                threads = int(value)
            except ValueError:
                threads = 0
            if threads < 1:
                raise ValueError(f"--threads expects a positive integer, got {value!r}")
            continue
        rest.append(argv[i])
        i += 1
    return threads, rest


class _Tee:
    """sys.stdout that also appends what is printed to <folder>/log.txt once the folder exists
    (nothing is written before the run has created it; what came before is written then)."""

    def __init__(self, stream, folder: Optional[Path]):
        self.stream, self.folder, self.pending, self.file = stream, folder, [], None

    def write(self, text: str) -> int:
        n = self.stream.write(text)
        if self.folder is None:
            return n
        if self.file is None and self.folder.is_dir():
            self.file = open(self.folder / "log.txt", "a", encoding="utf-8")
            self.file.write("".join(self.pending))
            self.pending = []
        if self.file is not None:
            self.file.write(text)
            self.file.flush()
        else:
            self.pending.append(text)
        return n

    def flush(self) -> None:
        self.stream.flush()

    def __getattr__(self, name):
        return getattr(self.stream, name)

    def close(self) -> None:
        if self.file is not None:
            self.file.close()


def _written(out: Path) -> List[str]:
    """What a run folder holds, for the closing lines: tables, plots, TensorBoard, checkpoints."""
    files = sorted(p for p in out.iterdir() if p.is_file() and not p.name.startswith("."))
    lines = []
    kinds = (("tables", (".md", ".csv", ".json")), ("plots", (".png", ".gif", ".mp4")),
             ("data", (".npz", ".pt", ".jsonl")))
    for kind, suffixes in kinds:
        names = [p.name for p in files if p.suffix in suffixes]
        if names:
            lines.append(f"  {kind + ':':14s}{', '.join(names)}")
    tb = sorted({str(p.parent.parent.relative_to(out)) or "." for p in out.rglob("events.out.tfevents*")})
    ckpt = sorted({str(p.relative_to(out)) for p in out.rglob("checkpoints") if p.is_dir()})
    if ckpt:
        lines.append(f"  {'checkpoints:':14s}{', '.join(ckpt[:6])}{' ...' if len(ckpt) > 6 else ''}")
    if tb:
        lines.append(f"  {'TensorBoard:':14s}tensorboard --logdir {out}   ({len(tb)} run{'s' * (len(tb) > 1)})")
    if (out / "log.txt").exists():
        lines.append(f"  {'log:':14s}log.txt")
    return lines


def execute(cmd: Command, argv: Sequence[str]) -> int:
    """Parse, run and report one command; exit code 0, 2 (bad input) or 130 (interrupted)."""
    tee = None
    try:
        threads, argv = _pop_threads(list(argv)) if cmd.trains else (None, list(argv))
        cfg = cmd.parse(argv)
        if threads is not None:
            import torch
            torch.set_num_threads(threads)
        out = cmd.out_folder(cfg)
        tee = _Tee(sys.stdout, out)
        sys.stdout = tee
        code = cmd.run(cfg)
        if out is not None and out.is_dir():
            print(f"rlts {cmd.name}: wrote {out}")
            for line in _written(out):
                print(line)
        if isinstance(code, int) and not isinstance(code, bool):
            return code
    except ValueError as e:
        print(f"rlts {cmd.name}: error: {' '.join(str(e).split())}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"\nrlts {cmd.name}: interrupted; run the same command to resume", file=sys.stderr)
        return 130
    finally:
        if tee is not None:
            sys.stdout = tee.stream
            tee.close()
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """`rlts COMMAND [--key value ...]`; a command may be two words (`rlts atari100k run`)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    found = commands()
    if not argv or argv[0] in ("-h", "--help"):
        build_parser(found).print_help(sys.stdout if argv else sys.stderr)
        return 0 if argv else 2
    words = 2 if " ".join(argv[:2]) in found else 1
    name, rest = " ".join(argv[:words]), argv[words:]
    if name not in found:
        build_parser(found).parse_args([name])  # argparse's message: invalid choice ... (exit 2)
    if any(a in ("-h", "--help") for a in rest):
        build_parser(found).parse_args([name, "--help"])  # prints and exits 0
    return execute(found[name], rest)


if __name__ == "__main__":
    sys.exit(main())
