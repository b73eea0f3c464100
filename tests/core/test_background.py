"""Background tasks stop by cancellation, and their clean-up has run when stop returns."""

from __future__ import annotations

import asyncio

import pytest

from shipyard.core import BackgroundRunner, cancel_and_wait


class Loop(BackgroundRunner):
    task_name = "test-loop"

    def __init__(self) -> None:
        self.runs = 0
        self.cleaned_up = False

    async def run(self) -> None:
        self.runs += 1
        try:
            await asyncio.Event().wait()
        finally:
            self.cleaned_up = True


async def test_stop_returns_after_the_loop_has_cleaned_up() -> None:
    loop = Loop()
    loop.start()
    await asyncio.sleep(0)

    await loop.stop()

    assert loop.cleaned_up


async def test_starting_a_running_loop_again_does_not_start_a_second_one() -> None:
    loop = Loop()
    loop.start()
    loop.start()
    await asyncio.sleep(0)

    await loop.stop()

    assert loop.runs == 1


async def test_async_with_runs_the_loop_for_the_block_only() -> None:
    async with Loop() as loop:
        await asyncio.sleep(0)
        assert loop.runs == 1
        assert not loop.cleaned_up

    assert loop.cleaned_up


async def test_stopping_a_loop_never_started_does_nothing() -> None:
    await Loop().stop()


async def test_cancel_and_wait_raises_the_error_a_task_ended_with() -> None:
    async def broken() -> None:
        raise LookupError("gone")

    task = asyncio.create_task(broken())
    await asyncio.sleep(0)

    with pytest.raises(LookupError, match="gone"):
        await cancel_and_wait(task)


async def test_cancel_and_wait_cancels_every_task() -> None:
    tasks = [asyncio.create_task(asyncio.Event().wait()) for _ in range(3)]

    await cancel_and_wait(*tasks)

    assert all(task.cancelled() for task in tasks)
