"""glibc's malloc thresholds: streaming must not fault its socket buffers in afresh.

Each case runs in a new interpreter (the thresholds are per process and only ever rise) and
counts the minor page faults of a loop that allocates and frees 256 KiB blocks the way
asyncio's receive buffers and aiohttp's body pieces do.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest

from asyncjsoc._allocator import _glibc

pytestmark = pytest.mark.skipif(not _glibc(), reason="the thresholds are glibc's")

_CHURN = """
import resource

def faults():
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt

before = faults()
for _ in range(300):
    blocks = [b"x" * (256 << 10) for _ in range(3)]
    del blocks
print("FAULTS", faults() - before)
"""


def _churn_faults(setup: str, env: dict[str, str] | None = None) -> int:
    """Page faults of the churn loop in a fresh interpreter after ``setup``."""
    code = textwrap.dedent(setup) + _CHURN
    run_env = {k: v for k, v in os.environ.items()
               if not k.startswith(("MALLOC_", "GLIBC_TUNABLES"))}
    run_env.update(env or {})
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         env=run_env, timeout=60, check=True).stdout
    return int(out.split("FAULTS")[1])


def test_churn_faults_without_raised_thresholds() -> None:
    # The premise: glibc's default thresholds fault every such block in afresh
    # (3 blocks x 64 pages x 300 rounds is 57,600).
    assert _churn_faults("") > 20_000


def test_raised_thresholds_keep_the_blocks_in_the_heap() -> None:
    setup = """
        from asyncjsoc._allocator import raise_malloc_thresholds
        assert raise_malloc_thresholds()
        assert not raise_malloc_thresholds()  # once per process
    """
    assert _churn_faults(setup) < 2_000


def test_a_downloader_raises_them() -> None:
    setup = """
        import asyncio
        import aiohttp
        from asyncjsoc._download import Downloader

        async def make() -> None:
            async with aiohttp.ClientSession() as session:
                Downloader(session)

        asyncio.run(make())
    """
    assert _churn_faults(setup) < 2_000


def test_thresholds_set_by_the_user_are_kept() -> None:
    # MALLOC_MMAP_THRESHOLD_ fixes glibc's threshold: the freed 4 MiB block must not move it.
    setup = """
        from asyncjsoc._allocator import raise_malloc_thresholds
        raise_malloc_thresholds()
    """
    assert _churn_faults(setup, {"MALLOC_MMAP_THRESHOLD_": "131072"}) > 20_000
