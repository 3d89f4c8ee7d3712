"""Training throughput: `atoll train` and Atoll's in-process fit() vs plain torchrun DDP, same model, data, schedule.

    python bench/train_throughput.py            # spec's 10 epochs, 2 alternating rounds per side
    python bench/train_throughput.py --quick    # 4 epochs, 1 round per side (< 4 min on 2 cores)
    python bench/train_throughput.py --quick --rows 500000   # a workload where compute matters

``--rows N``: the demo's training file repeated to N rows, for every side (the split and the validation rows
then repeat training rows too: the accuracy means nothing, the throughput is what this case measures); its
JSON line says ``case: N rows``.

All sides train the TrainSpec of jobs/configs/train.yaml (the digits demo, MLP [128, 64], AdamW, batch 64
per worker, 2 workers x 1 CPU, gloo) on the same Parquet export in a temporary storage root.

Ours, as users run it (the headline): ``atoll up``, then ``atoll train --set epochs=N --set
register_model=false --run-name R`` — the CLI itself, as a subprocess, so the job gets exactly what
``atoll.jobs.submit_atoll_job`` gives every training job (its runtime_env and env vars, among them Ray
Train's report poll ``RAY_TRAIN_HEALTH_CHECK_INTERVAL_S``; the figure printed is read back from the job's
own runtime_env) — and the job's driver runs ``python -m atoll.train`` on the cluster. The CLI is called with
``--no-wait`` and the bench then follows the job with ``atoll.jobs.follow``, the very call ``atoll train``
follows it with, noting when each epoch's progress event arrives (wall per epoch as a user sees it).
Per-epoch figures come from the run's own history (atoll.json of its latest checkpoint); ``atoll down``
ends each round. ``atoll up`` uses cluster.yaml's fixed ports (GCS 6379, dashboard 8265) in a temporary
ATOLL_HOME: no other Ray cluster may run then (``--skip-job`` leaves this side out).

Ours in-process: ``atoll.train.fit`` called from this process on an in-process local Ray
(``ray.init(address="local", num_cpus=2)``, never port 6379/8265) with Ray Train's defaults: what a
Python caller of the library gets. It takes the very code path of the job's driver but not the job's
environment, so the two Atoll figures differ by what that environment does. To split ``fit()`` the bench
wraps ``atoll.train.run.prepare`` in a timer and passes a Train callback that records when each epoch's
report reaches the controller; the training itself is untouched.

Baseline: ``python -m torch.distributed.run --standalone --nproc_per_node 2 bench/_ddp_baseline.py``:
pyarrow read, the same split and standardisation, tensors in memory, DistributedSampler, DDP gloo.

Every side measures ``samples_per_s`` the same way (global train samples / rank 0's train-phase time).
The headline compares steady-state epochs (epoch 0 skipped: warm-up, Ray Data's first materialisation);
the end-to-end wall time of each side, split into fixed and per-epoch cost, shows where the rest goes.
The sides run one after the other, never at the same time. A thread notes any other Ray cluster on the
machine during each side (``per_round_contended_share``): read figures from a contended run with care.
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

from _common import ForeignRay, print_table, result_line
from _common import median as _median
from _common import own_session as _own_session

REPO = Path(__file__).resolve().parent.parent
BASELINE = Path(__file__).resolve().parent / "_ddp_baseline.py"
CONFIG = REPO / "jobs" / "configs" / "train.yaml"
ATOLL = Path(sys.executable).parent / "atoll"  # the console script of this environment, as a user runs it
DEFAULT_POLL_S = "2"  # Ray Train's RAY_TRAIN_HEALTH_CHECK_INTERVAL_S when nothing sets it

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


def run_in_process(spec, storage: str, work: Path, round_no: int, watcher: ForeignRay | None = None) -> dict:
    """``atoll.train.fit`` from this process on an in-process local Ray, with Ray Train's defaults."""
    import ray
    from atoll import train
    from atoll.train import run as atrain  # fit() calls the prepare() of its own module: time that one

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
            "workers": plan.num_workers, "backend": plan.backend, "cache": spec.dataset.cache,
            "poll_s": os.environ.get("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", DEFAULT_POLL_S)}


def _atoll(*args: str, timeout: float = 600) -> subprocess.CompletedProcess:
    """The `atoll` CLI as a user runs it (this process's environment: the bench's ATOLL_HOME/STORAGE)."""
    proc = subprocess.run([str(ATOLL), *args], cwd=REPO, capture_output=True, text=True, timeout=timeout,
                          check=False)
    if proc.returncode != 0:
        sys.stderr.write(proc.stdout[-3000:] + proc.stderr[-3000:])
        raise RuntimeError(f"`atoll {' '.join(args)}` failed (exit {proc.returncode})")
    return proc


def latest_history(storage: str, run_name: str) -> list[dict]:
    """The history in atoll.json of the run's latest checkpoint (what `atoll runs list` reads)."""
    from atoll import train

    metas = [json.loads(p.read_text()) for p in
             Path(train.runs_root(storage), run_name).glob(f"checkpoint_*/{train.META_FILE}")]
    if not metas:
        raise RuntimeError(f"the `atoll train` run {run_name} left no checkpoint with a history")
    return max(metas, key=lambda m: m["epoch"])["history"]


def job_env(job_id: str) -> dict[str, str]:
    """The env vars the Jobs API records for the job: what ``submit_atoll_job`` really gave it."""
    from atoll import auth, cluster
    from ray.job_submission import JobSubmissionClient

    client = JobSubmissionClient(cluster.current().dashboard_url, headers=auth.headers())
    return (client.get_job_info(job_id).runtime_env or {}).get("env_vars") or {}


#: the steps of a job's way to its first epoch (:func:`_job_steps`), as the table names them
JOB_STEPS = {"job_setup_s": "Ray sets up the job (runtime env, driver process)", "driver_imports_s": "driver imports",
             "driver_connect_s": "driver ray.init", "driver_prepare_s": "driver data prep (plan, preprocessing, shards)",
             "trainer_to_first_epoch_end_s": "Ray Train start-up + epoch 0 (controller, workers, process group)"}


def _job_steps(details: dict, start: dict | None, first_epoch_end: float | None) -> dict:
    """The job's way to its first epoch, step by step: Ray setting up the job (runtime env, driver process),
    the driver's imports, ray.init, the data (``prepare_s``), then Ray Train (controller, worker group,
    process group) until epoch 0 ends; from the job's record and its start event's timings."""
    timings = (start or {}).get("timings") or {}
    if not timings or first_epoch_end is None:
        return {}
    return {"job_setup_s": timings["process_started"] - details["start_time"] / 1000,
            "driver_imports_s": timings["imports_s"], "driver_connect_s": timings["connect_s"],
            "driver_prepare_s": timings["prepare_s"], "trainer_to_first_epoch_end_s": first_epoch_end - start["t"]}


def run_atoll_train(epochs: int, storage: str, round_no: int, watcher: ForeignRay | None = None) -> dict:
    """`atoll up`, `atoll train` (submitted by the CLI, followed with ``atoll.jobs.follow``), `atoll down`."""
    from atoll import events, jobs

    if watcher is not None:
        watcher.paused = True
    t0 = time.time()
    session = json.loads(_atoll("up", "--json").stdout).get("session_name")
    t_up = time.time()
    if watcher is not None:
        watcher.own_session, watcher.paused = session, False
    ended: dict[int, float] = {}  # epoch -> when it ended, as its progress event says (logs arrive in batches)
    seen = [0]  # epoch events in the job's log, repeats included
    start: dict = {}  # the job's start event: its driver's own timings, and when the trainer was built

    def clock(text: str) -> None:
        for e in events.parse_events(text):
            if e.get("event") == "start":
                start.setdefault("event", e)
            if e.get("event") == "epoch":
                seen[0] += 1
                ended.setdefault(e["epoch"], e["wall_time"])  # a job's log can repeat a worker's line

    try:
        run_name = f"bench-job-{round_no}-{os.urandom(3).hex()}"
        t_submit = time.time()
        job_id = json.loads(_atoll("train", "--set", f"epochs={epochs}", "--set", "register_model=false",
                                   "--run-name", run_name, "--no-wait", "--json").stdout)["id"]
        t_submitted = time.time()
        details = jobs.follow(job_id, clock)
        t_done = time.time()
        env_vars = job_env(job_id)
    finally:
        if watcher is not None:
            watcher.paused = True  # `atoll down` removes our raylet; do not count its last moments
        t_down0 = time.time()
        _atoll("down")
        t_down = time.time()
        if watcher is not None:
            watcher.own_session, watcher.paused = None, False
    if details["status"] != "SUCCEEDED":
        raise RuntimeError(f"the `atoll train` job {job_id} ended {details['status']}: {details.get('message')}")
    history = latest_history(storage, run_name)
    ends = [ended[k] for k in sorted(ended)]
    intervals = [b - a for a, b in itertools.pairwise(ends)]
    wall = {
        "end_to_end_s": t_done - t_submit,  # what `atoll train` takes: submit, job, every epoch, job end
        "cluster_up_s": t_up - t0,
        "submit_s": t_submitted - t_submit,  # the CLI: spec check, packaging the project, the Jobs API
        "to_first_epoch_end_s": ends[0] - t_submit if ends else None,
        "epochs_total_s": sum(h["epoch_time_s"] for h in history),
        "first_epoch_s": history[0]["epoch_time_s"],
        "per_epoch_steady_s": statistics.median(h["epoch_time_s"] for h in history[1:] or history),
        "wall_per_epoch_s": statistics.median(intervals) if intervals else None,
        "after_last_epoch_s": t_done - ends[-1] if ends else None,  # tear-down, driver + job end, seen by follow
        "cluster_down_s": t_down - t_down0,
        **_job_steps(details, start.get("event"), ends[0] if ends else None),
    }
    return {"history": history, "wall": wall, "run_name": run_name, "job_id": job_id,
            "poll_s": env_vars.get("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", DEFAULT_POLL_S),
            "job_env": sorted(env_vars), "epoch_events_in_log": seen[0]}


# ------------------------------------------------------------------------------------------------


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="4 epochs, 1 round per side (< 4 min)")
    parser.add_argument("--epochs", type=int, help="override the spec's epochs")
    parser.add_argument("--rows", type=int, help="repeat the demo's training rows to this many (compute-bound)")
    parser.add_argument("--rounds", type=int, help="alternating rounds per side (default 2, quick 1)")
    parser.add_argument("--skip-job", action="store_true", help="leave out the `atoll train` side (it runs "
                        "`atoll up` on cluster.yaml's ports, so no other Ray cluster may run)")
    args = parser.parse_args()
    rounds = args.rounds or (1 if args.quick else 2)

    os.environ.pop("RAY_ADDRESS", None)  # never attach to someone else's cluster
    os.environ.pop("ATOLL_ADDRESS", None)
    os.environ.setdefault("RAY_TRAIN_V2_ENABLED", "1")

    from atoll import config, data
    from atoll.specs import TrainSpec

    work = Path(tempfile.mkdtemp(prefix="atoll_bench_train_"))
    storage = str(work / "storage")
    # The `atoll` CLI, its cluster and its jobs see this storage and a cluster record of their own.
    os.environ.update({"ATOLL_HOME": str(work / "home"), "ATOLL_STORAGE": storage,
                       "ATOLL_CLUSTER_CONFIG": str(REPO / "cluster.yaml")})
    epochs = args.epochs or (4 if args.quick else None)
    overrides = [f"epochs={epochs}"] if epochs else []
    spec = config.load_file(TrainSpec, CONFIG, [*overrides, "register_model=false"])
    try:
        parquet = data.prepare_demo(storage)["train"]  # the digits demo, exported from scikit-learn
        if args.rows:
            _repeat_rows(parquet, args.rows)  # in place: `demo:digits` resolves to this very file on every side
        spec_json = work / "spec.json"
        spec_json.write_text(json.dumps(spec.model_dump(mode="json")))

        job_runs, fit_runs, base_runs = [], [], []
        with ForeignRay() as watcher:
            for r in range(rounds):  # alternate: baseline, in-process, atoll train, baseline, ...
                print(f"round {r + 1}/{rounds}: torchrun baseline ...", flush=True)
                watcher.mark()
                base_runs.append(run_baseline(parquet, str(spec_json), work, r))
                base_runs[-1]["contended"] = watcher.mark()
                print(f"round {r + 1}/{rounds}: atoll.train.fit in-process ...", flush=True)
                fit_runs.append(run_in_process(spec, storage, work, r, watcher))
                fit_runs[-1]["contended"] = watcher.mark()
                if not args.skip_job:
                    print(f"round {r + 1}/{rounds}: atoll up; atoll train; atoll down ...", flush=True)
                    job_runs.append(run_atoll_train(spec.epochs, storage, r, watcher))
                    job_runs[-1]["contended"] = watcher.mark()
        report(spec, job_runs, fit_runs, base_runs, watcher.note(), args.quick, args.rows)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


def _side(runs: list[dict]) -> dict | None:
    """Medians over a side's rounds: steady figures and the wall-time breakdown."""
    if not runs:
        return None
    st = [steady(r["history"]) for r in runs]
    wall = {k: _median(r["wall"].get(k) for r in runs) for k in runs[0]["wall"]}
    samples = st[0]["train_samples_per_epoch"]
    return {"steady": st, "wall": wall, "samples": samples,
            "sps": _median(s["samples_per_s"] for s in st),
            "first_sps": _median(r["history"][0]["samples_per_s"] for r in runs),
            "epoch_time": _median(s["median_epoch_time_s"] for s in st),
            "wall_sps": samples / wall["wall_per_epoch_s"] if wall.get("wall_per_epoch_s") else None,
            "fixed": wall["end_to_end_s"] - len(runs[0]["history"]) * wall["per_epoch_steady_s"],
            "accuracy": st[0]["final_val_accuracy"], "poll_s": runs[0].get("poll_s"),
            "contended": [r.get("contended") for r in runs]}


def _repeat_rows(parquet: str, rows: int) -> None:
    import pandas as pd

    frame = pd.read_parquet(parquet)
    pd.concat([frame] * (rows // len(frame) + 1), ignore_index=True).iloc[:rows].to_parquet(parquet)


def report(spec, job_runs, fit_runs, base_runs, contention, quick, data_rows=None) -> None:
    job, fit, base = _side(job_runs), _side(fit_runs), _side(base_runs)
    n_ep = spec.epochs

    def f(v, fmt="{:.2f}"):
        return "-" if v is None else fmt.format(v)

    def row(name, get, fmt="{:.2f}", baseline=None):
        """One figure per side: ``get`` of each Atoll side, the baseline's own when it differs."""
        cells = [f(get(s), fmt) if s else "-" for s in (job, fit)]
        return (name, *cells, f((baseline or get)(base), fmt))

    bw = base["wall"]
    rows = [
        row("steady samples/s (epochs >= 1)", lambda s: s["sps"], "{:,.0f}"),
        row("epoch 0 samples/s", lambda s: s["first_sps"], "{:,.0f}"),
        row("train samples / epoch", lambda s: s["samples"], "{}"),
        row("steady epoch time s (train+val)", lambda s: s["epoch_time"], "{:.3f}"),
        row("first epoch time s", lambda s: s["wall"]["first_epoch_s"], "{:.3f}"),
        row("final val accuracy", lambda s: s["accuracy"], "{:.3f}"),
        row("Ray Train report poll s (RAY_TRAIN_HEALTH_CHECK_INTERVAL_S)", lambda s: float(s["poll_s"]),
            "{:g}", baseline=lambda s: None),
        row("wall per steady epoch s (incl. report/ckpt)", lambda s: s["wall"].get("wall_per_epoch_s"), "{:.3f}"),
        row("wall samples/s (samples / wall per epoch)", lambda s: s["wall_sps"], "{:,.0f}"),
        row("end-to-end wall s", lambda s: s["wall"]["end_to_end_s"]),
        row("  fixed cost s (e2e - epochs x steady)", lambda s: s["fixed"]),
        ("  `atoll up` / `atoll down` s (not in e2e)",
         f"{job['wall']['cluster_up_s']:.2f} / {job['wall']['cluster_down_s']:.2f}" if job else "-", "-", "-"),
        ("  submit (CLI) / ray.init / torchrun+imports s", f(job and job["wall"]["submit_s"]),
         f(fit["wall"]["ray_init_s"]), f(bw["launch_and_imports_s"])),
        ("  submit to the end of epoch 0 s", f(job and job["wall"]["to_first_epoch_end_s"]), "-", "-"),
        *[(f"    {label} s", f(job and job["wall"].get(key)), "-", "-") for key, label in JOB_STEPS.items()],
        ("  data prep s (plan+stats+materialise / pyarrow+numpy)", "-", f(fit["wall"]["prepare_s"]),
         f(bw["data_s"])),
        ("  trainer start-up s (controller+workers / process group+DDP)", "-",
         f(fit["wall"].get("trainer_startup_s")), f(bw["process_group_s"] + bw["model_setup_s"])),
        ("  report+checkpoint per epoch s", "-", f(fit["wall"].get("report_checkpoint_per_epoch_s"), "{:.3f}"),
         f(bw["between_epochs_s"] / max(n_ep, 1), "{:.3f}")),
        ("  after the last epoch s (tear-down, job end)", f(job and job["wall"]["after_last_epoch_s"]),
         f(fit["wall"].get("trainer_teardown_s")), f(bw["teardown_s"])),
        ("  ray.shutdown s", "-", f(fit["wall"]["ray_shutdown_s"]), "-"),
    ]
    data_note = f" repeated to {data_rows:,} rows" if data_rows else ""
    title = (f"Training throughput: digits demo{data_note}, MLP {spec.model.params.get('hidden')}, batch {spec.batch_size}/worker, "
             f"{spec.num_workers} workers, {n_ep} epochs, {len(base_runs)} round(s), medians")
    print_table(title, ["figure", "atoll train (job)", "fit() in-process", "torchrun DDP"], rows)
    headline = job or fit  # what users run; the in-process figure alone under --skip-job
    ratio = headline["sps"] / base["sps"] if headline["sps"] and base["sps"] else None
    fit_ratio = fit["sps"] / base["sps"] if fit["sps"] and base["sps"] else None
    print(f"ratio (ours/baseline, steady samples/s): `atoll train` {f(job and ratio, '{:.3f}')}, fit() in-process "
          f"{f(fit_ratio, '{:.3f}')};  end-to-end wall: {f(job and job['wall']['end_to_end_s'], '{:.1f}')} s / "
          f"{fit['wall']['end_to_end_s']:.1f} s vs {bw['end_to_end_s']:.1f} s;  {contention}.")
    print("Notes: every side single-threaded per worker (Ray sets OMP_NUM_THREADS=1 for a 1-CPU worker, "
          f"torchrun too; baseline torch threads={base_runs[0].get('torch_threads')}). Both sides index "
          "in-memory tensors (Atoll's shards are handed to the workers as objects); the baseline sums its "
          "figures every step, Atoll every 64 steps. "
          "Ray Train V2's controller takes one report per worker per poll and a worker's result queue holds "
          "one, so an epoch shorter than the poll waits in ray.train.report: `atoll train` sets the poll for "
          "its jobs; an in-process fit() keeps Ray Train's default.")
    out = {"bench": "train_throughput", **({"case": f"{data_rows} rows", "rows": data_rows} if data_rows else {}), "ours": headline["sps"], "ours_path": "atoll train" if job else "fit() in-process",
           "baseline": base["sps"], "unit": "samples/s", "ratio": ratio, "better": "higher", "quick": quick,
           "ours_in_process": fit["sps"], "ratio_in_process": fit_ratio,
           "epochs": n_ep, "rounds": len(base_runs), "batch_size_per_worker": spec.batch_size,
           "workers": spec.num_workers}
    sides = {"atoll_train": job, "in_process": fit, "baseline": base}
    for key, get in (("train_samples_per_epoch", lambda s: s["samples"]), ("epoch0_samples_per_s", lambda s: s["first_sps"]),
                     ("steady_epoch_time_s", lambda s: s["epoch_time"]),
                     ("wall_per_epoch_s", lambda s: s["wall"].get("wall_per_epoch_s")),
                     ("wall_samples_per_s", lambda s: s["wall_sps"]),
                     ("end_to_end_s", lambda s: s["wall"]["end_to_end_s"]), ("fixed_cost_s", lambda s: s["fixed"]),
                     ("per_round_steady_samples_per_s", lambda s: [x["samples_per_s"] for x in s["steady"]]),
                     ("per_round_contended_share", lambda s: s["contended"]),
                     ("final_val_accuracy", lambda s: s["accuracy"]), ("breakdown_s", lambda s: s["wall"])):
        out[key] = {name: get(side) for name, side in sides.items() if side}
    out["health_check_interval_s"] = {name: side["poll_s"] for name, side in sides.items() if side and name != "baseline"}
    out["job_env_vars"] = job_runs[0]["job_env"] if job_runs else None  # names only, never values
    out["job_epoch_events_in_log"] = [r["epoch_events_in_log"] for r in job_runs]
    out["contention"] = contention
    print(result_line(out))


if __name__ == "__main__":
    sys.exit(main())
