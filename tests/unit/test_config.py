"""Unit tests for omsd.config: YAML with ${VAR}, sizes, errors with file:line, OpenMSIStream INI files."""

from __future__ import annotations

import re
import shutil
import textwrap
from pathlib import Path

import openmsistream
import pytest

from omsd.config import (
    Config,
    ConfigError,
    PipelineConfig,
    StagingConfig,
    load_config,
)
from omsd.configtext import expand_env, parse_size
from workers.pipeline import validate_pipeline

OMS_SAMPLE = Path(openmsistream.__file__).parent / "kafka_wrapper" / "config_files" / "local_broker_test.config"


def write(tmp_path: Path, text: str, name: str = "omsd.yaml") -> Path:
    path = tmp_path / name
    path.write_text(textwrap.dedent(text).lstrip("\n"), encoding="utf-8")
    return path


def error_of(path: Path, **kwargs: object) -> str:
    with pytest.raises(ConfigError) as info:
        load_config(path, **kwargs)  # type: ignore[arg-type]
    return str(info.value)


def line_of(path: Path, needle: str) -> int:
    """1-based line number of the first line containing ``needle``."""
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        if needle in line:
            return number
    raise AssertionError(f"{needle!r} not in {path}")


# --------------------------------------------------------------------------- basics and defaults


def test_full_example_from_the_design(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("OMSD_BOOTSTRAP", raising=False)
    (tmp_path / "mirror").mkdir()
    path = write(tmp_path, f"""
        broker:
          bootstrap.servers: ${{OMSD_BOOTSTRAP:-127.0.0.1:9092}}
        consumer:
          group.id: omsd
          session.timeout.ms: 6000
        producer: {{}}
        state_dir: {tmp_path}/var
        control_socket: {tmp_path}/run/omsd.sock
        workers: 4
        staging:
          memory_bytes: 512MiB
        heartbeat:
          topic: omsd_heartbeats
          interval_secs: 30
          program_id: omsd-lab1
        pipelines:
          - name: mirror
            topic: raw_files
            match: '.*\\.dat$'
            steps:
              - save: {{dir: {tmp_path}/mirror}}
    """)
    cfg = load_config(path, require_pipelines=True)
    assert cfg.path == path
    assert cfg.broker == {"bootstrap.servers": "127.0.0.1:9092"}
    assert cfg.consumer == {"group.id": "omsd", "session.timeout.ms": 6000}
    assert cfg.producer == {}
    assert cfg.state_dir == tmp_path / "var"
    assert cfg.control_socket == tmp_path / "run" / "omsd.sock"
    assert cfg.workers == 4
    assert cfg.staging.memory_bytes == 512 << 20
    assert cfg.heartbeat is not None
    assert (cfg.heartbeat.topic, cfg.heartbeat.interval_secs, cfg.heartbeat.program_id) == (
        "omsd_heartbeats", 30.0, "omsd-lab1")
    [mirror] = cfg.pipelines
    assert (mirror.name, mirror.topic, mirror.match) == ("mirror", "raw_files", r".*\.dat$")
    assert mirror.steps == [("save", {"dir": f"{tmp_path}/mirror"})]
    assert mirror.matches("a/b/x.dat") and not mirror.matches("a/b/x.csv")


def test_minimal_config_defaults(tmp_path: Path) -> None:
    cfg = load_config(write(tmp_path, "broker: {bootstrap.servers: 'h:1'}\n"))
    assert cfg.pipelines == [] and cfg.heartbeat is None
    assert cfg.state_dir == Path("var")
    assert cfg.control_socket == Path("var") / "omsd.sock"
    assert cfg.workers >= 1
    assert cfg.staging == StagingConfig()


def test_empty_file_is_an_empty_config(tmp_path: Path) -> None:
    cfg = load_config(write(tmp_path, ""))
    assert cfg.broker == {} and cfg.pipelines == []


def test_control_socket_defaults_to_state_dir(tmp_path: Path) -> None:
    cfg = load_config(write(tmp_path, f"state_dir: {tmp_path}/state\n"))
    assert cfg.control_socket == tmp_path / "state" / "omsd.sock"


def test_run_needs_a_pipeline_but_upload_does_not(tmp_path: Path) -> None:
    path = write(tmp_path, "broker: {bootstrap.servers: 'h:1'}\npipelines: []\n")
    assert load_config(path).pipelines == []
    assert "no pipelines" in error_of(path, require_pipelines=True)


def test_missing_file(tmp_path: Path) -> None:
    message = error_of(tmp_path / "absent.yaml")
    assert "absent.yaml" in message


def test_invalid_yaml_names_the_line(tmp_path: Path) -> None:
    path = write(tmp_path, "broker:\n  a: 1\n  b: [unclosed\nworkers: 2\n")
    assert re.search(rf"{re.escape(str(path))}:\d+: invalid YAML", error_of(path))


def test_top_level_must_be_a_mapping(tmp_path: Path) -> None:
    error_of(write(tmp_path, "- a\n- b\n"))


# --------------------------------------------------------------------------- ${VAR} expansion


def test_env_expansion(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OMSD_T_HOST", "broker.lab")
    monkeypatch.setenv("OMSD_T_WORKERS", "3")
    monkeypatch.delenv("OMSD_T_UNSET", raising=False)
    path = write(tmp_path, """
        broker:
          bootstrap.servers: ${OMSD_T_HOST}:${OMSD_T_PORT:-9093}
          client.id: pre-${OMSD_T_UNSET:-}-post
        workers: ${OMSD_T_WORKERS}
        staging:
          memory_bytes: ${OMSD_T_MEM:-2GB}
        state_dir: ${OMSD_T_UNSET:-/srv/omsd}
    """)
    cfg = load_config(path)
    assert cfg.broker == {"bootstrap.servers": "broker.lab:9093", "client.id": "pre--post"}
    assert cfg.workers == 3
    assert cfg.staging.memory_bytes == 2 * 10**9
    assert cfg.state_dir == Path("/srv/omsd")


def test_unset_variable_without_default_names_file_and_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("OMSD_T_NOPE", raising=False)
    path = write(tmp_path, """
        broker:
          client.id: fine
          bootstrap.servers: ${OMSD_T_NOPE}
    """)
    message = error_of(path)
    assert "OMSD_T_NOPE" in message
    assert f"{path}:{line_of(path, 'OMSD_T_NOPE')}:" in message


def test_expand_env_rules(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OMSD_T_SET", "value")
    monkeypatch.setenv("OMSD_T_EMPTY", "")
    monkeypatch.delenv("OMSD_T_UNSET", raising=False)
    assert expand_env("${OMSD_T_SET}") == "value"
    assert expand_env("${OMSD_T_SET:-other}") == "value"
    assert expand_env("${OMSD_T_UNSET:-a:b/c d}") == "a:b/c d"
    assert expand_env("${OMSD_T_EMPTY}") == ""
    assert expand_env("${OMSD_T_EMPTY:-fallback}") == "fallback"  # shell ':-' semantics: empty takes the default
    assert expand_env("$OMSD_T_SET and ${not a var}") == "$OMSD_T_SET and ${not a var}"
    with pytest.raises(ConfigError, match="OMSD_T_UNSET"):
        expand_env("x ${OMSD_T_UNSET} y")


def test_expanded_values_are_not_reparsed_as_yaml(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OMSD_T_TRICKY", "{a: 1}\nworkers: 99")
    cfg = load_config(write(tmp_path, "broker:\n  client.id: ${OMSD_T_TRICKY}\nworkers: 2\n"))
    assert cfg.broker["client.id"] == "{a: 1}\nworkers: 99"
    assert cfg.workers == 2


# --------------------------------------------------------------------------- sizes


@pytest.mark.parametrize("text,expected", [
    (1048576, 1048576), ("1048576", 1048576), (0, 0), ("512MiB", 512 << 20), ("512 MiB", 512 << 20),
    ("2GB", 2 * 10**9), ("2gb", 2 * 10**9), ("1.5GiB", 3 << 29), ("64k", 64000), ("64Ki", 64 << 10),
    ("10B", 10), ("1TiB", 1 << 40), ("3M", 3 * 10**6),
])
def test_parse_size(text: object, expected: int) -> None:
    assert parse_size(text, "where") == expected


@pytest.mark.parametrize("text", ["", "MiB", "-1", -1, "1.2.3GB", "12 parsecs", "1e9", True, None, [1]])
def test_parse_size_refuses(text: object) -> None:
    with pytest.raises(ConfigError, match="^where:"):
        parse_size(text, "where")


def test_bad_size_in_file_names_the_line(tmp_path: Path) -> None:
    path = write(tmp_path, "staging:\n  max_file_bytes: 1GiB\n  memory_bytes: lots\n")
    assert f"{path}:3:" in error_of(path)


def test_staging_sizes(tmp_path: Path) -> None:
    cfg = load_config(write(tmp_path, "staging:\n  memory_bytes: 1GiB\n  max_file_bytes: 2TB\n"))
    assert cfg.staging.memory_bytes == 1 << 30
    assert cfg.staging.max_file_bytes == 2 * 10**12


# --------------------------------------------------------------------------- validation errors with file:line


def test_unknown_top_level_key_names_file_and_line(tmp_path: Path) -> None:
    path = write(tmp_path, """
        broker:
          bootstrap.servers: h:1
        workers: 2
        wrokers: 3
    """)
    message = error_of(path)
    assert f"{path}:4:" in message and "wrokers" in message


def test_unknown_key_in_a_section(tmp_path: Path) -> None:
    path = write(tmp_path, "heartbeat:\n  topic: hb\n  interval: 5\n")
    message = error_of(path)
    assert f"{path}:3:" in message and "interval" in message


@pytest.mark.parametrize("text,line", [
    ("workers: 0\n", 1), ("workers: many\n", 1), ("workers: true\n", 1),
    ("state_dir: x\nshutdown_timeout_secs: -1\n", 2), ("broker: [a, b]\n", 1),
    ("heartbeat:\n  interval_secs: 5\n", 2), ("pipelines: {name: x}\n", 1),
])
def test_bad_values_name_the_line(tmp_path: Path, text: str, line: int) -> None:
    path = write(tmp_path, text)
    assert f"{path}:{line}:" in error_of(path)


def test_bad_regex_in_match_names_the_line(tmp_path: Path) -> None:
    path = write(tmp_path, f"""
        pipelines:
          - name: broken
            topic: t
            match: '([unclosed'
            steps:
              - save: {{dir: {tmp_path}}}
    """)
    message = error_of(path)
    assert f"{path}:{line_of(path, 'match:')}:" in message
    assert "regex" in message


def test_pipeline_without_steps(tmp_path: Path) -> None:
    path = write(tmp_path, """
        pipelines:
          - name: lonely
            topic: t
    """)
    message = error_of(path)
    assert f"{path}:2:" in message and "lonely" in message and "steps" in message


def test_pipeline_with_empty_steps(tmp_path: Path) -> None:
    path = write(tmp_path, "pipelines:\n  - name: p\n    topic: t\n    steps: []\n")
    assert f"{path}:4:" in error_of(path)


@pytest.mark.parametrize("missing", ["name", "topic"])
def test_pipeline_needs_name_and_topic(tmp_path: Path, missing: str) -> None:
    fields = {"name": "p", "topic": "t"}
    del fields[missing]
    body = "".join(f"    {k}: {v}\n" for k, v in fields.items())
    path = write(tmp_path, f"pipelines:\n  - steps: [{{save: {{dir: {tmp_path}}}}}]\n{body}")
    message = error_of(path)
    assert missing in message and str(path) in message


def test_unknown_pipeline_key(tmp_path: Path) -> None:
    path = write(tmp_path, f"""
        pipelines:
          - name: p
            topic: t
            stpes: []
            steps: [{{save: {{dir: {tmp_path}}}}}]
    """)
    message = error_of(path)
    assert f"{path}:4:" in message and "stpes" in message


def test_step_must_be_a_one_key_mapping(tmp_path: Path) -> None:
    path = write(tmp_path, "pipelines:\n  - name: p\n    topic: t\n    steps:\n      - save\n")
    assert "one key" in error_of(path)


def test_duplicate_pipeline_names(tmp_path: Path) -> None:
    path = write(tmp_path, f"""
        pipelines:
          - name: twin
            topic: a
            steps: [{{save: {{dir: {tmp_path}/a}}}}]
          - name: other
            topic: b
            steps: [{{save: {{dir: {tmp_path}/b}}}}]
          - name: twin
            topic: c
            steps: [{{save: {{dir: {tmp_path}/c}}}}]
    """)
    message = error_of(path)
    assert "duplicate" in message and "twin" in message
    assert f"{path}:8:" in message  # the second 'twin'


# --------------------------------------------------------------------------- pipelines with steps


def test_pipeline_steps_are_kept_in_order(tmp_path: Path) -> None:
    path = write(tmp_path, f"""
        pipelines:
          - name: two_saves
            topic: raw
            group.id: lab-group
            retries: 5
            steps:
              - save: {{dir: {tmp_path}/first}}
              - save: {{dir: {tmp_path}/second}}
    """)
    [pipeline] = load_config(path).pipelines
    assert pipeline.steps == [("save", {"dir": f"{tmp_path}/first"}), ("save", {"dir": f"{tmp_path}/second"})]
    assert pipeline.group_id == "lab-group" and pipeline.retries == 5
    assert pipeline.match is None and pipeline.matches("anything/at/all")


def save_then(tmp_path: Path, step: str) -> Path:
    """A config with one pipeline: a save step, then ``step`` (YAML flow text)."""
    return write(tmp_path, f"""
        pipelines:
          - name: p
            topic: t
            steps:
              - save: {{dir: {tmp_path}}}
              - {step}
    """)


def test_unknown_step_kind_is_a_config_error_with_the_line(tmp_path: Path) -> None:
    path = save_then(tmp_path, "teleport: {to: mars}")
    message = error_of(path, validate_steps=validate_pipeline)
    assert "teleport" in message and str(path) in message


def test_save_step_without_dir_is_a_config_error(tmp_path: Path) -> None:
    path = write(tmp_path, "pipelines:\n  - name: p\n    topic: t\n    steps:\n      - save: {}\n")
    message = error_of(path, validate_steps=validate_pipeline)
    assert "dir" in message and str(path) in message


def test_steps_are_checked_only_by_the_validator_the_caller_passes(tmp_path: Path) -> None:
    path = save_then(tmp_path, "call: {function: omsd_t_absent_module:analyze}")
    [pipeline] = load_config(path).pipelines  # no validator: the step's module is never imported
    assert pipeline.steps[1] == ("call", {"function": "omsd_t_absent_module:analyze"})
    message = error_of(path, validate_steps=validate_pipeline)
    assert message.startswith(f"{path}:{line_of(path, 'omsd_t_absent_module')}:") and "omsd_t_absent_module" in message
    seen: list[str] = []
    load_config(path, validate_steps=lambda name, topic, steps: seen.append(name) or [])
    assert seen == ["p"]


def test_step_error_names_the_pipeline_and_step_once_at_the_step_line(tmp_path: Path) -> None:
    path = write(tmp_path, """
        pipelines:
          - name: p
            topic: t
            steps:
              - metadata: {function: "no_such_module_x:f", topic: m}
    """)
    message = error_of(path, validate_steps=validate_pipeline)
    assert message.startswith(f"{path}:{line_of(path, 'metadata')}: pipeline 'p' steps[0] (metadata): option 'function': "), message
    assert message.count("pipeline 'p'") == 1, message


# --------------------------------------------------------------------------- group_for


def _pipeline(name: str, group_id: str | None = None) -> PipelineConfig:
    return PipelineConfig(name=name, topic="t", steps=[("save", {"dir": "/x"})], group_id=group_id)


def test_group_for_rules() -> None:
    bare = Config()
    assert bare.group_for(_pipeline("mirror")) == "omsd.mirror"
    assert bare.group_for(_pipeline("mirror", "own")) == "own"
    shared = Config(consumer={"group.id": "lab"})
    assert shared.group_for(_pipeline("mirror")) == "lab"
    assert shared.group_for(_pipeline("mirror", "own")) == "own"


def test_group_for_from_yaml(tmp_path: Path) -> None:
    path = write(tmp_path, f"""
        pipelines:
          - name: a
            topic: t
            group.id: g-a
            steps: [{{save: {{dir: {tmp_path}/a}}}}]
          - name: b
            topic: t
            group_id: g-b
            steps: [{{save: {{dir: {tmp_path}/b}}}}]
          - name: c
            topic: t
            steps: [{{save: {{dir: {tmp_path}/c}}}}]
    """)
    cfg = load_config(path)
    assert [cfg.group_for(p) for p in cfg.pipelines] == ["g-a", "g-b", "omsd.c"]


# --------------------------------------------------------------------------- OpenMSIStream INI files


def test_openmsistream_sample_config(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LOCAL_KAFKA_BROKER_BOOTSTRAP_SERVERS", "127.0.0.1:19092")
    path = tmp_path / OMS_SAMPLE.name
    shutil.copy(OMS_SAMPLE, path)
    cfg = load_config(path)
    assert cfg.broker == {"bootstrap.servers": "127.0.0.1:19092"}
    assert cfg.producer == {"batch.size": "2000000", "linger.ms": "100", "compression.type": "lz4"}
    group = cfg.consumer.pop("group.id")
    assert group != "create_new" and group.startswith("omsd-")
    assert cfg.consumer == {"auto.offset.reset": "earliest", "enable.auto.commit": "False",
                            "fetch.min.bytes": "100000"}
    assert cfg.pipelines == []
    assert "no pipelines" in error_of(path, require_pipelines=True)


def test_create_new_gives_a_fresh_group_each_load(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LOCAL_KAFKA_BROKER_BOOTSTRAP_SERVERS", "h:1")
    path = tmp_path / "a.config"
    shutil.copy(OMS_SAMPLE, path)
    assert load_config(path).consumer["group.id"] != load_config(path).consumer["group.id"]


def test_create_new_in_any_case(tmp_path: Path) -> None:
    path = write(tmp_path, "[broker]\nbootstrap.servers = h:1\n[consumer]\ngroup.id = Create_New\n", "x.ini")
    assert load_config(path).consumer["group.id"].startswith("omsd-")


def test_ini_fixed_group_is_kept(tmp_path: Path) -> None:
    path = write(tmp_path, "[broker]\nbootstrap.servers = h:1\n[consumer]\ngroup.id = lab\n", "x.config")
    cfg = load_config(path)
    assert cfg.consumer == {"group.id": "lab"}
    assert cfg.group_for(_pipeline("p")) == "lab"


def test_ini_unset_variable(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("OMSD_T_NOPE", raising=False)
    path = write(tmp_path, "[broker]\nbootstrap.servers = $OMSD_T_NOPE\n", "x.config")
    message = error_of(path)
    assert "OMSD_T_NOPE" in message and str(path) in message


def test_ini_variables_expand_like_openmsistream(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OMSD_T_HOST", "kafka.lab")
    monkeypatch.setenv("OMSD_T_PORT", "9094")
    monkeypatch.setenv("OMSD_T_USER", "alice")
    path = write(tmp_path, """
        [broker]
        bootstrap.servers = $OMSD_T_HOST:$OMSD_T_PORT
        sasl.username = ${OMSD_T_USER}
        client.id = not$expanded
    """, "x.config")
    assert load_config(path).broker == {"bootstrap.servers": "kafka.lab:9094", "sasl.username": "alice",
                                        "client.id": "not$expanded"}


def test_ini_keys_openmsistream_never_gives_librdkafka(tmp_path: Path) -> None:
    path = write(tmp_path, """
        [broker]
        bootstrap.servers = h:1
        node_id = lab-node
        [producer]
        key.serializer = StringSerializer
        value.serializer = DataFileChunkSerializer
        [consumer]
        group.id = g
        auto.offset.reset = none
        key.deserializer = StringDeserializer
        value.deserializer = DataFileChunkDeserializer
    """, "x.config")
    cfg = load_config(path)
    assert cfg.broker == {"bootstrap.servers": "h:1"}
    assert cfg.producer == {}
    assert cfg.consumer == {"group.id": "g"}


def test_ini_detected_by_content_as_well(tmp_path: Path) -> None:
    path = write(tmp_path, "[broker]\nbootstrap.servers = h:1\n", "omsd.conf")
    assert load_config(path).broker == {"bootstrap.servers": "h:1"}


def test_ini_unknown_section(tmp_path: Path) -> None:
    path = write(tmp_path, "[broker]\nbootstrap.servers = h:1\n[brokre]\nx = 1\n", "x.config")
    assert "brokre" in error_of(path)


def test_ini_syntax_error(tmp_path: Path) -> None:
    path = write(tmp_path, "[broker]\nbootstrap.servers = h:1\nno equals sign here\n", "x.config")
    assert str(path) in error_of(path)


# --------------------------------------------------------------------------- handover topic


@pytest.mark.parametrize(("line", "expected"), [
    ("", "omsd.handover"),
    ("handover_topic: lab.handover", "lab.handover"),
    ("handover_topic: null", None),
    ("handover_topic: ''", None),
])
def test_handover_topic_default_name_and_off(tmp_path: Path, line: str, expected: str | None) -> None:
    path = write(tmp_path, """
        {line}
        pipelines:
          - name: keep
            topic: raw
            steps:
              - call: {{function: "json:dumps"}}
        """.format(line=line))
    assert load_config(path).handover_topic == expected


def test_handover_topic_must_be_a_string(tmp_path: Path) -> None:
    path = write(tmp_path, """
        handover_topic: [a, b]
        """)
    assert f"omsd.yaml:{line_of(path, 'handover_topic')}" in error_of(path)


def test_dispatch_policy(tmp_path) -> None:
    assert load_config(write(tmp_path, "workers: 2\n")).dispatch == "balanced"
    assert load_config(write(tmp_path, "dispatch: sharded\n")).dispatch == "sharded"
    with pytest.raises(ConfigError, match="'dispatch' must be balanced or sharded"):
        load_config(write(tmp_path, "dispatch: round-robin\n"))
