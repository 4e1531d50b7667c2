"""Shared pytest configuration: anyio runs async tests on asyncio in debug mode."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from asyncjsoc.emulator import Emulator, Knobs, run_emulator


@pytest.fixture
def anyio_backend() -> tuple[str, dict[str, bool]]:
    """Run every async test on asyncio with debug checks on."""
    return ("asyncio", {"debug": True})


@pytest.fixture
async def emulator() -> AsyncIterator[Emulator]:
    """A running JSOC emulator on 127.0.0.1 (fast exports: 0.05 s; small 8 KiB files).

    Change ``emulator.knobs`` fields in a test to switch rules and faults on; move time with
    ``emulator.clock.advance(seconds)``; assert on ``emulator.audit``.
    """
    async with run_emulator(Knobs(export_delay=0.05, file_size=8 * 1024)) as emu:
        yield emu
