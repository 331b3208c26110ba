"""Wire compatibility of `omsd upload` with the real OpenMSIStream package, both directions."""

from __future__ import annotations

import os
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from omsd.dev.broker import EmbeddedBroker
from omsd.wire.protocol import chunk_key
from tests.conftest import write_config
from tests.integration.test_upload import TopicReader, has_files, make_tree, omsd_upload, reassemble
from tests.openmsistream_support import openmsistream_ini

pytest.importorskip("openmsistream")

BIN = Path(sys.executable).parent


def openmsistream_config(path: Path, bootstrap: str) -> Path:
    """An OpenMSIStream INI config for the embedded broker."""
    return openmsistream_ini(path, bootstrap, producer={
        "batch.size": 2000000, "linger.ms": 100, "key.serializer": "StringSerializer",
        "value.serializer": "DataFileChunkSerializer"})


def _tree_matches(out: Path, files: dict[str, bytes]) -> bool:
    for rel, data in files.items():
        path = out / rel
        try:
            if not path.is_file() or path.read_bytes() != data:
                return False
        except OSError:
            return False
    return True


def test_openmsistream_downloader_rebuilds_what_omsd_uploaded(broker: EmbeddedBroker, topic: str,
                                                                tmp_path: Path) -> None:
    tree = tmp_path / "tree"
    files = make_tree(tree)
    files["big.bin"] = os.urandom(3 * 524288 + 17)  # several default-size chunks
    (tree / "big.bin").write_bytes(files["big.bin"])
    proc = omsd_upload(tree, "--config", write_config(tmp_path / "omsd.yaml", broker.bootstrap), "--topic", topic)
    assert proc.returncode == 0, proc.stderr

    out = tmp_path / "out"
    out.mkdir()
    ini = openmsistream_config(tmp_path / "omsi.config", broker.bootstrap)
    log = tmp_path / "download.log"
    downloader = subprocess.Popen(
        [str(BIN / "DataFileDownloadDirectory"), str(out), "--config", str(ini), "--topic_name", topic,
         "--consumer_group_id", f"omsi-{uuid.uuid4().hex[:8]}", "--update_seconds", "1"],
        cwd=tmp_path, stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=open(log, "w"))
    try:
        deadline = time.monotonic() + 45
        while not _tree_matches(out, files) and time.monotonic() < deadline:
            assert downloader.poll() is None, log.read_text()[-3000:]
            time.sleep(0.2)
    finally:  # the files are complete on disk; its own shutdown ("q") would take seconds more
        if downloader.poll() is None:
            downloader.kill()
            downloader.wait(10)
    assert _tree_matches(out, files), log.read_text()[-3000:]
    assert (out / "empty.txt").stat().st_size == 0


_UPLOAD_IN_SUBDIR = """
import sys
from pathlib import Path
from openmsistream import UploadDataFile
UploadDataFile(Path(sys.argv[1]), rootdir=Path(sys.argv[2])).upload_whole_file(sys.argv[3], sys.argv[4])
"""


def test_openmsistream_uploads_decode_with_omsd_protocol(broker: EmbeddedBroker, topic: str,
                                                        tmp_path: Path) -> None:
    ini = openmsistream_config(tmp_path / "omsi.config", broker.bootstrap)
    root = tmp_path / "root"
    (root / "sub dir" / "deeper").mkdir(parents=True)
    at_root = root / "root file.bin"
    at_root.write_bytes(os.urandom(2 * 524288 + 999))
    nested = root / "sub dir" / "deeper" / "nested ü.dat"
    nested.write_bytes(os.urandom(1000))

    # The console script, on a file at the upload root.
    proc = subprocess.run([str(BIN / "UploadDataFile"), str(at_root), "--config", str(ini), "--topic_name", topic],
                          cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr[-3000:]
    # The library, on a file two directories below its root directory.
    proc = subprocess.run([sys.executable, "-c", _UPLOAD_IN_SUBDIR, str(nested), str(root), str(ini), topic],
                          cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr[-3000:]

    expected = {"root file.bin": at_root.read_bytes(), "sub dir/deeper/nested ü.dat": nested.read_bytes()}
    reader = TopicReader(broker.bootstrap, topic)
    messages = reader.read_until(has_files(expected), timeout=30)
    reader.close()
    assert reassemble(messages) == expected

    keys = sorted(key for _, key, _ in messages)
    assert keys == sorted(chunk_key(c.subdir_str, c.filename, c.chunk_i, c.n_total_chunks) for _, _, c in messages)
    # What OpenMSIStream really sends: a leading "_" for a file at the root (empty subdir part).
    assert keys == ["_root file.bin_chunk_1_of_3", "_root file.bin_chunk_2_of_3", "_root file.bin_chunk_3_of_3",
                    "sub dir_deeper_nested ü.dat_chunk_1_of_1"]
    for _, _, chunk in messages:
        assert chunk.file_mtime is not None and chunk.filename_append == ""
    assert {c.subdir_str for _, _, c in messages} == {"", "sub dir/deeper"}
