"""The ``kafkacrypto`` section: which KafkaCrypto node encrypts and decrypts, and how long to wait for keys.

As in OpenMSIStream: ``node_id: NAME`` names the folder ``NAME/`` beside the config file holding
``NAME.config`` (with ``NAME.crypto`` and ``NAME.seed``), or ``config_file: PATH`` points at a node's
``.config`` (relative to the config file's folder; a ``file#`` prefix is accepted).
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

# OpenMSIStream's downloader waits this long for the keys of the first message, then this long for later ones.
DEFAULT_MAX_INITIAL_WAIT_S = 60.0
DEFAULT_MAX_WAIT_S = 5.0
# How often kept undecryptable messages are tried again by themselves (keys may have arrived since).
DEFAULT_RETRY_UNDECRYPTABLE_S = 60.0

KEYS = {"node_id", "config_file", "max_initial_wait_per_decrypt", "max_wait_per_decrypt",
        "treat_undecryptable_as_plaintext", "retry_undecryptable_secs"}


class CryptoSettingsError(ValueError):
    """The section is incomplete or names a node that is not there."""


@dataclass(frozen=True)
class CryptoSettings:
    """A resolved ``kafkacrypto`` section."""

    config_file: Path  # the node's KafkaCrypto .config
    max_initial_wait_s: float = DEFAULT_MAX_INITIAL_WAIT_S
    max_wait_s: float = DEFAULT_MAX_WAIT_S
    treat_undecryptable_as_plaintext: bool = False
    retry_undecryptable_s: float = DEFAULT_RETRY_UNDECRYPTABLE_S

    @property
    def node_id(self) -> str:
        return self.config_file.stem


def _number(section: dict[str, Any], key: str, default: float) -> float:
    raw = section.get(key)
    if raw is None or raw == "":
        return default
    try:
        if isinstance(raw, bool):
            raise ValueError
        value = float(raw)
    except (TypeError, ValueError):
        raise CryptoSettingsError(f"'{key}' must be a number of seconds, got {raw!r}") from None
    if value < 0:
        raise CryptoSettingsError(f"'{key}' cannot be negative")
    return value


def _flag(section: dict[str, Any], key: str) -> bool:
    raw = section.get(key, False)
    if isinstance(raw, bool):
        return raw
    if str(raw).strip().lower() in ("1", "true", "yes", "on"):
        return True
    if str(raw).strip().lower() in ("", "0", "false", "no", "off"):
        return False
    raise CryptoSettingsError(f"'{key}' must be true or false, got {raw!r}")


def resolve(section: dict[str, Any], base_dir: Path) -> CryptoSettings:
    """Settings from the section's values; node paths are relative to ``base_dir`` (the config's folder)."""
    unknown = sorted(set(map(str, section)) - KEYS)
    if unknown:
        raise CryptoSettingsError(f"unknown key '{unknown[0]}' (allowed: {', '.join(sorted(KEYS))})")
    node_id = section.get("node_id")
    config_file = section.get("config_file")
    if bool(node_id) == bool(config_file):
        raise CryptoSettingsError("give exactly one of 'node_id' (a node folder beside the config file) "
                                  "or 'config_file' (a node's .config)")
    if config_file:
        text = str(config_file)
        path = Path(text[5:] if text.startswith("file#") else text)
        path = path if path.is_absolute() else base_dir / path
    else:
        path = base_dir / str(node_id) / f"{node_id}.config"
    if not path.is_file():
        raise CryptoSettingsError(f"no KafkaCrypto node config at {path} (provision the node first)")
    return CryptoSettings(
        config_file=path.resolve(),
        max_initial_wait_s=_number(section, "max_initial_wait_per_decrypt", DEFAULT_MAX_INITIAL_WAIT_S),
        max_wait_s=_number(section, "max_wait_per_decrypt", DEFAULT_MAX_WAIT_S),
        treat_undecryptable_as_plaintext=_flag(section, "treat_undecryptable_as_plaintext"),
        retry_undecryptable_s=_number(section, "retry_undecryptable_secs", DEFAULT_RETRY_UNDECRYPTABLE_S),
    )


def read_section(section: dict[str, Any] | None, config_path: Path | None, where: str,
                 error: type[Exception] = CryptoSettingsError) -> CryptoSettings | None:
    """The settings of a config file's section (None when absent); problems raise ``error`` naming ``where``."""
    if section is None or section == {}:
        return None
    if not isinstance(section, dict):
        raise error(f"{where}: 'kafkacrypto' must be a mapping")
    try:
        return resolve(section, config_path.parent if config_path else Path.cwd())
    except CryptoSettingsError as exc:
        raise error(f"{where}: kafkacrypto: {exc}") from None


def add_decrypt_arguments(parser: argparse.ArgumentParser) -> None:
    """OpenMSIStream's downloader options for encrypted topics (they override the kafkacrypto section)."""
    parser.add_argument("--max_wait_per_decrypt", "--max-wait-per-decrypt", dest="max_wait_per_decrypt", type=float,
                        default=None, metavar="S", help="encrypted topics: seconds each message waits for its key "
                                                        f"at least (default {DEFAULT_MAX_WAIT_S:g})")
    parser.add_argument("--max_initial_wait_per_decrypt", "--max-initial-wait-per-decrypt",
                        dest="max_initial_wait_per_decrypt", type=float, default=None, metavar="S",
                        help="encrypted topics: seconds the messages under a new key wait for it "
                             f"(default {DEFAULT_MAX_INITIAL_WAIT_S:g})")
    parser.add_argument("--treat_undecryptable_as_plaintext", "--treat-undecryptable-as-plaintext",
                        dest="treat_undecryptable_as_plaintext", action="store_true", default=None,
                        help="encrypted topics: pass messages that are not KafkaCrypto messages on as plain")


def decrypt_overrides(settings: CryptoSettings | None, args: argparse.Namespace,
                      error: type[Exception] = CryptoSettingsError) -> CryptoSettings | None:
    """``settings`` with the options of :func:`add_decrypt_arguments` that were given."""
    given = {field: getattr(args, option) for option, field in (
        ("max_wait_per_decrypt", "max_wait_s"), ("max_initial_wait_per_decrypt", "max_initial_wait_s"),
        ("treat_undecryptable_as_plaintext", "treat_undecryptable_as_plaintext"))
        if getattr(args, option, None) is not None}
    if not given:
        return settings
    if settings is None:
        raise error("--max_wait_per_decrypt and its kin need a kafkacrypto section in the config file")
    if any(isinstance(v, float) and v < 0 for v in given.values()):
        raise error("decrypt waits cannot be negative")
    return replace(settings, **given)
