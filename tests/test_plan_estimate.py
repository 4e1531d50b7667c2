"""The plan's size estimate, from the server's ``*size*`` pseudo keyword."""

from __future__ import annotations

from pathlib import Path

import pytest

from asyncjsoc import Client, ClientConfig, Query
from asyncjsoc.emulator import Knobs, run_emulator

pytestmark = pytest.mark.anyio


async def test_plan_estimates_the_bytes_of_the_selected_segments(tmp_path: Path) -> None:
    """records × selected segments × file size, and nothing is written or exported."""
    async with run_emulator(Knobs(file_size=10_000,
                                  file_sizes={"hmi.sharp_cea_720s:br": 40_000})) as emu:
        config = ClientConfig(server=emu.url, requests_per_second=1000.0)
        query = Query.from_recordset(
            "hmi.sharp_cea_720s[7302][2018.09.08_00:00:00_TAI/1d@96m]{Bp,Bt}")
        async with Client(config, tmp_path / "out") as client:
            plan = await client.plan(query)
        async with Client(config, tmp_path / "out") as client:
            whole = await client.plan("hmi.sharp_cea_720s[7302][2018.09.08_00:00:00_TAI/1d@96m]")
        n_segments = len(emu.catalog.find("hmi.sharp_cea_720s").segments)  # type: ignore[union-attr]
        exports = emu.audit.count("jsoc_fetch/exp_request")
    assert plan.n_records == 15
    # Bp and Bt are 10 kB each; the estimate scales the whole record by the share selected.
    per_record = (n_segments - 1) * 10_000 + 40_000
    assert plan.estimated_bytes == round(per_record * 2 / n_segments * 15)
    assert whole.estimated_bytes == per_record * 15
    assert exports == 0
    assert not (tmp_path / "out").exists()
