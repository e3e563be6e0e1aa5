"""Ordered, bounded read-ahead: the next items are computed in threads while the caller uses the current one."""
from __future__ import annotations

import itertools
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Callable, Iterator, Sequence


def prefetched(fn: Callable, items: Sequence, workers: int, ahead: int, initializer: Callable | None = None,
               initargs: tuple = ()) -> Iterator:
    """fn(item) for each item in order, computed up to `ahead` items early in `workers` threads.

    Unlike Executor.map, which submits everything at once, at most `ahead` results wait in memory, so a slow
    item cannot make the rest pile up. Threads, not processes: the work (ffmpeg subprocesses, PyAV decoding,
    torch ops) releases the GIL and nothing has to be pickled. workers <= 0 computes inline.
    """
    if workers <= 0:
        yield from map(fn, items)
        return
    with ThreadPoolExecutor(workers, thread_name_prefix="prefetch", initializer=initializer,
                            initargs=initargs) as pool:
        pending: deque[Future] = deque()
        it = iter(items)
        try:
            for item in itertools.islice(it, max(1, ahead)):
                pending.append(pool.submit(fn, item))
            while pending:
                result = pending.popleft().result()
                for item in itertools.islice(it, 1):
                    pending.append(pool.submit(fn, item))
                yield result
        finally:
            for future in pending:
                future.cancel()
