"""Pipeline steps: the registry of step kinds and a builder.

Importing this package does not import boto3 (the ``s3`` step imports it
when it first runs) and never imports confluent_kafka.
"""

from __future__ import annotations

from typing import Any

from workers.steps.base import OutboundMessage, Step, StepConfigError, StepContext
from workers.steps.call import CallStep
from workers.steps.compat_step import OpenMSIStreamStep
from workers.steps.exec import ExecStep
from workers.steps.metadata import MetadataStep
from workers.steps.reproduce import ReproduceStep
from workers.steps.s3 import S3Step
from workers.steps.save import SaveStep

STEP_KINDS: dict[str, type[Step]] = {
    cls.kind: cls for cls in (SaveStep, S3Step, MetadataStep, ReproduceStep, CallStep, ExecStep, OpenMSIStreamStep)
}

__all__ = ["STEP_KINDS", "OutboundMessage", "Step", "StepConfigError", "StepContext", "build_step"]


def build_step(
    kind: str,
    options: dict | None,
    *,
    pipeline: str,
    topic: str,
    has_prior_save: bool = False,
    load_functions: bool = True,
    default_timeout_s: float | None = None,
) -> Step:
    """Build the step ``kind`` from its options; raises StepConfigError if they are invalid.

    ``has_prior_save`` tells the step whether an earlier step of the same
    pipeline saves the file. With ``load_functions=False`` user functions are
    only checked for the ``module:attr`` form, not imported. ``default_timeout_s`` is the time limit
    of a step without ``timeout_secs`` (the daemon's ``step_timeout_secs``).
    """
    cls = STEP_KINDS.get(kind) if isinstance(kind, str) else None
    if cls is None:
        known = ", ".join(sorted(STEP_KINDS))
        raise StepConfigError(f"pipeline {pipeline!r}: unknown step kind {kind!r} (known: {known})")
    kwargs: dict[str, Any] = {
        "pipeline": pipeline, "topic": topic, "has_prior_save": has_prior_save, "load_functions": load_functions,
        "default_timeout_s": default_timeout_s,
    }
    return cls(options, **kwargs)
