import _thread
import threading
import time

import pytest
from supertiny.workers import run_abandoning_on_interrupt


def test_every_unit_runs_once():
    seen, lock = [], threading.Lock()

    def work(unit):
        with lock:
            seen.append(unit)

    run_abandoning_on_interrupt(work, list(range(20)), 3)
    assert sorted(seen) == list(range(20))


def test_the_first_failure_is_raised_and_the_units_not_started_are_skipped():
    started = []

    def work(unit):
        started.append(unit)
        if unit == 0:
            raise ValueError("unit 0 broke")

    with pytest.raises(ValueError, match="unit 0 broke"):
        run_abandoning_on_interrupt(work, list(range(50)), 1)
    assert started == [0]


def test_an_interrupt_returns_without_waiting_for_the_units_in_flight():
    release = threading.Event()
    entered = threading.Event()

    def work(unit):
        entered.set()
        release.wait(60)

    threading.Timer(0.2, lambda: entered.wait(5) and _thread.interrupt_main()).start()
    began = time.monotonic()
    try:
        with pytest.raises(KeyboardInterrupt):
            run_abandoning_on_interrupt(work, list(range(4)), 2)
        assert time.monotonic() - began < 30  # the units would hold it for 60 s
    finally:
        release.set()
