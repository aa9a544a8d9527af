"""Run a function over a stream of work items on a few threads, results in input order.

Hashing (hashlib), compression (zstandard) and file reads release the GIL, so two or three
threads keep both cores busy while the caller's thread packs results. The look-ahead bounds
how many items are in flight, and so the memory used, whatever the input size.
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from typing import TypeVar

In = TypeVar("In")
Out = TypeVar("Out")


def ordered_map(fn: Callable[[In], Out], items: Iterable[In], *, workers: int,
                lookahead: int) -> Iterator[Out]:
    """Yield ``fn(item)`` for each item, in order, with at most ``lookahead`` pending."""
    pending: deque[Future[Out]] = deque()
    executor = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="sbr-repo")
    try:
        for item in items:
            pending.append(executor.submit(fn, item))
            if len(pending) >= lookahead:
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()
    finally:
        for future in pending:
            future.cancel()
        executor.shutdown(wait=True, cancel_futures=True)


def limited(fn: Callable[..., Out], limit: int) -> Callable[..., Out]:
    """``fn``, run by at most ``limit`` threads at once; the others wait their turn."""
    slots = threading.BoundedSemaphore(limit)

    def call(*args: object) -> Out:
        with slots:
            return fn(*args)
    return call


def batched(items: Iterable[In], size: int) -> Iterator[list[In]]:
    batch: list[In] = []
    for item in items:
        batch.append(item)
        if len(batch) >= size:
            yield batch
            batch = []
    if batch:
        yield batch
