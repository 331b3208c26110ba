"""Encrypted uploads: the KafkaCrypto node of ``omsd upload``, and staying up to hand out its keys.

A KafkaCrypto producer hands out the keys of what it sent only while it runs (and each new process
encrypts under a new key). OpenMSIStream's one-shot uploader exits about 1.5 s after its last message,
so a downloader that asks later never gets the keys. ``omsd upload`` therefore keeps its node up for
``--key-linger-secs`` after the last chunk is acknowledged, answering key requests, and says so.
"""

from __future__ import annotations

import signal
import sys
import time

from omsd.config import Config
from omsd.crypto.node import CryptoError, CryptoNode
from omsd.kafka import admin_config
from omsd.upload.console import print_error

DEFAULT_KEY_LINGER_S = 30.0


def open_node(config: Config) -> CryptoNode | None:
    """The node named by the config's kafkacrypto section; raises CryptoError (printed by the caller)."""
    if config.kafkacrypto is None:
        return None
    return CryptoNode(config.kafkacrypto, admin_config(config))


def open_node_or_report(config: Config, topic: str) -> tuple[bool, CryptoNode | None]:
    """(ok, node) for uploads to ``topic``: ok is False after printing why the node cannot be opened."""
    node = None
    try:
        node = open_node(config)
        if node is not None:
            node.serve_keys_for(topic)
        return True, node
    except CryptoError as exc:
        if node is not None:
            node.close()
        print_error(str(exc))
        return False, None


def linger_for_keys(node: CryptoNode, seconds: float, *, quiet: bool) -> None:
    """Answer key requests for ``seconds`` (SIGINT or SIGTERM ends it early)."""
    if seconds <= 0:
        return
    if not quiet:
        print(f"keeping KafkaCrypto node '{node.node_id}' up for {seconds:g}s to answer key requests "
              "(--key-linger-secs; Ctrl-C ends it)", file=sys.stderr, flush=True)
    stop: list[int] = []
    previous = {sig: signal.signal(sig, lambda signum, _frame: stop.append(signum))
                for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        deadline = time.monotonic() + seconds
        while not stop and time.monotonic() < deadline:
            time.sleep(min(0.2, max(0.0, deadline - time.monotonic())))
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
