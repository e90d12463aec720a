"""Regenerate the "Event types" section of docs/events.md from the catalog.

Run ``python docs/gen_event_types.py`` after changing ``aethergraph/core/wire/events.py``;
tests/test_docs.py fails while the page and the catalog disagree.
"""

from __future__ import annotations

import inspect
from pathlib import Path

import msgspec

from aethergraph.core.wire.events import EVENT_TYPES, Event

PAGE = Path(__file__).with_name("events.md")
HEADING = "## Event types\n"


def _type_name(annotation: object) -> str:
    if isinstance(annotation, type) and not getattr(annotation, "__args__", None):
        text = annotation.__name__
    else:
        text = repr(annotation).replace("typing.", "")
    return text.replace("|", "\\|")


def _default(field: msgspec.structs.FieldInfo) -> str:
    if field.required:
        return "required"
    if field.default_factory is not msgspec.NODEFAULT:
        return f"`{field.default_factory()!r}`"
    return f"`{field.default!r}`"


def section() -> str:
    common = set(Event.__struct_fields__)
    parts = [HEADING]
    for tag, cls in EVENT_TYPES.items():
        doc = inspect.getdoc(cls) if cls.__doc__ else ""
        summary = " " + " ".join(doc.split("\n\n", 1)[0].split()) if doc else ""
        parts.append(f"\n### `{tag}`\n\nSubject `ag.evt.<run_id>.{tag}`.{summary}\n")
        rows = [
            f"| `{field.name}` | `{_type_name(field.type)}` | {_default(field)} |"
            for field in msgspec.structs.fields(cls)
            if field.name not in common
        ]
        if rows:
            parts.append("\n| field | type | default |\n|---|---|---|\n" + "\n".join(rows) + "\n")
    return "".join(parts)


def main() -> None:
    text = PAGE.read_text()
    head, _, _ = text.partition(HEADING)
    PAGE.write_text(head + section())
    print(f"{PAGE}: {len(EVENT_TYPES)} event types")


if __name__ == "__main__":
    main()
