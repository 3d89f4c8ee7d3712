"""Batch prediction: `atoll predict` (a Ray job: Ray Data, an actor pool of the model) against a plain pandas +
torch loop over the same file, in one run, for the digits MLP (tabular) and the small BERT (text).

    python bench/batch_predict.py            # 1,000,000 and 10,000,000 tabular rows, 50,000 texts
    python bench/batch_predict.py --quick    # 200,000 and 2,000,000 rows, 10,000 texts (< 3 min on 2 cores)

The tabular model is measured at two sizes: a million rows is under two seconds of the loop's work, all of it
less than the job's fixed cost (submission, the actors starting), while ten million rows is about as much work
as the text case's. From the two, the report estimates where the job overtakes the loop (the crossover): the
rows at which each side's fixed seconds plus rows at its own marginal rate come out equal.

Both sides start from a registered version and a Parquet file on disk and end with a Parquet file of
predictions and probabilities, the way a user runs them:

- ours: ``atoll predict NAME:V --input rows.parquet --output out.parquet`` on a warm cluster (``atoll up``
  beforehand, its own storage), timed from the command's start to its end (job submission, Ray Data's read,
  the actor pool loading the model, writing the file included); its output is checked to follow the input's
  rows, and the same job with ``--any-order`` (pieces written as the actors finish them) says what the order
  costs (``order_cost``: ours / any-order - 1);
- baseline: one Python process that reads the file with pandas, applies the version's preprocessing
  (``task.encode``), runs the same weights with torch in batches of 4,096 under ``inference_mode``, turns the
  outputs into labels and probabilities with numpy (``task.answer_arrays``, as the job does) and writes the
  same columns with pyarrow, also timed end to end (loading the model included).

Rows/s = rows ÷ wall seconds. The models are trained here first (a short `atoll train`); the data is the
demo's, repeated to the size asked. What cannot be made equal: the baseline's torch uses both cores in one
process, while the actor pool runs one actor per CPU (per CPU but one where Ray Data's read tasks need a
core), each with its own torch. The loop encodes texts at the full ``max_length``, as a plain loop does; the
job runs them in buckets of similar length (:meth:`atoll.serving.predictor.Predictor.outputs`).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
from _common import atoll_cli as _atoll
from _common import own_cluster, result_line


def _plain_loop(storage: str, ref: str, source: Path, target: Path) -> float:
    """The baseline, end to end: pandas read, the version's preprocessing, torch in batches, pyarrow write."""
    import pandas as pd
    import pyarrow as pa
    import pyarrow.parquet as pq
    import torch
    from atoll.serving.predictor import Predictor

    started = time.perf_counter()
    predictor = Predictor(storage, ref, runtime="torch")
    task, schema, state = predictor.task, predictor.schema, predictor.pre
    frame = pd.read_parquet(source)
    keys = [c for c in frame.columns if c not in schema["features"]]
    predictions, probabilities = [], []
    with torch.inference_mode():
        for start in range(0, len(frame), 4096):
            part = frame.iloc[start:start + 4096]
            x = torch.from_numpy(np.ascontiguousarray(task.encode(task.frame_inputs(part, schema), state)))
            labels, probs = task.answer_arrays(predictor.model(x).float().numpy(), state)
            predictions.append(labels)
            probabilities.append(probs)
    probs = np.concatenate(probabilities)  # as arrays throughout, like the job: no Python lists per row
    out = pa.table({**{k: frame[k].to_numpy() for k in keys}, "prediction": np.concatenate(predictions),
                    "probabilities": pa.FixedSizeListArray.from_arrays(pa.array(probs.ravel()), probs.shape[1])})
    pq.write_table(out, target)
    return time.perf_counter() - started


#: the steps of one `atoll predict`, in order, and what each one is
STEPS = {"client_s": "the CLI: imports, the version and input checked, the job submitted",
         "job_setup_s": "Ray: the job's runtime env and its driver process started",
         "imports_s": "the driver's imports", "connect_s": "ray.init joins the cluster",
         "check_s": "the version loaded and the input checked again, in the job",
         "to_first_batch_s": "Ray Data planned, the actors started and loaded the model, the first batch back",
         "stream_s": "the rest of the rows predicted and written", "exit_s": "the driver exits, Ray marks the job done",
         "follow_s": "the CLI sees the end and prints"}


def _breakdown(began: float, ended: float, answer: dict) -> dict[str, float]:
    """Where the seconds of one `atoll predict` went, from the CLI's clock, the job's record (Unix ms) and the
    timings the job reports (its process start from the OS)."""
    job, timings = answer["job"], answer["predicted"]["timings"]
    submitted, finished = job["start_time"] / 1000, job["end_time"] / 1000
    process, predicted_at = timings["process_started"], answer["predicted"]["t"]
    return {"client_s": submitted - began, "job_setup_s": process - submitted,
            **{k: timings[k] for k in ("imports_s", "connect_s", "check_s", "to_first_batch_s", "stream_s")},
            "exit_s": finished - predicted_at, "follow_s": ended - finished}


def _print_breakdowns(results: list[dict]) -> None:
    from _common import print_table

    rows = [[step, what] + [f"{r['breakdown_s'][step]:.2f}" for r in results] for step, what in STEPS.items()]
    rows.append(["total", "wall of the command"] + [f"{r['ours_wall_s']:.2f}" for r in results])
    print_table("Where the seconds of `atoll predict` go", ["step", "what", *(r["case"] for r in results)], rows, left=2)


def _dataset(storage: str, demo: str, rows: int, target: Path) -> None:
    import pandas as pd
    from atoll import data

    frame = pd.read_parquet(data.prepare_demo(storage, demo)["holdout"])
    repeated = pd.concat([frame] * (rows // len(frame) + 1), ignore_index=True).iloc[:rows]
    repeated.insert(0, "row_id", np.arange(rows))
    repeated.to_parquet(target)


def _in_input_order(path: Path) -> bool:
    """Whether the job's output follows the input's rows (``row_id`` counts up from 0)."""
    import pyarrow.parquet as pq

    ids = pq.read_table(path, columns=["row_id"]).column("row_id").to_numpy()
    return bool(len(ids)) and bool((ids == np.arange(len(ids))).all())


def _crossover(small: dict, large: dict) -> dict | None:
    """Where the job overtakes the loop, from one case's two sizes: each side as fixed seconds plus rows at its
    marginal rate (the line through its two points). None where the job's marginal rate is not the faster."""
    rates, fixed = {}, {}
    for side, wall in (("ours", "ours_wall_s"), ("loop", "baseline_wall_s")):
        rates[side] = (large["rows"] - small["rows"]) / (large[wall] - small[wall])
        fixed[side] = small[wall] - small["rows"] / rates[side]
    if rates["ours"] <= rates["loop"]:
        return None
    rows = max(0.0, (fixed["ours"] - fixed["loop"]) / (1 / rates["loop"] - 1 / rates["ours"]))
    return {"rows": round(rows), "loop_s": round(fixed["loop"] + rows / rates["loop"], 1),
            "ours_fixed_s": round(fixed["ours"], 2), "ours_rows_per_s": round(rates["ours"]),
            "loop_fixed_s": round(fixed["loop"], 2), "loop_rows_per_s": round(rates["loop"])}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="200k and 2M rows, 10k texts")
    parser.add_argument("--case", action="append", choices=("tabular", "tabular-large", "text"),
                        help="only this case (repeatable; default: all three)")
    args = parser.parse_args()
    small, large = (200_000, 2_000_000) if args.quick else (1_000_000, 10_000_000)
    models = {"tabular": ("jobs/configs/train.yaml", "digits", ["--set", "epochs=3"]),
              "text": ("jobs/configs/text.yaml", "sms_spam", ["--set", "epochs=1"])}
    cases = {"tabular": ("tabular", small), "tabular-large": ("tabular", large),
             "text": ("text", 10_000 if args.quick else 50_000)}
    cases = {case: sized for case, sized in cases.items() if not args.case or case in args.case}
    results, refs = [], {}
    with own_cluster("atoll_bench_batch_") as (storage, work):
        for case, (model, rows) in cases.items():
            spec, demo, sets = models[model]
            if model not in refs:
                trained = json.loads(_atoll("train", spec, *sets, "--json"))["registered"]
                refs[model] = f"{trained['name']}:{trained['version']}"
            ref, source, n = refs[model], work / f"{case}.parquet", rows
            _dataset(storage, demo, n, source)
            started, began = time.perf_counter(), time.time()
            answer = json.loads(_atoll("predict", ref, "--input", str(source), "--output",
                                       str(work / f"{case}-ours.parquet"), "--json"))
            ours_s = time.perf_counter() - started
            predicted, breakdown = answer["predicted"], _breakdown(began, began + ours_s, answer)
            in_order = _in_input_order(work / f"{case}-ours.parquet")
            # What the input's order costs: the same job writing pieces as the actors finish them.
            started = time.perf_counter()
            _atoll("predict", ref, "--input", str(source), "--output", str(work / f"{case}-ours.parquet"),
                   "--overwrite", "--any-order", "--json")
            any_order_s = time.perf_counter() - started
            base_s = _plain_loop(storage, ref, source, work / f"{case}-loop.parquet")
            ours, base = n / ours_s, n / base_s
            print(f"{case}: {n:,} rows; atoll predict {ours_s:.1f} s ({ours:,.0f} rows/s, {predicted['actors']} "
                  f"actor(s); inside the job {predicted['seconds']} s); plain pandas + torch loop {base_s:.1f} s "
                  f"({base:,.0f} rows/s)", flush=True)
            results.append({"bench": "batch_predict", "case": case, "quick": args.quick, "ours": round(ours, 1),
                            "baseline": round(base, 1),
                            "unit": "rows/s", "ratio": round(ours / base, 3), "better": "higher", "rows": n,
                            "ours_wall_s": round(ours_s, 2), "baseline_wall_s": round(base_s, 2),
                            "job_seconds": predicted["seconds"], "actors": predicted["actors"],
                            "runtime": predicted["runtime"], "breakdown_s": breakdown, "in_input_order": in_order,
                            "any_order_wall_s": round(any_order_s, 2),
                            "order_cost": round(ours_s / any_order_s - 1, 3)})
            print(f"  in the input's order: {in_order}; with --any-order {any_order_s:.1f} s (the order costs "
                  f"{ours_s / any_order_s - 1:+.1%})", flush=True)
            for written in (source, work / f"{case}-ours.parquet", work / f"{case}-loop.parquet"):
                written.unlink()  # ten million rows: hundreds of MB on each side
    _print_breakdowns(results)
    tables = [r for r in results if r["case"].startswith("tabular")]
    crossover = _crossover(*tables) if len(tables) == 2 else None
    if crossover:
        large_table = tables[1]
        large_table["crossover"] = crossover
        print(f"tabular: the job's fixed cost {crossover['ours_fixed_s']} s, then {crossover['ours_rows_per_s']:,.0f} "
              f"rows/s; the loop's {crossover['loop_fixed_s']} s, then {crossover['loop_rows_per_s']:,.0f} rows/s: "
              f"the job is faster from about {crossover['rows']:,.0f} rows ({crossover['loop_s']} s of the loop's "
              f"work)", flush=True)
    for result in results:
        print(result_line(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
