from dataclasses import dataclass, field
from typing import Optional

import pytest

from rlts.config import describe_config, parse_config, parse_overrides, save_yaml, load_yaml


@dataclass
class Model:
    d_model: int = 64
    backbone: str = "aaren"


@dataclass
class Run:
    lr: float = 1e-3
    steps: int = 100
    horizons: tuple[int, ...] = (96,)
    amp: bool = False
    note: Optional[str] = None
    model: Model = field(default_factory=Model)


YAML = """
defaults:
  lr: 3.0e-4
  model: {d_model: 128}
debug:
  steps: 5
  model: {d_model: 16}
atari:
  model: {backbone: mamba2}
"""


@pytest.fixture
def cfg_file(tmp_path):
    p = tmp_path / "run.yaml"
    p.write_text(YAML)
    return p


def test_defaults_overlays_and_overrides_apply_in_order(cfg_file):
    cfg = parse_config(Run, ["--config", "debug,atari", "--model.d_model", "32", "--horizons", "96", "192",
                             "--amp", "--note", "x"], yaml_path=cfg_file)
    assert cfg.lr == pytest.approx(3e-4)          # from defaults
    assert cfg.steps == 5                         # from debug
    assert cfg.model.backbone == "mamba2"         # from atari
    assert cfg.model.d_model == 32                # command line wins over overlays
    assert cfg.horizons == (96, 192) and cfg.amp is True and cfg.note == "x"


def test_number_lists_may_be_comma_separated(cfg_file):
    assert parse_config(Run, ["--horizons", "96,192", "336"], yaml_path=cfg_file).horizons == (96, 192, 336)
    assert parse_config(Run, ["--horizons=96,192"], yaml_path=cfg_file).horizons == (96, 192)
    with pytest.raises(ValueError, match="`horizons` expects an integer, got 'x'"):
        parse_config(Run, ["--horizons", "96,x"], yaml_path=cfg_file)


def test_without_file_uses_dataclass_defaults():
    cfg = parse_config(Run, ["--steps=1e3", "--lr", "0.5"])
    assert cfg.steps == 1000 and cfg.lr == 0.5 and cfg.model.d_model == 64


@pytest.mark.parametrize("argv, match", [
    (["--modle.d_model", "3"], "unknown config key `modle`.*model"),
    (["--model.d_modl", "3"], "unknown config key `model.d_modl`.*model.d_model"),
    (["--steps", "2.5"], "`steps` expects an integer"),
    (["--amp", "maybe"], "`amp` expects true/false"),
    (["--lr", "fast"], "`lr` expects float"),
    (["--model", "3"], "`model` is a section"),
    (["steps", "3"], "expected `--key value`"),
])
def test_bad_overrides_name_the_key(argv, match):
    with pytest.raises(ValueError, match=match):
        parse_config(Run, argv)


def test_unknown_overlay_lists_available(cfg_file):
    with pytest.raises(ValueError, match="unknown config overlay `fast`.*debug, atari"):
        parse_config(Run, ["--config", "fast"], yaml_path=cfg_file)


def test_overlay_without_file_is_an_error():
    with pytest.raises(ValueError, match="no config file"):
        parse_config(Run, ["--config", "debug"])


def test_yaml_round_trip(tmp_path, cfg_file):
    cfg = parse_config(Run, ["--config", "debug"], yaml_path=cfg_file)
    save_yaml(cfg, tmp_path / "saved.yaml")
    again = parse_config(Run, ["--config", "saved"], yaml_path=_as_overlay(tmp_path))
    assert again == cfg


def _as_overlay(tmp_path):
    import yaml
    p = tmp_path / "wrapped.yaml"
    p.write_text(yaml.safe_dump({"saved": load_yaml(tmp_path / "saved.yaml")}))
    return p


def test_parse_overrides_collects_lists_and_flags():
    names, upd = parse_overrides(["--config", "a,b", "--x.y", "1", "2", "--flag"])
    assert names == ["a", "b"] and upd == {"x": {"y": ["1", "2"]}, "flag": "true"}


def test_describe_config_writes_values_as_typed_and_says_when_a_list_is_empty():
    text = describe_config(Run(horizons=(), note=None))
    assert "  --horizons (empty)\n" in text           # not left blank
    assert "  --note none\n" in text and "  --amp false\n" in text and "  --model.d_model 64" in text
    assert "  --horizons 96 192\n" in describe_config(Run(horizons=(96, 192)))
