"""Tests for asyncjsoc._resume: how a part file's resume validator is stored and read back."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from engine_helpers import xattrs_work_in

import asyncjsoc._resume as resume
from asyncjsoc._resume import RESUME_XATTR, Validator, load_validator, save_validator


@pytest.mark.parametrize("validator", [
    Validator(etag='"2743ec8f3d47b5201221a0ad"', last_modified="Sun, 06 Dec 2026 23:21:29 GMT",
              total=8388608),
    Validator(last_modified="Sun, 06 Dec 2026 23:21:29 GMT", total=0),
    Validator(etag='W/"weak"', last_modified="Sun, 06 Dec 2026 23:21:29 GMT"),
    Validator(etag='"a:b"', total=12),
])
def test_the_attribute_form_is_short_and_keeps_what_resuming_needs(validator: Validator) -> None:
    """Round trip: the If-Range value and the total survive; the form fits in an ext4 inode."""
    raw = validator.to_attribute()
    assert raw is not None
    assert len(raw) <= 56
    back = Validator.from_attribute(raw)
    assert back is not None
    assert (back.if_range(), back.total) == (validator.if_range(), validator.total)


@pytest.mark.parametrize("raw", [b"", b"123", b"12:", b"-1:\"e\"", b"x:\"e\"", b"1:\"\xff\"",
                                 b"1:a\nb", b'{"etag": "\\"e\\"", "total": 1}'])
def test_a_damaged_attribute_reads_as_none(raw: bytes) -> None:
    """Anything not in the attribute form is no validator (the part is then started over)."""
    assert Validator.from_attribute(raw) is None


def test_no_if_range_value_stores_nothing_and_clears_an_earlier_start(tmp_path: Path) -> None:
    """A server that sent neither a strong ETag nor Last-Modified leaves nothing to resume by:
    what an earlier start of the same part stored (attribute or sidecar) is removed."""
    part, meta = tmp_path / "f.part", tmp_path / "f.part.meta"
    part.write_bytes(b"old bytes")
    meta.write_text(Validator(etag='"old"', total=9).to_json())
    if xattrs_work_in(tmp_path):
        os.setxattr(part, RESUME_XATTR, b'9:"old"')
    assert load_validator(part, meta) is not None
    fd = os.open(part, os.O_WRONLY | os.O_TRUNC)
    try:
        save_validator(fd, meta, Validator(etag='W/"weak"'))
    finally:
        os.close(fd)
    assert load_validator(part, meta) is None
    assert not meta.exists()


def test_the_sidecar_is_used_where_attributes_are_not(tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """Without attributes the validator goes to the sidecar (replaced whole), and reads back."""
    monkeypatch.setattr(resume, "_xattrs", False)
    part, meta = tmp_path / "f.part", tmp_path / "f.part.meta"
    validator = Validator(etag='"e"', last_modified="Sun, 06 Dec 2026 23:21:29 GMT", total=5)
    fd = os.open(part, os.O_WRONLY | os.O_CREAT, 0o644)
    try:
        save_validator(fd, meta, validator)
    finally:
        os.close(fd)
    assert Validator.from_json(meta.read_text()) == validator
    assert load_validator(part, meta) == validator
    assert sorted(p.name for p in tmp_path.iterdir()) == ["f.part", "f.part.meta"]
