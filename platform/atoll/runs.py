"""Training runs and sweeps as they are on disk under the storage root, and registering a checkpoint that
was trained elsewhere. Used by `atoll runs list` and `atoll models register`.

A run is ``<storage>/runs/<name>/`` (Ray Train's run folder: one ``checkpoint_*`` folder per kept
epoch, each with Atoll's ``model.safetensors`` and ``atoll.json``); a sweep is ``<storage>/sweeps/<name>/`` (Tune's
experiment folder, plus the ``results.csv`` Atoll writes when the sweep ends). Their state is read from
those files alone, so it needs no cluster: a run whose last checkpoint is not its last epoch, or a sweep
whose experiment state is newer than its results, was interrupted (or is still running).
"""

from __future__ import annotations

import csv
import difflib
import io
import json
import math
import posixpath
import re
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from atoll import tasks
from atoll.errors import AtollError, RegistryError

if TYPE_CHECKING:
    from atoll.model_types import AllowList

FINISHED, INCOMPLETE, EMPTY = "finished", "incomplete", "no checkpoint"
RUN, SWEEP = "run", "sweep"
#: Ray Train's and Tune's checkpoint folders: what pruning removes.
CHECKPOINT_PREFIX = "checkpoint_"
#: Written into a run folder by :func:`prune`: the epochs the run had done before it lost its later checkpoints.
PRUNED_FILE = "atoll-pruned.json"
#: What a checkpoint's atoll.json must hold to be registered and served.
CHECKPOINT_KEYS = ("spec", "preprocess", "input_schema", "history")


def _fs(uri: str):
    from atoll import filesystems

    return filesystems.resolve(uri)


def _entries(fs, path: str, recursive: bool = False) -> list[Any]:
    import pyarrow.fs as pafs

    if fs.get_file_info(path).type != pafs.FileType.Directory:
        return []
    return fs.get_file_info(pafs.FileSelector(path, recursive=recursive))


def _read_json(fs, path: str) -> Any | None:
    try:
        with fs.open_input_stream(path, compression=None) as f:
            return json.loads(f.read())
    except (OSError, ValueError):  # half-written or removed meanwhile: skip it, never fail a listing
        return None


def _iso(mtime: Any) -> str | None:
    return mtime.astimezone().isoformat(timespec="seconds") if mtime is not None else None  # local time


def list_runs(storage: str) -> list[dict[str, Any]]:
    """Every training run under ``<storage>/runs``, newest first: name, state, epochs done of the spec's,
    the best kept checkpoint's metrics, its path, and when it was last written."""
    from atoll import train

    root = train.runs_root(storage)
    fs, base = _fs(root)
    rows = [_run_row(fs, root, run) for run in _folders(fs, base)]
    return sorted(rows, key=lambda r: r["updated"] or "", reverse=True)


def _folders(fs, path: str) -> list[Any]:
    """The sub-folders of ``path`` that can be runs or sweeps (not Ray's hidden ones)."""
    import pyarrow.fs as pafs

    return [e for e in _entries(fs, path) if e.type == pafs.FileType.Directory and not e.base_name.startswith(".")]


def _checkpoints(fs, path: str) -> list[tuple[dict[str, Any], Any]]:
    """(atoll.json, folder) of every readable ``checkpoint_*`` folder in ``path``, oldest epoch first."""
    from atoll import train

    found = []
    for entry in _folders(fs, path):
        if entry.base_name.startswith(CHECKPOINT_PREFIX):
            meta = _read_json(fs, posixpath.join(entry.path, train.META_FILE))
            if isinstance(meta, dict) and isinstance(meta.get("epoch"), int):
                found.append((meta, entry))
    return sorted(found, key=lambda c: c[0]["epoch"])


def _run_row(fs, root: str, run: Any) -> dict[str, Any]:
    checkpoints = _checkpoints(fs, run.path)
    row: dict[str, Any] = {"kind": RUN, "name": run.base_name, "path": f"{root}/{run.base_name}",
                           "state": EMPTY, "epochs_done": 0, "epochs": None, "metrics": {},
                           "checkpoint": None, "updated": _iso(run.mtime)}
    if checkpoints:
        latest, latest_entry = checkpoints[-1]
        # max() keeps the first of equals: on a tie, the earliest epoch, as training's own pick does.
        best, best_entry = max(checkpoints, key=lambda c: _objective_score(c[0]))
        epochs = (latest.get("spec") or {}).get("epochs")
        # A pruned run's later checkpoints are gone: its marker remembers how far it got.
        marker = _read_json(fs, posixpath.join(run.path, PRUNED_FILE))
        pruned_done = marker.get("epochs_done") if isinstance(marker, dict) else None
        done = max(latest["epoch"] + 1, pruned_done if isinstance(pruned_done, int) else 0)
        row.update(state=FINISHED if isinstance(epochs, int) and done >= epochs else INCOMPLETE,
                   epochs_done=done, epochs=epochs, metrics=best.get("metrics") or {},
                   checkpoint=f"{row['path']}/{best_entry.base_name}", updated=_iso(latest_entry.mtime))
    return row


def _objective_score(meta: dict[str, Any]) -> float:
    """How good a checkpoint is by its task's objective (higher is better): val_accuracy, or -val_rmse."""
    metric, mode = tasks.get((meta.get("spec") or {}).get("task")).objective
    value = (meta.get("metrics") or {}).get(metric)
    if not isinstance(value, (int, float)):
        return -math.inf
    return value if mode == "max" else -value


def _results(fs, path: str) -> list[dict[str, str]]:
    try:
        with fs.open_input_stream(path, compression=None) as f:
            return list(csv.DictReader(io.StringIO(f.read().decode())))
    except (OSError, ValueError):
        return []


def list_sweeps(storage: str) -> list[dict[str, Any]]:
    """Every sweep under ``<storage>/sweeps``, newest first: name, state, trials, the best trial and its
    metric (from results.csv once the sweep has ended), and when it was last written."""
    from atoll import tune

    root = tune.sweeps_root(storage)
    fs, base = _fs(root)
    rows = [_sweep_row(fs, root, sweep) for sweep in _folders(fs, base)]
    return sorted(rows, key=lambda r: r["updated"] or "", reverse=True)


def _sweep_row(fs, root: str, sweep: Any) -> dict[str, Any]:
    import pyarrow.fs as pafs

    entries = {e.base_name: e for e in _entries(fs, sweep.path)}
    states = [e for n, e in entries.items() if n.startswith("experiment_state") and n.endswith(".json")]
    trials = [e for e in entries.values() if e.type == pafs.FileType.Directory]
    written = max((e.mtime for e in states), default=None)
    results = entries.get("results.csv")
    done = results is not None and (written is None or results.mtime >= written)
    table = _results(fs, results.path) if done else []
    best = table[0] if table else {}
    metric = next((k for k in best if k.startswith("best_") and k != "best_epoch"), None)
    return {"kind": SWEEP, "name": sweep.base_name, "path": f"{root}/{sweep.base_name}",
            "state": FINISHED if done else (INCOMPLETE if states else EMPTY),
            "trials": len(table) if done else len(trials),
            "best_trial": best.get("trial_id"), "metric": metric.removeprefix("best_") if metric else None,
            "best": float(best[metric]) if metric and best.get(metric) else None,
            "updated": _iso(max((e.mtime for e in entries.values()), default=sweep.mtime))}


def read_checkpoint(path: str | Path) -> dict[str, Any]:
    """The metadata (atoll.json) of a local checkpoint folder, refusing one that cannot be registered.

    Raises:
        RegistryError: not a folder, no weights (model.safetensors, or an older model.pt) or atoll.json, or
            atoll.json lacks what serving needs.
    """
    from atoll import train

    folder = Path(path).expanduser()
    need = f"an Atoll training checkpoint holds {train.MODEL_FILE} (the weights) and {train.META_FILE}"
    if not folder.is_dir():
        raise RegistryError(f"checkpoint {path}: not a folder; pass a local checkpoint folder ({need}).")
    # a torch model's weights, or (model.type xgboost) a booster in XGBoost's own format
    has_weights = any((folder / f).is_file() for f in (train.MODEL_FILE, train.LEGACY_MODEL_FILE, "model.ubj", "model.json"))
    missing = [f for f, there in ((train.MODEL_FILE, has_weights), (train.META_FILE, (folder / train.META_FILE).is_file()))
               if not there]
    if missing:
        raise RegistryError(f"checkpoint {path} has no {' and no '.join(missing)}; {need}, as every "
                            f"checkpoint_* folder of `atoll runs list` does.")
    try:
        meta = json.loads((folder / train.META_FILE).read_text())
    except (OSError, ValueError) as exc:
        raise RegistryError(f"checkpoint {path}: {train.META_FILE} is not readable JSON ({exc}).") from None
    lacking = [k for k in CHECKPOINT_KEYS if not isinstance(meta, dict) or k not in meta]
    if lacking:
        raise RegistryError(f"checkpoint {path}: {train.META_FILE} lacks {', '.join(lacking)}; the training "
                            f"loop writes them (keys: {', '.join(CHECKPOINT_KEYS)}).")
    return meta


def register_checkpoint(storage: str, name: str, path: str | Path, metrics: dict[str, Any] | None = None,
                        lineage: dict[str, Any] | None = None, allowed: AllowList | None = None,
                        examples: str | None = None):
    """Register a checkpoint folder trained elsewhere as the next version of ``name``, the way a training
    run registers its best one (training curve and held-out examples included when its data is at hand).

    Args:
        metrics: Recorded metrics (default: the checkpoint's own, from atoll.json).
        allowed: The model types a version may name (default: :meth:`AllowList.from_cluster`). The
            checkpoint's ``model.type`` is checked against it before anything imports it: registering
            builds the model to export it, and a replica would import it too.
        examples: A dataset (path or URI) whose rows the playground shows as examples. None: no examples,
            whatever dataset the checkpoint's spec names (data this caller never chose to publish).

    Raises:
        RegistryError: see :func:`read_checkpoint`; a bad name.
        ConfigError: the checkpoint names a model type the allow-list does not admit.
    """
    from ray.train import Checkpoint

    from atoll import train
    from atoll.model_types import AllowList

    meta = read_checkpoint(path)
    model = meta["spec"].get("model") if isinstance(meta["spec"], dict) else None
    model_type = model.get("type") if isinstance(model, dict) else None
    if not isinstance(model_type, str):
        raise RegistryError(f"checkpoint {path}: {train.META_FILE} names no spec.model.type; the training loop "
                            f"writes it (e.g. \"mlp\").")
    (allowed or AllowList.from_cluster()).check(model_type, f"checkpoint {path}")
    folder = Path(path).expanduser().resolve()
    recorded = metrics if metrics is not None else dict(meta.get("metrics") or {})
    origin = {"registered_from": str(folder), "run_name": meta.get("run_name"), "epoch": meta.get("epoch"),
              **(lineage or {})}
    return train.register_checkpoint(Checkpoint.from_directory(str(folder)), recorded, storage=storage,
                                     name=name, lineage=origin, foreign=True, examples=examples)


# ------------------------------------------------------------------------------------------------
# Deleting and pruning: `atoll runs delete` / `atoll runs prune`

#: A Tune trial folder, ``run_trial_<trial id>_<index>_<params>_<date>`` (ids: ``1a2b3_00000``, or 8 hex digits).
_TRIAL_FOLDER = re.compile(r"^run_trial_([0-9a-f]{5}_\d{5}|[0-9a-f]{8})_\d+_")


class RunNotFoundError(AtollError):
    """No training run or sweep of that name under the storage root (or two of them: a run and a sweep)."""


@dataclass(frozen=True)
class _Store:
    """The storage root's filesystem, resolved once, and where runs and sweeps lie: as shown to a user (a
    local path or URI) and as paths in that filesystem."""

    fs: Any
    runs: str
    runs_path: str
    sweeps: str
    sweeps_path: str

    @classmethod
    def of(cls, storage: str) -> _Store:
        from atoll import train, tune

        fs, base = _fs(storage)
        return cls(fs, train.runs_root(storage), posixpath.join(base, "runs"), tune.sweeps_root(storage),
                   posixpath.join(base, "sweeps"))

    def row(self, kind: str, name: str) -> dict[str, Any] | None:
        """The listing row of run or sweep ``name``; None when there is no such folder."""
        import pyarrow.fs as pafs

        shown, path = (self.runs, self.runs_path) if kind == RUN else (self.sweeps, self.sweeps_path)
        entry = self.fs.get_file_info(posixpath.join(path, name))
        if entry.type != pafs.FileType.Directory:
            return None
        return (_run_row if kind == RUN else _sweep_row)(self.fs, shown, entry)


def find(storage: str, name: str, kind: str | None = None) -> dict[str, Any]:
    """The run or sweep ``name``, as :func:`list_runs` / :func:`list_sweeps` show it.

    Args:
        storage: The storage root (local folder or URI).
        name: The run's or sweep's name (one folder under ``<storage>/runs`` or ``<storage>/sweeps``).
        kind: ``"run"`` or ``"sweep"``; needed only when a run and a sweep share the name.

    Raises:
        ConfigError: ``name`` is not a valid run or sweep name (``../x``, an absolute path).
        RunNotFoundError: none of that name (the message lists those that exist), or both a run and a sweep.
    """
    from atoll import filesystems

    with filesystems.store_errors(storage):
        return _find(_Store.of(storage), storage, name, kind)


def _find(store: _Store, storage: str, name: str, kind: str | None) -> dict[str, Any]:
    from atoll.specs import check_name

    check_name(name, "run or sweep name")
    if kind not in (None, RUN, SWEEP):
        raise ValueError(f"kind must be {RUN!r}, {SWEEP!r} or None, not {kind!r}")
    found = [row for what in (RUN, SWEEP) if kind in (None, what) and (row := store.row(what, name))]
    if len(found) > 1:
        raise RunNotFoundError(f"both a run and a sweep are named {name!r}: say which (--run or --sweep; "
                               f"kind='run' or 'sweep' from Python).")
    if found:
        return found[0]
    existing = {RUN: sorted(e.base_name for e in _folders(store.fs, store.runs_path)),
                SWEEP: sorted(e.base_name for e in _folders(store.fs, store.sweeps_path))}
    what = {RUN: "training run", SWEEP: "sweep"}.get(kind or "", "training run or sweep")
    message = f"no {what} named {name!r} under {storage}."
    close = difflib.get_close_matches(name, [n for k in (RUN, SWEEP) if kind in (None, k) for n in existing[k]],
                                      n=1)
    if close:
        message += f" Did you mean {close[0]!r}?"
    listed = [f"{label}: {', '.join(existing[k])}" for k, label in ((RUN, "runs"), (SWEEP, "sweeps"))
              if kind in (None, k) and existing[k]]
    message += f" Existing {'; '.join(listed)}." if listed else " There are none yet: `atoll train`, `atoll tune`."
    raise RunNotFoundError(message)


def delete(storage: str, name: str, *, kind: str | None = None, dry_run: bool = False) -> dict[str, Any]:
    """Remove a training run or a sweep, whatever its state: its folder and, for a sweep whose trials ran as
    nested Ray Train runs (several workers per trial), those trials' runs (``<storage>/runs/<sweep>-<trial id>``).

    Registered versions are untouched: a version holds its own copy of what serving needs.

    Args:
        storage: The storage root (local folder or URI).
        name: The run or sweep.
        kind: ``"run"`` or ``"sweep"``, when a run and a sweep share the name.
        dry_run: Say what would go, remove nothing (what a confirmation prompt shows).

    Returns:
        ``{kind, name, state, removed: [{kind, name, path, bytes}], bytes, dry_run}``.

    Raises:
        ConfigError / RunNotFoundError: see :func:`find`.
        StorageError: the object store refused (one line naming the bucket).
    """
    from atoll import filesystems

    with filesystems.store_errors(storage):
        store = _Store.of(storage)
        row = _find(store, storage, name, kind)
        folder = posixpath.join(store.runs_path if row["kind"] == RUN else store.sweeps_path, name)
        targets = [(row, folder, row["path"])]
        if row["kind"] == SWEEP:
            targets += [({"kind": RUN, "name": run.base_name}, run.path, shown)
                        for run, shown in _trial_runs(store, folder, name)]
        removed = [_removal(store, owner, path, shown) for owner, path, shown in targets]
        if not dry_run:
            for _, path, _ in targets:
                _remove(store.fs, path)
    return {"kind": row["kind"], "name": name, "state": row["state"], "removed": removed,
            "bytes": sum(r["bytes"] for r in removed), "dry_run": dry_run}


def prune(storage: str, name: str | None = None, *, kind: str | None = None,
          dry_run: bool = False) -> dict[str, Any]:
    """Free the space of finished runs and sweeps, keeping what matters.

    A finished run keeps its best checkpoint by the task's objective (the one :func:`list_runs` shows and
    `atoll models register` takes) and loses its other ``checkpoint_*`` folders. A finished sweep loses
    every trial's checkpoints and keeps results.csv, results.parquet, sweep.png and Tune's state (so
    `atoll runs list` still shows it), since its best trial is a registered version; while no version from
    that trial is in the registry (``register_model: false``, a registration still running or failed), the
    best trial's best checkpoint stays too. An incomplete run or sweep (interrupted, resumable, still
    running) is never pruned: it is listed under ``skipped`` with the reason.

    Args:
        storage: The storage root (local folder or URI).
        name: One run or sweep; None: every run and sweep.
        kind: ``"run"`` or ``"sweep"``, when a run and a sweep share ``name``.
        dry_run: Say what would go, remove nothing.

    Returns:
        ``{removed: [{kind, name, path, bytes}], kept: [{kind, name, path, why}], skipped: [{kind, name,
        state, why}], bytes, dry_run}``: ``bytes`` is what was (or would be) freed; ``kept`` names what
        stays of a run or sweep that lost something.

    Raises:
        ConfigError / RunNotFoundError: a bad or unknown ``name`` (see :func:`find`).
        StorageError: the object store refused (one line naming the bucket).
    """
    from atoll import filesystems

    result: dict[str, Any] = {"removed": [], "kept": [], "skipped": [], "bytes": 0, "dry_run": dry_run}
    targets: list[str] = []
    with filesystems.store_errors(storage):
        store = _Store.of(storage)
        if name is not None:
            rows = [_find(store, storage, name, kind)]
        else:  # sweeps first: their nested trials' runs are theirs to prune
            rows = [_sweep_row(store.fs, store.sweeps, e) for e in _folders(store.fs, store.sweeps_path)]
            rows += [_run_row(store.fs, store.runs, e) for e in _folders(store.fs, store.runs_path)]
        trial_runs: set[str] = set()
        for row in rows:
            if row["kind"] == RUN and row["name"] in trial_runs:
                continue
            if row["state"] != FINISHED:
                result["skipped"].append({"kind": row["kind"], "name": row["name"], "state": row["state"],
                                          "why": _why_skipped(row)})
                continue
            if row["kind"] == RUN:
                candidates, kept = _run_prunable(store, row)
            else:
                candidates, kept, nested = _sweep_prunable(store, storage, row)
                trial_runs |= nested
            if candidates:
                result["removed"] += [_removal(store, row, path, shown) for path, shown in candidates]
                result["kept"] += kept
                targets += [path for path, _ in candidates]
        if not dry_run:
            _mark_pruned(store, targets)  # first: a prune cut short still leaves each run reading as finished
            for path in targets:
                _remove(store.fs, path)
    result["bytes"] = sum(r["bytes"] for r in result["removed"])
    return result


def _why_skipped(row: dict[str, Any]) -> str:
    if row["state"] == EMPTY:
        return "no checkpoint yet" if row["kind"] == RUN else "no Tune experiment state yet"
    if row["kind"] == RUN:
        return (f"incomplete ({row['epochs_done']}/{row['epochs'] or '?'} epochs): interrupted or still running; "
                f"`atoll train --resume {row['name']}` continues it")
    return f"incomplete: interrupted or still running; `atoll tune --resume {row['name']}` continues it"


#: (path in the filesystem, path shown) of a folder to remove or keep.
_Folder = tuple[str, str]


def _run_prunable(store: _Store, row: dict[str, Any]) -> tuple[list[_Folder], list[dict[str, Any]]]:
    """(folders to remove, what is kept) of a finished run: every checkpoint folder but its best, an unreadable
    one included (a finished run writes no more)."""
    best = posixpath.basename(row["checkpoint"])
    candidates = [(e.path, f"{row['path']}/{e.base_name}")
                  for e in _folders(store.fs, posixpath.join(store.runs_path, row["name"]))
                  if e.base_name.startswith(CHECKPOINT_PREFIX) and e.base_name != best]
    kept = [{"kind": RUN, "name": row["name"], "path": row["checkpoint"],
             "why": "its best checkpoint (what `atoll models register` takes)"}]
    return candidates, kept


def _checkpoint_folders(store: _Store, path: str, shown: str) -> list[_Folder]:
    return [(e.path, f"{shown}/{e.base_name}") for e in _folders(store.fs, path)
            if e.base_name.startswith(CHECKPOINT_PREFIX)]


def _inside(path: str, folder: str) -> bool:
    return path == folder or path.startswith(folder.rstrip("/") + "/")


def _sweep_prunable(store: _Store, storage: str, row: dict[str, Any]
                    ) -> tuple[list[_Folder], list[dict[str, Any]], set[str]]:
    """(folders to remove, what is kept, names of its nested trials' runs) of a finished sweep: every
    trial's checkpoint folders (a nested trial's whole run folder), but the best trial's best checkpoint
    while no registered version comes from it."""
    folder = posixpath.join(store.sweeps_path, row["name"])
    candidates: list[_Folder] = []
    for trial in _folders(store.fs, folder):
        candidates += _checkpoint_folders(store, trial.path, f"{row['path']}/{trial.base_name}")
    nested = _trial_runs(store, folder, row["name"])
    candidates += [(run.path, shown) for run, shown in nested]
    kept = []
    keep = _unregistered_best(store, storage, folder, row, nested)
    if keep is not None:
        kept.append({"kind": SWEEP, "name": row["name"], "path": keep[1],
                     "why": f"the best trial's best checkpoint: no registered version comes from trial "
                            f"{row['best_trial']}"})
        for whole in [c for c in candidates if _inside(keep[0], c[0]) and c[0] != keep[0]]:
            candidates.remove(whole)  # the nested run that holds it: prune inside it instead
            candidates += _checkpoint_folders(store, *whole)
        candidates = [c for c in candidates if not _inside(c[0], keep[0])]
    return candidates, kept, {run.base_name for run, _ in nested}


def _trial_runs(store: _Store, sweep_path: str, sweep: str) -> list[tuple[Any, str]]:
    """(folder, path shown) of the runs of a sweep's nested trials: with several workers per trial, each trial
    is a Ray Train run named ``<sweep>-<trial id>`` under ``<storage>/runs``."""
    ids = {r.get("trial_id") for r in _results(store.fs, posixpath.join(sweep_path, "results.csv"))}
    ids |= {m.group(1) for e in _folders(store.fs, sweep_path) if (m := _TRIAL_FOLDER.match(e.base_name))}
    return [(e, f"{store.runs}/{e.base_name}") for e in _folders(store.fs, store.runs_path)
            if e.base_name.startswith(f"{sweep}-") and e.base_name.removeprefix(f"{sweep}-") in ids]


def _unregistered_best(store: _Store, storage: str, sweep_path: str, row: dict[str, Any],
                       nested: list[tuple[Any, str]]) -> _Folder | None:
    """The best trial's best checkpoint, unless a registered version came from it (None then, or when the
    sweep has no best trial). Where that epoch's checkpoint is not found, the best trial's whole folder."""
    best_trial = row.get("best_trial")
    table = _results(store.fs, posixpath.join(sweep_path, "results.csv"))
    if not best_trial or not table:
        return None
    try:
        best_epoch: int | None = int(float(table[0].get("best_epoch") or ""))
    except ValueError:
        best_epoch = None
    trial_folders = [(e.path, f"{row['path']}/{e.base_name}") for e in _folders(store.fs, sweep_path)
                     if (m := _TRIAL_FOLDER.match(e.base_name)) and m.group(1) == best_trial]
    trial_folders += [(e.path, shown) for e, shown in nested if e.base_name == f"{row['name']}-{best_trial}"]
    for path, shown in trial_folders:
        for meta, entry in _checkpoints(store.fs, path):
            if meta["epoch"] == best_epoch:
                model = (meta.get("spec") or {}).get("name")
                if _registered_from(storage, model, row["name"], best_trial, best_epoch):
                    return None
                return entry.path, f"{shown}/{entry.base_name}"
    if _registered_from(storage, None, row["name"], best_trial, best_epoch):
        return None
    return trial_folders[0] if trial_folders else None


def _registered_from(storage: str, model: Any, sweep: str, trial_id: str, epoch: int | None) -> bool:
    """Whether a READY version's lineage names this sweep, trial and epoch (as the sweep registers its best);
    ``model``: the model to look in (not a name: every model)."""
    from atoll import registry

    reg = registry.Registry(storage)
    names = [model] if isinstance(model, str) else [m["name"] for m in reg.list_models()]
    for each in names:
        try:
            versions = reg.list_versions(each)
        except RegistryError:  # no such model (yet), or a name the registry refuses
            continue
        if any(v.lineage.get("sweep") == sweep and v.lineage.get("trial_id") == trial_id
               and v.lineage.get("epoch") == epoch for v in versions):
            return True
    return False


def _mark_pruned(store: _Store, targets: list[str]) -> None:
    """Write :data:`PRUNED_FILE` into every run folder that loses checkpoints but stays."""
    import pyarrow.fs as pafs

    runs = {posixpath.dirname(t) for t in targets if posixpath.dirname(posixpath.dirname(t)) == store.runs_path}
    for path in sorted(runs):
        entry = store.fs.get_file_info(path)
        if entry.type != pafs.FileType.Directory:
            continue
        row = _run_row(store.fs, store.runs, entry)
        marker = {"epochs_done": row["epochs_done"], "epochs": row["epochs"],
                  "pruned_at": datetime.now(UTC).isoformat(timespec="seconds")}
        with store.fs.open_output_stream(posixpath.join(path, PRUNED_FILE), compression=None) as f:
            f.write(json.dumps(marker).encode())


def _removal(store: _Store, owner: dict[str, Any], path: str, shown: str) -> dict[str, Any]:
    return {"kind": owner["kind"], "name": owner["name"], "path": shown, "bytes": _size(store.fs, path)}


def _size(fs, path: str) -> int:
    import pyarrow.fs as pafs

    return sum(e.size or 0 for e in _entries(fs, path, recursive=True) if e.type == pafs.FileType.File)


def _remove(fs, path: str) -> None:
    try:
        fs.delete_dir(path)
    except FileNotFoundError:  # gone meanwhile (Ray removed a checkpoint it no longer keeps): the goal holds
        pass
