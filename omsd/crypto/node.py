"""One KafkaCrypto node: its key-exchange clients, and encrypting and decrypting message keys and values.

KafkaCrypto runs a management thread with its own producer and consumer on the sub-topics
``<root>.keys``, ``<root>.reqs`` and ``<root>.subs`` (``root``: the topic name up to its first ``.``):
it answers key requests for what this node encrypted and asks for the keys of what it must decrypt.
Decryption here never waits: a message whose key has not arrived yet comes back as :data:`NOT_YET`,
and the caller (:mod:`omsd.intake.decrypt`) tries it again later, so the supervisor loop keeps polling.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import msgpack

from omsd.crypto.settings import CryptoSettings

# The first deserialize of a new key index would otherwise sleep up to 10 s inside kafkacrypto.
_NO_WAIT_INTERVALS = 1
# librdkafka properties of omsd's config that the key-exchange clients must share (connection, security).
_BROKER_PREFIXES = ("bootstrap.servers", "security.", "sasl.", "ssl.", "client.", "broker.", "socket.")


class CryptoError(RuntimeError):
    """The node cannot be opened (missing or broken files, no broker settings)."""


class NotDecryptable(Exception):
    """The bytes are not a KafkaCrypto message at all: no key will ever open them."""


NOT_YET = None  # decrypt() result while the key has not arrived


def key_index(raw: bytes | None) -> bytes | None:
    """The key index a KafkaCrypto message was encrypted under (None if it is not one)."""
    if not raw or raw[0] != 1:
        return None
    try:
        fields = msgpack.unpackb(raw[1:], raw=True)
    except Exception:  # noqa: BLE001 - not KafkaCrypto's format
        return None
    if not isinstance(fields, list) or len(fields) != 3:
        return None
    index = fields[0]
    return bytes(index) if isinstance(index, (bytes, bytearray)) else str(index).encode()


def _node_file(store: Any, name: str, default: str, folder: Path) -> str:
    """A ``file#`` value of the node config, made absolute against the node's folder (no chdir)."""
    value = store.load_value(name) or default
    value = value[5:] if value.startswith("file#") else value
    path = Path(value)
    return str(path if path.is_absolute() else folder / path)


class CryptoNode:
    """A node opened from :class:`CryptoSettings`; ``close()`` stops its management thread."""

    def __init__(self, settings: CryptoSettings, client_config: dict[str, Any]) -> None:
        """Open the node; ``client_config``: omsd's librdkafka properties (``omsd.kafka.admin_config``),
        whose connection and security settings the key-exchange clients share."""
        try:
            from kafkacrypto import KafkaConsumer, KafkaCrypto, KafkaCryptoStore, KafkaProducer
            from kafkacrypto.cryptokey import CryptoKey
            from kafkacrypto.ratchet import Ratchet
        except (ImportError, OSError) as exc:  # pysodium raises OSError without the libsodium library
            raise CryptoError(f"encrypted topics need the kafkacrypto package and the libsodium library: {exc}") from exc

        self.settings = settings
        folder = settings.config_file.parent
        try:
            self._store = KafkaCryptoStore(str(settings.config_file), conf_global_logger=False)
        except Exception as exc:  # noqa: BLE001 - kafkacrypto raises several kinds
            raise CryptoError(f"cannot open KafkaCrypto node config {settings.config_file}: {exc}") from exc
        logging.getLogger("kafkacrypto").setLevel(
            self._store.load_value("log_level", section="crypto", default=logging.WARNING))
        shared = {k: v for k, v in client_config.items() if k.startswith(_BROKER_PREFIXES)}
        consumer = {**self._store.get_kafka_config("consumer", extra="crypto"), **shared}
        producer = {**self._store.get_kafka_config("producer", extra="crypto"), **shared}
        if not (consumer.get("bootstrap.servers") or consumer.get("bootstrap_servers")):
            self._store.close()
            raise CryptoError(f"{settings.config_file}: no bootstrap servers, in the node config or in 'broker'")
        keytypes = self._store.load_value("keytypes")
        if isinstance(keytypes, int):
            keytypes = [keytypes]
        elif keytypes is not None:
            keytypes = [int(k.strip()) for k in str(keytypes).split(",")]
        try:
            self._key = CryptoKey(file=_node_file(self._store, "cryptokey", f"{settings.node_id}.crypto", folder),
                                  keytypes=keytypes)
            self._seed = Ratchet(file=_node_file(self._store, "ratchet", f"{settings.node_id}.seed", folder))
            self._kp = KafkaProducer(**producer)
            self._kc = KafkaConsumer(**consumer)
            self._crypto = KafkaCrypto(None, self._kp, self._kc, config=self._store, cryptokey=self._key,
                                       seed=self._seed)
        except Exception as exc:  # noqa: BLE001
            self._store.close()
            raise CryptoError(f"cannot start KafkaCrypto node {settings.node_id}: {exc}") from exc
        self._crypto.DESER_INITIAL_WAIT_INTERVALS = _NO_WAIT_INTERVALS
        self._key_ser = self._crypto.getKeySerializer()
        self._value_ser = self._crypto.getValueSerializer()
        self._key_des = self._crypto.getKeyDeserializer()
        self._value_des = self._crypto.getValueDeserializer()
        self._closed = False

    @property
    def node_id(self) -> str:
        return self.settings.node_id

    # -- writing -----------------------------------------------------------------------------------
    def encrypt(self, topic: str, key: bytes | str | None, value: bytes) -> tuple[bytes | None, bytes]:
        """The encrypted key and value of a message for ``topic`` (as OpenMSIStream's producer sends them)."""
        if isinstance(key, str):
            key = key.encode("utf-8")
        try:
            return (self._key_ser.serialize(topic, key) if key is not None else None,
                    self._value_ser.serialize(topic, bytes(value)))
        except Exception as exc:  # noqa: BLE001 - kafkacrypto fails with an UnboundLocalError, for one
            raise CryptoError(f"cannot encrypt for topic {topic!r} with node {self.node_id}: {exc}") from exc

    def serve_keys_for(self, topic: str) -> None:
        """Answer key requests for ``topic`` from now on, including those for this node's earlier keys
        (kafkacrypto starts listening at a topic's first encryption; this encrypts nothing that is sent)."""
        self.encrypt(topic, None, b"")

    # -- reading -----------------------------------------------------------------------------------
    def decrypt(self, topic: str, key: bytes | None, value: bytes | None) -> tuple[bytes | None, bytes] | None:
        """Plain (key, value), or :data:`NOT_YET` while a key is missing; raises :class:`NotDecryptable`."""
        plain_key = None
        if key:
            plain_key = self._open(self._key_des, topic, key)
            if plain_key is NOT_YET:
                return NOT_YET
        if not value:
            raise NotDecryptable("empty value")
        plain_value = self._open(self._value_des, topic, value)
        if plain_value is NOT_YET:
            return NOT_YET
        return plain_key, plain_value

    @staticmethod
    def _open(deserializer: Any, topic: str, raw: bytes) -> bytes | None:
        message = deserializer.deserialize(topic, raw)
        if message.isCleartext(retry=False):
            return bytes(message.getMessage(retry=False))
        if not message.isPossiblyDecryptable():
            raise NotDecryptable("not a KafkaCrypto message")
        return NOT_YET

    def close(self) -> None:
        """Stop the management thread and flush its producer (idempotent)."""
        if self._closed:
            return
        self._closed = True
        try:
            self._crypto.close()  # closes its clients
        finally:
            for closable in (self._seed, self._store):
                try:
                    closable.close()
                except Exception:  # noqa: BLE001 - closing is best effort
                    pass
