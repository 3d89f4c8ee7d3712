"""Write docs/reliability.md from the latest run's records in .reliability/ (see conftest.py).

    python tests/faults/report.py                          # after `pytest tests/faults`
    python tests/faults/report.py --records DIR --out FILE [--run RUN]

Only the most recent pytest session's records are used: rows of earlier runs, of renamed or deleted tests,
and files in the old format (no run id) are not published. A test that failed shows FAIL.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
RECORDS = ROOT / ".reliability"
DOC = ROOT / "docs" / "reliability.md"
GROUPS = ["train", "driver", "multinode", "sweep", "serve", "overload", "hostile input", "registry", "access", "config"]

HEADER = """# Reliability: faults, hostile input and access

Every row below is written by a test under `tests/faults/` from what it measured on a real local Ray
cluster (2 cores, no GPU), all in one test run — regenerate with `pytest tests/faults && python
tests/faults/report.py`. Each fault is injected for real: processes are SIGKILLed by PID, requests are
real HTTP on 127.0.0.1. A row whose test failed says FAIL.

{summary}

| group | fault or attack | measured | result |
|---|---|---|---|
"""

RESULT = {"failed": "FAIL", "error": "FAIL (error in setup or teardown)", "skipped": "skipped"}


def latest_run(records: Path, run: str | None = None) -> list[dict]:
    """The records of the most recent run under ``records`` (or of ``run``), one dict per test; [] if none."""
    found = []
    for path in sorted(records.rglob("*.json")):
        try:
            record = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
        if isinstance(record, dict) and {"run", "started", "test", "outcome", "rows"} <= record.keys():
            found.append(record)
    if run is not None:
        return [r for r in found if r["run"] == run]
    if not found:
        return []
    last = max((r["started"], r["run"]) for r in found)
    return [r for r in found if (r["started"], r["run"]) == last]


def table_rows(records: list[dict]) -> list[tuple[str, str, str, str, str]]:
    """(group, fault, measured, result, test) per row; a test that recorded nothing still gets one."""
    rows = []
    for record in records:
        result = RESULT.get(record["outcome"])
        for row in record["rows"]:
            rows.append((row["group"], row["fault"], row["measured"], result or row["result"], record["test"]))
        if not record["rows"]:
            rows.append(("—", f"`{record['test']}`", f"{record['outcome']} before recording anything",
                         result or record["outcome"], record["test"]))
    rows.sort(key=lambda r: (GROUPS.index(r[0]) if r[0] in GROUPS else len(GROUPS), r[4]))
    return rows


def summary(records: list[dict]) -> str:
    first = records[0]
    commit = f"`{first['commit'][:12]}`" + (" (with uncommitted changes)" if first.get("dirty") else "")
    counts = {}
    for record in records:
        counts[record["outcome"]] = counts.get(record["outcome"], 0) + 1
    tally = ", ".join(f"{n} {outcome}" for outcome, n in sorted(counts.items()))
    return (f"Run `{first['run']}` of {first['started'][:10]} (UTC) on commit {commit}: "
            f"{len(records)} test{'s' if len(records) != 1 else ''}, {tally}.")


def render(records: list[dict]) -> str:
    cells = [[cell.replace("|", "\\|") for cell in row[:4]] for row in table_rows(records)]
    lines = ["| " + " | ".join(row) + " |" for row in cells]
    return HEADER.format(summary=summary(records)) + "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=Path, default=RECORDS, help=f"records folder (default {RECORDS})")
    parser.add_argument("--out", type=Path, default=DOC, help=f"the page to write (default {DOC})")
    parser.add_argument("--run", help="publish this run (a folder name under --records), not the latest one")
    args = parser.parse_args(argv)
    records = latest_run(args.records, args.run)
    if not records:
        which = f"of run {args.run} " if args.run else ""
        print(f"no records {which}in {args.records}: run `pytest tests/faults` first", file=sys.stderr)
        return 1
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(render(records))
    failing = [r["test"] for r in records if r["outcome"] in ("failed", "error")]
    print(f"wrote {args.out} ({len(records)} test records of run {records[0]['run']}; {len(failing)} failing)")
    for test in failing:
        print(f"  FAIL {test}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
