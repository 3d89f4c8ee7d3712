"""Bad configuration (issue 9, group 9): broken cluster.yaml, training and sweep specs through the real CLI.

Every row breaks one thing in an otherwise valid project (cluster.yaml, train.yaml, sweep.yaml in a
temporary folder) and runs the `atoll` console script the way a user would. Each must fail in client-side
validation, before anything is submitted: exit 2 (ConfigError), one `error:` line naming the field and the
fix, no traceback. Nothing here starts or contacts a cluster (ATOLL_HOME is empty, ATOLL_ADDRESS unset).
"""

from __future__ import annotations

import copy
import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
import yaml

ATOLL = str(Path(sys.executable).parent / "atoll")

# A valid project: a cluster of known node sizes (2-CPU, GPU-less "this machine", so that the resource
# checks do not depend on the machine running the tests), a training spec on it and a sweep of that spec.
CLUSTER = {
    "cluster_name": "faults", "max_workers": 4,
    "provider": {"type": "aws", "region": "us-west-2"},
    "auth": {"ssh_user": "ubuntu"},
    "head_node_type": "head",
    "available_node_types": {
        "head": {"node_config": {}, "resources": {"CPU": 0}, "min_workers": 0, "max_workers": 0},
        "cpu": {"node_config": {}, "resources": {"CPU": 8}, "min_workers": 0, "max_workers": 4},
    },
    "metadata": {"atoll": {"local": {"num_cpus": 2, "num_gpus": 0}}},
}
TRAIN = {"name": "digits", "dataset": {"path": "demo:digits"}, "epochs": 4, "num_workers": 2,
         "cpus_per_worker": 1}
SWEEP = {"name": "sweep", "train": "train.yaml", "search_space": {"optimizer.lr": {"loguniform": [1e-4, 1e-2]}},
         "num_samples": 2}
FILES = {"cluster": ("cluster.yaml", CLUSTER), "train": ("train.yaml", TRAIN), "tune": ("sweep.yaml", SWEEP)}

# Which command validates which file without starting anything: `k8s render` loads and checks cluster.yaml
# (Ray's schema included); `train`/`tune` check their spec before they submit it.
COMMANDS = {
    "cluster": ["k8s", "render", "-c", "cluster.yaml", "-o", "k8s-out"],
    "train": ["train", "train.yaml", "--no-wait"],
    "tune": ["tune", "sweep.yaml", "--no-wait"],
}


def patched(base: dict[str, Any], changes: dict[str, Any]) -> dict[str, Any]:
    """``base`` with dotted paths set (``available_node_types.cpu.min_workers``)."""
    out = copy.deepcopy(base)
    for key, value in changes.items():
        *parents, leaf = key.split(".")
        node = out
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = value
    return out


# (id, command, the broken file: a dict of dotted changes to the command's file, or its raw text,
#  extra CLI arguments, substrings the one-line message must hold: the field and the fix)
CASES: list[tuple[str, str, dict[str, Any] | str, list[str], tuple[str, ...]]] = [
    # cluster.yaml
    ("cluster-near-miss-key", "cluster", {"available_node_types.cpu.min_worker": 1}, [],
     ("available_node_types.cpu", "'min_worker'", "did you mean 'min_workers'")),
    ("cluster-wrong-type", "cluster", {"max_workers": "ten"}, [], ("max_workers", "'ten'", "change it to type integer")),
    ("cluster-negative-max", "cluster", {"available_node_types.cpu.max_workers": -2}, [],
     ("available_node_types.cpu.max_workers", "-2", ">= 0")),
    ("cluster-min-above-max", "cluster", {"available_node_types.cpu.min_workers": 3,
                                          "available_node_types.cpu.max_workers": 1}, [],
     ("available_node_types.cpu.max_workers", "must be >= min_workers", "raise max_workers or lower min_workers")),
    ("cluster-zero-cpu-worker", "cluster", {"available_node_types.cpu.resources": {"CPU": 0}}, [],
     ("available_node_types.cpu.resources", "can run nothing", "e.g. {CPU: 4}")),
    ("cluster-missing-file", "cluster", {}, ["-c", "nowhere/cluster.yaml"],
     ("nowhere/cluster.yaml", "file not found", "Check the path")),
    ("cluster-bad-yaml-tab", "cluster", "cluster_name: faults\n\tmax_workers: 2\n", [],
     ("cluster.yaml", "invalid YAML at line 2, column 1", "Fix the syntax")),
    # training spec
    ("train-near-miss-key", "train", {"epoch": 5}, [], ("train.yaml", "epoch: unknown key", "did you mean 'epochs'")),
    ("train-wrong-type", "train", {"epochs": "ten"}, [], ("epochs", "valid integer", "'ten'", "e.g. epochs: 10")),
    ("train-negative-workers", "train", {"num_workers": -1}, [],
     ("num_workers", "greater than or equal to 1", "(got -1)", "e.g. num_workers: 2")),
    ("train-missing-spec", "train", {}, ["jobs/nope.yaml"], ("jobs/nope.yaml", "file not found")),
    ("train-missing-dataset", "train", {"dataset.path": "data/missing.parquet"}, [],
     ("dataset.path", "no such file or folder", "'data/missing.parquet'", "fix the path")),
    ("train-cpus-beyond-any-node", "train", {"cpus_per_worker": 16}, [],
     ("cpus_per_worker", "16 CPUs per worker", "largest node", "has 8", "lower cpus_per_worker")),
    ("train-gpu-without-gpu-node", "train", {"use_gpu": True}, [],
     ("use_gpu: true", "no node type", "has a GPU", "add a GPU node type")),
    ("train-empty-file", "train", "", [], ("train.yaml", "the file is empty", "key: value")),
    ("train-top-level-list", "train", "- name: digits\n- epochs: 3\n", [],
     ("train.yaml", "mapping", "got a list", "key: value")),
    ("train-set-without-equals", "train", {}, ["--set", "epochs"], ("--set 'epochs'", "KEY=VALUE", "e.g.")),
    ("train-set-unknown-field", "train", {}, ["--set", "optimizer.lrr=0.01"],
     ("optimizer.lrr: unknown key", "did you mean 'lr'")),
    # sweep spec
    ("sweep-near-miss-key", "tune", {"num_sample": 4}, [], ("num_sample: unknown key", "did you mean 'num_samples'")),
    ("sweep-unknown-distribution", "tune", {"search_space": {"optimizer.lr": {"logunifrom": [1e-4, 1e-2]}}}, [],
     ("search_space.optimizer.lr.logunifrom", "did you mean 'loguniform'")),
    ("sweep-low-above-high", "tune", {"search_space": {"optimizer.lr": {"uniform": [0.1, 0.01]}}}, [],
     ("search_space.optimizer.lr", "lower bound 0.1 must be below upper bound 0.01", "write [lo, hi] with lo < hi")),
    ("sweep-missing-train-spec", "tune", {"train": "jobs/missing.yaml"}, [],
     ("train: jobs/missing.yaml not found", "fix the path")),
    ("sweep-missing-dataset", "tune", {"overrides": {"dataset.path": "data/gone.csv"}}, [],
     ("train.yaml (with the overrides of sweep.yaml): dataset.path", "no such file or folder", "'data/gone.csv'")),
    ("sweep-bad-yaml-bracket", "tune", "name: sweep\nsearch_space: {optimizer.lr: [1, 2\n", [],
     ("sweep.yaml", "invalid YAML at line", "column", "Fix the syntax")),
    ("sweep-wrong-type", "tune", {"num_samples": "many"}, [], ("num_samples", "'many'", "e.g. num_samples: 8")),
]


def write_project(folder: Path, command: str, broken: dict[str, Any] | str) -> None:
    """The valid project, with the command's own file replaced by ``broken``."""
    for kind, (name, base) in FILES.items():
        content = broken if kind == command else {}
        text = content if isinstance(content, str) else yaml.safe_dump(patched(base, content))
        (folder / name).write_text(text)


def run_atoll(folder: Path, argv: list[str]) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "ATOLL_HOME": str(folder / "home"), "ATOLL_STORAGE": str(folder / "storage"),
           "ATOLL_CLUSTER_CONFIG": str(folder / "cluster.yaml"), "HOME": str(folder / "home"),
           "NO_COLOR": "1", "COLUMNS": "250"}
    for name in ("ATOLL_ADDRESS", "RAY_API_SERVER_ADDRESS", "RAY_ADDRESS", "ATOLL_DEBUG"):
        env.pop(name, None)
    return subprocess.run([ATOLL, *argv], cwd=folder, env=env, capture_output=True, text=True, timeout=120,
                          check=False)


def command_line(command: str, extra: list[str]) -> list[str]:
    argv = list(COMMANDS[command])
    if "-c" in extra:  # the row names another (missing) cluster.yaml
        at = argv.index("-c")
        del argv[at:at + 2]
    elif extra and not extra[0].startswith("-"):  # the row names another (missing) spec: the argument
        argv[1], extra = extra[0], extra[1:]
    return argv + extra


@pytest.fixture(scope="module")
def outcomes(tmp_path_factory: pytest.TempPathFactory) -> dict[str, subprocess.CompletedProcess[str]]:
    """Every row run once, a few at a time (each is a fresh interpreter importing the CLI): the table and
    the summary read the same runs, in whatever order or selection pytest runs them."""
    folders = {case[0]: tmp_path_factory.mktemp(case[0]) for case in CASES}

    def run(case: tuple) -> subprocess.CompletedProcess[str]:
        case_id, command, broken, extra, _ = case
        write_project(folders[case_id], command, broken)
        return run_atoll(folders[case_id], command_line(command, extra))

    with ThreadPoolExecutor(max_workers=4) as pool:
        return dict(zip([c[0] for c in CASES], pool.map(run, CASES)))


def check(case: tuple, result: subprocess.CompletedProcess[str]) -> str:
    """The row's one-line message, after asserting every promise: exit 2, no traceback, one line, the
    field and the fix in it."""
    case_id, _, _, _, expected = case
    output = result.stdout + result.stderr
    assert "Traceback" not in output, output
    assert result.returncode == 2, f"{case_id}: exit {result.returncode}, not 2 (a ConfigError):\n{output}"
    lines = [line for line in result.stderr.strip().splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), f"{case_id}: not one `error:` line:\n{output}"
    missing = [text for text in expected if text not in lines[0]]
    assert not missing, f"{case_id}: {missing} not in {lines[0]!r}"
    return lines[0]


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_broken_config_gets_one_line_naming_the_field_and_the_fix(case, outcomes):
    check(case, outcomes[case[0]])


def test_the_valid_project_passes_validation(tmp_path):
    """The control: unbroken, each command gets past validation (so each row fails for its own reason)."""
    for command, argv in COMMANDS.items():
        write_project(tmp_path, command, {})
        result = run_atoll(tmp_path, argv)
        if command == "cluster":
            assert result.returncode == 0, result.stdout + result.stderr
        else:  # validated, then no cluster to submit to
            assert result.returncode == 1 and "no cluster is up" in result.stderr, result.stdout + result.stderr


def test_bad_config_summary(outcomes, reliability):
    """Every row passes and has its own message; record the outcome for docs/reliability.md."""
    messages = [check(case, outcomes[case[0]]) for case in CASES]
    assert len(set(messages)) == len(messages), "two rows share a message"
    kinds = sorted({c[1] for c in CASES})
    n = len(CASES)
    reliability("config", f"{n} broken inputs across cluster.yaml, training and sweep specs "
                          f"({', '.join(f'{sum(c[1] == k for c in CASES)} {k}' for k in kinds)})",
                f"{n}/{n}: one-line message naming the field and the fix, exit 2, no traceback", "pass")
