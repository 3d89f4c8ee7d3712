"""The training job: ``python -m atoll.train -c SPEC``, what ``atoll train`` submits (and ``jobs/train.py`` runs).

Only the command line and the job's steps (read the spec, connect, fit, register the best checkpoint) live
here; the work is in :mod:`atoll.train.run`. Nothing Ray ships is defined in this module (the worker loop
lives in :mod:`atoll.train.loop`), so running it as ``__main__`` pickles nothing by value.
"""

from __future__ import annotations

import json
import sys
import time

from atoll import config, driver, exports
from atoll.events import emit
from atoll.specs import TrainSpec, check_name
from atoll.train.run import best_checkpoint, default_run_name, fit, register_checkpoint


def main(argv: list[str] | None = None) -> int:
    """The training job's driver, run ON the cluster: train, then register the best checkpoint.

    ``python -m atoll.train -c SPEC [--set KEY=VALUE ...] [--run-name NAME | --resume NAME]``; what
    `atoll train SPEC` submits through the Jobs API, and what ``ray job submit`` can run as well.
    """
    parser = driver.parser("atoll.train", "Train a model with Ray Train and register the best checkpoint "
                           "(run on a Ray cluster; `atoll train` submits it).", "jobs/configs/train.yaml",
                           "override a field of the spec, e.g. --set epochs=3 --set optimizer.lr=0.01")
    parser.add_argument("--run-name", help="name of the run (default: NAME-TIMESTAMP)")
    parser.add_argument("--resume", metavar="RUN_NAME", help="resume this run from its latest checkpoint")
    args = parser.parse_args(argv)
    return driver.run(lambda: _train_job(args.config, args.set, args.run_name, args.resume))


def _train_job(spec_path: str, overrides: list[str], run_name: str | None, resume: str | None) -> None:
    imported = time.time()
    spec = config.load_file(TrainSpec, spec_path, overrides)
    storage = config.load_spec().atoll.storage
    run_name = check_name(resume or run_name or default_run_name(spec), "run name")  # before connecting
    print("resolved spec:", json.dumps(spec.model_dump(mode="json")), flush=True)
    driver.connect()
    connected = time.time()
    if spec.register_model:
        exports.warm_up()
    started = driver.process_started()
    timings = {"process_started": round(started, 3), "imports_s": round(imported - started, 2),
               "connect_s": round(connected - imported, 2)}
    result, dplan, pre, plan = fit(spec, storage=storage, run_name=run_name, resume=bool(resume), timings=timings)
    ckpt, metrics = best_checkpoint(result, spec)
    emit("finished", run=run_name, best=metrics, checkpoint=ckpt.path)
    if spec.register_model:
        lineage = {"run_name": run_name, "run_path": result.path, "dataset": dplan.uri,
                   "dataset_fingerprint": dplan.fingerprint, **driver.lineage(),
                   "num_workers": plan.num_workers, "use_gpu": plan.use_gpu, "epoch": metrics.get("epoch")}
        report = getattr(pre, "report", None) or {}
        if report:  # a table's rows left out for want of a label, or of a class training never had
            lineage["unlabelled_rows_dropped"] = report.get("unlabelled_rows", 0) + report.get(
                "validation_unlabelled_rows", 0)
            lineage["validation_only_class_rows_dropped"] = sum((report.get("validation_only_classes") or {}).values())
        version = register_checkpoint(ckpt, metrics, storage=storage, name=spec.name, lineage=lineage)
        emit("registered", name=version.name, version=version.version, metrics=version.manifest["metrics"])


if __name__ == "__main__":
    sys.exit(main())
