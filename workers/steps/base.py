"""What every pipeline step shares: option checking, the run context, results.

A step is built once per worker process from its YAML options and then run
on many files. ``__init__`` checks the options strictly and raises
:class:`StepConfigError` naming the offending key; ``run`` does the work for
one file and raises on failure; ``restore`` is called instead of ``run`` when
an earlier attempt already finished the step, to re-establish what later
steps rely on (for example where the file was saved) without redoing work.

Every step also accepts ``timeout_secs``: the longest one attempt may run
(a positive number of seconds, or null for no limit), else the daemon's
``step_timeout_secs``. The supervisor's watchdog enforces it by killing the
worker (see :attr:`Step.watchdog_s`); the attempt then counts as a failure.
"""

from __future__ import annotations

import importlib
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, ClassVar

from workers.datafile import DataFile


TIMEOUT_OPTION = "timeout_secs"


class StepConfigError(ValueError):
    """A step's options are invalid (unknown, missing or wrongly typed keys)."""


class StepFailed(RuntimeError):
    """A step did its work and the result is wrong; retrying will not help."""


@dataclass
class OutboundMessage:
    """A message a step wants produced (the supervisor produces it)."""

    topic: str
    key: str
    value: bytes


@dataclass
class StepContext:
    """One pipeline run on one file; ``state`` is shared by that run's steps."""

    datafile: DataFile
    pipeline: str
    topic: str
    state: dict = field(default_factory=dict)


@dataclass(frozen=True)
class Option:
    """Declaration of one step option."""

    types: tuple[type, ...]
    required: bool = False
    default: Any = None
    choices: tuple[Any, ...] | None = None
    minimum: float | None = None
    item_type: type | None = None  # element type for list options, value type for dicts


def _check_time_limit(value: Any, where: str) -> float | None:
    """``timeout_secs``: a positive number of seconds, or None for no limit."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0 or value == float("inf"):
        raise StepConfigError(f"{where}: option {TIMEOUT_OPTION!r} must be a positive number of seconds "
                              f"or null (no limit), got {value!r}")
    return float(value)


def _type_names(types: tuple[type, ...]) -> str:
    names = {bool: "boolean", int: "integer", float: "number", str: "string", list: "list", dict: "mapping"}
    return " or ".join(names.get(t, t.__name__) for t in types)


def _check_option(name: str, value: Any, spec: Option, where: str) -> Any:
    # bool is an int subclass; accept it only where bool is declared
    if isinstance(value, bool) and bool not in spec.types:
        raise StepConfigError(f"{where}: option {name!r} must be a {_type_names(spec.types)}, got a boolean")
    if not isinstance(value, spec.types):
        raise StepConfigError(
            f"{where}: option {name!r} must be a {_type_names(spec.types)}, got {type(value).__name__}"
        )
    if spec.choices is not None and value not in spec.choices:
        allowed = ", ".join(repr(c) for c in spec.choices)
        raise StepConfigError(f"{where}: option {name!r} must be one of {allowed}, got {value!r}")
    if spec.minimum is not None and value < spec.minimum:
        raise StepConfigError(f"{where}: option {name!r} must be at least {spec.minimum}, got {value!r}")
    if spec.item_type is not None:
        items = value.items() if isinstance(value, dict) else enumerate(value)
        for sub, item in items:
            if isinstance(value, dict) and not isinstance(sub, str):
                raise StepConfigError(f"{where}: option {name!r} keys must be strings, got {sub!r}")
            if isinstance(item, bool) or not isinstance(item, spec.item_type):
                raise StepConfigError(
                    f"{where}: option {name!r}[{sub!r}] must be a "
                    f"{_type_names((spec.item_type,))}, got {type(item).__name__}"
                )
    return value


class Step(ABC):
    """Base class of pipeline steps.

    Subclasses set ``kind`` and ``OPTIONS`` and implement :meth:`run`.
    After ``__init__`` the checked options are in ``self.options`` (with
    defaults filled in).
    """

    kind: ClassVar[str] = ""
    OPTIONS: ClassVar[dict[str, Option]] = {}

    def __init__(
        self,
        options: dict | None,
        *,
        pipeline: str,
        topic: str,
        has_prior_save: bool = False,
        load_functions: bool = True,
        default_timeout_s: float | None = None,
    ) -> None:
        self.pipeline = pipeline
        self.topic = topic
        self.has_prior_save = has_prior_save
        self.load_functions = load_functions
        given = isinstance(options, dict) and TIMEOUT_OPTION in options
        if given:
            options = dict(options)  # type: ignore[arg-type]
            limit = _check_time_limit(options.pop(TIMEOUT_OPTION), self.where)
        self.options = self._check_options(options)
        #: Seconds one attempt may run (None: no limit).
        self.timeout_s: float | None = limit if given else self.default_time_limit(default_timeout_s)

    def default_time_limit(self, daemon_default: float | None) -> float | None:
        """The time limit of a step without ``timeout_secs``: the daemon's ``step_timeout_secs``."""
        return daemon_default

    @property
    def watchdog_s(self) -> float | None:
        """When the supervisor kills a worker whose attempt at this step still runs (None: never)."""
        return self.timeout_s

    @property
    def where(self) -> str:
        """Names this step in error messages."""
        return f"{self.kind} step of pipeline {self.pipeline!r}"

    @property
    def saves_file(self) -> bool:
        """True when this step leaves ``datafile.full_filepath`` set for later steps."""
        return False

    def _check_options(self, options: dict | None) -> dict[str, Any]:
        if options is None:
            options = {}
        if not isinstance(options, dict):
            raise StepConfigError(f"{self.where}: options must be a mapping, got {type(options).__name__}")
        unknown = sorted(str(k) for k in options if k not in self.OPTIONS)
        if unknown:
            known = ", ".join(sorted(self.OPTIONS)) or "none"
            raise StepConfigError(f"{self.where}: unknown option(s) {', '.join(map(repr, unknown))} (known: {known})")
        checked: dict[str, Any] = {}
        for name, spec in self.OPTIONS.items():
            if name not in options or options[name] is None:
                if spec.required:
                    raise StepConfigError(f"{self.where}: missing required option {name!r}")
                checked[name] = spec.default
                continue
            checked[name] = _check_option(name, options[name], spec, self.where)
        return checked

    @abstractmethod
    def run(self, ctx: StepContext) -> list[OutboundMessage]:
        """Do the step's work for ``ctx.datafile``; raise on failure."""

    def restore(self, ctx: StepContext) -> None:
        """Re-establish this step's effects on ``ctx`` without redoing its work."""

    def prepare(self, datafile: DataFile) -> None:
        """Optional work ahead of time, while the file's hash is still being verified.

        Only a pipeline's first step is asked. It must make nothing visible (the
        file may turn out corrupt) and may raise; ``run`` then does the work as usual.
        """

    def __repr__(self) -> str:
        return f"<{type(self).__name__} pipeline={self.pipeline!r} options={self.options!r}>"


class FunctionStep(Step):
    """A step that calls a user function given as ``module:attr``."""

    def __init__(self, options: dict | None, **kwargs: Any) -> None:
        super().__init__(options, **kwargs)
        self.function_spec: str = self.options["function"]
        self._function: Callable[..., Any] | None = None
        if self.load_functions:
            self._function = self._load()
        else:
            parse_function_spec(self.function_spec, self.where)

    def _load(self) -> Callable[..., Any]:
        try:
            return load_function(self.function_spec)
        except StepConfigError as exc:
            raise StepConfigError(f"{self.where}: option 'function': {exc}") from exc

    @property
    def function(self) -> Callable[..., Any]:
        """The user function (imported on first use if not imported at construction)."""
        if self._function is None:
            self._function = self._load()
        return self._function


def parse_function_spec(spec: Any, where: str = "function") -> tuple[str, str]:
    """Split ``"module:attr"`` into its parts, or raise StepConfigError."""
    if not isinstance(spec, str) or spec.count(":") != 1:
        raise StepConfigError(f"{where}: {spec!r} is not of the form 'module:attribute'")
    module_name, attr = spec.split(":")
    if not module_name or not attr or any(not part.isidentifier() for part in module_name.split(".")):
        raise StepConfigError(f"{where}: {spec!r} is not of the form 'module:attribute'")
    if any(not part.isidentifier() for part in attr.split(".")):
        raise StepConfigError(f"{where}: {spec!r} is not of the form 'module:attribute'")
    return module_name, attr


def load_function(spec: str) -> Callable[..., Any]:
    """Import and return the callable named by ``"module:attr"`` (``attr`` may be dotted)."""
    module_name, attr = parse_function_spec(spec)
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name and (module_name == exc.name or module_name.startswith(exc.name + ".")):
            raise StepConfigError(f"{spec!r}: no module named {module_name!r}") from exc
        raise StepConfigError(f"{spec!r}: importing {module_name!r} failed: {exc}") from exc
    except Exception as exc:
        raise StepConfigError(f"{spec!r}: importing {module_name!r} failed: {type(exc).__name__}: {exc}") from exc
    obj: Any = module
    for part in attr.split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError as exc:
            raise StepConfigError(f"{spec!r}: module {module_name!r} has no attribute {attr!r}") from exc
    if not callable(obj):
        raise StepConfigError(f"{spec!r}: {attr!r} is a {type(obj).__name__}, not callable")
    return obj


def result_key(subdir_str: str | None, filename: str) -> str:
    """The key of a processing-result message, exactly as OpenMSIStream builds it.

    ``<subdir parts joined by "_">_<filename>_chunk_processing_result``. An
    empty ``subdir_str`` still contributes its (empty) part, so a file at the
    upload root gets a leading ``_``; only ``None`` drops the prefix.
    """
    prefix = f"{'_'.join(subdir_str.split('/'))}_" if subdir_str is not None else ""
    return f"{prefix}{filename}_chunk_processing_result"
