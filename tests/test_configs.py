"""The configs of every command: each default lives in one place (the dataclass, or the YAML
file where a task sets a shared section otherwise), every declared range holds for the
defaults and every overlay, and a value outside a range is refused with the key's name."""
import dataclasses

import pytest
import yaml

from rlts.config import check_ranges, param, result_keys
from rlts.tasks.cli import commands

COMMANDS = [c for c in commands().values() if c.config is not None and c.yaml]


def _repeats(section: dict, default, prefix=""):
    """Keys of a YAML mapping whose value equals the dataclass default `default`."""
    out = []
    for key, value in section.items():
        current = getattr(default, key)
        if dataclasses.is_dataclass(current) and isinstance(value, dict):
            out += _repeats(value, current, f"{prefix}{key}.")
        elif value == current or (isinstance(current, (list, tuple)) and value == list(current)):
            out.append(prefix + key)
    return out


@pytest.mark.parametrize("cmd", COMMANDS, ids=lambda c: c.name)
def test_yaml_defaults_do_not_repeat_the_dataclass(cmd):
    data = yaml.safe_load(cmd.yaml_path.read_text())
    assert _repeats(data.get("defaults") or {}, cmd.config()) == []


@pytest.mark.parametrize("cmd", COMMANDS, ids=lambda c: c.name)
def test_defaults_and_overlays_lie_in_their_ranges(cmd):
    for overlay in [None, *cmd.overlays()]:
        check_ranges(cmd.parse(["--config", overlay] if overlay else []))


@pytest.mark.parametrize("name", ["forecast", "classify", "events", "offline"])
def test_supervised_commands_declare_their_result_keys(name):
    cls = commands()[name].config
    keys = result_keys(cls)
    assert {"seed", "train"} <= set(keys) and ("seeds" in keys or not hasattr(cls(), "seeds"))
    assert "out" not in keys and "device" not in keys and "plots" not in keys


def test_check_ranges_names_the_key():
    @dataclasses.dataclass
    class Inner:
        rate: float = param(0.5, within="[0, 1)")

    @dataclasses.dataclass
    class Outer:
        n: int = param(1, within="[1, inf)")
        mode: str = param("a", choices=("a", "b"))
        sizes: list = param(default_factory=lambda: [1, 2], within="[1, inf)")
        inner: Inner = dataclasses.field(default_factory=Inner)

    check_ranges(Outer())
    with pytest.raises(ValueError, match="^n must be at least 1, got 0$"):
        check_ranges(Outer(n=0))
    with pytest.raises(ValueError, match=r"^unknown mode 'c'; use one of a, b$"):
        check_ranges(Outer(mode="c"))
    with pytest.raises(ValueError, match=r"^sizes must be at least 1, got 0$"):
        check_ranges(Outer(sizes=[3, 0]))
    with pytest.raises(ValueError, match=r"^inner\.rate must lie in \[0, 1\), got 1\.0$"):
        check_ranges(Outer(inner=Inner(rate=1.0)))
    with pytest.raises(ValueError, match="inner.rate must lie in"):
        check_ranges(Outer(inner=Inner(rate=float("nan"))))


def test_a_result_section_without_marks_is_compared_whole(tmp_path):
    """A model config that marks no key (every field shapes the model) counts whole; one that
    marks keys counts on those."""
    import json

    from rlts.tasks.runner import load_results

    @dataclasses.dataclass
    class Model:
        width: int = 8
        depth: int = 2

    @dataclasses.dataclass
    class Train:
        lr: float = param(1e-3, result=True)
        progress: bool = True

    @dataclasses.dataclass
    class Run:
        model: Model = param(default_factory=Model, result=True)
        train: Train = param(default_factory=Train, result=True)
        out: str = ""

    path = tmp_path / "results.json"
    path.write_text(json.dumps({"config": dataclasses.asdict(Run())}))
    load_results(path, Run(train=Train(progress=False), out="elsewhere"))   # neither defines a result
    with pytest.raises(ValueError, match=r"model\.depth: 2 -> 3"):
        load_results(path, Run(model=Model(depth=3)))
    with pytest.raises(ValueError, match=r"train\.lr: 0\.001 -> 0\.01"):
        load_results(path, Run(train=Train(lr=1e-2)))
    assert result_keys(Model) == [] and result_keys(Model, section=True) == ["width", "depth"]
