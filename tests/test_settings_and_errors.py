"""Settings validation, bus failures, and the error hierarchy."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pydantic
import pytest
from helpers import NatsServer, closed_port, start_nats_server

from aethergraph import errors
from aethergraph.core.errors import AetherGraphError, BusUnavailableError, RunFailedError
from aethergraph.core.settings import Settings, load_settings
from aethergraph.runtime import ProcessHost, start_server

# --- settings -----------------------------------------------------------------------------------------


def test_settings_read_the_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("AETHERGRAPH_NATS_URL", "nats://10.0.0.1:4222")
    monkeypatch.setenv("AETHERGRAPH_WORKSPACE", str(tmp_path))
    monkeypatch.setenv("AETHERGRAPH_SYNC_INTERVAL", "always")
    monkeypatch.setenv("AETHERGRAPH_MAX_EVENT_BYTES", "4096")
    monkeypatch.setenv("AETHERGRAPH_WORKER_ID", "w-7")
    settings = load_settings()
    assert settings.nats_url == "nats://10.0.0.1:4222"
    assert settings.workspace == tmp_path
    assert settings.sync_interval == "always"
    assert settings.max_event_bytes == 4096
    assert settings.worker_id == "w-7"
    # Explicit overrides win over the environment.
    assert load_settings(sync_interval="250ms").sync_interval == "250ms"


def test_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("NATS_URL", "WORKSPACE", "SYNC_INTERVAL", "MAX_EVENT_BYTES", "WORKER_ID"):
        monkeypatch.delenv(f"AETHERGRAPH_{name}", raising=False)
    settings = Settings()
    assert settings.nats_url is None
    assert settings.workspace == Path(".aethergraph")
    assert settings.sync_interval == "1s"
    assert settings.max_event_bytes == 256 * 1024


def test_blank_nats_url_selects_the_embedded_server(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AETHERGRAPH_NATS_URL", "")
    assert load_settings().nats_url is None


def test_start_server_with_a_url_names_it() -> None:
    assert start_server(Settings(nats_url="nats://127.0.0.1:4222")) == "nats://127.0.0.1:4222"


@pytest.mark.parametrize("good", ["always", "1s", "200ms", "2m", "1h", "10s"])
def test_valid_sync_intervals(good: str) -> None:
    assert Settings(sync_interval=good).sync_interval == good


@pytest.mark.parametrize("bad", ["soon", "1", "1.5s", "-1s", "1 s", "never", "", "ALWAYS", "1d"])
def test_bad_sync_interval_is_rejected_with_a_message(bad: str) -> None:
    with pytest.raises(pydantic.ValidationError) as info:
        Settings(sync_interval=bad)
    message = str(info.value)
    assert "sync_interval must be 'always' or a duration like '1s', '200ms', '2m'" in message
    assert repr(bad) in message


def test_bad_sync_interval_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AETHERGRAPH_SYNC_INTERVAL", "whenever")
    with pytest.raises(pydantic.ValidationError, match="sync_interval must be 'always'"):
        load_settings()


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("max_event_bytes", 100),
        ("max_event_bytes", 128 * 1024 * 1024),
        ("duplicate_window_s", 0),
        ("connect_timeout_s", -1),
    ],
)
def test_out_of_range_numbers_are_rejected(field: str, value: float) -> None:
    with pytest.raises(pydantic.ValidationError, match=field):
        Settings(**{field: value})  # type: ignore[arg-type]


# --- the bus is unreachable or unfit ------------------------------------------------------------------


async def test_unreachable_nats_url_fails_with_bus_unavailable() -> None:
    url = f"nats://127.0.0.1:{closed_port()}"
    with pytest.raises(BusUnavailableError) as info:
        await ProcessHost.open(Settings(nats_url=url, connect_timeout_s=0.5))
    message = str(info.value)
    assert url in message
    assert "AETHERGRAPH_NATS_URL" in message
    assert isinstance(info.value, ConnectionError)


@pytest.fixture
def server_without_jetstream(tmp_path: Path) -> Iterator[NatsServer]:
    server = start_nats_server(tmp_path / "no-js", jetstream=False)
    try:
        yield server
    finally:
        server.stop()


async def test_server_without_jetstream_fails_with_bus_unavailable(server_without_jetstream: NatsServer) -> None:
    url = server_without_jetstream.url
    with pytest.raises(BusUnavailableError) as info:
        await ProcessHost.open(Settings(nats_url=url, connect_timeout_s=1.0))
    message = str(info.value)
    assert "JetStream" in message
    assert url in message
    assert "-js" in message


# --- errors -------------------------------------------------------------------------------------------


def test_error_str_includes_run_node_and_seq() -> None:
    err = AetherGraphError("step failed", run_id="r1", node_id="analyze_1", seq=3)
    assert str(err) == "step failed [run=r1 node=analyze_1 seq=3]"
    assert (err.message, err.run_id, err.node_id, err.seq) == ("step failed", "r1", "analyze_1", 3)


def test_error_str_with_some_or_no_fields() -> None:
    assert str(AetherGraphError("plain")) == "plain"
    assert str(AetherGraphError("only run", run_id="r9")) == "only run [run=r9]"
    assert str(AetherGraphError("seq zero", seq=0)) == "seq zero [seq=0]"
    assert str(errors.StaleWriterError("fenced", run_id="r2", seq=5)) == "fenced [run=r2 seq=5]"


def test_run_failed_error_carries_the_cause() -> None:
    err = RunFailedError("run failed", run_id="r3", error_type="KeyError", node_id="fetch_2")
    assert err.error_type == "KeyError"
    assert str(err) == "run failed [run=r3 node=fetch_2]"


@pytest.mark.parametrize(
    ("cls", "builtin"),
    [
        (errors.DecorationError, TypeError),
        (errors.OutputError, ValueError),
        (errors.SerializationError, TypeError),
        (errors.EventTooLargeError, ValueError),
        (errors.NotInRunError, RuntimeError),
        (errors.BusUnavailableError, ConnectionError),
        (errors.WorkspaceError, OSError),
        (errors.GraphNotFoundError, LookupError),
        (errors.StaleWriterError, errors.EventRejectedError),
        (errors.RunFailedError, AetherGraphError),
    ],
)
def test_errors_derive_from_aethergraph_error_and_the_natural_builtin(cls: type, builtin: type) -> None:
    assert issubclass(cls, AetherGraphError)
    assert issubclass(cls, builtin)


def test_every_public_error_is_an_aethergraph_error() -> None:
    """Errors derive from AetherGraphError; control-flow signals from BaseException only."""
    for name in errors.__all__:
        cls = getattr(errors, name)
        if issubclass(cls, Exception):
            assert issubclass(cls, AetherGraphError), name
        else:
            assert issubclass(cls, BaseException), name
            assert not issubclass(cls, AetherGraphError), name
