"""Run a hyperparameter sweep with Ray Tune and register the best model — runs ON the cluster.

    atoll tune jobs/configs/sweep.yaml                             # submit through the Jobs API (usual way)
    atoll tune --set num_samples=4 --set overrides.epochs=4        # override any field of the sweep
    ray job submit --working-dir . -- python jobs/tune.py -c jobs/configs/sweep.yaml   # Ray's own CLI
    python jobs/tune.py -c jobs/configs/sweep.yaml                 # run the driver here, on a running cluster

The experiment, its results table (results.csv / results.parquet) and plot (sweep.png) go to
<storage>/sweeps/<name>. Re-run with `--resume` to continue an interrupted sweep of the same name
(finished trials are not redone); a new sweep needs a new name (`--set name=NEW`).
"""

from __future__ import annotations

import argparse
import json
import os
import sys

from atoll import cluster, train, tune
from atoll.errors import AtollError
from atoll.events import report_error


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-c", "--config", default="jobs/configs/sweep.yaml", help="sweep spec (YAML)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="override a field of the sweep (overrides.KEY=VALUE changes the training spec)")
    parser.add_argument("--resume", action="store_true", help="continue the interrupted sweep of this name")
    args = parser.parse_args(argv)
    try:
        sweep, base = tune.load_sweep(args.config, args.set)
        storage = cluster.load_spec().atoll.storage
        print("resolved sweep:", json.dumps(sweep.model_dump(mode="json", exclude_none=True)), flush=True)
        print("resolved training spec:", json.dumps(base.model_dump(mode="json")), flush=True)

        import ray

        ray.init(address=os.environ.get("RAY_ADDRESS", "auto"), log_to_driver=True)
        lineage = {"job_id": os.environ.get("ATOLL_JOB_ID"),
                   "git_commit": os.environ.get("ATOLL_GIT_COMMIT") or train.git_commit()}
        summary = tune.run_sweep(sweep, base, storage=storage, resume=args.resume, lineage=lineage)
        if summary["best"] is None:
            print("error: no trial reported a metric; see the trial errors in "
                  f"{summary['results_csv']}", file=sys.stderr, flush=True)
            return 1
    except AtollError as exc:
        return report_error(exc)
    return 0


if __name__ == "__main__":
    sys.exit(main())
