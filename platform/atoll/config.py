"""Reading user-written YAML into pydantic models, with errors that name the field and the fix.

Every config file Atoll reads (cluster.yaml, training specs, sweep specs) goes through
:func:`load_model`, so all of them report problems the same way:
``jobs/configs/train.yaml: model.hiden: unknown key; did you mean 'hidden'?``
"""

from __future__ import annotations

import copy
import difflib
import types
import typing
from collections.abc import Mapping
from pathlib import Path
from typing import Any, TypeVar

import pydantic
import yaml

from atoll.errors import ConfigError

M = TypeVar("M", bound=pydantic.BaseModel)


def read_yaml(path: str | Path) -> dict[str, Any]:
    """Read a YAML mapping from ``path``; a missing file or bad YAML is a :class:`ConfigError`."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise ConfigError(f"{path}: file not found. Check the path (or pass -c FILE).")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise ConfigError(f"{path}: invalid YAML{where}: {problem}. Fix the syntax and retry.") from None
    if data is None:
        raise ConfigError(f"{path}: the file is empty; write its settings as `key: value` lines.")
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping of keys to values at the top, got a {type(data).__name__}; "
                          f"write `key: value` lines, not `- item` lines.")
    return data


def parse_value(text: str) -> Any:
    """Parse a ``--set`` value the way YAML would (``3`` → int, ``1e-3`` → float, ``[a, b]`` → list)."""
    try:
        value = yaml.safe_load(text)
    except yaml.YAMLError:
        return text
    # YAML 1.1 reads "1e-3" as a string; users mean a number.
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            return value
    return value


def apply_values(data: Mapping[str, Any], values: Mapping[str, Any]) -> dict[str, Any]:
    """Set dotted paths (``optimizer.lr``) in a nested dict to already-parsed values; returns a new dict.

    Raises:
        ConfigError: a path goes through a value rather than a section.
    """
    out = copy.deepcopy(dict(data))
    for key, value in values.items():
        parts = key.split(".")
        node = out
        for depth, part in enumerate(parts[:-1]):
            child = node.get(part)
            if child is None:
                child = node[part] = {}
            if not isinstance(child, dict):
                where = ".".join(parts[: depth + 1])
                raise ConfigError(f"{key}: {where!r} is a value, not a section; cannot set {key!r}.")
            node = child
        node[parts[-1]] = copy.deepcopy(value)
    return out


def apply_overrides(data: dict[str, Any], overrides: list[str] | None) -> dict[str, Any]:
    """Apply ``--set key.sub=value`` texts (values parsed as YAML) to a nested dict; returns a new dict."""
    values = {}
    for item in overrides or []:
        key, sep, raw = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"--set {item!r}: expected KEY=VALUE, e.g. --set epochs=5 or --set model.hidden=[64,64].")
        values[key.strip()] = parse_value(raw)
    return apply_values(data, values)


def _is_model(tp: Any) -> bool:
    return isinstance(tp, type) and issubclass(tp, pydantic.BaseModel)


def _unwrap_optional(tp: Any) -> Any:
    args = [a for a in typing.get_args(tp) if a is not type(None)]
    if typing.get_origin(tp) in (typing.Union, types.UnionType) and len(args) == 1:
        return args[0]
    return tp


def _model_at(model: type[pydantic.BaseModel], loc: tuple[Any, ...]) -> type[pydantic.BaseModel] | None:
    """The (sub)model found by following ``loc`` from ``model``, or None where ``loc`` leaves the models."""
    current: Any = model
    skip_key = False
    for part in loc:
        if skip_key:  # the key of a dict[str, Model] or index of a list[Model]
            skip_key = False
            continue
        if not _is_model(current) or str(part) not in current.model_fields:
            return None
        current = _unwrap_optional(current.model_fields[str(part)].annotation)
        if not _is_model(current) and typing.get_origin(current) in (dict, list):
            current = typing.get_args(current)[-1]
            skip_key = True
    return current if _is_model(current) else None


def _fields_at(model: type[pydantic.BaseModel], loc: tuple[Any, ...]) -> list[str]:
    """Field names of the (sub)model at ``loc``, for 'did you mean'."""
    found = _model_at(model, loc)
    return list(found.model_fields) if found else []


def _example(model: type[pydantic.BaseModel], loc: tuple[Any, ...]) -> str:
    """``; e.g. epochs: 10`` from the field's default, so that a wrong type comes with a right one."""
    found = _model_at(model, loc[:-1]) if loc else None
    field = found.model_fields.get(str(loc[-1])) if found else None
    default = field.default if field else None
    if isinstance(default, bool) or not isinstance(default, (int, float, str)):
        return ""
    return f"; e.g. {loc[-1]}: {default}"


def format_validation_error(exc: pydantic.ValidationError, model: type[pydantic.BaseModel],
                            source: str, prefix: tuple[Any, ...] = ()) -> str:
    """One line per problem: ``source: dotted.path: what is wrong (got value); the fix``."""
    lines = []
    for err in exc.errors():
        loc = tuple(p for p in err["loc"] if not (isinstance(p, str) and p.startswith("function-")))
        path = ".".join(str(p) for p in prefix + loc) or "(top level)"
        if err["type"] == "extra_forbidden":
            known = _fields_at(model, loc[:-1])
            close = difflib.get_close_matches(str(loc[-1]), known, n=1)
            hint = f"did you mean {close[0]!r}?" if close else f"known keys: {', '.join(known)}"
            lines.append(f"{path}: unknown key; {hint}")
            continue
        msg = err["msg"]
        if msg.startswith("Value error, "):
            msg = msg[len("Value error, "):]
        if err["type"] == "missing":
            lines.append(f"{path}: required field is missing; add it.")
            continue
        got = err.get("input")
        shown = "" if isinstance(got, (dict, list)) or got is None else f" (got {got!r})"
        if not loc and err["type"] == "value_error":
            lines.append(msg)  # a whole-spec check names its own fields ("cpus_per_worker: ...")
            continue
        wrong_value = err["type"].endswith(("_parsing", "_type")) or err["type"].startswith(("greater", "less"))
        hint = _example(model, loc) if wrong_value else ""
        lines.append(f"{path}: {msg}{shown}{hint}")
    head = f"{source}: " if source else ""
    if len(lines) == 1:
        return head + lines[0]
    return head + f"{len(lines)} problems:\n  " + "\n  ".join(lines)


def load_model(model: type[M], data: dict[str, Any], source: str = "", prefix: tuple[Any, ...] = (),
               context: dict[str, Any] | None = None) -> M:
    """Validate ``data`` against ``model``; raise :class:`ConfigError` naming each bad field.

    ``context`` turns on the checks that look beyond the file (see :data:`atoll.specs.CHECK_FILES`).
    """
    try:
        return model.model_validate(data, context=context)
    except pydantic.ValidationError as exc:
        raise ConfigError(format_validation_error(exc, model, source, prefix)) from None


def load_file(model: type[M], path: str | Path, overrides: list[str] | None = None) -> M:
    """Read a YAML file, apply ``--set`` overrides, validate: the one way every spec file is loaded."""
    from atoll.specs import CHECK_CLUSTER, CHECK_FILES

    data = apply_overrides(read_yaml(path), overrides)
    # A user's file: also check what it points at (data files, cluster.yaml), before anything is submitted.
    return load_model(model, data, str(path), context={CHECK_FILES: True, CHECK_CLUSTER: True})
