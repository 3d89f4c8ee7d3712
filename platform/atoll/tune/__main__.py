"""The sweep job: ``python -m atoll.tune -c SWEEP``, what ``atoll tune`` submits (and ``jobs/tune.py`` runs).

Only the command line and the job's steps (read the sweep, connect, run it) live here; the work is in
:mod:`atoll.tune.run`. Nothing defined here is shipped to Ray workers (the trial is
:func:`atoll.tune.trial.run_trial`, a reference to an importable module), so the copy that ``python -m`` runs
as ``__main__`` calls its own :func:`main`.
"""

from __future__ import annotations

import json
import sys

from atoll import config, driver
from atoll.tune.run import load_sweep, run_sweep


def main(argv: list[str] | None = None) -> int:
    """The sweep job's driver, run ON the cluster: run the sweep, then register the best model.

    ``python -m atoll.tune -c SWEEP [--set KEY=VALUE ...] [--resume]``; what `atoll tune SWEEP` submits
    through the Jobs API. The experiment, its results table (results.csv / results.parquet) and plot (sweep.png) go
    to <storage>/sweeps/<name>; ``--resume`` continues an interrupted sweep of the same name (finished trials
    are not redone); a new sweep needs a new name (``--set name=NEW``).
    """
    parser = driver.parser("atoll.tune", "Run a hyperparameter sweep with Ray Tune and register the best "
                           "model (run on a Ray cluster; `atoll tune` submits it).", "jobs/configs/sweep.yaml",
                           "override a field of the sweep (overrides.KEY=VALUE changes the training spec)")
    parser.add_argument("--resume", action="store_true", help="continue the interrupted sweep of this name")
    args = parser.parse_args(argv)
    return driver.run(lambda: _sweep_job(args.config, args.set, args.resume))


def _sweep_job(sweep_path: str, overrides: list[str], resume: bool) -> int:
    sweep, base = load_sweep(sweep_path, overrides)
    storage = config.load_spec().atoll.storage
    print("resolved sweep:", json.dumps(sweep.model_dump(mode="json", exclude_none=True)), flush=True)
    print("resolved training spec:", json.dumps(base.model_dump(mode="json")), flush=True)
    driver.connect()
    summary = run_sweep(sweep, base, storage=storage, resume=resume, lineage=driver.lineage())
    if summary["best"] is None:
        print(f"error: no trial reported a metric; see the trial errors in {summary['results_csv']}",
              file=sys.stderr, flush=True)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
