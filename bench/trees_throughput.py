"""Gradient-boosted trees on a large mixed table: `atoll train` (model.type xgboost, Ray Train's XGBoostTrainer on 2
workers) vs `xgboost.train` in one process on the same machine, same rows, rounds and tree settings.

    python bench/trees_throughput.py            # 1M rows x 30 columns, 30 rounds
    python bench/trees_throughput.py --quick    # 200k rows, 20 rounds (< 4 min on 2 cores)

The table is generated here (seeded numpy, nothing downloaded): 20 numeric columns (offsets up to 1e9, as
epoch timestamps, and 5% gaps in 5 of them), 10 word columns (3 to 40 levels, 2% gaps) and a yes/no label
drawn from a logistic model of a few of them, written as one Parquet file.

Ours: `atoll up` (cluster.yaml's ports, a temporary ATOLL_HOME), then ``atoll.fit`` of a spec on that file:
Ray Data reads it, splits it (20% validation) and fits the encoding on the training split (numbers
standardised with a missing-indicator, words one-hot with "other" and "missing"), 2 workers build the trees
together (XGBoost's collective), and after every round the task's figures on both splits are summed over the
workers and emitted; then the version is registered. Baseline: what a user writes by hand: pandas reads the
file, 20% of the rows split off, ``xgboost.DMatrix(enable_categorical=True)`` (native categories, NaN for gaps)
and ``xgboost.train`` with ``nthread=2`` and the validation split as its ``evals``.

Figures: steady rounds per second (median interval between rounds after the first two; ours from the
``wall_time`` of its ``epoch`` events, the baseline's from a callback), the ratio ours/baseline, each side's
end-to-end wall time, and where ours spends it (before the first round: job start, reading, splitting, fitting
the encoding; the rounds; after the last round: checkpoint, registration). Validation accuracy beside each.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from _common import own_cluster, result_line

REPO = Path(__file__).resolve().parents[1]
PARAMS = {"max_depth": 6, "eta": 0.3, "tree_method": "hist", "max_bin": 256}
WORD_LEVELS = (3, 5, 8, 12, 20, 40, 4, 6, 10, 30)
PATH: Path = Path()  # the generated table (main sets it)


def make_table(rows: int, path: Path, seed: int = 0):
    """The generated mixed table (see the module), written to ``path``; the frame."""
    import pandas as pd

    rng = np.random.default_rng(seed)
    frame, logit = {}, np.zeros(rows)
    for j in range(20):
        values = rng.normal(0, 1, rows)
        if j < 4:
            logit += values * (1.0 - 0.2 * j)
        offset = 1.7e9 if j == 7 else (1e5 * j if j % 3 == 0 else 0.0)
        column = values * (3600 if j == 7 else 1) + offset
        if j in (1, 5, 9, 13, 17):
            column[rng.random(rows) < 0.05] = np.nan
        frame[f"num_{j}"] = column
    for j, levels in enumerate(WORD_LEVELS):
        codes = rng.integers(0, levels, rows)
        if j < 3:
            logit += (codes % 3 - 1) * 0.8
        words = np.array([f"level-{k}" for k in range(levels)], dtype=object)[codes]
        words[rng.random(rows) < 0.02] = None
        frame[f"word_{j}"] = words
    frame["label"] = np.where(rng.random(rows) < 1 / (1 + np.exp(-logit)), "yes", "no")
    table = pd.DataFrame(frame)
    table.to_parquet(path, index=False)
    return table


def baseline(rounds: int) -> dict:
    """``xgboost.train`` in this process, 2 threads, native categories, on an 80/20 split like ours."""
    import pandas as pd
    import xgboost as xgb

    started = time.perf_counter()
    frame = pd.read_parquet(PATH)
    features = [c for c in frame.columns if c != "label"]
    mask = np.random.default_rng(0).random(len(frame)) >= 0.2  # 80/20, as ours (its split hashes each row)
    for column in features:
        if not pd.api.types.is_numeric_dtype(frame[column]):
            frame[column] = frame[column].astype("category")
    y = (frame["label"] == "yes").to_numpy(np.float32)
    dtrain = xgb.DMatrix(frame.loc[mask, features], y[mask], enable_categorical=True, nthread=2)
    dval = xgb.DMatrix(frame.loc[~mask, features], y[~mask], enable_categorical=True, nthread=2)
    ready = time.perf_counter()
    stamps: list[float] = []

    class Stamp(xgb.callback.TrainingCallback):
        def after_iteration(self, model, epoch, evals_log):
            stamps.append(time.perf_counter())
            return False

    booster = xgb.train({**PARAMS, "objective": "binary:logistic", "eval_metric": "logloss", "nthread": 2},
                        dtrain, rounds, evals=[(dtrain, "train"), (dval, "val")], callbacks=[Stamp()],
                        verbose_eval=False)
    done = time.perf_counter()
    accuracy = float(((booster.predict(dval) > 0.5) == y[~mask]).mean())
    return {"rounds_per_s": 1 / statistics.median(np.diff(stamps[2:])), "wall_s": done - started,
            "before_rounds_s": ready - started, "rounds_s": done - ready, "val_accuracy": accuracy,
            "train_rows": int(mask.sum())}


def ours(rounds: int, work: Path) -> dict:
    import yaml
    from atoll import api

    spec = work / "spec" / "trees.yaml"  # a folder of its own: a job ships its spec's folder, never the table
    spec.parent.mkdir()
    spec.write_text(yaml.safe_dump({
        "name": "bench-trees", "dataset": {"path": str(PATH), "label": "label", "validation_fraction": 0.2},
        "model": {"type": "xgboost", "params": dict(PARAMS)},
        "epochs": rounds, "num_workers": 2, "cpus_per_worker": 1, "keep_checkpoints": 1, "seed": 0}))
    events: list[tuple[float, dict]] = []
    started = time.time()
    out = api.fit(spec, on_event=lambda e: events.append((time.time(), e)))
    done = time.time()
    epochs = [e for _, e in events if e["event"] == "epoch"]
    walls = [e["wall_time"] for e in epochs]
    start = next(e for _, e in events if e["event"] == "start")
    return {"rounds_per_s": 1 / statistics.median(np.diff(walls[2:])), "wall_s": done - started,
            "before_rounds_s": walls[0] - started, "rounds_s": walls[-1] - walls[0],
            "after_rounds_s": done - walls[-1], "prepare_s": (start.get("timings") or {}).get("prepare_s"),
            "val_accuracy": out["registered"]["metrics"].get("val_accuracy"), "rounds": len(epochs)}


def main() -> int:
    global PATH
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="200k rows, 20 rounds")
    parser.add_argument("--rows", type=int, help="rows of the generated table (default 1M, quick 200k)")
    parser.add_argument("--rounds", type=int, help="boosting rounds (default 30, quick 20)")
    args = parser.parse_args()
    rows, rounds = args.rows or (200_000 if args.quick else 1_000_000), args.rounds or (20 if args.quick else 30)
    os.environ.pop("RAY_ADDRESS", None)
    work = Path(tempfile.mkdtemp(prefix="atoll_bench_trees_"))
    PATH = work / "table.parquet"
    try:
        t = time.perf_counter()
        table = make_table(rows, PATH)
        print(f"table: {rows:,} rows x {table.shape[1] - 1} columns in {time.perf_counter() - t:.1f} s, "
              f"{PATH.stat().st_size / 2**20:.0f} MiB of Parquet", flush=True)
        del table
        base = baseline(rounds)  # before any cluster: the two never share the cores
        print(f"xgboost.train: {base['rounds_per_s']:.2f} rounds/s, {base['wall_s']:.1f} s end to end", flush=True)
        with own_cluster("atoll_bench_trees_cluster_"):
            mine = ours(rounds, work)
        print(f"atoll train: {mine['rounds_per_s']:.2f} rounds/s, {mine['wall_s']:.1f} s end to end", flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    ratio = mine["rounds_per_s"] / base["rounds_per_s"]
    print(f"steady rounds/s, ours / xgboost.train in one process: {ratio:.2f}x; ours spends "
          f"{mine['before_rounds_s']:.1f} s before the first round (prepare {mine['prepare_s']} s), "
          f"{mine['rounds_s']:.1f} s in rounds, {mine['after_rounds_s']:.1f} s after; xgboost.train "
          f"{base['before_rounds_s']:.1f} s reading and building DMatrix, {base['rounds_s']:.1f} s in rounds")
    print(result_line({"bench": "trees_throughput", "case": f"{rows // 1000}k rows x 30 columns",
                       "ours": mine["rounds_per_s"], "baseline": base["rounds_per_s"], "unit": "rounds/s",
                       "ratio": ratio, "better": "higher", "quick": args.quick, "rows": rows, "rounds": rounds,
                       "params": PARAMS, "ours_detail": mine, "baseline_detail": base}))
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    sys.exit(main())
