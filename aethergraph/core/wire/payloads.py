"""Checking a wait's answer against the JSON Schema its ``wait.requested`` recorded."""

from __future__ import annotations

from typing import Any

from aethergraph.core.errors import ResumeRejectedError
from aethergraph.core.wire.events import WaitRequested

__all__ = ["validate_payload"]


def validate_payload(requested: WaitRequested, payload: Any) -> None:
    """Raise :class:`ResumeRejectedError` (reason ``invalid_payload``) if ``payload`` fails the wait's schema."""
    schema = requested.payload_schema
    if not schema:
        return
    import jsonschema  # loaded by the first answer that has a schema to meet, not by every process's import
    from jsonschema.exceptions import SchemaError, ValidationError

    try:
        jsonschema.validate(payload, schema)
    except ValidationError as exc:
        where = "/".join(str(part) for part in exc.absolute_path) or "the payload"
        raise ResumeRejectedError(
            f"payload for wait {requested.wait_id} of run {requested.run_id} does not match its schema: "
            f"{where}: {exc.message}; expected schema {schema}",
            run_id=requested.run_id,
            reason="invalid_payload",
            wait_id=requested.wait_id,
        ) from None
    except SchemaError as exc:
        raise ResumeRejectedError(
            f"wait {requested.wait_id} of run {requested.run_id} recorded an invalid JSON Schema: {exc.message}",
            run_id=requested.run_id,
            reason="invalid_schema",
            wait_id=requested.wait_id,
        ) from None
