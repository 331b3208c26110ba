"""The s3 step against moto's S3 server over real HTTP."""

from __future__ import annotations

import hashlib
import os
import socket
import uuid
from pathlib import Path

import boto3
import pytest

from tests.unit.conftest import S3_CREDENTIALS
from workers.datafile import DataFile
from workers.steps import build_step
from workers.steps.base import StepContext, StepFailed
from workers.steps.s3 import MiB, expected_etag, object_key, part_size_for


def make_datafile(tmp_path: Path, content: bytes, *, subdir: str = "run1", filename: str = "f.bin") -> DataFile:
    staged = tmp_path / f"omsd-{uuid.uuid4().hex}"
    staged.write_bytes(content + b"STAGING-TAIL")
    return DataFile(staged_path=str(staged), size=len(content), subdir_str=subdir, filename=filename,
                    file_hash=hashlib.sha512(content).digest(), file_mtime=None, topic="raw_files")


@pytest.fixture
def bucket(s3_endpoint: str) -> str:
    name = f"omsd-{uuid.uuid4().hex[:12]}"
    client(s3_endpoint).create_bucket(Bucket=name)
    return name


def client(endpoint: str):
    return boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1",
                        aws_access_key_id="testing", aws_secret_access_key="testing")


def s3_step(endpoint: str, bucket: str, **extra):
    options = {"bucket": bucket, "endpoint_url": endpoint, **S3_CREDENTIALS, **extra}
    return build_step("s3", options, pipeline="p", topic="raw_files")


def read_back(endpoint: str, bucket: str, key: str) -> bytes:
    return client(endpoint).get_object(Bucket=bucket, Key=key)["Body"].read()


def test_object_key_matches_openmsistream() -> None:
    # S3TransferStreamProcessor: f'{topic}{"/" if sub_dir!="" else ""}{sub_dir}/{filename}'
    for sub_dir in ("", "a", "a/b"):
        expected = f'raw{"/" if sub_dir != "" else ""}{sub_dir}/f.bin'
        assert object_key(None, "raw", sub_dir, "f.bin") == expected
    assert object_key("lab/", "raw", "", "f.bin") == "lab/f.bin"
    assert object_key("", "raw", "a", "f.bin") == "a/f.bin"


def test_single_part_upload(tmp_path: Path, s3_endpoint: str, bucket: str) -> None:
    content = os.urandom(100_000)
    df = make_datafile(tmp_path, content)
    ctx = StepContext(datafile=df, pipeline="p", topic="raw_files", state={})
    assert s3_step(s3_endpoint, bucket).run(ctx) == []
    assert read_back(s3_endpoint, bucket, "raw_files/run1/f.bin") == content
    head = client(s3_endpoint).head_object(Bucket=bucket, Key="raw_files/run1/f.bin")
    assert head["ETag"].strip('"') == hashlib.md5(content).hexdigest()
    assert ctx.state["s3_objects"] == [f"s3://{bucket}/raw_files/run1/f.bin"]


def test_root_file_and_prefix(tmp_path: Path, s3_endpoint: str, bucket: str) -> None:
    df = make_datafile(tmp_path, b"root file", subdir="")
    s3_step(s3_endpoint, bucket, prefix="lab1").run(StepContext(df, "p", "raw_files", {}))
    assert read_back(s3_endpoint, bucket, "lab1/f.bin") == b"root file"


def test_empty_file(tmp_path: Path, s3_endpoint: str, bucket: str) -> None:
    df = make_datafile(tmp_path, b"")
    s3_step(s3_endpoint, bucket).run(StepContext(df, "p", "raw_files", {}))
    assert read_back(s3_endpoint, bucket, "raw_files/run1/f.bin") == b""


def test_multipart_upload(tmp_path: Path, s3_endpoint: str, bucket: str) -> None:
    content = os.urandom(11 * MiB + 12345)
    df = make_datafile(tmp_path, content, subdir="big/one")
    step = s3_step(s3_endpoint, bucket, multipart_threshold=6 * MiB, multipart_chunksize=5 * MiB)
    step.run(StepContext(df, "p", "raw_files", {}))
    key = "raw_files/big/one/f.bin"
    assert read_back(s3_endpoint, bucket, key) == content
    etag = client(s3_endpoint).head_object(Bucket=bucket, Key=key)["ETag"].strip('"')
    assert etag.endswith("-3")
    assert etag == expected_etag(df, True, 5 * MiB)


def test_verification_detects_a_different_object(tmp_path: Path, s3_endpoint: str, bucket: str) -> None:
    df = make_datafile(tmp_path, b"the real content")
    step = s3_step(s3_endpoint, bucket)
    client(s3_endpoint).put_object(Bucket=bucket, Key="raw_files/run1/f.bin", Body=b"the fake content")
    with pytest.raises(StepFailed, match="ETag"):
        step._verify(df, bucket, "raw_files/run1/f.bin", multipart=False, part_size=5 * MiB)
    client(s3_endpoint).put_object(Bucket=bucket, Key="raw_files/run1/f.bin", Body=b"short")
    with pytest.raises(StepFailed, match="5 bytes"):
        step._verify(df, bucket, "raw_files/run1/f.bin", multipart=False, part_size=5 * MiB)


def test_missing_bucket_fails(tmp_path: Path, s3_endpoint: str) -> None:
    df = make_datafile(tmp_path, b"x")
    with pytest.raises(Exception, match="NoSuchBucket|does not exist"):
        s3_step(s3_endpoint, "omsd-no-such-bucket").run(StepContext(df, "p", "raw_files", {}))


def test_endpoint_down_fails(tmp_path: Path) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    df = make_datafile(tmp_path, b"x")
    step = s3_step(f"http://127.0.0.1:{port}", "bucket")
    with pytest.raises(Exception, match="(?i)connect"):
        step.run(StepContext(df, "p", "raw_files", {}))


def test_part_size_follows_boto3_adjustment() -> None:
    from s3transfer.utils import ChunksizeAdjuster

    adjuster = ChunksizeAdjuster()
    for size, chunk in [(10, 5 * MiB), (100 * 1024 * MiB, 5 * MiB), (3 * 1024**4, 8 * MiB), (MiB, 64 * MiB)]:
        assert part_size_for(size, chunk) == adjuster.adjust_chunksize(chunk, size)


@pytest.mark.parametrize("size,parts", [(8, 2), (9, 3), (4, 1), (1, 1)])
def test_expected_multipart_etag(tmp_path: Path, size: int, parts: int) -> None:
    content = os.urandom(size)
    df = make_datafile(tmp_path, content)
    pieces = [content[i:i + 4] for i in range(0, size, 4)]
    manual = hashlib.md5(b"".join(hashlib.md5(p).digest() for p in pieces)).hexdigest()
    assert expected_etag(df, True, 4) == f"{manual}-{parts}"
    assert expected_etag(df, False, 4) == hashlib.md5(content).hexdigest()
