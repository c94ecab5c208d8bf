"""Throughput scheduling for the TensorRT backend, free of any device code so it is testable anywhere.

`pipelined` spreads batches over N lanes (one execution context + stream + buffers each) so the
upload of one batch, the inference of another and the download of a third overlap on the GPU.
`GraphPolicy` decides, per lane, when a CUDA graph can be captured and replayed: only for a batch
size that has already run once (TensorRT allocates and tunes on its first enqueue for a shape, which
must not be captured) and never again for a batch size whose capture failed.
"""

from __future__ import annotations

from collections import deque
from typing import Callable, Iterable, Iterator, Sequence, TypeVar

Item = TypeVar('Item')
Lane = TypeVar('Lane')
Handle = TypeVar('Handle')
Result = TypeVar('Result')


def pipelined(items: Iterable[Item], lanes: Sequence[Lane],
              submit: Callable[[Lane, Item], Handle],
              collect: Callable[[Lane, Handle], Result]) -> Iterator[Result]:
    """Yield collect(...) for each item, in input order, keeping up to len(lanes) items in flight.

    Item k runs on lane k % N. `submit(lane, item)` must only enqueue asynchronous work and return
    a handle; `collect(lane, handle)` waits for it and returns the result. A lane gets its next
    item only after its previous one was collected, so a lane's buffers are never overwritten
    while still in use. With one lane this is plain sequential inference.
    """
    if not lanes:
        raise ValueError('pipelined needs at least one lane')
    pending = iter(items)
    in_flight: deque = deque()
    submitted = 0

    def fill() -> None:
        nonlocal submitted
        while len(in_flight) < len(lanes):
            try:
                item = next(pending)
            except StopIteration:
                return
            lane = lanes[submitted % len(lanes)]
            in_flight.append((lane, submit(lane, item)))
            submitted += 1

    fill()
    while in_flight:
        lane, handle = in_flight.popleft()
        result = collect(lane, handle)
        # Refill before handing the result out: the GPU works while the caller uses it.
        fill()
        yield result


EAGER = 'eager'      # enqueue normally (set the input shape first if `reshape`)
CAPTURE = 'capture'  # enqueue under stream capture, then launch the new graph
REPLAY = 'replay'    # launch the graph captured for this batch size


class GraphPolicy:
    """Per-lane CUDA graph bookkeeping. A graph is bound to the input shape and to the buffer
    addresses it was captured with, so it is dropped when either changes.

    Use: `action, reshape = policy.next(batch)`; after a CAPTURE call `captured(ok)`; call
    `buffers_changed()` after reallocating the lane's buffers.
    """

    def __init__(self, enabled: bool):
        self.enabled = enabled
        self.batch: int | None = None  # batch size the context's input shape is set to
        self.has_graph = False
        self._warm = False  # an eager run at this batch size and these buffers has completed
        self._failed: set[int] = set()

    def next(self, batch: int) -> tuple[str, bool]:
        """(action, reshape): reshape is True when the input shape must be set to `batch` first
        (which also invalidates any graph of the previous size: the caller frees it)."""
        if batch != self.batch:
            self.batch, self.has_graph, self._warm = batch, False, True
            return EAGER, True
        if self.has_graph:
            return REPLAY, False
        if self.enabled and self._warm and batch not in self._failed:
            return CAPTURE, False
        self._warm = True
        return EAGER, False

    def captured(self, ok: bool) -> None:
        """Report the outcome of a CAPTURE: on failure this batch size stays eager for good."""
        if ok:
            self.has_graph = True
        else:
            self._failed.add(self.batch)

    def buffers_changed(self) -> None:
        """The lane's buffers moved: a captured graph points at the old ones."""
        self.has_graph = False
        self._warm = False
