"""Build training batches ahead of the training loop, on background threads, in order.

Every batch is a pure function of (seed, epoch, batch index) (see TaskSampler), so
it does not matter which thread builds it or when: the loop receives exactly the
batches it would have built itself, and a resumed run the ones it would have
received. Threads rather than processes: the batch builder's work is numpy
copies and arithmetic, which release the GIL, so threads run it in parallel
with the training step without pickling the dataset into every worker or
copying each batch back through a pipe (`python -m bench --only sampler`
measures both). Batches come out as CPU tensors, ready to pin. How many threads build
them is the caller's choice (`useg.compute.device.split_cores` shares out the cores).
"""

from __future__ import annotations

from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Callable, Iterator, TypeVar

Item = TypeVar("Item")

QUEUE_BATCHES_PER_WORKER = 2  # enough to hide one slow batch; more only holds memory


class Prefetcher:
    """Yields (index, build(index)) for each index in order, built by `workers` threads ahead of use.

    At most QUEUE_BATCHES_PER_WORKER * workers batches exist ahead of the loop. With
    workers=0 each batch is built on the caller's thread when it is needed. An error in
    `build` is raised by the iteration that would have yielded that batch. Use it as a
    context manager: leaving it (loop done, exception, Ctrl+C) cancels what is queued and
    waits for the batches being built, so no thread outlives the epoch.
    """

    def __init__(self, build: Callable[[int], Item], indices: range, workers: int) -> None:
        if workers < 0:
            raise ValueError(f"workers must be 0 or more, got {workers}")
        self.build, self.indices, self.workers = build, indices, workers
        self._pool = ThreadPoolExecutor(workers, thread_name_prefix="useg-batches") if workers else None
        self._ahead: deque[tuple[int, Future]] = deque()
        self._next = iter(indices)

    def __iter__(self) -> Iterator[tuple[int, Item]]:
        if self._pool is None:
            for index in self._next:
                yield index, self.build(index)
            return
        self._fill()
        while self._ahead:
            index, future = self._ahead.popleft()
            item = future.result()
            self._fill()  # before handing it out, so the workers build while the caller trains
            yield index, item

    def _fill(self) -> None:
        while len(self._ahead) < QUEUE_BATCHES_PER_WORKER * self.workers:
            index = next(self._next, None)
            if index is None:
                return
            self._ahead.append((index, self._pool.submit(self.build, index)))

    def close(self) -> None:
        """Drop the batches not yet started and wait for those being built (a few ms each)."""
        if self._pool is not None:
            for _, future in self._ahead:
                future.cancel()
            self._ahead.clear()
            self._pool.shutdown(wait=True, cancel_futures=True)

    def __enter__(self) -> Prefetcher:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()
