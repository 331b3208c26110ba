"""The ``openmsistream`` step: run an OpenMSIStream-style class (see :mod:`workers.compat`) on each file.

``openmsistream: {class: module:QualName, kind?: processor|reproducer|metadata,
topic?, mode?: memory|disk|both, dir?, args?: [...], kwargs?: {...}}``

The class is built once per worker process, on its first file, as
``cls(*args, **kwargs)`` (construction never touches Kafka), and its hook is
called with the file and the process's lock:

- ``processor``: ``_process_downloaded_data_file`` returns None (done) or an
  Exception (failed, as does raising);
- ``reproducer`` / ``metadata``: ``_get_processing_result_message_for_file``
  returns a message (an object with ``msg_value`` and optionally ``msg_key``,
  or bytes, str, dict) sent to ``topic`` under OpenMSIStream's result key;
  None means the result could not be computed: the step fails.

``kind`` defaults to the class's own. ``mode`` ``disk``/``both`` needs the
file on disk: an earlier save step, or ``dir`` to save it here first.
"""

from __future__ import annotations

import sys
import threading
from pathlib import Path
from types import ModuleType
from typing import Any

from workers.steps.base import (
    Option,
    OutboundMessage,
    Step,
    StepConfigError,
    StepContext,
    StepFailed,
    load_function,
    parse_function_spec,
)
from workers.steps.reproduce import MODES, encode_result, ensure_on_disk
from workers.steps.save import target_path

KINDS = ("processor", "reproducer", "metadata")

#: The lock handed to every hook in this process (threads of one worker share it); re-exported by workers.compat.
PROCESS_LOCK = threading.Lock()


def handler_kind(cls: Any) -> str | None:
    """The kind a compat class declares in its ``STEP_KIND`` class attribute ("processor", ...), else None.

    The step reads only that attribute: it never imports :mod:`workers.compat`, whose classes start the daemon.
    """
    kind = getattr(cls, "STEP_KIND", None) if isinstance(cls, type) else None
    return kind if kind in KINDS else None


class ProcessingFailed(RuntimeError):
    """The class's hook returned an Exception (OpenMSIStream's failure signal)."""


def _main_module_named(module_name: str) -> ModuleType | None:
    """The program's main module if it is ``module_name`` run with ``python -m`` (or spawned from it)."""
    for alias in ("__main__", "__mp_main__"):
        module = sys.modules.get(alias)
        if module is None:
            continue
        spec = getattr(module, "__spec__", None)
        if spec is not None and spec.name == module_name:
            return module
        filename = getattr(module, "__file__", None)
        if spec is None and filename and Path(filename).stem == module_name:  # a script run by path
            return module
    return None


def load_class(spec: str, where: str = "class") -> type:
    """Import the compat class named ``module:QualName``; raises StepConfigError."""
    module_name, qualname = parse_function_spec(spec, where)
    module = _main_module_named(module_name)
    if module is None:
        obj: Any = load_function(spec)
    else:  # already running as the main program: do not import it a second time
        obj = module
        for part in qualname.split("."):
            obj = getattr(obj, part, None)
        if obj is None:
            raise StepConfigError(f"{spec!r}: module {module_name!r} has no attribute {qualname!r}")
    if handler_kind(obj) is None:
        raise StepConfigError(f"{spec!r} is not a subclass of DataFileStreamProcessor, "
                              "DataFileStreamReproducer or MetadataJSONReproducer from workers.compat")
    return obj


def result_message(result: Any, datafile: Any, topic: str, where: str) -> OutboundMessage:
    """The message for a reproducer hook's return value; raises when there is none."""
    from workers.steps.base import result_key

    if result is None:
        raise StepFailed(f"{where} returned None: no processing result computed for {datafile.relative_filepath}")
    if isinstance(result, BaseException):
        raise ProcessingFailed(f"{where} returned {result!r}") from result
    key: Any = result_key(datafile.subdir_str, datafile.filename)
    if hasattr(result, "msg_value"):
        key = getattr(result, "msg_key", None) or key
        try:
            result = result.msg_value
        except (TypeError, ValueError) as exc:
            raise StepFailed(f"{where}: the message value cannot be built: {exc}") from exc
        if isinstance(key, bytes):
            key = key.decode("utf-8", errors="replace")
    value = encode_result(result, where)
    if value is None:
        raise StepFailed(f"{where}: the message has no value")
    return OutboundMessage(topic, str(key), value)


class OpenMSIStreamStep(Step):
    """``openmsistream: {class, kind?, topic?, mode?, dir?, args?, kwargs?}``."""

    kind = "openmsistream"
    OPTIONS = {
        "class": Option((str,), required=True),
        "kind": Option((str,), choices=KINDS),
        "topic": Option((str,)),
        "mode": Option((str,), default="memory", choices=MODES),
        "dir": Option((str,)),
        "args": Option((list,), default=[]),
        "kwargs": Option((dict,), default={}),
    }

    def __init__(self, options: dict | None, **kwargs: Any) -> None:
        super().__init__(options, **kwargs)
        self.class_spec: str = self.options["class"]
        self.cls: type | None = None
        kind = self.options["kind"]
        if self.load_functions:
            try:
                self.cls = load_class(self.class_spec)
            except StepConfigError as exc:
                raise StepConfigError(f"{self.where}: option 'class': {exc}") from exc
            actual = handler_kind(self.cls)
            if kind is not None and kind != actual:
                raise StepConfigError(f"{self.where}: {self.class_spec} is a {actual}, not a {kind}")
            kind = actual
        else:
            parse_function_spec(self.class_spec, self.where)
        self.handler_kind = kind
        if kind in ("reproducer", "metadata") and not self.options["topic"]:
            raise StepConfigError(f"{self.where}: a {kind} needs option 'topic' (where results go)")
        directory = self.options["dir"]
        if directory is not None and not directory.strip():
            raise StepConfigError(f"{self.where}: option 'dir' must not be empty")
        self.root = Path(directory) if directory else None
        if self.options["mode"] != "memory" and self.root is None and not self.has_prior_save:
            raise StepConfigError(f"{self.where}: mode {self.options['mode']!r} needs the file on disk: "
                                  "add a save step before it or give option 'dir'")
        self._handler: Any = None

    @property
    def where(self) -> str:
        return f"openmsistream step of pipeline {self.pipeline!r}"

    @property
    def saves_file(self) -> bool:
        return self.options["mode"] != "memory" and self.root is not None

    @property
    def handler(self) -> Any:
        """The class's instance in this process, built on first use."""
        if self._handler is None:
            cls = self.cls or load_class(self.class_spec)
            self._handler = cls(*self.options["args"], **self.options["kwargs"])
        return self._handler

    def run(self, ctx: StepContext) -> list[OutboundMessage]:
        datafile = ctx.datafile
        ensure_on_disk(self, datafile)
        handler = self.handler
        name = type(handler).__name__
        if (self.handler_kind or handler_kind(type(handler))) == "processor":
            result = handler._process_downloaded_data_file(datafile, PROCESS_LOCK)
            if result is None:
                return []
            if isinstance(result, BaseException):
                raise ProcessingFailed(f"{name}._process_downloaded_data_file returned {result!r}") from result
            raise StepFailed(f"{name}._process_downloaded_data_file returned {type(result).__name__}; "
                             "expected None or an Exception")
        result = handler._get_processing_result_message_for_file(datafile, PROCESS_LOCK)
        where = f"{name}._get_processing_result_message_for_file"
        return [result_message(result, datafile, self.options["topic"], where)]

    def restore(self, ctx: StepContext) -> None:
        if self.saves_file:
            ctx.datafile.full_filepath = target_path(ctx.datafile, self.root)
