"""``python -m benchmarks.peers``: AetherGraph against LangGraph, DBOS and plain asyncio on workloads W1-W5.

Full mode writes ``benchmarks/results/peers.json`` and regenerates the peers
section of ``docs/benchmarks.md`` (between the ``peers:start`` / ``peers:end``
markers). ``--quick`` is a smoke run (one repeat, smaller W4) that writes
``benchmarks/results/peers-quick.json`` and ``peers-quick.md`` and leaves the
docs alone. ``--only W1`` (repeatable) runs some workloads and merges them
into the existing results; ``--peer NAME`` (repeatable) picks peers.
The LangGraph and DBOS venvs are created from PyPI on first use, in
``benchmarks/peers/.venvs/``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import traceback
from pathlib import Path
from typing import Any

from ..harness import busy_between, load_average, machine_description, rotate, system_cpu, utc_now
from .report import markdown, summarise, target_checks, update_docs
from .runner import FULL, PEERS, QUICK, WORKLOADS, PeerError, interpreter, run_repeat
from .venvs import pinned_versions

REPO = Path(__file__).resolve().parent.parent.parent
RESULTS = REPO / "benchmarks" / "results"
DOCS = REPO / "docs" / "benchmarks.md"
FULL_REPEATS = 5
# W5 pays a process start (imports from a cold page cache the first time): one discarded repeat first.
DISCARD_FIRST = ("W5",)


def _parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.peers", description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="smoke run: one repeat, 100 suspended workflows in W4")
    parser.add_argument("--only", action="append", choices=list(WORKLOADS), help="run only this workload (repeatable)")
    parser.add_argument("--peer", action="append", choices=list(PEERS), help="run only this peer (repeatable)")
    parser.add_argument(
        "--repeats", type=int, default=None, help=f"repeats per figure (default {FULL_REPEATS}; quick 1)"
    )
    parser.add_argument("--no-write", action="store_true", help="print only")
    parser.add_argument("--render", action="store_true", help="regenerate the docs section from peers.json")
    return parser.parse_args(argv)


def _say(started: float, message: str) -> None:
    print(f"  {time.perf_counter() - started:7.1f}s {message}", flush=True)


def _show(name: str, key: str, summary: dict[str, Any]) -> None:
    shown = ", ".join(f"{metric} {figure['median']:.4g}" for metric, figure in summary.items())
    print(f"    {name} {key}: {shown}", flush=True)


def measure(args: argparse.Namespace) -> dict[str, Any]:
    started = time.perf_counter()
    sizes = QUICK if args.quick else FULL
    repeats = args.repeats or (1 if args.quick else FULL_REPEATS)
    peers = [PEERS[key] for key in (args.peer or list(PEERS))]
    workloads = args.only or list(WORKLOADS)
    for key in [key for key in os.environ if key.startswith("AETHERGRAPH_")]:
        del os.environ[key]
    pythons = {peer.key: interpreter(peer) for peer in peers}  # venvs are created before anything is timed
    load_before, cpu_before = load_average(), system_cpu()
    results: dict[str, Any] = {"workloads": {}, "settings": {}}
    for name in workloads:
        title, _ = WORKLOADS[name]
        print(f"\n== {name} {title} ==", flush=True)
        workload_load, workload_cpu = load_average(), system_cpu()
        samples: dict[str, list[dict[str, Any]]] = {peer.key: [] for peer in peers}
        extras: dict[str, dict[str, Any]] = {peer.key: {} for peer in peers}
        errors: dict[str, str] = {}
        rounds = repeats + (1 if name in DISCARD_FIRST and not args.quick else 0)
        for index in range(rounds):
            for peer in rotate(peers, index):
                if peer.key in errors:
                    continue
                _say(started, f"{name} repeat {index + 1}/{rounds}: {peer.key}")
                try:
                    out = run_repeat(peer, pythons[peer.key], name, sizes)
                except (PeerError, OSError, TimeoutError, KeyError, ValueError, AssertionError) as exc:
                    traceback.print_exc()
                    errors[peer.key] = str(exc).splitlines()[0][:300]
                    continue
                if rounds > repeats and index == 0:
                    continue  # the discarded first repeat
                samples[peer.key].append(out["sample"])
                results["settings"].setdefault(peer.key, out["settings"])
                if out.get("other_note"):
                    extras[peer.key]["other_note"] = out["other_note"]
        workload: dict[str, Any] = {
            "title": title,
            "peers": {},
            "measured_at": utc_now(),
            "load_avg": [workload_load, load_average()],
            "cpu": busy_between(workload_cpu, system_cpu()),
        }
        for peer in peers:
            if peer.key in errors:
                workload["peers"][peer.key] = {"error": errors[peer.key]}
                continue
            summary = summarise(samples[peer.key])
            workload["peers"][peer.key] = {"summary": summary, "samples": samples[peer.key], **extras[peer.key]}
            _show(name, peer.key, {k: v for k, v in summary.items() if not k.startswith("other")})
        results["workloads"][name] = workload
    versions: dict[str, str] = {}
    for peer in peers:
        if peer.venv:
            pins = pinned_versions(peer.venv)
            wanted = ("langgraph", "langgraph-checkpoint-sqlite", "langgraph-checkpoint", "dbos", "sqlalchemy")
            versions.update({dist: pins[dist] for dist in wanted if dist in pins})
    results.update(
        generated_at=utc_now(),
        mode="quick" if args.quick else "full",
        repeats=repeats,
        sizes=vars(sizes),
        machine=machine_description(REPO),
        peer_versions=versions,
        load_avg=[load_before, load_average()],
        cpu=busy_between(cpu_before, system_cpu()),
        duration_s=time.perf_counter() - started,
    )
    results["targets"] = target_checks(results)
    return results


def merge(previous: dict[str, Any] | None, new: dict[str, Any]) -> dict[str, Any]:
    """Workloads of ``new`` over those of ``previous`` (an ``--only`` run), when both are full runs."""
    if not previous or previous.get("mode") != new["mode"]:
        return new
    merged = dict(new)
    merged["workloads"] = {**previous.get("workloads", {}), **new["workloads"]}
    merged["workloads"] = {name: merged["workloads"][name] for name in WORKLOADS if name in merged["workloads"]}
    merged["settings"] = {**previous.get("settings", {}), **new["settings"]}
    merged["targets"] = target_checks(merged)
    return merged


def main(argv: list[str] | None = None) -> int:
    args = _parse(argv)
    json_path = RESULTS / ("peers-quick.json" if args.quick else "peers.json")
    if args.render:
        data = json.loads((RESULTS / "peers.json").read_text())
        update_docs(DOCS, markdown(data))
        print(f"regenerated the peers section of {DOCS.relative_to(REPO)}")
        return 0
    results = measure(args)
    previous = json.loads(json_path.read_text()) if args.only and json_path.exists() else None
    results = merge(previous, results)
    section = markdown(results)
    print("\n" + section)
    if args.no_write:
        return 0
    RESULTS.mkdir(parents=True, exist_ok=True)
    json_path.write_text(json.dumps(results, indent=2) + "\n")
    if args.quick:
        (RESULTS / "peers-quick.md").write_text(section)
        print(f"wrote {json_path.relative_to(REPO)} and benchmarks/results/peers-quick.md (docs untouched)")
    else:
        update_docs(DOCS, section)
        print(f"wrote {json_path.relative_to(REPO)} and the peers section of {DOCS.relative_to(REPO)}")
    failed = [
        name for name, workload in results["workloads"].items() if any("error" in d for d in workload["peers"].values())
    ]
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
