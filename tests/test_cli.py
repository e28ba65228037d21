import subprocess
import sys

from tasks.cli import main


def test_help_lists_subcommands(capsys):
    assert main([]) == 0
    assert "info" in capsys.readouterr().out


def test_console_script_help_runs():
    out = subprocess.run([sys.executable, "-m", "tasks.cli", "--help"], capture_output=True, text=True)
    assert out.returncode == 0 and "usage: rlts" in out.stdout


def test_info_reports_backends(capsys):
    assert main(["info"]) == 0
    out = capsys.readouterr().out
    assert "torch" in out and "scans" in out
