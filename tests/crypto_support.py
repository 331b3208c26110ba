"""Offline KafkaCrypto provisioning for the tests and benchmarks: no network, no prompts, well under a second.

The same steps as kafkacrypto's ``tools/simple-provision.py`` (which OpenMSIStream's ``ProvisionNode``
downloads and runs interactively), with kafkacrypto's own API and fresh random keys:

- an Ed25519 root of trust, and a provisioner key signed by it for ``key-encrypt``,
  ``key-encrypt-request`` and ``key-encrypt-subscribe``;
- per node, in ``<dir>/<node>/``: ``<node>.seed`` (the ratchet), ``<node>.crypto`` (its ``CryptoKey``),
  and ``<node>.config`` written with ``KafkaCryptoStore``: a chain signed by the provisioner for the given
  topics, the root in the allowlist, and the broker settings.

Settings for the embedded Tansu broker live here, not in omsd:

- ``[<node>-kafka] security_protocol: PLAINTEXT`` (KafkaCryptoStore's default is SSL);
- ``[<node>-kafka-crypto-consumer] auto_offset_reset: earliest``: kafkacrypto assigns the key topics at
  offset 0, which librdkafka reads as "committed, else auto.offset.reset" (latest by default); Tansu
  answers that offset look-up in about half a second, so a key reply sent meanwhile was skipped;
- ``CRYPTO_SUB_INTERVAL`` (kafkacrypto asks again for missing keys only this often, 60 s by default)
  is lowered so that a test whose first request went unanswered does not wait a minute.

Kept apart from ``tests/conftest.py`` so the bench scripts can import it without pytest.
"""

from __future__ import annotations

import logging
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import msgpack
import pysodium

LIFETIME_S = 316224000  # ten years, as simple-provision.py
USAGES = ["key-encrypt", "key-encrypt-request", "key-encrypt-subscribe"]  # a producer-and-consumer node


@dataclass(frozen=True)
class Authority:
    """A root of trust and a provisioner key it signed: what provisions nodes that trust each other."""

    root_public: object
    provisioner_secret: object
    rot_message: bytes  # the allowlist entry of the root
    provisioner_chain: bytes  # [root-signed provisioner certificate]


def new_authority() -> Authority:
    """A fresh root key and provisioner key (random, not derived from passwords)."""
    from kafkacrypto.keys import SignPublicKey, SignSecretKey
    from kafkacrypto.utils import msgpack_default_pack

    root_pk, root_sk = pysodium.crypto_sign_keypair()
    root_public, root_secret = SignPublicKey(root_pk), SignSecretKey(root_sk)
    rot_message = msgpack.packb([0, b"\x90", root_public], default=msgpack_default_pack, use_bin_type=True)
    prov_pk, prov_sk = pysodium.crypto_sign_keypair()
    poison = msgpack.packb([["usages", USAGES]], default=msgpack_default_pack, use_bin_type=True)
    certificate = root_secret.crypto_sign(
        msgpack.packb([0, poison, SignPublicKey(prov_pk)], default=msgpack_default_pack, use_bin_type=True))
    return Authority(root_public=root_public, provisioner_secret=SignSecretKey(prov_sk), rot_message=rot_message,
                     provisioner_chain=msgpack.packb([certificate], use_bin_type=True))


def provision_node(authority: Authority, directory: Path, node_id: str, bootstrap: str, *,
                   topics: list[str] | None = None, sub_interval_s: float = 1.0) -> Path:
    """Write ``directory/node_id/node_id.{seed,crypto,config}``; returns the ``.config`` path.

    ``topics`` limits the node's chain to those root topics (``None``: every topic).
    """
    from kafkacrypto import KafkaCryptoStore
    from kafkacrypto.cryptokey import CryptoKey
    from kafkacrypto.ratchet import Ratchet
    from kafkacrypto.utils import msgpack_default_pack

    folder = directory / node_id
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{node_id}.seed").write_bytes(
        msgpack.packb([0, pysodium.randombytes(Ratchet.SECRETSIZE)], use_bin_type=True))
    key = CryptoKey(str(folder / f"{node_id}.crypto"), keytypes=[1])
    index = next(i for i in range(key.get_num_spk()) if key.get_spk(i).same_type(1))
    roots = sorted({t.split(".", 1)[0] for t in topics}) if topics else ["^.*$"]
    poison = msgpack.packb([["usages", USAGES], ["topics", roots], ["pathlen", 1]],
                           default=msgpack_default_pack, use_bin_type=True)
    certificate = authority.provisioner_secret.crypto_sign(msgpack.packb(
        [time.time() + LIFETIME_S, poison, key.get_spk(index)], default=msgpack_default_pack, use_bin_type=True))
    chain = msgpack.packb(msgpack.unpackb(authority.provisioner_chain, raw=False) + [certificate],
                          default=msgpack_default_pack, use_bin_type=True)

    config = folder / f"{node_id}.config"
    store = KafkaCryptoStore(str(config), node_id, conf_global_logger=False)
    try:
        store.store_value("maxage", LIFETIME_S, section="crypto")
        store.store_value(f"chain{index}", chain, section="chains")
        store.store_value(f"rot{index}", authority.rot_message, section="allowlist")
        store.store_value("temporary", None, section="allowlist")  # KafkaCryptoStore's placeholder root
        store.store_value("cryptokey", f"file#{node_id}.crypto")
        store.store_value("ratchet", f"file#{node_id}.seed")
        store.store_value("mgmt_long_keyindex", True)
        store.store_value("CRYPTO_SUB_INTERVAL", sub_interval_s)
        store.store_value("bootstrap_servers", bootstrap, section="kafka")
        store.store_value("security_protocol", "PLAINTEXT", section="kafka")
        store.store_value("auto_offset_reset", "earliest", section="kafka-crypto-consumer")
    finally:
        store.close()
    return config


_KAFKACRYPTO_LOGGERS = ("kafkacrypto", "kafkacrypto.cryptostore", "kafkacrypto.kafkacryptostore",
                        "kafkacrypto.cryptokey", "kafkacrypto.ratchet", "kafkacrypto.utils")


@contextmanager
def _quiet_kafkacrypto():
    """kafkacrypto logs its open config file as an argument; a log record kept by pytest's capture would keep
    that file, and its POSIX lock, alive, and the node could not be opened by another process."""
    loggers = [logging.getLogger(name) for name in _KAFKACRYPTO_LOGGERS]  # created on first use otherwise
    for logger in loggers:
        logger.disabled = True
    try:
        yield
    finally:
        for logger in loggers:
            logger.disabled = False


def provision(directory: Path, node_ids: list[str], bootstrap: str, *, topics: list[str] | None = None,
              sub_interval_s: float = 1.0) -> dict[str, Path]:
    """Provision ``node_ids`` under one new authority (so they trust each other); node → ``.config``."""
    authority = new_authority()
    with _quiet_kafkacrypto():
        return {node: provision_node(authority, directory, node, bootstrap, topics=topics,
                                     sub_interval_s=sub_interval_s) for node in node_ids}
