"""The evaluation job: ``python -m atoll.evaluation NAME:V --data URI``, what ``atoll models evaluate`` submits
(``ray job submit -- python -m atoll.evaluation digits:3 --data /abs/holdout.parquet`` works as well). It prints
``predict_progress`` events while the version predicts, then one ``evaluated`` event holding the stored ``record``. The
work is in :mod:`atoll.evaluation`."""

from __future__ import annotations

import argparse
import os
import sys

from atoll import config, driver
from atoll.events import emit
from atoll.serving.predictor import RUNTIMES


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m atoll.evaluation",
                                     description="Evaluate a registered model on labelled data (Ray Data).")
    parser.add_argument("model", help="NAME:VERSION (or NAME@ALIAS, NAME)")
    parser.add_argument("--data", required=True, help="Parquet or CSV file or folder with the version's inputs and "
                                                      "label column (local path or URI)")
    parser.add_argument("--as-given", help="the data's path as the user wrote it (recorded beside the URI)")
    parser.add_argument("--runtime", choices=RUNTIMES, default="auto", help="as for `atoll predict`")
    args = parser.parse_args(argv)
    return driver.run(lambda: _job(args))


def _job(args) -> None:
    import time

    from atoll import evaluation

    storage = config.load_spec().atoll.storage
    driver.connect()
    last = [0.0]

    def progress(done: int, total: int | None) -> None:
        if time.monotonic() - last[0] > 0.5 or done == total:
            last[0] = time.monotonic()
            emit("predict_progress", rows=done, total=total)

    record = evaluation.run(args.model, args.data, storage=storage, shown=args.as_given, runtime=args.runtime,
                            job_id=os.environ.get("ATOLL_JOB_ID"), on_progress=progress)
    emit("evaluated", record=record)  # nested: an event has an id of its own


if __name__ == "__main__":
    sys.exit(main())
