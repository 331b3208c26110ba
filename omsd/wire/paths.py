"""Path safety for file names that arrive over the wire.

Stdlib only: imported by both the supervisor and the worker processes.
A relative path from a message is accepted only if it is made of plain
name components; anything that could leave an output directory is refused.
"""

from __future__ import annotations

import functools
import os
import stat
from pathlib import Path, PurePosixPath
from typing import NamedTuple

MAX_PATH_BYTES = 4096
MAX_COMPONENT_BYTES = 255


class UnsafePathError(ValueError):
    """A subdirectory or file name that could escape its output root."""


def _check_component(part: str, what: str) -> None:
    if part in ("", ".", ".."):
        raise UnsafePathError(f"{what} has an empty, '.' or '..' component")
    if "\x00" in part:
        raise UnsafePathError(f"{what} contains a NUL byte")
    if "\\" in part:
        raise UnsafePathError(f"{what} contains a backslash")
    if len(part.encode("utf-8", "surrogatepass")) > MAX_COMPONENT_BYTES:
        raise UnsafePathError(f"{what} has a component longer than {MAX_COMPONENT_BYTES} bytes")


def safe_relative_path(subdir_str: str, filename: str) -> PurePosixPath:
    """Return ``subdir_str/filename`` as a relative posix path, or raise UnsafePathError.

    ``subdir_str`` may be empty (a file at the upload root); otherwise it is a
    ``/``-separated list of plain directory names. ``filename`` is one plain name.
    """
    return PurePosixPath(*safe_parts(subdir_str, filename))


def safe_parts(subdir_str: str, filename: str) -> tuple[str, ...]:
    """The components of ``subdir_str/filename`` once proven plain: what :func:`safe_relative_path`
    checks, without building a path."""
    if not isinstance(subdir_str, str) or not isinstance(filename, str):
        raise UnsafePathError("subdir_str and filename must be strings")
    if "/" in filename:
        raise UnsafePathError("filename contains '/'")
    _check_component(filename, "filename")
    parts = (*_checked_subdir(subdir_str), filename)
    if len("/".join(parts).encode("utf-8", "surrogatepass")) > MAX_PATH_BYTES:
        raise UnsafePathError(f"path longer than {MAX_PATH_BYTES} bytes")
    return parts


@functools.lru_cache(maxsize=1024)
def _checked_subdir(subdir_str: str) -> tuple[str, ...]:
    """The components of a safe ``subdir_str`` (remembered: many files share a subdirectory)."""
    if subdir_str == "":
        return ()
    if subdir_str.startswith("/"):
        raise UnsafePathError("subdir_str is absolute")
    parts = tuple(subdir_str.split("/"))
    for part in parts:
        _check_component(part, "subdir_str")
    return parts


def safe_path_under(root: os.PathLike[str] | str, subdir_str: str, filename: str) -> Path:
    """``root/subdir_str/filename``, refused (UnsafePathError) like :func:`safe_relative_path` and
    :func:`resolve_under` together would refuse it."""
    return _resolve_parts(root, safe_parts(subdir_str, filename))


class Located(NamedTuple):
    """Where a file goes under a root (see :func:`locate_under`), with what the check saw on the way.

    ``parent_is_dir`` and ``target_is_dir``: what the ``lstat`` of the target's directory and of the
    target itself showed (no symlinks were among them); None where the check did not look (the
    directory is the root itself, or symlinks under the root had to be resolved).
    """

    path: str
    parent_is_dir: bool | None
    target_is_dir: bool | None


def locate_under(root: os.PathLike[str] | str, subdir_str: str, filename: str) -> Located:
    """:func:`safe_path_under` as a string, for the per-file path of the workers' steps: no
    :class:`~pathlib.Path` objects, and the modes its check saw, so that the caller needs no
    further ``stat`` to know whether the directory exists and whether a directory is in the way."""
    return _locate(root, safe_parts(subdir_str, filename))


_RESOLVED_ROOTS: dict[str, Path] = {}
_RESOLVED_ROOTS_MAX = 64


def _resolved_root(root: os.PathLike[str] | str) -> Path:
    """``root`` with its symlinks resolved, remembered for an absolute root that is an existing directory.

    A root is resolved once per process: an output directory replaced by a symlink later keeps
    receiving files at the real directory it named at first (never somewhere new).
    """
    key = os.fspath(root)
    cached = _RESOLVED_ROOTS.get(key)
    if cached is not None:
        return cached
    resolved = Path(key).resolve()
    if os.path.isabs(key) and os.path.isdir(resolved) and len(_RESOLVED_ROOTS) < _RESOLVED_ROOTS_MAX:
        _RESOLVED_ROOTS[key] = resolved
    return resolved


_MISSING = -1  # the mode of a component that does not exist


def _plain_walk(root_resolved: Path, parts: tuple[str, ...]) -> Located | None:
    """``root_resolved/parts`` (at least one part) if no existing component under the root is a
    symlink, else None.

    ``root_resolved`` has no symlinks and the parts are plain names, so the join is then exactly
    what ``realpath`` would give, for one ``lstat`` per existing component under the root.
    """
    base = os.fspath(root_resolved).rstrip("/")  # absolute and normalised ("" for "/"): joined by hand
    joined = "/".join((base, *parts))
    current = base
    modes = []
    for part in parts:
        current = f"{current}/{part}"
        try:
            mode = os.lstat(current).st_mode
        except FileNotFoundError:
            modes.append(_MISSING)
            break  # nothing below a missing component exists: no symlink left to follow
        except OSError:
            return None  # let realpath decide what this means
        if stat.S_ISLNK(mode):
            return None
        modes.append(mode)
    modes += [_MISSING] * (len(parts) - len(modes))
    parent_is_dir = None if len(parts) < 2 else modes[-2] != _MISSING and stat.S_ISDIR(modes[-2])
    target_is_dir = modes[-1] != _MISSING and stat.S_ISDIR(modes[-1])
    return Located(joined, parent_is_dir, target_is_dir)


def resolve_under(root: os.PathLike[str] | str, relative: PurePosixPath | str) -> Path:
    """Join ``relative`` under ``root`` and prove the result stays inside ``root``.

    Symlinks already present under ``root`` are resolved, so a link pointing
    outside the root is refused as well.
    """
    rel = PurePosixPath(relative)
    if rel.is_absolute():
        raise UnsafePathError("path is absolute")
    for part in rel.parts:
        _check_component(part, "path")
    return _resolve_parts(root, rel.parts)


def _resolve_parts(root: os.PathLike[str] | str, parts: tuple[str, ...]) -> Path:
    """``root/parts`` (plain components) with the symlinks under ``root`` resolved; refused outside it."""
    return Path(_locate(root, parts).path)


def _locate(root: os.PathLike[str] | str, parts: tuple[str, ...]) -> Located:
    """What :func:`_resolve_parts` finds, with the modes the walk saw when no symlink had to be resolved."""
    shown = "/".join(parts)
    try:
        root_resolved = _resolved_root(root)
        found = _plain_walk(root_resolved, parts) if parts else None
        if found is not None:
            return found
        target = (root_resolved / Path(*parts)).resolve()
    except (OSError, RuntimeError, ValueError) as exc:  # symlink loop, unencodable name
        raise UnsafePathError(f"path {shown!r} cannot be resolved under {str(root)!r}: {exc}") from exc
    if target == root_resolved or root_resolved not in target.parents:
        raise UnsafePathError(f"path {shown!r} resolves outside {str(root_resolved)!r}")
    return Located(os.fspath(target), None, None)
