"""ClientConfig: defaults, normalisation and validation."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from asyncjsoc._config import IP_PENDING_LIMIT, ClientConfig
from asyncjsoc.exceptions import InvalidInputError


def test_defaults_are_polite() -> None:
    """The defaults stay well under the JSOC's limits."""
    config = ClientConfig()
    assert config.server == "http://jsoc.stanford.edu"
    assert config.max_pending_exports < IP_PENDING_LIMIT
    assert config.connections <= 2
    assert config.protocol == "fits"
    assert config.method == "url"
    assert config.verify_checksums


def test_emails_are_normalised() -> None:
    """Emails are stripped, de-duplicated case-insensitively, and a lone string is one email."""
    config = ClientConfig(emails=(" a@example.org", "A@example.org", "b@example.org"))
    assert config.emails == ("a@example.org", "b@example.org")
    single = ClientConfig(emails="me@example.org")  # type: ignore[arg-type]
    assert single.emails == ("me@example.org",)


@pytest.mark.parametrize(
    "changes",
    [
        {"emails": ("not-an-email",)},
        {"server": "jsoc.stanford.edu"},
        {"method": "ftp"},
        {"protocol": "jpg"},
        {"max_files_per_export": 0},
        {"max_pending_exports": IP_PENDING_LIMIT},
        {"max_pending_exports": 0},
        {"connections": 0},
        {"burst": 0},
        {"requests_per_second": 0.0},
        {"requests_per_second": float("inf")},
        {"poll_min": 5.0, "poll_max": 1.0},
        {"status6_retries": -1},
        {"chunk_size": True},
        {"emails": None},
        {"emails": [1]},
        {"server": None},
        {"server": "http://exa mple.org"},
        {"server": "http://"},
        {"max_pending_exports": 2.5},
        {"max_pending_exports": None},
        {"max_files_per_export": 1.5},
        {"status6_retries": None},
        {"status6_retries": 1.5},
        {"poll_min": "1"},
        {"verify_checksums": "no"},
        {"fsync": 1},
        {"retry": "x"},
        {"ca_bundle": "/nonexistent/ca.pem"},
        {"ca_bundle": __file__},  # a file, but no PEM certificate in it
        {"connections": 65},
        {"requests_per_second": 1e-300},
        {"server": "http://[::1"},
        {"server": "http://127.0.0.1:99999"},
    ],
)
def test_bad_values_are_refused(changes: dict[str, object]) -> None:
    """Each impossible or wrongly typed value raises InvalidInputError (also a ValueError)
    naming the field, when the config is made, not deep inside a pull."""
    with pytest.raises(InvalidInputError) as caught:
        ClientConfig(**changes)  # type: ignore[arg-type]
    field = next(iter(changes))
    assert field in caught.value.message or field == "emails"
    with pytest.raises(ValueError, match=r"."):
        dataclasses.replace(ClientConfig(), **changes)  # type: ignore[arg-type]


def test_export_method_uses_quick_path_only_for_as_is() -> None:
    """url_quick is sent exactly when the protocol is as-is; url-tar is kept."""
    assert ClientConfig(protocol="as-is").export_method == "url_quick"
    assert ClientConfig(protocol="fits").export_method == "url"
    assert ClientConfig(protocol="fits", method="url_quick").export_method == "url"
    assert ClientConfig(protocol="as-is", method="url-tar").export_method == "url-tar"


def test_paths_and_server_are_normalised(tmp_path: Path) -> None:
    """A trailing slash is dropped from the server; paths become Path objects."""
    config = ClientConfig(
        server="http://127.0.0.1:8080/",
        state_path=str(tmp_path / "s.sqlite"),  # type: ignore[arg-type]
    )
    assert config.server == "http://127.0.0.1:8080"
    assert config.state_path == tmp_path / "s.sqlite"


def test_config_is_frozen() -> None:
    """A config cannot be changed in place."""
    config = ClientConfig()
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.connections = 5  # type: ignore[misc]
