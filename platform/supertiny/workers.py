"""Worker threads that an interrupt abandons instead of awaiting."""

import queue
import threading
from collections.abc import Callable
from typing import Any


def run_abandoning_on_interrupt(work: Callable[[Any], None], units: list[Any], workers: int) -> None:
    """Run ``work`` on each of ``units`` in ``workers`` threads; the first failure stops the units not started and
    is raised once the running ones end. An interrupt (Ctrl-C, SIGTERM) returns at once instead: the units in
    flight are abandoned, not awaited (a model in-process can take minutes to finish a turn), and the daemon
    threads that run them end with the process. What they had not written is lost; what they wrote is kept."""
    pending: queue.SimpleQueue[Any] = queue.SimpleQueue()
    for unit in units:
        pending.put(unit)
    stop = threading.Event()
    failures: list[BaseException] = []

    def loop() -> None:
        while not stop.is_set():
            try:
                unit = pending.get_nowait()
            except queue.Empty:
                return
            try:
                work(unit)
            except BaseException as exc:
                failures.append(exc)
                stop.set()

    threads = [threading.Thread(target=loop, name=f"worker-{index}", daemon=True) for index in range(workers)]
    for thread in threads:
        thread.start()
    try:
        for thread in threads:
            while thread.is_alive():
                thread.join(0.5)
    except BaseException:
        stop.set()
        raise
    if failures:
        raise failures[0]
