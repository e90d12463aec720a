"""Strict inputs and outputs (issue 17): ``-i`` values, annotated inputs, lossy outputs, taken run ids, big answers.

The CLI cases run ``aethergraph run`` / ``aethergraph status`` as subprocesses
against the session's nats-server; the graphs are in ``tests/procs/strict_graphs.py``.
"""

from __future__ import annotations

import asyncio
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import read_events, subprocess_env

import aethergraph
from aethergraph.bus.topology import COMMANDS_STREAM, resume_subject
from aethergraph.core.wire.codec import normalise_value
from aethergraph.errors import (
    GraphInputError,
    ResumeRejectedError,
    RunExistsError,
    SerializationError,
    StaleWriterError,
)
from aethergraph.runtime import ProcessHost, load_target

GRAPHS = Path(__file__).resolve().parent / "procs" / "strict_graphs.py"
SAFETY_S = 60  # an upper bound for anything to happen, never a measurement


def graph(name: str) -> object:
    """The decorated graph ``name`` of tests/procs/strict_graphs.py (imported as ``aethergraph run`` imports it)."""
    spec = load_target(f"{GRAPHS}:{name}")
    return getattr(sys.modules[spec.fn.__module__], name)


async def cli(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-m", "aethergraph", *args],
        env=subprocess_env(AETHERGRAPH_WORKSPACE=str(tmp_path / "ws"), COLUMNS="200"),
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=SAFETY_S,
        check=False,
        cwd=tmp_path,
    )


# --- -i values ------------------------------------------------------------------------------------------------


async def test_input_values_are_json_where_they_look_like_json_and_text_otherwise(tmp_path: Path) -> None:
    done = await cli(
        tmp_path,
        "run",
        f"{GRAPHS}:si_echo",
        "--json",
        *("-i", "count=3", "-i", "ratio=-0.5e1", "-i", "version=1.2.3", "-i", 'quoted="3"'),
        *("-i", "flag=true", "-i", "nothing=null", "-i", "xs=[1, 2]", "-i", 'obj={"a": 1}', "-i", "word=hello"),
    )
    assert done.returncode == 0, done.stderr
    outputs = json.loads(done.stdout)
    assert outputs["values"] == {
        "count": 3,
        "ratio": -5.0,
        "version": "1.2.3",
        "quoted": "3",
        "flag": True,
        "nothing": None,
        "xs": [1, 2],
        "obj": {"a": 1},
        "word": "hello",
    }


@pytest.mark.parametrize("pair", ["xs=[1,2,3", 'xs={"a": 1', 'xs="unclosed'])
async def test_a_value_that_looks_like_json_but_does_not_parse_fails_naming_the_input(
    runtime: ProcessHost, tmp_path: Path, pair: str
) -> None:
    done = await cli(tmp_path, "run", f"{GRAPHS}:si_echo", "-i", pair, "--run-id", "si-broken")
    assert done.returncode == 2
    assert "input 'xs'" in done.stderr and "does not parse" in done.stderr, done.stderr
    assert await read_events(runtime, "si-broken") == []  # no run was started


# --- annotated inputs ----------------------------------------------------------------------------------------


async def test_the_cli_refuses_an_input_that_does_not_match_its_annotation(
    runtime: ProcessHost, tmp_path: Path
) -> None:
    done = await cli(tmp_path, "run", f"{GRAPHS}:si_typed", "-i", "x=abc", "--run-id", "si-typed-cli")
    assert done.returncode == 2
    assert "input 'x' must be int, got 'abc'" in done.stderr, done.stderr
    assert await read_events(runtime, "si-typed-cli") == []  # refused before it started
    bad_list = await cli(tmp_path, "run", f"{GRAPHS}:si_typed", "-i", "x=1", "-i", 'tags=["a", 2]')
    assert bad_list.returncode == 2
    assert "input 'tags' must be list[str] | None" in bad_list.stderr and "at [1]" in bad_list.stderr


async def test_annotated_inputs_are_checked_and_coerced_when_a_run_starts(runtime: ProcessHost) -> None:
    typed = graph("si_typed")
    with pytest.raises(GraphInputError, match=r"input 'x' must be int, got 'abc'"):
        await aethergraph.start_run(typed, {"x": "abc"})
    with pytest.raises(GraphInputError, match=r"input 'x' must be int"):
        await aethergraph.submit(typed, {"x": [1]})
    with pytest.raises(GraphInputError, match=r"input 'x' must be int"):
        await typed(x="abc")  # type: ignore[operator]
    handle = await aethergraph.start_run(typed, {"x": "41"})
    assert await handle.result(timeout=SAFETY_S) == {"next": 42}
    started = (await read_events(runtime, handle.run_id))[0].event
    assert started.inputs == {"x": 41, "tags": None}  # type: ignore[union-attr]


# --- outputs the journal would change silently -------------------------------------------------------------------


def test_datetime_set_bytes_uuid_and_decimal_values_raise_naming_where_they_are() -> None:
    import datetime as dt
    import decimal
    import uuid

    cases = {
        "datetime at ['when']": {"when": dt.datetime.now(dt.UTC)},
        "set at ['tags'][1]": {"tags": ["a", {"b"}]},
        "frozenset at ['x']['y']": {"x": {"y": frozenset()}},
        "bytes at [0]": [b"raw"],
        "UUID at ['id']": {"id": uuid.uuid4()},
        "Decimal at ['price']": {"price": decimal.Decimal("1.10")},
        "timedelta at ['took']": {"took": dt.timedelta(seconds=3)},
    }
    for where, value in cases.items():
        with pytest.raises(
            SerializationError, match=re.escape(f"tool 'x' produced a {where}, which the journal would")
        ):
            normalise_value(value, what="tool 'x'")
    # What the README lists as JSON-compatible goes through: tuples read back as lists.
    assert normalise_value({"a": (1, 2), "b": None, "c": [1.5, "s", True]}, what="t")[0] == {
        "a": [1, 2],
        "b": None,
        "c": [1.5, "s", True],
    }


async def test_a_graph_or_tool_returning_a_datetime_or_set_fails_its_run_with_serialization_error(
    runtime: ProcessHost,
) -> None:
    cases = {
        "si_returns_datetime": r"graph_fn 'si_returns_datetime' produced a datetime at \['at'\].*\.isoformat\(\)",
        "si_calls_datetime_tool": r"tool 'si_when' produced a datetime at \['when'\]",
        "si_calls_set_tool": r"tool 'si_tags' produced a set at \['report'\]\['tags'\]\[1\].*sorted\(value\)",
    }
    for name, message in cases.items():
        handle = await aethergraph.start_run(graph(name))
        with pytest.raises(SerializationError, match=message):
            await handle.result(timeout=SAFETY_S)
        assert await handle.status() == "failed"


# --- a run id that is taken --------------------------------------------------------------------------------------


async def test_a_duplicate_run_id_is_refused_up_front_by_the_cli(tmp_path: Path) -> None:
    first = await cli(tmp_path, "run", f"{GRAPHS}:si_typed", "-i", "x=1", "--run-id", "si-dup-cli", "--json")
    assert first.returncode == 0, first.stderr
    again = await cli(tmp_path, "run", f"{GRAPHS}:si_typed", "-i", "x=5", "--run-id", "si-dup-cli", "--json")
    assert again.returncode == 2
    assert "run si-dup-cli already exists; pick another id or omit --run-id" in again.stderr
    assert "StaleWriterError" not in again.stderr and "events of run" not in again.stdout + again.stderr
    assert again.stdout == ""
    detached = await cli(tmp_path, "run", f"{GRAPHS}:si_typed", "-i", "x=5", "--run-id", "si-dup-cli", "--detach")
    assert detached.returncode != 0 and "already exists" in detached.stderr


async def test_start_run_and_submit_refuse_a_taken_run_id_and_leave_the_run_alone(runtime: ProcessHost) -> None:
    typed = graph("si_typed")
    handle = await aethergraph.start_run(typed, {"x": 1}, run_id="si-dup-api")
    assert await handle.result(timeout=SAFETY_S) == {"next": 2}
    before = await read_events(runtime, "si-dup-api")
    for start in (aethergraph.start_run, aethergraph.submit):
        with pytest.raises(RunExistsError, match="run si-dup-api already exists") as info:
            await start(typed, {"x": 9}, run_id="si-dup-api")
        assert isinstance(info.value, StaleWriterError)  # code written against StaleWriterError keeps working
    assert [r.event for r in await read_events(runtime, "si-dup-api")] == [r.event for r in before]


# --- a resume payload too large for the journal -----------------------------------------------------------------


async def test_an_oversized_resume_payload_is_refused_with_the_limit_and_nothing_is_published(
    runtime: ProcessHost,
) -> None:
    handle = await aethergraph.start_run(graph("si_waits"), run_id="si-big-answer")
    async with asyncio.timeout(SAFETY_S):
        assert await handle.wait_for_status("waiting") == "waiting"
    limit = runtime.settings.max_event_bytes
    with pytest.raises(ResumeRejectedError) as info:
        await aethergraph.resume("si-big-answer", {"blob": "x" * limit})
    assert info.value.reason == "payload_too_large"
    assert "AETHERGRAPH_MAX_EVENT_BYTES" in str(info.value) and "artifacts" in str(info.value)
    stream = await runtime.bus.js.stream_info(COMMANDS_STREAM, subjects_filter=resume_subject("si-big-answer"))
    assert not (stream.state.subjects or {})  # nothing was published
    assert await handle.status() == "waiting"
    await aethergraph.resume("si-big-answer", {"blob": "small"}, wait=False)  # a payload that fits is taken
    assert await handle.result(timeout=SAFETY_S) == {"answer": {"blob": "small"}}
