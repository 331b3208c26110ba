"""The ``metadata`` step: a user function's dict, sent as JSON.

``metadata: {function: module:attr, topic: NAME}``. The function receives
the :class:`~workers.datafile.DataFile` and returns a dict; the step sends
``json.dumps(dict)`` (utf-8) to ``topic`` under OpenMSIStream's
processing-result key, as its MetadataJSONReproducer does.
"""

from __future__ import annotations

import json

from workers.steps.base import FunctionStep, Option, OutboundMessage, StepContext, StepFailed, result_key


class MetadataStep(FunctionStep):
    """``metadata: {function, topic}``."""

    kind = "metadata"
    OPTIONS = {
        "function": Option((str,), required=True),
        "topic": Option((str,), required=True),
    }

    def run(self, ctx: StepContext) -> list[OutboundMessage]:
        datafile = ctx.datafile
        result = self.function(datafile)
        if isinstance(result, BaseException):
            raise StepFailed(f"{self.function_spec} returned an exception: {result!r}") from result
        if not isinstance(result, dict):
            raise StepFailed(f"{self.function_spec} returned {type(result).__name__}, not a dict")
        try:
            text = json.dumps(result)
        except (TypeError, ValueError) as exc:
            raise StepFailed(f"{self.function_spec} returned a dict that is not JSON-serialisable: {exc}") from exc
        key = result_key(datafile.subdir_str, datafile.filename)
        return [OutboundMessage(self.options["topic"], key, text.encode("utf-8"))]
