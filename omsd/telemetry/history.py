"""The last 15 minutes of each pipeline's throughput, in fixed time buckets (a ring per pipeline).

Fed once per finished file (``add``); read by the status report (``snapshot``), which the status
page draws as files/s and bytes/s. Memory is fixed: ``span_s / bucket_s`` buckets per pipeline.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable

BUCKET_S = 10.0
SPAN_S = 15 * 60.0


class History:
    """Files and bytes done (and files failed) per pipeline and time bucket, for the last ``span_s``."""

    def __init__(self, bucket_s: float = BUCKET_S, span_s: float = SPAN_S,
                 clock: Callable[[], float] = time.time) -> None:
        self.bucket_s = bucket_s
        self.size = max(1, int(round(span_s / bucket_s)))
        self.clock = clock
        # pipeline -> ring of [bucket number, files, bytes, failed]; slot = bucket number % size
        self._rings: dict[str, list[list[float]]] = {}
        self._lock = threading.Lock()

    def add(self, pipeline: str, n_bytes: int, *, failed: bool = False) -> None:
        """Count one file of ``pipeline``, done (with its bytes) or failed, in the current bucket."""
        bucket = int(self.clock() // self.bucket_s)
        with self._lock:
            ring = self._rings.get(pipeline)
            if ring is None:  # built once per pipeline, not on every call
                ring = self._rings[pipeline] = [[-1, 0, 0, 0] for _ in range(self.size)]
            slot = ring[bucket % self.size]
            if slot[0] != bucket:  # an old round of the ring: start the bucket afresh
                slot[:] = [bucket, 0, 0, 0]
            if failed:
                slot[3] += 1
            else:
                slot[1] += 1
                slot[2] += n_bytes

    def snapshot(self, pipelines: Iterable[str] = ()) -> dict:
        """Per-second rates, oldest bucket first, ending with the current (partial) bucket.

        ``{"bucket_s": 10, "end": <unix time of the current bucket's end>, "pipelines": {name:
        {"files_per_s": [...], "bytes_per_s": [...], "failed_per_s": [...]}}}``; every listed pipeline
        appears, with zeros when it did nothing.
        """
        now_bucket = int(self.clock() // self.bucket_s)
        first = now_bucket - self.size + 1
        out: dict[str, dict[str, list[float]]] = {}
        with self._lock:
            names = list(dict.fromkeys([*pipelines, *self._rings]))
            for name in names:
                series = {"files_per_s": [0.0] * self.size, "bytes_per_s": [0.0] * self.size,
                          "failed_per_s": [0.0] * self.size}
                for bucket, files, nbytes, failed in self._rings.get(name, []):
                    if first <= bucket <= now_bucket:
                        i = int(bucket) - first
                        series["files_per_s"][i] = files / self.bucket_s
                        series["bytes_per_s"][i] = nbytes / self.bucket_s
                        series["failed_per_s"][i] = failed / self.bucket_s
                out[name] = series
        return {"bucket_s": self.bucket_s, "end": (now_bucket + 1) * self.bucket_s, "pipelines": out}
