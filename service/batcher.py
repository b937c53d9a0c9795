"""Dynamic batching: many callers' inputs, one forward pass.

The loop blocks for the first queued input, then waits up to ``max_wait`` for more: until a
full batch is queued or, right after a batch, until the callers it answered are back (a
closed-loop caller sends again at once; without them the next batch would be cut from the
leftovers only). Then it runs one batch and looks at the queue again: the oldest queued input
and the most of its length neighbours (the whole queue sorted by length) within
``max_batch_size``, a padded-token budget and a largest share of padding. Inputs of similar
length share a batch, batches stay full under load, and the oldest input always goes next,
so none waits behind younger ones. Each batch runs in a dedicated
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


@dataclass(frozen=True)
class BatchStats:
    size: int
    padded_tokens: int  # size x longest input: what the model computes
    seconds: float
    real_tokens: int = 0  # the inputs' own tokens: padded_tokens - real_tokens is padding


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
    request: list[_Pending] = field(default_factory=list)  # every input of the submitting call, this one included


def length_sorted_batches(lengths: Sequence[int], max_batch_size: int, max_batch_tokens: int, max_padding: float = 1.0) -> list[list[int]]:
    """Positions of ``lengths`` cut into length-sorted batches within the size, padded-token
    and padding-share limits: ``protolm predict``'s batches of a window of rows (the batcher
    takes one such batch at a time, :func:`batch_around`).

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


def batch_around(lengths: Sequence[int], anchor: int, max_batch_size: int, max_batch_tokens: int, max_padding: float = 1.0) -> list[int]:
    """Positions of the batch that holds ``lengths[anchor]`` and the most of its length
    neighbours within the size, padded-token and padding-share limits (the tightest such batch
    among equally large ones; an input alone always fits).

    The batcher's cut: ``anchor`` is its oldest queued input, so that one always goes next,
    and a batch is a run of the length-sorted queue, extended while the next (longer) input
    keeps padding within ``max_padding`` of the batch's tokens, as in
    :func:`length_sorted_batches`. Equal lengths keep their order (older first). Costs
    O(len(lengths) log len(lengths) + max_batch_size²) comparisons.
    """
    order = sorted(range(len(lengths)), key=lambda i: (lengths[i], i))
    k = order.index(anchor)
    ordered = [lengths[i] for i in order]
    best, best_key = (k, k + 1), (1, 1.0)
    for start in range(max(0, k - max_batch_size + 1), k + 1):
        real = 0
        for end in range(start, min(len(order), start + max_batch_size)):
            length, size = ordered[end], end - start + 1
            padded = size * length  # sorted: this input is the longest so far
            if size > 1 and (padded > max_batch_tokens or 1.0 - (real + length) / padded > max_padding):
                break
            real += length
            if end >= k and (size, real / padded) > best_key:
                best, best_key = (start, end + 1), (size, real / padded)
    return [order[i] for i in range(*best)]


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
        self._window: list[_Pending] = []  # taken from the queue, being run
        self._freed_at = float("-inf")  # when the last batch finished
        self._answered = 0  # inputs queued then, plus those of the calls that batch finished: expected back soon
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
        for p in pending:
            p.request = pending
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
            await self._fill()
            self._queue = self._live(self._queue)
            if not self._queue:
                self._on_queue_depth(0)
                continue
            batch = self._window = self._cut(self._queue)
            taken = {id(p) for p in batch}
            self._queue = [p for p in self._queue if id(p) not in taken]
            self._on_queue_depth(len(self._queue))
            try:
                await self._execute(batch)
            except Exception as exc:  # a bug here must not strand the batch's callers
                log.exception("batcher failed on a batch of %d inputs", len(batch))
                self._fail(batch, exc)
            self._window = []
            # a call with inputs still queued is not answered yet: its caller cannot send again
            finished = {id(p.request): len(p.request) for p in batch if all(q.future.done() for q in p.request)}
            self._freed_at, self._answered = time.monotonic(), len(self._queue) + sum(finished.values())

    async def _fill(self) -> None:
        """Waits for company for the oldest input: at most ``max_wait`` from when it was queued
        or the model became free, whichever is later; less once a full batch is queued or, in
        the ``max_wait`` after a batch, once the callers that batch answered can be back (the
        queue holds what it held then plus as many inputs as the calls it finished had)."""
        start = max(self._queue[0].enqueued, self._freed_at)
        while (remaining := start + self.max_wait_seconds - time.monotonic()) > 0:
            enough = self.max_batch_size
            if time.monotonic() < self._freed_at + self.max_wait_seconds:
                enough = min(enough, self._answered)
            if len(self._queue) >= enough:
                return
            self._wakeup.clear()
            try:
                await asyncio.wait_for(self._wakeup.wait(), remaining)
            except asyncio.TimeoutError:
                return

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

    def _cut(self, pending: list[_Pending]) -> list[_Pending]:
        """The next batch: the oldest input (``pending`` is in queue order) and its length neighbours."""
        lengths = [p.length for p in pending]
        return [pending[i] for i in batch_around(lengths, 0, self.max_batch_size, self.max_batch_tokens, self.max_padding)]

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
        stats = BatchStats(len(batch), padded_tokens, finished - started, sum(p.length for p in batch))
        self._on_batch(stats)
        for p, result in zip(batch, results):
            if not p.future.done():
                p.future.set_result(Completed(result, started - p.enqueued, stats))

    @staticmethod
    def _fail(pending: list[_Pending], error: BaseException) -> None:
        for p in pending:
            if not p.future.done():
                p.future.set_exception(error)
