import asyncio
import random
import threading
import time

import pytest

from core.errors import DeadlineExceededError, NotReadyError, OverloadedError
from service.batcher import DynamicBatcher, batch_around
from tests.service_helpers import until


class Recorder:
    """run_batch that doubles its items and records each batch (optionally slowly or failing).

    ``entered`` records each batch as it reaches the model, before it waits for ``release``:
    a test that clears ``release`` can poll it to know the model thread is busy.
    """

    def __init__(self, delay=0.0, fail_if=lambda items: False):
        self.entered: list[list[int]] = []
        self.batches: list[list[int]] = []
        self.delay = delay
        self.fail_if = fail_if
        self.release = threading.Event()
        self.release.set()

    def __call__(self, items):
        self.entered.append(list(items))
        self.release.wait(5)
        self.batches.append(list(items))
        if self.delay:
            time.sleep(self.delay)
        if self.fail_if(items):
            raise RuntimeError("boom")
        return [item * 2 for item in items]


def make(recorder, **kwargs):
    options = dict(max_batch_size=4, max_batch_tokens=10_000, max_wait_seconds=0.05, max_queue_size=100)
    options.update(kwargs)
    batcher = DynamicBatcher(recorder, **options)
    batcher.start()
    return batcher


async def one(batcher, item, length=1, deadline=None):
    (completed,) = await batcher.submit([item], [length], deadline)
    return completed


async def test_results_go_back_to_their_callers_in_batches_up_to_max_size():
    recorder = Recorder()
    batcher = make(recorder)
    results = await asyncio.gather(*(one(batcher, i) for i in range(10)))
    assert [r.value for r in results] == [i * 2 for i in range(10)]
    assert max(len(b) for b in recorder.batches) == 4
    assert sorted(sum(recorder.batches, [])) == list(range(10))
    assert all(r.batch.size == len(b) for r in results for b in recorder.batches if r.value // 2 in b)
    await batcher.stop()


async def test_waits_at_most_max_wait_for_a_partial_batch():
    batcher = make(Recorder(), max_wait_seconds=0.1)
    started = time.monotonic()
    result = await one(batcher, 1)
    elapsed = time.monotonic() - started
    assert 0.09 <= elapsed < 1.0
    assert result.queue_seconds >= 0.09
    await batcher.stop()


async def test_full_batch_does_not_wait():
    recorder = Recorder()
    batcher = make(recorder, max_wait_seconds=5.0)
    started = time.monotonic()
    await batcher.submit([1, 2, 3, 4], [1, 1, 1, 1])
    assert time.monotonic() - started < 1.0
    await batcher.stop()


async def test_a_failing_batch_fails_each_of_its_requests_and_others_still_succeed():
    recorder = Recorder(fail_if=lambda items: 13 in items)
    batcher = make(recorder, max_batch_size=2)
    outcomes = await asyncio.gather(*(one(batcher, i, length=i) for i in (13, 12, 1, 2)), return_exceptions=True)
    # lengths sort the window into [1, 2] and [12, 13]: the second batch fails
    assert isinstance(outcomes[0], RuntimeError) and isinstance(outcomes[1], RuntimeError)
    assert [o.value for o in outcomes[2:]] == [2, 4]
    assert (await one(batcher, 5)).value == 10  # the batcher keeps serving
    await batcher.stop()


async def test_wrong_result_count_fails_the_batch():
    batcher = make(lambda items: [0])
    with pytest.raises(RuntimeError, match="1 results for a batch of 2"):
        await batcher.submit([1, 2], [1, 1])
    await batcher.stop()


async def test_cancelled_and_expired_requests_are_skipped_before_inference():
    recorder = Recorder()
    recorder.release.clear()  # hold the model thread so the next window queues up
    batcher = make(recorder, max_batch_size=1, max_wait_seconds=0.0)
    blocker = asyncio.create_task(one(batcher, 100))
    await until(lambda: recorder.entered == [[100]])  # taken by the loop, now blocked in the model
    deadline = time.monotonic() + 0.01
    cancelled = asyncio.create_task(one(batcher, 1))
    expired = asyncio.create_task(one(batcher, 2, deadline=deadline))
    kept = asyncio.create_task(one(batcher, 3))
    await until(lambda: batcher.queue_depth == 3)  # all three wait behind the blocker
    await until(lambda: time.monotonic() > deadline)  # the deadline passes while queued
    cancelled.cancel()
    await until(cancelled.done)
    # the cancelled input left the queue at once; nothing reached the model yet
    assert batcher.queue_depth == 2 and recorder.entered == [[100]]
    recorder.release.set()
    assert (await blocker).value == 200
    assert (await kept).value == 6
    with pytest.raises(DeadlineExceededError):
        await expired
    with pytest.raises(asyncio.CancelledError):
        await cancelled
    assert [1] not in recorder.batches and [2] not in recorder.batches
    await batcher.stop()


async def test_full_queue_rejects_at_once():
    recorder = Recorder()
    recorder.release.clear()
    batcher = make(recorder, max_batch_size=1, max_queue_size=3, max_wait_seconds=0.0)
    first = asyncio.create_task(one(batcher, 0))
    await until(lambda: recorder.entered == [[0]])  # taken by the loop, now blocked in the model
    queued = [asyncio.create_task(one(batcher, i)) for i in (1, 2, 3)]
    await until(lambda: batcher.queue_depth == 3)
    started = time.monotonic()
    with pytest.raises(OverloadedError, match="queue full"):
        await batcher.submit([9], [1])
    assert time.monotonic() - started < 0.1
    recorder.release.set()
    assert [(await t).value for t in [first, *queued]] == [0, 2, 4, 6]
    await batcher.stop()


async def test_batches_group_similar_lengths_within_the_token_budget():
    recorder = Recorder()
    batcher = make(recorder, max_batch_size=8, max_batch_tokens=40, max_wait_seconds=0.05)
    lengths = [30, 2, 29, 3, 4, 28, 1, 5]
    await asyncio.gather(*(one(batcher, length, length) for length in lengths))
    for batch in recorder.batches:
        assert len(batch) * max(batch) <= 40 or len(batch) == 1
    assert sorted(map(sorted, recorder.batches)) == [[1, 2, 3, 4, 5], [28], [29], [30]]
    await batcher.stop()


async def one_held_two_queued(recorder, batcher) -> list[asyncio.Task]:
    """Input 0 in the (held) model, inputs 1 and 2 queued behind it."""
    tasks = [asyncio.create_task(one(batcher, 0))]
    await until(lambda: recorder.entered == [[0]])
    tasks += [asyncio.create_task(one(batcher, i)) for i in (1, 2)]
    await until(lambda: batcher.queue_depth == 2)
    return tasks


async def test_stop_drains_queued_work_then_refuses_new_work():
    recorder = Recorder(delay=0.05)
    recorder.release.clear()
    batcher = make(recorder, max_batch_size=1, max_wait_seconds=0.0)
    tasks = await one_held_two_queued(recorder, batcher)
    # let the model go only once stop has refused new work and begun to drain: the callback
    # runs at stop's first wait, when all three inputs are still unfinished
    asyncio.get_running_loop().call_soon(recorder.release.set)
    await batcher.stop(drain_seconds=5.0)
    assert [(await t).value for t in tasks] == [0, 2, 4]
    with pytest.raises(NotReadyError):
        await one(batcher, 1)


async def test_stop_without_drain_fails_what_is_left():
    recorder = Recorder()
    recorder.release.clear()
    batcher = make(recorder, max_batch_size=1, max_wait_seconds=0.0)
    tasks = await one_held_two_queued(recorder, batcher)
    await batcher.stop(drain_seconds=0.0)
    recorder.release.set()
    outcomes = await asyncio.gather(*tasks, return_exceptions=True)
    assert any(isinstance(o, NotReadyError) for o in outcomes)
    assert all(isinstance(o, NotReadyError) or o.value == 0 for o in outcomes)


async def test_batches_are_cut_where_padding_would_exceed_its_share():
    recorder = Recorder()
    batcher = make(recorder, max_batch_size=32, max_batch_tokens=100_000, max_padding=0.25, max_wait_seconds=0.05)
    lengths = [10, 11, 12, 40, 41, 42, 13, 43]
    await asyncio.gather(*(one(batcher, length, length) for length in lengths))
    assert sorted(map(sorted, recorder.batches)) == [[10, 11, 12, 13], [40, 41, 42, 43]]
    await batcher.stop()


async def queued_behind_a_held_batch(recorder, batcher, lengths) -> list[asyncio.Task]:
    """Input 0 (length 1) in the held model, then one input per length queued in that order
    (each input is its own length); the model is released once all of them are queued."""
    tasks = [asyncio.create_task(one(batcher, 0, 1))]
    await until(lambda: recorder.entered == [[0]])
    tasks += [asyncio.create_task(one(batcher, length, length)) for length in lengths]
    await until(lambda: batcher.queue_depth == len(lengths))
    recorder.release.set()
    await asyncio.gather(*tasks)
    return tasks


async def test_a_queue_of_mixed_lengths_yields_length_homogeneous_full_batches():
    recorder = Recorder()
    recorder.release.clear()
    batcher = make(recorder, max_batch_size=4, max_wait_seconds=0.0)
    await queued_behind_a_held_batch(recorder, batcher, [5, 40, 6, 41, 7, 42, 8, 43])
    assert recorder.batches[1:] == [[5, 6, 7, 8], [40, 41, 42, 43]]
    await batcher.stop()


async def test_the_oldest_input_goes_next_with_its_length_neighbours():
    recorder = Recorder()
    recorder.release.clear()
    batcher = make(recorder, max_batch_size=2, max_wait_seconds=0.0)
    await queued_behind_a_held_batch(recorder, batcher, [30, 2, 3, 4, 31])
    # 30 is the oldest queued: it goes first, with 31, though 2, 3 and 4 queued before 31
    assert recorder.batches[1:] == [[30, 31], [2, 3], [4]]
    await batcher.stop()


async def test_after_a_batch_the_next_waits_only_for_the_callers_it_answered():
    recorder = Recorder()
    batcher = make(recorder, max_batch_size=8, max_wait_seconds=1.0)

    async def caller(item):
        for _ in range(3):
            await one(batcher, item)

    started = time.monotonic()
    await asyncio.gather(*(caller(i) for i in range(4)))
    # the first batch waits max_wait for a full batch; the next two go as soon as the four
    # callers are back (waiting max_wait each time, as before, took 3 s)
    assert time.monotonic() - started < 2.0
    assert [sorted(b) for b in recorder.batches] == [[0, 1, 2, 3]] * 3
    await batcher.stop()


async def test_a_lone_caller_is_not_delayed_beyond_max_wait():
    batcher = make(Recorder(), max_wait_seconds=0.5)
    first, second = [], []
    for times in (first, second):
        started = time.monotonic()
        await one(batcher, 1)
        times.append(time.monotonic() - started)
    assert 0.45 <= first[0] < 1.5  # nobody to wait for yet: max_wait, no more
    assert second[0] < 0.5  # right after its own batch: nobody else is expected
    await batcher.stop()


def test_batch_around_holds_the_anchor_within_every_limit_and_is_the_largest_such_run():
    rng = random.Random(0)
    for _ in range(300):
        lengths = [rng.randint(1, 60) for _ in range(rng.randint(1, 40))]
        anchor = rng.randrange(len(lengths))
        size, budget, padding = rng.choice((1, 4, 8, 32)), rng.choice((60, 256, 10_000)), rng.choice((0.1, 0.25, 1.0))
        batch = batch_around(lengths, anchor, size, budget, padding)
        chosen = [lengths[i] for i in batch]
        assert anchor in batch and len(set(batch)) == len(batch) <= size
        if len(batch) > 1:
            assert len(batch) * max(chosen) <= budget
            assert 1.0 - sum(chosen) / (len(batch) * max(chosen)) <= padding + 1e-9
        # a run of the length-sorted inputs, as large as any run that holds the anchor and
        # grows within the limits (equal lengths in queue order)
        order = sorted(range(len(lengths)), key=lambda i: (lengths[i], i))
        k = order.index(anchor)
        positions = sorted(order.index(i) for i in batch)
        assert positions == list(range(positions[0], positions[0] + len(batch)))
        largest = 1
        for start in range(k + 1):
            for end in range(k, len(order)):
                run = [lengths[i] for i in order[start : end + 1]]
                prefixes_fit = all(
                    n == 1 or (n * run[n - 1] <= budget and 1.0 - sum(run[:n]) / (n * run[n - 1]) <= padding) for n in range(1, len(run) + 1)
                )
                if len(run) <= size and prefixes_fit:
                    largest = max(largest, len(run))
        assert len(batch) == largest


async def test_a_call_of_many_inputs_does_not_wait_between_its_own_batches():
    recorder = Recorder()
    batcher = make(recorder, max_batch_size=4, max_wait_seconds=1.0)
    started = time.monotonic()
    results = await batcher.submit(list(range(10)), [1] * 10)
    # three batches, none of them waiting for this caller to send again (it cannot, yet)
    assert time.monotonic() - started < 1.0
    assert [r.value for r in results] == [i * 2 for i in range(10)]
    assert [len(b) for b in recorder.batches] == [4, 4, 2]
    await batcher.stop()
