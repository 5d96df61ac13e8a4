"""Dynamic batching: batch formation, max wait, live model switch without loss."""

from __future__ import annotations

import asyncio
import threading

import numpy as np
import pytest

from testbed.services.batching import DynamicBatcher


def rows(n: int) -> np.ndarray:
    return np.arange(n, dtype=np.float32).reshape(n, 1)


def test_full_batches_then_remainder() -> None:
    sizes: list[int] = []

    async def go() -> list:
        b = DynamicBatcher(
            lambda x: x * 2,
            max_batch=4,
            max_wait_ms=1000.0,
            observe=lambda n, s, q: sizes.append(n),
        )
        # one submit of 8 fills two batches at once; the remainder of 2 waits ≤ max wait
        out = await asyncio.gather(b.submit(rows(8)), b.submit(rows(2) + 100))
        await b.stop()
        return out

    first, second = asyncio.run(go())
    assert [r.output[0] for r in first] == [2.0 * i for i in range(8)]
    assert [r.output[0] for r in second] == [200.0, 202.0]
    assert sizes == [4, 4, 2]
    assert all(r.batch == 4 for r in first)
    assert all(r.queue_ms >= 0 and r.service_ms >= 0 for r in first + second)


def test_items_submitted_together_share_a_batch_below_max() -> None:
    sizes: list[int] = []

    async def go() -> None:
        b = DynamicBatcher(
            lambda x: x, max_batch=100, max_wait_ms=5.0, observe=lambda n, s, q: sizes.append(n)
        )
        await asyncio.gather(*(b.submit(rows(1)) for _ in range(3)))
        await b.stop()

    asyncio.run(go())
    assert sizes == [3]


def test_live_switch_drops_nothing_and_tags_match_outputs() -> None:
    gate = threading.Event()

    def old(x: np.ndarray) -> np.ndarray:
        gate.wait(5)  # hold the first batch in flight while the switch happens
        return x + 1000

    async def go() -> list:
        b = DynamicBatcher(old, max_batch=2, max_wait_ms=0.0, tag="old", inline=False)
        tasks = [asyncio.ensure_future(b.submit(rows(1) + i)) for i in range(7)]
        await asyncio.sleep(0)  # let the worker pick the first batch
        while b.batches == 0 and b.queue_length == 7:
            await asyncio.sleep(0.001)
        b.configure(run_batch=lambda x: x - 1000, max_batch=3, tag="new")
        gate.set()
        out = [r for t in await asyncio.gather(*tasks) for r in t]
        await b.stop()
        return out

    results = asyncio.run(go())
    assert len(results) == 7
    for i, r in enumerate(results):
        expected = i + 1000 if r.tag == "old" else i - 1000
        assert r.output[0] == expected
    tags = [r.tag for r in results]
    assert tags[0] == "old" and tags[-1] == "new"
    assert max(r.batch for r in results if r.tag == "new") <= 3


def test_failing_model_fails_its_batch_only() -> None:
    calls = {"n": 0}

    def flaky(x: np.ndarray) -> np.ndarray:
        calls["n"] += 1
        if calls["n"] == 1:
            raise RuntimeError("boom")
        return x

    async def go() -> tuple:
        b = DynamicBatcher(flaky, max_batch=1, max_wait_ms=0.0)
        first = await asyncio.gather(b.submit(rows(1)), return_exceptions=True)
        second = await b.submit(rows(1))
        await b.stop()
        return first, second

    first, second = asyncio.run(go())
    assert isinstance(first[0], RuntimeError)
    assert second[0].output[0] == 0.0


def test_bad_limits_are_refused() -> None:
    b = DynamicBatcher(lambda x: x, max_batch=1, max_wait_ms=0.0)
    with pytest.raises(ValueError, match="max_batch"):
        b.configure(max_batch=0)
    with pytest.raises(ValueError, match="max_wait_ms"):
        b.configure(max_wait_ms=-1)


def test_calls_split_across_batches_keep_order_and_runs() -> None:
    """Rows of several calls are cut into batches and put back together per call."""
    waits: list[list[tuple[float, int]]] = []

    async def go() -> list:
        b = DynamicBatcher(
            lambda x: x * 10,
            max_batch=4,
            max_wait_ms=1000.0,
            observe=lambda n, s, w: waits.append(w),
        )
        calls = [rows(3), rows(6) + 100, rows(3) + 200]  # 12 rows: batches 3+1, 4, 1+3
        out = await asyncio.gather(*(b.submit_array(c) for c in calls))
        await b.stop()
        return calls, out

    calls, out = asyncio.run(go())
    for sent, got in zip(calls, out, strict=True):
        np.testing.assert_array_equal(got.outputs, sent * 10)
        assert sum(r.count for r in got.runs) == len(sent)
        assert all(r.batch == 4 for r in got.runs)
        assert len(got.per_row("queue_ms")) == len(sent)
    assert [r.count for r in out[1].runs] == [1, 4, 1]
    assert [[k for _, k in w] for w in waits] == [[3, 1], [4], [1, 3]]
    items = out[1].items()
    assert [i.output[0] for i in items] == [1000.0 + 10 * i for i in range(6)]
