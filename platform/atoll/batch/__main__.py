"""The batch prediction job: ``python -m atoll.batch MODEL --input URI --output URI``, what ``atoll predict``
submits (and what ``ray job submit`` can run as well). The work is in :mod:`atoll.batch`."""

from __future__ import annotations

import argparse
import sys

from atoll import config, driver
from atoll.events import emit
from atoll.serving.predictor import RUNTIMES


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m atoll.batch",
                                     description="Predict a dataset with a registered model (Ray Data).")
    parser.add_argument("model", help="NAME, NAME:VERSION or NAME@ALIAS")
    parser.add_argument("--input", required=True, help="Parquet or CSV file or folder (local path or URI)")
    parser.add_argument("--output", required=True, help="the Parquet file to write")
    parser.add_argument("--batch-size", type=int, help="rows read and answered together (default: the task's: 65,536 table "
                                                        "rows, 4,096 texts or images)")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing output")
    parser.add_argument("--any-order", action="store_true", help="write rows as the actors finish them, not "
                        "in the input's order (match them by a key column)")
    parser.add_argument("--runtime", choices=RUNTIMES, default="auto",
                        help="auto: ONNX Runtime on CPU where the version has its model.onnx, else torch; onnx: "
                             "the exported file")
    parser.add_argument("--max-tokens", type=int, help="a language model's new tokens per completion (default 64)")
    args = parser.parse_args(argv)
    return driver.run(lambda: _job(args))


def _job(args) -> None:
    import time

    from atoll import batch

    imported = time.time()
    storage = config.load_spec().atoll.storage
    driver.connect()
    connected = time.time()
    last = [0.0]

    def progress(done: int, total: int | None) -> None:
        if time.monotonic() - last[0] > 0.5 or done == total:  # a line every half second, and the last
            last[0] = time.monotonic()
            emit("predict_progress", rows=done, total=total)

    result = batch.run(args.model, args.input, args.output, storage=storage, batch_rows=args.batch_size,
                       overwrite=args.overwrite, runtime=args.runtime, any_order=args.any_order,
                       max_tokens=args.max_tokens, on_progress=progress)
    started = driver.process_started()
    result["timings"] = {"process_started": round(started, 3), "imports_s": round(imported - started, 2),
                         "connect_s": round(connected - imported, 2), **result["timings"]}
    emit("predicted", **result)


if __name__ == "__main__":
    sys.exit(main())
