"""Hostile messages interleaved with good files: rejected, counted, logged; good files unharmed."""

from __future__ import annotations

import hashlib
import random

import msgpack
import pytest

from omsd.control.client import ControlClient
from omsd.wire.protocol import encode_chunk
from tests.chunks import chunk_messages, produce, start_daemon, stop_daemon, tree, wait_for
from tests.conftest import pipeline, write_config


def chunk_value(**overrides) -> bytes:
    """One encoded chunk message of a small valid file, with ``overrides`` of its fields."""
    data = overrides.pop("data", b"payload")
    fields = dict(filename="x.bin", file_hash=hashlib.sha512(data).digest(), data=data, offset=0, chunk_i=1,
                  n_total_chunks=1, subdir_str="")
    fields.update(overrides)
    return encode_chunk(**fields)


def hostile_messages() -> list[tuple[str, bytes | None, str]]:
    """(key, value, expected rejection reason)."""
    good_hash = hashlib.sha512(b"payload").digest()
    ten = ["x.bin", good_hash, good_hash, 0, 1, 1, "", "", b"payload", 0.0]
    return [
        ("garbage", b"\x00\xffnot msgpack at all\xc1", "undecodable"),
        ("empty", b"", "empty"),
        ("tombstone", None, "empty"),
        ("eight", msgpack.packb(ten[:8], use_bin_type=True), "bad_shape"),
        ("eleven", msgpack.packb(ten + [1], use_bin_type=True), "bad_shape"),
        ("a-map", msgpack.packb({"filename": "x"}, use_bin_type=True), "bad_shape"),
        ("str-offset", msgpack.packb(ten[:3] + ["0"] + ten[4:], use_bin_type=True), "bad_field"),
        ("dotdot-subdir", chunk_value(subdir_str="../../escape"), "unsafe_path"),
        ("dotdot-name", chunk_value(filename=".."), "unsafe_path"),
        ("absolute", chunk_value(subdir_str="/etc"), "unsafe_path"),
        ("nul", chunk_value(filename="a\x00b"), "unsafe_path"),
        ("backslash", chunk_value(subdir_str="a\\..\\..\\b"), "unsafe_path"),
        ("absurd-n", chunk_value(n_total_chunks=10**15), "too_large"),
        ("absurd-offset", chunk_value(offset=2**55, n_total_chunks=3), "too_large"),
        ("i-beyond-n", chunk_value(chunk_i=5, n_total_chunks=3), "bad_range"),
    ]


def corrupted_file() -> list[tuple[str, bytes]]:
    """A two-chunk file whose second chunk was damaged after it was hashed (bit rot in a producer)."""
    data = bytes(range(256)) * 200
    file_hash = hashlib.sha512(data).digest()
    first, second = data[:25_600], bytearray(data[25_600:])
    second[100] ^= 0xFF
    return [("rot_1", encode_chunk(filename="rotten.bin", file_hash=file_hash, data=first, offset=0, chunk_i=1,
                                   n_total_chunks=2)),
            ("rot_2", encode_chunk(filename="rotten.bin", file_hash=file_hash, data=bytes(second), offset=25_600,
                                   chunk_i=2, n_total_chunks=2, chunk_hash=hashlib.sha512(data[25_600:]).digest()))]


@pytest.mark.parametrize("verify", ["on_mismatch", "at_intake"])
def test_hostile_input_is_rejected_and_good_files_survive(broker, topic, tmp_path, verify) -> None:
    out = tmp_path / "out"
    cfg = write_config(tmp_path / "omsd.yaml", broker.bootstrap, pipeline("mirror", topic, f"save: {{dir: {out}}}"),
                       workers=2, extra=f"staging: {{verify_chunk_hashes: {verify}}}\n")
    rng = random.Random(11)
    good = {f"good/file_{i}.bin": rng.randbytes(rng.randint(1000, 200_000)) for i in range(6)}
    bad_file = rng.randbytes(50_000)
    wrong_hash = hashlib.sha512(b"not the content").digest()
    corrupt = [(f"corrupt_{i}", encode_chunk(filename="corrupt.bin", file_hash=wrong_hash,
                                                data=bad_file[o:o + 20_000], offset=o, chunk_i=i, n_total_chunks=3))
               for i, o in enumerate(range(0, 50_000, 20_000), start=1)]
    hostile = hostile_messages()
    messages: list[tuple[str | None, bytes | None, int | None]] = []
    for rel, data in good.items():
        messages += [(k, v, 0) for k, v in chunk_messages(rel, data, chunk_size=32_000)]
    messages += [(k, v, 0) for k, v, _ in hostile] + [(k, v, 0) for k, v in corrupt + corrupted_file()]
    rng.shuffle(messages)
    produce(broker.bootstrap, topic, messages)

    log = tmp_path / "daemon.log"
    proc = start_daemon(["run", "--config", str(cfg)], log)
    sock = tmp_path / "state" / "omsd.sock"
    try:
        wait_for(lambda: out.exists() and tree(out) == good, 60, "good files saved", proc, log)
        client = ControlClient(sock)
        expected: dict[str, int] = {"chunk_hash_mismatch": 1}  # the damaged chunk of rotten.bin
        for _k, _v, reason in hostile:
            expected[reason] = expected.get(reason, 0) + 1
        wait_for(lambda: sum(client.request("status")["rejected"].values()) >= sum(expected.values()), 30,
                 "every rejection counted", proc, log)
        status = client.request("status")
        assert status["rejected"] == expected
        wait_for(lambda: any(f["path"] == "corrupt.bin" for f in client.request("failed")["files"]), 30,
                 "the corrupt file recorded as failed", proc, log)
        assert client.request("check")["healthy"] is True
    finally:
        assert stop_daemon(proc) == 0
    # Nothing was written anywhere but the output and state directories.
    assert sorted(p.name for p in tmp_path.iterdir()) == ["daemon.log", "omsd.yaml", "out", "state"]
    assert not (out / "corrupt.bin").exists() and not (out / "rotten.bin").exists()
    text = log.read_text()
    assert "rejected message" in text and '"offset"' in text or "offset=" in text
