"""Configuration for OpenMSIStream-style programs: INI/YAML files, [s3] settings, class specs."""

from __future__ import annotations

import configparser
import os
import re
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from omsd.config import Config


# -- configuration ----------------------------------------------------------------------------------
def _expand_ini_value(value: str, where: str) -> str:
    if not value.startswith("$"):
        return value
    name = value[1:].strip("{}")
    if name not in os.environ:
        raise ValueError(f"{where}: environment variable {name} is not set")
    return os.environ[name]


def s3_settings(config_path: str | os.PathLike[str] | None) -> dict[str, str]:
    """The ``[s3]`` section of an OpenMSIStream INI file (``$VAR`` values expanded); {} if none."""
    if config_path is None:
        return {}
    path = Path(config_path)
    text = path.read_text(encoding="utf-8")
    from omsd.config import looks_like_ini

    if not looks_like_ini(path, text):
        return {}
    parser = configparser.ConfigParser(interpolation=None)
    parser.read_string(text, source=str(path))
    if not parser.has_section("s3"):
        return {}
    return {key: _expand_ini_value(value, f"{path}[s3] {key}") for key, value in parser.items("s3")}


def load_compat_config(path: str | os.PathLike[str]) -> Config:
    """An omsd config from YAML or OpenMSIStream INI; an INI ``[s3]`` section is left to the S3 class."""
    from omsd.config import ConfigError, config_from_ini, load_config, looks_like_ini

    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read the configuration: {exc.strerror}") from None
    if not looks_like_ini(path, text):
        return load_config(path)
    parser = configparser.ConfigParser(interpolation=None)
    try:
        parser.read_string(text, source=str(path))
    except configparser.Error as exc:
        raise ConfigError(f"{path}: {exc}") from None
    if not parser.has_section("s3"):
        return load_config(path)
    parser.remove_section("s3")
    lines = []
    for section in parser.sections():
        lines.append(f"[{section}]")
        lines += [f"{key} = {value}" for key, value in parser.items(section)]
    return config_from_ini("\n".join(lines) + "\n", path)


def class_spec(cls: type) -> str:
    """``module:QualName`` of ``cls``, importable in a spawned worker.

    A class defined in a program run as ``python -m pkg.mod`` (or as a
    script) lives in ``__main__``; its real module name is recovered from the
    module's spec (or the script's file name).
    """
    module_name = cls.__module__
    if module_name in ("__main__", "__mp_main__"):
        main = sys.modules[module_name]
        spec = getattr(main, "__spec__", None)
        if spec is not None and spec.name and spec.name not in ("__main__", "__mp_main__"):
            module_name = spec.name
        else:
            filename = getattr(main, "__file__", None)
            if not filename:
                raise ValueError(f"{cls.__qualname__} is defined in an interactive session; "
                                 "define it in a module workers can import")
            script = Path(filename).resolve()
            if str(script.parent) not in [str(Path(p or ".").resolve()) for p in sys.path]:
                sys.path.insert(0, str(script.parent))  # spawned workers inherit sys.path
            module_name = script.stem
    return f"{module_name}:{cls.__qualname__}"


def _anchored(regex: Any) -> str | None:
    """OpenMSIStream matches ``filepath_regex`` at the start of the path (``re.match``)."""
    if regex is None:
        return None
    pattern = regex.pattern if isinstance(regex, re.Pattern) else str(regex)
    flags = re.match(r"^\(\?[aiLmsux]+\)", pattern)
    head = flags.group(0) if flags else ""
    return rf"{head}\A(?:{pattern[len(head):]})"
