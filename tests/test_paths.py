"""Tests for asyncjsoc._paths: server-sent names never escape the output directory."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from asyncjsoc import _paths
from asyncjsoc._paths import Placer, resolve_inside, safe_relpath
from asyncjsoc.exceptions import UnsafePathError


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("hmi.sharp_cea_720s.7310.20180930_092400_TAI.Br.fits",
         "hmi.sharp_cea_720s.7310.20180930_092400_TAI.Br.fits"),
        ("a/b/c.fits", "a/b/c.fits"),
        ("a//b/./c.fits", "a/b/c.fits"),
        ("./x.fits", "x.fits"),
        ("dir/", "dir"),
        ("2017.05.24_22:24:00_TAI.fits", "2017.05.24_22:24:00_TAI.fits"),
        ("...", "..."),
        ("..x/y..", "..x/y.."),
        ("ünïcode.fits", "ünïcode.fits"),
    ],
)
def test_safe_relpath_normalizes(name: str, expected: str) -> None:
    """Good names come back normalized to a relative POSIX path."""
    assert safe_relpath(name) == expected


@pytest.mark.parametrize(
    "name",
    [
        "",
        ".",
        "./.",
        "//",
        "..",
        "../x",
        "a/../../x",
        "a/..",
        "/etc/passwd",
        "/SUM1/D2/S00000/x.fits",
        "C:x.fits",
        "c:/windows/x",
        "a\\b",
        "..\\x",
        "a\x00b",
        "a\nb",
        "a\x1bb",
        "a\x7f",
        "a\x85b",
        ".asyncjsoc/state.sqlite",
        "x.fits.part",
        "x.fits.part.meta",
        "a" * 256,
        "a/\udcff",
    ],
)
def test_safe_relpath_refuses(name: str) -> None:
    """Escapes, absolute paths, control characters and reserved names are refused."""
    with pytest.raises(UnsafePathError):
        safe_relpath(name)


def test_resolve_inside_plain(tmp_path: Path) -> None:
    """A plain name resolves below the output directory, even before it exists."""
    out = tmp_path / "out"
    p = resolve_inside(out, "a/b/c.fits")
    assert p == out.resolve() / "a" / "b" / "c.fits"


def test_resolve_inside_refuses_symlinked_dir(tmp_path: Path) -> None:
    """A directory symlink that points outside the output directory is refused."""
    out = tmp_path / "out"
    out.mkdir()
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (out / "link").symlink_to(elsewhere)
    with pytest.raises(UnsafePathError, match="outside"):
        resolve_inside(out, "link/x.fits")


def test_resolve_inside_refuses_symlinked_file(tmp_path: Path) -> None:
    """A final-name symlink that points outside the output directory is refused."""
    out = tmp_path / "out"
    out.mkdir()
    (out / "x.fits").symlink_to(tmp_path / "victim")
    with pytest.raises(UnsafePathError, match="symlink"):
        resolve_inside(out, "x.fits")


def test_resolve_inside_allows_inner_symlink(tmp_path: Path) -> None:
    """A symlink that stays inside the output directory is fine."""
    out = tmp_path / "out"
    (out / "real").mkdir(parents=True)
    (out / "alias").symlink_to(out / "real")
    assert resolve_inside(out, "alias/x.fits") == (out / "real" / "x.fits").resolve()


def test_resolve_inside_through_symlinked_out_dir(tmp_path: Path) -> None:
    """An output directory that is itself a symlink is resolved first, then enforced."""
    real = tmp_path / "real"
    real.mkdir()
    out = tmp_path / "out"
    out.symlink_to(real)
    assert resolve_inside(out, "x.fits") == real.resolve() / "x.fits"


_NAME_ALPHABET = st.sampled_from(["a", "b", ".", "/", "\\", ":", "C", "\x00", "\n", " ", "é"])


@settings(max_examples=300, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(name=st.one_of(st.text(), st.text(alphabet=_NAME_ALPHABET, max_size=12)))
def test_resolve_inside_property(tmp_path: Path, name: str) -> None:
    """For any string: either a path inside out_dir, or UnsafePathError, nothing else."""
    out = tmp_path / "out"
    base = out.resolve()
    try:
        p = resolve_inside(out, name)
    except UnsafePathError:
        return
    assert p.is_absolute()
    assert p.is_relative_to(base)
    assert p != base
    assert os.path.normpath(p) == str(p)
    rel = safe_relpath(name)
    assert safe_relpath(rel) == rel


_PLAIN_ALPHABET = st.sampled_from(["a", "Z", "0", "_", "-", "+", ".", "/", "part", "meta",
                                   ".asyncjsoc", "..", "\\", ":", " ", "é"])


_COMPONENT = st.lists(_PLAIN_ALPHABET, max_size=6).map("".join)


@settings(max_examples=500, deadline=None)
@given(name=st.one_of(st.lists(_COMPONENT, min_size=1, max_size=4).map("/".join),
                      st.text(alphabet=st.sampled_from(["a", "/"]), min_size=250,
                              max_size=260)))
@example(name="a.part")
@example(name="d/b.fits.part.meta")
@example(name="a" * 256)
@example(name="a/" * 130 + "b")
@example(name=".asyncjsoc/x")
@example(name="a/../b")
@example(name="a//b")
@example(name="./a")
def test_safe_relpath_fast_path_agrees_with_every_check(name: str) -> None:
    """The shortcut for plain names answers exactly what the full checks answer."""
    try:
        expected: str | None = _paths._checked_relpath(name)
    except UnsafePathError:
        expected = None
    try:
        got: str | None = safe_relpath(name)
    except UnsafePathError:
        got = None
    assert got == expected


def test_placer_agrees_with_resolve_inside_and_creates_directories(tmp_path: Path) -> None:
    """Placer gives resolve_inside's path, creates the parents, and reports what is there."""
    out = tmp_path / "out"
    placer = Placer(out)
    path, st = placer.place("a/b/c.fits")
    assert path == resolve_inside(out, "a/b/c.fits")
    assert path.parent.is_dir()
    assert st is None
    path.write_bytes(b"12345")
    again, st = placer.place("a/b/c.fits")
    assert again == path
    assert st is not None
    assert st.st_size == 5
    assert placer.place("a/b/d.fits")[0] == out.resolve() / "a" / "b" / "d.fits"


def test_placer_refuses_what_resolve_inside_refuses(tmp_path: Path) -> None:
    """Symlinked directories or final names pointing outside, and unsafe names, are refused."""
    out = tmp_path / "out"
    out.mkdir()
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (out / "link").symlink_to(elsewhere)
    (out / "x.fits").symlink_to(tmp_path / "victim")
    placer = Placer(out)
    with pytest.raises(UnsafePathError, match="outside"):
        placer.place("link/y.fits")
    with pytest.raises(UnsafePathError, match="symlink"):
        placer.place("x.fits")
    with pytest.raises(UnsafePathError):
        placer.place("../y.fits")
    assert not (elsewhere / "y.fits").exists()
    assert list(elsewhere.iterdir()) == []


def test_placer_knows_fresh_names_from_its_listing(tmp_path: Path) -> None:
    """Names absent from the directory listing, with no part file or sidecar, are fresh,
    once only."""
    out = tmp_path / "out"
    (out / "d").mkdir(parents=True)
    (out / "d" / "done.fits").write_bytes(b"123")
    (out / "d" / "half.fits.part").write_bytes(b"1")
    (out / "d" / "crashed.fits.part.meta").write_text("{}")  # a sidecar without its part
    placer = Placer(out)
    path, st, fresh = placer.place_fresh("d/new.fits")
    assert (path, st, fresh) == (out.resolve() / "d" / "new.fits", None, True)
    done = placer.place_fresh("d/done.fits")
    assert done[1] is not None
    assert (done[1].st_size, done[2]) == (3, False)
    assert placer.place_fresh("d/half.fits")[1:] == (None, False)
    assert placer.place_fresh("d/crashed.fits")[1:] == (None, False)
    # Placed before: whatever the pull did to it since, it is looked at.
    path.write_bytes(b"12345")
    again = placer.place_fresh("d/new.fits")
    assert again[1] is not None
    assert (again[1].st_size, again[2]) == (5, False)


def test_placer_checks_a_final_symlink_it_listed(tmp_path: Path) -> None:
    """A symlink pointing outside is refused when the listing saw it."""
    out = tmp_path / "out"
    (out / "d").mkdir(parents=True)
    (out / "d" / "b.fits").symlink_to(tmp_path / "victim")
    placer = Placer(out)
    placer.place("d/a.fits")
    with pytest.raises(UnsafePathError, match="symlink"):
        placer.place("d/b.fits")


def test_placer_checks_every_name_of_a_directory_too_big_to_list(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Without a listing, even a symlink made after the directory was seen is checked."""
    monkeypatch.setattr(_paths, "LISTING_LIMIT", 1)
    out = tmp_path / "out"
    (out / "d").mkdir(parents=True)
    (out / "d" / "x.fits").write_bytes(b"")
    (out / "d" / "y.fits").write_bytes(b"")
    placer = Placer(out)
    assert placer.place_fresh("d/a.fits")[2] is False
    (out / "d" / "b.fits").symlink_to(tmp_path / "victim")
    with pytest.raises(UnsafePathError, match="symlink"):
        placer.place("d/b.fits")


def test_placer_stops_remembering_names_at_its_limit(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Past PLACED_LIMIT names nothing is taken as fresh (memory stays bounded)."""
    monkeypatch.setattr(_paths, "PLACED_LIMIT", 2)
    placer = Placer(tmp_path / "out")
    assert [placer.place_fresh(f"f{i}.fits")[2] for i in range(4)] == [True, True, False, False]


def test_a_file_name_leaves_room_for_the_temporary_suffixes() -> None:
    """NAME_MAX is 255 bytes and a part file's sidecar adds ``.part.meta`` (10): a file name
    may have 245 bytes, a directory name 255; a longer one is refused up front instead of
    failing at the disk."""
    assert safe_relpath("a" * 245) == "a" * 245
    assert safe_relpath("d" * 255 + "/" + "a" * 245) == "d" * 255 + "/" + "a" * 245
    for name in ("a" * 246, "d/" + "a" * 246, "é" * 123):
        with pytest.raises(UnsafePathError, match="longer than 245 bytes"):
            safe_relpath(name)
