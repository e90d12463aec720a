"""Issue 17 through the command line, where a user meets it: honest output, data that can be trusted.

Every command is an ``aethergraph`` subprocess ("host") with its own
workspace, sharing the session's nats-server (the stream-identity test starts
servers of its own). Graphs are in ``tests/procs/cli_graphs.py`` and
``tests/procs/static_graphs.py``; only the subprocesses import them. Nothing
here measures time: every wait is bounded by ``SAFETY_S`` as a hang guard.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import traceback
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import process_hosts
import pytest
from helpers import run_python, start_nats_server, subprocess_env, wait_until

from aethergraph.core.errors import TRACEBACK_MAX_CHARS, failure_traceback

pytestmark = pytest.mark.slow

PROCS = Path(__file__).resolve().parent / "procs"
GRAPHS = PROCS / "cli_graphs.py"
STATIC = PROCS / "static_graphs.py"
SAFETY_S = 90  # an upper bound for anything to happen, never a measurement


@pytest.fixture
def hosts(tmp_path: Path) -> Iterator[process_hosts.Hosts]:
    h = process_hosts.Hosts(tmp_path, GRAPHS, prefix="cg", safety_s=SAFETY_S, drop_env=("SP_HOLDER", "SP_VARIANT"))
    try:
        yield h
    finally:
        h.kill_all()


def run_id_for(label: str) -> str:
    return f"cg-{label}-{os.urandom(4).hex()}"


def ok(done: subprocess.CompletedProcess[str], code: int = 0) -> subprocess.CompletedProcess[str]:
    assert done.returncode == code, f"exit {done.returncode}, wanted {code}:\n{done.stdout}\n{done.stderr}"
    return done


def start(hosts: process_hosts.Hosts, graph: str, inputs: dict[str, Any], run_id: str, code: int = 0) -> None:
    ok(hosts.cli("a", "run", f"{GRAPHS}:{graph}", "--inputs-json", json.dumps(inputs), "--run-id", run_id), code)


def sql(hosts: process_hosts.Hosts, query: str, host: str = "q") -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = json.loads(ok(hosts.cli(host, "sql", query, "--json")).stdout)
    return rows


# --- honest command output ---------------------------------------------------------------------------


def test_run_json_writes_only_the_outputs_to_stdout(hosts: process_hosts.Hosts) -> None:
    done = ok(hosts.cli("a", "run", f"{GRAPHS}:cg_chatty", "-i", "x=21", "--json"))
    assert json.loads(done.stdout) == {"y": 42, "note": "done"}  # the whole of stdout is one JSON document
    assert "a channel message: x is 21" in done.stderr
    assert "printed by the tool: 21" in done.stderr

    failed = ok(hosts.cli("a", "run", f"{GRAPHS}:cg_failing", "-i", "x=-1", "--json"), 1)
    assert failed.stdout == ""
    assert "tool.failed" in failed.stderr and "x must not be negative" in failed.stderr
    # Piped as a user would: `aethergraph run ... --json | python -m json.tool` (jq's job, with no extra tool).
    piped = subprocess.run(
        f"{shlex.quote(sys.executable)} -m aethergraph run {shlex.quote(f'{GRAPHS}:cg_chatty')} -i x=5 --json "
        f"| {shlex.quote(sys.executable)} -m json.tool --compact",
        shell=True, env=hosts.env("a")[0], capture_output=True, text=True, check=False, timeout=SAFETY_S,
    )  # fmt: skip
    assert piped.returncode == 0 and json.loads(piped.stdout) == {"y": 10, "note": "done"}, piped.stderr


def test_events_follow_stops_when_the_run_ends_and_refuses_an_unknown_run(
    hosts: process_hosts.Hosts, tmp_path: Path
) -> None:
    unknown = ok(hosts.cli("e", "events", "cg-no-such-run", "--follow"), 2)
    assert "no run cg-no-such-run" in unknown.stderr
    ok(hosts.cli("e", "events", "cg-no-such-run"), 2)

    run_id = run_id_for("follow")
    start(hosts, "cg_asking", {"topic": "the plan"}, run_id, code=3)  # left waiting
    follower = hosts.spawn("follower", ["events", run_id, "--follow", "--json"])
    wait_until(
        lambda: True if "run.waiting" in follower.out.read_text() else None,
        timeout_s=SAFETY_S,
        what="the follower to print the stored events",
    )
    assert follower.popen.poll() is None  # the run has not ended: it keeps following
    ok(hosts.cli("c", "cancel", run_id))
    assert follower.exit_code() == 0, follower.output()
    types = [json.loads(line)["type"] for line in follower.out.read_text().splitlines()]
    assert types[-1] == "run.cancelled" and types[0] == "run.started"

    ended = ok(hosts.cli("e", "events", run_id, "--follow", "--json"))  # an ended run: prints it all and stops
    assert json.loads(ended.stdout.splitlines()[-1])["type"] == "run.cancelled"


def test_result_prints_outputs_or_the_error_and_its_exit_status_says_which(hosts: process_hosts.Hosts) -> None:
    good, bad, asking, cancelled, queued = (run_id_for(x) for x in ("good", "bad", "ask", "cancel", "queued"))
    start(hosts, "cg_chatty", {"x": 2}, good)
    start(hosts, "cg_failing", {"x": -5}, bad, code=1)
    start(hosts, "cg_asking", {"topic": "a"}, asking, code=3)
    start(hosts, "cg_asking", {"topic": "b"}, cancelled, code=3)
    ok(hosts.cli("c", "cancel", cancelled, "--reason", "not needed"))
    ok(hosts.cli("a", "run", f"{GRAPHS}:cg_chatty", "-i", "x=1", "--run-id", queued, "--detach"))  # no worker

    succeeded = ok(hosts.cli("r", "result", good))
    assert "y" in succeeded.stdout and "4" in succeeded.stdout
    assert json.loads(ok(hosts.cli("r", "result", good, "--json")).stdout)["outputs"] == {"y": 4, "note": "done"}

    failed = ok(hosts.cli("r", "result", bad), 1)
    assert "ValueError: x must not be negative, got -5" in failed.stderr
    assert "in cg_check_positive" in failed.stderr and "Traceback (most recent call last)" in failed.stderr
    as_json = json.loads(ok(hosts.cli("r", "result", bad, "--json"), 1).stdout)
    assert as_json["status"] == "failed" and "cg_check_positive" in as_json["traceback"]

    waiting = ok(hosts.cli("r", "result", asking), 3)
    assert re.search(rf"answer: aethergraph resume {asking} --wait-id w\d+ --json '\.\.\.'", waiting.stderr)
    assert "review a" in waiting.stderr
    assert "not needed" in ok(hosts.cli("r", "result", cancelled), 5).stderr
    assert "queued" in ok(hosts.cli("r", "result", queued), 4).stderr
    assert "no run cg-nope" in ok(hosts.cli("r", "result", "cg-nope"), 2).stderr
    ok(hosts.cli("c", "cancel", queued))


def test_waits_lists_open_waits_across_runs_and_closes_those_of_ended_runs(hosts: process_hosts.Hosts) -> None:
    first, second = run_id_for("wa"), run_id_for("wb")
    start(hosts, "cg_asking", {"topic": "first"}, first, code=3)
    start(hosts, "cg_asking", {"topic": "second"}, second, code=3)
    listed = json.loads(ok(hosts.cli("w", "waits", "--json")).stdout)
    mine = {w["run_id"]: w for w in listed if w["run_id"] in (first, second)}
    assert set(mine) == {first, second}
    wait_id = mine[first]["wait_id"]
    assert mine[first] | {"requested_at": None} == {
        "run_id": first,
        "wait_id": wait_id,
        "node_id": "root",
        "kind": "review",
        "prompt": "review first",
        "requested_at": None,
        "answer": f"aethergraph resume {first} --wait-id {wait_id} --json '...'",
    }
    table = ok(hosts.cli("w", "waits")).stdout
    assert first in table and "review second" in table

    ok(hosts.cli("c", "cancel", second))
    assert [w["run_id"] for w in json.loads(ok(hosts.cli("w", "waits", "--run", second, "--json")).stdout)] == []
    assert [w["run_id"] for w in json.loads(ok(hosts.cli("w", "waits", "--run", first, "--json")).stdout)] == [first]
    assert json.loads(ok(hosts.cli("s", "status", second, "--json")).stdout)["open_waits"] == []
    assert "open wait" not in ok(hosts.cli("s", "status", second)).stdout
    assert sql(hosts, f"SELECT status FROM waits WHERE run_id = '{second}'") == [{"status": "cancelled"}]
    assert sql(hosts, f"SELECT status FROM waits WHERE run_id = '{first}'") == [{"status": "open"}]
    ok(hosts.cli("c", "cancel", first))


def test_runs_filters_and_never_wraps_run_ids_at_80_columns(hosts: process_hosts.Hosts) -> None:
    ids = [f"cg-runs-listing-{os.urandom(6).hex()}-{i}" for i in range(3)]
    for run_id in ids:
        start(hosts, "cg_chatty", {"x": 1}, run_id)
    start(hosts, "cg_failing", {"x": -1}, run_id_for("other"), code=1)

    def listed(*args: str) -> list[str]:
        return [r["run_id"] for r in json.loads(ok(hosts.cli("l", "runs", *args, "--json")).stdout)]

    everything = listed("--graph", "cg_chatty", "--since", "1h", "--limit", "1000")
    assert set(ids) <= set(everything)
    assert {
        r["graph_id"]
        for r in sql(hosts, f"SELECT graph_id FROM runs WHERE run_id IN ({', '.join(repr(i) for i in everything)})")
    } == {"cg_chatty"}
    assert listed("--graph", "cg_chatty", "--limit", "2") == ids[::-1][:2]  # newest first
    assert not set(ids) & set(listed("--graph", "cg_chatty", "--since", "0s"))
    assert listed("--graph", "no_such_graph") == []
    assert "not a duration" in ok(hosts.cli("l", "runs", "--since", "yesterday"), 2).stderr

    narrow = ok(hosts.cli("l", "runs", "--graph", "cg_chatty", "--limit", "3", COLUMNS="80")).stdout
    lines = narrow.splitlines()
    assert all(len(line) <= 80 for line in lines), narrow
    for run_id in ids:
        assert any(run_id in line for line in lines), f"{run_id} is wrapped or cut:\n{narrow}"


def test_status_shows_the_state_the_run_is_really_in_after_retry_and_cancel(
    hosts: process_hosts.Hosts, tmp_path: Path
) -> None:
    log, flag = tmp_path / "count.log", tmp_path / "flag"
    retried = run_id_for("retry")
    inputs = json.dumps({"log": str(log), "flag": str(flag)})
    ok(hosts.cli("a", "run", f"{STATIC}:sp_retry", "--inputs-json", inputs, "--run-id", retried), 1)
    failed = json.loads(ok(hosts.cli("s", "status", retried, "--json")).stdout)
    assert failed["status"] == "failed" and "flag file" in failed["error"]
    assert "in sp_flaky" in failed["traceback"]
    flag.touch()
    ok(hosts.cli("b", "retry", retried, "-m", str(STATIC)))
    after = json.loads(ok(hosts.cli("s", "status", retried, "--json")).stdout)
    assert (after["status"], after["error"], after["traceback"]) == ("succeeded", None, None)
    assert "RuntimeError" not in ok(hosts.cli("s", "status", retried)).stdout
    assert sql(hosts, f"SELECT error_type, traceback FROM runs WHERE run_id = '{retried}'") == [
        {"error_type": None, "traceback": None}
    ]

    held = run_id_for("held")
    args = ["run", f"{STATIC}:sp_chain", "--inputs-json", json.dumps({"log": str(log)}), "--run-id", held]
    driver = hosts.spawn("d", args, SP_HOLDER="1")  # parks inside its first node
    wait_until(
        lambda: True if "hold c1" in (log.read_text() if log.exists() else "") else None,
        timeout_s=SAFETY_S,
        what="the driver to park in node c1",
    )
    ok(hosts.cli("c", "cancel", held))
    driver.exit_code()
    nodes = {n["node_id"]: n for n in json.loads(ok(hosts.cli("s", "status", held, "--json")).stdout)["nodes"]}
    assert (nodes["sp_work_1"]["status"], nodes["sp_work_1"]["skip_reason"]) == ("skipped", "cancelled")
    assert "running" not in {n["status"] for n in nodes.values()}
    assert sql(hosts, f"SELECT status, skip_reason FROM nodes WHERE run_id = '{held}'") == [
        {"status": "skipped", "skip_reason": "cancelled"}
    ]


# --- data that can be trusted ------------------------------------------------------------------------


def test_sql_and_query_are_read_only_and_projections_rebuild_folds_again(hosts: process_hosts.Hosts) -> None:
    run_id = run_id_for("ro")
    start(hosts, "cg_chatty", {"x": 3}, run_id)
    for statement in (
        "DELETE FROM runs",
        "UPDATE runs SET status = 'x'",
        "DROP TABLE runs",
        "INSERT INTO runs (run_id) VALUES ('x')",
        "ATTACH '/tmp/other.duckdb' AS other",
        "COPY runs TO '/tmp/runs.csv'",
        "CREATE TABLE t AS SELECT 1",
        "WITH gone AS (DELETE FROM runs RETURNING *) SELECT count(*) FROM gone",
        "SELECT 1; DELETE FROM runs",
    ):
        refused = ok(hosts.cli("q", "sql", statement), 1)
        assert "read-only" in refused.stderr or "one SQL statement" in refused.stderr, (statement, refused.stderr)
    assert sql(hosts, f"SELECT status FROM runs WHERE run_id = '{run_id}'") == [{"status": "succeeded"}]
    assert "cg_shout" in ok(hosts.cli("q", "lineage", run_id)).stdout

    script = """
import json, aethergraph
from aethergraph.core.errors import ProjectionError
try:
    aethergraph.query("DELETE FROM runs")
    print(json.dumps("deleted"))
except ProjectionError as exc:
    print(json.dumps(str(exc)))
"""
    env, _ = hosts.env("q")
    assert "read-only" in run_python(script, env=env)

    rebuilt = ok(hosts.cli("q", "projections", "rebuild"))
    folded = re.search(r"rebuilt the projections: (\d+) messages folded", rebuilt.stdout)
    assert folded is not None and int(folded[1]) > 0, rebuilt.stdout
    assert sql(hosts, f"SELECT status FROM runs WHERE run_id = '{run_id}'") == [{"status": "succeeded"}]
    assert "rebuild" in ok(hosts.cli("q", "projections", "--help")).stdout
    assert "aethergraph projections rebuild" in " ".join(ok(hosts.cli("q", "sql", "--help")).stdout.split())


def test_the_store_folds_again_when_the_bus_or_its_stream_changes(tmp_path: Path) -> None:
    servers = [start_nats_server(tmp_path / name) for name in ("nats-a", "nats-b")]
    workspace = tmp_path / "workspace"
    try:

        def cli(url: str, *args: str) -> subprocess.CompletedProcess[str]:
            env = subprocess_env(AETHERGRAPH_NATS_URL=url, AETHERGRAPH_WORKSPACE=str(workspace), COLUMNS="200")
            return subprocess.run(
                [sys.executable, "-m", "aethergraph", *args],
                env=env,
                capture_output=True,
                text=True,
                timeout=SAFETY_S,
                check=False,
                stdin=subprocess.DEVNULL,
            )

        def runs(url: str) -> tuple[set[str], str]:
            done = ok(cli(url, "runs", "--graph", "cg_chatty", "--json"))
            return {r["run_id"] for r in json.loads(done.stdout)}, done.stderr

        url_a, url_b = servers[0].url, servers[1].url
        ok(cli(url_a, "run", f"{GRAPHS}:cg_chatty", "-i", "x=1", "--run-id", "cg-on-a"))
        assert runs(url_a) == ({"cg-on-a"}, "")
        ok(cli(url_b, "run", f"{GRAPHS}:cg_chatty", "-i", "x=1", "--run-id", "cg-on-b"))
        on_b, said = runs(url_b)
        assert on_b == {"cg-on-b"}
        assert "folded from another stream" in said and url_b in said
        assert runs(url_b) == ({"cg-on-b"}, "")  # recorded: no second rebuild

        reset = """
import asyncio, json, sys, nats
async def main():
    nc = await nats.connect(sys.argv[1])
    await nc.jetstream().delete_stream("AG_EVENTS")
    await nc.close()
asyncio.run(main())
print(json.dumps("reset"))
"""
        run_python(reset, url_b)
        ok(cli(url_b, "run", f"{GRAPHS}:cg_chatty", "-i", "x=1", "--run-id", "cg-after-reset"))
        after, said = runs(url_b)
        assert after == {"cg-after-reset"} and "folded from another stream" in said
    finally:
        for server in servers:
            server.stop()


def _duckdb_cli() -> Path | None:
    found = Path(sys.executable).parent / "duckdb"
    return found if found.exists() else (Path(shutil.which("duckdb")) if shutil.which("duckdb") else None)


def test_export_opens_in_the_duckdb_command_line(hosts: process_hosts.Hosts, tmp_path: Path) -> None:
    binary = _duckdb_cli()
    assert binary is not None, "the duckdb command line (pip install duckdb-cli, a test extra) is not installed"
    version = subprocess.run([str(binary), "--version"], capture_output=True, text=True, check=True, timeout=SAFETY_S)
    run_id = run_id_for("export")
    start(hosts, "cg_chatty", {"x": 5}, run_id)
    snapshot = tmp_path / "snap.duckdb"
    ok(hosts.cli("x", "export", str(snapshot)))
    opened = subprocess.run(
        [str(binary), "-readonly", "-json", str(snapshot), "-c",
         f"SELECT status FROM runs WHERE run_id = '{run_id}'"],
        capture_output=True, text=True, check=False, timeout=SAFETY_S,
    )  # fmt: skip
    assert opened.returncode == 0, f"{version.stdout}: {opened.stderr}"
    assert json.loads(opened.stdout) == [{"status": "succeeded"}]

    newest = tmp_path / "newest.duckdb"
    ok(hosts.cli("x", "export", str(newest), "--storage-version", "latest"))
    refused = subprocess.run(
        [str(binary), "-readonly", str(newest), "-c", "SELECT 1"], capture_output=True, text=True, timeout=SAFETY_S
    )
    if version.stdout.startswith("v1."):  # DuckDB 2's own format is beyond what a 1.x command line reads
        assert refused.returncode != 0 and "version" in refused.stderr.lower()


def test_read_only_commands_start_no_server_where_there_is_no_workspace(
    hosts: process_hosts.Hosts, tmp_path: Path
) -> None:
    empty = tmp_path / "elsewhere" / ".aethergraph"
    commands = [
        ["runs"],
        ["status", "cg-x"],
        ["sql", "SELECT 1"],
        ["events", "cg-x"],
        ["tokens", "cg-x"],
        ["result", "cg-x"],
        ["waits"],
        ["lineage", "cg-x"],
        ["export", str(tmp_path / "snap.duckdb")],
        ["projections", "rebuild"],
        ["cancel", "cg-x"],
        ["resume", "cg-x", "--text", "hi"],
    ]
    for args in commands:
        env, _ = hosts.env("nowhere", AETHERGRAPH_WORKSPACE=str(empty))
        env.pop("AETHERGRAPH_NATS_URL", None)
        done = subprocess.run(
            [sys.executable, "-m", "aethergraph", *args],
            env=env, capture_output=True, text=True, timeout=SAFETY_S, check=False, stdin=subprocess.DEVNULL,
        )  # fmt: skip
        assert done.returncode == 1, (args, done.stdout, done.stderr)
        assert "no bus here" in done.stderr and "AETHERGRAPH_NATS_URL" in done.stderr, (args, done.stderr)
        assert not empty.exists(), f"{args} created a workspace (and an embedded server)"


def test_a_failing_tools_traceback_is_journaled_shown_and_kept_in_the_tables(hosts: process_hosts.Hosts) -> None:
    run_id = run_id_for("tb")
    start(hosts, "cg_failing", {"x": -7}, run_id, code=1)
    status = ok(hosts.cli("s", "status", run_id)).stdout
    assert "Traceback (most recent call last)" in status and "in cg_check_positive" in status
    events = [json.loads(line) for line in ok(hosts.cli("e", "events", run_id, "--json")).stdout.splitlines()]
    failed = next(e for e in events if e["type"] == "tool.failed")
    assert "in cg_check_positive" in failed["traceback"] and failed["traceback"].rstrip().endswith(
        "ValueError: x must not be negative, got -7"
    )
    ended = next(e for e in events if e["type"] == "run.failed")
    assert "in cg_check_positive" in ended["traceback"]
    assert sql(hosts, f"SELECT tool, traceback LIKE '%cg_check_positive%' AS kept FROM tool_calls "
                      f"WHERE run_id = '{run_id}'") == [{"tool": "cg_deep", "kept": True}]  # fmt: skip
    assert sql(hosts, f"SELECT node_id, traceback LIKE '%cg_check_positive%' AS kept FROM nodes "
                      f"WHERE run_id = '{run_id}'") == [{"node_id": "cg_deep_1", "kept": True}]  # fmt: skip


def test_a_journaled_traceback_is_bounded_and_keeps_its_end() -> None:
    def layers(n: int) -> None:
        """n exceptions, each raised from the one below: a traceback far over the bound."""
        try:
            if n == 0:
                raise KeyError("the root cause")
            layers(n - 1)
        except Exception as exc:
            raise ValueError(f"layer {n} failed: " + "while doing something long-winded " * 3) from exc

    try:
        layers(200)
    except ValueError as exc:
        full = "".join(traceback.format_exception(exc))
        text = failure_traceback(exc)
    assert len(full) > 4 * TRACEBACK_MAX_CHARS
    assert len(text) <= TRACEBACK_MAX_CHARS + 64
    assert text.startswith("[") and "characters of the traceback cut" in text.splitlines()[0]
    assert text.rstrip().endswith(full.rstrip().splitlines()[-1]) and "layer 200 failed" in text.splitlines()[-1]


def test_version_and_exit_codes_in_help(hosts: process_hosts.Hosts) -> None:
    import aethergraph

    assert ok(hosts.cli("h", "--version")).stdout.strip() == f"aethergraph {aethergraph.__version__}"
    top = ok(hosts.cli("h", "--help")).stdout
    assert "Exit status" in top and "130" in top
    words = " ".join(ok(hosts.cli("h", "result", "--help")).stdout.replace("│", " ").split())
    assert "Exit status: 0 succeeded" in words and "5 cancelled" in words


def test_error_messages_keep_their_brackets(hosts: process_hosts.Hosts) -> None:
    """Rich markup must not eat text of an error (a type like ``list[str]``, a list of names)."""
    done = hosts.cli("q", "retry", "0mxnotarun00000000000", "-m", "no_such_module[str]")
    assert done.returncode == 2
    assert "no_such_module[str]" in " ".join(done.stderr.split())
    done = hosts.cli("q", "graph", "no_such_module[str]:g")
    assert done.returncode != 0
    assert "no_such_module[str]" in " ".join(done.stderr.split())
