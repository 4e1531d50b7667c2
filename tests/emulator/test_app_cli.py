"""``asyncjsoc emulator``: flags map to Knobs; the process prints its URL, serves, exits 0."""

from __future__ import annotations

import argparse
import re
import signal
import sys

import aiohttp
import anyio
import pytest
from anyio.streams.text import TextReceiveStream

from asyncjsoc.cli import build_parser
from asyncjsoc.emulator._cli import knobs_from_args


def test_flags_become_knobs() -> None:
    """Every documented flag lands in the matching Knobs field."""
    args = build_parser().parse_args(
        ["emulator", "--port", "0", "--export-delay", "0.5", "--file-size", "1000",
         "--seed", "9", "--http500-rate", "0.1", "--rate-budget", "50", "--block-seconds", "5",
         "--file-cap", "aia.=10", "--series-file-size", "hmi.m_45s=2000",
         "--unknown-email", "x@y.org", "--bandwidth", "1000", "--max-connections", "2",
         "--drop-rate", "0.2", "--status6-polls", "2", "--time-scale", "10",
         "--eta-seconds", "4", "--offline-rate", "0.25"]
    )  # fmt: skip
    assert isinstance(args, argparse.Namespace)
    knobs = knobs_from_args(args)
    assert knobs.export_delay == 0.5
    assert knobs.file_size == 1000
    assert knobs.seed == 9
    assert knobs.http500_rate == 0.1
    assert knobs.rate_budget == 50
    assert knobs.block_seconds == 5
    assert knobs.file_caps == {"aia.": 10}
    assert knobs.file_sizes == {"hmi.m_45s": 2000}
    assert knobs.unknown_emails == {"x@y.org"}
    assert knobs.bandwidth == 1000
    assert knobs.max_connections == 2
    assert knobs.drop_rate == 0.2
    assert knobs.status6_polls == 2
    assert knobs.time_scale == 10
    assert knobs.eta_seconds == 4
    assert knobs.offline_rate == 0.25
    assert args.handler.__name__ == "run"
    exact = knobs_from_args(build_parser().parse_args(["emulator", "--exact-wait"]))
    assert exact.eta_seconds is None
    assert knobs_from_args(build_parser().parse_args(["emulator"])).eta_seconds == 10


@pytest.mark.anyio
async def test_cli_prints_url_serves_and_exits_zero_on_sigterm() -> None:
    """The process prints exactly its URL, answers CGIs, and exits 0 on SIGTERM."""
    cmd = [sys.executable, "-m", "asyncjsoc", "emulator", "--port", "0", "--export-delay", "0.1"]
    async with await anyio.open_process(cmd) as proc:
        assert proc.stdout is not None
        with anyio.fail_after(20):
            line = ""
            async for text in TextReceiveStream(proc.stdout):
                line += text
                if "\n" in line:
                    break
        url = line.splitlines()[0]
        assert re.fullmatch(r"http://127\.0\.0\.1:\d+", url)
        query = "/cgi-bin/ajax/checkAddress.sh?address=a%2540b.org&checkonly=1"
        async with aiohttp.ClientSession() as s, s.get(url + query) as r:
            assert (await r.json(content_type=None))["status"] == 2
        proc.send_signal(signal.SIGTERM)
        with anyio.fail_after(10):
            assert await proc.wait() == 0


@pytest.mark.parametrize(("flags", "words"), [
    (["--time-scale", "0"], "must be above 0"),
    (["--drop-rate", "2"], "between 0 and 1"),
    (["--drop-rate", "nan"], "not a finite number"),
    (["--file-size", "-1"], "at least 0"),
    (["--port", "99999"], "at most 65535"),
    (["--file-cap", "hmi.=abc"], "not a whole number"),
])
def test_impossible_knob_values_are_usage_errors(
        flags: list[str], words: str, capsys: pytest.CaptureFixture[str]) -> None:
    """A value the emulator cannot run with is refused by the parser, naming the flag
    (before: a stuck clock, rates above 1, or an OverflowError at bind time)."""
    with pytest.raises(SystemExit) as caught:
        build_parser().parse_args(["emulator", *flags])
    assert caught.value.code == 2
    err = capsys.readouterr().err
    assert flags[0] in err
    assert words in err


def test_a_port_in_use_is_one_line_exit_2(capsys: pytest.CaptureFixture[str]) -> None:
    """A port another program holds: one line naming it, exit 2."""
    import socket

    from asyncjsoc.cli import main

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        assert main(["emulator", "--port", str(port)]) == 2
    err = capsys.readouterr().err
    assert f"cannot listen on 127.0.0.1:{port}" in err
    assert "Traceback" not in err
