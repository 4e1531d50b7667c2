"""glibc's malloc thresholds: streaming must keep its socket buffers in the heap.

Each case runs in a new interpreter (the thresholds are per process and only ever rise),
holds three 256 KiB blocks the way asyncio's receive buffers and aiohttp's body pieces do
(1 MiB ones where it expects ``mmap``; see :data:`_MAPPED_BLOCK`), frees them, and reads
glibc's own account with ``mallinfo2`` (as differences, since the interpreter holds a few
mapped blocks of its own): how many of the blocks were served by ``mmap`` (each one faulted
in afresh and unmapped on free) and how many free bytes the heap kept for reuse (none when
the top of the heap is trimmed back to the system).

Page-fault counts show the cost too, but they depend on the kernel: the same churn loop
counted over 20,000 minor faults on one machine and 1,247 on a CI machine (the cause there was
not examined; a kernel that maps anonymous memory in larger folios, for one, takes one fault
for many pages), so the tests read glibc's state instead.
"""

from __future__ import annotations

import ctypes
import json
import os
import subprocess
import sys
import textwrap

import pytest

from asyncjsoc._allocator import _glibc

pytestmark = pytest.mark.skipif(
    not _glibc() or not hasattr(ctypes.CDLL(None), "mallinfo2"),
    reason="the thresholds are glibc's; mallinfo2 needs glibc 2.33 or later")

_BLOCK = 256 << 10
"""The size of asyncio's receive buffers: what the thresholds must keep in the heap."""

_MAPPED_BLOCK = 1 << 20
"""Block size for the tests that expect ``mmap``: above a 128 KiB threshold, below 4 MiB.

malloc serves a request from a free chunk of the heap large enough for it before it considers
``mmap`` at all, and importing asyncjsoc (aiohttp, yarl, ...) now and then leaves one of a few
hundred KiB: 5 of 60 fresh interpreters here served one 256 KiB block from the heap under a
128 KiB threshold; with 1 MiB blocks none of 200 did.
"""

_PROBE = """
import ctypes, json

class _MallInfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in (
        "arena", "ordblks", "smblks", "hblks", "hblkhd",
        "usmblks", "fsmblks", "uordblks", "fordblks", "keepcost")]

_libc = ctypes.CDLL(None)
_libc.mallinfo2.restype = _MallInfo2

before = _libc.mallinfo2()
blocks = [b"x" * {block} for _ in range(3)]
held = _libc.mallinfo2()
del blocks
freed = _libc.mallinfo2()
print("STATE", json.dumps({{
    "mmapped_blocks": held.hblks - before.hblks,
    "heap_free_bytes": freed.fordblks - held.fordblks,
}}))
"""


def _heap_state(setup: str, env: dict[str, str] | None = None,
                block: int = _BLOCK) -> dict[str, int]:
    """glibc's account of three ``block``-byte blocks in a fresh interpreter after ``setup``."""
    code = textwrap.dedent(setup) + _PROBE.format(block=block)
    run_env = {k: v for k, v in os.environ.items()
               if not k.startswith(("MALLOC_", "GLIBC_TUNABLES"))}
    run_env.update(env or {})
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         env=run_env, timeout=60, check=True).stdout
    state: dict[str, int] = json.loads(out.split("STATE", 1)[1])
    return state


def _kept_in_heap(state: dict[str, int]) -> bool:
    """No block was mmap'd, and freeing them left their bytes in the heap (no trim)."""
    return state["mmapped_blocks"] == 0 and state["heap_free_bytes"] >= 3 * _BLOCK


def test_default_thresholds_map_each_block_afresh() -> None:
    # The premise: at glibc's defaults a block above 128 KiB is mmap'd and unmapped on free.
    state = _heap_state("", block=_MAPPED_BLOCK)
    assert state["mmapped_blocks"] >= 3, state
    assert not _kept_in_heap(state)


def test_raised_thresholds_keep_the_blocks_in_the_heap() -> None:
    setup = """
        from asyncjsoc._allocator import raise_malloc_thresholds
        assert raise_malloc_thresholds()
        assert not raise_malloc_thresholds()  # once per process
    """
    state = _heap_state(setup)
    assert _kept_in_heap(state), state


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
    state = _heap_state(setup)
    assert _kept_in_heap(state), state


def test_thresholds_set_by_the_user_are_kept() -> None:
    # MALLOC_MMAP_THRESHOLD_ fixes glibc's threshold: the freed 4 MiB block must not move it.
    setup = """
        from asyncjsoc._allocator import raise_malloc_thresholds
        raise_malloc_thresholds()
    """
    state = _heap_state(setup, {"MALLOC_MMAP_THRESHOLD_": "131072"}, block=_MAPPED_BLOCK)
    assert state["mmapped_blocks"] >= 3, state
