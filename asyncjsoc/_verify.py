"""Check downloaded files before they get their final name: size, and FITS checksums.

The JSOC's export index carries no sizes or checksums, but FITS files written by DRMS carry
``CHECKSUM``/``DATASUM`` cards in every HDU; when present they catch corruption in transit.
Files are read and checked in worker threads; a small body already in memory may be checked
in the calling thread (:func:`check_fits_bytes`), never waiting there for another check.
"""

from __future__ import annotations

import io
import os
import tarfile
import threading
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

import anyio.to_thread

from .exceptions import IntegrityError

__all__ = ["FITS_BLOCK", "FITS_MAGIC", "FITS_SUFFIXES", "check_fits_bytes", "check_size",
           "is_tar_name", "verify_fits", "verify_fits_bytes"]

FITS_MAGIC = b"SIMPLE  ="
"""How every FITS file starts: the first card of the primary header."""

FITS_BLOCK = 2880
"""FITS files are a whole number of 2880-byte blocks."""

_HINT = "the file was not kept under its final name; asyncjsoc fetches it again on the next run"

# warnings.catch_warnings swaps process-wide state: one verification at a time keeps the
# capture from mixing with another verification's.
_warnings_lock = threading.Lock()


async def check_size(path: Path, expected: int) -> int:
    """Check that ``path`` holds exactly ``expected`` bytes.

    Parameters
    ----------
    path
        The file to check.
    expected
        The size the server announced.

    Returns
    -------
    int
        The size (equal to ``expected``).

    Raises
    ------
    IntegrityError
        If the size differs.
    """
    size = (await anyio.to_thread.run_sync(os.stat, path)).st_size
    if size != expected:
        raise IntegrityError(
            f"{path.name}: {size} bytes on disk, the server announced {expected}", hint=_HINT
        )
    return size


async def verify_fits(path: Path, *, name: str | None = None) -> None:
    """Verify a FITS file's ``CHECKSUM`` and ``DATASUM`` cards, if it is a FITS file, or a
    tar file's headers and FITS members (a name ending in ``.tar``: see :func:`_verify_tar`).

    A file that does not start with a FITS primary header passes (there is nothing to check),
    unless its name ends in ``.fits``, ``.fit`` or ``.fts``: then it is damaged.
    A FITS file passes when every HDU's ``CHECKSUM`` and ``DATASUM`` match, or are absent.
    Compressed image HDUs are checked as stored (their binary table), which is what the
    transfer must preserve.

    Parameters
    ----------
    path
        The file to verify.
    name
        The name the file will have (for messages and the rule above); default
        ``path.name``. A ``NAME.fits.part`` file is checked as ``NAME.fits``.

    Raises
    ------
    IntegrityError
        If a checksum does not match, the file is truncated, or it does not parse as FITS.
    """
    await anyio.to_thread.run_sync(_verify_fits_sync, path, name or path.name)


async def verify_fits_bytes(name: str, data: bytes) -> None:
    """:func:`verify_fits` for a whole file held in memory, before it is written anywhere.

    Small files are verified this way and then written and published with other small
    files in one batch, instead of being written, synced and read back one by one.

    Parameters
    ----------
    name
        The file's name, for messages.
    data
        Its whole content.

    Raises
    ------
    IntegrityError
        As :func:`verify_fits`.
    """
    await anyio.to_thread.run_sync(check_fits_bytes, name, data)


def _verify_fits_sync(path: Path, name: str) -> None:
    """Blocking body of :func:`verify_fits`."""
    with open(path, "rb") as f:
        head = f.read(len(FITS_MAGIC))
        size = os.fstat(f.fileno()).st_size
        fd = f.fileno()
        if is_tar_name(name) and head != FITS_MAGIC:
            f.seek(0)
            _verify_tar(name, size, f, lambda offset, n: os.pread(fd, n, offset))
            return
        _verify_source(name, head, size, f, lambda offset, n: os.pread(fd, n, offset))


def is_tar_name(name: str) -> bool:
    """Whether ``name`` is a tar file's (a url-tar export): unless it starts like FITS, such a
    file must be a readable tar, checked by :func:`_verify_tar`."""
    return name.lower().endswith(".tar")


def _verify_tar(name: str, size: int, source: IO[bytes], read: RawReader) -> None:
    """Verify a tar file (a url-tar export) as far as its contents allow.

    The JSOC sends no checksum for a tar, but its headers carry their own checksums and its
    FITS members their ``CHECKSUM``/``DATASUM`` cards: every header must be intact, every
    FITS member must pass :func:`_verify_source`, the padding after each member and
    everything after the last one must be zeros (``tarfile`` takes a damaged header after
    the first for the end of the archive, so a header hit in transit shows up there).
    Members that are not FITS (an index file) have nothing to check them by.
    """
    try:
        with tarfile.open(fileobj=source, mode="r:") as tar:
            for info in tar:
                if not info.isreg():
                    continue
                start, length = info.offset_data, info.size
                if start + length > size:
                    raise IntegrityError(f"{name}: member {info.name!r} is cut short",
                                         hint=_HINT)
                member = tar.extractfile(info)
                assert member is not None  # a regular member always has a file object

                def read_member(offset: int, n: int, start: int = start,
                                length: int = length) -> bytes | memoryview:
                    return read(start + offset, max(0, min(n, length - offset)))

                _verify_source(f"{name}:{info.name}", bytes(read_member(0, len(FITS_MAGIC))),
                               length, member, read_member)
                padding = -length % tarfile.BLOCKSIZE
                if padding and any(read(start + length, padding)):
                    raise IntegrityError(f"{name}: damaged after member {info.name!r}",
                                         hint=_HINT)
            end = tar.offset
    except tarfile.TarError as exc:
        raise IntegrityError(f"{name}: not a readable tar file ({exc})", hint=_HINT) from exc
    if end + tarfile.BLOCKSIZE > size:  # a tar cut where a member ends reads as complete
        raise IntegrityError(f"{name}: cut short (no end-of-archive block after its last "
                             "member)", hint=_HINT)
    if not _zeros(read, end, size):
        raise IntegrityError(f"{name}: a tar header is damaged (data after the last member "
                             "that tarfile could read)", hint=_HINT)


_ZERO_SCAN = 1 << 20
"""Bytes read at a time when checking that a tar's tail is zeros."""


def _zeros(read: RawReader, start: int, end: int) -> bool:
    """Whether bytes ``start`` to ``end`` are all zero, read a block at a time (after a
    damaged header that tail can be most of a many-gigabyte tar)."""
    for offset in range(start, end, _ZERO_SCAN):
        if any(read(offset, min(_ZERO_SCAN, end - offset))):
            return False
    return True


def check_fits_bytes(name: str, data: bytes, *, wait: bool = True) -> bool:
    """:func:`verify_fits_bytes` in the calling thread, so a small body can be checked
    without a thread hand-off: tens of microseconds for a small file whose HDUs all carry
    matching checksums, about a millisecond when astropy has to parse it.

    Checks that need astropy run one at a time (see ``_warnings_lock``). With ``wait=False``
    it returns ``False``, having checked nothing, when such a check is needed and another
    one is running (an event loop must not wait for a large file's check in a worker
    thread); otherwise ``True`` once checked.
    """
    view = memoryview(data)
    if is_tar_name(name) and not data.startswith(FITS_MAGIC):
        _verify_tar(name, len(data), io.BytesIO(data), lambda offset, n: view[offset:offset + n])
        return True
    return _verify_source(name, data[:len(FITS_MAGIC)], len(data), io.BytesIO(data),
                          lambda offset, n: view[offset:offset + n], wait=wait)


FITS_SUFFIXES = (".fits", ".fit", ".fts")
"""Names of files that must be FITS: one of these not starting with a FITS header is damaged."""

RawReader = Callable[[int, int], "bytes | memoryview"]
"""``read(offset, n)``: up to ``n`` raw bytes of the file from ``offset``."""


def _verify_source(name: str, head: bytes, size: int, source: IO[bytes], read: RawReader, *,
                   wait: bool = True) -> bool:
    """Verify the FITS file ``source`` called ``name``; ``read`` gives its raw bytes.

    A file whose HDUs all carry matching checksums is accepted at once
    (:func:`_all_sums_match`). Any other file is checked with astropy, which parses the
    headers and locates each HDU; the sums are taken over the raw bytes (:func:`_check_hdu`).
    ``False`` (nothing checked) only when ``wait`` is false and another astropy check holds
    the lock.
    """
    if head != FITS_MAGIC:
        if name.lower().endswith(FITS_SUFFIXES):
            raise IntegrityError(f"{name}: does not start with a FITS header", hint=_HINT)
        return True
    if size % FITS_BLOCK:
        raise IntegrityError(
            f"{name}: {size} bytes is not a whole number of FITS blocks (truncated?)",
            hint=_HINT,
        )
    if _all_sums_match(size, read):
        return True
    from astropy.io import fits  # deferred: astropy is slow to import and only needed here
    from astropy.io.fits.verify import VerifyError  # a card astropy cannot parse

    if not _warnings_lock.acquire(blocking=wait):
        return False
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            try:
                with fits.open(source, memmap=False, disable_image_compression=True,
                               do_not_scale_image_data=True, lazy_load_hdus=False) as hdul:
                    problems = [_check_hdu(i, hdu, hdul, size, read)
                                for i, hdu in enumerate(hdul)]
                    problems.append(_check_coverage(hdul, size, read))
            # AttributeError too: astropy can trip over its own placeholders for damaged HDUs.
            except (OSError, ValueError, TypeError, IndexError, KeyError, AttributeError,
                    VerifyError) as exc:
                raise IntegrityError(f"{name}: not a readable FITS file ({exc})",
                                     hint=_HINT) from exc
    finally:
        _warnings_lock.release()
    for w in caught:
        text = str(w.message).lower()
        if "truncated" in text or "checksum" in text or "datasum" in text:
            raise IntegrityError(f"{name}: {w.message}", hint=_HINT)
    bad = [p for p in problems if p]
    if bad:
        raise IntegrityError(f"{name}: {'; '.join(bad)}", hint=_HINT)
    return True


def _all_sums_match(size: int, read: RawReader) -> bool:
    """Whether the file is a chain of HDUs that exactly fills it, each with ``CHECKSUM`` and
    ``DATASUM`` cards matching its raw bytes: the quick acceptance, without astropy.

    astropy's parsing costs about a millisecond per file, most of the check of a small file
    (and, run in the event loop for small bodies, a millisecond of the loop's time). A file
    written by DRMS carries both cards in every HDU, so the usual good file is accepted by
    walking the standard FITS layout directly: headers of 80-byte cards up to ``END``, then
    ``|BITPIX|/8 x GCOUNT x (PCOUNT + NAXIS1 x ... x NAXISn)`` data bytes, each padded to
    whole blocks. ``False`` means only "not accepted this way": anything unusual (no
    checksum cards, a mismatch, padding after the last HDU, a card it does not read)
    goes to the astropy-based check, which accepts or names the problem as before.
    """
    offset = 0
    while offset < size:
        hdu = _read_header(offset, size, read, first=offset == 0)
        if hdu is None:
            return False
        raw_header, cards = hdu
        data_at = offset + len(raw_header)
        data_span = _data_span(cards)
        if (data_span is None or data_at + data_span > size
                or raw_header.translate(None, _NOT_TEXT) != raw_header):
            return False
        try:
            expected = int(cards["DATASUM"].split(b"/")[0].strip().strip(b"'").strip())
        except (KeyError, ValueError):
            return False
        if "CHECKSUM" not in cards:
            return False
        data_sum = _sum_region(read, data_at, data_span)
        if data_sum != expected or _add32(_sum32(raw_header), data_sum) != 0xFFFFFFFF:
            return False
        offset = data_at + data_span
    return offset == size


_LAYOUT_KEYS = frozenset({"SIMPLE", "XTENSION", "BITPIX", "NAXIS", "PCOUNT", "GCOUNT",
                          "GROUPS", "DATASUM", "CHECKSUM"})
"""The cards the quick acceptance reads (with ``NAXISn``)."""

_MAX_HEADER_BLOCKS = 1000
"""Longer headers (2.9 MB) are left to astropy."""


def _read_header(offset: int, size: int, read: RawReader, *,
                 first: bool) -> tuple[bytes, dict[str, bytes]] | None:
    """The raw header starting at ``offset`` (whole blocks, through ``END``) and the values
    of its layout cards; ``None`` when it does not read as a plain header."""
    cards: dict[str, bytes] = {}
    blocks: list[bytes] = []
    at = offset
    while len(blocks) < _MAX_HEADER_BLOCKS and at + FITS_BLOCK <= size:
        block = bytes(read(at, FITS_BLOCK))
        if len(block) != FITS_BLOCK:
            return None
        blocks.append(block)
        at += FITS_BLOCK
        for start in range(0, FITS_BLOCK, 80):
            keyword = block[start:start + 8].rstrip().decode("ascii", "replace")
            if keyword == "END":
                if not blocks[0].startswith(b"SIMPLE  = " if first else b"XTENSION= "):
                    return None
                return b"".join(blocks), cards
            if block[start + 8:start + 10] != b"= ":
                continue
            if keyword in _LAYOUT_KEYS or keyword.startswith("NAXIS"):
                if keyword in cards:  # a layout card twice: ambiguous
                    return None
                cards[keyword] = block[start + 10:start + 80]
    return None


def _data_span(cards: dict[str, bytes]) -> int | None:
    """Bytes of the data unit the header describes, padded to whole blocks; ``None`` when
    the layout cards are missing, not integers, or describe random groups."""
    if "GROUPS" in cards:
        return None
    try:
        def value(keyword: str, default: int | None = None) -> int:
            if keyword not in cards:
                if default is None:
                    raise ValueError(keyword)
                return default
            return int(cards[keyword].split(b"/")[0])

        bitpix, naxis = value("BITPIX"), value("NAXIS")
        if bitpix not in (8, 16, 32, 64, -32, -64) or not 0 <= naxis <= 999:
            return None
        if naxis == 0:
            return 0
        elements = 1
        for axis in range(1, naxis + 1):
            elements *= value(f"NAXIS{axis}")
        nbytes = abs(bitpix) // 8 * value("GCOUNT", 1) * (value("PCOUNT", 0) + elements)
    except ValueError:
        return None
    if nbytes < 0:
        return None
    return -(-nbytes // FITS_BLOCK) * FITS_BLOCK


def _check_coverage(hdul: Any, size: int, read: RawReader) -> str:
    """An empty string when the HDUs astropy read fill the file, else what is wrong.

    astropy stops at a header it cannot parse and only warns ("extra bytes after the last
    HDU"), so a damaged extension header would otherwise pass unchecked. Bytes after the
    last HDU are tolerated only when they are all zeros (padding some writers leave, which
    astropy skips too; a damaged header is text).
    """
    end = 0
    for index in range(len(hdul)):
        info = hdul.fileinfo(index)
        if int(info["hdrLoc"]) != end:
            return f"HDU {index} does not start where HDU {index - 1} ends"
        end = int(info["datLoc"]) + int(info["datSpan"])
    if end > size:
        return "the last HDU is cut short"
    position = end
    while position < size:
        piece = bytes(read(position, min(_SUM_CHUNK, size - position)))
        if not piece:
            break
        if piece.strip(b"\0"):
            return (f"{size - end} bytes after the last readable HDU are not zero padding "
                    "(a damaged header?)")
        position += len(piece)
    return ""


_NOT_TEXT = bytes(range(0x20)) + bytes(range(0x7F, 0x100))
"""Bytes a FITS header may not hold (it is ASCII text, 0x20-0x7E)."""

_SUM_CHUNK = 64 << 20
"""Raw bytes summed per read: bounds memory for files of any size."""


def _check_hdu(index: int, hdu: object, hdul: Any, size: int, read: RawReader) -> str:
    """An empty string when an HDU's raw bytes match its checksums (or it has none), else
    what is wrong.

    The sums follow the FITS checksum convention (32-bit ones' complement, end-around
    carry) over the raw bytes: ``DATASUM`` over the data records, ``CHECKSUM`` over the
    whole HDU, which must sum to -0. astropy's own ``verify_checksum`` sums a header it
    re-serialised, so damage it does not parse back (in the blank fill after ``END``, or
    in the ``CHECKSUM`` keyword itself) went unnoticed; raw sums and a text check of the
    header catch it. Each byte is read once.
    """
    header = getattr(hdu, "header", None)
    if header is None:
        return ""
    if not hasattr(hdu, "verify_datasum"):  # astropy's _CorruptedHDU: its size is wrong
        return f"HDU {index} is corrupted ({type(hdu).__name__})"
    info = hdul.fileinfo(index)
    header_at, data_at = int(info["hdrLoc"]), int(info["datLoc"])
    data_span = int(info["datSpan"])
    if data_at + data_span > size:
        return f"HDU {index} is cut short"
    raw_header = bytes(read(header_at, data_at - header_at))
    if raw_header.translate(None, _NOT_TEXT) != raw_header:
        return f"HDU {index} header holds bytes that are not FITS text"
    has_datasum, has_checksum = "DATASUM" in header, "CHECKSUM" in header
    if not has_checksum and any(_one_off(str(k), "CHECKSUM") for k in header):
        return f"HDU {index} has a damaged CHECKSUM card"
    if not (has_datasum or has_checksum):
        return ""
    data_sum = _sum_region(read, data_at, data_span)
    wrong = []
    if has_datasum:
        try:
            expected = int(str(header["DATASUM"]).strip())
        except ValueError:
            return f"HDU {index} DATASUM is not a number"
        if data_sum != expected:
            wrong.append("DATASUM")
    if has_checksum and _add32(_sum32(raw_header), data_sum) != 0xFFFFFFFF:
        wrong.append("CHECKSUM")
    return f"HDU {index} {' and '.join(wrong)} mismatch" if wrong else ""


def _one_off(keyword: str, wanted: str) -> bool:
    """Whether ``keyword`` is ``wanted`` with exactly one character changed."""
    return len(keyword) == len(wanted) and sum(
        a != b for a, b in zip(keyword, wanted, strict=True)) == 1


def _sum_region(read: RawReader, offset: int, length: int) -> int:
    """Ones' complement sum of ``length`` raw bytes from ``offset``, read in chunks."""
    total = 0
    done = 0
    while done < length:
        piece = read(offset + done, min(_SUM_CHUNK, length - done))
        if not piece:
            break
        total = _add32(total, _sum32(piece))
        done += len(piece)
    return total


def _sum32(buf: bytes | memoryview) -> int:
    """32-bit ones' complement sum of big-endian words (FITS regions are whole words)."""
    import numpy as np  # deferred: about 0.1 s of every command's start-up, needed only here

    whole = len(buf) - len(buf) % 4
    total = int(np.frombuffer(buf[:whole], dtype=">u4").sum(dtype=np.uint64)) if whole else 0
    if whole < len(buf):
        total += int.from_bytes(bytes(buf[whole:]).ljust(4, b"\0"), "big")
    return _fold(total)


def _add32(a: int, b: int) -> int:
    """Ones' complement addition of two 32-bit sums."""
    return _fold(a + b)


def _fold(total: int) -> int:
    """Fold the carries above 32 bits back in (end-around carry)."""
    while total > 0xFFFFFFFF:
        total = (total & 0xFFFFFFFF) + (total >> 32)
    return total
