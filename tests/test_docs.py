"""The documents a user reads first must match the code."""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path
from typing import Any

import msgspec

from aethergraph.core.wire.events import EVENT_TYPES, Event
from aethergraph.projections.store import ProjectionStore

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


def test_readme_example_agent_is_the_code_of_examples_agent() -> None:
    section = (ROOT / "README.md").read_text().split("## Agents", 1)[1]
    shown = re.findall(r"```python\n(.*?)```", section, flags=re.S)[0]
    assert shown.strip() in (ROOT / "examples" / "agent.py").read_text()


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


def _gen_lineage() -> Any:
    spec = importlib.util.spec_from_file_location("gen_lineage", ROOT / "docs" / "gen_lineage.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_lineage_doc_describes_every_table_and_column_of_the_store() -> None:
    gen = _gen_lineage()
    store = ProjectionStore.open(":memory:")
    try:
        columns = store.query(
            "SELECT table_name, column_name FROM information_schema.columns WHERE table_schema = 'main'"
        ).rows
    finally:
        store.close()
    undescribed = sorted(f"{t}.{c}" for t, c in columns if c not in gen.COLUMNS.get(t, {}))
    assert not undescribed, f"describe these in COLUMNS of docs/gen_lineage.py and run it: {undescribed}"
    stale = sorted(f"{t}.{c}" for t, cols in gen.COLUMNS.items() for c in cols if (t, c) not in set(columns))
    assert not stale, f"COLUMNS in docs/gen_lineage.py names columns the store no longer has: {stale}"
    assert gen._schema() in (ROOT / "docs" / "lineage.md").read_text(), (
        "docs/lineage.md's table section is stale: run `python docs/gen_lineage.py`"
    )


def test_lineage_doc_queries_are_the_generators() -> None:
    text = (ROOT / "docs" / "lineage.md").read_text()
    for _title, _text, sql in _gen_lineage().QUERIES:
        assert f"```sql\n{sql};\n```" in text, f"docs/lineage.md lacks the worked query {sql!r}: run the generator"
