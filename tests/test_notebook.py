"""The notebook walkthrough of the Python API (examples/lifecycle.py, jupytext's percent format), executed
headless as a notebook (jupytext + nbclient, a real Jupyter kernel) on the session's cluster: a failing
cell fails the test."""

from __future__ import annotations

import os

import pytest
from conftest import REPO

pytestmark = [pytest.mark.cluster, pytest.mark.slow]


def test_the_lifecycle_notebook_runs_cell_by_cell(ray_cluster, monkeypatch):
    import jupytext
    from nbclient import NotebookClient

    notebook = jupytext.read(REPO / "examples" / "lifecycle.py")
    assert sum(c.cell_type == "code" for c in notebook.cells) >= 7
    monkeypatch.setenv("ATOLL_PROJECT", str(REPO))  # the kernel inherits the session's ATOLL_HOME and storage
    NotebookClient(notebook, timeout=600, kernel_name="python3",
                   resources={"metadata": {"path": str(REPO)}}).execute()
    outputs = "".join(o.get("text", "") for c in notebook.cells if c.cell_type == "code" for o in c.get("outputs", []))
    assert "reused" in outputs  # it joined the session's cluster rather than starting one
    assert "rows;" in outputs and "accuracy" in outputs and os.environ["ATOLL_PROJECT"] == str(REPO)
