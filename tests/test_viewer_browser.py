"""The web run viewer in headless Chromium, against a real ``aethergraph dev`` process.

The server process serves ``tests/procs/viewer_graphs.py`` on the session's nats-server; the browser is
Debian's ``chromium`` driven over the DevTools protocol (``aethergraph.testing.browser``). The tests
open the inbox, fill the form a wait's JSON Schema generates, submit it (a schema rejection first), and
watch the run page, open in another tab, show the run finish without a reload. A screenshot of the run
page is saved under ``test-artifacts/`` (``AETHERGRAPH_TEST_ARTIFACTS`` to put it elsewhere).
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import threading
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from helpers import REPO_ROOT, subprocess_env

from aethergraph.testing import FakeOpenAI, Reply
from aethergraph.testing.browser import Browser, Page, find_chromium

if find_chromium() is None:
    pytest.skip(
        "no Chromium binary: install Debian's chromium package (apt-get install -y chromium) "
        "or point AETHERGRAPH_CHROMIUM at one",
        allow_module_level=True,
    )

pytestmark = pytest.mark.slow

GRAPHS = REPO_ROOT / "tests" / "procs" / "viewer_graphs.py"
OpenPage = Callable[[str], Page]
ARTIFACTS = Path(os.environ.get("AETHERGRAPH_TEST_ARTIFACTS", REPO_ROOT / "test-artifacts"))


def start_dev_server(workspace: Path, **env: str) -> tuple[subprocess.Popen[str], str]:
    """``aethergraph dev GRAPHS --port 0`` on the session's bus; returns the process and its URL."""
    process = subprocess.Popen(
        [sys.executable, "-m", "aethergraph", "dev", str(GRAPHS), "--port", "0"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=subprocess_env(AETHERGRAPH_WORKSPACE=str(workspace), **env),
        cwd=REPO_ROOT,
    )
    first: list[str] = []
    reader = threading.Thread(target=lambda: first.append(process.stdout.readline() if process.stdout else ""))
    reader.start()
    reader.join(120)  # hang guard
    line = first[0] if first else ""
    if " at http" not in line:
        process.kill()
        _, err = process.communicate(timeout=30)
        raise AssertionError(f"aethergraph dev did not announce its URL: {line!r}\n{err}")
    return process, line.rsplit(" at ", 1)[1].strip()


def stop_dev_server(process: subprocess.Popen[str]) -> None:
    """Ctrl-C, as a user stops it; SIGKILL if it has not stopped within 30 s."""
    if process.poll() is None:
        process.send_signal(signal.SIGINT)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=30)


@pytest.fixture(scope="module")
def model() -> Iterator[FakeOpenAI]:
    """The model the dev server's runs call (``AETHERGRAPH_LLM__DEFAULT__*`` point at it)."""
    with FakeOpenAI() as fake:
        yield fake


def model_env(model: FakeOpenAI) -> dict[str, str]:
    """Every dev server's worker may take any submitted run (they share the bus): all of them get the model.

    A lease longer than the default 1 s: on a loaded machine a server busy with a browser may miss a
    heartbeat, and the other would take its run over and make a streamed call again (correct, but these
    tests are about the viewer, not takeovers).
    """
    return {
        "AETHERGRAPH_LEASE_S": "5",
        "AETHERGRAPH_LLM__DEFAULT__BASE_URL": model.base_url,
        "AETHERGRAPH_LLM__DEFAULT__API_KEY": model.api_key,
        "AETHERGRAPH_LLM__DEFAULT__MODEL": "fake-model",
    }


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, model: FakeOpenAI) -> Iterator[str]:
    process, url = start_dev_server(tmp_path_factory.mktemp("viewer-workspace"), **model_env(model))
    try:
        yield url
    finally:
        stop_dev_server(process)


TOKEN = "viewer-test-token-0123456789abcdef"


@pytest.fixture(scope="module")
def token_server(tmp_path_factory: pytest.TempPathFactory, model: FakeOpenAI) -> Iterator[str]:
    """A second server that wants ``Authorization: Bearer TOKEN`` on every API request."""
    process, url = start_dev_server(
        tmp_path_factory.mktemp("viewer-token-workspace"), AETHERGRAPH_API_TOKEN=TOKEN, **model_env(model)
    )
    try:
        yield url
    finally:
        stop_dev_server(process)


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    with Browser.launch() as chromium:
        yield chromium


@pytest.fixture
def open_page(browser: Browser) -> Iterator[OpenPage]:
    """Open tabs, closed when the test ends: every run page holds a live stream, and a browser keeps six
    connections per server (HTTP/1.1), so tabs left open would starve the next tests."""
    opened: list[Page] = []

    def open_(url: str) -> Page:
        page = browser.new_page(url)
        opened.append(page)
        return page

    yield open_
    for page in opened:
        page.close()


def api(url: str, method: str, path: str, body: Any = None, token: str | None = None) -> Any:
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(url.rstrip("/") + path, data=data, method=method)
    request.add_header("Content-Type", "application/json")
    if token:
        request.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return json.loads(response.read())
    except urllib.error.HTTPError as exc:
        raise AssertionError(f"{method} {path}: {exc.code} {exc.read().decode()}") from None


def submit(url: str, graph: str, inputs: dict[str, Any]) -> str:
    return str(api(url, "POST", "/api/runs", {"graph": graph, "inputs": inputs})["run_id"])


def js(value: Any) -> str:
    return json.dumps(value)


def fill(page: Page, scope: str, path: str, value: Any) -> None:
    """Set the control for ``path`` inside ``scope`` as a user would: type text, tick a box, pick an option."""
    page.evaluate(
        f"""(() => {{
        const at = `[data-path="${{{js(path)}}}"]`;
        const el = document.querySelector({js(scope)}).querySelector(`input${{at}}, select${{at}}, textarea${{at}}`);
        if (!el) throw new Error("no control for " + {js(path)});
        el.focus();
        if (el.type === "checkbox") el.checked = {js(bool(value))};
        else if (el.tagName === "SELECT") el.value = [...el.options].find((o) => o.text === {js(value)}).value;
        else el.value = {js(str(value))};
        el.dispatchEvent(new Event("input", {{ bubbles: true }}));
        el.dispatchEvent(new Event("change", {{ bubbles: true }}));
    }})()"""
    )


def click(page: Page, selector: str) -> None:
    page.evaluate(f"document.querySelector({js(selector)}).click()")


def click_node(page: Page, node_id: str) -> None:
    """Click a node of the run page's DAG (an SVG group)."""
    page.evaluate(f"document.querySelector('svg.dag [data-node={js(node_id)}]').dispatchEvent(new MouseEvent('click'))")


def text_of(page: Page, selector: str) -> str:
    return str(page.evaluate(f"document.querySelector({js(selector)})?.innerText ?? ''"))


def node_has(page: Page, node_id: str, cls: str) -> bool:
    """Whether the DAG's node ``node_id`` has the class ``cls`` (its status: ``st-failed``, ...)."""
    node = f"document.querySelector('svg.dag [data-node={js(node_id)}]')"
    return bool(page.evaluate(f"{node}.classList.contains({js(cls)})"))


def run_status(page: Page) -> str:
    return text_of(page, ".run-head h1 .badge")


def wait_status(url: str, run_id: str, status: str) -> dict[str, Any]:
    """Poll the API (a hang guard for a run in another process) until the run has ``status``."""
    for _ in range(600):
        detail: dict[str, Any] = api(url, "GET", f"/api/runs/{run_id}")
        if detail["status"] == status:
            return detail
        threading.Event().wait(0.1)
    raise AssertionError(f"run {run_id} never reached {status}: {detail['status']}")


def test_inbox_form_answers_a_wait_and_the_run_page_shows_it_finish_live(server: str, open_page: OpenPage) -> None:
    run_id = submit(server, "viewer_review", {"topic": "cats"})
    run_page = open_page(f"{server}#/runs/{run_id}")
    card = f'.run-page .wait-card[data-wait^="{run_id}/"]'
    run_page.wait_for(f"document.querySelector({js(card)}) !== null", what="the run page's wait card")
    run_page.evaluate("window.__sameDocument = true")

    inbox = open_page(f"{server}#/inbox")
    form = f'.inbox-list .wait-card[data-wait^="{run_id}/"]'
    inbox.wait_for(f"document.querySelector({js(form)}) !== null", what="the wait in the inbox")
    assert "drafted cats: please review" in text_of(inbox, form)  # the web channel's message beside the ask
    assert "review cats" in text_of(inbox, f"{form} .prompt")

    # The browser checks required fields before anything is sent.
    click(inbox, f"{form} button[type=submit]")
    inbox.wait_for(f"document.querySelector({js(form + ' .outcome')}).dataset.status === 'invalid'")
    assert "title: required" in text_of(inbox, f"{form} .outcome")

    fill(inbox, form, "title", "Cats")
    fill(inbox, form, "score", 9)  # beyond the schema's maximum: the server rejects it
    fill(inbox, form, "urgent", True)
    fill(inbox, form, "tone", "casual")
    fill(inbox, form, "tags/0", "pets")
    click(inbox, f"{form} .array button.add")
    fill(inbox, form, "tags/1", "fur")
    fill(inbox, form, "reviewer/name", "Ann")
    click(inbox, f"{form} button[type=submit]")
    inbox.wait_for(f"document.querySelector({js(form + ' .outcome')}).dataset.status === 'rejected'")
    assert inbox.evaluate(f"document.querySelector({js(form + ' .outcome')}).dataset.reason") == "invalid_payload"
    assert "maximum" in text_of(inbox, f"{form} .outcome")

    fill(inbox, form, "score", 4)
    click(inbox, f"{form} button[type=submit]")
    inbox.wait_for(f"document.querySelector({js(form + ' .outcome')}).dataset.status === 'accepted'")

    # The run page, never reloaded, follows the run to its end over SSE.
    run_page.bring_to_front()
    run_page.wait_for("document.querySelector('.run-head h1 .badge')?.innerText === 'succeeded'", what="succeeded")
    assert run_page.evaluate("window.__sameDocument") is True
    detail = wait_status(server, run_id, "succeeded")
    review = {"title": "Cats", "score": 4, "urgent": True, "tone": "casual", "tags": ["pets", "fur"]}
    assert detail["outputs"]["review"] == {**review, "reviewer": {"name": "Ann"}}
    run_page.wait_for("document.querySelector('[data-node=\"viewer_publish_1\"]')?.classList.contains('st-succeeded')")
    assert "published Cats" in text_of(run_page, ".talk")
    assert "Cats (4/5)" in text_of(run_page, ".run-summary")
    assert run_page.evaluate("document.querySelector('.artifact img').naturalWidth") == 48

    # A node's inputs, outputs and duration, from its events.
    click_node(run_page, "viewer_publish_1")
    run_page.wait_for("document.querySelector('.node-panel')?.dataset.node === 'viewer_publish_1'")
    panel = text_of(run_page, ".node-panel")
    assert '"title": "Cats"' in panel and "Cats (4/5): a draft about cats" in panel and "duration" in panel

    shot = run_page.screenshot(ARTIFACTS / "viewer-run-page.png")
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert run_page.errors == [] and inbox.errors == []


def test_an_approval_is_answered_with_buttons(server: str, open_page: OpenPage) -> None:
    run_id = submit(server, "viewer_approval", {"what": "v2"})
    inbox = open_page(f"{server}#/inbox")
    card = f'.wait-card[data-wait^="{run_id}/"]'
    inbox.wait_for(f"document.querySelector({js(card + ' button[data-choice=Ship]')}) !== null", what="buttons")
    labels = inbox.evaluate(f"[...document.querySelectorAll({js(card + ' button')})].map(b => b.innerText)")
    assert labels == ["Ship", "Hold"]
    click(inbox, f"{card} button[data-choice=Ship]")
    inbox.wait_for(f"document.querySelector({js(card + ' .outcome')}).dataset.status === 'accepted'")
    detail = wait_status(server, run_id, "succeeded")
    assert detail["outputs"]["decision"] == {"approved": True, "choice": "Ship"}
    assert inbox.errors == []


def test_a_nested_runs_wait_is_answered_through_its_top_level_run(server: str, open_page: OpenPage) -> None:
    run_id = submit(server, "viewer_nested", {"what": "v3"})
    page = open_page(f"{server}#/runs/{run_id}")
    # The nested run's wait shows on the parent's page (from the run detail), and so does the child run.
    card = f'.run-page .wait-card[data-wait^="{run_id}-"]'
    page.wait_for(f"document.querySelector({js(card + ' button[data-choice=Ship]')}) !== null", what="nested wait")
    page.wait_for("document.querySelector('.children-panel a') !== null", what="the child run")
    child = text_of(page, ".children-panel td a")
    assert child.startswith(f"{run_id}-viewer_approval")
    click(page, f"{card} button[data-choice=Hold]")
    page.wait_for(f"document.querySelector({js(card + ' .outcome')})?.dataset.status === 'accepted'")
    page.wait_for("document.querySelector('.run-head h1 .badge')?.innerText === 'succeeded'", what="succeeded")
    assert wait_status(server, run_id, "succeeded")["outputs"]["decision"] == {"approved": False, "choice": "Hold"}
    click(page, ".children-panel td a")
    page.wait_for(f"document.querySelector('.run-page')?.dataset.run === {js(child)}", what="the child's page")
    page.wait_for("document.querySelector('.run-head')?.innerText.includes('child of')")
    assert page.errors == []


def test_a_run_started_from_the_graphs_page(server: str, open_page: OpenPage) -> None:
    page = open_page(f"{server}#/graphs")
    form = '.graph-card[data-graph="viewer_busy"] form'
    page.wait_for(f"document.querySelector({js(form)}) !== null", what="the graph's form")
    fill(page, form, "n", "3")  # each input is a JSON value
    click(page, f"{form} button[type=submit]")
    page.wait_for("location.hash.startsWith('#/runs/')", what="the new run's page")
    page.wait_for("document.querySelector('.run-head h1 .badge')?.innerText === 'succeeded'", what="succeeded")
    run_id = page.evaluate("decodeURIComponent(location.hash.slice('#/runs/'.length))")
    assert api(server, "GET", f"/api/runs/{run_id}")["outputs"] == {"count": 3}
    assert page.evaluate("document.querySelectorAll('svg.dag .dag-node').length") == 3
    assert page.errors == []


def test_a_failed_run_shows_its_error_and_traceback_and_retries(server: str, open_page: OpenPage) -> None:
    run_id = submit(server, "viewer_failing", {"x": 3})
    wait_status(server, run_id, "failed")
    page = open_page(f"{server}#/runs/{run_id}")
    page.wait_for("document.querySelector('.run-page')?.dataset.rendered === '1'")
    assert run_status(page) == "failed"
    assert "viewer_explode refuses 3" in text_of(page, ".run-summary .error")
    assert "Traceback (most recent call last)" in text_of(page, ".run-summary .traceback")
    assert page.evaluate(
        "document.querySelector('svg.dag [data-node=viewer_explode_1]').classList.contains('st-failed')"
    )
    click_node(page, "viewer_explode_1")
    page.wait_for("document.querySelector('.node-panel .error') !== null")
    assert "ValueError: viewer_explode refuses 3" in text_of(page, ".node-panel .error")

    assert text_of(page, ".run-actions button.retry") == "Run again"  # a graph_fn run: from its inputs
    click(page, ".run-actions button.retry")
    page.wait_for(f"!location.hash.includes({js(run_id)}) && location.hash.startsWith('#/runs/')", what="the retry")
    retried = page.evaluate("decodeURIComponent(location.hash.slice('#/runs/'.length))")
    assert api(server, "GET", f"/api/runs/{retried}")["graph"] == "viewer_failing"
    assert page.errors == []


def test_a_static_graph_is_drawn_from_its_structure_and_retried(
    server: str, open_page: OpenPage, tmp_path: Path
) -> None:
    flag = tmp_path / "flag"
    run_id = submit(server, "viewer_static", {"x": 1, "flag": str(flag)})
    page = open_page(f"{server}#/runs/{run_id}")
    page.wait_for("document.querySelector('.run-head h1 .badge')?.innerText === 'failed'", what="failed")
    nodes = page.evaluate("[...document.querySelectorAll('svg.dag .dag-node')].map(g => g.dataset.node)")
    assert sorted(nodes) == ["viewer_flaky_1", "viewer_step_1"]
    assert page.evaluate("document.querySelectorAll('svg.dag path.edge').length") == 1
    assert node_has(page, "viewer_flaky_1", "st-failed")
    flag.write_text("ready")
    assert text_of(page, ".run-actions button.retry") == "Retry"
    click(page, ".run-actions button.retry")  # continues from the failed node, in the server's process
    page.wait_for("document.querySelector('.run-head h1 .badge')?.innerText === 'succeeded'", what="succeeded")
    assert wait_status(server, run_id, "succeeded")["outputs"] == {"y": 3}
    assert node_has(page, "viewer_flaky_1", "st-succeeded")
    assert page.errors == []


def test_cancel_from_the_run_page(server: str, open_page: OpenPage) -> None:
    run_id = submit(server, "viewer_review", {"topic": "dogs"})
    page = open_page(f"{server}#/runs/{run_id}")
    page.wait_for("document.querySelector('.run-head h1 .badge')?.innerText === 'waiting'", what="waiting")
    click(page, ".run-actions button.danger")
    assert text_of(page, ".run-actions button.danger") == "Really cancel?"
    click(page, ".run-actions button.danger")
    page.wait_for("document.querySelector('.run-head h1 .badge')?.innerText === 'cancelled'", what="cancelled")
    assert wait_status(server, run_id, "cancelled")["status"] == "cancelled"
    assert page.errors == []


def test_runs_list_filters_and_shows_new_runs(server: str, open_page: OpenPage) -> None:
    first = submit(server, "viewer_failing", {"x": 1})
    wait_status(server, first, "failed")
    page = open_page(f"{server}#/?graph=viewer_failing")
    page.wait_for(f"document.querySelector('tr[data-run=\"{first}\"]') !== null", what="the run in the list")
    graphs = page.evaluate("[...document.querySelectorAll('table.runs tbody td:nth-child(2)')].map(td => td.innerText)")
    assert graphs and set(graphs) == {"viewer_failing"}
    second = submit(server, "viewer_failing", {"x": 2})
    row = f"tr[data-run={js(second)}] .badge"
    page.wait_for(f"document.querySelector({js(row)})?.innerText === 'failed'", what="the new run's row")
    assert page.errors == []


def test_a_token_protected_server(token_server: str, open_page: OpenPage) -> None:
    """With a token the page asks for it; entered, the live stream (fetch with the header), the artifact
    and the answer all go through."""
    run_id = str(
        api(token_server, "POST", "/api/runs", {"graph": "viewer_review", "inputs": {"topic": "keys"}}, TOKEN)["run_id"]
    )
    page = open_page(f"{token_server}#/runs/{run_id}")
    page.wait_for("document.querySelector('.run-head .error') !== null", what="the refusal")
    assert "AETHERGRAPH_API_TOKEN" in text_of(page, ".run-head .error")
    page.evaluate(
        f"(() => {{ const t = document.getElementById('token'); t.value = {js(TOKEN)};"
        f" t.dispatchEvent(new Event('change')); }})()"
    )
    page.wait_for("document.querySelector('.live-state')?.innerText === '● live'", what="the live stream")
    card = f'.run-page .wait-card[data-wait^="{run_id}/"]'
    page.wait_for(f"document.querySelector({js(card)}) !== null", what="the wait card")
    page.wait_for("document.querySelector('.artifact img')?.naturalWidth === 48", what="the artifact")
    for path, value in [("title", "Keys"), ("score", 5), ("tone", "formal"), ("reviewer/name", "Bo")]:
        fill(page, card, path, value)
    click(page, f"{card} button[type=submit]")
    page.wait_for(f"document.querySelector({js(card + ' .outcome')}).dataset.status === 'accepted'")
    page.wait_for("document.querySelector('.run-head h1 .badge')?.innerText === 'succeeded'", what="succeeded")
    assert page.errors == []


async def _publish_tokens(nats_url: str, run_id: str, deltas: list[dict[str, Any]]) -> None:
    import nats

    client = await nats.connect(nats_url)
    try:
        for delta in deltas:
            await client.publish(f"ag.stream.{run_id}.root", json.dumps(delta).encode())
        await client.flush()
    finally:
        await client.close()


def test_token_deltas_show_live_on_the_run_page(server: str, open_page: OpenPage, nats_url: str) -> None:
    run_id = submit(server, "viewer_review", {"topic": "owls"})
    page = open_page(f"{server}#/runs/{run_id}")
    page.wait_for("document.querySelector('.live-state')?.innerText === '● live'", what="the live stream")
    base = {"run_id": run_id, "node_id": "root", "call_seq": 99}
    deltas = [{**base, "index": 1, "text": "lo, ", "done": False}, {**base, "index": 0, "text": "Hel", "done": False}]
    asyncio.run(_publish_tokens(nats_url, run_id, deltas))
    page.wait_for("document.querySelector('.token-stream .token-text')?.innerText === 'Hello, '", what="tokens")
    asyncio.run(_publish_tokens(nats_url, run_id, [{**base, "index": 2, "text": "owl", "done": True}]))
    page.wait_for("document.querySelector('.token-stream.done .token-text')?.innerText === 'Hello, owl'")
    assert page.errors == []


def test_an_agent_runs_viz_track_and_streamed_answer_show_live(
    server: str, open_page: OpenPage, model: FakeOpenAI
) -> None:
    answer = " ".join(f"word{i}" for i in range(30))
    model.script(Reply.text(answer, stream_delay=0.1))  # about 3 s of streaming: the page sees it live
    run_id = submit(server, "viewer_agent", {"steps": 6})
    page = open_page(f"{server}#/runs/{run_id}")
    track = 'figure.viz[data-track="loss"]'
    page.wait_for(f"document.querySelector({js(track + ' path.line')}) !== null", what="the loss plot")
    page.wait_for("document.querySelector('.live-state')?.innerText === '● live'", what="the live stream")
    wait_id = wait_status(server, run_id, "waiting")["open_waits"][0]["wait_id"]
    api(server, "POST", f"/api/runs/{run_id}/resume", {"wait_id": wait_id, "payload": {"approved": True}})
    page.wait_for(
        "(document.querySelector('.token-stream .token-text')?.innerText || '').startsWith('word0 word1')",
        what="tokens streaming",
    )
    page.wait_for("document.querySelector('.run-head h1 .badge')?.innerText === 'succeeded'", what="succeeded")
    page.wait_for(f"document.querySelector({js(track)}).innerText.includes('6 points')", what="six points")
    detail = wait_status(server, run_id, "succeeded")
    assert detail["outputs"] == {"answer": answer}
    assert page.errors == []


VIEW_LOGIC = """(async () => {
  const { RunModel, addToken } = await import("/js/model.js");
  const { layout } = await import("/js/dag.js");
  const { drawTracks } = await import("/js/plots.js");
  const { schemaForm } = await import("/js/schema_form.js");
  const ev = (seq, type, parent, node_id, extra) => ({ type, run_id: "r", seq, ts: seq * 1000, worker: "w", parent,
    node_id, epoch: 1, ...extra });
  const m = new RunModel("r");
  m.addAll([
    ev(1, "run.started", null, null, { graph_id: "g", inputs: {} }),
    ev(2, "tool.called", 1, "a_1", { tool: "a", args: { x: 1 } }),
    ev(3, "tool.returned", 2, "a_1", { tool: "a", outputs: { y: 2 }, duration_us: 5 }),
    // two calls started together share their parent: a fan-out
    ev(5, "tool.called", 3, "c_1", { tool: "c", args: {} }),
    ev(4, "tool.called", 3, "b_1", { tool: "b", args: {} }),
    ev(6, "tool.failed", 4, "b_1", { tool: "b", error_type: "E", message: "m", traceback: "tb" }),
    ev(7, "log.recorded", 6, "root", { level: "info", message: "x" }),
    ev(8, "wait.requested", 7, "root", { wait_id: "w8", kind: "text", prompt: "p", channel: "web" }),
    ev(9, "wait.resumed", 8, "root", { wait_id: "w8", payload: "ok" }),
    ev(10, "tool.called", 9, "d_1", { tool: "d", args: {} }),
    ev(11, "viz.recorded", 10, "root", { track: "loss", kind: "scalar", step: 0, value: 1.0 }),
    ev(12, "viz.recorded", 11, "root", { track: "loss", kind: "scalar", step: 1, value: 0.5 }),
    ev(13, "viz.recorded", 12, "root", { track: "loss", kind: "scalar", step: 2, value: 0.25 }),
    ev(3, "tool.returned", 2, "a_1", { tool: "a", outputs: { y: 999 } }),  // a duplicate: dropped
  ]);
  const dag = m.dag();
  const edges = dag.edges.map((e) => e.join(">")).sort();
  const layers = layout(dag.nodes, dag.edges);
  const t = addToken(m, { node_id: "n", call_seq: 1, index: 1, text: "b", done: false });
  addToken(m, { node_id: "n", call_seq: 1, index: 0, text: "a", done: false });
  addToken(m, { node_id: "n", call_seq: 1, index: 1, text: "b", done: false });  // a repeat: ignored
  const track = drawTracks(m.viz)[0];
  const form = schemaForm({ type: "object", required: ["n", "o"], properties: {
    n: { type: "integer" }, f: { type: "number" }, s: { type: "string" }, b: { type: "boolean" },
    e: { enum: ["x", 2] }, l: { type: "array", items: { type: "number" } },
    o: { type: "object", properties: { deep: { type: "string" } } } } });
  document.body.append(form.el);
  const set = (p, v) => { form.el.querySelector(`input[data-path="${p}"],select[data-path="${p}"]`).value = v; };
  set("n", "7"); set("f", "2.5"); set("e", "1"); set("l/0", "3"); set("o/deep", "z");
  form.el.querySelector('input[data-path="b"]').checked = true;
  const value = form.read();
  let intError = null;
  set("n", "7.5");
  try { form.read(); } catch (e) { intError = e.message; }
  form.el.remove();
  return {
    status: m.status, events: m.events.map((e) => e.seq), edges, layers,
    a: (({ status, outputs, duration_us }) => ({ status, outputs, duration: duration_us }))(m.nodes.get("a_1")),
    b: m.nodes.get("b_1").error, wait: m.waits.get("w8").status, tokens: t.text,
    track: track.dataset.track, points: track.querySelector("path.line").getAttribute("d").split("L").length,
    value, intError,
  };
})()"""


def test_view_logic_in_the_browser(server: str, open_page: OpenPage) -> None:
    """The viewer's modules on synthetic events (docs/events.md): DAG edges from causal parents, layers,
    duplicates dropped, out-of-order token deltas, a viz track plotted, a form's value and its type checks."""
    page = open_page(f"{server}#/graphs")
    result = page.evaluate(VIEW_LOGIC)
    assert result["events"] == list(range(1, 14))
    assert result["edges"] == ["a_1>b_1", "a_1>c_1", "b_1>wait:w8", "wait:w8>d_1"]
    assert result["layers"] == [["a_1"], ["b_1", "c_1"], ["wait:w8"], ["d_1"]]
    assert result["a"] == {"status": "succeeded", "outputs": {"y": 2}, "duration": 5}
    assert result["b"] == {"type": "E", "message": "m", "traceback": "tb"}
    assert result["wait"] == "resumed" and result["status"] == "running"
    assert result["tokens"] == "ab"
    assert result["track"] == "loss" and result["points"] == 3
    assert result["value"] == {"n": 7, "f": 2.5, "b": True, "e": 2, "l": [3], "o": {"deep": "z"}}
    assert result["intError"] == "n: expected a whole number"
    assert page.errors == []
