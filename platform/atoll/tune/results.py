"""A finished sweep's results: per-trial histories, the results table, its summary, the files written.

Turns what Tune returns (one ``Result`` per trial) into plain trial records (:func:`epoch_history`), ranks
them (:func:`results_table`, :func:`sweep_summary`) and writes results.csv, results.parquet and sweep.png
next to the experiment. Apart from reading a ``Result``'s attributes, no Ray: the table is plain dicts.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Any

from atoll import filesystems
from atoll.tune.space import TRAINING_METRICS, SweepSpec, _is_scalar, decode_values


def epoch_history(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per-epoch metrics, one row per epoch (a re-run epoch after a restart keeps its last report)."""
    keep = (*TRAINING_METRICS, "checkpoint_path")
    by_epoch: dict[int, dict[str, Any]] = {}
    for rec in records:
        if rec.get("epoch") is None or rec["epoch"] != rec["epoch"]:  # NaN: a row without an epoch report
            continue
        by_epoch[int(rec["epoch"])] = {**{k: rec[k] for k in keep if k in rec}, "epoch": int(rec["epoch"])}
    return [by_epoch[e] for e in sorted(by_epoch)]


def results_table(trials: list[dict[str, Any]], *, metric: str, mode: str,
                  max_t: int) -> list[dict[str, Any]]:
    """One row per trial, best first: config, epochs run, best and final metric, status.

    Args:
        trials: ``{"trial_id", "config": {path: value}, "history": [per-epoch metrics], "error": str|None}``.
        metric / mode: What the sweep optimises.
        max_t: Epochs a trial runs when nothing stops it.

    Returns:
        Rows with ``trial_id, status, epochs, best_<metric>, best_epoch, final_<metric>, config, error``;
        status is ``completed``, ``stopped early`` (ran fewer than max_t epochs) or ``error``.
    """
    sign = 1 if mode == "max" else -1
    rows = []
    for trial in trials:
        history = [h for h in trial.get("history") or [] if h.get(metric) is not None]
        best = max(history, key=lambda h: sign * h[metric]) if history else None
        epochs = len(trial.get("history") or [])
        status = "error" if trial.get("error") else "completed" if epochs >= max_t else "stopped early"
        rows.append({"trial_id": trial["trial_id"], "status": status, "epochs": epochs,
                     f"best_{metric}": best[metric] if best else None,
                     "best_epoch": best.get("epoch") if best else None,
                     f"final_{metric}": history[-1][metric] if history else None,
                     "config": dict(trial.get("config") or {}), "error": trial.get("error")})
    # Best first; trials without a value last.
    rows.sort(key=lambda r: (r[f"best_{metric}"] is None, -sign * (r[f"best_{metric}"] or 0.0)))
    return rows


def results_frame(rows: list[dict[str, Any]]):
    """The results table as a DataFrame: one column per swept field (lists as JSON text)."""
    import pandas as pd

    flat = []
    for row in rows:
        out = {k: v for k, v in row.items() if k not in ("config", "error")}
        out.update({k: v if _is_scalar(v) else json.dumps(v) for k, v in row["config"].items()})
        out["error"] = row["error"]
        flat.append(out)
    return pd.DataFrame(flat)


def sweep_summary(rows: list[dict[str, Any]], *, metric: str, top: int = 3) -> dict[str, Any]:
    """Counts and the leaders of a results table (for the ``sweep_done`` event and the return value)."""
    ok = [r for r in rows if r[f"best_{metric}"] is not None]
    return {"trials": len(rows), "trial_epochs": sum(r["epochs"] for r in rows),
            "stopped_early": sum(r["status"] == "stopped early" for r in rows),
            "errors": sum(r["status"] == "error" for r in rows),
            "best": ok[0] if ok else None, "best_metric": ok[0][f"best_{metric}"] if ok else None,
            "top": ok[:top], "statuses": {r["trial_id"]: r["status"] for r in rows}}


def _trial_record(sweep: SweepSpec, result) -> dict[str, Any]:
    """A tune.Result as a plain trial dict for :func:`results_table`."""
    frame = result.metrics_dataframe
    records = frame.to_dict("records") if frame is not None else []
    trial_id = (result.metrics or {}).get("trial_id") or Path(str(result.path)).name
    return {"trial_id": trial_id, "config": decode_values(sweep, (result.config or {}).get("overrides", {})),
            "history": epoch_history(records), "error": str(result.error) if result.error else None}


def _write_outputs(rows: list[dict[str, Any]], histories: dict[str, list[dict[str, Any]]], metric: str,
                   experiment: str) -> dict[str, str]:
    """results.csv, results.parquet and sweep.png next to the experiment (local folder or URI)."""
    import pyarrow.fs as pafs

    from atoll import plots

    names = {"results_csv": "results.csv", "results_parquet": "results.parquet", "plot": "sweep.png"}
    fs, folder = filesystems.resolve(experiment)
    fs.create_dir(folder, recursive=True)
    with tempfile.TemporaryDirectory() as tmp:
        frame = results_frame(rows)
        frame.to_csv(Path(tmp) / names["results_csv"], index=False)
        frame.to_parquet(Path(tmp) / names["results_parquet"], index=False)
        plots.sweep_curves({t: h for t, h in histories.items() if h}, metric, Path(tmp) / names["plot"])
        for name in names.values():
            pafs.copy_files(str(Path(tmp) / name), f"{folder}/{name}", destination_filesystem=fs)
    return {k: f"{experiment.rstrip('/')}/{v}" for k, v in names.items()}

