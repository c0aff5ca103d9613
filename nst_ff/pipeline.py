"""Overlap reading, computing and writing: a reader thread, the work in the calling thread, a writer thread.

While the network stylises one batch, the reader prepares the next (decoding files or frames) and the writer
saves the previous one (encoding, writing). Queues between them hold at most ``depth`` items each, so memory
stays flat however long the stream. The work runs in the calling thread: it owns the device, and Ctrl-C
(delivered to the main thread) interrupts it at once. The first error anywhere stops all three and is
raised in the caller.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable, Iterable
from contextlib import suppress
from typing import Any, TypeVar

T = TypeVar("T")
U = TypeVar("U")

_DONE = object()
_POLL_S = 0.1


class _Failed:
    def __init__(self, error: BaseException) -> None:
        self.error = error


class _Stopped(Exception):
    """Raised inside a helper thread when the pipeline is shutting down."""


def _put(channel: queue.Queue, item: Any, stop: threading.Event) -> None:
    """Block until there is room, giving up when ``stop`` is set (so no thread waits forever)."""
    while True:
        if stop.is_set():
            raise _Stopped
        try:
            channel.put(item, timeout=_POLL_S)
            return
        except queue.Full:
            continue


def _get(channel: queue.Queue, stop: threading.Event) -> Any:
    while True:
        if stop.is_set():
            raise _Stopped
        try:
            return channel.get(timeout=_POLL_S)
        except queue.Empty:
            continue


def overlapped(items: Iterable[T], work: Callable[[T], U], write: Callable[[U], object], depth: int = 2) -> None:
    """``write(work(item))`` for every item in order, with ``items`` iterated in a reader thread and ``write``
    called in a writer thread, each at most ``depth`` items ahead of or behind ``work``."""
    inbox: queue.Queue = queue.Queue(maxsize=depth)
    outbox: queue.Queue = queue.Queue(maxsize=depth)
    stop = threading.Event()
    writer_error: list[BaseException] = []

    def read() -> None:
        try:
            for item in items:
                _put(inbox, item, stop)
            _put(inbox, _DONE, stop)
        except _Stopped:
            pass
        except BaseException as error:
            with suppress(_Stopped):
                _put(inbox, _Failed(error), stop)

    def drain() -> None:
        try:
            while (result := _get(outbox, stop)) is not _DONE:
                write(result)
        except _Stopped:
            pass
        except BaseException as error:
            writer_error.append(error)
            stop.set()

    threads = [threading.Thread(target=read, daemon=True), threading.Thread(target=drain, daemon=True)]
    for thread in threads:
        thread.start()
    try:
        while True:
            item = _get(inbox, stop)
            if item is _DONE:
                break
            if isinstance(item, _Failed):
                raise item.error
            _put(outbox, work(item), stop)
        _put(outbox, _DONE, stop)
        threads[1].join()
    except _Stopped:
        pass  # the writer failed: its error is raised below
    finally:
        stop.set()
        for thread in threads:
            thread.join()
    if writer_error:
        raise writer_error[0]
