"""``asyncjsoc demo``: a realistic bulk pull from an emulated JSOC, in this process.

The demo starts the JSOC emulator on 127.0.0.1 (a random port), tuned to look like the real
service at small scale: exports take a second or two to stage, files are a few hundred kB
and arrive at a few MB/s each, and two registered notify addresses each hold one export
slot. It then pulls SHARP CEA vector-field components (Bp, Bt, Br) for several HARP regions
over a few days, split into several exports, so every part of the display shows up.

This is the one client-side module that imports the emulator, and only inside
:func:`demo_server`, because showing the tool working needs a server and there is no
internet here.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass

__all__ = ["DEMO_EMAILS", "DemoSetup", "demo_server", "demo_setup", "real_jsoc_hint"]

DEMO_EMAILS = ("alice@example.org", "bob@example.org")
"""Notify addresses the demo uses; the emulator treats every well-formed address as registered."""


@dataclass(frozen=True)
class DemoSetup:
    """What the demo pulls and how the emulated server behaves."""

    recordset: str
    max_files_per_export: int
    export_delay: float
    file_size: int
    bandwidth: int | None
    poll_min: float
    requests_per_second: float


def demo_setup(*, quick: bool = False) -> DemoSetup:
    """The demo's query and server tuning; ``quick`` is a small version for tests.

    Parameters
    ----------
    quick
        Pull a few dozen tiny files with sub-second staging instead of the full show.
    """
    if quick:
        return DemoSetup(
            recordset=(
                "hmi.sharp_cea_720s[7302][2018.09.06_00:00:00_TAI-2018.09.06_12:00:00_TAI@96m]"
                "{Bp,Bt,Br}"
            ),
            max_files_per_export=9,
            export_delay=0.3,
            file_size=8 * 2880,
            bandwidth=None,
            poll_min=0.1,
            requests_per_second=200.0,
        )
    return DemoSetup(
        recordset=(
            "hmi.sharp_cea_720s[7300-7310][2018.09.25_00:00:00_TAI-2018.09.27_00:00:00_TAI@96m]"
            "{Bp,Bt,Br}"
        ),
        max_files_per_export=45,
        export_delay=1.5,
        file_size=100 * 2880,
        bandwidth=3_000_000,
        poll_min=0.25,
        # A local emulator: the polite 5 requests/s for the real JSOC would make the
        # demo's 279 small files take a minute and a half.
        requests_per_second=40.0,
    )


@asynccontextmanager
async def demo_server(setup: DemoSetup) -> AsyncIterator[str]:
    """Run the emulator tuned for ``setup``; yields its base URL.

    Parameters
    ----------
    setup
        The demo's tuning (export delay, file size, bandwidth).
    """
    from asyncjsoc.emulator import Knobs, run_emulator

    knobs = Knobs(
        seed=2018,
        export_delay=setup.export_delay,
        file_size=setup.file_size,
        bandwidth=setup.bandwidth,
    )
    async with run_emulator(knobs) as emulator:
        yield emulator.url


def real_jsoc_hint(setup: DemoSetup) -> str:
    """How to run the same pull against the real JSOC (uses $ASYNCJSOC_EMAILS if set)."""
    emails = [e.strip() for e in os.environ.get("ASYNCJSOC_EMAILS", "").split(",") if e.strip()]
    if emails:
        email_part = ""  # the CLI reads $ASYNCJSOC_EMAILS itself
        intro = "to run this pull against the real JSOC with your $ASYNCJSOC_EMAILS:"
    else:
        email_part = " --email you@example.org"
        intro = (
            "to run this pull against the real JSOC, register an address at "
            "http://jsoc.stanford.edu/ajax/register_email.html, then:"
        )
    server = os.environ.get("ASYNCJSOC_SERVER", "").strip()
    server_part = "" if not server else f" (the server comes from $ASYNCJSOC_SERVER={server})"
    return (f"{intro}\n  asyncjsoc fetch '{setup.recordset}'{email_part} --out sharp-data"
            f"{server_part}")
