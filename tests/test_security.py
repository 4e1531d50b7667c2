"""Security basics: TLS always verified (CLI), emails masked in logs, none in output files.

The transport-level TLS checks live in ``tests/test_http.py``
(``test_tls_is_verified_by_default``, ``test_tls_with_ca_bundle``,
``test_missing_ca_bundle_is_refused``, ``test_config_has_no_verify_switch``); the tests here
check the same guarantees at the command line.
"""

from __future__ import annotations

import argparse
import logging
import shutil
import ssl
import subprocess
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest
from aiohttp import web
from anyio.from_thread import start_blocking_portal
from engine_helpers import emulator, fast_config

from asyncjsoc import Client
from asyncjsoc._privacy import redact_url
from asyncjsoc.cli import EXIT_FAILED, EXIT_OK, EXIT_USAGE, build_parser, main
from asyncjsoc.emulator import Emulator, Knobs, run_emulator

EMAIL = "carol.secret@example.org"
SHARP = "hmi.sharp_cea_720s[7302][2018.09.06_00:00:00_TAI-2018.09.06_00:12:00_TAI]{Br,Bp}"


@pytest.fixture(scope="module")
def cert(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A self-signed certificate for 127.0.0.1 (openssl CLI)."""
    openssl = shutil.which("openssl")
    if openssl is None:
        pytest.skip("openssl CLI not available")
    folder = tmp_path_factory.mktemp("tls")
    crt, key = folder / "cert.pem", folder / "key.pem"
    subprocess.run(
        [openssl, "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-keyout",
         str(key), "-out", str(crt), "-subj", "/CN=127.0.0.1", "-addext",
         "subjectAltName=IP:127.0.0.1"],
        check=True, capture_output=True,
    )  # fmt: skip
    return crt, key


@asynccontextmanager
async def https_check_address(crt: Path, key: str) -> AsyncIterator[str]:
    """An HTTPS server answering checkAddress.sh with 'registered'."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(crt, key)

    async def handler(request: web.Request) -> web.Response:
        return web.json_response({"status": 2, "msg": "Email address is valid and registered."})

    app = web.Application()
    app.router.add_get("/cgi-bin/ajax/checkAddress.sh", handler)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=context)
    await site.start()
    try:
        yield f"https://127.0.0.1:{runner.addresses[0][1]}"
    finally:
        await runner.cleanup()


@pytest.fixture
def https_url(cert: tuple[Path, Path]) -> Iterator[str]:
    """The HTTPS server on its own loop in a thread (the CLI runs its own loop)."""
    crt, key = cert
    with start_blocking_portal() as portal, portal.wrap_async_context_manager(
        https_check_address(crt, str(key))
    ) as url:
        yield url


def test_cli_verifies_tls_and_ca_bundle_works(
    https_url: str, cert: tuple[Path, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    """Untrusted certificate: exit 1 with a --ca-bundle hint; with --ca-bundle: exit 0."""
    assert main(["check-email", EMAIL, "--server", https_url, "--no-retry-wait"]) == EXIT_FAILED
    err = capsys.readouterr().err
    assert "certificate" in err.lower()
    assert len(err.strip().splitlines()) == 1
    code = main(["check-email", EMAIL, "--server", https_url, "--ca-bundle", str(cert[0])])
    captured = capsys.readouterr()
    assert code == EXIT_OK, captured.err
    assert "registered" in captured.out
    assert EMAIL not in captured.out + captured.err


def test_missing_ca_bundle_is_a_usage_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A --ca-bundle that is not a file is refused up front (no silent fallback)."""
    code = main(["check-email", EMAIL, "--server", "https://127.0.0.1:9",
                 "--ca-bundle", str(tmp_path / "nope.pem")])  # fmt: skip
    err = capsys.readouterr().err
    assert code == EXIT_USAGE, err
    assert "nope.pem" in err
    assert len(err.strip().splitlines()) == 1


def test_no_option_disables_verification() -> None:
    """No sub-command has an option that turns TLS verification off."""
    parser = build_parser()
    options: set[str] = set()

    def walk(p: argparse.ArgumentParser) -> None:
        for action in p._actions:
            options.update(action.option_strings)
            if isinstance(action, argparse._SubParsersAction):
                for sub in action.choices.values():
                    walk(sub)

    walk(parser)
    assert "--ca-bundle" in options
    for word in ("insecure", "no-verify", "verify", "no-ssl", "no-tls", "skip-tls"):
        assert not [o for o in options if word in o], word


@pytest.mark.anyio
async def test_emails_not_in_logs_or_output(tmp_path: Path,
                                            caplog: pytest.LogCaptureFixture) -> None:  # fmt: skip
    """A pull with retries and a refused address logs no full email, at any level."""
    caplog.set_level(logging.DEBUG, logger="asyncjsoc")
    bad = "dave.private@example.org"
    async with emulator(http503_rate=0.2, unknown_emails={bad}) as emu:
        out = tmp_path / "out"
        config = fast_config(emu, bad, EMAIL, max_files_per_export=2)
        async with Client(config, out) as client:
            result = await client.fetch(SHARP)
    assert result.ok, result.failed
    assert any(r.levelno >= logging.INFO for r in caplog.records), "nothing was logged"
    text = "\n".join(r.getMessage() for r in caplog.records)
    assert EMAIL not in text
    assert bad not in text
    assert_no_email_in_outputs(out, (EMAIL, bad))


def assert_no_email_in_outputs(out: Path, emails: tuple[str, ...]) -> None:
    """No output file outside ``.asyncjsoc/`` contains an address (or its local part)."""
    for path in out.rglob("*"):
        if ".asyncjsoc" in path.relative_to(out).parts or not path.is_file():
            continue
        data = path.read_bytes()
        for email in emails:
            assert email.encode() not in data, path
            assert email.split("@")[0].encode() not in data, path


@pytest.fixture
def cli_emulator() -> Iterator[Emulator]:
    """The emulator on its own loop in a thread, for in-process CLI runs."""
    knobs = Knobs(export_delay=0.05, file_size=4 * 2880, seed=3, http503_rate=0.15)
    with start_blocking_portal() as portal, portal.wrap_async_context_manager(
        run_emulator(knobs)
    ) as emu:
        yield emu


def test_cli_stderr_and_files_never_show_full_emails(
    cli_emulator: Emulator, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The CLI's progress lines, summary and errors mask addresses; files hold none."""
    out = tmp_path / "out"
    code = main(["fetch", SHARP, "--server", cli_emulator.url, "--email", EMAIL,
                 "--email", "erin@example.org", "--out", str(out), "--no-progress",
                 "--poll-min", "0.02", "--rate-limit", "500", "--no-retry-wait"])  # fmt: skip
    captured = capsys.readouterr()
    assert code == EXIT_OK, captured.err
    assert "c***@example.org" in captured.err
    assert EMAIL not in captured.err
    assert "erin@example.org" not in captured.err
    assert_no_email_in_outputs(out, (EMAIL, "erin@example.org"))


@pytest.mark.parametrize(("url", "shown"), [
    ("http://u:secret@127.0.0.1:9", "http://u:***@127.0.0.1:9"),
    ("https://me:p@ss:w@host/path?x=1", "https://me:***@host/path?x=1"),
    ("http://user@host/", "http://user@host/"),
    ("http://jsoc.stanford.edu", "http://jsoc.stanford.edu"),
])
def test_redact_url_hides_only_the_password(url: str, shown: str) -> None:
    """A password in a server URL is never shown; the rest of the URL is."""
    assert redact_url(url) == shown


def test_cli_never_shows_a_password_in_the_server_url(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """An unreachable --server with credentials: the hint names the server, not its
    password."""
    code = main(["fetch", "hmi.M_45s[2012.01.01/3m]{magnetogram}", "--email", "a@example.org",
                 "--out", str(tmp_path / "out"), "--server", "http://u:secret@127.0.0.1:9",
                 "--no-retry-wait", "--no-progress"])
    err = capsys.readouterr().err
    assert code != 0
    assert "http://u:***@127.0.0.1:9" in err
    assert "secret" not in err
