"""``context.kv()`` on JetStream KV: every operation, TTLs, optimistic writes, replay, bad input."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable, Coroutine
from typing import Any

import pytest
from helpers import eventually, read_events

import aethergraph
from aethergraph import graph_fn
from aethergraph.core.api.callables import GraphFunction
from aethergraph.core.errors import KeyConflictError, SerializationError
from aethergraph.core.ids import new_run_id
from aethergraph.core.run.executor import execute_run, resume_run
from aethergraph.core.wire import events as ev
from aethergraph.host.process import ProcessHost


class Crash(BaseException):
    """Stands for the death of the process."""


def graph(body: Callable[..., Coroutine[Any, Any, dict[str, Any]]]) -> GraphFunction:
    return graph_fn(name="kv_flow", outputs=["v"])(body)


def prefix() -> str:
    return f"t{os.urandom(4).hex()}:"


async def test_set_get_delete_and_many(runtime: ProcessHost) -> None:
    p = prefix()

    @graph
    async def flow(*, context: Any) -> dict[str, Any]:
        kv = context.kv()
        revision = await kv.set(p + "a", {"x": [1, 2]})
        got = await kv.get(p + "a")
        missing = await kv.get(p + "nope", "fallback")
        await kv.mset({p + "b": 2, p + "c": "three"})
        many = await kv.mget([p + "a", p + "b", p + "c", p + "zzz"])
        existed = await kv.delete(p + "b")
        again = await kv.delete(p + "b")
        entry = await kv.get_entry(p + "a")
        return {"v": [revision > 0, got, missing, many, existed, again, entry["revision"] == revision]}

    assert await aethergraph.run_async(flow, {}) == {
        "v": [True, {"x": [1, 2]}, "fallback", [{"x": [1, 2]}, 2, "three", None], True, False, True]
    }


async def test_keys_may_hold_any_characters_and_scans_keep_prefixes(runtime: ProcessHost) -> None:
    p = prefix()
    keys = [p + "user 1/name", p + "user.1.email", p + "usér=1", p + "user:2", p + "other"]

    @graph
    async def flow(*, context: Any) -> dict[str, Any]:
        kv = context.kv()
        for i, key in enumerate(keys):
            await kv.set(key, i)
        return {"v": [await kv.scan_prefix(p + "user"), await kv.scan_prefix(p + "us"), await kv.get(keys[2])]}

    [user, us, third] = (await aethergraph.run_async(flow, {}))["v"]
    assert user == {keys[0]: 0, keys[1]: 1, keys[3]: 3}
    assert us == {keys[0]: 0, keys[1]: 1, keys[2]: 2, keys[3]: 3}
    assert third == 2


async def test_incr_and_append_unique_are_atomic_across_concurrent_runs(runtime: ProcessHost) -> None:
    p = prefix()

    @graph_fn(name="kv_bump", outputs=["v"])
    async def bump(n: int, *, context: Any) -> dict[str, Any]:
        for i in range(n):
            await context.kv().incr(p + "count")
            await context.kv().list_append_unique(p + "seen", [i % 5, "x"])
        return {"v": n}

    await asyncio.gather(*(aethergraph.run_async(bump, {"n": 10}) for _ in range(4)))

    @graph
    async def read(*, context: Any) -> dict[str, Any]:
        return {"v": [await context.kv().get(p + "count"), await context.kv().get(p + "seen")]}

    count, seen = (await aethergraph.run_async(read, {}))["v"]
    assert count == 40
    assert sorted(seen, key=str) == sorted([0, 1, 2, 3, 4, "x"], key=str) and len(seen) == 6


async def test_optimistic_writes_refuse_a_stale_revision(runtime: ProcessHost) -> None:
    p = prefix()

    @graph
    async def flow(*, context: Any) -> dict[str, Any]:
        kv = context.kv()
        first = await kv.set(p + "doc", "v1", expected_revision=0)  # only if absent
        second = await kv.set(p + "doc", "v2", expected_revision=first)
        outcomes = []
        for expected in (first, 0):
            try:
                await kv.set(p + "doc", "v3", expected_revision=expected)
            except KeyConflictError as exc:
                outcomes.append([exc.key, exc.expected, exc.actual])
        return {"v": [first, second, outcomes, await kv.get(p + "doc")]}

    [first, second, outcomes, value] = (await aethergraph.run_async(flow, {}))["v"]
    assert second > first and value == "v2"
    assert outcomes == [[p + "doc", first, second], [p + "doc", 0, second]]


async def test_ttl_makes_keys_expire(runtime: ProcessHost) -> None:
    p = prefix()

    @graph
    async def flow(*, context: Any) -> dict[str, Any]:
        await context.kv().set(p + "short", "soon gone", ttl=1)
        await context.kv().incr(p + "ticks", 5, ttl=1)
        return {"v": [await context.kv().get(p + "short"), await context.kv().get(p + "ticks")]}

    assert await aethergraph.run_async(flow, {}) == {"v": ["soon gone", 5]}
    store = runtime.service_backends.kv

    async def expired() -> bool | None:
        return True if await store.get(p + "short") is None and await store.get(p + "ticks") is None else None

    assert await eventually(expired, "the keys to expire")


async def test_replay_reads_the_recorded_values_not_the_current_ones(runtime: ProcessHost) -> None:
    p = prefix()

    async def crashes(*, context: Any) -> dict[str, Any]:
        await context.kv().set(p + "k", "before")
        await context.kv().get(p + "k")
        raise Crash

    run_id = new_run_id()
    with pytest.raises(Crash):
        await execute_run(graph(crashes).spec, {}, run_id=run_id, env=runtime.env)
    await runtime.service_backends.kv.put(p + "k", b'"changed by someone else"')

    async def finishes(*, context: Any) -> dict[str, Any]:
        await context.kv().set(p + "k", "before")
        seen = await context.kv().get(p + "k")
        now = await context.kv().get(p + "k")
        return {"v": [seen, now]}

    assert await resume_run(graph(finishes).spec, run_id, env=runtime.env) == {
        "v": ["before", "changed by someone else"]
    }
    events = [r.event for r in await read_events(runtime, run_id)]
    sets = [e for e in events if isinstance(e, ev.ServiceCalled) and e.method == "set"]
    assert len(sets) == 1  # the replay did not write again


async def test_bad_input_is_refused_before_anything_is_journaled(runtime: ProcessHost) -> None:
    p = prefix()
    problems: list[tuple[type[BaseException], Callable[[Any], Coroutine[Any, Any, Any]]]] = [
        (ValueError, lambda kv: kv.get("")),
        (ValueError, lambda kv: kv.get(42)),
        (SerializationError, lambda kv: kv.set(p + "x", object())),
        (ValueError, lambda kv: kv.set(p + "x", 1, ttl=0)),
        (ValueError, lambda kv: kv.incr(p + "x", 1.5)),
    ]

    @graph
    async def flow(*, context: Any) -> dict[str, Any]:
        raised = []
        for expected, call in problems:
            with pytest.raises(expected) as caught:
                await call(context.kv())
            raised.append(str(caught.value))
        await context.kv().set(p + "text", "not a number")
        with pytest.raises(ValueError) as caught:
            await context.kv().incr(p + "text")
        raised.append(str(caught.value))
        return {"v": raised}

    run_id = new_run_id()
    raised = (await execute_run(flow.spec, {}, run_id=run_id, env=runtime.env))["v"]
    assert "cannot be stored" in raised[2] and "not an integer" in raised[-1]
    events = [r.event for r in await read_events(runtime, run_id)]
    assert [e.method for e in events if isinstance(e, ev.ServiceCalled)] == ["set", "incr"]
