"""Tests for the token bucket and the rate-limit middleware."""

from __future__ import annotations

import math
from collections.abc import AsyncIterator

import aiohttp
import anyio
import anyio.lowlevel
import pytest
from aiohttp import web
from hypothesis import example, given, settings
from hypothesis import strategies as st
from yarl import URL

from asyncjsoc._ratelimit import (
    Priority,
    TokenBucket,
    parse_retry_after,
    rate_limit_middleware,
    request_priority,
)


class FakeClock:
    """A manual clock whose sleep advances time instead of waiting."""

    def __init__(self) -> None:
        self.now = 1000.0
        self.sleeps: list[float] = []

    def __call__(self) -> float:
        """The current fake time."""
        return self.now

    async def sleep(self, seconds: float) -> None:
        """Advance the fake time by ``seconds`` and let other tasks run."""
        self.sleeps.append(seconds)
        self.now += seconds
        await anyio.lowlevel.checkpoint()


class ManualClock:
    """A clock that moves only when the test calls :meth:`advance`; sleepers wait for it."""

    def __init__(self) -> None:
        self.now = 1000.0
        self._sleepers: list[tuple[float, anyio.Event]] = []

    def __call__(self) -> float:
        """The current manual time."""
        return self.now

    async def sleep(self, seconds: float) -> None:
        """Block until the test has advanced the clock by ``seconds``."""
        wake = anyio.Event()
        self._sleepers.append((self.now + seconds, wake))
        await wake.wait()

    def advance(self, seconds: float) -> None:
        """Move time forward and wake every sleeper whose deadline has come."""
        self.now += seconds
        due = [s for s in self._sleepers if s[0] <= self.now]
        self._sleepers = [s for s in self._sleepers if s[0] > self.now]
        for _, wake in due:
            wake.set()


class GrantLog(TokenBucket):
    """A bucket that notes the clock time of every token it hands out.

    A waiter resumes a little after its token was handed over; on a fake clock that jumps
    when the next waiter sleeps, only the hand-over time says what the bucket did.
    """

    def __init__(self, rate: float, burst: int, clock: FakeClock) -> None:
        super().__init__(rate, burst, clock=clock, sleep=clock.sleep)
        self.times: list[float] = []

    def _take(self) -> None:
        super()._take()
        self.times.append(self._clock())


def manual_bucket(rate: float, burst: int) -> tuple[TokenBucket, ManualClock]:
    """A bucket on a manual clock."""
    clock = ManualClock()
    return TokenBucket(rate, burst, clock=clock, sleep=clock.sleep), clock


def fake_bucket(rate: float, burst: int) -> tuple[TokenBucket, FakeClock]:
    """A bucket on a fake clock."""
    clock = FakeClock()
    return TokenBucket(rate, burst, clock=clock, sleep=clock.sleep), clock


@pytest.mark.parametrize(("rate", "burst"), [(-1.0, 1), (math.nan, 1), (1.0, 0), (1.0, 1.5)])
def test_invalid_buckets_are_refused(rate: float, burst: int) -> None:
    """Negative/NaN rates and non-positive bursts are errors."""
    with pytest.raises(ValueError):  # noqa: PT011
        TokenBucket(rate, burst)


def test_burst_then_refill() -> None:
    """A full bucket grants burst tokens, then one per 1/rate seconds."""
    bucket, clock = fake_bucket(rate=2.0, burst=3)
    assert [bucket.try_acquire() for _ in range(4)] == [True, True, True, False]
    clock.now += 0.49
    assert not bucket.try_acquire()
    clock.now += 0.02
    assert bucket.try_acquire()
    with pytest.raises(anyio.WouldBlock):
        bucket.acquire_nowait()
    stats = bucket.statistics()
    assert stats.requests_granted == 4
    assert stats.pauses == 0


@pytest.mark.parametrize("rate", [0.0, math.inf])
def test_unlimited_rates(rate: float) -> None:
    """rate 0 or inf never runs out, but pauses still hold everyone back."""
    bucket, clock = fake_bucket(rate=rate, burst=1)
    assert all(bucket.try_acquire() for _ in range(1000))
    bucket.pause_for(5.0)
    assert not bucket.try_acquire()
    clock.now += 5.0
    assert bucket.try_acquire()
    assert bucket.statistics().tokens == math.inf


def test_pause_drains_to_one_token_and_never_shortens() -> None:
    """After a pause only one request goes at once; a shorter pause is ignored."""
    bucket, clock = fake_bucket(rate=1.0, burst=10)
    bucket.pause_until(clock.now + 30)
    bucket.pause_until(clock.now + 10)
    stats = bucket.statistics()
    assert stats.pauses == 1
    assert stats.paused_until == clock.now + 30
    clock.now += 29.9
    assert not bucket.try_acquire()
    clock.now += 0.1
    assert bucket.try_acquire()
    assert not bucket.try_acquire()
    assert bucket.statistics().paused_until is None


@settings(max_examples=300, deadline=None)
@given(
    rate=st.floats(0.1, 50.0),
    burst=st.integers(1, 20),
    steps=st.lists(
        st.tuples(st.floats(0.0, 2.0), st.integers(0, 5), st.none() | st.floats(0.0, 3.0)),
        max_size=60,
    ),
)
def test_never_over_budget(
    rate: float, burst: int, steps: list[tuple[float, int, float | None]]
) -> None:
    """In any window the bucket grants at most burst + rate × window tokens."""
    bucket, clock = fake_bucket(rate, burst)
    grants: list[float] = []
    for advance, tries, pause in steps:
        clock.now += advance
        if pause is not None:
            bucket.pause_for(pause)
        for _ in range(tries):
            if bucket.try_acquire():
                grants.append(clock.now)
    for i in range(len(grants)):
        for j in range(i, len(grants)):
            window = grants[j] - grants[i]
            assert j - i + 1 <= burst + rate * window + 1e-6
    assert bucket.statistics().requests_granted == len(grants)


@pytest.mark.anyio
async def test_acquire_waits_on_fake_clock_fifo() -> None:
    """Waiters are served in arrival order at the bucket's rate, without busy looping."""
    bucket, clock = fake_bucket(rate=4.0, burst=1)
    order: list[tuple[int, float, float]] = []

    async def worker(n: int) -> None:
        called = clock.now
        await bucket.acquire()
        order.append((n, clock.now, called))

    async with anyio.create_task_group() as tg:
        for n in range(6):
            tg.start_soon(worker, n)
    assert [n for n, _, _ in order] == list(range(6))
    times = [t - 1000.0 for _, t, _ in order]
    assert times == pytest.approx([0.0, 0.25, 0.5, 0.75, 1.0, 1.25])
    # One sleep per missing token: no polling.
    assert len(clock.sleeps) == 5
    stats = bucket.statistics()
    assert stats.requests_granted == 6
    assert stats.total_wait_seconds == pytest.approx(sum(t - c for _, t, c in order))
    assert stats.waiting == 0


@pytest.mark.anyio
async def test_control_waiter_overtakes_queued_bulk_waiters() -> None:
    """A CGI call queued after file downloads gets the very next token; the rest stay FIFO."""
    bucket, clock = manual_bucket(rate=1.0, burst=1)
    bucket.acquire_nowait()
    granted: list[tuple[str, float]] = []

    async def take(name: str, priority: Priority) -> None:
        await bucket.acquire(priority)
        granted.append((name, clock.now - 1000.0))

    async with anyio.create_task_group() as tg:
        for n in range(3):
            tg.start_soon(take, f"file{n}", Priority.BULK)
        await anyio.wait_all_tasks_blocked()
        tg.start_soon(take, "poll", Priority.CONTROL)
        await anyio.wait_all_tasks_blocked()
        assert bucket.statistics().waiting == 4
        for _ in range(4):
            assert not bucket.try_acquire()  # queued waiters come first
            clock.advance(1.0)
            await anyio.wait_all_tasks_blocked()
    assert granted == [("poll", 1.0), ("file0", 2.0), ("file1", 3.0), ("file2", 4.0)]
    stats = bucket.statistics()
    assert stats.requests_granted == 5
    assert stats.waiting == 0


@pytest.mark.anyio
async def test_cancelled_dispatcher_hands_over() -> None:
    """When the waiter sleeping for the next token is cancelled, the next one takes over."""
    bucket, clock = manual_bucket(rate=1.0, burst=1)
    bucket.acquire_nowait()
    granted: list[str] = []

    async def take(name: str, priority: Priority) -> None:
        await bucket.acquire(priority)
        granted.append(name)

    # A lost hand-over would leave file1 waiting for ever.
    with anyio.fail_after(5):
        async with anyio.create_task_group() as tg:
            with anyio.CancelScope() as first:
                async with anyio.create_task_group() as inner:
                    inner.start_soon(take, "file0", Priority.BULK)
                    await anyio.wait_all_tasks_blocked()
                    tg.start_soon(take, "file1", Priority.BULK)
                    await anyio.wait_all_tasks_blocked()
                    first.cancel()  # file0 was sleeping for the next token
            await anyio.wait_all_tasks_blocked()
            assert bucket.statistics().waiting == 1
            clock.advance(1.0)
    assert granted == ["file1"]
    assert bucket.statistics().requests_granted == 2


@pytest.mark.anyio
async def test_pause_during_wait_extends_it() -> None:
    """A pause that arrives while someone waits delays that waiter too."""
    bucket, clock = manual_bucket(rate=1.0, burst=1)
    bucket.acquire_nowait()
    done: list[float] = []

    async def waiter() -> None:
        await bucket.acquire()
        done.append(clock.now)

    async with anyio.create_task_group() as tg:
        tg.start_soon(waiter)
        await anyio.wait_all_tasks_blocked()  # sleeping towards t+1 for the next token
        clock.advance(0.5)
        bucket.pause_until(1003.0)  # a block arrives while it waits, half a token earned
        for step in (0.5, 2.0):  # the token would be due at t+1; the pause ends at t+3
            clock.advance(step)
            await anyio.wait_all_tasks_blocked()
            assert done == []
        clock.advance(0.5)  # no tokens were earned during the pause: the other half now
    assert done == [pytest.approx(1003.5)]
    assert bucket.statistics().pauses == 1


@pytest.mark.anyio
async def test_cancelled_acquire_takes_nothing() -> None:
    """A cancelled waiter leaves the bucket usable and does not count as granted."""
    bucket, clock = manual_bucket(rate=1.0, burst=1)
    await bucket.acquire()
    async with anyio.create_task_group() as tg:
        tg.start_soon(bucket.acquire)
        while bucket.statistics().waiting == 0:
            await anyio.lowlevel.checkpoint()
        tg.cancel_scope.cancel()
    stats = bucket.statistics()
    assert stats.requests_granted == 1
    assert stats.waiting == 0
    # The next token comes a second later, as if the cancelled waiter had never asked.
    clock.advance(1.0)
    with anyio.fail_after(2):
        await bucket.acquire()
    assert bucket.statistics().requests_granted == 2


@pytest.mark.anyio
async def test_real_clock_rate() -> None:
    """On the real clock, 1 + 5 tokens at 100/s take about 50 ms."""
    bucket = TokenBucket(rate=100.0, burst=1)
    start = anyio.current_time()
    for _ in range(6):
        await bucket.acquire()
    elapsed = anyio.current_time() - start
    assert 0.045 <= elapsed < 1.0


@pytest.mark.parametrize(
    ("url", "priority"),
    [
        ("http://jsoc.stanford.edu/cgi-bin/ajax/jsoc_fetch?op=exp_status", Priority.CONTROL),
        ("http://jsoc.stanford.edu/cgi-bin/ajax/checkAddress.sh", Priority.CONTROL),
        ("https://example.org/netdrms/cgi-bin/ajax/jsoc_info?op=rs_summary", Priority.CONTROL),
        ("http://jsoc.stanford.edu/SUM1/D123/S00000/a.fits", Priority.BULK),
        ("http://jsoc.stanford.edu/SUM1/D123/S00000/cgi-bin.fits", Priority.BULK),
    ],
)
def test_request_priority(url: str, priority: Priority) -> None:
    """CGI calls are CONTROL, exported files BULK."""
    assert request_priority(URL(url)) is priority


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        (None, None),
        ("", None),
        ("120", 120.0),
        ("0.5", 0.5),
        ("-3", 0.0),
        ("nan", None),
        ("inf", None),
        ("soon", None),
        ("Wed, 21 Oct 2015 07:28:00 GMT", 30.0),
    ],
)
def test_parse_retry_after(header: str | None, expected: float | None) -> None:
    """Retry-After accepts seconds and HTTP dates, and ignores junk."""
    now = 1445412450.0  # 2015-10-21 07:27:30 UTC
    assert parse_retry_after(header, now=now) == expected


@pytest.fixture
async def loopback_server() -> AsyncIterator[tuple[str, list[str]]]:
    """A tiny aiohttp server on loopback that logs request paths.

    The middleware is tested on its own here; the JSOC emulator tests live in test_api.py.
    """
    seen: list[str] = []

    async def handler(request: web.Request) -> web.StreamResponse:
        seen.append(request.path)
        if request.path == "/redirect":
            raise web.HTTPFound("/ok")
        if request.path == "/slowdown":
            return web.Response(status=429, headers={"Retry-After": "0.2"})
        if request.path == "/blocked":
            return web.Response(status=403, headers={"Retry-After": "0.3"})
        if request.path == "/forbidden":
            return web.Response(status=403)
        return web.Response(text="ok")

    app = web.Application()
    app.router.add_route("GET", "/{tail:.*}", handler)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    try:
        yield f"http://127.0.0.1:{port}", seen
    finally:
        await runner.cleanup()


@pytest.mark.anyio
async def test_middleware_charges_every_request_and_redirect(
    loopback_server: tuple[str, list[str]],
) -> None:
    """Each request and each redirect hop takes a token."""
    url, seen = loopback_server
    bucket = TokenBucket(rate=1000.0, burst=100)
    async with aiohttp.ClientSession(middlewares=[rate_limit_middleware(bucket)]) as session:
        async with session.get(f"{url}/ok") as resp:
            assert resp.status == 200
        async with session.get(f"{url}/redirect") as resp:
            assert resp.status == 200
    assert seen == ["/ok", "/redirect", "/ok"]
    assert bucket.statistics().requests_granted == 3


@pytest.mark.anyio
@pytest.mark.parametrize(("path", "pause"), [("/slowdown", 0.2), ("/blocked", 0.3)])
async def test_middleware_pauses_on_retry_after(
    loopback_server: tuple[str, list[str]], path: str, pause: float
) -> None:
    """429 or 403 with Retry-After pause the whole bucket for that long."""
    url, _ = loopback_server
    bucket = TokenBucket(rate=1000.0, burst=100)
    async with aiohttp.ClientSession(middlewares=[rate_limit_middleware(bucket)]) as session:
        async with session.get(f"{url}{path}") as resp:
            assert resp.status in (403, 429)
        assert bucket.paused()
        assert bucket.statistics().pauses == 1
        start = anyio.current_time()
        async with session.get(f"{url}/ok") as resp:
            assert resp.status == 200
        assert anyio.current_time() - start >= pause - 0.05


@pytest.mark.anyio
async def test_middleware_sends_cgi_calls_before_queued_file_gets(
    loopback_server: tuple[str, list[str]],
) -> None:
    """Through a real session: a CGI call started after three file GETs is sent second."""
    url, seen = loopback_server
    bucket, clock = manual_bucket(rate=1.0, burst=1)
    send, receive = anyio.create_memory_object_stream[str](10)

    async def get(path: str) -> None:
        async with session.get(f"{url}{path}") as resp:
            await resp.read()
        await send.send(path)

    files = [f"/SUM1/D1/S00000/f{n}.fits" for n in range(3)]
    cgi = "/cgi-bin/ajax/jsoc_fetch"
    async with (
        aiohttp.ClientSession(middlewares=[rate_limit_middleware(bucket)]) as session,
        anyio.create_task_group() as tg,
        send,
        receive,
    ):
        for path in files:
            tg.start_soon(get, path)
        assert await receive.receive() == files[0]  # the one token there was
        await anyio.wait_all_tasks_blocked()
        tg.start_soon(get, cgi)
        await anyio.wait_all_tasks_blocked()
        arrived = []
        for _ in range(3):
            clock.advance(1.0)
            arrived.append(await receive.receive())
    assert arrived == [cgi, files[1], files[2]]
    assert seen == [files[0], cgi, files[1], files[2]]


@pytest.mark.anyio
async def test_middleware_plain_403_does_not_pause(loopback_server: tuple[str, list[str]]) -> None:
    """A 403 without Retry-After is an ordinary refusal, not a block."""
    url, _ = loopback_server
    bucket = TokenBucket(rate=1000.0, burst=100)
    async with (
        aiohttp.ClientSession(middlewares=[rate_limit_middleware(bucket)]) as session,
        session.get(f"{url}/forbidden") as resp,
    ):
        assert resp.status == 403
    assert bucket.statistics().pauses == 0


@settings(max_examples=40, deadline=None)
@given(
    rate=st.floats(0.5, 20.0),
    burst=st.integers(1, 8),
    arrivals=st.lists(st.floats(0.0, 1.0), min_size=1, max_size=25),
    pause=st.none() | st.tuples(st.integers(0, 24), st.floats(0.0, 2.0)),
    bulk=st.sets(st.integers(0, 24)),
)
# Found by CI: the dispatcher served waiter 3, then itself (4), and resumed first.
@example(rate=17.0, burst=2, arrivals=[0.0] * 6 + [1.0], pause=None, bulk=set())
def test_async_acquire_never_over_budget(
    rate: float, burst: int, arrivals: list[float], pause: tuple[int, float] | None,
    bulk: set[int],
) -> None:
    """Concurrent acquire() calls on a fake clock keep every window within budget.

    Whatever the mix of priorities, each priority is served in arrival order.
    """
    clock = FakeClock()
    bucket = GrantLog(rate, burst, clock)
    grants: list[tuple[int, float]] = []

    async def worker(n: int) -> None:
        await bucket.acquire(Priority.BULK if n in bulk else Priority.CONTROL)
        grants.append((n, clock.now))
        if pause is not None and pause[0] == n:
            bucket.pause_for(pause[1])

    async def main() -> None:
        async with anyio.create_task_group() as tg:
            for n, gap in enumerate(arrivals):
                tg.start_soon(worker, n)
                clock.now += gap
                await anyio.lowlevel.checkpoint()

    anyio.run(main)
    assert sorted(n for n, _ in grants) == list(range(len(arrivals)))
    for members in (bulk, set(range(len(arrivals))) - bulk):
        served = [n for n, _ in grants if n in members]
        assert served == sorted(served)
    times = bucket.times
    assert len(times) == len(arrivals)
    assert times == sorted(times)
    for i in range(len(times)):
        for j in range(i, len(times)):
            assert j - i + 1 <= burst + rate * (times[j] - times[i]) + 1e-6
