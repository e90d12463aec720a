"""Summaries over repeats, ratios to the best durable peer, the target check, and the docs section."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from ..harness import median
from .runner import PEERS

START = "<!-- peers:start -->"
END = "<!-- peers:end -->"
TARGET_SPEEDUP = 5.0
TARGET_FLOOR_RATIO = 1.5
FLOOR_RATIOS = {
    "per_step_over_floor": "durable step / one JetStream ack (means: workflow / 200 vs 200 acks / 200)",
    "step_p50_over_floor_p50": "durable step / one JetStream ack (p50s: each step timed in the graph)",
}


@dataclass(frozen=True)
class Metric:
    key: str
    label: str
    unit: str
    better: Literal["lower", "higher"] | None  # None: a count or a fact, no ratio
    headline: bool = False  # compared with the best durable peer in the target check


METRICS: dict[str, list[Metric]] = {
    "W1": [
        Metric("per_step_us", "per step", "µs", "lower", headline=True),
        Metric("steps_per_s", "steps/s", "", "higher"),
        Metric("floor_mean_us", "one JetStream ack, same run: mean", "µs", None),
        Metric("per_step_over_floor", "per step / ack mean", "", None),
        Metric("step_p50_us", "step timed in the graph: p50", "µs", None),
        Metric("floor_us", "ack p50", "µs", None),
        Metric("step_p50_over_floor_p50", "step p50 / ack p50", "", None),
    ],
    "W2": [
        Metric("run_ms", "50 parallel + reduce", "ms", "lower", headline=True),
        Metric("steps_per_s", "steps/s", "", "higher"),
        Metric("static_run_ms", "the same as a `@graphify` static graph", "ms", None),
    ],
    "W3": [
        Metric("workflows_per_s", "workflows/s", "", "higher", headline=True),
        Metric("steps_per_s", "steps/s", "", "higher"),
        Metric("wall_s", "all 200 done", "s", "lower"),
    ],
    "W4": [
        Metric("rss_suspended_mib", "RSS, all suspended", "MiB", "lower"),
        Metric("rss_per_workflow_kib", "RSS per suspended workflow", "KiB", "lower"),
        Metric("single_p50_ms", "one resume p50", "ms", "lower", headline=True),
        Metric("single_p99_ms", "one resume p99", "ms", "lower"),
        Metric("burst_p50_ms", "burst resume p50", "ms", "lower"),
        Metric("burst_p99_ms", "burst resume p99", "ms", "lower"),
        Metric("burst_total_s", "burst total", "s", "lower", headline=True),
        Metric("suspend_per_s", "suspended/s", "", "higher"),
    ],
    "W5": [
        Metric("restart_to_done_ms", "restart -> done", "ms", "lower", headline=True),
        Metric("ready_to_done_ms", "ready -> done", "ms", "lower"),
        Metric("rerun_steps_1_to_kill", "steps 1..100 re-run", "", None),
        Metric("rerun_in_flight", "step 101 re-run", "", None),
        Metric("restart_to_done_new_id_ms", "restart -> done, new worker id", "ms", None),
    ],
}


def sizes_text(name: str, sizes: dict[str, int]) -> str:
    """What the workload did, with the sizes of this run."""
    held, single, other = sizes["held"], sizes["single"], sizes["other"]
    return {
        "W1": f"one workflow of {sizes['steps']} sequential no-op steps (`x -> x + 1`); per step = whole workflow "
        f"/ {sizes['steps']}, median of {sizes['seq_runs']} workflows per repeat",
        "W2": f"one workflow: {sizes['width']} no-op steps in parallel, then one reduce step over their outputs; "
        f"median of {sizes['fanout_runs']} workflows per repeat",
        "W3": f"{sizes['workflows']} workflows of {sizes['wf_steps']} sequential no-op steps, all started together "
        "in one process",
        "W4": f"{held:,} workflows suspended on an external event; {single} resumed one at a time (one resume), "
        f"the next {held - single - other:,} all at once (burst), the last {other} by another process after the "
        "first one exited. Latency: resume issued -> the workflow's completion seen by the resuming process",
        "W5": f"a {sizes['steps']}-step workflow whose process is killed with SIGKILL inside step "
        f"{sizes['kill_at'] + 1} (steps 1..{sizes['kill_at']} completed); at once a fresh process finishes it. "
        "restart -> done includes the new interpreter's start and imports; ready -> done starts once the "
        "peer's runtime is open",
    }[name]


def summarise(samples: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """``{metric: {median, min, max, per_repeat}}`` over the repeats' samples (numbers only)."""
    out: dict[str, dict[str, Any]] = {}
    keys = {key for sample in samples for key, value in sample.items() if isinstance(value, int | float)}
    for key in sorted(keys):
        values = [float(sample[key]) for sample in samples if isinstance(sample.get(key), int | float)]
        out[key] = {"median": median(values), "min": min(values), "max": max(values), "per_repeat": values}
    return out


def best_durable(workload: dict[str, Any], metric: Metric, exclude: tuple[str, ...] = ()) -> tuple[str, float] | None:
    """The durable peer with the best median of ``metric`` (``exclude``: peers left out)."""
    best: tuple[str, float] | None = None
    for key, data in workload["peers"].items():
        peer = PEERS.get(key)
        figure = data.get("summary", {}).get(metric.key)
        if peer is None or not peer.durable or key in exclude or figure is None:
            continue
        value = figure["median"]
        if best is None or (value < best[1] if metric.better == "lower" else value > best[1]):
            best = (key, value)
    return best


def ratio_to(metric: Metric, value: float, reference: float) -> float:
    """How many times worse than ``reference`` (1.0 = as good; below 1 = better)."""
    if reference == 0 or value == 0:
        return float("nan")
    return value / reference if metric.better == "lower" else reference / value


def target_checks(results: dict[str, Any]) -> list[dict[str, Any]]:
    """AetherGraph (default sync) against the best other durable peer on every headline figure."""
    checks = []
    others = ("aethergraph", "aethergraph_always")
    for name, workload in results["workloads"].items():
        ours = workload["peers"].get("aethergraph", {}).get("summary", {})
        for metric in METRICS.get(name, []):
            if not metric.headline or metric.key not in ours:
                continue
            best = best_durable(workload, metric, exclude=others)
            if best is None:
                continue
            speedup = 1 / ratio_to(metric, ours[metric.key]["median"], best[1])
            checks.append(
                {
                    "workload": name,
                    "metric": metric.key,
                    "aethergraph": ours[metric.key]["median"],
                    "best_peer": best[0],
                    "best_peer_value": best[1],
                    "speedup": speedup,
                    "target": TARGET_SPEEDUP if name in ("W1", "W3", "W4", "W5") else None,
                }
            )
    w1 = results["workloads"].get("W1", {}).get("peers", {})
    for key in others:
        for metric in FLOOR_RATIOS:
            ratio = w1.get(key, {}).get("summary", {}).get(metric)
            if not ratio:
                continue
            checks.append(
                {
                    "workload": "W1",
                    "metric": metric,
                    "peer": key,
                    "ratio": ratio["median"],
                    "target": TARGET_FLOOR_RATIO,
                }
            )
    return checks


# --- markdown ------------------------------------------------------------------------------


def fmt(value: float) -> str:
    if value != value:  # nan
        return "-"
    magnitude = abs(value)
    if magnitude >= 1000:
        return f"{value:,.0f}"
    if magnitude >= 100:
        return f"{value:.0f}"
    if magnitude >= 10:
        return f"{value:.1f}"
    if magnitude >= 0.1:
        return f"{value:.2f}"
    return f"{value:.3g}"


def _cell(figure: dict[str, Any] | None, metric: Metric, best: tuple[str, float] | None) -> str:
    if figure is None:
        return "n/a"
    if metric.better is None and all(float(value).is_integer() for value in figure["per_repeat"]):
        low, high = int(figure["min"]), int(figure["max"])
        return f"{int(figure['median'])}" + (f" ({low}-{high})" if low != high else "")
    text = fmt(figure["median"])
    if figure["min"] != figure["max"]:
        text += f" ({fmt(figure['min'])}-{fmt(figure['max'])})"
    if metric.better and best is not None:
        text += f" · {fmt(ratio_to(metric, figure['median'], best[1]))}x"
    return text


def _settings_text(settings: dict[str, Any]) -> str:
    return ", ".join(f"{key} {value}" for key, value in settings.items())


def workload_table(name: str, workload: dict[str, Any]) -> list[str]:
    metrics = [
        metric
        for metric in METRICS[name]
        if any(metric.key in d.get("summary", {}) for d in workload["peers"].values())
    ]
    head = "| peer | " + " | ".join(f"{m.label} ({m.unit})" if m.unit else m.label for m in metrics) + " |"
    lines = [head, "|---" * (len(metrics) + 1) + "|"]
    bests = {metric.key: best_durable(workload, metric) for metric in metrics}
    for key, data in workload["peers"].items():
        label = PEERS[key].label if key in PEERS else key
        if "error" in data:
            lines.append(f"| {label} | " + " | ".join(["failed"] * len(metrics)) + " |")
            continue
        summary = data.get("summary", {})
        cells = [_cell(summary.get(metric.key), metric, bests[metric.key]) for metric in metrics]
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return lines


def _w4_other(workload: dict[str, Any]) -> list[str]:
    lines = ["", "Another process resuming workflows the first process left suspended (after it exited):", ""]
    for key, data in workload["peers"].items():
        summary = data.get("summary", {})
        ok = summary.get("other_process_ok")
        of = summary.get("other_process_of")
        label = PEERS[key].label if key in PEERS else key
        if ok is None:
            continue
        if ok["median"] == 0:
            note = data.get("other_note") or "not possible"
            lines.append(f"* {label}: **no**: {note}.")
        else:
            p50 = summary.get("other_p50_ms")
            when = f", {fmt(p50['median'])} ms each at p50" if p50 else ""
            note = f" ({data['other_note']})" if data.get("other_note") else ""
            lines.append(f"* {label}: yes, {int(ok['min'])} of {int(of['median'])} in every repeat{when}{note}.")
    return lines


def markdown(results: dict[str, Any]) -> str:
    machine = results["machine"]
    out = [
        START,
        "",
        f"Generated by `python -m benchmarks.peers` ({results['mode']} mode), last written {results['generated_at']}; "
        f"{results['repeats']} repeat(s) per figure after a warm-up, peers interleaved and taking turns going "
        "first. When and under what load each workload was measured is under its heading.",
        "",
        f"Machine: {machine['cpu_model']}, {machine['cores']} cores, {machine['ram_gib']} GiB RAM, "
        f"{machine['os']}, Python {machine['python']}, filesystem of the databases and JetStream store: "
        f"{machine['workspace_filesystem']}; nats-server {machine['nats_server']}, nats-py {machine['nats_py']}; "
        f"aethergraph at {machine['aethergraph_commit']}; "
        + ", ".join(f"{dist} {version}" for dist, version in results["peer_versions"].items())
        + ". The machine is shared with other work (other engineers' builds and benchmarks ran at the same "
        "time): expect wide min-max ranges, and compare peers within a repeat rather than across runs.",
        "",
        "Each cell: median (min-max) over the repeats · ratio to the best durable peer on that column "
        "(1.00x = the best; for the asyncio baseline, below 1 = faster than every durable peer).",
        "",
        "Durability settings (read back from each peer during the run):",
        "",
    ]
    for key, settings in results["settings"].items():
        label = PEERS[key].label if key in PEERS else key
        out.append(f"* {label}: {_settings_text(settings)}")
    for name, workload in results["workloads"].items():
        out += ["", f"### {name} {workload['title']}", "", sizes_text(name, results["sizes"]) + ".", ""]
        if workload.get("measured_at"):
            load = workload["load_avg"]
            out += [
                f"Measured {workload['measured_at']}; 1-minute load average {load[0]} -> {load[1]}, "
                f"all cores {workload['cpu'].get('busy_pct', '?')}% busy.",
                "",
            ]
        out += workload_table(name, workload)
        if name == "W4":
            out += _w4_other(workload)
        errors = [
            f"* {PEERS[key].label}: {data['error']}" for key, data in workload["peers"].items() if "error" in data
        ]
        if errors:
            out += ["", "Failures:", "", *errors]
    checks = target_checks(results)
    if checks:
        out += [
            "",
            "### Against the targets",
            "",
            "| workload | figure | AetherGraph | best other durable peer | AetherGraph is | target |",
            "|---|---|---|---|---|---|",
        ]
        for check in checks:
            if "speedup" in check:
                target = f"≥{check['target']:.0f}x faster" if check["target"] else "-"
                verdict = (
                    "met"
                    if check["target"] and check["speedup"] >= check["target"]
                    else ("missed" if check["target"] else "")
                )
                out.append(
                    f"| {check['workload']} | {check['metric']} | {fmt(check['aethergraph'])} | "
                    f"{PEERS[check['best_peer']].label}: {fmt(check['best_peer_value'])} | "
                    f"{fmt(check['speedup'])}x {'faster' if check['speedup'] >= 1 else 'as fast (slower)'} | "
                    f"{target} {verdict} |"
                )
            else:
                verdict = "met" if check["ratio"] <= check["target"] else "missed"
                out.append(
                    f"| W1 | {FLOOR_RATIOS[check['metric']]} | {PEERS[check['peer']].label}: {fmt(check['ratio'])}x "
                    f"| - | - | ≤{check['target']}x {verdict} |"
                )
    out += ["", END]
    return "\n".join(out) + "\n"


def update_docs(path: Path, section: str) -> None:
    text = path.read_text()
    if START in text and END in text:
        text = re.sub(re.escape(START) + r".*?" + re.escape(END) + r"\n?", lambda _: section, text, flags=re.S)
    else:
        text = text.rstrip("\n") + "\n\n" + section
    path.write_text(text)
