"""The example configuration (etc/) and the `make run` demo (python -m omsd.dev.demo)."""

from __future__ import annotations

import re
import socket
import subprocess
import sys
from pathlib import Path

import psutil
import pytest
import yaml

from omsd.config import load_config
from workers.pipeline import validate_pipeline

REPO = Path(__file__).resolve().parents[2]
EXAMPLE_CONFIG = REPO / "etc" / "omsd.yaml"
SNIPPETS = sorted((REPO / "etc" / "pipelines").glob("*.yaml"))
EXAMPLE_DATA = REPO / "etc" / "example-data"


def test_example_config_uses_the_environment(monkeypatch, tmp_path) -> None:
    monkeypatch.setenv("OMSD_BOOTSTRAP", "127.0.0.1:19092")
    monkeypatch.setenv("OMSD_STATE_DIR", str(tmp_path / "state"))
    monkeypatch.setenv("OMSD_OUTPUT_DIR", str(tmp_path / "out"))
    config = load_config(EXAMPLE_CONFIG, require_pipelines=True)
    assert config.broker["bootstrap.servers"] == "127.0.0.1:19092"
    assert config.consumer["session.timeout.ms"] == 6000
    assert config.state_dir == tmp_path / "state"
    assert config.control_socket == tmp_path / "state" / "omsd.sock"
    assert config.workers == 2
    assert config.staging.memory_bytes == 256 << 20
    [pipeline] = config.pipelines
    assert (pipeline.name, pipeline.topic, pipeline.match) == ("mirror", "raw_files", None)
    assert pipeline.steps == [("save", {"dir": str(tmp_path / "out")})]


def test_example_config_defaults(monkeypatch) -> None:
    for name in ("OMSD_BOOTSTRAP", "OMSD_STATE_DIR", "OMSD_OUTPUT_DIR"):
        monkeypatch.delenv(name, raising=False)
    config = load_config(EXAMPLE_CONFIG)
    assert config.broker["bootstrap.servers"] == "127.0.0.1:9092"
    assert config.state_dir == Path("var/demo")
    assert config.pipelines[0].steps == [("save", {"dir": "./var/demo/out"})]


def test_pipeline_snippets_are_valid() -> None:
    kinds = set()
    assert len(SNIPPETS) >= 2
    for path in SNIPPETS:
        pipelines = yaml.safe_load(path.read_text())["pipelines"]
        assert pipelines, path
        for pipeline in pipelines:
            steps = [next(iter(step.items())) for step in pipeline["steps"]]
            kinds |= {kind for kind, _ in steps}
            errors = validate_pipeline(pipeline["name"], pipeline["topic"], steps, load_functions=False)
            assert errors == [], f"{path.name}: {errors}"
    assert {"metadata", "reproduce", "s3", "call", "exec"} <= kinds


def test_example_data_has_a_subdirectory() -> None:
    files = [p.relative_to(EXAMPLE_DATA) for p in EXAMPLE_DATA.rglob("*") if p.is_file()]
    assert len(files) >= 3
    assert any(len(p.parts) > 1 for p in files)


def _port_open(address: str) -> bool:
    host, port = address.rsplit(":", 1)
    try:
        with socket.create_connection((host, int(port)), timeout=0.5):
            return True
    except OSError:
        return False


@pytest.mark.timeout(120)
def test_demo_check_saves_the_example_data_and_stops_everything(tmp_path) -> None:
    var = tmp_path / "demo"
    result = subprocess.run([sys.executable, "-m", "omsd.dev.demo", "--check", "--var", str(var)], cwd=REPO,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=90)
    output = result.stdout.decode(errors="replace")
    assert result.returncode == 0, output
    n_files = sum(1 for p in EXAMPLE_DATA.rglob("*") if p.is_file())
    assert f"all {n_files} files saved byte-identical" in output
    for path in EXAMPLE_DATA.rglob("*"):
        if path.is_file():
            assert (var / "out" / path.relative_to(EXAMPLE_DATA)).read_bytes() == path.read_bytes()
    assert "Workers (2)" in output  # omsctl status was shown
    daemon_pid = int(re.search(r"daemon .*\(pid (\d+)", output).group(1))
    bootstrap = re.search(r"broker .* on (\S+)", output).group(1)
    assert not psutil.pid_exists(daemon_pid) or psutil.Process(daemon_pid).status() == psutil.STATUS_ZOMBIE
    assert not _port_open(bootstrap)
    assert not (var / "omsd.sock").exists()


def test_demo_hint_names_the_commands_in_the_virtualenv(monkeypatch) -> None:
    from omsd.dev.demo import next_steps

    monkeypatch.chdir(REPO)
    hint = next_steps("127.0.0.1:9", "raw_files", Path("var/demo/omsd.sock"))
    bin_dir = Path(sys.executable).parent
    omsd = bin_dir / "omsd"
    assert omsd.exists()  # the test runs from the project's virtualenv, where the scripts live
    shown = str(omsd.relative_to(REPO)) if omsd.is_relative_to(REPO) else str(omsd)
    assert f"{shown} upload DIR --config etc/omsd.yaml --topic raw_files" in hint
    assert "omsctl --socket var/demo/omsd.sock status" in hint and "/activate" in hint
