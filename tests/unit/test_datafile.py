"""DataFile: the object step functions receive."""

from __future__ import annotations

import hashlib
import io
import os
from pathlib import Path, PurePosixPath

import pytest

from workers.datafile import DataFile


def make(tmp_path: Path, content: bytes, *, trailing: bytes = b"", **kwargs) -> DataFile:
    staged = tmp_path / "omsd-staged"
    staged.write_bytes(content + trailing)
    params = dict(
        staged_path=str(staged), size=len(content), subdir_str="a/b", filename="x.dat",
        file_hash=hashlib.sha512(content).digest(), file_mtime=1_700_000_000.5, topic="raw",
    )
    params.update(kwargs)
    return DataFile(**params)


def test_identity_attributes(tmp_path: Path) -> None:
    df = make(tmp_path, b"hello")
    assert df.filename == "x.dat"
    assert df.subdir_str == "a/b"
    assert df.relative_filepath == "a/b/x.dat"
    assert isinstance(df.relative_filepath, str)
    assert df.relative_path == PurePosixPath("a/b/x.dat")
    assert df.size == 5
    assert df.file_hash == hashlib.sha512(b"hello").digest()
    assert df.check_file_hash == df.file_hash
    assert df.file_mtime == 1_700_000_000.5
    assert df.topic == "raw"
    assert df.full_filepath is None
    assert df.filepath == Path("a/b/x.dat")


def test_root_file_and_unknown_mtime(tmp_path: Path) -> None:
    df = make(tmp_path, b"x", subdir_str="", file_mtime=0.0)
    assert df.relative_filepath == "x.dat"
    assert df.file_mtime is None


def test_filename_append_is_applied_like_openmsistream(tmp_path: Path) -> None:
    df = make(tmp_path, b"x", filename="scan.tar.gz", filename_append="_v2")
    assert df.filename == "scan.tar_v2.gz"
    assert df.original_filename == "scan.tar.gz"
    assert df.relative_filepath == "a/b/scan.tar_v2.gz"


def test_bytestring_reads_only_size_bytes_and_caches(tmp_path: Path) -> None:
    df = make(tmp_path, b"content", trailing=b"GARBAGE")
    first = df.bytestring
    assert first == b"content"
    assert df.bytestring is first
    df.release()
    assert df.bytestring == b"content"
    assert df.bytestring is not first


def test_bytestring_of_empty_file(tmp_path: Path) -> None:
    df = make(tmp_path, b"", trailing=b"junk")
    assert df.bytestring == b""
    assert list(df.iter_blocks()) == []


def test_bytestring_raises_when_staged_file_is_short(tmp_path: Path) -> None:
    df = make(tmp_path, b"abc")
    Path(df.staged_path).write_bytes(b"ab")
    with pytest.raises(OSError, match="expected 3 bytes"):
        _ = df.bytestring


def test_open_is_bounded_and_seekable(tmp_path: Path) -> None:
    df = make(tmp_path, b"0123456789", trailing=b"XXXX")
    with df.open() as handle:
        assert handle.read() == b"0123456789"
        assert handle.read(5) == b""
        assert handle.seek(0, io.SEEK_END) == 10
        handle.seek(3)
        assert handle.read(4) == b"3456"
        assert handle.tell() == 7
        handle.seek(-2, io.SEEK_END)
        assert handle.read(100) == b"89"


def test_iter_blocks(tmp_path: Path) -> None:
    content = os.urandom(10_000)
    df = make(tmp_path, content, trailing=b"tail")
    blocks = list(df.iter_blocks(block=4096))
    assert [len(b) for b in blocks] == [4096, 4096, 1808]
    assert b"".join(blocks) == content
    with pytest.raises(ValueError):
        list(df.iter_blocks(block=0))


def test_content_is_read_from_staging_after_a_save(tmp_path: Path) -> None:
    """A saved copy changes where the file is (filepath), not what its content is read from."""
    df = make(tmp_path, b"staged")
    saved = tmp_path / "saved.dat"
    saved.write_bytes(b"edited")
    df.full_filepath = str(saved)
    assert df.full_filepath == saved
    assert df.filepath == saved
    with df.open() as handle:
        assert handle.read() == b"staged"
    assert df.bytestring == b"staged"


def test_size_must_be_non_negative_int(tmp_path: Path) -> None:
    with pytest.raises(ValueError):
        make(tmp_path, b"x", size=-1)
    with pytest.raises(ValueError):
        make(tmp_path, b"x", size=True)
