"""The workers' whole-file sha512: hashed through windows of read-only mappings."""

from __future__ import annotations

import hashlib
import mmap
import os

import pytest

import workers.main as worker
import workers.mapped as mapped


@pytest.mark.parametrize("size", [0, 1, 4095, 4096, 3 * 8192 + 5, 5 * 8192])
def test_file_sha512_across_windows(tmp_path, monkeypatch, size: int) -> None:
    monkeypatch.setattr(mapped, "MAP_WINDOW", 2 * mmap.ALLOCATIONGRANULARITY)
    monkeypatch.setattr(worker, "BLOCK", 3000)  # blocks that do not divide the window
    data = os.urandom(size)
    path = tmp_path / "staged"
    path.write_bytes(data + b"trailing bytes beyond the file are not hashed")
    assert worker.file_sha512(str(path), size) == hashlib.sha512(data).digest()


def test_file_sha512_of_a_short_staging_file_does_not_match(tmp_path) -> None:
    path = tmp_path / "staged"
    path.write_bytes(b"abc")
    hashed = worker.file_sha512(str(path), 10)
    assert hashed == hashlib.sha512(b"abc").digest() != hashlib.sha512(b"abc" + bytes(7)).digest()
