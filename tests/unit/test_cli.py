"""`omsd`'s argument parser: a command builds only its own options; help and errors still list them all."""

from __future__ import annotations

import subprocess
import sys

import pytest

from omsd.cli import SUBCOMMANDS, build_parser


def _choices(parser) -> set[str]:
    (sub,) = [a for a in parser._actions if a.dest == "command"]
    return set(sub.choices)


def test_a_named_command_builds_only_its_own_options() -> None:
    assert _choices(build_parser("download")) == {"download"}
    args = build_parser("download").parse_args(["download", "out", "--config", "c.yaml", "--topic", "t"])
    assert (args.command, args.topic, args.group_id) == ("download", "t", None)


@pytest.mark.parametrize("command", [None, "--help", "bogus"])
def test_help_and_unknown_commands_see_every_command(command: str | None) -> None:
    assert _choices(build_parser(command)) == set(SUBCOMMANDS)


def test_an_unknown_command_is_refused_with_the_list_of_commands(capsys) -> None:
    with pytest.raises(SystemExit) as exit_info:
        build_parser("bogus").parse_args(["bogus"])
    assert exit_info.value.code == 2
    assert "choose from 'run', 'download', 'upload', 'service', 'broker', 'registry'" in capsys.readouterr().err


def test_download_does_not_import_the_uploader_the_service_or_the_registry_tools() -> None:
    code = ("import sys; from omsd.cli import build_parser; "
            "build_parser('download').parse_args(['download', 'o', '--config', 'c', '--topic', 't']); "
            "loaded = [m for m in ('omsd.upload.command', 'omsd.service', 'omsd.registry_tools') if m in sys.modules]; "
            "assert not loaded, loaded")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


def test_every_command_still_runs_through_main() -> None:
    for command in SUBCOMMANDS:
        done = subprocess.run([sys.executable, "-m", "omsd.cli", command, "--help"], capture_output=True,
                              text=True, timeout=60)
        assert done.returncode == 0, done.stderr
        assert done.stdout.startswith(f"usage: omsd {command}")
