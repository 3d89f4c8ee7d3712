"""docs/reliability.md comes from one run: the latest run's records only, and a failing test shows FAIL.
No cluster: records are written by the real conftest hook in a throwaway pytest session."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

from faults import report
from faults.conftest import write_record

HERE = Path(__file__).resolve().parent

FAKE_TESTS = '''
def test_records_then_passes(reliability):
    reliability("serve", "fault A", "measured A", "pass (with a caveat)")

def test_records_then_fails(reliability):
    reliability("serve", "fault B", "0 of 9 failed")
    assert False, "the figure was recorded, then the check failed"

def test_fails_before_recording(reliability):
    assert False

def test_without_the_fixture():
    pass
'''


def _records(folder: Path) -> list[dict]:
    return [json.loads(p.read_text()) for p in folder.rglob("*.json")]


def test_a_test_that_fails_after_recording_is_published_as_fail(tmp_path):
    # The real conftest, in a throwaway tree laid out like the repository (records land in <tree>/.reliability).
    faults = tmp_path / "tests" / "faults"
    faults.mkdir(parents=True)
    shutil.copy(HERE / "conftest.py", faults / "conftest.py")
    (faults / "test_fake.py").write_text(FAKE_TESTS)
    run = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(faults)],
                         check=False, cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert run.returncode == 1, run.stdout + run.stderr  # two tests fail, as written
    records = {r["test"].rsplit("::", 1)[1]: r for r in _records(tmp_path / ".reliability")}
    assert {name: r["outcome"] for name, r in records.items()} == {
        "test_records_then_passes": "passed", "test_records_then_fails": "failed",
        "test_fails_before_recording": "failed", "test_without_the_fixture": "passed"}
    assert len({r["run"] for r in records.values()}) == 1

    out = tmp_path / "reliability.md"
    assert report.main(["--records", str(tmp_path / ".reliability"), "--out", str(out)]) == 0
    rows = [line for line in out.read_text().splitlines() if line.startswith("| ") and "---" not in line][1:]
    assert "| serve | fault A | measured A | pass (with a caveat) |" in rows
    assert "| serve | fault B | 0 of 9 failed | FAIL |" in rows
    assert any("test_fails_before_recording" in row and row.endswith("| FAIL |") for row in rows), rows
    assert any("test_without_the_fixture" in row for row in rows), rows  # 32.19: every fault test is counted
    assert len(rows) == 4 and "4 tests, 2 failed, 2 passed" in out.read_text()


def test_the_report_keeps_only_the_latest_run(tmp_path):
    records = tmp_path / "records"
    new = json.loads(write_record("tests/faults/test_x.py::test_a", "failed",
                                  [{"group": "serve", "fault": "kill", "measured": "3 failed", "result": "pass"}],
                                  records).read_text())
    # An earlier run: the same test passing, and a test since renamed; and a file of the old format.
    old_dir = records / "20000101T000000000000Z-1"
    old_dir.mkdir()
    for test, measured in (("test_a", "0 failed"), ("test_old_name", "renamed since")):
        old = {**new, "run": old_dir.name, "started": "2000-01-01T00:00:00+00:00", "commit": "0" * 40,
               "test": f"tests/faults/test_x.py::{test}", "outcome": "passed",
               "rows": [{"group": "serve", "fault": "kill", "measured": measured, "result": "pass"}]}
        (old_dir / f"{test}.json").write_text(json.dumps(old))
    (records / "legacy.json").write_text(json.dumps({"test": "t", "group": "serve", "fault": "kill",
                                                     "measured": "legacy", "result": "pass"}))

    out = tmp_path / "doc" / "reliability.md"
    assert report.main(["--records", str(records), "--out", str(out)]) == 0
    text = out.read_text()
    assert "| serve | kill | 3 failed | FAIL |" in text
    assert "0 failed" not in text and "renamed since" not in text and "legacy" not in text
    assert f"Run `{new['run']}` of {new['started'][:10]} (UTC) on commit `{new['commit'][:12]}" in text
    assert "1 test, 1 failed." in text

    # An earlier run is published only when asked for by name.
    assert report.main(["--records", str(records), "--out", str(out), "--run", old_dir.name]) == 0
    assert "| serve | kill | 0 failed | pass |" in out.read_text() and "3 failed" not in out.read_text()


def test_the_published_table_is_from_the_code_it_describes():
    """Issue 32.19: docs/reliability.md names the commit of its run; CI fails once the code it describes (the
    package, and the fault tests themselves) has changed since, so a stale table cannot go unnoticed.
    Regenerate: `pytest` (or `pytest tests/faults`), then `python tests/faults/report.py`, and commit the page."""
    import re

    text = (report.ROOT / "docs" / "reliability.md").read_text()
    found = re.search(r"on commit `([0-9a-f]{7,40})`", text)
    assert found, "docs/reliability.md names no commit"
    commit = found[1]

    def git(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run(["git", *args], cwd=report.ROOT, capture_output=True, text=True, check=False)

    if git("rev-parse", "--is-inside-work-tree").returncode != 0:
        import pytest

        pytest.skip("not a git checkout: no history to compare the table's commit with")
    assert git("cat-file", "-e", f"{commit}^{{commit}}").returncode == 0, f"{commit} is not in this history"
    changed = git("diff", "--name-only", commit, "HEAD", "--", "platform", "tests/faults").stdout.split()
    assert changed == [], (f"docs/reliability.md is from {commit}, and {len(changed)} file(s) it describes "
                           f"changed since ({', '.join(changed[:5])}): rerun the tests and tests/faults/report.py")
