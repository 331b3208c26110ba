"""The ``s3`` step: upload the file to an S3 bucket and verify it there.

``s3: {bucket, prefix?, endpoint_url?, region?, aws_access_key_id?,
aws_secret_access_key?, multipart_threshold?, multipart_chunksize?,
verify?}``. The object key is ``<prefix or topic>/<subdir>/<filename>``, the
key OpenMSIStream's S3TransferStreamProcessor uses (an explicitly empty
prefix puts the file at the bucket root). The upload streams from the saved
or staged file; files of at least ``multipart_threshold`` bytes go up in
parts of ``multipart_chunksize``. Afterwards ``head_object`` must report the
file's size and, with ``verify: etag`` (the default), the ETag S3 computes
from the content: the MD5 for a single-part upload, the MD5 of the part MD5s
followed by ``-<parts>`` for a multipart one. ``verify: size`` checks the
size only (for stores whose ETag is not an MD5, such as SSE-KMS buckets).

boto3 is imported only when the step first runs. Credentials come from the
options when given, else from boto3's usual chain (environment, config
files, instance roles).
"""

from __future__ import annotations

import hashlib
from typing import Any

import structlog

from omsd.wire.paths import safe_relative_path
from workers.datafile import DataFile
from workers.steps.base import Option, OutboundMessage, Step, StepConfigError, StepContext, StepFailed

log = structlog.get_logger(__name__)

MiB = 1024 * 1024
MIN_PART = 5 * MiB
MAX_PART = 5 * 1024 * MiB
MAX_PARTS = 10000
HASH_BLOCK = 8 * MiB


def object_key(prefix: str | None, topic: str, subdir_str: str, filename: str) -> str:
    """``<prefix or topic>/<subdir>/<filename>`` without empty parts (checked for safety)."""
    relative = safe_relative_path(subdir_str, filename)
    head = (topic if prefix is None else prefix).strip("/")
    return f"{head}/{relative}" if head else str(relative)


def part_size_for(size: int, chunksize: int) -> int:
    """The part size boto3's transfer manager really uses for a file of ``size`` bytes."""
    part = chunksize
    while -(-size // part) > MAX_PARTS:
        part *= 2
    return min(max(part, MIN_PART), MAX_PART)


def expected_etag(datafile: DataFile, multipart: bool, part_size: int) -> str:
    """The ETag S3 gives an object with this content, uploaded whole or in parts."""
    if not multipart:
        digest = hashlib.md5()
        for block in datafile.iter_blocks(HASH_BLOCK):
            digest.update(block)
        return digest.hexdigest()
    part_digests = []
    with datafile.open() as handle:
        while True:
            digest = hashlib.md5()
            remaining = part_size
            while remaining:
                block = handle.read(min(HASH_BLOCK, remaining))
                if not block:
                    break
                digest.update(block)
                remaining -= len(block)
            if remaining == part_size and part_digests:
                break
            part_digests.append(digest.digest())
            if remaining:
                break
    return f"{hashlib.md5(b''.join(part_digests)).hexdigest()}-{len(part_digests)}"


class S3Step(Step):
    """``s3: {bucket, ...}`` — upload and verify."""

    kind = "s3"
    OPTIONS = {
        "bucket": Option((str,), required=True),
        "prefix": Option((str,)),
        "endpoint_url": Option((str,)),
        "region": Option((str,)),
        "aws_access_key_id": Option((str,)),
        "aws_secret_access_key": Option((str,)),
        "multipart_threshold": Option((int,), default=64 * MiB, minimum=1),
        "multipart_chunksize": Option((int,), default=64 * MiB, minimum=MIN_PART),
        "verify": Option((str,), default="etag", choices=("etag", "size")),
    }

    def __init__(self, options: dict | None, **kwargs: Any) -> None:
        super().__init__(options, **kwargs)
        if not self.options["bucket"].strip():
            raise StepConfigError(f"{self.where}: option 'bucket' must not be empty")
        if self.options["multipart_chunksize"] > MAX_PART:
            raise StepConfigError(f"{self.where}: option 'multipart_chunksize' must be at most {MAX_PART}")
        has_id = self.options["aws_access_key_id"] is not None
        has_secret = self.options["aws_secret_access_key"] is not None
        if has_id != has_secret:
            raise StepConfigError(
                f"{self.where}: give both 'aws_access_key_id' and 'aws_secret_access_key' or neither"
            )
        self._client: Any = None

    @property
    def client(self) -> Any:
        """The boto3 S3 client, made on first use."""
        if self._client is None:
            import boto3
            from botocore.config import Config

            endpoint = self.options["endpoint_url"]
            if endpoint and not endpoint.startswith(("http://", "https://")):
                endpoint = "https://" + endpoint
            session = boto3.session.Session()
            self._client = session.client(
                "s3",
                endpoint_url=endpoint or None,
                region_name=self.options["region"],
                aws_access_key_id=self.options["aws_access_key_id"],
                aws_secret_access_key=self.options["aws_secret_access_key"],
                config=Config(retries={"max_attempts": 3, "mode": "standard"}, connect_timeout=10, read_timeout=120),
            )
        return self._client

    def key_for(self, datafile: DataFile) -> str:
        """The object key of ``datafile``."""
        return object_key(self.options["prefix"], self.topic, datafile.subdir_str, datafile.filename)

    def run(self, ctx: StepContext) -> list[OutboundMessage]:
        from boto3.s3.transfer import TransferConfig

        datafile = ctx.datafile
        key = self.key_for(datafile)
        bucket = self.options["bucket"]
        threshold = self.options["multipart_threshold"]
        chunksize = self.options["multipart_chunksize"]
        config = TransferConfig(
            multipart_threshold=threshold,
            multipart_chunksize=chunksize,
            max_concurrency=4,
            preferred_transfer_client="classic",
        )
        with datafile.open() as handle:
            self.client.upload_fileobj(handle, bucket, key, Config=config)
        self._verify(datafile, bucket, key, multipart=datafile.size >= threshold,
                     part_size=part_size_for(datafile.size, chunksize))
        ctx.state.setdefault("s3_objects", []).append(f"s3://{bucket}/{key}")
        log.debug("uploaded to s3", bucket=bucket, key=key, size=datafile.size)
        return []

    def _verify(self, datafile: DataFile, bucket: str, key: str, *, multipart: bool, part_size: int) -> None:
        head = self.client.head_object(Bucket=bucket, Key=key)
        length = head.get("ContentLength")
        if length != datafile.size:
            raise StepFailed(f"s3://{bucket}/{key} has {length} bytes after upload, expected {datafile.size}")
        if self.options["verify"] != "etag":
            return
        etag = str(head.get("ETag", "")).strip('"')
        expected = expected_etag(datafile, multipart, part_size)
        if etag != expected:
            raise StepFailed(f"s3://{bucket}/{key} has ETag {etag!r} after upload, expected {expected!r}")
