"""A project of its own, outside this repository: its cluster.yaml, a spec in `specs/`, a CSV in `data/`.

Relative paths in a spec are relative to the spec's folder (here and in the job), and `atoll train` ships the
project with the spec and the data it reads, so it works wherever Atoll is installed. The first tests need no
cluster; the last runs `atoll train` from the project on the session's cluster.
"""

from __future__ import annotations

import json
import shutil
import zipfile
from pathlib import Path

import numpy as np
import pytest
import yaml
from atoll import config, data, jobs, tune
from atoll.errors import ConfigError
from atoll.registry import Registry
from atoll.specs import TrainSpec
from conftest import REPO, run_cli

NAME = "outside-repo"


@pytest.fixture
def project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """project/{cluster.yaml, specs/train.yaml, sweeps/sweep.yaml, data/rows.csv (200 rows, 4 features,
    3 classes), data/other.csv}, and the current folder somewhere else."""
    root = tmp_path / "project"
    for folder in ("specs", "sweeps", "data"):
        (root / folder).mkdir(parents=True)
    # The project's own storage root and allow-list, which its jobs must use wherever their spec lies.
    cluster = yaml.safe_load((REPO / "cluster.yaml").read_text())
    cluster["metadata"]["atoll"].update(storage=str(tmp_path / "project-storage"), model_types=["mypkg.models:*"])
    (root / "cluster.yaml").write_text(yaml.safe_dump(cluster, sort_keys=False))
    rng = np.random.default_rng(0)
    x = rng.normal(size=(200, 4)).round(4)
    labels = (x[:, 0] > 0).astype(int) + (x[:, 1] > 0).astype(int)  # 3 classes
    lines = ["f0,f1,f2,f3,label"] + [",".join(map(str, row)) + f",{label}" for row, label in zip(x, labels)]
    (root / "data" / "rows.csv").write_text("\n".join(lines) + "\n")
    (root / "data" / "other.csv").write_text("a,label\n1,0\n")  # not the spec's: must stay behind
    spec = {"name": NAME, "dataset": {"path": "../data/rows.csv"},
            "model": {"type": "mlp", "params": {"hidden": [8]}}, "epochs": 2, "batch_size": 32,
            "num_workers": 1, "cpus_per_worker": 1}
    (root / "specs" / "train.yaml").write_text(yaml.safe_dump(spec))
    (root / "sweeps" / "sweep.yaml").write_text(yaml.safe_dump({
        "name": "s", "train": "../specs/train.yaml", "search_space": {"optimizer.lr": {"choice": [0.01]}}}))
    (tmp_path / "elsewhere").mkdir()
    monkeypatch.chdir(tmp_path / "elsewhere")
    return root


def test_relative_paths_in_a_spec_are_relative_to_its_folder_not_the_current_one(project: Path) -> None:
    spec = config.load_file(TrainSpec, project / "specs" / "train.yaml")
    assert spec.dataset.path == str(project / "data" / "rows.csv")
    for kept in ("s3://bucket/rows.parquet", "demo:digits", str(project / "data" / "other.csv")):
        assert config.load_file(TrainSpec, project / "specs" / "train.yaml",
                                [f"dataset.path={kept}"]).dataset.path == kept
    with pytest.raises(ConfigError) as err:
        config.load_file(TrainSpec, project / "specs" / "train.yaml", ["dataset.path=data/rows.csv"])
    message = str(err.value)
    assert "no such file or folder" in message and f"spec's folder, {project / 'specs'}" in message


def test_a_sweeps_training_spec_and_its_data_are_relative_to_their_own_files(project: Path) -> None:
    sweep, base = tune.load_sweep(project / "sweeps" / "sweep.yaml")
    sweep_path = project / "sweeps" / "sweep.yaml"
    assert tune.training_spec_path(sweep_path, sweep) == project / "specs" / "train.yaml"
    assert base.dataset.path == str(project / "data" / "rows.csv")


def test_a_job_ships_the_project_with_the_spec_and_its_data_only(project: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    from ray._private import ray_constants
    from ray._private.runtime_env.packaging import create_package

    monkeypatch.chdir(project)  # as a user works: ./cluster.yaml is the project's
    monkeypatch.delenv("ATOLL_CLUSTER_CONFIG")
    spec = project / "specs" / "train.yaml"
    assert jobs.job_folder(spec) == project
    files = jobs.job_files("train", spec, [], project)
    assert set(files) == {spec, project / "data" / "rows.csv"}
    (project / ".venv").mkdir()
    (project / ".venv" / "big.bin").write_bytes(b"0" * 10)
    renv = jobs.runtime_env(project, keep=files)
    package = project.parent / "package.zip"
    # Ray's own packaging of the working dir with Ray's default excludes and ours: what a submission uploads.
    create_package(str(project), package, include_gitignore=True,
                   excludes=ray_constants.get_runtime_env_default_excludes() + renv["excludes"])
    names = {n.rstrip("/") for n in zipfile.ZipFile(package).namelist()}
    assert {"cluster.yaml", "specs/train.yaml", "data/rows.csv"} <= names
    assert not names & {"data/other.csv", ".venv/big.bin"}
    assert jobs.job_folder(project.parent / "elsewhere" / "x.yaml") == project.parent / "elsewhere"


def test_a_relative_path_leaving_the_shipped_folder_is_refused_in_one_line(project: Path) -> None:
    loose = project.parent / "loose"  # a spec outside the project: the job ships its folder alone
    loose.mkdir()
    (loose / "train.yaml").write_text((project / "specs" / "train.yaml").read_text())
    with pytest.raises(ConfigError) as err:
        jobs.job_files("train", loose / "train.yaml", [], jobs.job_folder(loose / "train.yaml"))
    message = str(err.value)
    assert "\n" not in message and "dataset.path" in message and f"outside {loose}" in message
    assert "shipped with the job" in message and "absolute path" in message
    absolute = [f"dataset.path={project / 'data' / 'rows.csv'}"]  # read where it is: allowed
    assert jobs.job_files("train", loose / "train.yaml", absolute, loose)[1] == project / "data" / "rows.csv"


def test_a_job_gets_the_clients_resolved_settings_never_a_path_of_its_machine(project: Path, monkeypatch) -> None:
    """Issue 32.4: the job's environment holds the storage root and allow-list the client resolved from its
    cluster.yaml (`-c` or ./cluster.yaml), not the client's path to that file, which a remote head lacks."""
    monkeypatch.delenv("ATOLL_STORAGE")
    monkeypatch.setenv("ATOLL_CLUSTER_CONFIG", str(project / "cluster.yaml"))  # what `-c` sets in the client
    env = jobs.runtime_env(project.parent / "elsewhere")["env_vars"]
    assert env["ATOLL_STORAGE"] == str(project.parent / "project-storage")
    assert json.loads(env["ATOLL_MODEL_TYPES"]) == ["mypkg.models:*"]
    assert "ATOLL_CLUSTER_CONFIG" not in env and "cluster.yaml" not in json.dumps(env)
    # ... and the job, which finds no cluster.yaml of its own, reads them back.
    monkeypatch.delenv("ATOLL_CLUSTER_CONFIG")
    monkeypatch.setenv("ATOLL_STORAGE", env["ATOLL_STORAGE"])
    monkeypatch.setenv("ATOLL_MODEL_TYPES", env["ATOLL_MODEL_TYPES"])
    in_job = config.load_spec()
    assert (in_job.atoll.storage, in_job.atoll.model_types) == (env["ATOLL_STORAGE"], ["mypkg.models:*"])
    monkeypatch.setenv("ATOLL_MODEL_TYPES", "mypkg")
    with pytest.raises(ConfigError, match=r"\$ATOLL_MODEL_TYPES: expected a JSON list"):
        config.load_spec()


@pytest.mark.cluster
def test_atoll_train_of_a_spec_outside_the_project_registers_where_the_client_looks(ray_cluster,
                                                                                    project: Path) -> None:
    """A spec outside the project (its folder is what the job ships: no cluster.yaml in it) trained from the
    project's folder: the version lands in the project's storage root, where `atoll models list` looks."""
    loose = project.parent / "loose"
    loose.mkdir()
    shutil.copy(project / "data" / "rows.csv", loose / "rows.csv")
    spec = yaml.safe_load((project / "specs" / "train.yaml").read_text())
    (loose / "train.yaml").write_text(yaml.safe_dump({**spec, "dataset": {"path": "rows.csv"}}))
    # The project's own ./cluster.yaml (not the repo's, nor the session's storage root).
    env = {"ATOLL_CLUSTER_CONFIG": "", "ATOLL_STORAGE": ""}
    result = run_cli("train", "../loose/train.yaml", "--set", "epochs=2", "--json", cwd=project, env=env,
                     timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    out = json.loads(result.stdout)
    assert out["job"]["entrypoint"].startswith("python -m atoll.train -c train.yaml")
    assert out["registered"]["name"] == NAME
    listed = run_cli("models", "list", "--json", cwd=project, env=env)
    assert listed.returncode == 0, listed.stderr
    assert NAME in {m["name"] for m in json.loads(listed.stdout)}
    storage = project.parent / "project-storage"
    version = Registry(str(storage)).get(f"{NAME}:{out['registered']['version']}")
    lineage = version.lineage
    # The job read the shipped copy of rows.csv (in its own working dir), the very same bytes.
    assert lineage["dataset"].endswith("/rows.csv") and lineage["dataset"] != str(loose / "rows.csv")
    assert lineage["dataset_fingerprint"] == data.fingerprint(str(loose / "rows.csv"))
    assert lineage["num_workers"] == 1 and lineage["job_id"] == out["job"]["id"]


def test_a_git_ignored_dataset_is_refused_before_submitting_with_the_fix(project: Path,
                                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """Issue 32.16: Ray's upload honours .gitignore, so a git-ignored dataset (where teams keep data) never
    reached the job, which then failed with "no such file". Now one line says so first, checked by Ray's rule."""
    from ray._private import ray_constants
    from ray._private.runtime_env.packaging import create_package

    spec = project / "specs" / "train.yaml"
    files = jobs.job_files("train", spec, [], project)
    jobs.check_shipped(project, files)  # nothing ignored yet
    (project / ".gitignore").write_text("*.csv\n")
    with pytest.raises(ConfigError) as err:
        jobs.check_shipped(project, files)
    message = str(err.value)
    assert "\n" not in message and "data/rows.csv is ignored by a .gitignore" in message
    assert "object storage" in message and "RAY_RUNTIME_ENV_IGNORE_GITIGNORE=1" in message
    # Ray's own packaging agrees: the file is not in what a submission uploads ...
    package = project.parent / "package.zip"
    excludes = ray_constants.get_runtime_env_default_excludes() + jobs.runtime_env(project, keep=files)["excludes"]
    create_package(str(project), package, include_gitignore=True, excludes=excludes)
    assert "data/rows.csv" not in {n.rstrip("/") for n in zipfile.ZipFile(package).namelist()}
    # ... and with Ray's switch it ships, so the check lets it through.
    monkeypatch.setenv("RAY_RUNTIME_ENV_IGNORE_GITIGNORE", "1")
    jobs.check_shipped(project, files)
