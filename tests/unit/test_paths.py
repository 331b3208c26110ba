"""Unit tests for omsd.wire.paths: names from messages never leave the output root."""

from __future__ import annotations

import os
from pathlib import Path, PurePosixPath

import pytest

from omsd.wire.paths import (
    MAX_COMPONENT_BYTES, MAX_PATH_BYTES, Located, UnsafePathError, locate_under, resolve_under, safe_path_under,
    safe_relative_path,
)


@pytest.mark.parametrize("subdir,filename,expected", [
    ("", "a.dat", "a.dat"),
    ("x", "a.dat", "x/a.dat"),
    ("x/y z/ünï", "数据 1.h5", "x/y z/ünï/数据 1.h5"),
    ("...", "..a", ".../..a"),
    ("~", ".hidden", "~/.hidden"),
    ("a:b", "c*?<>|", "a:b/c*?<>|"),
    ("", "n" * MAX_COMPONENT_BYTES, "n" * MAX_COMPONENT_BYTES),
])
def test_plain_names_are_accepted(subdir: str, filename: str, expected: str) -> None:
    rel = safe_relative_path(subdir, filename)
    assert rel == PurePosixPath(expected)
    assert str(rel) == expected
    assert not rel.is_absolute()


UNSAFE_NAMES = [
    ("/abs", "f"), ("/", "f"), ("", "/f"), ("a", "b/c"),
    ("..", "f"), ("a/../..", "f"), ("a/..", "f"), ("", ".."), ("", "."), ("", ""),
    (".", "f"), ("a/./b", "f"), ("a//b", "f"), ("a/", "f"), ("//a", "f"),
    ("a\x00", "f"), ("", "f\x00"), ("a\\b", "f"), ("", "..\\..\\f"), ("C:\\x", "f"),
    ("", "n" * (MAX_COMPONENT_BYTES + 1)), ("d" * (MAX_COMPONENT_BYTES + 1), "f"),
    ("", "é" * (MAX_COMPONENT_BYTES // 2 + 1)),  # the limit is in bytes, not characters
    ("/".join(["d" * 200] * (MAX_PATH_BYTES // 200 + 1)), "f"),
]


@pytest.mark.parametrize("subdir,filename", UNSAFE_NAMES)
def test_unsafe_names_are_refused(subdir: str, filename: str) -> None:
    with pytest.raises(UnsafePathError):
        safe_relative_path(subdir, filename)


@pytest.mark.parametrize("subdir,filename", [(None, "f"), ("", None), (b"a", "f"), ("", b"f"), (1, "f")])
def test_non_strings_are_refused(subdir: object, filename: object) -> None:
    with pytest.raises(UnsafePathError):
        safe_relative_path(subdir, filename)  # type: ignore[arg-type]


def test_unsafe_path_error_is_a_value_error() -> None:
    assert issubclass(UnsafePathError, ValueError)


# --------------------------------------------------------------------------- resolve_under


@pytest.fixture
def root(tmp_path: Path) -> Path:
    out = tmp_path / "out"
    out.mkdir()
    (tmp_path / "outside").mkdir()
    return out


def test_resolve_under_joins_inside_the_root(root: Path) -> None:
    assert resolve_under(root, "a/b/c.dat") == root.resolve() / "a" / "b" / "c.dat"
    assert resolve_under(str(root), PurePosixPath("c.dat")) == root.resolve() / "c.dat"


def test_resolve_under_works_with_a_relative_root(root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(root.parent)
    assert resolve_under("out", "x/y") == root.resolve() / "x" / "y"


@pytest.mark.parametrize("relative", ["/etc/passwd", "../x", "a/../../x", "a/..", "", ".", "a\\b", "a\x00b"])
def test_resolve_under_refuses_paths_leaving_or_naming_the_root(root: Path, relative: str) -> None:
    with pytest.raises(UnsafePathError):
        resolve_under(root, relative)


def test_resolve_under_refuses_a_directory_symlink_pointing_outside(root: Path) -> None:
    (root / "escape").symlink_to(root.parent / "outside", target_is_directory=True)
    with pytest.raises(UnsafePathError):
        resolve_under(root, "escape/file.dat")
    with pytest.raises(UnsafePathError):
        resolve_under(root, "escape")


def test_resolve_under_refuses_a_file_symlink_pointing_outside(root: Path) -> None:
    (root / "sub").mkdir()
    (root / "sub" / "victim").symlink_to(root.parent / "outside" / "victim")  # dangling, outside
    with pytest.raises(UnsafePathError):
        resolve_under(root, "sub/victim")


def test_resolve_under_refuses_an_absolute_symlink_to_the_filesystem_root(root: Path) -> None:
    (root / "slash").symlink_to("/")
    with pytest.raises(UnsafePathError):
        resolve_under(root, "slash/etc/passwd")


def test_resolve_under_allows_a_symlink_that_stays_inside(root: Path) -> None:
    (root / "real").mkdir()
    (root / "alias").symlink_to("real", target_is_directory=True)
    assert resolve_under(root, "alias/f.dat") == root.resolve() / "real" / "f.dat"


def test_resolve_under_follows_a_root_that_is_itself_a_symlink(root: Path) -> None:
    link = root.parent / "link-to-out"
    link.symlink_to(root, target_is_directory=True)
    assert resolve_under(link, "f.dat") == root.resolve() / "f.dat"


def test_resolve_under_refuses_a_symlink_loop_with_its_own_error(root: Path) -> None:
    (root / "loop").symlink_to("loop")
    with pytest.raises(UnsafePathError):
        resolve_under(root, "loop/f.dat")


def test_resolve_under_refuses_an_unencodable_name(root: Path) -> None:
    with pytest.raises(UnsafePathError):
        resolve_under(root, "bad\ud800name")


def test_resolve_under_creates_nothing(root: Path) -> None:
    resolve_under(root, "new/dir/f.dat")
    assert os.listdir(root) == []


def test_resolve_under_sees_a_symlink_made_after_an_earlier_call(root: Path) -> None:
    (root / "sub").mkdir()
    assert resolve_under(root, "sub/f.dat") == root.resolve() / "sub" / "f.dat"
    (root / "sub").rmdir()
    (root / "sub").symlink_to(root.parent / "outside", target_is_directory=True)
    with pytest.raises(UnsafePathError):
        resolve_under(root, "sub/f.dat")


# --------------------------------------------------------------------------- safe_path_under (both in one)


@pytest.mark.parametrize("subdir,filename", [("", "a.dat"), ("x", "a.dat"), ("x/y z/ünï", "数据 1.h5")])
def test_safe_path_under_is_the_two_checks_in_one(root: Path, subdir: str, filename: str) -> None:
    expected = resolve_under(root, safe_relative_path(subdir, filename))
    assert safe_path_under(root, subdir, filename) == expected
    (root / "x" / "y z" / "ünï").mkdir(parents=True)  # existing directories are walked the same way
    assert safe_path_under(root, subdir, filename) == expected


@pytest.mark.parametrize("subdir,filename", UNSAFE_NAMES + [(None, "f"), ("", None)])
def test_safe_path_under_refuses_every_unsafe_name(root: Path, subdir: object, filename: object) -> None:
    with pytest.raises(UnsafePathError):
        safe_path_under(root, subdir, filename)  # type: ignore[arg-type]


def test_safe_path_under_refuses_a_symlinked_subdirectory_pointing_outside(root: Path) -> None:
    assert safe_path_under(root, "run", "f.dat") == root.resolve() / "run" / "f.dat"
    (root / "run").symlink_to(root.parent / "outside")  # swapped in after an earlier file of "run"
    with pytest.raises(UnsafePathError, match="resolves outside"):
        safe_path_under(root, "run", "f.dat")


# --------------------------------------------------------------------------- locate_under (the save step's check)


def test_locate_under_says_what_its_walk_saw(root: Path) -> None:
    real = root.resolve()
    assert locate_under(root, "run/a", "f.dat") == Located(str(real / "run/a/f.dat"), False, False)
    (root / "run" / "a").mkdir(parents=True)
    assert locate_under(root, "run/a", "f.dat") == Located(str(real / "run/a/f.dat"), True, False)
    (root / "run" / "a" / "f.dat").mkdir()  # a directory in the way
    assert locate_under(root, "run/a", "f.dat") == Located(str(real / "run/a/f.dat"), True, True)
    (root / "run" / "b").write_bytes(b"")  # a file where a directory should be: left for the caller to find
    assert locate_under(root, "run", "b") == Located(str(real / "run/b"), True, False)
    assert locate_under(root, "run/b", "f.dat") == Located(str(real / "run/b/f.dat"), None, None)


def test_locate_under_leaves_the_root_itself_unlooked_at(root: Path) -> None:
    assert locate_under(root, "", "f.dat") == Located(str(root.resolve() / "f.dat"), None, False)


@pytest.mark.parametrize("subdir,filename", [("", "a.dat"), ("x", "a.dat"), ("x/y z/ünï", "数据 1.h5")])
def test_locate_under_finds_what_safe_path_under_finds(root: Path, subdir: str, filename: str) -> None:
    assert locate_under(root, subdir, filename).path == str(safe_path_under(root, subdir, filename))
    (root / "x" / "y z" / "ünï").mkdir(parents=True)
    assert locate_under(root, subdir, filename).path == str(safe_path_under(root, subdir, filename))


def test_locate_under_resolves_symlinks_and_refuses_those_that_leave(root: Path) -> None:
    (root / "real").mkdir()
    (root / "alias").symlink_to("real", target_is_directory=True)
    assert locate_under(root, "alias", "f.dat") == Located(str(root.resolve() / "real" / "f.dat"), None, None)
    (root / "away").symlink_to(root.parent / "outside", target_is_directory=True)
    with pytest.raises(UnsafePathError, match="resolves outside"):
        locate_under(root, "away", "f.dat")
    with pytest.raises(UnsafePathError):
        locate_under(root, "..", "f.dat")
