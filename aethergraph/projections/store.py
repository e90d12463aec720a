"""``ProjectionStore``: the DuckDB file the projections live in.

One batch of stream messages is applied in one transaction together with
every projection's new cursor (the last stream sequence folded in), so a crash
leaves the store at a batch boundary, and a message seen again (redelivery, a
restart that re-reads) is skipped by sequence: applying twice changes nothing.

DuckDB allows one writing process per file. The process that owns the store
answers other processes' queries (see ``service.py``); within the process,
queries run on their own cursors while batches are written.
"""

from __future__ import annotations

import os
import re
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import duckdb

from aethergraph.core.errors import ProjectionError, ProjectionLockedError

from .fold import BOUNDS, FOLDS, STAGE, STAGING_DDL, Decoded
from .journal import JournalKey, JournalSorter
from .journal_store import journal_key, read_heads, read_held, write_journal
from .schema import JOURNAL, MACROS, PROJECTIONS, STATE_DDL, ProjectionSchema, projection

__all__ = [
    "DEAD_LETTER_MAX_BYTES",
    "EXPORT_STORAGE_VERSION",
    "DeadLetter",
    "ProjectionStore",
    "QueryResult",
    "StreamSource",
    "check_read_only",
]

DEAD_LETTER_MAX_BYTES = 4096
"""How much of a dead letter's bytes the store keeps (the reason then says how long it was)."""

EXPORT_STORAGE_VERSION = "v1.5.0"
"""The DuckDB storage format an export is written in by default: the one DuckDB 1.5 (the current stable
command line, ``pip install duckdb-cli``) reads. ``latest`` writes the installed DuckDB's own format."""

_FOLD_AGAIN = (
    "The tables are folded from the stream: to fold them again run `aethergraph projections rebuild`; "
    "to change data, `aethergraph export FILE` and work on the copy"
)

# What a query on the projections may be: DuckDB's parser names each statement's type.
_READ_ONLY = frozenset({duckdb.StatementType.SELECT})

# How many of the positional parameters ($1 cursor, $2 and $3 batch bounds) each fold statement takes.
_ARITY: dict[str, int] = {
    statement: max((int(n) for n in re.findall(r"\$(\d)", statement)), default=0)
    for statements in FOLDS.values()
    for statement in statements
}


@dataclass(frozen=True, slots=True)
class DeadLetter:
    """A stream message no projection could read, kept with the reason."""

    stream_seq: int
    subject: str
    raw: bytes
    reason: str


@dataclass(frozen=True, slots=True)
class StreamSource:
    """Which stream a store folded: the stream's name and creation time, its cluster, and where it was read."""

    stream: str
    created: str
    cluster: str | None
    server_name: str | None
    url: str

    def same_stream(self, other: StreamSource) -> bool:
        """Whether ``other`` is this very stream (not a stream of the same name on another server, or reset)."""
        return (self.stream, self.created, self.cluster) == (other.stream, other.created, other.cluster)

    def describe(self) -> str:
        where = f"{self.url}" + (f" (server {self.server_name})" if self.server_name else "")
        return f"stream {self.stream} created {self.created} on {where}"


def check_read_only(sql: str) -> None:
    """Raise :class:`ProjectionError` unless ``sql`` is one read-only statement (DuckDB's parser decides)."""
    try:
        statements = duckdb.extract_statements(sql)
    except duckdb.Error as exc:
        raise ProjectionError(f"query failed: {exc}") from exc
    if len(statements) != 1:
        raise ProjectionError(f"give one SQL statement per query, not {len(statements)}")
    kind = statements[0].type
    if kind not in _READ_ONLY:
        name = kind.name.replace("_STATEMENT", "")
        raise ProjectionError(
            f"the projections are read-only: {name} statements are refused (queries may only SELECT, "
            f"DESCRIBE, SHOW or SUMMARIZE). {_FOLD_AGAIN}"
        )


@dataclass(frozen=True, slots=True)
class QueryResult:
    columns: tuple[str, ...]
    types: tuple[str, ...]
    rows: list[tuple[Any, ...]]

    def dicts(self) -> list[dict[str, Any]]:
        return [dict(zip(self.columns, row, strict=True)) for row in self.rows]


class ProjectionStore:
    """The projection tables in one DuckDB file (or ``:memory:``)."""

    def __init__(self, con: duckdb.DuckDBPyConnection, path: str) -> None:
        self._con = con
        self.path = path
        self._write_lock = threading.Lock()
        self.cursors: dict[str, int] = {}
        self.rebuilt: list[str] = []

    # --- opening ------------------------------------------------------------------------

    @classmethod
    def open(cls, path: str | os.PathLike[str] = ":memory:") -> ProjectionStore:
        """Open (creating if needed) the store at ``path`` and bring every projection to its version."""
        where = str(path)
        if where != ":memory:":
            Path(where).parent.mkdir(parents=True, exist_ok=True)
        try:
            con = duckdb.connect(where)
        except duckdb.IOException as exc:
            if "lock" in str(exc).lower():
                raise ProjectionLockedError(
                    f"the projection store {where} is open in another process (DuckDB allows one writer per "
                    "file); query through that process (`aethergraph sql` does this when it runs "
                    "`aethergraph projector`), or point AETHERGRAPH_WORKSPACE elsewhere"
                ) from exc
            raise ProjectionError(f"cannot open the projection store {where}: {exc}") from exc
        # Checkpoints rewrite touched row groups; with the default 16 MB WAL they run every few
        # batches and cost more than the batches. The WAL is replayed on the next open.
        con.execute("SET checkpoint_threshold = '256MB'")
        store = cls(con, where)
        store._prepare()
        return store

    def _prepare(self) -> None:
        con = self._con
        con.execute(STATE_DDL)
        for schema in PROJECTIONS:
            row = con.execute(
                "SELECT version, last_seq FROM projection_state WHERE projection = ?", [schema.name]
            ).fetchone()
            if row is None or row[0] != schema.version:
                self._reset(schema)
                if row is not None:
                    self.rebuilt.append(schema.name)
            else:
                self.cursors[schema.name] = int(row[1])
        journal = self.cursors.get(JOURNAL, 0)
        if journal > min(cursor for name, cursor in self.cursors.items() if name != JOURNAL):
            # A projection is rebuilt from behind the journal state: the rule's decisions for the
            # events it re-reads must be made again, so the journal state is rebuilt with it.
            self._reset(projection(JOURNAL))
        con.execute(MACROS)
        con.execute(STAGING_DDL)

    def _reset(self, schema: ProjectionSchema) -> None:
        """Drop and recreate ``schema``'s tables; its cursor goes back to 0."""
        con = self._con
        con.execute("BEGIN")
        for table, ddl in schema.tables.items():
            con.execute(f"DROP TABLE IF EXISTS {table}")
            con.execute(ddl)
        con.execute("INSERT OR REPLACE INTO projection_state VALUES (?, ?, 0)", [schema.name, schema.version])
        con.execute("COMMIT")
        self.cursors[schema.name] = 0

    def close(self) -> None:
        self._con.close()

    def reset_all(self) -> None:
        """Empty every projection and the dead letters, forget the stream: the next catch-up folds it all again."""
        with self._write_lock:
            for schema in PROJECTIONS:
                self._reset(schema)
            self._con.execute("DELETE FROM dead_letters")
            self._con.execute("DELETE FROM store_source")

    def source(self) -> StreamSource | None:
        """The stream this store folded, if it recorded one."""
        row = self._con.execute("SELECT stream, created, cluster, server_name, url FROM store_source").fetchone()
        return None if row is None else StreamSource(*row)

    def record_source(self, source: StreamSource) -> None:
        with self._write_lock:
            self._con.execute("BEGIN")
            self._con.execute("DELETE FROM store_source")
            self._con.execute(
                "INSERT INTO store_source VALUES (?, ?, ?, ?, ?)",
                [source.stream, source.created, source.cluster, source.server_name, source.url],
            )
            self._con.execute("COMMIT")

    @property
    def last_seq(self) -> int:
        """The stream sequence every projection has folded in (where a reader resumes)."""
        return min(self.cursors.values())

    # --- writing ------------------------------------------------------------------------

    def apply(self, items: Sequence[Decoded], dead: Sequence[DeadLetter] = (), *, through: int | None = None) -> None:
        """Fold ``items`` (decoded, in stream order) into every projection whose cursor is behind them.

        Only the events that belong to their run's journal reach the tables
        (see :mod:`.journal`). ``through`` is the last stream sequence this
        batch covers (defaults to the highest sequence in it); every
        projection's cursor moves to it in the same transaction as the rows.
        """
        self.apply_encoded(
            [i.stream_seq for i in items],
            [i.raw for i in items],
            [journal_key(i.event) for i in items],
            dead,
            through=through,
        )

    def apply_encoded(
        self,
        seqs: Sequence[int],
        raws: Sequence[str],
        keys: Sequence[JournalKey],
        dead: Sequence[DeadLetter] = (),
        *,
        through: int | None = None,
    ) -> None:
        """:meth:`apply` for events already validated: stream sequences, JSON texts and journal keys."""
        highest = max(through or 0, max(seqs, default=0), max((d.stream_seq for d in dead), default=0))
        with self._write_lock:
            cursors = self.cursors
            floor = min(cursors.values())
            if highest <= floor:
                return
            if not _increasing_above(seqs, floor):
                # One item per stream sequence, in order: a redelivered copy can share a batch with the first.
                unique = {seq: (raw, key) for seq, raw, key in zip(seqs, raws, keys, strict=True) if seq > floor}
                seqs = sorted(unique)
                raws = [unique[seq][0] for seq in seqs]
                keys = [unique[seq][1] for seq in seqs]
            con = self._con
            con.execute("BEGIN")
            try:
                if seqs:
                    self._fold(seqs, raws, keys, highest)
                self._dead_letters([d for d in dead if d.stream_seq > floor])
                con.execute("UPDATE projection_state SET last_seq = greatest(last_seq, ?)", [highest])
                con.execute("COMMIT")
            except BaseException:
                con.execute("ROLLBACK")
                raise
            for name in cursors:
                cursors[name] = max(cursors[name], highest)

    def _fold(self, seqs: Sequence[int], raws: Sequence[str], keys: Sequence[JournalKey], highest: int) -> None:
        """Sort the batch by the journal rule, record what it leaves out, fold the journal's events."""
        con, cursors = self._con, self.cursors
        runs = list({key[0] for key in keys})
        low_run = min(runs)
        sorter = JournalSorter(heads=read_heads(con, runs, low_run), held=read_held(con, runs))
        sorter.add_all(seqs, keys, raws)
        write_journal(con, sorter, low_run, seqs[0])
        if not sorter.taken:
            return
        con.execute("DELETE FROM staging")
        con.execute(STAGE, [[t[0] for t in sorter.taken], [t[1] for t in sorter.taken], [t[2] for t in sorter.taken]])
        low_run = _scalar(con, BOUNDS[0], []) or ""
        low_root = _scalar(con, BOUNDS[1], [low_run]) or ""
        for name, statements in FOLDS.items():
            if cursors[name] < highest:
                params = [cursors[name], low_run, low_root]
                for statement in statements:
                    con.execute(statement, params[: _ARITY[statement]])

    def _dead_letters(self, dead: Sequence[DeadLetter]) -> None:
        fresh = list({d.stream_seq: d for d in dead}.values())
        if not fresh:
            return
        self._con.execute(
            "INSERT INTO dead_letters SELECT unnest($1), unnest($2), unnest($3)::BLOB, unnest($4) "
            "ON CONFLICT DO NOTHING",
            [
                [d.stream_seq for d in fresh],
                [d.subject for d in fresh],
                [d.raw[:DEAD_LETTER_MAX_BYTES] for d in fresh],
                [_dead_reason(d) for d in fresh],
            ],
        )

    # --- reading ------------------------------------------------------------------------

    def query(self, sql: str, params: Sequence[Any] | dict[str, Any] | None = None) -> QueryResult:
        """Run the read-only ``sql`` on its own cursor (safe while another thread applies batches).

        Anything but one SELECT (DESCRIBE, SHOW, SUMMARIZE are SELECTs) raises :class:`ProjectionError`,
        and the statement runs in a read-only transaction, so a write hidden inside one (a data-modifying
        CTE) is refused by DuckDB itself.
        """
        check_read_only(sql)
        cursor = self._con.cursor()
        try:
            try:
                cursor.execute("BEGIN TRANSACTION READ ONLY")
                relation = cursor.execute(sql, params) if params is not None else cursor.execute(sql)
                description = relation.description or []
                rows = relation.fetchall() if description else []
            except duckdb.TransactionException as exc:
                if "read-only" not in str(exc):
                    raise ProjectionError(f"query failed: {exc}") from exc
                raise ProjectionError(
                    f"the projections are read-only: the query tried to write ({exc}). {_FOLD_AGAIN}"
                ) from exc
            except duckdb.Error as exc:
                raise ProjectionError(f"query failed: {exc}") from exc
            return QueryResult(
                columns=tuple(d[0] for d in description),
                types=tuple(str(d[1]) for d in description),
                rows=rows,
            )
        finally:
            cursor.close()  # ends the read-only transaction (cheaper than an explicit ROLLBACK)

    def export(self, target: str | os.PathLike[str], storage_version: str = EXPORT_STORAGE_VERSION) -> Path:
        """Write a consistent copy of every table and macro to a new DuckDB file, made read-only.

        ``storage_version`` is DuckDB's storage format to write (``v1.5.0``: what DuckDB 1.5 reads;
        ``latest``: the installed DuckDB's own).
        """
        path = Path(target).resolve()
        if path.exists():
            raise ProjectionError(f"{path} already exists; choose a new file name for the export")
        path.parent.mkdir(parents=True, exist_ok=True)
        cursor = self._con.cursor()
        try:
            source = cursor.execute("SELECT current_database()").fetchone()
            assert source is not None
            escaped = str(path).replace("'", "''")
            version = storage_version.replace("'", "''")
            cursor.execute(f"ATTACH '{escaped}' AS ag_export (STORAGE_VERSION '{version}')")
            try:
                cursor.execute(f'COPY FROM DATABASE "{source[0]}" TO ag_export')
            finally:
                cursor.execute("DETACH ag_export")
        except duckdb.Error as exc:
            raise ProjectionError(f"export to {path} failed: {exc}") from exc
        finally:
            cursor.close()
        path.chmod(0o444)
        return path


def _dead_reason(letter: DeadLetter) -> str:
    if len(letter.raw) <= DEAD_LETTER_MAX_BYTES:
        return letter.reason
    return f"{letter.reason} ({len(letter.raw):,} bytes, the first {DEAD_LETTER_MAX_BYTES:,} kept)"


def _increasing_above(seqs: Sequence[int], floor: int) -> bool:
    """Whether ``seqs`` are all above ``floor`` and strictly increasing (the usual batch: nothing to sort out)."""
    previous = floor
    for seq in seqs:
        if seq <= previous:
            return False
        previous = seq
    return True


def _scalar(con: duckdb.DuckDBPyConnection, sql: str, params: list[Any]) -> Any:
    row = con.execute(sql, params).fetchone()
    return None if row is None else row[0]
