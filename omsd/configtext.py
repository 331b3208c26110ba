"""Reading configuration text: errors, sizes, ``${VAR}`` expansion and YAML that remembers its lines.

The leaf under :mod:`omsd.config`: nothing here knows the configuration's keys.
"""

from __future__ import annotations

import os
import re
from typing import Any

import yaml

_ENV_RE = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")
_SIZE_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([KMGT]i?B?|B)?\s*$", re.IGNORECASE)
_SIZE_UNITS = {"": 1, "b": 1, "k": 1000, "kb": 1000, "m": 10**6, "mb": 10**6, "g": 10**9, "gb": 10**9,
               "t": 10**12, "tb": 10**12, "ki": 1 << 10, "kib": 1 << 10, "mi": 1 << 20, "mib": 1 << 20,
               "gi": 1 << 30, "gib": 1 << 30, "ti": 1 << 40, "tib": 1 << 40}


class ConfigError(ValueError):
    """A configuration problem, with the file and line where it was found."""


def parse_size(value: Any, where: str) -> int:
    """``512MiB``, ``2GB``, ``1048576`` → bytes."""
    if isinstance(value, bool):
        raise ConfigError(f"{where}: expected a size, got {value!r}")
    if isinstance(value, int):
        if value < 0:
            raise ConfigError(f"{where}: a size cannot be negative, got {value}")
        return value
    match = _SIZE_RE.match(str(value))
    if not match:
        raise ConfigError(f"{where}: cannot read size {value!r} (use e.g. 512MiB, 2GB or a byte count)")
    unit = (match.group(2) or "").lower()
    return int(float(match.group(1)) * _SIZE_UNITS[unit])


def expand_env(text: str) -> str:
    """Expand ``${VAR}`` and ``${VAR:-default}``; an unset VAR without default is an error."""

    def repl(match: re.Match[str]) -> str:
        name, default = match.group(1), match.group(2)
        value = os.environ.get(name)
        if default is not None and not value:  # as in the shell: unset or empty takes the default
            return default
        if value is not None:
            return value
        raise ConfigError(f"environment variable {name} is not set and has no default")

    return _ENV_RE.sub(repl, text)


class LineDict(dict):
    """A mapping that remembers the line of each key (1-based)."""

    line: int = 0
    key_lines: dict[Any, int]


class LineLoader(yaml.SafeLoader):
    """A safe YAML loader whose mappings are :class:`LineDict`."""


def _construct_mapping(loader: LineLoader, node: yaml.MappingNode) -> LineDict:
    result = LineDict(loader.construct_mapping(node, deep=True))
    result.line = node.start_mark.line + 1
    result.key_lines = {k.value: k.start_mark.line + 1 for k, _ in node.value if hasattr(k, "value")}
    return result


LineLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)


def expand_tree(node: Any, name: str, line: int = 0) -> Any:
    """Expand ``${VAR}`` in every string of a parsed tree; errors name ``name:line``."""
    if isinstance(node, str):
        try:
            return expand_env(node)
        except ConfigError as exc:
            raise ConfigError(f"{name}:{line}: {exc}" if line else f"{name}: {exc}") from None
    if isinstance(node, LineDict):
        out = LineDict({k: expand_tree(v, name, node.key_lines.get(k, node.line)) for k, v in node.items()})
        out.line, out.key_lines = node.line, node.key_lines
        return out
    if isinstance(node, dict):
        return {k: expand_tree(v, name, line) for k, v in node.items()}
    if isinstance(node, list):
        return [expand_tree(v, name, line) for v in node]
    return node
