"""The ``reproduce`` step: a user function's result, sent as one message.

``reproduce: {function, topic, mode?: memory|disk|both, dir?}``. The
function receives the :class:`~workers.datafile.DataFile` and returns bytes,
a str (sent utf-8), a dict (sent as ``json.dumps``) or None (nothing sent).
The key is OpenMSIStream's processing-result key.

``mode`` says what the function needs: ``memory`` only ``bytestring``;
``disk`` and ``both`` also ``full_filepath``. Unless an earlier step of the
pipeline saves the file, ``dir`` is required then and this step saves the
file there first. Given ``dir`` explicitly, the step always saves there.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from workers.datafile import DataFile
from workers.steps.base import (
    FunctionStep,
    Step,
    Option,
    OutboundMessage,
    StepConfigError,
    StepContext,
    StepFailed,
    result_key,
)
from workers.steps.save import save_datafile, target_path

MODES = ("memory", "disk", "both")


def encode_result(result: Any, spec: str) -> bytes | None:
    """Turn a reproduce function's return value into a message value (None: send nothing)."""
    if result is None:
        return None
    if isinstance(result, BaseException):
        raise StepFailed(f"{spec} returned an exception: {result!r}") from result
    if isinstance(result, (bytes, bytearray, memoryview)):
        return bytes(result)
    if isinstance(result, str):
        return result.encode("utf-8")
    if isinstance(result, dict):
        try:
            return json.dumps(result).encode("utf-8")
        except (TypeError, ValueError) as exc:
            raise StepFailed(f"{spec} returned a dict that is not JSON-serialisable: {exc}") from exc
    raise StepFailed(f"{spec} returned {type(result).__name__}; expected bytes, str, dict or None")


def ensure_on_disk(step: Step, datafile: DataFile) -> None:
    """Modes ``disk`` and ``both``: save the file first (with ``dir``) or require an earlier save."""
    if step.saves_file:
        save_datafile(datafile, step.root)
    elif step.options["mode"] != "memory" and datafile.full_filepath is None:
        raise StepFailed("the file has not been saved by an earlier step")


class ReproduceStep(FunctionStep):
    """``reproduce: {function, topic, mode?, dir?}``."""

    kind = "reproduce"
    OPTIONS = {
        "function": Option((str,), required=True),
        "topic": Option((str,), required=True),
        "mode": Option((str,), default="memory", choices=MODES),
        "dir": Option((str,)),
    }

    def __init__(self, options: dict | None, **kwargs: Any) -> None:
        super().__init__(options, **kwargs)
        directory = self.options["dir"]
        if directory is not None and not directory.strip():
            raise StepConfigError(f"{self.where}: option 'dir' must not be empty")
        self.root = Path(directory) if directory else None
        if self.options["mode"] != "memory" and self.root is None and not self.has_prior_save:
            raise StepConfigError(
                f"{self.where}: mode {self.options['mode']!r} needs the file on disk: "
                "add a save step before it or give option 'dir'"
            )

    @property
    def saves_file(self) -> bool:
        return self.options["mode"] != "memory" and self.root is not None

    def run(self, ctx: StepContext) -> list[OutboundMessage]:
        datafile = ctx.datafile
        ensure_on_disk(self, datafile)
        value = encode_result(self.function(datafile), self.function_spec)
        if value is None:
            return []
        key = result_key(datafile.subdir_str, datafile.filename)
        return [OutboundMessage(self.options["topic"], key, value)]

    def restore(self, ctx: StepContext) -> None:
        if self.saves_file:
            ctx.datafile.full_filepath = target_path(ctx.datafile, self.root)
