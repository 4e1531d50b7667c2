"""Tests for the HTTP session factory and the error mapping, on real loopback servers."""

from __future__ import annotations

import asyncio
import shutil
import socket
import ssl
import subprocess
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import aiohttp
import anyio
import pytest
from aiohttp import web

from asyncjsoc._http import (
    NETWORK_HINT,
    TransportConfig,
    create_session,
    default_user_agent,
    is_retryable,
    map_transport_errors,
    raise_for_status,
)
from asyncjsoc._ratelimit import TokenBucket
from asyncjsoc.exceptions import HttpStatusError, IpBlockedError, ProtocolError, TransportError

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


async def _serve(
    handler: Handler, ssl_context: ssl.SSLContext | None = None
) -> tuple[web.AppRunner, str]:
    """Start ``handler`` on 127.0.0.1 (any port); returns the runner and base URL."""
    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", handler)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=ssl_context)
    await site.start()
    port = runner.addresses[0][1]
    scheme = "https" if ssl_context else "http"
    return runner, f"{scheme}://127.0.0.1:{port}"


@pytest.fixture
async def server() -> AsyncIterator[tuple[str, list[web.Request]]]:
    """A plain-HTTP loopback server with a few fixed behaviours, logging requests."""
    seen: list[web.Request] = []

    async def handler(request: web.Request) -> web.StreamResponse:
        seen.append(request)
        if request.path == "/stall":
            await anyio.sleep(0.5)
        if request.path == "/blocked":
            return web.Response(status=403, headers={"Retry-After": "0.1"})
        if request.path == "/busy":
            return web.Response(status=503, headers={"Retry-After": "0.2"})
        if request.path == "/missing":
            return web.Response(status=404)
        return web.Response(text="hello")

    runner, url = await _serve(handler)
    try:
        yield url, seen
    finally:
        await runner.cleanup()


def test_config_defaults_are_polite() -> None:
    """Two connections, 5 requests/s with burst 10, no total timeout fields."""
    config = TransportConfig()
    assert config.connections == 2
    assert (config.requests_per_second, config.burst) == (5.0, 10)
    assert config.ca_bundle is None
    assert config.user_agent == default_user_agent()
    assert default_user_agent().startswith("asyncjsoc/")
    assert f"aiohttp/{aiohttp.__version__}" in default_user_agent()
    assert " python/3." in default_user_agent()


@pytest.mark.parametrize(
    "change",
    [
        {"connections": 0},
        {"requests_per_second": -1.0},
        {"burst": 0},
        {"sock_connect": 0.0},
        {"sock_read": float("inf")},
        {"user_agent": "a\nb"},
    ],
)
def test_config_validation(change: dict[str, object]) -> None:
    """Bad values are refused, also through dataclasses.replace."""
    with pytest.raises(ValueError):  # noqa: PT011
        replace(TransportConfig(), **change)  # type: ignore[arg-type]


def test_config_has_no_verify_switch() -> None:
    """There is no way to turn TLS verification off through the config."""
    fields = set(TransportConfig.__dataclass_fields__)
    assert not {"verify", "verify_ssl", "ssl", "insecure"} & fields


@pytest.mark.anyio
async def test_session_settings(server: tuple[str, list[web.Request]]) -> None:
    """The session sends our User-Agent, pays the bucket, and uses the configured limits."""
    url, seen = server
    bucket = TokenBucket(100.0, 5)
    config = TransportConfig(connections=3, sock_connect=4.0, sock_read=9.0)
    async with create_session(config, bucket) as session:
        assert session.timeout.total is None
        assert session.timeout.sock_connect == 4.0
        assert session.timeout.sock_read == 9.0
        assert isinstance(session.connector, aiohttp.TCPConnector)
        assert session.connector.limit_per_host == 3
        async with session.get(f"{url}/x") as resp:
            assert await resp.text() == "hello"
    assert seen[0].headers["User-Agent"] == config.user_agent
    assert bucket.statistics().requests_granted == 1


@pytest.mark.anyio
async def test_connection_refused_maps_to_transport_error() -> None:
    """A closed port gives a retryable TransportError naming the URL."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    url = f"http://127.0.0.1:{port}/x"
    async with create_session(TransportConfig()) as session:
        with pytest.raises(TransportError) as info, map_transport_errors(url):
            async with session.get(url):
                pass
    assert info.value.url == url
    assert is_retryable(info.value)
    assert info.value.hint == NETWORK_HINT  # library users get advice too, not only the CLI


@pytest.mark.anyio
async def test_sock_read_timeout_maps_to_transport_error(
    server: tuple[str, list[web.Request]],
) -> None:
    """A server that stalls past sock_read gives a TransportError."""
    url, _ = server
    async with create_session(TransportConfig(sock_read=0.1)) as session:
        with pytest.raises(TransportError, match="timed out") as info, \
                map_transport_errors(url):
            async with session.get(f"{url}/stall") as resp:
                await resp.read()
    assert info.value.hint == NETWORK_HINT


@pytest.mark.anyio
async def test_invalid_url_is_protocol_error() -> None:
    """An unusable URL is not a transport problem."""
    async with create_session(TransportConfig()) as session:
        with pytest.raises(ProtocolError), map_transport_errors("bad"):
            async with session.get("http://[::1"):
                pass


def test_cancellation_passes_through() -> None:
    """The mapper leaves BaseExceptions such as cancellation alone."""
    with pytest.raises(KeyboardInterrupt), map_transport_errors("u"):
        raise KeyboardInterrupt


@pytest.mark.anyio
async def test_raise_for_status(server: tuple[str, list[web.Request]]) -> None:
    """403+Retry-After is an IP block; 503 keeps its Retry-After; 404 is not retryable."""
    url, _ = server
    bucket = TokenBucket(1000.0, 10)
    async with create_session(TransportConfig(), bucket) as session:
        async with session.get(f"{url}/blocked") as resp:
            with pytest.raises(IpBlockedError) as blocked:
                raise_for_status(resp)
        assert blocked.value.retry_after == pytest.approx(0.1)
        assert bucket.statistics().pauses == 1
        async with session.get(f"{url}/busy") as resp:
            with pytest.raises(HttpStatusError) as busy:
                raise_for_status(resp, url="short")
        assert (busy.value.status, busy.value.retry_after, busy.value.url) == (503, 0.2, "short")
        assert is_retryable(busy.value)
        async with session.get(f"{url}/missing") as resp:
            with pytest.raises(HttpStatusError) as missing:
                raise_for_status(resp)
        assert missing.value.status == 404
        assert not is_retryable(missing.value)
        assert not is_retryable(blocked.value)
        async with session.get(f"{url}/ok") as resp:
            raise_for_status(resp)


@pytest.fixture(scope="module")
def self_signed(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A throwaway self-signed certificate for 127.0.0.1, made with the openssl CLI."""
    openssl = shutil.which("openssl")
    if openssl is None:
        pytest.skip("openssl CLI not available")
    folder = tmp_path_factory.mktemp("tls")
    cert, key = folder / "cert.pem", folder / "key.pem"
    subprocess.run(
        [
            openssl, "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
            "-keyout", str(key), "-out", str(cert), "-subj", "/CN=127.0.0.1",
            "-addext", "subjectAltName=IP:127.0.0.1",
        ],
        check=True,
        capture_output=True,
    )  # fmt: skip
    return cert, key


@pytest.fixture
async def https_url(self_signed: tuple[Path, Path]) -> AsyncIterator[str]:
    """An HTTPS loopback server using the self-signed certificate."""
    cert, key = self_signed
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert, key)

    async def handler(request: web.Request) -> web.StreamResponse:
        return web.Response(text="secret")

    # The server side of a refused handshake reports to the loop's exception handler; that
    # failure is the point of the test, so it is filtered out (everything else still counts).
    loop = asyncio.get_running_loop()
    previous = loop.get_exception_handler()

    def handle(loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        if isinstance(context.get("exception"), ConnectionResetError | ssl.SSLError):
            return
        if previous is None:
            loop.default_exception_handler(context)
        else:
            previous(loop, context)

    loop.set_exception_handler(handle)
    runner, url = await _serve(handler, context)
    try:
        yield url
    finally:
        await runner.cleanup()
        loop.set_exception_handler(previous)


@pytest.mark.anyio
async def test_tls_is_verified_by_default(https_url: str) -> None:
    """An untrusted certificate fails with a non-retryable TransportError and a hint."""
    async with create_session(TransportConfig()) as session:
        with pytest.raises(TransportError) as info, map_transport_errors(https_url):
            async with session.get(https_url):
                pass
    assert "certificate" in str(info.value).lower()
    assert info.value.hint is not None
    assert "ca_bundle" in info.value.hint
    assert not is_retryable(info.value)


@pytest.mark.anyio
async def test_tls_with_ca_bundle(https_url: str, self_signed: tuple[Path, Path]) -> None:
    """Trusting the certificate through ca_bundle makes the same request succeed."""
    cert, _ = self_signed
    async with (
        create_session(TransportConfig(ca_bundle=cert)) as session,
        session.get(https_url) as resp,
    ):
        assert await resp.text() == "secret"


def test_missing_ca_bundle_is_refused(tmp_path: Path) -> None:
    """A ca_bundle path that does not exist is an error, not a silent fallback."""
    with pytest.raises(ValueError, match="ca_bundle"):
        anyio.run(_make_session, TransportConfig(ca_bundle=tmp_path / "nope.pem"))


async def _make_session(config: TransportConfig) -> None:
    """Create and close a session (helper for the sync test above)."""
    async with create_session(config):
        pass
