"""The soak script (scripts/soak) at a tiny size: every fault on, nothing lost or corrupted."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SOAK = ROOT / "scripts" / "_soak.py"


@pytest.mark.skipif(not SOAK.exists(), reason="scripts/ not present")
def test_soak_smoke(tmp_path: Path) -> None:
    """A short soak passes its own checks; its report says zero lost and zero corrupted."""
    report = tmp_path / "soak.txt"
    env = {k: v for k, v in os.environ.items() if not k.startswith("ASYNCJSOC_")}
    proc = subprocess.run(
        [sys.executable, str(SOAK), "--seed", "3", "--files", "60", "--minutes", "0.2",
         "--out", str(tmp_path / "out"), "--report", str(report)],
        capture_output=True, text=True, timeout=90, env=env, cwd=ROOT, check=False,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    text = report.read_text()
    fields = dict(re.findall(r"^  (\w[\w ]*?) {2,}(.*)$", text, re.MULTILINE))
    assert fields["lost"] == "0", text
    assert fields["corrupted"] == "0", text
    assert fields["partial left"] == "0", text
    assert fields["result"] == "OK", text
    counts = re.match(r"(\d+)/(\d+) on disk", fields["files"])
    assert counts is not None, text
    assert counts[1] == counts[2], text
    assert int(counts[2]) >= 60
