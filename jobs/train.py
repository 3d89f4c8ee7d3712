"""Train a model with Ray Train and register the best checkpoint — runs ON the cluster.

    atoll train jobs/configs/train.yaml                            # submit through the Jobs API (usual way)
    atoll train --set epochs=3 --set optimizer.lr=0.01 --wait      # override any field of the spec
    ray job submit --working-dir . -- python jobs/train.py -c jobs/configs/train.yaml   # Ray's own CLI
    python jobs/train.py -c jobs/configs/train.yaml                # run the driver here, on a running cluster

Re-run with `--resume RUN_NAME` to continue a run from its latest checkpoint.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

from atoll import cluster, config, train
from atoll.errors import AtollError
from atoll.events import report_error
from atoll.specs import TrainSpec


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-c", "--config", default="jobs/configs/train.yaml", help="training spec (YAML)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a field")
    parser.add_argument("--run-name", help="name of the run (default: NAME-TIMESTAMP)")
    parser.add_argument("--resume", metavar="RUN_NAME", help="resume this run from its latest checkpoint")
    args = parser.parse_args(argv)
    try:
        spec = config.load_file(TrainSpec, args.config, args.set)
        storage = cluster.load_spec().atoll.storage
        run_name = args.resume or args.run_name or train.default_run_name(spec)
        print("resolved spec:", json.dumps(spec.model_dump(mode="json")), flush=True)

        import ray

        ray.init(address=os.environ.get("RAY_ADDRESS", "auto"), log_to_driver=True)
        result, dplan, pre, plan = train.fit(spec, storage=storage, run_name=run_name, resume=bool(args.resume))
        ckpt, metrics = train.best_checkpoint(result)
        train.emit("finished", run=run_name, best=metrics, checkpoint=ckpt.path)
        if spec.register_model:
            lineage = {"run_name": run_name, "run_path": result.path, "dataset": dplan.uri,
                       "dataset_fingerprint": dplan.fingerprint, "job_id": os.environ.get("ATOLL_JOB_ID"),
                       "git_commit": os.environ.get("ATOLL_GIT_COMMIT") or train.git_commit(),
                       "num_workers": plan.num_workers, "use_gpu": plan.use_gpu, "epoch": metrics.get("epoch")}
            version = train.register_checkpoint(ckpt, metrics, storage=storage, name=spec.name, lineage=lineage)
            train.emit("registered", name=version.name, version=version.version, metrics=version.manifest["metrics"])
    except AtollError as exc:
        return report_error(exc)
    return 0


if __name__ == "__main__":
    sys.exit(main())
