"""Training throughput: Atoll's Ray Train path vs plain torchrun DDP, same model, data and schedule.

    python bench/train_throughput.py            # spec's 10 epochs, 2 alternating rounds per side
    python bench/train_throughput.py --quick    # 4 epochs, 1 round per side (< 3 min on 2 cores)

Ours: ``atoll.train.fit`` (the real path ``jobs/train.py`` takes) with the TrainSpec loaded from
jobs/configs/train.yaml (the digits demo, MLP [128, 64], AdamW, batch 64 per worker, 2 workers x 1 CPU,
gloo) on an in-process local Ray (``ray.init(address="local", num_cpus=2)``: never the shared cluster,
never port 6379/8265). Per-epoch figures come from the run's own history (atoll.json in the latest
checkpoint).

Baseline: ``python -m torch.distributed.run --standalone --nproc_per_node 2 bench/_ddp_baseline.py``:
pyarrow read, the same split and standardisation, tensors in memory, DistributedSampler, DDP gloo.

Both sides measure ``samples_per_s`` the same way (global train samples / rank 0's train-phase time).
The headline compares steady-state epochs (epoch 0 skipped on both sides: warm-up, Ray Data's first
materialisation); the end-to-end wall time of each side, split into fixed and per-epoch cost, shows
where the rest goes. The two sides run one after the other, never at the same time. To split
``fit()`` the bench wraps ``atoll.train.prepare`` in a timer and passes a Train callback that records
when each epoch's report reaches the controller; the training itself is untouched. A thread notes any
other Ray cluster on the machine during each side (``per_round_contended_share``): read figures from
a contended run with care.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _common import print_table, ForeignRay, median as _median, own_session as _own_session, rounded as _rounded  # noqa: F401

REPO = Path(__file__).resolve().parent.parent
BASELINE = Path(__file__).resolve().parent / "_ddp_baseline.py"
CONFIG = REPO / "jobs" / "configs" / "train.yaml"

try:
    from ray.train import UserCallback as _UserCallback
except ImportError:  # pragma: no cover - Ray without Train V2's callback API
    _UserCallback = object


class ReportClock(_UserCallback):
    """Runs on the Train controller: appends the wall time of every epoch's report to a file.

    It only observes (the loop and the trainer are Atoll's); it lets the bench split ``fit()`` into
    start-up (controller + worker group + first batch), epochs, and tear-down.
    """

    def __init__(self, path: str):
        self.path = path

    def after_report(self, run_context, metrics, checkpoint):
        with open(self.path, "a") as fh:
            fh.write(json.dumps({"t": time.time(), "epoch": (metrics[0] or {}).get("epoch")}) + "\n")


# ------------------------------------------------------------------------------------------------
# Figures


def steady(history: list[dict], skip: int = 1) -> dict:
    """Steady-state throughput over epochs >= skip: total samples / total train-phase time."""
    rows = history[skip:] or history
    samples = sum(h["train_samples"] for h in rows)
    train_time = sum(h.get("train_time_s") or h["train_samples"] / h["samples_per_s"] for h in rows)
    return {"samples_per_s": samples / train_time if train_time else None,
            "median_epoch_samples_per_s": statistics.median(h["samples_per_s"] for h in rows),
            "median_epoch_time_s": statistics.median(h["epoch_time_s"] for h in rows),
            "first_epoch_time_s": history[0]["epoch_time_s"], "epochs_counted": len(rows),
            "train_samples_per_epoch": rows[0]["train_samples"],
            "final_val_accuracy": history[-1]["val_accuracy"]}


# ------------------------------------------------------------------------------------------------
# The two sides


def run_baseline(parquet: str, spec_json: str, work: Path, round_no: int) -> dict:
    out = work / f"baseline_{round_no}.json"
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS",)}
    env.setdefault("PYTHONWARNINGS", "ignore")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           str(BASELINE), "--parquet", parquet, "--spec-json", spec_json, "--out", str(out),
           "--ckpt-dir", str(work / f"baseline_ckpt_{round_no}")]
    t0 = time.time()
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=600, check=False)
    wall = time.time() - t0
    if proc.returncode != 0:
        sys.stderr.write(proc.stdout[-4000:] + proc.stderr[-4000:])
        raise RuntimeError(f"torchrun baseline failed (exit {proc.returncode})")
    res = json.loads(out.read_text())
    ts = res["timestamps"]
    epochs_total = sum(h["epoch_time_s"] for h in res["history"])
    res["wall"] = {
        "end_to_end_s": wall,
        "startup_s": ts["train_start"] - t0,  # torchrun + 2 interpreters + imports + process group + data
        "launch_and_imports_s": ts["imports_done"] - t0,
        "process_group_s": ts["process_group"] - ts["imports_done"],
        "data_s": ts["data_ready"] - ts["process_group"],
        "epochs_total_s": epochs_total,
        "first_epoch_s": res["history"][0]["epoch_time_s"],
        "per_epoch_steady_s": statistics.median(h["epoch_time_s"] for h in res["history"][1:] or res["history"]),
        "teardown_s": t0 + wall - ts["train_end"],
    }
    res["wall"]["between_epochs_s"] = (ts["train_end"] - ts["train_start"]) - epochs_total  # checkpoints
    res["wall"]["model_setup_s"] = ts["train_start"] - ts["data_ready"]  # model build + DDP wrap
    res["wall"]["wall_per_epoch_s"] = (ts["train_end"] - ts["train_start"]) / len(res["history"])
    return res


def run_atoll(spec, storage: str, work: Path, round_no: int, watcher: ForeignRay | None = None) -> dict:
    import atoll.train as atrain
    import ray
    from atoll import train

    clock_file = work / f"reports_{round_no}.jsonl"
    clock_file.unlink(missing_ok=True)
    marks: dict[str, float] = {}
    original_prepare = atrain.prepare

    def timed_prepare(*args, **kwargs):  # a timer around Atoll's own prepare(); nothing else changes
        marks["prepare_start"] = time.time()
        try:
            return original_prepare(*args, **kwargs)
        finally:
            marks["prepare_end"] = time.time()

    if watcher is not None:
        watcher.paused = True
    t0 = time.time()
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False,
             configure_logging=False)
    try:
        t_init = time.time()
        if watcher is not None:
            watcher.own_session, watcher.paused = _own_session(), False
        atrain.prepare = timed_prepare
        run_name = f"bench-{round_no}-{os.urandom(3).hex()}"
        result, dplan, _pre, plan = train.fit(spec, storage=storage, run_name=run_name,
                                             callbacks=[ReportClock(str(clock_file))], report_events=False)
        t_fit = time.time()
    finally:
        atrain.prepare = original_prepare
        t_sd0 = time.time()
        ray.shutdown()
        t_sd = time.time()

    history = None
    if result.checkpoint is not None:  # the run's own record: atoll.json of the latest checkpoint
        with result.checkpoint.as_directory() as d:
            history = json.loads((Path(d) / train.META_FILE).read_text())["history"]
    if not history:
        raise RuntimeError("the Atoll run left no checkpoint with a history")
    reports = [json.loads(line) for line in clock_file.read_text().splitlines()] if clock_file.exists() else []
    epochs_total = sum(h["epoch_time_s"] for h in history)
    wall = {
        "end_to_end_s": t_sd - t0,
        "ray_init_s": t_init - t0,
        "prepare_s": marks.get("prepare_end", t_init) - marks.get("prepare_start", t_init),
        "fit_s": t_fit - t_init,
        "epochs_total_s": epochs_total,
        "first_epoch_s": history[0]["epoch_time_s"],
        "per_epoch_steady_s": statistics.median(h["epoch_time_s"] for h in history[1:] or history),
        "ray_shutdown_s": t_sd - t_sd0,
    }
    if reports and "prepare_end" in marks:
        # trainer start-up: controller + worker group + process group + model/DDP, up to epoch 0's start
        wall["trainer_startup_s"] = reports[0]["t"] - marks["prepare_end"] - history[0]["epoch_time_s"]
        # between consecutive epochs, beyond epoch_time_s: checkpoint write + report + registration
        intervals = [b["t"] - a["t"] for a, b in itertools.pairwise(reports)]
        gaps = [i - h["epoch_time_s"] for i, h in zip(intervals, history[1:])]
        wall["report_checkpoint_per_epoch_s"] = statistics.median(gaps) if gaps else None
        # wall time per steady epoch as the controller sees it (report to report): what a user waits
        wall["wall_per_epoch_s"] = statistics.median(intervals) if intervals else None
        wall["trainer_teardown_s"] = t_fit - reports[-1]["t"]
    return {"history": history, "wall": wall, "run_name": run_name, "rows": dplan.rows,
            "workers": plan.num_workers, "backend": plan.backend, "cache": spec.dataset.cache}


# ------------------------------------------------------------------------------------------------


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="4 epochs, 1 round per side (< 3 min)")
    parser.add_argument("--epochs", type=int, help="override the spec's epochs")
    parser.add_argument("--rounds", type=int, help="alternating rounds per side (default 2, quick 1)")
    args = parser.parse_args()
    epochs = args.epochs or (4 if args.quick else None)
    rounds = args.rounds or (1 if args.quick else 2)

    os.environ.pop("RAY_ADDRESS", None)  # never attach to someone else's cluster
    os.environ.setdefault("RAY_TRAIN_V2_ENABLED", "1")

    from atoll import config, data
    from atoll.specs import TrainSpec

    overrides = [f"epochs={epochs}"] if epochs else []
    overrides.append("register_model=false")
    spec = config.load_file(TrainSpec, CONFIG, overrides)

    work = Path(tempfile.mkdtemp(prefix="atoll_bench_train_"))
    try:
        storage = str(work / "storage")
        parquet = data.prepare_demo(storage)["train"]  # the digits demo, exported from scikit-learn
        spec_json = work / "spec.json"
        spec_json.write_text(json.dumps(spec.model_dump(mode="json")))

        ours_runs, base_runs = [], []
        with ForeignRay() as watcher:
            for r in range(rounds):  # alternate: baseline, ours, baseline, ours ...
                print(f"round {r + 1}/{rounds}: torchrun baseline ...", flush=True)
                watcher.mark()
                base_runs.append(run_baseline(parquet, str(spec_json), work, r))
                base_runs[-1]["contended"] = watcher.mark()
                print(f"round {r + 1}/{rounds}: atoll.train.fit ...", flush=True)
                ours_runs.append(run_atoll(spec, storage, work, r, watcher))
                ours_runs[-1]["contended"] = watcher.mark()
        report(spec, ours_runs, base_runs, watcher.note(), args.quick)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


def report(spec, ours_runs, base_runs, contention, quick) -> None:
    ours_steady = [steady(r["history"]) for r in ours_runs]
    base_steady = [steady(r["history"]) for r in base_runs]
    ours = _median(s["samples_per_s"] for s in ours_steady)
    base = _median(s["samples_per_s"] for s in base_steady)
    ow = {k: _median(r["wall"].get(k) for r in ours_runs) for k in ours_runs[0]["wall"]}
    bw = {k: _median(r["wall"].get(k) for r in base_runs) for k in base_runs[0]["wall"]}
    o_first = _median(r["history"][0]["samples_per_s"] for r in ours_runs)
    b_first = _median(r["history"][0]["samples_per_s"] for r in base_runs)
    o_ept = _median(s["median_epoch_time_s"] for s in ours_steady)
    b_ept = _median(s["median_epoch_time_s"] for s in base_steady)
    n_ep = spec.epochs
    samples = ours_steady[0]["train_samples_per_epoch"]
    o_wall_sps = samples / ow["wall_per_epoch_s"] if ow.get("wall_per_epoch_s") else None
    b_wall_sps = base_steady[0]["train_samples_per_epoch"] / bw["wall_per_epoch_s"]
    # fixed cost = end-to-end minus what the steady epochs would cost if every epoch were steady
    o_fixed = ow["end_to_end_s"] - n_ep * ow["per_epoch_steady_s"]
    b_fixed = bw["end_to_end_s"] - n_ep * bw["per_epoch_steady_s"]

    def f(v, fmt="{:.2f}"):
        return "-" if v is None else fmt.format(v)

    rows = [
        ("steady samples/s (epochs >= 1)", f(ours, "{:,.0f}"), f(base, "{:,.0f}")),
        ("epoch 0 samples/s", f(o_first, "{:,.0f}"), f(b_first, "{:,.0f}")),
        ("train samples / epoch", str(ours_steady[0]["train_samples_per_epoch"]),
         str(base_steady[0]["train_samples_per_epoch"])),
        ("steady epoch time s (train+val)", f(o_ept, "{:.3f}"), f(b_ept, "{:.3f}")),
        ("first epoch time s", f(ow["first_epoch_s"], "{:.3f}"), f(bw["first_epoch_s"], "{:.3f}")),
        ("final val accuracy", f(ours_steady[0]["final_val_accuracy"], "{:.3f}"),
         f(base_steady[0]["final_val_accuracy"], "{:.3f}")),
        ("wall per steady epoch s (incl. report/ckpt)", f(ow.get("wall_per_epoch_s"), "{:.3f}"),
         f(bw["wall_per_epoch_s"], "{:.3f}")),
        ("wall samples/s (samples / wall per epoch)", f(o_wall_sps, "{:,.0f}"), f(b_wall_sps, "{:,.0f}")),
        ("end-to-end wall s", f(ow["end_to_end_s"]), f(bw["end_to_end_s"])),
        ("  fixed cost s (e2e - epochs x steady)", f(o_fixed), f(b_fixed)),
        ("  ray.init / torchrun+imports s", f(ow["ray_init_s"]), f(bw["launch_and_imports_s"])),
        ("  data prep s (plan+stats+materialise / pyarrow+numpy)", f(ow["prepare_s"]), f(bw["data_s"])),
        ("  trainer start-up s (controller+workers / process group+DDP)", f(ow.get("trainer_startup_s")),
         f(bw["process_group_s"] + bw["model_setup_s"])),
        ("  report+checkpoint per epoch s", f(ow.get("report_checkpoint_per_epoch_s"), "{:.3f}"),
         f(bw["between_epochs_s"] / max(n_ep, 1), "{:.3f}")),
        ("  trainer tear-down s", f(ow.get("trainer_teardown_s")), f(bw["teardown_s"])),
        ("  ray.shutdown s", f(ow["ray_shutdown_s"]), "-"),
    ]
    title = (f"Training throughput: digits demo, MLP {spec.model.params.get('hidden')}, batch {spec.batch_size}/worker, "
             f"{spec.num_workers} workers, {n_ep} epochs, {len(ours_runs)} round(s), medians")
    print_table(title, ["figure", "Atoll fit() (Ray Train)", "torchrun DDP"], rows)
    ratio = ours / base if ours and base else None
    print(f"ratio (ours/baseline, steady samples/s): {f(ratio, '{:.3f}')};  end-to-end wall: "
          f"{ow['end_to_end_s']:.1f} s vs {bw['end_to_end_s']:.1f} s;  {contention}.")
    print("Notes: both sides single-threaded per worker (Ray sets OMP_NUM_THREADS=1 for a 1-CPU worker, "
          f"torchrun too; baseline torch threads={base_runs[0].get('torch_threads')}). The baseline indexes "
          "in-memory tensors; Atoll streams batches from Ray Data (object-store cache) every epoch. "
          "Ray Train V2's controller takes one report per worker per health-check poll "
          "(RAY_TRAIN_HEALTH_CHECK_INTERVAL_S, default 2 s; this run: "
          f"{os.environ.get('RAY_TRAIN_HEALTH_CHECK_INTERVAL_S', '2')}) and a worker's result queue holds one, "
          "so an epoch shorter than the interval waits in ray.train.report: the 'report+checkpoint' line.")
    out = {"bench": "train_throughput", "ours": ours, "baseline": base, "unit": "samples/s",
           "ratio": ratio, "better": "higher", "quick": quick, "epochs": n_ep, "rounds": len(ours_runs),
           "batch_size_per_worker": spec.batch_size, "workers": spec.num_workers,
           "train_samples_per_epoch": {"ours": ours_steady[0]["train_samples_per_epoch"],
                                       "baseline": base_steady[0]["train_samples_per_epoch"]},
           "epoch0_samples_per_s": {"ours": o_first, "baseline": b_first},
           "steady_epoch_time_s": {"ours": o_ept, "baseline": b_ept},
           "wall_per_epoch_s": {"ours": ow.get("wall_per_epoch_s"), "baseline": bw["wall_per_epoch_s"]},
           "wall_samples_per_s": {"ours": o_wall_sps, "baseline": b_wall_sps},
           "health_check_interval_s": os.environ.get("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "2.0 (default)"),
           "end_to_end_s": {"ours": ow["end_to_end_s"], "baseline": bw["end_to_end_s"]},
           "fixed_cost_s": {"ours": o_fixed, "baseline": b_fixed},
           "ours_breakdown_s": ow, "baseline_breakdown_s": bw,
           "per_round_steady_samples_per_s": {"ours": [s["samples_per_s"] for s in ours_steady],
                                              "baseline": [s["samples_per_s"] for s in base_steady]},
           "per_round_contended_share": {"ours": [r.get("contended") for r in ours_runs],
                                   "baseline": [r.get("contended") for r in base_runs]},
           "final_val_accuracy": {"ours": ours_steady[0]["final_val_accuracy"],
                                  "baseline": base_steady[0]["final_val_accuracy"]},
           "contention": contention}
    print(json.dumps(_rounded(out), default=str))


if __name__ == "__main__":
    sys.exit(main())
