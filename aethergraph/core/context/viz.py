"""``context.viz()``: points of visualisation tracks, recorded as ``viz.recorded`` events.

Each call is a one-event step: live it journals one ``viz.recorded`` event
(the point: a track, a kind, an optional step number and the value or the
image's artifact), on replay it returns without recording again. Points are
pipelined like ``context.now()``: the event is committed with the run's next
awaited event, so a training loop recording a scalar per iteration does not
wait for the bus each time. The ``viz`` projection table holds every point
(SQL: ``SELECT * FROM viz WHERE run_id = ? AND track = 'loss' ORDER BY step``).

Values are checked before anything is recorded: finite numbers only, a
matrix's rows all of one length, at most :data:`MAX_NUMBERS` numbers in one
point (a larger array belongs in an artifact). Images live in the artifact
store; the event carries their URI.
"""

from __future__ import annotations

import math
import numbers
import sys
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sized
from typing import TYPE_CHECKING, Any, Final, Literal

from aethergraph.core.context.artifacts import Artifact
from aethergraph.core.errors import ArtifactNotFoundError
from aethergraph.core.journal.step import StepKey, append_opening, replayed_opening, suspend_point
from aethergraph.core.wire.codec import normalise_value
from aethergraph.core.wire.events import VizRecorded

if TYPE_CHECKING:
    from aethergraph.core.context.node_context import NodeContext

__all__ = ["MAX_NUMBERS", "MAX_TRACK_CHARS", "VizService"]

MAX_NUMBERS: Final = 10_000
"""The most numbers one point (a vector, or a matrix's cells) may hold: it rides inside an event."""

MAX_TRACK_CHARS: Final = 200
_FLOAT_MAX: Final = sys.float_info.max

Kind = Literal["scalar", "vector", "matrix", "image"]


class _Point:
    """Names one point in error messages: ``viz().vector('loss', step=3) in node train_1``."""

    __slots__ = ("kind", "node_id", "step", "track")

    def __init__(self, kind: Kind, track: str, step: int | None, node_id: str) -> None:
        self.kind, self.track, self.step, self.node_id = kind, track, step, node_id

    def __str__(self) -> str:
        method = {"image": "image_*"}.get(self.kind, self.kind)
        at = "" if self.step is None else f", step={self.step}"
        return f"context.viz().{method}({self.track!r}{at}) in node {self.node_id}"


def _track(track: Any) -> str:
    if not isinstance(track, str) or not track.strip():
        raise ValueError(f"a viz track needs a name (a non-empty string, e.g. 'loss'), got {track!r}")
    if len(track) > MAX_TRACK_CHARS:
        raise ValueError(f"viz track name {track[:40]!r}... is {len(track)} characters; use at most {MAX_TRACK_CHARS}")
    return track


def _step(step: Any) -> int | None:
    if step is None:
        return None
    if isinstance(step, bool) or not isinstance(step, numbers.Integral):
        raise TypeError(f"a viz step is an integer (the iteration, epoch, ...) or None, got {step!r}")
    return int(step)


def _number(value: Any, point: _Point, where: str) -> float:
    kind = type(value)
    if kind is float:  # the common cases first, without the ABC checks
        number: float = value
    elif kind is int:
        number = float(value) if -_FLOAT_MAX <= value <= _FLOAT_MAX else (math.inf if value > 0 else -math.inf)
    elif isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{point}: {where} is {value!r} ({type(value).__name__}), not a number (int or float)")
    else:
        try:
            number = float(value)
        except OverflowError:  # a number too large for a float
            number = math.inf
    if not math.isfinite(number):
        raise ValueError(
            f"{point}: {where} is {number}, not a finite number; record finite values only "
            "(skip the point, or clip the value and say so in meta=)"
        )
    return number


def _too_many(point: _Point, count: int | None, what: str) -> ValueError:
    held = f"{count:,} numbers" if count is not None else "more numbers"
    return ValueError(
        f"{point}: {what} holds {held} than the {MAX_NUMBERS:,} one point may carry (a point rides inside an "
        "event). Save the full array as an artifact (context.artifacts().save_json(...)) and record a "
        "downsampled one here, or render it and record the picture with image_from_bytes"
    )


def _row(values: Any, point: _Point, what: str) -> list[float]:
    if isinstance(values, (str, bytes, bytearray, Mapping)) or not isinstance(values, Iterable):
        raise TypeError(f"{point}: {what} must be a sequence of numbers, got {type(values).__name__}")
    size = len(values) if isinstance(values, Sized) else None
    if size is not None and size > MAX_NUMBERS:
        raise _too_many(point, size, what)
    row: list[float] = []
    for index, value in enumerate(values):
        if index == MAX_NUMBERS:  # an iterator without a length
            raise _too_many(point, None, what)
        row.append(_number(value, point, f"{what}[{index}]"))
    return row


def _matrix(rows: Any, point: _Point) -> list[list[float]]:
    if isinstance(rows, (str, bytes, bytearray, Mapping)) or not isinstance(rows, Iterable):
        raise TypeError(f"{point}: a matrix is a sequence of rows (sequences of numbers), got {type(rows).__name__}")
    matrix: list[list[float]] = []
    cells = 0
    for index, values in enumerate(rows):
        row = _row(values, point, f"row {index}")
        if matrix and len(row) != len(matrix[0]):
            raise ValueError(
                f"{point}: row {index} has {len(row)} numbers but row 0 has {len(matrix[0])}; "
                "a matrix needs rows of one length (pad or crop them)"
            )
        cells += len(row)
        if cells > MAX_NUMBERS:
            raise _too_many(point, None, f"the matrix (rows 0..{index} already)")
        matrix.append(row)
    return matrix


def _meta(meta: Mapping[str, Any] | None, point: _Point) -> dict[str, Any]:
    if meta is None:
        return {}
    if not isinstance(meta, Mapping):
        raise TypeError(f"{point}: meta= is a dict of extra fields, got {type(meta).__name__}")
    value, _ = normalise_value(dict(meta), what=f"the meta of {point}")
    return dict(value)


class VizService:
    """``context.viz()`` for one node; see the module docstring."""

    __slots__ = ("_ctx",)

    def __init__(self, ctx: NodeContext) -> None:
        self._ctx = ctx

    def _point(self, kind: Kind, track: Any, step: Any) -> _Point:
        return _Point(kind, _track(track), _step(step), self._ctx.node_id)

    async def _record(
        self, point: _Point, *, check: Callable[[], Awaitable[None]] | None = None, **fields: Any
    ) -> None:
        """The one-event step: the recorded point on replay, else ``check()`` and journal it (pipelined)."""
        ctx = self._ctx
        scope = ctx._scope
        if scope.divergence is not None:
            raise scope.divergence
        key = StepKey(
            VizRecorded,
            ctx.node_id,
            lambda: f"a viz point ({point})",
            names={"track": point.track, "kind": point.kind},
            compared={"step": point.step},
        )
        if replayed_opening(scope, key) is not None:
            return
        if check is not None:
            await check()
        _, committed = append_opening(scope, key, **fields)  # committed with the run's next awaited event
        if scope.suspend_after_each_step:
            await committed  # the test mode continues by replay from the stream: the point must be there
        suspend_point(scope)

    async def scalar(
        self, track: str, *, step: int | None = None, value: float, meta: Mapping[str, Any] | None = None
    ) -> None:
        """Record ``value`` (a finite number) as the point ``step`` of ``track``."""
        point = self._point("scalar", track, step)
        await self._record(point, value=_number(value, point, "value"), meta=_meta(meta, point))

    async def vector(
        self, track: str, values: Iterable[float], *, step: int | None = None, meta: Mapping[str, Any] | None = None
    ) -> None:
        """Record a vector (finite numbers, at most :data:`MAX_NUMBERS`) as the point ``step`` of ``track``."""
        point = self._point("vector", track, step)
        await self._record(point, value=_row(values, point, "values"), meta=_meta(meta, point))

    async def matrix(
        self,
        track: str,
        matrix: Iterable[Iterable[float]],
        *,
        step: int | None = None,
        meta: Mapping[str, Any] | None = None,
    ) -> None:
        """Record a matrix (rows of equal length; at most :data:`MAX_NUMBERS` cells) as the point ``step``."""
        point = self._point("matrix", track, step)
        await self._record(point, value=_matrix(matrix, point), meta=_meta(meta, point))

    async def image_from_artifact(
        self,
        track: str,
        artifact: Artifact | str,
        *,
        step: int | None = None,
        mime: str | None = None,
        meta: Mapping[str, Any] | None = None,
    ) -> None:
        """Record a saved image (an :class:`Artifact`, its URI or its id) as the point ``step`` of ``track``.

        ``mime`` defaults to the artifact's own (empty when given by URI or id).
        """
        point = self._point("image", track, step)
        extra = _meta(meta, point)
        ref = artifact.id if isinstance(artifact, Artifact) else artifact
        if not isinstance(ref, str):
            raise TypeError(f"{point}: give an Artifact, an artifact URI or an artifact id, got {type(ref).__name__}")
        blobs = self._ctx._scope.env.service_backends.blobs
        sha = blobs.digest_of(ref)
        if sha is None:
            raise ArtifactNotFoundError(
                f"{point}: {ref!r} is neither an artifact URI nor an artifact id (a sha256 in hex); save the image "
                "with context.artifacts().save_bytes(...) or use image_from_bytes",
                ref=ref,
            )
        kind = mime if mime is not None else (artifact.mime if isinstance(artifact, Artifact) else "")

        async def stored() -> None:  # live only: a replay has the recorded point
            if not await blobs.has(sha):
                raise ArtifactNotFoundError(
                    f"{point}: no artifact {sha} in the artifact store; save the image first "
                    "(context.artifacts().save_bytes(...)) or use image_from_bytes",
                    ref=ref,
                )

        await self._record(point, check=stored, artifact_uri=blobs.uri(sha), mime=kind, meta=extra)

    async def image_from_bytes(
        self,
        track: str,
        data: bytes,
        *,
        step: int | None = None,
        mime: str = "image/png",
        name: str = "",
        labels: Mapping[str, Any] | None = None,
        meta: Mapping[str, Any] | None = None,
    ) -> Artifact:
        """Save ``data`` (an image) as an artifact of kind ``image`` and record it; returns the artifact."""
        point = self._point("image", track, step)
        if not isinstance(data, (bytes, bytearray, memoryview)) or not bytes(data):
            raise TypeError(f"{point}: data is the image's bytes (e.g. a PNG file's content), got {data!r:.60}")
        if not isinstance(mime, str) or not mime.startswith("image/"):
            raise ValueError(f"{point}: mime is an image type (image/png, image/jpeg, image/svg+xml), got {mime!r}")
        extra = _meta(meta, point)
        saved = await self._ctx.artifacts().save_bytes(data, kind="image", name=name, mime=mime, labels=labels)
        await self._record(point, artifact_uri=saved.uri, mime=mime, meta=extra)
        return saved
