"""The event catalog: golden samples, strict decoding, frozen events."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import msgspec
import pytest

from aethergraph.core.wire import events as ev
from aethergraph.core.wire.codec import decode_event, encode_event
from aethergraph.core.wire.events import EVENT_TYPES

GOLDEN = Path(__file__).parent / "golden" / "events.jsonl"
GOLDEN_RUN_ID = "0mb4x2k9qabcdefghijkl"


def _golden_lines() -> list[bytes]:
    return [line for line in GOLDEN.read_bytes().splitlines() if line.strip()]


def _golden_by_type() -> dict[str, bytes]:
    return {json.loads(line)["type"]: line for line in _golden_lines()}


def test_every_event_type_has_exactly_one_golden_sample() -> None:
    tags = [json.loads(line)["type"] for line in _golden_lines()]
    assert len(tags) == len(set(tags)), f"duplicate golden samples: {sorted(t for t in tags if tags.count(t) > 1)}"
    missing = sorted(set(EVENT_TYPES) - set(tags))
    assert not missing, (
        f"event types without a golden sample: {missing}; add them to SAMPLES in tests/golden/make_golden.py and run it"
    )
    removed = sorted(set(tags) - set(EVENT_TYPES))
    assert not removed, f"tags {removed} were removed from the catalog; old journals hold them (rule 3)"


def test_catalog_tags_are_stable_strings_not_class_names() -> None:
    for tag, cls in EVENT_TYPES.items():
        assert tag == cls.__struct_config__.tag
        assert tag != cls.__name__
        assert tag.islower() and "." in tag
        assert cls.__struct_config__.tag_field == "type"
        assert cls.__struct_config__.frozen


@pytest.mark.parametrize("tag", sorted(EVENT_TYPES))
def test_golden_sample_decodes_to_its_class_with_its_values(tag: str) -> None:
    line = _golden_by_type().get(tag)
    assert line is not None, f"no golden sample for {tag!r}"
    expected: dict[str, Any] = json.loads(line)
    event = decode_event(line)
    assert type(event) is EVENT_TYPES[tag]
    assert event.run_id == GOLDEN_RUN_ID
    assert event.ts == 1_764_000_000_000_000
    assert event.worker == "host-a-4242"
    assert isinstance(event.seq, int) and event.seq >= 1
    fields = msgspec.structs.asdict(event)
    for name, value in expected.items():
        if name == "type":
            continue
        assert name in fields, f"{tag}: golden field {name!r} is no longer in {type(event).__name__}"
        assert fields[name] == value, f"{tag}.{name}: decoded {fields[name]!r}, golden {value!r}"
    # Encoding the decoded event gives back the same event.
    assert decode_event(encode_event(event)) == event


def test_golden_values_of_key_events() -> None:
    samples = {tag: decode_event(line) for tag, line in _golden_by_type().items()}
    started = samples["run.started"]
    assert isinstance(started, ev.RunStarted)
    assert (started.seq, started.parent, started.graph_id) == (1, None, "demo")
    assert started.inputs == {"x": 21, "tags": ["a", "b"]}
    assert started.parent_run_id == "0mb4x2k9qparentrun0001"

    called = samples["tool.called"]
    assert isinstance(called, ev.ToolCalled)
    assert (called.node_id, called.tool, called.args, called.parent) == ("analyze_1", "analyze", {"x": 21}, 1)
    assert called.args_digest == "0123456789abcdef01234567"

    returned = samples["tool.returned"]
    assert isinstance(returned, ev.ToolReturned)
    assert (returned.parent, returned.outputs, returned.duration_us) == (2, {"val": 42}, 1234)

    failed = samples["run.failed"]
    assert isinstance(failed, ev.RunFailed)
    assert (failed.error_type, failed.message, failed.failed_node_id) == (
        "ValueError",
        "x must be positive",
        "analyze_2",
    )

    value = samples["value.recorded"]
    assert isinstance(value, ev.ValueRecorded)
    assert value.kind == "uuid"

    wait = samples["wait.requested"]
    assert isinstance(wait, ev.WaitRequested)
    assert (wait.wait_id, wait.channel, wait.deadline_us) == ("w-approve-1", "slack:#ops", 1_764_000_600_000_000)

    log = samples["log.recorded"]
    assert isinstance(log, ev.LogRecorded)
    assert (log.level, log.message, log.fields) == ("warning", "Answer: 42", {"attempt": 1})


@pytest.mark.parametrize("tag", sorted(EVENT_TYPES))
def test_fields_with_defaults_may_be_absent(tag: str) -> None:
    """Rule 2: an older sample without a defaulted field still decodes, with the default."""
    cls = EVENT_TYPES[tag]
    data = json.loads(_golden_by_type()[tag])
    defaults = {
        field.name: field.default for field in msgspec.structs.fields(cls) if field.default is not msgspec.NODEFAULT
    }
    for name in defaults:
        data.pop(name, None)
    event = decode_event(json.dumps(data).encode())
    assert type(event) is cls
    for name, default in defaults.items():
        assert getattr(event, name) == default


def test_unknown_tag_is_rejected() -> None:
    data = json.loads(_golden_by_type()["tool.called"])
    data["type"] = "tool.summoned"
    with pytest.raises(msgspec.ValidationError, match=r"tool\.summoned"):
        decode_event(json.dumps(data).encode())


def test_class_name_is_not_a_tag() -> None:
    data = json.loads(_golden_by_type()["tool.called"])
    data["type"] = "ToolCalled"
    with pytest.raises(msgspec.ValidationError):
        decode_event(json.dumps(data).encode())


def test_missing_tag_is_rejected() -> None:
    data = json.loads(_golden_by_type()["tool.called"])
    del data["type"]
    with pytest.raises(msgspec.ValidationError):
        decode_event(json.dumps(data).encode())


@pytest.mark.parametrize(
    ("tag", "field", "bad"),
    [
        ("tool.called", "seq", "2"),
        ("tool.called", "ts", 1.5),
        ("tool.called", "run_id", 7),
        ("tool.called", "args", ["x", 21]),
        ("tool.returned", "outputs", "42"),
        ("run.started", "parent", "none"),
        ("log.recorded", "level", "loud"),
        ("value.recorded", "kind", "clock"),
        ("wait.requested", "deadline_us", "soon"),
    ],
)
def test_wrong_field_types_are_rejected(tag: str, field: str, bad: object) -> None:
    data = json.loads(_golden_by_type()[tag])
    data[field] = bad
    with pytest.raises(msgspec.ValidationError, match=field):
        decode_event(json.dumps(data).encode())


def test_missing_required_field_is_rejected() -> None:
    data = json.loads(_golden_by_type()["tool.called"])
    del data["args_digest"]
    with pytest.raises(msgspec.ValidationError, match="args_digest"):
        decode_event(json.dumps(data).encode())


def test_malformed_json_is_a_decode_error() -> None:
    with pytest.raises(msgspec.DecodeError):
        decode_event(b'{"type": "tool.called", ')


@pytest.mark.parametrize("tag", sorted(EVENT_TYPES))
def test_events_are_frozen(tag: str) -> None:
    event = decode_event(_golden_by_type()[tag])
    with pytest.raises(AttributeError):
        event.seq = 99  # type: ignore[misc]
    with pytest.raises(AttributeError):
        event.run_id = "other"  # type: ignore[misc]
    assert event.seq != 99


def test_encoding_is_tagged_with_the_type_first() -> None:
    event = ev.ToolCalled(run_id="r1", seq=2, ts=5, worker="w", parent=1, node_id="a_1", tool="a", args_digest="d")
    raw = encode_event(event)
    assert raw.startswith(b'{"type":"tool.called",')
    assert json.loads(raw)["args"] == {}
    assert decode_event(raw) == event
