"""``python -m benchmarks.faults``: the fault suite at a larger size, several trials per fault, one table.

Each trial is one ``run_trial`` of ``tests/faults/harness.py`` (its own
nats-server, worker and driver processes, one fault while graph_fn chains and
a static fan-out progress, then the checks from outside; see that module).
The table counts, per fault and sync policy: runs, runs completed with the
right outputs, stuck runs (no end in their journal chain), steps the body saw
committed that are missing from the journal, and committed steps executed
again. Full mode writes ``benchmarks/results/faults.json`` and regenerates the
fault section of ``docs/benchmarks.md`` (between the ``faults:start`` /
``faults:end`` markers); ``--quick`` runs one small trial per row, writes
``benchmarks/results/faults-quick.json`` and leaves the docs alone.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import sys
import tempfile
import time
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

from .harness import load_average, machine_description, utc_now

REPO = Path(__file__).resolve().parent.parent
RESULTS = REPO / "benchmarks" / "results"
DOCS = REPO / "docs" / "benchmarks.md"
START, END = "<!-- faults:start -->", "<!-- faults:end -->"

sys.path[:0] = [str(REPO / "tests" / "faults"), str(REPO / "tests")]
import harness as fault_harness  # noqa: E402 - tests/faults/harness.py, after its folders are on the path

# (fault, sync_interval): the rows of the table.
ROWS = [
    ("worker-kill-storm", "1s"),
    ("nats-server-restart", "1s"),
    ("nats-server-restart", "always"),
    ("stray-messages", "1s"),
    ("driver-paused-past-lease", "1s"),
    ("everything-at-once", "1s"),
]
FULL = fault_harness.Size(
    chains=6, steps=12, step_sleep_s=0.25, fans=1, fan_width=16, fan_sleep_s=0.4, workers=3, fault_s=10.0
)
QUICK = fault_harness.Size(chains=3, steps=8, fans=1, fan_width=6, workers=2, fault_s=5.0, settle_s=45, stall_s=10)
# Per fault: what differs from the size above.
TWEAKS: dict[str, dict[str, Any]] = {
    "worker-kill-storm": {"step_sleep_s": 0.6, "fans": 2, "fan_sleep_s": 2.0},
    "nats-server-restart": {
        "chains": 6,
        "steps": 300,
        "step_sleep_s": 0.02,
        "workers": 1,
        "server_kills": 8,
        "server_gap_s": (0.5, 1.0),
    },
    "stray-messages": {
        "step_sleep_s": 0.8,
        "fan_sleep_s": 4.0,
        "workers": 2,
    },  # the runs outlast the 10 s of stray messages
    "driver-paused-past-lease": {"workers": 2},
    "everything-at-once": {"steps": 80, "step_sleep_s": 0.1, "fan_sleep_s": 2.0, "server_kills": 5},
}


def _parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.faults", description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="one small trial per row; leaves the docs alone")
    parser.add_argument("--trials", type=int, default=None, help="trials per row (default 3; quick 1)")
    parser.add_argument(
        "--only",
        action="append",
        choices=sorted({f for f, _ in ROWS}),
        help="run only this fault (merged into the results)",
    )
    parser.add_argument("--no-write", action="store_true", help="print only")
    parser.add_argument("--render", action="store_true", help="regenerate the docs section from faults.json")
    return parser.parse_args(argv)


async def measure(args: argparse.Namespace) -> dict[str, Any]:
    trials = args.trials or (1 if args.quick else 3)
    base = QUICK if args.quick else FULL
    rows: list[dict[str, Any]] = []
    commit = machine_description(REPO)["aethergraph_commit"]
    with tempfile.TemporaryDirectory(prefix="ag-faults-") as tmp:
        for fault, sync_interval in ROWS:
            if args.only and fault not in args.only:
                continue
            size = replace(base, **TWEAKS.get(fault, {}))
            load_before = load_average()
            merged: fault_harness.Report | None = None
            for trial in range(trials):
                root = Path(tmp) / f"{fault}-{sync_interval}-{trial}"
                report = await fault_harness.run_trial(
                    fault, root, size=size, sync_interval=sync_interval, seed=1000 + trial
                )
                print(f"  {report.summary()}\n", flush=True)
                if merged is None:
                    merged = report
                else:
                    merged.merge(report)
            assert merged is not None
            rows.append(
                {
                    **asdict(merged),
                    "size": asdict(size),
                    "commit": commit,
                    "load_before": load_before,
                    "load_after": load_average(),
                }
            )
    return {
        "written": utc_now(),
        "mode": "quick" if args.quick else "full",
        "trials_per_row": trials,
        "machine": machine_description(REPO),
        "rows": rows,
    }


def _cell(items: list[str]) -> str:
    return str(len(items))


def table(results: dict[str, Any]) -> str:
    lines = [
        "| fault | sync_interval | trials | runs | completed | stuck | committed-but-missing steps | "
        "re-executed committed steps | over-executed steps | stray executions | driver errors |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for row in results["rows"]:
        lines.append(
            f"| {row['fault']} | {row['sync_interval']} | {row['trials']} | {row['runs']} | {row['completed']} | "
            f"{_cell(row['stuck'])} | {_cell(row['missing'])} | {_cell(row['reexecuted'])} | "
            f"{_cell(row['over_executed'])} | {_cell(row['stray_executions'])} | {_cell(row['driver_errors'])} |"
        )
    return "\n".join(lines)


def _first(items: list[str], limit: int = 2) -> list[str]:
    return [item if len(item) < 400 else item[:400] + "..." for item in items[:limit]]


def markdown(results: dict[str, Any]) -> str:
    m = results["machine"]
    out = [
        START,
        "",
        f"Generated by `python -m benchmarks.faults` ({results['mode']} mode), last written {results['written']}; "
        f"{results['trials_per_row']} trial(s) per row.",
        "",
        f"Machine: {m.get('cpu_model')}, {m.get('cores')} cores, {m.get('ram_gib')} GiB RAM, {m.get('os')}, "
        f"Python {m.get('python')}, nats-server {m.get('nats_server')}, nats-py {m.get('nats_py')}; "
        f"aethergraph at {m.get('aethergraph_commit')}; JetStream store on {m.get('workspace_filesystem')}. "
        "The sync policy (the server's JetStream `sync_interval`) is the second column; the lease is 1 s "
        "(`AETHERGRAPH_LEASE_S`), a node's ack wait 3 s.",
        "",
        table(results),
        "",
        "What each row saw (the first stuck runs and problems of each kind, from the trials' reports):",
        "",
    ]
    for row in results["rows"]:
        out.append(
            f"* **{row['fault']}, sync_interval {row['sync_interval']}**: {row['executions']} step executions, "
            f"{row['takeovers']} takeovers (`run.claimed`), {row['seconds']:.0f} s, aethergraph at "
            f"{row.get('commit', '?')}:"
        )
        problems = [
            *(f"stuck: {s}" for s in _first(row["stuck"])),
            *(f"failed: {s}" for s in _first(row["failed"])),
            *(f"committed-but-missing: {s}" for s in _first(row["missing"])),
            *(f"re-executed: {s}" for s in _first(row["reexecuted"])),
            *(f"over-executed: {s}" for s in _first(row["over_executed"])),
            *(f"stray execution: {s}" for s in _first(row["stray_executions"])),
            *(f"driver: {s}" for s in _first(row["driver_errors"])),
        ]
        out += [f"  * {p}" for p in problems] or ["  * no problem found"]
    out += ["", END, ""]
    return "\n".join(out)


def update_docs(path: Path, section: str) -> None:
    text = path.read_text()
    if START in text and END in text:
        text = re.sub(re.escape(START) + r".*?" + re.escape(END) + r"\n?", lambda _: section, text, flags=re.S)
    else:
        text = text.rstrip("\n") + "\n\n" + section
    path.write_text(text)


def main(argv: list[str] | None = None) -> int:
    args = _parse(argv)
    out = RESULTS / ("faults-quick.json" if args.quick else "faults.json")
    if args.render:
        results = json.loads((RESULTS / "faults.json").read_text())
    else:
        started = time.perf_counter()
        results = asyncio.run(measure(args))
        print(f"measured in {time.perf_counter() - started:.0f}s")
    if args.only and out.exists() and not args.render:  # merge into the rows measured before
        measured = {(r["fault"], r["sync_interval"]) for r in results["rows"]}
        kept = [r for r in json.loads(out.read_text())["rows"] if (r["fault"], r["sync_interval"]) not in measured]
        order = {row: i for i, row in enumerate(ROWS)}
        results["rows"] = sorted(kept + results["rows"], key=lambda r: order[(r["fault"], r["sync_interval"])])
    print(table(results))
    if not args.no_write and not args.render:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(results, indent=1) + "\n")
    if not args.no_write and not args.quick:
        update_docs(DOCS, markdown(results))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
