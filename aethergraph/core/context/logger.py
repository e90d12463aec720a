"""``context.logger()``: stdlib logging bound to run and node, each record also an event."""

from __future__ import annotations

import logging
from typing import Any, Literal

from aethergraph.core.errors import SerializationError
from aethergraph.core.ids import ROOT_NODE
from aethergraph.core.journal.scope import RunScope, cursor
from aethergraph.core.wire.codec import normalise_value
from aethergraph.core.wire.events import LogRecorded

__all__ = ["NodeLogger"]

_stdlib = logging.getLogger("aethergraph.run")
_MAX_MESSAGE = 16 * 1024
Level = Literal["debug", "info", "warning", "error", "critical"]
_LEVELS: dict[Level, int] = {
    "debug": logging.DEBUG,
    "info": logging.INFO,
    "warning": logging.WARNING,
    "error": logging.ERROR,
    "critical": logging.CRITICAL,
}


def _fields(extra: dict[str, Any] | None, kwargs: dict[str, Any]) -> dict[str, Any]:
    merged = {**(extra or {}), **kwargs}
    try:
        value, _ = normalise_value(merged, what="a log record", strict=False)  # a timestamp in a log is fine as text
    except SerializationError:
        return {key: repr(item) for key, item in merged.items()}
    return value if isinstance(value, dict) else {}


class NodeLogger:
    """Logger bound to a run and node; ``info("msg", extra={...})`` as with stdlib logging.

    Each record goes to the stdlib logger ``aethergraph.run`` and is appended to
    the run's journal as a ``log.recorded`` event (committed with the next step).
    """

    __slots__ = ("_node_id", "_scope")

    def __init__(self, scope: RunScope, node_id: str | None) -> None:
        self._scope = scope
        self._node_id = node_id

    def log(self, level: Level, msg: object, *args: object, extra: dict[str, Any] | None = None, **fields: Any) -> None:
        text = str(msg) % args if args else str(msg)
        if len(text) > _MAX_MESSAGE:
            text = text[:_MAX_MESSAGE] + f"... [{len(text) - _MAX_MESSAGE} characters cut]"
        data = _fields(extra, fields)
        scope = self._scope
        if self._node_id == ROOT_NODE and scope.replay is not None and scope.replay.skip_log():
            return
        if _stdlib.isEnabledFor(_LEVELS[level]):
            _stdlib.log(
                _LEVELS[level],
                text,
                extra={"run_id": scope.run_id, "node_id": self._node_id, "fields": data},
            )
        scope.journal.append(
            LogRecorded, parent=cursor.get() or None, node_id=self._node_id, level=level, message=text, fields=data
        )

    def debug(self, msg: object, *args: object, extra: dict[str, Any] | None = None, **fields: Any) -> None:
        self.log("debug", msg, *args, extra=extra, **fields)

    def info(self, msg: object, *args: object, extra: dict[str, Any] | None = None, **fields: Any) -> None:
        self.log("info", msg, *args, extra=extra, **fields)

    def warning(self, msg: object, *args: object, extra: dict[str, Any] | None = None, **fields: Any) -> None:
        self.log("warning", msg, *args, extra=extra, **fields)

    def error(self, msg: object, *args: object, extra: dict[str, Any] | None = None, **fields: Any) -> None:
        self.log("error", msg, *args, extra=extra, **fields)

    def critical(self, msg: object, *args: object, extra: dict[str, Any] | None = None, **fields: Any) -> None:
        self.log("critical", msg, *args, extra=extra, **fields)
