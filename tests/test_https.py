"""rmboost.llm.http over TLS: a loopback https server whose certificate is made here.

A private CA (openssl CLI) signs a certificate for 127.0.0.1. The client verifies every
certificate by default: trusted only through SSL_CERT_FILE, it answers; untrusted, or for another
host name, the job stops with one line saying why and how to fix it, before any request is sent.
"""

from __future__ import annotations

import asyncio
import shutil
import ssl
import subprocess
from pathlib import Path

import pytest
from servers import SCRIPTED_MODEL, SCRIPTED_TEXT, ScriptedServer
from typer.testing import CliRunner

from rmboost.cli import app
from rmboost.llm.http import HTTPClient, TransportError
from rmboost.llm.openai_compat import OpenAIBackend
from rmboost.llm.types import FatalLLMError, SamplingParams

pytestmark = pytest.mark.skipif(shutil.which("openssl") is None, reason="needs the openssl command")


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True)


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """ca.pem (a private CA) and server.pem/server.key (127.0.0.1, signed by it)."""
    d = tmp_path_factory.mktemp("tls")
    ec = ("-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes")
    _openssl("req", "-x509", *ec, "-keyout", "ca.key", "-out", "ca.pem", "-days", "2", "-subj", "/CN=rmboost test CA",
             "-addext", "basicConstraints=critical,CA:TRUE", "-addext", "keyUsage=critical,keyCertSign,cRLSign", cwd=d)
    _openssl("req", *ec, "-keyout", "server.key", "-out", "server.csr", "-subj", "/CN=127.0.0.1", cwd=d)
    (d / "ext.cnf").write_text("subjectAltName=IP:127.0.0.1\nbasicConstraints=CA:FALSE\n"
                               "keyUsage=critical,digitalSignature\nextendedKeyUsage=serverAuth\n")
    _openssl("x509", "-req", "-in", "server.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial",
             "-out", "server.pem", "-days", "2", "-extfile", "ext.cnf", cwd=d)
    return d


def _https_server(certs: Path) -> ScriptedServer:
    tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    tls.load_cert_chain(certs / "server.pem", certs / "server.key")
    return ScriptedServer(tls=tls)


def _ask(backend: OpenAIBackend, check: bool = True) -> str:
    async def go() -> str:
        try:
            if check:
                await backend.check()
            return (await backend.complete([{"role": "user", "content": "hi"}], SamplingParams(max_tokens=8))).text
        finally:
            await backend.aclose()

    return asyncio.run(go())


def test_a_certificate_signed_by_the_ca_in_ssl_cert_file_is_trusted(certs: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("SSL_CERT_FILE", str(certs / "ca.pem"))
    with _https_server(certs) as server:
        assert server.base_url.startswith("https://127.0.0.1:")
        text = _ask(OpenAIBackend(server.base_url, SCRIPTED_MODEL))
        chats = [r for r in server.received if r.path.endswith("/chat/completions")]
    assert text == SCRIPTED_TEXT
    assert len(chats) == 1 and chats[0].body["messages"] == [{"role": "user", "content": "hi"}]


def test_an_untrusted_certificate_is_one_line_and_no_request(certs: Path, tmp_path: Path,
                                                             monkeypatch: pytest.MonkeyPatch):
    monkeypatch.delenv("SSL_CERT_FILE", raising=False)
    monkeypatch.delenv("SSL_CERT_DIR", raising=False)
    with _https_server(certs) as server:
        result = CliRunner().invoke(app, ["generate", "--backend", "openai", "--base-url", server.base_url,
                                          "--model", SCRIPTED_MODEL, "--limit", "1", "--no-progress", "--no-cache",
                                          "--output", str(tmp_path / "pairs.jsonl")])
        # Without the startup check too: a rejected certificate stops the job, it is not retried.
        with pytest.raises(FatalLLMError, match="TLS certificate rejected: unable to get local issuer certificate"):
            _ask(OpenAIBackend(server.base_url, SCRIPTED_MODEL, max_retries=6), check=False)
        received = list(server.received)
    assert result.exit_code == 2
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert lines == [f"error: cannot reach the endpoint {server.base_url} (TLS certificate rejected: unable to get "
                     "local issuer certificate; trust its CA with SSL_CERT_FILE=/path/to/ca.pem)"]
    assert received == [], "nothing is sent to a server whose certificate was rejected"


def test_a_trusted_certificate_for_another_host_name_is_rejected(certs: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("SSL_CERT_FILE", str(certs / "ca.pem"))

    async def get(url: str) -> None:
        client = HTTPClient({}, timeout=10)
        try:
            await client.request("GET", url)
        finally:
            await client.close()

    with _https_server(certs) as server, pytest.raises(TransportError) as caught:
        asyncio.run(get(f"https://localhost:{server.port}/v1/models"))  # the certificate names 127.0.0.1 only
    assert caught.value.kind == "tls_error"
    assert "Hostname mismatch" in caught.value.detail and "SSL_CERT_FILE" not in caught.value.detail
