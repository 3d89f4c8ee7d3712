"""Write docs/reliability.md from the records the fault tests left in .reliability/ (see conftest.py).

    python tests/faults/report.py        # after `pytest tests/faults`
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
RECORDS = ROOT / ".reliability"
DOC = ROOT / "docs" / "reliability.md"
GROUPS = ["train", "driver", "sweep", "serve", "overload", "hostile input", "registry", "access", "config"]

HEADER = """# Reliability: faults, hostile input and access

Every row below is written by a test under `tests/faults/` from what it measured on a real local Ray
cluster (2 cores, no GPU) — regenerate with `pytest tests/faults && python tests/faults/report.py`.
Each fault is injected for real: processes are SIGKILLed by PID, requests are real HTTP on 127.0.0.1.

| group | fault or attack | measured | result |
|---|---|---|---|
"""


def main() -> int:
    rows = [json.loads(p.read_text()) for p in sorted(RECORDS.glob("*.json"))]
    if not rows:
        print(f"no records in {RECORDS}: run `pytest tests/faults` first", file=sys.stderr)
        return 1
    rows.sort(key=lambda r: (GROUPS.index(r["group"]) if r["group"] in GROUPS else len(GROUPS), r["test"]))
    lines = [f"| {r['group']} | {r['fault']} | {r['measured']} | {r['result']} |" for r in rows]
    DOC.parent.mkdir(exist_ok=True)
    DOC.write_text(HEADER + "\n".join(lines) + "\n")
    print(f"wrote {DOC} ({len(rows)} rows)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
