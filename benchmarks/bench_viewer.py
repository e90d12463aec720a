"""19. Run viewer: the run page of a 10,000-event run rendered in headless Chromium."""

from __future__ import annotations

import json
import threading
import urllib.request
from pathlib import Path
from typing import Any

from aethergraph.testing.browser import Browser, find_chromium

from .harness import DEFAULT_SYNC, BenchContext, Figure, isolated_server, temp_workspace, value_figure
from .processes import Proc, poll, process_env, spawn

NAME = "viewer"
TITLE = "19. Run viewer"

STEPS = 3333  # three events per step, plus run.started, run.claimed and run.completed: 10,002 events
GRAPHS = Path(__file__).resolve().parent / "graphs_viewer.py"


def _api(url: str, method: str, path: str, body: Any = None) -> Any:
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(url.rstrip("/") + path, data=data, method=method)
    request.add_header("Content-Type", "application/json")
    with urllib.request.urlopen(request, timeout=120) as response:
        return json.loads(response.read())


def _start_server(nats_url: str, scratch: Path) -> tuple[Proc, str]:
    """``aethergraph dev benchmarks/graphs_viewer.py --port 0``: its process and the URL it printed."""
    env = process_env(nats_url, scratch / "dev-workspace")
    proc = spawn(["-m", "aethergraph", "dev", str(GRAPHS), "--port", "0"], env, scratch / "dev.log", stdout_pipe=True)
    first: list[str] = []
    stdout = proc.process.stdout
    reader = threading.Thread(target=lambda: first.append(stdout.readline() if stdout else ""))
    reader.start()
    reader.join(120)
    if not first or " at http" not in first[0]:
        proc.stop()
        raise RuntimeError(f"aethergraph dev did not print its URL; its log ends with:\n{proc.log_text()[-3000:]}")
    return proc, first[0].rsplit(" at ", 1)[1].strip()


def _long_run(url: str) -> tuple[str, int]:
    run_id = str(_api(url, "POST", "/api/runs", {"graph": "bench_viewer_long", "inputs": {"n": STEPS}})["run_id"])

    def ended() -> int | None:
        detail = _api(url, "GET", f"/api/runs/{run_id}")
        if detail["status"] in ("failed", "cancelled"):
            raise RuntimeError(f"the benchmark's run {run_id} {detail['status']}: {detail.get('error')}")
        return int(detail["events"]) if detail["status"] == "succeeded" else None

    return run_id, poll(ended, timeout_s=600, what="the 10,000-event run to finish", interval_s=0.5)


def _page_timings(url: str, run_id: str, repeats: int, say: Any) -> list[dict[str, float]]:
    """Open the run page ``repeats`` times (cache off, a fresh document each time): the page's own timings."""
    timings = []
    with Browser.launch() as browser:
        page = browser.new_page()
        page.send("Network.enable")
        page.send("Network.setCacheDisabled", {"cacheDisabled": True})
        for repeat in range(repeats + 1):
            page.goto("about:blank")
            page.goto(f"{url}#/runs/{run_id}")
            page.wait_for("document.querySelector('.run-page')?.dataset.rendered === '1'", timeout_s=120)
            values = page.evaluate("window.agTimings")
            rows = page.evaluate("document.querySelectorAll('.tl-row').length")
            # The page asks for the run's detail once drawn; let that finish before the next load.
            page.wait_for("document.querySelector('.run-page')?.dataset.detail === '1'", timeout_s=120)
            if page.errors:
                raise RuntimeError(f"the run page reported errors: {page.errors}")
            if repeat == 0:
                say(f"warm-up: {values['at']:.0f} ms to render, {rows} timeline rows in the DOM")
                continue  # the first load also starts the server's feed and warms its caches
            timings.append({**values, "rows": rows})
            at, fetched, rendered = values["at"], values["fetched"], values["rendered"]
            say(
                f"repeat {repeat}: {at:.0f} ms (page code from {at - rendered:.0f} ms, "
                f"API answers {fetched:.0f} ms, fold and draw {rendered - fetched:.0f} ms)"
            )
    return timings


def run(ctx: BenchContext) -> tuple[list[Figure], list[str]]:
    if find_chromium() is None:
        raise RuntimeError("benchmark 'viewer' needs Chromium: apt-get install -y chromium (or AETHERGRAPH_CHROMIUM)")
    repeats = ctx.pick(10, 3)
    with isolated_server(DEFAULT_SYNC) as (server, _), temp_workspace("ag-bench-viewer-") as scratch:
        proc, url = _start_server(server.url, scratch)
        try:
            ctx.say(f"a run of {STEPS} steps (log, call, return each)")
            run_id, events = _long_run(url)
            ctx.say(f"run {run_id}: {events} events; opening its page {repeats} times")
            timings = _page_timings(url, run_id, repeats, ctx.say)
        finally:
            proc.stop()
    n = len(timings)
    extra = {"events": events, "timeline_rows_in_dom": max(int(t["rows"]) for t in timings)}
    figures = [
        value_figure(
            NAME,
            "run_page_10k",
            f"run page of a {events:,}-event run: navigation -> rendered",
            [t["at"] for t in timings],
            unit="ms",
            per_repeat_n=1,
            better="lower",
            sync_interval=None,
            note="target ≤1 s",
            extra=extra,
        ),
        value_figure(
            NAME,
            "run_page_load",
            "of which: the page, its CSS and modules loaded, before its code runs",
            [t["at"] - t["rendered"] for t in timings],
            unit="ms",
            per_repeat_n=1,
            better="lower",
            sync_interval=None,
        ),
        value_figure(
            NAME,
            "run_page_fetch",
            "of which: the API's answers (the events as JSON, the graphs)",
            [t["fetched"] for t in timings],
            unit="ms",
            per_repeat_n=1,
            better="lower",
            sync_interval=None,
        ),
        value_figure(
            NAME,
            "run_page_fold_draw",
            "of which: folding the events and drawing the page",
            [t["rendered"] - t["fetched"] for t in timings],
            unit="ms",
            per_repeat_n=1,
            better="lower",
            sync_interval=None,
        ),
    ]
    notes = [
        f"Headless Chromium (Debian's `chromium`, driven over the DevTools pipe) opens `#/runs/<id>` of a "
        f"finished graph_fn run of {events:,} events ({STEPS:,} steps, each a log line, a tool call and its "
        f"return) served by `aethergraph dev` on the same machine, {n} times after one warm-up, with the "
        "browser cache off and a fresh document each time. The clock runs from the navigation's start to the "
        "moment the page has drawn everything (status, inputs and outputs, the DAG, the timeline); the "
        "timeline is virtualised, so only the rows in view exist in the DOM, and the DAG draws its first 400 "
        "nodes.",
    ]
    return figures, notes
