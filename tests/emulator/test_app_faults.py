"""Emulator HTTP-level rules and faults: 5xx/429, IP blocks, connection caps, clock, audit."""

from __future__ import annotations

import time

import aiohttp
import anyio
import pytest

from asyncjsoc.emulator import Emulator, Knobs, run_emulator

pytestmark = pytest.mark.anyio

CHECK = "/cgi-bin/ajax/checkAddress.sh?address=a%2540b.org&checkonly=1"
STATUS = "/cgi-bin/ajax/jsoc_fetch?op=exp_status&requestid=JSOC_20200101_001"


async def statuses(emu: Emulator, path: str, n: int) -> list[tuple[int, str | None]]:
    """(HTTP status, Retry-After) of ``n`` sequential GETs."""
    out = []
    async with aiohttp.ClientSession() as s:
        for _ in range(n):
            async with s.get(emu.url + path) as r:
                await r.read()
                out.append((r.status, r.headers.get("Retry-After")))
    return out


async def a_file(emu: Emulator) -> str:
    """The SUMS path of one magnetogram."""
    url = f"{emu.url}/cgi-bin/ajax/jsoc_info"
    params = {"op": "rs_list", "ds": "hmi.M_45s[2012.01.01_00:00:45_TAI]", "seg": "magnetogram"}
    async with aiohttp.ClientSession() as s, s.get(url, params=params) as r:
        body = await r.json(content_type=None)
    path: str = body["segments"][0]["values"][0]
    return path


async def test_http_500_and_503_on_cgi_only(emulator: Emulator) -> None:
    """5xx knobs hit CGI calls, never files; 503 carries Retry-After."""
    path = await a_file(emulator)
    emulator.knobs.http500_rate = 1.0
    assert await statuses(emulator, CHECK, 2) == [(500, None)] * 2
    assert (await statuses(emulator, path, 1))[0][0] == 200
    emulator.knobs.http500_rate = 0.0
    emulator.knobs.http503_rate = 1.0
    emulator.knobs.retry_after = 3
    assert await statuses(emulator, CHECK, 1) == [(503, "3")]


async def test_http_429_on_cgi_and_files(emulator: Emulator) -> None:
    """429 + Retry-After applies to CGIs and files alike."""
    path = await a_file(emulator)
    emulator.knobs.http429_rate = 1.0
    assert await statuses(emulator, CHECK, 1) == [(429, "1")]
    assert await statuses(emulator, path, 1) == [(429, "1")]
    assert [e.http_status for e in emulator.audit.requests()][-2:] == [429, 429]


async def test_faults_are_seeded() -> None:
    """Two emulators with the same seed fail the same requests."""
    runs = []
    for _ in range(2):
        async with run_emulator(Knobs(seed=7, http500_rate=0.5)) as emu:
            runs.append([s for s, _ in await statuses(emu, CHECK, 12)])
    assert runs[0] == runs[1]
    assert {200, 500} == set(runs[0])


async def test_rate_budget_blocks_with_403(emulator: Emulator) -> None:
    """Over the request budget an IP gets 403 + Retry-After until the block ends."""
    emulator.knobs.rate_budget = 3
    emulator.knobs.block_seconds = 120
    got = await statuses(emulator, CHECK, 5)
    assert [s for s, _ in got] == [200, 200, 200, 403, 403]
    assert got[3][1] == "120"
    assert len(emulator.audit.blocks) == 1
    assert emulator.audit.blocks[0].until - emulator.audit.blocks[0].start == 120
    emulator.clock.advance(121)
    assert [s for s, _ in await statuses(emulator, CHECK, 3)] == [200, 200, 200]


async def test_rate_window_slides(emulator: Emulator) -> None:
    """Requests older than the window stop counting."""
    emulator.knobs.rate_budget = 2
    emulator.knobs.rate_window = 10
    assert [s for s, _ in await statuses(emulator, CHECK, 2)] == [200, 200]
    emulator.clock.advance(11)
    assert [s for s, _ in await statuses(emulator, CHECK, 2)] == [200, 200]
    assert emulator.audit.blocks == []


async def test_forwarded_for_gives_separate_ips(emulator: Emulator) -> None:
    """With trust_forwarded_for, X-Forwarded-For names the client (budget per IP)."""
    emulator.knobs.trust_forwarded_for = True
    emulator.knobs.rate_budget = 1
    async with aiohttp.ClientSession() as s:
        for ip in ("10.0.0.1", "10.0.0.2"):
            async with s.get(emulator.url + CHECK, headers={"X-Forwarded-For": ip}) as r:
                assert r.status == 200
    assert {e.ip for e in emulator.audit.requests()} == {"10.0.0.1", "10.0.0.2"}


async def test_max_connections_per_client(emulator: Emulator) -> None:
    """A second concurrent request beyond max_connections gets 503 + Retry-After at once."""
    emulator.knobs.file_size = 200_000
    path = await a_file(emulator)
    emulator.knobs.max_connections = 1
    results: list[int] = []

    async def one() -> None:
        async with aiohttp.ClientSession() as s, s.get(emulator.url + path) as r:
            await r.read()
            results.append(r.status)

    emulator.hold_files()  # the first GET stays in flight until the second was answered
    try:
        with anyio.fail_after(10):  # a second GET let in would be held too: a timeout
            async with anyio.create_task_group() as tg:
                tg.start_soon(one)
                await emulator.wait_files_held(1)
                await one()
                assert results == [503]
                emulator.release_files()
    finally:
        emulator.release_files()
    assert results == [503, 200]


async def test_cgi_delay(emulator: Emulator) -> None:
    """cgi_delay holds CGI answers back."""
    emulator.knobs.cgi_delay = 0.2
    t0 = time.monotonic()
    await statuses(emulator, CHECK, 1)
    assert time.monotonic() - t0 >= 0.2


async def test_time_scale_speeds_exports_up(emulator: Emulator) -> None:
    """With time_scale 1000 a 100 s export is done after ~0.1 s of wall time."""
    emulator.knobs.time_scale = 1000
    emulator.knobs.export_delay = 100
    q = ("/cgi-bin/ajax/jsoc_fetch?op=exp_request&ds=hmi.M_45s%5B2012.01.01_00%3A00%3A45_TAI%5D"
         "&notify=a%40b.org&method=url&protocol=fits")  # fmt: skip
    async with aiohttp.ClientSession() as s:
        async with s.get(emulator.url + q) as r:
            rid = (await r.json(content_type=None))["requestid"]
        await anyio.sleep(0.15)
        async with s.get(
            f"{emulator.url}/cgi-bin/ajax/jsoc_fetch?op=exp_status&requestid={rid}"
        ) as r:
            assert (await r.json(content_type=None))["status"] == "0"


async def test_audit_endpoint_and_records(emulator: Emulator) -> None:
    """GET /_emulator/audit returns the JSON audit; entries carry op, params, statuses."""
    await statuses(emulator, CHECK, 1)
    await statuses(emulator, STATUS, 1)
    async with aiohttp.ClientSession() as s, s.get(emulator.url + "/_emulator/audit") as r:
        body = await r.json()
    ops = [e["op"] for e in body["requests"]]
    assert ops == ["checkAddress.sh", "jsoc_fetch/exp_status"]
    assert body["requests"][1]["status"] == 4
    assert body["requests"][1]["http_status"] == 200
    assert body["requests"][0]["params"]["address"] == "a%40b.org"
    assert emulator.audit.count("jsoc_fetch/exp_status") == 1
    emulator.audit.clear()
    assert emulator.audit.requests() == []
