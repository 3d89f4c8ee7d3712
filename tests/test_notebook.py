"""The notebook walkthrough of the Python API (examples/lifecycle.py, jupytext's percent format), executed
headless as a notebook (jupytext + nbclient, a real Jupyter kernel) on the session's cluster: a failing
cell fails the test.

It runs with every byte of state on S3 (issue 20): ATOLL_STORAGE=s3://… on the session's SeaweedFS server,
so the same run proves the lifecycle (train → sweep → registry → deploy → query → batch predict) on an
object store: Ray Train's checkpoints, the sweep, the versions and the predictions land in the bucket, and
nothing but temporary files is written to a local disk."""

from __future__ import annotations

import os
import posixpath
import uuid
from pathlib import Path

import pyarrow.fs as pafs
import pytest
from atoll import filesystems
from atoll.registry import Registry
from conftest import REPO

pytestmark = [pytest.mark.cluster, pytest.mark.slow]


def _tree(folder: Path) -> set[str]:
    """Every file under a local folder (relative), without the caches Python and the tools keep."""
    skip = {"__pycache__", ".pytest_cache", ".ruff_cache", ".git", ".venv", ".ipynb_checkpoints", "node_modules"}
    found = set()
    for top, dirs, files in os.walk(folder):
        dirs[:] = [d for d in dirs if d not in skip]  # never walk into a virtualenv's 100k files
        found |= {os.path.relpath(os.path.join(top, f), folder) for f in files}
    return found


def _objects(root: str) -> set[str]:
    """Every object under a storage root on S3, relative to it."""
    fs, path = filesystems.resolve(root)
    return {posixpath.relpath(i.path, path) for i in fs.get_file_info(pafs.FileSelector(path, recursive=True))
            if i.type == pafs.FileType.File}


def test_the_lifecycle_notebook_runs_cell_by_cell_with_all_state_on_s3(ray_cluster, s3_store, monkeypatch):
    import jupytext
    from nbclient import NotebookClient

    root = f"s3://atoll-test/notebook-{uuid.uuid4().hex[:8]}"
    local_root = Path(os.environ["ATOLL_STORAGE"])
    before = {"storage": _tree(local_root), "project": _tree(REPO)}
    notebook = jupytext.read(REPO / "examples" / "lifecycle.py")
    assert sum(c.cell_type == "code" for c in notebook.cells) >= 7
    monkeypatch.setenv("ATOLL_PROJECT", str(REPO))  # the kernel inherits the session's ATOLL_HOME
    monkeypatch.setenv("ATOLL_STORAGE", root)  # ... and this root, with the store's AWS variables (no key)
    NotebookClient(notebook, timeout=600, kernel_name="python3",
                   resources={"metadata": {"path": str(REPO)}}).execute()
    outputs = "".join(o.get("text", "") for c in notebook.cells if c.cell_type == "code" for o in c.get("outputs", []))
    assert "reused" in outputs  # it joined the session's cluster rather than starting one
    assert "rows;" in outputs and "accuracy" in outputs

    objects = _objects(root)
    assert any(o.startswith("runs/") and "/checkpoint_" in o for o in objects), sorted(objects)[:20]  # Ray Train
    assert any(o.startswith("sweeps/notebook-") and o.endswith("/results.csv") for o in objects)  # Ray Tune
    assert "datasets/digits_holdout.parquet" in objects and "notebook-rows.parquet" in objects
    assert any(o.startswith("notebook-predictions-") for o in objects)  # the batch prediction's output
    reg = Registry(root)
    versions = reg.list_versions("digits")
    assert [v.version for v in versions] == [1, 2] and reg.aliases("digits")["production"] in (1, 2)
    assert versions[1].lineage["sweep"].startswith("notebook-")  # the sweep's best, with its lineage
    assert versions[1].lineage["experiment_path"].startswith(f"{root}/sweeps/")
    assert {"model.safetensors", "model.onnx"} <= set(versions[0].files)  # weights and exported artefacts

    # Nothing but temporary files on a local disk: no `s3:` folder, nothing new in the project or the local root.
    assert _tree(REPO) == before["project"] and not (REPO / "s3:").exists()
    assert _tree(local_root) == before["storage"]
