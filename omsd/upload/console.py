"""What the upload commands (one-shot and ``--watch``) share with their user: error lines and the connection."""

from __future__ import annotations

import argparse
import sys

from confluent_kafka import Producer

from omsd.config import Config
from omsd.upload.engine import UploadError, open_producer


def print_error(message: str) -> None:
    """One error line on stderr, prefixed with the command name."""
    print(f"omsd upload: error: {message}", file=sys.stderr, flush=True)


def connect(config: Config, args: argparse.Namespace) -> tuple[Producer, int | None] | None:
    """The producer and the topic's partition count, or None after printing why the broker is unusable."""
    try:
        producer, partitions, _ = open_producer(config, args.topic, file_affine=args.partitioner == "file",
                                                connect_timeout=args.connect_timeout)
    except UploadError as exc:
        print_error(str(exc))
        return None
    return producer, partitions
