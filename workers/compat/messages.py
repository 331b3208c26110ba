"""OpenMSIStream's logger interface and processing-result message classes."""

from __future__ import annotations

import json
from abc import ABC, abstractmethod
from typing import Any

import structlog

log = structlog.get_logger(__name__)


# -- logging as OpenMSIStream's logger offers it ------------------------------------------------
class CompatLogger:
    """``self.logger`` of OpenMSIStream classes: debug/info/warning/error on structlog."""

    def __init__(self, name: str) -> None:
        self._log = structlog.get_logger(name)

    def debug(self, msg: Any, *args: Any, **kwargs: Any) -> None:
        self._log.debug(str(msg))

    def info(self, msg: Any, *args: Any, **kwargs: Any) -> None:
        self._log.info(str(msg))

    def warning(self, msg: Any, *args: Any, exc_info: Any = None, **kwargs: Any) -> None:
        self._log.warning(str(msg), exc_info=exc_info)

    def error(self, msg: Any, *args: Any, exc_info: Any = None, exc_type: type[BaseException] | None = None,
              exc_obj: BaseException | None = None, reraise: bool = False, **kwargs: Any) -> None:
        """Log; with ``exc_type`` raise ``exc_type(msg)``, with ``reraise`` re-raise ``exc_obj``."""
        self._log.error(str(msg), exc_info=exc_info or exc_obj)
        if exc_type is not None:
            raise exc_type(msg)
        if reraise and exc_obj is not None:
            raise exc_obj


# -- processing-result messages -------------------------------------------------------------------
class ReproducerMessage(ABC):
    """A message computed from a file; subclasses define ``msg_value``.

    ``msg_key`` is OpenMSIStream's processing-result key for the file.
    """

    def __init__(self, datafile: Any, *args: Any, **kwargs: Any) -> None:
        self._datafile = datafile

    @property
    def msg_key(self) -> str:
        from workers.steps.base import result_key

        return result_key(self._datafile.subdir_str, self._datafile.filename)

    @property
    @abstractmethod
    def msg_value(self) -> Any:
        """bytes, str or a dict (sent as JSON)."""

    @property
    def callback_kwargs(self) -> dict[str, Any]:
        return {"filename": self._datafile.filename, "rel_filepath": self._datafile.relative_filepath}

    def get_log_msg(self, print_every: Any = None) -> str | None:
        return None


class MetadataJSONMessage(ReproducerMessage):
    """A metadata dict, sent as ``json.dumps``."""

    def __init__(self, *args: Any, json_content: dict | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.json_content = json_content

    @property
    def msg_value(self) -> str:
        if self.json_content is None:
            raise ValueError(f"JSON content should not be None for a {type(self).__name__}")
        return json.dumps(self.json_content)
