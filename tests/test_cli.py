import re
import subprocess
import sys

import pytest

from rlts.tasks.cli import main


def test_help_lists_subcommands(capsys):
    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    assert "info" in out and "atari100k run" in out and "offline" in out


def test_no_command_is_a_usage_error(capsys):
    assert main([]) == 2
    assert "usage: rlts" in capsys.readouterr().err


def test_console_script_help_runs():
    out = subprocess.run([sys.executable, "-m", "rlts.tasks.cli", "--help"], capture_output=True, text=True)
    assert out.returncode == 0 and "usage: rlts" in out.stdout


def test_info_reports_backends(capsys):
    assert main(["info"]) == 0
    out = capsys.readouterr().out
    assert "torch" in out and "scans" in out


def _keys(cls, prefix=""):
    """Every option a config dataclass accepts, nested sections as section.key (independent
    of rlts.config: read from the dataclass fields)."""
    import dataclasses
    keys = []
    for f in dataclasses.fields(cls):
        default = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
        keys += _keys(type(default), f"{prefix}{f.name}.") if dataclasses.is_dataclass(default) \
            else [prefix + f.name]
    return keys


@pytest.mark.parametrize("command, module, cls", [
    ("forecast", "rlts.tasks.supervised.forecast", "ForecastConfig"),
    ("classify", "rlts.tasks.supervised.classify", "ClassifyConfig"),
    ("events", "rlts.tasks.supervised.events", "EventsConfig"),
    ("rl", "rlts.tasks.rl.config", "RLConfig"), ("atari", "rlts.tasks.rl.config", "RLConfig"),
    ("behaviour", "rlts.tasks.rl.behaviour", "BehaviourConfig"),
    ("offline", "rlts.tasks.supervised.offline", "OfflineConfig"),
    ("record", "rlts.tasks.rl.record", "RecordConfig"),
    ("atari100k run", "rlts.tasks.atari100k.run", "Atari100kRunConfig"),
    ("atari100k report", "rlts.tasks.atari100k.report", "ReportConfig"),
])
def test_command_help_lists_every_config_key_with_its_default_and_doc(capsys, command, module, cls):
    import importlib
    klass = getattr(importlib.import_module(module), cls)
    with pytest.raises(SystemExit) as exit_:
        main([*command.split(), "--help"])
    assert exit_.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith(f"usage: rlts {command}")
    listed = re.findall(r"^  --(\S+)", out, flags=re.M)
    assert set(_keys(klass)) <= set(listed)
    for key in _keys(klass):  # each key is followed by its docstring
        assert re.search(rf"^  --{re.escape(key)} .*\n {{6}}\S", out, flags=re.M), key


def test_help_shows_the_task_defaults_and_the_docstrings(capsys):
    with pytest.raises(SystemExit):
        main(["classify", "--help"])
    out = capsys.readouterr().out
    assert "  --bidirectional true\n" in out and "  --train.patience 0\n" in out  # the classifier's shared defaults, not TrainConfig's
    assert "  --augment window_warp\n" in out
    with pytest.raises(SystemExit):
        main(["forecast", "--help"])
    out = capsys.readouterr().out
    assert "  --train.ema 0.99\n" in out and "  --target none\n" in out and "  --csv ''\n" in out
    assert re.search(r"--date_format none\n +Format of the dates for pandas.to_datetime, e.g. %d/%m/%Y", out)


@pytest.mark.parametrize("sub", ["run", "report"])
def test_atari100k_subcommand_usage_is_its_own(capsys, sub):
    with pytest.raises(SystemExit):
        main(["atari100k", sub, "--help"])
    first = capsys.readouterr().out.splitlines()[0]
    assert first.startswith(f"usage: rlts atari100k {sub} ") and "|" not in first


def test_every_command_has_a_config_dataclass():
    """Every subcommand takes its options in the one style: its config dataclass, parsed by
    Command.parse (no command parses its own argument list)."""
    import dataclasses

    from rlts.tasks.cli import commands
    for cmd in commands().values():
        assert dataclasses.is_dataclass(cmd.config), cmd.name
        assert dataclasses.is_dataclass(cmd.parse([])), cmd.name
