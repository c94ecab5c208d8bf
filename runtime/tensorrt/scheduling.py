"""Throughput scheduling for the TensorRT backend, free of any device code so it is testable anywhere.

`pipelined` spreads batches over N lanes (one execution context + stream + buffers each) so the
upload of one batch, the inference of another and the download of a third overlap on the GPU.
`GraphPolicy` decides, per lane, when a CUDA graph can be captured and replayed: only for a batch
size that has already run once (TensorRT allocates and tunes on its first enqueue for a shape, which
must not be captured) and never again for a batch size whose capture failed.
"""

from __future__ import annotations

from collections import deque
from typing import Callable, Hashable, Iterable, Iterator, Sequence, TypeVar

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

    Use: `action, reshape = policy.next(shape)` (shape: the batch's input shape, (B, H, W, 3), or
    any hashable that changes with it); after a CAPTURE call `captured(ok)`; call
    `buffers_changed()` after reallocating the lane's buffers.
    """

    def __init__(self, enabled: bool):
        self.enabled = enabled
        self.shape: Hashable | None = None  # the input shape the context is set to
        self.has_graph = False
        self._warm = False  # an eager run at this shape and these buffers has completed
        self._failed: set[Hashable] = set()

    def next(self, shape: Hashable) -> tuple[str, bool]:
        """(action, reshape): reshape is True when the input shape must be set to `shape` first
        (which also invalidates any graph of the previous shape: the caller frees it)."""
        if shape != self.shape:
            self.shape, self.has_graph, self._warm = shape, False, True
            return EAGER, True
        if self.has_graph:
            return REPLAY, False
        if self.enabled and self._warm and shape not in self._failed:
            return CAPTURE, False
        self._warm = True
        return EAGER, False

    def captured(self, ok: bool) -> None:
        """Report the outcome of a CAPTURE: on failure this input shape stays eager for good."""
        if ok:
            self.has_graph = True
        else:
            self._failed.add(self.shape)

    def buffers_changed(self) -> None:
        """The lane's buffers moved: a captured graph points at the old ones."""
        self.has_graph = False
        self._warm = False
