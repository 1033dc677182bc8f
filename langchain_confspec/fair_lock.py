"""A first-come, first-served lock: callers queued on one model get it in arrival order.

`threading.Lock` lets any waiter win when the lock is released, so under steady load one
caller can starve. Here every caller takes a ticket and waits for its number to be served.
"""

from __future__ import annotations

import threading
from types import TracebackType


class FairLock:
    def __init__(self) -> None:
        self._condition = threading.Condition()
        self._next_ticket = 0
        self._serving = 0

    def __enter__(self) -> None:
        with self._condition:
            ticket = self._next_ticket
            self._next_ticket += 1
            self._condition.wait_for(lambda: self._serving == ticket)

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, traceback: TracebackType | None
    ) -> None:
        with self._condition:
            self._serving += 1
            self._condition.notify_all()
