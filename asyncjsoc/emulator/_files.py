"""Deterministic file bodies: FITS files with correct CHECKSUM/DATASUM, tar files, an LRU cache.

Nothing is stored on disk: a body is a pure function of its inputs (keywords, size, seed key),
generated with numpy and kept in a bounded LRU cache while it is hot.
"""

from __future__ import annotations

import hashlib
import io
import math
import re
import tarfile
import threading
from collections import OrderedDict
from collections.abc import Iterable, Sequence

import numpy as np

__all__ = [
    "BLOCK",
    "BodyCache",
    "build_tar",
    "checksum_encode",
    "fits_card",
    "make_fits",
    "ones_complement_sum",
]

BLOCK = 2880
_FITS_NAME = re.compile(r"^[A-Z0-9_-]{1,8}$")
_RESERVED = frozenset(
    {
        "SIMPLE",
        "BITPIX",
        "NAXIS",
        "NAXIS1",
        "NAXIS2",
        "EXTEND",
        "END",
        "CHECKSUM",
        "DATASUM",
        "BZERO",
        "BSCALE",
        "BLANK",
        "COMMENT",
        "HISTORY",
        "PCOUNT",
        "GCOUNT",
        "XTENSION",
    }
)
_SPAN = 1 << 16
_EXCLUDE = frozenset(range(0x3A, 0x41)) | frozenset(range(0x5B, 0x61))
FitsValue = str | int | float | bool


def ones_complement_sum(data: bytes | memoryview | np.ndarray, start: int = 0) -> int:
    """32-bit one's complement sum of big-endian words (length must be a multiple of 4)."""
    words = np.frombuffer(data, dtype=">u4")
    total = int(np.sum(words, dtype=np.uint64)) + start
    while total >> 32:
        total = (total & 0xFFFFFFFF) + (total >> 32)
    return total


def checksum_encode(value: int) -> str:
    """Encode a 32-bit value as the 16 ASCII characters of the FITS CHECKSUM convention."""
    columns: list[list[int]] = []
    for i in range(4):
        byte = (value >> (24 - 8 * i)) & 0xFF
        quotient, remainder = byte // 4 + 0x30, byte % 4
        ch = [quotient + remainder, quotient, quotient, quotient]
        changed = True
        while changed:
            changed = False
            for j in (0, 2):
                while ch[j] in _EXCLUDE or ch[j + 1] in _EXCLUDE:
                    ch[j] += 1
                    ch[j + 1] -= 1
                    changed = True
        columns.append(ch)
    asc = [columns[i][j] for j in range(4) for i in range(4)]
    return "".join(chr(asc[(k + 15) % 16]) for k in range(16))


def fits_card(name: str, value: FitsValue, comment: str = "") -> bytes:
    """One 80-byte header card in fixed format."""
    if isinstance(value, bool):
        text = f"{'T' if value else 'F':>20}"
    elif isinstance(value, int):
        text = f"{value:>20d}"
    elif isinstance(value, float) and math.isfinite(value):
        text = f"{value:>20.10G}"
        if "." not in text and "E" not in text:
            text = f"{value:>20.1f}"
    else:
        clean = str(value).encode("ascii", "replace").decode().replace("'", "''")[:66]
        quoted = f"'{clean:<8}'"
        text = f"{quoted:<20}"
    card = f"{name:<8}= {text}"
    if comment and len(card) < 77:
        card = f"{card} / {comment}"
    return card[:80].ljust(80).encode("ascii")


def _header(cards: Iterable[bytes]) -> bytes:
    """Cards plus END, padded with blanks to whole blocks."""
    raw = b"".join(cards) + b"END".ljust(80)
    return raw.ljust(-(-len(raw) // BLOCK) * BLOCK, b" ")


def _shape(data_target: int) -> tuple[int, int]:
    """(NAXIS1, NAXIS2) of a 16-bit image holding about ``data_target`` bytes."""
    width = 1024 if data_target >= 1 << 21 else 256 if data_target >= 1 << 16 else 32
    return width, max(1, -(-data_target // (2 * width)))


def _fill_pixels(buf: np.ndarray, offset: int, nbytes: int, padded: int, key: bytes) -> None:
    """Write pseudo-random pixel bytes (then zero padding) into ``buf`` from ``offset``.

    A random block is tiled and mixed per row in one vectorised pass, which is far cheaper than
    drawing every byte from the generator.
    """
    seed = int.from_bytes(hashlib.blake2b(key, digest_size=8).digest(), "big")
    rng = np.random.Generator(np.random.PCG64(seed))
    words = -(-padded // 8)
    base = np.frombuffer(rng.bytes(8 * min(words, _SPAN)), dtype=np.uint64)
    rows = -(-words // len(base))
    salt = np.arange(rows, dtype=np.uint64)[:, None] * np.uint64(0x9E3779B97F4A7C15 ^ (seed | 1))
    target = buf[offset : offset + rows * len(base) * 8].view(np.uint64).reshape(rows, len(base))
    np.bitwise_xor(base[None, :], salt, out=target)
    buf[offset + nbytes : offset + padded] = 0


def make_fits(
    keywords: Sequence[tuple[str, FitsValue]], target_size: int, key: bytes
) -> memoryview:
    """A valid one-HDU FITS file of about ``target_size`` bytes.

    Parameters
    ----------
    keywords : sequence of (name, value)
        Record keywords for the header; names that are not valid FITS names are skipped.
    target_size : int
        Wanted total size in bytes (rounded to whole 2880-byte blocks, at least two blocks).
    key : bytes
        Seed of the pixel data; equal keys give equal files.

    Returns
    -------
    memoryview
        The file's bytes (one buffer, written once: no copies of large bodies).
    """
    cards: list[bytes] = []
    seen: set[str] = set()
    for name, value in keywords:
        up = name.upper()
        if _FITS_NAME.match(up) and up not in _RESERVED and up not in seen:
            seen.add(up)
            cards.append(fits_card(up, value))
    header_guess = -(-(len(cards) + 8) * 80 // BLOCK) * BLOCK
    width, height = _shape(max(BLOCK, target_size - header_guess))
    nbytes = width * height * 2
    padded = -(-nbytes // BLOCK) * BLOCK
    fixed = [
        fits_card("SIMPLE", True, "conforms to FITS standard"),
        fits_card("BITPIX", 16),
        fits_card("NAXIS", 2),
        fits_card("NAXIS1", width),
        fits_card("NAXIS2", height),
        *cards,
    ]
    hlen = len(_header([*fixed, b" " * 80, b" " * 80]))
    words = -(-padded // 8)
    alloc = hlen + -(-words // min(words, _SPAN)) * min(words, _SPAN) * 8
    buf = np.empty(alloc, dtype=np.uint8)
    _fill_pixels(buf, hlen, nbytes, padded, key)
    datasum = ones_complement_sum(buf[hlen : hlen + padded])
    fixed.append(fits_card("DATASUM", str(datasum), "data unit checksum"))
    blank = _header([*fixed, fits_card("CHECKSUM", "0" * 16, "HDU checksum")])
    hdu_sum = ones_complement_sum(blank, datasum)
    while hdu_sum >> 32:
        hdu_sum = (hdu_sum & 0xFFFFFFFF) + (hdu_sum >> 32)
    checksum = checksum_encode(~hdu_sum & 0xFFFFFFFF)
    header = _header([*fixed, fits_card("CHECKSUM", checksum, "HDU checksum")])
    buf[:hlen] = np.frombuffer(header, dtype=np.uint8)
    return buf[: hlen + padded].data.toreadonly()


def build_tar(members: Iterable[tuple[str, memoryview]], mtime: float) -> memoryview:
    """A ustar archive of ``(name, body)`` members with a fixed mtime (deterministic)."""
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        for name, body in members:
            info = tarfile.TarInfo(name)
            info.size = len(body)
            info.mtime = int(mtime)
            info.mode = 0o644
            tar.addfile(info, io.BytesIO(body))
    return out.getbuffer().toreadonly()


class BodyCache:
    """A thread-safe LRU of generated bodies, bounded in total bytes.

    Parameters
    ----------
    max_bytes : int
        Bodies are evicted, least recently used first, to stay under this total.
    """

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self._items: OrderedDict[str, memoryview] = OrderedDict()
        self._size = 0
        self._lock = threading.Lock()

    def get(self, key: str) -> memoryview | None:
        """The cached body for ``key``, if any (marks it recently used)."""
        with self._lock:
            body = self._items.get(key)
            if body is not None:
                self._items.move_to_end(key)
            return body

    def put(self, key: str, body: memoryview) -> None:
        """Remember ``body`` unless it alone exceeds the bound."""
        if len(body) > self.max_bytes:
            return
        with self._lock:
            old = self._items.pop(key, None)
            if old is not None:
                self._size -= len(old)
            self._items[key] = body
            self._size += len(body)
            while self._size > self.max_bytes:
                _, evicted = self._items.popitem(last=False)
                self._size -= len(evicted)

    @property
    def size(self) -> int:
        """Total bytes currently cached."""
        return self._size
