"""The status page's parts: the 15-minute history ring and the board handing reports between threads."""

from __future__ import annotations

import threading

from omsd.telemetry.history import History
from omsd.telemetry.statuspage import StatusBoard, page_html, status_app


def test_history_buckets_rates_and_forgets_what_is_older_than_its_span() -> None:
    now = [1000.0]
    history = History(bucket_s=10, span_s=60, clock=lambda: now[0])
    history.add("mirror", 1000)
    history.add("mirror", 3000)
    history.add("mirror", 0, failed=True)
    now[0] = 1015.0
    history.add("mirror", 500)
    snap = history.snapshot(["mirror", "idle"])
    assert snap["bucket_s"] == 10 and snap["end"] == 1020.0
    mirror = snap["pipelines"]["mirror"]
    assert mirror["files_per_s"] == [0, 0, 0, 0, 0.2, 0.1] and mirror["bytes_per_s"][-2:] == [400.0, 50.0]
    assert mirror["failed_per_s"][-2] == 0.1
    assert snap["pipelines"]["idle"]["files_per_s"] == [0.0] * 6
    now[0] = 1065.0  # the bucket of 1010 is still within the minute, that of 1000 is gone
    assert history.snapshot()["pipelines"]["mirror"]["files_per_s"] == [0.1, 0, 0, 0, 0, 0]
    now[0] = 1120.0
    history.add("mirror", 7)  # lands in a slot used by an older round of the ring, which starts afresh
    assert history.snapshot()["pipelines"]["mirror"]["files_per_s"] == [0, 0, 0, 0, 0, 0.1]


def test_board_answers_from_the_loop_thread_and_falls_back_to_a_stale_report() -> None:
    board = StatusBoard()
    assert not board.serve(lambda: {"n": 0})  # nobody asked: nothing built
    stop = threading.Event()
    built = []

    def loop() -> None:
        while not stop.is_set():
            board.serve(lambda: built.append(1) or {"n": len(built)})
            stop.wait(0.01)

    thread = threading.Thread(target=loop)
    thread.start()
    try:
        assert board.get(timeout=5) == {"n": 1}
        assert board.get(timeout=5) == {"n": 2}  # a fresh report for every request
    finally:
        stop.set()
        thread.join()
    assert board.get(timeout=0.05) == {"n": 2, "stale": True}  # the loop is busy: the last one, marked


def test_only_get_is_served() -> None:
    board = StatusBoard()
    calls = []

    def start_response(status, headers):
        calls.append((status, dict(headers)))

    app = status_app(lambda environ, sr: [b""], board)
    app({"REQUEST_METHOD": "POST", "PATH_INFO": "/"}, start_response)
    assert calls[-1][0].startswith("405") and calls[-1][1]["Allow"] == "GET"
    body = b"".join(app({"REQUEST_METHOD": "GET", "PATH_INFO": "/"}, start_response))
    assert calls[-1][0] == "200 OK" and body == page_html() and b"status.json" in body
