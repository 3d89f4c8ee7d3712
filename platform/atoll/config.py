"""Reading user-written YAML into pydantic models, with errors that name the field and the fix.

Every config file Atoll reads (cluster.yaml, training specs, sweep specs) goes through
:func:`load_model`, so all of them report problems the same way:
``jobs/configs/train.yaml: model.hiden: unknown key; did you mean 'hidden'?``
"""

from __future__ import annotations

import copy
import difflib
import json
import os
import types
import typing
from collections.abc import Mapping
from pathlib import Path
from typing import Any, TypeVar

import pydantic
import yaml

from atoll import capacity, filesystems, ingress
from atoll.errors import ConfigError
from atoll.specs import NAME_PATTERN, NAME_RULE, AtollSettings, ClusterSpec

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
        if err["type"] == "string_pattern_mismatch" and err.get("ctx", {}).get("pattern") == NAME_PATTERN:
            msg = f"not a valid name; use {NAME_RULE}"  # the rule in words, not the regex
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


def load_file(model: type[M], path: str | Path, overrides: list[str] | None = None,
              context: dict[str, Any] | None = None) -> M:
    """Read a YAML file, apply ``--set`` overrides, validate: the one way every spec file is loaded.

    Relative local paths in it are relative to its folder; ``context`` adds validation-context entries
    (e.g. :data:`atoll.specs.SHIPPED`).
    """
    from atoll.specs import BASE_DIR, CHECK_CLUSTER, CHECK_FILES

    data = apply_overrides(read_yaml(path), overrides)

    def fit_problem(cpus: float, gpus: float, needs_gpu: bool) -> str | None:
        return capacity.fit_problem(cpus, gpus, needs_gpu, load_spec())

    # A user's file: also check what it points at (data files, cluster.yaml), before anything is submitted.
    base_dir = str(Path(path).expanduser().resolve().parent)
    return load_model(model, data, str(path), context={
        CHECK_FILES: True, CHECK_CLUSTER: fit_problem, BASE_DIR: base_dir, **(context or {})})


# ------------------------------------------------------------------------------------------------
# cluster.yaml: Ray's cluster-launcher format, validated by Ray's own schema; Atoll's part under metadata.atoll


DEFAULT_CONFIG = "cluster.yaml"


# ------------------------------------------------------------------------------------------------
# Loading and validating cluster.yaml


def find_config(path: str | Path | None = None) -> Path | None:
    """The cluster.yaml to use: ``path``, ``$ATOLL_CLUSTER_CONFIG``, or ./cluster.yaml if present."""
    if path:
        return Path(path).expanduser()
    if os.environ.get("ATOLL_CLUSTER_CONFIG"):
        return Path(os.environ["ATOLL_CLUSTER_CONFIG"]).expanduser()
    local = Path.cwd() / DEFAULT_CONFIG
    return local if local.exists() else None


def _ray_schema_error(exc: Exception, config: dict[str, Any], source: str) -> ConfigError:
    """Turn a jsonschema error from Ray's schema into one line naming the field."""
    path = ".".join(str(p) for p in getattr(exc, "absolute_path", [])) or "(top level)"
    message = getattr(exc, "message", str(exc)).splitlines()[0]
    validator = getattr(exc, "validator", "")
    if validator == "additionalProperties":
        import re

        bad = re.findall(r"'([^']+)'", message.split("(")[-1]) if "(" in message else []
        node: Any = config
        for part in getattr(exc, "absolute_path", []):
            node = node[part]
        schema_props = list((getattr(exc, "schema", {}) or {}).get("properties", {}))
        hints = []
        for key in bad:
            close = difflib.get_close_matches(key, schema_props, n=1)
            hints.append(f"{key!r}" + (f" (did you mean {close[0]!r}?)" if close else ""))
        where = f"{path}: " if path != "(top level)" else ""
        return ConfigError(f"{source}: {where}unknown key {', '.join(hints)}; Ray's cluster-launcher schema "
                           f"does not allow it. Atoll's own settings go under metadata.atoll.")
    if validator == "required":
        return ConfigError(f"{source}: {path}: {message}; add it.")
    if validator == "type":
        kinds = getattr(exc, "validator_value", None)
        kinds = " or ".join(kinds) if isinstance(kinds, list) else kinds
        return ConfigError(f"{source}: {path}: {message}; change it to type {kinds}.")
    return ConfigError(f"{source}: {path}: {message}.")


def _check_node_types(config: dict[str, Any], source: str) -> None:
    """Semantic checks Ray's schema leaves out, each with the field and the fix."""
    types = config.get("available_node_types")
    if not isinstance(types, dict) or not types:
        raise ConfigError(f"{source}: available_node_types: missing or empty; declare at least a head node type.")
    head = config.get("head_node_type")
    if head is None:
        raise ConfigError(f"{source}: head_node_type: missing; set it to one of {sorted(types)}.")
    if head not in types:
        close = difflib.get_close_matches(str(head), list(types), n=1)
        hint = f"did you mean {close[0]!r}?" if close else f"choose one of {sorted(types)}"
        raise ConfigError(f"{source}: head_node_type: {head!r} is not in available_node_types; {hint}")
    total_max = config.get("max_workers")
    if total_max is not None and total_max < 0:
        raise ConfigError(f"{source}: max_workers: must be >= 0 (got {total_max}).")
    for name, node in types.items():
        lo, hi = node.get("min_workers", 0), node.get("max_workers")
        if lo < 0:
            raise ConfigError(f"{source}: available_node_types.{name}.min_workers: must be >= 0 (got {lo}).")
        if hi is not None and hi < 0:
            raise ConfigError(f"{source}: available_node_types.{name}.max_workers: must be >= 0 (got {hi}).")
        if hi is not None and hi < lo:
            raise ConfigError(f"{source}: available_node_types.{name}.max_workers: must be >= min_workers "
                              f"({hi} < {lo}); raise max_workers or lower min_workers.")
        for res, amount in (node.get("resources") or {}).items():
            if amount < 0:
                raise ConfigError(f"{source}: available_node_types.{name}.resources.{res}: must be >= 0 "
                                  f"(got {amount}).")
        # Resources declared (not left to Ray's detection) and all zero: a worker type that runs nothing.
        declared = node.get("resources") or {}
        usable = [v for k, v in declared.items() if k not in ("memory", "object_store_memory")]
        if name != head and declared and not any(usable):
            raise ConfigError(f"{source}: available_node_types.{name}.resources: a worker type with no CPU, GPU "
                              f"or custom resource can run nothing; give it some, e.g. {{CPU: 4}}, or remove it.")
    mins = sum(n.get("min_workers", 0) for n in types.values())
    if total_max is not None and mins > total_max:
        raise ConfigError(f"{source}: max_workers: {total_max} is less than the sum of min_workers ({mins}); "
                          f"raise max_workers.")


def validate_ray_config(config: dict[str, Any], source: str = "cluster.yaml") -> dict[str, Any]:
    """Validate against Ray's own schema, the way ``ray up`` does; return Ray's filled-out config."""
    import jsonschema
    import ray.autoscaler

    from atoll import ray_compat

    schema_path = Path(ray.autoscaler.__file__).parent / "ray-schema.json"
    try:
        jsonschema.validate(config, json.loads(schema_path.read_text()))
    except jsonschema.ValidationError as exc:
        raise _ray_schema_error(exc, config, source) from None
    _check_node_types(config, source)
    try:
        filled = ray_compat.prepare_and_validate_cluster_config(copy.deepcopy(config))
    except jsonschema.ValidationError as exc:
        raise _ray_schema_error(exc, config, source) from None
    except (ValueError, RuntimeError, KeyError, NotImplementedError) as exc:
        raise ConfigError(f"{source}: Ray's cluster launcher rejects it: {exc}") from None
    return filled


def project_root(spec: ClusterSpec | None = None) -> Path:
    """The project a job ships by default: the folder of cluster.yaml, else the current folder."""
    found = Path(spec.source) if spec and spec.source and not spec.source.startswith("(") else find_config()
    return found.resolve().parent if found and found.exists() else Path.cwd()


#: Override cluster.yaml's storage root and model-type allow-list; a job gets both from the client that submitted
#: it (atoll.jobs.cluster_env), whichever cluster.yaml, if any, lies in its working dir.
STORAGE_VAR, MODEL_TYPES_VAR = "ATOLL_STORAGE", "ATOLL_MODEL_TYPES"


def _model_types_from_env(text: str) -> list[str]:
    try:
        return AtollSettings.model_validate({"model_types": json.loads(text)}).model_types
    except (ValueError, pydantic.ValidationError):  # not JSON, or not a list of valid entries
        raise ConfigError(f"${MODEL_TYPES_VAR}: expected a JSON list of model types like cluster.yaml's "
                          f"metadata.atoll.model_types; got {text[:80]!r}.") from None


def load_spec(path: str | Path | None = None) -> ClusterSpec:
    """Load cluster.yaml into a typed :class:`ClusterSpec`, validating Ray's part and Atoll's part.

    Without a file (no ``path``, no ``$ATOLL_CLUSTER_CONFIG``, no ./cluster.yaml) the local defaults
    apply. ``$ATOLL_STORAGE`` overrides ``metadata.atoll.storage``.

    Raises:
        ConfigError: naming the field and the fix.
    """
    found = find_config(path)
    if found is None:
        data: dict[str, Any] = {
            "cluster_name": "atoll-local", "provider": {"type": "local", "head_ip": "127.0.0.1"},
            "head_node_type": "head", "max_workers": 0,
            "available_node_types": {"head": {"node_config": {}, "resources": {}, "max_workers": 0}},
        }
        source = "(built-in local defaults)"
    else:
        data = read_yaml(found)
        source = str(found)
        validate_ray_config(data, source)
    metadata = data.get("metadata") or {}
    atoll_raw = metadata.get("atoll") or {}
    if not isinstance(atoll_raw, dict):
        raise ConfigError(f"{source}: metadata.atoll: expected a mapping of Atoll settings.")
    settings = load_model(AtollSettings, atoll_raw, source, prefix=("metadata", "atoll"))
    if os.environ.get(STORAGE_VAR):
        settings.storage = os.environ[STORAGE_VAR]
    if os.environ.get(MODEL_TYPES_VAR):  # a job's: the submitting client's list (atoll.jobs.cluster_env)
        settings.model_types = _model_types_from_env(os.environ[MODEL_TYPES_VAR])
    filesystems.configure(settings.s3)  # pyarrow and boto3 in this process reach the store cluster.yaml names
    if wrong := ingress.check_start_commands(data, settings.serve.ingress):
        raise ConfigError(f"{source}: {wrong}")
    fields = {k: v for k, v in data.items() if k != "metadata"}
    return ClusterSpec.model_validate({**fields, "atoll": settings, "source": source})


def autoscaling_worker_types() -> list:
    """Inside a job: the worker node types an autoscaler may add (cluster.yaml's), when one runs
    (``ATOLL_AUTOSCALING=1``, set by `atoll up --simulate`); else none."""
    if os.environ.get("ATOLL_AUTOSCALING") != "1":
        return []
    return list(load_spec().worker_types().values())


def write_local_variant(dest: str | Path, *, port: int, dashboard_port: int, serve_port: int | None = None,
                        num_cpus: int | None = None, node_types: dict[str, Any] | None = None,
                        max_workers: int | None = None, source: str | Path | None = None) -> Path:
    """Write a copy of cluster.yaml (``source``, default: the one :func:`find_config` finds) for a second local
    cluster on its own ports, e.g. a sandbox beside a running one, a test or a benchmark; optionally with other
    node types (for `atoll up --simulate`). Returns ``dest``."""
    found = Path(source) if source else find_config()
    if found is None:
        raise ConfigError("no cluster.yaml to copy: pass source=PATH or run from the project folder.")
    data = read_yaml(found)
    atoll = data.setdefault("metadata", {}).setdefault("atoll", {})
    atoll["local"] = {"host": "127.0.0.1", "port": port, "dashboard_port": dashboard_port,
                      **({"num_cpus": num_cpus} if num_cpus else {})}
    if serve_port is not None:
        atoll.setdefault("serve", {})["port"] = serve_port
    if node_types is not None:
        data["available_node_types"] = node_types
    if max_workers is not None:
        data["max_workers"] = max_workers
    dest = Path(dest)
    dest.write_text(yaml.safe_dump(data, sort_keys=False))
    return dest
