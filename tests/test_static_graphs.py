"""``@graphify`` and ``TaskGraph``: what a build records, what it refuses, its pictures, and runs with known results.

Build-time tests need no bus. The runs go through the real scheduler and the
in-process node executor on the session's nats-server, both live and in the
always-suspend mode (the run suspends after every batch of reports and is
continued by replay from the stream).
"""

from __future__ import annotations

import asyncio
import re
from typing import Any

import pytest
from helpers import chain_of, read_events

import aethergraph as ag
from aethergraph import RetryPolicy, graph_fn, graphify, tool
from aethergraph.core.errors import DecorationError, GraphBuildError, GraphInputError
from aethergraph.core.ids import new_run_id
from aethergraph.core.run.executor import execute_run
from aethergraph.core.wire import events as ev
from aethergraph.host.process import ProcessHost

# --- tools (names prefixed sgb_: the registry is per process and shared by every test module) ----------


@tool(name="sgb_double", outputs=["y"])
def sgb_double(x: int) -> dict[str, Any]:
    return {"y": x * 2}


@tool(name="sgb_add", outputs=["total"])
def sgb_add(values: list[int]) -> dict[str, Any]:
    return {"total": sum(values)}


@tool(name="sgb_check", outputs=["ok", "value"])
def sgb_check(value: int, threshold: int) -> dict[str, Any]:
    return {"ok": value > threshold, "value": value}


@tool(name="sgb_chunk", outputs=["chunks"])
def sgb_chunk(items: list[int], size: int) -> dict[str, Any]:
    return {"chunks": [items[i : i + size] for i in range(0, len(items), size)]}


@tool(name="sgb_count_words", outputs=["counts"])
async def sgb_count_words(text: str) -> dict[str, Any]:
    counts: dict[str, int] = {}
    for word in text.split():
        counts[word] = counts.get(word, 0) + 1
    return {"counts": counts}


@tool(name="sgb_merge_counts", outputs=["counts", "distinct"])
def sgb_merge_counts(parts: dict[str, dict[str, int]]) -> dict[str, Any]:
    merged: dict[str, int] = {}
    for part in parts.values():
        for word, n in part.items():
            merged[word] = merged.get(word, 0) + n
    return {"counts": dict(sorted(merged.items())), "distinct": len(merged)}


@tool(name="sgb_echo", outputs=["value"])
def sgb_echo(value: Any = None) -> dict[str, Any]:
    return {"value": value}


# --- graphs ----------------------------------------------------------------------------------------


@graphify(name="sgb_fan", inputs=["xs"], outputs=["total", "first"])
def sgb_fan(xs):  # type: ignore[no-untyped-def]
    """Fan-out over four input items, fan-in to one sum."""
    doubled = [sgb_double(x=xs[i]) for i in range(4)]
    total = sgb_add(values=[d.y for d in doubled])
    return {"total": total.total, "first": doubled[0]["y"]}


DOCS = {
    "d1": "the cat sat on the mat",
    "d2": "the dog sat",
    "d3": "a cat and a dog",
}


@graphify(name="sgb_wordcount", inputs=["docs"], outputs=["counts", "distinct"])
def sgb_wordcount(docs):  # type: ignore[no-untyped-def]
    """Map-reduce: one mapper per document (keys fixed at build time); the reducer takes a nested dict of refs."""
    mapped = {key: sgb_count_words(text=docs[key]) for key in sorted(DOCS)}
    merged = sgb_merge_counts(parts={key: node.counts for key, node in mapped.items()})
    return {"counts": merged.counts, "distinct": merged.distinct}


@graphify(name="sgb_chunked", inputs=["items"], outputs=["sums", "grand"])
def sgb_chunked(items):  # type: ignore[no-untyped-def]
    """Map over parts of one node's output: chunk, sum each chunk (by index into the output), sum the sums."""
    chunks = sgb_chunk(items=items, size=3)
    sums = [sgb_add(values=chunks.chunks[i]) for i in range(3)]
    grand = sgb_add(values=[s.total for s in sums])
    return {"sums": [s.total for s in sums], "grand": grand.total}


@graphify(name="sgb_cond", inputs=["value", "threshold"], outputs=["checked", "big", "bigger", "always"])
def sgb_cond(value, threshold):  # type: ignore[no-untyped-def]
    """``big`` runs only if value > threshold; ``bigger`` depends on ``big``; ``always`` depends on neither."""
    check = sgb_check(value=value, threshold=threshold)
    big = sgb_double(x=check.value, _condition=check.ok, _alias="big")
    bigger = sgb_double(x=big.y)
    always = sgb_echo(value=value)
    return {"checked": check.ok, "big": big.y, "bigger": bigger.y, "always": always.value}


@graphify(name="sgb_literal_false", inputs=["x"], outputs=["y", "z"])
def sgb_literal_false(x):  # type: ignore[no-untyped-def]
    off = sgb_double(x=x, _condition=False)
    on = sgb_double(x=x, _condition=True)
    return {"y": off.y, "z": on.y}


@graphify(name="sgb_passthrough", inputs=["a", "b"], outputs=["a", "const", "pair"])
def sgb_passthrough(a, b=5):  # type: ignore[no-untyped-def]
    """Outputs may be inputs, constants, or structures holding references."""
    d = sgb_double(x=b)
    return {"a": a, "const": 7, "pair": [d.y, {"b": b}]}


@graphify(name="sgb_control", inputs=["x"], outputs=["out"])
def sgb_control(x):  # type: ignore[no-untyped-def]
    first = sgb_double(x=x, _id="first")
    side = sgb_echo(value="side", _alias="side_effect")
    second = sgb_double(x=first.y, _after=["side_effect"], _timeout=5, _retry=RetryPolicy(attempts=3, backoff_s=0.05))
    third = sgb_echo(value=x, _after=[second, "first"])
    return {"out": [second.y, third.value, side.value]}


@graphify(name="sgb_nested_outer", inputs=["xs"], outputs=["total", "again"])
def sgb_nested_outer(xs):  # type: ignore[no-untyped-def]
    """A static graph used as one node of another (a nested run)."""
    inner = sgb_fan(xs=xs)
    again = sgb_double(x=inner.total)
    return {"total": inner.total, "again": again.y}


# --- helpers -----------------------------------------------------------------------------------


@pytest.fixture(params=["live", "always_suspend"])
def graph_env(request: pytest.FixtureRequest, runtime: ProcessHost, suspending_runtime: ProcessHost) -> ProcessHost:
    """The run tests run twice: live, and suspending after every step to continue by replay."""
    return suspending_runtime if request.param == "always_suspend" else runtime


async def start(env: ProcessHost, graph: Any, inputs: dict[str, Any], *, run_id: str | None = None) -> dict[str, Any]:
    spec = graph.spec
    return await execute_run(spec, spec.task_graph().bind_inputs(inputs), run_id=run_id or new_run_id(), env=env.env)


# --- structure ----------------------------------------------------------------------------------


def test_fan_out_fan_in_structure() -> None:
    g = sgb_fan.build()
    assert g is sgb_fan.build()  # built once
    assert tuple(g.nodes) == g.order == ("sgb_double_1", "sgb_double_2", "sgb_double_3", "sgb_double_4", "sgb_add_1")
    assert g.topological_order() == list(g.order)
    assert g.roots() == ["sgb_double_1", "sgb_double_2", "sgb_double_3", "sgb_double_4"]
    assert g.dependencies("sgb_add_1") == ("sgb_double_1", "sgb_double_2", "sgb_double_3", "sgb_double_4")
    assert g.dependencies("sgb_double_3") == ()
    assert g.dependents("sgb_double_2") == ("sgb_add_1",)
    assert g.dependents("sgb_add_1") == ()
    assert g.nodes["sgb_double_2"].tool == "sgb_double"
    assert g.io_signature() == {
        "inputs": {"xs": {"required": True}},
        "outputs": {
            "total": {"$node": "sgb_add_1", "path": ["total"]},
            "first": {"$node": "sgb_double_1", "path": ["y"]},
        },
    }
    with pytest.raises(KeyError, match="no node 'nope'"):
        g.dependencies("nope")


def test_nested_references_in_dicts_and_lists_are_dependencies() -> None:
    g = sgb_wordcount.build()
    assert g.dependencies("sgb_merge_counts_1") == ("sgb_count_words_1", "sgb_count_words_2", "sgb_count_words_3")
    g2 = sgb_chunked.build()
    assert g2.dependencies("sgb_add_2") == ("sgb_chunk_1",)
    assert g2.dependencies("sgb_add_4") == ("sgb_add_1", "sgb_add_2", "sgb_add_3")
    assert g2.nodes["sgb_add_2"].describe()["args"] == {"values": {"$node": "sgb_chunk_1", "path": ["chunks", 1]}}


def test_control_keywords_id_alias_after_timeout_retry() -> None:
    g = sgb_control.build()
    assert g.order == ("first", "sgb_echo_1", "sgb_double_1", "sgb_echo_2")
    second = g.nodes["sgb_double_1"]
    assert second.dependencies == ("first", "sgb_echo_1")
    assert second.after == ("sgb_echo_1",)  # the alias resolves to the node id
    assert second.timeout_s == 5.0
    assert second.retry == RetryPolicy(attempts=3, backoff_s=0.05)
    assert g.nodes["sgb_echo_1"].alias == "side_effect"
    assert g.nodes["sgb_echo_2"].dependencies == ("sgb_double_1", "first")
    assert g.nodes["first"].retry is None and g.nodes["first"].timeout_s is None


def test_graph_level_retry_and_timeout_are_node_defaults() -> None:
    policy = RetryPolicy(attempts=4, backoff_s=0.0)

    @graphify(name="sgb_defaults", inputs=["x"], outputs=["y"], retry=policy, timeout=3)
    def defaults(x):  # type: ignore[no-untyped-def]
        a = sgb_double(x=x)
        b = sgb_double(x=a.y, _timeout=1, _retry=RetryPolicy(attempts=1))
        return {"y": b.y}

    g = defaults.build()
    assert (g.nodes["sgb_double_1"].retry, g.nodes["sgb_double_1"].timeout_s) == (policy, 3.0)
    assert (g.nodes["sgb_double_2"].retry, g.nodes["sgb_double_2"].timeout_s) == (RetryPolicy(attempts=1), 1.0)


def test_digest_follows_structure_not_identity() -> None:
    def body(x):  # type: ignore[no-untyped-def]
        return {"y": sgb_double(x=x).y}

    def other(x):  # type: ignore[no-untyped-def]
        return {"y": sgb_double(x=sgb_double(x=x).y).y}

    same1 = graphify(name="sgb_digest", inputs=["x"], outputs=["y"])(body).build()
    same2 = graphify(name="sgb_digest", inputs=["x"], outputs=["y"])(body).build()
    changed = graphify(name="sgb_digest", inputs=["x"], outputs=["y"])(other).build()
    assert same1.digest == same2.digest
    assert changed.digest != same1.digest
    assert re.fullmatch(r"[0-9a-f]{32}", same1.digest)


def test_body_runs_once_at_build_time_with_placeholders() -> None:
    seen: list[Any] = []

    @graphify(name="sgb_once", inputs=["x"], outputs=["y"])
    def once(x):  # type: ignore[no-untyped-def]
        seen.append(x)
        return {"y": sgb_double(x=x).y}

    assert seen == []  # decorating does not build
    once.build()
    once.build()
    assert len(seen) == 1 and repr(seen[0]) == "<input 'x'>"


def test_dot_and_mermaid_contain_every_node_and_edge() -> None:
    g = sgb_control.build()
    dot = g.to_dot()
    assert dot.startswith('digraph "sgb_control" {') and dot.rstrip().endswith("}")
    for node_id in g.order:
        assert f'"{node_id}" [label=' in dot
    assert '"first" -> "sgb_double_1";' in dot  # a data edge
    assert '"sgb_echo_1" -> "sgb_double_1" [style=dashed];' in dot  # an _after edge
    assert '"in:x" -> "first";' in dot
    assert '"sgb_double_1" -> "out:out";' in dot
    assert "side_effect" in dot  # the alias labels its node

    mermaid = g.to_mermaid()
    assert mermaid.startswith("flowchart LR")
    for node_id in g.order:
        assert f'  {node_id}["' in mermaid
    assert "  first --> sgb_double_1" in mermaid
    assert "  sgb_echo_1 -.-> sgb_double_1" in mermaid
    assert "  in_x --> first" in mermaid
    assert "  sgb_echo_1 --> out_out" in mermaid

    fan = sgb_fan.build().to_mermaid()
    assert sum(line.strip().endswith("--> sgb_add_1") for line in fan.splitlines()) == 4


def test_describe_is_json_and_lists_nodes_in_order() -> None:
    import json

    data = sgb_cond.build().describe()
    assert json.loads(json.dumps(data)) == data
    assert [node["id"] for node in data["nodes"]] == ["sgb_check_1", "sgb_double_1", "sgb_double_2", "sgb_echo_1"]
    assert data["nodes"][1]["condition"] == {"$node": "sgb_check_1", "path": ["ok"]}


# --- build errors -----------------------------------------------------------------------------


def build_error(body: Any, *, inputs: list[str] | None = None, outputs: list[str] | None = None) -> GraphBuildError:
    builder = graphify(name="sgb_bad", inputs=inputs if inputs is not None else ["x"], outputs=outputs or ["y"])(body)
    with pytest.raises(GraphBuildError) as info:
        builder.build()
    return info.value


def test_cycle_through_after_names_the_nodes_and_the_fix() -> None:
    def body(x):  # type: ignore[no-untyped-def]
        a = sgb_double(x=x, _id="a", _after="c")
        b = sgb_double(x=a.y, _id="b")
        c = sgb_double(x=b.y, _id="c")
        return {"y": c.y}

    exc = build_error(body)
    assert "has a cycle: a -> c -> b -> a" in str(exc)
    assert "Remove one of these dependencies" in str(exc)
    assert exc.node_id == "a"


def test_self_dependency_is_refused() -> None:
    def body(x):  # type: ignore[no-untyped-def]
        return {"y": sgb_double(x=x, _id="me", _after="me").y}

    exc = build_error(body)
    assert "node me" in str(exc) and "cannot depend on itself" in str(exc)


def test_duplicate_id_names_the_id_and_the_fix() -> None:
    def body(x):  # type: ignore[no-untyped-def]
        sgb_double(x=x, _id="dup")
        return {"y": sgb_double(x=x, _id="dup").y}

    exc = build_error(body)
    assert "two nodes have the id 'dup'" in str(exc) and "give each node its own _id" in str(exc)
    assert exc.node_id == "dup"


def test_alias_clashing_with_an_id_is_refused() -> None:
    def body(x):  # type: ignore[no-untyped-def]
        sgb_double(x=x, _id="one")
        return {"y": sgb_double(x=x, _alias="one").y}

    assert "_alias 'one' is already used" in str(build_error(body))


def test_unknown_after_name_lists_the_known_nodes() -> None:
    def body(x):  # type: ignore[no-untyped-def]
        a = sgb_double(x=x)
        return {"y": sgb_double(x=a.y, _after="sgb_dubble_1").y}

    exc = build_error(body)
    assert "node sgb_double_2" in str(exc)
    assert "_after='sgb_dubble_1' names no node" in str(exc)
    assert "['sgb_double_1', 'sgb_double_2']" in str(exc)


def test_unknown_output_attribute_names_the_outputs() -> None:
    def body(x):  # type: ignore[no-untyped-def]
        return {"y": sgb_double(x=x).z}

    exc = build_error(body)
    assert "node sgb_double_1 (tool 'sgb_double') has no output 'z'" in str(exc)
    assert "['y']" in str(exc)


@pytest.mark.parametrize(
    ("use", "what"),
    [
        (lambda x: len(x), "len()"),
        (lambda x: bool(x), "truth testing"),
        (lambda x: f"{x}", "f-string"),
        (lambda x: [item for item in x], "iteration"),
        (lambda x: x + 1, "arithmetic (+)"),
        (lambda x: x == 3, "== comparison"),
        (lambda x: int(x), "int()"),
        (lambda x: range(x), "indexing with it"),
    ],
    ids=["len", "if", "fstring", "for", "add", "eq", "int", "range"],
)
def test_using_a_placeholder_as_a_value_is_a_clear_build_error(use: Any, what: str) -> None:
    def body(x):  # type: ignore[no-untyped-def]
        use(x)
        return {"y": 1}

    exc = build_error(body)
    assert "input 'x' is a placeholder while the graph is built" in str(exc)
    assert what in str(exc)
    assert "Pass it as an argument to a tool" in str(exc)


def test_if_on_a_node_output_is_refused_and_points_at_condition() -> None:
    def body(x):  # type: ignore[no-untyped-def]
        check = sgb_check(value=x, threshold=1)
        if check.ok:
            return {"y": 1}
        return {"y": 2}

    exc = build_error(body)
    assert "output sgb_check_1['ok']" in str(exc) and "_condition=ref" in str(exc)


def test_reference_from_another_graph_is_refused() -> None:
    leaked: list[Any] = []

    @graphify(name="sgb_leaky", inputs=["x"], outputs=["y"])
    def leaky(x):  # type: ignore[no-untyped-def]
        node = sgb_double(x=x)
        leaked.append(node)
        return {"y": node.y}

    leaky.build()

    def body(x):  # type: ignore[no-untyped-def]
        return {"y": sgb_double(x=leaked[0].y).y}

    exc = build_error(body)
    assert "comes from another graph's build" in str(exc) and "node sgb_double_1" in str(exc)


def test_wrong_tool_arguments_name_the_node() -> None:
    def body(x):  # type: ignore[no-untyped-def]
        return {"y": sgb_double(x=x, nope=1).y}

    exc = build_error(body)
    assert "node sgb_double_1" in str(exc) and "nope" in str(exc)


def test_unserialisable_argument_names_the_node() -> None:
    def body(x):  # type: ignore[no-untyped-def]
        return {"y": sgb_echo(value=object()).value}

    exc = build_error(body)
    assert "sgb_echo_1" in str(exc)


def test_missing_declared_output_names_it() -> None:
    def body(x):  # type: ignore[no-untyped-def]
        return {"z": sgb_double(x=x).y}

    exc = build_error(body, outputs=["y"])
    assert "does not return declared output(s) ['y']" in str(exc)


@pytest.mark.parametrize(
    ("control", "message"),
    [
        ({"_timeout": 0}, "_timeout must be seconds > 0"),
        ({"_retry": 3}, "_retry must be a RetryPolicy"),
        ({"_condition": "yes"}, "_condition must be a reference"),
        ({"_id": "has space"}, "is not a valid node id"),
        ({"_id": "root"}, "is not a valid node id"),
        ({"_after": [1]}, "_after items must be node handles, node ids or aliases"),
    ],
)
def test_bad_control_keywords(control: dict[str, Any], message: str) -> None:
    def body(x):  # type: ignore[no-untyped-def]
        return {"y": sgb_double(x=x, **control).y}

    assert message in str(build_error(body))


def test_building_a_graph_inside_another_body_is_refused() -> None:
    @graphify(name="sgb_inner_build", inputs=["x"], outputs=["y"])
    def inner(x):  # type: ignore[no-untyped-def]
        return {"y": sgb_double(x=x).y}

    def body(x):  # type: ignore[no-untyped-def]
        inner.build()
        return {"y": 1}

    assert "call it as a node instead" in str(build_error(body))


def test_retry_policy_validation() -> None:
    with pytest.raises(GraphBuildError, match="attempts must be an int >= 1"):
        RetryPolicy(attempts=0)
    with pytest.raises(GraphBuildError, match="multiplier >= 1"):
        RetryPolicy(attempts=2, multiplier=0.5)
    policy = RetryPolicy(attempts=5, backoff_s=0.1, multiplier=2, max_backoff_s=0.3)
    assert [policy.delay_s(n) for n in (1, 2, 3)] == [0.1, 0.2, 0.3]
    only_timeouts = RetryPolicy(attempts=3, retry_on=("TimeoutError",))
    assert only_timeouts.retries(1, "TimeoutError") and not only_timeouts.retries(1, "ValueError")
    assert not only_timeouts.retries(3, "TimeoutError")


def test_decoration_errors() -> None:
    with pytest.raises(DecorationError, match="plain `def`"):

        @graphify(name="sgb_async")
        async def asynchronous(x):  # type: ignore[no-untyped-def]
            return {}

    with pytest.raises(DecorationError, match="max_concurrency must be an int >= 1"):
        graphify(name="sgb_mc", max_concurrency=0)(lambda x: {})
    with pytest.raises(DecorationError, match="timeout must be seconds > 0"):
        graphify(name="sgb_to", timeout=-1)(lambda x: {})
    with pytest.raises(DecorationError, match="retry must be a RetryPolicy"):
        graphify(name="sgb_rt", retry=3)(lambda x: {})  # type: ignore[arg-type]
    with pytest.raises(DecorationError, match="input 'z' is not a parameter"):
        graphify(name="sgb_in", inputs=["z"])(lambda x: {})
    with pytest.raises(DecorationError, match="already a tool or graph"):
        graphify(name="sgb_twice")(sgb_double)


# --- submit-time errors -----------------------------------------------------------------------


async def test_missing_and_unknown_inputs_are_refused_at_submit(runtime: ProcessHost) -> None:
    with pytest.raises(GraphInputError, match=r"needs input\(s\) \['xs'\]"):
        await ag.start_run(sgb_fan, {})
    with pytest.raises(GraphInputError, match=r"has no input\(s\) \['ys'\]; its inputs are \['xs'\]"):
        await ag.start_run(sgb_fan, {"xs": [1, 2, 3, 4], "ys": 1})
    with pytest.raises(ValueError, match="max_concurrency"):
        await ag.start_run(sgb_fan, {"xs": [1, 2, 3, 4]}, max_concurrency=0)


async def test_calling_a_graph_with_missing_inputs_is_refused(runtime: ProcessHost) -> None:
    with pytest.raises(TypeError, match="xs"):
        await sgb_fan()


# --- runs with known results (live and always-suspend) ------------------------------------------


async def test_fan_out_fan_in_result(graph_env: ProcessHost) -> None:
    run_id = new_run_id()
    assert await start(graph_env, sgb_fan, {"xs": [1, 2, 3, 4]}, run_id=run_id) == {"total": 20, "first": 2}
    chain = await chain_of(graph_env, run_id)
    completed = {e.node_id: e for e in chain if isinstance(e, ev.NodeCompleted)}
    assert set(completed) == set(sgb_fan.build().order)
    assert completed["sgb_add_1"].outputs == {"total": 20}
    ready = [e for e in chain if isinstance(e, ev.NodeReady | ev.NodeStarted)]
    assert [e.node_id for e in ready].count("sgb_add_1") == 1
    [add_ready] = [e for e in ready if e.node_id == "sgb_add_1"]
    assert add_ready.args == {"values": [2, 4, 6, 8]}  # references resolved before dispatch
    # The reduce is dispatched only after all four inputs completed.
    position = {id(e): i for i, e in enumerate(chain)}
    assert all(position[id(completed[f"sgb_double_{i}"])] < position[id(add_ready)] for i in range(1, 5))
    started = chain[0]
    assert isinstance(started, ev.RunStarted) and started.plan_digest == sgb_fan.build().digest
    assert isinstance(chain[-1], ev.RunCompleted) and chain[-1].outputs == {"total": 20, "first": 2}
    claims = [e for e in chain if isinstance(e, ev.RunClaimed)]
    if graph_env.settings.always_suspend:  # suspended and continued by replay at least once, never re-running a node
        assert claims and {c.reason for c in claims} == {"replay"}
    else:
        assert claims == []
    assert len([e for e in chain if isinstance(e, ev.NodeReady | ev.NodeStarted)]) == len(completed)


async def test_map_reduce_word_count(graph_env: ProcessHost) -> None:
    out = await start(graph_env, sgb_wordcount, {"docs": DOCS})
    expected: dict[str, int] = {}
    for text in DOCS.values():
        for word in text.split():
            expected[word] = expected.get(word, 0) + 1
    assert out == {"counts": dict(sorted(expected.items())), "distinct": len(expected)}


async def test_map_over_parts_of_an_output(graph_env: ProcessHost) -> None:
    out = await start(graph_env, sgb_chunked, {"items": [1, 2, 3, 4, 5, 6, 7, 8, 9]})
    assert out == {"sums": [6, 15, 24], "grand": 45}


async def test_outputs_may_be_inputs_constants_and_structures(graph_env: ProcessHost) -> None:
    assert await start(graph_env, sgb_passthrough, {"a": "A"}) == {"a": "A", "const": 7, "pair": [10, {"b": 5}]}
    assert await start(graph_env, sgb_passthrough, {"a": [1], "b": 2}) == {"a": [1], "const": 7, "pair": [4, {"b": 2}]}


async def test_false_condition_skips_the_node_and_its_dependents(graph_env: ProcessHost) -> None:
    run_id = new_run_id()
    out = await start(graph_env, sgb_cond, {"value": 1, "threshold": 5}, run_id=run_id)
    assert out == {"checked": False, "big": None, "bigger": None, "always": 1}
    chain = await chain_of(graph_env, run_id)
    skipped = {e.node_id: (e.reason, e.upstream) for e in chain if isinstance(e, ev.NodeSkipped)}
    assert skipped == {"sgb_double_1": ("condition", None), "sgb_double_2": ("upstream_skipped", "sgb_double_1")}
    dispatched = {e.node_id for e in chain if isinstance(e, ev.NodeReady | ev.NodeStarted)}
    assert dispatched == {"sgb_check_1", "sgb_echo_1"}
    assert isinstance(chain[-1], ev.RunCompleted)


async def test_true_condition_runs_the_node(graph_env: ProcessHost) -> None:
    out = await start(graph_env, sgb_cond, {"value": 9, "threshold": 5})
    assert out == {"checked": True, "big": 18, "bigger": 36, "always": 9}


async def test_literal_conditions(graph_env: ProcessHost) -> None:
    assert await start(graph_env, sgb_literal_false, {"x": 4}) == {"y": None, "z": 8}


async def test_control_keywords_run_in_order(graph_env: ProcessHost) -> None:
    run_id = new_run_id()
    assert await start(graph_env, sgb_control, {"x": 3}, run_id=run_id) == {"out": [12, 3, "side"]}
    chain = await chain_of(graph_env, run_id)
    # node.ready (work queue) and node.started (a local node) are both the dispatch.
    position = {
        ("dispatched" if isinstance(e, ev.NodeReady | ev.NodeStarted) else type(e).__name__, e.node_id): i
        for i, e in enumerate(chain)
    }
    assert position[("NodeCompleted", "sgb_echo_1")] < position[("dispatched", "sgb_double_1")]
    assert position[("NodeCompleted", "first")] < position[("dispatched", "sgb_double_1")]
    assert position[("NodeCompleted", "sgb_double_1")] < position[("dispatched", "sgb_echo_2")]
    [ready] = [e for e in chain if isinstance(e, ev.NodeReady | ev.NodeStarted) and e.node_id == "sgb_double_1"]
    assert ready.timeout_s == 5.0


async def test_a_static_graph_as_a_node_of_another_is_a_nested_run(graph_env: ProcessHost) -> None:
    run_id = new_run_id()
    assert await start(graph_env, sgb_nested_outer, {"xs": [1, 1, 1, 1]}, run_id=run_id) == {"total": 8, "again": 16}
    from aethergraph.core.ids import node_run_id

    inner_id = node_run_id(run_id, "sgb_fan_1", 1)
    inner = await chain_of(graph_env, inner_id)
    started = inner[0]
    assert isinstance(started, ev.RunStarted)
    assert (started.graph_id, started.parent_run_id, started.parent_node_id) == ("sgb_fan", run_id, "sgb_fan_1")
    assert started.root_run_id == run_id
    assert isinstance(inner[-1], ev.RunCompleted) and inner[-1].outputs == {"total": 8, "first": 2}


async def test_await_graph_and_run_async_and_handles(runtime: ProcessHost) -> None:
    assert await sgb_fan(xs=[0, 1, 2, 3]) == {"total": 12, "first": 0}
    assert await ag.run_async(sgb_fan, {"xs": [1, 1, 1, 1]}, max_concurrency=1) == {"total": 8, "first": 2}
    handle = await ag.start_run(sgb_fan, {"xs": [5, 5, 5, 5]}, max_concurrency=2)
    assert await handle.result() == {"total": 40, "first": 10}
    assert await handle.status() == "succeeded"
    chain = await chain_of(runtime, handle.run_id)
    assert chain[0].max_concurrency == 2  # type: ignore[attr-defined]
    again = await ag.get_run(handle.run_id)
    assert await again.result() == {"total": 40, "first": 10}


async def test_static_graph_inside_a_graph_fn(graph_env: ProcessHost) -> None:
    @graph_fn(name="sgb_fn_calls_static", outputs=["total"])
    async def calls_static(xs: list[int]) -> dict[str, Any]:
        out = await sgb_fan(xs=xs)
        return {"total": out["total"]}

    run_id = new_run_id()
    out = await execute_run(calls_static.spec, {"xs": [2, 2, 2, 2]}, run_id=run_id, env=graph_env.env)
    assert out == {"total": 16}
    stored = [record.event for record in await read_events(graph_env, run_id)]
    called = [e for e in stored if isinstance(e, ev.ToolCalled)]
    assert {e.tool for e in called} == {"sgb_fan"}


async def test_many_runs_of_one_graph_at_once(runtime: ProcessHost) -> None:
    outs = await asyncio.gather(*(ag.run_async(sgb_fan, {"xs": [i, i, i, i]}) for i in range(10)))
    assert outs == [{"total": 8 * i, "first": 2 * i} for i in range(10)]
