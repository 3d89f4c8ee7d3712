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
import io
import json
import math
import posixpath
from pathlib import Path
from typing import TYPE_CHECKING, Any

from atoll import tasks
from atoll.errors import RegistryError

if TYPE_CHECKING:
    from atoll.model_types import AllowList

FINISHED, INCOMPLETE, EMPTY = "finished", "incomplete", "no checkpoint"
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
    import pyarrow.fs as pafs

    from atoll import train

    root = train.runs_root(storage)
    fs, base = _fs(root)
    rows = []
    for run in _entries(fs, base):
        if run.type != pafs.FileType.Directory or run.base_name.startswith("."):
            continue
        checkpoints = []
        for entry in _entries(fs, run.path):
            if entry.type == pafs.FileType.Directory and entry.base_name.startswith("checkpoint_"):
                meta = _read_json(fs, posixpath.join(entry.path, train.META_FILE))
                if isinstance(meta, dict) and isinstance(meta.get("epoch"), int):
                    checkpoints.append((meta, entry))
        row: dict[str, Any] = {"kind": "run", "name": run.base_name, "path": f"{root}/{run.base_name}",
                               "state": EMPTY, "epochs_done": 0, "epochs": None, "metrics": {},
                               "checkpoint": None, "updated": _iso(run.mtime)}
        if checkpoints:
            latest, latest_entry = max(checkpoints, key=lambda c: c[0]["epoch"])
            best, best_entry = max(checkpoints, key=lambda c: _objective_score(c[0]))
            epochs = (latest.get("spec") or {}).get("epochs")
            done = latest["epoch"] + 1
            row.update(state=FINISHED if isinstance(epochs, int) and done >= epochs else INCOMPLETE,
                       epochs_done=done, epochs=epochs, metrics=best.get("metrics") or {},
                       checkpoint=f"{row['path']}/{best_entry.base_name}", updated=_iso(latest_entry.mtime))
        rows.append(row)
    return sorted(rows, key=lambda r: r["updated"] or "", reverse=True)


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
    import pyarrow.fs as pafs

    from atoll import tune

    root = tune.sweeps_root(storage)
    fs, base = _fs(root)
    rows = []
    for sweep in _entries(fs, base):
        if sweep.type != pafs.FileType.Directory or sweep.base_name.startswith("."):
            continue
        entries = {e.base_name: e for e in _entries(fs, sweep.path)}
        states = [e for n, e in entries.items() if n.startswith("experiment_state") and n.endswith(".json")]
        trials = [e for e in entries.values() if e.type == pafs.FileType.Directory]
        written = max((e.mtime for e in states), default=None)
        results = entries.get("results.csv")
        done = results is not None and (written is None or results.mtime >= written)
        table = _results(fs, results.path) if done else []
        best = table[0] if table else {}
        metric = next((k for k in best if k.startswith("best_") and k != "best_epoch"), None)
        rows.append({"kind": "sweep", "name": sweep.base_name, "path": f"{root}/{sweep.base_name}",
                     "state": FINISHED if done else (INCOMPLETE if states else EMPTY),
                     "trials": len(table) if done else len(trials),
                     "best_trial": best.get("trial_id"), "metric": metric.removeprefix("best_") if metric else None,
                     "best": float(best[metric]) if metric and best.get(metric) else None,
                     "updated": _iso(max((e.mtime for e in entries.values()), default=sweep.mtime))})
    return sorted(rows, key=lambda r: r["updated"] or "", reverse=True)


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
    has_weights = any((folder / f).is_file() for f in (train.MODEL_FILE, train.LEGACY_MODEL_FILE))
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
