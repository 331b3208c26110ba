"""`omsd service`: the unit it writes passes `systemd-analyze verify`; every verb's steps, shown by --dry-run."""

from __future__ import annotations

import os
import pwd
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from omsd.service import template_text

ROOT = Path(__file__).resolve().parents[2]
USER = pwd.getpwuid(os.getuid()).pw_name


def omsd_service(*args: str | Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "omsd.cli", "service", *map(str, args)], cwd=ROOT,
                          capture_output=True, text=True, timeout=60, env={**os.environ, **(env or {})})


@pytest.fixture
def config(tmp_path: Path) -> Path:
    out = tmp_path / "out dir 100%"  # a space and a specifier character: must be quoted and escaped
    out.mkdir()
    path = tmp_path / "lab 1.yaml"
    path.write_text(f"""broker: {{bootstrap.servers: "${{OMSD_TEST_BOOTSTRAP:-127.0.0.1:9092}}",
         sasl.password: "${{OMSD_TEST_SECRET}}"}}
state_dir: /var/lib/omsd/lab1
control_socket: /run/omsd/lab1/omsd.sock
pipelines:
  - name: mirror
    topic: raw
    steps:
      - save: {{dir: "{out}"}}
""")
    return path


def test_the_checkout_unit_is_the_packaged_template() -> None:
    shipped = ROOT / "systemd" / "omsd@.service"
    assert shipped.resolve() == (ROOT / "omsd" / "units" / "omsd@.service").resolve()
    assert shipped.read_text() == template_text()


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze is not installed")
def test_installed_unit_passes_systemd_analyze_verify(tmp_path: Path, config: Path) -> None:
    units, env_file = tmp_path / "units", tmp_path / "etc" / "lab1.env"
    proc = omsd_service("install", "lab1", "--config", config, "--user", USER, "--unit-dir", units,
                        "--env-file", env_file, env={"OMSD_SYSTEMCTL": "true", "OMSD_TEST_SECRET": "s3cret"})
    assert proc.returncode == 0, proc.stderr
    unit = units / "omsd@lab1.service"
    text = unit.read_text()
    omsd_bin = Path(sys.executable).with_name("omsd").absolute()
    assert f'ExecStart={omsd_bin} run --config "{config}"' in text
    assert f'User={USER}' in text and f"EnvironmentFile={env_file}" in text
    assert f'ReadWritePaths="-{tmp_path}/out dir 100%%"' in text
    assert "ReadWritePaths=/srv/omsd" in text  # the template's own line is kept
    verify = subprocess.run(["systemd-analyze", "verify", str(unit)], capture_output=True, text=True, timeout=60)
    assert verify.returncode == 0 and verify.stderr == "", verify.stderr

    # The environment file holds the values the config refers to, readable by its owner only.
    assert env_file.stat().st_mode & 0o777 == 0o600
    env_text = env_file.read_text()
    assert "OMSD_TEST_SECRET=s3cret" in env_text and "# OMSD_TEST_BOOTSTRAP=" in env_text
    assert "s3cret" not in proc.stdout + proc.stderr

    # reinstall renders it again from the record in the unit, with the new user, and keeps the env file.
    env_file.write_text("OMSD_TEST_SECRET=changed\n")
    proc = omsd_service("stop_and_restart", "lab1", "--user", "nobody", "--unit-dir", units, "--dry-run")
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert lines[0] == "would run: systemctl stop omsd@lab1.service"
    assert lines[1] == f"would write {unit} (mode 0644):"
    assert "    User=nobody" in lines and f'    ExecStart={omsd_bin} run --config "{config}"' in lines
    assert lines[-2:] == ["would run: systemctl daemon-reload", "would run: systemctl start omsd@lab1.service"]
    assert f"User={USER}" in unit.read_text() and env_file.read_text() == "OMSD_TEST_SECRET=changed\n"


def test_dry_run_prints_every_step_and_changes_nothing(tmp_path: Path, config: Path) -> None:
    units, env_file = tmp_path / "units", tmp_path / "lab1.env"
    proc = omsd_service("install", "lab1", "--config", config, "--user", USER, "--unit-dir", units,
                        "--env-file", env_file, "--dry-run", env={"OMSD_TEST_SECRET": "s3cret"})
    assert proc.returncode == 0, proc.stderr
    assert f"would write {units}/omsd@lab1.service (mode 0644):" in proc.stdout
    assert f"would write {env_file} (mode 0600):" in proc.stdout
    assert "    OMSD_TEST_SECRET=…" in proc.stdout and "s3cret" not in proc.stdout
    assert proc.stdout.splitlines()[-2:] == ["would run: systemctl daemon-reload",
                                             "would run: systemctl enable omsd@lab1.service"]
    assert not units.exists() and not env_file.exists()

    run = "would run: systemctl "
    expected = {
        "start": [run + "start omsd@lab1.service"],
        "stop": [run + "stop omsd@lab1.service"],
        "restart": [run + "restart omsd@lab1.service"],
        "status": [run + "status omsd@lab1.service --no-pager --full"],
        "remove": [run + "disable --now omsd@lab1.service", f"would remove {units}/omsd@lab1.service",
                   run + "daemon-reload", run + "reset-failed omsd@lab1.service"],
    }
    expected["stop-and-remove"] = expected["remove"]
    for verb, lines in expected.items():
        proc = omsd_service(verb, "lab1", "--unit-dir", units, "--dry-run")
        assert proc.returncode == 0, (verb, proc.stderr)
        assert proc.stdout.splitlines() == lines, verb


def test_bad_arguments_are_one_line_errors(tmp_path: Path, config: Path) -> None:
    cases = [
        (("install", "lab1", "--unit-dir", tmp_path), "install needs --config FILE"),
        (("install", "lab 1", "--config", config, "--unit-dir", tmp_path), "instance name 'lab 1'"),
        (("install", "lab1", "--config", tmp_path / "nope.yaml", "--unit-dir", tmp_path), "no such config file"),
        (("start", "lab1", "--config", config, "--unit-dir", tmp_path), "belong to install and reinstall"),
        (("install", "lab1", "--config", config, "--user", "a b", "--unit-dir", tmp_path), "is not a user name"),
        (("reinstall", "lab1", "--unit-dir", tmp_path, "--dry-run"), "is not installed"),
    ]
    for args, message in cases:
        proc = omsd_service(*args)
        assert proc.returncode != 0, args
        assert message in proc.stderr and proc.stderr.count("\n") == 1, (args, proc.stderr)
    assert not any(tmp_path.glob("*.service"))


def _settings(path: Path) -> dict[tuple[str, str], str]:
    section, settings = "", {}
    for line in path.read_text().splitlines():
        if line.startswith("["):
            section = line
        elif "=" in line and not line.startswith("#"):
            key, value = line.split("=", 1)
            settings[(section, key)] = value
    return settings


def test_the_single_and_the_instance_unit_do_not_drift_apart() -> None:
    single, template = _settings(ROOT / "systemd" / "omsd.service"), _settings(ROOT / "systemd" / "omsd@.service")
    per_instance = {"Description", "ExecStart", "ExecStop", "StateDirectory", "RuntimeDirectory", "SyslogIdentifier"}
    assert set(single) == set(template)
    differ = {key for (section, key), value in single.items() if template[(section, key)] != value}
    assert differ == per_instance


def test_exit_codes_of_systemctl_reach_the_caller(tmp_path: Path) -> None:
    """systemd is not PID 1 here: a script stands in for systemctl, recording its calls and answering as it does."""
    calls = tmp_path / "calls"
    fake = tmp_path / "systemctl"
    fake.write_text(f'#!/bin/sh\necho "$*" >> {calls}\n'
                    'case "$1" in status) exit 3;; reset-failed) exit 1;; start) exit 5;; esac\nexit 0\n')
    fake.chmod(0o755)
    units = tmp_path / "units"
    units.mkdir()
    (units / "omsd@lab1.service").write_text("[Service]\n")
    env = {"OMSD_SYSTEMCTL": str(fake)}

    status = omsd_service("status", "lab1", "--unit-dir", units, env=env)
    assert status.returncode == 3 and status.stderr == ""  # inactive: systemctl's own answer, no error line
    start = omsd_service("start", "lab1", "--unit-dir", units, env=env)
    assert start.returncode == 5 and "exited with 5" in start.stderr
    remove = omsd_service("remove", "lab1", "--unit-dir", units, env=env)
    assert remove.returncode == 0, remove.stderr  # reset-failed of a unit that is gone does not fail it
    assert not (units / "omsd@lab1.service").exists()
    assert calls.read_text().splitlines() == [
        "status omsd@lab1.service --no-pager --full", "start omsd@lab1.service",
        "disable --now omsd@lab1.service", "daemon-reload", "reset-failed omsd@lab1.service"]
