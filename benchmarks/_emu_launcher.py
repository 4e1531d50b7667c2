"""Run the asyncjsoc emulator in its own process for the benchmarks.

Usage: ``python benchmarks/_emu_launcher.py '<knobs as JSON>'``. Prints the emulator URL as the
first stdout line, then answers commands read from stdin, one JSON object a line, with one JSON
line each: ``{"knobs": {...}}`` changes the live ``Knobs``; ``{"cmd": "summary"}`` returns the
audit boiled down to counters; ``{"cmd": "clear"}`` forgets the audit. Exits when stdin closes.

This is ``asyncjsoc emulator --port 0`` with every knob reachable (dicts and sets included);
running the server here keeps its CPU out of the contenders' numbers.
"""

from __future__ import annotations

import asyncio
import json
import sys
from collections import Counter
from typing import Any

from asyncjsoc.emulator import Knobs, run_emulator


def _knobs(data: dict[str, Any]) -> Knobs:
    """Build Knobs from JSON (lists become sets where the field is a set)."""
    base = Knobs()
    fixed = {}
    for key, value in data.items():
        if isinstance(getattr(base, key), set):
            value = set(value)
        fixed[key] = value
    return Knobs(**fixed)


async def main(raw: str) -> None:
    """Serve until stdin closes, applying knob updates read from stdin."""
    async with run_emulator(_knobs(json.loads(raw)), host="127.0.0.1", port=0) as emu:
        print(emu.url, flush=True)
        loop = asyncio.get_running_loop()
        while True:
            line = await loop.run_in_executor(None, sys.stdin.readline)
            if not line:
                return
            command = json.loads(line)
            answer: dict[str, Any] = {"ok": True}
            for key, value in command.get("knobs", {}).items():
                if isinstance(getattr(emu.knobs, key), set):
                    value = set(value)
                setattr(emu.knobs, key, value)
            if command.get("cmd") == "summary":
                answer = summary(emu.audit)
            elif command.get("cmd") == "clear":
                emu.audit.clear()
            print(json.dumps(answer), flush=True)


def summary(audit: Any) -> dict[str, Any]:
    """The audit as counters: requests by op and HTTP code, bytes, slots, refusals, blocks."""
    by_op: Counter[str] = Counter()
    by_http: Counter[str] = Counter()
    for entry in audit.entries:
        by_op[entry.op] += 1
        by_http[str(entry.http_status)] += 1
    files = audit.file_stats
    per_email = audit.max_pending_per_email()
    per_ip = audit.max_pending_per_ip()
    return {
        "requests": len(audit.entries),
        "by_op": dict(by_op),
        "by_http": dict(by_http),
        "file_gets": sum(s.gets for s in files.values()),
        "files_touched": len(files),
        "files_complete": sum(1 for s in files.values() if s.complete >= 1),
        "bytes_sent": sum(s.bytes_sent for s in files.values()),
        "refetched": len(audit.refetched()),
        "exports": len(audit.pending),
        "max_pending_per_email": max(per_email.values(), default=0),
        "max_pending_per_ip": max(per_ip.values(), default=0),
        "status7": len(audit.refusals),
        "blocks": len(audit.blocks),
    }


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1] if len(sys.argv) > 1 else "{}"))
