"""Reading Parquet with Ray Data: Atoll's read (``atoll.data.read``: Ray's V1 Parquet reader) vs Ray 2.60's default
(``ray.data.read_parquet`` through DataSourceV2), same files, same passes, in one run.

    python bench/parquet_read.py           # 7 passes each over 2 datasets
    python bench/parquet_read.py --quick   # 3 passes

A pass plans the read and iterates every row in batches of 256 (``iter_batches``), as a streamed training epoch
reads its files (twice per epoch: the training split, then the validation split). Datasets: the digits demo
(1,617 rows, one file) and a synthetic table (200k rows x 64 float32, 8 files). The figure is the median seconds
per pass after one warm-up pass; the driver runs an in-process local Ray (``ray.init(address="local",
num_cpus=2)``), nothing else running.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

from _common import print_table, result_line
from data_ingest import make_synthetic


def _pass(read) -> float:
    start = time.perf_counter()
    for _ in read().iter_batches(batch_size=256, batch_format="numpy"):
        pass
    return time.perf_counter() - start


def seconds_per_pass(read, passes: int) -> float:
    _pass(read)  # warm-up: worker processes started, imports done
    return statistics.median(_pass(read) for _ in range(passes))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="3 passes per case")
    args = parser.parse_args()
    passes = 3 if args.quick else 7

    import ray
    import ray.data
    from atoll import data

    with tempfile.TemporaryDirectory(prefix="atoll_bench_parquet_") as tmp:
        folder = Path(tmp)
        digits = data.prepare_demo(str(folder / "storage"))["train"]
        synthetic = make_synthetic(folder / "synthetic", rows=200_000)
        ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
        data.quiet_progress()
        try:
            ctx = ray.data.DataContext.get_current()
            cases = {}
            for name, uri in (("digits", digits), ("synthetic", synthetic)):
                ours = seconds_per_pass(lambda uri=uri: data.read(uri, "parquet"), passes)

                def rays_default(uri=uri):
                    ctx.use_datasource_v2 = True
                    return ray.data.read_parquet(uri)

                default = seconds_per_pass(rays_default, passes)
                cases[name] = {"ours_s": ours, "rays_default_s": default, "ratio": default / ours}
        finally:
            ray.shutdown()

    print_table("Seconds per pass over the files (median; lower is better)",
                ["data", "Atoll (V1 reader)", "Ray's default (DataSourceV2)", "speed-up"],
                [[k, f"{v['ours_s']:.2f}", f"{v['rays_default_s']:.2f}", f"{v['ratio']:.1f}x"] for k, v in cases.items()])
    out = {"bench": "parquet_read", "ours": cases["digits"]["ours_s"], "baseline": cases["digits"]["rays_default_s"],
           "unit": "s per pass (digits)", "ratio": cases["digits"]["ours_s"] / cases["digits"]["rays_default_s"],
           "better": "lower", "quick": args.quick, "passes": passes, "cases": cases}
    print(result_line(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
