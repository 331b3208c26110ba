"""Encrypted topics with KafkaCrypto, as OpenMSIStream uses them (supervisor side and uploader only).

:mod:`omsd.crypto.settings` reads the ``kafkacrypto`` section of a config (no kafkacrypto import);
:mod:`omsd.crypto.node` owns a node's KafkaCrypto instance: its key-exchange clients, serializers and
deserializers. Workers never import either.
"""
