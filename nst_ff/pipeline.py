"""Reader -> work -> writer on threads, so that files are decoded and encoded while the network runs.

Pillow's and FFmpeg's decoders and encoders release the GIL, so a few threads keep a GPU fed without the
start-up and copying costs of processes. Reads run ahead of the work in order, at most ``depth`` items;
writes run behind it, at most ``depth`` pending: memory stays bounded however long the job. The work runs
in the calling thread: it owns the device, and Ctrl-C (delivered to the main thread) stops it at once.
"""

from __future__ import annotations

import queue
import threading
from collections import deque
from collections.abc import Callable, Hashable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import closing
from typing import Any, TypeVar

Item = TypeVar("Item")
Result = TypeVar("Result")


def read_ahead(
    items: Iterable[Item], read: Callable[[Item], Result], workers: int, depth: int
) -> Iterator[tuple[Item, Result | Exception]]:
    """``(item, read(item))`` in the order of ``items``, ``read`` running on ``workers`` threads up to
    ``depth`` items ahead of the consumer. A read that raised yields its exception in place of a result."""
    with ThreadPoolExecutor(workers, thread_name_prefix="read") as pool:
        pending: deque[tuple[Item, Future]] = deque()
        for item in items:
            pending.append((item, pool.submit(read, item)))
            if len(pending) >= depth:
                yield _outcome(*pending.popleft())
        while pending:
            yield _outcome(*pending.popleft())


def _outcome(item: Item, future: Future) -> tuple[Item, Any]:
    try:
        return item, future.result()
    except Exception as error:  # handed to the consumer, which knows which errors are the user's
        return item, error


def batched(
    elements: Iterable[Item], key: Callable[[Item], Hashable], size: Callable[[Item], int]
) -> Iterator[list[Item]]:
    """Runs of consecutive elements with equal ``key``, each at most ``size(first element)`` long."""
    batch: list[Item] = []
    for element in elements:
        if batch and (key(element) != key(batch[0]) or len(batch) >= size(batch[0])):
            yield batch
            batch = []
        batch.append(element)
    if batch:
        yield batch


class Writer:
    """``submit(fn, *args)`` runs ``fn`` on one of ``workers`` threads; beyond ``depth`` pending calls
    it waits for one to finish. Leaving the ``with`` block waits for all of them."""

    def __init__(self, workers: int, depth: int) -> None:
        self._pool = ThreadPoolExecutor(workers, thread_name_prefix="write")
        self._slots = threading.BoundedSemaphore(depth)

    def submit(self, fn: Callable[..., Result], *args: Any) -> Future:
        self._slots.acquire()
        future = self._pool.submit(fn, *args)
        future.add_done_callback(lambda _: self._slots.release())
        return future

    def __enter__(self) -> Writer:
        return self

    def __exit__(self, *exc: object) -> None:
        self._pool.shutdown(wait=True)


class _Raised:
    def __init__(self, error: BaseException) -> None:
        self.error = error


_END = object()


def prefetch(items: Iterable[Item], depth: int) -> Iterator[Item]:
    """The elements of ``items``, produced on a thread at most ``depth`` ahead of the consumer: for a stream
    that must be read in order (a video's frames). The producer's error is raised in the consumer; a
    consumer that stops early stops the producer."""
    channel: queue.Queue = queue.Queue(depth)
    stop = threading.Event()

    def put(element: object) -> bool:
        while not stop.is_set():
            try:
                channel.put(element, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def produce() -> None:
        try:
            for element in items:
                if not put(element):
                    return
            put(_END)
        except BaseException as error:  # handed to the consumer's thread, where it is raised
            put(_Raised(error))

    producer = threading.Thread(target=produce, name="prefetch", daemon=True)
    producer.start()
    try:
        while (element := channel.get()) is not _END:
            if isinstance(element, _Raised):
                raise element.error
            yield element
    finally:
        stop.set()
        producer.join()


def overlapped(
    items: Iterable[Item], work: Callable[[Item], Result], write: Callable[[Result], object], depth: int
) -> None:
    """``write(work(item))`` for every item in order: ``items`` produced on a reader thread, ``write`` called
    on one writer thread, each at most ``depth`` items ahead of or behind ``work``. The first error of any
    stage stops all three and is raised here."""
    pending: deque[Future] = deque()
    with Writer(1, depth) as writer, closing(prefetch(items, depth)) as stream:
        for item in stream:
            while pending and pending[0].done():
                pending.popleft().result()  # a failed write raises here
            pending.append(writer.submit(write, work(item)))
    for future in pending:
        future.result()
