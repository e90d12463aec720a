"""Secure connections: TLS (server verified by a CA, client certificate) and user/password, on a real server.

The certificates are made with the system's ``openssl`` for 127.0.0.1 in the test's temporary folder.
"""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pydantic
import pytest
from cluster_helpers import ConfiguredServer, start_configured_server
from helpers import closed_port

from aethergraph import graph_fn, tool
from aethergraph.core.errors import BusUnavailableError
from aethergraph.core.run.executor import execute_run
from aethergraph.core.settings import Settings
from aethergraph.host.process import ProcessHost

pytestmark = pytest.mark.skipif(shutil.which("openssl") is None, reason="needs the openssl command")


def openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True, timeout=60)


def make_pki(directory: Path) -> Path:
    """A CA, a server certificate for 127.0.0.1/localhost and a client certificate, all signed by the CA."""
    directory.mkdir(parents=True, exist_ok=True)
    openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", "/CN=aethergraph test CA",
            "-keyout", "ca-key.pem", "-out", "ca.pem", cwd=directory)  # fmt: skip
    (directory / "san.ext").write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\n")
    for name in ("server", "client"):
        openssl("req", "-newkey", "rsa:2048", "-nodes", "-subj", f"/CN=aethergraph {name}",
                "-keyout", f"{name}-key.pem", "-out", f"{name}.csr", cwd=directory)  # fmt: skip
        openssl("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.pem", "-CAkey", "ca-key.pem", "-CAcreateserial",
                "-days", "2", "-extfile", "san.ext", "-out", f"{name}.pem", cwd=directory)  # fmt: skip
    return directory


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture
def tls_server(pki: Path, tmp_path: Path) -> Iterator[ConfiguredServer]:
    port = closed_port()
    config = f"""
listen: 127.0.0.1:{port}
jetstream {{ store_dir: "{tmp_path / "jetstream"}" }}
tls {{
  cert_file: "{pki / "server.pem"}"
  key_file: "{pki / "server-key.pem"}"
  ca_file: "{pki / "ca.pem"}"
  verify: true
  timeout: 5
}}
authorization {{ user: ag, password: "s3cret" }}
"""
    server = start_configured_server(tmp_path / "server", config, port=port)
    try:
        yield server
    finally:
        server.stop()


@tool(outputs=["shout"])
async def shout(text: str) -> dict[str, str]:
    return {"shout": text.upper()}


@graph_fn(name="secure_hello", outputs=["greeting"])
async def secure_hello(name: str) -> dict[str, str]:
    return {"greeting": (await shout(text=f"hello {name}"))["shout"]}


def secure_settings(server: ConfiguredServer, pki: Path, tmp_path: Path, **overrides: object) -> Settings:
    values: dict[str, object] = {
        "nats_url": server.url,
        "workspace": tmp_path / "ws",
        "nats_tls_ca": pki / "ca.pem",
        "nats_tls_cert": pki / "client.pem",
        "nats_tls_key": pki / "client-key.pem",
        "nats_user": "ag",
        "nats_password": "s3cret",
        "connect_timeout_s": 2.0,
    }
    values.update(overrides)
    return Settings(**values)  # type: ignore[arg-type]


async def test_a_graph_runs_over_tls_with_a_client_certificate_and_a_password(
    tls_server: ConfiguredServer, pki: Path, tmp_path: Path
) -> None:
    rt = await ProcessHost.open(secure_settings(tls_server, pki, tmp_path))
    try:
        assert rt.bus.nc.connected_url is not None
        outputs = await execute_run(secure_hello.spec, {"name": "tls"}, env=rt.env)
        assert outputs == {"greeting": "HELLO TLS"}
    finally:
        await rt.close()


@pytest.mark.parametrize(
    ("overrides", "fragment"),
    [
        ({"nats_password": "wrong"}, "authorization"),
        ({"nats_tls_cert": None, "nats_tls_key": None}, "TLS"),
        ({"nats_tls_ca": None, "nats_tls_cert": None, "nats_tls_key": None}, ""),
    ],
    ids=["wrong-password", "no-client-certificate", "no-tls"],
)
async def test_a_refused_secure_connection_is_bus_unavailable(
    tls_server: ConfiguredServer, pki: Path, tmp_path: Path, overrides: dict[str, object], fragment: str
) -> None:
    with pytest.raises(BusUnavailableError) as info:
        # A longer timeout than the default, so that on a loaded machine a handshake completes and is refused.
        await ProcessHost.open(secure_settings(tls_server, pki, tmp_path, connect_timeout_s=4.0, **overrides))
    message = str(info.value)
    assert tls_server.url in message
    assert "AETHERGRAPH_NATS_URL" in message
    assert fragment.lower() in message.lower()


def test_tls_and_credential_settings_are_checked(tmp_path: Path) -> None:
    with pytest.raises(pydantic.ValidationError, match="AETHERGRAPH_NATS_TLS_KEY"):
        Settings(nats_tls_cert=tmp_path / "c.pem")
    with pytest.raises(pydantic.ValidationError, match="AETHERGRAPH_NATS_USER"):
        Settings(nats_password="x")  # type: ignore[arg-type]
    settings = Settings(nats_tls_ca=tmp_path / "ca.pem", nats_password="hunter2", nats_user="u")  # type: ignore[arg-type]
    assert settings.nats_tls
    assert "hunter2" not in repr(settings)


async def test_unreadable_tls_files_and_missing_creds_name_the_setting(tmp_path: Path) -> None:
    url = f"nats://127.0.0.1:{closed_port()}"
    with pytest.raises(BusUnavailableError, match="AETHERGRAPH_NATS_TLS_CA"):
        await ProcessHost.open(Settings(nats_url=url, nats_tls_ca=tmp_path / "missing.pem"))
    with pytest.raises(BusUnavailableError, match="AETHERGRAPH_NATS_CREDS"):
        await ProcessHost.open(Settings(nats_url=url, nats_creds=tmp_path / "missing.creds"))
