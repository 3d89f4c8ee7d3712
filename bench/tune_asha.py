"""Early stopping: the demo sweep under its scheduler vs the same trials each run in full (FIFO), same configs.

    python bench/tune_asha.py                      # 8 trials of up to 8 epochs, 2 at a time, each way
    python bench/tune_asha.py --quick              # 6 trials of up to 6 epochs (< 3 min on 2 cores)
    python bench/tune_asha.py --no-extra --seed 3  # another draw of configs; --scheduler asha|hyperband

Both sweeps are jobs/configs/sweep.yaml (the digits MLP of train.yaml; search space optimizer.lr loguniform
[3e-4, 3e-2], model.params.hidden in [[32], [128, 64], [256, 128]], batch_size in [32, 64, 128]; random search
with seed 0; each trial trains in its own process on 1 CPU) loaded with ``atoll.tune.load_sweep`` and run
with ``atoll.tune.run_sweep`` on an in-process local Ray (``ray.init(address="local", num_cpus=4)``) with a
temporary storage root (also ``ATOLL_STORAGE``). The only differences: the name, and ``scheduler.type``:

* ours: the sweep's ``scheduler.type`` (``successive_halving``: grace_period 1, reduction_factor 3, max_t =
  epochs, so rungs at 1 and 3 epochs, the best third going on at each once every trial has reached it), or
  ``--scheduler asha`` (Ray's ASHA, same rungs, each trial judged as it arrives) or ``hyperband``;
* baseline: ``fifo``: every trial runs all its epochs.

The same seeded sampler gives both sweeps the same trial configs (checked: ``same_configs``). Figures:
trial-epochs each sweep spent (the sum of epochs its trials ran; ``run_sweep``'s ``trial_epochs``),
ratio = ours / FIFO (lower is better; target <= 0.40), the best val_accuracy each found and the gap
(FIFO best - ours; target <= 0.01), and wall time. ASHA decides as results arrive, so its figure depends
on the order, timing and concurrency of trials (2 at a time here, the demo's max_concurrent_trials);
successive halving's does not (its trials all exist at once; the cluster's 4 CPUs bound how many run). The
full run repeats ours once (run-to-run spread) and adds it with 4 at a time. Trials are deterministic (same
config: same curve under either scheduler).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from _common import result_line

REPO = Path(__file__).resolve().parent.parent
SWEEP = "jobs/configs/sweep.yaml"  # relative to the repo (main() runs from there)


def run_one(name: str, storage: str, overrides: list[str], log_path: Path) -> dict[str, Any]:
    """One sweep through Atoll's own path; its summary, results table and wall time."""
    import pandas as pd
    from atoll import tune

    sweep, base = tune.load_sweep(SWEEP, [f"name={name}", *overrides])
    logging.getLogger("ray.data").setLevel(logging.WARNING)  # its per-dataset INFO lines bypass the redirect
    t = time.perf_counter()
    with open(log_path, "a") as log, contextlib.redirect_stdout(log), contextlib.redirect_stderr(log):
        summary = tune.run_sweep(sweep, base, storage=storage)
    wall = time.perf_counter() - t
    table = pd.read_csv(summary["results_csv"])
    keys = sorted(sweep.search_space)
    trials = []
    for rec in table.to_dict("records"):
        trials.append({"config": {k: rec.get(k) for k in keys}, "epochs": int(rec["epochs"]),
                       "status": rec["status"], "best": rec.get(f"best_{sweep.metric}"),
                       "best_epoch": rec.get("best_epoch")})
    return {"name": name, "scheduler": sweep.scheduler.type, "max_concurrent_trials": sweep.max_concurrent_trials,
            "trials": summary["trials"], "trial_epochs": summary["trial_epochs"],
            "stopped_early": summary["stopped_early"], "errors": summary["errors"],
            "best": summary["best_metric"], "max_t": summary["max_t"], "wall_s": wall,
            "registered": summary.get("registered"), "per_trial": trials, "keys": keys}


def _config_key(config: dict[str, Any]) -> str:
    def norm(v):
        return round(v, 12) if isinstance(v, float) else v

    return json.dumps({k: norm(v) for k, v in sorted(config.items())}, default=str)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="6 trials of up to 6 epochs (< 3 min)")
    parser.add_argument("--trials", type=int, help="num_samples (default 8, quick 6)")
    parser.add_argument("--epochs", type=int, help="epochs per trial = the scheduler's max_t (default 8, quick 6; "
                        "hyperband needs a power of reduction_factor, e.g. --epochs 9)")
    parser.add_argument("--concurrent", type=int, default=2, help="max_concurrent_trials of the main figure")
    parser.add_argument("--seed", type=int, default=0, help="search seed (the demo's: 0)")
    parser.add_argument("--no-extra", action="store_true", help="skip the repeat of ours and ours at 4 concurrent trials (full run)")
    parser.add_argument("--scheduler", choices=("asha", "successive_halving", "hyperband"),
                        help="ours (default: the sweep file's)")
    args = parser.parse_args()
    trials = args.trials or (6 if args.quick else 8)
    epochs = args.epochs or (6 if args.quick else 8)
    extra = not (args.quick or args.no_extra)

    os.environ.pop("RAY_ADDRESS", None)  # never attach to someone else's cluster
    os.chdir(REPO)  # SWEEP is relative to the repo
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from _common import ForeignRay
    from _common import own_session as _own_session

    work = Path(tempfile.mkdtemp(prefix="atoll_bench_tune_"))
    storage = str(work / "storage")
    os.environ["ATOLL_STORAGE"] = storage
    log_path = work / "tune.log"
    common = [f"num_samples={trials}", f"overrides.epochs={epochs}", f"search.seed={args.seed}",
              "search.algorithm=random"]
    runs: dict[str, dict[str, Any]] = {}
    watcher = ForeignRay().__enter__()
    tag = os.urandom(2).hex()
    try:
        import ray

        watcher.paused = True
        t = time.perf_counter()
        ray.init(address="local", num_cpus=4, include_dashboard=False, log_to_driver=False,
                 configure_logging=False)
        ray_init_s = time.perf_counter() - t
        watcher.own_session, watcher.paused = _own_session(), False
        ours = args.scheduler or _sweep_scheduler().type
        plan = [("asha", ours, args.concurrent), ("fifo", "fifo", args.concurrent)]
        if extra:  # ours again (ASHA's decisions depend on arrival timing), then with 4 trials at a time
            plan += [("asha_repeat", ours, args.concurrent), ("asha_c4", ours, 4)]
        for key, sched, conc in plan:
            print(f"sweep {key}: {trials} trials x up to {epochs} epochs, scheduler {sched}, "
                  f"max_concurrent_trials {conc} ...", flush=True)
            runs[key] = run_one(f"bench-{key}-{tag}", storage,
                                [*common, f"scheduler.type={sched}", f"max_concurrent_trials={conc}"], log_path)
            r = runs[key]
            print(f"  {r['trial_epochs']} trial-epochs, best val_accuracy {r['best']:.4f}, "
                  f"{r['stopped_early']} stopped early, {r['wall_s']:.0f} s", flush=True)
    except BaseException:
        if log_path.exists():
            sys.stderr.write(log_path.read_text()[-6000:])
        raise
    finally:
        import ray

        ray.shutdown()
        watcher.__exit__(None, None, None)
        shutil.rmtree(work, ignore_errors=True)
    report(runs, trials, epochs, args, ray_init_s, watcher.note())
    return 0


def _sweep_scheduler():
    from atoll import tune

    return tune.load_sweep(SWEEP)[0].scheduler


def _asha_label(kind: str) -> str:
    """The scheduler the run used, with the sweep file's settings (a label written here would drift from it)."""
    scheduler = _sweep_scheduler()
    grace = f"grace_period {scheduler.grace_period}, " if kind in ("asha", "successive_halving") else ""
    return f"{kind} ({grace}reduction_factor {scheduler.reduction_factor:g})"


_SHORT = {"asha": "ASHA", "successive_halving": "SH", "hyperband": "HyperBand"}


def report(runs: dict[str, dict[str, Any]], trials: int, epochs: int, args, ray_init_s: float,
           contention: str) -> None:
    asha, fifo = runs["asha"], runs["fifo"]  # "asha": ours, whichever scheduler it is (the saved runs' key)
    ours = _SHORT.get(asha["scheduler"], asha["scheduler"])
    ratio = asha["trial_epochs"] / fifo["trial_epochs"] if fifo["trial_epochs"] else None
    gap = fifo["best"] - asha["best"] if fifo["best"] is not None and asha["best"] is not None else None
    by_cfg = {_config_key(t["config"]): t for t in fifo["per_trial"]}
    same = sorted(by_cfg) == sorted(_config_key(t["config"]) for t in asha["per_trial"])

    def f(v, fmt="{:.4f}"):
        return "-" if v is None else fmt.format(v)

    def short(cfg: dict[str, Any]) -> str:
        parts = []
        for k, v in cfg.items():
            name = k.rsplit(".", 1)[-1]
            parts.append(f"{name}={v:.2e}" if isinstance(v, float) else f"{name}={v}")
        return " ".join(parts)

    try:
        from rich.console import Console
        from rich.table import Table

        console = Console()
        table = Table(title=f"Demo sweep, {trials} trials x up to {epochs} epochs, search seed {args.seed}, "
                            f"max_concurrent_trials {args.concurrent}: {ours} vs every trial in full (FIFO)")
        for col, just in (("figure", "left"), (ours, "right"), ("FIFO (full)", "right")):
            table.add_column(col, justify=just)
        table.add_row("trial-epochs", str(asha["trial_epochs"]), str(fifo["trial_epochs"]))
        table.add_row("trials stopped early", str(asha["stopped_early"]), str(fifo["stopped_early"]))
        table.add_row("best val_accuracy", f(asha["best"]), f(fifo["best"]))
        table.add_row("wall s (run_sweep)", f(asha["wall_s"], "{:.1f}"), f(fifo["wall_s"], "{:.1f}"))
        table.add_row("errors", str(asha["errors"]), str(fifo["errors"]))
        if "asha_repeat" in runs:
            rp = runs["asha_repeat"]
            table.add_row(f"{ours} again, {args.concurrent} concurrent: trial-epochs / best / wall s",
                          f"{rp['trial_epochs']} / {f(rp['best'])} / {rp['wall_s']:.0f}", "-")
        if "asha_c4" in runs:
            c4 = runs["asha_c4"]
            table.add_row(f"{ours}, 4 concurrent: trial-epochs / best / wall s",
                          f"{c4['trial_epochs']} / {f(c4['best'])} / {c4['wall_s']:.0f}", "-")
        console.print(table)
        per = Table(title="Per trial (same configs both ways): epochs run, best val_accuracy")
        for col, just in (("config", "left"), (f"{ours} epochs", "right"), (f"{ours} best", "right"),
                          ("FIFO epochs", "right"), ("FIFO best", "right")):
            per.add_column(col, justify=just)
        for t in sorted(asha["per_trial"], key=lambda t: -(by_cfg.get(_config_key(t["config"]), {})
                                                          .get("best") or 0)):
            b = by_cfg.get(_config_key(t["config"]), {})
            per.add_row(short(t["config"]), str(t["epochs"]), f(t["best"]), str(b.get("epochs", "-")),
                        f(b.get("best")))
        console.print(per)
    except ImportError:  # pragma: no cover
        print(f"{ours} {asha['trial_epochs']} trial-epochs best {asha['best']}; FIFO {fifo['trial_epochs']} "
              f"best {fifo['best']}")
    print(f"ratio ({ours}/FIFO trial-epochs): {f(ratio, '{:.3f}')} (target <= 0.40);  best-accuracy gap "
          f"(FIFO - {ours}): {f(gap)} (target <= 0.01);  same configs: {same};  ray.init {ray_init_s:.1f} s;  "
          f"{contention}.")
    out = {"bench": "tune_asha", "ours": asha["trial_epochs"], "baseline": fifo["trial_epochs"],
           "unit": "trial-epochs", "ratio": ratio, "better": "lower", "target_ratio": 0.40,
           "best_val_accuracy": {"ours": asha["best"], "baseline": fifo["best"]}, "accuracy_gap": gap,
           "target_accuracy_gap": 0.01, "quick": args.quick, "trials": trials, "max_t": epochs,
           "max_concurrent_trials": args.concurrent, "search_seed": args.seed, "same_configs": same,
           "scheduler": {"ours": _asha_label(asha["scheduler"]), "baseline": "fifo"},
           "stopped_early": {"ours": asha["stopped_early"], "baseline": fifo["stopped_early"]},
           "epochs_per_trial": {"ours": sorted(t["epochs"] for t in asha["per_trial"]),
                                "baseline": sorted(t["epochs"] for t in fifo["per_trial"])},
           "wall_s": {"ours": asha["wall_s"], "baseline": fifo["wall_s"]},
           "errors": {"ours": asha["errors"], "baseline": fifo["errors"]}, "ray_init_s": ray_init_s}
    if "asha_repeat" in runs:
        rp = runs["asha_repeat"]
        out["asha_repeat"] = {"trial_epochs": rp["trial_epochs"], "best": rp["best"],
                              "ratio": rp["trial_epochs"] / fifo["trial_epochs"],
                              "accuracy_gap": fifo["best"] - rp["best"], "wall_s": rp["wall_s"],
                              "epochs_per_trial": sorted(t["epochs"] for t in rp["per_trial"])}
    if "asha_c4" in runs:
        c4 = runs["asha_c4"]
        out["asha_4_concurrent"] = {"trial_epochs": c4["trial_epochs"], "best": c4["best"],
                                    "ratio": c4["trial_epochs"] / fifo["trial_epochs"],
                                    "accuracy_gap": fifo["best"] - c4["best"], "wall_s": c4["wall_s"],
                                    "stopped_early": c4["stopped_early"]}
    out["contention"] = contention
    print(result_line(out))


if __name__ == "__main__":
    sys.exit(main())
