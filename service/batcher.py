"""Dynamic batching: many callers' inputs, one forward pass.

The loop blocks for the first queued input, then waits up to ``max_wait`` for more. It takes
the queued inputs oldest first (at most a window of a few batches), sorts them by length and
cuts them into batches bounded by ``max_batch_size``, a padded-token budget and a largest
share of padding, so inputs of similar length share a batch and padding stays small. Each batch runs in a dedicated
executor thread so the event loop never blocks. Every future gets a result or an exception:
cancelled inputs and inputs whose deadline passed are dropped before inference, and a
failing batch fails each of its inputs (none is left waiting). A bounded queue rejects new
work with :class:`OverloadedError` instead of growing without bound.
"""

from __future__ import annotations

import asyncio
import logging
import time
from concurrent.futures import Executor, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Callable, Generic, Sequence, TypeVar

from core.errors import DeadlineExceededError, InvalidInputError, NotReadyError, OverloadedError
from service import tracing

log = logging.getLogger(__name__)

Item = TypeVar("Item")
Result = TypeVar("Result")
WINDOW_BATCHES = 4


@dataclass(frozen=True)
class BatchStats:
    size: int
    padded_tokens: int
    seconds: float


@dataclass
class Completed(Generic[Result]):
    """One input's result with the time it queued and the batch it ran in."""

    value: Result
    queue_seconds: float
    batch: BatchStats


@dataclass
class _Pending:
    item: Any
    length: int
    future: asyncio.Future
    deadline: float | None
    enqueued: float = field(default_factory=time.monotonic)
    call: tracing.CallTrace = field(default_factory=tracing.current_call)  # made in submit, so: the submitting call's


def length_sorted_batches(lengths: Sequence[int], max_batch_size: int, max_batch_tokens: int, max_padding: float = 1.0) -> list[list[int]]:
    """Positions of ``lengths`` cut into length-sorted batches within the size, padded-token
    and padding-share limits (the batcher's and ``protolm predict``'s batches).

    A batch is also closed when the next (longer) input would make padding more than
    ``max_padding`` of its tokens: several tight batches run faster than one padded batch.
    """
    batches: list[list[int]] = []
    current: list[int] = []
    real = 0
    for i in sorted(range(len(lengths)), key=lengths.__getitem__):
        length = lengths[i]
        padded = (len(current) + 1) * length  # this input is the longest so far
        if current and (
            len(current) >= max_batch_size
            or padded > max_batch_tokens
            or 1.0 - (real + length) / padded > max_padding
        ):
            batches.append(current)
            current, real = [], 0
        current.append(i)
        real += length
    if current:
        batches.append(current)
    return batches


class DynamicBatcher(Generic[Item, Result]):
    def __init__(
        self,
        run_batch: Callable[[list[Item]], Sequence[Result]],
        max_batch_size: int,
        max_batch_tokens: int,
        max_wait_seconds: float,
        max_queue_size: int,
        max_padding: float = 1.0,
        executor: Executor | None = None,
        on_batch: Callable[[BatchStats], None] | None = None,
        on_queue_depth: Callable[[int], None] | None = None,
    ):
        if max_batch_size < 1 or max_queue_size < 1:
            raise ValueError("max_batch_size and max_queue_size must be at least 1")
        self._run_batch = run_batch
        self.max_batch_size = max_batch_size
        self.max_batch_tokens = max_batch_tokens
        self.max_wait_seconds = max_wait_seconds
        self.max_queue_size = max_queue_size
        self.max_padding = max_padding
        self._owns_executor = executor is None
        self._executor = executor or ThreadPoolExecutor(max_workers=1, thread_name_prefix="protolm-model")
        self._on_batch = on_batch or (lambda stats: None)
        self._on_queue_depth = on_queue_depth or (lambda depth: None)
        self._queue: list[_Pending] = []
        self._window: list[_Pending] = []  # taken from the queue, being batched and run
        self._wakeup = asyncio.Event()
        self._task: asyncio.Task | None = None
        self._accepting = False
        self._running_batches = 0

    @property
    def queue_depth(self) -> int:
        return len(self._queue)

    @property
    def idle(self) -> bool:
        return not self._queue and self._running_batches == 0

    def start(self) -> None:
        if self._task is None:
            self._accepting = True
            self._task = asyncio.get_running_loop().create_task(self._loop(), name="protolm-batcher")

    async def stop(self, drain_seconds: float = 0.0) -> None:
        """Refuse new work; let queued work finish for up to ``drain_seconds``; fail the rest."""
        self._accepting = False
        deadline = time.monotonic() + drain_seconds
        while not self.idle and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
            self._task = None
        self._fail(self._window + self._queue, NotReadyError("the server is shutting down"))
        self._window, self._queue = [], []
        self._on_queue_depth(0)
        if self._owns_executor:
            self._executor.shutdown(wait=False)

    def check_capacity(self, count: int) -> None:
        """Refuse at once what cannot be queued now (retryable) or ever (not retryable)."""
        if count > self.max_queue_size:
            raise InvalidInputError(f"{count} inputs in one call can never fit the queue of {self.max_queue_size}; send fewer")
        if not self._accepting:
            raise NotReadyError("the server is not accepting requests")
        if len(self._queue) + count > self.max_queue_size:
            raise OverloadedError(
                f"queue full ({len(self._queue)} inputs waiting, limit {self.max_queue_size}); retry later"
            )

    async def submit(self, items: Sequence[Item], lengths: Sequence[int], deadline: float | None = None) -> list[Completed[Result]]:
        """Queue a request's inputs and wait for all of them; ``deadline`` is a monotonic time."""
        self.check_capacity(len(items))
        loop = asyncio.get_running_loop()
        pending = [_Pending(item, length, loop.create_future(), deadline) for item, length in zip(items, lengths)]
        self._queue.extend(pending)
        self._on_queue_depth(len(self._queue))
        self._wakeup.set()
        try:
            return list(await asyncio.gather(*(p.future for p in pending)))
        finally:
            self._withdraw(pending)

    def _withdraw(self, pending: list[_Pending]) -> None:
        """A cancelled or failed caller leaves nothing behind: its inputs still queued leave
        the queue at once (the depth counts live inputs only) and none of them is computed."""
        for p in pending:
            if not p.future.done():
                p.future.cancel()
        gone = {id(p) for p in pending}
        queued = len(self._queue)
        self._queue = [p for p in self._queue if id(p) not in gone]
        if len(self._queue) != queued:
            self._on_queue_depth(len(self._queue))

    async def _loop(self) -> None:
        while True:
            while not self._queue:  # a withdrawn caller can empty the queue after the wake-up
                self._wakeup.clear()
                await self._wakeup.wait()
            oldest = self._queue[0].enqueued
            full = self.max_batch_size
            while len(self._queue) < full and (remaining := oldest + self.max_wait_seconds - time.monotonic()) > 0:
                self._wakeup.clear()
                try:
                    await asyncio.wait_for(self._wakeup.wait(), remaining)
                except asyncio.TimeoutError:
                    break
            window = self._window = self._queue[: self.max_batch_size * WINDOW_BATCHES]
            del self._queue[: len(window)]
            self._on_queue_depth(len(self._queue))
            try:
                for batch in self._cut(self._live(window)):
                    await self._execute(batch)
            except Exception as exc:  # a bug here must not strand the window's callers
                log.exception("batcher failed on a window of %d inputs", len(window))
                self._fail(window, exc)

    def _live(self, pending: list[_Pending]) -> list[_Pending]:
        now = time.monotonic()
        live = []
        for p in pending:
            if p.future.done():
                continue  # cancelled by its caller
            if p.deadline is not None and p.deadline <= now:
                p.future.set_exception(DeadlineExceededError("deadline passed while the request was queued"))
                continue
            live.append(p)
        return live

    def _cut(self, pending: list[_Pending]) -> list[list[_Pending]]:
        lengths = [p.length for p in pending]
        cuts = length_sorted_batches(lengths, self.max_batch_size, self.max_batch_tokens, self.max_padding)
        return [[pending[i] for i in batch] for batch in cuts]

    async def _execute(self, batch: list[_Pending]) -> None:
        batch = [p for p in batch if not p.future.done()]
        if not batch:
            return
        started = time.monotonic()
        padded_tokens = len(batch) * max(p.length for p in batch)
        trace = tracing.batch_started([p.call for p in batch], len(batch), padded_tokens)  # a no-op unless a caller is traced
        self._running_batches += 1
        try:
            results = await asyncio.get_running_loop().run_in_executor(
                self._executor, self._run_batch, [p.item for p in batch]
            )
            if len(results) != len(batch):
                raise RuntimeError(f"model returned {len(results)} results for a batch of {len(batch)}")
        except Exception as exc:  # every caller of the batch must learn of the failure
            log.exception("batch of %d failed", len(batch))
            trace.end(exc)
            self._fail(batch, exc)
            return
        finally:
            self._running_batches -= 1
        finished = time.monotonic()
        trace.end()
        stats = BatchStats(len(batch), padded_tokens, finished - started)
        self._on_batch(stats)
        for p, result in zip(batch, results):
            if not p.future.done():
                p.future.set_result(Completed(result, started - p.enqueued, stats))

    @staticmethod
    def _fail(pending: list[_Pending], error: BaseException) -> None:
        for p in pending:
            if not p.future.done():
                p.future.set_exception(error)
