"""Check downloaded files before they get their final name: size, and FITS checksums.

The JSOC's export index carries no sizes or checksums, but FITS files written by DRMS carry
``CHECKSUM``/``DATASUM`` cards in every HDU; when present they catch corruption in transit.
Files are read and checked in worker threads; a small body already in memory may be checked
in the calling thread (:func:`check_fits_bytes`), never waiting there for another check.
"""

from __future__ import annotations

import io
import os
import threading
import warnings
from pathlib import Path
from typing import BinaryIO

import anyio.to_thread

from .exceptions import IntegrityError

__all__ = ["FITS_BLOCK", "FITS_MAGIC", "check_fits_bytes", "check_size", "verify_fits",
           "verify_fits_bytes"]

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


async def verify_fits(path: Path) -> None:
    """Verify a FITS file's ``CHECKSUM`` and ``DATASUM`` cards, if it is a FITS file.

    A file that does not start with a FITS primary header passes (there is nothing to check).
    A FITS file passes when every HDU's ``CHECKSUM`` and ``DATASUM`` match, or are absent.
    Compressed image HDUs are checked as stored (their binary table), which is what the
    transfer must preserve.

    Parameters
    ----------
    path
        The file to verify.

    Raises
    ------
    IntegrityError
        If a checksum does not match, the file is truncated, or it does not parse as FITS.
    """
    await anyio.to_thread.run_sync(_verify_fits_sync, path)


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


def _verify_fits_sync(path: Path) -> None:
    """Blocking body of :func:`verify_fits`."""
    with open(path, "rb") as f:
        head = f.read(len(FITS_MAGIC))
        size = os.fstat(f.fileno()).st_size
    _verify_source(path.name, head, size, path)


def check_fits_bytes(name: str, data: bytes, *, wait: bool = True) -> bool:
    """:func:`verify_fits_bytes` in the calling thread: about a millisecond for a small file
    (astropy's header parsing), so a small body can be checked without a thread hand-off.

    Checks run one at a time (see ``_warnings_lock``). With ``wait=False`` it returns
    ``False``, having checked nothing, when another check is running (an event loop must not
    wait for a large file's check in a worker thread); otherwise ``True`` once checked.
    """
    return _verify_source(name, data[:len(FITS_MAGIC)], len(data), io.BytesIO(data),
                          wait=wait)


def _verify_source(name: str, head: bytes, size: int, source: Path | BinaryIO, *,
                   wait: bool = True) -> bool:
    """Verify the FITS file ``source`` (a path or an open binary stream) called ``name``.

    ``False`` (nothing checked) only when ``wait`` is false and another check holds the lock.
    """
    if head != FITS_MAGIC:
        return True
    if size % FITS_BLOCK:
        raise IntegrityError(
            f"{name}: {size} bytes is not a whole number of FITS blocks (truncated?)",
            hint=_HINT,
        )
    from astropy.io import fits  # deferred: astropy is slow to import and only needed here

    if not _warnings_lock.acquire(blocking=wait):
        return False
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            try:
                with fits.open(source, memmap=False, disable_image_compression=True,
                               do_not_scale_image_data=True, lazy_load_hdus=False) as hdul:
                    problems = [_check_hdu(i, hdu) for i, hdu in enumerate(hdul)]
            except (OSError, ValueError, TypeError, IndexError, KeyError) as exc:
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


def _check_hdu(index: int, hdu: object) -> str:
    """An empty string when the HDU's checksums match or are absent, else what is wrong."""
    header = getattr(hdu, "header", None)
    if header is None:
        return ""
    wrong = []
    # verify_*: 0 = mismatch, 1 = match, 2 = keyword absent
    if "DATASUM" in header and hdu.verify_datasum() == 0:  # type: ignore[attr-defined]
        wrong.append("DATASUM")
    if "CHECKSUM" in header and hdu.verify_checksum() == 0:  # type: ignore[attr-defined]
        wrong.append("CHECKSUM")
    return f"HDU {index} {' and '.join(wrong)} mismatch" if wrong else ""
