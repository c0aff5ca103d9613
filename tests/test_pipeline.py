"""The reader -> work -> writer pipeline: order, bounded look-ahead, errors from any stage."""

from __future__ import annotations

import threading
from collections.abc import Iterator

import pytest

from nst_ff.pipeline import overlapped


def test_results_are_written_in_order_with_bounded_look_ahead() -> None:
    read, written = [], []

    def items() -> Iterator[int]:
        for i in range(50):
            # The reader may run ahead of the writer by the two queues and the items in hand, no more.
            assert i - len(written) <= 2 * 2 + 3
            read.append(i)
            yield i

    overlapped(items(), lambda x: x * x, written.append, depth=2)
    assert written == [i * i for i in range(50)]


@pytest.mark.parametrize("stage", ["read", "work", "write"])
def test_the_first_error_of_any_stage_reaches_the_caller_and_stops_the_threads(stage: str) -> None:
    def items() -> Iterator[int]:
        for i in range(1000):
            if stage == "read" and i == 5:
                raise OSError("read failed")
            yield i

    def work(x: int) -> int:
        if stage == "work" and x == 5:
            raise KeyboardInterrupt
        return x

    def write(x: int) -> None:
        if stage == "write" and x == 5:
            raise ValueError("write failed")

    before = threading.active_count()
    with pytest.raises((OSError, KeyboardInterrupt, ValueError)) as error:
        overlapped(items(), work, write)
    assert type(error.value) is {"read": OSError, "work": KeyboardInterrupt, "write": ValueError}[stage]
    assert threading.active_count() == before
