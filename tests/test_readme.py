"""The README's Python example runs as written, against the emulator."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[1] / "README.md"


def _python_example() -> str:
    """The first ```python block of the README's "Python API" section."""
    section = README.read_text().split("## Python API", 1)[1]
    match = re.search(r"```python\n(.*?)```", section, re.S)
    assert match is not None, "the Python API section has no python example"
    return match.group(1)


def test_readme_opens_with_the_two_commands() -> None:
    """The first code block holds the demo command and the test command, in that order."""
    first_block = README.read_text().split("```", 2)[1]
    lines = [ln.split("#")[0].strip() for ln in first_block.splitlines()[1:] if ln.strip()]
    assert lines == ["bash scripts/demo", "bash scripts/test"]
    ci = (README.parent / ".ci" / "run").read_text()
    assert "scripts/test" in ci


@pytest.mark.anyio
async def test_python_example_runs_against_the_emulator(tmp_path: Path) -> None:
    """The async example completes in a fresh process and writes verified files."""
    from asyncjsoc.emulator import Knobs, run_emulator

    script = tmp_path / "example.py"
    script.write_text(_python_example())
    async with run_emulator(Knobs(export_delay=0.05, file_size=8 * 1024)) as emu:
        env = {**os.environ, "ASYNCJSOC_SERVER": emu.url}
        proc = await _run(sys.executable, str(script), cwd=tmp_path, env=env)
        files = sorted(p.name for p in (tmp_path / "sharp-data").glob("*.fits"))
        served = {e.path for e in emu.audit.entries if e.op == "file"}
    assert proc.returncode == 0, proc.stderr
    assert "staged: JSOC_" in proc.stdout
    # 12 h at 96 min cadence: 8 records (both ends included) x 3 segments
    assert len(files) == 24
    assert all(name.startswith("hmi.sharp_cea_720s.7302.") for name in files)
    assert len(served) == 24


async def _run(*argv: str, cwd: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """Run a command without blocking the event loop the emulator serves on."""
    import anyio

    result = await anyio.run_process(list(argv), cwd=cwd, env=env, check=False)
    return subprocess.CompletedProcess(
        argv, result.returncode, result.stdout.decode(), result.stderr.decode()
    )


def test_configuration_table_lists_every_field_with_its_default() -> None:
    """Each ClientConfig field has a row in the README's Configuration table, and a plain
    number or boolean default there is the code's."""
    from dataclasses import MISSING, fields

    from asyncjsoc import ClientConfig

    section = README.read_text().split("## Configuration", 1)[1].split("\n## ", 1)[0]
    rows: dict[str, str] = {}
    for line in section.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) < 3 or not cells[0].startswith("`"):
            continue
        names = re.findall(r"`(\w+)`", cells[0])
        defaults = [d.strip() for d in cells[1].split("/")]
        for i, name in enumerate(names):
            rows[name] = defaults[i] if len(defaults) == len(names) else cells[1]
    missing = [f.name for f in fields(ClientConfig) if f.name not in rows]
    assert missing == []
    units = {"": 1, "s": 1, "MiB": 1 << 20}
    compared = 0
    for f in fields(ClientConfig):
        if f.default is MISSING or f.default is None:
            continue
        shown = rows[f.name].strip("`").replace(",", "")
        if isinstance(f.default, bool):
            assert shown == str(f.default), f.name
        elif isinstance(f.default, int | float):
            number = re.fullmatch(r"([\d.]+) ?(s|MiB)?", shown)
            assert number is not None, (f.name, shown)
            assert float(number[1]) * units[number[2] or ""] == f.default, f.name
        elif isinstance(f.default, str):
            assert shown == f.default, f.name
        compared += 1
    assert compared >= 15
