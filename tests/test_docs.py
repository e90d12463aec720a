"""The documents a user reads first must match the code."""

from __future__ import annotations

import re
from pathlib import Path

import msgspec

from aethergraph.core.events import EVENT_TYPES, Event

ROOT = Path(__file__).resolve().parent.parent


def _bash_blocks(text: str) -> list[str]:
    return [block.strip() for block in re.findall(r"```bash\n(.*?)```", text, flags=re.S)]


def test_readme_test_command_is_what_ci_runs() -> None:
    quick_start = _bash_blocks((ROOT / "README.md").read_text())
    test_command = next(cmd for cmd in quick_start if "pytest" in cmd)
    assert test_command in (ROOT / ".ci" / "run").read_text().splitlines()


def test_readme_demo_command_names_a_real_graph() -> None:
    quick_start = _bash_blocks((ROOT / "README.md").read_text())
    demo = next(cmd for cmd in quick_start if "aethergraph run" in cmd)
    reference = demo.split("aethergraph run ", 1)[1].split()[0]
    path, _, attribute = reference.partition(":")
    assert (ROOT / path).is_file()
    assert f"async def {attribute}(" in (ROOT / path).read_text()


def test_events_doc_lists_every_type_and_field() -> None:
    text = (ROOT / "docs" / "events.md").read_text()
    common = set(Event.__struct_fields__)
    for tag, cls in EVENT_TYPES.items():
        section = text.split(f"### `{tag}`", 1)
        assert len(section) == 2, f"docs/events.md has no section for {tag}"
        body = section[1].split("\n### ", 1)[0]
        assert f"ag.evt.<run_id>.{tag}" in body
        for field in msgspec.structs.fields(cls):
            if field.name not in common:
                assert f"`{field.name}`" in body, f"docs/events.md: {tag} lacks field {field.name}"
    for name in common:
        assert f"`{name}`" in text
