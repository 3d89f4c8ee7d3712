"""bench/report.py: the published benchmark page comes from the latest run's JSON lines only (no cluster)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parent.parent / "bench"


def _line(case: str, ratio: float, commit: str) -> str:
    return json.dumps({"bench": "batch_predict", "case": case, "ours": ratio * 1000, "baseline": 1000.0,
                       "unit": "rows/s", "ratio": ratio, "better": "higher", "commit": commit,
                       "machine": "2 cores, 24 GiB, no GPU", "at": "2026-12-03T07:40:30Z"})


def test_the_page_shows_each_benchmarks_latest_run_and_names_the_unmeasured(tmp_path):
    results = tmp_path / "batch_predict.jsonl"
    results.write_text("\n".join(["a log line", _line("tabular", 0.05, "aaaaaaa"), _line("text", 0.3, "aaaaaaa"),
                                  "{not json", _line("tabular", 0.1, "bbbbbbb"), _line("text", 0.92, "bbbbbbb")]))
    done = subprocess.run([sys.executable, str(BENCH / "report.py"), str(results), "--docs", str(tmp_path)],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    page = (tmp_path / "benchmarks.md").read_text()
    assert "| `batch_predict` | text | 920 | 1,000 | rows/s | 0.92 | higher | bbbbbbb |" in page
    assert "aaaaaaa" not in page and "0.05" not in page
    assert "`serve_load`" in page.split("Not measured")[1]
    assert (tmp_path / "bench" / "batch_predict.png").read_bytes()[:4] == b"\x89PNG"
    # a later run of one case leaves the other case's figure, with the commit it was measured at
    results.write_text(results.read_text() + "\n" + _line("tabular", 0.2, "ccccccc"))
    done = subprocess.run([sys.executable, str(BENCH / "report.py"), str(results), "--docs", str(tmp_path)],
                          capture_output=True, text=True, timeout=120)
    page = (tmp_path / "benchmarks.md").read_text()
    assert "| text | 920 | 1,000 | rows/s | 0.92 | higher | bbbbbbb |" in page and "| tabular | 200 |" in page
    assert "ccccccc" in page and "0.1 |" not in page


def test_no_results_is_one_line_that_says_how_to_make_them(tmp_path):
    empty = tmp_path / "none.jsonl"
    empty.write_text("no json here\n")
    done = subprocess.run([sys.executable, str(BENCH / "report.py"), str(empty), "--docs", str(tmp_path)],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and done.stderr.count("\n") == 1 and "tee -a bench/results/" in done.stderr


def test_a_run_that_says_where_its_cpu_went_gets_a_table_of_it(tmp_path):
    record = json.loads(_line("", 0.26, "ccccccc"))
    record.update(bench="serve_load", case=None,
                  cpu_share_by_part={"serve_proxy": {"Ray actor calls": 0.34, "the rest": 0.66},
                                     "serve_replica": {"the model": 0.02, "Ray actor calls": 0.32}})
    results = tmp_path / "serve_load.jsonl"
    results.write_text(json.dumps(record) + "\n")
    done = subprocess.run([sys.executable, str(BENCH / "report.py"), str(results), "--docs", str(tmp_path)],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    page = (tmp_path / "benchmarks.md").read_text()
    assert "| part | serve_proxy | serve_replica |" in page
    assert "| Ray actor calls | 34% | 32% |" in page and "| the model | 0% | 2% |" in page
