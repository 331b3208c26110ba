"""What `omsd upload` shows while it works: sent and acknowledged, for files and bytes alike.

"Sent" is what was handed to librdkafka (a file once its last chunk is); "acknowledged" what the
broker confirmed (a file once all its chunks are). On a terminal one line is redrawn in place;
without one (systemd, cron, a pipe) a line is printed every ``every_s`` seconds instead; a summary
follows at the end. Sizes are decimal (1 MB = 1,000,000 bytes).
"""

from __future__ import annotations

import sys
import time
from typing import TextIO

from omsd.telemetry.units import human_bytes, human_rate
from omsd.upload.engine import FileJob, Uploader

TTY_REDRAW_S = 0.25
DEFAULT_EVERY_S = 10.0


class Progress:
    """The progress line(s) and the final summary, on stderr."""

    def __init__(self, total_files: int | None, total_bytes: int | None, *, quiet: bool,
                 every_s: float = DEFAULT_EVERY_S, stream: TextIO | None = None) -> None:
        self.total_files, self.total_bytes = total_files, total_bytes
        self.quiet = quiet
        self.stream = stream or sys.stderr
        self.tty = not quiet and self.stream.isatty()
        self.every_s = every_s
        self.start = time.monotonic()
        self.files = 0  # acknowledged without error
        self.bytes = 0
        self._next_draw = 0.0 if self.tty else self.start + every_s

    def file_done(self, job: FileJob) -> None:
        if job.error is None:
            self.files += 1
            self.bytes += job.size

    def rate(self, nbytes: int) -> float:
        """MB/s since the start."""
        return nbytes / max(time.monotonic() - self.start, 1e-6) / 1e6

    def line(self, uploader: Uploader) -> str:
        """``sent 12/48 files, 120.0 MB/480.0 MB; acknowledged 10 files, 100.0 MB; 93.1 MB/s``."""
        of_files = f"/{self.total_files}" if self.total_files is not None else ""
        of_bytes = f"/{human_bytes(self.total_bytes)}" if self.total_bytes is not None else ""
        elapsed = max(time.monotonic() - self.start, 1e-6)
        return (f"sent {uploader.files_sent}{of_files} files, {human_bytes(uploader.bytes_produced)}{of_bytes}; "
                f"acknowledged {self.files} files, {human_bytes(uploader.bytes_acked)}; "
                f"{human_rate(uploader.bytes_acked / elapsed)}")

    def draw(self, uploader: Uploader, force: bool = False) -> None:
        """Redraw on a terminal (4 times a second), or print a line every ``every_s`` without one."""
        if self.quiet:
            return
        now = time.monotonic()
        if self.tty:
            if now >= self._next_draw or force:
                self._next_draw = now + TTY_REDRAW_S
                print(f"\r{self.line(uploader)}   ", end="", file=self.stream, flush=True)
        elif self.every_s > 0 and now >= self._next_draw:
            self._next_draw = now + self.every_s
            print(self.line(uploader), file=self.stream, flush=True)

    def summary(self, topic: str, failed: int, unsent: int) -> None:
        if self.tty:
            print(file=self.stream)
        if self.quiet:
            return
        elapsed = time.monotonic() - self.start
        tail = (f", {failed} failed" if failed else "") + (f", {unsent} not sent" if unsent else "")
        print(f"uploaded {self.files} file{'s' if self.files != 1 else ''} ({human_bytes(self.bytes)}) "
              f"to '{topic}' in {elapsed:.2f}s ({human_rate(self.bytes / max(elapsed, 1e-6))}){tail}",
              file=self.stream, flush=True)
