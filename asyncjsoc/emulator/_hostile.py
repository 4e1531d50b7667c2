"""A hostile or broken server: unsafe names and dirs, broken CGI bodies (see ``Knobs``).

Every choice is a seeded hash of a stable key (record, file path, request id), so the same
rows are hostile on every run and a test can compute which records must fail.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

__all__ = [
    "ESCAPE_DIR",
    "broken_json",
    "hostile_dir",
    "hostile_name",
    "hostile_sums_path",
    "pick",
    "rate_hit",
]

ESCAPE_DIR = "/tmp/asyncjsoc-escape"
"""Where hostile names try to make a client write (tests check nothing lands there)."""


def rate_hit(seed: int, what: str, key: str, rate: float) -> bool:
    """A seeded draw that is stable per ``key``: True for about ``rate`` of all keys."""
    if rate <= 0:
        return False
    digest = hashlib.blake2b(f"{seed}|{what}|{key}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2**64 < rate


def pick(seed: int, kinds: dict[str, float], key: str) -> str | None:
    """The first kind (in name order) whose rate selects ``key``, if any."""
    for kind in sorted(kinds):
        if rate_hit(seed, kind, key, kinds[kind]):
            return kind
    return None


def hostile_name(kind: str, name: str) -> str:
    """An unsafe version of an export file name (relative to the export dir)."""
    base = name.rsplit("/", 1)[-1]
    if kind == "dotdot":
        return f"../../../../../../..{ESCAPE_DIR}/{base}"
    if kind == "absolute":
        return f"{ESCAPE_DIR}/{base}"
    if kind == "nul":
        return f"{base}\x00.txt"
    if kind == "backslash":
        return f"..\\..\\..\\{base}"
    if kind == "long":
        return _long_name(base)
    raise ValueError(f"unknown hostile name kind {kind!r}")


def _long_name(base: str) -> str:
    """``base`` padded in front to 252 bytes: a legal file name with no room for ``.part``."""
    return "L" * max(252 - len(base.encode("utf-8")) - 1, 0) + "." + base


def hostile_sums_path(kind: str, path: str) -> str:
    """An unsafe version of a ``url_quick`` SUMS path."""
    head, _, base = path.rpartition("/")
    if kind == "dotdot":
        return f"{head}/../../../../../../..{ESCAPE_DIR}/{base}"
    if kind == "absolute":
        return f"{ESCAPE_DIR}/{base}"
    if kind == "nul":
        return f"{path}\x00.txt"
    if kind == "backslash":
        return f"{head}\\..\\..\\{base}"
    if kind == "long":
        return f"{head}/{_long_name(base)}"
    raise ValueError(f"unknown hostile name kind {kind!r}")


def hostile_dir(kind: str, real: str) -> str:
    """An unsafe export directory in place of ``real``."""
    if kind == "dotdot":
        return f"/SUM1/../../../../..{ESCAPE_DIR}"
    if kind == "relative":
        return real.lstrip("/")
    if kind == "url":
        return f"http://127.0.0.2:1{real}"
    if kind == "nul":
        return f"{real}\x00"
    raise ValueError(f"unknown hostile dir kind {kind!r}")


def broken_json(kind: str, real: dict[str, Any] | str) -> bytes | None:
    """A broken CGI body of ``kind`` made from the real answer; None for the streamed kinds."""
    if kind in ("huge", "huge-length"):
        return None
    obj: Any = json.loads(real) if isinstance(real, str) else dict(real)
    if kind == "html":
        return b"<html><head><title>502 Proxy Error</title></head><body>Bad gateway</body></html>"
    if kind == "truncated":
        return json.dumps(obj).encode()[: max(1, len(json.dumps(obj)) // 2)]
    if kind == "array":
        return json.dumps([obj]).encode()
    if kind.startswith("status-"):
        obj["status"] = {"status-abc": "abc", "status-null": None, "status-list": [0]}[kind]
        return json.dumps(obj).encode()
    raise ValueError(f"unknown hostile CGI kind {kind!r}")
