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
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import duckdb

from aethergraph.core.errors import ProjectionError, ProjectionLockedError

from .fold import Decoded, FoldBatch, TableRows
from .schema import MACROS, PROJECTIONS, STATE_DDL

__all__ = ["DeadLetter", "ProjectionStore", "QueryResult"]


@dataclass(frozen=True, slots=True)
class DeadLetter:
    """A stream message no projection could read, kept with the reason."""

    stream_seq: int
    subject: str
    raw: bytes
    reason: str


@dataclass(frozen=True, slots=True)
class QueryResult:
    columns: tuple[str, ...]
    types: tuple[str, ...]
    rows: list[tuple[Any, ...]]

    def dicts(self) -> list[dict[str, Any]]:
        return [dict(zip(self.columns, row, strict=True)) for row in self.rows]


_MERGE = {
    "last": "coalesce(excluded.{c}, {t}.{c})",
    "first": "coalesce({t}.{c}, excluded.{c})",
    "add": "{t}.{c} + excluded.{c}",
    "max": "greatest(coalesce({t}.{c}, excluded.{c}), coalesce(excluded.{c}, {t}.{c}))",
}


class ProjectionStore:
    """The projection tables in one DuckDB file (or ``:memory:``)."""

    def __init__(self, con: duckdb.DuckDBPyConnection, path: str) -> None:
        self._con = con
        self.path = path
        self._write_lock = threading.Lock()
        self._types: dict[str, dict[str, str]] = {}
        self._statements: dict[str, str] = {}
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
                con.execute("BEGIN")
                for table, ddl in schema.tables.items():
                    con.execute(f"DROP TABLE IF EXISTS {table}")
                    con.execute(ddl)
                con.execute("INSERT OR REPLACE INTO projection_state VALUES (?, ?, 0)", [schema.name, schema.version])
                con.execute("COMMIT")
                if row is not None:
                    self.rebuilt.append(schema.name)
                self.cursors[schema.name] = 0
            else:
                self.cursors[schema.name] = int(row[1])
        con.execute(MACROS)
        for table, column, data_type in con.execute(
            "SELECT table_name, column_name, data_type FROM information_schema.columns "
            "WHERE table_schema = 'main' ORDER BY table_name, ordinal_position"
        ).fetchall():
            self._types.setdefault(table, {})[column] = data_type

    def close(self) -> None:
        self._con.close()

    @property
    def last_seq(self) -> int:
        """The stream sequence every projection has folded in (where a reader resumes)."""
        return min(self.cursors.values())

    # --- writing ------------------------------------------------------------------------

    def apply(self, items: Sequence[Decoded], dead: Sequence[DeadLetter] = (), *, through: int | None = None) -> int:
        """Fold ``items`` (in stream order) into every projection behind them; returns rows written.

        ``through`` is the last stream sequence this batch covers (defaults to
        the highest sequence in it); every projection's cursor moves to it.
        """
        highest = max([through or 0, *(item.stream_seq for item in items[-1:]), *(d.stream_seq for d in dead)])
        with self._write_lock:
            cursors = self.cursors
            floor = min(cursors.values())
            if highest <= floor:
                return 0
            batch = FoldBatch()
            uniform = floor == max(cursors.values())
            for item in items:
                seq = item.stream_seq
                if seq <= floor:
                    continue
                if uniform:
                    batch.add(item)
                else:
                    batch.add(item, frozenset(name for name, last in cursors.items() if seq > last))
            fresh_dead = [d for d in dead if d.stream_seq > floor]
            written = self._write(batch, fresh_dead, highest)
            for name in cursors:
                cursors[name] = max(cursors[name], highest)
            return written

    def _write(self, batch: FoldBatch, dead: Sequence[DeadLetter], highest: int) -> int:
        con = self._con
        written = 0
        con.execute("BEGIN")
        try:
            for rows in batch.tables().values():
                if rows:
                    self._upsert(rows)
                    written += len(rows)
            written += self._write_lineage(batch)
            if dead:
                con.execute(
                    "INSERT INTO dead_letters SELECT unnest($1), unnest($2), unnest($3)::BLOB, unnest($4) "
                    "ON CONFLICT DO NOTHING",
                    [
                        [d.stream_seq for d in dead],
                        [d.subject for d in dead],
                        [d.raw for d in dead],
                        [d.reason for d in dead],
                    ],
                )
                written += len(dead)
            con.execute("UPDATE projection_state SET last_seq = greatest(last_seq, ?)", [highest])
            con.execute("COMMIT")
        except BaseException:
            con.execute("ROLLBACK")
            raise
        return written

    def _upsert(self, rows: TableRows) -> None:
        table = rows.table
        statement = self._statements.get(table)
        if statement is None:
            statement = self._statements[table] = self._upsert_statement(rows)
        data = rows.all_rows()
        columns = [[row[i] for row in data] for i in range(len(rows.columns))]
        self._con.execute(statement, columns)

    def _upsert_statement(self, rows: TableRows) -> str:
        table = rows.table
        types = self._types[table]
        selects = []
        for index, column in enumerate(rows.columns, start=1):
            if column in rows.timestamps:
                selects.append(f"make_timestamp(unnest(${index})::BIGINT)")
            else:
                selects.append(f"unnest(${index})::{types[column]}")
        updates = [
            f"{column} = " + _MERGE[rule].format(t=table, c=column)
            for column, rule in zip(rows.columns, rows.rules, strict=True)
            if rule != "key"
        ]
        head = f"INSERT INTO {table} ({', '.join(rows.columns)}) SELECT {', '.join(selects)}"
        if not rows.keys or table == "events":
            return head + " ON CONFLICT DO NOTHING"
        return f"{head} ON CONFLICT ({', '.join(rows.keys)}) DO UPDATE SET {', '.join(updates)}"

    def _write_lineage(self, batch: FoldBatch) -> int:
        con = self._con
        written = 0
        if batch.roots:
            con.execute(
                "INSERT INTO lineage_roots SELECT unnest($1), unnest($2) ON CONFLICT DO NOTHING",
                [[r[0] for r in batch.roots], [r[1] for r in batch.roots]],
            )
        if batch.edges:
            edges = list({(e[0], e[1], e[2]): e for e in reversed(batch.edges)}.values())
            con.execute(
                "INSERT INTO edges SELECT e.src, e.dst, e.kind, coalesce(r.root_run_id, e.run_id), e.run_id, e.seq "
                "FROM (SELECT unnest($1) AS src, unnest($2) AS dst, unnest($3) AS kind, unnest($4) AS run_id, "
                "unnest($5)::BIGINT AS seq) e LEFT JOIN lineage_roots r ON r.run_id = e.run_id "
                "ON CONFLICT DO NOTHING",
                [[e[i] for e in edges] for i in range(5)],
            )
            written += len(edges)
        if batch.outputs:
            outputs = list({(v[0], v[2]): v for v in reversed(batch.outputs)}.values())
            con.execute(
                "INSERT INTO lineage_values SELECT v.digest, coalesce(r.root_run_id, v.run_id), v.entity, v.seq "
                "FROM (SELECT unnest($1) AS digest, unnest($2) AS run_id, unnest($3) AS entity, "
                "unnest($4)::BIGINT AS seq) v LEFT JOIN lineage_roots r ON r.run_id = v.run_id "
                "ON CONFLICT DO NOTHING",
                [[v[i] for v in outputs] for i in range(4)],
            )
            written += len(outputs)
        if batch.inputs:
            con.execute(
                "INSERT INTO edges "
                "SELECT v.entity, i.entity, 'data', v.root_run_id, i.run_id, min(i.seq) "
                "FROM (SELECT unnest($1) AS digest, unnest($2) AS run_id, unnest($3) AS entity, "
                "unnest($4)::BIGINT AS seq) i "
                "LEFT JOIN lineage_roots r ON r.run_id = i.run_id "
                "JOIN lineage_values v ON v.digest = i.digest "
                " AND v.root_run_id = coalesce(r.root_run_id, i.run_id) "
                " AND v.stream_seq < i.seq AND v.entity <> i.entity "
                "GROUP BY v.entity, i.entity, v.root_run_id, i.run_id "
                "ON CONFLICT DO NOTHING",
                [[v[i] for v in batch.inputs] for i in range(4)],
            )
        return written

    # --- reading ------------------------------------------------------------------------

    def query(self, sql: str, params: Sequence[Any] | dict[str, Any] | None = None) -> QueryResult:
        """Run ``sql`` on its own cursor (safe while another thread applies batches)."""
        cursor = self._con.cursor()
        try:
            try:
                relation = cursor.execute(sql, params) if params is not None else cursor.execute(sql)
                description = relation.description or []
                rows = relation.fetchall() if description else []
            except duckdb.Error as exc:
                raise ProjectionError(f"query failed: {exc}") from exc
            return QueryResult(
                columns=tuple(d[0] for d in description),
                types=tuple(str(d[1]) for d in description),
                rows=rows,
            )
        finally:
            cursor.close()

    def export(self, target: str | os.PathLike[str]) -> Path:
        """Write a consistent copy of every table and macro to a new DuckDB file, made read-only."""
        path = Path(target).resolve()
        if path.exists():
            raise ProjectionError(f"{path} already exists; choose a new file name for the export")
        path.parent.mkdir(parents=True, exist_ok=True)
        cursor = self._con.cursor()
        try:
            source = cursor.execute("SELECT current_database()").fetchone()
            assert source is not None
            escaped = str(path).replace("'", "''")
            cursor.execute(f"ATTACH '{escaped}' AS ag_export")
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
