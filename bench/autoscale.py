"""Autoscaling on the simulated cluster (`atoll up --simulate`): how fast work that needs 2 more worker
nodes gets them, and how fast idle nodes go.

Ours: submit->both-tasks-running on a cold cluster (the autoscaler must add 2 nodes).
Baseline: the same work right after, while the 2 nodes are still up (no scaling needed).
Also: idle -> both nodes removed, against the idle timeout.

    python bench/autoscale.py [--quick]

Runs its own head on private ports (6391 / 8276) with a temporary ATOLL_HOME; stops it by PID at the end.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

from _common import result_line

REPO = Path(__file__).resolve().parent.parent
IDLE_TIMEOUT_MIN = 0.2


def _cluster_yaml(path: Path) -> Path:
    """cluster.yaml with a 0-CPU head and a 1-CPU worker type (max 2), on private ports (as the test)."""
    from atoll.config import write_local_variant

    return write_local_variant(path, port=6391, dashboard_port=8276, serve_port=8011, max_workers=2,
                               source=REPO / "cluster.yaml", node_types=SMALL_NODE_TYPES)


SMALL_NODE_TYPES = {
    "head": {"node_config": {}, "resources": {"CPU": 0}, "max_workers": 0},
    "cpu": {"node_config": {}, "resources": {"CPU": 1, "memory": 2_000_000_000}, "min_workers": 0, "max_workers": 2},
}


def _time_to_two_running(ray) -> float:
    """Seconds from submitting 2 one-CPU tasks until both have started (each reports its start time)."""
    @ray.remote(num_cpus=1)
    def hold(seconds: float) -> float:
        started = time.time()
        time.sleep(seconds)
        return started

    t0 = time.time()
    starts = ray.get([hold.remote(2.0), hold.remote(2.0)])
    return max(starts) - t0


def _alive_workers() -> int:
    from atoll import status

    return sum(1 for n in status.status()["nodes"] if n["type"] == "cpu" and n["alive"])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="one round instead of three")
    args = parser.parse_args()
    rounds = 1 if args.quick else 3

    tmp = Path(tempfile.mkdtemp(prefix="atoll-bench-autoscale-"))
    os.environ.update({"ATOLL_HOME": str(tmp / "home"), "ATOLL_STORAGE": str(tmp / "storage"),
                       "ATOLL_CLUSTER_CONFIG": str(_cluster_yaml(tmp / "cluster.yaml"))})
    os.environ.pop("ATOLL_ADDRESS", None)
    from atoll import auth, cluster

    auth.enable_for_this_process()  # before Ray is imported: it reads the auth mode once
    # A driver that dials the loopback-only cluster itself must be in Ray's local-only mode too, or it dials the
    # machine's routable IP and waits on the GCS for minutes (what `atoll status` tells Ray's own tools).
    os.environ[cluster.LOCAL_ONLY_VAR] = "0"
    spec = cluster.load_spec()
    info = cluster.up(spec, simulate=True, idle_timeout_minutes=IDLE_TIMEOUT_MIN)
    cold, warm, down_s = [], [], []
    try:
        import ray

        ray.init(address=info.gcs_address, log_to_driver=False)
        for r in range(rounds):
            cold.append(_time_to_two_running(ray))
            warm.append(_time_to_two_running(ray))  # the nodes are still there
            t0 = time.time()
            while _alive_workers():
                if time.time() - t0 > 180:
                    raise SystemExit("idle nodes were not removed within 180 s")
                time.sleep(0.5)
            down_s.append(time.time() - t0)
            print(f"round {r + 1}: scale-up {cold[-1]:.1f} s, warm {warm[-1]:.2f} s, idle->gone {down_s[-1]:.1f} s",
                  flush=True)
        ray.shutdown()
    finally:
        cluster.down()
        leftover = cluster.ray_processes_of(info)
        shutil.rmtree(tmp, ignore_errors=True)

    from rich.console import Console
    from rich.table import Table

    med = lambda xs: sorted(xs)[len(xs) // 2]  # noqa: E731
    table = Table(title="Simulated autoscaling (2 x 1-CPU work on a 0-CPU head, worker type cpu: 1 CPU, max 2)")
    for col in ("measure", "median s", "target"):
        table.add_column(col)
    table.add_row("submit -> 2 tasks running, cold (2 nodes added)", f"{med(cold):.1f}", "<= 15 s")
    table.add_row("submit -> 2 tasks running, warm (baseline)", f"{med(warm):.2f}", "")
    table.add_row("idle -> both nodes removed", f"{med(down_s):.1f}",
                  f"<= idle timeout {IDLE_TIMEOUT_MIN * 60:.0f} s + 15 s")
    Console().print(table)
    print(f"Ray processes left after atoll down: {len(leftover)}")
    print(result_line({"bench": "autoscale", "ours": round(med(cold), 2), "baseline": round(med(warm), 3),
                      "unit": "s", "ratio": round(med(cold) / max(med(warm), 1e-3), 1), "better": "lower",
                      "scale_up_s": [round(x, 2) for x in cold], "warm_s": [round(x, 3) for x in warm],
                      "scale_down_s": [round(x, 1) for x in down_s], "idle_timeout_s": IDLE_TIMEOUT_MIN * 60,
                      "rounds": rounds, "leftover_processes": len(leftover)}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
