"""Tests for asyncjsoc._verify: FITS CHECKSUM/DATASUM verification and the size check."""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Awaitable, Callable
from pathlib import Path

import numpy as np
import pytest
from astropy.io import fits

from asyncjsoc._verify import (
    FITS_BLOCK,
    check_fits_bytes,
    check_size,
    verify_fits,
    verify_fits_bytes,
)
from asyncjsoc.exceptions import IntegrityError

pytestmark = pytest.mark.anyio

Verifier = Callable[[Path], Awaitable[None]]


async def _in_memory(path: Path) -> None:
    """verify_fits_bytes on the file's content (how small downloads are verified)."""
    await verify_fits_bytes(path.name, path.read_bytes())  # noqa: ASYNC240 (a tiny test file)


@pytest.fixture(params=["file", "memory"])
def verify(request: pytest.FixtureRequest) -> Verifier:
    """Each check runs on the file (verify_fits) and on its bytes (verify_fits_bytes)."""
    return verify_fits if request.param == "file" else _in_memory


def _write_fits(path: Path, *, checksum: bool = True) -> bytes:
    """Write a primary image HDU plus a Rice-compressed image HDU; return the bytes."""
    primary = fits.PrimaryHDU(np.arange(400, dtype=">i4").reshape(20, 20))
    comp = fits.CompImageHDU(np.linspace(0.0, 1.0, 64 * 64, dtype=">f4").reshape(64, 64))
    fits.HDUList([primary, comp]).writeto(path, checksum=checksum)
    return path.read_bytes()


def _flip(path: Path, offset: int) -> None:
    """Flip one bit of the file at ``offset``."""
    data = bytearray(path.read_bytes())
    data[offset] ^= 0x01
    path.write_bytes(bytes(data))


async def test_valid_fits_passes(tmp_path: Path, verify: Verifier) -> None:
    """A FITS file with matching CHECKSUM/DATASUM in every HDU passes."""
    path = tmp_path / "ok.fits"
    data = _write_fits(path)
    assert b"CHECKSUM" in data
    assert b"DATASUM" in data
    await verify(path)


async def test_fits_without_checksums_passes(tmp_path: Path, verify: Verifier) -> None:
    """A FITS file without checksum cards has nothing to verify and passes."""
    path = tmp_path / "plain.fits"
    data = _write_fits(path, checksum=False)
    assert b"CHECKSUM" not in data
    await verify(path)


async def test_primary_data_corruption_detected(tmp_path: Path, verify: Verifier) -> None:
    """One flipped bit in the primary data fails DATASUM."""
    path = tmp_path / "bad.fits"
    _write_fits(path)
    _flip(path, FITS_BLOCK + 17)
    with pytest.raises(IntegrityError, match="HDU 0 DATASUM"):
        await verify(path)


async def test_compressed_hdu_corruption_detected(tmp_path: Path, verify: Verifier) -> None:
    """A flipped bit in the compressed HDU's stored bytes is caught too."""
    path = tmp_path / "bad.fits"
    data = _write_fits(path)
    _flip(path, len(data) - FITS_BLOCK + 5)
    with pytest.raises(IntegrityError, match="HDU 1"):
        await verify(path)


async def test_header_corruption_detected(tmp_path: Path, verify: Verifier) -> None:
    """A changed header byte fails CHECKSUM even though the data are intact."""
    path = tmp_path / "bad.fits"
    data = _write_fits(path)
    _flip(path, data.index(b"array data type") + 3)
    with pytest.raises(IntegrityError, match="CHECKSUM"):
        await verify(path)


async def test_truncated_fits_detected(tmp_path: Path, verify: Verifier) -> None:
    """A FITS file cut short is refused, whether or not on a block boundary."""
    path = tmp_path / "cut.fits"
    data = _write_fits(path)
    path.write_bytes(data[:-100])
    with pytest.raises(IntegrityError, match="truncated"):
        await verify(path)
    path.write_bytes(data[:-FITS_BLOCK])
    with pytest.raises(IntegrityError):
        await verify(path)


async def test_garbage_after_magic_detected(tmp_path: Path, verify: Verifier) -> None:
    """A file that claims to be FITS but does not parse is refused."""
    path = tmp_path / "junk.fits"
    path.write_bytes(b"SIMPLE  =" + b"\xff" * (FITS_BLOCK - 9))
    with pytest.raises(IntegrityError):
        await verify(path)


async def test_non_fits_passes(tmp_path: Path, verify: Verifier) -> None:
    """Files that are not FITS (jpg, empty) pass, untouched: there is nothing to verify. A
    FITS file named like a tar is checked as FITS (a damaged one fails), and a file named
    like a tar that is not one fails (see the tar tests below)."""
    for name, content in [("b.jpg", b"\xff\xd8\xff"), ("e", b"")]:
        path = tmp_path / name
        path.write_bytes(content)
        await verify(path)
        assert path.read_bytes() == content
    disguised = tmp_path / "c.tar"
    _write_fits(disguised)
    _flip(disguised, FITS_BLOCK + 17)
    with pytest.raises(IntegrityError, match="DATASUM"):
        await verify(disguised)


async def test_check_size(tmp_path: Path) -> None:
    """check_size returns the size when it matches and raises when it does not."""
    path = tmp_path / "f"
    path.write_bytes(b"x" * 10)
    assert await check_size(path, 10) == 10
    with pytest.raises(IntegrityError, match="10 bytes on disk"):
        await check_size(path, 11)


def test_check_in_the_calling_thread_never_waits_for_another_check(tmp_path: Path) -> None:
    """check_fits_bytes(wait=False) checks at once when no other check runs, and returns
    False, having checked nothing, while one does (the lock is held)."""
    from asyncjsoc import _verify

    path = tmp_path / "bad.fits"
    _write_fits(path)
    _flip(path, FITS_BLOCK + 17)
    data = path.read_bytes()
    with pytest.raises(IntegrityError, match="HDU 0 DATASUM"):
        check_fits_bytes("bad.fits", data, wait=False)
    good = tmp_path / "ok.fits"
    assert check_fits_bytes("ok.fits", _write_fits(good), wait=False) is True
    answers: list[bool] = []

    def check_while_locked() -> None:
        with contextlib.suppress(IntegrityError):  # only if it waited (the test then fails)
            answers.append(check_fits_bytes("bad.fits", data, wait=False))

    with _verify._warnings_lock:  # another check is running
        worker = threading.Thread(target=check_while_locked)
        worker.start()
        worker.join(timeout=10)
        assert answers == [False]
    worker.join()
    assert not _verify._warnings_lock.locked()


def test_every_sampled_byte_flip_is_caught(tmp_path: Path) -> None:
    """A byte flipped anywhere in a checksummed FITS file fails verification: data, header
    cards, the CHECKSUM keyword itself and the blank fill after END (which astropy's own
    verify_checksum, summing a re-serialised header, let through)."""
    data = _write_fits(tmp_path / "f.fits")
    end = data.index(b"END" + b" " * 77)
    checksum_card = data.index(b"CHECKSUM= ")
    offsets = sorted({*range(0, len(data), 47), end + 80 + 5, FITS_BLOCK - 1,
                      checksum_card + 1, 3})
    missed = []
    for offset in offsets:
        for mask in (0x01, 0xFF):
            damaged = bytearray(data)
            damaged[offset] ^= mask
            try:
                check_fits_bytes("f.fits", bytes(damaged))
            except IntegrityError:
                continue
            missed.append((offset, mask))
    assert missed == []
    assert check_fits_bytes("f.fits", data) is True


async def test_non_fits_bytes_under_a_fits_name_fail(tmp_path: Path) -> None:
    """A file named .fits whose first bytes are not a FITS header is damaged, not 'not FITS'."""
    path = tmp_path / "cut.fits"
    path.write_bytes(b"<html>error</html>".ljust(FITS_BLOCK))
    with pytest.raises(IntegrityError, match="does not start with a FITS header"):
        await verify_fits(path)
    with pytest.raises(IntegrityError, match="does not start with a FITS header"):
        await verify_fits_bytes("cut.fits", path.read_bytes())


@pytest.mark.parametrize("chunk", [4, 2880, 3 * 2880 + 4])
async def test_sums_read_in_chunks_agree(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                         verify: Verifier, chunk: int) -> None:
    """Whatever the read size, a good file passes and a damaged one fails."""
    from asyncjsoc import _verify

    monkeypatch.setattr(_verify, "_SUM_CHUNK", chunk)
    path = tmp_path / "ok.fits"
    data = _write_fits(path)
    await verify(path)
    _flip(path, len(data) - 11)
    with pytest.raises(IntegrityError, match="HDU 1"):
        await verify(path)


async def test_part_file_is_checked_under_its_final_name(tmp_path: Path) -> None:
    """A streamed NAME.fits.part whose first bytes were damaged fails when checked as
    NAME.fits (as the downloader does); by its own name it would pass as 'not FITS'."""
    path = tmp_path / "f.fits.part"
    data = bytearray(_write_fits(path))
    data[0] ^= 0x01
    path.write_bytes(bytes(data))
    await verify_fits(path)  # ".part": nothing says it must be FITS
    with pytest.raises(IntegrityError, match=r"f\.fits: does not start with a FITS header"):
        await verify_fits(path, name="f.fits")


@pytest.mark.parametrize(("tail", "ok"), [
    (b"\0" * FITS_BLOCK, True),
    (b" " * FITS_BLOCK, False),  # astropy reads it as a header without END
    ((b"XTENSION= 'IMAGE   '" + b"\xff" * 60).ljust(FITS_BLOCK, b" "), False),
    (b"\0" * (FITS_BLOCK - 1) + b"\x01", False),
])
async def test_bytes_after_the_last_hdu(tmp_path: Path, verify: Verifier, tail: bytes,
                                        ok: bool) -> None:
    """Blocks of zeros after the last HDU are padding and pass; anything else there (a
    damaged extension header astropy gave up on) fails."""
    path = tmp_path / "f.fits"
    path.write_bytes(_write_fits(path) + tail)
    if ok:
        await verify(path)
    else:
        with pytest.raises(IntegrityError, match=r"not zero padding|not a readable|not FITS text"):
            await verify(path)


def _reader(data: bytes) -> Callable[[int, int], memoryview]:
    """``read(offset, n)`` over bytes in memory."""
    view = memoryview(data)
    return lambda offset, n: view[offset:offset + n]


def _hdu_shapes() -> dict[str, fits.HDUList]:
    """FITS layouts a JSOC export may hold, each written with checksums."""
    image = np.arange(600, dtype=">i2").reshape(20, 30)
    table = fits.BinTableHDU.from_columns([
        fits.Column(name="flux", format="E", array=np.linspace(0, 1, 50, dtype=">f4")),
        fits.Column(name="trace", format="PJ()",
                    array=np.array([np.arange(i, dtype=">i4") for i in range(50)],
                                   dtype=object)),  # a heap: PCOUNT > 0
    ])
    long_header = fits.PrimaryHDU(image)
    for i in range(80):  # three header blocks
        long_header.header[f"KEY{i}"] = i
    return {
        "primary image": fits.HDUList([fits.PrimaryHDU(image)]),
        "compressed image": fits.HDUList([
            fits.PrimaryHDU(),
            fits.CompImageHDU(np.linspace(0.0, 1.0, 64 * 64, dtype=">f4").reshape(64, 64))]),
        "binary table with heap": fits.HDUList([fits.PrimaryHDU(), table]),
        "ascii table": fits.HDUList([fits.PrimaryHDU(), fits.TableHDU.from_columns(
            [fits.Column(name="n", format="I6", array=np.arange(7))])]),
        "image extension, 64-bit floats": fits.HDUList([
            fits.PrimaryHDU(), fits.ImageHDU(np.ones((3, 5, 7), dtype=">f8"))]),
        "long header": fits.HDUList([long_header]),
    }


@pytest.mark.parametrize("shape", list(_hdu_shapes()))
def test_checksummed_layouts_are_accepted_without_astropy(tmp_path: Path, shape: str) -> None:
    """Every HDU layout above, checksummed, is accepted by the quick walk of the FITS
    layout (no astropy parse), and any sampled byte flip in it is refused; without checksum
    cards it is left to the astropy check, and passes there."""
    from asyncjsoc import _verify

    for checksum in (False, True):  # the checksummed file last: it gets damaged below
        path = tmp_path / f"{checksum}.fits"
        _hdu_shapes()[shape].writeto(path, checksum=checksum)
        data = path.read_bytes()
        quick = _verify._all_sums_match(len(data), _reader(data))
        assert quick is checksum
        assert check_fits_bytes(path.name, data) is True
    missed = []
    for offset in range(0, len(data), 53):
        damaged = bytearray(data)
        damaged[offset] ^= 0x04
        try:
            check_fits_bytes(path.name, bytes(damaged))
        except IntegrityError:
            continue
        missed.append(offset)
    assert missed == []


def test_random_groups_are_left_to_astropy(tmp_path: Path) -> None:
    """Random groups (NAXIS1 = 0) do not follow the plain layout rule: astropy checks them."""
    from asyncjsoc import _verify

    groups = fits.GroupData(np.ones((4, 2, 3), dtype=">f4"), parnames=["u", "v"],
                            pardata=[np.arange(4.0), np.arange(4.0)], bitpix=-32)
    path = tmp_path / "groups.fits"
    fits.HDUList([fits.GroupsHDU(groups)]).writeto(path, checksum=True)
    data = path.read_bytes()
    assert _verify._all_sums_match(len(data), _reader(data)) is False
    assert check_fits_bytes(path.name, data) is True
    damaged = bytearray(data)
    damaged[-5] ^= 0x01
    with pytest.raises(IntegrityError, match="HDU 0"):
        check_fits_bytes(path.name, bytes(damaged))


def test_good_file_is_checked_while_another_check_holds_the_lock(tmp_path: Path) -> None:
    """A good checksummed file needs no astropy, so no lock: the event loop's quick check
    (wait=False) accepts it even while a large file's check runs in a worker thread."""
    from asyncjsoc import _verify

    data = _write_fits(tmp_path / "ok.fits")
    with _verify._warnings_lock:
        assert check_fits_bytes("ok.fits", data, wait=False) is True


def _write_tar(tmp_path: Path) -> tuple[Path, list[tuple[str, int, int]]]:
    """A url-tar export's shape: two checksummed FITS members and an index file, written
    with ``tarfile``. Returns the tar and each member's (name, data offset, size)."""
    import tarfile

    members = []
    for i in range(2):
        fits_path = tmp_path / f"m{i}.fits"
        _write_fits(fits_path)
        members.append(fits_path)
    index = tmp_path / "index.json"
    index.write_text('{"count": 2}')
    members.append(index)
    tar_path = tmp_path / "JSOC_20261207_001.tar"
    with tarfile.open(tar_path, "w", format=tarfile.USTAR_FORMAT) as tar:
        for path in members:
            tar.add(path, arcname=path.name)
    with tarfile.open(tar_path) as tar:
        layout = [(i.name, i.offset_data, i.size) for i in tar]
    return tar_path, layout


async def test_intact_tar_passes(tmp_path: Path, verify: Verifier) -> None:
    """A url-tar export as sent: its headers and FITS members check out."""
    tar_path, _ = _write_tar(tmp_path)
    await verify(tar_path)


@pytest.mark.parametrize("where", ["first header", "second header", "fits member",
                                   "member padding", "end of archive"])
async def test_tar_damaged_in_transit_is_caught(tmp_path: Path, verify: Verifier,
                                                where: str) -> None:
    """One bit flipped anywhere a tar's own structure or a FITS member can tell: a header
    (the first, or a later one that tarfile would take for the end), FITS data, the zeros
    padding a member, or the zeros closing the archive."""
    tar_path, layout = _write_tar(tmp_path)
    (_, first_at, first_size), (_, second_at, _), _ = layout
    size = tar_path.stat().st_size
    offset = {
        "first header": 10,
        "second header": second_at - 512 + 10,
        "fits member": first_at + first_size - 100,
        "member padding": layout[2][1] + layout[2][2] + 3,
        "end of archive": size - 600,
    }[where]
    _flip(tar_path, offset)
    with pytest.raises(IntegrityError, match=tar_path.name):
        await verify(tar_path)


async def test_not_a_tar_under_a_tar_name_fails(tmp_path: Path, verify: Verifier) -> None:
    """A url-tar export that is no tar at all (an error page, garbage) is not kept."""
    path = tmp_path / "JSOC_20261207_001.tar"
    path.write_bytes(b"ustar" * 1000)
    with pytest.raises(IntegrityError, match="not a readable tar"):
        await verify(path)


async def test_truncated_tar_is_caught(tmp_path: Path, verify: Verifier) -> None:
    """A tar cut inside a member fails (a size check would catch it too; this one needs no
    size from the server)."""
    tar_path, layout = _write_tar(tmp_path)
    data = tar_path.read_bytes()
    tar_path.write_bytes(data[: layout[1][1] + 1000])
    with pytest.raises(IntegrityError, match=tar_path.name):
        await verify(tar_path)


def test_a_damaged_tar_tail_is_read_a_block_at_a_time(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """After a damaged header, the rest of the tar (most of it, for a big one) is scanned a
    block at a time, never read into memory whole."""
    import io

    from asyncjsoc import _verify

    tar_path, layout = _write_tar(tmp_path)
    _flip(tar_path, layout[1][1] - 512 + 10)  # the second header
    data = tar_path.read_bytes()
    monkeypatch.setattr(_verify, "_ZERO_SCAN", 1024)
    asked: list[int] = []

    def read(offset: int, n: int) -> bytes:
        asked.append(n)
        return data[offset:offset + n]

    with pytest.raises(IntegrityError, match="header is damaged"):
        _verify._verify_tar(tar_path.name, len(data), io.BytesIO(data), read)
    assert len(data) - layout[1][1] > 10_000  # the tail after the damaged header
    assert asked[-1] <= 1024  # its first block already shows the damage: no whole read
