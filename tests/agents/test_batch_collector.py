"""A batch's rules and table writes run with the garbage collector paused in a tuned worker
(``agents.common.process_batch``, ``app.runtime.gc_tuning.paused``), and it is back on after."""

from __future__ import annotations

import asyncio
import gc

import pytest

from agents.common import OK, process_batch
from app.runtime import gc_tuning
from app.runtime.fastlane import Source


def batch() -> list[Source]:
    return [Source("purchases", 0, offset, 0.0, b"kris", b"{}") for offset in range(3)]


@pytest.mark.parametrize("tuned", [True, False])
def test_a_batch_is_applied_and_written_with_the_collector_paused_once_tuned(
        monkeypatch: pytest.MonkeyPatch, tuned: bool) -> None:
    monkeypatch.setattr(gc_tuning, "_TUNED", tuned)
    seen: list[bool] = []

    def apply_one(source: Source) -> str:
        seen.append(gc.isenabled())
        if source.offset == 1:
            raise RuntimeError("a bug in a rule")  # dead-lettered; the batch goes on
        return OK

    async def run() -> None:
        async def dead_letter_all(failed: object) -> None:
            return None
        monkeypatch.setattr("agents.common.dead_letter_all", dead_letter_all)
        await process_batch("purchases", batch(), apply_one,
                            lambda: seen.append(gc.isenabled()))

    asyncio.run(run())
    assert seen == [not tuned] * 4  # three records, then the writes
    assert gc.isenabled()
