"""Tests for the retry policy and the retrying helper."""

from __future__ import annotations

import math

import anyio
import pytest
from hypothesis import given
from hypothesis import strategies as st

from asyncjsoc._retry import RetryPolicy, retrying
from asyncjsoc.exceptions import HttpStatusError, ProtocolError, TransportError


def test_defaults_match_contract() -> None:
    """The default policy is the documented one."""
    policy = RetryPolicy()
    assert (policy.attempts, policy.initial, policy.maximum) == (6, 1.0, 60.0)
    assert (policy.multiplier, policy.jitter) == (2.0, 0.5)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"attempts": 0},
        {"initial": -1.0},
        {"maximum": math.inf},
        {"multiplier": 0.5},
        {"jitter": 1.5},
        {"initial": 10.0, "maximum": 5.0},
    ],
)
def test_invalid_policies_are_refused(kwargs: dict[str, float]) -> None:
    """__post_init__ refuses nonsense values."""
    with pytest.raises(ValueError):  # noqa: PT011
        RetryPolicy(**kwargs)  # type: ignore[arg-type]


def test_attempts_must_be_int() -> None:
    """A float attempt count is a type error."""
    with pytest.raises(TypeError):
        RetryPolicy(attempts=2.5)  # type: ignore[arg-type]


def test_policy_is_frozen_and_kw_only() -> None:
    """Policies cannot be changed or built positionally."""
    policy = RetryPolicy()
    with pytest.raises(AttributeError):
        policy.attempts = 3  # type: ignore[misc]
    with pytest.raises(TypeError):
        RetryPolicy(3)  # type: ignore[call-arg]


def test_delay_without_jitter_is_exponential_and_capped() -> None:
    """With no jitter, delays double and stop at maximum."""
    policy = RetryPolicy(initial=1.0, maximum=5.0, multiplier=2.0, jitter=0.0)
    assert [policy.delay(n) for n in range(1, 6)] == [1.0, 2.0, 4.0, 5.0, 5.0]
    assert policy.delay(10_000) == 5.0


@given(attempt=st.integers(1, 200), retry_after=st.none() | st.floats(0, 1e6))
def test_delay_bounds(attempt: int, retry_after: float | None) -> None:
    """Jittered delays stay within the band and never undercut the server's delay."""
    policy = RetryPolicy(initial=1.0, maximum=30.0, multiplier=2.0, jitter=0.5)
    wait = policy.delay(attempt, retry_after=retry_after)
    base = min(1.0 * 2.0 ** min(attempt - 1, 64), 30.0)
    assert wait >= min(base * 0.5, 30.0) - 1e-9
    if retry_after is None or retry_after <= 30.0:
        assert wait <= 30.0
    if retry_after is not None:
        assert wait >= retry_after


def test_no_wait_is_zero_but_honours_server() -> None:
    """no_wait() gives zero delays unless the server named one."""
    policy = RetryPolicy.no_wait()
    assert policy.delay(5) == 0.0
    assert policy.delay(5, retry_after=0.25) == 0.25


def test_delay_rejects_attempt_zero() -> None:
    """Attempts are 1-based."""
    with pytest.raises(ValueError, match="attempt"):
        RetryPolicy().delay(0)


@pytest.mark.anyio
async def test_retrying_retries_then_succeeds() -> None:
    """Transport errors are retried and the callback sees each retry."""
    calls: list[int] = []
    seen: list[tuple[int, str, float]] = []

    async def flaky() -> str:
        calls.append(1)
        if len(calls) < 3:
            raise TransportError(f"boom {len(calls)}")
        return "ok"

    result = await retrying(
        flaky,
        RetryPolicy.no_wait(),
        on_retry=lambda n, exc, d: seen.append((n, str(exc), d)),
    )
    assert result == "ok"
    assert len(calls) == 3
    assert seen == [(1, "boom 1", 0.0), (2, "boom 2", 0.0)]


@pytest.mark.anyio
async def test_retrying_gives_up_with_last_error() -> None:
    """When attempts run out, the last error propagates unchanged."""
    count = 0

    async def always() -> None:
        nonlocal count
        count += 1
        raise TransportError(f"failure {count}")

    with pytest.raises(TransportError, match="failure 4"):
        await retrying(always, RetryPolicy.no_wait(attempts=4))
    assert count == 4


@pytest.mark.anyio
async def test_retrying_does_not_retry_other_errors() -> None:
    """Errors outside retry_on fail at once."""
    count = 0

    async def bad() -> None:
        nonlocal count
        count += 1
        raise ProtocolError("garbage")

    with pytest.raises(ProtocolError):
        await retrying(bad, RetryPolicy.no_wait())
    assert count == 1


@pytest.mark.anyio
async def test_retrying_predicate() -> None:
    """A predicate can refuse some errors of a retryable class."""
    statuses = [503, 404]

    async def fn() -> None:
        raise HttpStatusError("http", status=statuses.pop(0))

    with pytest.raises(HttpStatusError) as info:
        await retrying(
            fn,
            RetryPolicy.no_wait(),
            retry_on=lambda exc: isinstance(exc, HttpStatusError) and exc.status >= 500,
        )
    assert info.value.status == 404
    assert statuses == []


@pytest.mark.anyio
async def test_retrying_honours_retry_after() -> None:
    """An error's retry_after makes the wait at least that long."""
    delays: list[float] = []
    count = 0

    async def fn() -> str:
        nonlocal count
        count += 1
        if count == 1:
            raise HttpStatusError("slow down", status=429, retry_after=0.05)
        return "done"

    start = anyio.current_time()
    result = await retrying(fn, RetryPolicy.no_wait(), on_retry=lambda n, e, d: delays.append(d))
    assert result == "done"
    assert delays == [0.05]
    assert anyio.current_time() - start >= 0.05


@pytest.mark.anyio
async def test_retrying_never_swallows_cancellation() -> None:
    """Cancelling during the backoff wait cancels the whole retry loop."""
    count = 0

    async def fn() -> None:
        nonlocal count
        count += 1
        raise TransportError("down")

    with anyio.move_on_after(0.05) as scope:
        await retrying(fn, RetryPolicy(initial=10.0, maximum=10.0, jitter=0.0))
    assert scope.cancelled_caught
    assert count == 1


def test_retry_on_must_hold_exceptions() -> None:
    """retry_on refuses BaseException subclasses such as cancellation."""

    async def fn() -> None:
        return None

    with pytest.raises(TypeError):
        anyio.run(
            lambda: retrying(fn, RetryPolicy(), retry_on=(BaseException,)),  # type: ignore[arg-type]
        )
