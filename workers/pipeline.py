"""Running one pipeline's steps on one completed file, with retries.

:class:`PipelineRunner` is built once per pipeline in each worker process.
For each file it runs the steps in order; steps that finished in an earlier
run (``done``) are only restored. A failing step is retried with
exponential backoff; the run stops at the first step that still fails.
Every finished step is reported at once through ``on_step`` so that the
caller can record it durably before the next step starts; every attempt is
announced through ``on_attempt`` with its time limit, so that the supervisor's
watchdog can tell a hung step from a slow one.
"""

from __future__ import annotations

import logging
import time
import traceback
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import structlog

from omsd.wire.paths import UnsafePathError
from workers.datafile import DataFile
from workers.steps import build_step
from workers.steps.base import OutboundMessage, Step, StepConfigError, StepContext, StepFailed

log = structlog.get_logger(__name__)
_per_file = logging.getLogger(__name__)  # asked before a per-file debug line: ~50 ns at info, not ~4 µs

MAX_BACKOFF_S = 10.0
MAX_ERROR_CHARS = 4000
# failures that will not go away by trying again
NOT_RETRIED: tuple[type[BaseException], ...] = (UnsafePathError, StepConfigError)


@dataclass
class StepOutcome:
    """The result of one step of one pipeline on one file."""

    pipeline: str
    index: int
    kind: str
    status: str  # "done" | "failed" | "skipped"
    attempts: int
    error: str | None
    messages: list[OutboundMessage] = field(default_factory=list)
    duration_s: float = 0.0


def _normalise_steps(steps: Iterable[Any]) -> list[tuple[str, Any]]:
    """Accept ``(kind, options)`` pairs or one-key mappings ``{kind: options}``."""
    pairs: list[tuple[str, Any]] = []
    for i, item in enumerate(steps):
        if isinstance(item, dict):
            if len(item) != 1:
                raise StepConfigError(f"steps[{i}]: a step is a mapping with exactly one key (its kind)")
            ((kind, options),) = item.items()
        elif isinstance(item, (tuple, list)) and len(item) == 2:
            kind, options = item
        else:
            raise StepConfigError(f"steps[{i}]: expected (kind, options), got {item!r}")
        pairs.append((kind, options))
    return pairs


def _describe(exc: BaseException) -> str:
    text = f"{type(exc).__name__}: {exc}"
    return text if len(text) <= MAX_ERROR_CHARS else text[: MAX_ERROR_CHARS - 3] + "..."


def _without_step_name(message: str, pipeline: str) -> str:
    """A step's error without its own "<kind> step of pipeline 'p': " prefix, which the caller's replaces."""
    head, sep, tail = message.partition(f" step of pipeline {pipeline!r}: ")
    return tail if sep and " " not in head else message


def _build_all(
    name: str, topic: str, steps: Iterable[Any], *, load_functions: bool, default_timeout_s: float | None = None
) -> tuple[list[Step], list[str]]:
    """Build every step, collecting errors instead of stopping at the first."""
    built: list[Step] = []
    errors: list[str] = []
    try:
        pairs = _normalise_steps(steps)
    except StepConfigError as exc:
        return [], [f"pipeline {name!r}: {exc}"]
    has_prior_save = False
    for i, (kind, options) in enumerate(pairs):
        try:
            step = build_step(
                kind, options, pipeline=name, topic=topic,
                has_prior_save=has_prior_save, load_functions=load_functions,
                default_timeout_s=default_timeout_s,
            )
        except StepConfigError as exc:
            errors.append(f"pipeline {name!r} steps[{i}] ({kind}): {_without_step_name(str(exc), name)}")
            has_prior_save = has_prior_save or kind == "save"
            continue
        built.append(step)
        has_prior_save = has_prior_save or step.saves_file
    return built, errors


def validate_pipeline(name: str, topic: str, steps: Iterable[Any], *, load_functions: bool = True) -> list[str]:
    """Check a pipeline definition without running anything; return the error messages.

    With ``load_functions`` (the default) user functions are imported to
    prove they exist; pass False to check only their ``module:attr`` form.
    """
    errors: list[str] = []
    if not isinstance(name, str) or not name:
        errors.append(f"pipeline name must be a non-empty string, got {name!r}")
    if not isinstance(topic, str) or not topic:
        errors.append(f"pipeline {name!r}: topic must be a non-empty string, got {topic!r}")
    if not isinstance(steps, (list, tuple)) or not steps:
        errors.append(f"pipeline {name!r}: steps must be a non-empty list")
        return errors
    errors.extend(_build_all(str(name), str(topic), steps, load_functions=load_functions)[1])
    return errors


class PipelineRunner:
    """Runs one pipeline's steps on files, in order, with retries."""

    def __init__(
        self,
        name: str,
        topic: str,
        steps: list[tuple[str, dict]],
        retries: int = 2,
        backoff_s: float = 0.5,
        default_timeout_s: float | None = None,
    ) -> None:
        if retries < 0:
            raise ValueError("retries must be >= 0")
        if backoff_s < 0:
            raise ValueError("backoff_s must be >= 0")
        self.name = name
        self.topic = topic
        self.retries = retries
        self.backoff_s = backoff_s
        self.steps, errors = _build_all(name, topic, steps, load_functions=True, default_timeout_s=default_timeout_s)
        if errors:
            raise StepConfigError("; ".join(errors))
        if not self.steps:
            raise StepConfigError(f"pipeline {name!r} has no steps")

    def backoff(self, attempt: int) -> float:
        """Seconds to wait after failed attempt number ``attempt`` (0-based)."""
        return min(self.backoff_s * (2**attempt), MAX_BACKOFF_S)

    def prepare(self, datafile: DataFile, done: Iterable[int]) -> None:
        """Let the first step work ahead while the file is being verified (see :meth:`Step.prepare`)."""
        if 0 in set(done):
            return
        step = self.steps[0]
        try:
            step.prepare(datafile)
        except Exception as exc:  # noqa: BLE001 - run() does the work again and reports what fails
            log.debug("preparing a step failed; it runs in full", pipeline=self.name, kind=step.kind,
                      error=_describe(exc))

    def run(self, datafile: DataFile, done: Iterable[int], on_step: Callable[[StepOutcome], None],
            on_attempt: Callable[[int, Step, int], None] | None = None) -> bool:
        """Run the pipeline on ``datafile``; True when every step is done.

        Steps whose index is in ``done`` are restored, not run, and not
        reported. Each other step is reported through ``on_step`` as soon as
        it is done or has failed its last attempt; the run stops there.
        ``on_attempt(index, step, attempt)`` is called before each attempt.
        """
        done = set(done)
        ctx = StepContext(datafile=datafile, pipeline=self.name, topic=self.topic, state={})
        for index, step in enumerate(self.steps):
            if index in done:
                try:
                    step.restore(ctx)
                    continue
                except Exception as exc:  # run it again rather than give up
                    self._log(datafile).warning("restoring a finished step failed; running it again",
                                                step=index, kind=step.kind, error=_describe(exc))
            outcome = self._run_step(index, step, ctx, on_attempt)
            on_step(outcome)
            if outcome.status != "done":
                return False
        return True

    def _log(self, datafile: DataFile) -> Any:
        """A logger bound to this pipeline and file (bound only when there is something to say)."""
        return log.bind(pipeline=self.name, file=datafile.relative_filepath)

    def _run_step(self, index: int, step: Step, ctx: StepContext,
                  on_attempt: Callable[[int, Step, int], None] | None = None) -> StepOutcome:
        started = time.monotonic()
        error: str | None = None
        attempts = 0
        for attempt in range(self.retries + 1):
            attempts = attempt + 1
            if on_attempt is not None:
                on_attempt(index, step, attempts)
            try:
                messages = list(step.run(ctx))
            except Exception as exc:
                error = _describe(exc)
                final = attempt == self.retries or isinstance(exc, NOT_RETRIED)
                self._log(ctx.datafile).warning(
                    "step failed" if final else "step failed; retrying",
                    step=index, kind=step.kind, attempt=attempts, error=error,
                    traceback=None if not final or isinstance(exc, (StepFailed, *NOT_RETRIED))
                    else "".join(traceback.format_exception(exc)),
                )
                if final:
                    break
                time.sleep(self.backoff(attempt))
                continue
            duration = time.monotonic() - started
            if _per_file.isEnabledFor(logging.DEBUG):
                self._log(ctx.datafile).debug("step done", step=index, kind=step.kind, attempts=attempts,
                                              duration_s=round(duration, 3))
            return StepOutcome(self.name, index, step.kind, "done", attempts, None, messages, duration)
        return StepOutcome(self.name, index, step.kind, "failed", attempts, error, [], time.monotonic() - started)
