"""Step time limits: every step's ``timeout_secs``, exec's older ``timeout``, the daemon-wide default."""

from __future__ import annotations

from pathlib import Path

import pytest

from omsd.config import ConfigError, load_config
from workers.steps import build_step
from workers.steps.base import StepConfigError
from workers.steps.exec import DEFAULT_TIMEOUT_S, WATCHDOG_GRACE_S

CALL = {"function": "tests.unit.stepfuncs:meta_dict"}


def call(options: dict, default: float | None = 3600.0):
    return build_step("call", options, pipeline="p", topic="t", default_timeout_s=default)


def exec_step(options: dict, default: float | None = 3600.0):
    return build_step("exec", {"argv": ["/bin/true"], **options}, pipeline="p", topic="t", has_prior_save=True,
                      default_timeout_s=default)


def test_every_step_takes_timeout_secs_else_the_daemon_default() -> None:
    assert call(CALL).timeout_s == 3600.0
    assert call(CALL, default=None).timeout_s is None
    limited = call({**CALL, "timeout_secs": 2})
    assert limited.timeout_s == limited.watchdog_s == 2.0
    assert call({**CALL, "timeout_secs": None}).timeout_s is None  # null: no limit for this step
    save = build_step("save", {"dir": "/tmp/x", "timeout_secs": 5.5}, pipeline="p", topic="t")
    assert save.timeout_s == 5.5 and "timeout_secs" not in save.options


@pytest.mark.parametrize("bad", ["abc", 0, -1, True, [2], float("inf")])
def test_a_bad_timeout_secs_is_a_config_error(bad) -> None:
    with pytest.raises(StepConfigError, match="timeout_secs"):
        call({**CALL, "timeout_secs": bad})


def test_exec_keeps_timeout_as_an_alias_and_kills_its_program_before_the_watchdog() -> None:
    assert exec_step({"timeout": 7}).timeout_s == 7.0
    assert exec_step({"timeout": 7, "timeout_secs": 3}).timeout_s == 3.0
    assert exec_step({}).timeout_s == DEFAULT_TIMEOUT_S  # its own default, whatever the daemon's
    assert exec_step({"timeout_secs": 4}).watchdog_s == 4.0 + WATCHDOG_GRACE_S


def _config(tmp_path: Path, text: str):
    path = tmp_path / "omsd.yaml"
    path.write_text(text)
    return load_config(path)


def test_step_timeout_secs_in_the_config(tmp_path) -> None:
    assert _config(tmp_path, "").step_timeout_secs == 3600.0
    assert _config(tmp_path, "step_timeout_secs: 90\n").step_timeout_secs == 90.0
    assert _config(tmp_path, "step_timeout_secs: null\n").step_timeout_secs is None
    with pytest.raises(ConfigError, match="step_timeout_secs"):
        _config(tmp_path, "step_timeout_secs: 0\n")
    with pytest.raises(ConfigError, match="step_timeout_secs"):
        _config(tmp_path, "step_timeout_secs: soon\n")
