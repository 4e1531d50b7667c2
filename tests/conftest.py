"""Shared pytest configuration: anyio runs async tests on asyncio in debug mode."""

from __future__ import annotations

import pytest


@pytest.fixture
def anyio_backend() -> tuple[str, dict[str, bool]]:
    """Run every async test on asyncio with debug checks on."""
    return ("asyncio", {"debug": True})
