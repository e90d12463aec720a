"""Live run feeds: one bus subscription per followed run, shared by every HTTP client following it.

A :class:`RunFeed` follows one run with the event log's live-follow
machinery (``JetStreamEventLog.following``: one core-NATS subscription to
``ag.live.evt.<run_id>.>`` plus direct gets, no JetStream consumer) and with
one subscription to the run's token deltas on ``ag.stream.<run_id>.>``. It
applies the journal rule (:class:`~aethergraph.core.journal.replay.ChainBuilder`)
to the stored events in stream order and keeps what it released, in order,
as :class:`FeedItem` values; every client reads that one list from its own
cursor, so a thousand clients cost one subscription and one wake-up per
item. A journal event's item carries the stream sequence of the stored
message that released it (the SSE id): a client that saw every item up to
sequence ``L`` continues exactly after ``L`` with ``Last-Event-ID: L``, in
this server or in another one (the items are rebuilt from the stream).

Token deltas are not stored anywhere: they reach the clients following the
run while the feed is open, and never come back on a reconnect to another
server.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any

import msgspec

from aethergraph.bus.connection import BusConnection
from aethergraph.bus.event_log import JetStreamEventLog, StoredRecord
from aethergraph.bus.topology import token_stream_filter
from aethergraph.core.journal.replay import ChainBuilder
from aethergraph.core.wire.codec import encode_event
from aethergraph.core.wire.token_delta import decode_token_delta, encode_token_delta

__all__ = ["AllRunsFeed", "FeedItem", "LiveHub", "RunFeed", "journal_items"]

# The all-runs feed's key among the run feeds (no run id has a space).
_ALL_RUNS = "all runs"

log = logging.getLogger("aethergraph.web")

# How long a feed nobody follows stays open (a client reconnecting at once finds it still there).
LINGER_S = 5.0
# How long a live stream may stay silent before it carries an SSE comment (proxies close idle streams).
KEEPALIVE_S = 15.0


@dataclass(frozen=True, slots=True)
class FeedItem:
    """One SSE message: a journal event (``kind`` ``event``, with its id) or a token delta (``token``, no id).

    ``frame`` is the message as SSE bytes, made once for every client.
    """

    kind: str
    stream_seq: int | None
    data: str
    frame: bytes = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.kind == "event":
            frame = f"id: {self.stream_seq}\ndata: {self.data}\n\n"
        elif self.kind == "keepalive":
            frame = ": keepalive\n\n"
        else:
            frame = f"event: {self.kind}\ndata: {self.data}\n\n"
        object.__setattr__(self, "frame", frame.encode())


_KEEPALIVE = FeedItem("keepalive", None, "")


class _Chain:
    """The journal rule over stored records in stream order: each record yields the events it released."""

    def __init__(self) -> None:
        self._builder = ChainBuilder()

    def add(self, record: StoredRecord) -> list[FeedItem]:
        return [
            FeedItem("event", record.stream_seq, encode_event(event).decode())
            for event in self._builder.add(record.event)
        ]


async def journal_items(event_log: JetStreamEventLog, run_id: str, after: int = 0) -> list[FeedItem]:
    """The run's journal events as feed items (the journal rule applied), those released after ``after`` only."""
    chain = _Chain()
    items: list[FeedItem] = []
    async for record in event_log.read_run(run_id):
        released = chain.add(record)
        if record.stream_seq > after:
            items.extend(released)
    return items


class _Feed:
    """Released items in order and a wake-up for the clients waiting for more: what every feed shares.

    ``items`` keeps at most ``retain`` items (the oldest are dropped); positions are absolute, so a
    client's cursor stays valid when the front is dropped.
    """

    def __init__(self, name: str, keepalive_s: float, retain: int | None = None) -> None:
        self.name = name
        self.keepalive_s = keepalive_s
        self.beats = 0  # one per keepalive_s without a new item: the clients send a keepalive comment
        self.items: list[FeedItem] = []
        self.dropped = 0  # items dropped from the front (absolute position of items[0])
        self.ready = asyncio.Event()  # set once the feed is following
        self.closed = False
        self.error: BaseException | None = None
        self.clients = 0
        self._retain = retain
        self._grown = asyncio.Event()
        self._linger: asyncio.TimerHandle | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._stops: list[Callable[[], Awaitable[None]]] = []

    def _wake(self) -> None:
        grown, self._grown = self._grown, asyncio.Event()
        grown.set()

    def _append(self, new: list[FeedItem]) -> None:
        if new:
            self.items.extend(new)
            if self._retain is not None and len(self.items) > self._retain:
                excess = len(self.items) - self._retain
                del self.items[:excess]
                self.dropped += excess
            self._wake()

    async def _keepalive(self) -> None:
        """One timer for all the feed's clients (not one per client and wait)."""
        seen = self.dropped + len(self.items)
        while True:
            await asyncio.sleep(self.keepalive_s)
            if self.dropped + len(self.items) == seen:
                self.beats += 1
                self._wake()
            seen = self.dropped + len(self.items)

    def _start_tasks(self, *coroutines: Coroutine[Any, Any, None]) -> None:
        self._tasks = [asyncio.create_task(c, name=f"aethergraph-feed-{self.name}") for c in coroutines]
        self._tasks.append(asyncio.create_task(self._keepalive(), name=f"aethergraph-feed-beat-{self.name}"))

    async def close(self) -> None:
        self.closed = True
        for stop in self._stops:
            await stop()
        for task in self._tasks:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def tail(self, after: int | None) -> AsyncIterator[list[FeedItem]]:
        """Every item after stream sequence ``after`` (all of them when None), then the new ones as they come.

        Items come in lists: all that were there when the client woke (one write for what a slow client
        missed). A ``keepalive`` item comes after ``keepalive_s`` without any (SSE comments keep proxies
        from closing an idle stream).
        """
        await self.ready.wait()
        cursor = self.dropped
        if after is not None:
            # Skip what the client saw: items up to and including the last released by message ``after``.
            for index, item in enumerate(self.items):
                if item.stream_seq is not None and item.stream_seq <= after:
                    cursor = self.dropped + index + 1
        while True:
            cursor = max(cursor, self.dropped)  # a client slower than ``retain`` items misses the dropped ones
            if cursor < self.dropped + len(self.items):
                batch = self.items[cursor - self.dropped :]
                cursor += len(batch)
                ended = batch[-1].kind == "end"
                batch = batch[:-1] if ended else batch
                if batch:
                    yield batch
                if ended:
                    return
                continue
            beats = self.beats
            await self._grown.wait()
            if self.beats != beats and cursor == self.dropped + len(self.items):
                yield [_KEEPALIVE]


class RunFeed(_Feed):
    """One followed run: its journal events (the journal rule applied) and its token deltas."""

    def __init__(self, run_id: str, keepalive_s: float = KEEPALIVE_S) -> None:
        super().__init__(run_id, keepalive_s)
        self.run_id = run_id
        self._chain = _Chain()

    def _on_token(self, data: bytes) -> None:
        try:
            delta = decode_token_delta(data)
        except (msgspec.DecodeError, msgspec.ValidationError):
            return  # not a token delta: ignored, like any stray message
        if delta.run_id == self.run_id:
            self._append([FeedItem("token", None, encode_token_delta(delta).decode())])

    async def start(self, event_log: JetStreamEventLog, bus: BusConnection) -> None:
        self._stops.append(await bus.watch(token_stream_filter(self.run_id), self._on_token))
        self._start_tasks(self._pump(event_log))

    async def _pump(self, event_log: JetStreamEventLog) -> None:
        try:
            async with event_log.following(self.run_id) as (stored, live):
                self._append([item for record in stored for item in self._chain.add(record)])
                self.ready.set()
                async for record in live:
                    self._append(self._chain.add(record))
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # noqa: BLE001 - handed to the clients, which end their streams with it
            log.warning("following run %s stopped: %s", self.run_id, exc)
            self.error = exc
        finally:
            self.closed = True
            self.ready.set()
            self._append([FeedItem("end", None, "")])


# The event types of every run that the all-runs stream carries (what the runs list and the inbox show).
ALL_RUNS_TYPES = ("run.*", "wait.*")
# How many of the latest items the all-runs feed keeps for clients that reconnect (older ones: read again).
ALL_RUNS_RETAIN = 10_000


class AllRunsFeed(_Feed):
    """Every run's ``run.*`` and ``wait.*`` events as the server stores them (one subscription per server).

    No journal rule applies across runs: an item is a hint of what changed (a run's status, a wait), which
    clients confirm from the run's own state (``GET /api/runs/{run_id}``, rebuilt from its journal).
    """

    def __init__(self, keepalive_s: float = KEEPALIVE_S) -> None:
        super().__init__("all-runs", keepalive_s, retain=ALL_RUNS_RETAIN)
        self._event_log: JetStreamEventLog | None = None

    def _on_record(self, record: StoredRecord) -> None:
        self._append([FeedItem("event", record.stream_seq, encode_event(record.event).decode())])

    async def start(self, event_log: JetStreamEventLog) -> None:
        self._event_log = event_log
        self._stops.append(await event_log.watch_types(ALL_RUNS_TYPES, self._on_record))
        self._start_tasks()
        self.ready.set()

    async def missed(self, after: int) -> list[FeedItem]:
        """The stored items after ``after`` that this feed no longer (or never) held, read from the stream."""
        held = next((item.stream_seq for item in self.items if item.stream_seq is not None), None)
        if self._event_log is None or (held is not None and held <= after + 1):
            return []
        records = await self._event_log.read_types(ALL_RUNS_TYPES, after=after, limit=ALL_RUNS_RETAIN)
        until = held if held is not None else None
        return [
            FeedItem("event", record.stream_seq, encode_event(record.event).decode())
            for record in records
            if until is None or record.stream_seq < until
        ]


class LiveHub:
    """The server's run feeds: opened by the first client of a run, closed a little after its last one left."""

    def __init__(self, event_log: JetStreamEventLog, bus: BusConnection, *, keepalive_s: float = KEEPALIVE_S) -> None:
        self._event_log = event_log
        self._bus = bus
        self._keepalive_s = keepalive_s
        self._feeds: dict[str, _Feed] = {}

    @property
    def feeds(self) -> int:
        return len(self._feeds)

    @contextlib.asynccontextmanager
    async def follow(self, run_id: str) -> AsyncIterator[RunFeed]:
        feed = self._feeds.get(run_id)
        if not isinstance(feed, RunFeed) or feed.closed:
            feed = RunFeed(run_id, self._keepalive_s)
            self._feeds[run_id] = feed
            await feed.start(self._event_log, self._bus)
        async with self._client(feed):
            yield feed

    @contextlib.asynccontextmanager
    async def follow_all(self) -> AsyncIterator[AllRunsFeed]:
        """The server's one feed of every run's ``run.*``/``wait.*`` events."""
        feed = self._feeds.get(_ALL_RUNS)
        if not isinstance(feed, AllRunsFeed) or feed.closed:
            feed = AllRunsFeed(self._keepalive_s)
            self._feeds[_ALL_RUNS] = feed
            await feed.start(self._event_log)
        async with self._client(feed):
            yield feed

    @contextlib.asynccontextmanager
    async def _client(self, feed: _Feed) -> AsyncIterator[None]:
        feed.clients += 1
        if feed._linger is not None:
            feed._linger.cancel()
            feed._linger = None
        try:
            yield
        finally:
            feed.clients -= 1
            if feed.clients == 0:
                loop = asyncio.get_running_loop()
                feed._linger = loop.call_later(LINGER_S, lambda: loop.create_task(self._drop(feed)))

    async def _drop(self, feed: _Feed) -> None:
        if feed.clients == 0 and self._feeds.get(feed.name) is feed:
            del self._feeds[feed.name]
            await feed.close()

    async def close(self) -> None:
        feeds, self._feeds = list(self._feeds.values()), {}
        for feed in feeds:
            if feed._linger is not None:
                feed._linger.cancel()
            await feed.close()
