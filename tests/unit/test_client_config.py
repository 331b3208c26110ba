"""librdkafka checks omsd's client settings when a command starts, and the error names file and line."""

from __future__ import annotations

import pytest

from omsd.config import ConfigError, load_config
from omsd.kafka import check_client_configs


def error_of(path, kinds=("consumer", "producer")) -> str:
    with pytest.raises(ConfigError) as info:
        check_client_configs(load_config(path), kinds)
    return str(info.value)


def test_a_misspelt_property_names_its_line_in_yaml_block_and_flow_style(tmp_path) -> None:
    path = tmp_path / "omsd.yaml"
    path.write_text("state_dir: x\nbroker:\n  bootstrap.servers: 127.0.0.1:1\n  socket.timeout.mss: 5\n")
    assert error_of(path) == (f"{path}:4: broker property 'socket.timeout.mss': No such configuration property: "
                              '"socket.timeout.mss" (librdkafka)')
    path.write_text("producer: {linger.ms: 5, lingerr.ms: 3}\n")
    assert error_of(path, ("producer",)).startswith(f"{path}:1: producer property 'lingerr.ms'")


def test_a_bad_value_and_an_ini_file(tmp_path) -> None:
    path = tmp_path / "omsd.yaml"
    path.write_text("consumer:\n  group.id: g\n  session.timeout.ms: soon\n")
    assert error_of(path).startswith(f"{path}:3: consumer property 'session.timeout.ms': Invalid value")
    ini = tmp_path / "lab.config"
    ini.write_text("[broker]\nbootstrap.servers = 127.0.0.1:1\n\n[consumer]\ngroup.id = g\nauto.offset.rest = x\n")
    assert error_of(ini).startswith(f"{ini}:6: consumer property 'auto.offset.rest': No such configuration")


def test_only_the_clients_a_command_uses_are_checked_and_good_settings_pass(tmp_path) -> None:
    path = tmp_path / "omsd.yaml"
    path.write_text("broker:\n  bootstrap.servers: 127.0.0.1:1\nconsumer:\n  fetch.wait.max.mss: 5\n"
                    "producer:\n  linger.ms: 5\n")
    check_client_configs(load_config(path), ("producer",))  # `omsd upload` builds no consumer
    assert "fetch.wait.max.mss" in error_of(path)
    path.write_text("broker:\n  bootstrap.servers: 127.0.0.1:1\nconsumer:\n  fetch.wait.max.ms: 5\n")
    check_client_configs(load_config(path))
