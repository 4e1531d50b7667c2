"""Tests for the planner (asyncjsoc._plan) against an arithmetic counting test double.

``CountingApi`` implements the PlanningApi Protocol by counting slots arithmetically for a
synthetic SHARP series (HARPs alive over slot intervals, 720 s slots). It is a pure test
double of the planning seam, not an HTTP mock.
"""

from __future__ import annotations

import random
import time
from datetime import datetime, timedelta
from itertools import pairwise

import anyio
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from asyncjsoc._models import Chunk, KeywordInfo, Plan, SegmentInfo, SeriesInfo
from asyncjsoc._plan import (
    default_file_cap,
    files_per_record,
    make_plan,
    split_chunk,
)
from asyncjsoc._query import Query
from asyncjsoc._recordset import (
    IntValue,
    Range,
    Select,
    Skip,
    Span,
    Subset,
    TimeValue,
    parse_recordset,
)
from asyncjsoc._times import TimeParts, to_tai_parts
from asyncjsoc.exceptions import InvalidInputError

EPOCH = datetime(1993, 1, 1)
STEP_US = 720 * 10**6
SERIES = "hmi.sharp_cea_720s"
INFO = SeriesInfo(
    name=SERIES,
    primekeys=("HARPNUM", "T_REC"),
    keywords=(KeywordInfo("HARPNUM", "int"), KeywordInfo("T_REC", "time")),
    segments=tuple(SegmentInfo(n) for n in ("Br", "Bp", "Bt", "magnetogram")),
    time_steps={"T_REC": 720.0},
)


def slot_time(k: int) -> str:
    """The TAI T_REC of slot ``k``."""
    return str(TimeParts.from_datetime(EPOCH + timedelta(microseconds=k * STEP_US)))


def _offset(value: TimeValue) -> int:
    """Microseconds from the slot epoch (TAI)."""
    return (to_tai_parts(value.parts).to_datetime() - EPOCH) // timedelta(microseconds=1)


def _cdiv(a: int, b: int) -> int:
    """Ceiling division."""
    return -(-a // b)


class CountingApi:
    """A PlanningApi whose counts are slot arithmetic over HARP lifetimes."""

    def __init__(self, harps: dict[int, tuple[int, int]]) -> None:
        self.harps = harps
        self.calls: list[str] = []

    async def series_info(self, series: str) -> SeriesInfo:
        """The synthetic SHARP series."""
        assert series.lower() == SERIES
        return INFO

    async def count(self, ds: str) -> int:
        """Records selected by ``ds``, arithmetically."""
        self.calls.append(ds)
        return sum(len(r) for r in self._ranges(ds))

    def records(self, ds: str) -> set[tuple[int, int]]:
        """The (HARPNUM, slot) pairs ``ds`` selects, enumerated (small cases only)."""
        return {(h, k) for h, r in self._ranges(ds, with_harp=True) for k in r}

    def _ranges(self, ds: str, with_harp: bool = False) -> list:  # type: ignore[type-arg]
        """Per (subset, harp, time item) the selected slots as a range."""
        out: list = []  # type: ignore[type-arg]
        for subset in parse_recordset(ds).subsets:
            pos = subset.positional
            harp_f = pos[0] if pos else Skip()
            time_f = pos[1] if len(pos) > 1 else Skip()
            harps = self._harps(harp_f)
            times = self._times(time_f)
            for h in harps:
                s, e = self.harps[h]
                for r in times:
                    cut = _clip(r, s, e)
                    out.append((h, cut) if with_harp else cut)
        return out

    def _harps(self, f: object) -> list[int]:
        """HARPNUMs a bracket selects."""
        if isinstance(f, Skip):
            return sorted(self.harps)
        assert isinstance(f, Select)
        chosen: set[int] = set()
        for item in f.items:
            if isinstance(item, IntValue):
                chosen.add(item.value)
            else:
                assert isinstance(item, Range)
                assert isinstance(item.start, IntValue)
                assert isinstance(item.end, IntValue)
                chosen.update(range(item.start.value, item.end.value + 1))
        return sorted(chosen & set(self.harps))

    def _times(self, f: object) -> list[range]:
        """Slot ranges a time bracket selects."""
        if isinstance(f, Skip):
            return [range(10**9)]
        assert isinstance(f, Select)
        out = []
        for item in f.items:
            if isinstance(item, TimeValue):
                off = _offset(item)
                out.append(range(off // STEP_US, off // STEP_US + 1) if off % STEP_US == 0
                           else range(0))
                continue
            assert isinstance(item, Range | Span)
            assert isinstance(item.start, TimeValue)
            a = _offset(item.start)
            if isinstance(item, Range):
                assert isinstance(item.end, TimeValue)
                k1 = _offset(item.end) // STEP_US
            else:
                k1 = _cdiv(a + round(item.duration * 1e6), STEP_US) - 1
            if item.cadence is None:
                out.append(range(_cdiv(a, STEP_US), k1 + 1))
            else:
                c = round(item.cadence * 1e6)
                assert a % STEP_US == 0, "test cadences start on a slot"
                assert c % STEP_US == 0, "test cadences are whole slots"
                out.append(range(a // STEP_US, k1 + 1, c // STEP_US))
        return out


def _clip(r: range, s: int, e: int) -> range:
    """The part of ``r`` inside ``[s, e]``."""
    start = r.start if r.start >= s else r.start + _cdiv(s - r.start, r.step) * r.step
    stop = min(r.stop, e + 1)
    return range(start, max(start, stop), r.step)


def plan_now(api: CountingApi, query: Query, **kwargs: object) -> Plan:
    """Run make_plan on a fresh event loop (keeps hypothesis tests synchronous)."""

    async def run() -> Plan:
        """The planning call."""
        return await make_plan(api, query, **kwargs)  # type: ignore[arg-type]

    return anyio.run(run)


def assert_exact_cover(api: CountingApi, query: Query, plan: Plan, cap: int, fpr: int) -> None:
    """Chunks are disjoint, cover the query's records exactly and each is within the cap."""
    want = api.records(query.recordset())
    seen: set[tuple[int, int]] = set()
    for chunk in plan.chunks:
        got = api.records(chunk.recordset)
        assert not (got & seen), f"overlap in {chunk.recordset}"
        assert len(got) == chunk.n_records
        assert chunk.n_files == chunk.n_records * fpr <= cap
        seen |= got
    assert seen == want
    assert plan.n_records == len(want)
    assert [c.index for c in plan.chunks] == list(range(len(plan.chunks)))


def sharp_query(start: int, end: int, *, harps: str | None = None, cadence: int | None = None,
                span: bool = False, segments: tuple[str, ...] | None = ("Br",)) -> Query:
    """A SHARP query over slots ``start..end`` (a-b) or ``[start, end)`` (span)."""
    step = None if cadence is None else cadence * 720.0
    first = TimeValue(TimeParts.from_datetime(EPOCH + timedelta(microseconds=start * STEP_US)))
    if span:
        item: Range | Span = Span(first, (end - start) * 720.0, step)
    else:
        item = Range(first, TimeValue(TimeParts.from_datetime(
            EPOCH + timedelta(microseconds=end * STEP_US))), step)
    harp_f = Skip() if harps is None else Select(parse_recordset(f"a.b[{harps}]")
                                                  .filters[0].items)  # type: ignore[union-attr]
    text = str(Subset(SERIES, (harp_f, Select((item,))), segments))
    return Query.from_recordset(text)


# ------------------------------------------------------------------------------- unit tests


def test_default_file_cap() -> None:
    """AIA plans with 15 000 files per export, HMI and others with 30 000."""
    assert default_file_cap("AIA.lev1_euv_12s") == 15_000
    assert default_file_cap("hmi.sharp_cea_720s") == 30_000
    assert default_file_cap("mdi.fd_M_96m_lev182") == 30_000


def test_files_per_record() -> None:
    """All segments count when none are named; unknown names are refused."""
    aia = SeriesInfo("aia.lev1_euv_12s", ("T_REC", "WAVELNTH"), (),
                     (SegmentInfo("image"), SegmentInfo("spikes")))
    assert files_per_record(aia, None) == 2
    assert files_per_record(aia, ("image",)) == 1
    with pytest.raises(InvalidInputError, match="no segment"):
        files_per_record(aia, ("image_lev9",))


@pytest.mark.anyio
async def test_small_query_one_chunk() -> None:
    """A query under the cap is one chunk, the query itself, after one count."""
    api = CountingApi({7000: (0, 100)})
    query = sharp_query(10, 20, harps="7000")
    plan = await make_plan(api, query)
    assert [c.recordset for c in plan.chunks] == [query.recordset()]
    assert (plan.n_records, plan.n_files, len(api.calls)) == (11, 11, 1)


@pytest.mark.anyio
async def test_all_segments_multiply_files() -> None:
    """Without {segments} every record exports all four segments."""
    api = CountingApi({7000: (0, 100)})
    plan = await make_plan(api, sharp_query(0, 99, segments=None), max_files_per_export=100)
    assert plan.n_files == 400
    assert all(c.n_files <= 100 and c.n_files == 4 * c.n_records for c in plan.chunks)


@pytest.mark.anyio
async def test_time_split_covers_exactly() -> None:
    """An over-cap time range is cut into spans ending one grid step before the next."""
    api = CountingApi({h: (h * 7, h * 7 + 300) for h in range(40)})
    query = sharp_query(0, 700)
    plan = await make_plan(api, query, max_files_per_export=1000)
    assert len(plan.chunks) >= 11
    assert_exact_cover(api, query, plan, 1000, 1)
    assert all("/" in c.recordset for c in plan.chunks[:-1])
    assert plan.chunks[-1].recordset.endswith(f"-{slot_time(700)}]{{Br}}")


@pytest.mark.anyio
async def test_cadence_grid_kept() -> None:
    """Pieces of an @cadence range start on the cadence grid, so samples are unchanged."""
    api = CountingApi(dict.fromkeys(range(30), (0, 5000)))
    query = sharp_query(3, 4803, cadence=8)
    plan = await make_plan(api, query, max_files_per_export=900)
    assert_exact_cover(api, query, plan, 900, 1)
    assert all("@96m" in c.recordset for c in plan.chunks)


@pytest.mark.anyio
async def test_harp_range_split_when_time_cannot() -> None:
    """One time slot over the cap is cut along the HARPNUM range."""
    api = CountingApi(dict.fromkeys(range(7000, 7100), (0, 10)))
    query = Query.from_recordset(f"{SERIES}[7000-7099][{slot_time(5)}]{{Br,Bp}}")
    plan = await make_plan(api, query, max_files_per_export=50)
    assert_exact_cover(api, query, plan, 50, 2)
    assert len(plan.chunks) == 4


@pytest.mark.anyio
async def test_unsplittable_over_cap_is_our_error() -> None:
    """A whole series with no time range cannot be cut: InvalidInputError with a hint."""
    api = CountingApi({1: (0, 100)})
    with pytest.raises(InvalidInputError) as info:
        await make_plan(api, Query.from_recordset(SERIES + "{Br}"), max_files_per_export=10)
    assert info.value.hint is not None


@pytest.mark.anyio
async def test_cap_below_one_record() -> None:
    """A cap smaller than one record's files is refused."""
    api = CountingApi({1: (0, 100)})
    with pytest.raises(InvalidInputError, match="more than the cap"):
        await make_plan(api, sharp_query(0, 5, segments=None), max_files_per_export=3)


@pytest.mark.anyio
async def test_empty_query_gives_empty_plan() -> None:
    """Nothing selected means no chunks (an export of nothing would fail)."""
    plan = await make_plan(CountingApi({1: (0, 10)}), sharp_query(50, 60))
    assert (plan.chunks, plan.n_records) == ((), 0)


def _job_lines(api: CountingApi, rng: random.Random, n: int, contiguous: bool) -> list[str]:
    """Job lines for existing records, in runs or scattered."""
    lines: list[str] = []
    harps = sorted(api.harps)
    while len(lines) < n:
        h = rng.choice(harps)
        s, e = api.harps[h]
        k = rng.randint(s, e)
        length = rng.randint(20, 200) if contiguous else 1
        for j in range(k, min(e, k + length) + 1):
            lines.append(f"{h}.{slot_time(j).replace('.', '').replace(':', '')}")
    return lines


@pytest.mark.anyio
async def test_job_lines_batched_contiguous() -> None:
    """Thousands of contiguous job lines give few chunks, written as ranges, counted once."""
    api = CountingApi({h: (h * 50, h * 50 + 2000) for h in range(7000, 7040)})
    lines = _job_lines(api, random.Random(1), 20_000, contiguous=True)
    query = Query.from_job_lines(lines, segments=["Br", "Bt", "Bp"])
    plan = await make_plan(api, query)
    assert_exact_cover(api, query, plan, 30_000, 3)
    n_unique = len(api.records(query.recordset()))
    assert n_unique > 10_000
    assert 2 <= len(plan.chunks) <= 4
    assert all(len(c.recordset) <= 4000 for c in plan.chunks)
    assert all("_TAI-" in c.recordset for c in plan.chunks)
    assert len(api.calls) == len(plan.chunks)  # planned without counting, one count each


@pytest.mark.anyio
async def test_job_lines_scattered() -> None:
    """Scattered lines pack by record-set length; far fewer chunks than lines."""
    api = CountingApi(dict.fromkeys(range(7000, 7200), (0, 100000)))
    lines = _job_lines(api, random.Random(2), 3000, contiguous=False)
    lines.append("# a comment")
    query = Query.from_job_lines(lines, segments=["Br"])
    plan = await make_plan(api, query, max_recordset_chars=6000)
    assert_exact_cover(api, query, plan, 30_000, 1)
    assert len(plan.chunks) <= 20
    assert all(len(c.recordset) <= 6000 for c in plan.chunks)


@pytest.mark.anyio
async def test_job_lines_split_by_cap() -> None:
    """A single HARP's run longer than the cap is cut into cap-sized ranges."""
    api = CountingApi({7000: (0, 5000)})
    lines = [f"7000.{slot_time(k).replace('.', '').replace(':', '')}" for k in range(2500)]
    query = Query.from_job_lines(lines, segments=["Br", "Bp"])
    plan = await make_plan(api, query, max_files_per_export=1000)
    assert_exact_cover(api, query, plan, 1000, 2)
    assert [c.n_records for c in plan.chunks] == [500] * 5
    assert plan.chunks[0].recordset == f"{SERIES}[7000][{slot_time(0)}-{slot_time(499)}]{{Br,Bp}}"


@pytest.mark.anyio
async def test_where_clause_kept_in_every_chunk() -> None:
    """Filters that are not cut travel into every chunk."""
    api = CountingApi(dict.fromkeys(range(10), (0, 1000)))
    query = Query.from_recordset(f"{SERIES}[][{slot_time(0)}/5d][? LON_MIN>-70 ?]{{Br}}")
    plan = await make_plan(api, query, max_files_per_export=1000)
    assert len(plan.chunks) > 1
    assert all(c.recordset.endswith("[? LON_MIN>-70 ?]{Br}") for c in plan.chunks)
    assert sum(c.n_records for c in plan.chunks) == await api.count(query.recordset())


@pytest.mark.anyio
async def test_million_files_fast() -> None:
    """Planning >1,000,000 files (years of SHARPs, many HARPs) is cap-safe and needs few calls.

    How long it takes is measured by the plan-scale benchmark, not here; the time bound below
    only catches a runaway (a per-record loop would take minutes).
    """
    rng = random.Random(3)
    harps = {}
    for h in range(1, 1501):
        start = rng.randint(0, 3 * 365 * 120)
        harps[h] = (start, start + rng.randint(200, 2400))
    api = CountingApi(harps)
    query = sharp_query(0, 3 * 365 * 120, segments=("Br", "Bp", "Bt"))
    total = await api.count(query.recordset())
    assert total * 3 > 1_000_000
    began = time.perf_counter()
    plan = await make_plan(api, query)
    elapsed = time.perf_counter() - began
    assert elapsed < 60
    assert plan.n_records == total
    assert all(c.n_files <= 30_000 for c in plan.chunks)
    assert len(plan.chunks) <= 2 * -(-total * 3 // 30_000)
    assert len(api.calls) < 20 * len(plan.chunks)


@pytest.mark.anyio
@pytest.mark.parametrize("span", [False, True])
async def test_full_time_range_is_cut_without_counting_pieces(span: bool) -> None:
    """One HARP in every slot: only the whole range is counted, the pieces follow."""
    api = CountingApi({7000: (0, 1000), 7001: (0, 1000)})
    query = sharp_query(100, 400 if span else 399, harps="7000", span=span)  # 300 slots
    plan = await make_plan(api, query, max_files_per_export=50)
    assert api.calls == [query.recordset()]
    assert len(plan.chunks) == 6
    assert_exact_cover(api, query, plan, 50, 1)


@pytest.mark.anyio
async def test_time_range_with_gaps_is_counted_piece_by_piece() -> None:
    """A HARP alive over part of the range: its pieces are counted as before."""
    api = CountingApi({7000: (150, 1000)})
    query = sharp_query(100, 399, harps="7000")
    plan = await make_plan(api, query, max_files_per_export=50)
    assert len(api.calls) > 1
    assert_exact_cover(api, query, plan, 50, 1)


@pytest.mark.anyio
@pytest.mark.parametrize("harps", [None, "7000,7001", "7000-7001"])
async def test_range_as_full_as_its_slots_is_counted_when_a_key_is_free(
    harps: str | None,
) -> None:
    """Two HARPs in the first half, none in the second: as many records as slots, yet the
    pieces must be counted (arithmetic would put half the records in the wrong chunks)."""
    api = CountingApi({7000: (0, 149), 7001: (0, 149)})
    query = sharp_query(0, 299, harps=harps)
    assert await api.count(query.recordset()) == 300
    plan = await make_plan(api, query, max_files_per_export=50)
    assert_exact_cover(api, query, plan, 50, 1)


@pytest.mark.anyio
async def test_split_chunk_bisects() -> None:
    """split_chunk halves a chunk's time range; parts add up and cover it."""
    api = CountingApi(dict.fromkeys(range(5), (0, 1000)))
    query = sharp_query(0, 999)
    chunk = Chunk(3, query.recordset(), 5000, 5000)
    parts = await split_chunk(api, chunk)
    assert len(parts) == 2
    assert [p.index for p in parts] == [0, 1]
    a, b = (api.records(p.recordset) for p in parts)
    assert not a & b
    assert a | b == api.records(chunk.recordset)
    assert [p.n_records for p in parts] == [len(a), len(b)]


@pytest.mark.anyio
async def test_split_chunk_multi_subset_and_single_record() -> None:
    """Multi-subset chunks split between subsets; one record cannot be split."""
    api = CountingApi({7000: (0, 10), 7001: (0, 10), 7002: (0, 10)})
    text = ",".join(f"{SERIES}[{h}][{slot_time(1)}]" for h in (7000, 7001, 7002))
    parts = await split_chunk(api, Chunk(0, text, 3, 12), parts=3)
    assert [p.n_records for p in parts] == [1, 1, 1]
    with pytest.raises(InvalidInputError, match="cannot split"):
        await split_chunk(api, parts[0])
    with pytest.raises(InvalidInputError):
        await split_chunk(api, parts[0], parts=1)


# --------------------------------------------------------------------------- property tests

_harp_maps = st.dictionaries(
    st.integers(7000, 7030),
    st.tuples(st.integers(0, 600), st.integers(0, 600)).map(lambda t: (min(t), max(t))),
    min_size=1, max_size=12)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(harps=_harp_maps, start=st.integers(0, 500), length=st.integers(1, 300),
       cadence=st.none() | st.integers(1, 9), span=st.booleans(),
       harp_sel=st.sampled_from([None, "7000-7030", "7001,7003,7005-7020", "7000", "7030"]),
       cap=st.integers(1, 600) | st.integers(40, 600), nseg=st.integers(1, 3))
def test_chunks_cover_exactly(harps: dict[int, tuple[int, int]], start: int, length: int,
                              cadence: int | None, span: bool, harp_sel: str | None,
                              cap: int, nseg: int) -> None:
    """For any query and cap, chunks cover the records exactly and each is within the cap."""
    api = CountingApi(harps)
    segs = ("Br", "Bp", "Bt")[:nseg]
    query = sharp_query(start, start + length, harps=harp_sel, cadence=cadence, span=span,
                        segments=segs)
    try:
        plan = plan_now(api, query, max_files_per_export=cap)
    except InvalidInputError:
        # only legitimate when one record is over the cap, or one slot (no HARP list to
        # cut along) holds more records than fit
        per_slot: dict[int, int] = {}
        for _, k in api.records(query.recordset()):
            per_slot[k] = per_slot.get(k, 0) + 1
        assert cap < nseg or (harp_sel is None and max(per_slot.values()) > cap // nseg)
        return
    assert_exact_cover(api, query, plan, cap, nseg)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(harps=_harp_maps, seed=st.integers(0, 10**6), n=st.integers(1, 400),
       contiguous=st.booleans(), cap=st.integers(1, 300), chars=st.integers(100, 3000))
def test_job_plans_cover_exactly(harps: dict[int, tuple[int, int]], seed: int, n: int,
                                 contiguous: bool, cap: int, chars: int) -> None:
    """Job-list plans cover exactly, within the cap and (multi-piece) the length limit."""
    api = CountingApi(harps)
    query = Query.from_job_lines(_job_lines(api, random.Random(seed), n, contiguous),
                                 segments=["Br"])
    plan = plan_now(api, query, max_files_per_export=cap, max_recordset_chars=chars)
    assert_exact_cover(api, query, plan, cap, 1)
    for chunk in plan.chunks:
        assert len(chunk.recordset) <= max(chars, 100) or "," not in chunk.recordset


# ------------------------------------------------------------------ against the emulator


async def _records(api: object, ds: str) -> set[tuple[str, str]]:
    """(HARPNUM, T_REC) of every record ``ds`` selects, as the emulator lists them."""
    listing = await api.rs_list(ds, keys=("HARPNUM", "T_REC"))  # type: ignore[attr-defined]
    return set(zip(listing.keywords["HARPNUM"], listing.keywords["T_REC"], strict=True))


@pytest.mark.anyio
async def test_plans_cover_exactly_on_the_emulator() -> None:
    """Time-range and job-list plans select exactly the query's records on the emulator."""
    from asyncjsoc._api import JsocApi
    from asyncjsoc._http import TransportConfig, create_session
    from asyncjsoc._ratelimit import TokenBucket
    from asyncjsoc._times import format_trec
    from asyncjsoc.emulator import Knobs, run_emulator

    async with (
        run_emulator(Knobs()) as emu,
        create_session(TransportConfig(), TokenBucket(1000.0, 100)) as session,
    ):
        api = JsocApi(session, emu.url)
        query = Query.build(SERIES, start="2014.01.01_00:00:00_TAI",
                            end="2014.01.02_12:00:00_TAI", cadence="24m",
                            segments=["Br", "Bp"])
        want = await _records(api, query.recordset())
        assert len(want) > 1000
        plan = await make_plan(api, query, max_files_per_export=400)
        assert len(plan.chunks) >= -(-len(want) * 2 // 400)
        seen: set[tuple[str, str]] = set()
        for chunk in plan.chunks:
            got = await _records(api, chunk.recordset)
            assert len(got) == chunk.n_records == chunk.n_files // 2
            assert chunk.n_files <= 400
            assert not got & seen
            seen |= got
        assert seen == want

        sample = sorted(want)[::3]
        lines = [f"{h}.{format_trec(t, compact=True)}" for h, t in sample]
        jobs = Query.from_job_lines(lines, segments=["Br"])
        plan = await make_plan(api, jobs, max_files_per_export=100)
        assert len(plan.chunks) == -(-len(sample) // 100)
        seen = set()
        for chunk in plan.chunks:
            got = await _records(api, chunk.recordset)
            assert len(got) == chunk.n_records <= 100
            assert not got & seen
            seen |= got
        assert seen == set(sample)

        parts = await split_chunk(api, plan.chunks[0])
        halves = [await _records(api, p.recordset) for p in parts]
        assert halves[0] | halves[1] == await _records(api, plan.chunks[0].recordset)
        assert not halves[0] & halves[1]


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("times", "full"),
    [
        ("2012.01.01_00:00:00_TAI/1350s", True),
        ("2012.01.01_00:00:30_TAI/1350s", True),  # off the 45 s grid: rounds to a slot
        ("2012.01.01_00:00:00_TAI-2012.01.01_00:21:45_TAI", True),
        # Ends off the grid, 29.6 steps apart: they round to 31 slots, the most possible.
        ("2012.01.01_00:00:10_TAI-2012.01.01_00:22:20_TAI", True),
        # 29.1 steps apart: they round to 30 slots, one short of what such a range can reach.
        ("2012.01.01_00:00:05_TAI-2012.01.01_00:21:55_TAI", False),
    ],
)
async def test_full_ranges_on_the_emulator(times: str, full: bool) -> None:
    """hmi.M_45s with CAMERA pinned: a full range costs one count, and every chunk's count
    is what the emulator lists; with CAMERA free (or a range that is not full), the piece's
    slot times are listed once instead of every slice being counted."""
    from asyncjsoc._api import JsocApi
    from asyncjsoc._http import TransportConfig, create_session
    from asyncjsoc._ratelimit import TokenBucket
    from asyncjsoc.emulator import Knobs, run_emulator

    async with (
        run_emulator(Knobs()) as emu,
        create_session(TransportConfig(), TokenBucket(1000.0, 100)) as session,
    ):
        api = JsocApi(session, emu.url)
        for pinned in (True, False):
            query = Query.from_recordset(
                f"hmi.M_45s[{times}]{'[2]' if pinned else ''}{{magnetogram}}")
            emu.audit.clear()
            plan = await make_plan(api, query, max_files_per_export=5)
            counts = emu.audit.count("jsoc_info/rs_summary")
            listings = emu.audit.count("jsoc_info/rs_list")
            assert counts == 1
            assert listings == (0 if pinned and full else 1)
            assert plan.n_records == await api.count(query.recordset())
            seen: set[str] = set()
            for chunk in plan.chunks:
                listing = await api.rs_list(chunk.recordset, keys=("T_REC",))
                got = set(listing.keywords["T_REC"])
                assert len(got) == chunk.n_records <= 5
                assert not got & seen
                seen |= got
            listing = await api.rs_list(query.recordset(), keys=("T_REC",))
            assert seen == set(listing.keywords["T_REC"])


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("ds", "keys", "cap", "min_chunks"),
    [
        # Seven records (wavelengths) in every 12 s slot, times in UTC ISO form: a chunk of
        # 15 files holds two whole slots.
        ("aia.lev1_euv_12s[2012-01-01T00:00:00Z/240s]", ("T_REC", "WAVELNTH"), 15, 10),
        # Every HARP of a day: slots hold from zero to many records.
        ("hmi.sharp_cea_720s[][2014.01.01_00:00:00_TAI/1d]{Br}", ("HARPNUM", "T_REC"), 60, 2),
    ],
)
async def test_small_pieces_are_cut_from_one_listing(
    ds: str, keys: tuple[str, str], cap: int, min_chunks: int
) -> None:
    """An over-cap piece of a few records costs one count and one listing of its slot
    times, however many chunks it makes; the chunks' counts are exact and together they
    select exactly the query's records."""
    from asyncjsoc._api import JsocApi
    from asyncjsoc._http import TransportConfig, create_session
    from asyncjsoc._ratelimit import TokenBucket
    from asyncjsoc.emulator import Knobs, run_emulator

    async with (
        run_emulator(Knobs()) as emu,
        create_session(TransportConfig(), TokenBucket(1000.0, 100)) as session,
    ):
        api = JsocApi(session, emu.url)
        query = Query.from_recordset(ds)
        plan = await make_plan(api, query, max_files_per_export=cap)
        assert emu.audit.count("jsoc_info/rs_summary") == 1
        assert emu.audit.count("jsoc_info/rs_list") == 1
        assert len(plan.chunks) >= min_chunks

        async def records(recordset: str) -> set[tuple[str, str]]:
            listing = await api.rs_list(recordset, keys=keys)
            return set(zip(*(listing.keywords[k] for k in keys), strict=True))

        want = await records(query.recordset())
        seen: set[tuple[str, str]] = set()
        for chunk in plan.chunks:
            got = await records(chunk.recordset)
            assert len(got) == chunk.n_records == await api.count(chunk.recordset)
            assert 0 < chunk.n_files <= cap
            assert not got & seen
            seen |= got
        assert seen == want

        # The chunks tile the query's whole span, gaps and ends included (not only from the
        # first to the last record), so records that appear later are in some chunk.
        def span_of(recordset: str) -> tuple[datetime, datetime]:
            (sub,) = parse_recordset(recordset).subsets
            for f in sub.filters:
                if isinstance(f, Select) and isinstance(f.items[0], Span):
                    start = to_tai_parts(f.items[0].start.parts).to_datetime()
                    return start, start + timedelta(seconds=f.items[0].duration)
            raise AssertionError(recordset)

        spans = [span_of(c.recordset) for c in plan.chunks]
        assert spans[0][0] == span_of(query.recordset())[0]
        assert spans[-1][1] == span_of(query.recordset())[1]
        assert all(a[1] == b[0] for a, b in pairwise(spans))


@pytest.mark.anyio
async def test_a_slot_over_the_cap_is_listed_once_then_counted() -> None:
    """Seven AIA records share each slot: with a cap of five no chunk of whole slots fits,
    so the listing gives way to counting, which says what is wrong. With three pinned
    wavelengths and a cap of two, counting cuts along the wavelength list instead; the
    slices of the piece whose listing failed are not listed again."""
    from asyncjsoc._api import JsocApi
    from asyncjsoc._http import TransportConfig, create_session
    from asyncjsoc._ratelimit import TokenBucket
    from asyncjsoc.emulator import Knobs, run_emulator

    async with (
        run_emulator(Knobs()) as emu,
        create_session(TransportConfig(), TokenBucket(1000.0, 100)) as session,
    ):
        api = JsocApi(session, emu.url)
        query = Query.from_recordset("aia.lev1_euv_12s[2012-01-01T00:00:00Z/60s]")
        with pytest.raises(InvalidInputError, match="nothing left to split along"):
            await make_plan(api, query, max_files_per_export=5)
        assert emu.audit.count("jsoc_info/rs_list") == 1

        for ds, cap, n in (
                ("aia.lev1_euv_12s[2012-01-01T00:00:00Z/2m][171,193,211]{image}", 2, 30),
                # one-slot slices of seven records, over twice the cap: listable themselves
                ("aia.lev1_euv_12s[2012-01-01T00:00:00Z/1m][94-335]", 3, 35)):
            emu.audit.clear()
            plan = await make_plan(api, Query.from_recordset(ds), max_files_per_export=cap)
            assert emu.audit.count("jsoc_info/rs_list") == 1
            assert plan.n_records == n
            for chunk in plan.chunks:
                assert chunk.n_records == await api.count(chunk.recordset) <= cap


@pytest.mark.anyio
async def test_a_piece_of_two_chunks_is_counted_not_listed() -> None:
    """Listing pays only where it saves requests: a piece of at most two chunks' worth is
    cut and counted as before."""
    from asyncjsoc._api import JsocApi
    from asyncjsoc._http import TransportConfig, create_session
    from asyncjsoc._ratelimit import TokenBucket
    from asyncjsoc.emulator import Knobs, run_emulator

    async with (
        run_emulator(Knobs()) as emu,
        create_session(TransportConfig(), TokenBucket(1000.0, 100)) as session,
    ):
        api = JsocApi(session, emu.url)
        query = Query.from_recordset("hmi.M_45s[2012.01.01_00:00:00_TAI/450s]{magnetogram}")
        plan = await make_plan(api, query, max_files_per_export=5)
        assert [c.n_records for c in plan.chunks] == [5, 5]
        assert emu.audit.count("jsoc_info/rs_list") == 0
        assert emu.audit.count("jsoc_info/rs_summary") == 3


class _Listing:
    """The part of an rs_list answer the planner reads."""

    def __init__(self, keywords: dict[str, list[str]]) -> None:
        self.keywords = keywords


class ListingApi(CountingApi):
    """CountingApi that can also list T_REC (slot arithmetic, enumerated)."""

    def __init__(self, harps: dict[int, tuple[int, int]]) -> None:
        super().__init__(harps)
        self.listed: list[int] = []

    async def rs_list(self, ds: str, *, keys: tuple[str, ...] = ()) -> _Listing:
        """T_REC of every record ``ds`` selects."""
        assert keys == ("T_REC",)
        found = sorted(self.records(ds))
        self.listed.append(len(found))
        return _Listing({"T_REC": [slot_time(k) for _, k in found]})


@pytest.mark.anyio
async def test_slices_of_a_piece_too_big_to_list_are_listed() -> None:
    """A piece over LIST_MAX_RECORDS is not listed, but its slices still may be: three
    HARPs over the first third of the range make 60,000 records, and the counted slices
    holding them (30,000 each, over twice the cap of 10,000) are each listed once."""
    api = ListingApi({7000: (0, 19999), 7001: (0, 19999), 7002: (0, 19999)})
    plan = await make_plan(api, sharp_query(0, 59999), max_files_per_export=10_000)
    assert api.listed == [30_000, 30_000]
    assert plan.n_records == 60_000
    for chunk in plan.chunks:
        assert chunk.n_records == await api.count(chunk.recordset) <= 10_000


@pytest.mark.anyio
async def test_on_count_reports_every_count_call() -> None:
    """Progress for long planning: on_count gets 1, 2, ... once per count call made."""
    api = CountingApi({7000: (150, 1000)})
    seen: list[int] = []
    await make_plan(api, sharp_query(100, 399, harps="7000"), max_files_per_export=50,
                    on_count=seen.append)
    assert len(api.calls) > 1
    assert seen == list(range(1, len(api.calls) + 1))


@pytest.mark.anyio
@pytest.mark.parametrize(("value", "hint"), [
    ("1e5", "write it in digits: 100000"),
    ("7302.0-7310", "write it in digits: 7302"),
    ("7300-7302.5", "HARPNUM takes whole numbers only"),
    ("1e400", "HARPNUM takes whole numbers written in digits, below 9223372036854775808 "
              "(a 64-bit integer)"),
    ("1e30", "HARPNUM takes whole numbers written in digits, below 9223372036854775808 "
             "(a 64-bit integer)"),
])
async def test_integer_key_written_as_a_float_is_refused(value: str, hint: str) -> None:
    """``[1e5]`` for an int prime key is refused with the digits to write, not sent as is
    (a C integer parse would read 1) nor rewritten behind the user's back."""
    api = CountingApi({1: (0, 100)})
    query = Query.from_recordset(f"{SERIES}[{value}][{slot_time(0)}]{{Br}}")
    with pytest.raises(InvalidInputError, match=r"HARPNUM is an integer prime key") as info:
        await make_plan(api, query)
    assert info.value.hint == hint
