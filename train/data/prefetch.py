"""Batches built ahead of the train step, in a background thread.

    with Prefetch(batches, start, stop, depth=2) as ahead:
        for step in range(start, stop):
            batch = next(ahead)          # batches[step], usually ready already

A thread computes `batches[start]`, `batches[start + 1]`, ... up to `stop` (exclusive) into a
queue of at most `depth` batches, so building the next batch (numpy, reading the memory-mapped
token store, which releases the GIL for much of its work) overlaps the device's step. The
sequence is exactly `[batches[s] for s in range(start, stop)]`. An exception raised by
`batches[s]` is raised by the `next` call that would have returned it. Leaving the `with` block
(or `close()`) early stops the thread: it never blocks forever on a full queue.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Iterator
from typing import Any

_DONE = object()


class Prefetch(Iterator):
    """An iterator over `batches[start:stop]`, `depth` batches ahead (see the module docstring)."""

    def __init__(self, batches: Any, start: int, stop: int, depth: int = 2) -> None:
        if depth < 1:
            raise ValueError(f"depth must be >= 1, got {depth}")
        if start < 0 or stop < start:
            raise ValueError(f"need 0 <= start <= stop, got start={start}, stop={stop}")
        self._queue: queue.Queue = queue.Queue(maxsize=depth)
        self._stop = threading.Event()
        self._finished = False
        self._thread = threading.Thread(
            target=self._fill, args=(batches, start, stop), name="prefetch", daemon=True
        )
        self._thread.start()

    def _put(self, item: Any) -> bool:
        """Put `item` unless the consumer stopped; False once it has."""
        while not self._stop.is_set():
            try:
                self._queue.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def _fill(self, batches: Any, start: int, stop: int) -> None:
        for step in range(start, stop):
            try:
                item: Any = ("batch", batches[step])
            except BaseException as error:  # noqa: BLE001 -- re-raised in the consumer
                self._put(("error", error))
                return
            if not self._put(item):
                return
        self._put(("done", _DONE))

    def __next__(self) -> Any:
        if self._finished:
            raise StopIteration
        kind, value = self._queue.get()
        if kind == "batch":
            return value
        self._finished = True
        self._thread.join()
        if kind == "error":
            raise value
        raise StopIteration

    def close(self) -> None:
        """Stop the thread (it finishes the batch in progress) and wait for it."""
        self._stop.set()
        self._finished = True
        self._thread.join()

    def __enter__(self) -> Prefetch:
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self.close()
