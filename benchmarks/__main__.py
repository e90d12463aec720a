"""``python -m benchmarks``: run every benchmark, print tables, write results and the docs section.

Full mode writes ``benchmarks/results/latest.json`` and regenerates the
results section of ``docs/benchmarks.md``. ``--quick`` is a smoke run with
fewer iterations: it writes ``benchmarks/results/quick.json`` and
``benchmarks/results/quick.md`` and leaves the docs alone, so published
figures always come from a full run. ``--only NAME`` runs some benchmarks and
merges them into the existing results file.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from types import ModuleType

from rich.console import Console

from . import (
    bench_burst,
    bench_codec,
    bench_cold_start,
    bench_lifecycle,
    bench_llm,
    bench_outage,
    bench_projections,
    bench_publish,
    bench_rag,
    bench_replay,
    bench_resume,
    bench_server,
    bench_services,
    bench_static,
    bench_steps,
    bench_suspended_memory,
    bench_takeover,
    bench_viewer,
)
from .harness import (
    BenchContext,
    BenchResult,
    Figure,
    busy_between,
    load_average,
    machine_description,
    system_cpu,
    utc_now,
)
from .report import (
    load_results,
    markdown_section,
    merge_results,
    results_json,
    rich_headlines,
    rich_table,
    update_docs,
)

BENCHMARKS: dict[str, ModuleType] = {
    module.NAME: module
    for module in (
        bench_publish,
        bench_steps,
        bench_cold_start,
        bench_replay,
        bench_codec,
        bench_resume,
        bench_suspended_memory,
        bench_takeover,
        bench_projections,
        bench_static,
        bench_services,
        bench_outage,
        bench_burst,
        bench_lifecycle,
        bench_llm,
        bench_rag,
        bench_server,
        bench_viewer,
    )
}
REPO = Path(__file__).resolve().parent.parent
RESULTS_DIR = Path(__file__).resolve().parent / "results"
DOCS = REPO / "docs" / "benchmarks.md"


def _parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer iterations: a smoke run (about a minute)")
    parser.add_argument(
        "--only",
        action="append",
        choices=list(BENCHMARKS),
        metavar="NAME",
        help=f"run only this benchmark (repeatable): {', '.join(BENCHMARKS)}",
    )
    parser.add_argument("--list", action="store_true", help="list the benchmarks and exit")
    parser.add_argument("--no-write", action="store_true", help="print only; write no results file or docs")
    parser.add_argument(
        "--render",
        action="store_true",
        help="measure nothing: regenerate the docs section from benchmarks/results/latest.json",
    )
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = _parse(argv)
    console = Console()
    if not console.is_terminal:
        console = Console(width=160)  # logs and CI: wide enough that the tables do not wrap
    if args.list:
        for name, module in BENCHMARKS.items():
            console.print(f"{name:12} {module.TITLE}")
        return 0
    if args.render:
        data = load_results(RESULTS_DIR / "latest.json")
        if data is None:
            console.print("[red]no benchmarks/results/latest.json to render; run `python -m benchmarks` first[/]")
            return 1
        rendered = [
            BenchResult.from_json(data["benchmarks"][name]) for name in BENCHMARKS if name in data["benchmarks"]
        ]
        update_docs(DOCS, markdown_section(data["machine"], rendered, data["generated_at"]))
        console.print(f"regenerated the results section of {DOCS.relative_to(REPO)} from latest.json")
        return 0
    # Every benchmark configures its own server; settings from the environment must not leak in.
    for key in [key for key in os.environ if key.startswith("AETHERGRAPH_")]:
        del os.environ[key]

    names = args.only or list(BENCHMARKS)
    suite_started = time.perf_counter()

    def say(message: str) -> None:
        console.print(f"  [dim]{time.perf_counter() - suite_started:6.1f}s[/] {message}", highlight=False)

    ctx = BenchContext(quick=args.quick, say=say)
    console.print(f"[bold]AetherGraph benchmarks[/] — {ctx.mode} mode: {', '.join(names)}")
    machine = machine_description(REPO)
    console.print(
        f"[dim]{machine['cpu_model']}, {machine['cores']} cores, Python {machine['python']}, "
        f"nats-server {machine['nats_server']}, nats-py {machine['nats_py']}, msgspec {machine['msgspec']}[/]"
    )

    results: list[BenchResult] = []
    failures: list[str] = []
    for position, name in enumerate(names, 1):
        module = BENCHMARKS[name]
        console.rule(f"[{position}/{len(names)}] {module.TITLE}")
        started = time.perf_counter()
        load_before = load_average()
        cpu_before = system_cpu()
        runner: Callable[[BenchContext], tuple[list[Figure], list[str]]] = module.run
        try:
            figures, notes = runner(ctx)
        except Exception as exc:  # noqa: BLE001 - report, keep the other benchmarks going
            console.print_exception()
            failures.append(f"{name}: {exc!r}")
            continue
        result = BenchResult(
            name=name,
            title=module.TITLE,
            mode=ctx.mode,
            measured_at=utc_now(),
            duration_s=time.perf_counter() - started,
            figures=figures,
            notes=notes,
            load_avg=[load_before, load_average()],
            cpu=busy_between(cpu_before, system_cpu()),
        )
        results.append(result)
        console.print(rich_table(result))

    generated_at = utc_now()
    stem = "quick" if args.quick else "latest"
    json_path = RESULTS_DIR / f"{stem}.json"
    all_results = merge_results(load_results(json_path), machine, results, list(BENCHMARKS))
    console.rule("Summary")
    console.print(rich_headlines(all_results))
    if not args.no_write and results:
        RESULTS_DIR.mkdir(parents=True, exist_ok=True)
        json_path.write_text(json.dumps(results_json(machine, all_results, generated_at), indent=2) + "\n")
        section = markdown_section(machine, all_results, generated_at)
        if args.quick:
            md_path = RESULTS_DIR / "quick.md"
            md_path.write_text(section)
            console.print(f"wrote {json_path.relative_to(REPO)} and {md_path.relative_to(REPO)} (docs untouched)")
        else:
            update_docs(DOCS, section)
            console.print(f"wrote {json_path.relative_to(REPO)} and the results section of {DOCS.relative_to(REPO)}")
    console.print(f"total {time.perf_counter() - suite_started:.0f} s")
    if failures:
        console.print("[red]failed:[/] " + "; ".join(failures))
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
