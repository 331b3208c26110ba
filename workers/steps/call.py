"""The ``call`` step: run a user function on the file for its side effects.

``call: {function: module:attr}``. Raising marks the step failed, and so
does returning an Exception instance (OpenMSIStream's
``_process_downloaded_data_file`` contract); any other return value,
None included, is success.
"""

from __future__ import annotations

from workers.steps.base import FunctionStep, Option, OutboundMessage, StepContext


class FunctionReturnedError(RuntimeError):
    """A step function returned an exception instead of raising it."""


class CallStep(FunctionStep):
    """``call: {function}``."""

    kind = "call"
    OPTIONS = {"function": Option((str,), required=True)}

    def run(self, ctx: StepContext) -> list[OutboundMessage]:
        result = self.function(ctx.datafile)
        if isinstance(result, BaseException):
            raise FunctionReturnedError(f"{self.function_spec} returned {result!r}") from result
        return []
