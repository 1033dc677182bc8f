"""Running a blocking generator in a worker thread and consuming it from asyncio.

The engine is synchronous torch code; async callers must not block the event loop while
it runs. The worker thread owns the generator for its whole life (so the engine's slot is
taken and released in one thread), and stops it at the next item when the consumer goes
away.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator, Callable, Iterator
from typing import TypeVar

T = TypeVar("T")

_DONE = object()


async def iterate_in_thread(make_iterator: Callable[[], Iterator[T]]) -> AsyncIterator[T]:
    """Yield the items of `make_iterator()`, produced in a worker thread, without blocking."""
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue[tuple[object, BaseException | None]] = asyncio.Queue()
    abandoned = threading.Event()

    def deliver(item: object, error: BaseException | None = None) -> None:
        try:
            loop.call_soon_threadsafe(queue.put_nowait, (item, error))
        except RuntimeError:  # the loop is closed: nobody is listening any more
            abandoned.set()

    def work() -> None:
        iterator = make_iterator()
        try:
            for item in iterator:
                if abandoned.is_set():
                    break
                deliver(item)
        except BaseException as exc:  # noqa: BLE001 - handed to the consumer, re-raised there
            deliver(_DONE, exc)
            return
        finally:
            close = getattr(iterator, "close", None)
            if close is not None:
                close()
        deliver(_DONE)

    worker = threading.Thread(target=work, name="confspec-generation", daemon=True)
    worker.start()
    try:
        while True:
            item, error = await queue.get()
            if error is not None:
                raise error
            if item is _DONE:
                return
            yield item  # type: ignore[misc]
    finally:
        abandoned.set()
