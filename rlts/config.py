"""Experiment configs: one dataclass per model or run, YAML defaults with named overlays,
and `--key value` command-line overrides.

A YAML config file maps overlay names to partial configs, DreamerV3-style:

    defaults:            # always applied first
      lr: 3.0e-4
      model: {d_model: 256, n_layers: 4}
    debug:               # applied with --config debug
      model: {d_model: 32}

`parse_config(RunConfig, argv, yaml_path=...)` builds the dataclass from its own defaults,
then the file's `defaults`, then each overlay named by `--config a,b` in order, then every
`--key value` (nested fields as `--model.d_model 64`). Unknown keys and badly typed values
stop with a ValueError that names the key.

Each field declares, next to its default, what a run needs to know about it (`param`):

    window: int = param(96, result=True, within="[1, inf)")   # with its docstring below

- `result=True`: the key defines a result: a rerun into a folder made with another value is
  refused (`result_keys`); a section (a nested dataclass) marked so is compared on its own
  result keys, or, where its class marks none (a model's config, whose every field shapes the
  model), on all its fields;
- `within="[0, 1)"`: the range of a number (each item of a list), `choices=(...)`: the values
  of a string; `check_ranges(cfg)` raises a ValueError naming the first key outside them;
- `missing_as=V`: the value a results folder written without this key was made with.
"""
from __future__ import annotations

import ast
import dataclasses
import difflib
import inspect
import textwrap
import types
import typing
from pathlib import Path
from typing import Any, Sequence, TypeVar

import yaml

T = TypeVar("T")


_UNSET = object()


def param(default: Any = dataclasses.MISSING, *, default_factory: Any = dataclasses.MISSING, result: bool = False,
          within: str | None = None, choices: Sequence[Any] | None = None, missing_as: Any = _UNSET) -> Any:
    """A dataclass field with its default and what a run needs to know about it (module docstring)."""
    meta: dict = {"result": result}
    if within is not None:
        meta["within"] = _parse_interval(within)
    if choices is not None:
        meta["choices"] = tuple(choices)
    if missing_as is not _UNSET:
        meta["missing_as"] = missing_as
    return dataclasses.field(default=default, default_factory=default_factory, metadata=meta)


def _parse_interval(text: str) -> tuple:
    """"[0, 1)" -> (text, 0.0, 1.0, closed low, open high); "inf" bounds are open."""
    t = text.replace(" ", "")
    if len(t) < 5 or t[0] not in "[(" or t[-1] not in "])" or "," not in t:
        raise ValueError(f"bad interval {text!r}; write it as [low, high) with inf for no bound")
    low, high = (float(v) for v in t[1:-1].split(","))
    return text.replace(" ", "").replace(",", ", "), low, high, t[0] == "[", t[-1] == "]"


def _in_interval(v: float, interval: tuple) -> bool:
    _, low, high, low_closed, high_closed = interval
    return ((v >= low if low_closed else v > low) and (v <= high if high_closed else v < high))


def _describe_interval(interval: tuple) -> str:
    text, low, high, low_closed, _ = interval
    if high == float("inf") and low_closed:
        return f"be at least {low:g}"
    if high == float("inf"):
        return f"be above {low:g}"
    return f"lie in {text}"


def check_ranges(cfg: Any, prefix: str = "") -> None:
    """A ValueError naming the first key of `cfg` (nested sections as `section.key`) outside the
    range or the choices its `param` declares. None passes (optional keys)."""
    for f in dataclasses.fields(cfg):
        value, key = getattr(cfg, f.name), prefix + f.name
        if dataclasses.is_dataclass(value):
            check_ranges(value, key + ".")
            continue
        items = value if isinstance(value, (list, tuple)) else [value]
        for v in items:
            if v is None:
                continue
            if "within" in f.metadata and isinstance(v, float) and abs(v) == float("inf"):
                raise ValueError(f"{key} must be finite, got {v}")
            if "within" in f.metadata and (isinstance(v, bool) or not isinstance(v, (int, float))
                                           or v != v or not _in_interval(v, f.metadata["within"])):
                raise ValueError(f"{key} must {_describe_interval(f.metadata['within'])}, got {v}")
            if "choices" in f.metadata and v not in f.metadata["choices"]:
                raise ValueError(f"unknown {key} {v!r}; use one of {', '.join(map(str, f.metadata['choices']))}")


def result_keys(cls: type, section: bool = False) -> list[str]:
    """The keys of config class `cls` declared `result=True`: those whose change makes earlier
    results in the same folder incomparable. `section`: `cls` is a nested section marked as a
    result; a class that marks no key then counts with all its keys."""
    keys = [f.name for f in dataclasses.fields(cls) if f.metadata.get("result")]
    return keys if keys or not section else [f.name for f in dataclasses.fields(cls)]


def missing_values(cls: type) -> dict:
    """{key: value} for the keys of `cls` that declare `missing_as`: the values a results folder
    written without them was made with."""
    return {f.name: f.metadata["missing_as"] for f in dataclasses.fields(cls) if "missing_as" in f.metadata}


def to_dict(cfg: Any) -> dict:
    """Dataclass (nested) -> plain dict of YAML-friendly values."""
    return dataclasses.asdict(cfg)


def save_yaml(cfg: Any, path: str | Path) -> None:
    Path(path).write_text(yaml.safe_dump(to_dict(cfg), sort_keys=False))


def load_yaml(path: str | Path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"config file {path} does not exist")
    data = yaml.safe_load(path.read_text()) or {}
    if not isinstance(data, dict):
        raise ValueError(f"config file {path} must hold a mapping of overlay names, got {type(data).__name__}")
    return data


def _field_types(cls: type) -> dict[str, Any]:
    hints = typing.get_type_hints(cls)
    return {f.name: hints[f.name] for f in dataclasses.fields(cls)}


def _unwrap_optional(tp: Any) -> tuple[Any, bool]:
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(args) == 1 and len(typing.get_args(tp)) == 2:
            return args[0], True
    return tp, False


def _coerce(key: str, value: Any, tp: Any) -> Any:
    """Convert a YAML or command-line value to the field's declared type."""
    tp, optional = _unwrap_optional(tp)
    if value is None or (optional and isinstance(value, str) and value.lower() in ("none", "null")):
        if optional:
            return None
        raise ValueError(f"config key `{key}` may not be empty (expected {getattr(tp, '__name__', tp)})")
    origin = typing.get_origin(tp)
    if origin in (list, tuple):
        args = typing.get_args(tp)
        inner = args[0] if args else str
        items = value if isinstance(value, (list, tuple)) else [value]
        if inner in (int, float):  # numbers may come comma-separated too: --horizons 96,192
            items = [p for v in items for p in (v.split(",") if isinstance(v, str) else [v]) if p != ""]
        out = [_coerce(key, v, inner) for v in items]
        return tuple(out) if origin is tuple else out
    if tp is bool:
        if isinstance(value, bool):
            return value
        text = str(value).lower()
        if text in ("1", "true", "yes", "on"):
            return True
        if text in ("0", "false", "no", "off"):
            return False
        raise ValueError(f"config key `{key}` expects true/false, got {value!r}")
    if tp is int:
        bad = ValueError(f"config key `{key}` expects an integer, got {value!r}")
        if isinstance(value, bool):
            raise bad
        if isinstance(value, int):
            return value
        if isinstance(value, str):
            try:
                return int(value)  # exact for long integer strings
            except ValueError:
                pass
        try:
            f = float(value)  # accepts "1e5" and 3.0
        except (TypeError, ValueError):
            raise bad from None
        if not f.is_integer():
            raise bad
        return int(f)
    if tp in (float, str):
        try:
            return tp(value)
        except (TypeError, ValueError):
            raise ValueError(f"config key `{key}` expects {tp.__name__}, got {value!r}") from None
    return value


def _unknown(key: str, known: Sequence[str]) -> ValueError:
    near = difflib.get_close_matches(key, list(known), n=3)
    hint = f"; did you mean {', '.join(near)}?" if near else f"; known keys: {', '.join(sorted(known))}"
    return ValueError(f"unknown config key `{key}`{hint}")


def apply_dict(cfg: T, updates: dict, prefix: str = "") -> T:
    """Return a copy of dataclass `cfg` with (nested) `updates` applied."""
    types_ = _field_types(type(cfg))
    changes = {}
    for name, value in updates.items():
        key = prefix + name
        if name not in types_:
            raise _unknown(key, [prefix + k for k in types_])
        current = getattr(cfg, name)
        if dataclasses.is_dataclass(current):
            if not isinstance(value, dict):
                raise ValueError(f"config key `{key}` is a section; give it a mapping, got {value!r}")
            changes[name] = apply_dict(current, value, prefix=key + ".")
        else:
            changes[name] = _coerce(key, value, types_[name])
    return dataclasses.replace(cfg, **changes)


def _nest(dotted: str, value: Any) -> dict:
    out: dict = {}
    node = out
    parts = dotted.split(".")
    for p in parts[:-1]:
        node = node.setdefault(p, {})
    node[parts[-1]] = value
    return out


def _merge(a: dict, b: dict) -> dict:
    out = dict(a)
    for k, v in b.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def parse_overrides(argv: Sequence[str]) -> tuple[list[str], dict]:
    """Split `--config a,b --x.y 1 --z 2 3` into overlay names and a nested override dict.

    A key followed by several values gives a list (for list/tuple fields); a key with no
    value is `true` (for flags).
    """
    overlays: list[str] = []
    updates: dict = {}
    i = 0
    argv = list(argv)
    while i < len(argv):
        tok = argv[i]
        if not tok.startswith("--") or len(tok) == 2:
            raise ValueError(f"expected `--key value`, got {tok!r}")
        key, _, inline = tok[2:].partition("=")
        key = key.replace("-", "_")
        values = [inline] if inline else []
        i += 1
        while not inline and i < len(argv) and not (argv[i].startswith("--") and len(argv[i]) > 2):
            values.append(argv[i])
            i += 1
        value: Any = values[0] if len(values) == 1 else (values or "true")
        if key == "config":
            overlays += [n for v in (values or []) for n in v.split(",") if n]
        else:
            updates = _merge(updates, _nest(key, value))
    return overlays, updates


def parse_config(
    cls: type[T],
    argv: Sequence[str] | None = None,
    *,
    yaml_path: str | Path | None = None,
    overlays: Sequence[str] = (),
) -> T:
    """Build `cls` from its defaults, the YAML file's `defaults` and overlays, then argv."""
    cfg = cls()
    names, updates = parse_overrides(argv or [])
    names = list(overlays) + names
    if yaml_path is not None:
        data = load_yaml(yaml_path)
        if "defaults" in data:
            cfg = apply_dict(cfg, data["defaults"] or {})
        for name in names:
            if name not in data:
                avail = ", ".join(k for k in data if k != "defaults") or "none"
                raise ValueError(f"unknown config overlay `{name}` in {yaml_path}; available: {avail}")
            cfg = apply_dict(cfg, data[name] or {})
    elif names:
        raise ValueError(f"--config {','.join(names)} given but this command has no config file")
    return apply_dict(cfg, updates)


def field_docs(cls: type) -> dict[str, str]:
    """{field: its docstring} of a dataclass (and its dataclass bases): the string literal
    written under each field, as in this project's configs ({} where the source is missing)."""
    docs: dict[str, str] = {}
    for klass in reversed([k for k in cls.__mro__ if dataclasses.is_dataclass(k)]):
        try:
            body = ast.parse(textwrap.dedent(inspect.getsource(klass))).body[0].body
        except (OSError, TypeError, IndexError, SyntaxError):
            continue
        for stmt, nxt in zip(body, body[1:]):
            if (isinstance(stmt, ast.AnnAssign) and isinstance(stmt.target, ast.Name)
                    and isinstance(nxt, ast.Expr) and isinstance(nxt.value, ast.Constant)
                    and isinstance(nxt.value.value, str)):
                docs[stmt.target.id] = inspect.cleandoc(nxt.value.value)
    return docs


def _show(value: Any) -> str:
    """A value as it is written on the command line."""
    if value is None:
        return "none"
    if isinstance(value, bool):
        return str(value).lower()
    return str(value) if value != "" else "''"


def describe_config(cfg: Any, prefix: str = "", width: int = 100) -> str:
    """Every key of a config instance as `--key VALUE` (its value in `cfg`, e.g. the YAML
    defaults applied) followed by its docstring, nested dataclasses as `--section.key`: the
    option list of a command's --help."""
    docs = field_docs(type(cfg))
    lines: list[str] = []
    for f in dataclasses.fields(cfg):
        value = getattr(cfg, f.name)
        if dataclasses.is_dataclass(value):
            lines.append(describe_config(value, f"{prefix}{f.name}.", width))
            continue
        if isinstance(value, (list, tuple)):
            shown = " ".join(map(_show, value)) if value else "(empty)"
        else:
            shown = _show(value)
        lines.append(f"  --{prefix}{f.name} {shown}")
        doc = " ".join(docs.get(f.name, "").split())
        if doc:
            lines.append(textwrap.fill(doc, width, initial_indent=" " * 6, subsequent_indent=" " * 6,
                                       break_on_hyphens=False))
    return "\n".join(lines)
