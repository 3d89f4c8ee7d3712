"""Publish the benchmarks' latest figures: ``docs/benchmarks.md`` (one table row per case, with the commit
and the machine each was measured on) and one chart per benchmark (``docs/bench/NAME.png``: ours ÷ baseline
per case, against the line where the two are equal), from the JSON lines the benchmarks print.

    python bench/batch_predict.py | tee -a bench/results/batch_predict.jsonl
    python bench/report.py                       # reads bench/results/*.jsonl

Only each case's latest line is published, with the commit it was measured at; a benchmark with no saved run is
listed as not measured, never filled in from memory.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
BENCHES = ("train_throughput", "serve_load", "tune_asha", "data_ingest", "batch_predict", "task_quality",
           "trees_throughput", "autoscale", "llm_serve", "parquet_read")


def read_lines(paths: list[Path]) -> dict[str, list[dict]]:
    """Per benchmark, the JSON lines of its latest run (a file may hold a run's log and earlier runs)."""
    runs: dict[str, list[dict]] = {}
    for path in paths:
        for line in path.read_text().splitlines():
            if not line.startswith("{"):
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                continue
            if isinstance(record, dict) and "bench" in record:
                runs.setdefault(record["bench"], []).append(record)
    return {bench: latest_run(records) for bench, records in runs.items()}


def _case(record: dict) -> str | None:
    """What a line measures within its bench: its ``case``, else its ``task`` (task_quality), else its search
    seed (tune_asha's runs over several seeds)."""
    if record.get("case") or record.get("task"):
        return record.get("case") or record.get("task")
    return f"seed {record['search_seed']}" if record.get("search_seed") is not None else None


def latest_run(records: list[dict]) -> list[dict]:
    """Each case's latest line (a run of one case, e.g. ``task_quality.py --task generate``, leaves the other cases'
    figures as they were measured, each with its own commit), in the order the cases first appear."""
    latest: dict[str | None, dict] = {}
    for record in records:
        latest[_case(record)] = record
    unnamed = latest.get(None)
    if unnamed is not None and len(latest) > 1 and unnamed.get("commit") != records[-1].get("commit"):
        del latest[None]  # an older line that names no case: from before the bench named its cases
    return list(latest.values())


def _figure(value) -> str:
    if not isinstance(value, (int, float)):
        return "–"
    return f"{value:,.0f}" if abs(value) >= 100 else f"{value:,.3g}"


def chart(bench: str, records: list[dict], path: Path) -> Path:
    """Horizontal bars of ours ÷ baseline per case, the line at 1 where the two are equal."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = [_case(r) or bench for r in records]
    ratios = [r.get("ratio") or 0 for r in records]
    better = records[0].get("better", "higher")
    fig, ax = plt.subplots(figsize=(6.4, 0.6 + 0.55 * len(records)))
    bars = ax.barh(labels, ratios, color=["#2f7d4f" if (x >= 1) == (better == "higher") else "#c0573e"
                                          for x in ratios])
    ax.axvline(1, color="black", lw=1)
    ax.bar_label(bars, labels=[f"{x:.2f}x" for x in ratios], padding=3, fontsize=8)
    commits = ', '.join(dict.fromkeys(str(r.get('commit')) for r in records))
    ax.set(xlabel=f"ours ÷ baseline ({better} is better)", title=f"{bench} at {commits}")
    ax.set_xlim(0, max(ratios + [1]) * 1.25)
    ax.invert_yaxis()
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def markdown(latest: dict[str, list[dict]], charts: Path) -> str:
    rows = ["| bench | case | ours | baseline | unit | ratio | better | commit | machine | measured |",
            "|---|---|---|---|---|---|---|---|---|---|"]
    for bench in sorted(latest, key=lambda b: BENCHES.index(b) if b in BENCHES else len(BENCHES)):
        for r in latest[bench]:
            case = " ".join(filter(None, [_case(r), "(--quick)" if r.get("quick") else None]))
            rows.append(f"| `{bench}` | {case} | {_figure(r.get('ours'))} | "
                        f"{_figure(r.get('baseline'))} | {r.get('unit', '')} | {_figure(r.get('ratio'))} | "
                        f"{r.get('better', '')} | {r.get('commit', '?')} | {r.get('machine', '?')} | "
                        f"{r.get('at', '?')} |")
    missing = [b for b in BENCHES if b not in latest]
    parts = ["# Benchmarks", "",
             "Made by `python bench/report.py` from the JSON lines the benchmarks printed "
             "(`bench/results/*.jsonl`); each row is the latest run of the code at its commit. How each side "
             "runs and what cannot be made equal is in each script's docstring.", "", *rows, ""]
    if missing:
        parts += [f"Not measured at a recorded commit yet: {', '.join(f'`{b}`' for b in missing)} (their last "
                  f"figures, at older commits, are in the README's Benchmarks table).", ""]
    for bench in latest:
        parts += [f"![{bench}]({charts.name}/{bench}.png)", ""]
    for bench, records in latest.items():
        parts += breakdown_tables(bench, records)
    return "\n".join(parts)


def breakdown_tables(bench: str, records: list[dict]) -> list[str]:
    """Where a process's CPU went (``cpu_share_by_part``: process -> part -> share), one table per case."""
    out = []
    for r in records:
        shares = r.get("cpu_share_by_part")
        if not shares:
            continue
        roles = list(shares)
        names = sorted({part for role in roles for part in shares[role]},
                       key=lambda part: -sum(shares[role].get(part, 0) for role in roles))
        out += [f"### `{bench}`{' ' + r['case'] if r.get('case') else ''}: where the CPU goes "
                f"(share of each process's py-spy samples, at {r.get('commit', '?')})", "",
                "| part | " + " | ".join(roles) + " |", "|---|" + "---|" * len(roles)]
        out += [f"| {name} | " + " | ".join(f"{shares[role].get(name, 0):.0%}" for role in roles) + " |"
                for name in names]
        out.append("")
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("files", nargs="*", type=Path, help="JSON-line files (default: bench/results/*.jsonl)")
    parser.add_argument("--docs", type=Path, default=HERE.parent / "docs", help="where benchmarks.md goes")
    args = parser.parse_args(argv)
    files = args.files or sorted((HERE / "results").glob("*.jsonl"))
    latest = read_lines(files)
    if not latest:
        print(f"error: no benchmark JSON lines in {', '.join(map(str, files)) or 'bench/results/'}; run a "
              f"benchmark with `| tee -a bench/results/NAME.jsonl` first.", file=sys.stderr)
        return 2
    charts = args.docs / "bench"
    for bench, records in latest.items():
        chart(bench, records, charts / f"{bench}.png")
    (args.docs / "benchmarks.md").write_text(markdown(latest, charts))
    print(f"wrote {args.docs / 'benchmarks.md'} and {len(latest)} chart(s) in {charts}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
