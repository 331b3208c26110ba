"""The kafkacrypto section: where the node is found, its waits, and clear errors."""

from __future__ import annotations

from pathlib import Path

import pytest

from omsd.config import ConfigError, load_config


def node(folder: Path, name: str) -> Path:
    (folder / name).mkdir(parents=True)
    config = folder / name / f"{name}.config"
    config.write_text(f"[DEFAULT]\nnode_id = {name}\n")
    return config


def test_ini_node_id_is_the_folder_beside_the_config_file(tmp_path: Path) -> None:
    expected = node(tmp_path, "lab")
    ini = tmp_path / "omsi.config"
    ini.write_text("[broker]\nbootstrap.servers = x:1\n[kafkacrypto]\nnode_id = lab\n")
    settings = load_config(ini).kafkacrypto
    assert settings is not None and settings.config_file == expected.resolve() and settings.node_id == "lab"
    assert (settings.max_initial_wait_s, settings.max_wait_s) == (60.0, 5.0)


def test_yaml_config_file_relative_to_the_config_and_waits(tmp_path: Path) -> None:
    expected = node(tmp_path / "nodes", "n1")
    cfg = tmp_path / "omsd.yaml"
    cfg.write_text("kafkacrypto:\n  config_file: file#nodes/n1/n1.config\n  max_initial_wait_per_decrypt: 2\n"
                   "  max_wait_per_decrypt: 0.5\n  treat_undecryptable_as_plaintext: true\n")
    settings = load_config(cfg).kafkacrypto
    assert settings.config_file == expected.resolve()
    assert (settings.max_initial_wait_s, settings.max_wait_s, settings.treat_undecryptable_as_plaintext) == (2, 0.5, True)


def test_no_section_means_no_encryption(tmp_path: Path) -> None:
    cfg = tmp_path / "omsd.yaml"
    cfg.write_text("state_dir: x\n")
    assert load_config(cfg).kafkacrypto is None


@pytest.mark.parametrize("body, message", [
    ("kafkacrypto: {node_id: missing}\n", "no KafkaCrypto node config"),
    ("kafkacrypto: {}\n", None),
    ("kafkacrypto: {node_id: a, config_file: b}\n", "exactly one of"),
    ("kafkacrypto: {node_id: a, max_wait_per_decrypt: soon}\n", "must be a number"),
    ("kafkacrypto: {node_id: a, colour: blue}\n", "unknown key 'colour'"),
    ("kafkacrypto: lab\n", "must be a mapping"),
])
def test_bad_sections_name_the_file_and_line(tmp_path: Path, body: str, message: str | None) -> None:
    node(tmp_path, "a")
    cfg = tmp_path / "omsd.yaml"
    cfg.write_text("state_dir: x\n" + body)
    if message is None:
        assert load_config(cfg).kafkacrypto is None
        return
    with pytest.raises(ConfigError, match=message) as info:
        load_config(cfg)
    assert f"{cfg}:2" in str(info.value)


def test_downloader_options_override_the_section(tmp_path: Path) -> None:
    from omsd.cli import build_parser
    from omsd.crypto.settings import decrypt_overrides

    node(tmp_path, "lab")
    cfg = tmp_path / "omsd.yaml"
    cfg.write_text("kafkacrypto: {node_id: lab, max_wait_per_decrypt: 9}\n")
    settings = load_config(cfg).kafkacrypto
    args = build_parser().parse_args(["download", "out", "--config", str(cfg), "--topic", "t",
                                      "--max_initial_wait_per_decrypt", "3", "--treat_undecryptable_as_plaintext"])
    changed = decrypt_overrides(settings, args, ConfigError)
    assert (changed.max_initial_wait_s, changed.max_wait_s, changed.treat_undecryptable_as_plaintext) == (3, 9, True)
    with pytest.raises(ConfigError, match="need a kafkacrypto section"):
        decrypt_overrides(None, args, ConfigError)
    plain = build_parser().parse_args(["download", "out", "--config", str(cfg), "--topic", "t"])
    assert decrypt_overrides(settings, plain) is settings
